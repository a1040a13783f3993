"""From options to a selection: criterion scores, then an allocation mode, then a target.

Modes (``allocation=``):
* ``uniform``      every group loses the same fraction (with a target: the fraction is
                   searched so the target is met);
* ``global``       one ranking of all atoms across groups by normalised score;
* ``sensitivity``  per-group sweeps of ratio vs output error on calibration data; a common
                   error budget is searched so the target is met.
Targets (at most one, fraction of the dense model to *keep*): ``target_macs``,
``target_params``, ``target_active_params`` (an MoE layer's experts count k/E: the parameters
one token reads), ``target_latency`` (ONNX Runtime on this machine, NetAdapt-style).
Without a target, ``ratio`` is the fraction of channels to remove (uniform, global), or
the MACs that uniform pruning at ``ratio`` would keep (sensitivity).
Constraints in every mode: ``max_ratio`` per group, ``protect`` (regexes of layers/
tensors whose groups keep every channel), ``layer_ratios`` ({regex: ratio}, fixed
ratios for the groups they match), ``round_to``, and no slot is ever emptied. A group whose
axis a LayerNorm/RMSNorm normalises over (``Group.normalised``: a transformer's hidden size)
is kept whole unless ``prune_hidden`` (or a layer ratio names it).
"""
from __future__ import annotations

import logging
import re

import numpy as np
import onnx_ir as ir

from graphprune.allocation.global_rank import max_removable, prefix_selection, removal_sequence
from graphprune.allocation.uniform import _kept_target, rounded_removal
from graphprune.analysis.dependency.graph import DependencyGraph, Group
from graphprune.errors import UsageError

log = logging.getLogger(__name__)

OPTIONS = frozenset({
    "allocation", "target_macs", "target_params", "target_active_params", "target_latency", "max_ratio", "protect", "layer_ratios",
    "prune_hidden",
    "reduction", "normalize", "global_normalize", "sens_ratios", "sens_batches", "calib_batches",
    "latency_threads", "latency_rounds",
})
MODES = ("uniform", "global", "sensitivity")
# round_to auto: a MAC/params target left more than this far under (kept fraction) by widths in
# multiples of the lanes is met with a finer multiple (Allocator._finer_steps)
FINER_TOLERANCE = 0.05
Selection = dict[int, list[int]]


def _why_no_hidden_size(dg: DependencyGraph) -> str:
    """Why `prune_hidden` finds nothing: the reasons of a frozen hidden-size group, else none."""
    frozen = next((f for f in dg.frozen_groups if f.normalised), None)
    if frozen is not None:
        return f"its group {frozen.name} is frozen: {'; '.join(frozen.reasons[:2])}"
    return ("no LayerNorm or RMSNorm over a channel axis whose removed channels are zero where they are read "
            "(a LayerNorm written out as ReduceMean, Sub, Pow ... is not followed)")


def _as_list(v) -> list:
    if v is None or v == "":
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def group_matches(dg: DependencyGraph, group: Group, patterns: list[re.Pattern]) -> bool:
    from graphprune.analysis.dependency.graph import slots_match

    return slots_match(dg.values, group.slots, patterns, (group.name,))


def parse_layer_ratios(v) -> list[tuple[re.Pattern, float]]:
    """{regex: ratio} or ["regex=ratio", ...] (CLI form)."""
    out = []
    items = v.items() if isinstance(v, dict) else (str(x).rsplit("=", 1) for x in _as_list(v))
    for item in items:
        try:
            pat, r = item
            out.append((re.compile(pat), float(r)))
        except (ValueError, re.error):
            raise UsageError(f"layer ratio {item!r}: expected REGEX=RATIO") from None
    return out


def example_feeds(model: ir.Model, calibration=None, shapes=None) -> dict:
    """Inputs the MAC and latency targets are measured on: random data at the run's
    representative shapes (`shapes`, an InputShapes) when known, else one calibration
    batch, else random data at the shapes resolved here."""
    from graphprune.runtime.ort import random_inputs, session

    if shapes is None and calibration is not None:
        return calibration.first()
    return random_inputs(session(model), shapes=shapes)


