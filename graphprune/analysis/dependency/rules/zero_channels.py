"""Which activations are zero at a removed channel in the oracle's masked original.

A layer that contracts two *activations* over a channel axis (``phi(Q) @ (phi(K)^T V)``
in linear attention, a Gram matrix of two feature maps, a convolution whose weight is
computed) loses, for each removed channel c, the term ``a[..., c] * b[c, ...]``. The
pruned model equals the masked original only when that term is zero, i.e. when one side
is zero at c. A channel is zero there when the weight slices (and biases) that make it are
masked, and it stays zero along one axis through ops that map 0 to 0 or only move
elements — not through ``elu(x) + 1``, ``sigmoid``, ``exp`` or the addition of a scalar.

`keeps_zero(value, axis)` follows `axis` back through the graph (Transpose permutes it,
Reshape maps it by the dims around it, a MatMul's last axis comes from its right operand
...) to a weight, and answers conservatively: False whenever it cannot tell, and the rules
then freeze the axis (the oracle would otherwise fail the run).
"""
from __future__ import annotations

from collections import Counter

import onnx_ir as ir

from graphprune.ir.constants import const_array, is_constant
from graphprune.ir.quant import is_quantized_const

# f(0) == 0 elementwise, or only selecting / pooling / padding with zeros along other axes:
# input 0 carries the channel at the same axis (same rank)
_SAME_AXIS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Tanh", "Neg", "Abs", "Sign", "Erf", "Sin", "Sinh",
    "Tan", "Asin", "Asinh", "Atan", "Atanh", "Softsign", "HardSwish", "Gelu", "Mish", "Floor", "Ceil", "Round",
    "Sqrt", "Identity", "Cast", "Dropout", "Slice", "Split", "Tile", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample",
})
_RESHAPING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_REDUCE = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"})
MAX_DEPTH = 64


def is_weight(value: ir.Value | None) -> bool:
    """A constant operand of a linear layer: a constant, a QDQ weight, or a Transpose of a constant."""
    if value is None:
        return False
    if is_constant(value) or is_quantized_const(value):
        return True
    p = value.producer()
    return p is not None and p.op_type == "Transpose" and p.domain in ("", "ai.onnx") and is_constant(p.inputs[0])


def _dims(v: ir.Value | None) -> list | None:
    """Static ints, symbol names (str), or None for an unknown dim; None without a shape."""
    if v is None or v.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value if getattr(d, "value", None) else None) for d in v.shape]


def _aligned(operand: ir.Value | None, out_rank: int, axis: int) -> int | None:
    """`axis` of a broadcasting op's output in `operand`'s own axes; None where the operand
    is broadcast along it (rank too low, or size 1: the same value for every channel)."""
    d = _dims(operand)
    if d is None:
        return None
    ax = axis - (out_rank - len(d))
    return ax if 0 <= ax < len(d) and d[ax] != 1 else None


def _product(dims: list) -> tuple[int, Counter] | None:
    n, syms = 1, Counter()
    for d in dims:
        if d is None:
            return None
        if isinstance(d, int):
            n *= d
        else:
            syms[d] += 1
    return n, syms


def _within(lo_in, hi_in, lo_out, hi_out) -> bool | None:
    """Whether [lo_out, hi_out] (products of dims) lies within [lo_in, hi_in]; None when the
    products cannot be compared (different symbols, or unknown dims)."""
    if None in (lo_in, hi_in, lo_out, hi_out) or lo_in[1] != lo_out[1] or hi_in[1] != hi_out[1]:
        return None
    return lo_in[0] <= lo_out[0] and hi_out[0] <= hi_in[0]


def reshaped_axis(in_dims: list | None, out_dims: list | None, axis: int) -> int | None:
    """The input axis whose elements an output axis of a reshape splits off or is (compared
    by the products of the dims before it, else after it), or None when unknown."""
    if in_dims is None or out_dims is None or not 0 <= axis < len(out_dims):
        return None
    for side in ("before", "after"):
        for j in range(len(in_dims)):
            if side == "before":
                got = _within(_product(in_dims[:j]), _product(in_dims[:j + 1]),
                              _product(out_dims[:axis]), _product(out_dims[:axis + 1]))
            else:  # the same, counted from the end (a leading dim that shape inference left unknown)
                got = _within(_product(in_dims[j + 1:]), _product(in_dims[j:]),
                              _product(out_dims[axis + 1:]), _product(out_dims[axis:]))
            if got:
                return j
    return None


