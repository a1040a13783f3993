"""graphprune.ir.serialize.clone: an independent copy that shares only tensors nobody can
change (memory-mapped / parsed read-only data) and copies the rest."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from graphprune.frontends.onnx import load_onnx
from graphprune.ir.serialize import clone, to_proto
from samples.make_samples import tiny_resnet


def test_clone_shares_read_only_weights_and_copies_writable_ones(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_resnet(), path)
    model = load_onnx(path)
    name, v = next((n, v) for n, v in model.graph.initializers.items() if isinstance(v.const_value, ir.ExternalTensor))
    writable = np.arange(6, dtype=np.float32)
    model.graph.initializers["w_extra"] = extra = ir.Value(name="w_extra", const_value=ir.tensor(writable))
    copy = clone(model)
    assert copy.graph.initializers[name].const_value is v.const_value  # mapped: shared, not copied
    assert copy.graph.initializers[name] is not v  # values and nodes are new objects
    got = copy.graph.initializers["w_extra"].const_value
    assert got is not extra.const_value and not np.shares_memory(got.numpy(), writable)
    # the copy serialises to the same model
    assert to_proto(model).SerializeToString() == to_proto(copy).SerializeToString()
    writable[:] = -1  # an in-place edit of the original's array does not reach the copy
    assert got.numpy().tolist() == [0, 1, 2, 3, 4, 5]
    # and changing the copy's graph leaves the original alone
    n_nodes = len(model.graph)
    copy.graph.remove(next(iter(copy.graph)), safe=False)
    assert len(model.graph) == n_nodes
