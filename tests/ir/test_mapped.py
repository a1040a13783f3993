"""graphprune.ir.mapped: weights mapped from the .onnx file, models written tensor by tensor.

Correctness only: the same values as onnx's own parser, the same bytes as onnx_ir's
writer, no stale reads after the mapped file is replaced."""
from __future__ import annotations

import mmap

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from graphprune.frontends.onnx import load_onnx, save_onnx
from graphprune.ir.mapped import MIN_MAPPED_BYTES, load_mapped, save_streamed


def _model() -> onnx.ModelProto:
    """Conv + Add + a Reshape, with a documented float weight, a float16 bias, a small
    int64 shape, a string initializer nobody reads, a metadata entry and an If whose
    branches hold their own initializers."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    w.doc_string = "conv weight"
    b = numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float16), "b")
    big_b = numpy_helper.from_array(rng.standard_normal((600,)).astype(np.float32), "unused_big")
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    words = helper.make_tensor("words", TensorProto.STRING, [2], [b"a", b"bc"])
    then_c = numpy_helper.from_array(rng.standard_normal((512,)).astype(np.float32), "then_c")
    else_c = numpy_helper.from_array(rng.standard_normal((512,)).astype(np.float32), "else_c")
    then_g = helper.make_graph([helper.make_node("Identity", ["then_c"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [512])], [then_c])
    else_g = helper.make_graph([helper.make_node("Identity", ["else_c"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [512])], [else_c])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["b"], ["b32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["c", "b32"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["y"]),
        helper.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 200]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [512])],
        [w, b, big_b, shape, words])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(m, {"who": "test"})
    return m


def _root(a: np.ndarray):
    while getattr(a, "base", None) is not None:
        a = a.base
    return a.obj if isinstance(a, memoryview) else a


def _arrays(path) -> dict[str, np.ndarray]:
    """Values as onnx_ir's parser reads them (onnx's gives strings as object arrays)."""
    return {n: np.array(v.const_value.numpy()) for n, v in ir.load(path).graph.initializers.items()}


def test_large_initializers_map_into_the_file_and_read_what_the_parser_reads(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    model = load_mapped(path)
    assert model is not None
    expected = _arrays(path)
    onnx_w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}["w"]
    assert expected["w"].tobytes() == onnx_w.tobytes()
    mapped = set()
    for name, v in model.graph.initializers.items():
        t = v.const_value
        got = t.numpy()
        assert got.dtype == expected[name].dtype and got.shape == expected[name].shape, name
        assert got.tobytes() == expected[name].tobytes(), name
        if isinstance(t, ir.ExternalTensor):
            mapped.add(name)
            assert t.location == "m.onnx" and isinstance(_root(got), mmap.mmap)
    assert mapped == {"w", "unused_big"}  # b (16 bytes), shape and the strings stay inline
    assert all(v.const_value.nbytes >= MIN_MAPPED_BYTES for n, v in model.graph.initializers.items() if n in mapped)
    assert model.graph.initializers["w"].const_value.doc_string == "conv weight"
    assert model.metadata_props["who"] == "test"
    # the subgraphs' initializers are parsed as usual, with their values
    branches = [a.value for n in model.graph for a in n.attributes.values() if a.type == ir.AttributeType.GRAPH]
    assert {n for g in branches for n in g.initializers} == {"then_c", "else_c"}


def test_streamed_file_is_byte_identical_to_onnx_ir_save(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_model(), src)
    ir.save(ir.load(src), tmp_path / "reference.onnx")
    for load in (ir.load, load_mapped):  # tensors in memory, and tensors mapped from src
        model = load(src)
        save_streamed(model, tmp_path / "streamed.onnx")
        assert (tmp_path / "streamed.onnx").read_bytes() == (tmp_path / "reference.onnx").read_bytes()
        # the model is left as it was: its tensors are the same objects after the write
        again = {n: v.const_value for n, v in model.graph.initializers.items()}
        save_streamed(model, tmp_path / "streamed.onnx")
        assert all(model.graph.initializers[n].const_value is t for n, t in again.items())


def test_written_model_runs_like_the_original(tmp_path):
    import onnxruntime as ort

    src = tmp_path / "m.onnx"
    onnx.save(_model(), src)
    save_streamed(load_mapped(src), tmp_path / "out.onnx")
    onnx.checker.check_model(str(tmp_path / "out.onnx"))
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 4, 5, 5)).astype(np.float32),
             "cond": np.array(True)}
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


def test_external_data_stays_where_it_is_and_inline_weights_are_mapped(tmp_path):
    m = _model()
    # "w" to an external file, the other large one left inside the .onnx
    onnx.external_data_helper.set_external_data(next(t for t in m.graph.initializer if t.name == "w"), "w.bin")
    onnx.save_model(m, tmp_path / "m.onnx")  # writes w.bin, keeps the rest inline
    assert (tmp_path / "w.bin").exists()
    model = load_mapped(tmp_path / "m.onnx")
    ts = {n: v.const_value for n, v in model.graph.initializers.items()}
    assert ts["w"].location == "w.bin" and ts["unused_big"].location == "m.onnx"
    expected = {n: v.const_value.numpy() for n, v in ir.load(tmp_path / "m.onnx").graph.initializers.items()}
    w = numpy_helper.to_array(next(t for t in _model().graph.initializer if t.name == "w"))
    assert expected["w"].tobytes() == w.tobytes()  # the reference reads the external file right
    for n, t in ts.items():
        assert t.numpy().tobytes() == expected[n].tobytes(), n


def test_saving_over_the_mapped_file_keeps_the_models_values(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    model = load_onnx(path, fold=False)
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)
    before = {n: np.array(v.const_value.numpy()) for n, v in model.graph.initializers.items()}
    for v in model.graph.initializers.values():
        if isinstance(v.const_value, ir.ExternalTensor):
            v.const_value.release()  # nothing cached: a read now would open the path again
    # a smaller model over the file first would move every offset; the model must not care
    model.graph.initializers.pop("unused_big")
    before.pop("unused_big")
    save_onnx(model, path)
    for v in model.graph.initializers.values():
        if isinstance(v.const_value, ir.ExternalTensor):
            v.const_value.release()  # as const_array does after each read
    for n, v in model.graph.initializers.items():
        assert v.const_value.numpy().tobytes() == before[n].tobytes(), n
    written = _arrays(path)
    assert written.keys() == before.keys()
    for n in written:
        assert written[n].tobytes() == before[n].tobytes(), n


def test_links_and_unreadable_wire_data_fall_back_to_the_parser(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    link = tmp_path / "link.onnx"
    link.symlink_to(path)
    assert load_mapped(link) is None  # onnx_ir refuses to map through a link: parse instead
    assert load_onnx(link, fold=False).graph.initializers["w"].const_value.numpy().shape == (8, 4, 3, 3)
    # a group (wire type 3) at the top level: not read by the walker
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0b" + path.read_bytes())
    assert load_mapped(bad) is None