def keeps_zero(value: ir.Value | None, axis: int | None, _depth: int = 0,
               memo: dict[tuple[int, int], bool] | None = None) -> bool:
    """Whether `value` is zero, in the masked original, at every index of `axis` the plan
    removes: it is made along that axis from a weight's sliced axis (or a sliced constant)
    only through ops that keep zeros. Conservative: False when unsure.
    `memo` (one analysis of an unchanged graph): answers kept across calls. A residual
    stream goes back through every layer, deeper than MAX_DEPTH, but each layer's rule asks
    in graph order and finds the layer before answered. A False cut off by the depth is only
    remembered when asked first-hand (at depth 0)."""
    if value is None or axis is None:
        return False
    key = (id(value), axis)
    if memo is not None and key in memo:
        return memo[key]
    got = _keeps_zero(value, axis, _depth, memo)
    if memo is not None and (got or _depth == 0):
        memo[key] = got
    return got


def _keeps_zero(value: ir.Value, axis: int, _depth: int, memo) -> bool:
    if _depth > MAX_DEPTH:
        return False
    d = _dims(value)
    if d is None or not 0 <= axis < len(d):
        return False
    if is_constant(value):  # a constant coupled to a channel axis is sliced, so zeroed there
        a = const_array(value)
        return a is not None and a.ndim == len(d) and a.shape[axis] > 1
    if is_quantized_const(value):  # a QDQ constant: its codes masked to the zero point, so 0 once dequantized
        return isinstance(d[axis], int) and d[axis] > 1
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return False

    def follow(v, ax):
        return keeps_zero(v, ax, _depth + 1, memo)

    op = node.op_type
    if op in _SAME_AXIS:
        return follow(node.inputs[0], axis)
    step = _STEPS.get(op)
    return step is not None and step(node, list(node.inputs), len(d), axis, follow)


# per op: (node, inputs, output rank, axis, follow) -> whether the output keeps zero along axis

def _masked_param(v: ir.Value) -> bool:
    """A bias the oracle masks with the channel: a constant, or a QDQ constant (codes set to
    the zero point: 0 once dequantized; a quantized ViT's Gemm bias)."""
    return is_constant(v) or is_quantized_const(v)


def _gemm(node, ins, rank, axis, follow) -> bool:
    """A row (column) of A·B + C is zero when A's row (B's column) is and C adds nothing there:
    no C, or (columns) a per-column constant C, masked with them."""
    ta, tb = (int(node.attributes[k].value) if k in node.attributes else 0 for k in ("transA", "transB"))
    operand, ax = (ins[1], 0 if tb else 1) if axis == 1 else (ins[0], 1 if ta else 0)
    c = ins[2] if len(ins) > 2 else None
    if c is not None:
        dc = _dims(c)
        if axis != 1 or not _masked_param(c) or not dc or dc[-1] == 1:
            return False
    return is_weight(operand) or follow(operand, ax)


def _conv(node, ins, rank, axis, follow) -> bool:
    """An output channel whose weight slice (and bias) is masked is zero; along the batch or a
    spatial axis a zero input is not a zero output (the bias, the neighbours)."""
    bias = ins[2] if len(ins) > 2 else None
    if axis != 1 or (bias is not None and not _masked_param(bias)):
        return False
    return is_weight(ins[1]) or follow(ins[1], 0 if node.op_type == "Conv" else 1)


def _mul(node, ins, rank, axis, follow) -> bool:
    return any(follow(v, _aligned(v, rank, axis)) for v in ins)


def _every_input(node, ins, rank, axis, follow) -> bool:
    """Add, Sub, Sum, Concat: zero where every input is; a constant broadcast along the axis
    only when it is all zeros (an exporter's `x + 0.0`)."""
    same = node.op_type == "Concat"  # Concat: the same rank, no broadcasting
    return all(_zero_constant(v) or follow(v, axis if same else _aligned(v, rank, axis)) for v in ins if v is not None)


def _zero_constant(v: ir.Value) -> bool:
    a = const_array(v) if is_constant(v) else None
    return a is not None and a.size <= 64 and not a.any()


def _first_aligned(node, ins, rank, axis, follow) -> bool:  # Div's numerator, Expand's input
    return follow(ins[0], _aligned(ins[0], rank, axis))


def _transpose(node, ins, rank, axis, follow) -> bool:
    perm = node.attributes.get("perm")
    perm = list(perm.value) if perm is not None else list(range(rank))[::-1]
    return follow(ins[0], perm[axis])


def _reshaping(node, ins, rank, axis, follow) -> bool:
    """An output axis that is (part of) one input axis follows it; one that merges several
    input axes (heads x head dims -> hidden) is zero at a removed element when every merged
    axis keeps zero: the element is removed because its index along one of them is."""
    din, dout = _dims(ins[0]), _dims(node.outputs[0])
    one = reshaped_axis(din, dout, axis)
    if one is not None:
        return follow(ins[0], one)
    merged = merged_axes(din, dout, axis)
    return bool(merged) and all(follow(ins[0], j) for j in merged if din[j] != 1)


