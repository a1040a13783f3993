"""ONNX Runtime's block-quantized linear layer (com.microsoft MatMulNBits), as its weight-only
quantizer writes every linear layer of an int4 LLM: ``Y = A @ dequant(B).T (+ bias)``.

Layout (ORT's contrib-op spec; checked against ONNX Runtime in tests/ir/test_nbits.py):

* A [..., K] float; attributes K, N, bits (2, 4 or 8), block_size (a power of 2 >= 16);
* B uint8 [N, k_blocks, blob]: row n holds output n's K weights in k_blocks = ceil(K / block_size)
  blocks of block_size codes, packed low bits first (blob = block_size * bits / 8 bytes);
* scales [N, k_blocks] (or flat [N * k_blocks], an older layout), float;
* zero_points (optional): uint8 codes packed the same way along the blocks of a row
  ([N, ceil(k_blocks * bits / 8)], or those rows flattened), or floats shaped as the scales.
  Absent: 2^(bits - 1);
* g_idx (optional, deprecated act-order index) and bias [N] (optional).

Weight (n, k) = (code - zero point) * scale of block (n, k // block_size). This module
reads that layout (`layout`), unpacks and repacks codes, and dequantizes a weight to
[N, k_blocks, block_size] for importance. The channel rule is
analysis/dependency/rules/nbits.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.ir.constants import const_array
from graphprune.ir.shapes import dims_of

MS = "com.microsoft"
WEIGHT, SCALES, ZERO_POINTS, G_IDX, BIAS = 1, 2, 3, 4, 5


def is_nbits(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "MatMulNBits" and node.domain == MS


def is_nbits_weight(value: ir.Value) -> bool:
    """Whether a constant is read as a MatMulNBits' packed weight."""
    return any(is_nbits(u.node) and u.idx == WEIGHT for u in value.uses())


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


