"""Integer shape arithmetic of exported models, evaluated directly in numpy.

Constant folding evaluates each all-constant node with ONNX's reference evaluator, which
builds a one-node model and an evaluator per node: 0.15-1.2 ms each, and a 30-layer LLaMA
export folds 660 small integer nodes (Unsqueeze, Cast, Mul, Div, ConstantOfShape of
shapes and sizes). Those few ops on integers are computed here; anything else, or any case
outside the narrow forms below, returns None and goes to the reference evaluator as before.
tests/frontends/test_shape_math.py checks every form against the reference evaluator.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

EXACT_IN_FLOAT64 = 2 ** 53  # the reference evaluator divides integers in float64
LARGEST_FILL = 1 << 20  # a larger ConstantOfShape is not folded anyway (frontends.onnx.MAX_FOLD_ELEMENTS)


def evaluate(node: ir.Node, inputs: list, opset: int) -> list[np.ndarray] | None:
    """The outputs of `node` for constant `inputs`, or None (not one of the forms here)."""
    if len(node.outputs) != 1 or any(a is not None and not _integral(a) for a in inputs):
        return None
    fn = _OPS.get(node.op_type)
    out = fn(node, inputs, opset) if fn is not None else None
    return None if out is None else [out]


def _integral(a: np.ndarray) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind in "iub"


def _attr(node: ir.Node, name: str):
    a = node.attributes.get(name)
    return None if a is None else a.value


def _unsqueeze(node, inputs, opset):
    if opset >= 13:
        if len(inputs) != 2 or inputs[0] is None or inputs[1] is None or inputs[1].ndim > 1:
            return None
        axes = [int(a) for a in inputs[1].reshape(-1)]
    else:
        axes = _attr(node, "axes")
        if len(inputs) != 1 or inputs[0] is None or axes is None:
            return None
        axes = [int(a) for a in axes]
    data = inputs[0]
    rank = data.ndim + len(axes)
    where = sorted(a + rank if a < 0 else a for a in axes)
    if len(set(where)) != len(where) or any(not 0 <= a < rank for a in where):
        return None
    dims = list(data.shape)
    for a in where:
        dims.insert(a, 1)
    return data.reshape(dims)


def _cast(node, inputs, opset):
    to = _attr(node, "to")
    if len(inputs) != 1 or inputs[0] is None or to is None or set(node.attributes) - {"to"}:
        return None
    try:
        target = ir.DataType(int(to)).numpy()
    except (ValueError, TypeError):
        return None
    if target.kind not in "iub" or (target.kind == "b") != (inputs[0].dtype.kind == "b"):
        return None  # to or from bool: left to the reference evaluator
    return inputs[0].astype(target)


def _arithmetic(op):
    def fn(node, inputs, opset):
        if len(inputs) != 2 or inputs[0] is None or inputs[1] is None or inputs[0].dtype != inputs[1].dtype \
                or inputs[0].dtype.kind == "b":
            return None
        a, b = inputs
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            return None  # an invalid model: the reference evaluator's error leaves the node unfolded
        if op == "Div":
            return _divided_towards_zero(a, b)
        with np.errstate(over="ignore"):
            out = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, b)
        return np.asarray(out, dtype=a.dtype)
    return fn


def _divided_towards_zero(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """a / b truncated towards zero, as ONNX divides integers; None where the quotient is not
    exact through float64 (the reference evaluator's route) or does not fit a's type."""
    if not (np.all(b != 0) and _small(a) and _small(b)):
        return None
    wide_a, wide_b = a.astype(np.int64), b.astype(np.int64)  # |int32 min| overflows int32, not int64
    q = np.abs(wide_a) // np.abs(wide_b)
    q = np.where((wide_a < 0) != (wide_b < 0), -q, q)
    info = np.iinfo(a.dtype)
    if q.size and (int(q.min()) < info.min or int(q.max()) > info.max):
        return None  # e.g. int8 -128 / -1
    return q.astype(a.dtype)


def _small(a: np.ndarray) -> bool:
    return a.size == 0 or max(abs(int(a.min())), abs(int(a.max()))) < EXACT_IN_FLOAT64


def _constant_of_shape(node, inputs, opset):
    if len(inputs) != 1 or inputs[0] is None or inputs[0].ndim != 1 or np.any(inputs[0] < 0) \
            or int(np.prod(inputs[0], dtype=np.float64)) > LARGEST_FILL:
        return None
    value = _attr(node, "value")
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value.numpy()).reshape(-1)
    if fill.size != 1:
        return None
    return np.full(tuple(int(d) for d in inputs[0]), fill[0], dtype=fill.dtype)


_OPS = {
    "Unsqueeze": _unsqueeze,
    "Cast": _cast,
    "Add": _arithmetic("Add"),
    "Sub": _arithmetic("Sub"),
    "Mul": _arithmetic("Mul"),
    "Div": _arithmetic("Div"),
    "ConstantOfShape": _constant_of_shape,
}
