"""Uniform allocation: every group loses the same fraction of its atoms.

`round_to` is a channel multiple (SIMD friendly): the kept width of every weight tensor
of a group is a multiple of N where that is achievable (see `rounded_removal`); no slot
of a group is ever emptied.
"""
from __future__ import annotations

import itertools
from math import gcd
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # keeps `graphprune --help` (which imports cli.allocation_flags) light
    from graphprune.analysis.dependency.context import Slot
    from graphprune.analysis.dependency.graph import DependencyGraph, Group

Selection = dict[int, list[int]]


def _kept_target(group: Group, ratio: float) -> int:
    """Atoms kept at `ratio`, before rounding (rounding is in channels: `rounded_removal`)."""
    n = group.num_atoms
    keep = n - int(np.floor(n * ratio + 1e-9))
    return max(1, min(n, keep))


def select_lowest(group: Group, scores: np.ndarray, n_remove: int) -> list[int]:
    """Remove up to `n_remove` lowest-scoring atoms, never emptying any slot."""
    n = group.num_atoms
    if all(np.bincount(group.labels[s], minlength=n).all() for s in group.slots):
        # every slot holds every atom (a plain conv/linear group): any n - 1 of them can go,
        # which is what the general walk below picks, without its per-atom Python loop
        order = np.argsort(scores, kind="stable")[:max(0, min(n_remove, n - 1))]
        return sorted(int(a) for a in order)
    return _select_lowest_walk(group, scores, n_remove)


def _select_lowest_walk(group: Group, scores: np.ndarray, n_remove: int) -> list[int]:
    """`select_lowest` for any group: atoms in score order, each removed unless that would
    empty one of its slots."""
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


def _atom_classes(group: Group) -> tuple[list[Slot], np.ndarray, np.ndarray]:
    """(slots, counts, class of each atom): counts[s, a] is how many channels atom `a`
    holds in slot `s`; atoms with the same counts in every slot form one class (a
    concat group has one class per concat input, a head group one class)."""
    slots = list(group.slots)
    counts = np.stack([np.bincount(group.labels[s], minlength=group.num_atoms) for s in slots])
    if (counts == counts[:, :1]).all():  # every atom alike (one channel each, the usual case): one class
        return slots, counts, np.zeros(group.num_atoms, dtype=np.int64)
    _, cls = np.unique(counts.T, axis=0, return_inverse=True)
    return slots, counts, np.asarray(cls).reshape(-1)


def _lcm(a: int, b: int) -> int:
    return a * b // gcd(a, b)


def _constrained_weights(group: Group, slots: list[Slot], round_to: int) -> list[int]:
    """Indices (into `slots`) of the weights whose kept width must be a multiple of
    `round_to`: every weight at least that wide, else the slot seeing the most atoms."""
    weights = [i for i, s in enumerate(slots)
               if group.roles.get(s) == "weight" and not s.virtual and group.sizes[s] >= round_to]
    if not weights:
        real = [i for i, s in enumerate(slots) if not s.virtual]
        ref = min(real, key=lambda i: (-len(group.atoms_of(slots[i])), group.sizes[slots[i]])) if real else None
        weights = [ref] if ref is not None and group.sizes[slots[ref]] >= round_to else []
    return weights


