"""ONNX frontend: opsets, Constant-node weights, external data, folding, round trips, errors."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

import graphprune as gp
from graphprune.errors import FrontendError
from helpers import prune_and_check
from samples.make_samples import Builder, tiny_resnet


def test_weights_as_constant_nodes_prune_and_keep_their_form():
    m = tiny_resnet()
    nodes = []
    for init in m.graph.initializer:
        nodes.append(helper.make_node("Constant", [], [init.name], value=init))
    rest = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + rest)
    del m.graph.initializer[:]
    pruned, plan, _ = prune_and_check(m, seed=4)
    assert plan.tensors
    consts = [n for n in pruned.graph if n.op_type == "Constant"]
    assert consts and not any(v.name in pruned.graph.initializers for t in plan.tensors
                              for v in [pruned.graph.initializers.get(t["name"])] if v is not None)


def test_external_data_load_prune_save(tmp_path):
    m = tiny_resnet()
    src = tmp_path / "ext.onnx"
    onnx.save_model(m, src, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    model = gp.load(src)
    res = gp.prune(model, 0.3)
    gp.save(res.model, tmp_path / "out" / "small.onnx")
    res.plan.save(tmp_path / "out" / "small.plan.json")
    assert gp.check(src, tmp_path / "out" / "small.onnx", tmp_path / "out" / "small.plan.json").ok


def test_external_data_missing_is_a_clear_error(tmp_path):
    m = tiny_resnet()
    src = tmp_path / "ext.onnx"
    onnx.save_model(m, src, save_as_external_data=True, location="gone.data", size_threshold=0)
    (tmp_path / "gone.data").unlink()
    with pytest.raises(FrontendError, match="gone.data"):
        gp.load(src)


def test_old_opset_is_refused_with_a_hint():
    m = tiny_resnet()
    m.opset_import[0].version = 9
    with pytest.raises(FrontendError) as e:
        gp.load(m.SerializeToString())
    assert "opset" in str(e.value) and e.value.hint


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_opsets_from_11(opset):
    b = Builder(2)
    h = b.op("Relu", [b.conv("input", 3, 8)])
    m = b.model([1, 3, 8, 8], b.conv(h, 8, 4), [1, 4, 8, 8], "o", opset=opset)
    prune_and_check(m)


def test_the_default_opset_imported_as_ai_onnx_prunes_like_the_empty_domain():
    """"ai.onnx" is the default domain's name in the spec, and ONNX Runtime runs such a model;
    read as opset 0 it froze all 95 groups of tiny_resnet ("nothing pruned")."""
    m = tiny_resnet()
    m.opset_import[0].domain = "ai.onnx"
    as_empty = tiny_resnet()
    n_groups = len(gp.analyze(gp.load(as_empty.SerializeToString())).prunable_groups)
    pruned, _, dg = prune_and_check(m, min_groups=n_groups)
    assert len(dg.prunable_groups) == n_groups
    assert dict(pruned.opset_imports) == {"": 17}  # one import, under the empty name


def test_the_default_opset_imported_twice_at_two_versions_is_refused():
    m = tiny_resnet()
    m.opset_import.append(helper.make_opsetid("ai.onnx", 13))
    with pytest.raises(FrontendError, match="imports the default opset twice"):
        gp.load(m.SerializeToString())


def test_truncated_and_garbage_files(tmp_path):
    good = tiny_resnet().SerializeToString()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 3])
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01not a model at all" * 10)
    for name in ("trunc.onnx", "junk.onnx", "missing.onnx"):
        with pytest.raises(FrontendError):
            gp.load(tmp_path / name)


def test_unknown_ops_round_trip_unchanged(tmp_path):
    b = Builder(3)
    h = b.conv("input", 3, 4)
    b.nodes.append(helper.make_node("Fancy", [h], ["fancy_out"], domain="vendor.x", name="fancy", alpha=0.5))
    out = b.conv("fancy_out", 4, 2)
    m = b.model([1, 3, 8, 8], out, [1, 2, 8, 8], "u", domains=["vendor.x"])
    model = gp.load(m.SerializeToString())
    gp.save(model, tmp_path / "rt.onnx")
    back = onnx.load(tmp_path / "rt.onnx")
    fancy = [n for n in back.graph.node if n.op_type == "Fancy"]
    assert len(fancy) == 1 and fancy[0].domain == "vendor.x"
    assert helper.get_attribute_value(fancy[0].attribute[0]) == pytest.approx(0.5)
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in m.graph.node]
    for a, c in zip(sorted(m.graph.initializer, key=lambda t: t.name), sorted(back.graph.initializer, key=lambda t: t.name), strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(c))


def test_shape_subgraph_is_folded_into_a_constant_reshape_target():
    """TorchScript-style flatten: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    b = Builder(4)
    h = b.op("Relu", [b.conv("input", 3, 6)])
    shp = b.op("Shape", [h])
    n = b.op("Gather", [shp, b.const(np.array(0, np.int64))], axis=0)
    n = b.op("Unsqueeze", [n, b.const(np.array([0], np.int64))])
    tgt = b.op("Concat", [n, b.const(np.array([-1], np.int64))], axis=0)
    f = b.op("Reshape", [h, tgt])
    out = b.op("Gemm", [f, b.const(np.random.default_rng(0).standard_normal((6 * 64, 3)).astype(np.float32))])
    m = b.model([1, 3, 8, 8], out, [1, 3], "fold")
    model = gp.load(m.SerializeToString())
    assert not any(nd.op_type == "Shape" for nd in model.graph)
    prune_and_check(m)


