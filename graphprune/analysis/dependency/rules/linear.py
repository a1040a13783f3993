"""Gemm and MatMul: the contracted axis couples both operands; free axes go to the output."""
from __future__ import annotations

from graphprune.analysis.dependency.registry import rule
from graphprune.analysis.dependency.rules.zero_channels import is_weight, keeps_zero
from graphprune.ir.quant import is_quantized_const


def _weight_roles(ctx, *vals_axes):
    for v, ax in vals_axes:
        if ctx.is_const(v) or is_quantized_const(v):  # a QDQ weight: DequantizeLinear(int constant)
            ctx.param(v, ax, "weight")
        elif (src := _transposed_const(ctx, v)) is not None:
            # nn.Linear as torch exports it unoptimised: MatMul(x, Transpose(W)). W is the weight
            # (its axis perm[ax]); without the role, round_to and magnitude took it for any constant
            w, perm = src
            ctx.param(w, perm[ax], "weight")


def _transposed_const(ctx, v):
    """(W, perm) when `v` is Transpose(W) of a constant W, else None."""
    p = v.producer() if v is not None else None
    if p is None or p.op_type != "Transpose" or p.domain not in ("", "ai.onnx") or not ctx.is_const(p.inputs[0]):
        return None
    rank = len(ctx.dims(v) or ())
    perm = p.attributes.get("perm")
    perm = list(perm.value) if perm is not None else list(range(rank))[::-1]
    return (p.inputs[0], perm) if len(perm) == rank else None


@rule("Gemm")
def gemm(node, ctx):
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    y = node.outputs[0]
    ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    a_m, a_k = (1, 0) if ta else (0, 1)
    b_k, b_n = (1, 0) if tb else (0, 1)
    ctx.couple(a, a_m, y, 0)
    _contract(ctx, node, (a, a_k), (b, b_k))
    ctx.couple(b, b_n, y, 1)
    _weight_roles(ctx, (a, a_m), (a, a_k), (b, b_k), (b, b_n))
    if c is not None:
        ctx.broadcast([c], y)
        for ax, d in enumerate(ctx.dims(c) or ()):
            if d != 1:
                ctx.param(c, ax, "bias")


@rule("MatMul")
def matmul(node, ctx):
    a, b = node.inputs
    y = node.outputs[0]
    da, db, dy = ctx.dims(a), ctx.dims(b), ctx.dims(y)
    if da is None or db is None or dy is None or len(da) < 1 or len(db) < 1:
        ctx.freeze_all("MatMul with unknown ranks")
        return
    ra, rb, ry = len(da), len(db), len(dy)
    if ra == 1 and rb == 1:
        _contract(ctx, node, (a, 0), (b, 0))
        return
    if ra == 1:  # [K] @ [..., K, N] -> [..., N]
        _contract(ctx, node, (a, 0), (b, rb - 2))
        ctx.couple(b, rb - 1, y, ry - 1)
        _batch(ctx, b, db[:-2], y, dy[:-1])
        _weight_roles(ctx, (b, rb - 2), (b, rb - 1))
        return
    if rb == 1:  # [..., M, K] @ [K] -> [..., M]
        _contract(ctx, node, (a, ra - 1), (b, 0))
        ctx.couple(a, ra - 2, y, ry - 1)
        _batch(ctx, a, da[:-2], y, dy[:-1])
        _weight_roles(ctx, (a, ra - 2), (a, ra - 1))
        return
    _contract(ctx, node, (a, ra - 1), (b, rb - 2))
    ctx.couple(a, ra - 2, y, ry - 2)
    ctx.couple(b, rb - 1, y, ry - 1)
    _batch(ctx, a, da[:-2], y, dy[:-2])
    _batch(ctx, b, db[:-2], y, dy[:-2])
    _weight_roles(ctx, (a, ra - 2), (a, ra - 1), (b, rb - 2), (b, rb - 1))


def _contract(ctx, node, a_axis, b_axis) -> None:
    """Couple the contracted axes of both operands, unless both are activations and neither
    is zero at a removed channel in the masked original (rules.zero_channels): then the
    removed terms are not zero there, and the axis is frozen."""
    (a, ax), (b, bx) = a_axis, b_axis
    if is_weight(a) or is_weight(b) or keeps_zero(a, ax) or keeps_zero(b, bx):
        ctx.couple(a, ax, b, bx)
        return
    why = (f"{node.op_type} contracts two activations over this axis and neither is zero at a removed channel "
           "(e.g. elu(x) + 1 or sigmoid feature maps): removing it would not be exact")
    ctx.freeze(a, ax, why)
    ctx.freeze(b, bx, why)


def _batch(ctx, v, vdims, y, ydims):
    """Broadcast the leading (batch) axes of one operand onto the output's."""
    off = len(ydims) - len(vdims)
    for ax, d in enumerate(vdims):
        if d == 1:
            ctx.unchanged(v, ax)
        elif d == ydims[ax + off]:
            ctx.couple(v, ax, y, ax + off)
        else:
            ctx.freeze(v, ax, "MatMul batch axes do not broadcast")
