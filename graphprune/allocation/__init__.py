"""Allocation: how many atoms each group loses, and which ones.

`uniform` (same fraction everywhere), `global_rank` (one ranking across groups),
`sensitivity` (per-group ratio/fidelity curves), MACs/params/latency targets (`driver`).
"""
from graphprune.allocation.uniform import select_lowest, uniform

__all__ = ["select_lowest", "uniform"]
