"""gp.load → gp.analyze → gp.prune analyses once (issue 15 §1): prune reuses the graph
analyze built while the model is unchanged, and the result is the same as without it."""
from __future__ import annotations

import onnx

import graphprune as gp
from graphprune.analysis.dependency import DependencyGraph
from samples.make_samples import tiny_resnet


def test_prune_reuses_the_analysis_of_the_unchanged_model_and_gives_the_same_file(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(tiny_resnet(), src)
    model = gp.load(src)
    dg = gp.analyze(model)
    assert DependencyGraph(model) is dg  # offered: reused while the model is unchanged
    assert DependencyGraph(model, ignore=["w1"]) is not dg  # another question, analysed anew
    reused = gp.prune(model, 0.3, seed=2)
    assert reused.changed
    assert DependencyGraph(model) is not dg  # pruned: the old analysis is never returned
    fresh = gp.prune(gp.load(src), 0.3, seed=2)
    gp.save(reused.model, tmp_path / "a.onnx")
    gp.save(fresh.model, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert reused.plan.to_json() == fresh.plan.to_json()
