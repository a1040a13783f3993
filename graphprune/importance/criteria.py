"""Importance criteria beyond plain magnitude. Each yields per-slot contributions that
`reduce.reduce_group` turns into one score per atom (higher = more important).

Weight-only:
* ``bn_scale``  |gamma| of the normalisation scales in the group (network slimming).
* ``fpgm``      distance of each filter to the others: filters near the geometric median
                are replaceable by the rest (He et al. 2019). Sum of Euclidean distances.
* ``lamp``      squared-L2 norms made layer-adaptive: s_i / sum_{s_j >= s_i} s_j.

Data-aware (need calibration data; statistics of the *inputs of the layers that consume
the group's channels*, i.e. what the next layer actually sees):
* ``activation``  mean |a| per channel.
* ``apoz``        1 - average percentage of zeros per channel.
* ``wanda``       sum over the consumer's weights of |W| times the RMS of the input channel
                  (the structured form of Wanda, |W|·||X||).
* ``obs``         second-order (Optimal Brain Surgeon) cost of removing an input channel
                  with optimal compensation by the others: ||W_c||^2 / [H^-1]_cc with H the
                  (damped) Gram matrix of the layer input. Exact for Gemm/MatMul/1x1 convs;
                  for k×k convs H is taken over channels with taps treated as independent.
Gradient-based:
* ``taylor``    first-order Taylor, (sum over the slice of w·dL/dw)^2, from gradients the
                caller provides (``gradients={tensor name: array}``; the torch frontend can).
"""
from __future__ import annotations

import logging

import numpy as np

from graphprune.analysis.dependency.context import Slot
from graphprune.analysis.dependency.graph import DependencyGraph, Group
from graphprune.errors import UsageError
from graphprune.importance.layers import Linear, scored_layers
from graphprune.importance.magnitude import magnitude_contributions, weight_array, weight_slots
from graphprune.importance.reduce import Contribution
from graphprune.ir.constants import const_array

log = logging.getLogger(__name__)

GRAM_MAX_CHANNELS = 4096
OBS_DAMP = 0.01


# ---- weight-only -------------------------------------------------------------------------
def bn_scale_contributions(dg: DependencyGraph, group: Group, **kw) -> list[Contribution]:
    out = []
    for s, role in group.roles.items():
        if role == "norm_scale":
            arr = const_array(dg.values[s.value])
            if arr is not None:
                out.append((s, np.abs(arr.astype(np.float64)).reshape(-1)))
    if not out:
        log.debug("bn_scale: group %s has no normalisation scale, using L1 magnitude", group.name)
        return magnitude_contributions(dg, group, p=1)
    return out


def _fpgm_distances(flat: np.ndarray, max_ref: int = 2048, seed: int = 0) -> np.ndarray:
    """Sum of Euclidean distances of each row to every (or a sample of) other row."""
    n = flat.shape[0]
    ref = flat
    if n > max_ref:
        ref = flat[np.random.default_rng(seed).choice(n, max_ref, replace=False)]
    sq = (flat * flat).sum(1)
    out = np.zeros(n)
    for start in range(0, n, 1024):
        blk = flat[start:start + 1024]
        d2 = sq[start:start + 1024, None] + (ref * ref).sum(1)[None, :] - 2.0 * blk @ ref.T
        out[start:start + 1024] = np.sqrt(np.maximum(d2, 0.0)).sum(1)
    return out


def fpgm_contributions(dg: DependencyGraph, group: Group, **kw) -> list[Contribution]:
    out = []
    for s in weight_slots(group):
        arr = weight_array(dg.values[s.value])
        if arr is None or not np.issubdtype(arr.dtype, np.floating):
            continue
        flat = np.moveaxis(arr.astype(np.float64), s.axis, 0).reshape(arr.shape[s.axis], -1)
        out.append((s, _fpgm_distances(flat)))
    return out


def lamp_contributions(dg: DependencyGraph, group: Group, **kw) -> list[Contribution]:
    return magnitude_contributions(dg, group, p=2)


def taylor_contributions(dg: DependencyGraph, group: Group, gradients: dict | None = None,
                         **kw) -> list[Contribution]:
    if not gradients:
        raise UsageError("criterion 'taylor' needs gradients (gradients={tensor name: dL/dw})",
                         hint="first-order Taylor is available where gradients exist (torch models)")
    out = []
    for s in list(group.roles):
        g = gradients.get(s.value)
        if g is None:
            continue
        w = const_array(dg.values[s.value]).astype(np.float64)
        prod = np.moveaxis(w * np.asarray(g, np.float64), s.axis, 0).reshape(w.shape[s.axis], -1)
        out.append((s, prod.sum(1) ** 2))
    if not out:
        log.debug("taylor: no gradient for any tensor of group %s", group.name)
    return out


