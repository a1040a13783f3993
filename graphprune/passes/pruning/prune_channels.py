"""Physically remove channels: slice constants, rewrite attributes and shape constants.

The pass never decides what to remove on its own: it takes a selection (group → atoms)
from the context (or makes one with the configured criterion and allocation), turns it
into per-slot removals, and rewrites the model. Because a selection is made of whole
atoms, every op sees a consistent removal.
"""
from __future__ import annotations

import logging

import onnx_ir as ir

from graphprune.analysis.dependency import DependencyGraph
from graphprune.errors import UsageError
from graphprune.passes._infra import Pass, PassContext, register_pass
from graphprune.plan import Plan, build_plan, removed_by_slot, selection_from_plan
from graphprune.surgery import apply_removal

log = logging.getLogger(__name__)


def dependency_graph(model: ir.Model, ctx: PassContext, ignore=None) -> DependencyGraph:
    key = f"dependency:{ignore!r}"
    return ctx.analysis(key, model, lambda: DependencyGraph(model, ignore=ignore))


@register_pass
class PruneChannels(Pass):
    """Options: ratio, criterion (see graphprune.importance.CRITERIA), round_to, ignore
    (list of regex), seed, and the allocation options of graphprune.allocation.driver
    (allocation, target_macs/params/latency, max_ratio, protect, layer_ratios ...).
    Calibration data for data-aware criteria is ``results['calibration']``.
    A selection or plan already in the context (``results['selection']`` /
    ``results['plan_in']``) is applied instead of computing one."""

    name = "prune-channels"
    description = "remove the least important channels of every coupled group"

    # The defaults are those of graphprune.allocation.driver, which reads the options given.
    def __init__(self, *, ratio: float = 0.3, criterion: str = "l2", round_to: int = 1,
                 ignore: str | list[str] | None = None, seed: int = 0, allocation: str = "uniform",
                 target_macs: float | None = None, target_params: float | None = None,
                 target_latency: float | None = None, max_ratio: float | None = None,
                 protect: str | list[str] | None = None, layer_ratios: list[str] | dict | None = None,
                 reduction: str | None = None, normalize: str | None = None, global_normalize: str = "mean",
                 sens_ratios: list[float] | None = None, sens_batches: int = 2, calib_batches: int | None = None,
                 latency_threads: int = 1, latency_rounds: int = 4):
        super().__init__()
        from graphprune.allocation.driver import MODES
        from graphprune.analysis.dependency.graph import compile_patterns

        if not 0.0 <= ratio < 1.0:
            raise UsageError(f"prune-channels: ratio must be in [0, 1), got {ratio:g}")
        if round_to < 1:
            raise UsageError(f"prune-channels: round_to must be >= 1, got {round_to}")
        if max_ratio is not None and not 0.0 <= max_ratio <= 1.0:
            raise UsageError(f"prune-channels: max_ratio must be in [0, 1], got {max_ratio:g}")
        if allocation not in MODES:
            raise UsageError(f"unknown allocation {allocation!r}", hint=f"choose one of {', '.join(MODES)}")
        for k, t in (("target_macs", target_macs), ("target_params", target_params),
                     ("target_latency", target_latency)):
            if t is not None and not 0.0 < t <= 1.0:
                raise UsageError(f"prune-channels: {k} is the fraction to keep, in (0, 1]; got {t:g}")
        for k, v in (("sens_batches", sens_batches), ("latency_threads", latency_threads),
                     ("latency_rounds", latency_rounds)):
            if v < 1:
                raise UsageError(f"prune-channels: {k} must be >= 1, got {v}")
        compile_patterns(ignore, "ignore")
        compile_patterns(protect, "protect")

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        from graphprune.allocation.driver import OPTIONS as ALLOCATION_OPTIONS
        from graphprune.allocation.driver import select

        opts = dict(self.options)  # only the options given: the plan records these
        ignore = opts.get("ignore") or None
        if isinstance(ignore, str):
            ignore = [ignore]
        dg = dependency_graph(model, ctx, ignore=ignore)
        scores = None
        plan_in: Plan | None = ctx.results.get("plan_in")
        if plan_in is not None:
            selection = selection_from_plan(dg, plan_in)
        elif "selection" in ctx.results:
            selection = ctx.results["selection"]
        else:
            scores, selection, info = select(model, dg, opts, ctx.results.get("calibration"))
            ctx.results["allocation"] = info
        plan = build_plan(dg, selection, scores=scores, settings={
            k: opts[k] for k in ("ratio", "criterion", "round_to", "ignore", "seed") + tuple(sorted(ALLOCATION_OPTIONS))
            if k in opts})
        if plan_in is None and ctx.results.get("allocation"):
            plan.settings["allocation_result"] = ctx.results["allocation"]
        if plan_in is not None:
            plan.settings = plan_in.settings
        plan.blocks = ctx.results.get("removed_blocks", [])
        ctx.results["plan"] = plan
        removed = removed_by_slot(dg, selection)
        if not removed:
            return False
        if ctx.results.get("calibration") is not None and "dense_model" not in ctx.results:
            from graphprune.ir.serialize import clone

            ctx.results["dense_model"] = clone(model)  # repair passes compare against it
        apply_removal(model, dg, removed)
        log.debug("prune-channels: %d groups changed, %d tensors sliced", len(selection), len(plan.tensors))
        return True
