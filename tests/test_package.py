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


def test_no_submodule_shadows_a_public_name():
    # importing a submodule binds it on the package under its own name, so a module
    # graphprune/compile.py would replace graphprune.compile (the function) as soon as
    # anything imported it, and gp.compile(...) would fail depending on import order
    import importlib
    import pkgutil
    import types

    modules = [m.name.rsplit(".", 1)[-1] for m in pkgutil.iter_modules(graphprune.__path__)]
    assert not set(modules) & set(graphprune.__all__), set(modules) & set(graphprune.__all__)
    for info in pkgutil.iter_modules(graphprune.__path__, "graphprune."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # optional dependency missing: that module is not under test here
            continue
    for name in graphprune.__all__:
        assert not isinstance(getattr(graphprune, name), types.ModuleType), name
