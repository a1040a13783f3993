"""ONNX recurrent layers: LSTM, GRU and RNN, by hidden unit and by input feature.

A hidden unit j owns, in every direction, row g*H + j of each gate g of W [dirs, G*H, I]
and R [dirs, G*H, H] (gates stacked: LSTM iofc, G = 4; GRU zrh, G = 3; RNN, G = 1), the
same rows of both bias halves B [dirs, 2*G*H], its peephole entries P [dirs, 3*H] (LSTM),
column j of R (what every unit reads of it), and index j of the H axis of Y, Y_h, Y_c
and the initial states. All of them are one atom; `hidden_size` is rewritten.

Why that is exact against the masked original (those slices zeroed): no kept unit reads
unit j (its R column is zeroed), so every kept unit computes what it did, whatever unit j
computes from its zeroed rows and its initial state; and whoever reads Y is masked at j by
its own rule, or, where it needs j to be zero (a contraction of two activations, dynamic
quantization's range), finds that unproven (rules.zero_channels does not follow a recurrent
layer) and freezes. Initial states made at run time as zeros (ConstantOfShape, torch's
export of a call without them, for a dynamic batch) have a shape the pruned model cannot
rewrite: the pruned layer drops them, and an absent initial state is zeros too. An input
feature i is column i of W (every direction), coupled with X's feature axis like a linear
layer's input. The direction axes are frozen.
"""
from __future__ import annotations

import numpy as np

from graphprune.analysis.dependency.registry import rule

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@rule(["LSTM", "GRU", "RNN"])
def recurrent(node, ctx):
    op = node.op_type
    g = _GATES[op]
    x, w, r = ctx.input(0), ctx.input(1), ctx.input(2)
    b = ctx.input(3)
    h0 = ctx.input(5)
    c0 = ctx.input(6) if op == "LSTM" else None
    p = ctx.input(7) if op == "LSTM" else None
    y, y_h = ctx.output(0), ctx.output(1)
    y_c = ctx.output(2) if op == "LSTM" else None
    dw, dr, dx = ctx.dims(w), ctx.dims(r), ctx.dims(x)
    hidden = ctx.attr("hidden_size")
    if None in (dw, dr, dx, hidden) or len(dw) != 3 or len(dr) != 3 or len(dx) != 3 or \
            not all(isinstance(d, int) for d in (*dw[1:], *dr[1:])) or dw[1] != g * hidden or dr[2] != hidden:
        ctx.freeze_all(f"{op}: weights of unknown or unexpected shape")
        return
    if not all(v is None or _moved_constants(ctx, v) for v in (w, r, b, p)):
        ctx.freeze_all(f"{op}: computed weights")
        return
    if int(ctx.attr("layout", 0)):
        ctx.freeze_all(f"{op}: layout 1 (batch first), which ONNX Runtime does not run, so the oracle cannot check it")
        return
    h = int(hidden)
    _couple_steps(ctx, x, y, y_h, y_c, h0, c0)
    # input features: W's columns (every direction)
    ctx.couple(x, 2, w, 2)
    _param(ctx, w, 2, "weight")
    # hidden units: R's columns are the unit axis everything else maps onto
    units = np.arange(h)
    ctx.couple(w, 1, r, 2, np.arange(g * h), np.arange(g * h) % h)
    ctx.couple(r, 1, r, 2, np.arange(g * h), np.arange(g * h) % h)
    _param(ctx, w, 1, "weight")
    _param(ctx, r, 1, "weight")
    if b is not None:
        ctx.couple(b, 1, r, 2, np.arange(2 * g * h), np.arange(2 * g * h) % h)
        _param(ctx, b, 1, "bias")
    if p is not None:
        ctx.couple(p, 1, r, 2, np.arange(3 * h), np.arange(3 * h) % h)
    ctx.unchanged(w, 0)
    ctx.unchanged(r, 0)
    for v in (b, p):
        if v is not None:
            ctx.unchanged(v, 0)
    for v, ax in ((y, 3), (y_h, 2), (y_c, 2)):
        if v is not None and ctx.dims(v) is not None:
            ctx.couple(v, ax, r, 2, units, units)
    run_time_zeros = [i for i, v in ((5, h0), (6, c0)) if _zeros_made_at_run_time(v)]
    for i, v in ((5, h0), (6, c0)):
        if v is None or ctx.dims(v) is None:
            continue
        if i in run_time_zeros:  # dropped at prune time: an absent initial state is zeros too
            ctx.unchanged(v, *range(len(ctx.dims(v))))
        else:
            ctx.couple(v, 2, r, 2, units, units)
    ctx.on_prune(lambda rc: _rewrite(rc, r, h, run_time_zeros))


