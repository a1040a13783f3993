"""A transpose written as Reshape -> Transpose -> Reshape through a batch-merged axis
(frontends/merged_transpose.py), as torch's dynamo exporter writes the key transpose of
scaled_dot_product_attention below opset 23: read as one Transpose, the heads prune; three
nodes that are not a transpose are left as they are."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import graphprune as gp
from helpers import make_model, prune_and_check, w

E, H, D = 16, 4, 8


def _attention(second_target="transpose", mid_perm=(0, 2, 1)) -> onnx.ModelProto:
    """x [b, s, E] -> Q, K, V [b, H, s, D] -> softmax(Q·Kᵀ)·V -> output projection. Kᵀ is
    Reshape(K, [-1, s, D]) -> Transpose(mid_perm) -> Reshape(target from Shape(K)):
    "transpose" gives back [b, H, D, s]; "swapped" gives [H, b, D, s] (not a transpose of K)."""
    inits = {f"w{n}": w(E, H * D, seed=i) for i, n in enumerate("qkv")}
    inits.update({"wo": w(H * D, E, seed=5), "heads": np.array([0, 0, H, D], np.int64),
                  "minus1": np.array([-1], np.int64), "i0": np.array([0], np.int64), "i1": np.array([1], np.int64),
                  "i2": np.array([2], np.int64), "i3": np.array([3], np.int64), "i4": np.array([4], np.int64),
                  "merged": np.array([0, 0, H * D], np.int64)})
    nodes = []
    for n in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{n}"], [f"{n}f"]),
                  helper.make_node("Reshape", [f"{n}f", "heads"], [f"{n}s"]),
                  helper.make_node("Transpose", [f"{n}s"], [n], perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("Shape", ["k"], ["kshape"]),
              helper.make_node("Slice", ["kshape", "i2", "i4"], ["s_d"]),        # [s, D]
              helper.make_node("Slice", ["kshape", "i0", "i1"], ["b_"]), helper.make_node("Slice", ["kshape", "i1", "i2"], ["h_"]),
              helper.make_node("Slice", ["kshape", "i2", "i3"], ["s_"]), helper.make_node("Slice", ["kshape", "i3", "i4"], ["d_"]),
              helper.make_node("Concat", ["minus1", "s_d"], ["t1"], axis=0),
              helper.make_node("Reshape", ["k", "t1"], ["k3"]),
              helper.make_node("Transpose", ["k3"], ["k3t"], perm=list(mid_perm))]
    lead = ["b_", "h_"] if second_target == "transpose" else ["h_", "b_"]
    nodes += [helper.make_node("Concat", [*lead, "d_", "s_"], ["t2"], axis=0),
              helper.make_node("Reshape", ["k3t", "t2"], ["kt"]),
              helper.make_node("MatMul", ["q", "kt"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merged"], ["om"]),
              helper.make_node("MatMul", ["om", "wo"], ["y"])]
    return make_model(nodes, [("x", ["b", "s", E])], [("y", ["b", "s", E])], inits, opset=18)


def test_the_reshapes_around_a_transpose_become_one_and_the_heads_prune():
    model = gp.load(_attention().SerializeToString())
    kt = next(n for n in model.graph if n.outputs[0].name == "kt")
    assert kt.op_type == "Transpose" and list(kt.attributes["perm"].value) == [0, 1, 3, 2]
    assert kt.inputs[0].name == "k"
    assert sum(n.op_type == "Reshape" for n in model.graph) == 4  # three heads' splits and the merge back
    pruned, plan, dg = prune_and_check(_attention(), fraction=0.5, min_groups=1)
    assert H in [g.num_atoms for g in dg.prunable_groups]
    assert list(pruned.graph.initializers["wq"].shape) == [E, H * D // 2]


@pytest.mark.parametrize("case", [dict(second_target="swapped"), dict(mid_perm=(1, 0, 2))],
                         ids=["batch_and_heads_swapped", "merged_axis_moved"])
def test_three_nodes_that_are_not_a_transpose_stay(case):
    """The second Reshape does not give back K's leading dims, or the Transpose moves the
    merged axis: not a transpose of K, left alone."""
    model = gp.load(_attention(**case).SerializeToString())
    assert sum(n.op_type == "Reshape" for n in model.graph) == 6
    assert next(n for n in model.graph if n.outputs[0].name == "kt").op_type == "Reshape"
