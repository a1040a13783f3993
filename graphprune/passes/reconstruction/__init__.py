"""Repair after removal, without retraining: each a pass that can be switched on or off.

``bn-reestimate``, ``bias-compensate``, ``lsq-reconstruct``. They need calibration data
(``results['calibration']``) and the dense model (``results['dense_model']``, which
prune-channels keeps when calibration data is present, or when ``results['keep_dense']``
is set) and run after the oracle. ``bn-fold-compensate`` needs no data: it reads the
removed channels' means from BatchNorm statistics (opt-in,
``--repair bn-fold``: measured, it does not help on average; benchmarks/accuracy/bn_fold.py).
"""
from graphprune.passes.reconstruction import bias_compensation, bn_fold, bn_reestimate, lsq  # noqa: F401

REPAIR_PASSES = {"bn": "bn-reestimate", "bias": "bias-compensate", "lsq": "lsq-reconstruct",
                 "bn-fold": "bn-fold-compensate"}
DATA_FREE = frozenset({"bn-fold-compensate"})  # repair passes that run without calibration data
