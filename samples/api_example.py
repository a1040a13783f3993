"""The Python pass API: analyse, register a custom op rule and a custom pass, run a
textual pipeline, save the model and its plan, and check it with the oracle.

    python samples/api_example.py samples/tiny_resnet.onnx out/
"""
from __future__ import annotations

import sys
from pathlib import Path

import onnx_ir as ir

import graphprune as gp
from graphprune.passes import Pass, PassContext, PassManager, register_pass


# A custom channel rule for an op graphprune has no rule for. Shrink is elementwise, so
# every axis maps one to one (a rule could also couple through index maps, mark constant
# slots with roles, freeze what it cannot map exactly and rewrite attributes on prune).
def shrink_rule(node, ctx):
    ctx.identity(node.inputs[0], node.outputs[0])


def register_shrink_rule() -> None:
    if gp.RULES.lookup("", "Shrink", 17) is None:
        gp.RULES.add("", "Shrink", shrink_rule, family="custom")


# A custom pass: clear doc strings (kebab-case name = its token in pipelines).
@register_pass
class StripDocStrings(Pass):
    name = "strip-doc-strings"
    description = "remove doc strings from the graph and its nodes"

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        changed = False
        for node in model.graph:
            if node.doc_string:
                node.doc_string = None
                changed = True
        return changed


def main(model_path: str, out_dir: str) -> None:
    register_shrink_rule()
    model = gp.load(model_path)
    dg = gp.analyze(model)
    print(f"{len(dg.prunable_groups)} prunable groups:")
    for g in dg.prunable_groups:
        print(f"  {g.name}: {g.num_atoms} channels over {len(g.slots)} tensor axes")
    ctx = PassContext()
    pm = PassManager.parse("strip-doc-strings,prune-channels{ratio=0.4,round_to=4},dce")
    pm.run(model, ctx)
    out = Path(out_dir)
    gp.save(model, out / "pruned.onnx")
    ctx.results["plan"].save(out / "pruned.plan.json")
    result = gp.check(model_path, out / "pruned.onnx", out / "pruned.plan.json")
    print(result.summary())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "samples/tiny_resnet.onnx",
         sys.argv[2] if len(sys.argv) > 2 else "out")
