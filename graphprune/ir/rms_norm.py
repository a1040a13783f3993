"""An RMSNorm written out as ONNX ops, as exporters write it: the one recogniser.

    mean(x²) -> Add(eps) -> Sqrt -> x / that -> [Cast ...] -> [Mul(gamma)]

where ``x / that`` is ``Div(x, sqrt)``, or ``Mul(x, Reciprocal(sqrt))`` / ``Mul(x, Div(1,
sqrt))`` (TorchScript), and the Casts are float32 ``.to(dtype)`` calls that keep the values.
Two places read this chain: slice-hidden's residual stream (analysis/residual_stream.py),
which rotates what the norm reads and folds gamma into its readers, and the reduce rule's
rewrite of a mean over pruned hidden channels (rules/pool.py), which moves kept/original
into eps and gamma so ONNX Runtime still fuses the chain. Both must agree on what the chain
is, so it is recognised here only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.ir.constants import const_array, is_constant


@dataclass(frozen=True)
class RMSNormTail:
    """What follows the mean of x² (the value `mean`, a ReduceMean's output or slice-hidden's
    ReduceSum times 1/d) in a written-out RMSNorm."""

    eps_add: ir.Node
    eps_input: int  # which input of eps_add is the constant eps
    scale: ir.Node  # the Mul or Div that divides `scaled` by the root
    scaled: ir.Value  # what the norm normalises: x
    normed: ir.Value  # x / root, after any Casts that follow
    gamma_mul: ir.Node | None  # Mul(normed, gamma[d]); None when the norm has no constant weight
    gamma_input: int | None


def only_reader(v: ir.Value | None, op_type: str | None = None) -> ir.Node | None:
    """`v`'s single reader (of `op_type` in the default domain, when given); None when `v`
    is read elsewhere too or is a graph output."""
    if v is None or v.is_graph_output():
        return None
    uses = list(v.uses())
    node = uses[0].node if len(uses) == 1 else None
    if node is None or op_type is None:
        return node
    return node if node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def last_axis_only(node: ir.Node, rank: int | None) -> bool:
    """A reduction (axes as an input, opset >= 18, or an attribute) over the last axis alone
    that keeps it: an RMSNorm's or a written-out LayerNorm's mean."""
    if int(node.attributes["keepdims"].value if "keepdims" in node.attributes else 1) != 1:
        return False
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_array(node.inputs[1]) if is_constant(node.inputs[1]) else None
    else:
        a = node.attributes.get("axes")
        axes = np.asarray(a.value) if a is not None else None
    if axes is None or axes.size != 1:
        return False
    ax = int(axes.reshape(-1)[0])
    return ax == -1 or (rank is not None and ax == rank - 1)


def keeps_values(cast: ir.Node) -> bool:
    """A Cast to float32 (TorchScript's ``.float()`` / ``.to(dtype)`` of a float32 model), or
    to the type it reads: it does not round."""
    to = cast.attributes.get("to")
    src = cast.inputs[0].dtype if cast.inputs and cast.inputs[0] is not None else None
    return to is not None and (to.value == ir.DataType.FLOAT.value or (src is not None and to.value == src.value))


def _divided(root: ir.Value) -> tuple[ir.Node, ir.Value] | None:
    """(the node computing x / root, x): Div(x, root), or Mul(x, 1/root) with 1/root a
    Reciprocal or Div(1, root)."""
    div = only_reader(root, "Div")
    if div is not None and div.inputs[1] is root:
        if not is_constant(div.inputs[0]):
            return div, div.inputs[0]
        if scalar_within(div.inputs[0], root) != 1.0:
            return None
        inv = div
    else:
        inv = only_reader(root, "Reciprocal")
    mul = only_reader(inv.outputs[0], "Mul") if inv is not None else None
    if mul is None or len(mul.inputs) != 2:
        return None
    return mul, mul.inputs[1] if mul.inputs[0] is inv.outputs[0] else mul.inputs[0]


def scalar_within(v: ir.Value | None, other: ir.Value | None) -> float | None:
    """`v`'s value when it is a one-element constant that broadcasts against `other` without
    adding axes (an eps stored as [1, 1, 1, 1] beside a rank-3 mean would make the sum rank
    4, which a fused norm does not), else None."""
    a = const_array(v) if v is not None and is_constant(v) else None
    if a is None or a.size != 1:
        return None
    rank = len(other.shape) if other is not None and other.shape is not None else 1
    return float(a.reshape(-1)[0]) if a.ndim <= rank else None


def rms_norm_after(mean: ir.Value) -> RMSNormTail | None:
    """The rest of an RMSNorm after `mean`, or None when `mean` does not start one."""
    add = only_reader(mean, "Add")
    if add is None or len(add.inputs) != 2:
        return None
    eps_input = 1 if add.inputs[0] is mean else 0
    if scalar_within(add.inputs[eps_input], mean) is None:
        return None
    sqrt = only_reader(add.outputs[0], "Sqrt")
    found = _divided(sqrt.outputs[0]) if sqrt is not None else None
    if found is None:
        return None
    scale, scaled = found
    normed = scale.outputs[0]
    while (cast := only_reader(normed, "Cast")) is not None and keeps_values(cast):
        normed = cast.outputs[0]
    gamma_mul, gamma_input = only_reader(normed, "Mul"), None
    if gamma_mul is not None and len(gamma_mul.inputs) == 2:
        gi = 0 if gamma_mul.inputs[1] is normed else 1
        g = gamma_mul.inputs[gi]
        if is_constant(g) and g.shape is not None and len(g.shape) == 1:
            gamma_input = gi
    if gamma_input is None:
        gamma_mul = None
    return RMSNormTail(eps_add=add, eps_input=eps_input, scale=scale, scaled=scaled, normed=normed,
                       gamma_mul=gamma_mul, gamma_input=gamma_input)
