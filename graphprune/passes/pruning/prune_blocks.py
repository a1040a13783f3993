"""Depth pruning: remove whole residual blocks (the Add becomes its skip input).

Which blocks go is decided by a criterion — block influence (how much the block changes
the stream on calibration or random inputs: ‖branch‖ / ‖skip + branch‖), weight
magnitude, or a user list — never by the pass on its own. The plan records the removed
blocks, and — the public contract — the constant slices whose zeroing makes each removed
branch exactly zero (`branch_zeroing`): its last layer's weight and bias, or a closing
norm's scale and bias. A block whose branch cannot be zeroed that way is not removed.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from graphprune.analysis.blocks import ResidualBlock, find_residual_blocks
from graphprune.errors import PlanError, UsageError
from graphprune.ir.constants import const_array, is_constant
from graphprune.passes._infra import Pass, PassContext, register_pass
from graphprune.passes.cleanup.dce import eliminate_dead_code

log = logging.getLogger(__name__)


def block_influence(model: ir.Model, blocks: list[ResidualBlock], feeds_list: list[dict] | None = None,
                    n_random: int = 2) -> dict[str, float]:
    """Mean ‖branch‖ / ‖skip + branch‖ per block, measured with ONNX Runtime."""
    from graphprune.ir.serialize import clone
    from graphprune.runtime import ort
    from graphprune.runtime.positions import padding_mask, zero_padding

    probe = clone(model)
    known = {v.name for v in probe.graph.outputs}
    values = {o.name: o for n in probe.graph for o in n.outputs}
    for b in blocks:
        for name in (b.skip, b.branch):
            if name not in known and name in values:
                probe.graph.outputs.append(values[name])
                known.add(name)
    sess = ort.session(probe)
    names = [o.name for o in sess.get_outputs()]
    feeds_list = list(feeds_list or []) + [ort.random_inputs(sess, seed=k) for k in range(n_random)]
    acc: dict[str, list[float]] = {b.id: [] for b in blocks}
    for feeds in feeds_list:
        out = dict(zip(names, sess.run(None, feeds), strict=True))
        mask = padding_mask(feeds)  # a text batch's padded positions: not part of any norm
        for b in blocks:
            s, br = (zero_padding(out[n].astype(np.float64), mask) for n in (b.skip, b.branch))
            acc[b.id].append(float(np.linalg.norm(br) / max(np.linalg.norm(s + br), 1e-12)))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def block_magnitude(model: ir.Model, blocks: list[ResidualBlock]) -> dict[str, float]:
    """Mean |w| over the block's weights (a data-free proxy)."""
    scores = {}
    for b in blocks:
        total, count = 0.0, 0
        for name in b.nodes:
            n = model.graph.node(name)
            for v in n.inputs:
                if v is not None and v.const_value is not None and v.dtype is not None and v.dtype.is_floating_point():
                    a = v.const_value.numpy()
                    total += float(np.abs(a).sum())
                    count += a.size
        scores[b.id] = total / max(count, 1)
    return scores


# Ops whose output is 0 where their (only data) input is 0: the zeroing walks through them.
_ZERO_KEEPING = frozenset({"Identity", "Relu", "LeakyRelu", "Dropout", "Reshape", "Transpose", "Flatten", "Squeeze",
                           "Unsqueeze", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})


