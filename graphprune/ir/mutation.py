"""A model's mutation count: how an analysis tells that the model changed since it ran.

Why a counter and not a fingerprint of the model. A dependency graph depends on more
than the node list: constant values decide Reshape targets, Slice ranges and which
shared tensors are all-zero, so a fingerprint cheap enough to take on every use would
miss edits the analysis depends on, and one that sees them means hashing every tensor
(gigabytes for a large model) each time. The counter costs nothing and is exact for
every change made through graphprune: the surgery bumps it, and the PassManager bumps
it whenever a pass reports a change (so a pass that edits the IR by hand is covered).
The count lives in `model.meta`, which onnx_ir never serialises: saved models stay
bit-identical, and a clone starts from zero (a new model object, with its own analyses).

The stamp adds the node and initializer counts, a free check that also catches most
edits made to the IR directly, outside passes and surgery.
"""
from __future__ import annotations

import onnx_ir as ir

KEY = "graphprune.mutations"
SHAPES_KEY = "graphprune.shapes_inferred_at"  # the stamp at which shape inference last ran (frontends.onnx)


def mutation_count(model: ir.Model) -> int:
    return int(model.meta.get(KEY, 0))


def mark_mutated(model: ir.Model) -> int:
    """Record that `model` changed (analyses computed before are stale); the new count."""
    model.meta[KEY] = n = mutation_count(model) + 1
    return n


def stamp(model: ir.Model) -> tuple[int, int, int]:
    """(mutation count, nodes, initializers): equal stamps mean no recorded change."""
    return mutation_count(model), len(model.graph), len(model.graph.initializers)


def shapes_current(model: ir.Model) -> bool:
    """Shape inference ran on `model` and nothing was recorded to change it since."""
    return model.meta.get(SHAPES_KEY) == stamp(model)


def restamp_shapes(model: ir.Model) -> None:
    """`model`'s shapes are current at its present stamp: said by a change that keeps every
    value's shape right itself (the surgery shrinks the shapes of what it slices)."""
    model.meta[SHAPES_KEY] = stamp(model)
