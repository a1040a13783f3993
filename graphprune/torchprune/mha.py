"""nn.MultiheadAttention after head pruning.

The class ties the width of q/k/v (heads × head_dim) to the embedding width: its forward
computes ``head_dim = embed_dim // num_heads`` from the query, and scales the scores by
``1/sqrt(head_dim)``. Pruning narrows q/k/v in two ways the class cannot express while the
embedding (behind a LayerNorm, a residual) usually keeps its width:

* whole heads (fewer heads of the same size);
* the same positions of every head (an ONNX export reshapes q/k/v to (…, heads, head_dim),
  which couples position i of every head: pruning it leaves each head narrower, and the
  scores keep the original ``1/sqrt(head_dim)``, a constant in the exported graph).

``PrunedMultiheadAttention`` is the same module (a subclass: same parameters, same
state_dict keys, isinstance still holds) whose forward works with ``num_heads`` heads of
``qk_dim`` query/key and ``v_dim`` value channels and the original scale. prune_module
checks it against the pruned ONNX and the masked original like any other result.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """Set by :func:`adopt` on an existing module; never constructed directly."""

    qk_dim: int  # query/key channels per head
    v_dim: int  # value channels per head
    scale: float  # the scores' factor: 1/sqrt(head_dim) of the module before pruning

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
        heads, qk_dim, v_dim = self.num_heads, self.qk_dim, self.v_dim
        if self.in_proj_weight is not None:
            wq, wk, wv = self.in_proj_weight.split([heads * qk_dim, heads * qk_dim, heads * v_dim])
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.split([heads * qk_dim, heads * qk_dim, heads * v_dim])
        q = F.linear(query, wq, bq).reshape(tgt_len, bsz, heads, qk_dim).permute(1, 2, 0, 3)
        k = F.linear(key, wk, bk).reshape(src_len, bsz, heads, qk_dim).permute(1, 2, 0, 3)
        v = F.linear(value, wv, bv).reshape(src_len, bsz, heads, v_dim).permute(1, 2, 0, 3)

        mask = _additive_mask(_kept_heads_mask(self, attn_mask, bsz), key_padding_mask, bsz, heads, tgt_len, src_len,
                              q.dtype)
        if is_causal and mask is None:
            mask = torch.full((tgt_len, src_len), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * self.scale
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), dropout)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale)
            weights = None
        out = out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, heads * v_dim)
        out = self.out_proj(out).view(tgt_len, bsz, -1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            return out.squeeze(1), (weights.squeeze(0) if weights is not None else None)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _kept_heads_mask(m, attn_mask, bsz: int):
    """A per-head attn_mask (N·H, L, S) made for the module before pruning (as
    nn.MultiheadAttention documents it, H its original head count): the kept heads' rows.
    One of N·(heads now) rows is taken as given."""
    if attn_mask is None or attn_mask.dim() != 3 or attn_mask.shape[0] == bsz * m.num_heads:
        return attn_mask
    kept, before = getattr(m, "kept_heads", None), getattr(m, "heads_before", None)
    if kept is None or attn_mask.shape[0] != bsz * before:
        raise RuntimeError(f"attn_mask of shape {tuple(attn_mask.shape)}: expected (N·{m.num_heads}, L, S) for the "
                           f"{m.num_heads} heads left" + (f", or (N·{before}, L, S) for the heads before pruning"
                                                          if before else ""))
    return attn_mask.reshape(bsz, before, *attn_mask.shape[1:])[:, kept].reshape(-1, *attn_mask.shape[1:])


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


def head_layout(head_dim: int, heads: int, removed: dict | None) -> tuple[int, int, int] | None:
    """(heads kept, query/key channels per head, value channels per head) after pruning the
    q, k and v rows in `removed` ({"q"|"k"|"v": removed row indices, before pruning}), or None
    when that is not a layout of equal heads: heads of different widths, query and key
    narrowed at different positions, or a head that keeps its query/key but not its value
    (or the reverse). Without `removed`, nothing is known but widths: whole heads."""
    def kept(part: str):
        gone = set(int(i) for i in (removed or {}).get(part, ()))
        return [[i for i in range(h * head_dim, (h + 1) * head_dim) if i not in gone] for h in range(heads)]

    q, k, v = kept("q"), kept("k"), kept("v")
    if [[i % head_dim for i in h] for h in q] != [[i % head_dim for i in h] for h in k]:
        return None  # a score sums q_i k_i: both keep the same positions of a head
    alive = [h for h in range(heads) if q[h]]
    if alive != [h for h in range(heads) if v[h]] or not alive:
        return None
    qk, vd = {len(q[h]) for h in alive}, {len(v[h]) for h in alive}
    if len(qk) != 1 or len(vd) != 1:
        return None
    return len(alive), qk.pop(), vd.pop()


def _alive_heads(head_dim: int, heads: int, removed: dict) -> list[int]:
    """The heads that keep a query row ({"q": removed row indices})."""
    gone = set(int(i) for i in removed.get("q", ()))
    return [h for h in range(heads) if any(i not in gone for i in range(h * head_dim, (h + 1) * head_dim))]


def adopt(m: nn.MultiheadAttention, removed: dict | None = None) -> bool:
    """Make a pruned nn.MultiheadAttention run at its new widths. `removed`: the q, k, v
    rows the plan removed ({"q"|"k"|"v": indices before pruning}; None: whole heads, as
    far as the widths tell). Whole heads with q/k/v and the embedding narrowed together stay
    the class itself (num_heads updated); anything else the class cannot express becomes
    PrunedMultiheadAttention. False when the tensors do not describe equal heads or use
    features this forward does not implement."""
    head_dim, heads = m.head_dim, m.num_heads
    if m.in_proj_weight is not None:
        rows, embed = m.in_proj_weight.shape
    else:
        rows, embed = sum(w.shape[0] for w in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)), \
            m.q_proj_weight.shape[1]
    if removed is None:
        if rows % 3 or (rows // 3) % head_dim:
            return False
        layout = (rows // 3 // head_dim, head_dim, head_dim)
    else:
        layout = head_layout(head_dim, heads, removed)
    if layout is None:
        return False
    kept, qk, vd = layout
    if rows != kept * (2 * qk + vd) or m.out_proj.weight.shape[1] != kept * vd:
        return False  # the tensors are not what the plan says
    out_rows = m.out_proj.weight.shape[0]
    if (kept, qk, vd) == (heads, head_dim, head_dim) and embed == m.embed_dim == out_rows:
        return True  # nothing of the attention was pruned
    if qk == vd == head_dim and kept * head_dim == embed == out_rows:
        m.num_heads = kept  # whole heads, everything narrowed together: the class itself expresses it
        m.embed_dim = m.kdim = m.vdim = embed
        return True
    if m.bias_k is not None or m.add_zero_attn:
        return False
    if m.in_proj_weight is None and not (m.q_proj_weight.shape[0] == m.k_proj_weight.shape[0] == kept * qk
                                         and m.v_proj_weight.shape[0] == kept * vd):
        return False
    m.scale = 1.0 / math.sqrt(head_dim)  # before num_heads changes: the exported graph's constant
    m.heads_before = heads  # a per-head mask made for the module as it was selects the kept heads' rows
    m.kept_heads = _alive_heads(head_dim, heads, removed) if removed is not None else None
    m.num_heads, m.qk_dim, m.v_dim = kept, qk, vd
    m.embed_dim = embed
    # False keeps callers such as nn.TransformerEncoderLayer off their fused fast path,
    # which assumes q/k/v as wide as the embedding; this class's forward does not read it.
    m._qkv_same_embed_dim = False
    m.__class__ = PrunedMultiheadAttention
    return True
