"""``bn-fold-compensate``: data-free bias compensation from BatchNorm statistics.

``bias-compensate`` folds Σ_{c removed} W[:, c] · E[x_c] into a layer's bias with E
*measured* on calibration data. Without data the mean of a removed input channel is still
known when the channel comes out of a BatchNormalization (inference form): if the BN's
input follows its running statistics, its output is N(β, γ²·var/(var+ε)) at every
position, and the mean of an elementwise function of it (Relu, Clip/Relu6, LeakyRelu,
Sigmoid, HardSigmoid, HardSwish, SiLU written as x·Sigmoid(x), PP-OCR's x·Clip(x+3,0,6)/6,
...) is a one-dimensional Gaussian expectation, taken here on a fine grid (exact for the
identity: β, whatever the distribution). Means add through an Add of two such channels
(linearity, no Gaussian needed) and survive average pooling and a Flatten of 1×1 maps.

Zero padding: a bias is one number per output channel, so the fold uses the mean over
output positions of what the removed channel contributed: each kernel tap weighted by the
fraction of output positions at which it reads inside the input (at the value's shape in
the dense model, or at the run's representative shape when that is symbolic; a dim whose
size is still unknown is treated as interior — all taps inside — and the report says so).

What the fold assumes is the model's own claim (the BN statistics describe its data);
without calibration data nothing can check it, so there is no guard and the verbs say
accuracy was not measured. With calibration data in the context it is guarded like the
other repairs (undone unless the output error goes down). It only changes biases (a bias
input is added where the layer has none); the oracle runs before it. Channels whose mean
is not known this way (no BN, an unsupported op between, MatMul or ConvTranspose
consumers, a shared bias) are left alone and counted.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from graphprune.importance.layers import Linear, conv_geometry, linear_of
from graphprune.ir.constants import const_array, is_constant
from graphprune.passes._infra import Pass, PassContext, register_pass
from graphprune.passes.reconstruction._common import (
    Undo, current_bias, guarded, kept, pruned_consumers, removed_map, set_bias, shared, value_shapes)
from graphprune.passes.reconstruction.bias_compensation import expected_loss

log = logging.getLogger(__name__)

NONE_APPLICABLE = "none applicable (no BatchNormalization before the pruned channels)"

_T = np.linspace(-8.0, 8.0, 3201)  # standard-normal grid; a fine grid copes with kinks (Relu, Clip)
_W = np.exp(-0.5 * _T ** 2)
_W /= _W.sum()


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _clip(node: ir.Node, x, c):
    lo = c(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else _attr(node, "min", None)
    hi = c(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else _attr(node, "max", None)
    return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)


# elementwise ops of one input: f(node, x, const) with x (C, grid) and const(value) -> per-channel array
_UNARY = {
    "Identity": lambda n, x, c: x,
    "Dropout": lambda n, x, c: x,
    "Relu": lambda n, x, c: np.maximum(x, 0.0),
    "LeakyRelu": lambda n, x, c: np.where(x >= 0, x, _attr(n, "alpha", 0.01) * x),
    "Sigmoid": lambda n, x, c: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": lambda n, x, c: np.tanh(x),
    "Softplus": lambda n, x, c: np.logaddexp(0.0, x),
    "Elu": lambda n, x, c: np.where(x >= 0, x, _attr(n, "alpha", 1.0) * np.expm1(np.minimum(x, 0.0))),
    "HardSigmoid": lambda n, x, c: np.clip(_attr(n, "alpha", 0.2) * x + _attr(n, "beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda n, x, c: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "Clip": _clip,
    "Neg": lambda n, x, c: -x,
    "PRelu": lambda n, x, c: np.where(x >= 0, x, c(n.inputs[1]) * x),
}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
_MEAN_KEEPING = ("Identity", "Dropout", "GlobalAveragePool", "AveragePool", "Flatten", "Reshape", "Squeeze")


def _static(dims) -> bool:
    return dims is not None and all(isinstance(d, int) and d >= 0 for d in dims)


def _dims(v: ir.Value | None):
    return None if v is None or v.shape is None else list(v.shape)


_NONLINEAR = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "Elu", "HardSigmoid", "HardSwish",
                        "Clip", "PRelu"})


def _has_nonlinearity(v: ir.Value, seen: set) -> bool:
    """An elementwise expression (as `_bn_leaves` accepts it) applies a nonlinearity."""
    node = v.producer()
    if node is None or is_constant(v) or node.op_type == "BatchNormalization" or id(node) in seen:
        return False
    seen.add(id(node))
    return node.op_type in _NONLINEAR or any(x is not None and _has_nonlinearity(x, seen) for x in node.inputs)


class ChannelMeans:
    """E[x_c] of a value's channels (axis 1) from the BatchNorms above it, or None.
    `linear=False`: only through a nonlinearity (module docstring: a BN output read
    linearly has mean β only when the data matches the training statistics)."""

    def __init__(self, linear: bool = False):
        self.memo: dict[str, np.ndarray | None] = {}
        self.linear = linear

    def __call__(self, v: ir.Value) -> np.ndarray | None:
        if v.name not in self.memo:
            self.memo[v.name] = self._mean(v)
        return self.memo[v.name]

    def _mean(self, v: ir.Value) -> np.ndarray | None:
        node = v.producer()
        if node is None or is_constant(v):
            return None
        if node.op_type in _MEAN_KEEPING and _keeps_channels(node):
            return self(node.inputs[0])
        leaves = _bn_leaves(v, set())
        if leaves is not None and len(leaves) == 1 and (self.linear or _has_nonlinearity(v, set())):
            bn = next(iter(leaves))
            mu, sd = _bn_gaussian(bn)
            if mu is None:
                return None
            z = mu[:, None] + sd[:, None] * _T[None, :]
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                vals = _evaluate(v, {bn.outputs[0].name: z}, len(mu), _dims(v))
            if vals is not None and not np.all(np.isfinite(vals)):
                return None
            return None if vals is None else np.broadcast_to(vals, z.shape) @ _W
        if node.op_type in ("Add", "Sub") and all(x is not None and not is_constant(x) for x in node.inputs[:2]):
            a, b = self(node.inputs[0]), self(node.inputs[1])
            if a is None or b is None or a.shape != b.shape:
                return None
            return a + b if node.op_type == "Add" else a - b
        return None


def _keeps_channels(node: ir.Node) -> bool:
    """The op keeps each channel's mean at the same index of axis 1."""
    if node.op_type in ("Identity", "Dropout", "GlobalAveragePool"):
        return True
    if node.op_type == "AveragePool":  # zeros of padding would pull the mean down
        pads = _attr(node, "pads", None)
        return not _attr(node, "count_include_pad", 0) or not pads or not any(pads)
    x, y = _dims(node.inputs[0]), _dims(node.outputs[0])
    if not (_static(x) and _static(y)) or len(x) < 2 or len(y) < 2:
        return False
    return x[0] == y[0] and x[1] == y[1] and int(np.prod(x[2:])) == 1 and int(np.prod(y[2:])) == 1


