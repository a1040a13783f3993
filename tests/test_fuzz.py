"""Fuzz: damaged and malformed models through the CLI. Never a traceback, never an
internal error, never a partial output; exit 0 (model fine), 2, 3 or 4 with one line.

CI runs FUZZ_EXAMPLES (default 300) cases; the slow mode 3000.
"""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_models import mutate
from graphprune.cli.main import main

N_CI = int(os.environ.get("FUZZ_EXAMPLES", "300"))


def _one(seed: int, verb: str, tmp) -> None:
    data, what = mutate(np.random.default_rng(seed))
    d = tmp / f"case{seed}_{verb}"
    d.mkdir()
    src = d / "in.onnx"
    src.write_bytes(data)
    out = d / "out.onnx"
    err, so = io.StringIO(), io.StringIO()
    args = {"prune": ["prune", str(src), "-o", str(out), "--no-bench"],
            "inspect": ["inspect", str(src)],
            "check": ["check", str(src), str(src), "--plan", str(d / "missing.plan.json")]}[verb]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        rc = main(args)
    e = err.getvalue()
    ctx = f"seed {seed} ({what}), {verb}: rc={rc} stderr={e[-500:]!r}"
    assert rc in (0, 2, 3, 4), ctx
    assert "Traceback" not in e, ctx
    assert src.read_bytes() == data, ctx  # the input is never modified
    leftovers = [p.name for p in d.iterdir() if p.name.startswith(".")]
    assert not leftovers, ctx
    if verb == "prune":
        if rc == 0:
            assert out.exists() and (d / "out.plan.json").exists(), ctx
        else:
            assert not out.exists() and not (d / "out.plan.json").exists(), ctx
            assert len([ln for ln in e.strip().splitlines() if not ln.startswith("  hint:")]) <= 3, ctx


@settings(max_examples=N_CI, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), verb=st.sampled_from(["prune", "prune", "inspect", "check"]))
def test_fuzz_cli(seed, verb, tmp_path_factory):
    _one(seed, verb, tmp_path_factory.mktemp("fz"))


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(seed=st.integers(0, 10**9), verb=st.sampled_from(["prune", "inspect", "check"]))
def test_fuzz_cli_slow(seed, verb, tmp_path_factory):
    _one(seed, verb, tmp_path_factory.mktemp("fz"))
