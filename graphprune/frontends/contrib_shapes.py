"""Output shapes of ONNX Runtime's com.microsoft ops, which onnx's shape inference does not
know: the quantized ops (QLinearAdd, QGemm, MatMulNBits ...), the mixture-of-experts op (MoE:
the input's shape) and the fused transformer ops its optimizer writes (BiasGelu,
SkipLayerNormalization ...: the input's shape; Attention, EmbedLayerNormalization). Without them every slot behind such an op
freezes as "unknown size", and the layers after it count 0 MACs. Only what follows from the input shapes and attributes alone is
filled; an output that already has a shape is left as it is.
"""
from __future__ import annotations

import onnx_ir as ir

MS = "com.microsoft"

# ONNX Runtime's fused transformer ops (its transformer optimizer writes them) whose first
# output has the first input's shape; a Skip*Normalization's residual sum (output 3) too.
_SKIP_NORMS = frozenset({"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"})
_FUSED = frozenset({"BiasGelu", "FastGelu", "Gelu", "QuickGelu"}) | _SKIP_NORMS
_SAME_SHAPE = _FUSED | {"QLinearSoftmax", "MoE"}


def _broadcast(a: list, b: list) -> list | None:
    n = max(len(a), len(b))
    out = []
    for x, y in zip([1] * (n - len(a)) + a, [1] * (n - len(b)) + b, strict=True):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None  # a symbolic dim against another size: not known from the shapes alone
    return out


def _attr(node: ir.Node, key: str, default):
    a = node.attributes.get(key)
    return default if a is None else a.value


def _dims(v: ir.Value | None) -> list | None:
    return list(v.shape) if v is not None and v.shape is not None else None


def _attention_dims(node: ir.Node, x: list) -> list | None:
    """Attention: [B, S, v] (ir.ms_attention: v from num_heads / qkv_hidden_sizes)."""
    from graphprune.ir.ms_attention import heads_of

    w = _dims(node.inputs[1]) if len(node.inputs) > 1 else None
    split = heads_of(node, w[1]) if w is not None and len(w) == 2 else None
    return None if split is None or len(x) != 3 else [x[0], x[1], split.v]


def _embedding_dims(node: ir.Node, ids: list) -> list | None:
    """EmbedLayerNormalization(input_ids [B, S], segment_ids, word_embedding [V, H], ...):
    [B, S, H]."""
    table = _dims(node.inputs[2]) if len(node.inputs) > 2 else None
    return None if table is None or len(table) != 2 or len(ids) != 2 else [*ids, table[1]]


_TRANSFORMER_DIMS = {"Attention": _attention_dims, "EmbedLayerNormalization": _embedding_dims}


def _output_dims(node: ir.Node) -> list | None:
    x = _dims(node.inputs[0]) if node.inputs else None
    if x is None:
        return None
    op = node.op_type
    if op in _TRANSFORMER_DIMS:
        return _TRANSFORMER_DIMS[op](node, x)
    if op in ("QLinearAdd", "QLinearMul"):
        b = _dims(node.inputs[3]) if len(node.inputs) > 3 else None
        return None if b is None else _broadcast(x, b)
    if op in ("QLinearSigmoid", "QLinearLeakyRelu"):
        return x
    if op == "QLinearGlobalAveragePool" and len(x) >= 3:
        return [x[0]] + [1] * (len(x) - 2) + [x[-1]] if _attr(node, "channels_last", 0) else x[:2] + [1] * (len(x) - 2)
    if op == "MatMulNBits" and len(x) >= 1 and isinstance(_attr(node, "N", None), int):
        return [*x[:-1], int(_attr(node, "N", 0))]
    if op in _SAME_SHAPE:
        return x
    if op == "QLinearAveragePool":
        return _pooled(node, x)
    if op == "QLinearConcat":
        return _concatenated(node)
    if op == "QGemm" and len(x) == 2:
        w = _dims(node.inputs[3]) if len(node.inputs) > 3 else None
        if w is None or len(w) != 2:
            return None
        m = x[1] if _attr(node, "transA", 0) else x[0]
        n = w[0] if _attr(node, "transB", 0) else w[1]
        return [m, n]
    return None


