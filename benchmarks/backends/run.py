"""Tuned TVM vs ONNX Runtime, side by side, and the tuning cost.

    python benchmarks/backends/run.py [--trials 64] [--out /tmp/gp-backends]

For a ResNet-shaped CNN and a BERT-shaped encoder (random weights): compile with
`--backend auto --tune-trials N` (graphprune measures ORT and tuned TVM in one run,
interleaved), then compile again with the same database (reuse: no new tuning).
Reports TVM/ORT latency, tuning wall time, and pruned-and-compiled vs dense-ORT speedup.

`--trials` is the budget of one model, shared by its kernels (ceil(trials / kernels) each),
as `graphprune compile --tune-trials` takes it; the tables give the kernels and the trials
run per kernel.
Every run is appended to results.json (date, graphprune revision, machine, load) and
results.md shows them all, newest first.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))
sys.path.insert(0, str(HERE.parent))  # benchmarks/_common.py


def models(out: Path) -> dict[str, tuple[Path, dict | None]]:
    import torch

    from zoo.hf_models import export_hf
    from zoo.torch_models import ZOO, export_onnx

    res = {}
    m, x = ZOO["resnet_basic"]()
    p = out / "resnet.onnx"
    export_onnx(m, x, str(p), dynamo=False)
    res["resnet_basic (1x3x32x32)"] = (p, None)
    p = out / "bert.onnx"
    export_hf("bert", str(p), dynamo=False)
    res["bert 2-layer encoder (1x32 tokens)"] = (p, {"x": [1, 32]})
    del torch
    return res


def main() -> None:
    from graphprune.workflow.compile import CompileOptions, compile_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--out", default="/tmp/gp-backends")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "db"
    rows = []
    for name, (path, shapes) in models(out).items():
        for run in ("first", "reuse"):
            t0 = time.perf_counter()
            rep = compile_model(path, CompileOptions(target="x86", tune_trials=args.trials, db=str(db),
                                                     input_shapes=shapes, out=str(out / f"{path.stem}-{run}")),
                                log_fn=lambda *a: None)
            wall = time.perf_counter() - t0
            tvm = rep["backend"]["results"].get("tvm", {})
            ort = rep["backend"]["results"].get("onnxruntime", {})
            row = {"model": name, "run": run, "trials_asked": args.trials, "trials_run": tvm.get("trials"),
                   "new_records": tvm.get("new_records"), "kernels": (tvm.get("coverage") or {}).get("tasks"), "tuning_s": tvm.get("tuning_seconds"),
                   "compile_wall_s": round(wall, 1), "ort_ms": ort.get("latency_ms"), "tvm_ms": tvm.get("latency_ms"),
                   "tvm_over_ort": round(tvm["latency_ms"] / ort["latency_ms"], 3)
                   if tvm.get("latency_ms") and ort.get("latency_ms") else None,
                   "dense_ort_ms": rep["before"].get("latency_ms"), "deployed_ms": rep["after"].get("latency_ms"),
                   "speedup_vs_dense": round(rep["before"]["latency_ms"] / rep["after"]["latency_ms"], 3)
                   if rep["after"].get("latency_ms") else None,
                   "mac_ratio": round(rep["after"]["macs"] / rep["before"]["macs"], 3),
                   "chosen": rep["backend"]["chosen"], "checks": {k: v["ok"] for k, v in rep["checks"].items()}}
            rows.append(row)
            print(json.dumps(row))
    from _common import environment

    env = environment()
    run = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "trials_asked": args.trials,
           "graphprune": env.get("git_commit"), "uncommitted_files": env.get("graphprune_uncommitted_files"),
           "machine": f"{env.get('cpu_count')} vCPU (shared, noisy)", "loadavg_at_end": env.get("loadavg_at_end"),
           "rows": rows}
    write(HERE, run)


def write(folder: Path, run: dict) -> None:
    """Append `run` to results.json (a file of one earlier run becomes the first of the
    list) and rewrite results.md from all runs, newest first."""
    path = folder / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {"runs": []}
    runs = old["runs"] if "runs" in old else [old]
    runs.append(run)
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    lines = []
    for r in reversed(runs):
        lines += [f"### {r['date']}: --trials {r['rows'][0]['trials_asked']} per model"
                  + (f", graphprune {r['graphprune']}" if r.get("graphprune") else "")
                  + (f", load at the end {r['loadavg_at_end'][0]:.1f}" if r.get("loadavg_at_end") else ""), "",
                  "| model | run | kernels | trials run | per kernel | tuning s | ORT ms | tuned TVM ms | TVM/ORT | "
                  "pruned+compiled vs dense ORT |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            k = row.get("kernels")
            per = f"{row['trials_run'] / k:.0f}" if k and row["trials_run"] is not None else ""
            lines.append(f"| {row['model']} | {row['run']} | {k or ''} | {row['trials_run']} | {per} | "
                         f"{row['tuning_s']} | {row['ort_ms']} | {row['tvm_ms']} | {row['tvm_over_ort']} | "
                         f"{row['speedup_vs_dense']}x |")
        lines.append("")
    (folder / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
