"""ONNX Runtime's block-quantized linear layer, com.microsoft MatMulNBits (layout in
graphprune/ir/nbits.py): output rows, and input channels in whole quantization blocks.

* Output channels (N): row n of the packed weight, of the scales (and float zero points) and
  the bias go with output channel n. Packed zero points hold several blocks' codes per byte
  (and, flattened, several rows' bytes per axis), so the rule rewrites them at prune time,
  as it does the N and K attributes.
* Input channels (K) go in whole blocks: channel k is coupled with block k // block_size of
  the weight and scales, so an atom of this group is a block (or a union of them). A block
  has one scale per row: removing part of one would leave codes whose dequantization no
  longer matches their neighbours', and an int8-compute kernel (accuracy_level 4)
  quantizes A per block too. A removed block leaves every other block's values, and their
  per-block activation quantization, as they were: exact.
* Why the masked original is exact without a zero-point fill: masking zeroes a removed
  row's or block's codes *and its scales*, and (code - zero point) * 0 = 0 whatever the
  zero point is.
* Flat scales [N * k_blocks] are coupled row by row (index map n * k_blocks + b -> n);
  coupling them to blocks too would tie every row to every block, so K stays frozen there.
* Anything else (act-order g_idx, computed weights or scales, unknown zero-point layouts,
  attributes that disagree with the shapes) freezes the node.
"""
from __future__ import annotations

import numpy as np

from graphprune.analysis.dependency.registry import rule
from graphprune.ir import nbits
from graphprune.ir.constants import const_array

_FLAT = "MatMulNBits: flat scales [N * k_blocks] (an older layout) are kept per row; its input channels stay"


@rule("MatMulNBits", domain=nbits.MS)
def matmul_nbits(node, ctx):
    lay, why = nbits.layout(node)
    a, w, scales, zp, bias = (ctx.input(i) for i in (0, nbits.WEIGHT, nbits.SCALES, nbits.ZERO_POINTS, nbits.BIAS))
    y = ctx.output(0)
    da, dy = ctx.dims(a), ctx.dims(y)
    if lay is None or da is None or dy is None or len(da) < 2 or da[-1] != lay.K or dy[-1] != lay.N:
        ctx.freeze_all(why or "MatMulNBits: input or output shapes do not match K and N")
        return
    rank = len(da)
    ctx.unchanged(a, *range(rank - 1))
    ctx.unchanged(y, *range(len(dy) - 1))
    ctx.unchanged(w, 2)  # the bytes of one block
    # output rows
    ctx.couple(w, 0, y, -1)
    ctx.param(w, 0, "weight")
    if bias is not None:
        ctx.couple(bias, 0, y, -1)
        ctx.param(bias, 0, "bias")
    kb = lay.k_blocks
    per_row = [scales] + ([zp] if lay.zero_points == "float" else [])
    for v in per_row:
        if lay.flat_scales:
            ctx.couple(v, 0, w, 0, np.arange(lay.N * kb), np.arange(lay.N * kb) // kb)
        else:
            ctx.couple(v, 0, w, 0)
        ctx.param(v, 0, "scale")
    if lay.zero_points == "packed":
        ctx.structural(zp)
    # input channels, in whole blocks
    if lay.flat_scales:
        ctx.freeze(w, 1, _FLAT)
        ctx.freeze(a, -1, _FLAT)
    else:
        ctx.couple(a, -1, w, 1, np.arange(lay.K), np.arange(lay.K) // lay.block_size)
        ctx.param(w, 1, "weight")
        for v in per_row:
            ctx.couple(v, 1, w, 1)
    ctx.on_prune(lambda rc: _rewrite(rc, lay, a, w))


def _rewrite(rc, lay: nbits.Layout, a, w) -> None:
    """N and K follow the kept rows and channels; packed zero points lose the removed rows'
    and blocks' codes."""
    rows, blocks = rc.removed(w, 0), rc.removed(w, 1)
    rc.set_attr_int("N", lay.N - len(rows))
    rc.set_attr_int("K", lay.K - len(rc.removed(a, -1)))
    if lay.zero_points == "packed" and (len(rows) or len(blocks)):
        zp = rc.node.inputs[nbits.ZERO_POINTS]
        rc.set_input_const(nbits.ZERO_POINTS, nbits.kept_zero_points(const_array(zp), lay, rows, blocks),
                           f"{zp.name}_pruned")
