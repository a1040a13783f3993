"""ONNX Runtime backend: offline graph optimisation, optional .ort, tuned session settings.

Phases: legalize (the pruned ONNX as is), lower (ORT's offline optimisations, saved),
tune (session settings measured on this machine when the target is this machine), emit
(model file(s), session.json, a minimal loader script).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from graphprune.backends.targets import Target

log = logging.getLogger(__name__)

LOADER = '''"""Loader for a graphprune ONNX Runtime deployment.

python run_model.py [inputs.npz] [-o outputs.npz]: runs the model with the session settings
graphprune measured (session.json) on the named arrays of inputs.npz, or on random inputs of
each input's type at the shapes the compile measured at; prints each output's shape and first
values, and with -o saves them.
"""
import argparse, json, time
from pathlib import Path
import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser(description="Run the deployed model (session settings from session.json).")
ap.add_argument("inputs", nargs="?", help=".npz of the inputs by name (default: random, at the measured shapes)")
ap.add_argument("-o", "--out", help="save the outputs to this .npz file")
args = ap.parse_args()
here = Path(__file__).resolve().parent
cfg = json.loads((here / "session.json").read_text())
so = ort.SessionOptions()
so.intra_op_num_threads = cfg["intra_op_num_threads"]
so.inter_op_num_threads = cfg["inter_op_num_threads"]
so.execution_mode = getattr(ort.ExecutionMode, cfg["execution_mode"])
so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, cfg["graph_optimization_level"])
providers = [p for p in cfg["providers"] if p in ort.get_available_providers()]
sess = ort.InferenceSession(str(here / cfg["model"]), so, providers=providers)
names_in = [i.name for i in sess.get_inputs()]
if args.inputs:
    feeds = dict(np.load(args.inputs))
    if len(feeds) == 1 and len(names_in) == 1:  # one array for a one-input model is that input
        feeds = {names_in[0]: next(iter(feeds.values()))}
else:  # random data of each input's type, at the shapes the compile measured at
    rng, shapes = np.random.default_rng(0), cfg.get("example_shapes") or {}
    kinds = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    feeds = {}
    for i in sess.get_inputs():
        shape = shapes.get(i.name) or [d if isinstance(d, int) else 1 for d in i.shape]
        kind = kinds.get(i.type, np.float32)
        if np.issubdtype(kind, np.floating):
            feeds[i.name] = rng.standard_normal(shape).astype(kind)
        else:  # 0 or 1: a valid token id, index or flag
            feeds[i.name] = np.asarray(rng.integers(0, 2, size=shape)).astype(kind)
t0 = time.perf_counter()
outs = sess.run(None, feeds)
print(f"ran in {(time.perf_counter() - t0) * 1000:.2f} ms on", {k: list(v.shape) for k, v in feeds.items()})
names = [o.name for o in sess.get_outputs()]
for name, out in zip(names, outs):
    print(f"{name}: {list(np.shape(out))} {np.asarray(out).ravel()[:5]}")
if args.out:
    save = args.out if args.out.endswith(".npz") else args.out + ".npz"  # the name numpy writes
    np.savez(save, **dict(zip(names, outs)))
    print("saved", save)
'''


def _session_options(cfg: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg["intra_op_num_threads"]
    so.inter_op_num_threads = cfg["inter_op_num_threads"]
    so.execution_mode = getattr(ort.ExecutionMode, cfg["execution_mode"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, cfg["graph_optimization_level"])
    so.log_severity_level = 3
    return so


def measure(model_path: str, cfg: dict, feeds: dict, repeats: int = 15, budget_s: float = 3.0) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_path, _session_options(cfg), providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return float(np.median(times) * 1000)


class OrtBackend:
    name = "onnxruntime"

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:  # pragma: no cover - a core dependency
            return False, f"onnxruntime is not installed ({exc})"
        return True, ""

    def compile(self, onnx_path: Path, target: Target, out_dir: Path, *, ort_format: bool = False,
                feeds: dict | None = None, tune: bool = True, log_fn=None) -> dict:
        log_fn = log_fn or log.info
        import onnxruntime as ort

        out_dir.mkdir(parents=True, exist_ok=True)
        notes = []
        # ENABLE_ALL bakes in layouts for this CPU's vector width (NCHWc): only for this CPU
        level = "ORT_ENABLE_ALL" if target.this_cpu else "ORT_ENABLE_EXTENDED"
        if not target.this_cpu:
            where = "the device" if not target.host else f"any {target.name} CPU (this machine's vectors are wider)"
            notes.append(f"offline optimisation at {level}: portable to {where}; "
                         "layout-specific optimisations happen on the device at load")
        optimized = out_dir / "model.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.optimized_model_filepath = str(optimized)
        so.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        artifacts = ["model.onnx"]
        if ort_format:
            so2 = ort.SessionOptions()
            so2.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            so2.optimized_model_filepath = str(out_dir / "model.ort")
            so2.add_session_config_entry("session.save_model_format", "ORT")
            so2.log_severity_level = 3
            ort.InferenceSession(str(onnx_path), so2, providers=["CPUExecutionProvider"])
            artifacts.append("model.ort")
        cfg = {"model": "model.onnx", "providers": list(target.ort_providers), "intra_op_num_threads": 0,
               "inter_op_num_threads": 0, "execution_mode": "ORT_SEQUENTIAL",
               "graph_optimization_level": "ORT_ENABLE_ALL", "measured": None}
        if feeds:  # run_model.py's random inputs take these shapes (its dynamic dims are not all 1)
            cfg["example_shapes"] = {k: [int(d) for d in np.shape(v)] for k, v in feeds.items()}
        if target.host and tune and feeds is not None:
            cfg = self._tune_session(str(optimized), cfg, feeds, log_fn)
        elif not target.host:
            notes.append("session settings not measured: the target is not this machine "
                         "(threads 0 = ORT's default of one per core)")
        (out_dir / "session.json").write_text(json.dumps(cfg, indent=1) + "\n")
        (out_dir / "run_model.py").write_text(LOADER)
        artifacts += ["session.json", "run_model.py"]
        return {"artifacts": artifacts, "optimization_level": level, "session": cfg, "notes": notes,
                "host_runnable": target.host}

    def _tune_session(self, model_path: str, base: dict, feeds: dict, log_fn) -> dict:
        cores = os.cpu_count() or 1
        threads = sorted({1, cores})
        modes = ["ORT_SEQUENTIAL", "ORT_PARALLEL"]
        trials = []
        for t, mode in itertools.product(threads, modes):
            if mode == "ORT_PARALLEL" and cores == 1:
                continue
            cfg = {**base, "intra_op_num_threads": t, "inter_op_num_threads": 1 if mode == "ORT_SEQUENTIAL" else cores,
                   "execution_mode": mode}
            ms = measure(model_path, cfg, feeds)
            trials.append((ms, cfg))
            log_fn(f"  session: threads={t} {mode.lower()[4:]}: {ms:.3f} ms")
        # second pass over the two best, interleaved, to cut noise
        trials.sort(key=lambda x: x[0])
        best = trials[: min(2, len(trials))]
        again = [(float(np.median([measure(model_path, c, feeds) for _ in range(2)])), c) for _, c in best]
        again.sort(key=lambda x: x[0])
        ms, cfg = again[0]
        cfg = dict(cfg)
        cfg["measured"] = {"median_ms": round(ms, 4),
                           "candidates": [{"intra_op_num_threads": c["intra_op_num_threads"],
                                           "execution_mode": c["execution_mode"], "median_ms": round(m, 4)}
                                          for m, c in trials]}
        return cfg

    def run(self, out_dir: Path, feeds: dict) -> list[np.ndarray]:
        import onnxruntime as ort

        cfg = json.loads((out_dir / "session.json").read_text())
        sess = ort.InferenceSession(str(out_dir / cfg["model"]), _session_options(cfg),
                                    providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
