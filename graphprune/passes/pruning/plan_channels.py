"""Decide which channels go: criterion scores + allocation → a selection. Nothing else.

`plan-channels` is the decision step of channel pruning: it scores every atom of every
coupled group with the configured criterion, lets the allocation driver
(`graphprune.allocation.driver.select`) choose the atoms to remove, and leaves the
result in the context for `apply-plan`:

    selection         group id -> atom ids to remove
    scores            group id -> per-atom scores (recorded in the plan)
    allocation        the allocation driver's report
    planned_options   the options it planned with (the plan's settings)
    planned_graph     the dependency graph the selection's group ids refer to

It never changes the model. A plan to replay (``results['plan_in']``) or a selection
given by the caller (``results['selection']``) is not decided again: the pass only
records its options and the analysis for `apply-plan`.
"""
from __future__ import annotations

import logging

import onnx_ir as ir

from graphprune.analysis.dependency import DependencyGraph
from graphprune.errors import UsageError
from graphprune.passes._infra import Pass, PassContext, register_pass

log = logging.getLogger(__name__)

COST_TARGETS = ("target_macs", "target_params", "target_active_params")


def _costs(model: ir.Model, shapes) -> dict[str, float]:
    """The measures of the cost targets: MACs at the run's shapes, parameters, active ones."""
    from graphprune.allocation.cost import param_terms
    from graphprune.analysis.cost import model_cost

    return {"target_macs": float(model_cost(model, shapes.shapes if shapes is not None else None).macs),
            "target_params": sum(p for _, p, _ in param_terms(model)),
            "target_active_params": sum(p for _, p, _ in param_terms(model, active=True))}


def note_input_cost(model: ir.Model, results: dict) -> None:
    """Called by a pass that changes the model before channels are chosen (prune-experts,
    prune-blocks, slice-hidden), before it does: the input's costs, once per pipeline, so
    that a cost target stays a fraction of the *input* model (`_input_relative`)."""
    if "input_cost" not in results:
        results["input_cost"] = _costs(model, results.get("input_shapes"))


def _input_relative(model: ir.Model, opts: dict, results: dict) -> dict:
    """Cost targets rescaled to the model as it is now: `--remove-blocks 2 --target-macs 0.7`
    keeps 0.7 of the input's MACs in all, the blocks' share included (not 0.7 of what the
    blocks left). A target the earlier passes already met asks channels for nothing more."""
    given = [k for k in COST_TARGETS if opts.get(k) not in (None, "")]
    if not given or "input_cost" not in results:
        return opts
    now = _costs(model, results.get("input_shapes"))
    out = dict(opts)
    for k in given:
        out[k] = min(1.0, float(opts[k]) * results["input_cost"][k] / max(now[k], 1.0))
        left = now[k] / max(results["input_cost"][k], 1.0)
        if left <= float(opts[k]):
            log.warning("%s %.3g: the passes before channel pruning (blocks, experts, hidden size) already keep %.3f of "
                        "the input; no channels are removed for it", k.replace("_", "-"), float(opts[k]), left)
        log.debug("plan-channels: %s %.4g of the input is %.4g of the model as it is now", k, float(opts[k]), out[k])
    return out

# what the planner leaves for apply-plan, in PassContext.results (PipelineState's fields)
PLANNED = ("selection", "scores", "planned_options", "planned_graph")


def dependency_graph(model: ir.Model, ctx: PassContext, ignore=None) -> DependencyGraph:
    key = f"dependency:{ignore!r}"
    return ctx.analysis(key, model, lambda: DependencyGraph(model, ignore=ignore))


def ignore_patterns(opts: dict) -> list[str] | None:
    ignore = opts.get("ignore") or None
    return [ignore] if isinstance(ignore, str) else ignore


