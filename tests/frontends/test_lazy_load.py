"""Loading without copying the weights (issue 15 §1): shape inference runs on a proto
without weight data, external data stays memory-mapped, and results do not change."""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

import graphprune as gp
from graphprune.frontends.onnx import weightless_proto
from graphprune.ir.mapped import MIN_MAPPED_BYTES
from samples.make_samples import tiny_resnet


def _inferred(proto) -> dict:
    """The types inference gives the nodes' outputs (what graphprune merges into the IR)."""
    out = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    produced = {o for n in proto.graph.node for o in n.output}
    return {vi.name: vi.type.SerializeToString() for vi in list(out.graph.value_info) + list(out.graph.output)
            if vi.name in produced}


def test_weightless_proto_has_no_weight_data_and_infers_the_same_shapes(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_resnet(), path)
    model = ir.load(path)
    before = {name: v.const_value for name, v in model.graph.initializers.items()}
    light = weightless_proto(model)
    # the model is left as it was: the very same tensor objects
    assert all(model.graph.initializers[n].const_value is t for n, t in before.items())
    big = {n for n, t in before.items() if t.dtype.is_floating_point() and t.size > 16}
    assert big, "the sample must have weights for this test to mean anything"
    assert not big & {t.name for t in light.graph.initializer}
    inputs = {vi.name: vi for vi in light.graph.input}
    for n in big:
        tt = inputs[n].type.tensor_type
        assert tt.elem_type == before[n].dtype.value
        assert [d.dim_value for d in tt.shape.dim] == list(before[n].shape)
    assert light.ByteSize() < ir.serde.serialize_model(model).ByteSize() / 4
    inferred = _inferred(light)
    assert len(inferred) == len({o for n in light.graph.node for o in n.output})
    assert inferred == _inferred(ir.serde.serialize_model(model))


def test_embedded_weights_are_memory_mapped_from_the_onnx_file_not_copied(tmp_path):
    path = tmp_path / "m.onnx"
    proto = tiny_resnet()
    onnx.save(proto, path)
    model = gp.load(path)
    big = {n: v.const_value for n, v in model.graph.initializers.items()
           if v.const_value.dtype.is_floating_point() and v.const_value.nbytes >= MIN_MAPPED_BYTES}
    assert big, "the sample must have weights for this test to mean anything"
    # each large weight points into the .onnx file itself, at its raw bytes ...
    assert all(isinstance(t, ir.ExternalTensor) and Path(t.path).resolve() == path.resolve() for t in big.values())
    # ... and its values are a view of a memory map of that file, not a copy
    assert all(isinstance(_root(t.numpy()), mmap.mmap) for t in big.values())
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for n, t in big.items():
        a = t.numpy()
        assert a.dtype == expected[n].dtype and a.tobytes() == expected[n].tobytes(), n


def _root(a: np.ndarray):
    b = a
    while getattr(b, "base", None) is not None:
        b = b.base
    return b.obj if isinstance(b, memoryview) else b


def test_external_weights_stay_memory_mapped_and_prune_bit_identically(tmp_path):
    m = tiny_resnet()
    onnx.save(m, tmp_path / "inline.onnx")
    onnx.save_model(m, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    lazy = gp.load(tmp_path / "ext.onnx")
    weights = [v.const_value for v in lazy.graph.initializers.values() if v.const_value.size > 16]
    assert weights and all(isinstance(t, ir.ExternalTensor) for t in weights)
    assert all(isinstance(_root(t.numpy()), mmap.mmap) for t in weights)  # views of the file
    inline = gp.load(tmp_path / "inline.onnx")
    a, b = gp.prune(lazy, 0.3, seed=1), gp.prune(inline, 0.3, seed=1)
    assert a.plan.tensors and a.plan.to_json() == b.plan.to_json()
    ta = {n: v.const_value.numpy() for n, v in a.model.graph.initializers.items()}
    tb = {n: v.const_value.numpy() for n, v in b.model.graph.initializers.items()}
    assert ta.keys() == tb.keys()
    for n in ta:
        assert ta[n].dtype == tb[n].dtype and ta[n].tobytes() == tb[n].tobytes(), n