def test_dynamic_batch_is_preserved_and_gathers_of_static_dims_fold():
    b = Builder(5)
    h = b.op("Relu", [b.conv("input", 3, 6)])
    shp = b.op("Shape", [h])
    batch = b.op("Gather", [shp, b.const(np.array([0], np.int64))], axis=0)
    chan = b.op("Gather", [shp, b.const(np.array([1], np.int64))], axis=0)
    tgt = b.op("Concat", [batch, chan, b.const(np.array([-1], np.int64))], axis=0)
    r = b.op("Reshape", [h, tgt])
    out = b.op("ReduceSum", [r, b.const(np.array([2], np.int64))], keepdims=0)
    g = helper.make_graph(b.nodes, "dyn", [helper.make_tensor_value_info("input", 1, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info(out, 1, ["N", 6])], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    model = gp.load(m.SerializeToString())
    assert model.graph.inputs[0].shape[0] == ir.SymbolicDim("N") or str(model.graph.inputs[0].shape[0]) == "N"
    # the channel dim was folded, the batch dim still comes from Shape at run time
    assert sum(nd.op_type == "Shape" for nd in model.graph) == 1


def test_shapeless_value_info_of_weights_does_not_hide_their_dims(samples_dir, tmp_path):
    """A file that lists every initializer in value_info without a shape (valid ONNX; what
    the Olive pass's output looked like after Olive saved it) read as 0 params and nothing
    prunable: the tensors' own dims are now the values' dims."""
    from graphprune.analysis.cost import model_cost

    proto = onnx.load(str(samples_dir / "tiny_resnet.onnx"))
    proto.graph.value_info.extend(helper.make_tensor_value_info(t.name, t.data_type, None)
                                  for t in proto.graph.initializer)
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / "shapeless.onnx"
    onnx.save(proto, str(path))
    plain = gp.load(str(samples_dir / "tiny_resnet.onnx"))
    model = gp.load(str(path))
    assert model_cost(model).params == model_cost(plain).params > 0
    assert len(gp.analyze(model).prunable_groups) == len(gp.analyze(plain).prunable_groups) > 0
    prune_and_check(proto, ratio=0.3)


def test_a_size_declared_as_minus_one_is_dynamic(tmp_path):
    """Paddle2ONNX writes a dynamic batch as dim_value -1 (PP-OCR's classifier: [-1, 3, ?, ?]).
    It is read as a dynamic size: calibration data of batch 4 is accepted (it was refused as
    'the model takes [-1, 3, ...]'), and the written model still takes any batch."""
    import onnxruntime as ort

    from graphprune.workflow import PruneOptions, run_prune

    b = Builder(7)
    out = b.op("GlobalAveragePool", [b.op("Relu", [b.conv(b.op("Relu", [b.conv("input", 3, 8)]), 8, 8)])])
    g = helper.make_graph(b.nodes, "neg", [helper.make_tensor_value_info("input", 1, [-1, 3, "?", "?"])],
                          [helper.make_tensor_value_info(out, 1, [-1, 8, 1, 1])], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    src = tmp_path / "neg.onnx"
    onnx.save_model(m, src)
    model = gp.load(src)
    assert model.graph.inputs[0].shape[0] is None or not isinstance(model.graph.inputs[0].shape[0], int)
    assert model.graph.outputs[0].shape[1] == 8
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((8, 3, 12, 12)).astype(np.float32))
    res = run_prune(str(src), PruneOptions(ratio=0.25, calib=str(tmp_path / "calib.npz"), criterion="l2",
                                           repair="none", allocation={"allocation": "uniform"}, round_to=1),
                    out=tmp_path / "small.onnx")
    assert res.oracle is not None and res.oracle.ok and res.plan.tensors
    written = onnx.load(tmp_path / "small.onnx")
    dim0 = written.graph.input[0].type.tensor_type.shape.dim[0]
    assert not dim0.HasField("dim_value")  # still dynamic
    sess = ort.InferenceSession(str(tmp_path / "small.onnx"))
    for batch in (1, 5):
        (y,) = sess.run(None, {"input": rng.standard_normal((batch, 3, 12, 12)).astype(np.float32)})
        assert y.shape == (batch, 8, 1, 1)


def test_an_ir3_model_with_initializers_as_inputs_is_written_valid(tmp_path):
    """IR 3 lists every initializer as a graph input; the weights become constants when loaded,
    and the written model kept ir_version 3 without them as inputs: onnx.checker rejected it
    ('w1 in initializer but not in graph input'). It is written as IR 4, which allows that."""
    from onnx import TensorProto

    from graphprune.cli.main import main
    from helpers import w

    inits = {"w1": w(8, 3, 3, 3, seed=1), "b1": w(8, seed=2), "w2": w(4, 8, 3, 3, seed=3), "b2": w(4, seed=4)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a0"], pads=[1] * 4), helper.make_node("Relu", ["a0"], ["a"]),
             helper.make_node("Conv", ["a", "w2", "b2"], ["y"], pads=[1] * 4)]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])] + [
        helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 3
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, tmp_path / "ir3.onnx")
    assert main(["prune", str(tmp_path / "ir3.onnx"), "--ratio", "0.5", "--round-to", "1", "-o",
                 str(tmp_path / "p.onnx"), "--no-bench"]) == 0  # the oracle passed
    written = onnx.load(tmp_path / "p.onnx")
    onnx.checker.check_model(written, full_check=True)
    assert written.ir_version == 4 and written.graph.initializer[0].dims[0] < 8  # pruned


