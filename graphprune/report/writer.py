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


def _title(report: dict) -> str:
    name = Path((report.get("input") or {}).get("path", "")).name
    target = (report.get("target") or {}).get("name")
    return f"graphprune report: {name}" + (f" → {target}" if target else "") + f" ({report.get('verb', 'compile')})"


def _head_lines(report: dict) -> list[str]:
    lines = [f"- schema: {report.get('schema', REPORT_SCHEMA)}", f"- command: `{' '.join(report.get('command') or [])}`"]
    backend = report.get("backend")
    if backend:
        lines.append(f"- backend: **{backend['chosen']}** — {backend['reason']}")
    target = report.get("target")
    if target:
        lines.append(f"- target: {target['name']} ({target['description']})")
    if report.get("input_shapes"):  # every figure below is taken at this shape
        from graphprune.input_shapes import InputShapes

        lines.append(f"- {InputShapes.from_json(report['input_shapes']).measured_at()}")
    budget = report.get("budget")
    if budget and budget["met"]:  # one not met is a red line
        lines.append(f"- {budget['line']}")
    env = report.get("environment") or {}
    if env:
        pk = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
        lines.append(f"- versions: graphprune {env.get('graphprune')}, python {env.get('python')}, {pk}")
    return lines


def markdown(report: dict) -> str:
    b, a = report.get("before", {}), report.get("after", {})
    lines = [f"# {_title(report)}", ""] + _head_lines(report)
    lines += [f"- **{r}**" for r in report.get("red") or []]
    lines += ["", "| | before | after | ratio |", "|---|---|---|---|"]
    for key, label in (("params", "params"), ("macs", "MACs"), ("bytes", "model bytes"),
                       ("latency_ms", "latency (ms, median)"), ("fidelity", "output fidelity")):
        bv, av = b.get(key), a.get(key)
        if key == "fidelity" and bv is None and av is None:
            continue
        ratio = f"{av / bv:.3f}" if isinstance(bv, (int, float)) and isinstance(av, (int, float)) and bv else ""
        cells = [_fmt(bv), _fmt(av)]
        if key == "latency_ms" and av is None and a.get("latency_note"):  # a cross target: never a blank
            cells = [f"{_fmt(bv)} (this machine)" if bv is not None else "", "not measured on the target (below)"]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
    lines += _verdict_lines(report)
    lines += _check_lines(report) + _group_lines(report) + _search_lines(report) + _op_lines(report)
    lines += _sparsity_sections(report) + _layer_lines(report)
    notes = report.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    files = report.get("outputs") or []
    if files:
        lines += ["", "## Files", ""] + [f"- `{f['path']}` ({f['bytes']} B, sha256 {f['sha256'][:12]}…)"
                                         for f in files]
    return "\n".join(lines) + "\n"


def _check_lines(report: dict) -> list[str]:
    checks = dict(report.get("checks") or {})
    if not checks:
        return []
    lines = ["", "## Checks", ""]
    for name, c in checks.items():
        lines.append(f"- {name}: {'PASS' if c.get('ok') else 'FAIL' if c.get('ok') is False else 'skipped'}"
                     f" — {c.get('summary', '')}" + (f" (inputs: {c['inputs']})" if c.get("inputs") else ""))
    return lines


def _group_lines(report: dict) -> list[str]:
    groups = report.get("groups") or []
    if not groups:
        return []
    lines = ["", "## Groups the plan changes (channels of each group's widest tensor axis)", "",
             "| group | channels | removed | kept | parts (before→after) | note |", "|---|---|---|---|---|---|"]
    for g in groups:
        parts = " + ".join(f"{p['before']}→{p['after']}" for p in g.get("parts", [])) if len(g.get("parts", [])) > 1 \
            else ""
        lines.append(f"| {g['name']} | {g['channels']} | {g['removed']} | {g['kept']} | {parts} | "
                     f"{g.get('not_multiple', '')} |")
    return lines


def _search_lines(report: dict) -> list[str]:
    search = report.get("search")
    if not search or not search.get("candidates"):
        return []
    lines = ["", "## Candidates (search)", "", "| candidate | score | latency (ms) | options | |", "|---|---|---|---|---|"]
    for c in search["candidates"]:
        opts = ", ".join(f"{k}={v}" for k, v in (c.get("options") or {}).items())
        notes = ["chosen"] if c.get("name") == search.get("chosen") else []
        if c.get("repair_changed") is False:
            notes.append("the repair changed no layer")
        lines.append(f"| {c.get('name')} | {_fmt(c.get('score'))} | {_fmt(c.get('latency_ms'))} | {opts} | "
                     f"{'; '.join(notes)} |")
    return lines


def _op_lines(report: dict) -> list[str]:
    ops = report.get("ops") or []
    if not ops:
        return []
    return ["", "## Ops", "", "| op | before | after |", "|---|---|---|"] + \
        [f"| {r['op']} | {r['before']} | {r['after']} |" for r in ops]


