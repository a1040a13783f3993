"""Weighted ops: the one place that knows which ops carry a weight, where their weight,
bias and channel axes are, and how many MACs they do at a shape.

The dependency rules (analysis/dependency/rules/) say how channels couple across ops;
this table says what a *layer* is, for everything that counts, times, reports or rewrites
layers: MAC/parameter costs, latency tables, per-layer report rows, sparsity targets,
residual blocks, repair passes. Adding a weighted op is one `register` call here (a
plugin can make it at import time), e.g. a custom-domain conv that behaves like Conv:

    register(ConvOp("MyConv", domain="com.acme"))

Each entry is a frozen dataclass per op type. Its *family* (Conv, ConvTranspose, Gemm,
MatMul) is the standard op whose weight layout and arithmetic it shares; the layer-level
code that must treat layouts differently (a conv's taps, a ConvTranspose's transposed
weight) keys on the family, never on op_type.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from graphprune.ir.constants import is_constant
from graphprune.ir.shapes import dims_of

Attrs = Mapping[str, Any]
Dims = Sequence  # ints; symbolic (str) or unknown (None) dims where shapes are not concrete


def attrs_of(node: ir.Node) -> dict[str, Any]:
    return {k: a.value for k, a in node.attributes.items()}


def volume(dims: Dims | None) -> int:
    """Product of dims; symbolic dims, and the -1 some exporters write for a dynamic batch,
    count as 1."""
    return int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in dims], dtype=np.int64)) if dims else 1


@dataclass(frozen=True)
class Axes:
    """Channel axes of one layer."""
    x: int  # axis of the data input contracted with the weight
    w_in: int  # weight axis contracted with `x`
    w_out: int  # weight axis that indexes output channels
    y: int  # output channel axis
    group: int = 1
    in_per_group: bool = False  # w_in holds one group's input channels (Conv), else all of them
    out_per_group: bool = False  # w_out holds one group's output channels (ConvTranspose)

    def in_per_group_size(self, w_shape: Sequence[int]) -> int:
        return w_shape[self.w_in] if self.in_per_group else w_shape[self.w_in] // self.group

    def out_per_group_size(self, w_shape: Sequence[int]) -> int:
        return w_shape[self.w_out] if self.out_per_group else w_shape[self.w_out] // self.group

    def depthwise(self, w_shape: Sequence[int]) -> bool:
        """A grouped conv with one input channel per group."""
        return self.in_per_group and self.group > 1 and w_shape[self.w_in] == 1


@dataclass(frozen=True)
class WeightedOp:
    """An op type whose input `weight` is a layer weight (constant in a plain layer)."""
    op_type: str
    domain: str = ""
    weight: int = 1  # input index of the weight
    bias: int | None = 2  # input index of the bias (None: the op has no bias input)
    family: ClassVar[str] = ""

    @property
    def kind(self) -> str:
        """Lower-case family name, as `importance.layers.Linear.kind`."""
        return self.family.lower()

    # --- per family -------------------------------------------------------------------
    def axes(self, attrs: Attrs, x_rank: int | None = None, w_rank: int | None = None,
             y_rank: int | None = None) -> Axes:
        raise NotImplementedError

    def mac_factors(self, attrs: Attrs, x: Dims | None, w: Dims | None, y: Dims | None) \
            -> tuple[Dims, Dims] | None:
        """Two lists of dims whose products multiply to the MACs (None: a needed shape is
        unknown). May raise IndexError/TypeError on malformed shapes."""
        raise NotImplementedError

    def mac_slots(self, attrs: Attrs, x_rank: int, y_rank: int) -> list[tuple[str, int]]:
        """(role, axis) with role in x/w/y: the axes the MACs are multiplicative in, i.e.
        whose pruning scales them."""
        raise NotImplementedError

    def matrix_problem(self, attrs: Attrs, w_rank: int | None) -> str | None:
        """Why the weight is not one operator from x's channel axis to y's (as `axes` says),
        e.g. a batched MatMul weight; None when it is."""
        return None

    def _form_problem(self, node: ir.Node) -> str | None:
        return None

    # --- common -----------------------------------------------------------------------
    def macs(self, attrs: Attrs, x: Dims | None, w: Dims | None, y: Dims | None) -> int:
        """MACs at these shapes (symbolic dims count as 1; 0 when a needed shape is unknown)."""
        f = self.mac_factors(attrs, x, w, y)
        return 0 if f is None else volume(f[0]) * volume(f[1])

    def params(self, w: Dims | None, b: Dims | None = None) -> int:
        return (volume(w) if w is not None else 0) + (volume(b) if b is not None else 0)

    def plain_problem(self, node: ir.Node) -> str | None:
        """Why `node` is not a plain layer (computed data input, constant weight, constant
        or no bias) whose channels can be rewritten; None when it is one."""
        ins = list(node.inputs)
        if len(ins) <= self.weight or ins[0] is None or ins[self.weight] is None:
            return "no data or weight input"
        if not is_constant(ins[self.weight]):
            return "computed weight"
        if is_constant(ins[0]):
            return "constant data input"
        if self.bias is not None and len(ins) > self.bias and ins[self.bias] is not None \
                and not is_constant(ins[self.bias]):
            return "computed bias"
        return self._form_problem(node)


@dataclass(frozen=True)
class _GroupedConvOp(WeightedOp):
    """Conv and ConvTranspose: weight [rows, cols/group, k...] whose rows are the channels of
    one side (y; x when `transposed`) and whose cols are one group's channels of the other.
    MACs = the rows side's volume × weights per row."""
    transposed: ClassVar[bool] = False

    def axes(self, attrs, x_rank=None, w_rank=None, y_rank=None):
        w_in, w_out = (0, 1) if self.transposed else (1, 0)
        return Axes(1, w_in, w_out, 1, int(attrs.get("group", 1)),
                    in_per_group=not self.transposed, out_per_group=self.transposed)

    def mac_factors(self, attrs, x, w, y):
        rows = x if self.transposed else y
        return None if w is None or rows is None else (rows, w[1:])

    def mac_slots(self, attrs, x_rank, y_rank):
        return [("x" if self.transposed else "y", 1), ("w", 1)]


