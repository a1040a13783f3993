"""Global ranking: every atom of every group in one list, by normalised score.

Scores of different groups live on different scales, so each group's scores are first
normalised (mean, max, LAMP or none). Walking the list from the least important atom, an
atom is admitted when its group stays within its removal limit (``max_ratio``, never an
empty slot). A prefix of that admitted sequence is a selection; the target searches pick
the shortest prefix that meets the target.
"""
from __future__ import annotations

import numpy as np

from graphprune.analysis.dependency.graph import DependencyGraph, Group
from graphprune.importance.reduce import lamp

Selection = dict[int, list[int]]


def normalize_group(scores: np.ndarray, how: str = "mean") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if how == "none" or s.size == 0:
        return s
    if how == "lamp":
        return lamp(s)
    d = s.mean() if how == "mean" else np.abs(s).max() if how == "max" else np.abs(s).sum()
    return s / d if d > 0 else s


def max_removable(group: Group, max_ratio: float | None) -> int:
    n = group.num_atoms
    limit = n - 1
    if max_ratio is not None:
        limit = min(limit, int(np.floor(n * max_ratio + 1e-9)))
    return max(0, limit)


def removal_sequence(dg: DependencyGraph, scores: dict[int, np.ndarray], groups: list[Group], *,
                     normalize: str = "mean", max_ratio: float | None = None,
                     cost_weight: dict[int, float] | None = None) -> list[tuple[int, int]]:
    """Admissible removals (group id, atom), least important first."""
    entries = []
    for g in groups:
        if g.id not in scores:
            continue
        s = normalize_group(scores[g.id], normalize)
        if cost_weight and g.id in cost_weight and cost_weight[g.id] > 0:
            s = s / cost_weight[g.id]
        for a in range(g.num_atoms):
            entries.append((float(s[a]), g.id, a))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    state = {}
    for g in groups:
        slot_atoms = [set(g.atoms_of(s).tolist()) for s in g.slots]
        atom_slots: dict[int, list[int]] = {}
        for i, atoms in enumerate(slot_atoms):
            for a in atoms:
                atom_slots.setdefault(a, []).append(i)
        state[g.id] = {"kept": [len(a) for a in slot_atoms], "atom_slots": atom_slots, "removed": 0,
                       "limit": max_removable(g, max_ratio)}
    seq = []
    for _, gid, a in entries:
        st = state[gid]
        if st["removed"] >= st["limit"]:
            continue
        slots = st["atom_slots"].get(a, ())
        if all(st["kept"][i] > 1 for i in slots):
            for i in slots:
                st["kept"][i] -= 1
            st["removed"] += 1
            seq.append((gid, a))
    return seq


def prefix_selection(dg: DependencyGraph, seq: list[tuple[int, int]], k: int, scores: dict[int, np.ndarray],
                     round_to: int = 1, max_ratio: float | None = None) -> Selection:
    from graphprune.allocation.uniform import rounded_removal

    counts: dict[int, int] = {}
    chosen: dict[int, list[int]] = {}
    for gid, a in seq[:k]:
        counts[gid] = counts.get(gid, 0) + 1
        chosen.setdefault(gid, []).append(a)
    if round_to <= 1:
        return {gid: sorted(a) for gid, a in chosen.items()}
    by_id = {g.id: g for g in dg.groups}
    out: Selection = {}
    for gid, c in counts.items():
        g = by_id[gid]
        atoms = rounded_removal(g, scores[gid], c, round_to, max_removable(g, max_ratio))
        if atoms:
            out[gid] = atoms
    return out
