"""A LayerNorm written out as ONNX ops, as exporters write it below opset 17 (where there is
no LayerNormalization op): the one recogniser.

    mean = ReduceMean(x) -> c = Sub(x, mean) -> Pow(c, 2) | Mul(c, c) -> ReduceMean
         -> Add(eps) -> Sqrt -> c / that -> [Cast ...] -> [Mul(gamma)] -> [Add(beta)]

both means over the last axis alone, keeping it (size 1). Everything after the variance is
an RMSNorm of ``c`` (graphprune/ir/rms_norm.py reads it). Two places read this chain:
the reduce rule (rules/pool.py), which keeps the variance exact over the original width when
the hidden size is pruned, and slice-hidden's preparation (passes/pruning/layernorm_stream.py),
which turns the chain into the LayerNormalization it computes before writing it as an RMSNorm.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from graphprune.ir.constants import STD_DOMAINS, is_constant
from graphprune.ir.rms_norm import RMSNormTail, last_axis_only, only_reader, rms_norm_after, scalar_within



@dataclass(frozen=True)
class WrittenLayerNorm:
    x: ir.Value  # what is normalised
    mean: ir.Node  # ReduceMean(x)
    sub: ir.Node  # c = x - mean
    square: ir.Node  # Pow(c, 2) or Mul(c, c)
    variance: ir.Node  # ReduceMean(square)
    tail: RMSNormTail  # eps, Sqrt, c / root, [Casts], [Mul(gamma)]
    beta_add: ir.Node | None  # Add(gamma · normed, beta[d]), None without a constant bias
    beta_input: int | None

    @property
    def output(self) -> ir.Value:
        """The LayerNorm's result: after beta, else after gamma, else the normalised c."""
        if self.beta_add is not None:
            return self.beta_add.outputs[0]
        return self.tail.gamma_mul.outputs[0] if self.tail.gamma_mul is not None else self.tail.normed


def _last_axis_mean(node: ir.Node | None) -> bool:
    x = node.inputs[0] if node is not None else None
    return (node is not None and node.op_type == "ReduceMean" and node.domain in STD_DOMAINS
            and last_axis_only(node, len(x.shape) if x is not None and x.shape is not None else None))


def layer_norm_at_variance(variance: ir.Node) -> WrittenLayerNorm | None:
    """The written-out LayerNorm whose variance `variance` (a ReduceMean) computes, or None."""
    if not _last_axis_mean(variance):
        return None
    square = variance.inputs[0].producer() if variance.inputs[0] is not None else None
    if square is None or square.domain not in STD_DOMAINS or len(square.inputs) != 2:
        return None
    c = square.inputs[0]
    if square.op_type == "Pow":
        if scalar_within(square.inputs[1], c) != 2.0:
            return None
    elif square.op_type != "Mul" or square.inputs[1] is not c:
        return None
    sub = c.producer() if c is not None else None
    if sub is None or sub.op_type != "Sub" or sub.domain not in STD_DOMAINS or sub.inputs[1] is None:
        return None
    x, mean = sub.inputs[0], sub.inputs[1].producer()
    if mean is None or mean.inputs[0] is not x or not _last_axis_mean(mean):
        return None
    tail = rms_norm_after(variance.outputs[0])
    if tail is None or tail.scaled is not c:
        return None
    if {id(u.node) for u in c.uses()} != {id(square), id(tail.scale)}:  # c read by the chain alone
        return None
    beta_add, beta_input = _beta(tail, x)
    return WrittenLayerNorm(x=x, mean=mean, sub=sub, square=square, variance=variance, tail=tail,
                            beta_add=beta_add, beta_input=beta_input)


def _beta(tail: RMSNormTail, x: ir.Value) -> tuple[ir.Node | None, int | None]:
    """Add(gamma · normed (or normed), beta) with beta a constant of one value per channel of
    x's last axis, or (None, None) (a one-element beta broadcast over the channels is not a
    LayerNorm's bias: slice-hidden would fold it as one)."""
    scaled = tail.gamma_mul.outputs[0] if tail.gamma_mul is not None else tail.normed
    add = only_reader(scaled, "Add")
    if add is None or len(add.inputs) != 2:
        return None, None
    bi = 1 if add.inputs[0] is scaled else 0
    b = add.inputs[bi]
    width = x.shape[-1] if x.shape is not None and len(x.shape) else None
    if b is None or not is_constant(b) or b.shape is None or len(b.shape) != 1 or not isinstance(width, int) \
            or b.shape[0] != width:
        return None, None
    return add, bi


def written_layer_norms(graph: ir.Graph) -> list[WrittenLayerNorm]:
    """Every written-out LayerNorm of `graph`, in graph order."""
    found = []
    for node in graph:
        if node.op_type == "ReduceMean" and (ln := layer_norm_at_variance(node)) is not None:
            found.append(ln)
    return found