def _bn_gaussian(bn: ir.Node):
    """(mean, std) per channel of an inference BatchNormalization's output."""
    arrs = [const_array(v) if v is not None else None for v in bn.inputs[1:5]]
    if len(arrs) < 4 or any(a is None for a in arrs) or _attr(bn, "training_mode", 0):
        return None, None
    gamma, beta, _, var = (a.astype(np.float64).reshape(-1) for a in arrs)
    eps = float(_attr(bn, "epsilon", 1e-5))
    return beta, np.abs(gamma) * np.sqrt(np.maximum(var, 0.0) / (np.maximum(var, 0.0) + eps))


def _bn_leaves(v: ir.Value, seen: set) -> set | None:
    """The BatchNorms an elementwise expression `v` is computed from, or None when it
    reads anything else (another layer, a graph input, a non-elementwise op)."""
    if is_constant(v):
        return set()
    node = v.producer()
    if node is None:
        return None
    if node.op_type == "BatchNormalization" and v is node.outputs[0]:
        return {node}
    if id(node) in seen:
        return set()
    seen.add(id(node))
    if node.op_type in _UNARY:
        ins = [node.inputs[0]] + [x for x in node.inputs[1:] if x is not None]
        if any(not is_constant(x) for x in ins[1:]):
            return None
        return _bn_leaves(ins[0], seen)
    if node.op_type in _BINARY and len(node.inputs) == 2:
        a, b = _bn_leaves(node.inputs[0], seen), _bn_leaves(node.inputs[1], seen)
        return None if a is None or b is None else a | b
    return None