def _kept_count_options(per_atom: np.ndarray, weights: list[int], kept0: np.ndarray, total: np.ndarray,
                        round_to: int) -> list[list[int]]:
    """Per atom class: the kept counts that make its part of every constrained weight a multiple."""
    options = []
    for c in range(len(total)):
        step = 1
        for i in weights:
            v = int(per_atom[c, i])
            if v:
                step = _lcm(step, round_to // gcd(round_to, v))
        m0, nc = int(kept0[c]), int(total[c])
        cand = {nc}  # keeping the part whole is always allowed
        lo = (m0 // step) * step  # a step either side too, so the parts can even out the total
        cand.update(m for m in (lo - step, lo, lo + step) if 1 <= m <= nc)
        options.append(sorted(cand))
    return options


def rounded_removal(group: Group, scores: np.ndarray, n_remove: int, round_to: int = 1,
                    limit: int | None = None, at_most: bool = False) -> list[int]:
    """The lowest-scoring atoms to remove, about `n_remove` of them (at most `limit`), so
    that the kept *channel* width of every weight tensor of the group is a multiple of
    `round_to` where that is achievable.

    Widths are counted in channels, not atoms: removing whole heads of 32 channels keeps
    a width that is a multiple of 4 whatever the head count. A concat group's inputs are
    rounded each (the producing weights see only their own part), so the concat width is a
    multiple too. Among the admissible kept counts, the one whose width in the group's
    reference weight (the one seeing the most atoms) is nearest the unrounded selection's
    wins; ties keep more. A weight narrower than `round_to` is left unconstrained; a part
    that cannot reach a multiple is kept whole rather than cut to another odd width.
    `at_most`: never remove more than asked (the nearest admissible width at or above the
    unrounded one): what a plain `--ratio` promises per group, where no target is there to
    take the difference elsewhere. Without any removal asked (`n_remove` 0) the group is
    left alone."""
    n = group.num_atoms
    limit = n - 1 if limit is None else min(limit, n - 1)
    n_remove = min(n_remove, limit)
    if n_remove <= 0:
        return []
    base = select_lowest(group, scores, n_remove)
    if round_to <= 1 or not base:
        return base
    slots, counts, cls = _atom_classes(group)
    weights = _constrained_weights(group, slots, round_to)
    if not weights:
        return base
    ref = min(weights, key=lambda i: (-int(np.count_nonzero(counts[i])), group.sizes[slots[i]]))
    k = int(cls.max()) + 1
    total = np.bincount(cls, minlength=k)
    removed = np.zeros(n, bool)
    removed[base] = True
    kept0 = total - np.bincount(cls[removed], minlength=k)
    per_atom = np.stack([counts[:, np.nonzero(cls == c)[0][0]] for c in range(k)])  # class × slot
    options = _kept_count_options(per_atom, weights, kept0, total, round_to)

    def multiple(m) -> int:  # constrained weights whose width is not a multiple
        widths = per_atom[:, weights].T @ np.asarray(m)
        return int(np.count_nonzero(widths % round_to))

    w0 = float(per_atom[:, ref] @ kept0)
    best = None
    if np.prod([len(o) for o in options], dtype=float) <= 1024:
        combos = itertools.product(*options)
    else:  # many concat inputs: each part to its own nearest admissible count
        combos = [tuple(min(o, key=lambda m, m0=int(kept0[c]): (abs(m - m0), -m)) for c, o in enumerate(options))]
    for m in combos:
        if n - sum(m) > limit:
            continue
        width = float(per_atom[:, ref] @ np.asarray(m))
        # at_most first: a plain --ratio never removes more than asked, even to reach a multiple
        key = (at_most and width < w0 - 1e-9, multiple(m), abs(width - w0),
               sum(abs(a - int(b)) for a, b in zip(m, kept0, strict=True)), -sum(m))
        if best is None or key < best[0]:
            best = (key, m)
    if best is None:
        return []
    out = []
    s = np.asarray(scores, dtype=np.float64)
    for c, m in enumerate(best[1]):
        atoms = np.nonzero(cls == c)[0]
        drop = int(total[c]) - int(m)
        if drop > 0:
            out.extend(int(a) for a in atoms[np.argsort(s[atoms], kind="stable")[:drop]])
    return sorted(out)


def uniform(dg: DependencyGraph, scores: dict[int, np.ndarray], ratio: float,
            round_to: int = 1) -> Selection:
    """Every group but the hidden size (Group.normalised, kept as allocation.driver keeps it
    by default) loses `ratio` of its atoms, the lowest scored."""
    if not 0.0 <= ratio < 1.0:
        from graphprune.errors import UsageError

        raise UsageError(f"ratio must be in [0, 1), got {ratio}")
    selection: Selection = {}
    for g in dg.prunable_groups:
        if g.normalised:
            continue
        n_remove = g.num_atoms - _kept_target(g, ratio)
        if n_remove <= 0 or g.id not in scores:
            continue
        atoms = rounded_removal(g, scores[g.id], n_remove, round_to)
        if atoms:
            selection[g.id] = atoms
    return selection
