"""Helpers shared by CLI verbs: tables, input files, latency."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from graphprune.errors import UsageError


def table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in r] for r in [header] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
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
    if not Path(path).exists():
        raise UsageError(f"{path}: no such inputs file")
    try:
        with np.load(path) as z:
            return [{k: z[k] for k in z.files}]
    except Exception as exc:
        raise UsageError(f"{path}: cannot read inputs as .npz ({exc})") from None


def ort_latency_ms(model_bytes_or_path, repeats: int = 20, threads: int = 1, budget_s: float = 5.0) -> float:
    from graphprune.oracle import random_inputs, session

    sess = session(model_bytes_or_path, threads=threads)
    feeds = random_inputs(sess)
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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return Path(a).resolve() == Path(b).resolve()
