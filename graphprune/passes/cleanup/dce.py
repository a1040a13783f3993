"""Dead-code elimination: nodes whose outputs nobody reads, and unused initializers."""
from __future__ import annotations

import onnx_ir as ir

from graphprune.passes._infra import Pass, PassContext, register_pass


def eliminate_dead_code(model: ir.Model) -> bool:
    from graphprune.ir.unused import remove_unused

    before = len(model.graph) + len(model.graph.initializers)
    remove_unused(model)
    return len(model.graph) + len(model.graph.initializers) != before


@register_pass
class DeadCodeElimination(Pass):
    name = "dce"
    description = "remove nodes and initializers that do not contribute to any output"

    def __init__(self):  # no options
        super().__init__()

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        return eliminate_dead_code(model)
