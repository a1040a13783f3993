"""Ranks and channel counts that onnx's shape inference left unknown, derived exactly.

One op inference cannot type (a `com.microsoft` op, a Reshape to a shape computed at run
time, as PP-OCRv4 rec at dynamic width has before its neck) leaves every value after it
without a rank, and the dependency analysis freezes every slot of unknown size: every
Conv after that point was frozen. But a Conv's weight W[M, C/group, k...] fixes what the
op can be run with: its input and output have rank W.ndim, the input C = W[1]·group
channels and the output M. Those facts are filled in, and carried through ops whose
output shape follows from their inputs' by the ONNX spec alone (unary elementwise,
per-channel norms, broadcasting binaries, Concat, Transpose, Squeeze/Unsqueeze with
constant axes, pools on axes 0 and 1). Nothing is guessed: a dim stays unknown (and its
slots frozen) unless it is read off a weight or follows from known dims by the op's
definition, a known int is never changed, and a contradiction leaves the value as it was.
Graph inputs and outputs keep the shapes the model declares. Rules whose mapping needs a
full shape (Reshape, Flatten, ...) see the unknown dims and stay frozen as before.
"""
from __future__ import annotations

import logging

import onnx_ir as ir

from graphprune.ir.constants import const_array
from graphprune.ir.shapes import dims_of

log = logging.getLogger(__name__)

SAME_SHAPE = frozenset((
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Erf Gelu Softplus Softsign Mish Elu Selu Celu "
    "ThresholdedRelu Exp Log Neg Abs Sqrt Reciprocal Ceil Floor Round Sign Sin Cos Not Identity Cast CastLike "
    "Swish Clip Dropout BatchNormalization InstanceNormalization LayerNormalization GroupNormalization "
    "MeanVarianceNormalization LpNormalization LRN Softmax LogSoftmax Hardmax PRelu"
).split())
BROADCAST = frozenset("Add Sub Mul Div Mod Pow Max Min Sum Mean Where Equal Greater Less GreaterOrEqual "
                      "LessOrEqual And Or Xor".split())
POOL = frozenset("MaxPool AveragePool LpPool".split())
GLOBAL_POOL = frozenset("GlobalAveragePool GlobalMaxPool GlobalLpPool".split())


def complete_channel_shapes(model: ir.Model, max_rounds: int = 8) -> bool:
    """Fill what the weights and the op definitions say; returns whether anything changed."""
    changed_any = False
    outer = {id(v) for v in list(model.graph.inputs) + list(model.graph.outputs)}
    for _ in range(max_rounds):
        changed = False
        for node in model.graph:
            if node.domain not in ("", "ai.onnx"):
                continue
            try:
                for v, dims in _facts(node, model):
                    if v is not None and id(v) not in outer:
                        changed |= _merge(v, dims)
            except Exception:  # a malformed node: leave it to the rules (they fail closed)
                log.debug("shape completion skipped %s", node.name, exc_info=True)
        changed_any |= changed
        if not changed:
            break
    return changed_any


def _merge(v: ir.Value, dims: list) -> bool:
    cur = dims_of(v)
    if cur is None:
        v.shape = ir.Shape(list(dims))
        return True
    if len(cur) != len(dims):
        log.debug("shape completion: %s has rank %d, derived %d; left as it is", v.name, len(cur), len(dims))
        return False
    new = list(cur)
    for ax, (c, d) in enumerate(zip(cur, dims, strict=True)):
        if isinstance(c, int):
            if isinstance(d, int) and d != c:
                log.debug("shape completion: %s[%d] is %d, derived %d; left as it is", v.name, ax, c, d)
                return False
        elif isinstance(d, int) or (c is None and d is not None):
            new[ax] = d
    if new == cur:
        return False
    v.shape = ir.Shape(new)
    return True


def _int_attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _weight_dims(w: ir.Value | None) -> list[int] | None:
    d = dims_of(w)
    return d if d is not None and len(d) >= 3 and all(isinstance(x, int) for x in d) else None


def _axes(node: ir.Node, model: ir.Model) -> list[int] | None:
    if "axes" in node.attributes:
        return [int(a) for a in node.attributes["axes"].value]
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const_array(node.inputs[1])
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    return None


def _facts(node: ir.Node, model: ir.Model):
    """(value, dims) pairs this node's definition implies, from what is known now."""
    ins, outs = node.inputs, node.outputs
    if not outs or outs[0] is None:
        return
    facts = _FACTS.get(node.op_type)
    if facts is None:
        return
    x = ins[0] if ins else None
    yield from facts(node, model, x, dims_of(x), dims_of(outs[0]))


def _conv_facts(node, model, x, dx, dy):
    ins, outs = node.inputs, node.outputs
    dw = _weight_dims(ins[1] if len(ins) > 1 else None)
    if dw is None:
        return
    group = int(_int_attr(node, "group", 1))
    c_in, c_out = (dw[1] * group, dw[0]) if node.op_type == "Conv" else (dw[0], dw[1] * group)
    rank = len(dw)
    batch = dx[0] if dx is not None and len(dx) == rank else None
    yield x, [batch, c_in] + [None] * (rank - 2)
    yield outs[0], [batch, c_out] + [None] * (rank - 2)


