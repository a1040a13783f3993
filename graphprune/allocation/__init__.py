"""Allocation: how many atoms each group loses, and which ones."""
from graphprune.allocation.uniform import select_lowest, uniform

__all__ = ["select_lowest", "uniform"]
