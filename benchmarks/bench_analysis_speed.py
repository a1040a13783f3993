"""Analysis + pruning speed: graphprune (on the ONNX export) vs Torch-Pruning (on the module).

    python benchmarks/bench_analysis_speed.py            # ~1-2 minutes on 2 vCPU
    python benchmarks/bench_analysis_speed.py --blocks 2,8,32,64 --repeats 9

The same torch module -- a CIFAR-style ResNet (3x3 stem, three stages of N basic
residual blocks, global pool, linear head) -- is built at 1x, 4x and 16x depth (N = 2, 8,
32 blocks per stage by default). For every depth, in one process and interleaved repeat
by repeat (the order alternates between repeats to cancel drift):

graphprune  (ONNX exported once per depth; export time reported separately)
    load     gp.load(path)              read + shape inference + folding
    analyze  gp.analyze(model)          dependency analysis alone
    prune    gp.prune(model, ratio)     NB: builds its own dependency graph again,
                                        then scores, selects and rewrites the model
    save     gp.save + plan.save        informational, not in any ratio
Torch-Pruning 1.6 (a fresh deepcopy of the module per step; copying is not timed)
    build    tp.DependencyGraph().build_dependency(model, example_inputs)
    init     tp.pruner.MagnitudePruner(model, x, MagnitudeImportance(p=2),
                 pruning_ratio=ratio, ignored_layers=[model.fc])  (builds its own graph)
    step     pruner.step()

Ratios reported (TP time / graphprune time, medians):
    analysis    TP build            / gp analyze
    +load       TP build            / (gp load + gp analyze)
    end-to-end  (TP init + TP step) / (gp load + gp prune)   -- what a user pays to go
                                                                from model to pruned model
and graphprune microseconds per ONNX node plus a log-log scaling exponent
(time ~ nodes^alpha between the smallest and largest depth; alpha = 1 is linear).

The pruned ONNX model of every depth is verified once with the oracle (gp.check).
Results go to benchmarks/results/bench_analysis_speed.json.

    python benchmarks/bench_analysis_speed.py --real [--models resnet50,llama8] [--repeats 3]

measures real architectures instead (random weights: nothing is downloaded): torchvision
resnet50 and mobilenet_v3_large (TorchScript export, weights inside the .onnx) and HF LLaMA
(LlamaConfig hidden 64, 2/8/30 layers). Each repeat runs in a fresh subprocess:
gp.load + gp.prune(ratio 0.3) + gp.save, end to end (load included), with peak RSS
(VmHWM, or ru_maxrss off Linux, minus that of the same interpreter after its imports) divided by the model
file's size; resnet50 is also timed against Torch-Pruning MagnitudePruner init+step on
the torch module (in this process, interleaved). Results: results/bench_analysis_speed_real.json.
resnet50_ext is the same resnet50 file saved with its weights in resnet50_ext.onnx.data.
Without torchvision, resnet50 is bench_ort_speedup's torchvision-free ResNet-50 (the same
architecture; mobilenet_v3_large then needs torchvision). With --oracle, every repeat also
runs a fresh process of run_prune with the oracle and the write (what `graphprune prune`
does: two ONNX Runtime sessions, the masked original's and the pruned model's) and reports
its peak RSS separately: the oracle's sessions hold their own copies of the weights.
"""
from __future__ import annotations

import argparse
import os
import copy
import gc
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo root on sys.path)
from _common import CpuMonitor, Timer, median, table, write_results  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

