"""A whole MLP at 90 % block sparsity (8x1), end to end: what `graphprune compile` ships
against the dense input in ONNX Runtime (issue 15's "whole model at 90 % block sparsity vs
the dense input in ORT, goal >= 2x").

    python benchmarks/sparse/mlp.py [--trials 32] [--sizes small,large] [--workdir DIR]

Each MLP is generated here (random weights; Gemm + Relu, no bias-free shortcuts) and
compiled by the CLI, as a user runs it:

    graphprune compile mlp.onnx --target x86 --backend auto --ratio 0 --sparsity 0.9
        --sparsity-format block:8x1 --sparsify-first --sparsify-last --tune-trials N

(every Gemm sparse, the first and last included; no channel pruning). The figures are the
ones compile measures side by side at the model's shape and writes to report.json: dense
input in ONNX Runtime, the sparse model in ONNX Runtime and in TVM, and the one it ships;
plus its numerics checks. Load average before and after each run is recorded: the machine
is shared. Writes results_mlp.json and results_mlp.md next to this file.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# name: (layer widths, batch rows)
SIZES = {
    "small": ([256, 1024, 256], 1),  # one token through a narrow FFN: kernel launch overheads dominate
    "medium": ([768, 3072, 768], 16),  # a BERT-base FFN, 16 tokens
    "large": ([1024, 4096, 4096, 1024], 16),
}


def make_mlp(widths: list[int], batch: int, path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array((rng.standard_normal(b) * 0.1).astype(np.float32), f"B{i}")]
        y = f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [y], name=f"fc{i}"))
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [y], [y + "_relu"]))
            y += "_relu"
        x = y
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, widths[0]])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, widths[-1]])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def run(name: str, trials: int, wd: Path) -> dict:
    widths, batch = SIZES[name]
    src = wd / f"mlp_{name}.onnx"
    make_mlp(widths, batch, src)
    out = wd / f"mlp_{name}.graphprune"
    cmd = [sys.executable, "-m", "graphprune.cli.main", "compile", str(src), "--target", "x86", "--backend", "auto",
           "--ratio", "0", "--sparsity", "0.9", "--sparsity-format", "block:8x1", "--sparsify-first",
           "--sparsify-last", "--tune-trials", str(trials), "-o", str(out), "--force"]
    load0, t0 = os.getloadavg(), time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row = {"model": name, "widths": widths, "batch": batch, "command": " ".join(["graphprune"] + cmd[3:]),
           "exit": proc.returncode, "seconds": round(time.time() - t0, 1), "load_before": list(load0),
           "load_after": list(os.getloadavg())}
    if proc.returncode != 0:
        row["error"] = (proc.stdout + proc.stderr)[-2000:]
        return row
    rep = json.loads((out / "report.json").read_text())
    lat = rep.get("latency") or {}
    row.update(backend=rep["backend"]["chosen"], measured_ms=lat.get("measured_ms"), speedup=lat.get("speedup"),
               line=lat.get("line"), checks={k: c.get("ok") for k, c in (rep.get("checks") or {}).items()},
               kernel_lines=[ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines()
                             if ln.startswith("tvm: sparse")])
    return row


def markdown(res: dict) -> str:
    lines = ["# A whole MLP at 90 % block sparsity (8x1): `graphprune compile` vs the dense input in ORT", "",
             f"{res['date']}, graphprune {res['graphprune']}, `python benchmarks/sparse/mlp.py --trials {res['trials']}`. "
             "Latencies as compile measured them side by side at the model's shape (report.json).", "",
             "| MLP | batch | shipped | dense ORT ms | sparse ORT ms | sparse TVM ms | shipped vs dense ORT | load before / after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        m = r.get("measured_ms") or {}
        lines.append(f"| {'→'.join(map(str, r['widths']))} | {r['batch']} | {r.get('backend', r.get('error', '?')[:60])} | "
                     f"{m.get('dense input (ONNX Runtime)', '-')} | {m.get('pruned (ONNX Runtime)', '-')} | "
                     f"{m.get('pruned (TVM)', '-')} | {r.get('speedup', '-')}× | "
                     f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=32, help="TVM MetaSchedule trials (compile --tune-trials)")
    ap.add_argument("--sizes", default="small,medium,large", help=f"comma list of {', '.join(SIZES)}")
    ap.add_argument("--workdir", help="where models and deployments go (default: a temporary folder)")
    args = ap.parse_args(argv)
    names = args.sizes.split(",")
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        ap.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    rev = subprocess.run(["git", "-C", str(HERE), "log", "-1", "--format=%h"], capture_output=True, text=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "graphprune": rev.stdout.strip(),
           "trials": args.trials, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(args.workdir) if args.workdir else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        for name in names:
            row = run(name, args.trials, wd)
            res["rows"].append(row)
            print(json.dumps({k: row.get(k) for k in ("model", "exit", "backend", "measured_ms", "speedup",
                                                      "seconds", "load_before")}), flush=True)
    (HERE / "results_mlp.json").write_text(json.dumps(res, indent=1) + "\n")
    (HERE / "results_mlp.md").write_text(markdown(res))
    return 0 if all(r["exit"] == 0 for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
