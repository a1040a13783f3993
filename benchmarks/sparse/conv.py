"""Sparse conv kernels (graphprune/backends/tvm/kernels/conv.py) vs dense, side by side.

    python benchmarks/sparse/conv.py [--parts layers,breakeven,resnet] [--trials 64]
                                     [--resnet-trials 160] [--work /tmp/gp-sparse-conv]
                                     [--rounds 7] [--size 224]

Parts (see README_conv.md):
  layers     3x3 convs with 4-entry kernel patterns + 30% connectivity pruning: the pattern
             kernel vs our dense TVM conv (MetaSchedule-tuned, --trials) vs ORT dense.
  breakeven  one layer at several sparsities: pattern kernel (taps kept) and channel-block
             kernel (block sparsity) vs the same dense baselines.
  resnet     a ResNet-18-shaped CNN (conv+bias, BN folded) at 80% channel-block sparsity
             in every conv but the stem, compiled end to end through TVM (sparse convs
             replaced by the kernels, remaining layers tuned) vs ORT dense, same threads.
Timings: every method is measured once per round (10 calls, median), rounds interleaved;
reported figure = median over rounds. TVM tuning databases are kept in --work.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))

from _common import CpuMonitor, environment  # noqa: E402
from samples.make_samples import Builder  # noqa: E402

from graphprune.backends.tvm import adapter  # noqa: E402
from graphprune.backends.tvm.kernels import conv, rewrite  # noqa: E402
from graphprune.backends.tvm.kernels import conv_structure as cs  # noqa: E402

THREADS = 2          # --threads; 1 = single thread timed in CPU time (see README_conv.md)
TUNE_CORES = 2       # the tuning target keeps 2 cores whatever --threads: same schedules
CALLS = 10


def _cpu_ms(fn) -> float:
    """Median CPU milliseconds of `fn` over CALLS calls (single-thread mode only: time
    on the CPU, so waiting for a core on the busy machine does not count)."""
    ts = []
    for _ in range(CALLS):
        c0 = time.process_time()
        fn()
        ts.append(time.process_time() - c0)
    return float(np.median(ts) * 1e3)
PATTERNS8 = [(1, 3, 4, 5), (0, 1, 4, 7), (3, 4, 5, 8), (1, 4, 6, 7),
             (0, 4, 5, 8), (2, 4, 3, 6), (1, 2, 4, 5), (3, 4, 6, 7)]


# ----------------------------------------------------------------------------- weights
def pattern_weight(rng, o, i, k=4, conn=0.3):
    """Every 3x3 kernel keeps one pattern of a library of 8 (k taps, centre included),
    chosen by magnitude; `conn` of the kernels (smallest norms) are all zero."""
    w = rng.standard_normal((o, i, 9)).astype(np.float32)
    lib = PATTERNS8 if k == 4 else _k_patterns(rng, k)
    score = np.stack([np.abs(w[..., list(p)]).sum(-1) for p in lib], -1)
    pid = score.argmax(-1)
    mask = np.zeros_like(w, dtype=bool)
    for n, p in enumerate(lib):
        mask[..., list(p)] |= (pid == n)[..., None]
    w = w * mask
    norms = np.abs(w).sum(-1)
    cut = np.quantile(norms, conn) if conn > 0 else -1
    w[norms <= cut] = 0
    return w.reshape(o, i, 3, 3)


def _k_patterns(rng, k):
    pats = set()
    while len(pats) < 8:
        others = rng.choice([0, 1, 2, 3, 5, 6, 7, 8], k - 1, replace=False)
        pats.add(tuple(sorted([4, *others.tolist()])))
    return sorted(pats)


def block_weight(rng, o, i, kh, r, c, sparsity):
    """Whole r x c channel blocks zero (the lowest-norm blocks), `sparsity` of the blocks."""
    w = (rng.standard_normal((o, i, kh, kh)) * np.sqrt(2.0 / (i * kh * kh))).astype(np.float32)
    nob, nib = -(-o // r), -(-i // c)
    pad = np.zeros((nob * r, nib * c), np.float32)
    pad[:o, :i] = np.sqrt((w ** 2).sum(axis=(2, 3)))
    norms = pad.reshape(nob, r, nib, c).sum(axis=(1, 3))
    n_zero = int(round(sparsity * norms.size))
    keep = np.ones(norms.size, bool)
    keep[np.argsort(norms, axis=None)[:n_zero]] = False
    mask = np.kron(keep.reshape(nob, nib), np.ones((r, c), bool))[:o, :i]
    return w * mask[:, :, None, None]


# ----------------------------------------------------------------------------- runners
def conv_model(w, b, x_shape, stride, pads) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=list(pads),
                            kernel_shape=list(w.shape[2:]))
    g = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def ort_timer(model: onnx.ModelProto, x: np.ndarray):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    # ORT's idle threads spin by default and would steal the cores from the next method
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})

    def t():
        if THREADS == 1:
            return _cpu_ms(lambda: sess.run(None, {name: x}))
        ts = []
        for _ in range(CALLS):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts) * 1e3)

    t.run = lambda: sess.run(None, {name: x})[0]
    return t


def tvm_timer(mod, x, work: Path, tag: str, trials: int, log, only=None):
    """Tune (database in work/db, reused across runs), build, export, load; a timer."""
    target = adapter.host_target(TUNE_CORES)
    db = adapter.db_dir_for(work / "db", target)
    stats = adapter.tune(mod, target, db, trials, log=log, only=only, seed=0) if trials else None
    lib = work / f"{tag}.so"
    adapter.export(adapter.build(mod, target, db), lib)
    loaded = adapter.load(lib)

    args = loaded._device_args([x])

    def t():
        if THREADS == 1:
            loaded.vm.set_input("main", *args)
            return _cpu_ms(lambda: loaded.vm.invoke_stateful("main"))
        return float(loaded.time([x], repeats=CALLS, warmup=1)["median_ms"])

    t.run = lambda: loaded.run([x])[0]
    t.tune = stats.as_dict() if stats else None
    return t


def kernel_timer(cand, x):
    run = conv.build_candidate(cand)
    run(x)

    call = conv.preallocated_call(run, x)

    def t():
        if THREADS == 1:
            return _cpu_ms(call)
        return conv.time_candidate(run, x, repeats=CALLS, number=1)

    t.run = lambda: run(x)
    return t


def pick_fastest(cands, x):
    timers = {c.name: kernel_timer(c, x) for c in cands}
    times = {n: min(t() for _ in range(2)) for n, t in timers.items()}
    best = min(times, key=times.get)
    return next(c for c in cands if c.name == best), timers[best], times


def side_by_side(timers: dict, rounds: int) -> tuple[dict, dict]:
    samples = {k: [] for k in timers}
    keys = list(timers)
    with CpuMonitor() as mon:
        for rnd in range(rounds):
            for k in keys[rnd % len(keys):] + keys[:rnd % len(keys)]:  # rotate who goes first
                samples[k].append(timers[k]())
    return {k: round(float(np.median(v)), 4) for k, v in samples.items()}, mon.result


# ----------------------------------------------------------------------------- parts
def dense_layer_timers(o, i, h, stride, work, trials, log, rng):
    x = rng.standard_normal((1, i, h, h)).astype(np.float32)
    w = rng.standard_normal((o, i, 3, 3)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    m = conv_model(w, b, x.shape, stride, (1, 1, 1, 1))
    p = work / f"dense_{o}_{i}_{h}_{stride}.onnx"
    onnx.save(m, p)
    tvm_t = tvm_timer(adapter.import_onnx(p), x, work, p.stem, trials, log)
    return x, b, tvm_t


def part_layers(args, work, log):
    rng = np.random.default_rng(0)
    rows = []
    for o, i, h in [(64, 64, 56), (128, 128, 28)]:
        x, b, tvm_dense = dense_layer_timers(o, i, h, 1, work, args.trials, log, rng)
        w = pattern_weight(rng, o, i, 4, 0.3)
        m = conv_model(w, b, x.shape, 1, (1, 1, 1, 1))
        ort_dense = ort_timer(m, x)  # ORT does not exploit zeros: the dense cost
        cands = conv.conv_candidates(w, b, x.shape, (1, 1), (1, 1, 1, 1), (1, 1), 1)
        pats = [c for c in cands if c.info["structure"] == "pattern"]
        best, kt, cand_ms = pick_fastest(pats, x)
        err = float(np.abs(kt.run() - ort_dense.run()).max())
        med, load = side_by_side({"pattern": kt, "tvm_dense": tvm_dense, "ort_dense": ort_dense}, args.rounds)
        rows.append({"layer": f"conv3x3 {i}->{o} @{h}x{h} b1", "kernel": best.name,
                     "tap_density": best.info["tap_density"], "patterns": best.info["patterns"],
                     "max_abs_err_vs_ort": err, "candidates_ms": cand_ms, **{f"{k}_ms": v for k, v in med.items()},
                     "speedup_vs_tvm_dense": round(med["tvm_dense"] / med["pattern"], 2),
                     "speedup_vs_ort_dense": round(med["ort_dense"] / med["pattern"], 2),
                     "dense_tuning": tvm_dense.tune, "cpu_other_busy": load})
        log(json.dumps(rows[-1]))
    return rows


def part_breakeven(args, work, log):
    rng = np.random.default_rng(1)
    o = i = 64
    h = 56
    x, b, tvm_dense = dense_layer_timers(o, i, h, 1, work, args.trials, log, rng)
    rows = []
    configs = [("pattern", k, conn) for k, conn in ((8, 0.0), (6, 0.0), (4, 0.0), (4, 0.3), (4, 0.6))]
    configs += [("block", rc, s) for rc in ((4, 1),) for s in (0.3, 0.5, 0.7, 0.8, 0.9)]
    for kind, shape, sp in configs:
        if kind == "pattern":
            w = pattern_weight(rng, o, i, shape, sp)
            codes, pid = cs.pattern_library(w, 16)
            groups = [cs.taps_of(cd, 3, 9) for cd in codes]
            r, entry = 1, pid
            label = f"pattern k={shape}, connectivity {sp:.0%}"
        else:
            r, c = shape
            w = block_weight(rng, o, i, 3, r, c, sp)
            groups = [tuple((dy, dx) for dy in range(3) for dx in range(3))]
            entry = np.where(cs.block_mask(w, r, c), 0, -1)
            label = f"block {r}x{c}, {sp:.0%} blocks zero"
        geo = (x.shape, (1, 1), (1, 1, 1, 1), (1, 1))
        cands = []
        for n_rows in conv._row_tiles(r, *conv._wq_oh(w, *geo)):
            packed = conv.pack_for(w, r, 1 if kind == "pattern" else shape[1], groups, entry, *geo, n_rows)
            cands.append(conv._candidate(kind, w, b, *geo, "float32", packed, n_rows, False, {}))
        density = packed.work.sum() / (o * i * 9)
        best, kt, _ = pick_fastest(cands, x)
        ort_dense = ort_timer(conv_model(w, b, x.shape, 1, (1, 1, 1, 1)), x)
        med, load = side_by_side({"sparse": kt, "tvm_dense": tvm_dense, "ort_dense": ort_dense}, args.rounds)
        rows.append({"layer": f"conv3x3 {i}->{o} @{h}x{h} b1", "structure": label,
                     "macs_kept": round(float(density), 3), "kernel": best.name,
                     **{f"{k}_ms": v for k, v in med.items()},
                     "speedup_vs_tvm_dense": round(med["tvm_dense"] / med["sparse"], 2),
                     "speedup_vs_ort_dense": round(med["ort_dense"] / med["sparse"], 2), "cpu_other_busy": load})
        log(json.dumps(rows[-1]))
    return rows


def resnet18_bias(size, sparsity, block, seed=0) -> onnx.ModelProto:
    """ResNet-18 widths/strides, BN folded (conv + bias); every conv but the stem has
    `sparsity` of its r x c channel blocks zero."""
    b = Builder(seed)
    rng = np.random.default_rng(seed + 1)
    r, c = block

    def sconv(x, cin, cout, k, stride, dense=False):
        w = block_weight(rng, cout, cin, k, r, c, 0.0 if dense else sparsity)
        bias = (0.05 * rng.standard_normal(cout)).astype(np.float32)
        return b.op("Conv", [x, b.const(w), b.const(bias, "b")], kernel_shape=[k, k], pads=[k // 2] * 4,
                    strides=[stride] * 2)

    x = b.op("Relu", [sconv("input", 3, 64, 7, 2, dense=True)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, wdt in enumerate((64, 128, 256, 512)):
        for blk in range(2):
            stride = 2 if (stage > 0 and blk == 0) else 1
            y = b.op("Relu", [sconv(x, cin, wdt, 3, stride)])
            y = sconv(y, wdt, wdt, 3, 1)
            short = x if (stride == 1 and cin == wdt) else sconv(x, cin, wdt, 1, stride)
            x = b.op("Relu", [b.op("Add", [short, y])])
            cin = wdt
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    fc = (rng.standard_normal((cin, 1000)) / np.sqrt(cin)).astype(np.float32)
    out = b.op("Gemm", [x, b.const(fc), b.const(np.zeros(1000, np.float32), "b")])
    return b.model([1, 3, size, size], out, [1, 1000], "resnet18_block_sparse")


def part_resnet(args, work, log):
    rows = []
    for block in [tuple(int(v) for v in s.split("x")) for s in args.blocks.split(",")]:
        m = resnet18_bias(args.size, 0.8, block)
        p = work / f"resnet18_{args.size}_b{block[0]}x{block[1]}.onnx"
        onnx.save(m, p)
        x = np.random.default_rng(3).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
        ort_dense = ort_timer(m, x)
        mod = adapter.import_onnx(p)
        t0 = time.perf_counter()
        # the product's rewriter; its no-device rule (block kernels from 60% zeros) picks the
        # kernel: measuring each layer against an untuned dense conv would only cost time
        new, table, _ = rewrite.rewrite_sparse(mod, measure=None, min_sparsity=0.5, cores=TUNE_CORES)
        reps = [r for r in table if r["chosen"] != "dense"]
        rewrite_s = time.perf_counter() - t0
        tvm_sparse = tvm_timer(new, x, work, p.stem + "_sparse", args.resnet_trials, log)
        out_t, out_o = tvm_sparse.run(), ort_dense.run()
        rel = float(np.abs(out_t - out_o).max() / (np.abs(out_o).max() + 1e-12))
        med, load = side_by_side({"tvm_sparse": tvm_sparse, "ort_dense": ort_dense}, args.rounds)
        kernels = {}
        for rp in reps:
            kernels[rp["chosen"]] = kernels.get(rp["chosen"], 0) + 1
        rows.append({"model": f"ResNet-18-shaped 1x3x{args.size}x{args.size}, 80% of {block[0]}x{block[1]} blocks zero",
                     "convs_replaced": len(reps), "kernels": kernels, "rewrite_s": round(rewrite_s, 1),
                     "max_rel_err_vs_ort": rel, **{f"{k}_ms": v for k, v in med.items()},
                     "speedup_vs_ort_dense": round(med["ort_dense"] / med["tvm_sparse"], 2),
                     "tuning": tvm_sparse.tune, "cpu_other_busy": load, "layers": reps})
        log(json.dumps({k: v for k, v in rows[-1].items() if k != "layers"}))
    return rows


# ----------------------------------------------------------------------------- report
def render(res: dict) -> str:
    clock = ("CPU time of one thread (TVM_NUM_THREADS=1, ORT 1 thread)" if res.get("threads") == 1
             else "wall time, 2 threads (TVM and ORT)")
    L = ["# Sparse conv kernels vs dense (TVM tuned, ONNX Runtime)", "",
         f"Machine: {res['machine']}. Timing: {clock}. One run, rounds interleaved, median of "
         f"{res['rounds']} rounds (each {CALLS} calls). `other busy` = share of the 2 CPUs used by "
         "other processes meanwhile.", ""]
    if res.get("layers"):
        L += ["## 3x3 pattern kernel (4-entry patterns, 8-pattern library, 30% connectivity pruning), batch 1",
              "", "| layer | kernel | MACs kept | pattern ms | tuned TVM dense ms | ORT dense ms | vs TVM dense | vs ORT | max abs err | other busy |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["layers"]:
            L.append(f"| {r['layer']} | {r['kernel']} | {r['tap_density']} | {r['pattern_ms']} | {r['tvm_dense_ms']} | "
                     f"{r['ort_dense_ms']} | **{r['speedup_vs_tvm_dense']}x** | {r['speedup_vs_ort_dense']}x | "
                     f"{r['max_abs_err_vs_ort']:.1e} | {(r['cpu_other_busy'] or {}).get('other_busy')} |")
        L.append("")
    if res.get("breakeven"):
        L += ["## Break-even (conv3x3 64->64 @56x56, batch 1)", "",
              "| structure | MACs kept | kernel | sparse ms | tuned TVM dense ms | ORT dense ms | vs TVM dense | vs ORT | other busy |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in res["breakeven"]:
            L.append(f"| {r['structure']} | {r['macs_kept']} | {r['kernel']} | {r['sparse_ms']} | {r['tvm_dense_ms']} | "
                     f"{r['ort_dense_ms']} | {r['speedup_vs_tvm_dense']}x | {r['speedup_vs_ort_dense']}x | "
                     f"{(r['cpu_other_busy'] or {}).get('other_busy')} |")
        L.append("")
    if res.get("resnet"):
        L += ["## ResNet-18-shaped CNN end to end, 80% channel-block sparsity", "",
              "| model | convs replaced | kernels | TVM sparse ms | ORT dense ms | speedup | max rel err vs ORT | other busy |",
              "|---|---|---|---|---|---|---|---|"]
        for r in res["resnet"]:
            L.append(f"| {r['model']} | {r['convs_replaced']} | {r['kernels']} | {r['tvm_sparse_ms']} | {r['ort_dense_ms']} | "
                     f"**{r['speedup_vs_ort_dense']}x** | {r['max_rel_err_vs_ort']:.1e} | "
                     f"{(r['cpu_other_busy'] or {}).get('other_busy')} |")
        L.append("")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="layers,breakeven,resnet")
    ap.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per dense conv layer")
    ap.add_argument("--resnet-trials", type=int, default=160, help="trials for the dense rest of the ResNet")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--blocks", default="8x1", help="block shapes (r x c) for the ResNet part")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--work", default="/tmp/gp-sparse-conv")
    ap.add_argument("--threads", type=int, choices=(1, 2), default=2)
    ap.add_argument("--out", default=None, help="default: results_conv (2 threads), results_conv_1thread")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    args.out = args.out or str(HERE / ("results_conv" if THREADS == 2 else "results_conv_1thread"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["TVM_NUM_THREADS"] = str(THREADS)  # before TVM's thread pool starts

    def log(msg):
        print(msg, flush=True)

    out = Path(args.out)
    res = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    res.update({"machine": "2 vCPU AMD EPYC (Zen 4, AVX-512), shared with other jobs", "threads": THREADS,
                "rounds": args.rounds, "trials_per_dense_layer": args.trials})
    for part, fn in (("layers", part_layers), ("breakeven", part_breakeven), ("resnet", part_resnet)):
        if part in args.parts.split(","):
            res[part] = fn(args, work, log)
            env = environment()  # written after every part: a later failure keeps the earlier ones
            res["environment"] = {k: env.get(k) for k in ("loadavg_at_end", "onnxruntime", "git_commit", "cpu_count")}
            out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
            out.with_suffix(".md").write_text(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