def _same_shape_facts(node, model, x, dx, dy):
    if dx is not None:
        yield node.outputs[0], dx
    elif dy is not None:
        yield x, dy


def _pool_facts(node, model, x, dx, dy):
    if dx is not None and len(dx) >= 3:
        rest = [1] * (len(dx) - 2) if node.op_type in GLOBAL_POOL else [None] * (len(dx) - 2)
        yield node.outputs[0], dx[:2] + rest


def _broadcast_facts(node, model, x, dx, dy):
    shapes = [dims_of(v) for v in node.inputs if v is not None]
    if shapes and all(s is not None for s in shapes):
        out = _broadcast(shapes)
        if out is not None:
            yield node.outputs[0], out


def _concat_facts(node, model, x, dx, dy):
    shapes = [dims_of(v) for v in node.inputs if v is not None]
    if not shapes or any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
        return
    rank = len(shapes[0])
    axis = int(_int_attr(node, "axis", 0))
    axis += rank if axis < 0 else 0
    out = []
    for ax in range(rank):
        col = [s[ax] for s in shapes]
        if ax == axis:
            out.append(sum(col) if all(isinstance(c, int) for c in col) else None)
        else:
            out.append(next((c for c in col if isinstance(c, int)), next((c for c in col if c is not None), None)))
    yield node.outputs[0], out


def _transpose_facts(node, model, x, dx, dy):
    if dx is None:
        return
    perm = _int_attr(node, "perm", None)
    perm = list(range(len(dx)))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(perm) == list(range(len(dx))):
        yield node.outputs[0], [dx[p] for p in perm]


def _matmul_facts(node, model, x, dx, dy):
    if dx is None or len(node.inputs) <= 1:
        return
    dw = dims_of(node.inputs[1])
    if dw is not None and len(dx) >= 2 and len(dw) >= 2:
        batch = _broadcast([dx[:-2], dw[:-2]]) if max(len(dx), len(dw)) > 2 else []
        if batch is not None:
            yield node.outputs[0], batch + [dx[-2], dw[-1]]


def _shape_facts(node, model, x, dx, dy):
    if dx is None:
        return
    start, end = int(_int_attr(node, "start", 0)), _int_attr(node, "end", None)
    yield node.outputs[0], [len(range(len(dx))[start:None if end is None else int(end)])]


def _slice_facts(node, model, x, dx, dy):
    if dx is None:
        return
    ins = node.inputs
    args = [const_array(v) if v is not None else None for v in ins[1:5]]
    if len(args) < 2 or args[0] is None or args[1] is None:
        return
    starts, ends = args[0].reshape(-1).tolist(), args[1].reshape(-1).tolist()
    axes = args[2].reshape(-1).tolist() if len(args) > 2 and args[2] is not None else list(range(len(starts)))
    if len(args) > 2 and ins[3] is not None and args[2] is None:
        return
    steps = args[3].reshape(-1).tolist() if len(args) > 3 and args[3] is not None else [1] * len(starts)
    if len(args) > 3 and ins[4] is not None and args[3] is None:
        return
    out = list(dx)
    for a, b, e, st in zip(axes, starts, ends, steps, strict=True):
        a = int(a) + (len(dx) if a < 0 else 0)
        out[a] = len(range(dx[a])[slice(int(b), int(e), int(st))]) if isinstance(dx[a], int) and st else None
    yield node.outputs[0], out


def _reshape_facts(node, model, x, dx, dy):
    out = reshape_output_dims(node, dx)
    if out is not None:
        yield node.outputs[0], out


def reshape_output_dims(node: ir.Node, dx: list | None) -> list | None:
    """A Reshape's output dims from its shape input alone: its length is the rank; a
    constant entry > 0 is the dim, a 0 (without allowzero) copies the input's, a dim read
    off some tensor with Shape is that (named) dim, anything else (-1, run-time) unknown."""
    ins = node.inputs
    if len(ins) <= 1:
        return None
    ds = dims_of(ins[1])
    if ds is None or len(ds) != 1 or not isinstance(ds[0], int):
        return None
    entries = _shape_entries(ins[1])
    if entries is None or len(entries) != ds[0]:
        entries = [None] * ds[0]
    allowzero = int(_int_attr(node, "allowzero", 0))
    out = []
    for j, t in enumerate(entries):
        if isinstance(t, int) and t > 0 or isinstance(t, str):
            out.append(t)  # a constant entry, or a dim of some tensor read at run time
        elif t == 0 and not allowzero and dx is not None and j < len(dx):
            out.append(dx[j])
        else:
            out.append(None)
    return out