@dataclass(frozen=True)
class ConvOp(_GroupedConvOp):
    """Weight [O, I/group, k...]; MACs = output volume × weights per output channel."""
    family: ClassVar[str] = "Conv"


@dataclass(frozen=True)
class ConvTransposeOp(_GroupedConvOp):
    """Weight [I, O/group, k...]; MACs = input volume × weights per input channel."""
    family: ClassVar[str] = "ConvTranspose"
    transposed: ClassVar[bool] = True


@dataclass(frozen=True)
class GemmOp(WeightedOp):
    """Y = alpha·A'·B' + beta·C; B is [K, N] ([N, K] with transB); A is [M, K] ([K, M] with transA)."""
    family: ClassVar[str] = "Gemm"

    @staticmethod
    def _k_axis(attrs) -> int:
        return 0 if attrs.get("transA") else 1

    def axes(self, attrs, x_rank=None, w_rank=None, y_rank=None):
        tb = bool(attrs.get("transB"))
        return Axes(self._k_axis(attrs), 1 if tb else 0, 0 if tb else 1, 1)

    def mac_factors(self, attrs, x, w, y):
        return None if x is None or y is None else (y, [x[self._k_axis(attrs)]])

    def mac_slots(self, attrs, x_rank, y_rank):
        return [("y", 0), ("y", 1), ("x", self._k_axis(attrs))]

    def matrix_problem(self, attrs, w_rank):
        return "transA" if int(attrs.get("transA", 0)) else None

    def _form_problem(self, node):
        attrs = attrs_of(node)
        problem = self.matrix_problem(attrs, 2)
        if problem:
            return problem
        if float(attrs.get("alpha", 1.0)) != 1.0 or float(attrs.get("beta", 1.0)) != 1.0:
            return "alpha/beta"
        ins = list(node.inputs)
        if len(ins) > 2 and ins[2] is not None:
            dc = dims_of(ins[2])
            if dc is None or len(dc) != 1:
                return "bias is not one value per output"
        return None


