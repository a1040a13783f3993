"""Block-quantized models in (issue 16 §4): ONNX Runtime's MatMulNBits (int4 weights in
blocks along K, as its weight-only quantizer writes every linear layer of an LLM) is pruned
by output rows and by whole input blocks. The pruned model runs in ONNX Runtime and equals
the quantized original with the removed rows and blocks masked (the oracle); zero points
repacked wrongly are caught, and what cannot be mapped is frozen with its reason."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import graphprune as gp
from graphprune.ir import nbits
from graphprune.ir.constants import const_array, set_const_array
from graphprune.runtime import oracle
from helpers import prune_and_check

pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
RNG = np.random.default_rng(3)
H, I, BLOCK = 64, 200, 32  # I is not a multiple of the block: the last block is partial


def float_mlp(hidden=H, inter=I) -> onnx.ModelProto:
    """x -> MatMul -> +b -> Relu -> MatMul -> + x (a residual FFN)."""
    inits = {"W1": RNG.standard_normal((hidden, inter)).astype(np.float32) * 0.2,
             "b1": RNG.standard_normal(inter).astype(np.float32) * 0.1,
             "W2": RNG.standard_normal((inter, hidden)).astype(np.float32) * 0.2}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="up"), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y0"], name="down"),
             helper.make_node("Add", ["y0", "x"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, hidden])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, hidden])],
                          [onnx.numpy_helper.from_array(a, k) for k, a in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def int4(proto: onnx.ModelProto, symmetric=False, block=BLOCK) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(proto, algo_config=DefaultWeightOnlyQuantConfig(block_size=block,
                                                                             is_symmetric=symmetric))
    q.process()
    out = q.model.model
    assert sum(n.op_type == "MatMulNBits" for n in out.graph.node) >= 2
    return out


def _node(model: ir.Model, op_input: str) -> ir.Node:
    return next(n for n in model.graph if n.op_type == "MatMulNBits" and n.inputs[0].name == op_input)


@pytest.mark.parametrize("symmetric", [False, True], ids=["zero_points", "symmetric"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_and_whole_blocks_go_exactly(symmetric, seed):
    proto = int4(float_mlp(), symmetric)
    model, plan, dg = prune_and_check(proto, seed=seed, fraction=0.5)
    group = dg.prunable_groups[0]
    assert group.num_atoms == -(-I // BLOCK)  # the hidden channels go in blocks: 6 full and one of 8
    up, down = _node(model, "x"), _node(model, "r")
    n_kept = up.attributes["N"].value
    assert n_kept < I and down.attributes["K"].value == n_kept
    assert up.inputs[1].shape[0] == n_kept == up.inputs[2].shape[0]
    kb = down.inputs[1].shape[1]
    assert kb == -(-n_kept // BLOCK) and down.inputs[2].shape == ir.Shape([H, kb])
    if not symmetric:
        assert up.inputs[3].shape == ir.Shape([n_kept, 1]) and down.inputs[3].shape == ir.Shape([H, -(-kb // 2)])


def _pruned_mid_block(symmetric=False):
    """The int4 MLP without its second block of hidden channels (channels 32..63)."""
    proto = int4(float_mlp(), symmetric)
    original = gp.load(proto.SerializeToString())
    model = gp.load(proto.SerializeToString())
    dg = gp.analyze(model)
    g = dg.prunable_groups[0]
    res = gp.prune(model, selection={g.id: [1]})
    return original, res


def test_a_middle_block_repacks_the_zero_points():
    original, res = _pruned_mid_block()
    down = _node(res.model, "r")
    lay, _ = nbits.layout(down)
    assert (lay.K, lay.k_blocks) == (I - BLOCK, 6)
    before = nbits.zero_points(_node(original, "r"), nbits.layout(_node(original, "r"))[0])
    np.testing.assert_array_equal(nbits.zero_points(down, lay), np.delete(before, 1, axis=1))
    assert oracle.check(original, res.model, res.plan, n_random=2).ok


def test_zero_points_left_in_the_old_order_fail_the_oracle():
    """The check is not vacuous: the kept blocks' zero points shifted by one block FAIL."""
    original, res = _pruned_mid_block()
    zp = _node(res.model, "r").inputs[3]
    codes = nbits.unpack(const_array(zp), 4, 6)
    set_const_array(zp, nbits.pack(np.roll(codes, 1, axis=1), 4))
    assert not oracle.check(original, res.model, res.plan, n_random=2).ok


