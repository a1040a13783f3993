"""Elementwise ops: unary activations (all axes one to one) and broadcasting binaries."""
from __future__ import annotations

from graphprune.analysis.dependency.registry import rule

UNARY = (
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Erf Gelu Softplus Softsign Mish Elu "
    "Selu Celu ThresholdedRelu Exp Neg Abs Sqrt Ceil Floor Round Sign Sin Cos Not Identity "
    "Cast Swish IsNaN IsInf"
).split()


@rule(UNARY)
def unary(node, ctx):
    ctx.identity(node.inputs[0], node.outputs[0])


@rule("CastLike")
def cast_like(node, ctx):
    ctx.identity(node.inputs[0], node.outputs[0])
    d = ctx.dims(node.inputs[1])  # only its dtype is read
    ctx.unchanged(node.inputs[1], *range(len(d or ())))


@rule("Clip")
def clip(node, ctx):
    ctx.identity(node.inputs[0], node.outputs[0])
    for v in node.inputs[1:]:
        d = ctx.dims(v)
        if v is not None and d and any(x != 1 for x in d):
            ctx.freeze_all("Clip with non-scalar bounds")
            return
        ctx.structural(v)


@rule("Dropout")
def dropout(node, ctx):
    ctx.identity(node.inputs[0], node.outputs[0])
    if len(node.outputs) > 1 and node.outputs[1] is not None:
        ctx.identity(node.inputs[0], node.outputs[1])
    ctx.structural(*node.inputs[1:])


BINARY = "Add Sub Mul Max Min Sum Mean Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor".split()


def _const_params(ctx, values, role: str = "elementwise") -> None:
    """Give constant operands their role on every non-broadcast axis."""
    for v in values:
        if v is not None and ctx.is_const(v):
            for ax, d in enumerate(ctx.dims(v) or ()):
                if d != 1:
                    ctx.param(v, ax, role)


@rule(BINARY)
def binary(node, ctx):
    ctx.broadcast(list(node.inputs), node.outputs[0])
    _const_params(ctx, node.inputs)


@rule("Pow")
def power(node, ctx):
    """A removed channel of the base is 0 in the masked original, and 0 to a negative power is
    inf (inf times the next layer's zeroed column: NaN, and the oracle has nothing to
    compare). The base's channels are coupled only under a constant exponent >= 0."""
    import numpy as np

    base, exponent, out = node.inputs[0], node.inputs[1], node.outputs[0]
    e = ctx.const(exponent)
    ctx.broadcast([base, exponent], out)
    _const_params(ctx, [exponent])
    if e is not None and np.all(np.asarray(e) >= 0):
        _const_params(ctx, [base])
        return
    db, dout = ctx.dims(base), ctx.dims(out)
    if db is None or dout is None:
        ctx.freeze_all("Pow with an exponent that is not a constant >= 0, and unknown ranks")
        return
    why = "Pow of this axis by an exponent that may be negative (0 to it is inf in the masked original)"
    off = len(dout) - len(db)
    for ax, d in enumerate(db):
        if d != 1:
            ctx.freeze(base, ax, why)
            ctx.freeze(out, ax + off, why)


@rule(["Div", "Mod"])
def divide(node, ctx):
    """Zero-masking a per-channel divisor would divide by zero in the masked original,
    so a divisor may only broadcast over the channel axes; per-channel divisors freeze."""
    a, b = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    db, dout = ctx.dims(b), ctx.dims(out)
    if db is None or dout is None:
        ctx.freeze_all(f"{node.op_type}: unknown ranks")
        return
    ctx.broadcast([a, b], out)
    off = len(dout) - len(db)
    for ax, d in enumerate(db):
        if d != 1:
            ctx.freeze(b, ax, f"{node.op_type} by a tensor that varies along this axis")
            ctx.freeze(out, ax + off, f"{node.op_type} by a tensor that varies along this axis")
    _const_params(ctx, [a])


@rule("Where")
def where(node, ctx):
    ctx.broadcast(list(node.inputs), node.outputs[0])
    _const_params(ctx, node.inputs)


@rule("PRelu")
def prelu(node, ctx):
    ctx.broadcast([node.inputs[0], node.inputs[1]], node.outputs[0])
    _const_params(ctx, [node.inputs[1]], "slope")
