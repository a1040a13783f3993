"""Integer-op (QOperator) quantization: QLinearConv, QLinearMatMul, and ONNX Runtime's
com.microsoft QGemm, QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearAveragePool,
QLinearConcat, QLinearSigmoid, QLinearLeakyRelu — what `onnxruntime.quantization.quantize_static` writes
with QuantFormat.QOperator.

Each couples channels exactly as its float op does, on the same data inputs at other
positions (x, w, b of QLinearConv are inputs 0, 3, 8), so each rule runs the float op's
rule on a view of those inputs. The scales and zero points decide the rest:

* activations (x, y, and both operands of QLinearAdd/Mul) must be per tensor: their scale
  and zero point are kept as they are. A per-row scale of QLinearMatMul's `a` freezes;
* a weight's per-axis (per-output-channel) scale and zero point are sliced with the weight
  axis they run along; per-tensor ones are kept.

The dynamic-quantization integer ops (what `quantize_dynamic` writes) follow the same
scheme with zero points only: MatMulInteger (a 0, b 1, a_zero_point 2, b_zero_point 3) and
ConvInteger (x 0, w 1, x_zero_point 2, w_zero_point 3) couple as MatMul and Conv; the
activation's zero point is one scalar (DynamicQuantizeLinear's, computed: kept), the
weight's is per tensor or per output column / channel (sliced with it). The scales are not
inputs: the float Mul after the int32 output's Cast carries them, and its rules slice them.

Why the masked original stays exact in integers: a removed weight slice is set to its zero
point and an int32 bias to 0 (graphprune.ir.quant.masking_fill), so the removed output
channel's accumulator is 0 and its requantized value is exactly y's zero point, which every
reader sees as 0 (its weights for that input channel are at their zero point too, and
QLinearAdd adds (zp - zp) * scale = 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphprune.analysis.dependency.registry import rule
from graphprune.analysis.dependency.rules.conv import _grouped_conv
from graphprune.analysis.dependency.rules.elementwise import binary
from graphprune.analysis.dependency.rules.linear import gemm, matmul
from graphprune.analysis.dependency.rules.shape_ops import concat

MS = "com.microsoft"


@dataclass
class _View:
    """A node's data inputs at the positions its float op has them (rules read `inputs`,
    `outputs` and `op_type`; attributes and rewrites go to the real node through ctx)."""

    inputs: list
    outputs: list
    op_type: str


def _view(node, *idx: int) -> _View:
    ins = [node.inputs[i] if i < len(node.inputs) else None for i in idx]
    while ins and ins[-1] is None:
        ins.pop()
    return _View(ins, list(node.outputs), node.op_type)


def _size(ctx, v) -> int | None:
    d = ctx.dims(v)
    if d is None or not all(isinstance(x, int) for x in d):
        return None
    return int(np.prod(d)) if d else 1


def _per_tensor(ctx, node, *idx: int) -> bool:
    """The scales / zero points at `idx` are constants of one element each (kept as they
    are); otherwise the whole node freezes, naming them."""
    vals = [node.inputs[i] for i in idx if i < len(node.inputs) and node.inputs[i] is not None]
    bad = [v.name for v in vals if not ctx.is_const(v) or _size(ctx, v) != 1]
    if bad:
        ctx.freeze_all(f"{node.op_type}: scale / zero point {', '.join(bad)} not one constant per tensor")
        return False
    ctx.structural(*vals)
    return True


def _weight_scales(ctx, node, w, w_axis: int, *idx: int) -> None:
    """A weight's scale and zero point (inputs `idx`): per tensor (kept), or one per index
    of `w_axis` (sliced with it)."""
    vals = [node.inputs[i] for i in idx if i < len(node.inputs) and node.inputs[i] is not None]
    if ctx.is_const(w):
        from graphprune.ir.quant import masking_fill

        try:  # the masked original sets a removed slice to its zero point: one for every reader
            masking_fill(w)
        except ValueError as exc:  # read with two zero points, or also as plain integers (a Cast)
            ctx.freeze_all(f"{node.op_type}: {exc}: no single value of a removed slice masks it for every reader")
            return
    dw = ctx.dims(w)
    for v in vals:
        n = _size(ctx, v)
        if not ctx.is_const(v) or n is None:
            ctx.freeze_all(f"{node.op_type}: weight scale / zero point {v.name!r} computed at run time")
            return
    for v in vals:
        n = _size(ctx, v)
        if n == 1:
            ctx.structural(v)
        elif dw is not None and len(ctx.dims(v)) == 1 and n == dw[w_axis]:
            ctx.couple(v, 0, w, w_axis)
            ctx.param(v, 0, "scale")
        else:
            ctx.freeze_all(f"{node.op_type}: weight scale / zero point {v.name!r} of {n} values does not match "
                           f"axis {w_axis} of the weight")
            return


@rule("QLinearConv", since=10)
def qlinear_conv(node, ctx):
    """x 0, w 3 ([M, C/group, k...]), b 8 (int32); x/y scales 1, 2, 6, 7; w scales 4, 5."""
    if not _per_tensor(ctx, node, 1, 2, 6, 7):
        return
    _grouped_conv(_view(node, 0, 3, 8), ctx, transposed=False)
    _weight_scales(ctx, node, node.inputs[3], 0, 4, 5)


@rule("QLinearMatMul", since=10)
def qlinear_matmul(node, ctx):
    """a 0, b 3 ([..., K, N]); a scales 1, 2 (per tensor), b scales 4, 5 (per tensor or per
    column N), y scales 6, 7."""
    if not _per_tensor(ctx, node, 1, 2, 6, 7):
        return
    matmul(_view(node, 0, 3), ctx)
    db = ctx.dims(node.inputs[3])
    if db is not None:
        _weight_scales(ctx, node, node.inputs[3], len(db) - 1, 4, 5)


@rule("QGemm", domain=MS)
def qgemm(node, ctx):
    """A 0, B 3, C 6 (int32); A scales 1, 2; B scales 4, 5 (per tensor or per N); y scales
    7, 8 (absent: a float output)."""
    if not _per_tensor(ctx, node, 1, 2, 7, 8):
        return
    gemm(_view(node, 0, 3, 6), ctx)
    _weight_scales(ctx, node, node.inputs[3], 0 if int(ctx.attr("transB", 0)) else 1, 4, 5)


@rule(["QLinearAdd", "QLinearMul"], domain=MS)
def qlinear_binary(node, ctx):
    """A 0, B 3 (broadcast as Add/Mul); all scales per tensor (1, 2, 4, 5, 6, 7)."""
    if not _per_tensor(ctx, node, 1, 2, 4, 5, 6, 7):
        return
    binary(_view(node, 0, 3), ctx)


@rule(["QLinearGlobalAveragePool", "QLinearAveragePool"], domain=MS)
def qlinear_pool(node, ctx):
    """X 0 pooled over its spatial axes; batch and channel axes pass (channels last with
    `channels_last=1`)."""
    if not _per_tensor(ctx, node, 1, 2, 3, 4):
        return
    x, y = node.inputs[0], node.outputs[0]
    dx = ctx.dims_or_freeze_all(x)
    if dx is None:
        return
    ctx.couple(x, 0, y, 0)
    c = len(dx) - 1 if int(ctx.attr("channels_last", 0)) else 1
    ctx.couple(x, c, y, c)


@rule(["QLinearSigmoid", "QLinearLeakyRelu"], domain=MS)
def qlinear_unary(node, ctx):
    if not _per_tensor(ctx, node, 1, 2, 3, 4):
        return
    ctx.identity(node.inputs[0], node.outputs[0])


@rule("QLinearConcat", domain=MS)
def qlinear_concat(node, ctx):
    """y scale 0, 1; then (x, x scale, x zero point) per input: Concat of the xs."""
    if not _per_tensor(ctx, node, 0, 1, *[i for k in range(2, len(node.inputs), 3) for i in (k + 1, k + 2)]):
        return
    concat(_View([node.inputs[i] for i in range(2, len(node.inputs), 3)], list(node.outputs), node.op_type), ctx)


def _scalar_activation_zero_point(ctx, node, i: int) -> bool:
    """The activation's zero point (input `i`): absent or one value (kept; computed by
    DynamicQuantizeLinear, or constant); a per-row one freezes the node."""
    zp = node.inputs[i] if i < len(node.inputs) else None
    if zp is not None and _size(ctx, zp) != 1:
        ctx.freeze_all(f"{node.op_type}: the activation's zero point {zp.name!r} is not one value")
        return False
    if zp is not None:
        ctx.unchanged(zp, *range(len(ctx.dims(zp) or ())))
    return True


@rule("MatMulInteger", since=10)
def matmul_integer(node, ctx):
    """(a - a_zp) @ (b - b_zp) in int32: MatMul of a 0 and b 1; b's zero point 3 per
    tensor or per column N."""
    if not _scalar_activation_zero_point(ctx, node, 2):
        return
    matmul(_view(node, 0, 1), ctx)
    db = ctx.dims(node.inputs[1])
    if db is not None:
        _weight_scales(ctx, node, node.inputs[1], len(db) - 1, 3)


@rule("ConvInteger", since=10)
def conv_integer(node, ctx):
    """(x - x_zp) * (w - w_zp) convolved in int32: Conv of x 0 and w 1 (no bias); w's zero
    point 3 per tensor or per output channel."""
    if not _scalar_activation_zero_point(ctx, node, 2):
        return
    _grouped_conv(_view(node, 0, 1), ctx, transposed=False)
    _weight_scales(ctx, node, node.inputs[1], 0, 3)
