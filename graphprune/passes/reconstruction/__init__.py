"""Repair after removal, without retraining: each a pass that can be switched on or off.

``bn-reestimate``, ``bias-compensate``, ``lsq-reconstruct``. They need calibration data
(``results['calibration']``) and the dense model (``results['dense_model']``, which
prune-channels keeps when calibration data is present) and run after the oracle.
"""
from graphprune.passes.reconstruction import bias_compensation, bn_reestimate, lsq  # noqa: F401

REPAIR_PASSES = {"bn": "bn-reestimate", "bias": "bias-compensate", "lsq": "lsq-reconstruct"}
