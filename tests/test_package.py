"""What the installed package offers its users: PEP 561 typing marker and a `dir()` that
shows the (lazily loaded) public API."""
from __future__ import annotations

import pathlib

import pytest

import graphprune

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_py_typed_ships():
    assert (pathlib.Path(graphprune.__file__).parent / "py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["graphprune"]


def test_dir_lists_the_public_api():
    names = dir(graphprune)
    for name in ("load", "save", "prune", "analyze", "check", "sparsify", "Plan", "PassManager", "__version__"):
        assert name in names
    assert set(graphprune.__all__) <= set(names)
    assert not [n for n in names if n.startswith("_") and n != "__version__"]


def test_every_public_name_resolves():
    for name in graphprune.__all__:  # torch-only helpers import torch when called, not here
        assert getattr(graphprune, name) is not None, name
