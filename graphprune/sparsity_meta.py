"""The sparsity record of a model: metadata_props["graphprune.sparsity"] as JSON.

    {"version": 1, "tensors": {"<constant name>": {"format": "unstructured" | "n:m" |
      "block" | "pattern", "sparsity": <fraction of zeros>, "criterion": ..., "op":
      "MatMul" | "Gemm" | "Conv", "out_axis": int, "in_axis": int, ...}}}

Per format: "n"/"m"; "block": [r, c] (r output channels × c input channels; of a conv, whole kernels); "pattern_k",
"patterns" (each a list of kept tap indices, row-major in the kernel) and "connectivity"
(fraction of whole kernels removed). The model itself stays a dense ONNX model with exact
zeros: this record is a hint for backends (which verify eligibility from the zeros) and
for reports. Works on an onnx_ir Model, an onnx ModelProto, or a path to an .onnx file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

KEY = "graphprune.sparsity"
FORMATS_HELP = "unstructured, N:M (e.g. 2:4, 4:8, 1:4), block:RxC (e.g. block:8x1, r output × c input channels; conv blocks span the whole kernel), " \
               "pattern:K (3×3 conv kernel patterns with K entries)"
VERSION = 1


def _props_get(model) -> str | None:
    import onnx_ir as ir

    if isinstance(model, ir.Model):
        return model.metadata_props.get(KEY)
    for p in model.metadata_props:
        if p.key == KEY:
            return p.value
    return None


def read_sparsity(model) -> dict:
    """The record ({"version": 1, "tensors": {}} when the model has none)."""
    if isinstance(model, (str, os.PathLike)):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    text = _props_get(model)
    if not text:
        return {"version": VERSION, "tensors": {}}
    data = json.loads(text)
    if data.get("version") != VERSION:
        raise ValueError(f"{KEY}: unsupported version {data.get('version')!r}")
    data.setdefault("tensors", {})
    return data


def write_sparsity(model, data: dict, *, merge: bool = True) -> None:
    """Store `data` (merged tensor by tensor into an existing record unless merge=False).
    On a path, the file's metadata is rewritten in place (weights untouched)."""
    import onnx_ir as ir

    tensors = dict(data.get("tensors", {}))
    if isinstance(model, (str, os.PathLike)):
        import onnx

        path = Path(model)
        proto = onnx.load(str(path), load_external_data=False)
        write_sparsity(proto, data, merge=merge)
        onnx.save(proto, str(path))
        return
    unknown = sorted(set(tensors) - _constant_names(model))
    if unknown:  # a record of a tensor the model does not have reads as "missing" everywhere
        from graphprune.errors import UsageError

        raise UsageError(f"write_sparsity: {unknown[:5]} name no constant tensor of the model",
                         hint="record the names of initializers or Constant outputs")
    if merge:
        tensors = {**read_sparsity(model)["tensors"], **tensors}
    text = json.dumps({"version": VERSION, "tensors": tensors}, sort_keys=True)
    if isinstance(model, ir.Model):
        model.metadata_props[KEY] = text
        return
    for p in model.metadata_props:
        if p.key == KEY:
            p.value = text
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = KEY, text


def _constant_names(model) -> set[str]:
    """Initializers and Constant outputs of an onnx_ir Model or a ModelProto (main graph)."""
    import onnx_ir as ir

    if isinstance(model, ir.Model):
        return set(model.graph.initializers) | {o.name for n in model.graph if n.op_type == "Constant"
                                                 for o in n.outputs}
    g = model.graph
    return {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}


def _arrays(model, names):
    from graphprune.ir.constants import const_array, values_by_name

    values = values_by_name(model)
    for name in names:
        v = values.get(name)
        arr = const_array(v) if v is not None else None
        if arr is not None and arr.size:
            yield name, arr


def zero_count(model) -> tuple[int, int]:
    """(exact zeros, elements) over the tensors the record names (onnx_ir Model)."""
    zeros = total = 0
    for _, arr in _arrays(model, read_sparsity(model)["tensors"]):
        zeros += int((arr == 0).sum())
        total += int(arr.size)
    return zeros, total


