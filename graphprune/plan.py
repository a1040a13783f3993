"""Plans are data: which atoms of which group go, and which slices of which tensors.

The `tensors` list is the public contract: zeroing every listed slice of the *input*
model gives the masked original, which the pruned model must equal (the oracle). A plan
replays by deriving the removed atoms from `tensors` and checking that the derivation
reproduces `tensors` exactly, so a plan for another model is refused, not misapplied.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphprune.analysis.dependency.context import Slot
from graphprune.analysis.dependency.graph import DependencyGraph
from graphprune.errors import PlanError
from graphprune.ir.constants import is_constant

PLAN_VERSION = 1
Selection = dict[int, list[int]]


@dataclass
class Plan:
    tensors: list[dict]
    groups: list[dict]
    model: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    version: int = PLAN_VERSION
    # removed residual blocks (depth pruning); each block's "tensors" are the slices whose
    # zeroing makes its branch zero — written into the JSON `tensors` list, tagged "block"
    blocks: list[dict] = field(default_factory=list)
    # slice-hidden: the residual stream's rotation (graphprune.passes.pruning.slice_hidden).
    # When present, the masked original is the *rotated* input (rebuilt from this record),
    # not the input itself; `tensors` then also lists the hidden-axis slices.
    hidden: dict = field(default_factory=dict)
    # slice-vocab: the kept token ids ({"input", "vocab_size", "kept", "outputs", ...};
    # graphprune.passes.pruning.slice_vocab). Applied after everything `tensors` lists: the
    # result equals the masked original with its ids mapped (new id i = kept[i]) and its
    # logits gathered at `kept`. The vocabulary slices are not in `tensors`.
    vocab: dict = field(default_factory=dict)
    # prune-experts: per MoE layer {"moe", "logits", "experts", "k", "removed", "tensors", ...}
    # (graphprune.passes.pruning.prune_experts). The masked original routes nothing to a
    # removed expert (its router logit at -inf); zeroing its weights alone would not remove
    # it. Its slices are in the record, not in `tensors`.
    experts: list = field(default_factory=list)

    @property
    def removes(self) -> bool:
        """The plan removes something: channels (hidden-size slices included), blocks or experts."""
        return bool(self.tensors or self.blocks or self.experts)

    def block_tensors(self) -> list[dict]:
        """The removed blocks' zeroed slices as `tensors` entries tagged with their branch."""
        return [{**t, "block": b["branch"]} for b in self.blocks for t in b.get("tensors", ())]

    def to_json(self) -> dict:
        # `tensors` holds every removal (channels and blocks): zeroing all of it in the input
        # model gives the masked original. Plans before this kept blocks out of `tensors`;
        # they still read (their blocks have no "tensors": the oracle zeroes the branch).
        return {"version": self.version, "model": self.model, "settings": self.settings,
                "tensors": self.tensors + self.block_tensors(), "groups": self.groups,
                "blocks": [{k: v for k, v in b.items() if k != "tensors"} for b in self.blocks],
                **({"hidden": self.hidden} if self.hidden else {}),
                **({"vocab": self.vocab} if self.vocab else {}),
                **({"experts": self.experts} if self.experts else {})}

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    def validate(self) -> "Plan":
        """The strict structural check every plan reader and applier runs (`validate_plan`)."""
        validate_plan(self.to_json())
        return self

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        validate_plan(data)
        blocks = [dict(b) for b in data.get("blocks", [])]
        by_branch = {b["branch"]: b for b in blocks}
        tensors = []
        for t in data["tensors"]:
            if "block" not in t:
                tensors.append(t)
            elif isinstance(t["block"], str) and t["block"] in by_branch:
                by_branch[t["block"]].setdefault("tensors", []).append(
                    {k: v for k, v in t.items() if k != "block"})
            else:
                raise PlanError(f"plan tensors entry for {t['name']!r} belongs to block {_short(t['block'])}, "
                                "which the plan's 'blocks' list does not have")
        return cls(tensors=tensors, groups=data.get("groups", []), model=data.get("model", {}),
                   settings=data.get("settings", {}), blocks=blocks, hidden=data.get("hidden", {}),
                   vocab=data.get("vocab", {}), experts=data.get("experts", []))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise PlanError(f"{path}: no such plan file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"{path}: not a JSON plan ({exc})") from None
        except RecursionError:
            raise PlanError(f"{path}: not a plan (JSON nested too deeply)") from None
        except OSError as exc:
            raise PlanError(f"{path}: cannot read the plan ({exc.strerror or exc})") from None
        return cls.from_json(data)


# moved to graphprune.outputs (atomic writes, temp-file naming); kept importable from here
from graphprune.outputs import current_umask, file_sha256, write_text_atomic  # noqa: E402,F401


MAX_INDEX = 1 << 62  # no tensor axis is this long; larger indices cannot even be numpy ints


def _short(x) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, 60, 60
    return r.repr(x)[:200]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_plan(data) -> None:
    """Raise PlanError unless `data` is a well-formed plan: `version` the integer 1 (not
    True, not 1.0); `tensors` a list of {name: str, axis: int >= 0, removed: [int >= 0]}
    (booleans are not ints here); `groups` a list, `model` and `settings` objects;
    `blocks` a list of {skip, branch} value names. Whether an axis and its indices exist is
    the model's to say: `check_slice`."""
    if not isinstance(data, dict):
        raise PlanError(f"not a plan (a JSON object with version, tensors, ...): {_short(data)}")
    version = data.get("version")
    if not (_is_int(version) and version == PLAN_VERSION):
        raise PlanError(f"unsupported plan version {_short(version)} (expected the integer {PLAN_VERSION})")
    tensors = data.get("tensors")
    if not isinstance(tensors, list):
        raise PlanError("plan has no 'tensors' list")
    for t in tensors:
        if not (isinstance(t, dict) and isinstance(t.get("name"), str) and _is_int(t.get("axis"))
                and isinstance(t.get("removed"), list) and all(_is_int(i) for i in t["removed"])):
            raise PlanError(f"malformed plan tensors entry (needs name, an integer axis and a list of integer "
                            f"indices): {_short(t)}")
        if t["axis"] < 0:
            raise PlanError(f"plan axis {t['axis']} of {t['name']!r} is negative")
        bad = [i for i in t["removed"] if not 0 <= i < MAX_INDEX]
        if bad:
            raise PlanError(f"plan removes index {_short(bad[0])} from {t['name']!r} axis {t['axis']}: "
                            "out of range")
    for key, kind in (("groups", list), ("model", dict), ("settings", dict), ("hidden", dict), ("vocab", dict),
                      ("experts", list)):
        if key in data and not isinstance(data[key], kind):
            raise PlanError(f"plan field {key!r} should be a JSON {'list' if kind is list else 'object'}")
    vocab = data.get("vocab")
    if vocab and not (isinstance(vocab.get("input"), str) and isinstance(vocab.get("kept"), list) and vocab["kept"]
                      and all(_is_int(i) and 0 <= i < MAX_INDEX for i in vocab["kept"])
                      and isinstance(vocab.get("outputs", []), list)):
        raise PlanError("malformed plan 'vocab' record (needs the token input's name and a non-empty list of kept "
                        "token ids)")
    for e in data.get("experts", []):
        _validate_experts_record(e)
    blocks = data.get("blocks", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) and isinstance(b.get("skip"), str)
                                               and isinstance(b.get("branch"), str) for b in blocks):
        raise PlanError("malformed 'blocks' list (each needs 'skip' and 'branch' value names)")


