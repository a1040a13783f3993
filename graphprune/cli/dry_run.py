"""--dry-run of prune and compile: the workflow's plan step and the pruning, in memory;
shown as a table of the groups that change. Nothing is written."""
from __future__ import annotations


def plan_table(dg, plan) -> str:
    """Groups the plan changes: channels of the group's activation, removed, kept."""
    from graphprune.cli.common import table

    by_name = {g.name: g for g in dg.groups}
    rows, lost, total = [], 0, 0
    for entry in plan.groups:
        g = by_name.get(entry.get("name"))
        if g is None:
            rows.append([entry.get("name", "?"), "?", len(entry.get("removed_atoms", ())), "?"])
            continue
        ref = next((s for s in g.slots if not s.virtual and s not in g.roles), g.slots[0])
        n = g.sizes[ref]
        r = len(g.removed_indices(ref, entry.get("removed_atoms", ())))
        rows.append([g.name, n, r, n - r])
        lost, total = lost + r, total + n
    text = table(rows, ["group", "channels", "removed", "kept"]) if rows else "(no group changes)"
    return text + f"\n{len(plan.groups)} of {len(dg.prunable_groups)} prunable groups change: {lost} of {total} " \
                  f"channels removed, {len(plan.tensors)} tensors sliced"


def _show(outcome) -> int:
    from graphprune.cli.common import human

    before, after = outcome.before, outcome.after
    print(plan_table(outcome.groups_before, outcome.plan))
    print(f"params {human(before.params)} -> {human(after.params)}, MACs {human(before.macs)} -> {human(after.macs)}")
    if outcome.shapes is not None:
        print(outcome.shapes.measured_at())
    print("dry run: nothing written")
    return 0


def show_prune(model_path, opts) -> int:
    """prune --dry-run: the plan prune would apply, and the sparsity that would follow."""
    from graphprune.workflow import run_prune

    outcome = run_prune(model_path, opts, dry_run=True)
    from_pipeline = outcome.sparsify_passes[:-1] if opts.sparsity else outcome.sparsify_passes
    if from_pipeline or opts.sparsity:
        print("then sparsity: " + (", ".join(repr(p) for p in from_pipeline) or opts.sparsity_line()))
    return _show(outcome)


def show_compile(model_path, opts) -> int:
    """compile --dry-run: the target's resolution and the plan compile would apply."""
    from graphprune.backends.targets import resolve_target
    from graphprune.workflow.compile import prune_options
    from graphprune.workflow import run_prune

    target = resolve_target(opts.target)
    popts = prune_options(opts, target)
    print(f"target:  {target.name} ({target.description}); round_to {popts.round_to}")
    print(f"backend: {opts.backend} (requested; chosen when compiling)")
    if not (opts.prune or opts.plan):
        if opts.sparsity:
            print(f"sparsity only: {popts.sparsity_line()}")
        print("no pruning (--no-prune)\ndry run: nothing written")
        return 0
    outcome = run_prune(model_path, popts, dry_run=True)
    if opts.sparsity:
        print(f"then sparsity: {popts.sparsity_line()}")
    return _show(outcome)
