"""graphprune compile model.onnx --target arm"""
from __future__ import annotations

import sys


def add_arguments(p):
    from graphprune.cli import argtypes as T
    from graphprune.workflow.options import DEFAULTS

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
    p.add_argument("--ratio", type=T.RATIO, default=DEFAULTS.ratio,
                   help=f"channel pruning ratio (default {DEFAULTS.ratio:g})")
    p.add_argument("--no-prune", action="store_true", help="compile the model as it is")
    p.add_argument("--criterion", default=DEFAULTS.criterion)
    p.add_argument("--round-to", type=T.round_to, help="width multiple, or auto (default: the target's SIMD lanes)")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", type=T.regex)
    p.add_argument("--plan", help="replay a plan.json instead of choosing channels")
    p.add_argument("--slice-hidden", type=T.RATIO, metavar="R",
                   help="pre-norm transformers (RMSNorm or LayerNorm): rotate the residual stream (needs --calib) and remove the "
                        "fraction R of the hidden size first")
    from graphprune.cli.prune_cmd import add_vocab_arguments

    add_vocab_arguments(p)
    p.add_argument("--tune-trials", type=T.COUNT, default=0, help="TVM MetaSchedule trials for the model, shared by its kernels, at least one "
                   "each (0: no TVM tuning)")
    p.add_argument("--tune-time", type=T.POSITIVE, help="TVM tuning time budget in seconds")
    p.add_argument("--db", help="TVM tuning database root (default $XDG_CACHE_HOME/graphprune/tvm-db, "
                                        "else ~/.cache/graphprune/tvm-db)")
    p.add_argument("--rpc", metavar="HOST:PORT", help="TVM RPC tracker of the target devices")
    p.add_argument("--rpc-key", help="device key at the tracker")
    p.add_argument("--ort-format", action="store_true", help="also write model.ort (ORT mobile format)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="concrete shape for a model input (repeatable)")
    p.add_argument("--no-check", action="store_true", help="skip the oracle")
    p.add_argument("--max-drop", type=T.NONNEG, metavar="D",
                   help="quality gate with --calib: fail (exit 3) when 1 - mean output cosine exceeds D "
                        "(default with --calib: 0.1; 2 turns it off)")
    p.add_argument("--min-speedup", type=T.POSITIVE, metavar="F",
                   help="fail (exit 5, nothing written) unless the deployed pruned model is at least F times "
                        "faster than the input model in ONNX Runtime, measured side by side on this machine "
                        "(1.0: unless it is faster at all)")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: after pruning and repair, ONNX Runtime static quantization of the ONNX Runtime "
                        "deployment (QDQ, per-channel int8 weights, int8 activations) calibrated on the --calib "
                        "data (required); reported with its own output cosine vs the dense float input (gated "
                        "by --max-drop) and latency. Not with --backend tvm")
    p.add_argument("--seed", type=T.SEED, default=DEFAULTS.seed)
    from graphprune.cli.config_file import add_pipeline_arguments

    add_pipeline_arguments(p)


def parse_shapes(items: list[str]) -> dict | None:
    """--input-shape values (graphprune.cli.common.parse_shapes; importable from here too)."""
    from graphprune.cli.common import parse_shapes as parse

    return parse(items)


def _default_db() -> str:
    from graphprune.cache import tvm_db_root

    return str(tvm_db_root())


def options(args):
    """CompileOptions from the parsed flags (sparsity flags validated now, before any work)."""
    from graphprune.cli import allocation_flags as alloc_cli
    from graphprune.cli import sparsity_flags as sparsity_cli
    from graphprune.workflow.compile import CompileOptions

    sparsity_opts = sparsity_cli.pass_options(args)
    sparsity_cli.require_calibration(sparsity_opts, args.calib)
    return CompileOptions(target=args.target, backend=args.backend, ratio=args.ratio, prune=not args.no_prune,
                          criterion=args.criterion, round_to=args.round_to, ignore=args.ignore, plan=args.plan,
                          slice_hidden=args.slice_hidden, keep_tokens=args.keep_tokens,
                          token_input=args.token_input, keep_experts=args.keep_experts,
                          tune_trials=args.tune_trials, tune_time=args.tune_time, db=args.db or _default_db(),
                          rpc=args.rpc, rpc_key=args.rpc_key, ort_format=args.ort_format, check=not args.no_check,
                          out=args.output, seed=args.seed, input_shapes=parse_shapes(args.input_shape),
                          prune_options=alloc_cli.pass_options(args), repair=args.repair,
                          sparsity=sparsity_opts, force=args.force, min_speedup=args.min_speedup,
                          quantize=args.quantize,
                          **alloc_cli.calibration_options(args))


