"""Structural verifier run after every pass, plus the ONNX checker at the boundary.

`find_violations` walks the model once and collects *every* violation it can decide
cheaply and exactly from the IR (no data is read, no shape inference is run), so one
broken pass is reported with all the damage it did, each item naming its node:

* a value used but produced nowhere (its producer was removed, or it belongs to no graph
  in scope), or used before the node producing it (the node list is not topological);
* a name defined twice in one scope (two outputs, an output and an input/initializer, or a
  subgraph name shadowing an outer one: ONNX's SSA rule), and two nodes with one name
  (ONNX Runtime refuses the model; plans and `--blocks` name nodes);
* a graph output that nothing produces;
* a constant (initializer or `Constant` node) whose data disagrees with the shape or
  dtype recorded on its value;
* a Conv / ConvTranspose / Gemm / MatMul / BatchNormalization whose weight, bias or
  statistics disagree with the channel count of its input, whose `group` does not divide
  the channels, or whose output records a channel count its weight no longer gives:
  exactly what a pruning pass that cut one side of a coupling but not the other (or did
  not update a shape) leaves behind. Only static dims are compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from graphprune.errors import VerificationError
from graphprune.ir.shapes import dims_of

MAX_LISTED = 10  # violations spelled out in an error message; the rest are counted


@dataclass(frozen=True)
class Violation:
    """One thing wrong with the IR. `kind` is a stable key tests and tools can match."""

    kind: str
    message: str
    node: str | None = None  # the node concerned (name, or op type when unnamed)
    value: str | None = None  # the value concerned, when there is one

    def __str__(self) -> str:
        return self.message


def _label(node: ir.Node) -> str:
    return node.name or f"<unnamed {node.op_type}>"


def _where(node: ir.Node) -> str:
    return f"node {_label(node)!r} ({node.op_type})"


def _static(dims, i: int) -> int | None:
    """dims[i] when it is a known int (negative i counts from the end)."""
    if dims is None or not -len(dims) <= i < len(dims):
        return None
    d = dims[i]
    return d if isinstance(d, int) else None


def _conv_weight(wd, group: int) -> tuple[int | None, str, int | None]:
    """Conv weight (M, C/group, k...): the input channels it expects, as a message spells
    them, and the output channels it gives (None where its dims are not static)."""
    cw = _static(wd, 1)
    c = None if cw is None else cw * group
    return c, f"{cw} x group {group} = {c}", _static(wd, 0)


def _conv_transpose_weight(wd, group: int) -> tuple[int | None, str, int | None]:
    """ConvTranspose weight (C, M/group, k...): as `_conv_weight`."""
    c, mg = _static(wd, 0), _static(wd, 1)
    return c, f"{c}", None if mg is None else mg * group


class _Checker:
    def __init__(self) -> None:
        self.found: list[Violation] = []

    def add(self, kind: str, message: str, node: ir.Node | None = None, value: ir.Value | None = None):
        self.found.append(Violation(kind, message, None if node is None else _label(node),
                                    None if value is None else value.name))

    # -- structure --------------------------------------------------------------------

    def graph(self, graph: ir.Graph, outer_known: set[int], outer_names: dict[str, tuple[ir.Value, str]]):
        known = set(outer_known)
        names = dict(outer_names)  # a copy: sibling subgraphs do not see each other's names
        node_names: dict[str, ir.Node] = {}

        def define(v: ir.Value, who: str, node: ir.Node | None = None) -> None:
            known.add(id(v))
            if not v.name:
                return
            prev = names.get(v.name)
            if prev is not None and prev[0] is not v:
                self.add("duplicate-value", f"value {v.name!r} is defined twice: by {prev[1]} and by {who}",
                         node, v)
            names[v.name] = (v, who)

        for v in graph.inputs:
            define(v, f"graph input of {graph.name or 'the graph'!r}" if outer_known else "a graph input")
        for key, v in graph.initializers.items():
            if not v.is_graph_input():
                define(v, "an initializer")
            self.initializer(key, v)
        position = {id(n): i for i, n in enumerate(graph)}
        for node in graph:
            if node.name:
                if node.name in node_names:
                    self.add("duplicate-node-name", f"two nodes are named {node.name!r} "
                             f"({node_names[node.name].op_type} and {node.op_type})", node)
                else:
                    node_names[node.name] = node
            self.node_inputs(node, known, position)
            self.subgraphs(node, known, names)
            for out in node.outputs:
                define(out, _where(node), node)
            if node.domain in ("", "ai.onnx"):
                check = _OP_CHECKS.get(node.op_type)
                if check is not None:
                    check(self, node)
        for out in graph.outputs:
            if id(out) not in known:
                self.add("output-not-produced", f"graph output {out.name!r} of {graph.name or 'the graph'!r} "
                         "is produced by no node, graph input or initializer in scope", out.producer(), out)

    def node_inputs(self, node: ir.Node, known: set[int], position: dict[int, int]) -> None:
        """Every input is defined before the node: in scope, or produced by an earlier node."""
        for i, inp in enumerate(node.inputs):
            if inp is None or id(inp) in known:
                continue
            prod = inp.producer()
            if prod is not None and id(prod) in position:
                self.add("use-before-def", f"{_where(node)} uses {inp.name!r} (input {i}) before "
                         f"node {_label(prod)!r} produces it: the nodes are not in topological order",
                         node, inp)
            else:
                self.add("dangling-input", f"{_where(node)} uses {inp.name!r} (input {i}), which no "
                         "node, graph input or initializer in scope produces", node, inp)

    def subgraphs(self, node: ir.Node, known: set[int], names: dict[str, tuple[ir.Value, str]]) -> None:
        """The node's graph attributes (If, Loop, Scan bodies), which see the enclosing scope."""
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                self.graph(attr.value, known, names)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.value:
                    self.graph(sub, known, names)

    # -- constants --------------------------------------------------------------------

    def initializer(self, key: str, v: ir.Value) -> None:
        if v.const_value is None:
            if not v.is_graph_input():
                self.add("const-mismatch", f"initializer {key!r} has no data", None, v)
            return
        self.const_matches(v, list(v.const_value.shape), v.const_value.dtype, f"initializer {v.name!r}", None)

    def const_matches(self, v: ir.Value, shape: list[int], dtype, what: str, node: ir.Node | None) -> None:
        dims = dims_of(v)
        if dims is not None and (len(dims) != len(shape)
                                 or any(isinstance(d, int) and d != s for d, s in zip(dims, shape, strict=True))):
            self.add("const-mismatch", f"{what} holds data of shape {shape} but its value records "
                     f"shape {dims}", node, v)
        if v.dtype is not None and dtype is not None and v.dtype != dtype:
            self.add("const-mismatch", f"{what} holds {dtype.name} data but its value records "
                     f"{v.dtype.name}", node, v)

    def constant_node(self, node: ir.Node) -> None:
        out = node.outputs[0] if node.outputs else None
        if out is None:
            return
        attrs = node.attributes
        if "value" in attrs:
            t = attrs["value"].value
            shape, dtype = list(t.shape), t.dtype
        elif "value_float" in attrs or "value_int" in attrs:
            shape, dtype = [], ir.DataType.FLOAT if "value_float" in attrs else ir.DataType.INT64
        elif "value_floats" in attrs or "value_ints" in attrs:
            key = "value_floats" if "value_floats" in attrs else "value_ints"
            shape, dtype = [len(attrs[key].value)], ir.DataType.FLOAT if key == "value_floats" else ir.DataType.INT64
        else:
            return  # sparse / string constants: nothing cheap to compare
        self.const_matches(out, shape, dtype, f"the data of {_where(node)}", node)

    # -- channel couplings ------------------------------------------------------------

    def mismatch(self, node: ir.Node, what: str) -> None:
        self.add("channel-mismatch", f"{_where(node)}: {what}", node)

    def _conv_operands(self, node: ir.Node):
        x, w, b = (list(node.inputs) + [None, None, None])[:3]
        group = node.attributes.get_int("group", 1)
        xd, wd = dims_of(x), dims_of(w)
        if group < 1:
            self.add("bad-group", f"{_where(node)}: group={group} is not positive", node)
            return None
        if xd is not None and wd is not None and len(xd) != len(wd):
            self.mismatch(node, f"input {x.name!r} has rank {len(xd)}, weight {w.name!r} rank {len(wd)}")
        return x, w, b, group, _static(xd, 1), wd

    def _group_divides(self, node: ir.Node, group: int, n: int | None, what: str) -> None:
        if n is not None and n % group:
            self.add("bad-group", f"{_where(node)}: group={group} does not divide its {n} {what}", node)

    def _produces(self, node: ir.Node, axis: int, n: int | None) -> None:
        """The recorded shape of the node's output agrees with the `n` its operands give."""
        out = node.outputs[0] if node.outputs else None
        got = _static(dims_of(out), axis)
        if n is not None and got is not None and got != n:
            self.add("stale-shape", f"{_where(node)}: its operands give {n} output channels but output "
                     f"{out.name!r} records {got}", node, out)

    def _bias(self, node: ir.Node, b: ir.Value | None, m: int | None) -> None:
        nb = _static(dims_of(b), 0)
        if nb is not None and m is not None and nb != m:
            self.mismatch(node, f"bias {b.name!r} has {nb} entries for {m} output channels")

    def conv(self, node: ir.Node, weight_layout=_conv_weight) -> None:
        """Conv, and ConvTranspose with its `weight_layout`: the input's channels against
        those the weight expects, `group` dividing the input and output channels, the bias
        (M) and the recorded output against the output channels the weight gives."""
        ops = self._conv_operands(node)
        if ops is None:
            return
        x, w, b, group, c, wd = ops
        cw, cw_spelled, m = weight_layout(wd, group)
        if c is not None and cw is not None and c != cw:
            self.mismatch(node, f"input {x.name!r} has {c} channels, weight {w.name!r} expects {cw_spelled}")
        self._group_divides(node, group, c if c is not None else cw, "input channels")
        self._group_divides(node, group, m, "output channels")
        self._bias(node, b, m)
        self._produces(node, 1, m)

    def conv_transpose(self, node: ir.Node) -> None:
        """ConvTranspose: weight (C, M/group, k...), bias (M)."""
        self.conv(node, _conv_transpose_weight)

    def gemm(self, node: ir.Node) -> None:
        a, bw, c = (list(node.inputs) + [None, None, None])[:3]
        ad, bd = dims_of(a), dims_of(bw)
        if ad is None or bd is None or len(ad) != 2 or len(bd) != 2:
            return
        ta, tb = node.attributes.get_int("transA", 0), node.attributes.get_int("transB", 0)
        ka, kb = _static(ad, 0 if ta else 1), _static(bd, 1 if tb else 0)
        n = _static(bd, 0 if tb else 1)
        if ka is not None and kb is not None and ka != kb:
            self.mismatch(node, f"A {a.name!r} has {ka} columns{' (transA)' if ta else ''}, "
                          f"B {bw.name!r} has {kb} rows{' (transB)' if tb else ''}")
        cd = dims_of(c)
        nc = _static(cd, -1)
        if nc is not None and n is not None and nc not in (1, n):
            self.mismatch(node, f"C {c.name!r} has {nc} columns for {n} outputs")
        self._produces(node, -1, n)

    def matmul(self, node: ir.Node) -> None:
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            return
        a, b = node.inputs[0], node.inputs[1]
        ad, bd = dims_of(a), dims_of(b)
        if not ad or not bd:
            return
        ka, kb = _static(ad, -1), _static(bd, 0 if len(bd) == 1 else -2)
        if ka is not None and kb is not None and ka != kb:
            self.mismatch(node, f"{a.name!r} has inner dim {ka}, {b.name!r} has {kb}")
        if len(bd) >= 2:
            self._produces(node, -1, _static(bd, -1))

    def batchnorm(self, node: ir.Node) -> None:
        c = _static(dims_of(node.inputs[0] if node.inputs else None), 1)
        if c is None:
            return
        # a BatchNormalization short of inputs is the ONNX checker's to report: check those it has
        for role, v in zip(("scale", "bias", "mean", "var"), list(node.inputs)[1:5], strict=False):
            n = _static(dims_of(v), 0)
            if n is not None and n != c:
                self.mismatch(node, f"{role} {v.name!r} has {n} entries for {c} input channels")


