"""graphprune compile model.onnx --target arm"""
from __future__ import annotations

import sys


def add_arguments(p):
    from graphprune.cli import argtypes as T

    p.add_argument("model", help="input ONNX model (never modified)")
    p.add_argument("--target", default="x86", help="x86 (this CPU), x86-avx2, x86-avx512, arm, rpi4, jetson-orin, "
                                                   "cuda, or TVM target JSON (see `graphprune targets`)")
    p.add_argument("--backend", default="auto", help="auto (default), onnxruntime, tvm")
    p.add_argument("-o", "--output", help="output folder (default: <model>.graphprune/<target>/); written only "
                                          "when new, empty, or written by graphprune before (its "
                                          ".graphprune-output marker)")
    p.add_argument("--force", action="store_true",
                   help="use a non-empty output folder without graphprune's marker: replace only the files "
                        "graphprune writes (model.pruned.onnx, plan.json, report.*, onnxruntime/, tvm/); "
                        "every other file is kept")
    p.add_argument("--ratio", type=T.RATIO, default=0.3, help="channel pruning ratio (default 0.3)")
    p.add_argument("--no-prune", action="store_true", help="compile the model as it is")
    p.add_argument("--criterion", default="l2")
    p.add_argument("--round-to", type=T.POSITIVE_INT, help="width multiple (default: the target's SIMD lanes)")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", type=T.regex)
    p.add_argument("--plan", help="replay a plan.json instead of choosing channels")
    p.add_argument("--tune-trials", type=T.COUNT, default=0, help="TVM MetaSchedule trials (0: no TVM tuning)")
    p.add_argument("--tune-time", type=T.POSITIVE, help="TVM tuning time budget in seconds")
    p.add_argument("--db", help="TVM tuning database root (default ~/.cache/graphprune/tvm-db)")
    p.add_argument("--rpc", metavar="HOST:PORT", help="TVM RPC tracker of the target devices")
    p.add_argument("--rpc-key", help="device key at the tracker")
    p.add_argument("--ort-format", action="store_true", help="also write model.ort (ORT mobile format)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="concrete shape for a model input (repeatable)")
    p.add_argument("--no-check", action="store_true", help="skip the oracle")
    p.add_argument("--max-drop", type=T.NONNEG, metavar="D",
                   help="quality gate with --calib: fail (exit 3) when 1 - mean output cosine exceeds D")
    p.add_argument("--seed", type=T.SEED, default=0)
    p.add_argument("--config", metavar="FILE",
                   help="pipeline config (TOML/YAML/JSON); options given here win. A config can run code "
                        "(calib = \"module:function\" imports and calls it): use only configs you trust")
    p.add_argument("--save-config", metavar="FILE", help="write this run's resolved options as a config")
    p.add_argument("--dry-run", action="store_true", help="show the plan (groups, channels removed); write nothing")
    from graphprune.cli import allocation_flags as alloc_cli

    alloc_cli.add_arguments(p)
    from graphprune.cli import sparsity_flags as sparsity_cli

    sparsity_cli.add_arguments(p)


def parse_shapes(items: list[str]) -> dict | None:
    from graphprune.errors import UsageError

    shapes = {}
    for it in items:
        name, sep, dims = it.rpartition(":")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise UsageError(f"--input-shape {it!r}: expected NAME:D1,D2,...") from None
        if not sep or not name:
            raise UsageError(f"--input-shape {it!r}: expected NAME:D1,D2,...")
    return shapes or None


def run(args) -> int:
    from graphprune.cli import allocation_flags as alloc_cli
    from graphprune.cli.common import human, table
    from graphprune.compile import CompileOptions, compile_model
    from graphprune.config import apply_config, dry_run_compile

    from graphprune.cli.paths import check_cli_paths

    apply_config(args, "compile", check_paths=check_cli_paths)  # no output on an input, before any write
    from graphprune.cli import sparsity_flags as sparsity_cli

    sparsity_opts = sparsity_cli.pass_options(args)  # validated before any work
    sparsity_cli.require_calibration(sparsity_opts, args.calib)
    opts = CompileOptions(target=args.target, backend=args.backend, ratio=args.ratio, prune=not args.no_prune,
                          criterion=args.criterion, round_to=args.round_to, ignore=args.ignore, plan=args.plan,
                          tune_trials=args.tune_trials, tune_time=args.tune_time, db=args.db, rpc=args.rpc,
                          rpc_key=args.rpc_key, ort_format=args.ort_format, check=not args.no_check,
                          out=args.output, seed=args.seed, input_shapes=parse_shapes(args.input_shape),
                          prune_options=alloc_cli.pass_options(args), calib=args.calib,
                          calib_preprocess=args.calib_preprocess, calib_batch=args.calib_batch, max_drop=args.max_drop,
                          calib_samples=args.calib_samples, repair=args.repair, sparsity=sparsity_opts,
                          force=args.force)
    if args.dry_run:
        return dry_run_compile(args.model, opts)
    rep = compile_model(args.model, opts, argv=["graphprune"] + sys.argv[1:])
    b, a = rep["before"], rep["after"]
    rows = [["params", human(b["params"]), human(a["params"]), f"{a['params'] / max(b['params'], 1):.3f}"],
            ["MACs", human(b["macs"]), human(a["macs"]), f"{a['macs'] / max(b['macs'], 1):.3f}"],
            ["model bytes", human(b["bytes"]), human(a["bytes"]), f"{a['bytes'] / max(b['bytes'], 1):.3f}"]]
    if a.get("latency_ms"):
        rows.append(["latency ms (dense ORT vs deployed)", f"{b['latency_ms']:.3f}", f"{a['latency_ms']:.3f}",
                     f"{a['latency_ms'] / b['latency_ms']:.3f}"])
    print(f"target:  {rep['target']['name']} → {rep['target']['tvm']}")
    print(f"backend: {rep['backend']['chosen']} ({rep['backend']['reason']})")
    print(table(rows, ["", "before", "after", "ratio"]))
    if a.get("latency_note"):
        print(f"latency: {a['latency_note']}")
    for name, c in rep["checks"].items():
        print(f"{name}: {'PASS' if c['ok'] else 'FAIL'} ({c['summary']})")
    if rep.get("sparsity_summary"):
        for line in sparsity_cli.summary_lines(rep["sparsity_summary"], max_rows=20):
            print(line)
    for n in rep["notes"]:
        print(f"note: {n}")
    print(f"wrote {rep['out_dir']}/ (report.md, report.json, plan.json, model.pruned.onnx, "
          f"{rep['backend']['chosen']}/)")
    return 0
