"""A pre-norm LayerNorm transformer (GPT-2 style) rewritten into the RMSNorm form that
slice-hidden rotates, without changing what it computes.

LayerNorm subtracts the mean over the hidden axis, which no rotation commutes with. But if
every tensor written to the residual stream has zero mean over that axis, the stream is
mean-free everywhere and LayerNorm(x) == RMSNorm(x) * gamma + beta exactly (the variance
of a mean-free x is its mean square). So, as SliceGPT does:

* every writer is centred: the embedding tables' rows (a table shared with a tied head is
  kept as it is, and a centring MatMul goes after its Gather), and each linear layer that
  adds to the stream (its weight's columns over the hidden axis, and its bias);
* each LayerNorm written out below opset 17 (graphprune/ir/layer_norm.py) first becomes the
  LayerNormalization node it computes;
* each LayerNormalization becomes ``x * 1/sqrt(ReduceMean(x^2) + eps) * gamma``, and its
  ``beta`` moves into the bias of every linear layer reading it (``b += beta @ W``); a norm
  whose output is the model's output keeps ``+ beta`` after it.

Before that, the exporters' ``Reshape(x, [-1, d]) -> Gemm -> Reshape(back)`` (torch's
addmm on a flattened batch, GPT-2's Conv1D) becomes ``MatMul(x, W) + b`` on the unflattened
tensor, the form `analysis.residual_stream` recognises; the reshapes around it carried the
hidden size as a constant that slicing would otherwise have to find and change.

The rewrite is applied to a copy first and the model is touched only if the copy's stream
is one slice-hidden can rotate (`find_stream`), so a refused model is left as it was. The
first oracle check of slice-hidden (rotated model == input) covers this rewrite too.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.analysis.residual_stream import NotAStream, _output_end, find_stream
from graphprune.ir.constants import STD_DOMAINS, const_array, is_constant, set_const_array
from graphprune.ir.layer_norm import WrittenLayerNorm, written_layer_norms
from graphprune.ir.rms_norm import scalar_within



def prepare_stream(model: ir.Model) -> bool:
    """`model` (changed in place) in the form `find_stream` reads: vector constants shared
    through Identity nodes given their own copies (`own_identity_constants`), then LayerNorms
    written as RMSNorms (`layernorm_models_as_rms`, whose result it returns). Every step keeps
    what the model computes, and a replayed plan's reference is rebuilt by the same steps."""
    own_identity_constants(model)
    return layernorm_models_as_rms(model)


def own_identity_constants(model: ir.Model) -> int:
    """Replace every `Identity` of a constant vector (rank <= 1) by a copy of that constant of
    its own, named as the Identity's output; returns how many. The TorchScript exporter
    shares equal parameters (unit norm weights, zero biases) through Identity nodes, which
    hid them from the stream matcher, and rewriting a shared one would change its other
    readers. Larger constants (a tied table) stay shared."""
    done = 0
    for node in [n for n in model.graph if n.op_type == "Identity" and n.domain in STD_DOMAINS]:
        src, out = node.inputs[0], node.outputs[0]
        a = const_array(src) if is_constant(src) else None
        if a is None or a.ndim > 1 or out.is_graph_output():
            continue
        name = out.name
        out.name = _fresh(model, f"{name}.identity")
        v = ir.Value(name=name, shape=ir.Shape(a.shape), type=src.type,
                     const_value=ir.tensor(np.array(a, copy=True), name=name))
        model.graph.register_initializer(v)
        ir.convenience.replace_all_uses_with(out, v)
        model.graph.remove(node, safe=True)
        done += 1
    return done


def layernorm_models_as_rms(model: ir.Model) -> bool:
    """Rewrite `model` in place when it has LayerNorms — LayerNormalization nodes, or written
    out as exporters do below opset 17 (graphprune/ir/layer_norm.py) — (see the module doc);
    False when it has none. Raises NotAStream (model unchanged) when the result would not be
    a stream slice-hidden can rotate."""
    if not _layernorms(model) and not written_layer_norms(model.graph):
        return False
    from graphprune.ir.serialize import clone

    _rewrite(clone(model))  # raises before the model is touched
    _rewrite(model)
    return True


def _layernorms(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "LayerNormalization" and n.domain in STD_DOMAINS]


