"""Widths that run fast (issue 15 §2): ONNX Runtime speedup ÷ MAC reduction of pruned
torchvision CNNs, per channel multiple, and graphprune against Torch-Pruning at equal MACs.

    pip install --no-deps torchvision==0.28.0 torch-pruning==1.6.1
    python benchmarks/bench_widths.py                     # resnet50, mobilenet_v2, efficientnet_b0
    python benchmarks/bench_widths.py --models mobilenet_v2 --threads 1 --rounds 10

For each model (torchvision architecture, random weights: latency does not depend on the
values; TorchScript export, BN folded, 1x3x224x224):

* graphprune ``gp.prune(ratio, criterion="l2")`` with ``round_to`` 1 (any width) and with
  this machine's float32 lanes (``graphprune.backends.targets.host_target().simd_lanes``: 16
  with AVX-512, 8 with AVX2), which is what the default ``round_to="auto"`` of ``prune`` and
  of ``compile --target x86`` resolves to;
* Torch-Pruning 1.6.1 ``MagnitudePruner`` (L2, its default ``round_to=None``, classifier
  ignored) with its ratio bisected until its MACs are within 1 % of graphprune's
  target-lanes model (equal MACs), then exported the same way.

All models of one model family are measured in one ORT process per thread count, dense and
pruned variants interleaved round by round (rotating order, a short pause and one untimed
run before each block, as in bench_ort_speedup.py). Reported: MAC reduction (dense ÷
pruned, ``graphprune.analysis.cost.model_cost``), speedup (median dense ÷ median variant),
efficiency = speedup ÷ MAC reduction, and graphprune vs Torch-Pruning latency at equal
MACs. Every graphprune model is checked with the oracle. Results:
``benchmarks/results/bench_widths.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo root on sys.path)
from _common import CpuMonitor, make_session, median, table, write_results  # noqa: E402

import numpy as np  # noqa: E402

NAME = "bench_widths"
INPUT_SHAPE = (1, 3, 224, 224)


def torchvision_model(name: str):
    # The PyPI torchvision wheel's C ops need a CUDA torch; the models themselves do not.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torch
    import torchvision

    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    # Default BatchNorm statistics (mean 0, var 1) let activations shrink layer by layer
    # until the outputs are too small for the oracle to judge: give each BN the statistics
    # that keep its output at unit scale, as a trained network's would.
    with torch.no_grad():
        x = torch.randn(*INPUT_SHAPE)
        hooks = [bn.register_forward_pre_hook(_calibrate_bn) for bn in m.modules()
                 if isinstance(bn, torch.nn.BatchNorm2d)]
        m(x)
        for h in hooks:
            h.remove()
    return m


def _calibrate_bn(bn, inputs):
    x = inputs[0]
    bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    bn.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-3)


def export(module, path: Path) -> None:
    import torch

    from tests.zoo.torch_models import export_onnx

    with torch.no_grad():
        export_onnx(module, torch.randn(*INPUT_SHAPE), path, dynamo=False)


def classifier_layers(module) -> list:
    import torch

    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def tp_prune(name: str, ratio: float, round_to: int | None = None):
    import torch
    import torch_pruning as tp

    m = torchvision_model(name)
    pruner = tp.pruner.MagnitudePruner(m, torch.randn(*INPUT_SHAPE), importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=classifier_layers(m), round_to=round_to)
    pruner.step()
    return m


def tp_at_macs(name: str, macs_goal: float, root: Path, cost_of, round_to: int | None) -> tuple[Path, float, float]:
    """Torch-Pruning's model whose ONNX MACs are closest to macs_goal (bisection on its ratio,
    stopping within 1 %; with round_to the MACs move in steps, so the closest is kept)."""
    lo, hi = 0.0, 0.95
    best = None
    for _ in range(14):
        mid = (lo + hi) / 2
        path = root / f"{name}.tp{round_to}.onnx"
        export(tp_prune(name, mid, round_to), path)
        macs = cost_of(path)
        if best is None or abs(macs / macs_goal - 1) < abs(best[1] / macs_goal - 1):
            best = (mid, macs)
            best_bytes = path.read_bytes()
        if abs(macs / macs_goal - 1) <= 0.01:
            break
        if macs > macs_goal:
            lo = mid
        else:
            hi = mid
    path.write_bytes(best_bytes)
    return path, best[0], best[1]


def measure(paths: dict[str, Path], threads: int, feeds: dict, warmup: int, rounds: int, runs: int,
            settle: float = 0.1) -> dict[str, dict]:
    """Median and per-round latencies (ms) of every model, interleaved with a rotating order."""
    sessions = {k: make_session(p, threads) for k, p in paths.items()}
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, feeds)
    keys = list(sessions)
    lat: dict[str, list[float]] = {k: [] for k in keys}
    per_round: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            time.sleep(settle)  # the previous session's intra-op workers stop spinning
            sessions[k].run(None, feeds)
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sessions[k].run(None, feeds)
                ts.append(1e3 * (time.perf_counter() - t0))
            lat[k].extend(ts)
            per_round[k].append(median(ts))
    return {k: {"median_ms": median(lat[k]), "min_ms": min(lat[k]), "per_round_ms": per_round[k]} for k in keys}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--ratio", type=float, default=0.5, help="graphprune's ratio (default 0.5)")
    ap.add_argument("--threads", default="1,2", help="intra_op_num_threads values (default 1,2)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    _common.quiet_warnings()

    import graphprune as gp
    from graphprune.analysis.cost import model_cost
    from graphprune.backends.targets import host_target

    lanes = host_target().simd_lanes  # what round_to="auto" resolves to here
    t_script = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="gp_widths_")
    root = Path(tmp.name)
    feeds = {"input": np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)}

    def cost_of(path: Path) -> float:
        return float(model_cost(gp.load(path)).macs)

    results = {}
    for name in args.models.split(","):
        print(f"== {name}: export, prune (round_to 1 and {lanes}), oracle", flush=True)
        dense = root / f"{name}.onnx"
        export(torchvision_model(name), dense)
        paths = {"dense": dense}
        macs = {"dense": cost_of(dense)}
        oracle = {}
        for rt in (1, lanes):
            key = f"graphprune_round{rt}"
            res = gp.prune(dense, ratio=args.ratio, round_to=rt, criterion="l2")
            out, plan = root / f"{name}.{key}.onnx", root / f"{name}.{key}.plan.json"
            gp.save(res.model, out)
            res.plan.save(plan)
            chk = gp.check(dense, out, plan)
            oracle[key] = chk.summary()
            if not chk.ok:
                print(f"  oracle FAILED for {key}: {chk.summary()}")
                return 1
            paths[key], macs[key] = out, cost_of(out)
        tp_ratio = None
        if not args.no_tp:
            tp_ratio = {}
            for rt, key in ((None, "torch_pruning"), (lanes, f"torch_pruning_round{lanes}")):
                print(f"   Torch-Pruning (round_to {rt}) at graphprune_round{lanes}'s MACs (bisecting its ratio) ...",
                      flush=True)
                paths[key], tp_ratio[key], macs[key] = tp_at_macs(name, macs[f"graphprune_round{lanes}"], root,
                                                                  cost_of, rt)
        per_threads = []
        for th in (int(t) for t in args.threads.split(",")):
            print(f"   ORT latency, {th} thread(s), {len(paths)} models interleaved ...", flush=True)
            with CpuMonitor() as mon:
                lat = measure(paths, th, feeds, args.warmup, args.rounds, args.runs)
            rows = {}
            for k in paths:
                red = macs["dense"] / macs[k]
                sp = lat["dense"]["median_ms"] / lat[k]["median_ms"]
                rows[k] = {"median_ms": lat[k]["median_ms"], "min_ms": lat[k]["min_ms"], "mac_reduction": red,
                           "speedup": sp, "efficiency": sp / red,
                           "per_round_speedup_iqr": [float(v) for v in np.percentile(
                               np.array(lat["dense"]["per_round_ms"]) / np.array(lat[k]["per_round_ms"]), [25, 75])]}
            for key in ("torch_pruning", f"torch_pruning_round{lanes}"):
                if key in rows:  # latency per MAC, so that a small MAC mismatch does not count
                    rows[f"graphprune_vs_{key}"] = ((lat[key]["median_ms"] / macs[key])
                                                    / (lat[f"graphprune_round{lanes}"]["median_ms"]
                                                       / macs[f"graphprune_round{lanes}"]))
            per_threads.append({"threads": th, "machine_load": mon.result, "models": rows})
        results[name] = {"macs": macs, "oracle": oracle, "tp_ratio": tp_ratio, "latency": per_threads}

        print()
        for pt in per_threads:
            print(f"{name}, {pt['threads']} thread(s), other load "
                  f"{pt['machine_load']['other_busy'] if pt['machine_load'] else 'n/a'}")
            print(table([[k, f"{macs[k] / 1e6:.0f}M", f"{r['mac_reduction']:.2f}x", f"{r['median_ms']:.2f}",
                          f"{r['speedup']:.2f}x", f"{r['efficiency']:.2f}",
                          f"{r['per_round_speedup_iqr'][0]:.2f}-{r['per_round_speedup_iqr'][1]:.2f}"]
                         for k, r in pt["models"].items() if isinstance(r, dict)],
                        ["model", "MACs", "MAC reduction", "median ms", "speedup", "speedup/MACred", "round IQR"]))
            for key, v in pt["models"].items():
                if key.startswith("graphprune_vs_"):
                    print(f"graphprune (round_to {lanes}) vs {key[len('graphprune_vs_'):]} at equal MACs "
                          f"(latency per MAC): {v:.2f}x faster")
            print()

    total = time.perf_counter() - t_script
    out = write_results(NAME + (f"_{args.tag}" if args.tag else ""), {
        "config": {"ratio": args.ratio, "criterion": "l2", "lanes": lanes, "input_shape": list(INPUT_SHAPE),
                   "warmup": args.warmup, "rounds": args.rounds, "runs": args.runs,
                   "ort": "CPUExecutionProvider, inter_op 1, sequential, ORT_ENABLE_ALL",
                   "torch_pruning": "MagnitudePruner L2, round_to None and the lanes, Linear layers ignored, ratio "
                                    "bisected to graphprune's MACs (within 1%, or the closest step)"},
        "models": results, "script_runtime_s": total, "loadavg_at_start": list(os.getloadavg())})
    print(f"wrote {out} (script runtime {total:.0f} s)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
