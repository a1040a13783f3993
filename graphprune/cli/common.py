"""Helpers shared by CLI verbs: tables, input files, latency."""
from __future__ import annotations

import os
from pathlib import Path

from graphprune.errors import UsageError


def table(rows: list[list], header: list[str], *, text: tuple[int, ...] = ()) -> str:
    """Rows under a header; the first column and the `text` columns left-aligned, the others
    (figures) right-aligned."""
    cells = [[str(c) for c in r] for r in [header] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if k and i and i not in text else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return f"{n:.3g}P"


def load_inputs(path: str | None) -> list[dict] | None:
    """An .npz of named inputs (arrays with a leading batch of samples allowed per name)."""
    if not path:
        return None
    import numpy as np

    if not Path(path).exists():
        raise UsageError(f"{path}: no such inputs file")
    try:
        with np.load(path) as z:
            return [{k: z[k] for k in z.files}]
    except Exception as exc:
        raise UsageError(f"{path}: cannot read inputs as .npz ({exc})") from None


def ort_latency_ms(model_path: str, repeats: int = 20, threads: int = 1, budget_s: float = 5.0,
                   shapes=None) -> float:
    """Median ORT latency of a model file on random inputs (ms), at `shapes` (the run's
    InputShapes) when given."""
    from graphprune.backends.onnxruntime import measure
    from graphprune.runtime.ort import random_inputs, session

    feeds = random_inputs(session(model_path, threads=threads), shapes=shapes)
    cfg = {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
           "graph_optimization_level": "ORT_ENABLE_ALL"}
    return measure(model_path, cfg, feeds, repeats=repeats, budget_s=budget_s)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return Path(a).resolve() == Path(b).resolve()


def recorded_shapes(folder: Path, report: str = "report.json", model: Path | None = None):
    """The InputShapes a report records (the shapes its figures were measured at), or None:
    a compile folder's report.json (what bench and check take for a folder without
    --input-shape), or `report` beside `model` when it is that model's report."""
    import json

    from graphprune.input_shapes import InputShapes

    rep = Path(folder) / report
    try:
        data = json.loads(rep.read_text()) if rep.is_file() else {}
    except (OSError, ValueError):
        return None
    if model is not None and Path(str((data.get("output") or {}).get("model", ""))).name != model.name:
        return None  # another run's report
    recorded = data.get("input_shapes")
    return InputShapes.from_json(recorded) if recorded else None


def parse_shapes(items: list[str]) -> dict | None:
    """--input-shape NAME:D1,D2,... (repeatable) as {name: [dims]} (None when none given)."""
    shapes = {}
    for it in items:
        name, sep, dims = it.rpartition(":")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise UsageError(f"--input-shape {it!r}: expected NAME:D1,D2,...") from None
        if not sep or not name:
            raise UsageError(f"--input-shape {it!r}: expected NAME:D1,D2,...")
    return shapes or None


def basis_lines(measured_at: str | None, uncounted: list[str] | None) -> list[str]:
    """What the summary's figures stand on: the shapes they were measured at, and the layers
    whose MACs could not be counted (analysis.cost.uncounted_line)."""
    from graphprune.analysis.cost import uncounted_line

    return [line for line in (measured_at, uncounted_line(uncounted)) if line]
