"""Channel pruning in one pass: `plan-channels` (decide) then `apply-plan` (slice).

`prune-channels` takes the options of plan-channels and runs both steps, so a pipeline
string such as ``prune-channels{ratio=0.3},dce`` keeps working and writes the same
plan as ``plan-channels{ratio=0.3},apply-plan,dce``. The deciding lives in
plan_channels.py and the surgery in apply_plan.py; this pass only chains them. Because
a selection is made of whole atoms, every op sees a consistent removal.
"""
from __future__ import annotations

import onnx_ir as ir

from graphprune.passes._infra import PassContext, register_pass
from graphprune.passes.pruning.apply_plan import apply
from graphprune.passes.pruning.plan_channels import PlanChannels, dependency_graph, plan

__all__ = ["PruneChannels", "dependency_graph"]


@register_pass
class PruneChannels(PlanChannels):
    """The options of plan-channels. A selection or plan already in the context
    (``results['selection']`` / ``results['plan_in']``) is applied instead of deciding."""

    name = "prune-channels"
    description = "remove the least important channels of every coupled group (plan-channels + apply-plan)"

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        plan(model, ctx, dict(self.options))
        return apply(model, ctx)
