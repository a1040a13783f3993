"""Pooling, reductions, Resize and Pad: per-channel ops over spatial axes."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.analysis.dependency.registry import rule
from graphprune.ir.layer_norm import WrittenLayerNorm, layer_norm_at_variance
from graphprune.ir.rms_norm import rms_norm_after


@rule(["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
       "MaxRoiPool"])
def pool(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    if len(node.outputs) > 1 and node.outputs[1] is not None:
        ctx.freeze_all(f"{node.op_type} with an indices output")
        return
    if node.op_type == "MaxRoiPool":
        ctx.freeze_all("MaxRoiPool is not supported")
        return
    ctx.couple(x, 0, y, 0)
    ctx.couple(x, 1, y, 1)
    # Spatial axes are pooled over: unmapped, hence frozen.


REDUCE = "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum " \
         "ReduceLogSumExp ReduceSumSquare".split()


def _reduce_axes(node, ctx, rank):
    axes_input_since = 13 if node.op_type == "ReduceSum" else 18
    if ctx.opset >= axes_input_since:
        v = node.inputs[1] if len(node.inputs) > 1 else None
        ctx.structural(v)
        if v is None:
            axes = None
        else:
            arr = ctx.const(v)
            if arr is None:
                return "non-constant axes"
            axes = arr.reshape(-1).tolist()
    else:
        axes = ctx.attr("axes")
    if not axes:
        if int(ctx.attr("noop_with_empty_axes", 0)):
            return []
        return list(range(rank))
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


# zeros add nothing to these: a removed channel that is zero in the masked original changes
# nothing (ReduceMean divides by the width: its rewrite multiplies by kept / original)
SUMS_OF_ZEROS = ("ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum")


@rule(REDUCE)
def reduce(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    if (dx := ctx.dims_or_freeze_all(x)) is None:
        return
    axes = _reduce_axes(node, ctx, len(dx))
    if isinstance(axes, str):
        ctx.freeze_all(f"{node.op_type} with {axes}")
        return
    keep = int(ctx.attr("keepdims", 1))
    out_ax = 0
    summed = []
    sums = node.op_type in SUMS_OF_ZEROS
    ln = layer_norm_at_variance(node) if node.op_type == "ReduceMean" else None
    for ax in range(len(dx)):
        if ax in axes:
            if sums:
                ctx.normalised_width(x, ax)  # an RMSNorm's mean of x**2 over the hidden size
            why_not = _why_not_summed(ctx, x, ax, ln) if sums else None
            if sums and why_not is None:
                ctx.sums_over(x, ax)
                summed.append(ax)
            else:
                ctx.freeze(x, ax, why_not or f"{node.op_type} reduces over this axis")
            if keep:
                ctx.unchanged(y, out_ax)
                out_ax += 1
        else:
            ctx.couple(x, ax, y, out_ax)
            out_ax += 1
    if summed and ln is not None:  # the variance of a written-out LayerNorm: the removed channels' share
        ctx.on_prune(lambda rc: _variance_over_original_width(rc, ln, int(dx[-1])))
    elif summed and node.op_type == "ReduceMean":  # widths as analysed: x may be narrower at the rewrite
        ctx.on_prune(lambda rc: _mean_over_original_width(rc, {ax: int(dx[ax]) for ax in summed}, list(dx)))


def _why_not_summed(ctx, x, ax: int, ln: WrittenLayerNorm | None) -> str | None:
    """None when removing indices of (x, ax) from this sum is exact: x is zero there in the
    masked original, or x is the square of a written-out LayerNorm's centred input whose
    input is (its variance then gets the removed channels' mean² back). Else why not."""
    if ln is None:
        if ctx.keeps_zero(x, ax):
            return None
        return f"{ctx.node.op_type} reduces over this axis and its input is not known to be zero at a removed channel"
    what = "a LayerNorm written out as ReduceMean, Sub, Pow, Sqrt, Div (as exporters write it below opset 17)"
    if x.dtype in HALF_FLOATS:
        # (kept/original rounds there: an RMSNorm's did by 4e-4 to 7e-4 of its output, oracle FAIL)
        return (f"{what} in {x.dtype.name.lower()} normalises over this axis: graphprune keeps its variance over the "
                "original width in float32 only")
    if not ctx.keeps_zero(ln.x, ax):
        return f"{what} normalises over this axis, and its input is not known to be zero at a removed channel"
    return None


@rule("CumSum", since=11)
def cumsum(node, ctx):
    """Running sums along one axis, every other axis element by element. Along the summed
    axis, an index whose input is zero in the masked original adds nothing to the sums after
    it: removing it leaves every kept sum as it was (its own sum, the one before it repeated,
    is read only through masked weights downstream); otherwise the axis freezes."""
    x, axis_v, y = node.inputs[0], node.inputs[1], node.outputs[0]
    ctx.structural(axis_v)
    a = ctx.const(axis_v)
    if (dx := ctx.dims_or_freeze_all(x)) is None or a is None or a.size != 1:
        ctx.freeze_all("CumSum of unknown rank or with a run-time axis")
        return
    along = int(a.reshape(-1)[0]) % len(dx)
    for ax in range(len(dx)):
        if ax != along or ctx.keeps_zero(x, ax):
            ctx.couple(x, ax, y, ax)
        else:
            ctx.freeze(x, ax, "CumSum along this axis of values not zero at a removed index")


HALF_FLOATS = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _mean_over_original_width(rc, widths: dict[int, int], dims: list) -> None:
    """The mean of the masked original counts the removed zeros: times kept / original (in a
    half-float mean, the zeros put back instead: kept/original rounds there, 4e-4 to 7e-4 of
    an RMSNorm's output in float16, and the oracle failed). `dims`: x's dims as analysed."""
    x, y = rc.node.inputs[0], rc.node.outputs[0]
    if y.dtype in HALF_FLOATS:
        _mean_of_zeros_put_back(rc, widths, dims)
        return
    factor = 1.0
    for ax, width in widths.items():
        factor *= 1.0 - len(rc.removed(x, ax)) / width
    if factor == 1.0 or _into_rms_norm(rc, y, factor):
        return
    dtype = y.dtype.numpy() if y.dtype is not None else np.float32
    scaled = rc.insert("Mul", [y, rc.new_const(np.array(factor, dtype=dtype), f"{rc.node.name}_kept_share")],
                       like=y, after=True, hint="over_original_width")
    rc.take_place_of(y, scaled)


def _mean_of_zeros_put_back(rc, widths: dict[int, int], dims: list) -> None:
    """Pad (the removed channels' zeros, at the end of each averaged axis: the order does not
    change a mean) -> the same ReduceMean, which then averages over the original width."""
    node = rc.node
    x, y = node.inputs[0], node.outputs[0]
    padded = rc.zeros_put_back(x, dims, widths)
    if padded is None:
        return
    attrs = {k: a.value for k, a in node.attributes.items()}
    mean = rc.insert(node.op_type, [padded, *node.inputs[1:]], like=y, attributes=attrs, hint="over_original_width")
    rc.take_place_of(y, mean)


def _variance_over_original_width(rc, ln: WrittenLayerNorm, width: int) -> None:
    """The variance a written-out LayerNorm takes in the masked original is over all `width`
    channels of c = x - mean(x), and at a removed channel x is 0, so c is -mean there: var =
    (Σ_kept c² + r·mean²) / width. The pruned model's ReduceMean averages the k kept squares,
    so: its input times k / width, plus r / width · mean² (mean as its own rewrite, earlier in
    the graph, corrected it to the original width)."""
    node = rc.node
    sq, var = node.inputs[0], node.outputs[0]
    removed = len(rc.removed(sq, -1))
    if not removed:
        return
    kept = width - removed
    dtype = var.dtype.numpy() if var.dtype is not None else np.float32
    mean = ln.sub.inputs[1]
    share = rc.insert("Mul", [sq, rc.new_const(np.array(kept / width, dtype=dtype), f"{node.name}_kept_share")],
                      like=sq, dims=rc.pruned_dims(sq), hint="kept_share")
    node.replace_input_with(0, share)
    mean_sq = rc.insert("Mul", [mean, mean], like=var, hint="square_of_mean")
    term = rc.insert("Mul", [mean_sq, rc.new_const(np.array(removed / width, dtype=dtype), f"{node.name}_removed_share")],
                     like=var, hint="removed_channels_share")
    total = rc.insert("Add", [var, term], like=var, after=True, hint="over_original_width")
    rc.take_place_of(var, total)


def _into_rms_norm(rc, mean, factor: float) -> bool:
    """An RMSNorm written out (graphprune/ir/rms_norm.py) takes the factor k in its constants
    instead of a Mul after the mean: x / sqrt(k·m + eps) · gamma = x / sqrt(m + eps/k) ·
    gamma/sqrt(k). The ops stay the pattern ONNX Runtime fuses into
    SimplifiedLayerNormalization (a Mul after the mean broke that on a TorchScript LLaMA).
    False (nothing changed) for any other form."""
    tail = rms_norm_after(mean)
    if tail is None or tail.gamma_mul is None or tail.normed.dtype != tail.scale.outputs[0].dtype:
        return False  # no weight to take 1/sqrt(k), or a Cast between (k would round differently)
    add, eps_at = tail.eps_add, tail.eps_input
    gamma_mul, gamma_at = tail.gamma_mul, tail.gamma_input
    eps = np.asarray(rc.const(add.inputs[eps_at]))
    gamma_v = gamma_mul.inputs[gamma_at]
    gamma = np.asarray(rc.const(gamma_v))
    kept_gamma = np.delete(gamma, rc.removed(gamma_v, 0))
    if len(kept_gamma) != rc.pruned_dims(tail.normed)[-1]:  # gamma is not per hidden channel
        return False
    add.replace_input_with(eps_at, rc.new_const((eps / factor).astype(eps.dtype), f"{add.name}_eps"))
    gamma_mul.replace_input_with(gamma_at, rc.new_const((kept_gamma / np.sqrt(factor)).astype(gamma.dtype),
                                                        f"{gamma_v.name}_over_original_width"))
    return True


def _cropped_axes(ctx, roi, axes: list[int]) -> set[int]:
    """Axes a tf_crop_and_resize Resize samples from a crop of (its roi is not [0, 1] there,
    or not a constant): an axis of the same size is still a resampling of other elements
    (ONNX Runtime ignores the roi where the scale is 1, so the oracle could not see it)."""
    mode = ctx.attr("coordinate_transformation_mode")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "tf_crop_and_resize":
        return set()
    r = ctx.const(roi) if roi is not None else None
    n = len(axes)
    if r is None or r.size != 2 * n:
        return set(axes)
    r = r.ravel()
    return {ax for i, ax in enumerate(axes) if float(r[i]) != 0.0 or float(r[n + i]) != 1.0}


@rule("Resize", since=11)
def resize(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    roi = node.inputs[1] if len(node.inputs) > 1 else None
    scales = node.inputs[2] if len(node.inputs) > 2 else None
    sizes = node.inputs[3] if len(node.inputs) > 3 else None
    ctx.structural(roi, scales, sizes)
    dx, dy = ctx.dims(x), ctx.dims(y)
    if dx is None or dy is None:
        ctx.freeze_all("Resize with unknown ranks")
        return
    axes = ctx.attr("axes")
    rank = len(dx)
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    sizes_arr = ctx.const(sizes) if sizes is not None else None
    if sizes is not None and sizes_arr is None and (ctx.dims(sizes) or [0])[0] != 0:
        ctx.freeze_all("Resize with non-constant sizes")
        return
    scales_arr = ctx.const(scales) if scales is not None else None
    cropped = _cropped_axes(ctx, roi, axes)
    coupled = []
    for ax in range(rank):
        same = dx[ax] == dy[ax] and isinstance(dx[ax], int) and ax not in cropped
        if scales_arr is not None and scales_arr.size and ax in axes:
            same = same and float(scales_arr[axes.index(ax)]) == 1.0
        if same:
            ctx.couple(x, ax, y, ax)
            coupled.append(ax)
        # other axes are resized: unmapped, hence frozen
    if sizes_arr is not None and sizes_arr.size:
        def rewrite(rc):
            new = sizes_arr.copy()
            for ax in coupled:
                if ax in axes:
                    new[axes.index(ax)] = dy[ax] - len(rc.removed(y, ax))
            if not np.array_equal(new, sizes_arr):
                rc.set_input_const(3, new.astype(sizes_arr.dtype), f"{node.name}_sizes")

        ctx.on_prune(rewrite)


@rule("Pad", since=11)
def pad(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    ctx.structural(*node.inputs[1:])
    dx = ctx.dims(x)
    pads = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if dx is None or pads is None:
        ctx.freeze_all("Pad with non-constant pads")
        return
    rank = len(dx)
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        a = ctx.const(node.inputs[3])
        if a is None:
            ctx.freeze_all("Pad with non-constant axes")
            return
        axes = [int(i) + rank if int(i) < 0 else int(i) for i in a.reshape(-1)]
    pads = pads.reshape(-1)
    n = len(axes)
    for ax in range(rank):
        if ax in axes:
            k = axes.index(ax)
            if pads[k] != 0 or pads[k + n] != 0:
                continue  # padded axis: unmapped, hence frozen
        ctx.couple(x, ax, y, ax)