class Allocator:
    def __init__(self, model: ir.Model, dg: DependencyGraph, opts: dict, calibration=None, shapes=None):
        self.model, self.dg, self.opts, self.calib = model, dg, opts, calibration
        self.shapes = shapes  # InputShapes: the run's representative shapes, which targets are taken at
        self.mode = opts.get("allocation", "uniform")
        if self.mode not in MODES:
            raise UsageError(f"unknown allocation {self.mode!r}", hint=f"choose one of {', '.join(MODES)}")
        self.ratio = float(opts.get("ratio", 0.3))
        if not 0.0 <= self.ratio < 1.0:
            raise UsageError(f"ratio must be in [0, 1), got {self.ratio}")
        mr = opts.get("max_ratio")
        self.max_ratio = float(mr) if mr not in (None, "") else None
        self.round_to = int(opts.get("round_to", 1))
        self.round_to_auto = bool(opts.get("round_to_auto", False))  # the lanes of "auto": may step finer
        targets = {k: float(opts[k]) for k in ("target_macs", "target_params", "target_active_params", "target_latency")
                   if opts.get(k) not in (None, "")}
        if len(targets) > 1:
            raise UsageError(f"give at most one target, got {sorted(targets)}")
        for k, t in targets.items():
            if not 0.0 < t <= 1.0:
                raise UsageError(f"{k} is the fraction to keep, in (0, 1]; got {t}")
        self.target = next(iter(targets.items()), None)
        self.info: dict = {"mode": self.mode}
        from graphprune.analysis.dependency.graph import compile_patterns

        protect = compile_patterns(_as_list(opts.get("protect")), "protect")
        fixed = parse_layer_ratios(opts.get("layer_ratios"))
        # a typo in a pattern would prune the layer meant to be kept, in silence (as --ignore refuses)
        dg.require_matches(protect, "protect", group_names=True)
        dg.require_matches([pat for pat, _ in fixed], "layer ratio", group_names=True)
        self.fixed: dict[int, float] = {}
        prune_hidden = bool(opts.get("prune_hidden", False))
        hidden_kept = []
        for g in dg.prunable_groups:
            if protect and group_matches(dg, g, protect):
                self.fixed[g.id] = 0.0
                continue
            for pat, r in fixed:
                if group_matches(dg, g, [pat]):
                    self.fixed[g.id] = r
                    break
            else:
                if g.normalised and not prune_hidden:  # a residual stream: whole unless asked
                    self.fixed[g.id] = 0.0
                    hidden_kept.append(g.name)
        self.groups = [g for g in dg.prunable_groups if g.id not in self.fixed]
        names = {g.id: g.name for g in dg.groups}
        fixed_ratios = {names[gid]: r for gid, r in self.fixed.items() if names[gid] not in hidden_kept}
        if hidden_kept:
            self.info["hidden_kept"] = hidden_kept
        if prune_hidden and not any(g.normalised for g in dg.prunable_groups):
            self.info["hidden_none"] = _why_no_hidden_size(dg)
        if fixed_ratios:
            self.info["fixed_ratios"] = fixed_ratios

    # ---- building blocks ------------------------------------------------------------------
    def _group_ratio_selection(self, g: Group, ratio: float, scores, at_most: bool | None = None) -> list[int]:
        ratio = min(ratio, self.max_ratio) if self.max_ratio is not None else ratio
        n_remove = g.num_atoms - _kept_target(g, min(max(ratio, 0.0), 0.999999))
        # a plain ratio (no target to make up the difference elsewhere) never removes more than asked
        if at_most is None:
            at_most = self.target is None and self.mode == "uniform"
        return rounded_removal(g, scores[g.id], n_remove, self.round_to, max_removable(g, self.max_ratio),
                               at_most=at_most)

    def _fixed_selection(self, scores) -> Selection:
        by_id = {g.id: g for g in self.dg.groups}
        out = {}
        for gid, r in self.fixed.items():
            if r > 0 and gid in scores:
                atoms = self._group_ratio_selection(by_id[gid], r, scores)
                if atoms:
                    out[gid] = atoms
        return out

    def _uniform(self, ratio: float, scores, at_most: bool | None = None) -> Selection:
        sel = {}
        for g in self.groups:
            if g.id in scores:
                atoms = self._group_ratio_selection(g, ratio, scores, at_most)
                if atoms:
                    sel[g.id] = atoms
        return sel

    def _cost_model(self):
        kind, _ = self.target if self.target else ("target_macs", None)
        from graphprune.allocation import cost

        if kind in ("target_params", "target_active_params"):
            return cost.param_model(self.model, self.dg, active=kind == "target_active_params")
        feeds = example_feeds(self.model, self.calib, self.shapes)
        shapes = cost.mac_shapes(self.model, feeds)
        if kind == "target_latency":
            from graphprune.allocation.latency import LatencyModel

            self._latency_feeds = feeds
            return LatencyModel(self.model, self.dg, shapes, feeds, threads=int(self.opts.get("latency_threads", 1)))
        return cost.mac_model(self.model, self.dg, shapes)

    @staticmethod
    def _search(make, cost, target: float, lo: float, hi: float, iters: int = 30, increasing: bool = True):
        """Smallest knob (cost decreasing in the knob) with cost.ratio <= target."""
        best = make(hi)
        if cost.ratio(best) > target:
            return best, False
        for _ in range(iters):
            mid = (lo + hi) / 2
            if cost.ratio(make(mid)) <= target:
                hi = mid
            else:
                lo = mid
            if increasing and hi - lo < 1e-4:
                break
        return make(hi), True

    def _merge(self, fixed: Selection, sel: Selection) -> Selection:
        out = dict(fixed)
        out.update(sel)
        return out

    # ---- modes ---------------------------------------------------------------------------
    def allocate(self, scores: dict[int, np.ndarray], target: float | None, cost) -> Selection:
        fixed = self._fixed_selection(scores)
        if self.mode == "uniform":
            return self._allocate_uniform(scores, target, cost, fixed)
        if self.mode == "global":
            return self._allocate_global(scores, target, cost, fixed)
        return self._allocate_sensitivity(scores, target, cost, fixed)

    def _allocate_uniform(self, scores: dict[int, np.ndarray], target: float | None, cost,
                          fixed: Selection) -> Selection:
        if target is None:
            return self._merge(fixed, self._uniform(self.ratio, scores))
        hi_ratio = self.max_ratio if self.max_ratio is not None else 0.95
        make = lambda r: self._merge(fixed, self._uniform(r, scores))  # noqa: E731
        sel, ok = self._search(make, cost, target, 0.0, hi_ratio)
        self.info["reached"] = ok
        return sel

    def _allocate_global(self, scores: dict[int, np.ndarray], target: float | None, cost,
                         fixed: Selection) -> Selection:
        seq = removal_sequence(self.dg, scores, self.groups, normalize=self.opts.get("global_normalize", "mean"),
                               max_ratio=self.max_ratio)
        make = lambda k: self._merge(fixed, prefix_selection(  # noqa: E731
            self.dg, seq, int(round(k)), scores, self.round_to, self.max_ratio))
        if target is None:
            total = sum(g.num_atoms for g in self.groups)
            return make(min(len(seq), int(round(self.ratio * total))))
        lo, hi = 0, len(seq)
        if cost.ratio(make(hi)) > target:
            self.info["reached"] = False
            return make(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost.ratio(make(mid)) <= target:
                hi = mid
            else:
                lo = mid
        self.info["reached"] = True
        return make(hi)

    def _sensitivity_curves(self, scores: dict[int, np.ndarray]) -> dict:
        """Per group, the output error against its pruning ratio (computed once, cached on the calibration)."""
        from graphprune.allocation.sensitivity import DEFAULT_RATIOS, sensitivity_curves

        if not hasattr(self, "_curves"):
            ratios = [float(r) for r in _as_list(self.opts.get("sens_ratios"))] or list(DEFAULT_RATIOS)
            if self.max_ratio is not None:
                ratios = [r for r in ratios if r <= self.max_ratio + 1e-9] or [self.max_ratio]
            batches = int(self.opts.get("sens_batches", 2))
            key = ("sensitivity", tuple(g.name for g in self.groups), self.opts.get("criterion", "l2"),
                   tuple(ratios), batches, tuple(float(np.sum(scores[g.id])) for g in self.groups))
            cache = getattr(self.calib, "cache", {})
            if key not in cache:
                cache[key] = sensitivity_curves(self.model, self.dg, scores, self.calib, self.groups, ratios,
                                                max_batches=batches)
            self._curves = cache[key]
            self.info["sensitivity"] = {c["name"]: {"atoms": c["atoms"], "ratios": c["ratios"], "error": c["error"]}
                                        for c in self._curves.values()}
        return self._curves

    def _allocate_sensitivity(self, scores: dict[int, np.ndarray], target: float | None, cost,
                              fixed: Selection) -> Selection:
        from graphprune.allocation.sensitivity import ratio_for_budget

        if self.calib is None:
            raise UsageError("allocation=sensitivity needs calibration data", hint="give --calib")
        curves = self._sensitivity_curves(scores)

        def make(eps):
            sel = {}
            for g in self.groups:
                r = ratio_for_budget(curves[g.id], eps, self.max_ratio)
                atoms = self._group_ratio_selection(g, r, scores) if r > 0 else []
                if atoms:
                    sel[g.id] = atoms
            return self._merge(fixed, sel)

        if target is None:
            from graphprune.allocation import cost as cost_mod

            cost = cost or cost_mod.mac_model(self.model, self.dg, cost_mod.mac_shapes(
                self.model, example_feeds(self.model, self.calib, self.shapes)))
            # the MACs a plain --ratio keeps uniformly (widths rounded up: never more removed than
            # asked); rounded to the nearest multiple, a ratio of 0.3 at round_to 16 implied 0.32
            # of the MACs where uniform keeps 0.93, and sensitivity removed three quarters
            target = cost.ratio(self._merge(fixed, self._uniform(self.ratio, scores, at_most=True)))
            self.info["implied_target_macs"] = round(target, 4)
        emax = max([max(c["error"]) for c in curves.values()] + [1e-9]) * 1.01
        sel, ok = self._search(make, cost, target, 0.0, emax, iters=40, increasing=False)
        self.info["reached"] = ok
        return sel

    def run(self, scores: dict[int, np.ndarray]) -> Selection:
        cost = self._cost_model() if (self.target or self.mode == "sensitivity") else None
        if self.target is None:
            sel = self.allocate(scores, None, cost)
            implied = self.info.get("implied_target_macs")  # sensitivity: the MACs the plain ratio keeps uniformly
            if implied is not None and self.round_to_auto and self.round_to > 1:
                sel = self._finer_steps(scores, sel, cost, implied)
        elif self.target[0] != "target_latency":
            sel = self.allocate(scores, self.target[1], cost)
            if self.round_to_auto and self.round_to > 1:
                sel = self._finer_steps(scores, sel, cost, self.target[1])
        else:
            sel = self._latency_loop(scores, cost)
        if cost is not None:
            self.info["predicted_ratio"] = round(cost.ratio(sel), 4)
            if self.target:
                self.info["target"] = {self.target[0]: self.target[1]}
        return sel

    def _finer_steps(self, scores: dict[int, np.ndarray], sel: Selection, cost, target: float) -> Selection:
        """round_to auto (the lanes): when widths in multiples of the lanes keep far less than
        the target (more than FINER_TOLERANCE under it: a small model whose 32 channels can
        keep 16 or 32), the coarsest finer multiple (lanes/2, /4, ..., 1) that lands within
        the tolerance, else the one closest under the target. Recorded in info["round_to"].
        `target`: the MAC ratio asked, or the one a plain ratio implies (sensitivity)."""
        lanes = self.round_to
        first = cost.ratio(sel)
        if target - first <= FINER_TOLERANCE:
            return sel
        best = (first, lanes, sel, self.info.get("reached"))
        step = lanes // 2
        while step >= 1:
            self.round_to = step
            s = self.allocate(scores, target, cost)
            kept = cost.ratio(s)
            if kept <= target + 1e-3 and kept > best[0]:  # meets the target, and keeps more of the model
                best = (kept, step, s, self.info.get("reached"))
                if target - kept <= FINER_TOLERANCE:
                    break
            step //= 2
        kept, step, sel, reached = best
        self.round_to = step
        self.info["reached"] = reached
        if step != lanes:
            self.info["round_to"] = {"lanes": lanes, "used": step, "lanes_kept": round(first, 4)}
        return sel

    def _latency_loop(self, scores, lat) -> Selection:
        """NetAdapt: meet the table's prediction, measure the real model, correct, repeat."""
        from graphprune.allocation.latency import measured_ratio
        from graphprune.ir.serialize import to_proto

        asked = self.target[1]
        dense = to_proto(self.model).SerializeToString()
        threads = int(self.opts.get("latency_threads", 1))
        aim = asked
        history = []
        best = None
        below = above = None   # (aim, measured) of the nearest rounds on each side of the ask
        for it in range(int(self.opts.get("latency_rounds", 4))):
            sel = self.allocate(scores, aim, lat)
            pruned = build_pruned(self.model, self.dg, sel)
            meas, dms, pms = measured_ratio(dense, pruned, self._latency_feeds, threads=threads)
            history.append({"aimed": round(aim, 4), "predicted": round(lat.ratio(sel), 4), "measured": round(meas, 4),
                            "dense_ms": round(dms, 3), "pruned_ms": round(pms, 3)})
            log.info("latency target %.3f: round %d aimed %.3f predicted %.3f measured %.3f (%.2f ms / %.2f ms)",
                     asked, it + 1, aim, lat.ratio(sel), meas, pms, dms)
            if best is None or _closer_under(meas, best[1], asked):
                best = (sel, meas)
            if abs(meas / asked - 1.0) <= LATENCY_BAND:
                break
            if meas < asked and (below is None or aim > below[0]):
                below = (aim, meas)
            elif meas >= asked and (above is None or aim < above[0]):
                above = (aim, meas)
            if below is not None and above is not None:
                # bracketed: interpolate between the two aims (a multiplicative correction
                # alone can bounce between two points when the timing is noisy)
                (a0, m0), (a1, m1) = below, above
                t = (asked - m0) / (m1 - m0) if m1 > m0 else 0.5
                aim = float(a0 + np.clip(t, 0.1, 0.9) * (a1 - a0))
            else:  # (halfway to no pruning at most: a round at aim 1.0 measures nothing worth having)
                aim = float(np.clip(aim * asked / meas, 0.02, (1.0 + aim) / 2 if meas < asked else 1.0))
        self.info["latency_rounds"] = history
        self.info["measured_ratio"] = round(best[1], 4)
        self.info["latency_table_seconds"] = round(lat.build_seconds, 1)
        return best[0]


LATENCY_BAND = 0.04  # a measured latency ratio within 4% over the target meets it (timing noise)


def _closer_under(meas: float, best: float, asked: float) -> bool:
    """Whether a round measuring `meas` beats the best so far for a latency target `asked`:
    a target is a ceiling, so a round that meets it (within the band) beats one that does
    not, the met round keeping the most latency wins, and among misses the lowest does. (The
    round nearest the target on either side was kept: a miss over a met round, reported as
    'NOT met ... the most this run could remove'.)"""
    ok, best_ok = meas <= asked * (1 + LATENCY_BAND), best <= asked * (1 + LATENCY_BAND)
    if ok != best_ok:
        return ok
    return meas > best if ok else meas < best


def build_pruned(model: ir.Model, dg: DependencyGraph, selection: Selection) -> bytes:
    """Serialized copy of `model` with `selection` physically removed (model untouched)."""
    from graphprune.ir.serialize import clone, to_proto
    from graphprune.surgery import apply_removal
    from graphprune.plan import removed_by_slot

    copy = clone(model)
    dg2 = DependencyGraph(copy, ignore=None)  # same construction order: same group ids
    names2 = {g.id: g.name for g in dg2.groups}
    sel = {}
    for gid, atoms in selection.items():
        name = next(g.name for g in dg.groups if g.id == gid)
        if names2.get(gid) != name:
            raise RuntimeError(f"group {gid} ({name}) does not match in the model copy")
        sel[gid] = atoms
    apply_removal(copy, dg2, removed_by_slot(dg2, sel))
    return to_proto(copy).SerializeToString()


def select(model: ir.Model, dg: DependencyGraph, opts: dict, calibration=None,
           shapes=None) -> tuple[dict, Selection, dict]:
    """(scores, selection, info) for the prune-channels pass; `shapes` (InputShapes): the
    run's representative shapes, at which MAC and latency targets are taken."""
    from graphprune.importance import group_scores

    alloc = Allocator(model, dg, opts, calibration, shapes)
    kw = {}
    for k in ("reduction", "normalize"):
        if opts.get(k):
            kw[k] = opts[k]
    scores = group_scores(dg, opts.get("criterion", "l2"), calibration=calibration, seed=int(opts.get("seed", 0)),
                          **kw)
    selection = alloc.run(scores)
    return scores, selection, alloc.info