def test_magnitude_reads_the_dequantized_weight_per_channel():
    """L2 scores of the int4 model are the float model's, to quantization error: the
    criterion reads (code - zero point) * scale, and scores the down projection's input
    channels one by one, not once per block. A block whose scales are 100x smaller (codes
    as large as any other's) becomes the least important full block by far."""
    from graphprune.importance import group_scores

    fm = float_mlp()
    proto = int4(onnx.ModelProto.FromString(fm.SerializeToString()))  # the quantizer edits its input

    def scores(p):
        dg = gp.analyze(gp.load(p.SerializeToString()))
        return group_scores(dg, "l2")[dg.prunable_groups[0].id]

    float_scores = scores(fm)  # one per hidden channel
    blocks = np.bincount(np.arange(I) // BLOCK, weights=float_scores / float_scores.mean())
    q = scores(proto)
    np.testing.assert_allclose(q / (q.sum() / I), blocks, rtol=0.05)
    s = next(t for t in proto.graph.initializer if t.name.startswith("W2") and t.name.endswith("_scales"))
    arr = onnx.numpy_helper.to_array(s).copy()
    arr[:, 3] *= 0.01
    s.CopyFrom(onnx.numpy_helper.from_array(arr, s.name))
    q = scores(proto)[:6]
    assert q[3] < 0.6 * np.delete(q, 3).min()


def _two_layer(flat_scales_up: bool, flat_scales_down: bool) -> onnx.ModelProto:
    proto = int4(float_mlp())
    for t in proto.graph.initializer:
        if t.name.endswith("_scales") and ((t.name.startswith("W1") and flat_scales_up) or
                                            (t.name.startswith("W2") and flat_scales_down)):
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).reshape(-1), t.name))
    return proto


def test_flat_scales_prune_rows_only():
    """Scales in the older flat layout [N * k_blocks]: the rows of that layer are pruned (its
    scales go n * k_blocks at a time); its input channels are frozen, naming the layout."""
    model, _, dg = prune_and_check(_two_layer(True, False), seed=4, fraction=0.5)
    assert _node(model, "x").inputs[2].shape[0] == _node(model, "x").attributes["N"].value * 2
    dg = gp.analyze(gp.load(_two_layer(False, True).SerializeToString()))
    assert not dg.prunable_groups
    assert any("flat scales" in r for f in dg.frozen_groups for r in f.reasons)


def test_float_zero_points_and_a_bias_input():
    """Float zero points ([N, k_blocks], sliced as the scales are) and MatMulNBits' own bias
    (input 5), on a hand-built layer pair."""
    def layer(x, y, K, N, name):
        kb = -(-K // 16)
        inits = [onnx.numpy_helper.from_array(nbits.pack(RNG.integers(0, 16, (N, kb, 16)).astype(np.uint8), 4),
                                              f"{name}_q"),
                 onnx.numpy_helper.from_array(RNG.uniform(0.05, 0.2, (N, kb)).astype(np.float32), f"{name}_s"),
                 onnx.numpy_helper.from_array(RNG.uniform(4, 11, (N, kb)).astype(np.float32), f"{name}_z"),
                 onnx.numpy_helper.from_array(RNG.standard_normal(N).astype(np.float32), f"{name}_b")]
        node = helper.make_node("MatMulNBits", [x, f"{name}_q", f"{name}_s", f"{name}_z", "", f"{name}_b"], [y],
                                name=name, domain="com.microsoft", K=K, N=N, bits=4, block_size=16)
        return node, inits

    n1, i1 = layer("x", "h", 24, 48, "up")
    n2, i2 = layer("r", "y", 48, 24, "down")
    g = helper.make_graph([n1, helper.make_node("Relu", ["h"], ["r"]), n2], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 24])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 24])], i1 + i2)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 9
    model, _, dg = prune_and_check(proto, seed=5, fraction=0.5)
    assert dg.prunable_groups[0].num_atoms == 3
    up = _node(model, "x")
    assert [v.shape[0] for v in (up.inputs[1], up.inputs[2], up.inputs[3], up.inputs[5])] == \
        [up.attributes["N"].value] * 4


