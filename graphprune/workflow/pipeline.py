"""The pass pipelines of one prune run: pruning (checked by the oracle), then repair and
sparsity (they change weights beyond the plan's slices, so they run after it).

`--slice-hidden R` puts slice-hidden first: the hidden size is rotated and sliced before
channels are chosen, and a MAC target stays a fraction of the *input* model's MACs.

Who decides what to prune: the workflow's plan step. From PruneOptions it builds
`plan-channels, apply-plan` (prune-blocks first when blocks go): plan-channels only decides
(criterion scores + `allocation.driver.select`, never touching the model) and leaves the
selection, scores, allocation report and its options in the state; apply-plan only
applies them (or the replayed `--plan`, or the api's `selection=`) and never decides.
A `--pipeline` string may still say `prune-channels{ratio=..}`: that composite pass runs
the same two steps with its own options, and writes the same plan.
"""
from __future__ import annotations

from graphprune.passes import PassManager


def split_sparsify(pm):
    """(pipeline without sparsify passes, sparsify passes)."""
    if pm is None:
        return None, []
    rest = [p for p in pm.passes if p.name != "sparsify"]
    return PassManager(rest), [p for p in pm.passes if p.name == "sparsify"]


def from_text(pipeline: str):
    """A textual pipeline split into (prune, repair or None, sparsify passes)."""
    from graphprune.passes.reconstruction import repair

    pm, repair_pm = repair.split_repair(PassManager.parse(pipeline))
    _one_channel_pruning(pm)
    pm, sparsify_passes = split_sparsify(pm)
    if repair_pm is not None:
        repair_pm, more = split_sparsify(repair_pm)
        sparsify_passes += more
        repair_pm = repair_pm if repair_pm.passes else None
    return pm, repair_pm, sparsify_passes


# passes that remove the channels of a plan, and the one that only decides
_APPLIES = ("prune-channels", "apply-plan")


def _one_channel_pruning(pm) -> None:
    """A run writes one plan, and the oracle checks the result against the input masked by
    it: two channel prunings in one pipeline would leave a plan that describes only the last
    (the oracle then failed with 'please report this model'), and plan-channels without
    apply-plan decides but removes nothing. Both are refused before any work, in words."""
    from graphprune.errors import UsageError

    names = [p.name for p in pm.passes]
    applies = [n for n in names if n in _APPLIES]
    if len(applies) > 1:
        raise UsageError(f"the pipeline prunes channels {len(applies)} times ({', '.join(applies)}): a run "
                         "writes one plan, which the oracle checks against the input",
                         hint="prune once per run: run graphprune prune again on the first result for a "
                              "second step, or give one prune-channels a larger ratio")
    if "plan-channels" in names and not any(n == "apply-plan" for n in names[names.index("plan-channels"):]):
        raise UsageError("plan-channels only decides what to remove; nothing applies it",
                         hint="add apply-plan after it (plan-channels{...},apply-plan), or use prune-channels{...}")


def from_options(opts, plan_in):
    """The pruning pipeline the options ask for (prune-blocks first when blocks go)."""
    from graphprune.passes.pruning.apply_plan import ApplyPlan
    from graphprune.passes.pruning.plan_channels import PlanChannels
    from graphprune.passes.pruning.prune_blocks import PruneBlocks

    from graphprune.passes.pruning.slice_hidden import SliceHidden

    replays_hidden = plan_in is not None and bool(plan_in.hidden)  # the plan's rotation, rebuilt first
    hidden = [SliceHidden(ratio=opts.slice_hidden or 0.25)] if opts.slice_hidden or replays_hidden else []
    if opts.keep_experts or (plan_in is not None and plan_in.experts):  # whole experts go first
        from graphprune.passes.pruning.prune_experts import PruneExperts

        hidden = [PruneExperts(keep=opts.keep_experts)] + hidden
    if not opts.prune and plan_in is None:
        return PassManager(hidden)
    passes = [PlanChannels(**opts.channel_options()), ApplyPlan()]
    if opts.remove_blocks or opts.blocks or (plan_in is not None and plan_in.blocks):
        passes.insert(0, PruneBlocks(**opts.block_options()))
    return PassManager(hidden + passes)


def build(opts, plan_in):
    """(prune pipeline, repair pipeline or None, sparsify passes) for `opts`."""
    from graphprune.passes.sparsity.sparsify import Sparsify

    if opts.pipeline:
        pm, repair_pm, sparsify_passes = from_text(opts.pipeline)
    else:
        pm, repair_pm, sparsify_passes = from_options(opts, plan_in), None, []
    if opts.sparsity:
        sparsify_passes = [*sparsify_passes, Sparsify(**opts.sparsity)]
    return pm, repair_pm, sparsify_passes