def run(args) -> int:
    from graphprune.cli import dry_run
    from graphprune.cli.config_file import apply_config
    from graphprune.cli.paths import check_cli_paths
    from graphprune.workflow.compile import compile_model

    apply_config(args, "compile", check_paths=check_cli_paths)  # no output on an input, before any write
    from graphprune.cli.prune_cmd import refuse_flags_ignored

    refuse_flags_ignored(args, "compile")
    opts = options(args)
    if args.dry_run:
        return dry_run.show_compile(args.model, opts, args.save_config)
    rep = compile_model(args.model, opts, argv=["graphprune"] + sys.argv[1:])
    print_report(rep)  # on stderr with --json, which prints report.json (graphprune.cli.results)
    if args.json:
        from graphprune.cli.results import compile_result, emit

        return emit(args, compile_result(rep))
    return 0


def _rows(rep: dict) -> list[list]:
    from graphprune.cli.common import human

    b, a = rep["before"], rep["after"]
    rows = [["params", human(b["params"]), human(a["params"]), f"{a['params'] / max(b['params'], 1):.3f}"],
            ["MACs", human(b["macs"]), human(a["macs"]), f"{a['macs'] / max(b['macs'], 1):.3f}"],
            ["model bytes", human(b["bytes"]), human(a["bytes"]), f"{a['bytes'] / max(b['bytes'], 1):.3f}"]]
    if a.get("latency_ms"):
        rows.append(["latency ms (dense ORT vs deployed)", f"{b['latency_ms']:.3f}", f"{a['latency_ms']:.3f}",
                     f"{a['latency_ms'] / b['latency_ms']:.3f}"])
    return rows


def latency_lines(rep: dict) -> list[str]:
    """The measured numbers (dense input in ORT, pruned in ORT, pruned in TVM), then the verdict."""
    lat = rep.get("latency") or {}
    nums = [f"{k} {v:.3f} ms" for k, v in (lat.get("measured_ms") or {}).items() if v is not None]
    lines = [f"latency at the representative shape: {', '.join(nums)}"] if nums and "speedup" in lat else []
    if lat.get("line"):
        lines.append(lat["line"] if lat["line"].startswith("latency: ") else f"latency: {lat['line']}")
    if lat.get("widths_line"):
        lines.append(lat["widths_line"])
    return lines


def print_report(rep: dict) -> None:
    from graphprune.cli import sparsity_flags as sparsity_cli
    from graphprune.cli.common import basis_lines, table
    from graphprune.input_shapes import InputShapes

    print(f"target:  {rep['target']['name']} → {rep['target']['tvm']}")
    print(f"backend: {rep['backend']['chosen']} ({rep['backend']['reason']})")
    print(table(_rows(rep), ["", "before", "after", "ratio"]))
    shapes = InputShapes.from_json(rep["input_shapes"]) if rep.get("input_shapes") else None
    for line in basis_lines(shapes.measured_at() if shapes is not None else None, rep.get("macs_uncounted")):
        print(line)
    if rep.get("budget"):
        print(rep["budget"]["line"])
    for line in latency_lines(rep):
        print(line)
    for name, c in rep["checks"].items():
        print(f"{name}: {'PASS' if c['ok'] else 'FAIL'} ({c['summary']})")
    for line in sparsity_cli.summary_lines(rep["sparsity_summary"], max_rows=20) if rep.get("sparsity_summary") else []:
        print(line)
    for n in rep["notes"]:
        print(f"note: {n}")
    from graphprune.workflow.search import table as search_table

    for line in search_table(rep.get("search") or {}):  # the candidates and their scores, as prune prints them
        print(line)
    if rep.get("accuracy"):
        print(rep["accuracy"])
    if rep.get("quantization"):
        print(rep["quantization"]["line"])
    vocab = ", vocab.json: the token id map, the model reads new ids" if "vocab" in rep.get("checks", {}) else ""
    from pathlib import Path

    chosen = rep["backend"]["chosen"]
    # a backend built in this run but not chosen stays in the folder too: say so (a folder
    # kept from an earlier run, for files of the user's in it, was not built now)
    built = {b for b, r in (rep["backend"].get("results") or {}).items() if isinstance(r, dict) and not r.get("skipped")}
    others = [f"{b}/ (built, not chosen)" for b in ("onnxruntime", "tvm")
              if b != chosen and b in built and (Path(rep["out_dir"]) / b).is_dir()]
    print(f"wrote {rep['out_dir']}/ (report.md, report.json, plan.json, model.pruned.onnx, "
          f"{chosen}/{vocab}{''.join(', ' + o for o in others)})\nreport: {rep['out_dir']}/report.html")