def merged_axes(in_dims: list | None, out_dims: list | None, axis: int) -> list[int] | None:
    """The input axes an output axis of a reshape is the merger of (the same elements before
    it and up to it, else, for leading dims shape inference left unknown, the same counted
    from the end), or None."""
    if in_dims is None or out_dims is None or not 0 <= axis < len(out_dims):
        return None
    n = len(in_dims)
    for lo, hi, cut in ((out_dims[:axis], out_dims[:axis + 1], lambda j: in_dims[:j]),
                        (out_dims[axis + 1:], out_dims[axis:], lambda j: in_dims[j:])):
        outer, inner = _product(lo), _product(hi)
        if outer is None or inner is None:
            continue
        at_outer = [j for j in range(n + 1) if _product(cut(j)) == outer]
        at_inner = [j for j in range(n + 1) if _product(cut(j)) == inner]
        for a in at_outer:
            for b in at_inner:
                j0, j1 = min(a, b), max(a, b)
                if j1 - j0 >= 2:
                    return list(range(j0, j1))
    return None


def _gather(node, ins, rank, axis, follow) -> bool:
    """Gather replaces the data's axis g by the indices' axes: an output axis before them is
    the data's same axis, one after them the data's axis counted past g (q, k and v selected
    from a packed projection by a scalar index)."""
    g = int(node.attributes["axis"].value) if "axis" in node.attributes else 0
    di = _dims(ins[1])
    if di is None:
        return False
    g %= rank - len(di) + 1
    if axis < g:
        return follow(ins[0], axis)
    return axis >= g + len(di) and follow(ins[0], axis - len(di) + 1)


def _reduce(node, ins, rank, axis, follow) -> bool:
    """A reduction of zeros is zero along an axis it keeps; with keepdims=0 the output's axes
    are the input's unreduced ones, in order (x.mean((2, 3)) before a classifier)."""
    keep = node.attributes.get("keepdims")
    if keep is None or int(keep.value) == 1:
        return follow(ins[0], axis)
    din = _dims(ins[0])
    attr = node.attributes.get("axes")
    axes = list(attr.value) if attr is not None else \
        (const_array(ins[1]).reshape(-1).tolist() if len(ins) > 1 and ins[1] is not None and
         const_array(ins[1]) is not None else None)
    if din is None or not axes:  # unknown, or every axis reduced
        return False
    kept = [a for a in range(len(din)) if a not in {int(x) % len(din) for x in axes}]
    return axis < len(kept) and follow(ins[0], kept[axis])


def _pad(node, ins, rank, axis, follow) -> bool:
    fill = const_array(ins[2]) if len(ins) > 2 and ins[2] is not None else None
    mode = node.attributes.get("mode")
    return (mode is None or mode.value == "constant") and (fill is None or not fill.any()) and follow(ins[0], axis)


def _clip(node, ins, rank, axis, follow) -> bool:
    lo, hi = _clip_bound(node, ins, 1, "min"), _clip_bound(node, ins, 2, "max")
    return (lo is None or lo <= 0.0) and (hi is None or hi >= 0.0) and follow(ins[0], axis)


def _matmul(node, ins, rank, axis, follow) -> bool:
    a, b = ins
    da, db = _dims(a), _dims(b)
    if da is None or db is None or len(da) < 2 or len(db) < 2:
        return False
    if axis == rank - 1:  # columns: the right operand's
        return is_weight(b) or follow(b, len(db) - 1)
    if axis == rank - 2:  # rows: the left operand's
        return is_weight(a) or follow(a, len(da) - 2)
    # a batch axis (broadcast from the right over the leading axes): zero when either operand is
    for v, dv in ((a, da), (b, db)):
        ax = axis - (rank - len(dv))
        if 0 <= ax < len(dv) - 2 and dv[ax] != 1 and follow(v, ax):
            return True
    return False


def _integer_matmul(node, ins, rank, axis, follow) -> bool:
    """MatMulInteger: a column whose constant weight column is masked to its zero point is 0
    ((b - b_zp) = 0); rows are not followed (the left operand is codes, 0 at its zero point).
    A 1-D weight has no columns: the output's last axis is then the left operand's rows."""
    db = _dims(ins[1]) if len(ins) > 1 else None
    return axis == rank - 1 and db is not None and len(db) >= 2 and is_constant(ins[1])


def _integer_conv(node, ins, rank, axis, follow) -> bool:
    """ConvInteger: an output channel whose constant weight is masked to its zero point is 0 (no bias)."""
    return axis == 1 and len(ins) > 1 and is_constant(ins[1])


