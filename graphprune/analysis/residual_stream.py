"""The residual stream of a pre-norm transformer, for rotating and slicing its hidden size.

Channel pruning never removes the hidden size: every RMSNorm reduces over it, which
freezes the axis (removing an element changes every other one). What *does* commute with
an RMSNorm is an orthogonal rotation of the whole stream (``||xQ|| == ||x||``), so the
stream can be expressed in another basis and the trailing directions of that basis
dropped (SliceGPT's idea). That needs the complete list of everything that writes,
reads or normalises the stream; `find_stream` builds it and refuses, naming the node,
whenever the model has anything else touching the stream (fail closed).

Recognised, in both torch exporters' forms:
* writers: the token embedding (`Gather` of a constant table ``[V, d]``), and linear
  layers whose output is added to the stream (``MatMul(h, W[m, d])``, optionally ``+ b[d]``);
* the stream: those `Add`s, and float-to-float `Cast`s between them (and `Shape`s of them:
  a model that uses the hidden size from a `Shape` fails the oracle after slicing);
* RMSNorms: ``x / sqrt(ReduceMean(x^2, last axis) + eps)`` (``Div``, or ``x *`` a
  ``Reciprocal`` or ``Div(1, .)``; float Casts after it), then optionally ``* gamma[d]``
  (graphprune/ir/rms_norm.py); also in the form slice-hidden writes,
  ``ReduceSum(x^2) * (1/d)``;
* readers of a norm's output: ``MatMul(norm, W[d, n])`` (a constant, or a `Transpose` of
  one, e.g. a tied output head), `Shape`, and the model's output (the last norm of a
  model that returns hidden states; also through a final `Reshape` keeping the width, and
  with ``+ beta`` after gamma: a LayerNorm's bias).

Pre-norm LayerNorm models are first rewritten into this form by
`passes.pruning.layernorm_stream` (centred writers, LayerNorm — a node, or written out
below opset 17 — as RMSNorm); a LayerNormalization left in the graph, and post-norm models,
are refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphprune.errors import UsageError
from graphprune.ir.constants import const_array, is_constant
from graphprune.ir.layers import bias_add
from graphprune.ir.rms_norm import last_axis_only, only_reader, rms_norm_after, scalar_within


class NotAStream(UsageError):
    """The model's hidden size cannot be rotated: says which node is in the way."""


@dataclass
class Linear:
    """A MatMul reading (`role="reader"`) or writing (`"writer"`) the stream; `weight_input`
    is the index of its constant weight input (1), `bias` the Add holding its bias."""

    node: ir.Node
    role: str
    bias: ir.Node | None = None
    bias_input: int | None = None


@dataclass
class RMSNorm:
    x: ir.Value  # the stream value it normalises (the input of its Pow and Mul)
    reduce: ir.Node  # ReduceMean over the hidden axis (or ReduceSum, then `summed` is its Mul by 1/d)
    eps_add: ir.Node  # Add(mean, eps)
    eps_input: int  # which input of eps_add is eps
    scale: ir.Node  # the Mul or Div applying 1/rms to x
    normed: ir.Value  # x / rms (before gamma; after the optional Cast)
    gamma_mul: ir.Node | None  # Mul(normed, gamma), None when the norm has no weight
    gamma_input: int | None
    readers: list[Linear] = field(default_factory=list)
    shape_readers: list[ir.Node] = field(default_factory=list)
    is_output: bool = False  # its output is a graph output (directly or through a Reshape)
    summed: ir.Node | None = None  # slice-hidden's form: ReduceSum(x^2) * (1/d), d the width before slicing
    beta_add: ir.Node | None = None  # + beta after gamma: a LayerNorm's bias, on a norm that is the output

    @property
    def out(self) -> ir.Value:
        if self.beta_add is not None:
            return self.beta_add.outputs[0]
        return self.gamma_mul.outputs[0] if self.gamma_mul is not None else self.normed

    def gamma(self, d: int) -> np.ndarray:
        if self.gamma_mul is None:
            return np.ones(d, dtype=np.float32)
        return np.asarray(const_array(self.gamma_mul.inputs[self.gamma_input]), dtype=np.float32).reshape(d)


