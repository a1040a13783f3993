"""lsq-reconstruct's ridge strength chosen on held-out rows (damp=auto)."""
import numpy as np

from graphprune.passes.reconstruction.lsq import DAMP_GRID, _Normal


class _Lin:
    name = "layer"


def _fill(ne, X, Y, held_every=4):
    for k in range(0, len(X), 8):
        ne.update(X[k:k + 8, None, :], Y[k:k + 8, None, :], held=(k // 8) % held_every == held_every - 1)


def _problem(rows, d, noise, seed=0):
    rng = np.random.default_rng(seed)
    W_true = rng.normal(size=(d, 3))
    X = rng.normal(size=(rows, d))
    Y = X @ W_true + noise * rng.normal(size=(rows, 3))
    return X, Y, W_true


def test_plenty_of_rows_choose_the_weakest_ridge():
    X, Y, W_true = _problem(4000, 16, 0.01)
    ne = _Normal(_Lin(), 1, False)
    _fill(ne, X, Y)
    W, info = ne.solve(np.zeros((1, 16, 3)), "auto")
    assert info["damp"] == DAMP_GRID[0] and info["held_out_rows"] == 1000
    assert np.abs(W[0] - W_true).max() < 0.05 and not info["overfit"]


def test_few_noisy_rows_choose_a_stronger_ridge():
    # 32 rows for 24 unknowns, mostly noise: the exact fit of the fit rows is wrong elsewhere
    X, Y, _ = _problem(32, 24, 5.0)
    W0 = np.zeros((1, 24, 3))
    ne = _Normal(_Lin(), 1, False)
    _fill(ne, X, Y)
    _, info = ne.solve(W0, "auto")
    assert info["damp"] > DAMP_GRID[0]
    # the held-out error at the chosen strength is the lowest of the grid's
    errs = {d: ne.held.error(ne.fit.solve(W0, d)) for d in DAMP_GRID}
    assert errs[info["damp"]] == min(errs.values())


def test_fixed_damp_is_used_as_given():
    X, Y, _ = _problem(64, 4, 0.1)
    ne = _Normal(_Lin(), 1, True)
    _fill(ne, X, Y)
    W, info = ne.solve(np.zeros((1, 5, 3)), 0.5)
    assert info == {"damp": 0.5}
    assert W.shape == (1, 5, 3)


def test_weights_no_fit_improves_on_held_out_rows_are_left_alone():
    """The fit rows follow another relation than the held-out ones (a calibration set that
    does not represent the inputs): every ridge strength moves W away from the weights that
    are right for the held-out rows, so the current weights are kept."""
    rng = np.random.default_rng(1)
    W0 = rng.normal(size=(1, 8, 3))
    X = rng.normal(size=(64, 8))
    Y = X @ W0[0]
    fit = np.arange(64) // 8 % 4 != 3  # _fill's held-out batches
    Y[fit] += X[fit] @ rng.normal(size=(8, 3))  # a different relation on the fit rows only
    ne = _Normal(_Lin(), 1, False)
    _fill(ne, X, Y)
    W, info = ne.solve(W0, "auto")
    assert info["kept"] and info["damp"] is None and W is W0
    # and with the held-out rows following the fit rows' relation, a fit is taken
    ne2 = _Normal(_Lin(), 1, False)
    Y2 = X @ (W0[0] + 0.5)
    _fill(ne2, X, Y2)
    W2, info2 = ne2.solve(W0, "auto")
    assert not info2.get("kept") and info2["damp"] in DAMP_GRID and not np.allclose(W2, W0)


def test_the_overfit_warning_names_the_scarcest_layers_rows_and_unknowns(caplog):
    """'the calibration set is small' said how small: the overfit layer with the fewest
    calibration rows per unknown, with both counts (MiniLM at 32 sentences, padding left
    out: 'node_MatMul_177: 861 rows for 1040 unknowns per output')."""
    import logging

    from graphprune.passes.reconstruction.lsq import _report

    entries = [{"layer": "a", "rows": 100, "unknowns": 50, "overfit": True},
               {"layer": "b", "rows": 30, "unknowns": 60, "overfit": True},
               {"layer": "c", "rows": 10, "unknowns": 100, "overfit": False}]
    with caplog.at_level(logging.WARNING):
        res = _report(entries)
    assert res["overfit_layers"] == 2
    (msg,) = [r.getMessage() for r in caplog.records if "much better than held-out" in r.getMessage()]
    assert "2 of 3 layers" in msg and "(b: 30 rows for 60 unknowns per output)" in msg
