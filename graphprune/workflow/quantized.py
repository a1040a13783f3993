"""`compile --quantize int8`: the ONNX Runtime deployment quantized after pruning and repair.

    pruned float model ──(calibration batches)──▶ onnxruntime/model.qdq.onnx (QDQ int8)
                       ──(ORT offline optimisation)──▶ onnxruntime/model.onnx (deployed)

The quantization itself is graphprune.backends.onnxruntime.quantize (every ONNX Runtime
quantization call lives there). Here: the refusals (no calibration data, the TVM backend),
and the deployment's own quality line and latency: output cosine of the deployed int8
model against the dense float input on the calibration data, gated by --max-drop like the
float model, and its ONNX Runtime latency against the dense float input and the pruned
float model, at the run's representative shape.
"""
from __future__ import annotations

from pathlib import Path

from graphprune.errors import UsageError

MODES = ("none", "int8")
QDQ_NAME = "model.qdq.onnx"


def check_options(quantize: str, calib, backend: str, src: Path | None = None) -> None:
    """Before any work: an unknown mode, int8 without calibration data, int8 with TVM, int8
    of a model that is quantized already (`src`)."""
    if quantize not in MODES:
        raise UsageError(f"unknown --quantize {quantize!r}", hint="choose none or int8")
    if quantize == "none":
        return
    done = already_quantized(src) if src is not None and src.is_file() else []
    if done:
        raise UsageError(f"--quantize int8: the input model is quantized already (it contains {', '.join(done)})",
                         hint="drop --quantize: the pruned model stays in the input's integer format")
    if calib is None:
        raise UsageError("--quantize int8 needs calibration data (--calib): static quantization takes each "
                         "activation's int8 range from real inputs, and ranges taken from random data would "
                         "not be the ranges real inputs have",
                         hint="give --calib (an .npz, an image folder or module:function), or drop --quantize")
    if backend == "tvm":
        raise UsageError("--quantize int8 quantizes the ONNX Runtime deployment; the TVM backend compiles "
                         "float models only", hint="use --backend onnxruntime (or auto), or drop --quantize")


def quantize(pruned_path: Path, calibration, out_dir: Path, log_fn, *, src: Path, score: str | None = None):
    """The pruned (and repaired) float model as a QDQ int8 model in `out_dir`: one per range
    method, the one kept scored best by `--score` when given, else by output cosine against
    the dense float input `src` on the calibration data."""
    from graphprune.backends.onnxruntime.quantize import RANGE_METHODS, quantize_int8

    scorer, name = range_scorer(src, calibration, score)
    log_fn("onnxruntime: int8 static quantization (QDQ, per-channel QInt8 weights, QInt8 activations; "
           f"ranges by {' and by '.join(RANGE_METHODS)} on the --calib data, the one kept scored by {name}) ...")
    out_dir.mkdir(parents=True, exist_ok=True)
    res = quantize_int8(pruned_path, calibration.batches, out_dir / QDQ_NAME, score=scorer, log_fn=log_fn)
    res.settings["ranges_scored_by"] = name
    return res


def range_scorer(src: Path, calibration, score: str | None):
    """(path -> float, its name): the search's Scorer (the user's --score function, or the mean
    output cosine against the dense float input), here on the calibration batches."""
    from graphprune.workflow.search import Scorer

    scorer = Scorer(str(src), list(calibration.batches()), [], score,
                    cosine_name="output cosine vs the dense float input on the calibration data")
    return (lambda path: scorer(str(path))["score"]), scorer.name


def fidelity(src: Path, deployed: Path, calibration) -> dict:
    """Output cosine of the deployed int8 model against the dense float input."""
    from graphprune.runtime.oracle import output_fidelity

    return output_fidelity(str(src), str(deployed), calibration.batches())


def _speedup(base: float | None, ms: float | None) -> float | None:
    return round(base / ms, 4) if base and ms else None


def _latency_text(lat: dict, host: bool) -> str:
    int8, dense, flt = lat.get("int8"), lat.get("dense_float"), lat.get("pruned_float")
    if not int8 or not dense:
        return "ORT latency not measured"
    where = "" if host else " (on this machine, not the target)"
    text = f"ORT latency{where} {int8:.3f} ms vs dense float {dense:.3f} ms (speed-up {dense / int8:.2f}x)"
    return text + (f", vs pruned float {flt:.3f} ms ({flt / int8:.2f}x)" if flt else "")


def section(res, fid: dict, deployed: Path, lat: dict, *, max_drop: float | None, host: bool) -> dict:
    """report["quantization"]: settings, ops, the quality line and the latency line."""
    from graphprune.backends.onnxruntime.quantize import is_quantized, op_counts
    from graphprune.workflow.files import model_size

    ops = op_counts(deployed)
    gate = f", max {max_drop:g}" if max_drop is not None else ""
    scores = ", ".join(f"{r['ranges']} {r['score']:.4f}" for r in res.candidates if "score" in r)
    chosen = (f"{res.settings['ranges']} ranges from {res.batches} calibration batches"
              + (f", chosen by {res.settings.get('ranges_scored_by')} ({scores})" if scores else ""))
    line = (f"int8 (QDQ; weights {res.settings['weights']}, activations {res.settings['activations']}, "
            f"{chosen}): mean output cosine {fid['mean_cosine']:.4f} vs the dense float "
            f"input on the calibration data (drop {fid['drop']:.4f}{gate}, min {fid['min_cosine']:.4f}); "
            + _latency_text(lat, host))
    return {"mode": "int8", **res.settings, "calibration_batches": res.batches, "range_candidates": res.candidates, "qdq_model": QDQ_NAME,
            "qdq_bytes": model_size(res.path), "qdq_ops": {k: res.ops.get(k, 0) for k in ("QuantizeLinear",
                                                                                      "DequantizeLinear")},
            "deployed_ops": ops, "runs_int8": is_quantized(ops), "fidelity": fid,
            "latency_ms": lat, "speedup_vs_dense": _speedup(lat.get("dense_float"), lat.get("int8")),
            "speedup_vs_pruned_float": _speedup(lat.get("pruned_float"), lat.get("int8")),
            "latency_measured_on_target": host, "notes": list(res.notes), "line": line}


def check_summary(sec: dict, max_drop: float | None) -> str:
    from graphprune.backends.onnxruntime.quantize import QDQ_OPS, QLINEAR_OPS

    ops = sec["deployed_ops"]
    int8 = ", ".join(f"{k} x{ops[k]}" for k in QLINEAR_OPS + QDQ_OPS if ops.get(k))
    gate = f" (max {max_drop:g})" if max_drop is not None else ""
    return (f"deployment runs int8 ops: {int8 or 'none'}; output cosine drop vs dense float "
            f"{sec['fidelity']['drop']:.4f}{gate}")


def already_quantized(path: Path) -> list[str]:
    """The quantization ops in the model file at `path` (its graph only, no weights read)."""
    import onnx

    from graphprune.ir.quant import QUANTIZED_INPUTS

    ops = {op for _, op, _ in QUANTIZED_INPUTS} | {"QuantizeLinear", "ConvInteger", "MatMulInteger",
                                                   "DynamicQuantizeLinear", "MatMulNBits"}
    try:
        nodes = onnx.load(str(path), load_external_data=False).graph.node
    except Exception:  # noqa: BLE001 - not readable here: the frontend says why, with its own message
        return []
    return sorted({n.op_type for n in nodes if n.op_type in ops})
