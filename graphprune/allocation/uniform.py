"""Uniform allocation: every group loses the same fraction of its atoms.

`round_to` keeps the widest tensor of each group at a multiple of N channels (SIMD
friendly); no slot of a group is ever emptied.
"""
from __future__ import annotations

from math import gcd
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # keeps `graphprune --help` (which imports allocation.cli) light
    from graphprune.analysis.dependency.graph import DependencyGraph, Group

Selection = dict[int, list[int]]


def _kept_target(group: Group, ratio: float, round_to: int) -> int:
    n = group.num_atoms
    keep = n - int(np.floor(n * ratio + 1e-9))
    if round_to > 1:
        sizes = group.atom_sizes()
        s = int(sizes[0]) if len(set(sizes.tolist())) == 1 else 1
        step = round_to // gcd(round_to, s) if s else round_to
        if n < step:
            return n
        keep = max(step, int(round(keep / step)) * step)
        keep = min(keep, n - (n % step) if n % step else n)
    return max(1, min(n, keep))


def select_lowest(group: Group, scores: np.ndarray, n_remove: int) -> list[int]:
    """Remove up to `n_remove` lowest-scoring atoms, never emptying any slot."""
    slot_atoms = [set(group.atoms_of(s).tolist()) for s in group.slots]
    kept_count = [len(a) for a in slot_atoms]
    atom_slots: dict[int, list[int]] = {}
    for i, atoms in enumerate(slot_atoms):
        for a in atoms:
            atom_slots.setdefault(a, []).append(i)
    removed: list[int] = []
    for a in np.argsort(scores, kind="stable"):
        if len(removed) >= n_remove:
            break
        a = int(a)
        if all(kept_count[i] > 1 for i in atom_slots.get(a, ())):
            for i in atom_slots.get(a, ()):
                kept_count[i] -= 1
            removed.append(a)
    return sorted(removed)


def uniform(dg: DependencyGraph, scores: dict[int, np.ndarray], ratio: float,
            round_to: int = 1) -> Selection:
    if not 0.0 <= ratio < 1.0:
        from graphprune.errors import UsageError

        raise UsageError(f"ratio must be in [0, 1), got {ratio}")
    selection: Selection = {}
    for g in dg.prunable_groups:
        keep = _kept_target(g, ratio, round_to)
        n_remove = g.num_atoms - keep
        if n_remove <= 0 or g.id not in scores:
            continue
        atoms = select_lowest(g, scores[g.id], n_remove)
        if atoms:
            selection[g.id] = atoms
    return selection
