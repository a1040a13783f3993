"""ONNX Runtime's fused transformer ops (com.microsoft), as its transformer optimizer
(`onnxruntime.transformers.optimizer`, optimum's ORTOptimizer) writes them into BERT, GPT-2
and ViT models: `BiasGelu`, `FastGelu`, `Gelu`, `QuickGelu`, `SkipLayerNormalization`,
`SkipSimplifiedLayerNormalization`, and ORT's `SimplifiedLayerNormalization` (an RMSNorm
registered in the default domain). Without rules every slot around them froze, and with
them the FFN channels of an optimized model (MatMul -> BiasGelu -> MatMul).

* The activations are elementwise; BiasGelu's / FastGelu's bias is added along the last
  axis first, so it is coupled there and sliced with the channels (a removed channel's
  input and bias are zero in the masked original, and the next layer's weights read none
  of it either).
* The norms take their statistics over the last axis: that axis (the hidden size) is frozen,
  as a LayerNormalization's is when its statistics cannot be kept over the original width;
  the fused form is not rewritten. The leading axes pass through, and a skip input
  broadcasts against the input as an Add does.
"""
from __future__ import annotations

from graphprune.analysis.dependency.registry import rule
from graphprune.ir.moe import MS

_ELEMENTWISE = ["Gelu", "QuickGelu", "BiasGelu", "FastGelu"]
_SKIP_NORMS = ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"]


@rule(_ELEMENTWISE, domain=MS)
def gelu(node, ctx):
    """y = act(x [+ bias over the last axis]); the bias (BiasGelu's second input, FastGelu's
    optional one) is a vector of the last axis."""
    x, bias, y = ctx.input(0), ctx.input(1), ctx.output(0)
    if (dx := ctx.dims_or_freeze_all(x)) is None:
        return
    ctx.identity(x, y)
    if bias is None:
        return
    db = ctx.dims(bias)
    if db is None or len(db) != 1 or db[0] != dx[-1]:
        ctx.freeze_all(f"{node.op_type}: a bias that is not one vector of the last axis")
        return
    ctx.couple(bias, 0, y, -1)
    if ctx.is_const(bias):
        ctx.param(bias, 0, "bias")


def _freeze_hidden(ctx, values, op: str) -> None:
    reason = (f"{op} (ONNX Runtime's fused norm) normalises over this axis; it is not rewritten "
              f"to keep its statistics over the original width")
    for v in values:
        if v is not None and ctx.dims(v):
            ctx.freeze(v, -1, reason)


@rule(_SKIP_NORMS, domain=MS)
def skip_norm(node, ctx):
    """s = input + skip (+ bias); output = norm(s) * gamma (+ beta); outputs: output, mean,
    inv_std_var, s. Leading axes: as an Add; the last axis: frozen."""
    x, skip = ctx.input(0), ctx.input(1)
    if (dx := ctx.dims_or_freeze_all(x)) is None:
        return
    outs = [ctx.output(i) for i in range(len(node.outputs))]
    full = [o for i, o in enumerate(outs) if o is not None and i in (0, 3)]
    stats = [o for i, o in enumerate(outs) if o is not None and i in (1, 2)]
    for o in full:
        if ctx.dims(o) != dx:
            ctx.freeze_all(f"{node.op_type}: an output not of the input's shape")
            return
        ctx.broadcast([x, skip], o)
    for o in stats:  # [..., 1]: per row
        d = ctx.dims(o)
        if d is None or len(d) != len(dx):
            ctx.freeze(o, None, f"{node.op_type}: statistics of an unknown shape")
            continue
        for ax in range(len(dx) - 1):
            ctx.couple(x, ax, o, ax)
    _freeze_hidden(ctx, [x, skip, *node.inputs[2:], *full, *stats], node.op_type)


@rule("SimplifiedLayerNormalization")
def simplified_norm(node, ctx):
    """ORT's RMSNorm: y = x / rms(x over `axis`..) * scale; outputs y, inv_std_var."""
    x, y = ctx.input(0), ctx.output(0)
    if (dx := ctx.dims_or_freeze_all(x)) is None:
        return
    axis = int(ctx.attr("axis", -1))
    axis = axis + len(dx) if axis < 0 else axis
    if y is None or ctx.dims(y) != dx or not 0 <= axis < len(dx):
        ctx.freeze_all(f"{node.op_type}: an output not of the input's shape")
        return
    reason = f"{node.op_type} (ONNX Runtime's RMSNorm) normalises over this axis"
    for ax in range(len(dx)):
        if ax < axis:
            ctx.couple(x, ax, y, ax)
        else:
            ctx.freeze(x, ax, reason)
            ctx.freeze(y, ax, reason)
    for v in [*node.inputs[1:], *node.outputs[1:]]:
        ctx.freeze(v, None, reason)
