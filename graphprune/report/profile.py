"""Per-layer latency from ONNX Runtime's own profiler, for the reports.

A few runs of one CPU session with `SessionOptions.enable_profiling`; the JSON trace has
one `<node>_kernel_time` event per node and run. The session uses basic graph
optimisations only: those keep node names (BatchNormalization is folded into its Conv,
which keeps the Conv's name), so the times land on the layers the report lists; the
deployed model's end-to-end latency is measured elsewhere, with every optimisation.
The trace goes to a temporary folder outside the user's files and is deleted.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

# How the reports label the per-layer times: not the end-to-end figures' settings, so they
# need not add up to them (a 1-thread profile of an r30 CNN summed to 0.60 ms vs 0.25 ms).
PROFILE_NOTE = ("per-layer latency: ONNX Runtime's profiler, kernel time per node, 1 thread, basic graph "
                "optimisations, median of 5 runs; the end-to-end latency uses every optimisation and the "
                "session's own threads, so these times do not add up to it")


def node_times(trace: list[dict]) -> dict[str, float]:
    """Median kernel time per node over the runs in an ORT profiling trace (ms)."""
    per: dict[str, list[float]] = {}
    for ev in trace:
        name = ev.get("name", "")
        if ev.get("cat") == "Node" and name.endswith("_kernel_time"):
            per.setdefault(name[: -len("_kernel_time")], []).append(float(ev.get("dur", 0)) / 1000.0)
    return {k: float(np.median(v)) for k, v in per.items()}


def profile_model(model_path: str | Path, feeds: dict, runs: int = 5) -> dict[str, float]:
    """Per-node latency (ms, median of `runs` after one warm-up run) of a model file."""
    import onnxruntime as ort

    tmp = Path(tempfile.mkdtemp(prefix="graphprune-profile-"))
    try:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(tmp / "ort")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(None, feeds)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # the first run (warm-up) is one of runs+1 samples: the median ignores it
    return node_times(trace)


def profile_pair(before: str | Path, after: str | Path, shapes, seed: int = 0, runs: int = 5) -> dict:
    """Per-node latency of the input and the pruned model on the same random inputs at
    `shapes` (the run's InputShapes): {"before": {...}, "after": {...}, "runs": n}; on
    failure {"error": "..."} (a report is never lost to a profiler problem)."""
    from graphprune.runtime import ort as gort

    try:
        feeds = gort.random_inputs(gort.session(str(before)), seed=seed, shapes=shapes)
        return {"before": profile_model(before, feeds, runs), "after": profile_model(after, feeds, runs),
                "runs": runs, "optimization": "ORT_ENABLE_BASIC, 1 thread"}
    except Exception as exc:  # noqa: BLE001 - the report says why the figures are missing
        return {"error": f"{type(exc).__name__}: {exc}"}
