"""Every importance criterion on a hand-computable case.

Model: x[N,4] -Gemm(W1 4x3, b1)-> h -Relu-> r -MatMul(W2 3x2)-> y. The three hidden
channels are one group: W1 columns, b1, W2 rows, h and r. The MatMul consumes r, so the
data-aware criteria read the statistics of r.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphprune as gp
from graphprune.analysis.dependency.context import Slot
from graphprune.analysis.dependency.graph import Group
from graphprune.errors import UsageError
from graphprune.importance import CRITERIA, Criterion, group_scores, register_criterion
from graphprune.importance.criteria import _fpgm_distances
from graphprune.importance.reduce import lamp, reduce_group
from graphprune.runtime.calibration import Calibration
from helpers import make_model
from onnx import helper

W1 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], np.float32)  # h = x[:, :3]
W2 = np.array([[1, 1], [2, 0], [0, 0.5]], np.float32)


def mlp(w1=W1, w2=W2, b1=None):
    b1 = np.zeros(3, np.float32) if b1 is None else b1
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    m = make_model(nodes, [("x", [None, 4])], [("y", [None, 2])], {"w1": w1, "b1": b1, "w2": w2})
    model = gp.load(m.SerializeToString())
    dg = gp.analyze(model)
    assert len(dg.prunable_groups) == 1
    return model, dg, dg.prunable_groups[0]


def calib(rows):
    rows = np.asarray(rows, np.float32)
    return Calibration.from_batches([{"x": rows[:2]}, {"x": rows[2:]}])


# r = relu(x[:, :3]) = [[1,0,3],[3,2,0],[0,0,0],[0,0,1]]
ROWS = [[1, -2, 3, 7], [3, 2, -1, 7], [-1, -1, -1, 7], [0, 0, 1, 7]]
R = np.maximum(np.asarray(ROWS, np.float64)[:, :3], 0)


def scores(crit, rows=ROWS, **kw):
    model, dg, g = mlp(**{k: kw.pop(k) for k in list(kw) if k in ("w1", "w2", "b1")})
    return group_scores(dg, crit, calibration=calib(rows), normalize="none", **kw)[g.id]


def test_l1_l2_sum_weight_slices_only():
    # W1 columns |.|: [1,1,1]; W2 rows: [2,2,.5]; b1 is a bias (not counted)
    np.testing.assert_allclose(scores("l1"), [3, 3, 1.5])
    np.testing.assert_allclose(scores("l2"), [1 + 2, 1 + 4, 1 + 0.25])


def test_l2_default_normalisation_is_per_tensor_mean():
    model, dg, g = mlp()
    s = group_scores(dg, "l2")[g.id]
    np.testing.assert_allclose(s, np.array([1, 1, 1]) / 1 + np.array([2, 4, 0.25]) / (6.25 / 3))


def test_bn_scale_is_abs_gamma():
    gamma = np.array([0.5, -2, 1], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"),
             helper.make_node("BatchNormalization", ["h", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    inits = {"w1": np.ones((3, 2, 1, 1), np.float32), "g": gamma, "b": np.zeros(3, np.float32),
             "m": np.zeros(3, np.float32), "v": np.ones(3, np.float32), "w2": np.ones((2, 3, 1, 1), np.float32)}
    m = make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 2, 4, 4])], inits)
    dg = gp.analyze(gp.load(m.SerializeToString()))
    g = dg.prunable_groups[0]
    np.testing.assert_allclose(group_scores(dg, "bn_scale", normalize="none")[g.id], [0.5, 2, 1])
    # no norm scale in the group: falls back to L1 magnitude
    model, dg2, g2 = mlp()
    np.testing.assert_allclose(group_scores(dg2, "bn_scale", normalize="none")[g2.id], [3, 3, 1.5])


def test_fpgm_sum_of_distances():
    flat = np.array([[0.0, 0], [1, 0], [3, 0]])
    np.testing.assert_allclose(_fpgm_distances(flat), [0 + 1 + 3, 1 + 0 + 2, 3 + 2 + 0])
    # W1 columns are orthonormal: each is sqrt(2) from the two others; W2 rows:
    d = lambda a, b: np.linalg.norm(W2[a] - W2[b])  # noqa: E731
    w2 = [d(0, 1) + d(0, 2), d(1, 0) + d(1, 2), d(2, 0) + d(2, 1)]
    np.testing.assert_allclose(scores("fpgm"), 2 * np.sqrt(2) + np.array(w2), rtol=1e-6)


def test_lamp_transform_and_criterion():
    np.testing.assert_allclose(lamp(np.array([1.0, 2, 3, 4])), [1 / 10, 2 / 9, 3 / 7, 1.0])
    np.testing.assert_allclose(lamp(np.array([4.0, 1, 3, 2])), [1.0, 1 / 10, 3 / 7, 2 / 9])
    model, dg, g = mlp()
    # per tensor: W1 squared norms [1,1,1] -> stable order gives [1/3, 1/2, 1]; W2 [2,4,.25] -> [2/6, 1, .25/6.25]
    np.testing.assert_allclose(group_scores(dg, "lamp")[g.id], [1 / 3 + 2 / 6, 1 / 2 + 1, 1 + 0.25 / 6.25])


def test_activation_and_apoz():
    np.testing.assert_allclose(scores("activation"), R.mean(0))  # [1, .5, 1]
    np.testing.assert_allclose(scores("apoz"), 1 - (R == 0).mean(0))  # [.5, .25, .5]


def test_wanda_is_abs_w_times_input_norm():
    rms = np.sqrt((R ** 2).mean(0))
    np.testing.assert_allclose(scores("wanda"), np.abs(W2).sum(1) * rms)


def test_obs_diagonal_hessian_is_w2_times_energy():
    # activations on separate channels: H is diagonal, OBS = ||W_c||^2 * E[r_c^2]
    rows = [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 3, 0], [0, 0, 1, 0]]
    r = np.maximum(np.asarray(rows, float)[:, :3], 0)
    expected = (W2.astype(float) ** 2).sum(1) * (r ** 2).mean(0)
    np.testing.assert_allclose(scores("obs", rows, damp=0.0), expected, rtol=1e-9)


def test_obs_equals_error_of_optimal_refit():
    """OBS score of channel c = the smallest possible increase of the layer's squared output
    error when c is removed and the other weights are re-fitted (least squares)."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((8, 4)) + 0.5
    w2 = rng.standard_normal((3, 2)).astype(np.float32)
    s = scores("obs", rows, w2=w2, damp=0.0)
    r = np.maximum(rows[:, :3], 0)
    y = r @ w2.astype(float)
    for c in range(3):
        keep = [k for k in range(3) if k != c]
        fit, *_ = np.linalg.lstsq(r[:, keep], y, rcond=None)
        err = ((r[:, keep] @ fit - y) ** 2).sum() / len(r)
        assert s[c] == pytest.approx(err, rel=1e-6)


