"""graphprune prune model.onnx --ratio 0.3 -o small.onnx"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from graphprune.cli.paths import plan_path_for  # noqa: F401  (importable from here too)
from graphprune.cli.paths import prune_output_path as output_path

log = logging.getLogger(__name__)


def add_arguments(p):
    from graphprune.cli import argtypes as T

    p.add_argument("model", help="input ONNX model (never modified)")
    p.add_argument("-o", "--output", help="output .onnx (default: <model>.pruned.onnx); the plan goes to <output>.plan.json")
    p.add_argument("--ratio", type=T.RATIO, default=0.3, help="fraction of each group's channels to remove (default 0.3)")
    p.add_argument("--criterion", default="l2", help="importance: l1, l2 (default), random, bn_scale, fpgm, lamp, "
                   "activation, apoz, wanda, obs (data-aware ones need --calib)")
    p.add_argument("--round-to", type=T.POSITIVE_INT, default=1, metavar="N", help="keep widths multiples of N")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", type=T.regex,
                   help="never prune groups touching nodes/tensors matching REGEX (repeatable)")
    p.add_argument("--plan", help="replay this plan.json exactly instead of choosing channels")
    p.add_argument("--pipeline", help="textual pass pipeline, e.g. 'prune-channels{ratio=0.5},dce'")
    p.add_argument("--seed", type=T.SEED, default=0)
    p.add_argument("--remove-blocks", type=T.COUNT, default=0, metavar="K",
                   help="depth pruning: first remove the K least influential residual blocks")
    p.add_argument("--block-criterion", default="influence", help="influence (default) or magnitude")
    p.add_argument("--blocks", action="append", default=[], metavar="ADD_NODE",
                   help="remove this residual block (its Add node, see inspect --blocks; repeatable)")
    p.add_argument("--no-check", action="store_true", help="skip the oracle (on by default)")
    p.add_argument("--no-bench", action="store_true", help="skip the ONNX Runtime latency measurement")
    p.add_argument("--inputs", help=".npz with model inputs for the oracle (random inputs are used too)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="make a dynamic input static (repeatable)")
    p.add_argument("--max-drop", type=T.NONNEG, metavar="D",
                   help="quality gate with --calib: fail (exit 3, nothing written) when 1 - mean cosine of "
                        "pruned vs dense outputs on the calibration data exceeds D")
    p.add_argument("--config", metavar="FILE",
                   help="pipeline config (TOML/YAML/JSON); options given here win. A config can run code "
                        "(calib = \"module:function\" imports and calls it): use only configs you trust")
    p.add_argument("--save-config", metavar="FILE", help="write this run's resolved options as a config")
    p.add_argument("--dry-run", action="store_true", help="show the plan (groups, channels removed); write nothing")
    from graphprune.cli import allocation_flags as alloc_cli

    alloc_cli.add_arguments(p)
    from graphprune.cli import sparsity_flags as sparsity_cli

    sparsity_cli.add_arguments(p)


def _remove_model(path: Path) -> None:
    for p in [path, *path.parent.glob(path.name + "*.data")]:
        p.unlink(missing_ok=True)


def _move_model(staged: Path, out: Path) -> None:
    """Give a staged .onnx (+ .data) its final name; the data file name is in the proto."""
    import onnx

    if not (staged.parent / (staged.name + ".data")).exists():
        import os

        os.replace(staged, out)
        return
    proto = onnx.load(str(staged), load_external_data=False)
    data_old, data_new = staged.name + ".data", out.name + ".data"
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location" and e.value == data_old:
                e.value = data_new
    if (staged.parent / data_old).exists():
        import os

        os.replace(staged.parent / data_old, out.parent / data_new)
    onnx.save(proto, str(staged))
    import os

    os.replace(staged, out)


def _set_metadata(path: Path, key: str, value: str) -> None:
    """Record key=value in a staged .onnx file's metadata (its tensors stay where they are)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
            break
    else:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _size(path: Path) -> int:
    """An .onnx file with its external data files."""
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + "*.data"))


def _nonzero(model) -> int:
    """Parameters that are not exact zeros of the sparsified tensors."""
    from graphprune.analysis.cost import model_cost
    from graphprune.sparsity_meta import zero_count

    return int(model_cost(model).params - zero_count(model)[0])




def run(args) -> int:
    temps: list[Path] = []  # staged model files of this run: removed on any exit (SIGTERM included)
    try:
        return _run(args, temps)
    finally:
        for t in temps:
            _remove_model(t)


