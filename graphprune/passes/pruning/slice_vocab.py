"""Vocabulary pruning: keep the token ids a deployment uses, drop the other rows and columns.

A language model spends much of its size on the token table ``[V, d]`` and the output head
``[d, V]`` (SmolLM2-135M: 28 M of its 135 M parameters, one tied table). A deployment that
only ever sees some tokens (one language, one domain) can keep just those:
`slice_vocab(model, kept)` keeps the table rows and head columns (and head biases) of the
ids in `kept` (sorted, without repeats). The written model reads *new* ids: new id ``i`` is
the token ``kept[i]`` of the input model, and its logits have one column per kept token.
That id map is the plan's ``vocab`` record, written beside the model as ``<name>.vocab.json``.

Exactness has its own form here, and the oracle follows it:

    sliced(ids) == original(kept[ids])[..., kept]

`vocab_reference` builds the right-hand side as an ONNX model (a Gather that maps the ids
in front, a Gather of the kept logits behind), and the oracle compares the two on random
ids over all kept tokens (`with_token_range`).

What is recognised, fail closed (`find_vocab` raises NotAVocabulary naming the node):
* the ids: an integer graph input read only by Shape/Size and, through Reshape, Squeeze,
  Unsqueeze, Flatten, Identity and integer Casts, as the indices of ``Gather(table, axis=0)``
  of constant 2-D tables with one row count V (the vocabulary). With several such inputs
  (BERT's token types, position ids) the one with the largest tables is taken, or `input`;
* other readers of a table: a ``Transpose`` to ``[d, V]`` read as a head's weight (a tied
  output head), or a ``Gemm`` reading it with ``transB=1``;
* heads: ``MatMul(x, W[d, V])``, ``Gemm`` with a ``[V, d]`` (transB) or ``[d, V]`` weight
  and an optional bias of V, and ONNX Runtime's block-quantized ``MatMulNBits`` with N = V
  (int4 LLM heads: weight, scales and zero points lose whole rows, N is rewritten), whose result reaches graph outputs only through Add of a
  constant over the vocabulary, Cast, Identity, and Reshapes whose constant target ends in
  V (rewritten) or 0. Every projection onto V columns must be such a head: one read by
  Softmax, ArgMax, TopK ... is refused, since that over fewer tokens is not the original's;
  so is a model output of last dim V that no such head makes (it would keep the old ids).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphprune.errors import UsageError
from graphprune.ir.constants import const_array, is_constant, set_const_array
from graphprune.ir.mutation import mark_mutated

_PASS_IDS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")
_SHAPE_ONLY = ("Shape", "Size")
_INT_TYPES = {ir.DataType.INT64, ir.DataType.INT32, ir.DataType.INT16, ir.DataType.INT8,
              ir.DataType.UINT64, ir.DataType.UINT32, ir.DataType.UINT16, ir.DataType.UINT8}


class NotAVocabulary(UsageError):
    """The model's token ids, tables or heads are not in a form slice_vocab can keep exact
    (a usage error like slice-hidden's NotAStream: the model is fine, the request is not)."""


@dataclass
class Head:
    node: ir.Node  # the MatMul / Gemm / MatMulNBits making logits over the vocabulary
    weight: ir.Value  # the constant sliced: its own weight, or the token table (tied)
    axis: int  # the weight's vocabulary axis
    biases: list[ir.Value] = field(default_factory=list)  # constants over V added to the logits
    rows: list[ir.Value] = field(default_factory=list)  # MatMulNBits: scales, zero points with a row per token
    targets: list[ir.Node] = field(default_factory=list)  # Reshapes whose target ends in V
    values: list[ir.Value] = field(default_factory=list)  # from the head to the outputs (last dim V)
    outputs: list[ir.Value] = field(default_factory=list)  # the graph outputs it makes


@dataclass
class VocabSites:
    ids: ir.Value  # the graph input of token ids
    vocab: int  # V
    tables: list[ir.Value]  # constant [V, d] tables the ids index
    transposes: list[ir.Node]  # Transpose(table) read by tied heads
    heads: list[Head]


def _attr(node: ir.Node, key: str, default):
    a = node.attributes.get(key)
    return default if a is None else a.value


def _where(node: ir.Node) -> str:
    return f"{node.op_type} {node.name!r}"


def _ids_gathers(ids: ir.Value) -> list[ir.Node]:
    """The Gathers reading `ids` as row indices of a constant table; NotAVocabulary when
    anything else reads the id values (they could not be renumbered)."""
    gathers, stack = [], [ids]
    while stack:
        v = stack.pop()
        if v.is_graph_output():
            raise NotAVocabulary(f"the token ids {ids.name!r} are a model output: renumbering them would change it")
        for node, idx in v.uses():
            op = node.op_type
            if op in _SHAPE_ONLY:
                continue
            if (op in _PASS_IDS and idx == 0) or (op == "Cast" and ir.DataType(_attr(node, "to", 0)) in _INT_TYPES):
                stack.append(node.outputs[0])
                continue
            table = node.inputs[0] if op == "Gather" else None
            if op == "Gather" and idx == 1 and _attr(node, "axis", 0) == 0 and is_constant(table) and \
                    table.shape is not None and len(table.shape) == 2:
                gathers.append(node)
                continue
            raise NotAVocabulary(f"the token ids {ids.name!r} are read by {_where(node)}, not only as rows of a "
                                 "token table: their values cannot be renumbered",
                                 hint="slice_vocab keeps models whose ids only index embedding tables (Gather)")
    return gathers


def _candidates(model: ir.Model) -> dict[str, tuple[ir.Value, list[ir.Node], int]]:
    """Integer inputs that only index tables: name -> (value, gathers, largest table rows)."""
    out = {}
    for v in model.graph.inputs:
        if v.dtype not in _INT_TYPES:
            continue
        try:
            gathers = _ids_gathers(v)
        except NotAVocabulary:
            continue
        if gathers:
            out[v.name] = (v, gathers, max(int(g.inputs[0].shape[0]) for g in gathers))
    return out


def _pick_ids(model: ir.Model, name: str | None) -> tuple[ir.Value, list[ir.Node]]:
    if name is not None:
        v = next((i for i in model.graph.inputs if i.name == name), None)
        if v is None:
            raise UsageError(f"token input {name!r}: the model has no such input",
                             hint="inputs: " + ", ".join(i.name for i in model.graph.inputs))
        gathers = _ids_gathers(v)
        if not gathers:
            raise NotAVocabulary(f"input {name!r} indexes no token table (Gather of a constant [V, d])")
        return v, gathers
    cands = _candidates(model)
    if not cands:
        ints = [i for i in model.graph.inputs if i.dtype in _INT_TYPES]
        if not ints:
            raise NotAVocabulary("the model has no integer input of token ids")
        _ids_gathers(ints[0])  # raises with the reason the first integer input was not taken
        raise NotAVocabulary(f"no integer input ({', '.join(i.name for i in ints)}) indexes a token table (Gather "
                             "of a constant [V, d])")
    v, gathers, _ = max(cands.values(), key=lambda c: c[2])
    return v, gathers


def _weight_axis(node: ir.Node, weight: ir.Value) -> int | None:
    """The axis of a head's 2-D weight that makes its output columns (None: not a head op)."""
    if node.op_type == "MatMul":
        return 1
    if node.op_type == "Gemm" and not _attr(node, "transA", 0):
        return 0 if _attr(node, "transB", 0) else 1
    return None


def _follow_logits(head: Head, V: int) -> None:
    """Walk from the head to the graph outputs, recording what must follow the slicing;
    NotAVocabulary when the logits meet anything that is not elementwise over V."""
    stack = [head.node.outputs[0]]
    while stack:
        v = stack.pop()
        if v.shape is not None and len(v.shape) and v.shape[-1] not in (V, None) and isinstance(v.shape[-1], int):
            raise NotAVocabulary(f"{v.name!r} (from the head {head.node.name!r}) has last dim {v.shape[-1]}, not the "
                                 f"vocabulary {V}")
        head.values.append(v)
        if v.is_graph_output():
            head.outputs.append(v)
        for node, idx in v.uses():
            op = node.op_type
            other = node.inputs[1 - idx] if op == "Add" and len(node.inputs) == 2 else None
            if op == "Add" and is_constant(other):
                b = const_array(other)
                if b.ndim > len(v.shape or []) or (b.ndim and b.shape[-1] not in (1, V)):
                    raise NotAVocabulary(f"{_where(node)} adds a constant of shape {list(b.shape)} to the logits")
                if b.ndim and b.shape[-1] == V:
                    head.biases.append(other)
            elif op in ("Identity",) or (op == "Cast" and idx == 0):
                pass
            elif op == "Reshape" and idx == 0 and is_constant(node.inputs[1]):
                last = int(const_array(node.inputs[1]).reshape(-1)[-1])
                if last not in (0, V):
                    raise NotAVocabulary(f"{_where(node)} reshapes the logits to a last dim of {last}, not the "
                                         "vocabulary: only reshapes that keep the vocabulary axis are followed")
                if last == V:
                    head.targets.append(node)
            else:
                raise NotAVocabulary(
                    f"the logits of {head.node.name!r} are read by {_where(node)} before the model output: over fewer "
                    "tokens that is not the original's (a Softmax renormalises, an ArgMax/TopK returns other ids)",
                    hint="export the logits as the model output, and apply softmax/sampling outside the model")
            stack.append(node.outputs[0])
    if not head.outputs:
        raise NotAVocabulary(f"the head {head.node.name!r} makes no model output")


def _tied_heads(tables: list[ir.Value], gathers: list[ir.Node]) -> tuple[list[Head], list[ir.Node]]:
    """Heads whose weight is a token table itself (through a Transpose, or Gemm transB)."""
    heads, transposes = [], []
    by_ids = {id(g) for g in gathers}
    for t in tables:
        for node, idx in t.uses():
            if id(node) in by_ids:
                continue  # a Gather of the token ids: renumbered with the rows
            if node.op_type == "Transpose" and list(_attr(node, "perm", [1, 0])) == [1, 0]:
                if node.outputs[0].is_graph_output():
                    raise NotAVocabulary("the transposed token table is a model output")
                transposes.append(node)
                for reader, j in node.outputs[0].uses():
                    if j != 1 or _weight_axis(reader, node.outputs[0]) != 1:
                        raise NotAVocabulary(f"the transposed token table is read by {_where(reader)}, not as a "
                                             "head's weight")
                    heads.append(Head(reader, t, 0))
            elif node.op_type == "Gemm" and idx == 1 and _weight_axis(node, t) == 0:
                heads.append(Head(node, t, 0))
            else:
                raise NotAVocabulary(f"the token table {t.name!r} is also read by {_where(node)}")
    return heads, transposes


def _nbits_head(node: ir.Node, V: int) -> Head | None:
    """ONNX Runtime's MatMulNBits (block-quantized int4/int8 weight [N, blocks, bytes], its
    scales and zero points one row per output) with N = V: whole rows go."""
    ins = list(node.inputs) + [None] * 6
    w, scales, zp, g_idx, bias = ins[1], ins[2], ins[3], ins[4], ins[5]
    if _attr(node, "N", None) != V or not is_constant(w) or w.shape is None or w.shape[0] != V:
        return None
    head = Head(node, w, 0)
    for v in (scales, zp):
        if v is None:
            continue
        if not is_constant(v) or v.shape is None or len(v.shape) != 2 or v.shape[0] != V:
            raise NotAVocabulary(f"{_where(node)}: scales / zero points {v.name!r} are not one row per output "
                                 "(an older flattened layout): its rows cannot be sliced")
        head.rows.append(v)
    if bias is not None:
        head.biases.append(bias)
    del g_idx  # indexes the input (K) side: unchanged
    return head


def _own_heads(model: ir.Model, tables: list[ir.Value], tied: list[Head], V: int) -> list[Head]:
    """Heads with a constant weight of their own that has V output columns."""
    table_ids, tied_ids = {id(t) for t in tables}, {id(h.node) for h in tied}
    heads = []
    for node in model.graph:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            head = _nbits_head(node, V)
            if head is not None:
                heads.append(head)
            continue
        if node.op_type not in ("MatMul", "Gemm") or id(node) in tied_ids or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        axis = _weight_axis(node, w)
        if axis is None or not is_constant(w) or id(w) in table_ids or w.shape is None or len(w.shape) != 2 or \
                w.shape[axis] != V:
            continue
        if _last_layer_before_an_output(model, node):
            heads.append(Head(node, w, axis))
    return heads


_WEIGHTED = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulNBits", "Einsum"})


def _last_layer_before_an_output(model: ir.Model, node: ir.Node) -> bool:
    """Whether a graph output is reached from `node` without another weighted layer on the
    way: an output head. (Any MatMul with V output columns was taken for a head: a tiny
    LLaMA whose FFN width equals its vocabulary had its gate projection refused as 'logits
    read by Sigmoid'.)"""
    outputs = {id(v) for v in model.graph.outputs}
    stack, seen = list(node.outputs), set()
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        if id(v) in outputs:
            return True
        for use in v.uses():
            if use.node.op_type not in _WEIGHTED:
                stack.extend(use.node.outputs)
    return False


def _heads(model: ir.Model, tables: list[ir.Value], gathers: list[ir.Node], V: int) \
        -> tuple[list[Head], list[ir.Node]]:
    tied, transposes = _tied_heads(tables, gathers)
    heads = tied + _own_heads(model, tables, tied, V)
    for h in heads:
        if h.node.op_type == "Gemm" and len(h.node.inputs) > 2 and h.node.inputs[2] is not None:
            c = h.node.inputs[2]
            if not is_constant(c):
                raise NotAVocabulary(f"{_where(h.node)} has a bias that is not a constant")
            if c.shape is not None and len(c.shape) and c.shape[-1] == V:
                h.biases.append(c)
        _follow_logits(h, V)
    return heads, transposes


def find_vocab(model: ir.Model, input: str | None = None) -> VocabSites:
    """The token ids, tables and heads of `model` (module docstring), or NotAVocabulary."""
    ids, gathers = _pick_ids(model, input)
    tables = list({id(g.inputs[0]): g.inputs[0] for g in gathers}.values())
    rows = sorted({int(t.shape[0]) for t in tables})
    if len(rows) > 1:
        raise NotAVocabulary(f"the token ids {ids.name!r} index tables of {' and '.join(map(str, rows))} rows: "
                             "one vocabulary size is needed")
    V = rows[0]
    heads, transposes = _heads(model, tables, gathers, V)
    made = {id(o) for h in heads for o in h.outputs}
    for o in model.graph.outputs:  # logits over V that no recognised head makes would stay over the old ids
        if id(o) not in made and o.shape is not None and len(o.shape) and o.shape[-1] == V:
            raise NotAVocabulary(f"output {o.name!r} has the vocabulary size {V} as its last dim but no head "
                                 "slice_vocab recognises makes it (MatMul/Gemm of a constant weight, module docstring)")
    for h in heads:  # a weight shared with something that is not a head would be sliced under it
        users = {id(n) for n, _ in h.weight.uses()} - {id(x.node) for x in heads} - {id(g) for g in gathers} - \
            {id(t) for t in transposes}
        if users:
            raise NotAVocabulary(f"the head weight {h.weight.name!r} is also read by nodes that are not heads")
    return VocabSites(ids, V, tables, transposes, heads)


def read_token_list(spec) -> list[int]:
    """Token ids from a list, or a file: a JSON list (or {"kept": [...]}, a written
    vocab.json), a .npy array, or text of integers separated by spaces, commas or lines."""
    if isinstance(spec, (list, tuple, np.ndarray)):
        return [int(i) for i in np.asarray(spec).reshape(-1)]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--keep-tokens {spec}: no such file")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.dtype.kind not in "iu":
                raise UsageError(f"--keep-tokens {spec}: the array holds {arr.dtype}, not integers")
            return [int(i) for i in arr.reshape(-1)]
        text = path.read_text()
        if text.lstrip().startswith(("[", "{")):
            data = json.loads(text)
            data = data.get("kept") if isinstance(data, dict) else data
            if not isinstance(data, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in data):
                raise UsageError(f"--keep-tokens {spec}: expected a JSON list of integer token ids")
            return data
        words = text.replace(",", " ").split()
        bad = [w for w in words if not w.lstrip("-").isdigit()]
        if bad:
            raise UsageError(f"--keep-tokens {spec}: {bad[0]!r} is not an integer token id",
                             hint="one id per line, or separated by spaces or commas; or a JSON list")
        return [int(w) for w in words]
    except (OSError, ValueError) as exc:
        raise UsageError(f"--keep-tokens {spec}: cannot read it ({exc})") from None


def kept_ids(tokens, V: int) -> np.ndarray:
    ids = np.asarray(read_token_list(tokens), dtype=np.int64)
    if ids.size == 0:
        raise UsageError("--keep-tokens: the list of token ids is empty")
    bad = ids[(ids < 0) | (ids >= V)]
    if bad.size:
        raise UsageError(f"--keep-tokens: id {int(bad[0])} is outside the vocabulary of {V} tokens "
                         f"({bad.size} such ids)")
    return np.unique(ids)  # sorted: new id i is the i-th smallest kept id


def _narrow(v: ir.Value, V: int, K: int) -> None:
    if v.shape is not None and len(v.shape) and v.shape[-1] == V:
        v.shape = ir.Shape([*list(v.shape)[:-1], K])


def slice_vocab(model: ir.Model, tokens, *, input: str | None = None) -> dict:
    """Keep the token ids `tokens` (module docstring), in place; returns the plan's vocab
    record: {"input", "vocab_size", "kept", "outputs", "tables", "heads"}."""
    sites = find_vocab(model, input)
    V = sites.vocab
    kept = kept_ids(tokens, V)
    K = int(kept.size)
    sliced: dict[int, ir.Value] = {}

    def take(v: ir.Value, axis: int) -> None:
        if id(v) not in sliced:
            sliced[id(v)] = v
            set_const_array(v, np.take(const_array(v), kept, axis=axis))

    for t in sites.tables:
        take(t, 0)
    for tr in sites.transposes:
        _narrow(tr.outputs[0], V, K)
    for h in sites.heads:
        take(h.weight, h.axis)
        for b in h.biases:
            take(b, const_array(b).ndim - 1)
        for r in h.rows:
            take(r, 0)
        if h.node.op_type == "MatMulNBits":
            h.node.attributes["N"] = ir.AttrInt64("N", K)
        for node in h.targets:  # a Reshape target ending in V: a fresh copy ending in K
            target = const_array(node.inputs[1]).copy()
            target.reshape(-1)[-1] = K
            name = f"{node.inputs[1].name}.vocab"
            tv = ir.Value(name=name, shape=ir.Shape(target.shape), type=ir.TensorType(ir.DataType.INT64),
                          const_value=ir.tensor(target.astype(np.int64), name=name))
            model.graph.register_initializer(tv)
            node.replace_input_with(1, tv)
        for v in h.values:
            _narrow(v, V, K)
    mark_mutated(model)
    return {"input": sites.ids.name, "vocab_size": V, "kept": [int(i) for i in kept],
            "outputs": sorted({o.name for h in sites.heads for o in h.outputs}),
            "tables": [t.name for t in sites.tables], "heads": [h.node.name for h in sites.heads]}


def vocab_reference(model: ir.Model, record: dict) -> ir.Model:
    """`model` (modified in place: pass a copy) with the vocabulary record's id map in front
    of its token input and the kept columns of its logits behind: what the sliced model must
    equal, `original(kept[ids])[..., kept]`."""
    graph = model.graph
    kept = np.asarray(record["kept"], dtype=np.int64)
    k = next((i for i, v in enumerate(graph.inputs) if v.name == record["input"]), None)
    if k is None:
        raise NotAVocabulary(f"the plan's token input {record['input']!r} is not an input of this model")
    old = graph.inputs[k]
    new = ir.Value(name=old.name, type=old.type, shape=old.shape)
    old.name = f"{new.name}.original_ids"
    np_dtype = old.dtype.numpy()
    table = ir.Value(name=f"{new.name}.id_map", shape=ir.Shape([kept.size]), type=ir.TensorType(old.dtype),
                     const_value=ir.tensor(kept.astype(np_dtype), name=f"{new.name}.id_map"))
    graph.register_initializer(table)
    mapped = ir.node("Gather", [table, new], {"axis": 0}, name=f"{new.name}.map_ids",
                     outputs=[ir.Value(name=f"{new.name}.mapped", type=old.type, shape=old.shape)])
    ir.convenience.replace_all_uses_with(old, mapped.outputs[0])
    graph.inputs[k] = new
    graph.insert_before(graph.node(0), [mapped]) if len(graph) else graph.append(mapped)
    cols = ir.Value(name="vocab.kept_columns", shape=ir.Shape([kept.size]), type=ir.TensorType(ir.DataType.INT64),
                    const_value=ir.tensor(kept, name="vocab.kept_columns"))
    graph.register_initializer(cols)
    outputs = set(record["outputs"])
    for j, v in enumerate(list(graph.outputs)):
        if v.name not in outputs:
            continue
        name = v.name
        v.name = f"{name}.all_tokens"
        g = ir.node("Gather", [v, cols], {"axis": -1}, name=f"{name}.kept_tokens",
                    outputs=[ir.Value(name=name, type=v.type)])
        graph.append(g)
        graph.outputs[j] = g.outputs[0]
    mark_mutated(model)
    return model


def with_token_range(shapes, record: dict):
    """The oracle's shapes with the token input's random ids drawn over all kept tokens."""
    return replace(shapes, int_high={**shapes.int_high, record["input"]: len(record["kept"])})


def vocab_path_for(output: str | os.PathLike) -> Path:
    """`<name>.vocab.json` beside a written `<name>.onnx`: the id map of a vocabulary-sliced model."""
    out = Path(output)
    return out.with_name(out.name.removesuffix(".onnx") + ".vocab.json")


def write_id_map(record: dict, path: str | os.PathLike) -> None:
    """The id map a tokenizer needs: new id i is the input model's token kept[i]."""
    data = {"format": "graphprune.vocab/1", "input": record["input"], "vocab_size": record["vocab_size"],
            "kept": record["kept"],
            "note": "the model reads new ids: new id i is token kept[i] of the original vocabulary; "
                    "its logits have one column per kept token, in this order"}
    from graphprune.outputs import write_text_atomic

    write_text_atomic(path, json.dumps(data) + "\n")