def test_a_shape_cast_before_the_batch_slice_leaves_the_channels_prunable():
    """Paddle2ONNX's flatten (PP-OCR cls): Shape -> Cast(int32) -> Slice [0:1] -> Cast ->
    Concat [n, -1] -> Reshape. Only the batch size is read; the Cast hid the Slice from the
    Shape rule, which then took every dim as read and froze the channels it measured."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["a"]), n("Relu", ["a"], ["r"]), n("Shape", ["r"], ["s"]),
             n("Cast", ["s"], ["s32"], to=onnx.TensorProto.INT32), n("Slice", ["s32", "st", "en", "ax"], ["nb"]),
             n("Cast", ["nb"], ["nb64"], to=onnx.TensorProto.INT64), n("Concat", ["nb64", "m1"], ["shape"], axis=0),
             n("Reshape", ["r", "shape"], ["f"]), n("MatMul", ["f", "w2"], ["y"])]
    inits = [onnx.numpy_helper.from_array(a, k) for k, a in {
        "w1": rng.standard_normal((8, 16)).astype(np.float32), "w2": rng.standard_normal((16, 4)).astype(np.float32),
        "st": np.array([0]), "en": np.array([1]), "ax": np.array([0]), "m1": np.array([-1])}.items()]
    g = helper.make_graph(nodes, "cast", [helper.make_tensor_value_info("x", 1, ["N", 8])],
                          [helper.make_tensor_value_info("y", 1, ["N", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    assert [grp.num_atoms for grp in gp.analyze(gp.load(m.SerializeToString())).prunable_groups] == [16]
    prune_and_check(m)


@pytest.mark.parametrize("via", [None, "Cast", "Identity"])
def test_a_shape_that_is_a_graph_output_reads_every_dim(via):
    """Shape(y) given out as a model output (directly, or through a Cast / Identity): every
    dim of y is read, channels included. Taken as 'no dim read', y's channels were pruned and
    the oracle then failed on that output (16 vs 8)."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["y"], pads=[1, 1, 1, 1]), n("Relu", ["y"], ["yr"]),
             n("Conv", ["yr", "w2"], ["out"]), n("Shape", ["yr"], ["s" if via else "sc"])]
    if via:
        nodes.append(n(via, ["s"], ["sc"], **({"to": onnx.TensorProto.INT64} if via == "Cast" else {})))
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(rng.standard_normal((4, 16, 1, 1)).astype(np.float32), "w2")]
    g = helper.make_graph(nodes, "shape_out", [helper.make_tensor_value_info("x", 1, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("out", 1, ["N", 4, 8, 8]),
                           helper.make_tensor_value_info("sc", onnx.TensorProto.INT64, [4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    dg = gp.analyze(gp.load(m.SerializeToString()))
    assert 16 not in [grp.num_atoms for grp in dg.prunable_groups]
    assert any("reads this dim" in r for f in dg.frozen_groups for r in f.reasons)


@pytest.mark.parametrize("opset", [11, 13, 14])
def test_a_reshape_to_a_run_time_target_below_opset_14_keeps_the_shapes_after_it(opset):
    """onnx infers Reshape-5/13 only from a constant target: GPT-2's `input_ids.view(-1,
    seq)` as the TorchScript exporter writes it below opset 14 (Concat([-1], Shape(ids)[1]),
    seq dynamic) left the token embedding's Gather and every value after it without a
    rank, and every group of the model frozen."""
    from onnx import TensorProto as T
    from onnx import helper as h

    from graphprune.analysis.dependency import DependencyGraph
    from graphprune.frontends.onnx import load_onnx

    rng = np.random.default_rng(0)
    unsq = [h.make_node("Unsqueeze", ["d", "ax"], ["du"])] if opset >= 13 else \
        [h.make_node("Unsqueeze", ["d"], ["du"], axes=[0])]
    nodes = [h.make_node("Shape", ["ids"], ["s"]), h.make_node("Gather", ["s", "one"], ["d"], axis=0), *unsq,
             h.make_node("Concat", ["m1", "du"], ["tgt"], axis=0),
             h.make_node("Reshape", ["ids", "tgt"], ["ids2"]),
             h.make_node("Gather", ["table", "ids2"], ["e"], axis=0),
             h.make_node("MatMul", ["e", "w1"], ["a"]), h.make_node("Relu", ["a"], ["r"]),
             h.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = [h.make_tensor("one", T.INT64, [], [1]), h.make_tensor("m1", T.INT64, [1], [-1]),
             h.make_tensor("ax", T.INT64, [1], [0]),
             h.make_tensor("table", T.FLOAT, [11, 8], rng.standard_normal(88).tolist()),
             h.make_tensor("w1", T.FLOAT, [8, 16], rng.standard_normal(128).tolist()),
             h.make_tensor("w2", T.FLOAT, [16, 4], rng.standard_normal(64).tolist())]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("ids", T.INT64, ["batch", "seq"])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    model = load_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", opset)]).SerializeToString())
    a = next(n for n in model.graph if n.op_type == "Relu").inputs[0]
    assert a.shape is not None and len(a.shape) == 3 and a.shape[2] == 16
    assert len(DependencyGraph(model).groups) == 2  # the table's 8 columns, the 16 hidden channels
