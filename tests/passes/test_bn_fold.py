"""bn-fold-compensate: the removed channels' means come from BatchNorm statistics, no data.

The oracle (pruned == masked original) is checked before the repair, as for the other
repairs; the repair may only change biases. When the BN input really follows the BN's
running statistics, the folded model's output mean per channel matches the dense one."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

import graphprune as gp
from graphprune.ir.constants import const_array
from graphprune.passes.reconstruction import bn_fold
from graphprune.runtime.ort import session
from graphprune.workflow.options import PruneOptions
from graphprune.workflow.prune import run_prune
from helpers import make_model

C = 8


def bn_model(act: str = "relu", bn: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x -Conv1x1(identity, C->C)- BN -act- Conv3x3(C->4, pads 1) -> y. The identity conv
    makes the BN input equal x, so x drawn from N(mean, var) per channel is exactly the
    distribution the BN statistics describe."""
    rng = np.random.default_rng(seed)
    inits = {"w1": np.eye(C, dtype=np.float32).reshape(C, C, 1, 1),
             "w2": (0.3 * rng.standard_normal((4, C, 3, 3))).astype(np.float32),
             "b2": np.zeros(4, np.float32),
             "g": rng.uniform(0.5, 2.0, C).astype(np.float32), "be": rng.uniform(-1, 1.5, C).astype(np.float32),
             "m": rng.uniform(-1, 1, C).astype(np.float32), "v": rng.uniform(0.5, 3, C).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1])]
    h = "c1"
    if bn:
        nodes.append(helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["n1"], name="bn1"))
        h = "n1"
    if act == "relu":
        nodes.append(helper.make_node("Relu", [h], ["a"]))
    elif act == "hardswish_decomposed":  # PP-OCR's form: x * Clip(x + 3, 0, 6) / 6
        inits.update({"three": np.array(3, np.float32), "zero": np.array(0, np.float32),
                      "six": np.array(6, np.float32)})
        nodes += [helper.make_node("Add", [h, "three"], ["p"]),
                  helper.make_node("Clip", ["p", "zero", "six"], ["q"]),
                  helper.make_node("Mul", [h, "q"], ["r"]),
                  helper.make_node("Div", ["r", "six"], ["a"])]
    elif act == "silu":  # x * Sigmoid(x), as exporters write it
        nodes += [helper.make_node("Sigmoid", [h], ["s"]), helper.make_node("Mul", [h, "s"], ["a"])]
    else:
        nodes.append(helper.make_node("Identity", [h], ["a"]))
    nodes.append(helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4))
    return make_model(nodes, [("x", [None, C, 6, 6])], [("y", [None, 4, 6, 6])], inits)