def _layer_lines(report: dict) -> list[str]:
    layers = report.get("layers") or []
    if not layers:
        return []
    from graphprune.report.profile import PROFILE_NOTE

    timed = any(r.get("latency_ms_before") is not None for r in layers)
    lines = ["", "## Layers", "", *([f"_{PROFILE_NOTE}._", ""] if timed else []),
             "| layer | op | width | MACs | latency (ms) |", "|---|---|---|---|---|"]
    for r in layers:
        after = "removed" if r.get("removed") else r.get("width_after")
        lat = f"{_fmt(r.get('latency_ms_before'))} → {_fmt(r.get('latency_ms_after'))}" \
            if r.get("latency_ms_before") is not None else ""
        lines.append(f"| {r['name']} | {r['op']} | {r.get('width_before')} → {after} | "
                     f"{r.get('macs_before')} → {r.get('macs_after')} | {lat} |")
    return lines


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
    if lat.get("widths_line"):
        lines.append(f"- {lat['widths_line']}")
    if report.get("quality") or report.get("accuracy"):
        lines.append(f"- {report.get('quality') or report['accuracy']}")
    if (report.get("quantization") or {}).get("line"):  # compile --quantize int8: the deployment's own line
        lines.append(f"- {report['quantization']['line']}")
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
    return lines + _kernel_lines(report, tvm.get("sparse_kernels") or [])


def _kernel_lines(report: dict, kernels: list[dict]) -> list[str]:
    """The per-layer kernel table: each chosen kernel against ONNX Runtime's dense kernel for
    the layer (what the input model would otherwise run) and against TVM's own dense kernel."""
    from graphprune.report.kernels import kernel_wins, speedup_vs_ort

    if not kernels:
        return []
    end_to_end = (report.get("latency") or {}).get("line") or "not measured"
    lines = ["", "## Sparse kernels (TVM): dense vs each candidate, per layer", "",
             kernel_wins(kernels)["line"] + " \"TVM dense\" is TVM's own dense kernel for the layer (possibly "
             "untuned); \"ORT dense\" is ONNX Runtime's dense kernel for the same layer at the same shape. "
             f"End to end against the input model in ONNX Runtime: {end_to_end}.", "",
             "| layer | shape | zeros | TVM dense ms | candidates (ms) | chosen | speed-up vs TVM dense | "
             "ORT dense ms | speed-up vs ORT | how chosen |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k in kernels:
        cands = ", ".join(f"{n} {_fmt(v)}" for n, v in (k.get("candidates") or {}).items())
        lines.append(f"| {k.get('layer')} | {k.get('shape')} | {_fmt(k.get('sparsity'))} | "
                     f"{_fmt(k.get('dense_ms'))} | {cands} | {k.get('chosen')} | {_fmt(k.get('speedup'))} | "
                     f"{_fmt(k.get('ort_dense_ms'))} | {_fmt(speedup_vs_ort(k))} | {_how_chosen(k)} |")
    return lines


def _how_chosen(row: dict) -> str:
    if not row.get("candidates"):
        return "no sparse kernel for this layer"
    return "measured" if row.get("measured") else "heuristic (no device to measure on)"


def _listing(folder: Path, names: list[str]) -> list[dict]:
    return [{"path": n, "bytes": (folder / n).stat().st_size, "sha256": sha256_of(folder / n)}
            for n in names if (folder / n).is_file()]


def _write_three(paths: dict[str, Path], report: dict) -> None:
    from graphprune.report.html import render_html

    write_text_atomic(paths["json"], json.dumps(report, indent=1, default=str) + "\n")
    write_text_atomic(paths["md"], markdown(report))
    write_text_atomic(paths["html"], render_html(report))


def write_report(out_dir: Path, report: dict) -> None:
    """compile: report.json / .md / .html in its output folder, listing the folder's files.
    `report` gains the schema and the listing in place: what gp.compile returns is the file."""
    out_dir = Path(out_dir)
    names = [str(p.relative_to(out_dir)) for p in sorted(out_dir.rglob("*"))
             if p.is_file() and p.name not in ("report.json", "report.md", "report.html") and not p.name.startswith(".")]
    report["schema"] = report.get("schema", REPORT_SCHEMA)
    report["outputs"] = _listing(out_dir, names)
    _write_three({k: out_dir / f"report.{k}" for k in ("json", "md", "html")}, {"schema": report["schema"], **report})


# ---- a report beside a model (prune, check, inspect --report) --------------------------------

MARK = "graphprune.report/"  # in every report file: a file without it is the user's, never replaced


def report_paths(model_out: Path) -> dict[str, Path]:
    """small.onnx (or small) -> small.report.json / .md / .html"""
    model_out = Path(model_out)
    stem = model_out.name.removesuffix(".onnx").removesuffix(".html").removesuffix(".report")
    return {k: model_out.with_name(f"{stem}.report.{k}") for k in ("json", "md", "html")}


def check_report_paths(model_out: Path, inputs: list[tuple[str, str]]) -> dict[str, Path]:
    """Before any work: the report files land on no input (graphprune.outputs.check_paths)
    and replace no file that graphprune did not write (an existing file must carry the
    report schema's mark)."""
    from graphprune import outputs

    paths = report_paths(model_out)
    outputs.check_paths(inputs, files=[(f"report ({k})", p) for k, p in paths.items()])
    for k, p in paths.items():  # the one rule for files the user did not name (outputs.refuse_foreign)
        outputs.refuse_foreign(p, f"the {k} report", lambda f: MARK in f.read_text(errors="replace")[:4096])
    return paths


def write_beside(model_out: Path, report: dict) -> Path:
    """Write `<model>.report.{json,md,html}` beside `model_out`; returns the .html path.
    The model and plan written by the run are listed with their digests."""
    report = {"schema": REPORT_SCHEMA, **report}
    paths = report_paths(model_out)
    folder = Path(model_out).parent
    names = [Path(p).name for p in (report.get("output") or {}).values() if p]
    report["outputs"] = _listing(folder, names)
    _write_three(paths, report)
    return paths["html"]