def branch_zeroing(block: ResidualBlock, model: ir.Model) -> list[dict] | None:
    """Plan `tensors` entries (whole tensors: every index on axis 0) whose zeroing in the
    input model makes the block's branch output exactly zero, or None when that cannot be
    expressed through constant slices.

    Walking back from the branch output through zero-keeping ops and Adds, each path must end
    at a *terminal* made zero by its constants alone: Conv/ConvTranspose/Gemm/MatMul with a
    constant weight (weight and bias zeroed), Mul by a constant, BatchNormalization or
    LayerNormalization (scale and bias zeroed); an Add of a constant zeroes that constant too.
    A zeroed tensor must be read by its terminal only (a weight shared with other layers
    would change them), float, and of rank >= 1; an already all-zero tensor needs no entry.
    No terminal may feed another, so every terminal reads the inputs it had."""
    graph_nodes = {n.name: n for n in model.graph}
    inside = {id(graph_nodes[name]) for name in block.nodes if name in graph_nodes}
    entries: dict[str, dict] = {}
    terminals: list[ir.Node] = []

    def zero_const(v: ir.Value | None, node: ir.Node) -> bool:
        if v is None:
            return True
        if not is_constant(v):
            return False
        arr = const_array(v)
        if arr is None or not np.issubdtype(arr.dtype, np.floating):
            return False
        if not arr.any():
            return True  # zeroing zeros is a no-op (e.g. an exporter's shared zero bias)
        if arr.ndim == 0 or any(u.node is not node for u in v.uses()):
            return False
        entries[v.name] = {"name": v.name, "axis": 0, "removed": list(range(int(arr.shape[0])))}
        return True

    def make_zero(v: ir.Value) -> bool:
        node = v.producer()
        if node is None or id(node) not in inside or node.domain not in ("", "ai.onnx"):
            return False
        op, ins = node.op_type, list(node.inputs)
        if op in _ZERO_KEEPING:
            return bool(ins) and ins[0] is not None and make_zero(ins[0])
        if op == "Add" and len(ins) == 2:
            return all(zero_const(x, node) if is_constant(x) else make_zero(x) for x in ins)
        terminals.append(node)
        return _zero_terminal(node, zero_const)

    branch = next((o for n in model.graph if n.name == block.add for o in n.inputs
                   if o is not None and o.name == block.branch), None)
    if branch is None or not make_zero(branch):
        return None
    # a terminal downstream of another could read a changed (e.g. divided-by-zero) input
    if _terminal_feeds_another(terminals, inside):
        return None
    return sorted(entries.values(), key=lambda t: t["name"])


def _zero_terminal(node: ir.Node, zero_const) -> bool:
    """Whether zeroing the terminal's constants (through `zero_const`) zeroes its output."""
    op, ins = node.op_type, list(node.inputs)
    if op in ("Conv", "ConvTranspose"):
        return len(ins) > 1 and zero_const(ins[1], node) and zero_const(ins[2] if len(ins) > 2 else None, node)
    if op in ("Gemm", "MatMul", "Mul") and len(ins) >= 2:
        const = [x for x in ins[:2] if is_constant(x)]
        bias = ins[2] if op == "Gemm" and len(ins) > 2 else None
        return len(const) >= 1 and zero_const(const[-1], node) and zero_const(bias, node)
    if op == "BatchNormalization" and len(node.outputs) == 1 or op == "LayerNormalization":
        return len(ins) > 1 and zero_const(ins[1], node) and zero_const(ins[2] if len(ins) > 2 else None, node)
    return False


def _terminal_feeds_another(terminals: list[ir.Node], inside: set[int]) -> bool:
    """Whether a terminal reaches another one inside the block."""
    term_ids = {id(t) for t in terminals}
    for t in terminals:
        stack, seen = list(t.outputs), set()
        while stack:
            for use in stack.pop().uses():
                n = use.node
                if id(n) in seen or id(n) not in inside:
                    continue
                if id(n) in term_ids:
                    return True
                seen.add(id(n))
                stack.extend(n.outputs)
    return False


def remove_blocks(model: ir.Model, blocks: list[ResidualBlock]) -> None:
    for b in blocks:
        add = model.graph.node(b.add)
        # by the branch: an earlier removed block may have replaced this one's skip value
        skip = next(v for v in add.inputs if v.name != b.branch)
        add.outputs[0].replace_all_uses_with(skip, replace_graph_outputs=False)
        if add.outputs[0].is_graph_output():
            idx = [k for k, v in enumerate(model.graph.outputs) if v is add.outputs[0]][0]
            ident = ir.Node("", "Identity", [skip], name=f"{b.add}_identity")
            model.graph.insert_after(add, ident)
            name = add.outputs[0].name
            add.outputs[0].name = f"{name}_removed"
            ident.outputs[0].name = name
            ident.outputs[0].shape, ident.outputs[0].dtype = skip.shape, skip.dtype
            model.graph.outputs[idx] = ident.outputs[0]
    eliminate_dead_code(model)