def test_taylor_needs_gradients_and_uses_them():
    model, dg, g = mlp()
    with pytest.raises(UsageError, match="gradients"):
        group_scores(dg, "taylor")
    grads = {"w1": np.ones_like(W1), "w2": np.full_like(W2, 2.0)}
    # (sum w*g)^2 per slice: W1 cols [1,1,1]; W2 rows 2*[2,2,.5] -> [16,16,1]
    np.testing.assert_allclose(group_scores(dg, "taylor", gradients=grads, normalize="none")[g.id], [17, 17, 2])


def test_random_is_seeded():
    model, dg, g = mlp()
    a = group_scores(dg, "random", seed=3)[g.id]
    assert np.array_equal(a, group_scores(dg, "random", seed=3)[g.id])
    assert not np.array_equal(a, group_scores(dg, "random", seed=4)[g.id])


def test_data_aware_criteria_need_calibration():
    model, dg, g = mlp()
    for crit in ("activation", "apoz", "wanda", "obs"):
        with pytest.raises(UsageError, match="calibration"):
            group_scores(dg, crit)


def test_reduction_and_normalisation_over_slots():
    labels = {Slot("a", 0): np.array([0, 1, 2]), Slot("b", 0): np.array([0, 0, 1, 1, 2, 2]),
              Slot("c", 0): np.array([1, 2])}
    g = Group(0, "g", list(labels), {s: len(v) for s, v in labels.items()}, labels, 3, {})
    contribs = [(Slot("a", 0), np.array([1.0, 2, 3])), (Slot("b", 0), np.array([1.0, 1, 2, 2, 3, 3])),
                (Slot("c", 0), np.array([10.0, 20]))]
    np.testing.assert_allclose(reduce_group(g, contribs, "sum", "none"), [1 + 2, 2 + 4 + 10, 3 + 6 + 20])
    np.testing.assert_allclose(reduce_group(g, contribs, "mean", "none"), [3 / 2, 16 / 3, 29 / 3])
    np.testing.assert_allclose(reduce_group(g, contribs, "max", "none"), [2, 10, 20])
    np.testing.assert_allclose(reduce_group(g, contribs, "sum", "max"), [1 / 3 + 2 / 3, 2 / 3 + 4 / 3 + .5, 1 + 2 + 1])
    with pytest.raises(UsageError):
        reduce_group(g, contribs, "median", "none")


def test_registry_is_open_for_other_frontends():
    @register_criterion("test-first-index", normalize="none")
    def first(dg, group, **kw):
        s = group.slots[0]
        return [(s, np.arange(group.sizes[s], dtype=float))]

    try:
        assert isinstance(CRITERIA["test-first-index"], Criterion)
        model, dg, g = mlp()
        np.testing.assert_allclose(group_scores(dg, "test-first-index")[g.id], [0, 1, 2])
        with pytest.raises(ValueError):
            register_criterion("test-first-index", first)
        res = gp.prune(model, 0.34, criterion="test-first-index")
        assert res.plan.groups[0]["removed_atoms"] == [0]
    finally:
        CRITERIA.pop("test-first-index")