@dataclass
class Stream:
    hidden: int
    values: list[ir.Value]  # stream tensors (Adds, Casts, embedding outputs)
    embeddings: list[ir.Node]  # Gather(table[V, d], ids)
    writers: list[Linear]
    norms: list[RMSNorm]

    @property
    def readers(self) -> list[Linear]:
        return [r for n in self.norms for r in n.readers]


def _is_float_cast(node: ir.Node) -> bool:
    to = node.attributes.get("to")
    return node.op_type == "Cast" and to is not None and to.value == ir.DataType.FLOAT.value


def _match_norm(reduce: ir.Node) -> RMSNorm | None:
    """The RMSNorm around a ReduceMean, or None when it is not one."""
    pw = reduce.inputs[0].producer() if reduce.inputs[0] is not None else None
    if pw is None or pw.op_type != "Pow":
        return None
    x = pw.inputs[0]
    if scalar_within(pw.inputs[1], x) != 2.0:  # an exponent that adds an axis is not a norm's
        return None
    rank = len(x.shape) if x.shape is not None else None
    if not last_axis_only(reduce, rank) or only_reader(pw.outputs[0]) is not reduce:
        return None
    mean, summed = reduce.outputs[0], None
    if reduce.op_type == "ReduceSum":  # a norm slice-hidden already rewrote: the sum times 1/d
        summed = only_reader(mean)
        if summed is None or summed.op_type != "Mul" or summed.inputs[0] is not mean or \
                scalar_within(summed.inputs[1], mean) is None:
            return None
        mean = summed.outputs[0]
    tail = rms_norm_after(mean)
    if tail is None or tail.scaled is not x:
        return None
    return RMSNorm(x=x, reduce=reduce, eps_add=tail.eps_add, eps_input=tail.eps_input, scale=tail.scale,
                   normed=tail.normed, gamma_mul=tail.gamma_mul, gamma_input=tail.gamma_input, summed=summed,
                   beta_add=_beta_after(tail.gamma_mul))


def _beta_after(gamma_mul: ir.Node | None) -> ir.Node | None:
    """The ``+ beta`` (a LayerNorm's bias, constant vector) after a norm's gamma, accepted
    only where the sum is the model's output (elsewhere the rewrite folds beta into readers)."""
    if gamma_mul is None:
        return None
    nb = only_reader(gamma_mul.outputs[0])
    if nb is None or nb.op_type != "Add":
        return None
    b = nb.inputs[1] if nb.inputs[0] is gamma_mul.outputs[0] else nb.inputs[0]
    ok = is_constant(b) and b.shape is not None and len(b.shape) == 1 and _output_end(nb.outputs[0])
    return nb if ok else None


def _output_reshape(v: ir.Value) -> ir.Node | None:
    """The Reshape that is `v`'s only reader and keeps its (static) last dim — an exporter's
    view after the last norm, e.g. GPT-2's before the model output or a tied head — or None.
    The norm's output leaves the stream there: slice-hidden rotates back to the original
    basis before it, so the Reshape's target (which may spell the width) still holds."""
    c = only_reader(v)
    if c is None or c.op_type != "Reshape":
        return None
    a, b = v.shape, c.outputs[0].shape
    if a is None or b is None or not len(a) or not len(b) or not isinstance(a[-1], int) or a[-1] != b[-1]:
        return None
    return c


def _output_end(v: ir.Value) -> bool:
    return v.is_graph_output() or _output_reshape(v) is not None


def _norm_nodes(norm: RMSNorm) -> set[int]:
    return {id(norm.reduce.inputs[0].producer()), id(norm.scale)}


