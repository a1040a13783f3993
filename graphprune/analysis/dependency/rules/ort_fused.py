"""ONNX Runtime's fused transformer ops (com.microsoft), as its transformer optimizer
(`onnxruntime.transformers.optimizer`, optimum's ORTOptimizer) writes them into BERT, GPT-2
and ViT models: `BiasGelu`, `FastGelu`, `Gelu`, `QuickGelu`, `SkipLayerNormalization`,
`SkipSimplifiedLayerNormalization`, ORT's `SimplifiedLayerNormalization` (an RMSNorm
registered in the default domain) and `Attention`. Without rules every slot around them
froze, and with them the FFN channels (MatMul -> BiasGelu -> MatMul) and the heads of an
optimized model.

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

import numpy as np

from graphprune.analysis.dependency.registry import rule
from graphprune.ir.moe import MS
from graphprune.ir.ms_attention import heads_of

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


@rule("Attention", domain=MS)
def attention(node, ctx):
    """Self-attention with packed Q, K, V weights (ir.ms_attention): whole heads. Each head's
    Q, K and V columns (and biases) and its output channels are one atom through a virtual
    slot of `num_heads` elements; `num_heads` and `qkv_hidden_sizes` are rewritten. In the
    masked original a removed head's query and key are zero (its scores are equal) and its
    values are zero, so it outputs zeros, which the next layer's zeroed rows read anyway.
    A past / present (a cache with a head axis) or an attention bias keeps the heads; so does
    rotary embedding."""
    x, w, b, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    dx, dw = ctx.dims(x), ctx.dims(w)
    split = heads_of(node, dw[1]) if dw is not None and len(dw) == 2 else None
    if dx is None or len(dx) != 3 or y is None or split is None or ctx.dims(y) != [dx[0], dx[1], split.v] \
            or not ctx.is_const(w) or dw[0] != dx[2]:
        ctx.freeze_all("Attention: a weight that is not a constant [D, q + k + v] of its heads")
        return
    for ax in (0, 1):
        ctx.couple(x, ax, y, ax)
    ctx.couple(x, 2, w, 0)
    ctx.param(w, 0, "weight")
    if b is not None:
        if ctx.dims(b) != [split.width]:
            ctx.freeze_all("Attention: a bias that is not one vector of its packed columns")
            return
        ctx.couple(w, 1, b, 0)
        ctx.param(b, 0, "bias")
    ctx.structural(ctx.input(3))  # mask_index
    cache = [v for v in (*node.inputs[4:], *node.outputs[1:]) if v is not None]
    if cache or int(ctx.attr("do_rotary", 0)):
        reason = "Attention with a past/present cache, an attention bias or rotary embedding keeps its heads"
        ctx.freeze(w, 1, reason)
        ctx.freeze(y, 2, reason)
        for v in cache:
            ctx.freeze(v, None, reason)
        return
    ctx.param(w, 1, "weight")
    ctx.couple_virtual("heads", split.heads, w, 1, np.arange(split.width), split.of_columns())
    ctx.couple_virtual("heads", split.heads, y, 2, np.arange(split.v), split.of_outputs())
    sized = "qkv_hidden_sizes" in node.attributes

    def rewrite(rc):
        gone = len(rc.virtual_removed("heads"))
        if not gone:
            return
        left = split.heads - gone
        rc.set_attr_int("num_heads", left)
        if sized:
            rc.set_attr_ints("qkv_hidden_sizes", [split.q // split.heads * left, split.k // split.heads * left,
                                                  split.v // split.heads * left])

    ctx.on_prune(rewrite)
