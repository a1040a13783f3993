"""ONNX Runtime's mixture-of-experts op (com.microsoft MoE), as model builders emit it for
Mixtral/Phi-MoE-style layers: `y = sum over the top-k experts e of p_e * fc2_e(act(fc1_e(x)))`.

Layout (ORT's spec, checked numerically against a reference in tests/test_moe.py):
input x [..., H]; router_probs [tokens, E] (logits; ORT takes the softmax over all E, then
the top k); fc1_experts_weights [E, I, H], fc1_experts_bias [E, I]; fc2_experts_weights
[E, H, I], fc2_experts_bias [E, H]; optional fc3_experts_weights [E, I, H] (gated:
act(fc1 x) * fc3 x) and fc3_experts_bias [E, I].

* The expert-FFN channels (the I axis) are one group across all experts: channel j goes from
  every expert at once, so the packed tensors stay rectangular. A zeroed channel adds
  fc2[:, :, j] * act(0) = 0: exact for any activation, because fc2's column is zero too.
* The hidden axis H is coupled through (x, fc1 axis 2, fc2 axis 1, fc2 bias, y), as a linear
  layer couples it.
* The expert axis E is frozen: a zeroed expert is still picked by the router (its logit is
  not -inf), so zeroing is not removing; whole experts are a different transformation.
* Interleaved SwiGLU (`swiglu_fusion`, fc1 rows 2I) and activations the table does not
  know freeze the I axis; weights that are not constants, or shapes that do not fit this
  layout, freeze the node (fail closed).
"""
from __future__ import annotations

from graphprune.analysis.dependency.registry import rule
from graphprune.ir.moe import MS
_PLAIN_ACTIVATIONS = {"relu", "gelu", "silu", "identity"}


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _layout_ok(ctx, x, fc1, fc2, fc3, fused: bool) -> bool:
    dx, d1, d2 = ctx.dims(x), ctx.dims(fc1), ctx.dims(fc2)
    if dx is None or d1 is None or d2 is None or len(d1) != 3 or len(d2) != 3 or len(dx) < 2:
        return False
    if not (ctx.is_const(fc1) and ctx.is_const(fc2) and (fc3 is None or ctx.is_const(fc3))):
        return False
    e, rows, hidden = d1
    inter = rows // 2 if fused else rows  # interleaved SwiGLU: gate and linear rows of each channel
    if d2 != [e, hidden, inter] or dx[-1] != hidden or (fused and rows % 2):
        return False
    return fc3 is None or ctx.dims(fc3) == [e, inter, hidden]


@rule("MoE", domain=MS)
def moe(node, ctx):
    x, router, fc1, b1, fc2, b2, fc3, b3 = (ctx.input(i) for i in range(8))
    y = ctx.output(0)
    fused = bool(int(ctx.attr("swiglu_fusion", 0)))
    if y is None or fc1 is None or fc2 is None or not _layout_ok(ctx, x, fc1, fc2, fc3, fused):
        ctx.freeze_all("MoE: expert weights that are not constants of ONNX Runtime's layout "
                       "([E, I, H] and [E, H, I])")
        return
    experts = "MoE: whole experts are not channels (a zeroed expert is still routed to)"
    for v in (fc1, b1, fc2, b2, fc3, b3):
        ctx.freeze(v, 0, experts)
    ctx.freeze(router, -1, experts)
    ctx.unchanged(router, 0)
    rank = len(ctx.dims(x))
    ctx.unchanged(x, *range(rank - 1))
    ctx.unchanged(y, *range(rank - 1))
    # hidden: read by fc1, written by fc2 and its bias
    ctx.couple(x, -1, fc1, 2)
    ctx.couple(fc1, 2, fc2, 1)
    ctx.couple(fc2, 1, y, -1)
    ctx.param(fc1, 2, "weight")
    ctx.param(fc2, 1, "weight")
    if b2 is not None:
        ctx.couple(b2, 1, y, -1)
        ctx.param(b2, 1, "bias")
    # the expert-FFN channels
    act = _str(ctx.attr("activation_type", "relu"))
    if fused or act not in _PLAIN_ACTIVATIONS:
        reason = f"MoE: activation {act!r} / swiglu_fusion packs fc1's rows; its channels are kept"
        for v in (fc1, b1, fc3, b3):
            ctx.freeze(v, 1, reason)
        ctx.freeze(fc2, 2, reason)
        return
    ctx.couple(fc1, 1, fc2, 2)
    ctx.param(fc1, 1, "weight")
    ctx.param(fc2, 2, "weight")
    for v, role in ((b1, "bias"), (fc3, "weight"), (b3, "bias")):
        if v is not None:
            ctx.couple(v, 1, fc1, 1)
            ctx.param(v, 1, role)
