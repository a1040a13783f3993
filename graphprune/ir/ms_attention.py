"""ONNX Runtime's fused self-attention op (com.microsoft Attention), as its transformer
optimizer writes BERT-style models, read the way the rest of graphprune needs it: which
node is one, how its packed weight splits into heads, and its MACs. The channel rule is
analysis/dependency/rules/ort_fused.py.

Layout (ORT's contrib spec): input x [B, S, D]; weights [D, q + k + v] (Q, K then V
columns; q = k = v = width / 3 unless `qkv_hidden_sizes` says otherwise); bias [q + k + v];
mask_index; past; attention_bias [B|1, heads, S, T]; past_sequence_length. Output
[B, S, v]; present. Head h owns columns [h·q/heads, (h+1)·q/heads) of each section.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx_ir as ir

MS = "com.microsoft"


def is_attention(node: ir.Node) -> bool:
    return node.op_type == "Attention" and node.domain == MS


@dataclass(frozen=True)
class Heads:
    """How an Attention node's packed columns split into heads."""
    heads: int
    q: int
    k: int
    v: int

    @property
    def width(self) -> int:
        return self.q + self.k + self.v

    def of_columns(self) -> np.ndarray:
        """The head of each packed weight column (Q section, K section, V section)."""
        return np.concatenate([np.arange(n) // (n // self.heads) for n in (self.q, self.k, self.v)])

    def of_outputs(self) -> np.ndarray:
        """The head of each output channel (the V section's order)."""
        return np.arange(self.v) // (self.v // self.heads)


def heads_of(node: ir.Node, width: int | None) -> Heads | None:
    """The split of `width` packed columns, or None when the attributes do not describe one
    (sizes that do not add up or do not divide by the number of heads)."""
    a = node.attributes.get("num_heads")
    heads = int(a.value) if a is not None else 0
    sizes = node.attributes.get("qkv_hidden_sizes")
    if sizes is not None:
        q, k, v = (int(s) for s in sizes.value) if len(sizes.value) == 3 else (0, 0, 0)
    elif isinstance(width, int) and width % 3 == 0:
        q = k = v = width // 3
    else:
        return None
    if heads <= 0 or q != k or width != q + k + v or q <= 0 or v <= 0 or q % heads or v % heads:
        return None
    return Heads(heads, q, k, v)


def attention_macs(node: ir.Node, x: Sequence, w: Sequence) -> tuple[float, float] | None:
    """(projection MACs, attention MACs) at x [B, S, D] and w [D, q+k+v]: B·S·D·(q+k+v), and
    the scores and the weighted sum, B·S·S·(q + v) (as a MatMul of two activations counts
    elsewhere; a past is not counted); symbolic dims count as 1. None when the shapes or
    attributes do not describe an Attention."""
    if len(x) != 3 or len(w) != 2:
        return None
    split = heads_of(node, w[1])
    if split is None:
        return None
    b, s, d = (n if isinstance(n, int) else 1 for n in x)
    return float(b * s * d * split.width), float(b * s * s * (split.q + split.v))
