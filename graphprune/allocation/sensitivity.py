"""Sensitivity analysis: for each group alone, output fidelity as its pruning ratio grows.

Pruning one group at ratio r is evaluated on the *masked* model (the group's slices
zeroed), which the oracle proves equal to the physically pruned one — so no model is
rewritten during the sweep. Fidelity is the relative L2 error of the model outputs
against the dense model on calibration batches. Allocation from the curves: a common
error budget ε gives each group the largest ratio whose error stays within ε; ε is
searched so the whole selection meets the cost target.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import numpy as np
import onnx_ir as ir

from graphprune.analysis.dependency.graph import DependencyGraph, Group
from graphprune.ir.constants import const_array, const_producer, set_const_array

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _float_outputs(outs: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(o, np.float64) for o in outs if np.asarray(o).dtype.kind == "f"]


def relative_error(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    num = den = 0.0
    for r_b, g_b in zip(ref, got, strict=True):
        for r, g in zip(_float_outputs(r_b), _float_outputs(g_b), strict=True):
            num += float(np.sum((r - g) ** 2))
            den += float(np.sum(r ** 2))
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def group_removal(group: Group, scores: np.ndarray, ratio: float) -> list[int]:
    from graphprune.allocation.uniform import select_lowest

    n_remove = int(np.floor(group.num_atoms * ratio + 1e-9))
    return select_lowest(group, scores, n_remove) if n_remove > 0 else []


@contextmanager
def masked_constants(dg: DependencyGraph, tensors: list[dict]):
    """Zero the plan entries' slices in the model for the duration of the block, then put
    back exactly what was there. One tensor can be listed several times (a conv whose input
    and output channels are both in a concat group): each constant is snapshotted once,
    by identity, before any change; the masks accumulate on one copy; the original tensor
    objects (and Constant-node attributes) are restored, not re-made from arrays."""
    originals: dict[int, tuple] = {}
    masked: dict[int, np.ndarray] = {}
    try:
        for t in tensors:
            v = dg.values[t["name"]]
            if id(v) not in originals:
                node = const_producer(v)
                originals[id(v)] = (v, v.const_value, v.shape, v.dtype,
                                    dict(node.attributes) if node is not None else None)
                masked[id(v)] = np.array(const_array(v))
            arr = masked[id(v)]
            idx = [slice(None)] * arr.ndim
            idx[t["axis"]] = np.asarray(t["removed"], dtype=np.int64)
            arr[tuple(idx)] = 0
        for key, arr in masked.items():
            set_const_array(originals[key][0], arr)
        yield
    finally:
        for v, tensor, shape, dtype, attrs in originals.values():
            node = const_producer(v)
            if node is not None and attrs is not None:
                node.attributes.clear()
                node.attributes.update(attrs)
            v.const_value = tensor
            v.shape = shape
            v.dtype = dtype


def sensitivity_curves(model: ir.Model, dg: DependencyGraph, scores: dict[int, np.ndarray], calibration,
                       groups: list[Group], ratios=DEFAULT_RATIOS, max_batches: int = 2) -> dict[int, dict]:
    """{group id: {"name", "atoms", "ratios": [...], "error": [...]}} (ratio 0 → error 0)."""
    from graphprune.ir.serialize import to_proto
    from graphprune.plan import build_plan
    from graphprune.runtime.calibration import progress
    from graphprune.runtime.ort import session
    from graphprune.runtime.positions import padding_mask, zero_padding

    batches = list(calibration.batches(max_batches))
    dense_sess = session(model)
    in_names = [i.name for i in dense_sess.get_inputs()]

    masks = [padding_mask(b) for b in batches]  # a text batch's padded positions: not in the error

    def run(sess):
        return [[zero_padding(o, m) for o in sess.run(None, {k: v for k, v in b.items() if k in in_names})]
                for b, m in zip(batches, masks, strict=True)]

    ref = run(dense_sess)
    curves: dict[int, dict] = {}
    t0 = time.perf_counter()
    for g in progress(groups, len(groups), "sensitivity sweep", unit="groups"):
        errs, used = [], []
        last_atoms = None
        for r in ratios:
            atoms = group_removal(g, scores[g.id], r)
            if not atoms:
                errs.append(0.0)
                used.append(float(r))
                continue
            if atoms == last_atoms:  # same removal as the previous ratio (small group)
                errs.append(errs[-1])
                used.append(float(r))
                continue
            last_atoms = atoms
            with masked_constants(dg, build_plan(dg, {g.id: atoms}).tensors):
                proto = to_proto(model).SerializeToString()
            errs.append(relative_error(ref, run(session(proto))))
            used.append(float(r))
        curves[g.id] = {"name": g.name, "atoms": g.num_atoms, "ratios": used, "error": [round(e, 6) for e in errs]}
    log.info("sensitivity: %d groups x %d ratios in %.1fs", len(groups), len(ratios), time.perf_counter() - t0)
    return curves


def ratio_for_budget(curve: dict, eps: float, max_ratio: float | None = None) -> float:
    """Largest ratio whose (monotone envelope of the) error stays within eps."""
    r = np.concatenate([[0.0], np.asarray(curve["ratios"], float)])
    e = np.maximum.accumulate(np.concatenate([[0.0], np.asarray(curve["error"], float)]))
    ok = np.nonzero(e <= eps)[0]
    k = int(ok[-1]) if len(ok) else 0
    best = r[k]
    if k + 1 < len(r) and e[k + 1] > e[k]:  # interpolate inside the next segment
        best = r[k] + (r[k + 1] - r[k]) * (eps - e[k]) / (e[k + 1] - e[k])
    if max_ratio is not None:
        best = min(best, max_ratio)
    return float(max(0.0, best))


def plot_curves(curves: dict[int, dict], path) -> bool:
    """Write the curves as a PNG (matplotlib, if installed). Returns whether it did."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no sensitivity plot (pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for c in curves.values():
        ax.plot([0.0] + list(c["ratios"]), [0.0] + list(c["error"]), marker=".", linewidth=1,
                label=f"{c['name']} ({c['atoms']})")
    ax.set_xlabel("fraction of the group's channels removed")
    ax.set_ylabel("relative L2 error of the outputs")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.grid(True, alpha=0.3)
    if len(curves) <= 24:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
