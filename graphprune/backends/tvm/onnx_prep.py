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
            if d.HasField("dim_value"):
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


def fix_input_shapes(model, input_shapes: dict[str, list[int]]):
    """Model copy whose named inputs have the given static shapes (outputs re-inferred)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy
    names = {i.name for i in graph_inputs(model)}
    unknown = sorted(set(input_shapes) - names)
    if unknown:
        raise KeyError(f"no model input named {', '.join(unknown)} (inputs: {', '.join(sorted(names))})")
    for name, shape in input_shapes.items():
        make_input_shape_fixed(model.graph, name, [int(d) for d in shape])
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
