"""The standard `Attention` op (opset 23), which torch's dynamo exporter writes for
`scaled_dot_product_attention` from opset 23 on (a BertModel with its default SDPA
attention: two Attention nodes, every head frozen without this rule).

Spec: Q, K, V, attn_mask, past_key, past_value (, nonpad_kv_seqlen) -> Y, present_key,
present_value, qk_matmul_output. Two layouts:

* 4-D: Q [B, Hq, S, D], K [B, Hkv, T, D], V [B, Hkv, T, Dv], Y [B, Hq, S, Dv]. Query head
  i reads key/value head i // (Hq / Hkv). Heads are coupled across Q, K, V and Y (with
  grouped queries, a key/value head with its Hq / Hkv query heads), the head size D of Q
  and K is contracted (as a MatMul of Q and K-transposed contracts it: exact when one side
  is zero there in the masked original), Dv passes from V to Y. Without a `scale`
  attribute the scale is 1/sqrt(D) of the *input's* D, so a rewrite writes it out when D
  loses channels.
* 3-D: Q [B, S, Hq·D], K [B, T, Hkv·D], V [B, T, Hkv·Dv], Y [B, S, Hq·Dv], with
  `q_num_heads` / `kv_num_heads`: whole key/value heads (and their query heads) through a
  virtual slot, the two attributes rewritten.

The mask broadcasts against the scores [B, Hq, S, T]; a past/present cache couples its
head and head-size axes with K's / V's (a graph input or output keeps them); the scores
output, when there, follows the heads.
"""
from __future__ import annotations

import math

import numpy as np

from graphprune.analysis.dependency.registry import rule
from graphprune.analysis.dependency.rules.linear import _contract


@rule("Attention", since=23)
def attention(node, ctx):
    q, k, v, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    dq, dk, dv, dy = (ctx.dims(x) for x in (q, k, v, y))
    if None in (dq, dk, dv, dy) or not len(dq) == len(dk) == len(dv) == len(dy) or len(dq) not in (3, 4):
        ctx.freeze_all("Attention: Q, K, V and Y not all of one known rank, 3 or 4")
        return
    heads = _heads(ctx, dq, dk, dv)
    if heads is None:
        ctx.freeze_all("Attention: head counts that do not divide (Hq a multiple of Hkv, sizes whole heads)")
        return
    hq, hkv = heads
    pos = 2 if len(dq) == 4 else 1
    pairs = [(q, 0, k, 0), (q, 0, v, 0), (q, 0, y, 0), (q, pos, y, pos), (k, pos, v, pos)]  # batch, positions
    if any(ctx.dims(a)[ax] != ctx.dims(b)[bx] for a, ax, b, bx in pairs):
        ctx.freeze_all("Attention: batch or positions that differ between Q, K, V and Y")
        return
    for a, ax, b, bx in pairs:
        ctx.couple(a, ax, b, bx)
    ctx.structural(ctx.input(6))  # nonpad_kv_seqlen: lengths per batch row
    (_four_d if len(dq) == 4 else _three_d)(node, ctx, hq, hkv)
    _mask(ctx, hq, hkv, len(dq) == 4)


def _heads(ctx, dq, dk, dv) -> tuple[int, int] | None:
    """(Hq, Hkv) when they are numbers, Hkv divides Hq and (3-D) the widths are whole heads."""
    if len(dq) == 4:
        hq, hkv = dq[1], dk[1]
        ok = isinstance(hq, int) and isinstance(hkv, int) and dv[1] == hkv
    else:
        hq, hkv = int(ctx.attr("q_num_heads", 0)), int(ctx.attr("kv_num_heads", 0))
        ok = all(isinstance(d[2], int) for d in (dq, dk, dv)) and hq > 0 and hkv > 0 and \
            dq[2] % hq == 0 and dk[2] % hkv == 0 and dv[2] % hkv == 0 and dq[2] // hq == dk[2] // hkv
    return (hq, hkv) if ok and hq % hkv == 0 else None


def _query_heads(hq: int, hkv: int) -> tuple[np.ndarray, np.ndarray]:
    """(query head index, the key/value head it reads) for every query head."""
    i = np.arange(hq)
    return i, i // (hq // hkv)


def _cache(ctx) -> list:
    """past_key, past_value, present_key, present_value: [B, Hkv, positions, D or Dv]. Their
    head axis and batch go with K's (V's); the head size too in the 4-D layout; positions do
    not (a cache's are the past ones too), and are frozen."""
    k, v = ctx.input(1), ctx.input(2)
    pairs = [(ctx.input(4), k), (ctx.input(5), v), (_read(ctx.output(1)), k), (_read(ctx.output(2)), v)]
    caches = [(c, src) for c, src in pairs if c is not None]
    for c, _ in caches:
        if ctx.dims(c) is None or len(ctx.dims(c)) != 4:
            ctx.freeze_all("Attention: a past/present cache not of rank 4")
            return []
        ctx.freeze(c, 2, "Attention: a cache's positions include the past ones")
    return caches


def _read(value):
    """An optional output that is there: read, or a graph output (one skipped with "" is not)."""
    return value if value is not None and (value.uses() or value.is_graph_output()) else None


