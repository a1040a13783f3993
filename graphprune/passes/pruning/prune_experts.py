"""Whole experts of mixture-of-experts layers (ONNX Runtime's com.microsoft MoE).

An MoE layer routes each token to the top k of its E experts by router logits (the output
of a MatMul/Gemm of the hidden state). `prune-experts{keep=N}` keeps the N experts of each
layer that the router sends the most weight to on the calibration data (random inputs
without it), and removes the others physically: their slices (axis 0) of every expert
tensor, and their columns of the router weight (and bias).

Exactness has its own form here. Zeroing an expert's weights does not remove it: the
router still picks it and its zero output takes a top-k slot. Removing it equals routing
nothing to it, i.e. its router logit at -inf (softmax weight 0, never in the top k while
N >= k experts remain). So the plan records each layer's removed experts (`plan.experts`),
and the oracle's masked original zeroes their slices *and* adds -inf to their router
logits (graphprune.runtime.oracle.masked_original, _route_around); `check` and `--plan` rebuild both from
the input model and the plan alone.

Refused, naming the node: a router that is not a MatMul/Gemm with a constant weight read
only by this layer, router logits read by anything but the MoE, N < k or N >= E.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.errors import PlanError, UsageError
from graphprune.ir.constants import const_array, set_const_array
from graphprune.ir.moe import expert_values, is_moe, top_k
from graphprune.passes._infra import Pass, PassContext, register_pass

log = logging.getLogger(__name__)



@dataclass
class MoeLayer:
    node: ir.Node
    logits: ir.Value  # the router's output, the MoE's router_probs input
    router_weight: ir.Value
    router_axis: int  # the expert axis of the router weight
    router_bias: ir.Value | None
    experts: int
    k: int

    @property
    def name(self) -> str:
        return self.node.name or self.logits.name

    def expert_tensors(self) -> list[ir.Value]:
        return expert_values(self.node)


def _attr(node: ir.Node, key: str, default):
    a = node.attributes.get(key)
    return default if a is None else a.value


def _refuse(node: ir.Node, why: str) -> UsageError:
    return UsageError(f"prune-experts: MoE {node.name or node.outputs[0].name!r}: {why}",
                      hint="see `graphprune inspect` for the layer; --keep-experts prunes MoE layers whose router "
                           "is a MatMul/Gemm of constant weights read by the layer alone")


def _router(node: ir.Node, logits: ir.Value, experts: int) -> tuple[ir.Value, int, ir.Value | None]:
    """The router weight, its expert axis, and its bias, of the MatMul/Gemm making `logits`."""
    prod = logits.producer()
    if len(logits.uses()) != 1 or logits.is_graph_output():
        raise _refuse(node, "its router logits are read by other nodes too")
    if prod is None or prod.op_type not in ("MatMul", "Gemm") or prod.domain not in ("", "ai.onnx"):
        raise _refuse(node, f"its router logits come from {prod.op_type if prod is not None else 'a graph input'}, "
                            "not a MatMul/Gemm")
    w = prod.inputs[1]
    arr = const_array(w)
    if arr is None or arr.ndim != 2 or len(w.uses()) != 1:
        raise _refuse(node, "its router weight is not a 2-D constant read by the router alone")
    axis = 0 if prod.op_type == "Gemm" and int(_attr(prod, "transB", 0)) else 1
    if prod.op_type == "Gemm" and int(_attr(prod, "transA", 0)):
        raise _refuse(node, "its router Gemm transposes the hidden state (transA)")
    if arr.shape[axis] != experts:
        raise _refuse(node, f"its router weight has {arr.shape[axis]} outputs for {experts} experts")
    bias = prod.inputs[2] if prod.op_type == "Gemm" and len(prod.inputs) > 2 else None
    if bias is not None:
        b = const_array(bias)
        if b is None or b.shape != (experts,) or len(bias.uses()) != 1:
            raise _refuse(node, "its router bias is not a constant of one value per expert read by the router alone")
    return w, axis, bias


def find_moe_layers(model: ir.Model) -> list[MoeLayer]:
    """Every com.microsoft MoE node with the router this pass can slice (else UsageError)."""
    layers = []
    for node in model.graph:
        if not is_moe(node):
            continue
        fc1 = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if fc1 is None or fc1.ndim != 3:
            raise _refuse(node, "its expert weights are not 3-D constants")
        experts = fc1.shape[0]
        for v in expert_values(node):
            a = const_array(v)
            if a is None or a.shape[0] != experts or len(v.uses()) != 1:
                raise _refuse(node, f"expert tensor {v.name!r} is not a constant of {experts} experts read by "
                                    "the layer alone")
        logits = node.inputs[1]
        w, axis, bias = _router(node, logits, experts)
        layers.append(MoeLayer(node, logits, w, axis, bias, experts, top_k(node)))
    return layers


def routing_mass(model: ir.Model, layers: list[MoeLayer], feeds_list=None, n_random: int = 2) -> dict[str, np.ndarray]:
    """Per layer: the router weight each expert receives, summed over the tokens of the
    feeds (softmax over all experts, the top k kept, renormalised when the layer is); random
    inputs only without feeds (random token ids say little about a language model's routing)."""
    from graphprune.runtime import ort

    sess = ort.session_with_outputs(model, [la.logits.name for la in layers])
    names = [o.name for o in sess.get_outputs()]
    feeds_list = list(feeds_list or []) or [ort.random_inputs(sess, seed=s) for s in range(n_random)]
    mass = {la.name: np.zeros(la.experts) for la in layers}
    for feeds in feeds_list:
        out = dict(zip(names, sess.run(None, feeds), strict=True))
        for la in layers:
            z = out[la.logits.name].astype(np.float64).reshape(-1, la.experts)
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            top = np.argsort(-p, axis=1, kind="stable")[:, :la.k]
            w = np.take_along_axis(p, top, axis=1)
            if int(_attr(la.node, "normalize_routing_weights", 0)):
                w /= w.sum(axis=1, keepdims=True)
            np.add.at(mass[la.name], top.ravel(), w.ravel())
    return mass


def remove_experts(layer: MoeLayer, removed: list[int]) -> list[dict]:
    """Slice the layer's expert tensors and router columns; the slices as plan entries."""
    entries = []
    for v, axis in [(t, 0) for t in layer.expert_tensors()] + [(layer.router_weight, layer.router_axis)] + \
            ([(layer.router_bias, 0)] if layer.router_bias is not None else []):
        arr = const_array(v)
        entries.append({"name": v.name, "axis": axis, "removed": list(removed)})
        set_const_array(v, np.delete(arr, removed, axis=axis))
    kept = layer.experts - len(removed)
    if layer.logits.shape is not None:
        layer.logits.shape = ir.Shape([*layer.logits.shape[:-1], kept])
    return entries


def record(layer: MoeLayer, removed: list[int], entries: list[dict], scores: np.ndarray | None) -> dict:
    """The plan's record of one layer (`plan.experts` entry)."""
    rec = {"moe": layer.name, "logits": layer.logits.name, "experts": layer.experts, "k": layer.k,
           "removed": list(removed), "tensors": entries}
    if scores is not None:
        rec["routing_mass"] = [round(float(s), 6) for s in scores]
    return rec


@register_pass
class PruneExperts(Pass):
    """Keep `keep` experts per MoE layer (the most routed-to on the calibration data)."""

    name = "prune-experts"
    description = "remove whole experts of com.microsoft MoE layers (router columns with their expert weights)"

    def __init__(self, *, keep: int = 0):
        super().__init__(keep=keep)
        if keep < 0:
            raise UsageError(f"prune-experts: keep must be >= 0, got {keep}")

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        layers = find_moe_layers(model)
        plan_in = ctx.results.get("plan_in")
        chosen: dict[str, list[int]] = {}
        scores = None
        if plan_in is not None and plan_in.experts:
            by_logits = {la.logits.name: la for la in layers}  # the router's output names the layer
            scores = {}
            for e in plan_in.experts:
                la = by_logits.get(e["logits"])
                if la is None or la.experts != e["experts"]:
                    raise PlanError(f"plan removes experts of MoE layer {e['moe']!r} ({e['experts']} experts, router "
                                    f"{e['logits']!r}), which this model does not have",
                                    hint="was the plan made for another model?")
                chosen[la.name] = list(e["removed"])
                if e.get("routing_mass") is not None:  # the planned run's figures, kept with its choice
                    scores[la.name] = np.asarray(e["routing_mass"])
        else:
            keep = int(self.options.get("keep", 0))
            if not keep:
                return False
            if not layers:
                raise UsageError("prune-experts: the model has no com.microsoft MoE layer",
                                 hint="--keep-experts applies to ONNX Runtime's MoE op (Mixtral/Phi-MoE-style exports)")
            for la in layers:
                if not la.k <= keep < la.experts:
                    raise _refuse(la.node, f"--keep-experts {keep} must be at least its top-k ({la.k}) and fewer "
                                           f"than its {la.experts} experts")
            if ctx.results.get("calibration") is None:
                log.warning("prune-experts: no calibration data; experts are ranked by routing on random inputs")
            scores = routing_mass(model, layers, ctx.results.get("calibration"))
            for la in layers:
                order = np.argsort(scores[la.name], kind="stable")
                chosen[la.name] = sorted(int(i) for i in order[:la.experts - keep])
        records = []
        if any(chosen.values()):
            from graphprune.passes.pruning.plan_channels import note_input_cost

            note_input_cost(model, ctx.results)  # cost targets stay fractions of the input
        for la in layers:
            removed = chosen.get(la.name, [])
            if removed:
                entries = remove_experts(la, removed)
                records.append(record(la, removed, entries, (scores or {}).get(la.name)))
        ctx.results["removed_experts"] = records
        from graphprune.plan import Plan

        ctx.results.setdefault("plan", Plan(tensors=[], groups=[])).experts = records
        if records:
            log.debug("prune-experts: %s", "; ".join(f"{r['moe']}: {r['experts']} -> {r['experts'] - len(r['removed'])}"
                                                    for r in records))
        return bool(records)