def stat_inputs(proto, n=4000, seed=1):
    """x following the BN's running statistics (mean, var), every position independent."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    m, v = init["m"].reshape(1, C, 1, 1), init["v"].reshape(1, C, 1, 1)
    return (m + np.sqrt(v) * rng.standard_normal((n, C, 6, 6))).astype(np.float32)


def prune(proto, repair, tmp_path, name):
    src = tmp_path / f"{name}.onnx"
    onnx.save(proto, src)
    out = run_prune(src, PruneOptions(ratio=0.5, repair=repair), out=tmp_path / f"{name}_p.onnx")
    return out


def run(model_or_path, x):
    return session(model_or_path).run(None, {"x": x})[0]


def test_gaussian_means_match_closed_form_and_monte_carlo():
    rng = np.random.default_rng(0)
    mu, sd = rng.uniform(-1, 1, 5), rng.uniform(0.2, 2, 5)
    z = mu[:, None] + sd[:, None] * bn_fold._T[None, :]
    relu = np.maximum(z, 0) @ bn_fold._W
    from math import erf, exp, pi, sqrt

    closed = [m * 0.5 * (1 + erf(m / s / sqrt(2))) + s * exp(-0.5 * (m / s) ** 2) / sqrt(2 * pi)
              for m, s in zip(mu, sd, strict=True)]
    np.testing.assert_allclose(relu, closed, rtol=1e-5, atol=1e-7)
    samples = mu[:, None] + sd[:, None] * rng.standard_normal((5, 400_000))
    hs = (samples * np.clip(samples / 6 + 0.5, 0, 1)).mean(1)
    np.testing.assert_allclose(z * np.clip(z / 6 + 0.5, 0, 1) @ bn_fold._W, hs, atol=0.01)


def test_channel_means_read_decomposed_activations():
    for act in ("relu", "hardswish_decomposed", "silu", "identity"):
        proto = bn_model(act)
        model = ir.serde.deserialize_model(proto)
        conv2 = next(n for n in model.graph if n.name == "conv2")
        a = bn_fold.ChannelMeans(linear=True)(conv2.inputs[0])
        assert a is not None, act
        # the Monte Carlo mean of the activation at the BN output distribution
        x = stat_inputs(proto, n=3000)
        init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
        vv = init["v"].reshape(1, C, 1, 1)
        n = (x - init["m"].reshape(1, C, 1, 1)) / np.sqrt(vv + 1e-5) * init["g"].reshape(1, C, 1, 1) \
            + init["be"].reshape(1, C, 1, 1)
        f = {"relu": lambda t: np.maximum(t, 0), "hardswish_decomposed": lambda t: t * np.clip(t + 3, 0, 6) / 6,
             "silu": lambda t: t / (1 + np.exp(-t)), "identity": lambda t: t}[act]
        np.testing.assert_allclose(a, f(n).mean((0, 2, 3)), atol=0.02, err_msg=act)


def test_fold_restores_output_mean_and_changes_only_biases(tmp_path):
    for act in ("relu", "hardswish_decomposed", "silu"):
        proto = bn_model(act)
        plain = prune(proto, "none", tmp_path, f"plain_{act}")
        folded = prune(proto, "bn-fold", tmp_path, f"fold_{act}")
        assert plain.oracle.ok and folded.oracle.ok  # the oracle ran before the repair
        assert plain.plan.tensors == folded.plan.tensors
        (rep,) = folded.repair
        assert rep["pass"] == "bn-fold-compensate" and rep["channels"] == C // 2 and not rep["reverted"]
        # only biases differ from the un-repaired pruned model
        a = {n.name: n for n in plain.model.graph}
        for node in folded.model.graph:
            for i, v in enumerate(node.inputs):
                arr = const_array(v)
                if arr is None or (node.op_type == "Conv" and i == 2):
                    continue
                np.testing.assert_array_equal(arr, const_array(a[node.name].inputs[i]))
        x = stat_inputs(proto)
        dense = run(str(tmp_path / f"plain_{act}.onnx"), x)
        err_plain = np.abs((dense - run(str(plain.out), x)).mean((0, 2, 3)))
        err_fold = np.abs((dense - run(str(folded.out), x)).mean((0, 2, 3)))
        assert err_plain.max() > 0.1, act
        assert err_fold.max() < 0.05 * err_plain.max(), (act, err_plain, err_fold)


def test_padding_borders_are_weighted_by_coverage():
    node = ir.Node("", "Conv", [], attributes=[ir.AttrInt64s("pads", [1, 1, 1, 1])])
    cov, exact = bn_fold.tap_coverage(node, [1, C, 4, 4], (4, C, 3, 3))
    assert exact
    # a 3-tap row over 4 output positions: the first tap is outside at position 0, the last at 3
    row = np.array([0.75, 1.0, 0.75])
    np.testing.assert_allclose(cov, np.outer(row, row).reshape(-1))
    cov, exact = bn_fold.tap_coverage(node, [1, C, "h", "w"], (4, C, 3, 3))
    assert not exact and np.all(cov == 1)


def test_without_batchnorm_nothing_is_folded_and_says_so(tmp_path):
    proto = bn_model("relu", bn=False)
    out = prune(proto, "bn-fold", tmp_path, "nobn")
    (rep,) = out.repair
    assert rep["channels"] == 0 and rep["line"].startswith(bn_fold.NONE_APPLICABLE)
    plain = prune(proto, "none", tmp_path, "nobn_plain")
    x = stat_inputs(bn_model("relu"), n=8)
    np.testing.assert_array_equal(run(str(out.out), x), run(str(plain.out), x))


def test_cli_repair_bn_fold_without_calibration_says_what_it_folded(samples_dir, tmp_path, capsys):
    from graphprune.cli.main import main

    src = samples_dir / "tiny_mobilenet.onnx"
    assert main(["prune", str(src), "-o", str(tmp_path / "f.onnx"), "--no-bench", "--repair", "bn-fold"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text
    line = next(t for t in text.splitlines() if t.startswith("repair bn-fold-compensate"))
    assert "folded the BatchNorm means of" in line and "output error" not in line
    assert line.endswith("(not measured: no calibration data)")
    # a repair that needs data still asks for it
    assert main(["prune", str(src), "-o", str(tmp_path / "g.onnx"), "--no-bench", "--repair", "bias"]) != 0


def test_default_without_calibration_is_no_repair(samples_dir):
    """Measured (benchmarks/accuracy/bn_fold.py), the fold does not help on average, so it
    is opt-in: the default run without data repairs nothing and stays oracle-checkable."""
    res = gp.prune(str(samples_dir / "tiny_mobilenet.onnx"))
    assert res.changed
    assert "repair" not in res.plan.settings


def test_with_calibration_data_the_fold_is_guarded_and_measured(tmp_path):
    from graphprune.runtime.calibration import Calibration

    proto = bn_model("relu")
    src = tmp_path / "m.onnx"
    onnx.save(proto, src)
    x = stat_inputs(proto, n=64)
    calib = Calibration.from_batches([{"x": x[i:i + 16]} for i in range(0, 64, 16)], "stat inputs")
    # max_drop=None: half of a random network's channels moves its outputs past the default gate
    out = run_prune(src, PruneOptions(ratio=0.5, criterion="l2", repair="bn-fold", calib=calib, max_drop=None),
                    out=tmp_path / "p.onnx")
    (rep,) = out.repair
    assert rep["pass"] == "bn-fold-compensate" and rep["channels"] == C // 2
    assert not rep["reverted"] and rep["error_after"] < rep["error_before"]