def _rewrite(model: ir.Model) -> None:
    from graphprune.passes.cleanup.dce import eliminate_dead_code

    for node in [n for n in model.graph if n.op_type == "Gemm" and n.domain in STD_DOMAINS]:
        _unflatten_gemm(model, node)
    for written in written_layer_norms(model.graph):
        _as_layernorm_node(model, written)
    eliminate_dead_code(model)
    for ln in _layernorms(model):
        _as_rms(model, ln)
    eliminate_dead_code(model)
    stream = find_stream(model)
    for e in stream.embeddings:
        table = e.inputs[0]
        if e.op_type != "Gather":
            raise NotAStream(f"the embedding {e.name!r} is already projected")
        if _shared_table(table):  # e.g. tied with the output head: centred beside it, kept whole
            _centre_after(model, e, stream.hidden)
            continue
        a = const_array(table).astype(np.float64)
        set_const_array(table, (a - a.mean(axis=1, keepdims=True)).astype(np.float32))
    from graphprune.analysis.residual_stream import _weight_of

    for w in stream.writers:
        wv = w.node.inputs[1]
        if not is_constant(wv) or len(list(wv.uses())) > 1:
            raise NotAStream(f"the weight of {w.node.name!r} is shared or computed: centring it would change "
                             "its other readers")
        a = _weight_of(w.node, 1).astype(np.float64)
        set_const_array(wv, (a - a.mean(axis=1, keepdims=True)).astype(np.float32))
        if w.bias is not None:
            bv = w.bias.inputs[w.bias_input]
            if len(list(bv.uses())) > 1:
                raise NotAStream(f"the bias of {w.node.name!r} is shared: centring it would change its other readers")
            b = const_array(bv).astype(np.float64)
            set_const_array(bv, (b - b.mean()).astype(np.float32))


def _as_layernorm_node(model: ir.Model, ln: WrittenLayerNorm) -> None:
    """A written-out LayerNorm as the LayerNormalization node it computes (also below opset
    17: the node lives only until `_as_rms`, which writes every LayerNormalization as RMSNorm
    ops at the model's opset)."""
    t = ln.tail
    last = ln.output.producer()
    base = last.name or ln.output.name  # the chain's own last node: distinct for every norm
    d = ln.x.shape[-1] if ln.x.shape is not None else None
    if not isinstance(d, int):
        raise NotAStream(f"the LayerNorm written out from {base!r}: the normalised width is not static")
    gamma = const_array(t.gamma_mul.inputs[t.gamma_input]) if t.gamma_mul is not None else np.ones(d, np.float32)
    params = [gamma] + ([const_array(ln.beta_add.inputs[ln.beta_input])] if ln.beta_add is not None else [])
    inputs = [ln.x]
    for suffix, a in zip(("scale", "bias")[:len(params)], params, strict=True):
        name = _fresh(model, f"{base}.ln_{suffix}")
        v = ir.Value(name=name, shape=ir.Shape(a.shape), type=ir.TensorType(ir.DataType.from_numpy(a.dtype)),
                     const_value=ir.tensor(np.array(a), name=name))
        model.graph.register_initializer(v)
        inputs.append(v)
    eps = scalar_within(t.eps_add.inputs[t.eps_input], t.eps_add.outputs[0])
    node = ir.node("LayerNormalization", inputs, {"axis": -1, "epsilon": float(eps)}, name=f"{base}.layernorm",
                   outputs=[ir.Value(name=f"{base}.layernorm_out")])
    node.outputs[0].type, node.outputs[0].shape = ln.output.type, ln.output.shape
    model.graph.insert_before(ln.mean, node)
    _replace(model, ln.output, node.outputs[0])


def _shared_table(table: ir.Value) -> bool:
    if table.is_graph_output() or len(list(table.uses())) > 1:
        return True
    p = table.producer()
    return p is not None and p.op_type == "Transpose" and len(list(p.inputs[0].uses())) > 1