# ---- data-aware --------------------------------------------------------------------------
class ActivationState:
    """Statistics of layer inputs collected once for every group being scored."""

    def __init__(self):
        self.consumers: dict[int, list[tuple[Linear, Slot]]] = {}
        self.fallback: dict[int, list[Slot]] = {}
        self.channel: dict[tuple[str, int], object] = {}
        self.gram: dict[tuple[str, int], object] = {}


def consumers_of(layers: list[Linear], group: Group) -> list[tuple[Linear, Slot]]:
    slots = set(group.slots)
    out = []
    for lin in layers:
        s = Slot(lin.x.name, lin.x_axis)
        if s in slots and lin.kind != "convtranspose":
            out.append((lin, s))
    return out


def prepare_activations(dg: DependencyGraph, groups: list[Group], calibration=None, gram: bool = False,
                        max_batches: int | None = None, **kw) -> ActivationState:
    from graphprune.runtime.stats import StatsRequest, collect

    if calibration is None:
        raise UsageError("this criterion needs calibration data", hint="give --calib (an .npz, an image "
                         "folder with --calib-preprocess, or module:function); from Python, "
                         "gp.run_prune(path, gp.PruneOptions(calib=...))")
    state = ActivationState()
    layers = scored_layers(dg.model)
    req = StatsRequest()
    for g in groups:
        cons = consumers_of(layers, g)
        state.consumers[g.id] = cons
        for _lin, s in cons:
            req.want_channel(s.value, s.axis)
            if gram and dg.sizes.get(s, 0) <= GRAM_MAX_CHANNELS:
                req.want_gram(s.value, s.axis)
        if not cons:  # activations of the group itself; integer (quantized) ones are codes, not magnitudes
            fb = [s for s in g.slots if not s.virtual and s not in g.roles and _is_float(dg.values.get(s.value))]
            state.fallback[g.id] = fb
            for s in fb:
                req.want_channel(s.value, s.axis)
    collect(dg.model, req, calibration, max_batches=max_batches, desc="calibration statistics")
    state.channel = req.channel
    state.gram = req.gram
    return state


def _activation_slots(state: ActivationState, group: Group):
    slots = [s for _, s in state.consumers.get(group.id, [])] or state.fallback.get(group.id, [])
    return list(dict.fromkeys(slots))


def activation_contributions(dg, group, state: ActivationState = None, **kw) -> list[Contribution]:
    out = [(s, state.channel[(s.value, s.axis)].mean_abs) for s in _activation_slots(state, group)]
    return out or magnitude_contributions(dg, group, p=1)  # no float activation to measure: as wanda does


def apoz_contributions(dg, group, state: ActivationState = None, **kw) -> list[Contribution]:
    out = [(s, 1.0 - state.channel[(s.value, s.axis)].apoz) for s in _activation_slots(state, group)]
    return out or magnitude_contributions(dg, group, p=1)


def _is_float(v) -> bool:
    return v is not None and v.dtype is not None and v.dtype.is_floating_point()


def wanda_contributions(dg, group, state: ActivationState = None, **kw) -> list[Contribution]:
    out = []
    for lin, s in state.consumers.get(group.id, []):
        rms = state.channel[(s.value, s.axis)].rms
        wsum = lin.per_input_channel(lambda blk: np.abs(blk).sum())
        out.append((s, wsum * rms))
    if not out:
        return magnitude_contributions(dg, group, p=1)
    return out


def _obs_scores(lin: Linear, gram: np.ndarray | None, mean_sq: np.ndarray, damp: float) -> np.ndarray:
    wsq = lin.per_input_channel(lambda blk: float((blk.astype(np.float64) ** 2).sum()))
    c = len(wsq)
    if gram is None:  # too wide for a Gram matrix: diagonal H
        return wsq * (mean_sq + damp * max(mean_sq.mean(), 1e-12))
    groups = 1 if lin.kind in ("gemm", "matmul") else lin.group
    ig = c // groups
    out = np.empty(c)
    for g in range(groups):
        idx = slice(g * ig, (g + 1) * ig)
        h = gram[idx, idx]
        h = h + damp * max(float(np.mean(np.diag(h))), 1e-12) * np.eye(ig)
        hinv_diag = np.diag(np.linalg.inv(h))
        out[idx] = wsq[idx] / hinv_diag
    return out


def obs_contributions(dg, group, state: ActivationState = None, damp: float = OBS_DAMP, **kw) -> list[Contribution]:
    out = []
    for lin, s in state.consumers.get(group.id, []):
        g = state.gram.get((s.value, s.axis))
        ms = state.channel[(s.value, s.axis)].mean_sq
        out.append((s, _obs_scores(lin, g.matrix if g is not None else None, ms, damp)))
    if not out:
        return magnitude_contributions(dg, group, p=2)
    return out
