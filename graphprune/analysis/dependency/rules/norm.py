"""Normalisations and softmax-like ops.

Per-channel normalisations (BatchNorm, InstanceNorm) couple their parameters with the
channel axis. GroupNorm removes whole groups. Ops that normalise *across* an axis
(LayerNorm over its trailing axes, Softmax, LRN, LpNormalization) change every element
when one is removed, so that axis is frozen: removal there would not be exact.
"""
from __future__ import annotations

import numpy as np

from graphprune.analysis.dependency.registry import rule


@rule("BatchNormalization")
def batch_norm(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    if any(o is not None for o in node.outputs[1:]):
        ctx.freeze_all("BatchNormalization in training mode")
        return
    ctx.identity(x, y)
    for v, role in zip(node.inputs[1:5], ("norm_scale", "norm_bias", "norm_mean", "norm_var"), strict=True):
        ctx.couple(x, 1, v, 0)
        ctx.param(v, 0, role)


@rule("InstanceNormalization")
def instance_norm(node, ctx):
    x, scale, bias = node.inputs[:3]
    y = node.outputs[0]
    ctx.couple(x, 0, y, 0)
    ctx.couple(x, 1, y, 1)
    for v, role in ((scale, "norm_scale"), (bias, "norm_bias")):
        ctx.couple(x, 1, v, 0)
        ctx.param(v, 0, role)
    # Spatial axes are normalised over: left unmapped, hence frozen.


@rule("GroupNormalization", since=18)
def group_norm(node, ctx):
    x, scale, bias = node.inputs[:3]
    y = node.outputs[0]
    dx = ctx.dims(x)
    groups = int(ctx.attr("num_groups"))
    c = dx[1]
    if not isinstance(c, int) or c % groups:
        ctx.freeze_all("GroupNormalization with unknown or uneven channel count")
        return
    per = c // groups
    ctx.couple(x, 0, y, 0)
    ctx.couple(x, 1, y, 1)
    ctx.couple_virtual("groups", groups, x, 1, np.arange(c), np.arange(c) // per)
    for v, role in ((scale, "norm_scale"), (bias, "norm_bias")):
        size = (ctx.dims(v) or [None])[0]
        if size == c:
            ctx.couple(x, 1, v, 0)
        elif size == groups:  # opset 18: one scale/bias per group
            ctx.couple(x, 1, v, 0, np.arange(c), np.arange(c) // per)
        else:
            ctx.freeze_all("GroupNormalization scale/bias of unexpected size")
            return
        ctx.param(v, 0, role)

    def rewrite(rc):
        rc.set_attr_int("num_groups", groups - len(rc.virtual_removed("groups")))

    ctx.on_prune(rewrite)


@rule("LayerNormalization")
@rule("RMSNormalization", since=23)
def layer_norm(node, ctx):
    """The normalised axis freezes, unless it is the last one alone and its removed channels
    are zero in the masked original (a residual stream whose writers' weights are masked):
    then the statistics, taken over the original width with those zeros, are kept exact by
    padding the zeros back for the normalisation (`_over_original_width`). RMSNormalization
    (opset 23: X, scale; the mean of squares) is the same with no mean and no bias."""
    x, y = node.inputs[0], node.outputs[0]
    if (dx := ctx.dims_or_freeze_all(x)) is None:
        return
    axis = int(ctx.attr("axis", -1))
    axis = axis + len(dx) if axis < 0 else axis
    for ax in range(axis):
        ctx.couple(x, ax, y, ax)
    why_not = _why_not_over_original_width(node, ctx, axis, len(dx))
    ctx.normalised_width(x, len(dx) - 1)  # pruned or not, a hidden size (said when frozen)
    if why_not is None:
        ctx.couple(x, axis, y, axis)
        for v, role in zip(node.inputs[1:3], ("norm_scale", "norm_bias"), strict=False):  # bias is optional
            if v is not None:
                ctx.couple(x, axis, v, 0)
                ctx.param(v, 0, role)
        # the dims as analysed: a norm before this one may already have given x its pruned width
        ctx.on_prune(lambda rc: _over_original_width(rc, list(dx)))
        return
    reason = f"{node.op_type} normalises over this axis and {why_not}: removal would not be exact"
    for ax in range(axis, len(dx)):
        ctx.freeze(x, ax, reason)
        ctx.freeze(y, ax, reason)
    for v in node.inputs[1:]:
        ctx.freeze(v, None, reason)
    for o in node.outputs[1:]:
        ctx.freeze(o, None, reason)


def _why_not_over_original_width(node, ctx, axis: int, rank: int) -> str | None:
    """None when the statistics can be kept over the original width: one normalised axis,
    the last; constant per-channel scale (and bias); no mean or inverse std dev output read;
    the input zero at removed channels in the masked original. Else what is missing."""
    def per_channel(v):
        d = ctx.dims(v)
        return v is not None and ctx.is_const(v) and d is not None and len(d) == 1 and d[0] == ctx.dims(x)[-1]

    x = node.inputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if axis != rank - 1:
        return "over more than the last axis"
    if any(o is not None and (o.uses() or o.is_graph_output()) for o in node.outputs[1:]):
        return "its mean or inverse standard deviation is read"
    if not per_channel(node.inputs[1]) or bias is not None and not per_channel(bias):
        return "its scale or bias is not a constant of its own per channel (computed, or shared through an op)"
    if not ctx.keeps_zero(x, axis):
        return "its input is not known to be zero at a removed channel"
    return None


def _over_original_width(rc, dims: list) -> None:
    """LayerNorm(x) of the masked original takes its mean and variance over the original
    width, the removed channels being zeros: Pad puts those zeros back (at the end; the order
    does not change a mean), a LayerNormalization (RMSNormalization) with scale and bias padded alike runs over
    them, and a Slice keeps the channels left. Scale and bias are 0 on the padding. `dims`:
    x's dims when analysed (x may be an earlier rewrite's output, already narrower)."""
    node = rc.node
    x, y = node.inputs[0], node.outputs[0]
    rank = len(dims)
    removed = rc.removed(x, rank - 1)
    if not len(removed):
        return
    kept = int(dims[rank - 1]) - len(removed)
    padded = rc.zeros_put_back(x, dims, [rank - 1])
    params = []
    for v in node.inputs[1:3]:
        if v is None:
            continue
        a = np.asarray(rc.const(v))
        whole = np.concatenate([np.delete(a, removed), np.zeros(len(removed), dtype=a.dtype)])
        params.append(rc.new_const(whole, f"{v.name}_padded"))
    attrs = {k: a.value for k, a in node.attributes.items()}
    normed = rc.insert(node.op_type, [padded, *params], like=y, attributes=attrs, hint="over_original_width")
    sliced = rc.insert("Slice", [normed, rc.new_const(np.array([0], np.int64), f"{node.name}_start"),
                                 rc.new_const(np.array([kept], np.int64), f"{node.name}_end"),
                                 rc.new_const(np.array([rank - 1], np.int64), f"{node.name}_axis")],
                       like=y, hint="kept_channels")
    rc.take_place_of(y, sliced)


def _across_axis(kind: str, default_axis, since13_axis=None):
    def fn(node, ctx):
        x, y = node.inputs[0], node.outputs[0]
        if (dx := ctx.dims_or_freeze_all(x)) is None:
            return
        axis = ctx.attr("axis", default_axis if ctx.opset < 13 or since13_axis is None else since13_axis)
        axis = int(axis) + len(dx) if int(axis) < 0 else int(axis)
        # Before opset 13 softmax flattens [axis:] into one axis: all of them are coupled.
        frozen = set(range(axis, len(dx))) if (kind == "softmax" and ctx.opset < 13) else {axis}
        for ax in range(len(dx)):
            if ax in frozen:
                ctx.freeze(x, ax, f"{node.op_type} mixes values along this axis")
                ctx.freeze(y, ax, f"{node.op_type} mixes values along this axis")
            else:
                ctx.couple(x, ax, y, ax)

    return fn


rule(["Softmax", "LogSoftmax", "Hardmax"])(_across_axis("softmax", 1, -1))
rule("LpNormalization")(_across_axis("lpnorm", -1))
rule("LRN")(_across_axis("lrn", 1))
