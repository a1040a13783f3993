"""Importance criteria: one score per atom of a group (higher = more important).

`CRITERIA` is open: register more with `register_criterion` (e.g. a torch frontend's
gradient-based Taylor score)."""
from graphprune.importance.registry import CRITERIA, Criterion, group_scores, register_criterion

__all__ = ["CRITERIA", "Criterion", "group_scores", "register_criterion"]