def _centre_after(model: ir.Model, gather: ir.Node, d: int) -> None:
    """A shared table's rows centred by a MatMul after its Gather (I - 11^T/d, symmetric),
    so its other readers (a tied head) still see the table as it was. slice-hidden folds
    its rotation into this matrix, so the sliced model keeps one small projection there."""
    name = _fresh(model, f"{gather.inputs[0].name}.centre")
    c = (np.eye(d) - np.full((d, d), 1.0 / d)).astype(np.float32)
    cv = ir.Value(name=name, shape=ir.Shape([d, d]), type=ir.TensorType(ir.DataType.FLOAT),
                  const_value=ir.tensor(c, name=name))
    model.graph.register_initializer(cv)
    out = gather.outputs[0]
    mm = ir.node("MatMul", [out, cv], name=name, outputs=[ir.Value(name=f"{name}.out")])
    mm.outputs[0].shape, mm.outputs[0].type = out.shape, out.type
    for node, idx in list(out.uses()):
        if node is not mm:
            node.replace_input_with(idx, mm.outputs[0])
    model.graph.insert_after(gather, [mm])


def _same_dims(a, b) -> bool:
    return a == b if isinstance(a, int) and isinstance(b, int) else \
        (not isinstance(a, int) and not isinstance(b, int) and a.value is not None and a.value == b.value)


def _unflatten_gemm(model: ir.Model, gemm: ir.Node) -> None:
    """Reshape(x[..., d], [-1, d]) -> Gemm(., W, b) -> Reshape(to [..., n]) becomes
    MatMul(x, W) + b when the last Reshape restores x's leading dims (compared on the
    inferred shapes); anything else is left alone."""
    attrs = {k: a.value for k, a in gemm.attributes.items()}
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
        return
    flat = gemm.inputs[0].producer()
    uses = list(gemm.outputs[0].uses())
    if flat is None or flat.op_type != "Reshape" or len(uses) != 1 or uses[0][0].op_type != "Reshape" \
            or len(list(gemm.inputs[0].uses())) != 1 or gemm.outputs[0].is_graph_output():
        return
    back = uses[0][0]
    x, y = flat.inputs[0], back.outputs[0]
    W = const_array(gemm.inputs[1]) if is_constant(gemm.inputs[1]) else None
    b = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    if W is None or W.ndim != 2 or (b is not None and not (is_constant(b) and const_array(b).ndim == 1)):
        return
    if attrs.get("transB", 0):
        W = W.T
    if x.shape is None or y.shape is None or len(x.shape) < len(y.shape) or len(y.shape) < 2:
        return
    xs, ys = list(x.shape), list(y.shape)
    lead = len(ys) - 1
    merged = xs[lead:]  # x's trailing dims the flattening merged into W's rows (heads x head size)
    if not all(isinstance(v, int) for v in merged) or int(np.prod(merged)) != W.shape[0] or ys[-1] != W.shape[1] \
            or not all(_same_dims(p, q) for p, q in zip(xs[:lead], ys[:lead], strict=True)):
        return
    name = gemm.name or gemm.outputs[0].name
    pre = []
    if len(merged) > 1:  # merge them with a width-free target ([0, .., 0, -1]): no constant to keep in step
        target = ir.Value(name=f"{name}.merge_shape", shape=ir.Shape([lead + 1]), type=ir.TensorType(ir.DataType.INT64),
                          const_value=ir.tensor(np.array([0] * lead + [-1], np.int64), name=f"{name}.merge_shape"))
        model.graph.register_initializer(target)
        rs = ir.node("Reshape", [x, target], name=f"{name}.merge", outputs=[ir.Value(name=f"{name}.merged")])
        rs.outputs[0].shape, rs.outputs[0].type = ir.Shape([*xs[:lead], W.shape[0]]), x.type
        pre.append(rs)
        x = rs.outputs[0]
    wv = gemm.inputs[1]  # the same initializer (and name) when it needs no transposing
    if attrs.get("transB", 0):
        wname = _fresh(model, f"{wv.name}.transposed")
        wv = ir.Value(name=wname, shape=ir.Shape(W.shape), type=ir.TensorType(ir.DataType.from_numpy(W.dtype)),
                      const_value=ir.tensor(np.ascontiguousarray(W), name=wname))
        model.graph.register_initializer(wv)
    mm = ir.node("MatMul", [x, wv], name=f"{name}.matmul", outputs=[ir.Value(name=f"{name}.matmul_out")])
    nodes = [mm]
    out = mm.outputs[0]
    if b is not None:
        add = ir.node("Add", [out, b], name=f"{name}.bias", outputs=[ir.Value(name=f"{name}.bias_out")])
        nodes.append(add)
        out = add.outputs[0]
    for v in (mm.outputs[0], out):
        v.shape, v.type = y.shape, y.type
    model.graph.insert_before(flat, pre + nodes)
    _replace(model, y, out)


