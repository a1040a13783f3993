"""Dependency analysis: which channels are coupled, as pruning groups of atoms."""
from graphprune.analysis.dependency import rules as _rules  # noqa: F401  (fills the table)
from graphprune.analysis.dependency.context import RewriteContext, RuleContext, Slot
from graphprune.analysis.dependency.graph import DependencyGraph, Diagnostic, FrozenGroup, Group
from graphprune.analysis.dependency.registry import RULES, RuleRegistry, rule

__all__ = [
    "RULES", "DependencyGraph", "Diagnostic", "FrozenGroup", "Group", "RewriteContext",
    "RuleContext", "RuleRegistry", "Slot", "rule",
]
