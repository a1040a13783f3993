"""The width of a pruning group, before and after a plan: the one definition that
`inspect`, `--dry-run` and the reports all show.

A group couples many tensor axes of different sizes (a concat group holds each concat
input, the concat output, and a flattened feature axis 16× wider), so "the group's
width" needs one choice, made here once: the group's *reference axis* — the axis that
sees every atom, and of those the narrowest (the concat output, not one of its inputs,
nor the flattened features; `Group.atom_sizes` counts channels on the same axis). Each
atom class (a concat input, or all heads of a head group) is a *part*, shown with its own
before → after so that a reader sees where the channels went, and, under `round_to`,
why a width is not a multiple (a part narrower than N, or one that cannot reach a
multiple, is kept whole: see `allocation.uniform.rounded_removal`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GroupWidth:
    name: str
    channels: int  # width of the reference axis before the plan
    removed: int  # channels of the reference axis the plan removes
    atoms: int
    removed_atoms: int
    parts: list[tuple[int, int]] = field(default_factory=list)  # per atom class: (channels before, after)

    @property
    def kept(self) -> int:
        return self.channels - self.removed

    def parts_text(self) -> str:
        """"64→48 + 32→16" for a group of several parts, "" for one."""
        if len(self.parts) < 2:
            return ""
        return " + ".join(f"{b}→{a}" for b, a in self.parts)

    def why_not_multiple(self, round_to: int) -> str:
        """Why the kept width is not a multiple of `round_to` ("" when it is, or nothing
        was removed)."""
        if round_to <= 1 or not self.removed or self.kept % round_to == 0:
            return ""
        whole = [b for b, a in self.parts if a == b]
        odd = [a for b, a in self.parts if a != b and a % round_to]
        if whole and not odd:
            return (f"part(s) of {', '.join(map(str, whole))} kept whole (cannot reach a multiple of "
                    f"{round_to} without emptying them); each pruned part is a multiple")
        return f"no multiple of {round_to} reachable within the group's removal limit"

    def to_json(self) -> dict:
        return {"name": self.name, "channels": self.channels, "removed": self.removed, "kept": self.kept,
                "atoms": self.atoms, "removed_atoms": self.removed_atoms,
                "parts": [{"before": b, "after": a} for b, a in self.parts]}


def reference_slot(group):
    """The axis a group's width is counted on (the same choice as Group.atom_sizes)."""
    return min((s for s in group.slots if not s.virtual), key=lambda s: (-len(group.atoms_of(s)), group.sizes[s]))


def group_width(group, removed_atoms=()) -> GroupWidth:
    """Channels of `group` before and after removing `removed_atoms`, and per part."""
    ref = reference_slot(group)
    labels = np.asarray(group.labels[ref])
    gone = np.isin(labels, np.asarray(sorted(int(a) for a in removed_atoms), dtype=np.int64))
    per_atom = np.stack([np.bincount(group.labels[s], minlength=group.num_atoms) for s in group.slots])
    _, cls = np.unique(per_atom.T, axis=0, return_inverse=True)
    cls = np.asarray(cls).reshape(-1)
    parts = []
    for c in range(int(cls.max()) + 1 if cls.size else 0):
        in_part = np.isin(labels, np.nonzero(cls == c)[0])
        if in_part.any():
            parts.append((int(in_part.sum()), int((in_part & ~gone).sum())))
    return GroupWidth(group.name, int(labels.size), int(gone.sum()), int(group.num_atoms),
                      len(set(int(a) for a in removed_atoms)), parts)


def plan_widths(dg, plan) -> list[GroupWidth]:
    """One GroupWidth per group the plan changes, in plan order; `dg` is the analysis of the
    model the plan was made for (a group the analysis does not know is left out)."""
    by_name = {g.name: g for g in dg.groups}
    out = []
    for entry in plan.groups:
        g = by_name.get(entry.get("name"))
        if g is not None:
            out.append(group_width(g, entry.get("removed_atoms", ())))
    return out
