"""graphprune.ir.serialize.to_proto: the proto every in-memory consumer gets (ONNX Runtime
sessions, the Olive pass's output model)."""
from __future__ import annotations

import onnx

import graphprune as gp
from graphprune.integrations.olive import prune_file
from graphprune.ir.serialize import to_proto
from graphprune.workflow.options import PruneOptions


def _inferred(proto) -> int:
    done = onnx.shape_inference.infer_shapes(proto)
    return sum(vi.type.tensor_type.HasField("shape") for vi in done.graph.value_info)


def test_a_proto_leaves_onnx_shape_inference_every_intermediate_shape(samples_dir):
    """Each initializer had a value_info entry, typed but without its shape, and onnx's shape
    inference took that over the tensor's dims: the Olive pass's model of the sample had 2
    of its 42 intermediate shapes inferred (new-user probe). Initializers carry their own."""
    src = samples_dir / "tiny_resnet.onnx"
    res = gp.prune(gp.load(src), 0.3, round_to=4)
    proto = to_proto(res.model)
    inits = {t.name for t in proto.graph.initializer}
    assert not [vi.name for vi in proto.graph.value_info if vi.name in inits]
    produced = sum(len(n.output) for n in proto.graph.node) - len(proto.graph.output)
    assert _inferred(proto) == produced
    olive_model, _ = prune_file(str(src), PruneOptions(ratio=0.3, round_to=4))
    assert _inferred(olive_model) == sum(len(n.output) for n in olive_model.graph.node) - len(olive_model.graph.output)
