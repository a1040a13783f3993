"""Structural verifier run after every pass, plus the ONNX checker at the boundary."""
from __future__ import annotations

import onnx_ir as ir

from graphprune.errors import VerificationError


def _check_graph(graph: ir.Graph, visible: set[int], where: str) -> None:
    known = set(visible)
    for v in graph.inputs:
        known.add(id(v))
    for v in graph.initializers.values():
        known.add(id(v))
    names: dict[str, str] = {}
    for node in graph:
        for i, inp in enumerate(node.inputs):
            if inp is None:
                continue
            if id(inp) not in known:
                raise VerificationError(
                    f"{where}: input {i} ({inp.name!r}) of node {node.name!r} ({node.op_type}) "
                    "is used before it is produced or is not produced in this graph",
                    node=node.name,
                )
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                _check_graph(attr.value, known, where)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    _check_graph(g, known, where)
        for out in node.outputs:
            if out.name:
                if out.name in names:
                    raise VerificationError(
                        f"{where}: value {out.name!r} is produced twice "
                        f"(by {names[out.name]!r} and {node.name!r})",
                        node=node.name,
                    )
                names[out.name] = node.name or node.op_type
            known.add(id(out))
    for out in graph.outputs:
        if id(out) not in known:
            raise VerificationError(f"{where}: graph output {out.name!r} is not produced")


def verify_model(model: ir.Model, *, where: str = "model", onnx_check: bool = False,
                 full_check: bool = False) -> None:
    """Raise VerificationError if the graph is not a valid, topologically ordered DAG.

    With `onnx_check`, also run `onnx.checker` on the serialised model (`full_check`
    adds strict shape inference).
    """
    _check_graph(model.graph, set(), where)
    if onnx_check:
        import onnx

        proto = ir.serde.serialize_model(model)
        try:
            onnx.checker.check_model(proto, full_check=full_check)
        except Exception as exc:  # onnx raises several types; report them uniformly
            raise VerificationError(f"{where}: onnx.checker failed: {exc}") from exc