_OP_CHECKS = {
    "Constant": _Checker.constant_node,
    "Conv": _Checker.conv,
    "ConvTranspose": _Checker.conv_transpose,
    "Gemm": _Checker.gemm,
    "MatMul": _Checker.matmul,
    "BatchNormalization": _Checker.batchnorm,
}


def find_violations(model: ir.Model) -> list[Violation]:
    """Every violation in `model`, in graph order (an empty list: the IR is valid)."""
    checker = _Checker()
    checker.graph(model.graph, set(), {})
    return checker.found


def describe(violations: list[Violation], *, limit: int = MAX_LISTED) -> str:
    """One line a violation, the first `limit` of them, then how many more there are."""
    lines = [f"  - {v}" for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"  ... and {len(violations) - limit} more")
    return "\n".join(lines)


def verify_model(model: ir.Model, *, where: str = "model", onnx_check: bool = False,
                 full_check: bool = False) -> None:
    """Raise VerificationError listing every violation (see `find_violations`).

    With `onnx_check`, also run `onnx.checker` on the serialised model (`full_check`
    adds strict shape inference).
    """
    found = find_violations(model)
    if found:
        n = len(found)
        raise VerificationError(f"{where}: {n} IR violation{'s' if n > 1 else ''}:\n{describe(found)}",
                                node=next((v.node for v in found if v.node), None), violations=found)
    if onnx_check:
        import onnx

        proto = ir.serde.serialize_model(model)
        try:
            onnx.checker.check_model(proto, full_check=full_check)
        except Exception as exc:  # onnx raises several types; report them uniformly
            raise VerificationError(f"{where}: onnx.checker failed: {exc}") from exc
