"""PipelineState: what the workflow's steps hand each other, as typed fields.

Passes still talk through `PassContext.results` (a pass pipeline parsed from text has no
other channel), so the state is a typed view over the context the passes run with: the
workflow reads and writes `state.plan`, `state.calibration`, ..., never string keys, and
the names live here once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from graphprune.passes import PassContext

if TYPE_CHECKING:
    import onnx_ir as ir

    from graphprune.analysis.dependency import DependencyGraph
    from graphprune.input_shapes import InputShapes
    from graphprune.plan import Plan
    from graphprune.runtime.calibration import Calibration

T = TypeVar("T")


class _Slot(Generic[T]):
    """One field of the state, kept in the pass context under its own name. Setting None
    removes the key (passes test `key in results`)."""

    def __set_name__(self, owner, name: str) -> None:
        self.key = name

    def __get__(self, obj, objtype=None) -> T | None:
        if obj is None:
            return self  # type: ignore[return-value]
        return obj.ctx.results.get(self.key)

    def __set__(self, obj, value: T | None) -> None:
        if value is None:
            obj.ctx.results.pop(self.key, None)
        else:
            obj.ctx.results[self.key] = value


class PipelineState:
    """Typed fields of one run; `ctx` is the PassContext the passes see."""

    plan_in: _Slot[Plan] = _Slot()            # a plan to replay (--plan)
    selection: _Slot[dict] = _Slot()          # group id -> atom ids to remove (api: selection=; plan-channels)
    scores: _Slot[dict] = _Slot()             # group id -> per-atom scores plan-channels decided with
    planned_options: _Slot[dict] = _Slot()    # the options plan-channels planned with (the plan's settings)
    planned_graph: _Slot[DependencyGraph] = _Slot()  # the analysis the planned group ids refer to
    calibration: _Slot[Calibration] = _Slot()  # data for data-aware criteria, repair, the gate
    input_shapes: _Slot[InputShapes] = _Slot()  # the run's representative shapes: costs, targets, oracle
    dense_model: _Slot[ir.Model] = _Slot()    # the model before slicing (repair compares against it)
    plan: _Slot[Plan] = _Slot()               # what was removed
    allocation: _Slot[dict] = _Slot()         # the allocation driver's report (sensitivity curves ...)
    removed_blocks: _Slot[list] = _Slot()     # residual blocks removed by prune-blocks
    repair: _Slot[list] = _Slot()             # repair passes' reports
    sparsity: _Slot[dict] = _Slot()           # the sparsify pass's summary
    hidden: _Slot[dict] = _Slot()             # slice-hidden: rotation, rotated reference, hidden-axis slices

    def __init__(self, ctx: PassContext | None = None):
        self.ctx = ctx if ctx is not None else PassContext()

    def fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k, v in vars(type(self)).items() if isinstance(v, _Slot)}