def _reduce_facts(node, model, x, dx, dy):
    if dx is None:
        return
    op, ins = node.op_type, node.inputs
    axes = _axes(node, model) if op != "ReduceSum" or "axes" in node.attributes or len(ins) > 1 else None
    if axes is None and (len(ins) > 1 and ins[1] is not None or "axes" in node.attributes):
        return  # axes computed at run time
    if axes is None and int(_int_attr(node, "noop_with_empty_axes", 0)):
        return
    axes = set(range(len(dx))) if not axes else {a + len(dx) if a < 0 else a for a in axes}
    if int(_int_attr(node, "keepdims", 1)):
        yield node.outputs[0], [1 if k in axes else d for k, d in enumerate(dx)]
    else:
        yield node.outputs[0], [d for k, d in enumerate(dx) if k not in axes]


def _squeeze_facts(node, model, x, dx, dy):
    if dx is None:
        return
    axes = _axes(node, model)
    if axes is None:
        return
    if node.op_type == "Squeeze":
        axes = sorted({a + len(dx) if a < 0 else a for a in axes})
        if all(0 <= a < len(dx) for a in axes):
            yield node.outputs[0], [d for k, d in enumerate(dx) if k not in axes]
    else:
        rank = len(dx) + len(axes)
        axes = sorted({a + rank if a < 0 else a for a in axes})
        if len(axes) == len(set(axes)) and all(0 <= a < rank for a in axes):
            it = iter(dx)
            yield node.outputs[0], [1 if k in axes else next(it) for k in range(rank)]


REDUCE = frozenset("ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
                   "ReduceLogSumExp ReduceSumSquare".split())

# op type -> the facts of one node of it: fn(node, model, x (first input), dims of x, dims of output 0)
_FACTS = {
    "Conv": _conv_facts, "ConvTranspose": _conv_facts,
    **{op: _same_shape_facts for op in SAME_SHAPE},
    **{op: _pool_facts for op in POOL | GLOBAL_POOL},
    **{op: _broadcast_facts for op in BROADCAST},
    "Concat": _concat_facts, "Transpose": _transpose_facts, "MatMul": _matmul_facts, "Shape": _shape_facts,
    "Slice": _slice_facts, "Reshape": _reshape_facts,
    **{op: _reduce_facts for op in REDUCE},
    "Squeeze": _squeeze_facts, "Unsqueeze": _squeeze_facts,
}


def _shape_entries(v: ir.Value | None, depth: int = 0) -> list | None:
    """The entries of a 1-D shape tensor: ints where constant, a tensor's symbolic dim
    where it is read with Shape (the same run-time size), None where unknown."""
    if v is None or depth > 12:
        return None
    arr = const_array(v)
    if arr is not None:
        return [int(a) for a in arr.reshape(-1)] if arr.ndim <= 1 else None
    node = v.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    op, ins = node.op_type, node.inputs
    if op in ("Cast", "Identity"):
        return _shape_entries(ins[0], depth + 1)
    if op == "Shape":
        d = dims_of(ins[0])
        if d is None:
            return None
        start, end = int(_int_attr(node, "start", 0)), _int_attr(node, "end", None)
        return d[slice(start, None if end is None else int(end))]
    if op == "Concat" and int(_int_attr(node, "axis", 0)) in (0, -1):
        parts = [_shape_entries(i, depth + 1) for i in ins]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op == "Slice" and len(ins) >= 3:
        inner = _shape_entries(ins[0], depth + 1)
        args = [const_array(i) if i is not None else None for i in ins[1:5]]
        if inner is None or any(a is None for a, i in zip(args, ins[1:5], strict=True) if i is not None):
            return None
        if len(args) > 2 and args[2] is not None and args[2].reshape(-1).tolist() not in ([0], [-1]):
            return None
        step = int(args[3].reshape(-1)[0]) if len(args) > 3 and args[3] is not None else 1
        return inner[slice(int(args[0].reshape(-1)[0]), int(args[1].reshape(-1)[0]), step)] if step else None
    if op == "Gather" and int(_int_attr(node, "axis", 0)) == 0:
        inner, idx = _shape_entries(ins[0], depth + 1), const_array(ins[1])
        if inner is None or idx is None or idx.ndim > 1:
            return None
        n = len(inner)
        if any(not -n <= int(i) < n for i in idx.reshape(-1)):
            return None
        return [inner[int(i)] for i in idx.reshape(-1)]
    if op == "Unsqueeze":
        inner = _shape_entries(ins[0], depth + 1)
        d = dims_of(ins[0])
        return inner if inner is not None and d is not None and len(d) == 0 else None
    return None


def _broadcast(shapes: list[list]) -> list | None:
    rank = max(len(s) for s in shapes)
    out = []
    for ax in range(rank):
        col = [s[ax - (rank - len(s))] for s in shapes if ax - (rank - len(s)) >= 0]
        ints = {c for c in col if isinstance(c, int)}
        big = ints - {1}
        if len(big) > 1:
            return None  # contradiction: leave it to inference and the rules
        if big:
            out.append(big.pop())
        elif all(c == 1 for c in col):
            out.append(1)
        else:
            named = {c for c in col if isinstance(c, str)}
            out.append(named.pop() if len(named) == 1 and all(c == 1 or c in named for c in col) else None)
    return out