def test_act_order_g_idx_is_frozen_with_its_reason():
    proto = int4(float_mlp())
    down = next(n for n in proto.graph.node if n.op_type == "MatMulNBits" and n.input[0] == "r")
    proto.graph.initializer.append(onnx.numpy_helper.from_array((np.arange(I) // BLOCK).astype(np.int32), "g"))
    while len(down.input) < 4:
        down.input.append("")
    down.input.append("g")
    dg = gp.analyze(gp.load(proto.SerializeToString()))
    assert not dg.prunable_groups
    assert any("g_idx" in r for f in dg.frozen_groups for r in f.reasons)


def test_an_int4_llama_loses_heads_and_ffn_channels(hf_exported):
    """A tiny LLaMA (GQA) with every linear layer int4 as ONNX Runtime's quantizer writes it:
    its head and FFN groups are pruned exactly, and MACs and params count the int4 layers."""
    float_model = gp.load(hf_exported("llama_lm", False))
    proto = int4(onnx.load(hf_exported("llama_lm", False)), block=16)
    model = gp.load(proto.SerializeToString())
    # the float model's hidden size prunes too (--prune-hidden); through MatMulNBits it would
    # cut the int4 weights' K blocks, which stays frozen: compare heads and FFN channels
    float_groups = len([g for g in gp.analyze(float_model).prunable_groups if not g.normalised])
    dg = gp.analyze(model)
    assert len(dg.prunable_groups) == float_groups >= 2
    from graphprune.analysis.cost import model_cost

    before = model_cost(model)
    assert before.macs == pytest.approx(model_cost(float_model).macs, rel=1e-6)
    pruned, plan, _ = prune_and_check(proto, seed=6, fraction=0.5)
    after = model_cost(pruned)
    assert after.macs < before.macs and after.params < before.params


def test_prune_cli_on_an_int4_model(tmp_path, capsys):
    from graphprune.cli.main import main

    src = tmp_path / "int4.onnx"
    onnx.save(int4(float_mlp()), src)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(src), "--ratio", "0.5", "--round-to", "1", "--no-bench", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "oracle PASS" in text or "oracle: PASS" in text
    assert "lose input channels only in whole blocks of 32" in text
    pruned = onnx.load(out)
    assert [a.i for n in pruned.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "N"][0] < I
    assert main(["inspect", str(src)]) == 0
    assert "MatMulNBits" in capsys.readouterr().out


@pytest.mark.parametrize("criterion", ["wanda", "obs"])
def test_data_aware_criteria_read_the_down_projection(criterion):
    """wanda and obs score the hidden channels by the int4 down projection's dequantized
    weight and its input statistics, as they score the float model's (to quantization
    error), rather than falling back to weight magnitude."""
    from graphprune.importance import group_scores
    from graphprune.runtime.calibration import Calibration

    fm = float_mlp()
    proto = int4(onnx.ModelProto.FromString(fm.SerializeToString()))
    feeds = {"x": np.random.default_rng(7).standard_normal((16, 8, H)).astype(np.float32)}

    def scores(p):
        dg = gp.analyze(gp.load(p.SerializeToString()))
        return group_scores(dg, criterion, calibration=Calibration.from_batches([feeds]), normalize="none")[
            dg.prunable_groups[0].id]

    float_blocks = np.bincount(np.arange(I) // BLOCK, weights=scores(fm))
    np.testing.assert_allclose(scores(proto), float_blocks, rtol=0.1)


def test_a_large_int4_model_is_checked_through_files(tmp_path, capsys, monkeypatch):
    """Above BIG_MODEL_BYTES the oracle masks the original on disk: zeroed codes with zeroed
    scales are exact there too, and `check` replays the plan (N, K and the zero points
    rewritten as in memory)."""
    from graphprune.cli.main import main
    from graphprune.ir import serialize

    monkeypatch.setattr(serialize, "BIG_MODEL_BYTES", 0)
    src = tmp_path / "int4.onnx"
    onnx.save(int4(float_mlp()), src)
    out = tmp_path / "m.onnx"
    assert main(["prune", str(src), "--ratio", "0.5", "--round-to", "1", "--no-bench", "-o", str(out)]) == 0
    assert "oracle PASS" in capsys.readouterr().out
    assert main(["check", str(src), str(out), "--plan", str(tmp_path / "m.plan.json")]) == 0
    assert "oracle PASS" in capsys.readouterr().out
    zp = next(t for t in onnx.load(out).graph.initializer if t.name.startswith("W2") and "zero_points" in t.name)
    blocks_before = -(-I // BLOCK)  # 7
    bytes_before = -(-blocks_before // 2)  # two codes per byte: 4
    assert zp.dims[1] < bytes_before


def test_repairs_on_an_int4_model_say_they_changed_nothing(tmp_path):
    """No repair rewrites a MatMulNBits layer: the outcome, the candidate table and the repair
    lines say so instead of naming a repair that did nothing."""
    from graphprune.runtime.calibration import Calibration
    from graphprune.workflow import PruneOptions, run_prune
    from graphprune.workflow.search import table
    from graphprune.workflow.verdicts import repair_line

    src = tmp_path / "int4.onnx"
    onnx.save(int4(float_mlp()), src)
    x = np.random.default_rng(0).standard_normal((16, 8, H)).astype(np.float32)
    calib = Calibration.from_batches([{"x": x[k:k + 2]} for k in range(0, 16, 2)])
    # max_drop=None: this random int4 MLP's outputs move past the default gate; the repairs are the point
    out = run_prune(str(src), PruneOptions(allocation={"target_macs": 0.7}, calib=calib, round_to=1, search_budget=2,
                                           max_drop=None))
    assert out.oracle.ok and out.plan.tensors
    assert out.repair and all(r["changed"] is False for r in out.repair)
    assert all("changed no layer" in repair_line(r) for r in out.repair)
    assert [r["repair_changed"] for r in out.search["candidates"]] == [False, False]
    assert any("the repair changed no layer in any candidate" in line for line in table(out.search))


def test_compile_quantize_refuses_an_int4_model_before_any_work(tmp_path, capsys):
    from graphprune.cli.main import main

    src = tmp_path / "int4.onnx"
    onnx.save(int4(float_mlp()), src)
    np.savez(tmp_path / "c.npz", x=RNG.standard_normal((8, 8, H)).astype(np.float32))
    out = tmp_path / "q"
    assert main(["compile", str(src), "--calib", str(tmp_path / "c.npz"), "--quantize", "int8", "-o", str(out)]) == 2
    assert "quantized already (it contains MatMulNBits)" in capsys.readouterr().err and not out.exists()