def _normalization(node, ins, rank, axis, follow) -> bool:
    """BatchNormalization / InstanceNormalization: scale·x̂ + B is zero at a channel whose
    scale and B are masked (per-channel constants), whatever x is; not along another axis,
    nor with a computed scale or bias (0 -> B - mean·scale/σ)."""
    return axis == 1 and len(ins) >= 3 and _per_channel(ins[1]) and _per_channel(ins[2])


def _power(node, ins, rank, axis, follow) -> bool:
    """0 ** p is 0 for a constant exponent p > 0 (x ** 2 before an RMSNorm's mean) that is the
    same along the axis: one that varies along it is sliced, so masked to 0 with the channel,
    and 0 ** 0 is 1."""
    p = const_array(ins[1]) if len(ins) > 1 and ins[1] is not None else None
    return p is not None and p.size > 0 and bool((p > 0).all()) and _aligned(ins[1], rank, axis) is None \
        and follow(ins[0], _aligned(ins[0], rank, axis))


def _layer_norm(node, ins, rank, axis, follow) -> bool:
    """LayerNormalization (RMSNormalization) over the last axis: scale·x̂ (+ B) is zero there
    where the per-channel constants scale and B are masked, whatever x is (the stream of a
    post-norm transformer)."""
    attr = node.attributes.get("axis")
    last = (int(attr.value) if attr is not None else -1) % rank == rank - 1
    bias = ins[2] if len(ins) > 2 else None
    return last and axis == rank - 1 and _per_channel(ins[1]) and (bias is None or _per_channel(bias))


def _per_channel(v: ir.Value | None) -> bool:
    a = const_array(v) if v is not None and is_constant(v) else None
    return a is not None and a.ndim == 1 and a.shape[0] > 1


def _einsum(node, ins, rank, axis, follow) -> bool:
    """Every term of an output element along a kept label has a factor from each operand with
    that label: zero when one of them is (a masked constant, or an activation zero there)."""
    from graphprune.ir.einsum import einsum_labels

    eq = node.attributes.get("equation")
    dims = [_dims(v) for v in ins]
    if eq is None or None in dims:
        return False
    text = eq.value.decode() if isinstance(eq.value, bytes) else str(eq.value)
    parsed = einsum_labels(text, [len(d) for d in dims])
    if parsed is None or len(parsed[1]) != rank:
        return False
    label = parsed[1][axis]
    return any(is_weight(v) or follow(v, labs.index(label)) for v, d, labs in zip(ins, dims, parsed[0], strict=True)
               if labs.count(label) == 1 and d[labs.index(label)] != 1)


def _dequantize(node, ins, rank, axis, follow) -> bool:
    """(q - zp)·s is zero where q equals DequantizeLinear's zero point: q made by a
    QuantizeLinear of a zero with the same constant zero point (Q of 0 is its zero point, not
    0: zero points 128 and 100 made 28·s)."""
    q = ins[0].producer() if ins[0] is not None else None
    if q is None or q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx"):
        return False
    zq = _zero_point(q.inputs)
    zd = _zero_point(ins)
    return zq is not None and zd is not None and zq.size == 1 and zd.size == 1 and int(zq) == int(zd) \
        and follow(q.inputs[0], axis)  # per-tensor zero points (a per-axis one is not followed here)


def _zero_point(ins: list):
    """A Q/DQ node's zero point as an array (0 when absent), or None when it is computed."""
    import numpy as np

    if len(ins) < 3 or ins[2] is None:
        return np.zeros((), np.int64)
    a = const_array(ins[2])
    return None if a is None else a.astype(np.int64)


def _clip_bound(node: ir.Node, ins: list, index: int, key: str) -> float | None:
    """A Clip bound from its input (opset 11+) or attribute; NaN when it is computed."""
    if len(ins) > index and ins[index] is not None:
        a = const_array(ins[index])
        return float("nan") if a is None else float(a)
    attr = node.attributes.get(key)
    return None if attr is None else float(attr.value)


_STEPS = {"MatMul": _matmul, "Gemm": _gemm, "Conv": _conv, "ConvTranspose": _conv, "Mul": _mul,
          "Add": _every_input, "Sub": _every_input, "Sum": _every_input, "Concat": _every_input,
          "Div": _first_aligned, "Expand": _first_aligned, "Transpose": _transpose, "Gather": _gather,
          "Pad": _pad, "Clip": _clip, "BatchNormalization": _normalization, "InstanceNormalization": _normalization,
          "DequantizeLinear": _dequantize, "MatMulInteger": _integer_matmul, "ConvInteger": _integer_conv,
          "Pow": _power, "LayerNormalization": _layer_norm, "RMSNormalization": _layer_norm, "Einsum": _einsum,
          **dict.fromkeys(_RESHAPING, _reshaping), **dict.fromkeys(_REDUCE, _reduce)}
