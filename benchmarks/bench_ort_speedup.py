"""ONNX Runtime latency: dense vs graphprune-pruned ResNet-50 (ratio 0.5).

    python benchmarks/bench_ort_speedup.py               # ~1 minute on 2 vCPU
    python benchmarks/bench_ort_speedup.py --ratio 0.3 --rounds 20

A ResNet-50-shaped network (7x7 stem + max-pool, bottleneck blocks [3, 4, 6, 3] with
widths 64..512 inside and 256..2048 outside, stride on the 3x3 conv, 1x1 conv+BN
projection shortcuts, global average pool, 1000-way linear head; random Kaiming weights
and randomised BatchNorm statistics) is written in torch, exported with the TorchScript
exporter (BN folded into the convs, opset 17, ir_version <= 13) and pruned with
``gp.prune(ratio=0.5, round_to=1, criterion="l2")``.

For intra_op_num_threads = 2 and 1 (inter_op 1, sequential, ORT_ENABLE_ALL, default
thread spinning), both sessions are warmed up, then measured in ``--rounds`` rounds of
``--runs`` inferences each, dense and pruned interleaved round by round (the order
alternates) so that drift and noisy neighbours hit both alike. Each block starts with a
100 ms pause and one untimed run: without them the first runs after a switch pay for
the other session's still-spinning worker threads (seen as 2x slower first runs at 2
threads). Reported per thread count:

    MAC reduction        dense MACs / pruned MACs   (graphprune.analysis.cost.model_cost)
    measured speedup     median dense latency / median pruned latency
    efficiency           speedup / MAC reduction    (goal >= 0.9)

plus the spread of the per-round speedups. The pruned model is checked with the oracle
(gp.check). Results go to benchmarks/results/bench_ort_speedup.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo root on sys.path)
from _common import CpuMonitor, Timer, make_session, median, table, write_results  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

NAME = "bench_ort_speedup"
INPUT_SHAPE = (1, 3, 224, 224)


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            for j in range(n):
                blocks.append(Bottleneck(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w * Bottleneck.expansion
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def build_model(seed: int = 0):
    from tests.zoo.torch_models import randomize_batchnorm

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet50()
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.uniform_(m.bias, -0.1, 0.1)
        randomize_batchnorm(model, g)
        x = torch.randn(*INPUT_SHAPE, generator=g)
    return model.eval(), x


# ---------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------


def measure_pair(paths: dict[str, Path], threads: int, feeds: dict, warmup: int, rounds: int,
                 runs: int, settle: float = 0.1) -> dict:
    sessions = {k: make_session(p, threads) for k, p in paths.items()}
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, feeds)
    lat: dict[str, list[float]] = {k: [] for k in sessions}
    round_speedups = []
    keys = list(sessions)
    for r in range(rounds):
        order = keys if r % 2 == 0 else keys[::-1]
        this_round = {}
        for k in order:
            s = sessions[k]
            # ORT's intra-op workers spin for a while after a run: let the other session's
            # workers go idle, then one untimed run to bring this model back into cache.
            time.sleep(settle)
            s.run(None, feeds)
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, feeds)
                ts.append(time.perf_counter() - t0)
            lat[k].extend(ts)
            this_round[k] = median(ts)
        round_speedups.append(this_round["dense"] / this_round["pruned"])
    med = {k: median(v) for k, v in lat.items()}
    q = np.percentile(round_speedups, [25, 75])
    return {
        "threads": threads,
        "median_ms": {k: 1e3 * v for k, v in med.items()},
        "min_ms": {k: 1e3 * min(v) for k, v in lat.items()},
        "speedup": med["dense"] / med["pruned"],
        # best-case latencies are less sensitive to other processes on a 2-vCPU box
        "speedup_of_min": min(lat["dense"]) / min(lat["pruned"]),
        "round_speedup_median": median(round_speedups),
        "round_speedup_iqr": [float(q[0]), float(q[1])],
        "samples_per_model": len(lat["dense"]),
        "raw_ms": {k: [1e3 * t for t in v] for k, v in lat.items()},
    }


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default 0.5)")
    ap.add_argument("--threads", default="2,1", help="intra_op_num_threads values (default 2,1)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up runs per session (default 5)")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    ap.add_argument("--runs", type=int, default=5, help="inferences per model per round (default 5)")
    ap.add_argument("--tag", default="", help="write results/<name>_<tag>.json instead of results/<name>.json")
    ap.add_argument("--out", default=None, help="where to keep the ONNX files (default: a temp dir)")
    args = ap.parse_args(argv)
    _common.quiet_warnings()

    import graphprune as gp
    from graphprune.analysis.cost import model_cost
    from tests.zoo.torch_models import export_onnx

    t_script = time.perf_counter()
    loadavg_start = list(os.getloadavg())
    tmp = tempfile.TemporaryDirectory(prefix="gp_ort_bench_") if args.out is None else None
    root = Path(args.out or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    dense_path, small_path, plan_path = root / "resnet50.onnx", root / "resnet50.pruned.onnx", \
        root / "resnet50.pruned.plan.json"

    print("building + exporting ResNet-50 ...", flush=True)
    model, x = build_model()
    with Timer() as t_exp:
        export_onnx(model, x, dense_path, dynamo=False)

    print(f"pruning with graphprune (ratio {args.ratio}) ...", flush=True)
    with Timer() as t_load:
        m = gp.load(dense_path)
    dense_cost = model_cost(m)
    with Timer() as t_prune:
        res = gp.prune(m, ratio=args.ratio, round_to=1, criterion="l2")
    with Timer() as t_save:
        gp.save(res.model, small_path)
        res.plan.save(plan_path)
    pruned_cost = model_cost(gp.load(small_path))
    print("oracle ...", flush=True)
    with Timer() as t_chk:
        check = gp.check(dense_path, small_path, plan_path)
    print(f"  {check.summary()}", flush=True)

    feeds = {"input": x.numpy()}
    # Sanity: the dense ONNX model computes what torch computes.
    with torch.no_grad():
        ref = model(x).numpy()
    got = make_session(dense_path, 2).run(None, feeds)[0]
    export_err = float(np.max(np.abs(ref - got)) / max(np.max(np.abs(ref)), 1e-12))

    mac_reduction = dense_cost.macs / pruned_cost.macs
    paths = {"dense": dense_path, "pruned": small_path}
    latency = []
    for th in (int(t) for t in args.threads.split(",")):
        print(f"measuring ORT latency, intra_op_num_threads={th} ...", flush=True)
        with CpuMonitor() as mon:
            r = measure_pair(paths, th, feeds, args.warmup, args.rounds, args.runs)
        r["machine_load"] = mon.result
        r["mac_reduction"] = mac_reduction
        r["efficiency"] = r["speedup"] / mac_reduction
        r["efficiency_of_min"] = r["speedup_of_min"] / mac_reduction
        latency.append(r)

    # ---- tables ----------------------------------------------------------------------
    print()
    print(f"ResNet-50 (1x3x224x224), graphprune ratio {args.ratio}, round_to 1, criterion l2")
    print(table([
        ["params", f"{dense_cost.params / 1e6:.2f} M", f"{pruned_cost.params / 1e6:.2f} M",
         f"{dense_cost.params / pruned_cost.params:.2f}x"],
        ["MACs", f"{dense_cost.macs / 1e9:.3f} G", f"{pruned_cost.macs / 1e9:.3f} G", f"{mac_reduction:.2f}x"],
        ["ONNX nodes", dense_cost.nodes, pruned_cost.nodes, ""],
        ["file size", f"{dense_path.stat().st_size / 1e6:.1f} MB", f"{small_path.stat().st_size / 1e6:.1f} MB",
         f"{dense_path.stat().st_size / small_path.stat().st_size:.2f}x"],
    ], ["", "dense", "pruned", "dense/pruned"]))
    print(f"oracle: {check.summary()}; torch vs ORT (dense export) max rel. err {export_err:.1e}")
    print(f"graphprune: load {t_load.s:.2f}s, prune {t_prune.s:.2f}s, save {t_save.s:.2f}s, "
          f"oracle {t_chk.s:.2f}s; export {t_exp.s:.2f}s")
    print()
    print(f"ONNX Runtime CPU latency, median of {args.rounds}x{args.runs} interleaved runs per model")
    rows = []
    for r in latency:
        rows.append([r["threads"], f"{r['median_ms']['dense']:.2f}", f"{r['median_ms']['pruned']:.2f}",
                     f"{r['min_ms']['dense']:.2f}", f"{r['min_ms']['pruned']:.2f}",
                     f"{r['mac_reduction']:.2f}x", f"{r['speedup']:.2f}x",
                     f"{r['round_speedup_iqr'][0]:.2f}-{r['round_speedup_iqr'][1]:.2f}",
                     f"{r['efficiency']:.2f}", f"{r['speedup_of_min']:.2f}x", f"{r['efficiency_of_min']:.2f}",
                     f"{r['machine_load']['other_busy']:.2f}" if r["machine_load"] else "n/a"])
    print(table(rows, ["threads", "dense ms", "pruned ms", "dense min", "pruned min", "MAC reduction",
                       "speedup", "per-round IQR", "speedup/MACred (goal>=0.9)", "speedup of min",
                       "min-based ratio", "other load"]))
    print("speedup = median dense / median pruned latency; per-round IQR = spread of the speedups of the "
          "individual rounds; 'of min' uses the fastest run of each model;\n"
          "other load = share of the machine's CPU time used by other processes while measuring "
          "(0.5 = one of 2 vCPUs busy elsewhere)")

    total = time.perf_counter() - t_script
    out = write_results(NAME + (f"_{args.tag}" if args.tag else ""), {
        "config": {"model": "ResNet-50 (bottleneck [3,4,6,3], widths 64..2048)", "input_shape": list(INPUT_SHAPE),
                   "ratio": args.ratio, "round_to": 1, "criterion": "l2", "warmup": args.warmup,
                   "rounds": args.rounds, "runs_per_round": args.runs,
                   "exporter": "torchscript (dynamo=False), opset 17",
                   "ort": "CPUExecutionProvider, inter_op 1, sequential, ORT_ENABLE_ALL"},
        "dense": {"params": dense_cost.params, "macs": dense_cost.macs, "nodes": dense_cost.nodes,
                  "file_bytes": dense_path.stat().st_size},
        "pruned": {"params": pruned_cost.params, "macs": pruned_cost.macs, "nodes": pruned_cost.nodes,
                   "file_bytes": small_path.stat().st_size, "pruned_groups": len(res.plan.groups),
                   "sliced_tensors": len(res.plan.tensors)},
        "mac_reduction": mac_reduction,
        "graphprune_s": {"load": t_load.s, "prune": t_prune.s, "save": t_save.s, "check": t_chk.s,
                         "export": t_exp.s},
        "oracle": {"ok": bool(check.ok), "worst_relative": check.worst_relative, "runs": check.runs,
                   "summary": check.summary()},
        "export_torch_vs_ort_rel_err": export_err,
        "latency": latency,
        "script_runtime_s": total, "loadavg_at_start": loadavg_start,
    })
    print(f"\nwrote {out} (script runtime {total:.0f} s)")
    if tmp is not None:
        tmp.cleanup()
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
