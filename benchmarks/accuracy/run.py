"""Accuracy after pruning without fine-tuning, on real pretrained models (PP-OCRv4).

    pip install --no-deps rapidocr-onnxruntime==1.4.4 && pip install pillow matplotlib
    python benchmarks/accuracy/run.py            # full table (~20-30 min on 2 vCPUs)
    python benchmarks/accuracy/run.py --quick    # tiny sets, to check the script

For each model (recognizer: exact-match rate; detector: line recall at IoU 0.5;
classifier: 0/180° accuracy — all on text rendered with Pillow, see ocr_data.py) and each
MAC target (keep 80/70/50%), three allocations with the L2 magnitude criterion —
uniform, global ranking, sensitivity — are pruned, checked with the oracle, evaluated,
then repaired (bias-compensate, bn-reestimate, lsq-reconstruct on rendered calibration
data disjoint from the evaluation data) and evaluated again. A last section checks
``--target-latency 0.5`` on a ResNet-18-shaped model, measured with ONNX Runtime here.
Writes results.json and results.md beside this file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import graphprune as gp  # noqa: E402
import onnx_ir as ir  # noqa: E402
from graphprune import oracle  # noqa: E402
from graphprune.calibration import Calibration  # noqa: E402
from graphprune.passes import PASSES, PassContext, PassManager  # noqa: E402

import ocr_data as D  # noqa: E402

DATE = "2026-11-22"
MACHINE = "2 vCPU (shared), ONNX Runtime CPU provider"
TARGETS = (0.8, 0.7, 0.5)
METHODS = ("uniform", "global", "sensitivity")
REPAIR = ("lsq-reconstruct",)  # the full chain (bias, bn, lsq) is ~3x slower on 2 vCPUs


def session(model, threads=2):
    return oracle.session(model, threads=threads)


class Task:
    def __init__(self, name, path, quick):
        self.name, self.path = name, path
        n = 16 if quick else None
        if name == "rec":
            self.x, self.truth = D.rec_set(n or 96, seed=1)
            cx, _ = D.rec_set(8 if quick else 16, seed=100)
            self.calib = Calibration.from_batches([{"x": cx[i:i + 8]} for i in range(0, len(cx), 8)], "rendered lines")
            self.chars = D.characters(path)
            self.metric_name = "exact-match"
        elif name == "det":
            self.x, self.truth = D.det_set(4 if quick else 8, seed=2)
            cx, _ = D.det_set(4 if quick else 8, seed=101)
            self.calib = Calibration.from_batches([{"x": np.concatenate(cx[i:i + 2])} for i in range(0, len(cx), 2)],
                                                  "rendered pages")
            self.metric_name = "line recall@IoU.5"
        else:
            self.x, self.truth = D.cls_set(n or 128, seed=3)
            cx, _ = D.cls_set(16 if quick else 32, seed=102)
            self.calib = Calibration.from_batches([{"x": cx[i:i + 16]} for i in range(0, len(cx), 16)],
                                                  "rendered lines (half rotated)")
            self.metric_name = "accuracy"

    def evaluate(self, model) -> float:
        s = session(model)
        if self.name == "rec":
            p = np.concatenate([s.run(None, {"x": self.x[i:i + 16]})[0] for i in range(0, len(self.x), 16)])
            return D.exact_match(D.ctc_greedy(p, self.chars), self.truth)
        if self.name == "det":
            preds = [D.boxes_from_map(s.run(None, {"x": a})[0]) for a in self.x]
            return D.det_recall(preds, self.truth)[0]
        o = np.concatenate([s.run(None, {"x": self.x[i:i + 64]})[0] for i in range(0, len(self.x), 64)])
        return float((o.argmax(1) == self.truth).mean())


def prune_one(task: Task, method: str, target: float) -> dict:
    model = gp.load(task.path)
    ctx = PassContext()
    ctx.results["calibration"] = task.calib
    opts = dict(criterion="l2", allocation=method, target_macs=target, sens_ratios=[0.2, 0.4, 0.6, 0.8],
                sens_batches=1)
    t0 = time.perf_counter()
    PassManager([PASSES["prune-channels"](**opts)]).run(model, ctx)
    t_prune = time.perf_counter() - t0
    plan = ctx.results["plan"]
    feeds = [task.calib.first()]
    orc = oracle.check(ir.load(task.path), model, plan, inputs=feeds, n_random=0, rtol=1e-3)
    info = plan.settings.get("allocation_result", {})
    row = {"model": task.name, "method": method, "target_macs": target,
           "macs_kept": info.get("predicted_ratio"), "target_reached": info.get("reached"),
           "oracle": orc.ok, "oracle_worst_rel_err": orc.worst_relative,
           "groups_pruned": len(plan.groups), "prune_s": round(t_prune, 1)}
    row["metric"] = task.evaluate(model)
    t0 = time.perf_counter()
    PassManager([PASSES[p]() for p in REPAIR]).run(model, ctx)
    row["repair_s"] = round(time.perf_counter() - t0, 1)
    row["metric_repaired"] = task.evaluate(model)
    row["repair"] = [{k: r[k] for k in ("pass", "error_before", "error_after", "reverted")}
                     for r in ctx.results.get("repair", [])]
    return row


def latency_check(quick: bool) -> dict:
    from resnet_like import resnet18_like

    from graphprune.allocation.latency import measured_ratio
    from graphprune.ir.serialize import to_proto

    path = HERE / "resnet18_like.onnx"
    import onnx

    onnx.save(resnet18_like(size=64 if quick else 112), path)
    try:
        model = gp.load(path)
        dense = to_proto(model).SerializeToString()
        ctx = PassContext()
        t0 = time.perf_counter()
        PassManager.parse("prune-channels{allocation=global,target_latency=0.5}").run(model, ctx)
        took = time.perf_counter() - t0
        info = ctx.results["plan"].settings["allocation_result"]
        feeds = oracle.random_inputs(session(dense))
        ratio, dms, pms = measured_ratio(dense, to_proto(model).SerializeToString(), feeds, threads=1, rounds=9)
        return {"model": "ResNet-18-shaped CNN, 1x3x%dx%d" % ((64, 64) if quick else (112, 112)),
                "asked": 0.5, "measured_ratio": round(ratio, 4), "dense_ms": round(dms, 3), "pruned_ms": round(pms, 3),
                "within_10pct": abs(ratio / 0.5 - 1) <= 0.10, "rounds": info.get("latency_rounds"),
                "seconds": round(took, 1)}
    finally:
        path.unlink(missing_ok=True)


def markdown(res: dict) -> str:
    L = [f"# Accuracy after pruning without fine-tuning ({res['date']})", "",
         f"Machine: {res['machine']}. Command: `{res['command']}`.", "",
         "Criterion: L2 magnitude (group-reduced). MACs are counted at the evaluation input size; `kept` is the "
         "fraction of the dense MACs left. `repair` = lsq-reconstruct on rendered calibration data disjoint "
         "from the evaluation data (it undoes itself if it does not lower the output error on the calibration "
         "data). The oracle (pruned == masked original) was checked "
         "on every pruned model before repair.", ""]
    for name, d in res["models"].items():
        L += [f"## {name}: {d['file']} — {d['metric_name']}, dense = {d['dense']:.3f} on {d['eval_size']}", "",
              "| MACs removed | method | kept MACs | metric | % of dense | + repair | % of dense | oracle |",
              "|---|---|---|---|---|---|---|---|"]
        for r in d["rows"]:
            dn = max(d["dense"], 1e-9)
            L.append(f"| {round((1 - r['target_macs']) * 100)}% | {r['method']} | "
                     f"{r['macs_kept']:.3f}{'' if r['target_reached'] else ' (target not reachable)'} | "
                     f"{r['metric']:.3f} | {100 * r['metric'] / dn:.1f}% | {r['metric_repaired']:.3f} | "
                     f"{100 * r['metric_repaired'] / dn:.1f}% | {'PASS' if r['oracle'] else 'FAIL'} |")
        L.append("")
    lat = res.get("latency")
    if lat:
        L += ["## Latency target", "",
              f"`prune-channels{{allocation=global,target_latency=0.5}}` on a {lat['model']}: measured "
              f"pruned/dense latency **{lat['measured_ratio']:.3f}** ({lat['pruned_ms']:.2f} ms / {lat['dense_ms']:.2f} "
              f"ms, 1 thread, 9 interleaved rounds), asked 0.5 → within 10%: {lat['within_10pct']}. "
              f"NetAdapt rounds: {lat['rounds']}", ""]
    L += ["## Goal", "", res["goal"], ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="rec,det,cls")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="merge results.json of partial runs into --out")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    if D.MODELS is None:
        print("pip install --no-deps rapidocr-onnxruntime==1.4.4 first", file=sys.stderr)
        return 2
    files = {"rec": D.REC, "det": D.DET, "cls": D.CLS}
    res = {"date": DATE, "machine": MACHINE,
           "command": "python benchmarks/accuracy/run.py" + (" --quick" if args.quick else ""), "models": {}}
    t_all = time.perf_counter()
    for name in args.models.split(","):
        task = Task(name, os.path.join(D.MODELS, files[name]), args.quick)
        dense = task.evaluate(gp.load(task.path))
        d = {"file": files[name], "metric_name": task.metric_name, "dense": dense,
             "eval_size": f"{len(task.x)} {'pages' if name == 'det' else 'lines'}", "rows": []}
        res["models"][name] = d
        print(f"{name}: dense {task.metric_name} = {dense:.3f}", flush=True)
        for target in TARGETS:
            for method in METHODS:
                row = prune_one(task, method, target)
                d["rows"].append(row)
                print(f"  {name} keep {target:.1f} {method:11s} macs {row['macs_kept']:.3f} "
                      f"metric {row['metric']:.3f} repaired {row['metric_repaired']:.3f} oracle {row['oracle']} "
                      f"({row['prune_s']}s + {row['repair_s']}s)", flush=True)
                finish(res, Path(args.out), t_all)  # partial results survive an interrupted run
    if not args.no_latency:
        res["latency"] = latency_check(args.quick)
        print("latency:", res["latency"], flush=True)
    finish(res, Path(args.out), t_all)
    return 0


def merge(dirs, out: Path) -> int:
    """Combine partial runs (e.g. one process per model on the two cores) into one table."""
    res = None
    for d in dirs:
        part = json.loads((Path(d) / "results.json").read_text())
        if res is None:
            res = part
        else:
            res["models"].update(part["models"])
            if part.get("latency"):
                res["latency"] = part["latency"]
            res["seconds"] = max(res.get("seconds", 0), part.get("seconds", 0))
    res["command"] = "python benchmarks/accuracy/run.py"
    res["note"] = "models were run in parallel processes (--models rec / --models det,cls) and merged (--merge)"
    finish(res, out, None)
    return 0


def finish(res: dict, out: Path, t_all) -> None:
    goal = []
    for name in ("rec", "det"):
        d = res["models"].get(name)
        if not d or not any(r["target_macs"] == 0.7 for r in d["rows"]):
            continue
        best = max((r for r in d["rows"] if r["target_macs"] == 0.7),
                   key=lambda r: max(r["metric"], r["metric_repaired"]))
        frac = max(best["metric"], best["metric_repaired"]) / max(d["dense"], 1e-9)
        goal.append(f"{name}: best at 30% fewer MACs = {100 * frac:.1f}% of dense ({best['method']}"
                    f"{', repaired' if best['metric_repaired'] >= best['metric'] else ''}) → "
                    f"{'MET' if frac >= 0.95 else 'NOT MET'} (goal ≥ 95%)")
    res["goal"] = "; ".join(goal)
    if t_all is not None:
        res["seconds"] = round(time.perf_counter() - t_all, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (out / "results.md").write_text(markdown(res))
    print(res["goal"])
    print(f"wrote {out / 'results.md'} and results.json ({res.get('seconds')}s)")


if __name__ == "__main__":
    sys.exit(main())