def _four_d(node, ctx, hq: int, hkv: int) -> None:
    q, k, v, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    ctx.couple(k, 1, v, 1)
    if hq == hkv:
        ctx.couple(q, 1, k, 1)
    elif hkv == 1:  # multi-query: every query head reads the one key/value head, and goes alone
        pass
    else:
        qi, kvi = _query_heads(hq, hkv)
        ctx.couple(q, 1, k, 1, qi, kvi)
    ctx.couple(q, 1, y, 1)
    _contract(ctx, node, (q, 3), (k, 3))  # the head size of the scores
    ctx.couple(v, 3, y, 3)
    for c, src in _cache(ctx):
        for ax in (0, 1, 3):
            ctx.couple(src, ax, c, ax)
    scores = _read(ctx.output(3))
    if scores is not None and ctx.dims(scores) is not None:
        for ax in (0, 1, 2):
            ctx.couple(q, ax, scores, ax)
        _score_keys(ctx, scores, 2)
    if ctx.attr("scale") is None:
        d = ctx.dims(q)[3]

        def write_scale(rc):
            if len(rc.removed(q, 3)) and isinstance(d, int):  # the scale the input computed from its D
                rc.set_attr_float("scale", 1.0 / math.sqrt(d))

        ctx.on_prune(write_scale)


def _three_d(node, ctx, hq: int, hkv: int) -> None:
    q, k, v, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    d, dv = ctx.dims(q)[2] // hq, ctx.dims(v)[2] // hkv
    # the atoms query heads go by: key/value heads (with their query heads), or with one
    # key/value head (multi-query) the query heads themselves
    qtag, n_atoms, of_query = ("q_heads", hq, np.arange(hq)) if hkv == 1 < hq else \
        ("kv_heads", hkv, _query_heads(hq, hkv)[1])

    def per_head(value, tag: str, n: int, n_heads: int, size: int, of_head: np.ndarray) -> None:
        ctx.couple_virtual(tag, n, value, 2, np.arange(n_heads * size), np.repeat(of_head, size))

    per_head(q, qtag, n_atoms, hq, d, of_query)
    per_head(y, qtag, n_atoms, hq, dv, of_query)
    per_head(k, "kv_heads", hkv, hkv, d, np.arange(hkv))
    per_head(v, "kv_heads", hkv, hkv, dv, np.arange(hkv))
    for c, _ in _cache(ctx):
        ctx.couple(q, 0, c, 0)
        ctx.couple_virtual("kv_heads", hkv, c, 1, np.arange(hkv), np.arange(hkv))
        ctx.unchanged(c, 3)
    scores = _read(ctx.output(3))
    if scores is not None and ctx.dims(scores) is not None:
        ctx.couple(q, 0, scores, 0)
        ctx.couple_virtual(qtag, n_atoms, scores, 1, np.arange(hq), of_query)
        ctx.couple(q, 1, scores, 2)
        _score_keys(ctx, scores, 1)

    def rewrite(rc):
        gone = len(rc.virtual_removed(qtag))
        if gone and qtag == "q_heads":
            rc.set_attr_int("q_num_heads", hq - gone)
        elif gone:
            rc.set_attr_int("q_num_heads", hq - gone * (hq // hkv))
            rc.set_attr_int("kv_num_heads", hkv - gone)

    ctx.on_prune(rewrite)


def _score_keys(ctx, scores, k_positions: int) -> None:
    """The scores output's key positions: K's, unless a past cache adds its own."""
    if ctx.input(4) is None:
        ctx.couple(ctx.input(1), k_positions, scores, 3)
    else:
        ctx.freeze(scores, 3, "Attention: the scores' key positions include a cache's")


def _mask(ctx, hq: int, hkv: int, four_d: bool) -> None:
    """attn_mask, broadcast against the scores [B, Hq, S, T]: an axis of size 1 is never
    sliced; batch and query positions go with Q's; a head axis with the query heads; key
    positions with K's when there is no past (else frozen: they include the past)."""
    mask = ctx.input(3)
    dm = ctx.dims(mask)
    if mask is None or dm is None:
        if mask is not None:
            ctx.freeze(mask, None, "Attention: a mask of unknown rank")
        return
    q, k = ctx.input(0), ctx.input(1)
    past = ctx.input(4) is not None
    targets = [(q, 0), (q, 1 if four_d else None), (q, 2 if four_d else 1), (None if past else k, 2 if four_d else 1)]
    off = 4 - len(dm)
    if off < 0:
        ctx.freeze(mask, None, "Attention: a mask of more than 4 axes")
        return
    for ax, size in enumerate(dm):
        target, t_ax = targets[ax + off]
        if size == 1:
            ctx.unchanged(mask, ax)
        elif ax + off == 1 and not four_d:  # the head axis of a 3-D layout: through the virtual slot
            qi, kvi = _query_heads(hq, hkv)
            if hkv == 1:
                ctx.couple_virtual("q_heads", hq, mask, ax, qi, qi)
            else:
                ctx.couple_virtual("kv_heads", hkv, mask, ax, qi, kvi)
        elif target is not None and size == ctx.dims(target)[t_ax]:
            ctx.couple(target, t_ax, mask, ax)
        else:
            ctx.freeze(mask, ax, "Attention: a mask axis that does not match the scores'")
