"""The cyclic collector is paused inside graphprune's IR-building steps and restored after,
also when the step fails, and a caller that turned it off keeps it off."""
from __future__ import annotations

import gc

import pytest

from graphprune.errors import GraphpruneError
from graphprune.frontends.onnx import load_onnx
from graphprune.gc_pause import gc_paused


def test_paused_inside_load_analysis_and_surgery_and_restored_after(samples_dir, monkeypatch):
    import graphprune as gp
    import graphprune.frontends.onnx as front
    import graphprune.surgery as surgery
    from graphprune.analysis.dependency import graph

    seen: dict[str, list[bool]] = {}

    def spy(module, name):
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            seen.setdefault(name, []).append(gc.isenabled())
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)

    spy(front, "infer_shapes")
    spy(graph, "DependencyBuilder")
    spy(surgery, "remove_unused")
    assert gc.isenabled()
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    gp.prune(model, ratio=0.3)
    assert set(seen) == {"infer_shapes", "DependencyBuilder", "remove_unused"}
    assert not any(v for flags in seen.values() for v in flags), seen
    assert gc.isenabled()


def test_the_decorator_restores_what_it_found():
    @gc_paused
    def step():
        return gc.isenabled()

    assert step() is False and gc.isenabled()


def test_restored_when_the_step_fails(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert gc.isenabled()
    with pytest.raises(GraphpruneError):
        load_onnx(bad)
    assert gc.isenabled()


def test_a_caller_that_turned_it_off_keeps_it_off(samples_dir):
    gc.disable()
    try:
        load_onnx(samples_dir / "tiny_resnet.onnx")
        assert not gc.isenabled()
    finally:
        gc.enable()
