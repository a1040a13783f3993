"""Accuracy after pruning without fine-tuning, on real pretrained models from PyPI packages.

    python benchmarks/accuracy/run.py                       # everything (see README.md)
    python benchmarks/accuracy/run.py --models rec,cls --out /tmp/a   # a part ...
    python benchmarks/accuracy/run.py --merge /tmp/a /tmp/b          # ... and merge parts
    python benchmarks/accuracy/run.py --quick               # tiny sets, checks the script
    python benchmarks/accuracy/run.py --rows defaults --models rec,minilm   # defaults rows only,
                                                            # merged into results.json/md here

Models: PP-OCRv4 recognizer (exact match), detector (line recall), orientation
classifier (accuracy) on text rendered with Pillow (ocr_tasks.py); all-MiniLM-L6-v2
(embedding cosine vs dense) and SmolLM2-135M (perplexity) on pydoc_data.topics
(text_tasks.py). For each MAC target (remove 20/30/50%) and allocation (uniform, global,
sensitivity; L2 magnitude criterion) the model is pruned, checked with the oracle,
evaluated, repaired on calibration data disjoint from the evaluation data, and evaluated
again. Then one "best configuration" row per model at 30% (BEST below), and the
``target_latency=0.5`` check on a ResNet-18-shaped model. Writes results.json/results.md
beside this file (torch_pruning_compare.py adds its own section to both).

Defaults rows (issue 13, ``--rows defaults``): what ``graphprune prune model.onnx
--target-macs T --calib calib.npz`` gives with no other flag — ``run_prune`` with
``PruneOptions(allocation={"target_macs": T}, calib=...)`` and nothing else, so whatever
defaults graphprune has when the row runs are measured (its git revision is recorded) —
evaluated on held-out data (rec: in-domain and shifted lines; minilm: cosine and R@1).
``--rows flags`` runs the best configuration (BEST_FLAGS) the same way, on the same data.
Without ``--out`` these rows are merged into the results here (other rows kept).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import graphprune as gp  # noqa: E402
import onnx_ir as ir  # noqa: E402
from graphprune.runtime import oracle, ort  # noqa: E402
from graphprune.ir.serialize import clone  # noqa: E402
from graphprune.passes import PASSES, PassContext, PassManager  # noqa: E402

import accuracy_report as report  # noqa: E402

DATE = "2026-11-22"
MACHINE = "2 vCPU (shared with other jobs), ONNX Runtime CPU provider"
TARGETS = (0.8, 0.7, 0.5)
METHODS = ("uniform", "global", "sensitivity")
ALL_MODELS = ("rec", "det", "cls", "minilm", "smollm")
# repair of the grid rows (the same for every row of a model)
REPAIR = {"rec": "lsq-reconstruct", "det": "lsq-reconstruct", "cls": "lsq-reconstruct",
          "minilm": "lsq-reconstruct", "smollm": ""}
# SmolLM2: no repair in the grid. lsq-reconstruct solves layer waves in order, one pair of
# ONNX Runtime sessions of the 540 MB model per wave (30-60 waves): ~10+ min per row here.
# The best configuration found per model at 30% fewer MACs (see README.md: how it was chosen).
BEST = {
    "rec": {"criterion": "wanda", "allocation": "uniform", "repair": "bias-compensate,lsq-reconstruct"},
    "det": {"criterion": "wanda", "allocation": "sensitivity", "repair": "bias-compensate,lsq-reconstruct"},
    "cls": {"criterion": "wanda", "allocation": "uniform", "repair": "bias-compensate,lsq-reconstruct"},
    "minilm": {"criterion": "wanda", "allocation": "global", "repair": "lsq-reconstruct{damp=0.03,layers=all}",
               "calib_size": 800, "calib_by_length": True},
    "smollm": {"criterion": "wanda", "allocation": "uniform", "options": {"protect": ["self_attn"]}, "repair": ""},
}
ORACLE_RTOL = 1e-4  # on logits (see oracle_on_logits)
# the defaults rows: MAC targets per model (issue 13's goals: rec at 70% and 50%, the others at 70%)
DEFAULTS_TARGETS = {"rec": (0.7, 0.5)}
DEFAULTS_TARGET = (0.7,)
# the best configuration as prune flags (run_prune options), for the "flags" rows
BEST_FLAGS = {"rec": {"criterion": "wanda", "allocation": "uniform", "repair": "bias,lsq"}}


def logits_view(model: ir.Model) -> ir.Model:
    """A copy whose outputs made by Softmax / Sigmoid are replaced by their inputs (logits)."""
    m = clone(model)
    for k, v in enumerate(list(m.graph.outputs)):
        p = v.producer()
        if p is not None and p.op_type in ("Softmax", "Sigmoid"):
            m.graph.outputs[k] = p.inputs[0]
    return m


def oracle_on_logits(path, pruned: ir.Model, plan, inputs) -> dict:
    """The oracle on the logits. A softmax output turns float32 rounding of large logits
    into large probability differences between nearly tied classes (a pruned, unrepaired
    recognizer has logits ~3e4 where the dense one has ~40): the probabilities are
    compared too, but their error is reported, not judged (see README.md, "oracle")."""
    orig = ir.load(str(path))
    on_logits = oracle.check(logits_view(orig), logits_view(pruned), plan, inputs=inputs, n_random=0,
                             rtol=ORACLE_RTOL)
    on_outputs = oracle.check(orig, pruned, plan, inputs=inputs, n_random=0, rtol=ORACLE_RTOL)
    return {"oracle": on_logits.ok, "oracle_worst_rel_err": on_logits.worst_relative,
            "output_worst_abs_err": max((d.max_abs_err for d in on_outputs.diffs), default=0.0),
            "output_oracle_ok": on_outputs.ok}


def prune_one(task, base: ir.Model, target: float, cfg: dict, calib=None) -> dict:
    model = clone(base)
    ctx = PassContext()
    ctx.results["calibration"] = calib or task.calib
    opts = {"criterion": cfg["criterion"], "allocation": cfg["allocation"], "target_macs": target,
            "sens_ratios": task.sens_ratios, "sens_batches": 1, **cfg.get("options", {})}
    t0 = time.perf_counter()
    PassManager([PASSES["prune-channels"](**opts)]).run(model, ctx)
    plan = ctx.results["plan"]
    info = plan.settings.get("allocation_result", {})
    row = {"model": task.name, "method": cfg["allocation"], "criterion": cfg["criterion"],
           "options": cfg.get("options", {}), "target_macs": target, "macs_kept": info.get("predicted_ratio"),
           "target_reached": info.get("reached"), "groups_pruned": len(plan.groups),
           "prune_s": round(time.perf_counter() - t0, 1)}
    row.update(oracle_on_logits(task.path, model, plan, task.oracle_inputs))
    row["metric"] = task.evaluate(model)
    row["repair_passes"] = cfg.get("repair", "")
    t0 = time.perf_counter()
    if cfg.get("repair"):
        PassManager.parse(cfg["repair"]).run(model, ctx)
        row["metric_repaired"] = task.evaluate(model)
    else:
        row["metric_repaired"] = None
    row["repair_s"] = round(time.perf_counter() - t0, 1)
    row["repair"] = [{k: r[k] for k in ("pass", "error_before", "error_after", "reverted")}
                     for r in ctx.results.get("repair", [])]
    return row


def _revision() -> str:
    import subprocess

    repo = str(HERE.parents[1])
    try:
        rev = subprocess.run(["git", "-C", repo, "log", "-1", "--format=%h %s"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        rev = rev if len(rev) <= 60 else rev[:57] + "..."
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "graphprune"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + (" (+ uncommitted changes in graphprune/)" if dirty else "")


def _cli_difference(path, target: float, opts) -> dict:
    """Fields in which `graphprune prune PATH --target-macs T --calib calib.npz` (parsed by
    graphprune's own CLI) would differ from `opts` ({} = the row is the CLI's run)."""
    from dataclasses import fields

    from graphprune.cli import prune_cmd
    from graphprune.cli.main import build_parser

    args = build_parser().parse_args(["prune", str(path), "--target-macs", str(target), "--calib", "calib.npz"])
    cli = prune_cmd.options(args)
    return {f.name: [repr(getattr(cli, f.name)), repr(getattr(opts, f.name))] for f in fields(opts)
            if f.name != "calib" and getattr(cli, f.name) != getattr(opts, f.name)}


def run_defaults(task, target: float, kind: str = "defaults") -> dict:
    """One run_prune as a user runs it: `kind` "defaults" = --target-macs and --calib only;
    "flags" = with BEST_FLAGS. Evaluated with task.goal_metrics (held-out data)."""
    from graphprune.errors import GraphpruneError
    from graphprune.workflow import PruneOptions, run_prune

    calib = task.goal_calibration()
    if kind == "defaults":
        opts = PruneOptions(allocation={"target_macs": target}, calib=calib)
    else:
        f = BEST_FLAGS[task.name]
        opts = PruneOptions(criterion=f["criterion"], allocation={"allocation": f["allocation"], "target_macs": target},
                            repair=f["repair"], calib=calib)
    row = {"model": task.name, "kind": kind, kind: True, "target_macs": target, "graphprune": _revision(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "calibration": calib.description,
           "evaluation": task.goal_description(),
           "flags": "--target-macs %g --calib calib.npz" % target + ("" if kind == "defaults" else
                    " --criterion {criterion} --allocation {allocation} --repair {repair}".format(**BEST_FLAGS[task.name]))}
    if kind == "defaults":
        try:
            row["cli_difference"] = _cli_difference(task.path, target, opts)
        except Exception as e:  # noqa: BLE001  (recorded, not fatal: the row is still run_prune's)
            row["cli_difference"] = {"error": f"{type(e).__name__}: {e}"}
    t0 = time.perf_counter()
    try:
        out = run_prune(str(task.path), opts)
    except GraphpruneError as e:  # e.g. a quality gate: nothing written, which is what the user gets
        row.update(seconds=round(time.perf_counter() - t0, 1), refused=f"{type(e).__name__}: {e}", metrics=None)
        return row
    row["seconds"] = round(time.perf_counter() - t0, 1)
    plan = out.plan
    st = plan.settings or {}
    info = st.get("allocation_result", {})
    row.update(criterion=st.get("criterion"), method=st.get("allocation") or info.get("allocation"),
               macs_kept=round(out.after.macs / max(out.before.macs, 1), 4), macs_before=out.before.macs,
               macs_after=out.after.macs, shapes=str(getattr(out.shapes, "shapes", out.shapes)),
               target_reached=info.get("reached"), groups_pruned=len(plan.groups),
               oracle=None if out.oracle is None else bool(out.oracle.ok),
               repair=[{k: r.get(k) for k in ("pass", "error_before", "error_after", "reverted")} for r in out.repair],
               fidelity=out.fidelity,
               settings={k: v for k, v in st.items() if k not in ("allocation_result", "repair")})
    row["metrics"] = task.goal_metrics(out.model)
    return row


def dense_goal_metrics(task) -> dict:
    return task.goal_metrics(task.path if task.name in ("minilm", "smollm") else gp.load(task.path))


def make_task(name: str, args):
    if name in ("rec", "det", "cls"):
        from ocr_tasks import OcrTask

        return OcrTask(name, args.quick)
    import text_tasks as T

    wd = T.workdir(args.workdir)
    return (T.MiniLMTask if name == "minilm" else T.SmolLMTask)(wd, args.quick)


def best_calibration(task, cfg):
    size = cfg.get("calib_size")
    if not size:
        return None
    return task.calibration(size, by_length=True) if cfg.get("calib_by_length") else task.calibration(size)


def run_model(name: str, args, res: dict, out: Path, t_all: float) -> None:
    task = make_task(name, args)
    base = gp.load(task.path)
    dense = task.evaluate(base)
    d = {"file": task.file, "metric_name": task.metric_name, "higher_better": task.higher_better, "dense": dense,
         "eval_size": task.eval_size, "calibration": task.calib.description, "repair": REPAIR[name], "rows": []}
    res["models"][name] = d
    log(f"{name}: dense {task.metric_name} = {dense:.4f}")
    kinds = [k for k in ("defaults", "flags") if k in args.rows and (k == "defaults" or name in BEST_FLAGS)]
    if kinds:
        d["dense_goal"] = dense_goal_metrics(task)
        d["goal_evaluation"] = task.goal_description()
        log(f"{name}: dense on the held-out sets {d['dense_goal']} ({d['goal_evaluation']})")
        targets = [float(t) for t in args.targets.split(",")] if args.targets_given else \
            DEFAULTS_TARGETS.get(name, DEFAULTS_TARGET)
        for kind in kinds:
            for target in targets:
                row = run_defaults(task, target, kind)
                d["rows"].append(row)
                log(f"  {name} {kind} keep {target:g}: {row.get('refused') or row['metrics']} "
                    f"({row.get('criterion')}/{row.get('method')}, repair "
                    f"{[r['pass'] for r in row.get('repair', []) if not r['reverted']]}, "
                    f"macs kept {row.get('macs_kept')}, {row['seconds']}s)")
                if row.get("cli_difference"):
                    log(f"  NOTE: the CLI would differ from this run in {row['cli_difference']}")
                finish(res, out, t_all)
    targets = (0.7,) if args.quick else [float(t) for t in args.targets.split(",")]
    for target in targets if "grid" in args.rows else ():
        for method in args.methods.split(","):
            row = prune_one(task, base, target, {"criterion": "l2", "allocation": method, "repair": REPAIR[name]})
            d["rows"].append(row)
            log_row(row)
            finish(res, out, t_all)  # partial results survive an interrupted run
    if "best" not in args.rows:
        return
    cfg = BEST[name]
    row = prune_one(task, base, 0.7, cfg, best_calibration(task, cfg))
    row["best"] = True
    row["calibration"] = cfg.get("calib_size")
    d["rows"].append(row)
    log_row(row)
    finish(res, out, t_all)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def log_row(r: dict) -> None:
    rep = "-" if r["metric_repaired"] is None else f"{r['metric_repaired']:.4f}"
    log(f"  {r['model']} keep {r['target_macs']:.1f} {r['criterion']}/{r['method']:11s} macs {r['macs_kept']} "
        f"metric {r['metric']:.4f} repaired {rep} oracle {r['oracle']} ({r['oracle_worst_rel_err']:.1e}) "
        f"({r['prune_s']}s + {r['repair_s']}s)")


def latency_check(quick: bool) -> dict:
    from resnet_like import resnet18_like

    from graphprune.allocation.latency import measured_ratio
    from graphprune.ir.serialize import to_proto

    import onnx
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18_like.onnx"
        onnx.save(resnet18_like(size=64 if quick else 112), path)
        model = gp.load(path)
    dense = to_proto(model).SerializeToString()
    ctx = PassContext()
    t0 = time.perf_counter()
    PassManager.parse("prune-channels{allocation=global,target_latency=0.5}").run(model, ctx)
    took = time.perf_counter() - t0
    info = ctx.results["plan"].settings["allocation_result"]
    feeds = ort.random_inputs(ort.session(dense))
    ratio, dms, pms = measured_ratio(dense, to_proto(model).SerializeToString(), feeds, threads=1, rounds=9)
    return {"model": "ResNet-18-shaped CNN, 1x3x%dx%d" % ((64, 64) if quick else (112, 112)),
            "asked": 0.5, "measured_ratio": round(ratio, 4), "dense_ms": round(dms, 3), "pruned_ms": round(pms, 3),
            "within_10pct": abs(ratio / 0.5 - 1) <= 0.10, "rounds": info.get("latency_rounds"),
            "seconds": round(took, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny data sets and the 30%% target only")
    ap.add_argument("--models", default=",".join(ALL_MODELS), help="comma list of " + ", ".join(ALL_MODELS))
    ap.add_argument("--rows", default="grid,best", help="grid (the 3x3 table), best (the best-configuration row), "
                    "defaults (graphprune's defaults: --target-macs and --calib only, held-out evaluation), "
                    "flags (BEST_FLAGS run the same way)")
    ap.add_argument("--targets", help="MAC fractions kept, e.g. 0.7,0.5 (default: grid 0.8,0.7,0.5; "
                    "defaults: 0.7, rec 0.7,0.5)")
    ap.add_argument("--methods", default=",".join(METHODS), help="allocations of the grid")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--workdir", help="where transformer models go (outside the repo); default $TMPDIR/graphprune-accuracy")
    ap.add_argument("--out", help="directory for results.json/md (default: here; rows of --rows defaults/flags "
                    "alone are then merged into the results here, the other rows kept)")
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="merge results.json of partial runs into --out")
    args = ap.parse_args(argv)
    args.targets_given = args.targets is not None
    args.targets = args.targets or ",".join(map(str, TARGETS))
    only_defaults = not ({"grid", "best"} & set(args.rows.split(",")))
    merge_here = args.out is None and only_defaults and not args.merge
    args.no_latency = args.no_latency or only_defaults  # defaults rows only: no latency check
    if merge_here:
        import tempfile

        args.out = tempfile.mkdtemp(prefix="accuracy-defaults-")
    out = Path(args.out or HERE)
    if args.merge:
        return merge(args.merge, out)
    res = {"date": DATE, "machine": MACHINE, "command": " ".join(["python benchmarks/accuracy/run.py",
                                                                   *(sys.argv[1:] if argv is None else argv)]),
           "models": {}}
    t_all = time.perf_counter()
    for name in filter(None, args.models.split(",")):
        run_model(name, args, res, out, t_all)
    if not args.no_latency:
        res["latency"] = latency_check(args.quick)
        log(f"latency: {res['latency']}")
    finish(res, out, t_all)
    if merge_here:
        merge([str(HERE), str(out)], HERE)
        log(f"merged into {HERE / 'results.md'} (this run: {out})")
    for line in report.goal13(json.loads((HERE if merge_here else out).joinpath("results.json").read_text())):
        print(line)
    return 0


def merge(dirs, out: Path) -> int:
    """Combine partial runs (e.g. one process per group of models) into one table."""
    res = None
    for d in dirs:
        part = json.loads((Path(d) / "results.json").read_text())
        if res is None:
            res = part
            res["part_seconds"] = list(part.get("part_seconds") or [part.get("seconds", 0)])  # a merged table as base
        else:
            for name, d in part["models"].items():
                if name in res["models"]:  # the same model run in parts (e.g. --rows grid / --rows best)
                    _merge_model(res["models"][name], d)
                else:
                    res["models"][name] = d
            if part.get("latency"):
                res["latency"] = part["latency"]
            if part.get("torch_pruning"):  # a torch_pruning_compare.py --out DIR part
                tp = res.setdefault("torch_pruning", part["torch_pruning"])
                if tp is not part["torch_pruning"]:
                    tp["rows"] += part["torch_pruning"]["rows"]
            rows = [r for m in part.get("models", {}).values() for r in m["rows"]]
            if rows and all(r.get("kind") for r in rows):  # a --rows defaults/flags part: its own run
                res.setdefault("defaults_runs", []).append(
                    {"command": part.get("command"), "minutes": round(part.get("seconds", 0) / 60, 1),
                     "models": list(part["models"]), "graphprune": sorted({r["graphprune"] for r in rows})})
            elif part.get("models"):
                res["part_seconds"].append(part.get("seconds", 0))
    if res.get("torch_pruning"):
        from torch_pruning_compare import verdict

        res["torch_pruning"]["verdict"] = verdict(res["torch_pruning"]["rows"])
    res["seconds"] = max(res["part_seconds"])
    res["command"] = "python benchmarks/accuracy/run.py"
    res["note"] = (f"run as {len(res['part_seconds'])} processes side by side (--models ... --out DIR), merged with --merge; "
                   f"minutes per process: {', '.join(f'{s / 60:.1f}' for s in res['part_seconds'])}")
    finish(res, out, None)
    return 0


def _merge_model(base: dict, part: dict) -> None:
    """Append `part`'s rows; a defaults/flags row replaces the one of the same kind and target
    (a rerun after graphprune's defaults changed), grid and best rows are only appended."""
    new = {(r["kind"], r["target_macs"]) for r in part["rows"] if r.get("kind")}
    base["rows"] = [r for r in base["rows"] if (r.get("kind"), r["target_macs"]) not in new] + part["rows"]
    for k in ("dense_goal", "goal_evaluation"):
        if k in part:
            base[k] = part[k]


def finish(res: dict, out: Path, t_all) -> None:
    if t_all is not None:
        res["seconds"] = round(time.perf_counter() - t_all, 1)
    old = out / "results.json"
    if old.exists():  # keep the Torch-Pruning comparison written by torch_pruning_compare.py
        prev = json.loads(old.read_text())
        if "torch_pruning" in prev and "torch_pruning" not in res:
            res["torch_pruning"] = prev["torch_pruning"]
    res["goal"] = report.goal(res)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (out / "results.md").write_text(report.markdown(res))


if __name__ == "__main__":
    sys.exit(main())
