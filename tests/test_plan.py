"""plan.json: the public `tensors` contract, exact replay, and refusal of foreign plans."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphprune as gp
from graphprune.errors import PlanError
from graphprune.plan import Plan
from samples.make_samples import tiny_mobilenet, tiny_resnet


def masked_from_contract(model_bytes: bytes, plan_json: dict) -> bytes:
    """Rebuild the masked original with onnx + numpy only, from the plan's `tensors`."""
    m = onnx.load_from_string(model_bytes)
    by_name = {t.name: t for t in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    by_name[node.output[0]] = a.t
    for entry in plan_json["tensors"]:
        t = by_name[entry["name"]]
        arr = numpy_helper.to_array(t).copy()
        index = [slice(None)] * arr.ndim
        index[entry["axis"]] = entry["removed"]
        arr[tuple(index)] = 0
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return m.SerializeToString()


def run(model, x):
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("make", [tiny_resnet, tiny_mobilenet])
def test_contract_rebuilds_masked_original(make, tmp_path):
    src = make().SerializeToString()
    res = gp.prune(gp.load(src), 0.4)
    gp.save(res.model, tmp_path / "p.onnx")
    res.plan.save(tmp_path / "p.plan.json")
    plan_json = json.loads((tmp_path / "p.plan.json").read_text())
    assert plan_json["version"] == 1 and plan_json["tensors"]
    assert set(plan_json["tensors"][0]) >= {"name", "axis", "removed"}
    masked = masked_from_contract(src, plan_json)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32) if make is tiny_mobilenet else (1, 3, 16, 16)).astype(np.float32)
    a, b = run(masked, x), run(str(tmp_path / "p.onnx"), x)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
    # and masking really matters: the unmasked original differs
    assert np.abs(run(src, x) - b).max() > 1e-3


def test_replay_is_exact(tmp_path):
    src = tiny_resnet().SerializeToString()
    res = gp.prune(gp.load(src), 0.35)
    res.plan.save(tmp_path / "a.plan.json")
    again = gp.prune(gp.load(src), plan=Plan.load(tmp_path / "a.plan.json"))
    assert again.plan.tensors == res.plan.tensors
    a = onnx.load_from_string(gp_bytes(res.model))
    b = onnx.load_from_string(gp_bytes(again.model))
    for ta, tb in zip(sorted(a.graph.initializer, key=lambda t: t.name), sorted(b.graph.initializer, key=lambda t: t.name)):
        assert ta.name == tb.name
        np.testing.assert_array_equal(numpy_helper.to_array(ta), numpy_helper.to_array(tb))


def gp_bytes(model):
    import onnx_ir as ir

    return ir.serde.serialize_model(model).SerializeToString()


def test_plan_for_another_model_is_refused():
    plan = gp.prune(gp.load(tiny_resnet().SerializeToString()), 0.3).plan
    with pytest.raises(PlanError):
        gp.prune(gp.load(tiny_mobilenet().SerializeToString()), plan=plan)


def test_plan_that_splits_a_coupled_set_is_refused():
    """Drop one index from one tensor: the plan no longer removes whole atoms."""
    src = tiny_resnet().SerializeToString()
    plan = gp.prune(gp.load(src), 0.3).plan
    t = next(t for t in plan.tensors if len(t["removed"]) > 1)
    t["removed"] = t["removed"][1:]
    with pytest.raises(PlanError, match="inconsistent"):
        gp.prune(gp.load(src), plan=plan)


@pytest.mark.parametrize("bad", [{"version": 2}, {"version": 1}, {"version": 1, "tensors": [{"name": 3}]}, [1, 2]])
def test_malformed_plans(bad, tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(PlanError):
        Plan.load(p)
    (tmp_path / "notjson.json").write_text("{nope")
    with pytest.raises(PlanError):
        Plan.load(tmp_path / "notjson.json")


def test_out_of_range_index_is_refused():
    src = tiny_resnet().SerializeToString()
    plan = gp.prune(gp.load(src), 0.3).plan
    plan.tensors[0]["removed"] = [10_000]
    with pytest.raises(PlanError, match="out of range"):
        gp.prune(gp.load(src), plan=plan)