@register_pass
class PlanChannels(Pass):
    """Options: ratio, criterion (see graphprune.importance.CRITERIA), round_to (and
    round_to_auto: it was the lanes of "auto", a finer multiple may meet a target), ignore
    (list of regex), seed, and the allocation options of graphprune.allocation.driver
    (allocation, target_macs/params/latency, max_ratio, protect, prune_hidden, layer_ratios ...).
    Calibration data for data-aware criteria is ``results['calibration']``."""

    name = "plan-channels"
    description = "choose the least important channels of every coupled group (no change to the model)"

    # The defaults are those of graphprune.allocation.driver, which reads the options given.
    def __init__(self, *, ratio: float = 0.3, criterion: str = "l2", round_to: int = 1, round_to_auto: bool = False,
                 ignore: str | list[str] | None = None, seed: int = 0, allocation: str = "uniform",
                 target_macs: float | None = None, target_params: float | None = None,
                 target_active_params: float | None = None, target_latency: float | None = None, max_ratio: float | None = None,
                 protect: str | list[str] | None = None, prune_hidden: bool = False, layer_ratios: list[str] | dict | None = None,
                 reduction: str | None = None, normalize: str | None = None, global_normalize: str = "mean",
                 sens_ratios: list[float] | None = None, sens_batches: int = 2, calib_batches: int | None = None,
                 latency_threads: int = 1, latency_rounds: int = 4):
        super().__init__()
        from graphprune.allocation.driver import MODES
        from graphprune.analysis.dependency.graph import compile_patterns

        if not 0.0 <= ratio < 1.0:
            raise UsageError(f"{self.name}: ratio must be in [0, 1), got {ratio:g}")
        if round_to < 1:
            raise UsageError(f"{self.name}: round_to must be >= 1, got {round_to}")
        if max_ratio is not None and not 0.0 <= max_ratio <= 1.0:
            raise UsageError(f"{self.name}: max_ratio must be in [0, 1], got {max_ratio:g}")
        if allocation not in MODES:
            raise UsageError(f"unknown allocation {allocation!r}", hint=f"choose one of {', '.join(MODES)}")
        for k, t in (("target_macs", target_macs), ("target_params", target_params),
                     ("target_active_params", target_active_params), ("target_latency", target_latency)):
            if t is not None and not 0.0 < t <= 1.0:
                raise UsageError(f"{self.name}: {k} is the fraction to keep, in (0, 1]; got {t:g}")
        for k, v in (("sens_batches", sens_batches), ("latency_threads", latency_threads),
                     ("latency_rounds", latency_rounds)):
            if v < 1:
                raise UsageError(f"{self.name}: {k} must be >= 1, got {v}")
        compile_patterns(ignore, "ignore")
        compile_patterns(protect, "protect")

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        plan(model, ctx, dict(self.options))  # only the options given: the plan records these
        return False  # deciding changes nothing


def plan(model: ir.Model, ctx: PassContext, opts: dict) -> None:
    """Decide with `opts` (a plan-channels pass's options) and record it in `ctx.results`."""
    from graphprune.allocation.driver import select

    r = ctx.results
    user_ignore = ignore_patterns(opts)
    hidden = r.get("hidden")
    if hidden is not None and hidden.get("protect"):
        # slice-hidden's projections beside a kept-whole shared token table (a tied head): the
        # group through them is the table's hidden axis, never channels to prune
        import re

        opts = {**opts, "ignore": (ignore_patterns(opts) or []) + [f"^{re.escape(n)}$" for n in hidden["protect"]]}
    dg = dependency_graph(model, ctx, ignore=ignore_patterns(opts))
    dg.require_matches(user_ignore)
    given = r.get("plan_in") is not None or ("selection" in r and "planned_options" not in r)
    if not given:  # decide (again, when an earlier plan was not applied)
        scores, selection, info = select(model, dg, _input_relative(model, opts, r), r.get("calibration"),
                                         r.get("input_shapes"))
        r.update(selection=selection, scores=scores, allocation=info)
        if "round_to" in info:  # round_to auto stepped to a finer multiple: the plan records the one used
            opts = {**opts, "round_to": info["round_to"]["used"]}
        log.debug("plan-channels: %d groups lose atoms", sum(1 for a in selection.values() if len(a)))
    r.update(planned_options=opts, planned_graph=dg)
