"""graphprune check model.onnx small.onnx [--plan small.plan.json]"""
from __future__ import annotations


def add_arguments(p):
    from graphprune.cli.argtypes import NONNEG

    p.add_argument("original", help="the input model the plan was made for")
    p.add_argument("pruned", help="the pruned model")
    p.add_argument("--plan", help="plan.json written by prune (default: the one written together with the "
                   "pruned model, found beside it: <name>.plan.json, or plan.json of its compile folder)")
    p.add_argument("--inputs", help=".npz of named inputs to use in addition to random ones")
    p.add_argument("--random", type=int, default=3, help="number of random input sets (default 3; 0 only "
                   "with --inputs), made one at a time at the representative input shapes")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="shape of the random inputs for this input (repeatable); default: static dims, "
                   "else 1x3x224x224 for images, 32 per dynamic dim otherwise")
    p.add_argument("--rtol", type=NONNEG, default=1e-4, help="tolerance relative to each output's max |value|")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="PATH", help="also write PATH.report.{json,md,html} (graphprune.report/1)")


def _prune_run_shapes(model):
    """The shapes the prune run that wrote `model` verified it at (its <name>.report.json
    beside it), or None: check ran a PP-OCR rec verified at 1×3×48×320 at the default
    64×256."""
    from graphprune.cli.common import recorded_shapes

    stem = model.name[:-5] if model.name.endswith(".onnx") else model.name
    recorded = recorded_shapes(model.parent, f"{stem}.report.json", model)
    if recorded is not None:
        recorded.sources = {n: f"the prune run's, from {stem}.report.json" for n in recorded.shapes}
    return recorded


def _pruned_model(given: str, shapes):
    """The pruned model's path and the shapes to check at: a compile folder stands for its
    model.pruned.onnx (the plan is beside it), checked at the shapes the compile recorded
    (as bench takes them) unless --input-shape gave others."""
    from pathlib import Path

    from graphprune.cli.common import recorded_shapes
    from graphprune.errors import UsageError

    if not Path(given).is_dir():
        return given, shapes if shapes is not None else _prune_run_shapes(Path(given))
    inside = Path(given) / "model.pruned.onnx"
    if not inside.is_file():
        raise UsageError(f"{given}: a folder without model.pruned.onnx, not a model",
                         hint="give the pruned .onnx file, or the folder graphprune compile wrote")
    _same_run(inside, Path(given) / "onnxruntime" / "model.onnx")
    print(f"pruned: {inside} (the compile folder's; its deployment records the same plan)")
    recorded = recorded_shapes(Path(given)) if shapes is None else None
    if recorded is not None:
        recorded.sources = {n: "the compile's, from its report.json" for n in recorded.shapes}
    return str(inside), recorded if recorded is not None else shapes


def _same_run(pruned, deployed) -> None:
    """The folder's deployment (a Path) is the pruned model's: the same plan digest. A check of
    the folder proves model.pruned.onnx, and a deployment copied in from another run passed."""
    from graphprune.errors import OracleMismatchError
    from graphprune.outputs import recorded_digest

    if not deployed.is_file():
        return
    mine, theirs = recorded_digest(pruned), recorded_digest(deployed)
    if mine != theirs:
        raise OracleMismatchError(
            f"{deployed} was not written with {pruned.name} (its plan digest {(theirs or 'missing')[:12]}, "
            f"not {(mine or 'missing')[:12]}): the folder's deployment is not the model checked",
            hint="compile again, or check the deployed model itself with --plan")


def run(args) -> int:
    import graphprune as gp
    from graphprune.cli.common import load_inputs, parse_shapes, table
    from graphprune.errors import NotCheckableError, OracleMismatchError, UsageError

    if args.random < 0 or (args.random == 0 and not args.inputs):
        raise UsageError(f"--random {args.random}: the oracle needs at least one input set",
                         hint="give --random N with N >= 1, or --inputs feeds.npz")
    shapes = parse_shapes(args.input_shape)
    from graphprune.cli.report import check_report_option, write_check_report

    check_report_option(args)  # before any work
    args.pruned, shapes = _pruned_model(args.pruned, shapes)
    if args.plan is None:
        from graphprune.outputs import plan_beside

        args.plan = str(plan_beside(args.pruned))
        print(f"plan: {args.plan} (found beside {args.pruned}: the digest the model records)")
    res = gp.check(args.original, args.pruned, args.plan, inputs=load_inputs(args.inputs),
                   n_random=args.random, rtol=args.rtol, seed=args.seed, shapes=shapes)
    write_check_report(args, res)
    if args.json:
        from graphprune.cli.results import check_result, emit

        emit(args, check_result(args, res))  # printed also when the verdict below is a failure
    if res.shapes is not None:
        print(f"random inputs at {res.shapes.describe()}")
    off = "changed by repair" if res.changed_after_pruning else "MISMATCH"  # not a mismatch of the pruning
    rows = [[d.name + (f" (part {d.part})" if d.part else ""), f"{d.max_abs_err:.3e}", f"{d.scale:.3e}",
             "ok" if d.ok else off] for d in res.diffs]
    print(table(rows, ["output", "max |err|", "scale", ""]))
    print(res.summary())
    if res.refused:
        raise OracleMismatchError(f"nothing was compared: {res.refused}")
    if res.unpaired:
        raise OracleMismatchError(res.unpaired, hint="use the .plan.json written together with the model")
    if not res.ok and res.changed_after_pruning:
        raise NotCheckableError(f"cannot check this model against the masked original: {res.changed_after_pruning}",
                                  hint="the run that wrote it (prune or compile) verified the model before its "
                                       "repair and sparsity (the oracle line of its summary); to check the pruning "
                                       "alone here, run it again with --repair none and without --sparsity")
    if not res.ok:
        raise OracleMismatchError("pruned model differs from the masked original")
    return 0