# Ops that only move a constant's elements, whose own rules carry the channels back to it:
# the dynamo exporter (unoptimised, as prune_module captures) builds W, R and B at run time
# from the module's parameters, gates reordered from torch's ifgo to ONNX's iofc:
# Unsqueeze(Concat(Slice(weight_ih, 0:H), Slice(3H:4H), Slice(H:2H), Slice(2H:3H))).
_CONST_MOVES = {"Slice": (0,), "Concat": None, "Unsqueeze": (0,), "Squeeze": (0,), "Transpose": (0,),
                "Identity": (0,)}


def _moved_constants(ctx, v, _depth: int = 0) -> bool:
    """`v` is a constant, or made of constants by _CONST_MOVES ops (their other inputs constant)."""
    if v is None:
        return False
    if ctx.is_const(v):
        return True
    node = v.producer()
    if node is None or node.domain not in ("", "ai.onnx") or _depth > 8 or node.op_type not in _CONST_MOVES:
        return False
    data = _CONST_MOVES[node.op_type]
    data = range(len(node.inputs)) if data is None else data
    return all(_moved_constants(ctx, i, _depth + 1) if k in data else (i is None or ctx.is_const(i))
               for k, i in enumerate(node.inputs))


def _sources(ctx, v, ax: int, _depth: int = 0):
    """The constants a _moved_constants value's axis `ax` comes from, as (constant, axis)."""
    if ctx.is_const(v):
        yield v, ax
        return
    node = v.producer()
    op = node.op_type
    if op in ("Slice", "Identity"):
        yield from _sources(ctx, node.inputs[0], ax, _depth + 1)
    elif op == "Concat":
        for i in node.inputs:
            yield from _sources(ctx, i, ax, _depth + 1)
    elif op == "Transpose":
        perm = node.attributes.get("perm")
        rank = len(ctx.dims(v) or ())
        perm = list(perm.value) if perm is not None else list(range(rank))[::-1]
        yield from _sources(ctx, node.inputs[0], perm[ax], _depth + 1)
    elif op in ("Unsqueeze", "Squeeze"):
        d_in, d_out = ctx.dims(node.inputs[0]), ctx.dims(v)
        axes = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        axes = list(node.attributes["axes"].value) if axes is None and "axes" in node.attributes else axes
        if d_in is None or d_out is None or axes is None:
            return
        big = len(d_out) if op == "Unsqueeze" else len(d_in)
        axes = {int(a) + big if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1)}
        if op == "Unsqueeze":
            if ax in axes:
                return
            yield from _sources(ctx, node.inputs[0], ax - sum(1 for a in axes if a < ax), _depth + 1)
        else:
            kept = [k for k in range(len(d_in)) if k not in axes]
            yield from _sources(ctx, node.inputs[0], kept[ax], _depth + 1)


def _param(ctx, v, ax: int, role: str) -> None:
    """The role on the constant(s) the weight is (computed from)."""
    for c, cax in _sources(ctx, v, ax):
        ctx.param(c, cax, role)


def _rewrite(rc, r, h: int, run_time_zeros: list[int]) -> None:
    removed = len(rc.removed(r, 2))
    rc.set_attr_int("hidden_size", h - removed)
    if removed:
        for i in run_time_zeros:
            rc.node.replace_input_with(i, None)


# ops whose output holds only elements of their first input (all zeros in, all zeros out)
_MOVES = frozenset({"Slice", "Gather", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Identity", "Cast", "Transpose"})


def _zeros_made_at_run_time(v, _depth: int = 0) -> bool:
    """An initial state of zeros computed at run time: ConstantOfShape of 0, possibly
    sliced per layer (torch's export of an LSTM called without one, for a dynamic batch);
    its shape, made from the input's, is one the pruned model cannot rewrite."""
    node = v.producer() if v is not None else None
    if node is None or node.domain not in ("", "ai.onnx") or _depth > 8:
        return False
    if node.op_type in _MOVES:
        return _zeros_made_at_run_time(node.inputs[0], _depth + 1)
    if node.op_type != "ConstantOfShape":
        return False
    value = node.attributes.get("value")
    return value is None or not np.asarray(value.value.numpy()).any()


def _couple_steps(ctx, x, y, y_h, y_c, h0, c0) -> None:
    """X [T, B, I] -> Y [T, dirs, B, H], Y_h / Y_c / initial states [dirs, B, H]: sequence
    and batch axes pass; the direction axes are frozen (a reshape after Y merges them with
    the units)."""
    why = "the directions of a recurrent layer"
    if y is not None and ctx.dims(y) is not None:
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, 1, y, 2)
        ctx.freeze(y, 1, why)
    else:
        ctx.unchanged(x, 0, 1)
    for v in (y_h, y_c, h0, c0):
        if v is not None and ctx.dims(v) is not None:
            ctx.couple(x, 1, v, 1)
            ctx.freeze(v, 0, why)
