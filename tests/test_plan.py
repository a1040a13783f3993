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
    for ta, tb in zip(sorted(a.graph.initializer, key=lambda t: t.name), sorted(b.graph.initializer, key=lambda t: t.name), strict=True):
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


# ---- one strict validator for every plan reader (issue 12, sections 2 and 4) -----------------

def _cli(*argv):
    from graphprune.cli.main import main

    return main(list(argv))


@pytest.fixture(scope="module")
def pruned_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    src = d / "m.onnx"
    src.write_bytes(tiny_resnet().SerializeToString())
    res = gp.prune(gp.load(str(src)), 0.3)
    gp.save(res.model, d / "p.onnx")
    res.plan.save(d / "p.plan.json")
    return d, json.loads((d / "p.plan.json").read_text())


def _bad_plans(good: dict):
    t0 = good["tensors"][0]
    def with_tensor(**kw):
        bad = json.loads(json.dumps(good))
        bad["tensors"][0].update(kw)
        return bad
    return {
        "negative index": with_tensor(removed=[-1]),
        "boolean index": with_tensor(removed=[True]),
        "out of range": with_tensor(removed=[10_000]),
        "2**70": with_tensor(removed=[2 ** 70]),
        "float index": with_tensor(removed=[1.0]),
        "wrong axis": with_tensor(axis=7),
        "negative axis": with_tensor(axis=-1),
        "boolean axis": with_tensor(axis=bool(t0["axis"]) or True),
        "version True": {**good, "version": True},
        "version 1.0": {**good, "version": 1.0},
    }


@pytest.mark.parametrize("case", ["negative index", "boolean index", "out of range", "2**70", "float index",
                                  "wrong axis", "negative axis", "boolean axis", "version True", "version 1.0"])
@pytest.mark.parametrize("verb", ["check", "prune"])
def test_bad_plans_exit_2(pruned_pair, case, verb, capsys):
    d, good = pruned_pair
    bad = d / f"bad-{verb}-{case.replace(' ', '_')}.plan.json"
    bad.write_text(json.dumps(_bad_plans(good)[case]))
    if verb == "check":
        code = _cli("check", str(d / "m.onnx"), str(d / "p.onnx"), "--plan", str(bad))
    else:
        code = _cli("prune", str(d / "m.onnx"), "--plan", str(bad), "-o", str(d / f"out-{case[:3]}.onnx"),
                    "--no-bench")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "plan" in err and "Traceback" not in err


def test_deeply_nested_plan_is_a_plan_error(tmp_path, capsys):
    p = tmp_path / "deep.plan.json"
    p.write_text('{"version": 1, "tensors": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PlanError):
        Plan.load(p)
    src = tmp_path / "m.onnx"
    src.write_bytes(tiny_resnet().SerializeToString())
    assert _cli("check", str(src), str(src), "--plan", str(p)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "plan" in err[0]


def test_plan_validator_accepts_a_good_plan(pruned_pair):
    d, good = pruned_pair
    assert Plan.from_json(good).tensors == good["tensors"]
