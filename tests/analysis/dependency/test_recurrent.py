"""rules/recurrent.py: ONNX LSTM, GRU and RNN lose hidden units (every gate's row, both bias
halves, R's column, Y's unit) and input features, checked by the oracle; the direction
axes stay; torch's run-time zero initial states are dropped from the pruned layer."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphprune as gp
from helpers import prune_and_check

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _rnn_model(op: str, *, layout: int = 0, bidirectional: bool = True, initial: bool = False) -> onnx.ModelProto:
    """x [T, B, 6] (layout 0; [B, T, 6] with layout 1) -> MatMul 6->8 + Relu -> OP (hidden 5)
    -> Y merged over directions [.., dirs*5] -> MatMul -> y; with `initial`, a constant
    initial_h (LSTM: and initial_c), sliced with the units."""
    rng = np.random.default_rng(0)
    g, h, d = GATES[op], 5, 2 if bidirectional else 1
    f = lambda *s: (0.5 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    inits = {"w0": f(6, 8), "W": f(d, g * h, 8), "R": f(d, g * h, h), "B": f(d, 2 * g * h), "wo": f(d * h, 3),
             "perm_shape": np.array([0, 0, -1], np.int64)}
    ins = ["r", "W", "R", "B", "", "", ""]
    if initial:
        inits["h0"] = f(d, 2, h) if not layout else f(2, d, h)
        ins[5] = "h0"
        if op == "LSTM":
            inits["c0"] = f(d, 2, h) if not layout else f(2, d, h)
            ins[6] = "c0"
    ins = ins[:7] if op == "LSTM" else ins[:6]
    while ins and ins[-1] == "":
        ins.pop()
    y_perm = [0, 1, 2, 3] if layout else [0, 2, 1, 3]  # -> [T|B, B|T, dirs, H]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node(op, ins, ["Y"], hidden_size=h, layout=layout,
                              direction="bidirectional" if bidirectional else "forward"),
             helper.make_node("Transpose", ["Y"], ["Yt"], perm=y_perm),
             helper.make_node("Reshape", ["Yt", "perm_shape"], ["Ym"]),
             helper.make_node("MatMul", ["Ym", "wo"], ["y"])]
    x_shape = [2, 4, 6] if layout else [4, 2, 6]
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape[:2] + [3])],
                              [onnx.numpy_helper.from_array(a, k) for k, a in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 9
    return m


@pytest.mark.parametrize("op", list(GATES))
@pytest.mark.parametrize("bidirectional,initial", [(True, False), (False, True), (True, True)])
def test_hidden_units_and_input_features_prune_exactly(op, bidirectional, initial):
    m = _rnn_model(op, bidirectional=bidirectional, initial=initial)
    dg = gp.analyze(m.SerializeToString())
    assert sorted(g.num_atoms for g in dg.prunable_groups) == [5, 8]  # the units, the MatMul's outputs
    for seed in (0, 1, 2):
        pruned, plan, _ = prune_and_check(m, seed=seed, min_groups=2)
    res = gp.prune(m.SerializeToString(), 0.4, round_to=1)
    node = next(n for n in res.model.graph if n.op_type == op)
    hidden = node.attributes["hidden_size"].value
    assert hidden == 3
    assert node.inputs[2].const_value.numpy().shape[1:] == (GATES[op] * 3, 3)  # R: every gate's rows, the columns
    assert gp.check(m.SerializeToString(), res.model, res.plan).ok


def test_batch_first_layout_is_frozen():
    """ONNX Runtime does not run layout 1: the oracle could not check it."""
    dg = gp.analyze(_rnn_model("GRU", layout=1).SerializeToString())
    assert not dg.prunable_groups  # the units, and the input features the layer reads
    assert any("layout 1" in r for f in dg.frozen_groups for r in f.reasons)


def test_the_direction_axis_stays_when_the_units_are_frozen():
    """An initial state that is a graph input freezes the units. The Reshape that merges Y's
    directions with its units then coupled the directions to the next layer instead: a
    group of 2 whose removal sliced only the next layer (ONNX Runtime refused the model)."""
    m = _rnn_model("LSTM", initial=True)
    init = {t.name: t for t in m.graph.initializer}
    for name in ("h0", "c0"):
        m.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(init[name].dims)))
        m.graph.initializer.remove(init[name])
    dg = gp.analyze(m.SerializeToString())
    assert sorted(g.num_atoms for g in dg.prunable_groups) == [8]
    prune_and_check(m, min_groups=1)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_exports_with_run_time_zero_states_prune(kind, tmp_path):
    """torch exports a call without (h0, c0) for a dynamic batch as ConstantOfShape zeros
    sliced per layer: that shape cannot shrink, so the pruned layers drop those inputs
    (zeros by default) and the model still runs at other batch sizes. The second layer reads
    the first's Y with its directions merged into the features: left unfrozen, the two
    directions were a group of 2 that only the second layer's input was sliced by."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.rnn = getattr(nn, kind)(16, 12, batch_first=True, bidirectional=True, num_layers=2)
            self.b = nn.Linear(24, 4)

        def forward(self, x):
            return self.b(self.rnn(torch.relu(self.a(x)))[0])

    torch.manual_seed(0)
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(M().eval(), (torch.randn(2, 5, 8),), path, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "B", 1: "T"}})
    assert any(n.op_type == "ConstantOfShape" for n in onnx.load(path).graph.node)
    assert sorted(g.num_atoms for g in gp.analyze(path).prunable_groups) == [12, 12, 16]
    res = gp.prune(path, 0.5, round_to=1)
    layers = [n for n in res.model.graph if n.op_type == kind]
    assert [n.attributes["hidden_size"].value for n in layers] == [6, 6]
    assert all(len(n.inputs) < 6 or n.inputs[5] is None for n in layers)  # the run-time zeros are dropped
    result = gp.check(gp.load(path, fold=False), res.model, res.plan)
    assert result.ok and result.sizes and len(result.sizes) == 2, result.summary()  # two batch / sequence sizes


@pytest.mark.parametrize("op", list(GATES))
def test_the_allocation_counts_the_recurrent_macs_it_removes(op):
    """--target-macs predicted from a cost model without the LSTM/GRU/RNN term (88% of an
    LSTM model's MACs) landed far under the target (0.7 asked, 0.52 written). The cost model
    of a selection now equals the pruned model's count, and the per-layer table lists the op."""
    from graphprune.allocation.cost import mac_model, mac_shapes
    from graphprune.analysis.cost import layer_macs, model_cost

    m = _rnn_model(op, bidirectional=True)
    model = gp.load(m.SerializeToString())
    dg = gp.analyze(model)
    x = {"x": np.zeros((4, 2, 6), np.float32)}
    cm = mac_model(model, dg, mac_shapes(model, x))
    assert cm.dense == model_cost(model).macs
    selection = {g.id: list(range(0, g.num_atoms, 2)) for g in dg.prunable_groups}
    predicted = cm.total(selection)
    res = gp.prune(m.SerializeToString(), selection=selection)
    assert predicted == pytest.approx(model_cost(res.model).macs, rel=1e-9)
    assert any(n.op_type == op and v > 0 for n in model.graph for k, v in layer_macs(model).items() if k == n.name)
