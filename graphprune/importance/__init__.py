"""Importance criteria: one score per atom of a group (higher = more important)."""
from graphprune.importance.magnitude import CRITERIA, group_scores

__all__ = ["CRITERIA", "group_scores"]