@dataclass(frozen=True)
class MatMulOp(WeightedOp):
    """x [..., K] @ w [..., K, N]: the weight is input 1; no bias input."""
    bias: int | None = None
    family: ClassVar[str] = "MatMul"

    def axes(self, attrs, x_rank=None, w_rank=None, y_rank=None):
        wr = w_rank or 2
        return Axes((x_rank or 2) - 1, wr - 2, wr - 1, (y_rank or 2) - 1)

    def mac_factors(self, attrs, x, w, y):
        return None if x is None or y is None else (y, [x[-1]])

    def mac_slots(self, attrs, x_rank, y_rank):
        return [("y", i) for i in range(y_rank)] + [("x", x_rank - 1)]

    def matrix_problem(self, attrs, w_rank):
        return None if w_rank == 2 else "weight is not a matrix"

    def _form_problem(self, node):
        ins = list(node.inputs)
        if len(ins) != 2:
            return "not two inputs"
        dx, dw, dy = dims_of(ins[0]), dims_of(ins[1]), dims_of(node.outputs[0])
        if dx is None or dw is None or dy is None:
            return "unknown rank"
        problem = self.matrix_problem({}, len(dw))
        if problem:
            return problem
        if len(dx) < 2:
            return "data input is a vector"
        return None


# --- registry ---------------------------------------------------------------------------
_OPS: dict[tuple[str, str], WeightedOp] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register(op: WeightedOp) -> WeightedOp:
    """Add a weighted op; registering a different entry for the same (domain, op_type) is
    an error (an equal one is a no-op, so a plugin may register on every import)."""
    key = (_norm_domain(op.domain), op.op_type)
    old = _OPS.get(key)
    if old is not None and old != op:
        raise ValueError(f"weighted op {op.domain + '::' if op.domain else ''}{op.op_type} is already "
                         f"registered as {old!r}")
    _OPS[key] = op
    return op


def unregister(op_type: str, domain: str = "") -> None:
    _OPS.pop((_norm_domain(domain), op_type), None)


def registered() -> list[WeightedOp]:
    return list(_OPS.values())


def weighted_op(node: ir.Node) -> WeightedOp | None:
    """The registered entry for `node`'s op, or None when it carries no weight."""
    return _OPS.get((_norm_domain(node.domain), node.op_type))


@dataclass(frozen=True)
class Layer:
    """A node seen as a layer: its data input, weight, bias, output and channel axes. The
    weight need not be constant (a MatMul of two activations is a layer for costs)."""
    node: ir.Node
    op: WeightedOp
    x: ir.Value | None
    w: ir.Value | None
    b: ir.Value | None
    y: ir.Value | None
    axes: Axes

    @property
    def attrs(self) -> dict[str, Any]:
        return attrs_of(self.node)

    def value(self, role: str) -> ir.Value | None:
        return {"x": self.x, "w": self.w, "y": self.y, "b": self.b}[role]

    def macs(self) -> int:
        """MACs at the shapes the IR records (symbolic dims count as 1)."""
        return self.op.macs(self.attrs, dims_of(self.x), dims_of(self.w), dims_of(self.y))

    def macs_known(self) -> bool:
        """The recorded shapes give this layer's MACs (else `macs` counts it as 0)."""
        try:
            return self.op.mac_factors(self.attrs, dims_of(self.x), dims_of(self.w), dims_of(self.y)) is not None
        except (IndexError, TypeError, ValueError):  # malformed shapes: `node_macs` counts 0 too
            return False