def _weight_of(node: ir.Node, index: int) -> np.ndarray | None:
    """A MatMul's constant weight input (a constant, or a Transpose of a 2-D one)."""
    v = node.inputs[index]
    if v is None:
        return None
    if is_constant(v):
        return const_array(v)
    p = v.producer()
    if p is not None and p.op_type == "Transpose" and is_constant(p.inputs[0]):
        a = const_array(p.inputs[0])
        perm = p.attributes.get("perm")
        if a is not None and a.ndim == 2 and (perm is None or list(perm.value) == [1, 0]):
            return a.T
    return None


def _writer(v: ir.Value, d: int | None) -> Linear | None:
    """`v` as the output of a linear layer writing the stream, or None."""
    p = v.producer()
    bias, bias_input = None, None
    if p is not None and p.op_type == "Add":
        for i in (0, 1):
            q = p.inputs[1 - i].producer() if p.inputs[1 - i] is not None else None
            if q is not None and q.op_type == "MatMul" and bias_add(q) == (p, i):
                bias, bias_input, p = p, i, q
                break
    if p is None or p.op_type != "MatMul":
        return None
    w = _weight_of(p, 1)
    if w is None or w.ndim != 2 or (d is not None and w.shape[1] != d):
        return None
    return Linear(p, "writer", bias, bias_input)


def _embedding(v: ir.Value) -> ir.Node | None:
    """The node making `v` from a token table: Gather(table[V, d], ids), or — in a model
    slice-hidden rotated while keeping a shared table whole — MatMul(Gather(...), Q[d, k])."""
    p = v.producer()
    if p is not None and p.op_type == "MatMul" and p.inputs[0] is not None and is_constant(p.inputs[1]) \
            and _gather_of_table(p.inputs[0].producer()):
        return p
    return p if _gather_of_table(p) else None


def _gather_of_table(p: ir.Node | None) -> bool:
    if p is None or p.op_type != "Gather" or int(p.attributes["axis"].value if "axis" in p.attributes else 0) != 0:
        return False
    table = p.inputs[0]
    return is_constant(table) and table.shape is not None and len(table.shape) == 2


def find_stream(model: ir.Model) -> Stream:
    """The residual stream of `model`, or NotAStream naming what does not fit."""
    norms = _find_norms(model.graph)
    walk = _Walk(norms)
    walk.run()
    d = _hidden_size(walk)
    for n in norms:
        _find_readers(n, d)
    return Stream(hidden=d, values=list(walk.stream.values()), embeddings=list(walk.embeddings.values()),
                  writers=list(walk.writers.values()), norms=norms)


def has_norms(model: ir.Model) -> bool:
    """True when `model` has a LayerNormalization or an RMSNorm this module recognises: the
    norms that freeze the hidden size for channel pruning."""
    return any(n.op_type == "LayerNormalization" for n in model.graph) or any(
        _match_norm(n) is not None for n in model.graph if n.op_type in ("ReduceMean", "ReduceSum"))


def _find_norms(graph) -> list[RMSNorm]:
    norms = [n for n in (_match_norm(node) for node in graph if node.op_type in ("ReduceMean", "ReduceSum"))
             if n is not None]
    if norms:
        return norms
    if any(n.op_type in ("LayerNormalization", "ReduceMean") for n in graph):
        raise NotAStream("no RMSNorm found: the model has LayerNorms (with mean subtraction), which "
                         "passes.pruning.layernorm_stream rewrites first (slice-hidden does)",
                         hint="slice-hidden handles pre-norm transformers (LLaMA, Qwen2, Mistral, SmolLM2, GPT-2)")
    raise NotAStream("no RMSNorm found: the model has no residual stream slice-hidden can rotate")


