"""ONNX preparation before the TVM importer (no TVM here: onnx + onnxruntime only).

TVM's Relax importer handles static shapes well and dynamic batch/sequence exports badly.
What fixed every failing case measured (TVM_NOTES.md): make the input shapes fixed, then
constant-fold with ONNX Runtime at ORT_ENABLE_BASIC — not higher, higher levels insert
com.microsoft fused ops that no importer knows.
"""
from __future__ import annotations

import tempfile
from pathlib import Path


def load(onnx_path: str | Path):
    import onnx

    return onnx.load(str(onnx_path), load_external_data=True)


def _initializer_names(graph) -> set[str]:
    return {init.name for init in graph.initializer}


def graph_inputs(model) -> list:
    """Real inputs (ValueInfoProto), initializers excluded (old exporters list them too)."""
    inits = _initializer_names(model.graph)
    return [i for i in model.graph.input if i.name not in inits]


def input_specs(model) -> list[dict]:
    """[{"name", "shape": [int | str | None], "dtype": numpy dtype name}] of the real inputs."""
    import onnx

    specs = []
    for inp in graph_inputs(model):
        tt = inp.type.tensor_type
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:  # Paddle writes -1 for a dynamic size
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                shape.append(d.dim_param)
            else:
                shape.append(None)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        specs.append({"name": inp.name, "shape": shape, "dtype": dtype})
    return specs


def dynamic_inputs(model) -> dict[str, list]:
    """Inputs with a non-integer dimension, with their shapes."""
    return {s["name"]: s["shape"] for s in input_specs(model)
            if any(not isinstance(d, int) for d in s["shape"])}


def op_types(model) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, subgraphs (If/Loop bodies) included."""
    found: set[tuple[str, str]] = set()

    def walk(graph):
        for node in graph.node:
            found.add((node.domain or "", node.op_type))
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return found


def with_static_inputs(model, input_shapes: dict | None):
    """`model` with `input_shapes` applied (a copy), every input then static; UsageError
    naming the dynamic ones (TVM's importer needs static shapes). Cheap on a model loaded
    without its external data: compile checks it before pruning."""
    from graphprune.errors import UsageError

    if input_shapes:
        try:
            model = fix_input_shapes(model, dict(input_shapes))
        except KeyError as e:
            raise UsageError(str(e.args[0]), hint="--input-shape names must be ONNX input names") from e
    dynamic = dynamic_inputs(model)
    if dynamic:
        shown = ", ".join(f"{k}{v}" for k, v in dynamic.items())
        raise UsageError(
            f"the TVM backend needs static input shapes; dynamic inputs: {shown}",
            hint="give every dynamic dim a size: " + " ".join(
                f"--input-shape {k}:" + ",".join(str(d) if isinstance(d, int) else "N" for d in v)
                for k, v in dynamic.items()) + " (each N a number; the module runs at those shapes only)",
        )
    return model


def fix_input_shapes(model, input_shapes: dict[str, list[int]]):
    """Model copy whose named inputs have the given static shapes (outputs re-inferred)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy
    inputs = {i.name: i for i in graph_inputs(model)}
    unknown = sorted(set(input_shapes) - set(inputs))
    if unknown:
        raise KeyError(f"no model input named {', '.join(unknown)} (inputs: {', '.join(sorted(inputs))})")
    for name, shape in input_shapes.items():
        _fix_dims(name, inputs[name].type.tensor_type.shape.dim, [int(d) for d in shape])
    # Output shapes still carry the old symbols; recompute them from the fixed inputs.
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    model.graph.ClearField("value_info")
    model = onnx.shape_inference.infer_shapes(model)
    try:
        fix_output_shapes(model)
    except Exception:  # noqa: BLE001 - outputs with unknown shapes are fine for the importer
        pass
    return model


def _fix_dims(name: str, dims, shape: list[int]) -> None:
    """Set an input's dims by position. (By symbol, as ORT's make_input_shape_fixed does, one
    name shared by H and W — PP-OCR's '?' — fixed both to H, and W then failed.)"""
    from graphprune.errors import UsageError

    if len(dims) != len(shape):
        raise UsageError(f"--input-shape {name}: {len(shape)} dims given, the input has {len(dims)}")
    for i, (d, n) in enumerate(zip(dims, shape, strict=True)):
        if d.HasField("dim_value") and d.dim_value >= 0 and d.dim_value != n:
            raise UsageError(f"--input-shape {name}: dim {i} is {d.dim_value} in the model, not {n}")
        d.Clear()
        d.dim_value = n


def ort_basic_fold(model):
    """Constant-fold (and shape-fold) with ONNX Runtime at ORT_ENABLE_BASIC; returns a model.

    The model's weights must fit a 2 GB protobuf (the optimised copy is written in one file).
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="gp-tvm-ort-") as tmp:
        src = Path(tmp) / "in.onnx"
        dst = Path(tmp) / "folded.onnx"
        onnx.save(model, str(src))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        so.log_severity_level = 3
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        folded = onnx.load(str(dst), load_external_data=True)
    # ORT writes the newest IR version it knows; keep the input's (older importers care).
    folded.ir_version = min(folded.ir_version, model.ir_version)
    return folded


def hidden_norms_written_out(model) -> int:
    """graphprune's hidden-size rewrite — Pad (the removed channels' zeros, at the end of the
    last axis) -> LayerNormalization -> Slice (the kept channels) — written as the statistics
    it computes, in place; returns how many. TVM 0.27's tuned kernels get both ends of that
    form wrong: a Pad fused after a MatMul + Add came out NaN, and a Slice of the normalised
    axis fused into the LayerNormalization kernel 2.5 off at output scale 3.9 (16 trials each;
    ONNX Runtime and the untuned build agree). Over the kept channels x (k of them, of the
    original n), with r = n - k zeros: mean = sum(x) / n, d = x - mean, variance =
    (sum(d²) + r·mean²) / n, y = d / sqrt(variance + eps) · scale + bias (kept parts)."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    made, drop, replace = 0, set(), {}
    for pad in graph.node:
        form = _padded_norm(pad, readers, inits)
        if form is None:
            continue
        norm, cut, kept, added = form
        width = kept + added
        x, y = pad.input[0], cut.output[0]
        scale, bias = (numpy_helper.to_array(inits[v])[:kept] if v else None for v in
                       (norm.input[1], norm.input[2] if len(norm.input) > 2 else ""))
        eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        tag = f"{norm.name or y}__stats"
        consts = {"axes": np.array([-1], np.int64), "inv": np.array(1.0 / width, scale.dtype),
                  "zeros": np.array(float(added), scale.dtype), "eps": np.array(eps, scale.dtype), "scale": scale}
        if bias is not None:
            consts["bias"] = bias
        for k, v in consts.items():
            graph.initializer.append(numpy_helper.from_array(v, f"{tag}_{k}"))
        replace[id(cut)] = _statistics_nodes(x, y, tag, bias is not None)
        drop.update({id(pad), id(norm)})
        made += 1
    if made:
        kept_nodes = []
        for node in graph.node:
            if id(node) in drop:
                continue
            kept_nodes.extend(replace.get(id(node), [node]))
        del graph.node[:]
        graph.node.extend(kept_nodes)
    return made


