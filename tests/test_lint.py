"""`ruff check` (pyflakes, bugbear, complexity <= 15; configured in pyproject.toml) over the
package, the tests, the samples and the benchmarks. It runs here so that the README's test
command, which CI runs, also lints."""
from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PATHS = ["graphprune", "tests", "samples", "benchmarks"]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff is not installed (it is the `lint` extra; scripts/install-test-deps.sh installs it)")
def test_ruff_check_passes():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *PATHS],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff check found problems:\n{proc.stdout}{proc.stderr}"
