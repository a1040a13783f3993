"""Accuracy after pruning without fine-tuning, on real pretrained models from PyPI packages.

    python benchmarks/accuracy/run.py                       # everything (see README.md)
    python benchmarks/accuracy/run.py --models rec,cls --out /tmp/a   # a part ...
    python benchmarks/accuracy/run.py --merge /tmp/a /tmp/b          # ... and merge parts
    python benchmarks/accuracy/run.py --quick               # tiny sets, checks the script

Models: PP-OCRv4 recognizer (exact match), detector (line recall), orientation
classifier (accuracy) on text rendered with Pillow (ocr_tasks.py); all-MiniLM-L6-v2
(embedding cosine vs dense) and SmolLM2-135M (perplexity) on pydoc_data.topics
(text_tasks.py). For each MAC target (remove 20/30/50%) and allocation (uniform, global,
sensitivity; L2 magnitude criterion) the model is pruned, checked with the oracle,
evaluated, repaired on calibration data disjoint from the evaluation data, and evaluated
again. Then one "best configuration" row per model at 30% (BEST below), and the
``target_latency=0.5`` check on a ResNet-18-shaped model. Writes results.json/results.md
beside this file (torch_pruning_compare.py adds its own section to both).
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
    ap.add_argument("--rows", default="grid,best", help="grid (the 3x3 table), best (the best-configuration row)")
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)), help="MAC fractions kept, e.g. 0.7,0.5")
    ap.add_argument("--methods", default=",".join(METHODS), help="allocations of the grid")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--workdir", help="where transformer models go (outside the repo); default $TMPDIR/graphprune-accuracy")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="merge results.json of partial runs into --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.merge:
        return merge(args.merge, out)
    res = {"date": DATE, "machine": MACHINE, "command": "python benchmarks/accuracy/run.py" +
           (" --quick" if args.quick else ""), "models": {}}
    t_all = time.perf_counter()
    for name in filter(None, args.models.split(",")):
        run_model(name, args, res, out, t_all)
    if not args.no_latency:
        res["latency"] = latency_check(args.quick)
        log(f"latency: {res['latency']}")
    finish(res, out, t_all)
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
                    res["models"][name]["rows"] += d["rows"]
                else:
                    res["models"][name] = d
            if part.get("latency"):
                res["latency"] = part["latency"]
            if part.get("torch_pruning"):  # a torch_pruning_compare.py --out DIR part
                tp = res.setdefault("torch_pruning", part["torch_pruning"])
                if tp is not part["torch_pruning"]:
                    tp["rows"] += part["torch_pruning"]["rows"]
            if part.get("models"):
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