NAME = "bench_analysis_speed"


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, residual add, ReLU (1x1 conv+BN shortcut when the
    shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetCNN(nn.Module):
    """Stem + ``blocks`` basic blocks at each of 3 stages (stride 2 at stages 2, 3) + head."""

    def __init__(self, blocks: int, widths=(32, 64, 128), num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for stage, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (b == 0 and stage > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def build_model(blocks: int, widths, seed: int = 0):
    from tests.zoo.torch_models import randomize_batchnorm

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetCNN(blocks, widths)
        randomize_batchnorm(model, g)
        x = torch.randn(1, 3, 32, 32, generator=g)
    return model.eval(), x


# ---------------------------------------------------------------------------
# one repeat of each tool
# ---------------------------------------------------------------------------


def run_graphprune(path: Path, out_dir: Path, ratio: float) -> dict:
    import graphprune as gp

    with Timer() as t_load:
        model = gp.load(path)
    with Timer() as t_an:
        dg = gp.analyze(model)
    with Timer() as t_pr:
        res = gp.prune(model, ratio=ratio, round_to=1, criterion="l2")
    small, plan = out_dir / "small.onnx", out_dir / "small.plan.json"
    with Timer() as t_save:
        gp.save(res.model, small)
        res.plan.save(plan)
    timers = {"load": t_load, "analyze": t_an, "prune": t_pr, "save": t_save}
    return {"wall": {k: t.s for k, t in timers.items()}, "cpu": {k: t.cpu for k, t in timers.items()},
            "groups": len(dg.groups), "prunable_groups": len(dg.prunable_groups),
            "frozen_groups": len(dg.frozen_groups), "plan_groups": len(res.plan.groups),
            "small": small, "plan": plan}


def run_torch_pruning(template: nn.Module, x: torch.Tensor, ratio: float) -> dict:
    import torch_pruning as tp

    m1 = copy.deepcopy(template)
    with Timer() as t_build:
        tp.DependencyGraph().build_dependency(m1, example_inputs=x)
    del m1
    m2 = copy.deepcopy(template)
    with Timer() as t_init:
        pruner = tp.pruner.MagnitudePruner(
            m2, x, importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio, ignored_layers=[m2.fc])
    with Timer() as t_step:
        pruner.step()
    timers = {"build": t_build, "init": t_init, "step": t_step}
    return {"wall": {k: t.s for k, t in timers.items()}, "cpu": {k: t.cpu for k, t in timers.items()},
            "model": m2}


def profile_graphprune(path: Path, ratio: float, top: int = 15) -> dict:
    """cProfile gp.load, gp.analyze and gp.prune once each (profiler overhead inflates
    the absolute times; use them for proportions)."""
    import cProfile
    import pstats

    import graphprune as gp

    out = {}
    model = None
    for stage in ("load", "analyze", "prune"):
        gc.collect()  # a full collection of this big process would land in some random function
        pr = cProfile.Profile()
        if stage == "load":
            pr.enable()
            model = gp.load(path)
            pr.disable()
        elif stage == "analyze":
            pr.enable()
            gp.analyze(model)
            pr.disable()
        else:
            pr.enable()
            gp.prune(model, ratio=ratio)
            pr.disable()
        st = pstats.Stats(pr)
        total = st.total_tt
        rows = []
        for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():
            short = file
            for marker in ("site-packages/", "/work/main/"):
                if marker in short:
                    short = short.split(marker, 1)[1]
            rows.append({"function": f"{short}:{line}({fn})", "calls": nc, "tottime_s": tt, "cumtime_s": ct})
        by_tt = sorted(rows, key=lambda r: -r["tottime_s"])[:top]
        by_ct = sorted((r for r in rows if r["function"].startswith("graphprune/")),
                       key=lambda r: -r["cumtime_s"])[:top]
        entry = {"total_s": total, "top_tottime": by_tt, "top_cumtime_graphprune": by_ct}
        if stage == "prune":
            # Where gp.prune's time goes: the direct callees of its passes' run() (plan-channels,
            # apply-plan: the pipeline gp.prune runs; prune-channels is the two in one)
            runs = [k for k in st.stats if k[2] == "run" and k[0].replace("\\", "/").endswith(
                ("pruning/prune_channels.py", "pruning/plan_channels.py", "pruning/apply_plan.py"))]
            phases = {}
            for (file, line, fn), (_cc, _nc, _tt, _ct, callers) in st.stats.items():
                for rk in runs:
                    if rk in callers:
                        short = file.replace("\\", "/").split("graphprune/")[-1] if "graphprune/" in file else file
                        phases[f"{short}:{line}({fn})"] = phases.get(f"{short}:{line}({fn})", 0.0) + callers[rk][3]
            entry["phases_cumtime_s"] = dict(sorted(((k, v) for k, v in phases.items() if v >= 1e-3),
                                                    key=lambda kv: -kv[1])[:8])
        out[stage] = entry
    return out


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def _medians(runs: list[dict], combos: dict[str, tuple[str, ...]]) -> dict:
    """Median over repeats of each single step and of each sum of steps."""
    out = {k: median([r[k] for r in runs]) for k in runs[0]}
    out.update({name: median([sum(r[k] for k in keys) for r in runs]) for name, keys in combos.items()})
    return out


GP_COMBOS = {"load+analyze": ("load", "analyze"), "load+prune": ("load", "prune"),
             "load+analyze+prune": ("load", "analyze", "prune")}
TP_COMBOS = {"init+step": ("init", "step")}


def _speedups(g: dict, t: dict) -> dict:
    return {"analysis": t["build"] / g["analyze"],
            "analysis_incl_load": t["build"] / g["load+analyze"],
            "end_to_end": t["init+step"] / g["load+prune"],
            "end_to_end_excl_load": t["init+step"] / g["prune"]}


# ---------------------------------------------------------------------------
# --real: torchvision and HF LLaMA models, end to end in a subprocess, peak RSS
# ---------------------------------------------------------------------------

REAL_MODELS = ("resnet50", "resnet50_ext", "mobilenet_v3_large", "llama2", "llama8", "llama30")

_CHILD = r"""
import resource, sys, time
import graphprune as gp, onnx, onnxruntime, onnx_ir, numpy  # noqa: F401  (imports out of the figure)
import graphprune.analysis.dependency, graphprune.passes, graphprune.workflow  # noqa: F401
def peak_kb():
    # VmHWM: this process's own high-water mark. ru_maxrss keeps the parent's peak across
    # fork+exec, so a child of a big benchmark process would report the parent's figure.
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = peak_kb()
t0, c0 = time.perf_counter(), time.process_time()
if sys.argv[4] == "oracle":  # what `graphprune prune` does: load, prune, the oracle (2 ORT sessions), write
    from graphprune.workflow import PruneOptions, run_prune
    res = run_prune(sys.argv[1], PruneOptions(ratio=float(sys.argv[3]), check=True), out=sys.argv[2])
    assert res.oracle is not None and res.oracle.ok, res.oracle
    t1, rss_load, model = float("nan"), -1, res.model
else:
    model = gp.load(sys.argv[1])
    t1 = time.perf_counter()
    rss_load = peak_kb()
    res = gp.prune(model, ratio=float(sys.argv[3]))
    gp.save(res.model, sys.argv[2])
t2, c2 = time.perf_counter(), time.process_time()
peak = peak_kb()
print(base, rss_load, peak, t1 - t0, t2 - t0, c2 - c0, len(model.graph))
"""


def _torchvision_importable() -> None:
    import types

    # the CPU torch wheel lacks the ops torchvision's meta registrations refer to
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))


def _torchvision():
    _torchvision_importable()
    import torchvision

    return torchvision


def export_real(name: str, root: Path):
    """(path of the .onnx, torch module and example input for Torch-Pruning or None)."""
    from tests.zoo.torch_models import export_onnx, randomize_batchnorm

    path = root / f"{name}.onnx"
    if name == "resnet50_ext":  # the same model, its weights in resnet50_ext.onnx.data
        import onnx

        src, module, x = export_real("resnet50", root)
        onnx.save_model(onnx.load(str(src)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        return path, None, None
    if name.startswith("llama"):
        import tests.zoo.hf_models as hf
        from transformers import LlamaConfig, LlamaModel

        def make():
            torch.manual_seed(0)
            cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=int(name[len("llama"):]), num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=64, attn_implementation="eager")
            return LlamaModel(cfg).eval(), "text"

        hf.HF_ZOO["_bench_llama"] = make
        try:
            hf.export_hf("_bench_llama", str(path), dynamo=False)
        finally:
            hf.HF_ZOO.pop("_bench_llama", None)
        return path, None, None
    if path.exists() and name in _exported:  # exported once per run (resnet50_ext reuses it)
        return path, *_exported[name]
    try:
        tv = _torchvision()
    except ImportError:
        tv = None
    torch.manual_seed(0)
    if tv is None and name == "resnet50":
        # torchvision not installed: the same architecture (torchvision's ResNet-50 v1.5,
        # 25.6 M parameters) as bench_ort_speedup defines it, without torchvision
        from bench_ort_speedup import ResNet50

        module = ResNet50().eval()
    elif tv is None:
        raise SystemExit(f"{name} needs torchvision (see benchmarks/README.md)")
    else:
        module = getattr(tv.models, name)(weights=None).eval()
    randomize_batchnorm(module, torch.Generator().manual_seed(0))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    export_onnx(module, x, path, dynamo=False)
    _exported[name] = (module, x)
    return path, module, x


_exported: dict = {}


def measure_subprocess(path: Path, out: Path, ratio: float, mode: str = "api") -> dict:
    """One fresh process: mode "api" = gp.load + gp.prune + gp.save; "oracle" = run_prune
    with the oracle and the write (what `graphprune prune` does)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(out), str(ratio), mode],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(f"child failed on {path}: {r.stderr[-2000:]}")
    base, rss_load, peak, load_s, e2e_s, cpu_s, nodes = r.stdout.split()[-7:]
    size = sum(f.stat().st_size for f in [path, *path.parent.glob(path.name + "*.data")])
    kb = 1024 / size
    return {"load_s": float(load_s), "e2e_s": float(e2e_s), "e2e_cpu_s": float(cpu_s), "nodes": int(nodes),
            "file_bytes": size, "rss_load_x": (int(rss_load) - int(base)) * kb,
            "rss_peak_x": (int(peak) - int(base)) * kb}


def run_real(args) -> int:
    _torchvision_importable()  # transformers imports torchvision when it is installed
    names = [n for n in args.models.split(",") if n] if args.models else list(REAL_MODELS)
    bad = [n for n in names if n not in REAL_MODELS]
    if bad:
        raise SystemExit(f"unknown model(s) {bad}; choose from {', '.join(REAL_MODELS)}")
    try:
        import torch_pruning  # noqa: F401
        have_tp = True
    except ImportError:
        have_tp = False
    tmp = tempfile.TemporaryDirectory(prefix="gp_bench_real_") if args.out is None else None
    root = Path(args.out or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    repeats = max(1, args.repeats)
    rows = {}
    for name in names:
        print(f"[{name}] exporting ...", flush=True)
        path, module, x = export_real(name, root)
        gp_runs, tp_runs = [], []
        or_runs = []
        for r in range(repeats):
            gp_runs.append(measure_subprocess(path, root / f"{name}.small.onnx", args.ratio))
            if args.oracle:
                or_runs.append(measure_subprocess(path, root / f"{name}.checked.onnx", args.ratio, "oracle"))
            if have_tp and module is not None:
                tp_runs.append(run_torch_pruning_module(module, x, args.ratio))
            print(f"  repeat {r + 1}/{repeats}: load+prune+save {gp_runs[-1]['e2e_s']:.3f}s, "
                  f"peak RSS {gp_runs[-1]['rss_peak_x']:.2f}x file"
                  + (f"; with the oracle {or_runs[-1]['e2e_s']:.3f}s, peak RSS {or_runs[-1]['rss_peak_x']:.2f}x"
                     if or_runs else "")
                  + (f", TP init+step {tp_runs[-1]:.3f}s" if tp_runs else ""), flush=True)
        row = {k: median([g[k] for g in gp_runs]) for k in gp_runs[0]}
        row["nodes"], row["file_bytes"] = gp_runs[0]["nodes"], gp_runs[0]["file_bytes"]
        row["raw"] = gp_runs
        if or_runs:  # load + prune + oracle + write in one run_prune (`graphprune prune`)
            row["oracle_e2e_s"] = median([g["e2e_s"] for g in or_runs])
            row["oracle_rss_peak_x"] = median([g["rss_peak_x"] for g in or_runs])
            row["oracle_raw"] = or_runs
        if tp_runs:
            row["tp_init_step_s"] = median(tp_runs)
            row["tp_ratio"] = row["tp_init_step_s"] / row["e2e_s"]  # > 1: graphprune faster
        rows[name] = row
    print()
    print(f"median of {repeats} fresh processes, ratio {args.ratio}; e2e = gp.load + gp.prune + gp.save"
          + ("; 'oracle' = run_prune with the oracle and the write (graphprune prune)" if args.oracle else ""))
    print(table([[n, r["nodes"], f"{r['file_bytes'] / 1e6:.1f}", f"{r['load_s']:.3f}", f"{r['e2e_s']:.3f}",
                  f"{r['rss_load_x']:.2f}", f"{r['rss_peak_x']:.2f}",
                  f"{r['oracle_rss_peak_x']:.2f}" if "oracle_rss_peak_x" in r else "n/a",
                  f"{r['tp_ratio']:.2f}" if "tp_ratio" in r else "n/a"] for n, r in rows.items()],
                ["model", "nodes", "file MB", "load s", "e2e s", "RSS load / file", "RSS peak / file",
                 "oracle RSS peak / file", "TP init+step / gp e2e"]))
    out = write_results(NAME + "_real" + (f"_{args.tag}" if args.tag else ""),
                        {"config": {"models": names, "ratio": args.ratio, "repeats": repeats, "oracle": args.oracle},
                         "models": rows})
    print(f"\nwrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


def run_torch_pruning_module(template: nn.Module, x: torch.Tensor, ratio: float) -> float:
    """Torch-Pruning MagnitudePruner init + step on a fresh copy (the copy is not timed)."""
    import torch_pruning as tp

    m = copy.deepcopy(template)
    head = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1:]
    gc.collect()
    t = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=head)
    pruner.step()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", default="2,8,32", help="basic blocks per stage for 1x,4x,16x... (default 2,8,32)")
    ap.add_argument("--widths", default="32,64,128", help="stage widths (default 32,64,128)")
    ap.add_argument("--ratio", type=float, default=0.3, help="pruning ratio for both tools (default 0.3)")
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats per depth (default 9, min 3)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch.set_num_threads for Torch-Pruning (default 1, like graphprune; with 2 on a "
                         "2-vCPU box any other busy process makes torch's OpenMP threads wait on each other)")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile of graphprune at the largest depth")
    ap.add_argument("--tag", default="", help="write results/<name>_<tag>.json instead of results/<name>.json")
    ap.add_argument("--out", default=None, help="where to keep the ONNX files (default: a temp dir)")
    ap.add_argument("--real", action="store_true", help="torchvision / HF LLaMA models end to end with peak RSS")
    ap.add_argument("--oracle", action="store_true",
                    help="with --real: also measure load + prune + the oracle + write (run_prune, as `graphprune prune`)")
    ap.add_argument("--models", default="", help=f"with --real: some of {','.join(REAL_MODELS)} (default all)")
    args = ap.parse_args(argv)
    _common.quiet_warnings()
    torch.set_num_threads(args.torch_threads)
    if args.real:
        return run_real(args)

    import graphprune as gp
    import torch_pruning as tp  # noqa: F401  (import cost out of the timings)
    from graphprune.analysis.cost import model_cost
    from tests.zoo.torch_models import export_onnx

    blocks = [int(b) for b in args.blocks.split(",")]
    widths = tuple(int(w) for w in args.widths.split(","))
    repeats = max(3, args.repeats)
    base = blocks[0]
    t_script = time.perf_counter()
    loadavg_start = list(os.getloadavg())
    tmp = tempfile.TemporaryDirectory(prefix="gp_bench_") if args.out is None else None
    root = Path(args.out or tmp.name)
    root.mkdir(parents=True, exist_ok=True)

    # Warm-up: imports, lazy registries, first-call costs of both tools (not reported).
    wm, wx = build_model(1, widths)
    wpath = export_onnx(wm, wx, root / "warmup.onnx", dynamo=False)
    for _ in range(2):
        run_graphprune(Path(wpath), root, args.ratio)
        run_torch_pruning(wm, wx, args.ratio)

    per_depth = []
    for n in blocks:
        label = f"{n // base}x" if n % base == 0 else f"{n / base:.1f}x"
        print(f"[{label}] {n} blocks/stage: building + exporting ...", flush=True)
        template, x = build_model(n, widths)
        d = root / f"resnet_{n}"
        d.mkdir(exist_ok=True)
        with Timer() as t_exp:
            path = Path(export_onnx(template, x, d / "model.onnx", dynamo=False))
        dense = gp.load(path)
        dense_cost = model_cost(dense)
        n_convs = sum(1 for m in template.modules() if isinstance(m, nn.Conv2d))
        torch_params = n_params(template)

        runs = {("gp", "wall"): [], ("gp", "cpu"): [], ("tp", "wall"): [], ("tp", "cpu"): []}
        last = {}
        with CpuMonitor() as mon:
            for r in range(repeats):
                order = ("gp", "tp") if r % 2 == 0 else ("tp", "gp")
                for tool in order:
                    if tool == "gp":
                        res = run_graphprune(path, d, args.ratio)
                    else:
                        res = run_torch_pruning(template, x, args.ratio)
                    last[tool] = res
                    for clock in ("wall", "cpu"):
                        runs[(tool, clock)].append(res[clock])
                gw, tw = last["gp"]["wall"], last["tp"]["wall"]
                print(f"  repeat {r + 1}/{repeats}: gp load+prune {gw['load'] + gw['prune']:.3f}s, "
                      f"tp init+step {tw['init'] + tw['step']:.3f}s", flush=True)

        # Oracle on the last graphprune result; sanity forward of the last TP result.
        with Timer() as t_chk:
            check = gp.check(path, last["gp"]["small"], last["gp"]["plan"])
        pruned_cost = model_cost(gp.load(last["gp"]["small"]))
        with torch.no_grad():
            tp_out_shape = tuple(last["tp"]["model"](x).shape)

        row = {
            "label": label, "blocks_per_stage": n, "onnx_nodes": dense_cost.nodes,
            "torch_convs": n_convs, "torch_params": torch_params,
            "export_s": t_exp.s, "machine_load": mon.result,
            "gp": _medians(runs[("gp", "wall")], GP_COMBOS),
            "tp": _medians(runs[("tp", "wall")], TP_COMBOS),
            "gp_cpu": _medians(runs[("gp", "cpu")], GP_COMBOS),
            "tp_cpu": _medians(runs[("tp", "cpu")], TP_COMBOS),
            "raw": {f"{tool}_{clock}": v for (tool, clock), v in runs.items()},
            "groups": {"all": last["gp"]["groups"], "prunable": last["gp"]["prunable_groups"],
                       "frozen": last["gp"]["frozen_groups"], "pruned": last["gp"]["plan_groups"]},
            "pruned": {
                "gp_params_ratio": pruned_cost.params / dense_cost.params,
                "gp_macs_ratio": pruned_cost.macs / dense_cost.macs,
                "tp_params_ratio": n_params(last["tp"]["model"]) / torch_params,
                "tp_forward_output_shape": list(tp_out_shape),
            },
            "oracle": {"ok": bool(check.ok), "worst_relative": check.worst_relative,
                       "runs": check.runs, "summary": check.summary(), "check_s": t_chk.s},
        }
        row["speedup"] = _speedups(row["gp"], row["tp"])
        row["speedup_cpu_time"] = _speedups(row["gp_cpu"], row["tp_cpu"])
        row["gp_us_per_node"] = {k: 1e6 * row["gp"][k] / dense_cost.nodes
                                 for k in ("load", "analyze", "prune", "load+prune")}
        per_depth.append(row)
        print(f"  oracle: {check.summary()}", flush=True)

    # Scaling exponent between the smallest and the largest model.
    lo, hi = per_depth[0], per_depth[-1]
    span = math.log(hi["onnx_nodes"] / lo["onnx_nodes"])

    def alpha(key, step):
        return math.log(hi[key][step] / lo[key][step]) / span if span > 0 else float("nan")

    scaling = {f"{key}_{step}": alpha(key, step)
               for key, steps in (("gp", ("load", "analyze", "prune", "load+prune")),
                                  ("tp", ("build", "init+step")))
               for step in steps}

    # ---- tables ----------------------------------------------------------------------
    ms = lambda s: f"{1e3 * s:.1f}"  # noqa: E731
    print()
    print(f"ResNet-style CNN, widths {widths}, input 1x3x32x32, ratio {args.ratio}, torch threads "
          f"{args.torch_threads}; median wall time of {repeats} repeats (ms)")
    rows = []
    for r in per_depth:
        g, t = r["gp"], r["tp"]
        rows.append([r["label"], r["blocks_per_stage"], r["onnx_nodes"], ms(r["export_s"]),
                     ms(g["load"]), ms(g["analyze"]), ms(g["prune"]), ms(g["load+prune"]),
                     ms(t["build"]), ms(t["init"]), ms(t["step"]), ms(t["init+step"]),
                     f"{r['machine_load']['other_busy']:.2f}" if r["machine_load"] else "n/a"])
    print(table(rows, ["depth", "blk/stg", "nodes", "export", "gp load", "gp analyze", "gp prune",
                       "gp load+prune", "tp build", "tp init", "tp step", "tp init+step", "other load"]))
    print()
    print("speedup = Torch-Pruning time / graphprune time (>1: graphprune faster; goal >= 5); "
          "wall time, [CPU time] in brackets")
    rows = []
    for r in per_depth:
        s, c, u = r["speedup"], r["speedup_cpu_time"], r["gp_us_per_node"]
        rows.append([r["label"], r["onnx_nodes"]] +
                    [f"{s[k]:.2f} [{c[k]:.2f}]" for k in ("analysis", "analysis_incl_load", "end_to_end",
                                                         "end_to_end_excl_load")] +
                    [f"{u['analyze']:.0f}", f"{u['prune']:.0f}", f"{u['load+prune']:.0f}"])
    print(table(rows, ["depth", "nodes", "analysis", "analysis+load", "end-to-end", "e2e excl. load",
                       "gp us/node analyze", "gp us/node prune", "gp us/node load+prune"]))
    print()
    print("scaling exponent alpha (wall time ~ nodes^alpha, smallest vs largest depth; 1 = linear): " +
          ", ".join(f"{k} {v:.2f}" for k, v in scaling.items()))
    print()
    rows = []
    for r in per_depth:
        p, o, gr = r["pruned"], r["oracle"], r["groups"]
        rows.append([r["label"], f"{gr['prunable']}/{gr['all']}", gr["pruned"],
                     f"{p['gp_params_ratio']:.3f}", f"{p['gp_macs_ratio']:.3f}", f"{p['tp_params_ratio']:.3f}",
                     "PASS" if o["ok"] else "FAIL", f"{o['worst_relative']:.1e}"])
    print(table(rows, ["depth", "gp prunable/groups", "gp pruned groups", "gp params after/before",
                       "gp MACs after/before", "tp params after/before", "oracle", "worst rel. err"]))

    profile = None
    if not args.no_profile:
        big = per_depth[-1]
        profile = profile_graphprune(root / f"resnet_{big['blocks_per_stage']}" / "model.onnx", args.ratio)
        print()
        print(f"cProfile of graphprune at {big['label']} ({big['onnx_nodes']} nodes; profiler overhead "
              f"inflates times): load {profile['load']['total_s']:.3f}s, analyze "
              f"{profile['analyze']['total_s']:.3f}s, prune {profile['prune']['total_s']:.3f}s")
        tot = profile["prune"]["total_s"]
        print(table([[k, f"{1e3 * v:.1f}", f"{100 * v / tot:.0f}%"]
                     for k, v in profile["prune"]["phases_cumtime_s"].items()],
                    ["gp.prune: direct callees of the prune pass", "ms", "of prune"]))
        print()
        for stage in ("load", "analyze", "prune"):
            print(table([[r["function"][-80:], r["calls"], f"{1e3 * r['tottime_s']:.1f}", f"{1e3 * r['cumtime_s']:.1f}"]
                         for r in profile[stage]["top_tottime"][:10]],
                        [f"{stage}: top by own time", "calls", "tottime ms", "cumtime ms"]))
            print()

    total = time.perf_counter() - t_script
    path = write_results(NAME + (f"_{args.tag}" if args.tag else ""), {
        "config": {"blocks_per_stage": blocks, "widths": list(widths), "ratio": args.ratio,
                   "repeats": repeats, "torch_threads": args.torch_threads, "input_shape": [1, 3, 32, 32],
                   "exporter": "torchscript (dynamo=False)", "opset": 17},
        "depths": per_depth, "scaling_exponent": scaling, "profile_largest_depth": profile,
        "script_runtime_s": total, "loadavg_at_start": loadavg_start,
    })
    print(f"\nwrote {path} (script runtime {total:.0f} s)")
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(r["oracle"]["ok"] for r in per_depth) else 1


if __name__ == "__main__":
    sys.exit(main())