def _validate_experts_record(e) -> None:
    """One `experts` entry (prune-experts): names, an expert count, removed experts within it
    (not all of them), and tensor slices that remove exactly those experts."""
    n = e.get("experts") if isinstance(e, dict) else None
    if not (isinstance(e, dict) and isinstance(e.get("moe"), str) and isinstance(e.get("logits"), str)
            and _is_int(n) and 0 < n < MAX_INDEX and isinstance(e.get("removed"), list) and e["removed"]
            and all(_is_int(i) and 0 <= i < n for i in e["removed"]) and len(set(e["removed"])) < n
            and isinstance(e.get("tensors"), list)):
        raise PlanError("malformed plan 'experts' record (each needs the MoE layer's name, its router logits, "
                        "its expert count, the removed experts within it, and their tensor slices)")
    for t in e["tensors"]:
        if not (isinstance(t, dict) and isinstance(t.get("name"), str) and _is_int(t.get("axis"))
                and t["axis"] >= 0 and t.get("removed") == e["removed"]):
            raise PlanError(f"malformed tensor slice in the 'experts' record of {e['moe']!r}")


def check_slice(entry: dict, shape) -> None:
    """Raise PlanError unless the plan entry's axis and indices exist in a tensor of `shape`."""
    rank = len(shape)
    if not 0 <= entry["axis"] < rank:
        raise PlanError(f"plan axis {entry['axis']} out of range for {entry['name']!r} of rank {rank}")
    size = int(shape[entry["axis"]])
    bad = [i for i in entry["removed"] if not (_is_int(i) and 0 <= i < size)]
    if bad:
        raise PlanError(f"plan removes index {_short(bad[0])} from {entry['name']!r} axis {entry['axis']}, "
                        f"which has size {size}: out of range")


