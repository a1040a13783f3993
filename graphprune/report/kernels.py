"""The per-layer sparse-kernel choices of a TVM build (backend.results.tvm.sparse_kernels,
rows of graphprune.backends.tvm.kernels.rewrite) against two baselines: TVM's own dense
kernel for the layer (`dense_ms`, possibly untuned) and ONNX Runtime's dense kernel for it
(`ort_dense_ms`: what the input model would otherwise run on). Issue 13 §3: a kernel "win"
is stated against ONNX Runtime, not only against TVM's dense kernel, which can be slow
enough to flatter any sparse kernel.
"""
from __future__ import annotations


def chosen_ms(row: dict) -> float | None:
    """The measured latency of the kernel the row chose (TVM's dense kernel when it kept dense)."""
    if not row.get("measured"):
        return None
    chosen = row.get("chosen")
    ms = (row.get("candidates") or {}).get(chosen) if chosen != "dense" else row.get("dense_ms")
    return float(ms) if ms is not None else None


def speedup_vs_ort(row: dict) -> float | None:
    """ONNX Runtime's dense ms / the chosen kernel's ms (> 1: the chosen kernel is faster)."""
    ort_ms, ms = row.get("ort_dense_ms"), chosen_ms(row)
    if ort_ms is None or not ms:
        return None
    return round(float(ort_ms) / ms, 3)


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}x to {hi:.2f}x"


def _against(name: str, speedups: list[float]) -> str:
    if not speedups:
        return f"not measured against {name}"
    wins = sum(1 for s in speedups if s > 1.0)
    return f"faster than {name} on {wins} of {len(speedups)} layers (speed-up {_span(speedups)})"


def kernel_wins(rows: list[dict]) -> dict:
    """How many chosen kernels beat each baseline, and the line that says it (ONNX Runtime first)."""
    sparse = [r for r in rows if r.get("chosen") not in (None, "dense")]
    vs_tvm = [float(r["speedup"]) for r in sparse if r.get("measured") and r.get("speedup")]
    vs_ort = [s for s in (speedup_vs_ort(r) for r in sparse) if s is not None]
    ort = _against("ONNX Runtime's dense kernel", vs_ort)
    if not vs_ort and sparse:
        ort = ("ONNX Runtime's dense kernel was not timed for them, so their speed-ups are against TVM's own "
               "dense kernel only, not against ONNX Runtime's dense kernel")
    tvm = _against("TVM's own dense kernel", vs_tvm)
    line = f"Sparse kernels chosen on {len(sparse)} of {len(rows)} layers: {ort}; {tvm}."
    return {"layers": len(rows), "sparse": len(sparse),
            "compared_with_ort": len(vs_ort), "faster_than_ort_dense": sum(1 for s in vs_ort if s > 1.0),
            "compared_with_tvm_dense": len(vs_tvm), "faster_than_tvm_dense": sum(1 for s in vs_tvm if s > 1.0),
            "line": line}
