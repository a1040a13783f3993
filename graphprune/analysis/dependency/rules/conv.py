"""Conv and ConvTranspose, grouped and depthwise.

Grouped convolutions keep every group the same size by construction:
* depthwise-like (one input channel per group): input channel g and the output channels
  of group g form one atom, so whole groups go and `group` is rewritten;
* otherwise, channels at the same position in every group are tied into one atom, so
  each group loses the same positions and `group` stays.
Which channels go is then any set of atoms, and no plan can make groups uneven.
"""
from __future__ import annotations

import numpy as np

from graphprune.analysis.dependency.registry import rule
from graphprune.analysis.dependency.rules.zero_channels import is_weight, keeps_zero


def _spatial_unchanged(ctx, x, y, w, first_kernel_axis=2):
    ctx.couple(x, 0, y, 0)
    kernel = range(first_kernel_axis, len(ctx.dims(w) or ()))
    if ctx.is_const(w):
        ctx.unchanged(w, *kernel)
        return
    # a computed weight (Cast of fp16 weights, Identity, Mul by a scale) couples its kernel
    # axes to the tensors it is made from: left unfrozen, they became prunable "channels"
    for ax in kernel:
        ctx.freeze(w, ax, "a kernel axis of the convolution's weight")


def _set_group(ctx, x, new_groups_from_input: bool, group: int):
    def rewrite(rc):
        rc.set_attr_int("group", group - len(rc.removed(x, 1)))

    if new_groups_from_input:
        ctx.on_prune(rewrite)


def _grouped_conv(node, ctx, transposed: bool) -> None:
    """Conv (weight [M, C/group, k...]) and ConvTranspose (weight [C, M/group, k...]) couple
    alike with the weight's first two axes swapped: `rows` is the tensor whose channels
    index the weight's axis 0 (y for Conv, x for ConvTranspose), `cols` the one whose
    channels, one group's worth, index its axis 1."""
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    y = node.outputs[0]
    dx, dw = ctx.dims(x), ctx.dims(w)
    dm, m_axis = (ctx.dims(y), 1) if transposed else (dw, 0)  # where the output channel count is read
    if dx is None or dw is None or dm is None or not isinstance(dx[1], int) or not isinstance(dm[m_axis], int):
        ctx.freeze_all(f"{node.op_type} with unknown channel counts")
        return
    if not (is_weight(w) or keeps_zero(x, 1) or keeps_zero(w, 0 if transposed else 1)):
        # a computed weight (a dynamic convolution) and an input channel that neither side
        # zeroes in the masked original: removing it would drop nonzero terms (rules.zero_channels)
        ctx.freeze_all(f"{node.op_type} with a computed weight that is not zero at a removed input channel")
        return
    group = int(ctx.attr("group", 1))
    c_in, m = dx[1], dm[m_axis]
    if group < 1 or c_in % group or m % group:
        ctx.freeze_all(f"{node.op_type} group={group} does not divide channels {c_in}->{m}")
        return
    rows, cols = (x, y) if transposed else (y, x)
    _spatial_unchanged(ctx, x, y, w)
    ctx.couple(rows, 1, w, 0)
    ctx.param(w, 0, "weight")
    if b is not None:
        ctx.couple(y, 1, b, 0)
        ctx.param(b, 0, "bias")
    if group == 1:
        ctx.couple(cols, 1, w, 1)
        ctx.param(w, 1, "weight")
        return
    ig, og = c_in // group, m // group
    if ig == 1:
        # Depthwise(-multiplier): input g + outputs of group g are one atom.
        ctx.couple(x, 1, y, 1, np.arange(m) // og, np.arange(m))
        ctx.unchanged(w, 1)
        _set_group(ctx, x, True, group)
    elif transposed:
        ctx.couple_virtual("in_pos", ig, x, 1, np.arange(c_in), np.arange(c_in) % ig)
        ctx.couple(y, 1, w, 1, np.arange(m), np.arange(m) % og)
        ctx.param(w, 1, "weight")
    else:
        ctx.couple(x, 1, w, 1, np.arange(c_in), np.arange(c_in) % ig)
        ctx.param(w, 1, "weight")
        ctx.couple_virtual("out_pos", og, y, 1, np.arange(m), np.arange(m) % og)


@rule("Conv")
def conv(node, ctx):
    _grouped_conv(node, ctx, transposed=False)


@rule("ConvTranspose")
def conv_transpose(node, ctx):
    _grouped_conv(node, ctx, transposed=True)