def removed_by_slot(dg: DependencyGraph, selection: Selection) -> dict[Slot, np.ndarray]:
    """{slot: removed indices} of `selection` on `dg`. The last answer is kept on `dg`: the
    plan and its application ask the same analysis the same question."""
    dg.check_current()  # a plan from a stale analysis would name the wrong slices
    key = tuple(sorted((int(g), tuple(sorted(int(a) for a in atoms))) for g, atoms in selection.items()))
    cached = getattr(dg, "_removed_by_slot", None)
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    out = _removed_by_slot(dg, selection)
    dg._removed_by_slot = (key, out)
    return dict(out)


def _removed_by_slot(dg: DependencyGraph, selection: Selection) -> dict[Slot, np.ndarray]:
    out: dict[Slot, np.ndarray] = {}
    by_id = {g.id: g for g in dg.groups}
    for gid, atoms in selection.items():
        g = by_id.get(gid)
        if g is None:
            raise PlanError(f"group {gid} does not exist in this model")
        if g.ignored:
            raise PlanError(f"group {g.name} is on the ignore list")
        why = g.check_removal(atoms)
        if why:
            raise PlanError(why)
        for s in g.slots:
            idx = g.removed_indices(s, atoms)
            if len(idx):
                out[s] = idx
    return out


def _int_list(idx: np.ndarray) -> list[int]:
    """`[int(i) for i in idx]` of an integer index array, converted in C (a plan lists every
    removed index twice: a Python loop over them was most of build_plan)."""
    return np.asarray(idx).astype(np.int64, copy=False).tolist()


def build_plan(dg: DependencyGraph, selection: Selection, *, scores: dict | None = None,
               model_info: dict | None = None, settings: dict | None = None) -> Plan:
    from graphprune.ir.untie import untied_copies

    removed = removed_by_slot(dg, selection)
    # Copies of a shared all-zero tensor (and that tensor): zeroing slices of them is a
    # no-op, and the names are the analysed model's; see graphprune.ir.untie.
    untied = untied_copies(dg.model)
    untied = set(untied) | set(untied.values())
    tensors = []
    for s, idx in removed.items():
        if not s.virtual and is_constant(dg.values[s.value]) and s.value not in untied:
            tensors.append({"name": s.value, "axis": s.axis, "removed": _int_list(idx)})
    tensors.sort(key=lambda t: (t["name"], t["axis"]))
    groups = []
    by_id = {g.id: g for g in dg.groups}
    for gid in sorted(selection):
        g = by_id[gid]
        entry = {
            "id": gid,
            "name": g.name,
            "atoms": g.num_atoms,
            "removed_atoms": [int(a) for a in sorted(selection[gid])],
            "slots": {str(s): _int_list(removed[s]) for s in g.slots if s in removed and not s.virtual},
        }
        if scores and gid in scores:
            entry["scores"] = [round(float(x), 6) for x in np.asarray(scores[gid])[sorted(selection[gid])]]
        groups.append(entry)
    return Plan(tensors=tensors, groups=groups, model=model_info or {}, settings=settings or {})


def selection_from_plan(dg: DependencyGraph, plan: Plan) -> Selection:
    """Derive the removed atoms from the plan's tensors and verify they reproduce it."""
    plan.validate()
    by_slot = {s: g for g in dg.groups for s in g.slots}
    selection: dict[int, set[int]] = {}
    for t in plan.tensors:
        s = Slot(t["name"], t["axis"])
        g = by_slot.get(s)
        if g is None:
            frozen = any(s in fg.slots for fg in dg.frozen_groups)
            raise PlanError(
                f"plan slices {s}, which is " + ("frozen in this model" if frozen else "not a prunable tensor axis of this model"),
                hint="was the plan made for another model?",
            )
        if any(not 0 <= i < g.sizes[s] for i in t["removed"]):
            raise PlanError(f"plan removes index out of range from {s} (size {g.sizes[s]})")
        idx = np.asarray(t["removed"], dtype=np.int64)
        selection.setdefault(g.id, set()).update(np.unique(g.labels[s][idx]).tolist())
    result = {gid: sorted(a) for gid, a in selection.items()}
    rebuilt = build_plan(dg, result)
    given = sorted(({"name": t["name"], "axis": t["axis"], "removed": sorted(set(t["removed"]))}
                    for t in plan.tensors if t["removed"]), key=lambda t: (t["name"], t["axis"]))
    if rebuilt.tensors != given:
        raise PlanError("plan does not remove whole coupled channel sets in this model "
                        "(its tensors list is inconsistent with the model's dependency groups)",
                        hint="was the plan made for another model or edited by hand?")
    return result
