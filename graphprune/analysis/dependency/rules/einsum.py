"""Einsum: every label couples the axes it names.

A label kept in the output couples its axis in each operand with the output's (where an
operand is broadcast along it, size 1, nothing is sliced there). A label summed over (a
contraction, or a sum over one operand's axis) drops, for a removed index k, the terms
with k: exact only when one factor of each such term is zero in the masked original — a
constant operand (masked with the channel), or an activation zero there
(rules.zero_channels); otherwise the label's axes freeze. A label repeated in one operand
(a diagonal or a trace) freezes. The equation itself names no sizes: no rewrite.
"""
from __future__ import annotations

from graphprune.analysis.dependency.registry import rule
from graphprune.analysis.dependency.rules.zero_channels import is_weight
from graphprune.ir.einsum import einsum_labels


@rule("Einsum", since=12)
def einsum(node, ctx):
    y = node.outputs[0]
    ins = list(node.inputs)
    dims = [ctx.dims(v) for v in ins]
    dy = ctx.dims(y)
    eq = ctx.attr("equation", b"")
    eq = eq.decode() if isinstance(eq, bytes) else str(eq)
    parsed = einsum_labels(eq, [len(d) for d in dims]) if dy is not None and None not in dims else None
    if parsed is None or len(parsed[1]) != len(dy):
        ctx.freeze_all(f"Einsum {eq!r}: ranks unknown or not those the equation names")
        return
    in_labels, out_labels = parsed
    for label in dict.fromkeys(lab for labs in in_labels for lab in labs):
        _label(node, ctx, label, ins, dims, in_labels, out_labels)
    for v, d in zip(ins, dims, strict=True):
        if ctx.is_const(v):
            for ax, size in enumerate(d):
                if size != 1:
                    ctx.param(v, ax, "weight")


def _label(node, ctx, label, ins, dims, in_labels, out_labels) -> None:
    y = node.outputs[0]
    where = [(v, labs.index(label), d[labs.index(label)]) for v, d, labs in zip(ins, dims, in_labels, strict=True)
             if label in labs]
    out_ax = out_labels.index(label) if label in out_labels else None
    sizes = {size for _, _, size in where if size != 1}
    repeated = any(labs.count(label) > 1 for labs in in_labels)
    if not sizes and not repeated:  # size 1 everywhere: nothing to slice
        for v, ax, _ in where:
            ctx.unchanged(v, ax)
        if out_ax is not None:
            ctx.unchanged(y, out_ax)
        return
    if repeated or len(sizes) > 1:
        why = f"Einsum label {label!r} " + ("repeats in one operand" if repeated else "has no single size")
        for v, ax, _ in where:
            ctx.freeze(v, ax, why)
        if out_ax is not None:
            ctx.freeze(y, out_ax, why)
        return
    carried = [(v, ax) for v, ax, size in where if size != 1]
    for v, ax, size in where:
        if size == 1:
            ctx.unchanged(v, ax)  # broadcast along the label: nothing to slice
    if out_ax is not None:
        for v, ax in carried:
            ctx.couple(v, ax, y, out_ax)
        return
    if not any(is_weight(v) or ctx.keeps_zero(v, ax) for v, ax in carried):
        why = (f"Einsum sums over label {label!r} of activations none of which is zero at a removed channel: "
               "removing it would not be exact")
        for v, ax in carried:
            ctx.freeze(v, ax, why)
        return
    first = carried[0]
    if len(carried) == 1:
        ctx.sums_over(*first)
    for v, ax in carried[1:]:
        ctx.couple(first[0], first[1], v, ax)