def _run(args, temps: list) -> int:
    import graphprune as gp
    from graphprune import oracle
    from graphprune.analysis.cost import model_cost
    from graphprune.cli.common import human, load_inputs, ort_latency_ms, same_file, table
    from graphprune.errors import OracleMismatchError, QualityGateError, UsageError
    from graphprune.passes import PassContext, PassManager
    from graphprune.plan import Plan, file_sha256

    from graphprune.config import apply_config, dry_run

    from graphprune.cli.paths import check_cli_paths

    apply_config(args, "prune", check_paths=check_cli_paths)  # no output on an input, before any write
    from graphprune.cli import sparsity_flags as sparsity_cli

    sparsity_opts = sparsity_cli.pass_options(args)  # validated before any work
    sparsity_cli.require_calibration(sparsity_opts, args.calib)
    src = Path(args.model)
    out = output_path(args)
    if out.suffix != ".onnx":
        raise UsageError(f"output {out} should end in .onnx")
    plan_out = plan_path_for(out)
    if src.exists() and (same_file(src, out) or same_file(src, plan_out)):
        raise UsageError("the output would overwrite the input model", hint="choose another -o")
    if out.parent.exists() and not os.access(out.parent, os.W_OK):
        raise UsageError(f"cannot write to {out.parent}")
    from graphprune import outputs
    from graphprune.cli.compile_cmd import parse_shapes

    shapes = parse_shapes(args.input_shape)
    model = gp.load(src, input_shapes=shapes)
    if not args.no_check:  # fail early, and as the model's fault, if ORT cannot run the input
        oracle.input_session(str(src))
    before = model_cost(model)
    from graphprune.ir.serialize import BIG_MODEL_BYTES, model_nbytes

    big = model_nbytes(model) > BIG_MODEL_BYTES
    before_bytes = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(src.name + "*.data"))

    ctx = PassContext()
    if args.plan:
        ctx.results["plan_in"] = Plan.load(args.plan)
        outputs.refuse_replay_on_own_product(model, ctx.results["plan_in"], model_name=str(src),
                                             plan_name=str(args.plan))
        digest = ctx.results["plan_in"].model.get("sha256")
        if digest and digest != file_sha256(src):
            log.warning("plan %s was made for a different file (sha256 differs); applying it if it fits",
                        args.plan)
    from graphprune.cli import allocation_flags as alloc_cli
    from graphprune.passes.reconstruction import repair

    ctx.results["calibration"] = alloc_cli.load(args, model)
    repair_pm = None
    sparsify_passes = []
    if args.pipeline:
        pm, repair_pm = repair.split_repair(PassManager.parse(args.pipeline))
        pm, sparsify_passes = sparsity_cli.split_sparsify(pm)
        if repair_pm is not None:
            repair_pm, more = sparsity_cli.split_sparsify(repair_pm)
            sparsify_passes += more
            repair_pm = repair_pm if repair_pm.passes else None
    else:
        opts = {"ratio": args.ratio, "criterion": args.criterion, "round_to": args.round_to, "seed": args.seed}
        if args.ignore:
            opts["ignore"] = args.ignore
        opts.update(alloc_cli.pass_options(args))
        from graphprune.passes.pruning.prune_channels import PruneChannels

        passes = [PruneChannels(**opts)]
        plan_in = ctx.results.get("plan_in")
        if args.remove_blocks or args.blocks or (plan_in is not None and plan_in.blocks):
            from graphprune.passes.pruning.prune_blocks import PruneBlocks

            block_opts = {"n": args.remove_blocks, "criterion": args.block_criterion}
            if args.blocks:
                block_opts["blocks"] = args.blocks
            passes.insert(0, PruneBlocks(**block_opts))
        pm = PassManager(passes)
    if args.dry_run:
        if sparsity_opts or sparsify_passes:
            print("then sparsity: " + (", ".join(repr(p) for p in sparsify_passes) or
                                       "sparsify{" + ",".join(f"{k}={v}" for k, v in sparsity_opts.items()) + "}"))
        return dry_run(model, pm, ctx, args.ignore)
    pm.run(model, ctx)
    plan: Plan = ctx.results.get("plan") or Plan(tensors=[], groups=[])
    plan.model = {"path": str(src), "sha256": file_sha256(src)}
    ctx.analyses.clear()  # analyses pin the pre-pruning tensors; large models need them gone
    staged = None
    if big:
        # large model: write it first (external data) and drop the in-memory tensors; the
        # oracle then works from files, one ORT session at a time
        staged = out.with_name(f"{outputs.temp_prefix(out.name)}staging.onnx")
        temps.append(staged)
        from graphprune.frontends.onnx import save_onnx

        save_onnx(model, staged, external_data=True)
        model = gp.load(staged)  # lazily backed by the file: the sliced arrays can go
        import gc

        gc.collect()  # the old IR graph is cyclic (nodes <-> values): free it now, not later
    calib = ctx.results.get("calibration")  # the oracle's random inputs take its shapes (input_shapes)
    calib_feeds = calib.first() if calib is not None and not args.no_check else None
    if not args.no_check and big:
        try:
            res = oracle.check_files(str(src), str(staged), plan, inputs=load_inputs(args.inputs), shapes=shapes,
                                     calib=calib_feeds)
        except BaseException:
            _remove_model(staged)
            raise
    elif not args.no_check:
        original = gp.load(src, fold=False)
        res = oracle.check(original, model, plan, inputs=load_inputs(args.inputs), shapes=shapes, calib=calib_feeds)
    if not args.no_check:  # both paths: a FAIL (or nothing compared) writes nothing
        if res.shapes is not None:
            print(f"oracle inputs: {res.shapes.describe()}")
        print(res.summary())
        if not res.ok:
            if staged is not None:
                _remove_model(staged)
            raise OracleMismatchError(
                f"nothing was compared: {res.refused}" if res.refused else
                "pruned model differs from the masked original: " +
                ", ".join(f"{d.name} err {d.max_abs_err:.3g} (scale {d.scale:.3g})" for d in res.diffs if not d.ok),
                hint="nothing was written; please report this model")
    repaired = False
    for r in repair.run_repair(model, ctx, args.repair, repair_pm):  # after the oracle: repair changes weights
        repaired = repaired or not r["reverted"]
        print(f"repair {r['pass']}: output error on calibration data {r['error_before']:.4g} -> "
              f"{r['error_after']:.4g}" + (" (undone: no improvement)" if r["reverted"] else ""))
    sparsified = None
    if sparsity_opts or sparsify_passes:  # after the oracle and repair: zeros beyond the plan's slices
        from graphprune.passes.sparsity.sparsify import Sparsify

        if sparsity_opts:
            sparsify_passes.append(Sparsify(**sparsity_opts))
        PassManager(sparsify_passes).run(model, ctx)
        sparsified = ctx.results["sparsity"]
        for line in sparsity_cli.summary_lines(sparsified):
            print(line)
    if args.max_drop is not None:
        calib = ctx.results.get("calibration")
        if calib is None:
            if staged is not None:
                _remove_model(staged)
            raise UsageError("--max-drop needs calibration data (--calib)")
        fid = oracle.output_fidelity(str(src), model, calib.batches())
        print(f"fidelity on calibration data: mean cosine {fid['mean_cosine']:.4f} (drop {fid['drop']:.4f}, "
              f"max {args.max_drop:g}), min {fid['min_cosine']:.4f} over {fid['samples']} outputs")
        if fid["drop"] > args.max_drop:
            if staged is not None:
                _remove_model(staged)
            raise QualityGateError(f"output fidelity drop {fid['drop']:.4f} exceeds --max-drop {args.max_drop:g}",
                                   hint="nothing was written; prune less, repair (--repair), or raise --max-drop")
    # One result: the model records its plan's digest (check and --plan refuse a pair that
    # differs). The model is written to a temporary file, then the plan, then the model is
    # renamed: a run interrupted anywhere leaves either the old pair, or a mismatch that
    # the digest exposes, and never a half file under the final names.
    digest = outputs.plan_digest(plan)
    outputs.clean_stale_temps(out.parent)
    try:
        if staged is None or repaired or sparsified:
            lazy_backing = staged  # a large model's tensors are still read from this file
            staged = out.with_name(f"{outputs.temp_prefix(out.name)}final.onnx")
            temps.append(staged)
            model.metadata_props[outputs.PLAN_KEY] = digest
            gp.save(model, staged)
            if lazy_backing is not None:
                _remove_model(lazy_backing)
        else:
            _set_metadata(staged, outputs.PLAN_KEY, digest)
        plan.save(plan_out)
        _move_model(staged, out)
    except BaseException:
        _remove_model(staged)
        raise
    for extra in alloc_cli.write_extras(ctx, plan_out):
        print(f"wrote {extra}")
    after = model_cost(model)
    rows = [["params", human(before.params), human(after.params), f"{after.params / max(before.params, 1):.3f}"],
            ["MACs", human(before.macs), human(after.macs), f"{after.macs / max(before.macs, 1):.3f}"],
            *([["nonzero params", human(before.params), human(_nonzero(model)),
                f"{_nonzero(model) / max(before.params, 1):.3f}"]] if sparsified else []),
            ["file size", human(before_bytes) + "B", human(_size(out)) + "B",
             f"{_size(out) / max(before_bytes, 1):.3f}"]]
    if not args.no_bench:
        t0 = ort_latency_ms(str(src))
        t1 = ort_latency_ms(str(out))
        rows.append(["ORT latency (median, ms)", f"{t0:.3f}", f"{t1:.3f}", f"{t1 / max(t0, 1e-9):.3f}"])
    changed_groups = len(plan.groups)
    print(f"pruned {changed_groups} groups, sliced {len(plan.tensors)} tensors"
          + (f", removed {len(plan.blocks)} residual blocks" if plan.blocks else ""))
    print(table(rows, ["", "before", "after", "ratio"]))
    print(f"wrote {out} and {plan_out}")
    return 0