@dataclass(frozen=True)
class Layout:
    """One MatMulNBits' sizes and the form of its scales and zero points."""
    K: int
    N: int
    bits: int
    block_size: int
    flat_scales: bool  # scales [N * k_blocks] rather than [N, k_blocks]
    zero_points: str  # "none" | "packed" | "float"
    flat_zero_points: bool  # packed rows flattened to [N * bytes per row]

    @property
    def k_blocks(self) -> int:
        return -(-self.K // self.block_size)

    @property
    def per_byte(self) -> int:
        return 8 // self.bits

    @property
    def blob(self) -> int:
        return self.block_size * self.bits // 8

    @property
    def default_zero_point(self) -> int:
        return 1 << (self.bits - 1)


def layout(node: ir.Node) -> tuple[Layout | None, str]:
    """The node's layout, or (None, why it is not one graphprune can read: computed weights,
    scales or zero points, sizes that disagree with the attributes, act-order g_idx)."""
    K, N, bits, bs = (_attr(node, n) for n in ("K", "N", "bits", "block_size"))
    bits = 4 if bits is None else bits
    if not all(isinstance(v, int) for v in (K, N, bs)) or bits not in (2, 4, 8) or bs < 16 or bs & (bs - 1):
        return None, "MatMulNBits: attributes K, N, bits, block_size missing or unsupported"
    w, scales, zp = _input(node, WEIGHT), _input(node, SCALES), _input(node, ZERO_POINTS)
    g_idx, bias = _input(node, G_IDX), _input(node, BIAS)
    if g_idx is not None:
        return None, "MatMulNBits: g_idx (act-order) reorders the input channels of each block"
    kb = -(-K // bs)
    if const_array(w) is None or dims_of(w) != [N, kb, bs * bits // 8]:
        return None, f"MatMulNBits: weight is not a constant [N, k_blocks, blob] = [{N}, {kb}, {bs * bits // 8}]"
    ds = dims_of(scales)
    if const_array(scales) is None or ds not in ([N, kb], [N * kb]):
        return None, "MatMulNBits: scales are not a constant [N, k_blocks] or [N * k_blocks]"
    kind, flat_zp = "none", False
    if zp is not None:
        dz, arr = dims_of(zp), const_array(zp)
        if arr is None:
            return None, "MatMulNBits: zero points are computed at run time"
        per = 8 // bits
        if arr.dtype == np.uint8 and dz == [N, -(-kb // per)]:
            kind = "packed"
        elif arr.dtype == np.uint8 and dz == [N * -(-kb // per)]:
            kind, flat_zp = "packed", True
        elif np.issubdtype(arr.dtype, np.floating) and dz == ds:
            kind = "float"
        else:
            return None, "MatMulNBits: zero points of a layout graphprune does not know"
    if bias is not None and (const_array(bias) is None or dims_of(bias) != [N]):
        return None, "MatMulNBits: bias is not a constant [N]"
    return Layout(K, N, bits, bs, len(ds) == 1, kind, flat_zp), ""


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Codes packed low bits first along the last axis of `packed` (uint8): [..., count]."""
    per = 8 // bits
    mask = (1 << bits) - 1
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    codes = (packed[..., None] >> shifts) & mask  # [..., bytes, per]
    return codes.reshape(*packed.shape[:-1], -1)[..., :count].astype(np.uint8)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of `unpack` along the last axis (padded with zero codes to whole bytes)."""
    per = 8 // bits
    n = codes.shape[-1]
    padded = np.zeros((*codes.shape[:-1], -(-n // per) * per), dtype=np.uint8)
    padded[..., :n] = codes
    grouped = padded.reshape(*codes.shape[:-1], -1, per).astype(np.uint16)
    shifts = (np.arange(per) * bits).astype(np.uint16)
    return (grouped << shifts).sum(axis=-1).astype(np.uint8)


def zero_points(node: ir.Node, lay: Layout) -> np.ndarray:
    """The zero point of every block, [N, k_blocks] (codes, or floats for float zero points)."""
    zp = const_array(_input(node, ZERO_POINTS)) if lay.zero_points != "none" else None
    if zp is None:
        return np.full((lay.N, lay.k_blocks), lay.default_zero_point, dtype=np.float64)
    if lay.zero_points == "float":
        return zp.reshape(lay.N, lay.k_blocks).astype(np.float64)
    return unpack(zp.reshape(lay.N, -1), lay.bits, lay.k_blocks).astype(np.float64)


def dequantized(node: ir.Node) -> np.ndarray | None:
    """The float weight, [N, k_blocks, block_size] (a last partial block's padding set to 0:
    ORT never multiplies it), or None when the node's layout is not readable."""
    lay, _ = layout(node)
    if lay is None:
        return None
    codes = unpack(const_array(_input(node, WEIGHT)), lay.bits, lay.block_size).astype(np.float64)
    scales = const_array(_input(node, SCALES)).reshape(lay.N, lay.k_blocks)
    w = (codes - zero_points(node, lay)[..., None]) * scales.astype(np.float64)[..., None]
    w.reshape(lay.N, -1)[:, lay.K:] = 0.0
    return w.astype(scales.dtype)


def dequantized_weight(value: ir.Value) -> np.ndarray | None:
    """`dequantized` for the MatMulNBits reading `value` as its weight, or None."""
    for u in value.uses():
        if is_nbits(u.node) and u.idx == WEIGHT:
            return dequantized(u.node)
    return None


def logical_params(value: ir.Value) -> int | None:
    """How many weights a MatMulNBits' packed weight holds (N * k_blocks * block_size), or
    None when `value` is not one."""
    for u in value.uses():
        if is_nbits(u.node) and u.idx == WEIGHT and value.shape is not None:
            bits = _attr(u.node, "bits", 4)
            return int(np.prod([int(d) for d in value.shape])) * (8 // bits)
    return None


def kept_zero_points(zp: np.ndarray, lay: Layout, rows_removed: np.ndarray, blocks_removed: np.ndarray) \
        -> np.ndarray:
    """Packed zero points without the removed rows and blocks, repacked in the same form."""
    codes = unpack(zp.reshape(lay.N, -1), lay.bits, lay.k_blocks)
    kept = pack(np.delete(np.delete(codes, rows_removed, axis=0), blocks_removed, axis=1), lay.bits)
    return kept.reshape(-1) if lay.flat_zero_points else kept