def bias_add(node: ir.Node) -> tuple[ir.Node, int] | None:
    """The Add after `node` that adds it a bias, the way both PyTorch exporters write
    nn.Linear (a MatMul, then an Add of a 1-D constant): (that Add, the index of its constant
    input), when the Add is the only use of `node`'s output and that output is not a graph
    output; else None. The repairs (a MatMul layer's bias) and the residual stream (a
    writer's bias) read a layer's bias through this one rule."""
    y = node.outputs[0] if node.outputs else None
    uses = list(y.uses()) if y is not None else []
    if y is None or y.is_graph_output() or len(uses) != 1:
        return None
    add, idx = uses[0].node, uses[0].idx
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    b = add.inputs[1 - idx]
    if b is None or not is_constant(b) or b.shape is None or len(b.shape) != 1:
        return None
    return add, 1 - idx


def _rank(v: ir.Value | None) -> int | None:
    return len(v.shape) if v is not None and v.shape is not None else None


def layer_of(node: ir.Node) -> Layer | None:
    """`node` as a layer, or None when its op carries no weight or it lacks the weight input."""
    op = weighted_op(node)
    if op is None:
        return None
    ins = list(node.inputs)
    if len(ins) <= op.weight:
        return None
    x, w = ins[0], ins[op.weight]
    b = ins[op.bias] if op.bias is not None and len(ins) > op.bias else None
    y = node.outputs[0] if node.outputs else None
    axes = op.axes(attrs_of(node), _rank(x), _rank(w), _rank(y))
    return Layer(node, op, x, w, b, y, axes)


_INTEGER_LAYER = "integer (quantized) weights: never rewritten in float"


@dataclass(frozen=True)
class QLinearConvOp(ConvOp):
    """QLinearConv: weight input 3, int32 bias 8. Counted and reported like Conv; not a
    plain layer (repairs and sparsity would write float values into integer weights)."""

    def _form_problem(self, node):
        return _INTEGER_LAYER


@dataclass(frozen=True)
class QLinearMatMulOp(MatMulOp):
    """QLinearMatMul: weight input 3 (see QLinearConvOp)."""

    def _form_problem(self, node):
        return _INTEGER_LAYER


@dataclass(frozen=True)
class QGemmOp(GemmOp):
    """com.microsoft QGemm: weight input 3, int32 bias 6 (see QLinearConvOp)."""

    def _form_problem(self, node):
        return _INTEGER_LAYER


@dataclass(frozen=True)
class MatMulNBitsOp(MatMulOp):
    """com.microsoft MatMulNBits (graphprune/ir/nbits.py): A [..., K] times a block-quantized
    weight [N, k_blocks, bytes] (rows are outputs, axis 1 the blocks of K), bias input 5.
    Counted like MatMul; not a plain layer (see QLinearConvOp)."""
    bias: int | None = 5

    def axes(self, attrs, x_rank=None, w_rank=None, y_rank=None):
        return Axes((x_rank or 2) - 1, 1, 0, (y_rank or 2) - 1)

    def matrix_problem(self, attrs, w_rank):
        return "block-quantized weight [N, k_blocks, bytes]"

    def _form_problem(self, node):
        return _INTEGER_LAYER


def is_integer_layer(node: ir.Node) -> bool:
    """`node` is an integer-op layer (QLinearConv, QLinearMatMul, QGemm, MatMulNBits, and
    dynamic quantization's ConvInteger, MatMulInteger): counted like its float family, never
    rewritten in float."""
    return isinstance(weighted_op(node), (QLinearConvOp, QLinearMatMulOp, QGemmOp, MatMulNBitsOp))


for _op in (ConvOp("Conv"), ConvTransposeOp("ConvTranspose"), GemmOp("Gemm"), MatMulOp("MatMul"),
            QLinearConvOp("QLinearConv", weight=3, bias=8), QLinearMatMulOp("QLinearMatMul", weight=3),
            QGemmOp("QGemm", domain="com.microsoft", weight=3, bias=6),
            QLinearConvOp("ConvInteger", weight=1, bias=None), QLinearMatMulOp("MatMulInteger", weight=1),
            MatMulNBitsOp("MatMulNBits", domain="com.microsoft", weight=1, bias=5)):
    register(_op)
del _op
