"""Parameter and MAC counts per node.

MACs depend on the input shapes. `model_cost(model, shapes)` counts them at one concrete
shape per input (the run's representative shapes, `graphprune.input_shapes`): on a copy
of the model whose dynamic input dims are made static and whose shapes are re-inferred
(the model itself stays dynamic). Without `shapes`, symbolic dims count as 1."""
from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from typing import Mapping, Sequence

from graphprune.ir.constants import const_producer, is_constant
from graphprune.ir.layers import layer_of
from graphprune.ir.layers import volume as _prod  # symbolic dims count as 1
from graphprune.ir.moe import active_macs, is_moe, top_k
from graphprune.ir.ms_attention import attention_macs, is_attention
from graphprune.ir.nbits import logical_params
from graphprune.ir.quant import is_quantized_weight


def node_macs(node: ir.Node) -> int:
    """MACs of one node (0 for ops that do no multiply-accumulate, or malformed nodes)."""
    try:
        return _node_macs(node)
    except (IndexError, TypeError, ValueError):  # e.g. a Conv without its weight input
        return 0


def _node_macs(node: ir.Node) -> int:
    if is_moe(node):  # the active MACs, not all experts'
        dims = [list(v.shape) if v is not None and v.shape is not None else None
                for v in (node.inputs[0], node.inputs[2], node.inputs[4])]
        if None in dims:
            return 0
        fc3 = node.inputs[6] if len(node.inputs) > 6 else None
        return int(active_macs(*dims, list(fc3.shape) if fc3 is not None and fc3.shape is not None else None,
                               top_k(node)))
    if is_recurrent(node):
        return _recurrent_macs(node)
    if is_attention(node):
        return int(sum(_attention_macs(node) or (0,)))
    if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
        return _std_attention_macs(node) or 0
    if node.op_type == "Einsum" and node.domain in ("", "ai.onnx"):
        return _einsum_macs(node) or 0
    layer = layer_of(node)
    return 0 if layer is None else layer.macs()


def _einsum_macs(node: ir.Node) -> int | None:
    """A product of two or more operands: one multiply-accumulate per combination of every
    label's index (ir.einsum.label_sizes; a transpose or a sum of one operand: 0); None when
    a shape is unknown. Symbolic dims count as 1, as elsewhere."""
    from graphprune.ir.einsum import label_sizes

    ins = [v for v in node.inputs if v is not None]
    if len(ins) < 2:
        return 0
    if any(v.shape is None for v in ins):
        return None
    sizes = label_sizes(node, [list(v.shape) for v in ins])
    return None if sizes is None else int(_prod([n for _, _, n in sizes.values()]))


def _attention_macs(node: ir.Node) -> tuple[float, float] | None:
    """ONNX Runtime's Attention (ir.ms_attention.attention_macs) at the recorded shapes."""
    x, w = (node.inputs[i] if len(node.inputs) > i else None for i in (0, 1))
    if x is None or w is None or x.shape is None or w.shape is None:
        return None
    return attention_macs(node, list(x.shape), list(w.shape))


def _std_attention_macs(node: ir.Node) -> int | None:
    """The standard Attention (opset 23): the scores and the weighted sum, as the two
    MatMuls it replaces count, B·Hq·S·T·(D + Dv) (3-D: B·S·T·(Hq·D + Hq·Dv)), T the key
    positions of K (a past is not counted, as for ONNX Runtime's Attention); symbolic dims
    count as 1. None when a shape is unknown."""
    q, k, v = (node.inputs[i] if len(node.inputs) > i else None for i in range(3))
    if any(x is None or x.shape is None for x in (q, k, v)) or not len(q.shape) == len(k.shape) == len(v.shape):
        return None
    dq, dk, dv = ([n if isinstance(n, int) else 1 for n in x.shape] for x in (q, k, v))
    if len(dq) == 4:
        return dq[0] * dq[1] * dq[2] * dk[2] * (dq[3] + dv[3])
    if len(dq) != 3:
        return None
    a = node.attributes.get("q_num_heads")
    b = node.attributes.get("kv_num_heads")
    if a is None or b is None or not int(b.value):
        return None
    per_kv = int(a.value) // int(b.value)  # query heads reading each key/value head
    return dq[0] * dq[1] * dk[1] * (dq[2] + dv[2] * per_kv)