def _replace(model: ir.Model, old: ir.Value, new: ir.Value) -> None:
    """Every use of `old` reads `new`; a graph output keeps its name (now `new`'s)."""
    outs = model.graph.outputs
    for k, v in enumerate(outs):
        if v is old:
            name = old.name
            old.name = _fresh(model, f"{name}.replaced")
            new.name = name
            outs[k] = new
    ir.convenience.replace_all_uses_with(old, new)


def _fresh(model: ir.Model, base: str) -> str:
    """`base`, or `base_2`, ... : a name no initializer has yet."""
    name, k = base, 1
    while name in model.graph.initializers:
        k += 1
        name = f"{base}_{k}"
    return name


def _attr(node: ir.Node, key: str, default):
    a = node.attributes.get(key)
    return default if a is None else a.value


def _ln_params(ln: ir.Node) -> tuple[int, np.ndarray, np.ndarray | None]:
    """(width, gamma, beta or None) of a LayerNormalization slice-hidden can rewrite."""
    x = ln.inputs[0]
    if x.dtype != ir.DataType.FLOAT:  # its RMSNorm form is written with float32 constants
        raise NotAStream(f"LayerNormalization {ln.name!r} normalises {x.dtype.name.lower() if x.dtype else 'an untyped'} "
                         "values: slice-hidden rewrites LayerNorms of float32 models only")
    rank = len(x.shape) if x.shape is not None else None
    axis = _attr(ln, "axis", -1)
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        raise NotAStream(f"LayerNormalization {ln.name!r} normalises axis {axis}, not the last one")
    if any(o is not None and len(list(o.uses())) for o in ln.outputs[1:]):
        raise NotAStream(f"LayerNormalization {ln.name!r}: its mean / inverse deviation outputs are used")
    d = x.shape[-1] if x.shape is not None else None
    if not isinstance(d, int):
        raise NotAStream(f"LayerNormalization {ln.name!r}: the normalised width is not static")
    gamma = const_array(ln.inputs[1]) if len(ln.inputs) > 1 and is_constant(ln.inputs[1]) else None
    if gamma is None or gamma.size != d:
        raise NotAStream(f"LayerNormalization {ln.name!r}: its scale is not a constant of width {d}")
    beta = None
    if len(ln.inputs) > 2 and ln.inputs[2] is not None:
        if not is_constant(ln.inputs[2]):
            raise NotAStream(f"LayerNormalization {ln.name!r}: computed bias")
        beta = const_array(ln.inputs[2]).astype(np.float64).reshape(-1)
    return d, gamma, beta if beta is not None and np.any(beta) else None


def _beta_folds(ln: ir.Node, beta: np.ndarray, d: int) -> list[tuple[ir.Node, np.ndarray]]:
    """[(reader MatMul, beta @ W)] for every layer reading the norm: what moves into its bias."""
    from graphprune.analysis.residual_stream import _weight_of

    folded = []
    for n, i in ln.outputs[0].uses():
        if n.op_type == "Shape":  # reads sizes only
            continue
        if n.op_type == "Add":
            raise NotAStream(f"the output of LayerNorm {ln.name!r} is added to the residual stream "
                             f"(Add {n.name!r}): a post-norm model (BERT style); slice-hidden rotates "
                             "pre-norm models only", hint="post-norm models need a rotation per layer")
        W = _weight_of(n, 1) if n.op_type == "MatMul" and i == 0 else None
        if W is None or W.ndim != 2 or W.shape[0] != d:
            raise NotAStream(f"{n.op_type} {n.name!r} reads LayerNorm {ln.name!r}, whose bias can only be "
                             "folded into linear layers (MatMul)")
        folded.append((n, beta @ W.astype(np.float64)))
    return folded


