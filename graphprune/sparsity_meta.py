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


def _arrays(model, names):
    from graphprune.ir.constants import const_array

    values = {v.name: v for v in model.graph.initializers.values()}
    for n in model.graph:
        for o in n.outputs:
            values.setdefault(o.name, o)
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
