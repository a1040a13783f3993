"""A > 2 GB transformer-shaped model with external data: inspect and prune it, measuring
peak RSS of each graphprune process.

    python benchmarks/big_model/run.py [--layers 11] [--hidden 2048] [--workdir /tmp/gp-big]

The model is generated (random weights) into the work dir, never into the repository.
Results go to benchmarks/big_model/results.json and are printed as a table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def build(path: Path, layers: int, hidden: int, heads: int, ffn: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def w(name, *shape, scale=None):
        a = (rng.standard_normal(shape, dtype=np.float32) * (scale or 1.0 / np.sqrt(shape[0]))).astype(np.float32)
        inits.append(numpy_helper.from_array(a, name))
        return name

    def op(t, ins, name, **kw):
        nodes.append(helper.make_node(t, ins, [name], name=f"n_{name}", **kw))
        return name

    inits.append(numpy_helper.from_array(np.array([0, 0, heads, hidden // heads], np.int64), "split_heads"))
    inits.append(numpy_helper.from_array(np.array([0, 0, hidden], np.int64), "merge_heads"))
    inits.append(numpy_helper.from_array(np.array(np.sqrt(hidden // heads), np.float32), "scale"))
    x = "x"
    for i in range(layers):
        p = f"l{i}"
        h = op("LayerNormalization", [x, w(f"{p}.ln1.w", hidden, scale=1.0), w(f"{p}.ln1.b", hidden, scale=0.1)],
               f"{p}.ln1", axis=-1)
        qkv = []
        for k in "qkv":
            t = op("MatMul", [h, w(f"{p}.{k}.weight", hidden, hidden)], f"{p}.{k}")
            t = op("Reshape", [t, "split_heads"], f"{p}.{k}.heads")
            qkv.append(op("Transpose", [t], f"{p}.{k}.t", perm=[0, 2, 1, 3] if k != "k" else [0, 2, 3, 1]))
        s = op("Div", [op("MatMul", [qkv[0], qkv[1]], f"{p}.scores"), "scale"], f"{p}.scaled")
        a = op("MatMul", [op("Softmax", [s], f"{p}.probs", axis=-1), qkv[2]], f"{p}.ctx")
        a = op("Reshape", [op("Transpose", [a], f"{p}.ctx.t", perm=[0, 2, 1, 3]), "merge_heads"], f"{p}.ctx.m")
        x = op("Add", [x, op("MatMul", [a, w(f"{p}.o.weight", hidden, hidden)], f"{p}.o")], f"{p}.res1")
        h = op("LayerNormalization", [x, w(f"{p}.ln2.w", hidden, scale=1.0), w(f"{p}.ln2.b", hidden, scale=0.1)],
               f"{p}.ln2", axis=-1)
        u = op("Add", [op("MatMul", [h, w(f"{p}.up.weight", hidden, ffn)], f"{p}.up"), w(f"{p}.up.bias", ffn, scale=.1)],
               f"{p}.up.b")
        u = op("MatMul", [op("Gelu", [u], f"{p}.gelu"), w(f"{p}.down.weight", ffn, hidden)], f"{p}.down")
        x = op("Add", [x, u], f"{p}.res2")
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "seq", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return sum(t.stat().st_size for t in path.parent.glob(path.name + "*"))


def measured(cmd: list[str]) -> tuple[int, float, float, str]:
    """Run `cmd` in a child; return (exit code, peak RSS in GB, seconds, last output lines)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(r.stdout[-1500:]); print(r.stderr[-1500:], file=sys.stderr); "
               "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", wrapper] + cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    peak = int([ln for ln in r.stdout.splitlines() if ln.startswith("PEAK_KB")][-1].split()[1])
    return r.returncode, peak / 1024 / 1024, dt, (r.stdout + r.stderr)[-2500:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--workdir", default="/tmp/gp-big")
    args = ap.parse_args()
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    src = wd / "big.onnx"
    t0 = time.perf_counter()
    size = build(src, args.layers, args.hidden, args.heads, args.ffn)
    gen_s = time.perf_counter() - t0
    gb = size / 1e9
    print(f"generated {src} ({gb:.2f} GB with external data) in {gen_s:.0f} s")
    runs = {}
    for verb, cmd in (("inspect", ["graphprune", "inspect", str(src)]),
                      ("prune", ["graphprune", "prune", str(src), "--ratio", str(args.ratio), "-o",
                                 str(wd / "out" / "small.onnx"), "--no-bench"])):
        rc, peak, dt, tail = measured(cmd)
        runs[verb] = {"exit": rc, "peak_rss_gb": round(peak, 3), "peak_over_model": round(peak / gb, 3),
                      "seconds": round(dt, 1)}
        print(f"{verb}: exit {rc}, peak RSS {peak:.2f} GB = {peak / gb:.2f}x model, {dt:.0f} s")
        if rc:
            print(tail)
    out_size = sum(p.stat().st_size for p in (wd / "out").glob("small.onnx*")) / 1e9 if (wd / "out").exists() else None
    res = {"date": "2026-11-22", "machine": "2 vCPU, 24 GiB", "model_gb": round(gb, 3), "layers": args.layers,
           "hidden": args.hidden, "ffn": args.ffn, "ratio": args.ratio, "generate_seconds": round(gen_s, 1),
           "pruned_gb": round(out_size, 3) if out_size else None, "runs": runs}
    (HERE / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