@register_pass
class PruneBlocks(Pass):
    """Options: n (how many blocks), criterion (influence|magnitude), blocks (list of Add
    node names to remove, overrides n/criterion), protect (list of Add names to keep)."""

    name = "prune-blocks"
    description = "remove whole residual blocks (depth pruning)"

    def __init__(self, *, n: int = 0, criterion: str = "influence", blocks: list[str] | None = None,
                 protect: list[str] | None = None):
        super().__init__()
        if n < 0:
            raise UsageError(f"prune-blocks: n must be >= 0, got {n}")
        if criterion not in ("influence", "magnitude"):
            raise UsageError(f"prune-blocks: unknown criterion {criterion!r}", hint="influence or magnitude")

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        opts = dict(self.options)
        found = find_residual_blocks(model)
        zeroing = {b.id: branch_zeroing(b, model) for b in found}
        inexact = [b.id for b in found if zeroing[b.id] is None]
        if inexact:
            log.info("prune-blocks: %d residual block(s) kept, their branch cannot be zeroed through constant "
                     "slices (the plan could not rebuild their removal): %s", len(inexact), ", ".join(inexact[:5]))
        by_id = {b.id: b for b in found}
        by_key = {b.key: b for b in found}
        plan_in = ctx.results.get("plan_in")
        if plan_in is not None:
            missing = [e for e in plan_in.blocks if (e["skip"], e["branch"]) not in by_key]
            if missing:
                raise PlanError(f"plan removes residual block {missing[0]['skip']} + {missing[0]['branch']}, "
                                "which this model does not have", hint="was the plan made for another model?")
            wanted = [by_key[(e["skip"], e["branch"])].id for e in plan_in.blocks]
            for e, w in zip(plan_in.blocks, wanted, strict=True):
                if "tensors" in e and zeroing[w] is not None and \
                        sorted(map(repr, e["tensors"])) != sorted(map(repr, zeroing[w])):
                    raise PlanError(f"plan zeroes other slices for residual block {e['skip']} + {e['branch']} than "
                                    "this model's branch needs", hint="was the plan made for another model?")
        elif opts.get("blocks"):
            wanted = opts["blocks"] if isinstance(opts["blocks"], list) else [opts["blocks"]]
        else:
            n = int(opts.get("n", 0))
            protect = set(opts.get("protect") or [])
            cands = [b for b in found if b.id not in protect and zeroing[b.id] is not None]
            if n > len(cands):
                raise UsageError(f"prune-blocks: asked for {n} blocks, the model has {len(cands)} removable ones")
            crit = opts.get("criterion", "influence")
            if crit == "influence":
                scores = block_influence(model, cands, ctx.results.get("calibration"))
            elif crit == "magnitude":
                scores = block_magnitude(model, cands)
            else:
                raise UsageError(f"prune-blocks: unknown criterion {crit!r}", hint="influence or magnitude")
            ctx.results["block_scores"] = scores
            wanted = [b.id for b in sorted(cands, key=lambda b: scores[b.id])[:n]]
        missing = [w for w in wanted if w not in by_id]
        if missing:
            raise PlanError(f"no removable residual block ends at {missing[:3]}",
                            hint="see `graphprune inspect --blocks` for the model's blocks")
        chosen = [by_id[w] for w in wanted]
        # A block nested in another chosen block disappears with it: keep the outer one only.
        inner = {n for b in chosen for n in b.nodes}
        chosen = [b for b in chosen if b.add not in inner]
        bad = [b for b in chosen if zeroing[b.id] is None]
        if bad:
            raise PlanError(f"residual block {bad[0].add} cannot be removed exactly: its branch ({bad[0].branch}) does "
                            "not end in a layer or norm whose constants can be zeroed (plans list every removal as "
                            "zeroed tensor slices)", hint="see `graphprune inspect --blocks`; choose another block")
        ctx.results.setdefault("removed_blocks", []).extend(
            {"add": b.add, "skip": b.skip, "branch": b.branch, "nodes": len(b.nodes), "params": b.params,
             "score": ctx.results.get("block_scores", {}).get(b.id), "tensors": zeroing[b.id]} for b in chosen)
        from graphprune.plan import Plan

        plan = ctx.results.setdefault("plan", Plan(tensors=[], groups=[]))
        plan.blocks = ctx.results["removed_blocks"]
        if not chosen:
            return False
        from graphprune.passes.pruning.plan_channels import note_input_cost

        note_input_cost(model, ctx.results)  # cost targets stay fractions of the input
        remove_blocks(model, chosen)
        log.info("prune-blocks: removed %d residual blocks", len(chosen))
        return True
