"""Dead-code elimination keeps every kept node's inputs as they were."""
import numpy as np
import onnx_ir as ir
from onnx import helper

import graphprune as gp
from graphprune.passes.cleanup.dce import eliminate_dead_code
from helpers import make_model, prune_and_check, w


def _pad_maxpool_model():
    """conv → Pad(x, pads, "") → MaxPool → conv, plus a dead branch for DCE to remove."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),
             helper.make_node("Pad", ["c1", "pads", ""], ["p"]),
             helper.make_node("MaxPool", ["p"], ["m"], kernel_shape=[3, 3]),
             helper.make_node("Conv", ["m", "w2"], ["y"]),
             helper.make_node("Relu", ["c1"], ["dead"])]
    return make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])],
                      {"w1": w(6, 3, 1, 1, seed=1), "w2": w(4, 6, 1, 1, seed=2),
                       "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)})


def test_dce_keeps_trailing_empty_inputs():
    """onnx_ir's pass would turn Pad(x, pads, "") into Pad(x, pads), which ONNX Runtime
    1.31 then fuses into the MaxPool with -inf padding: different outputs."""
    model = gp.load(_pad_maxpool_model().SerializeToString())
    assert eliminate_dead_code(model)
    assert not any(n.op_type == "Relu" for n in model.graph)
    pad = next(n for n in model.graph if n.op_type == "Pad")
    assert len(pad.inputs) == 3 and pad.inputs[2] is None
    assert list(ir.serde.serialize_model(model).graph.node[1].input) == ["c1", "pads", ""]


def test_pruning_through_pad_maxpool_keeps_the_oracle():
    for seed in range(3):
        pruned, plan, _ = prune_and_check(_pad_maxpool_model(), seed=seed)
        assert plan.tensors
