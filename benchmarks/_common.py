"""Shared helpers for the graphprune benchmarks (timing, tables, JSON results).

Each benchmark is a standalone script (``python benchmarks/<name>.py``); this module only
holds the bits they share. It puts the repository root on ``sys.path`` so that the test
model zoo (``tests.zoo.torch_models``) can be imported for its ONNX export helper.
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def median(xs) -> float:
    return float(statistics.median(xs))


class Timer:
    """``with Timer() as t: ...`` then ``t.s`` (wall seconds, perf_counter) and ``t.cpu``
    (CPU seconds of this process, all its threads: time.process_time).

    On a shared 2-vCPU machine the wall time of a step includes time the process was
    waiting for a core; CPU time does not, so for single-threaded work it is the more
    stable of the two (and for multi-threaded work it adds up the threads).

    A full garbage collection runs *before* the clock starts so that one step does not
    pay for the garbage the previous one left behind.
    """

    def __enter__(self):
        gc.collect()
        self._c0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0
        return False


class CpuMonitor:
    """How busy the machine was with *other* work while we measured (Linux only).

    ``other_busy`` = (CPU time all processes used - CPU time this process used) /
    (wall time x CPUs), from /proc/stat and os.times(); ``steal`` = time the hypervisor
    gave our vCPUs to someone else. On a 2-vCPU box, other_busy ~ 0.5 means one core
    was busy elsewhere, which shows up directly in 2-thread latencies.
    """

    @staticmethod
    def _snap():
        try:
            with open("/proc/stat") as f:
                parts = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
        hz = os.sysconf("SC_CLK_TCK")
        t = os.times()
        return {"busy": (user + nice + system + irq + softirq) / hz, "steal": steal / hz,
                "own": t.user + t.system, "wall": time.perf_counter()}

    def __enter__(self):
        self._a = self._snap()
        return self

    def __exit__(self, *exc):
        b, a = self._snap(), self._a
        self.result = None
        if a is not None and b is not None:
            cap = max(b["wall"] - a["wall"], 1e-9) * (os.cpu_count() or 1)
            other = (b["busy"] - a["busy"]) - (b["own"] - a["own"])
            self.result = {"other_busy": round(max(other, 0.0) / cap, 3),
                           "steal": round((b["steal"] - a["steal"]) / cap, 3)}
        return False


def environment() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        # 1/5/15-minute load averages when the results were written: with 2 vCPUs any
        # other busy process (a test run, a build) shows up directly in the timings.
        "loadavg_at_end": list(os.getloadavg()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
    try:
        import onnx_ir

        env["onnx_ir"] = onnx_ir.__version__
    except Exception:  # pragma: no cover - informational only
        pass
    try:
        from importlib.metadata import version

        env["torch_pruning"] = version("torch-pruning")
    except Exception:
        pass
    try:
        import graphprune

        env["graphprune"] = graphprune.__version__
    except Exception:
        pass
    try:
        import subprocess

        env["git_commit"] = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=False).stdout.strip() or None
        # Files under graphprune/ that differ from that commit (others edit concurrently).
        env["graphprune_uncommitted_files"] = len([ln for ln in subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "graphprune"],
            capture_output=True, text=True, check=False).stdout.splitlines() if ln.strip()])
    except Exception:
        pass
    return env


def make_session(path, threads: int):
    """The benchmarks' ONNX Runtime session: CPU, `threads` intra-op threads, one inter-op
    thread, sequential, ORT_ENABLE_ALL (what a user gets by default), warnings off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def table(rows: list[list], headers: list[str]) -> str:
    """Plain text table, first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def write_results(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name,
               "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
               "environment": environment(), **payload}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def quiet_warnings() -> None:
    """The TorchScript exporter and torch_pruning are chatty; keep the tables readable."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)