# ONNX recurrent ops: gates computed per step from the input (W) and the hidden state (R)
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def is_recurrent(node: ir.Node) -> bool:
    return node.op_type in _GATES and node.domain in ("", "ai.onnx")


def recurrent_steps_batch(node: ir.Node, x: list) -> tuple:
    """(steps, batch) of a recurrent op's input X: [T, B, I] (layout 0) or [B, T, I] (layout 1)."""
    layout = node.attributes["layout"].value if "layout" in node.attributes else 0
    return (x[1], x[0]) if layout else (x[0], x[1])


def _recurrent_macs(node: ir.Node) -> int:
    """RNN/GRU/LSTM: per step, per direction, gates·H·(input + H) MACs (W·x and R·h; the
    elementwise gate math is not counted, as activations are not elsewhere). X is
    [T, B, I] (layout 0) or [B, T, I] (layout 1). They were counted as 0 MACs."""
    x, w, r = node.inputs[0], node.inputs[1], node.inputs[2]
    if x is None or w is None or r is None or x.shape is None or w.shape is None or r.shape is None:
        return 0
    xs, ws = list(x.shape), list(w.shape)
    if not all(isinstance(d, int) for d in xs + ws + list(r.shape)):
        return 0
    steps, batch = recurrent_steps_batch(node, xs)
    directions, gates_h, inputs = ws
    hidden = r.shape[2]
    return int(directions * steps * batch * gates_h * (inputs + hidden))


@dataclass
class Cost:
    params: int
    macs: int
    nodes: int
    shapes: dict | None = None  # {input: shape} the MACs were counted at (None: symbolic dims as 1)
    layers: dict | None = None  # {node name: MACs} of the weighted ops, at `shapes` (reports reuse it)
    uncounted: list | None = None  # ops that multiply-accumulate but count 0 here (`_uncounted`)


def uncounted_line(names: list[str] | None) -> str | None:
    """'MACs: 3 layer(s) not counted ...' for `Cost.uncounted`, else None: the MAC figures are
    then lower bounds, and a summary must not present them as the model's."""
    if not names:
        return None
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    return (f"MACs: {len(names)} layer(s) not counted, their shapes unknown or their op not one graphprune counts "
            f"({shown}): the MAC figures are lower bounds")


from graphprune.frontends.onnx import at_shapes  # noqa: E402  (importable from here too)


def layer_macs(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, int]:
    """{node name: MACs} of the MAC-bearing nodes, at `shapes` (see `model_cost`)."""
    return _layers_of(model, at_shapes(model, shapes) if shapes else model)


def _layers_of(model: ir.Model, counted: ir.Model) -> dict[str, int]:
    macs = {n.name: node_macs(n) for n in counted.graph}
    return {n.name: macs.get(n.name, 0) for n in model.graph
            if layer_of(n) is not None or is_attention(n) or is_recurrent(n)}


# ops that multiply-accumulate, by name in any domain: one `node_macs` has no count for
# (ONNX Runtime's offline-optimised files: com.microsoft.nchwc::Conv, FusedGemm, QLinearConv
# in NHWC ...) is uncounted, not silently 0 (inspect of a compile deployment printed 480 MACs)
_MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul",
                      "NhwcConv", "NhwcFusedConv", "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger",
                      "MatMulInteger", "MatMulInteger16", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                      "MatMulNBits", "QAttention", "MultiHeadAttention", "GroupQueryAttention", "Einsum"})


def _uncounted(counted: ir.Model) -> list[str]:
    """Ops of the main graph that multiply-accumulate but whose MACs are counted as 0: a
    weighted op whose shapes are unknown, or an op no count here knows."""
    out = []
    for n in counted.graph:
        layer = layer_of(n)
        if layer is not None:
            known = layer.macs_known()
        elif is_attention(n):
            known = _attention_macs(n) is not None
        elif n.op_type == "Einsum":
            known = _einsum_macs(n) is not None
        elif n.op_type == "Attention" and n.domain in ("", "ai.onnx"):
            known = _std_attention_macs(n) is not None
        else:
            known = n.op_type not in _MAC_OPS or is_moe(n) or node_macs(n) > 0
        if not known:
            out.append(n.name)
    return out


