"""--dry-run of prune and compile: the workflow's plan step and the pruning, in memory;
shown as a table of the groups that change. Nothing is written."""
from __future__ import annotations


def plan_table(dg, plan, round_to: int = 1) -> str:
    """Groups the plan changes: channels of the group's widest axis, removed, kept, per part
    (graphprune.report.widths: the widths inspect and the reports show too)."""
    from graphprune.cli.common import table
    from graphprune.report.widths import plan_widths

    widths = plan_widths(dg, plan)
    rows = [[w.name, w.channels, w.removed, w.kept, w.parts_text(), w.why_not_multiple(round_to)] for w in widths]
    known = {w.name for w in widths}
    rows += [[e.get("name", "?"), "?", "?", "?", "not in this model's analysis", ""]
             for e in plan.groups if e.get("name") not in known]
    lost, total = sum(w.removed for w in widths), sum(w.channels for w in widths)
    text = table(rows, ["group", "channels", "removed", "kept", "parts", "note"]) if rows else "(no group changes)"
    return text + f"\n{len(plan.groups)} of {len(dg.prunable_groups)} prunable groups change: {lost} of {total} " \
                  f"channels removed, {len(plan.tensors)} tensors sliced"


def done_line(saved_config: str | None = None) -> str:
    """The dry run's last line: what it wrote (only a --save-config config, if asked)."""
    return f"dry run: nothing written but the config {saved_config} (--save-config)" if saved_config else \
        "dry run: nothing written"


def _show(outcome, round_to: int = 1, saved_config: str | None = None) -> int:
    from graphprune.cli.common import human

    before, after = outcome.before, outcome.after
    print(plan_table(outcome.groups_before, outcome.plan, round_to))
    vocab = outcome.plan.vocab
    if vocab:
        print(f"vocabulary (--keep-tokens): {vocab['vocab_size']} -> {len(vocab['kept'])} tokens of input "
              f"{vocab['input']!r}; the model would read new ids")
    if outcome.plan.experts:
        from graphprune.cli.report import _experts_text

        print(f"experts (--keep-experts): {_experts_text(outcome.plan.experts)}")
    print(f"params {human(before.params)} -> {human(after.params)}, MACs {human(before.macs)} -> {human(after.macs)}")
    for line in (outcome.shapes.measured_at() if outcome.shapes is not None else None, outcome.nothing_pruned):
        if line:
            print(line)
    print(done_line(saved_config))
    return 0


def show_prune(model_path, opts, saved_config: str | None = None) -> int:
    """prune --dry-run: the plan prune would apply, and the sparsity that would follow."""
    from graphprune.workflow import run_prune

    outcome = run_prune(model_path, opts, dry_run=True)
    from_pipeline = outcome.sparsify_passes[:-1] if opts.sparsity else outcome.sparsify_passes
    if from_pipeline or opts.sparsity:
        print("then sparsity: " + (", ".join(repr(p) for p in from_pipeline) or opts.sparsity_line()))
    return _show(outcome, opts.round_to, saved_config)


def show_compile(model_path, opts, saved_config: str | None = None) -> int:
    """compile --dry-run: the target's resolution and the plan compile would apply."""
    from graphprune.backends.targets import resolve_target
    from graphprune.workflow.compile import prune_options
    from graphprune.workflow import run_prune

    from graphprune.workflow.quantized import check_options

    target = resolve_target(opts.target)
    popts = prune_options(opts, target)
    check_options(opts.quantize, opts.calib, "onnxruntime" if opts.backend == "ort" else opts.backend)
    print(f"target:  {target.name} ({target.description}); round_to {popts.round_to}")
    print(f"backend: {opts.backend} (requested; chosen when compiling)"
          + ("; then int8 quantization of the ONNX Runtime deployment (--quantize int8)" if opts.quantize == "int8"
             else ""))
    if not (opts.prune or opts.plan):
        if opts.sparsity:
            print(f"sparsity only: {popts.sparsity_line()}")
        print("no pruning (--no-prune)\n" + done_line(saved_config))
        return 0
    outcome = run_prune(model_path, popts, dry_run=True)
    if opts.sparsity:
        print(f"then sparsity: {popts.sparsity_line()}")
    return _show(outcome, popts.round_to, saved_config)