def _pooled(node: ir.Node, x: list) -> list | None:
    """QLinearAveragePool's output: (in + pads - kernel) / stride + 1 per spatial axis."""
    k = list(_attr(node, "kernel_shape", []))
    last = bool(_attr(node, "channels_last", 0))
    spatial = x[1:-1] if last else x[2:]
    if not k or len(k) != len(spatial) or _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") \
            or not all(isinstance(d, int) for d in spatial):
        return None
    strides = list(_attr(node, "strides", [1] * len(k)))
    pads = list(_attr(node, "pads", [0] * 2 * len(k)))
    ceil = bool(_attr(node, "ceil_mode", 0))
    out = []
    for i, d in enumerate(spatial):
        span = d + pads[i] + pads[i + len(k)] - k[i]
        out.append((-(-span // strides[i]) if ceil else span // strides[i]) + 1)
    return [x[0], *out, x[-1]] if last else [*x[:2], *out]


def _concatenated(node: ir.Node) -> list | None:
    """QLinearConcat(y_scale, y_zp, (x, x_scale, x_zp)...): the xs concatenated on `axis`."""
    xs = [_dims(node.inputs[i]) for i in range(2, len(node.inputs), 3)]
    if not xs or any(d is None for d in xs) or len({len(d) for d in xs}) != 1:
        return None
    axis = int(_attr(node, "axis", 0))
    axis = axis + len(xs[0]) if axis < 0 else axis
    sizes = [d[axis] for d in xs]
    if not all(isinstance(n, int) for n in sizes):
        return None
    return [*xs[0][:axis], sum(sizes), *xs[0][axis + 1:]]


def _output_dtype(node: ir.Node) -> ir.DataType | None:
    """The output's element type: its zero point's (the last input), or float for a QGemm
    without an output scale."""
    if node.op_type == "QGemm" and (len(node.inputs) < 8 or node.inputs[7] is None):
        return ir.DataType.FLOAT
    if node.op_type == "EmbedLayerNormalization":  # token ids in, the table's floats out
        return node.inputs[2].dtype
    if node.op_type in ("MatMulNBits", "MoE", "Attention") or node.op_type in _FUSED:  # float in and out
        return node.inputs[0].dtype
    zp = node.inputs[-1] if node.inputs else None
    return zp.dtype if zp is not None else node.inputs[0].dtype


_SCALAR_OPS = ("Add", "Sub", "Mul", "Div", "Pow")


def _standard_dims(node: ir.Node) -> tuple[list, ir.DataType | None] | None:
    """Between integer ops a graph is mostly (De)QuantizeLinear and elementwise ops by a
    one-element constant (hardswish's /6): same shape as the first input. Filled here too,
    so a chain of them costs no extra onnx inference round (each round is a serialisation
    of the whole graph)."""
    from graphprune.ir.constants import const_array

    x = _dims(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
    if x is None:
        return None
    if node.op_type == "DequantizeLinear" and len(node.inputs) > 1 and node.inputs[1] is not None:
        return x, node.inputs[1].dtype
    if node.op_type == "QuantizeLinear":
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        return x, zp.dtype if zp is not None else ir.DataType.UINT8
    if node.op_type in _SCALAR_OPS and len(node.inputs) == 2:
        c = const_array(node.inputs[1])
        if c is not None and c.size == 1 and c.ndim <= len(x):
            return x, node.inputs[0].dtype
    return None


def _fill_extra_outputs(node: ir.Node) -> bool:
    """The optional outputs after the first: a Skip*Normalization's mean and inverse std dev
    per row ([..., 1], float32: ORT's U for float16 input too) and its residual sum input +
    skip (+ bias), of the input's shape (the next block's residual stream in an optimized
    transformer); EmbedLayerNormalization's mask index ([B], int32) and embedding sum."""
    x = _dims(node.inputs[0]) if node.inputs else None
    if not x:
        return False
    if node.op_type == "EmbedLayerNormalization":
        full = _embedding_dims(node, x)
        extra = [(1, [x[0]], ir.DataType.INT32)] + ([(2, full, node.inputs[2].dtype)] if full else [])
    else:
        extra = [(1, [*x[:-1], 1], ir.DataType.FLOAT), (2, [*x[:-1], 1], ir.DataType.FLOAT),
                 (3, x, node.inputs[0].dtype)]
    changed = False
    for i, dims, dtype in extra:
        y = node.outputs[i] if i < len(node.outputs) else None
        if y is None or y.shape is not None:
            continue
        y.shape = ir.Shape(dims)
        if y.dtype is None:
            y.dtype = dtype
        changed = True
    return changed


def fill_contrib_outputs(model: ir.Model) -> bool:
    """Give com.microsoft ops' outputs their shapes (and types), and the plain ops
    between them (`_standard_dims`); True when any changed."""
    if not any(n.domain == MS for n in model.graph):
        return False
    changed = False
    for node in model.graph:
        if node.domain == MS and (node.op_type in _SKIP_NORMS or node.op_type == "EmbedLayerNormalization"):
            changed |= _fill_extra_outputs(node)
        if not node.outputs or node.outputs[0] is None or node.outputs[0].shape is not None:
            continue
        if node.domain == MS:
            dims, dtype = _output_dims(node), None
        elif node.domain in ("", "ai.onnx"):
            got = _standard_dims(node)
            dims, dtype = got if got is not None else (None, None)
        else:
            continue
        if dims is None:
            continue
        y = node.outputs[0]
        y.shape = ir.Shape(dims)
        if y.dtype is None:
            y.dtype = dtype if dtype is not None else _output_dtype(node)
        changed = True
    return changed