def _as_rms(model: ir.Model, ln: ir.Node) -> None:
    """One LayerNormalization as RMSNorm * gamma, its beta folded into its readers (or kept
    as + beta when the norm is the model's output, directly or through a final Reshape)."""
    x, y = ln.inputs[0], ln.outputs[0]
    d, gamma, beta = _ln_params(ln)
    as_output = _output_end(y)  # the same test the stream matcher applies to accept + beta
    folded = _beta_folds(ln, beta, d) if beta is not None and not as_output else []
    opset = model.opset_imports.get("", 13)
    eps = float(_attr(ln, "epsilon", 1e-5))
    base = ln.name or y.name
    f32 = ir.DataType.FLOAT

    def const(suffix, array):
        name = _fresh(model, f"{base}.{suffix}")
        v = ir.Value(name=name, shape=ir.Shape(np.shape(array)), type=ir.TensorType(f32)
                     if np.asarray(array).dtype == np.float32 else ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(np.asarray(array), name=name))
        model.graph.register_initializer(v)
        return v

    def node(op, inputs, attrs=None, suffix=""):
        return ir.node(op, inputs, attrs or {}, name=f"{base}.{suffix or op.lower()}",
                       outputs=[ir.Value(name=f"{base}.{suffix or op.lower()}_out")])

    sq = node("Pow", [x, const("two", np.array(2.0, np.float32))])
    if opset >= 18:
        mean = node("ReduceMean", [sq.outputs[0], const("axes", np.array([-1], np.int64))], {"keepdims": 1})
    else:
        mean = node("ReduceMean", [sq.outputs[0]], {"keepdims": 1, "axes": [-1]})
    add = node("Add", [mean.outputs[0], const("eps", np.array(eps, np.float32))])
    sqrt = node("Sqrt", [add.outputs[0]])
    inv = node("Reciprocal", [sqrt.outputs[0]])
    normed = node("Mul", [x, inv.outputs[0]], suffix="normed")
    scaled = node("Mul", [normed.outputs[0], const("gamma", np.asarray(gamma, np.float32).reshape(d))],
                  suffix="scaled")
    nodes = [sq, mean, add, sqrt, inv, normed, scaled]
    out = scaled.outputs[0]
    if beta is not None and as_output:
        shifted = node("Add", [out, const("beta", beta.astype(np.float32))], suffix="shifted")
        nodes.append(shifted)
        out = shifted.outputs[0]
    per_token = {id(n.outputs[0]) for n in (mean, add, sqrt, inv)}  # [..., 1]: left to shape inference
    for v in [n.outputs[0] for n in nodes]:
        v.type = x.type
        v.shape = None if id(v) in per_token else x.shape
    model.graph.insert_before(ln, nodes)
    _replace(model, y, out)
    model.graph.remove(ln, safe=True)
    for reader, shift in folded:
        _add_bias(model, reader, shift.astype(np.float32))


def _add_bias(model: ir.Model, mm: ir.Node, shift: np.ndarray) -> None:
    """Add `shift` to the bias of MatMul `mm` (its only consumer, an Add of a constant
    vector), or insert that Add."""
    uses = list(mm.outputs[0].uses())
    if len(uses) == 1 and uses[0][0].op_type == "Add" and not mm.outputs[0].is_graph_output():
        add = uses[0][0]
        bi = 1 - uses[0][1]
        bv = add.inputs[bi]
        if is_constant(bv) and len(list(bv.uses())) == 1 and const_array(bv).ndim == 1:
            set_const_array(bv, (const_array(bv).astype(np.float64) + shift).astype(np.float32))
            return
    name = mm.name or mm.outputs[0].name
    if mm.outputs[0].is_graph_output():
        raise NotAStream(f"{name!r} reads a LayerNorm with a bias and is a model output")
    bv = ir.Value(name=f"{name}.layernorm_bias", shape=ir.Shape(shift.shape), type=ir.TensorType(ir.DataType.FLOAT),
                  const_value=ir.tensor(shift, name=f"{name}.layernorm_bias"))
    model.graph.register_initializer(bv)
    add = ir.node("Add", [mm.outputs[0], bv], name=f"{name}.layernorm_bias",
                  outputs=[ir.Value(name=f"{name}.layernorm_bias_out")])
    add.outputs[0].shape, add.outputs[0].type = mm.outputs[0].shape, mm.outputs[0].type
    for n, i in uses:  # the readers before the Add existed (the Add reads mm too)
        n.replace_input_with(i, add.outputs[0])
    model.graph.insert_after(mm, [add])
