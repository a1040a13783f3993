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


def test_a_static_model_as_loaded_is_counted_without_a_copy(samples_dir, monkeypatch):
    """A static model as loaded (shapes current) at its own shapes is counted as it is (same
    figures as a re-inferred copy); at other shapes a re-inferred copy is still made."""
    import graphprune.analysis.cost as cost_mod

    model = gp.load(str(samples_dir / "tiny_resnet.onnx"))
    own = {v.name: list(v.shape) for v in model.graph.inputs}
    from graphprune.analysis.cost import _layers_of, _model_cost
    from graphprune.frontends.onnx import at_shapes

    again = at_shapes(model, own)
    copies = []
    real = cost_mod.at_shapes
    monkeypatch.setattr(cost_mod, "at_shapes", lambda m, s: copies.append(s) or real(m, s))
    got = model_cost(model, own)
    assert (got.macs, got.layers) == (_model_cost(again).macs, _layers_of(model, again)) and not copies
    model_cost(model, {k: [2, *v[1:]] for k, v in own.items()})
    assert len(copies) == 1


def test_after_pruning_the_surgery_s_shapes_give_the_re_inferred_figures():
    """A pruned static model keeps current shapes (the surgery shrinks what it slices), so
    its cost is counted without re-inferring them: on random graphs the figures, per layer
    too, equal those of a re-inferred copy."""
    import numpy as np

    from graphprune.analysis.cost import _layers_of, _model_cost
    from graphprune.frontends.onnx import at_shapes
    from graphprune.ir.mutation import shapes_current
    from random_graphs import build_random_model

    checked = 0
    for seed in range(120):
        proto = build_random_model(np.random.default_rng(seed), max_nodes=14, opset=(17, 13, 18, 21)[seed % 4])
        res = gp.prune(gp.load(proto.SerializeToString()), ratio=0.4, seed=seed)
        if not res.plan.tensors:
            continue
        m = res.model
        assert shapes_current(m), seed
        shapes = {v.name: list(v.shape) for v in m.graph.inputs}
        again = at_shapes(m, shapes)
        cost = model_cost(m, shapes)
        assert (cost.macs, cost.layers) == (_model_cost(again).macs, _layers_of(m, again)), seed
        checked += 1
    assert checked >= 30


def test_macs_inside_an_if_branch_are_counted():
    """x -> conv (8) -> If(c: conv 8->6 with bias | conv 8->6 without) -> conv (4). Each branch
    runs a conv of 6·8·9 MACs per pixel; they were counted as 0 (the weights' params were not)."""
    from onnx import TensorProto, helper

    from graphprune.analysis.cost import model_cost
    from helpers import make_model, w

    def branch(name, ins):
        out = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        return helper.make_graph([helper.make_node("Conv", ins, [name], pads=[1] * 4)], name, [], [out])

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1] * 4),
             helper.make_node("If", ["c"], ["z"], then_branch=branch("t", ["a", "bw", "bb"]),
                              else_branch=branch("e", ["a", "bw"])),
             helper.make_node("Conv", ["z", "w2"], ["y"], pads=[1] * 4)]
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [1])
    m = make_model(nodes, [("x", ["N", 3, "H", "W"]), c], [("y", ["N", 4, "H", "W"])],
                   {"w1": w(8, 3, 3, 3), "b1": w(8), "bw": w(6, 8, 3, 3), "bb": w(6), "w2": w(4, 6, 3, 3)})
    cost = model_cost(gp.load(m.SerializeToString()), {"x": [1, 3, 16, 16], "c": [1]})
    assert cost.macs == 16 * 16 * (8 * 3 * 9 + 6 * 8 * 9 + 4 * 6 * 9)


def test_macs_inside_a_loop_count_once_per_constant_trip():
    """A Loop of 3 trips, each a conv 8->8 (3x3) on the carried map (its shape declared in the
    body: onnx's inference does not carry it in): 3 convs' MACs."""
    import numpy as np
    from onnx import TensorProto, helper

    from graphprune.analysis.cost import model_cost
    from helpers import make_model, w

    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Conv", ["v_in", "bw"], ["v_out"], pads=[1] * 4)], "body",
        [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("v_in", TensorProto.FLOAT, [1, 8, 16, 16])],
        [vi("cond_out", TensorProto.BOOL, []), vi("v_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Loop", ["trips", "go", "x"], ["z"], body=body)]
    m = make_model(nodes, [("x", [1, 8, 16, 16])], [("z", [1, 8, 16, 16])],
                   {"trips": np.array(3, np.int64), "go": np.array(True), "bw": w(8, 8, 3, 3)})
    assert model_cost(gp.load(m.SerializeToString(), fold=False)).macs == 3 * 16 * 16 * 8 * 8 * 9
