"""report.json / report.md writers."""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from graphprune.plan import write_text_atomic

REPORT_SCHEMA = "graphprune.report/1"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    from graphprune import __version__
    from graphprune.backends.targets import cpu_flags

    flags = cpu_flags()
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "neon", "asimd") if f in flags]
    return {
        "graphprune": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_simd": simd,
        "packages": {d: _version(d) for d in ("onnx", "onnx-ir", "onnxruntime", "numpy", "torch", "apache-tvm")},
    }


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown(report: dict) -> str:
    b, a = report.get("before", {}), report.get("after", {})
    lines = [f"# graphprune report: {Path(report['input']['path']).name} → {report['target']['name']}", "",
             f"- command: `{' '.join(report['command'])}`",
             f"- backend: **{report['backend']['chosen']}** — {report['backend']['reason']}",
             f"- target: {report['target']['name']} ({report['target']['description']})"]
    if report.get("input_shapes"):  # every figure below is taken at this shape
        from graphprune.input_shapes import InputShapes

        lines.append(f"- {InputShapes.from_json(report['input_shapes']).measured_at()}")
    lines += ["", "| | before | after | ratio |", "|---|---|---|---|"]
    for key, label in (("params", "params"), ("macs", "MACs"), ("bytes", "model bytes"),
                       ("latency_ms", "latency (ms, median)")):
        bv, av = b.get(key), a.get(key)
        ratio = f"{av / bv:.3f}" if isinstance(bv, (int, float)) and isinstance(av, (int, float)) and bv else ""
        cells = [_fmt(bv), _fmt(av)]
        if key == "latency_ms" and av is None and a.get("latency_note"):  # a cross target: never a blank
            cells = [f"{_fmt(bv)} (this machine)" if bv is not None else "", "not measured on the target (below)"]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
    lines += _verdict_lines(report)
    checks = report.get("checks", {})
    if checks:
        lines += ["", "## Checks", ""]
        for name, c in checks.items():
            lines.append(f"- {name}: {'PASS' if c.get('ok') else 'FAIL' if c.get('ok') is False else 'skipped'}"
                         f" — {c.get('summary', '')}")
    lines += _sparsity_sections(report)
    notes = report.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Files", ""] + [f"- `{f['path']}` ({f['bytes']} B, sha256 {f['sha256'][:12]}…)"
                                     for f in report.get("outputs", [])]
    return "\n".join(lines) + "\n"


def _verdict_lines(report: dict) -> list[str]:
    """Latency against the input in ONNX Runtime (or why it was not measured) and accuracy, one line each."""
    lat = report.get("latency") or {}
    lines = []
    nums = [f"{k} {v:.4g} ms" for k, v in (lat.get("measured_ms") or {}).items() if v is not None]
    if nums and "speedup" in lat:
        lines.append(f"- measured side by side: {', '.join(nums)}")
    line = lat.get("line") or ("latency: " + report["after"]["latency_note"]
                               if (report.get("after") or {}).get("latency_note") else None)
    if line:
        lines.append(f"- {line if line.startswith('latency: ') else 'latency: ' + line}")
    if report.get("accuracy"):
        lines.append(f"- {report['accuracy']}")
    return [""] + lines if lines else []


def _sparsity_sections(report: dict) -> list[str]:
    lines: list[str] = []
    tensors = report.get("sparsity_tensors") or {}
    if tensors:
        lines += ["", "## Sparsity", "", "| tensor | format | zeros |", "|---|---|---|"]
        for name, r in tensors.items():
            fmt = r.get("format", "")
            if r.get("block"):
                fmt += " " + "x".join(str(k) for k in r["block"])
            elif r.get("n"):
                fmt = f"{r['n']}:{r['m']}"
            lines.append(f"| {name} | {fmt} | {r.get('sparsity', 0):.1%} |")
    tvm = ((report.get("backend") or {}).get("results") or {}).get("tvm") or {}
    kernels = tvm.get("sparse_kernels") or []
    if kernels:
        end_to_end = (report.get("latency") or {}).get("line") or "not measured"
        lines += ["", "## Sparse kernels (TVM): dense vs each candidate, per layer", "",
                  "Per-layer speed-ups are against TVM's own dense kernel for that layer (possibly untuned), "
                  "not against ONNX Runtime's dense kernel, which is what the input model would otherwise run "
                  f"on. End to end against the input model in ONNX Runtime: {end_to_end}.", "",
                  "| layer | shape | zeros | dense ms | candidates (ms) | chosen | speed-up | how chosen |",
                  "|---|---|---|---|---|---|---|---|"]
        for k in kernels:
            cands = ", ".join(f"{n} {_fmt(v)}" for n, v in (k.get("candidates") or {}).items())
            lines.append(f"| {k.get('layer')} | {k.get('shape')} | {_fmt(k.get('sparsity'))} | "
                         f"{_fmt(k.get('dense_ms'))} | {cands} | {k.get('chosen')} | {_fmt(k.get('speedup'))} | "
                         f"{_how_chosen(k)} |")
    return lines


def _how_chosen(row: dict) -> str:
    if not row.get("candidates"):
        return "no sparse kernel for this layer"
    return "measured" if row.get("measured") else "heuristic (no device to measure on)"


def write_report(out_dir: Path, report: dict) -> None:
    report = {"schema": REPORT_SCHEMA, **report}
    out_dir = Path(out_dir)
    files = []
    for p in sorted(out_dir.rglob("*")):
        if p.is_file() and p.name not in ("report.json", "report.md", "report.html") and not p.name.startswith("."):
            files.append({"path": str(p.relative_to(out_dir)), "bytes": p.stat().st_size, "sha256": sha256_of(p)})
    report["outputs"] = files
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=1, default=str) + "\n")
    write_text_atomic(out_dir / "report.md", markdown(report))
    from graphprune.report.html import render_html

    write_text_atomic(out_dir / "report.html", render_html(report))
