"""Parsing and validating the sparsity options (shared by the pass, the API and the CLI)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from graphprune.errors import UsageError
from graphprune.sparsity_meta import FORMATS_HELP  # noqa: F401  (re-exported)

CRITERIA = ("magnitude", "wanda", "sparsegpt")


@dataclass
class SparsitySpec:
    kind: str  # unstructured | n:m | block | pattern
    sparsity: float | None
    n: int = 0
    m: int = 0
    r: int = 1
    c: int = 1
    pattern_k: int = 4
    patterns: int = 8
    connectivity: float = 0.0

    @property
    def label(self) -> str:
        return {"unstructured": "unstructured", "n:m": f"{self.n}:{self.m}", "block": f"block:{self.r}x{self.c}",
                "pattern": f"pattern:{self.pattern_k}"}[self.kind]


def _int(v, what: str) -> int:
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: {v!r} is not an integer") from None
    return i


def parse_block(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        r, c = v
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(v))
        if not m:
            raise UsageError(f"block {v!r}: expected RxC, e.g. 8x1 (R output channels × C input channels)")
        r, c = m.groups()
    r, c = _int(r, "block"), _int(c, "block")
    if r < 1 or c < 1 or r * c < 2:
        raise UsageError(f"block {r}x{c}: both sides must be >= 1 and the block must hold >= 2 weights")
    return r, c


def _fraction(v, what: str) -> float:
    """`v` as a float in [0, 1), else UsageError naming `what`."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {v!r} is not a number") from None
    if not 0.0 <= f < 1.0:
        raise UsageError(f"{what} {f:g} must be in [0, 1)")
    return f


def _nm_spec(nn, mm, sparsity: float | None) -> SparsitySpec:
    if nn is None or mm is None:
        raise UsageError("format n:m needs n and m (e.g. format=2:4)")
    nn, mm = _int(nn, "N"), _int(mm, "M")
    if mm < 2 or nn < 1:
        raise UsageError(f"N:M = {nn}:{mm}: need M >= 2 and N >= 1")
    if nn >= mm:
        raise UsageError(f"N:M = {nn}:{mm}: N must be smaller than M (N nonzeros kept in every M weights)")
    implied = 1.0 - nn / mm
    if sparsity is not None and abs(sparsity - implied) > 1e-6:
        raise UsageError(f"{nn}:{mm} fixes the sparsity at {implied:g}; got sparsity {sparsity:g}",
                         hint="leave the sparsity out with an N:M format, or give the matching value")
    return SparsitySpec("n:m", implied, n=nn, m=mm)


def _pattern_spec(k, patterns, connectivity: float, sparsity: float | None) -> SparsitySpec:
    k = _int(k, "pattern_k")
    if not 1 <= k <= 8:
        raise UsageError(f"pattern_k={k}: a 3×3 pattern keeps 1..8 of the 9 taps")
    p = _int(patterns, "patterns")
    if p < 1:
        raise UsageError("patterns must be >= 1")
    implied = 1.0 - (k / 9.0) * (1.0 - connectivity)
    if sparsity is not None and abs(sparsity - implied) > 1e-6:
        raise UsageError(f"pattern:{k} with connectivity {connectivity:g} fixes the sparsity at {implied:.4f}; "
                         f"got sparsity {sparsity:g}", hint="leave the sparsity out, or tune pattern_k / connectivity")
    return SparsitySpec("pattern", implied, pattern_k=k, patterns=p, connectivity=connectivity)


def parse_spec(format: str = "unstructured", sparsity=None, *, n=None, m=None, block=None, pattern_k=None,
               patterns=8, connectivity=0.0) -> SparsitySpec:
    fmt = str(format or "unstructured").strip().lower()
    if sparsity is not None:
        sparsity = _fraction(sparsity, "sparsity")
    connectivity = _fraction(connectivity or 0.0, "connectivity")
    if connectivity and not fmt.startswith("pattern"):  # it was ignored without a word
        raise UsageError(f"connectivity {connectivity:g} applies to pattern sparsity only (whole 3x3 kernels "
                         f"removed beside the patterns), not to {format!r}",
                         hint="use --sparsity-format pattern:K with --connectivity, or drop --connectivity")
    nm = re.fullmatch(r"(\d+)\s*:\s*(\d+)", fmt)
    if fmt in ("n:m", "nm") or nm:
        nn, mm = (nm.groups() if nm else (n, m))
        return _nm_spec(nn, mm, sparsity)
    if fmt.startswith("block"):
        rest = fmt[len("block"):].lstrip(":")
        r, c = parse_block(rest or block or "4x1")
        if sparsity is None:
            raise UsageError("block sparsity needs a sparsity target (e.g. sparsity=0.9)")
        return SparsitySpec("block", sparsity, r=r, c=c)
    if fmt.startswith("pattern"):
        rest = fmt[len("pattern"):].lstrip(":")
        return _pattern_spec(rest or pattern_k or 4, patterns, connectivity, sparsity)
    if fmt == "unstructured":
        if sparsity is None:
            raise UsageError("unstructured sparsity needs a sparsity target (e.g. sparsity=0.5)")
        return SparsitySpec("unstructured", sparsity)
    raise UsageError(f"unknown sparsity format {format!r}", hint="formats: " + FORMATS_HELP)


def check_criterion(criterion: str) -> str:
    c = str(criterion or "magnitude").strip().lower()
    if c not in CRITERIA:
        raise UsageError(f"unknown sparsity criterion {criterion!r}", hint="choose " + ", ".join(CRITERIA))
    return c


def check_scope(scope: str) -> str:
    s = str(scope or "layer").strip().lower()
    if s not in ("layer", "global"):
        raise UsageError(f"unknown sparsity scope {scope!r}", hint="choose layer or global")
    return s
