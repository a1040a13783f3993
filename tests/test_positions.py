"""A text batch's padded positions (attention_mask == 0) are left out of calibration
statistics and of the output cosine (graphprune/runtime/positions.py)."""
import logging

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

import graphprune as gp
from graphprune.importance.layers import features, linear_layers, rows_of_output
from graphprune.importance.registry import group_scores
from graphprune.runtime.calibration import Calibration
from graphprune.runtime.oracle import output_fidelity
from graphprune.runtime.positions import padding_mask, padding_note, real_rows, zero_padding
from graphprune.runtime.stats import ChannelStats
from tests.helpers import make_model

MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=np.int64)


def _inputs():
    return [("x", ["b", "s", 4]), helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])]


def _mlp() -> ir.Model:
    """x [b, s, 4] -> Relu(x W1) W2, times the attention mask (padded positions read 0).
    W1 copies x's first three features to the hidden channels."""
    W1 = np.eye(4, 3, dtype=np.float32)
    W2 = np.ones((3, 2), dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["y"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]), helper.make_node("Mul", ["y", "m3"], ["out"])]
    proto = make_model(nodes, _inputs(), [("out", ["b", "s", 2])],
                       {"W1": W1, "W2": W2, "axis": np.array([-1], dtype=np.int64)})
    return gp.load(proto.SerializeToString())


def _batch() -> dict:
    """Real positions: hidden channel 0 reads 0, channels 1 and 2 read 1..2; padded
    positions: channel 0 reads 100 (what a padding token's activations may look like)."""
    rng = np.random.default_rng(0)
    x = np.zeros((2, 5, 4), dtype=np.float32)
    x[..., 1:3] = 1 + rng.random((2, 5, 2))
    x[MASK == 0, 0] = 100.0
    return {"x": x, "attention_mask": MASK}


def test_padding_mask_is_the_attention_mask_when_something_is_padded():
    assert np.array_equal(padding_mask({"attention_mask": MASK}), MASK.astype(bool))
    assert padding_mask({"attention_mask": np.ones((2, 5), np.int64)}) is None  # nothing padded
    assert padding_mask({"input_ids": MASK}) is None  # no mask input
    assert padding_mask({"attention_mask": MASK.astype(np.float32)}) is None  # not a 0/1 integer mask
    assert padding_mask({"attention_mask": MASK * 2}) is None
    assert padding_mask({"attention_mask": MASK[:, :, None]}) is None  # not (batch, positions)


def test_real_rows_only_for_tensors_laid_out_batch_positions_channels():
    mask = MASK.astype(bool)
    a = np.arange(2 * 5 * 3).reshape(2, 5, 3)
    rows, axis = real_rows(a, 2, mask)
    assert axis == 1 and np.array_equal(rows, a[mask]) and len(rows) == 7
    assert real_rows(a, -1, mask)[1] == 1
    img = np.zeros((2, 5, 6, 6))  # (N, C, H, W) whose N, C happen to match: channel axis 1
    assert real_rows(img, 1, mask)[0] is img
    assert real_rows(a, 2, None)[0] is a
    flat = a.reshape(10, 3)  # tokens flattened before a Gemm (GPT-2's TorchScript export)
    rows, axis = real_rows(flat, 1, mask)
    assert axis == 1 and np.array_equal(rows, a[mask])
    assert real_rows(flat.T.copy(), 1, mask)[0].shape == (3, 10)  # 10 columns are not tokens
    z = zero_padding(a.astype(float), mask)
    assert (z[1, 2:] == 0).all() and np.array_equal(z[0], a[0])


def test_rows_of_a_linear_layer_leave_padding_out():
    model = _mlp()
    lin = next(lin for lin in linear_layers(model) if lin.w.name == "W2")
    h = np.random.default_rng(1).random((2, 5, 3))
    mask = MASK.astype(bool)
    assert np.array_equal(features(lin, h, mask), h[mask])
    y = np.random.default_rng(2).random((2, 5, 2))
    assert np.array_equal(rows_of_output(lin, y, mask), y[mask])
    assert features(lin, h).shape == (10, 3)  # no mask: every position


def test_channel_statistics_skip_padding():
    st = ChannelStats(axis=2)
    b = _batch()
    st.update(b["x"], padding_mask(b))
    assert st.count == 7
    np.testing.assert_allclose(st.mean_sq, (b["x"][MASK == 1].astype(float) ** 2).mean(0))
    assert st.mean_sq[0] == 0.0  # the 100s at padded positions are not in it


def test_wanda_scores_come_from_real_tokens():
    """Hidden channel 0 is active only at padded positions: it contributes nothing to any
    output a user reads, so Wanda must score it 0 (counting padding made it the most
    important channel: 100 against 1..2)."""
    model = _mlp()
    dg = gp.analyze(model)
    (g,) = dg.prunable_groups
    s = group_scores(dg, "wanda", calibration=Calibration.from_batches([_batch()]))[g.id]
    assert s[0] == 0.0 and s[1] > 0 and s[2] > 0