def _per_channel(arr: np.ndarray | None, rank: int | None, channels: int) -> np.ndarray | None:
    """A constant as (C, 1) or a scalar, when it broadcasts along axis 1 only."""
    if arr is None:
        return None
    a = np.asarray(arr, dtype=np.float64)
    if a.size == 1:
        return a.reshape(())
    if rank is None or a.ndim > rank:
        return None
    shape = [1] * (rank - a.ndim) + list(a.shape)
    if rank < 2 or shape[1] != channels or int(np.prod(shape)) != channels:
        return None
    return a.reshape(channels, 1)


def _evaluate(v: ir.Value, env: dict, channels: int, dims) -> np.ndarray | None:
    """`v` as an array (C, grid), from the BN output's grid in `env`."""
    if v.name in env:
        return env[v.name]
    rank = len(dims) if dims is not None else None

    def const(x):
        c = _per_channel(const_array(x), rank, channels)
        if c is None:
            raise _NotPerChannel
        return c

    if is_constant(v):
        return const(v)
    node = v.producer()
    try:
        if node.op_type in _UNARY:
            x = _evaluate(node.inputs[0], env, channels, dims)
            out = None if x is None else _UNARY[node.op_type](node, x, const)
        else:
            a = _evaluate(node.inputs[0], env, channels, dims)
            b = _evaluate(node.inputs[1], env, channels, dims)
            out = None if a is None or b is None else _BINARY[node.op_type](a, b)
    except _NotPerChannel:
        out = None
    env[v.name] = out
    return out


class _NotPerChannel(Exception):
    pass


def tap_coverage(node: ir.Node, x_dims, w_shape) -> tuple[np.ndarray, bool]:
    """(fraction of output positions at which each kernel tap reads inside the input,
    flattened in kernel order; whether every spatial size was known)."""
    nsp = len(w_shape) - 2
    kernel = list(w_shape[2:])
    known = x_dims is not None and len(x_dims) == nsp + 2 and _static(x_dims[2:])
    if not known:
        return np.ones(int(np.prod(kernel))), False
    begin, end, strides, dil = conv_geometry(node, x_dims, w_shape)
    cov = np.ones(())
    for i in range(nsp):
        size = x_dims[2 + i]
        n_out = (size + begin[i] + end[i] - (kernel[i] - 1) * dil[i] - 1) // strides[i] + 1
        o = np.arange(max(n_out, 0))
        frac = np.array([np.mean((o * strides[i] - begin[i] + t * dil[i] >= 0)
                                 & (o * strides[i] - begin[i] + t * dil[i] < size)) if len(o) else 0.0
                         for t in range(kernel[i])])
        cov = np.multiply.outer(cov, frac)
    return cov.reshape(-1), True


@register_pass
class BnFoldCompensate(Pass):
    """Options: guard (with calibration data in the context: undo unless the output error
    goes down; default true), linear (also fold channels read without a nonlinearity
    after their BN, whose mean is then β; default false: measured unreliable)."""

    name = "bn-fold-compensate"
    description = ("fold removed input channels' mean contribution, known from BatchNorm statistics, into each "
                   "consumer's bias (no data needed)")

    def __init__(self, *, guard: bool = True, linear: bool = False):
        super().__init__()

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        from graphprune.errors import UsageError

        dense, plan = ctx.results.get("dense_model"), ctx.results.get("plan")
        if dense is None or plan is None:
            raise UsageError(f"{self.name} needs the dense model and the plan: run it after prune-channels")
        removed = removed_map(plan)
        calib = ctx.results.get("calibration")
        opts = self.resolved_options()
        guard = bool(opts.get("guard", True))
        apply = _Fold(model, dense, removed, ctx.results.get("input_shapes"), bool(opts.get("linear", False)))
        if calib is not None:
            from graphprune.passes.reconstruction._common import RepairInputs

            return guarded(self.name, model, RepairInputs(dense, calib, plan, removed), apply, guard=guard, ctx=ctx)
        undo = Undo()
        shapes0 = value_shapes(model)
        report = apply(undo)
        shapes1 = value_shapes(model)
        bad = [k for k, s in shapes0.items() if k in shapes1 and shapes1[k] != s]
        if bad:
            undo.revert(model)
            log.warning("%s: undone (shapes changed: %s)", self.name, bad[:3])
        entry = {"pass": self.name, "error_before": None, "error_after": None, "reverted": bool(bad), **report}
        ctx.results.setdefault("repair", []).append(entry)
        log.info("%s: %s", self.name, entry["line"])
        return bool(undo.consts or undo.inputs) and not bad