def _statistics_nodes(x: str, y: str, tag: str, with_bias: bool) -> list:
    """y = LayerNorm over the original width of x (constants `{tag}_<name>`, see above)."""
    from onnx import helper

    def t(name: str) -> str:
        return f"{tag}_{name}"

    def op(kind: str, ins: list[str], out: str):
        return helper.make_node(kind, ins, [out])

    nodes = [op("ReduceSum", [x, t("axes")], t("sum")), op("Mul", [t("sum"), t("inv")], t("mean")),
             op("Sub", [x, t("mean")], t("d")), op("Mul", [t("d"), t("d")], t("dd")),
             op("ReduceSum", [t("dd"), t("axes")], t("q")), op("Mul", [t("mean"), t("mean")], t("mm")),
             op("Mul", [t("mm"), t("zeros")], t("qz")), op("Add", [t("q"), t("qz")], t("qs")),
             op("Mul", [t("qs"), t("inv")], t("var")), op("Add", [t("var"), t("eps")], t("ve")),
             op("Sqrt", [t("ve")], t("sd")), op("Div", [t("d"), t("sd")], t("n")),
             op("Mul", [t("n"), t("scale")], t("ns") if with_bias else y)]
    return nodes + [op("Add", [t("ns"), t("bias")], y)] if with_bias else nodes


def _padded_norm(pad, readers: dict, inits: dict):
    """(LayerNormalization, Slice, kept width, zeros added) when `pad` starts that form; else None."""
    from onnx import numpy_helper

    if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or len(pad.input) < 2 or pad.input[1] not in inits:
        return None
    if len(pad.input) > 2 and pad.input[2] or any(a.name == "mode" and a.s not in (b"", b"constant")
                                                  for a in pad.attribute):
        return None
    pads = numpy_helper.to_array(inits[pad.input[1]]).reshape(-1)
    if len(pads) < 2 or pads[:-1].any() or pads[-1] <= 0:  # zeros at the end of the last axis only
        return None
    nexts = readers.get(pad.output[0], [])
    norm = nexts[0] if len(nexts) == 1 and nexts[0].op_type == "LayerNormalization" else None
    if norm is None or len(norm.output) > 1 and any(norm.output[1:]) or norm.input[0] != pad.output[0]:
        return None
    if any(a.name == "axis" and a.i not in (-1, len(pads) // 2 - 1) for a in norm.attribute):
        return None
    if any(v and v not in inits for v in norm.input[1:3]):
        return None
    cuts = readers.get(norm.output[0], [])
    cut = cuts[0] if len(cuts) == 1 and cuts[0].op_type == "Slice" else None
    if cut is None or len(cut.input) < 4 or any(v not in inits for v in cut.input[1:4]) or \
            len(cut.input) > 4 and cut.input[4]:
        return None
    start, end, axis = (numpy_helper.to_array(inits[v]).reshape(-1) for v in cut.input[1:4])
    rank = len(pads) // 2
    if len(start) != 1 or start[0] != 0 or len(axis) != 1 or axis[0] not in (-1, rank - 1) or len(end) != 1:
        return None
    return norm, cut, int(end[0]), int(pads[-1])
