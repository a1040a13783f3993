"""Group-aware reduction: per-tensor scores → one score per atom of the group.

A criterion yields *contributions*: for some slots of the group (weight tensors along
their coupled axis, activations along their channel axis ...), one score per index.
Each contribution is normalised on its own (so a large tensor does not drown a small
one), summed over the indices of each atom (an atom may hold a block of features),
and the contributions are combined with `reduction` (sum, mean or max over the
contributions that touch the atom).
"""
from __future__ import annotations

import numpy as np

from graphprune.analysis.dependency.context import Slot
from graphprune.analysis.dependency.graph import Group
from graphprune.errors import UsageError

NORMALIZATIONS = ("mean", "max", "sum", "none", "lamp")
REDUCTIONS = ("sum", "mean", "max")

Contribution = tuple[Slot, np.ndarray]


def normalize_scores(per: np.ndarray, how: str) -> np.ndarray:
    per = np.asarray(per, dtype=np.float64)
    if how in ("none", "lamp") or per.size == 0:
        return per
    if how == "mean":
        d = per.mean()
    elif how == "max":
        d = np.abs(per).max()
    elif how == "sum":
        d = np.abs(per).sum()
    else:
        raise UsageError(f"unknown normalisation {how!r}", hint=f"choose one of {NORMALIZATIONS}")
    return per / d if d > 0 else per


def lamp(scores: np.ndarray) -> np.ndarray:
    """LAMP (layer-adaptive magnitude): s_i / sum of the scores >= s_i (ascending order).
    The largest score maps to 1; scores become comparable across layers."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    tail = np.cumsum(s[order][::-1])[::-1]  # sum of scores from this rank upward
    out = np.empty_like(s)
    out[order] = s[order] / np.where(tail > 0, tail, 1.0)
    return out


def reduce_group(group: Group, contributions: list[Contribution], reduction: str = "sum",
                 normalize: str = "mean") -> np.ndarray:
    if reduction not in REDUCTIONS:
        raise UsageError(f"unknown reduction {reduction!r}", hint=f"choose one of {REDUCTIONS}")
    if normalize not in NORMALIZATIONS:
        raise UsageError(f"unknown normalisation {normalize!r}", hint=f"choose one of {NORMALIZATIONS}")
    n = group.num_atoms
    total = np.zeros(n)
    hits = np.zeros(n)
    best = np.full(n, -np.inf)
    for slot, per in contributions:
        per = normalize_scores(per, normalize)
        labels = group.labels[slot]
        if len(per) != len(labels):
            raise ValueError(f"contribution for {slot} has {len(per)} scores, slot has {len(labels)} indices")
        atom = np.bincount(labels, weights=per, minlength=n)
        touched = np.bincount(labels, minlength=n) > 0
        if normalize == "lamp":
            vals = lamp(atom[touched])
            atom = np.zeros(n)
            atom[touched] = vals
        total += atom
        hits += touched
        best = np.where(touched, np.maximum(best, atom), best)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / np.maximum(hits, 1)
    return np.where(np.isfinite(best), best, 0.0)