def test_output_cosine_ignores_what_padded_positions_read():
    """Two models that differ only at padded positions have the same outputs for the user."""
    def model(junk: float) -> ir.Model:
        nodes = [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
                 helper.make_node("Sub", ["one", "m"], ["pad"]),
                 helper.make_node("Unsqueeze", ["pad", "axis"], ["p3"]),
                 helper.make_node("Mul", ["p3", "junk"], ["j"]), helper.make_node("Add", ["x", "j"], ["out"])]
        return ir.serde.deserialize_model(make_model(
            nodes, _inputs(), [("out", ["b", "s", 4])],
            {"one": np.array(1, np.float32), "axis": np.array([-1], np.int64), "junk": np.array(junk, np.float32)}))

    b = _batch()
    b["x"][MASK == 0] = 0.0
    fid = output_fidelity(model(0.0), model(50.0), [b])
    assert fid["mean_cosine"] > 1 - 1e-9 and fid["samples"] == 2
    # the same outputs compared with their padded positions: far apart
    a, c = b["x"].copy(), b["x"] + 50.0 * (MASK == 0)[..., None]
    cos = (a[1] * c[1]).sum() / np.linalg.norm(a[1]) / np.linalg.norm(c[1])
    assert cos < 0.5


def test_one_command_prunes_the_channel_only_padding_uses_and_keeps_real_outputs(caplog):
    """End to end (run_prune, wanda, lsq-reconstruct): the channel that is active only at
    padded positions is the one removed, and the outputs at real positions are unchanged
    (with padding counted, wanda removed a used channel and the least-squares fit chased
    the padded rows)."""
    from graphprune.runtime import ort
    from graphprune.workflow import PruneOptions, run_prune

    calib = Calibration.from_batches([_batch(), _batch()])
    with caplog.at_level(logging.INFO, logger="graphprune"):
        res = run_prune(_mlp(), PruneOptions(ratio=1 / 3, round_to=1, criterion="wanda", repair="lsq",
                                             allocation={"allocation": "uniform"}, calib=calib))
    # the run says what it leaves out (3 of the first batch's 10 positions)
    assert any("calibration: 30% of the first batch's positions are padding" in r.getMessage()
               for r in caplog.records)
    assert padding_note({"x": _batch()["x"], "attention_mask": np.ones((2, 5), np.int64)}) is None
    assert res.oracle is not None and res.oracle.ok
    w1 = [t for t in res.plan.tensors if t["name"] == "W1"]
    assert len(w1) == 1 and w1[0]["removed"] == [0], res.plan.tensors
    b = _batch()
    b["x"][..., 1:3] += 0.5  # other real inputs than the calibration's
    dense = ort.session(_mlp()).run(None, b)[0]
    pruned = ort.session(res.model).run(None, b)[0]
    np.testing.assert_allclose(pruned, dense, rtol=1e-5, atol=1e-5)


def test_outputs_of_token_sequences_are_compared_token_by_token():
    """One token of large norm kept exactly and every other token's output turned to another
    direction: the flattened sentence vector still has cosine ~1, the token-by-token mean
    says what happened (only 1 of 5 tokens right). Outputs without positions (a pooled
    (batch, features) output) are compared per sample as before."""
    def model(scale: float) -> ir.Model:
        # out = x * s where s = 1 on token 0 and `scale` (negative: the opposite direction) elsewhere
        s = np.full((1, 5, 1), scale, np.float32)
        s[0, 0, 0] = 1.0
        nodes = [helper.make_node("Mul", ["x", "s"], ["out"]),
                 helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[1], keepdims=0),
                 helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
                 helper.make_node("ReduceSum", ["m"], ["n"], keepdims=0)]
        return gp.load(make_model(
            nodes, _inputs(), [("out", ["b", 5, 4]), ("pooled", ["b", 4]), ("n", [])],
            {"s": s}).SerializeToString())

    x = np.ones((2, 5, 4), np.float32)
    x[:, 0] = 1000.0  # a "massive activation" token
    b = {"x": x, "attention_mask": np.ones((2, 5), np.int64)}
    fid = output_fidelity(model(1.0), model(-1.0), [b])
    # per sample: `out` token by token (1 right, 4 opposite: (1 - 4) / 5), `pooled` flattened (~1)
    assert fid["samples"] == 4
    assert abs(fid["min_cosine"] + 0.6) < 1e-9 and abs(fid["mean_cosine"] - (1 - 0.6) / 2) < 1e-9
    flat = (x[0] * (x[0] * np.where(np.arange(5) == 0, 1, -1)[:, None])).sum() / (np.linalg.norm(x[0]) ** 2)
    assert flat > 0.99  # what the flattened comparison said
