"""Apply what was planned: selection (or a plan to replay) → Plan → physical removal.

`apply-plan` never decides. It takes the selection `plan-channels` left in the context
(with the scores, allocation report and options it planned with: the plan records
them), a selection given by the caller (``results['selection']``), or a plan to replay
(``results['plan_in']``), builds the plan (``results['plan']``) and slices the model
(graphprune.surgery). With nothing planned it is a UsageError. The planned selection is
consumed: a later plan-channels in the same pipeline decides anew on the pruned model.
"""
from __future__ import annotations

import logging

import onnx_ir as ir

from graphprune.errors import UsageError
from graphprune.passes._infra import Pass, PassContext, register_pass
from graphprune.passes.pruning.plan_channels import PLANNED, dependency_graph, ignore_patterns
from graphprune.plan import Plan, build_plan, removed_by_slot, selection_from_plan
from graphprune.surgery import apply_removal

log = logging.getLogger(__name__)


@register_pass
class ApplyPlan(Pass):
    """No options: what to remove comes from the context (see the module docstring)."""

    name = "apply-plan"
    description = "remove the channels planned by plan-channels (or a replayed plan)"
    preserves = ("shapes",)  # the surgery shrinks the shapes of what it slices

    def __init__(self):
        super().__init__()

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        return apply(model, ctx)


def _settings(opts: dict) -> dict:
    from graphprune.allocation.driver import OPTIONS as ALLOCATION_OPTIONS

    keys = ("ratio", "criterion", "round_to", "ignore", "seed") + tuple(sorted(ALLOCATION_OPTIONS))
    return {k: opts[k] for k in keys if k in opts}


def apply(model: ir.Model, ctx: PassContext) -> bool:
    """Build `results['plan']` from what is planned in `ctx` and slice `model`."""
    r = ctx.results
    plan_in: Plan | None = r.get("plan_in")
    if plan_in is None and "selection" not in r:
        raise UsageError("apply-plan: nothing to apply (no selection was planned and no plan is given)",
                         hint="run plan-channels before apply-plan (prune-channels does both), or give --plan")
    opts = r.get("planned_options") or {}
    dg = r.get("planned_graph") or dependency_graph(model, ctx, ignore=ignore_patterns(opts))
    dg.check_current(model)  # the selection's group ids are this analysis's
    selection = selection_from_plan(dg, plan_in) if plan_in is not None else r["selection"]
    planned = plan_in is None and "planned_options" in r and "scores" in r
    plan = build_plan(dg, selection, scores=r.get("scores") if planned else None, settings=_settings(opts))
    if planned and r.get("allocation"):
        plan.settings["allocation_result"] = r["allocation"]
    if plan_in is not None:  # the replayed run's settings; its repair records are this run's to write
        plan.settings = {k: v for k, v in plan_in.settings.items() if k != "repair"}
    plan.blocks = r.get("removed_blocks", [])
    plan.experts = r.get("removed_experts", [])
    r["plan"] = plan
    for k in PLANNED:  # applied: a later plan-channels decides on the pruned model
        r.pop(k, None)
    removed = removed_by_slot(dg, selection)
    if not removed:
        return False
    if (r.get("calibration") is not None or r.get("keep_dense")) and "dense_model" not in r:
        from graphprune.ir.serialize import clone

        r["dense_model"] = clone(model)  # repair passes compare against it
    apply_removal(model, dg, removed)
    log.debug("apply-plan: %d groups changed, %d tensors sliced", len(selection), len(plan.tensors))
    from graphprune.sparsity_meta import KEY, refresh_after_slicing

    if KEY in model.metadata_props:  # a sparse model pruned: its sparsity record must stay true
        notes = refresh_after_slicing(model, {t["name"] for t in plan.tensors})
        if notes:
            log.warning("sparsity record: the format of %d tensor(s) no longer holds after structured pruning, "
                        "now recorded as unstructured: %s%s", len(notes), "; ".join(notes[:3]),
                        " ..." if len(notes) > 3 else "")
    return True
