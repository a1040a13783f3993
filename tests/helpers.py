"""Shared test helpers: tiny model construction and the oracle on arbitrary selections."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.allocation import select_lowest
from graphprune.runtime import oracle


def make_model(nodes, inputs, outputs, inits=(), opset=17, check=True) -> onnx.ModelProto:
    """inputs/outputs: list of (name, shape) float tensors or ValueInfoProto; inits: dict name->array."""
    def vi(x):
        if isinstance(x, onnx.ValueInfoProto):
            return x
        name, shape = x
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in dict(inits).items()]
    g = helper.make_graph(nodes, "t", [vi(x) for x in inputs], [vi(x) for x in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    if check:
        onnx.checker.check_model(m, full_check=True)
    return m


def w(*shape, seed=None, scale=1.0):
    rng = np.random.default_rng(seed if seed is not None else abs(hash(shape)) % 2**31)
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def random_selection(dg, rng: np.random.Generator, fraction: float | None = None) -> dict[int, list[int]]:
    """Remove a random subset of atoms from every prunable group (never emptying a slot)."""
    sel = {}
    for g in dg.prunable_groups:
        f = rng.uniform(0.1, 0.7) if fraction is None else fraction
        n = max(1, int(g.num_atoms * f))
        atoms = select_lowest(g, rng.random(g.num_atoms), n)
        if atoms:
            sel[g.id] = atoms
    return sel


def prune_and_check(proto: onnx.ModelProto, *, seed: int = 0, fraction: float | None = None,
                    selection=None, min_groups: int = 1, ratio: float | None = None, rtol: float = 1e-4,
                    full_check: bool = True, vacuous: str = "fail"):
    """Prune `proto` (random selection, or `ratio` with the default criterion), then assert:
    onnx.checker full check passes, ONNX Runtime runs it, and the oracle holds.
    Returns (pruned ir model, plan, dependency graph of the input).
    `vacuous="reject"` (inside a hypothesis test): a model whose outputs are all below the
    oracle's floor at random inputs cannot be judged, and the example is rejected instead
    of failing; it never counts as a pass."""
    data = proto.SerializeToString()
    model = gp.load(data)
    dg = gp.analyze(model)
    assert len(dg.prunable_groups) >= min_groups, (
        f"expected >= {min_groups} prunable groups, got {[(g.name, g.num_atoms) for g in dg.groups]}; "
        f"frozen: {[(f.name, f.reasons) for f in dg.frozen_groups]}")
    if ratio is not None:
        res = gp.prune(model, ratio, round_to=1)  # tiny widths: every group pruned, whatever the host's lanes
    else:
        sel = selection if selection is not None else random_selection(dg, np.random.default_rng(seed), fraction)
        res = gp.prune(model, selection=sel)
    pruned_proto = ir.serde.serialize_model(res.model)
    onnx.checker.check_model(pruned_proto, full_check=full_check)
    original = ir.serde.deserialize_model(onnx.load_from_string(data))
    result = oracle.check(original, res.model, res.plan, n_random=2, seed=seed, rtol=rtol)
    if result.refused and vacuous == "reject":
        from hypothesis import reject

        reject()
    assert result.ok, f"oracle failed: {result.refused or result.diffs}"
    return res.model, res.plan, dg