class _Fold:
    """apply(undo) -> report: the fold itself, shared by the guarded and unguarded runs."""

    def __init__(self, model, dense, removed, input_shapes, linear: bool = False):
        self.model, self.dense, self.removed, self.input_shapes = model, dense, removed, input_shapes
        self.linear = linear
        self._at = None

    def _x_dims(self, dlin: Linear):
        dims = _dims(dlin.x)
        if (dims is None or not _static(dims[2:])) and self.input_shapes is not None:
            if self._at is None:
                from graphprune.frontends.onnx import at_shapes

                try:
                    at = at_shapes(self.dense, getattr(self.input_shapes, "shapes", self.input_shapes))
                    self._at = {n.name: n for n in at.graph}
                except Exception as exc:  # shapes are a refinement: fall back to interior taps
                    log.debug("bn-fold-compensate: no shapes at the representative input (%s)", exc)
                    self._at = {}
            node = self._at.get(dlin.node.name)
            if node is not None:
                dims = _dims(node.inputs[0])
        return dims

    def __call__(self, undo: Undo) -> dict:
        means = ChannelMeans(self.linear)
        dense_nodes = {n.name: n for n in self.dense.graph}
        layers, folded, skipped, interior = [], 0, 0, 0
        for lin in pruned_consumers(self.model, self.removed):
            removed_in = self.removed[(lin.w.name, lin.w_in_axis)]
            dn = dense_nodes.get(lin.node.name)
            dlin = linear_of(dn) if dn is not None else None
            mu = means(dlin.x) if dlin is not None and dlin.x_axis == 1 else None
            w_shape = const_array(dlin.w).shape if dlin is not None else None
            ok = mu is not None and lin.kind in ("conv", "gemm") and not (lin.b is not None and shared(lin.b)) \
                and len(mu) == (w_shape[1] * dlin.group if lin.kind == "conv" else dlin.in_channel_matrix().shape[1])
            if not ok:
                skipped += len(removed_in)
                continue
            if lin.kind == "conv":
                cov, exact = self._coverage(dlin, w_shape)
                interior += not exact
            else:
                cov = np.ones(1)
            mean_patch = np.zeros((len(mu), len(cov)))
            mean_patch[removed_in] = np.outer(mu[removed_in], cov)
            delta = expected_loss(dlin, mean_patch, removed_in)
            sel = kept(self.removed, lin.y.name, lin.y_axis, len(delta))
            if set_bias(self.model, lin, current_bias(lin, len(sel)) + delta[sel], undo):
                folded += len(removed_in)
                layers.append({"layer": lin.name, "channels": int(len(removed_in)),
                               "max_shift": float(np.abs(delta[sel]).max(initial=0.0))})
            else:
                skipped += len(removed_in)
        return {"channels": folded, "skipped_channels": skipped, "layers": layers,
                "line": fold_line(folded, len(layers), skipped, interior)}

    def _coverage(self, dlin: Linear, w_shape):
        return tap_coverage(dlin.node, self._x_dims(dlin), w_shape)


def fold_line(folded: int, layers: int, skipped: int, interior: int) -> str:
    if not folded:
        return NONE_APPLICABLE if not skipped else f"{NONE_APPLICABLE}: {skipped} removed input channels left as they are"
    line = f"folded the BatchNorm means of {folded} removed input channels into the biases of {layers} layers"
    if skipped:
        line += f" ({skipped} removed input channels without a known mean left as they are)"
    if interior:
        line += f"; {interior} layers' padding borders treated as interior (spatial size unknown)"
    return line