def _at_its_own_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> bool:
    """Every input of `model` is static, at exactly `shapes`."""
    for v in model.graph.inputs:
        dims = list(v.shape) if v.shape is not None else None
        if dims is None or not all(isinstance(d, int) for d in dims):
            return False
        if v.name in shapes and [int(d) for d in shapes[v.name]] != dims:
            return False
    return True


def model_cost(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None) -> Cost:
    """Params, MACs and nodes of `model`; MACs at `shapes` ({input name: concrete shape},
    e.g. `InputShapes.shapes`) when given, else with symbolic dims counted as 1; per layer
    too (`layers`), counted on the same re-inferred copy (one shape inference, not two).
    A static model at its own shapes whose shapes are current (`ir.mutation.shapes_current`:
    inferred at load, kept by the surgery) is counted as it is, without a re-inferred copy."""
    from graphprune.ir.mutation import shapes_current

    cost = _model_cost(model)
    if shapes:
        fresh = shapes_current(model) and _at_its_own_shapes(model, shapes)
        counted = model if fresh else at_shapes(model, shapes)
        cost.macs = _model_cost(counted).macs
        cost.shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        cost.layers = _layers_of(model, counted)
    else:
        counted = model
        cost.layers = _layers_of(model, model)
    cost.uncounted = _uncounted(counted)
    return cost


def _graph_macs(graph: ir.Graph) -> int:
    return sum(node_macs(n) + _subgraph_macs(n) for n in graph)


def _subgraph_macs(node: ir.Node) -> int:
    """MACs of the graphs a control-flow node runs: an If runs one branch (the costlier is
    counted: an upper bound), a Loop's body its constant trip count of times; otherwise a
    body once (a Scan's, a Loop's of a computed count: a lower bound). The convs inside an If
    were counted as 0 MACs (their params were counted)."""
    graphs = [a.value for a in node.attributes.values() if isinstance(a.value, ir.Graph)]
    if not graphs or node.domain not in ("", "ai.onnx"):
        return 0
    per = [_graph_macs(g) for g in graphs]
    if node.op_type == "If":
        return max(per)
    times = 1
    if node.op_type == "Loop" and node.inputs and node.inputs[0] is not None:
        from graphprune.ir.constants import const_array

        trips = const_array(node.inputs[0])
        times = int(trips) if trips is not None and trips.size == 1 and 0 <= int(trips) < 2**31 else 1
    return times * sum(per)


def _is_param(v: ir.Value) -> bool:
    """Float constants, and the integer data of QDQ weights (read by DequantizeLinear)."""
    return v.dtype is not None and v.shape is not None and (v.dtype.is_floating_point() or is_quantized_weight(v))


def _param_count(v: ir.Value) -> int:
    """Weights a parameter holds: its elements, or the codes packed in a MatMulNBits' bytes."""
    packed = logical_params(v)
    return _prod(list(v.shape)) if packed is None else packed


def _model_cost(model: ir.Model) -> Cost:
    from graphprune.ir.untie import ties_back

    params = 0
    # copies made for the analysis that the written model ties back into one tensor are not
    # parameters of it (BERT's shared zero biases counted 16 times)
    seen: set[str] = {m.name for m, _ in ties_back(model)}
    for v in model.graph.initializers.values():
        if v.name in seen:
            continue
        if _is_param(v):
            params += _param_count(v)
            seen.add(v.name)
    macs = 0
    n = 0
    for node in model.graph:
        n += 1
        macs += node_macs(node) + _subgraph_macs(node)
        if const_producer(node.outputs[0]) is not None if node.outputs else False:
            v = node.outputs[0]
            if v.name not in seen and is_constant(v) and _is_param(v):
                params += _param_count(v)
    return Cost(params=params, macs=macs, nodes=n)
