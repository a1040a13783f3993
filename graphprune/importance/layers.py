"""Linear layers (the weighted ops of `ir.layers` with a constant weight) and their axes.

Data-aware criteria and the repair passes need to know, for each layer, which input axis
is contracted with which weight axis, where the outputs are, and how a convolution's
input unfolds into patches. Weights are picked by op and input position, never by rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.ir import nbits
from graphprune.ir.constants import const_array
from graphprune.ir.layers import WeightedOp, layer_of
from graphprune.runtime.positions import real_rows


@dataclass
class Linear:
    node: ir.Node
    kind: str  # the op's family, lower case: conv | convtranspose | gemm | matmul
    x: ir.Value  # data input
    x_axis: int  # contracted channel axis of x
    w: ir.Value  # constant weight
    w_in_axis: int  # weight axis contracted with x_axis
    w_out_axis: int  # weight axis that indexes output channels
    y: ir.Value
    y_axis: int  # output channel axis
    b: ir.Value | None  # bias (None when absent or not a plain constant per output)
    group: int = 1
    op: WeightedOp | None = None  # the `ir.layers` entry of node's op

    @property
    def name(self) -> str:
        return self.node.name

    def weight(self) -> np.ndarray:
        return const_array(self.w)

    def in_channel_matrix(self, w: np.ndarray | None = None) -> np.ndarray:
        """Weight as (out, in-channel, taps): out along w_out_axis, input channels along the
        contracted axis (for grouped convs: the channel's position inside its group)."""
        w = self.weight() if w is None else w
        w = np.moveaxis(w, (self.w_out_axis, self.w_in_axis), (0, 1))
        return w.reshape(w.shape[0], w.shape[1], -1)

    def per_input_channel(self, fn, w: np.ndarray | None = None) -> np.ndarray:
        """fn(block) for each input channel c, where block is (outputs of c's group, taps)
        holding every weight that multiplies channel c."""
        m = self.in_channel_matrix(w)
        if self.kind in ("gemm", "matmul") or self.group == 1:
            return np.array([fn(m[:, c, :]) for c in range(m.shape[1])])
        out, ig = m.shape[0], m.shape[1]
        og = out // self.group
        c_in = ig * self.group
        return np.array([fn(m[(c // ig) * og:(c // ig + 1) * og, c % ig, :]) for c in range(c_in)])


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def linear_of(node: ir.Node) -> Linear | None:
    """`node` as a plain layer (`ir.layers`: constant weight, computed input, constant or no
    bias, standard form), or None."""
    layer = layer_of(node)
    if layer is None or layer.op.plain_problem(node) is not None:
        return None
    ax = layer.axes
    return Linear(node, layer.op.kind, layer.x, ax.x, layer.w, ax.w_in, ax.w_out, layer.y, ax.y, layer.b, ax.group,
                  layer.op)


def linear_layers(model: ir.Model) -> list[Linear]:
    out = []
    for node in model.graph:
        lin = linear_of(node)
        if lin is not None:
            out.append(lin)
    return out


@dataclass
class BlockQuantizedLinear(Linear):
    """A MatMulNBits (graphprune/ir/nbits.py) as the data-aware criteria read it: the
    weight is its dequantized [K, N] matrix. Only criteria see one (`scored_layers`);
    repairs and sparsity, which write weights, never do."""

    def weight(self) -> np.ndarray:
        w = nbits.dequantized(self.node)
        return w.reshape(w.shape[0], -1)[:, :int(self.node.attributes["K"].value)].T


def scored_layers(model: ir.Model) -> list[Linear]:
    """The layers whose weights data-aware criteria read: `linear_layers`, and the
    block-quantized MatMulNBits whose layout is readable."""
    out = linear_layers(model)
    for node in model.graph:
        if nbits.is_nbits(node) and nbits.layout(node)[0] is not None:
            x, y = node.inputs[0], node.outputs[0]
            if x is None or x.shape is None or y is None or y.shape is None:
                continue
            b = node.inputs[nbits.BIAS] if len(node.inputs) > nbits.BIAS else None
            out.append(BlockQuantizedLinear(node, "matmul", x, len(x.shape) - 1, node.inputs[nbits.WEIGHT], 0, 1, y,
                                            len(y.shape) - 1, b))
    return out


# ---- convolution patches -----------------------------------------------------------------
def conv_geometry(node: ir.Node, x_shape, w_shape) -> tuple[list[int], list[int], list[int], list[int]]:
    """(pads_begin, pads_end, strides, dilations) for the spatial axes, auto_pad resolved."""
    nsp = len(w_shape) - 2
    kernel = list(w_shape[2:])
    strides = list(_attr(node, "strides", [1] * nsp))
    dil = list(_attr(node, "dilations", [1] * nsp))
    auto = _attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nsp):
            size = x_shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin, end, strides, dil
    if auto == "VALID":
        return [0] * nsp, [0] * nsp, strides, dil
    pads = list(_attr(node, "pads", [0] * (2 * nsp)))
    return pads[:nsp], pads[nsp:], strides, dil


def _windows(x: np.ndarray, node: ir.Node, w_shape):
    """Strided view (N, C, out positions..., taps...) of a Conv input (no copy)."""
    x = np.asarray(x)
    nsp = x.ndim - 2
    begin, end, strides, dil = conv_geometry(node, x.shape, w_shape)
    kernel = list(w_shape[2:])
    xp = np.pad(x, [(0, 0), (0, 0)] + [(b, e) for b, e in zip(begin, end, strict=True)])
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    win = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=tuple(range(2, 2 + nsp)))
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + \
        tuple(slice(None, None, d) for d in dil)
    return win[sl], nsp, int(np.prod(kernel))


def im2col(x: np.ndarray, node: ir.Node, w_shape, rows: np.ndarray | None = None) -> np.ndarray:
    """Patches of a Conv input as (positions, C, taps) — tap order matches the flattened
    kernel, so ``patches.reshape(P, C*taps) @ W.reshape(M, -1).T`` is the conv. Positions
    run over (N, out...) in C order; `rows` picks some of them (without building the rest)."""
    win, nsp, taps = _windows(x, node, w_shape)
    n, c = win.shape[:2]
    outs = win.shape[2:2 + nsp]
    if rows is None:
        p = np.moveaxis(win, 1, 1 + nsp)  # (N, out..., C, taps...)
        return p.reshape((-1, c, taps))
    idx = np.unravel_index(np.asarray(rows, dtype=np.int64), (n,) + tuple(outs))
    p = win[(idx[0], slice(None)) + tuple(idx[1:])]  # (R, C, taps...)
    return p.reshape((len(rows), c, taps))


def num_positions(x_shape, node: ir.Node, w_shape) -> int:
    win, nsp, _ = _windows(np.empty((1,) + tuple(x_shape[1:]), np.float32), node, w_shape)
    return int(x_shape[0]) * int(np.prod(win.shape[2:2 + nsp]))


def conv_patches(x: np.ndarray, node: ir.Node, w_shape, group: int = 1, rows: np.ndarray | None = None) -> np.ndarray:
    """(positions, group, in-per-group * taps) rows of a grouped conv's input patches."""
    p = im2col(x, node, w_shape, rows)
    c, taps = p.shape[-2], p.shape[-1]
    return p.reshape(-1, group, (c // group) * taps)


def features(lin: Linear, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Rows of inputs a Gemm/MatMul contracts: (rows, K); `mask`: a text batch's real
    (batch, position) pairs, the padded ones left out (runtime/positions.py)."""
    x, axis = real_rows(np.asarray(x), lin.x_axis, mask)
    x = np.moveaxis(x, axis, -1)
    return x.reshape(-1, x.shape[-1])


def rows_of_output(lin: Linear, y: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Output as (positions, out channels), matching `conv_patches`/`features` rows (with the
    same `mask`)."""
    y, axis = real_rows(np.asarray(y), lin.y_axis, mask)
    y = np.moveaxis(y, axis, -1)
    return y.reshape(-1, y.shape[-1])
