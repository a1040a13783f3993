"""analysis.cost: a run's Cost carries its per-layer MACs, counted on the same re-inferred
copy as the total, and the reports' layer table reuses them instead of counting again."""
from __future__ import annotations

import graphprune as gp
from graphprune.analysis.cost import layer_macs, model_cost
from graphprune.report.layers import compare_layers


def test_per_layer_macs_of_a_cost_are_those_of_layer_macs(samples_dir):
    model = gp.load(str(samples_dir / "tiny_resnet.onnx"))
    for shapes in (None, {"input": [2, 3, 32, 32]}):
        cost = model_cost(model, shapes)
        assert cost.layers == layer_macs(model, shapes)
        assert sum(cost.layers.values()) == cost.macs


def test_the_layer_table_reuses_a_run_s_costs_only_at_their_shapes(samples_dir, monkeypatch):
    """With the run's costs at the same shapes no MACs are counted again (same rows); at
    other shapes they are counted."""
    import graphprune.report.layers as layers

    path = str(samples_dir / "tiny_resnet.onnx")
    before = gp.load(path)
    after = gp.prune(gp.load(path), 0.5).model
    at = {"input": [1, 3, 32, 32]}
    costs = (model_cost(before, at), model_cost(after, at))
    rows = compare_layers(before, after, at)
    calls = []
    monkeypatch.setattr(layers, "layer_macs", lambda *a: calls.append(a) or layer_macs(*a))
    assert compare_layers(before, after, at, costs=costs) == rows and not calls
    other = {"input": [1, 3, 64, 64]}
    compare_layers(before, after, other, costs=costs)
    assert len(calls) == 2
