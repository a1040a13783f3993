"""QDQ quantization: QuantizeLinear and DequantizeLinear.

Both are elementwise: every axis of x maps one to one onto y. What decides whether channels
pass is the scale / zero point:

* per-tensor (one element): it is kept as it is, channels pass through;
* per-axis on a constant (a QDQ weight, e.g. [M, C, k, k] with axis 0): the scale and zero
  point are coupled with that axis of the integer weight, so they are sliced with it. The
  weight's other axes (a conv's input channels) are pruned too: each element dequantizes
  with its own channel's scale, which removing other elements does not change;
* everything else fails closed (frozen, with the reason): per-axis quantization of a
  computed tensor (per-channel activation quantization), a per-axis QuantizeLinear,
  blocked quantization (block_size), computed scales or zero points (dynamic
  quantization), a QuantizeLinear of a constant (weights are expected stored as integers),
  and a quantized constant that is also read by another op (its masking would be ambiguous;
  see graphprune.ir.quant).

DynamicQuantizeLinear (dynamic quantization) is elementwise too, but its scale and zero
point are computed from the whole tensor's range (always including 0). Removing channels
leaves that range as it is only when they are zero in the masked original: an axis whose
removed channels come from masked weights through zero-keeping ops (rules.zero_channels)
passes; any other axis freezes (a sigmoid's 0.5 at a removed channel would stretch the
masked original's range, and its scale, alone).

The integer-op formats (QLinearConv, QLinearMatMul, QGemm, QLinearAdd ..., and dynamic
quantization's MatMulInteger and ConvInteger) have their rules in qlinear.py, ONNX Runtime's
block-quantized MatMulNBits in nbits.py; any other quantized op freezes what it touches.
"""
from __future__ import annotations

from graphprune.analysis.dependency.registry import rule
from graphprune.analysis.dependency.rules.zero_channels import keeps_zero
from graphprune.ir.constants import is_constant


def _per_tensor(dims) -> bool:
    return len(dims) <= 1 and all(d == 1 for d in dims)


def _qdq(node, ctx, dequantize: bool) -> None:
    op = node.op_type
    x, scale = ctx.input(0), ctx.input(1)
    zp, y = ctx.input(2), node.outputs[0]
    dx = ctx.dims_or_freeze_all(x)
    if dx is None:
        return
    ds = ctx.dims(scale)
    if ds is None or (zp is not None and ctx.dims(zp) is None):
        ctx.freeze_all(f"{op}: scale / zero point of unknown shape")
        return
    if ctx.attr("block_size", 0):
        ctx.freeze_all(f"{op}: blocked quantization (block_size) is not supported")
        return
    if not dequantize and is_constant(x):
        ctx.freeze_all(f"{op} of a constant: quantized weights are read as integer constants")
        return
    if dequantize and is_constant(x) and len(list(x.uses())) > 1:
        ctx.freeze_all(f"{op}: quantized constant {x.name!r} is also read elsewhere")
        return
    if _per_tensor(ds):
        ctx.identity(x, y)
        ctx.structural(scale, zp)  # constants kept; computed ones (dynamic quantization) freeze
        return
    _per_axis(node, ctx, dequantize, x, scale, zp, y, dx, ds)


def _per_axis(node, ctx, dequantize, x, scale, zp, y, dx, ds) -> None:
    op = node.op_type
    if not dequantize:
        ctx.freeze_all(f"{op}: per-axis quantization of activations is not supported")
        return
    if not is_constant(x):
        ctx.freeze_all(f"{op}: per-axis dequantization of a computed tensor "
                       "(per-channel activation quantization) is not supported")
        return
    if ctx.const(scale) is None or (zp is not None and ctx.const(zp) is None):
        ctx.freeze_all(f"{op}: per-axis scale / zero point computed at run time")
        return
    axis = int(ctx.attr("axis", 1))
    axis = axis + len(dx) if axis < 0 else axis
    if len(ds) != 1 or not 0 <= axis < len(dx) or ds[0] != dx[axis] or \
            (zp is not None and list(ctx.dims(zp)) != list(ds)):
        ctx.freeze_all(f"{op}: per-axis scale / zero point do not match axis {axis} of {x.name!r}")
        return
    ctx.identity(x, y)
    ctx.couple(scale, 0, x, axis)
    ctx.param(scale, 0, "scale")
    if zp is not None:
        ctx.couple(zp, 0, x, axis)
        ctx.param(zp, 0, "zero_point")


@rule("DequantizeLinear", since=10)
def dequantize_linear(node, ctx):
    _qdq(node, ctx, dequantize=True)


@rule("QuantizeLinear", since=10)
def quantize_linear(node, ctx):
    _qdq(node, ctx, dequantize=False)


@rule("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(node, ctx):
    """y (output 0) maps x axis by axis where x keeps zeros at removed channels; the scalar
    scale and zero point (outputs 1, 2) carry no channel."""
    x, y = node.inputs[0], node.outputs[0]
    dx = ctx.dims_or_freeze_all(x)
    if dx is None or ctx.dims(y) is None or len(ctx.dims(y)) != len(dx):
        ctx.freeze_all("DynamicQuantizeLinear: ranks of input and output differ or are unknown")
        return
    for ax in range(len(dx)):
        if keeps_zero(x, ax):
            ctx.couple(x, ax, y, ax)
            continue
        why = ("DynamicQuantizeLinear takes its scale from the whole tensor's range: removed channels must be "
               "zero in the masked original, and this axis's are not known to be")
        ctx.freeze(x, ax, why)
        ctx.freeze(y, ax, why)
