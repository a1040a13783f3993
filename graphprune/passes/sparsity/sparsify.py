"""``sparsify``: zero weights inside the remaining layers (the model stays dense ONNX with
exact zeros) and record the format per tensor in the model metadata (`sparsity_meta`).

    sparsify{format=unstructured,sparsity=0.5,criterion=wanda}
    sparsify{format=2:4,criterion=sparsegpt}
    sparsify{format=block,block=8x1,sparsity=0.9,scope=global}
    sparsify{format=pattern,pattern_k=4,patterns=8,connectivity=0.3}

Criteria: ``magnitude`` |W|; ``wanda`` |W|·‖X_j‖ with ‖X_j‖ the L2 norm of input
column j over the calibration data (compared within each output row for unstructured
sparsity, as in the Wanda paper; ``compare=layer`` to compare over the layer);
``sparsegpt`` OBS selection with weight update from H = XᵀX (see `sparsegpt.py`).
``scope=global`` ranks all layers' elements/blocks together (magnitude and wanda). The
data-aware criteria read ``results['calibration']`` and fail when it is missing.

Which layers: see `targets.find_targets` (options ignore, skip_first, skip_last,
min_params). SparseGPT statistics are collected in sweeps whose Hessians fit in
``max_hessian_mb``; a sweep sees the model as sparsified by the sweeps before it (one
sweep — the usual case — is one-shot calibration on the dense model); ``sequential=true``
makes every topological wave of layers its own sweep, as in the paper (slower).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import onnx_ir as ir

from graphprune.errors import UsageError
from graphprune.ir.constants import set_const_array
from graphprune.passes._infra import Pass, PassContext, register_pass
from graphprune.passes.sparsity import masks as M
from graphprune.passes.sparsity.sparsegpt import column_blocks, sparsegpt
from graphprune.passes.sparsity.spec import SparsitySpec, check_criterion, check_scope, parse_spec
from graphprune.passes.sparsity.stats import collect, input_norms, logical_hessian, row_groups, stats_key
from graphprune.passes.sparsity.targets import Target, find_targets

log = logging.getLogger(__name__)


def _list(v) -> list[str]:
    if v in (None, "", []):
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def _bool(v, default: bool) -> bool:
    if v is None:
        return default
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def group_rows(t: Target, n_out: int) -> list[np.ndarray]:
    rg = row_groups(t, n_out)
    return [np.flatnonzero(rg == g) for g in range(t.group)] if t.group > 1 else [np.arange(n_out)]


def block_layout(t: Target, c: int) -> tuple[np.ndarray | None, int, int]:
    """Blocks of a convolution span whole kernels (r output × c input channels × all
    taps), the unit the TVM block-sparse conv kernels skip. In the channel-major column
    order (each input channel's taps contiguous) such a block is a tile c·taps wide.
    Returns (column order or None, tile width, segment length) for the logical matrix."""
    if t.taps == 1:
        return None, c, t.seg_len
    order = (np.arange(t.taps)[None, :] * t.ig + np.arange(t.ig)[:, None]).ravel()
    return order, c * t.taps, t.ig * t.taps


def _unpermute(view: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    if order is None:
        return view
    out = np.empty_like(view)
    out[:, order] = view
    return out


def column_units(spec: SparsitySpec, t: Target, cols: int) -> list[tuple[int, int]]:
    """Column ranges that a lazy OBS block must not split (N:M groups, block columns)."""
    if spec.kind == "n:m":
        return [(j, j + spec.m) for j in range(0, cols, spec.m)]
    if spec.kind == "block":
        _, width, seg = block_layout(t, spec.c)
        out = []
        for s in range(0, cols, seg):
            out += [(a, min(a + width, s + seg)) for a in range(s, s + seg, width)]
        return out
    return [(j, j + 1) for j in range(cols)]


# ---- mask selection per format -----------------------------------------------------------

def kernel_view(t: Target, mat: np.ndarray) -> np.ndarray:
    """Logical [O, taps*ig] (tap-major) → kernels [O*ig, taps]."""
    o = mat.shape[0]
    return mat.reshape(o, t.taps, t.ig).transpose(0, 2, 1).reshape(o * t.ig, t.taps)


def from_kernel_view(t: Target, k: np.ndarray, o: int) -> np.ndarray:
    return k.reshape(o, t.ig, t.taps).transpose(0, 2, 1).reshape(o, t.taps * t.ig)


def weight_only_masks(spec: SparsitySpec, targets: list[Target], scores: list[np.ndarray], scope: str,
                      per_row: bool) -> tuple[list[np.ndarray], dict]:
    """Keep masks (logical layout) for magnitude/wanda scores; extra metadata."""
    extra: dict = {}
    if spec.kind == "unstructured":
        if scope == "global":
            gone = M.select_units(scores, [np.ones(s.shape, np.int64) for s in scores], spec.sparsity)
            return [~g for g in gone], extra
        return [M.unstructured_mask(s, spec.sparsity, per_row=per_row) for s in scores], extra
    if spec.kind == "n:m":
        return [M.nm_mask(s, spec.n, spec.m, t.seg_len) for t, s in zip(targets, scores, strict=True)], extra
    if spec.kind == "block":
        parts = []  # (target index, rows, tile ids, tile scores, sizes)
        layouts = [block_layout(t, spec.c) for t in targets]
        for i, (t, s) in enumerate(zip(targets, scores, strict=True)):
            order, width, seg = layouts[i]
            sv = s if order is None else s[:, order]
            for rows in group_rows(t, s.shape[0]):
                ids, n = M.tile_ids(len(rows), sv.shape[1], spec.r, width, seg)
                ts, size = M.tile_scores(sv[rows], ids, n)
                parts.append((i, rows, ids, ts, size))
        if scope == "global":
            gone = M.select_units([p[3] for p in parts], [p[4] for p in parts], spec.sparsity)
        else:
            gone = []
            for i in range(len(targets)):
                mine = [p for p in parts if p[0] == i]
                gone += M.select_units([p[3] for p in mine], [p[4] for p in mine], spec.sparsity)
        keeps = [np.ones(s.shape, bool) for s in scores]
        for (i, rows, ids, _, _), g in zip(parts, gone, strict=True):
            keeps[i][rows] = ~g[ids]
        return [_unpermute(k, lay[0]) for k, lay in zip(keeps, layouts, strict=True)], extra
    # pattern: one library for the whole model, from the most frequent top-k shapes
    kern = [kernel_view(t, s) for t, s in zip(targets, scores, strict=True)]
    lib = M.pattern_library(np.concatenate(kern), spec.pattern_k, spec.patterns)
    norms = [np.sqrt((k ** 2).sum(1)) for k in kern]
    if scope == "global":
        conn = [~g for g in M.select_units(norms, [np.ones(len(n), np.int64) for n in norms], spec.connectivity)]
    else:
        conn = [M.connectivity_keep(n, spec.connectivity) for n in norms]
    keeps = []
    for t, k, c, s in zip(targets, kern, conn, scores, strict=True):
        pm, _ = M.pattern_assign(k, lib)
        keeps.append(from_kernel_view(t, pm & c[:, None], s.shape[0]))
    extra["patterns"] = [np.flatnonzero(p).tolist() for p in lib]
    return keeps, extra


def obs_prune(spec: SparsitySpec, t: Target, L: np.ndarray, H: np.ndarray, blocksize: int,
              damp: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """SparseGPT on every group of rows: (new logical weights, keep mask, output error
    tr(ΔW H ΔWᵀ) of OBS, and of plain masking with the same mask without update)."""
    order = block_layout(t, spec.c)[0] if spec.kind == "block" else None
    if order is not None:  # conv blocks: whole kernels, contiguous in channel-major order
        L, H = L[:, order], [h[np.ix_(order, order)] for h in H]
    blocks = column_blocks(column_units(spec, t, L.shape[1]), blocksize)
    newW, keep = np.zeros_like(L), np.ones(L.shape, bool)
    err_obs = err_mask = 0.0
    for g, rows in enumerate(group_rows(t, L.shape[0])):
        Wg = L[rows]
        if spec.kind == "n:m":
            sel, nm = None, (spec.n, spec.m)
        elif spec.kind == "block":
            _, width, seg = block_layout(t, spec.c)
            ids_all, _ = M.tile_ids(len(rows), L.shape[1], spec.r, width, seg)

            def sel(scores, s, e, ids_all=ids_all):
                uniq, inv = np.unique(ids_all[:, s:e], return_inverse=True)
                ts, size = M.tile_scores(scores, inv.reshape(scores.shape), len(uniq))
                (gone,) = M.select_units([ts], [size], spec.sparsity)
                return ~gone[inv.reshape(scores.shape)]
            nm = None
        else:
            sel, nm = (lambda scores, s, e: M.unstructured_mask(scores, spec.sparsity)), None
        W1, k1 = sparsegpt(Wg, H[g], blocks, select=sel, nm=nm, damp=damp)
        newW[rows], keep[rows] = W1, k1
        d1, d0 = Wg - W1, Wg * ~k1
        err_obs += float(np.sum((d1 @ H[g]) * d1))
        err_mask += float(np.sum((d0 @ H[g]) * d0))
    return _unpermute(newW, order), _unpermute(keep, order), err_obs, err_mask


def blas_threads(n: int):
    """Limit BLAS threads around the OBS solves: the per-layer matrices are small, and on
    a shared machine a multi-threaded OpenBLAS spends 10-100x longer spinning than
    computing (measured: a 256x256 Cholesky 0.55 s with 2 busy threads, 1.6 ms with one)."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional dependency
        return contextlib.nullcontext()
    return threadpool_limits(n) if n > 0 else contextlib.nullcontext()


def waves_of(model: ir.Model, targets: list[Target]) -> list[list[Target]]:
    from graphprune.passes.reconstruction._common import waves

    by_node = {id(t.lin.node): t for t in targets}
    return [[by_node[id(n)] for n in w] for w in waves(model, [t.lin.node for t in targets])]


@register_pass
class Sparsify(Pass):
    """Options: format (unstructured | N:M e.g. 2:4 | block with block=RxC | pattern with
    pattern_k, patterns, connectivity), sparsity, criterion (magnitude | wanda | sparsegpt),
    scope (layer | global), ignore (list of regex/glob), skip_first, skip_last (default
    true), min_params (default 1024), compare (row | layer, wanda unstructured), damp
    (0.01), blocksize (128), max_rows (8192 per batch), batches, max_hessian_mb (2048),
    sequential (false), blas_threads (1; 0 = library default), seed."""

    name = "sparsify"
    description = "unstructured / N:M / block / 3x3-pattern sparsity with exact zeros, recorded in metadata"

    def __init__(self, *, format: str = "unstructured", sparsity: float | None = None, n: int | None = None,
                 m: int | None = None, block: str | list[int] | None = None, pattern_k: int | None = None,
                 patterns: int = 8, connectivity: float = 0.0, criterion: str = "magnitude", scope: str = "layer",
                 ignore: str | list[str] | None = None, skip_first: bool = True, skip_last: bool = True,
                 min_params: int = 1024, compare: str | None = None, damp: float = 0.01, blocksize: int = 128,
                 max_rows: int = 8192, batches: int | None = None, max_hessian_mb: float = 2048,
                 sequential: bool = False, blas_threads: int = 1, seed: int = 0):
        super().__init__()
        # everything that can be checked without the model fails here, at parse time
        parse_spec(format, sparsity, n=n, m=m, block=block, pattern_k=pattern_k, patterns=patterns,
                   connectivity=connectivity)
        check_criterion(criterion)
        check_scope(scope)
        if compare not in (None, "row", "layer"):
            raise UsageError(f"sparsify: compare={compare} is not one of row, layer")
        for k, v, lo in (("min_params", min_params, 0), ("blocksize", blocksize, 1), ("max_rows", max_rows, 1),
                         ("blas_threads", blas_threads, 0), ("batches", 1 if batches is None else batches, 1)):
            if v < lo:
                raise UsageError(f"sparsify: {k} must be >= {lo}, got {v}")
        if damp < 0 or max_hessian_mb <= 0:
            raise UsageError("sparsify: damp must be >= 0 and max_hessian_mb > 0")

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        o = self.resolved_options()
        spec = parse_spec(o.get("format", "unstructured"), o.get("sparsity"), n=o.get("n"), m=o.get("m"),
                          block=o.get("block"), pattern_k=o.get("pattern_k"), patterns=o.get("patterns", 8),
                          connectivity=o.get("connectivity", 0.0))
        criterion = check_criterion(o.get("criterion", "magnitude"))
        scope = check_scope(o.get("scope", "layer"))
        if criterion == "sparsegpt" and scope == "global":
            raise UsageError("scope=global is supported for the magnitude and wanda criteria, not sparsegpt",
                             hint="use scope=layer with sparsegpt")
        if criterion == "sparsegpt" and spec.kind == "pattern":
            raise UsageError("the pattern format is chosen by magnitude or wanda, not sparsegpt")
        calib = ctx.results.get("calibration")
        if criterion != "magnitude" and calib is None:
            raise UsageError(f"sparsity criterion {criterion} needs calibration data",
                             hint="give --calib (inputs.npz, an image folder or module:function), or use magnitude")
        targets, skipped = find_targets(model, ignore=_list(o.get("ignore")), skip_first=_bool(o.get("skip_first"), True),
                                        skip_last=_bool(o.get("skip_last"), True),
                                        min_params=int(o.get("min_params", 1024)))
        kept_targets = []
        for t in targets:
            if spec.kind == "pattern" and t.kernel != (3, 3):
                skipped.append({"layer": t.node_name, "weight": t.name, "reason": "patterns apply to 3x3 convolutions"})
            elif spec.kind == "n:m" and t.seg_len % spec.m:
                skipped.append({"layer": t.node_name, "weight": t.name,
                                "reason": f"{t.seg_len} input channels per tap is not a multiple of M={spec.m} "
                                          f"(structured pruning can keep multiples: --round-to {spec.m})"})
            else:
                kept_targets.append(t)
        targets = kept_targets
        for s in skipped:
            log.debug("sparsify: %s skipped: %s", s["layer"] or s["weight"], s["reason"])
        t0 = time.perf_counter()
        with blas_threads(int(o.get("blas_threads", 1))):
            if criterion == "sparsegpt":
                records = self._obs(model, ctx, spec, targets, calib)
            else:
                records = self._weight_only(model, spec, criterion, scope, targets, calib)
        from graphprune.sparsity_meta import write_sparsity

        if records:
            write_sparsity(model, {"tensors": records})
        total = sum(r["size"] for r in records.values()) if records else 0
        zeros = sum(r["sparsity"] * r["size"] for r in records.values()) if records else 0
        log.info("sparsify: %s %s (%s) on %d layers: %.1f%% of their weights are zero (%.1fs)", spec.label,
                 criterion, scope, len(records), 100 * zeros / max(total, 1), time.perf_counter() - t0)
        ctx.results["sparsity"] = {"spec": spec.label, "criterion": criterion, "scope": scope,
                                   "tensors": records, "skipped": skipped,
                                   "overall": zeros / max(total, 1) if total else 0.0}
        return bool(records)

    # ---- criteria -------------------------------------------------------------------------
    def _calib_opts(self) -> dict:
        o = self.resolved_options()
        b = o.get("batches")
        return {"max_rows": int(o.get("max_rows", 8192)), "batches": int(b) if b not in (None, "") else None,
                "seed": int(o.get("seed", 0))}

    def _weight_only(self, model, spec, criterion, scope, targets, calib) -> dict:
        if not targets:
            return {}
        weights = [t.weight() for t in targets]
        mats = [t.logical(w).astype(np.float64) for t, w in zip(targets, weights, strict=True)]
        scores = [np.abs(m) for m in mats]
        if criterion == "wanda":
            st = collect(model, targets, calib, hessian=False, **self._calib_opts())
            scores = [s * input_norms(t, st[stats_key(t)], s.shape[0]) for t, s in zip(targets, scores, strict=True)]
        per_row = str(self.options.get("compare", "row" if criterion == "wanda" else "layer")) == "row"
        keeps, extra = weight_only_masks(spec, targets, scores, scope, per_row)
        records = {}
        for t, w, m, k in zip(targets, weights, mats, keeps, strict=True):
            new = t.physical(np.where(k, m, 0.0), w).astype(w.dtype)
            records[t.name] = self._write(t, w, new, spec, criterion, extra)
        return records

    def _obs(self, model, ctx, spec, targets, calib) -> dict:
        o = self.resolved_options()
        damp, blocksize = float(o.get("damp", 0.01)), int(o.get("blocksize", 128))
        cap = float(o.get("max_hessian_mb", 2048)) * 2 ** 20
        if _bool(o.get("sequential"), False):
            sweeps = waves_of(model, targets)
        else:
            sweeps, cur, size, seen = [], [], 0.0, set()
            for t in targets:
                k = stats_key(t)
                d = t.ig * t.taps
                b = 0.0 if k in seen else 8.0 * t.group * d * d
                if cur and size + b > cap:
                    sweeps.append(cur)
                    cur, size, seen = [], 0.0, set()
                    b = 8.0 * t.group * d * d
                cur.append(t)
                seen.add(k)
                size += b
            if cur:
                sweeps.append(cur)
        records = {}
        done = 0
        for si, sweep in enumerate(sweeps):
            st = collect(model, sweep, calib, hessian=True, desc=f"sparsegpt statistics {si + 1}/{len(sweeps)}",
                         **self._calib_opts())
            for t in sweep:
                w = t.weight()
                L = t.logical(w).astype(np.float64)
                H = logical_hessian(t, st[stats_key(t)])
                t1 = time.perf_counter()
                newL, keep, e_obs, e_mask = obs_prune(spec, t, L, H, blocksize, damp)
                new = t.physical(newL, w).astype(w.dtype)
                rec = self._write(t, w, new, spec, "sparsegpt", {})
                base = float(np.sum((L @ H[0]) * L)) if t.group == 1 else None
                rec["obs_error"] = e_obs
                rec["mask_only_error"] = e_mask
                records[t.name] = rec
                done += 1
                log.info("sparsegpt %d/%d %s: %.1f%% zeros, output error %.4g (masking alone %.4g%s) %.1fs",
                         done, len(targets), t.node_name, 100 * rec["sparsity"], e_obs, e_mask,
                         f", dense output energy {base:.4g}" if base is not None else "", time.perf_counter() - t1)
            del st
        return records

    def _write(self, t: Target, old: np.ndarray, new: np.ndarray, spec: SparsitySpec, criterion: str,
               extra: dict) -> dict:
        set_const_array(t.lin.w, new)
        rec = {"format": spec.kind, "sparsity": float((new == 0).sum() / new.size), "criterion": criterion,
               "op": t.op, "out_axis": t.out_axis, "in_axis": t.in_axis, "size": int(new.size)}
        if t.op == "Conv":
            rec["group"] = t.group
            rec["kernel"] = list(t.kernel)
        if spec.kind == "n:m":
            rec.update(n=spec.n, m=spec.m)
        elif spec.kind == "block":
            rec["block"] = [spec.r, spec.c]
        elif spec.kind == "pattern":
            rec.update(pattern_k=spec.pattern_k, patterns=extra.get("patterns", []), connectivity=spec.connectivity)
        log.debug("sparsify %s: %.1f%% zeros", t.name, 100 * rec["sparsity"])
        return rec


def run_sparsify(model: ir.Model, ctx: PassContext, opts: dict) -> dict:
    """Run the pass on `model` with the context's calibration data; return its summary."""
    from graphprune.passes._infra import PassManager

    PassManager([Sparsify(**opts)]).run(model, ctx)
    return ctx.results["sparsity"]