class _Walk:
    """From the norms' inputs along the stream (producers and consumers) to its closure,
    collecting the embeddings and the linear layers that write it."""

    def __init__(self, norms: list[RMSNorm]):
        self.norms = norms
        self.by_x = {id(n.x) for n in norms}
        self.norm_nodes: set[int] = set()
        for n in norms:
            self.norm_nodes |= _norm_nodes(n)
        self.stream: dict[int, ir.Value] = {}
        self.embeddings: dict[int, ir.Node] = {}
        self.writers: dict[int, Linear] = {}
        self.todo = [n.x for n in norms]

    def run(self) -> None:
        while self.todo:
            v = self.todo.pop()
            if id(v) in self.stream:
                continue
            self.stream[id(v)] = v
            if v.is_graph_output():
                raise NotAStream(f"the residual stream value {v.name!r} is a graph output")
            if is_constant(v):
                raise NotAStream(f"a constant ({v.name!r}) is added to the residual stream whole (e.g. a "
                                 "position table); slice-hidden rotates embeddings read by Gather only")
            if v.is_graph_input() or v.producer() is None:
                raise NotAStream(f"the residual stream value {v.name!r} is a graph input")
            self._producer(v)
            self._consumers(v)

    def _producer(self, v: ir.Value) -> None:
        p = v.producer()
        if _is_float_cast(p):
            self.todo.append(p.inputs[0])
        elif p.op_type == "Add":
            writers = 0
            for a in p.inputs:
                if (e := _embedding(a)) is not None:
                    self.embeddings[id(e)] = e
                    self.todo.append(a)  # its other readers too: a norm, or anything that would refuse
                elif (w := _writer(a, None)) is not None:
                    self.writers[id(w.node)] = w
                    writers += 1
                else:
                    self.todo.append(a)
            if writers == 2:
                raise NotAStream(f"Add {p.name!r} adds two linear outputs and no residual stream")
        elif (e := _embedding(v)) is not None:
            self.embeddings[id(e)] = e
        else:
            raise NotAStream(f"the residual stream value {v.name!r} is made by {p.op_type} {p.name!r}, "
                             "which slice-hidden cannot rotate")

    def _consumers(self, v: ir.Value) -> None:
        for node, _ in v.uses():
            if id(node) in self.norm_nodes and id(v) in self.by_x:
                continue
            if _is_float_cast(node) or node.op_type == "Add":
                self.todo.append(node.outputs[0])
            elif node.op_type != "Shape":  # a Shape reads sizes only; a use of the hidden size fails the oracle
                raise NotAStream(f"{node.op_type} {node.name!r} reads the residual stream ({v.name!r}); "
                                 "slice-hidden cannot rotate through it")


def _hidden_size(walk: _Walk) -> int:
    dims = {int(e.inputs[1].shape[1] if e.op_type == "MatMul" else e.inputs[0].shape[1])
            for e in walk.embeddings.values()}
    if len(dims) != 1:
        raise NotAStream("the residual stream has no token embedding (Gather of a [vocab, hidden] table)"
                         if not dims else f"embeddings of different widths {sorted(dims)}")
    d = dims.pop()
    for w in walk.writers.values():
        wa = _weight_of(w.node, 1)
        if wa.shape[1] != d:
            raise NotAStream(f"{w.node.name!r} writes {wa.shape[1]} channels to a stream of {d}")
    return d


def _find_readers(n: RMSNorm, d: int) -> None:
    if n.gamma_mul is not None and const_array(n.gamma_mul.inputs[n.gamma_input]).size != d:
        raise NotAStream(f"the norm weight of {n.gamma_mul.name!r} is not of the hidden size {d}")
    out = n.out
    n.is_output = _output_end(out)
    final_view = _output_reshape(out)
    for node, idx in out.uses():
        if node is final_view:
            continue
        if node.op_type == "Shape":
            n.shape_readers.append(node)
            continue
        w = _weight_of(node, 1) if node.op_type == "MatMul" and idx == 0 else None
        if w is None or w.ndim != 2 or w.shape[0] != d:
            raise NotAStream(f"{node.op_type} {node.name!r} reads the output of the RMSNorm of "
                             f"{n.x.name!r}; slice-hidden handles only linear layers (MatMul) there")
        n.readers.append(Linear(node, "reader"))
    if n.is_output and n.readers:
        raise NotAStream(f"the RMSNorm output {out.name!r} is both a graph output and read by layers")
