"""Shared constants: one all-zero bias stored once by the exporter must not couple the
layers that read it (issue 12 §6); a shared non-zero constant still couples them."""
from __future__ import annotations

import numpy as np
import onnx
from helpers import make_model, prune_and_check, random_selection, w

import graphprune as gp
from graphprune.plan import Plan
from graphprune.runtime import oracle


def _two_ffns(bias: np.ndarray) -> onnx.ModelProto:
    """Two independent FFNs (8 → 16 → 8) whose hidden biases are one tensor."""
    from onnx import helper

    nodes = []
    for k in (1, 2):
        nodes += [helper.make_node("MatMul", ["x", f"w{k}a"], [f"h{k}"], name=f"mm{k}a"),
                  helper.make_node("Add", [f"h{k}", "shared_b"], [f"hb{k}"], name=f"add{k}"),
                  helper.make_node("Relu", [f"hb{k}"], [f"r{k}"], name=f"relu{k}"),
                  helper.make_node("MatMul", [f"r{k}", f"w{k}b"], [f"y{k}"], name=f"mm{k}b")]
    nodes.append(helper.make_node("Add", ["y1", "y2"], ["y"], name="sum"))
    inits = {"w1a": w(8, 16, seed=1), "w1b": w(16, 8, seed=2), "w2a": w(8, 16, seed=3), "w2b": w(16, 8, seed=4),
             "shared_b": bias}
    return make_model(nodes, [("x", [2, 4, 8])], [("y", [2, 4, 8])], inits)


def test_shared_zero_bias_does_not_couple_layers(tmp_path):
    proto = _two_ffns(np.zeros(16, np.float32))
    model = gp.load(proto.SerializeToString())
    dg = gp.analyze(model)
    assert sorted(g.num_atoms for g in dg.prunable_groups) == [16, 16]
    inputs = {i.name for i in proto.graph.initializer}
    for seed in range(3):
        pruned, plan, _ = prune_and_check(proto, seed=seed, min_groups=2)
        # the plan names tensors of the input model only, and never the shared zero bias
        assert {t["name"] for t in plan.tensors} <= inputs - {"shared_b"}
        assert {t["name"] for t in plan.tensors} == {"w1a", "w1b", "w2a", "w2b"}
    # replay from the plan alone gives the same model; the check against the input passes
    plan.save(tmp_path / "p.json")
    again = gp.prune(gp.load(proto.SerializeToString()), plan=Plan.load(tmp_path / "p.json"))
    assert again.plan.tensors == plan.tensors
    assert oracle.check(gp.load(proto.SerializeToString(), fold=False), again.model, again.plan).ok


def test_untied_copies_are_tied_again_on_save(tmp_path):
    proto = _two_ffns(np.zeros(16, np.float32))
    model = gp.load(proto.SerializeToString())
    before = set(model.graph.initializers)
    gp.save(model, tmp_path / "same.onnx")  # nothing pruned: the file has one bias again
    saved = onnx.load(tmp_path / "same.onnx")
    assert sorted(i.name for i in saved.graph.initializer) == sorted(i.name for i in proto.graph.initializer)
    assert not any(p.key.startswith("graphprune") for p in saved.metadata_props)
    assert set(model.graph.initializers) == before  # the in-memory model is left as it was
    # only one of the two FFNs pruned: its bias copy is sliced, the other stays the original
    dg = gp.analyze(model)
    g = dg.prunable_groups[0]
    res = gp.prune(model, selection={g.id: [0, 1, 2]})
    gp.save(res.model, tmp_path / "one.onnx")
    saved = onnx.load(tmp_path / "one.onnx")
    shapes = sorted(tuple(i.dims) for i in saved.graph.initializer if i.name.startswith("shared_b"))
    assert shapes == [(13,), (16,)]
    assert oracle.check(gp.load(proto.SerializeToString(), fold=False),
                        gp.load(str(tmp_path / "one.onnx"), fold=False), res.plan).ok


def test_params_and_bytes_count_the_model_as_written(tmp_path):
    """The untied copies of a shared zero bias are analysis aids: params and bytes counted
    them (BERT: 16 copies of one LayerNorm bias, 87952 reported vs 86928 in the file). The
    figures are now those of the written file, before and after pruning one FFN."""
    from onnx import numpy_helper

    from graphprune.analysis.cost import model_cost
    from graphprune.ir.serialize import model_nbytes

    def in_file(path):
        arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
        return sum(a.size for a in arrays), sum(a.nbytes for a in arrays)

    proto = _two_ffns(np.zeros(16, np.float32))
    model = gp.load(proto.SerializeToString())
    assert len(model.graph.initializers) == 6  # the copy the analysis made
    gp.save(model, tmp_path / "same.onnx")
    assert (model_cost(model).params, model_nbytes(model)) == in_file(tmp_path / "same.onnx")
    g = gp.analyze(model).prunable_groups[0]
    res = gp.prune(model, selection={g.id: [0, 1, 2]})  # one copy sliced: two tensors in the file
    gp.save(res.model, tmp_path / "one.onnx")
    assert (model_cost(res.model).params, model_nbytes(res.model)) == in_file(tmp_path / "one.onnx")


def test_shared_nonzero_bias_still_couples():
    """Zeroing slices of a non-zero shared tensor would change the other reader: no untying."""
    proto = _two_ffns(w(16, seed=9))
    dg = gp.analyze(gp.load(proto.SerializeToString()))
    assert [g.num_atoms for g in dg.prunable_groups] == [16]
    prune_and_check(proto, seed=0, min_groups=1)
    sel = random_selection(dg, np.random.default_rng(0))
    plan = gp.prune(gp.load(proto.SerializeToString()), selection=sel).plan
    assert "shared_b" in {t["name"] for t in plan.tensors}


def test_inspect_says_what_was_untied(capsys):
    from graphprune.cli.inspect_cmd import inspect_data

    model = gp.load(_two_ffns(np.zeros(16, np.float32)).SerializeToString())
    data = inspect_data(model, gp.analyze(model))
    assert data["untied"] == {"shared_b": ["shared_b__untied1"]}


def test_bert_default_init_has_head_and_ffn_groups(tmp_path):
    """transformers' BERT at default init (all-zero biases, stored once by the exporter):
    2 head groups and 2 FFN groups, not 1 merged group; heads prune with the oracle."""
    import pytest

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import warnings

    from zoo.hf_models import HF_ZOO, _Wrap, example

    model, kind = HF_ZOO["bert"]()  # no randomize(): the default init is the point
    path = str(tmp_path / "bert.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Wrap(model).eval(), (example(kind),), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    proto = onnx.load(path)
    shared = [i.name for i in proto.graph.initializer if i.name == "m.embeddings.LayerNorm.bias"]
    assert shared  # the exporter did share the zero bias (else this test tests nothing)
    dg = gp.analyze(gp.load(path))
    widths = sorted(g.num_atoms for g in dg.prunable_groups)
    assert widths == [4, 4, 48, 48], widths
    heads = {g.id for g in dg.prunable_groups if g.num_atoms == 4}
    pruned, plan, _ = prune_and_check(proto, selection={h: [1] for h in heads}, min_groups=4)
    assert {g["id"] for g in plan.groups} == heads
    assert {t["name"] for t in plan.tensors} <= {i.name for i in proto.graph.initializer}
