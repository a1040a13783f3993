"""The pass pipelines of one prune run: pruning (checked by the oracle), then repair and
sparsity (they change weights beyond the plan's slices, so they run after it).

Who decides what to prune: the workflow builds the pipeline from PruneOptions; the
decision itself (`allocation.driver.select`) is made inside `prune-channels` only when the
state holds neither a plan (`--plan`) nor a selection (api `selection=`), because a
pipeline string may name `prune-channels{ratio=..}` with its own options, which only the
pass sees. The pass records the scores and the allocation report in the plan, which a
selection made outside it could not carry without changing the plan format.
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
    pm, sparsify_passes = split_sparsify(pm)
    if repair_pm is not None:
        repair_pm, more = split_sparsify(repair_pm)
        sparsify_passes += more
        repair_pm = repair_pm if repair_pm.passes else None
    return pm, repair_pm, sparsify_passes


def from_options(opts, plan_in):
    """The pruning pipeline the options ask for (prune-blocks first when blocks go)."""
    from graphprune.passes.pruning.prune_blocks import PruneBlocks
    from graphprune.passes.pruning.prune_channels import PruneChannels

    if not opts.prune and plan_in is None:
        return PassManager([])
    passes = [PruneChannels(**opts.channel_options())]
    if opts.remove_blocks or opts.blocks or (plan_in is not None and plan_in.blocks):
        passes.insert(0, PruneBlocks(**opts.block_options()))
    return PassManager(passes)


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