def measured_sparsity(model, names=None) -> dict[str, float]:
    """Fraction of exact zeros of constant tensors (those named, or all recorded ones) —
    what a backend checks instead of trusting the record."""
    import onnx_ir as ir

    if not isinstance(model, ir.Model):
        raise TypeError("measured_sparsity needs an onnx_ir Model")
    names = list(names) if names is not None else list(read_sparsity(model)["tensors"])
    return {name: float((arr == 0).sum() / arr.size) for name, arr in _arrays(model, names)}


# ---- after structured pruning -------------------------------------------------------------

def _nm_holds(arr, n: int, m: int, in_axis: int) -> bool:
    """At most n nonzeros in every m consecutive input channels (at each kernel tap, per
    output row): the groups `passes.sparsity` made, aligned from channel 0."""
    import numpy as np

    w = np.moveaxis(arr, in_axis, -1)
    if w.shape[-1] % m:
        return False
    return bool(((w.reshape(-1, m) != 0).sum(axis=1) <= n).all())


def _blocks_hold(arr, r: int, c: int, rec: dict) -> bool:
    """Every zero lies in an all-zero r×c tile (output × input channels, aligned from 0; a
    conv's tile spans whole kernels): the tiles the block kernels skip."""
    import numpy as np

    out_axis, in_axis = rec.get("out_axis", 0), rec.get("in_axis", 1)
    w = np.moveaxis(arr, (out_axis, in_axis), (0, 1))
    nz = (w != 0).reshape(w.shape[0], w.shape[1], -1)
    if not (nz.all(axis=2) | ~nz.any(axis=2)).all():
        return False  # a kernel partly zero: not whole kernels
    zero = ~nz.any(axis=2)
    rows, cols = zero.shape
    if rows % r or cols % c:
        return False
    tiles = zero.reshape(rows // r, r, cols // c, c)
    return bool((tiles.all(axis=(1, 3)) | ~tiles.any(axis=(1, 3))).all())


def _still_holds(arr, rec: dict) -> bool:
    fmt = rec.get("format")
    if fmt == "n:m":
        return _nm_holds(arr, int(rec["n"]), int(rec["m"]), int(rec.get("in_axis", 1)))
    if fmt == "block":
        r, c = rec["block"]
        return _blocks_hold(arr, int(r), int(c), rec)
    return True  # unstructured, and kernel patterns (removing whole channels keeps each kernel's pattern)


def refresh_after_slicing(model, sliced) -> list[str]:
    """Structured pruning sliced some of the recorded sparse tensors: keep their records
    true. Size and sparsity are measured again; an N:M or block format the slicing broke
    (the groups shift when channels go) is re-verified from the zeros and, when it no longer
    holds, recorded as unstructured (the former format kept under "was"). Returns a note per
    tensor whose format changed. (A record that outlived pruning claimed 2:4 for tensors
    with 4 nonzeros in a group of 4.)"""
    data = read_sparsity(model)
    names = [n for n in data["tensors"] if n in set(sliced)]
    if not names:
        return []
    arrays = dict(_arrays(model, names))
    notes = []
    for name in names:
        rec = dict(data["tensors"][name])
        arr = arrays.get(name)
        if arr is None:
            del data["tensors"][name]
            continue
        rec.update(size=int(arr.size), sparsity=round(float((arr == 0).mean()), 6))
        if not _still_holds(arr, rec):
            was = {k: rec.pop(k) for k in ("format", "n", "m", "block") if k in rec}
            rec.update(format="unstructured", was=was)
            notes.append(f"{name} was {_describe(was)}")
        data["tensors"][name] = rec
    write_sparsity(model, data, merge=False)
    return notes


def _describe(rec: dict) -> str:
    if rec.get("format") == "n:m":
        return f"{rec['n']}:{rec['m']}"
    if rec.get("format") == "block":
        return "block:{}x{}".format(*rec["block"])
    return str(rec.get("format"))
