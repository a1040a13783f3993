"""The Einsum rule: labels kept in the output couple, summed labels couple only where a
factor is zero in the masked original; the oracle on random removals."""
from __future__ import annotations

import pytest
from onnx import helper

import graphprune as gp
from helpers import make_model, prune_and_check, w


def groups(m):
    dg = gp.analyze(gp.load(m.SerializeToString()))
    return sorted(g.num_atoms for g in dg.prunable_groups), dg


def _linear(eq="bsd,df->bsf"):
    """x -> MatMul (12) -> relu -> Einsum with W (12 -> 10) -> relu -> MatMul -> y."""
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Einsum", ["r", "we"], ["e"], equation=eq), helper.make_node("Relu", ["e"], ["s"]),
             helper.make_node("MatMul", ["s", "w1"], ["y"])]
    inits = {"w0": w(16, 12, seed=1), "we": w(12, 10, seed=2), "w1": w(10, 5, seed=3)}
    return make_model(nodes, [("x", ["B", "S", 16])], [("y", ["B", "S", 5])], inits)


@pytest.mark.parametrize("eq", ["bsd,df->bsf", "...d,df->...f", "abc,cd"])  # implicit: output abd
def test_a_linear_layer_written_as_einsum(eq):
    m = _linear(eq)
    atoms, _ = groups(m)
    assert atoms == [10, 12]
    for seed in range(3):
        prune_and_check(m, seed=seed, min_groups=2)


def _attention(phi: str | None):
    """q, k, v = x·w (12, 12, 10 wide); scores = einsum(q, k) over the 12; out = einsum(p, v):
    q·k sums over q's and k's channels, both zero at a removed one (linear layers) unless a
    feature map phi (sigmoid: 0.5 there) comes first."""
    nodes = [helper.make_node("MatMul", ["x", f"w{t}"], [t]) for t in "qkv"]
    q, k = "q", "k"
    if phi:
        nodes += [helper.make_node(phi, ["q"], ["pq"]), helper.make_node(phi, ["k"], ["pk"])]
        q, k = "pq", "pk"
    nodes += [helper.make_node("Einsum", [q, k], ["sc"], equation="bqd,bkd->bqk"),
              helper.make_node("Softmax", ["sc"], ["p"], axis=-1),
              helper.make_node("Einsum", ["p", "v"], ["o"], equation="bqk,bkd->bqd"),
              helper.make_node("MatMul", ["o", "wo"], ["y"])]
    inits = {"wq": w(16, 12, seed=1), "wk": w(16, 12, seed=2), "wv": w(16, 10, seed=3), "wo": w(10, 16, seed=4)}
    return make_model(nodes, [("x", [2, 6, 16])], [("y", [2, 6, 16])], inits)


def test_attention_written_as_einsum_prunes_query_key_and_value_channels():
    m = _attention(None)
    atoms, _ = groups(m)
    assert atoms == [10, 12]
    for seed in range(3):
        prune_and_check(m, seed=seed, min_groups=2)


def test_a_sum_over_activations_not_zero_where_masked_freezes():
    m = _attention("Sigmoid")
    atoms, dg = groups(m)
    assert atoms == [10]  # v's channels only
    assert any("Einsum sums over label 'd'" in r for f in dg.frozen_groups for r in f.reasons)
    prune_and_check(m, min_groups=1)


def test_a_diagonal_freezes():
    """einsum('bii->bi'): the label repeats in one operand."""
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"]),  # [B, 12, 12]
             helper.make_node("Einsum", ["a"], ["d"], equation="bii->bi"),
             helper.make_node("MatMul", ["d", "w1"], ["y"])]
    m = make_model(nodes, [("x", ["B", 12, 16])], [("y", ["B", 5])], {"w0": w(16, 12, seed=1), "w1": w(12, 5, seed=2)})
    _, dg = groups(m)
    assert any("repeats in one operand" in r for f in dg.frozen_groups for r in f.reasons)


def test_an_outer_product_then_a_contraction_with_a_weight():
    """einsum('bi,bj->bij') of two linear outputs, flattened, then a weight: i and j each
    couple with their producer; the flatten makes blocks of the consumer's rows."""
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"]), helper.make_node("MatMul", ["x", "wb"], ["b"]),
             helper.make_node("Einsum", ["a", "b"], ["o"], equation="bi,bj->bij"),
             helper.make_node("Einsum", ["o", "wc"], ["y"], equation="bij,ijk->bk")]
    inits = {"wa": w(8, 6, seed=1), "wb": w(8, 4, seed=2), "wc": w(6, 4, 5, seed=3)}
    m = make_model(nodes, [("x", ["B", 8])], [("y", ["B", 5])], inits)
    atoms, _ = groups(m)
    assert atoms == [4, 6]
    for seed in range(3):
        prune_and_check(m, seed=seed, min_groups=2)


def test_einsum_macs_are_counted_and_predicted_by_the_allocation():
    """Einsum counted 0 MACs (a linear layer or an attention written as einsum); the count is
    one MAC per combination of its labels, and the allocation's cost model of a selection
    equals the pruned model's count (as for the other layers)."""
    import numpy as np

    from graphprune.allocation.cost import mac_model, mac_shapes
    from graphprune.analysis.cost import model_cost

    m = _attention(None)
    model = gp.load(m.SerializeToString())
    b, s = 2, 6
    attention = b * s * s * 12 + b * s * s * 10  # the scores over q/k's 12, the weighted sum of v's 10
    assert model_cost(model).macs == b * s * 16 * (12 + 12 + 10) + attention + b * s * 10 * 16
    assert model_cost(model).uncounted == []
    dg = gp.analyze(model)
    cm = mac_model(model, dg, mac_shapes(model, {"x": np.zeros((b, s, 16), np.float32)}))
    assert cm.dense == model_cost(model).macs
    selection = {g.id: list(range(0, g.num_atoms, 3)) for g in dg.prunable_groups}
    predicted = cm.total(selection)
    res = gp.prune(m.SerializeToString(), selection=selection)
    assert predicted == model_cost(res.model).macs
