"""nn.MultiheadAttention after head pruning.

The class ties the width of q/k/v (heads × head_dim) to the embedding width: its forward
computes ``head_dim = embed_dim // num_heads`` from the query. Pruning heads narrows q/k/v
while the embedding (behind a LayerNorm, a residual) usually keeps its width, which the
class cannot express. ``PrunedMultiheadAttention`` is the same module (a subclass: same
parameters, same state_dict keys, isinstance still holds) whose forward works with
``inner_dim = num_heads * head_dim`` ≠ ``embed_dim``. prune_module checks it against the
pruned ONNX and the masked original like any other result.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """Set by :func:`adopt` on an existing module; never constructed directly."""

    inner_dim: int

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt_len, bsz, _ = query.shape
        src_len = key.shape[0]
        heads, head_dim = self.num_heads, self.head_dim
        if self.in_proj_weight is not None:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(query, wq, bq).reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = F.linear(key, wk, bk).reshape(src_len, bsz * heads, head_dim).transpose(0, 1)
        v = F.linear(value, wv, bv).reshape(src_len, bsz * heads, head_dim).transpose(0, 1)
        q, k, v = (t.reshape(bsz, heads, -1, head_dim) for t in (q, k, v))

        mask = _additive_mask(attn_mask, key_padding_mask, bsz, heads, tgt_len, src_len, q.dtype)
        if is_causal and mask is None:
            mask = torch.full((tgt_len, src_len), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), dropout)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            weights = None
        out = out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, heads * head_dim)
        out = self.out_proj(out).view(tgt_len, bsz, -1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            return out.squeeze(1), (weights.squeeze(0) if weights is not None else None)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _additive_mask(attn_mask, key_padding_mask, bsz, heads, tgt_len, src_len, dtype):
    """attn_mask ((L, S) or (N·H, L, S)) and key_padding_mask ((N, S)), bool (True =
    masked) or additive float, as one additive mask broadcastable to (N, H, L, S)."""
    def additive(m):
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        if mask.dim() == 3:
            mask = mask.view(bsz, heads, tgt_len, src_len)
    if key_padding_mask is not None:
        kpm = additive(key_padding_mask).view(bsz, 1, 1, src_len)
        mask = kpm if mask is None else mask + kpm
    return mask


def adopt(m: nn.MultiheadAttention) -> bool:
    """Make a head-pruned nn.MultiheadAttention run at its new widths: update num_heads
    (head_dim is what pruning whole heads keeps) and, if q/k/v are now narrower than the
    embedding, switch its class to PrunedMultiheadAttention. False when the tensors do not
    describe whole heads or use features this forward does not implement."""
    if m.in_proj_weight is not None:
        inner, embed = m.in_proj_weight.shape[0] // 3, m.in_proj_weight.shape[1]
        if m.in_proj_weight.shape[0] % 3:
            return False
    else:
        inner, embed = m.q_proj_weight.shape[0], m.q_proj_weight.shape[1]
        if m.k_proj_weight.shape[0] != inner or m.v_proj_weight.shape[0] != inner:
            return False
    if m.out_proj.weight.shape[1] != inner or inner % m.head_dim:
        return False
    if inner == m.embed_dim == embed == m.out_proj.weight.shape[0]:
        return True
    if m.bias_k is not None or m.add_zero_attn:
        return False
    m.num_heads = inner // m.head_dim
    if inner == embed == m.out_proj.weight.shape[0]:
        # everything narrowed together: the class itself expresses it
        m.embed_dim = m.kdim = m.vdim = inner
        return True
    m.embed_dim = embed
    m.inner_dim = inner
    # False keeps callers such as nn.TransformerEncoderLayer off their fused fast path,
    # which assumes q/k/v as wide as the embedding; this class's forward does not read it.
    m._qkv_same_embed_dim = False
    m.__class__ = PrunedMultiheadAttention
    return True
