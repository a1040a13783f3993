"""Depth pruning: residual blocks found, removed exactly (oracle with zeroed branches)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphprune as gp
from graphprune.analysis.blocks import find_residual_blocks
from graphprune.errors import PlanError
from graphprune.plan import Plan
from graphprune.runtime import oracle
from samples.make_samples import tiny_mobilenet, tiny_resnet


def _check(proto, **kw):
    model = gp.load(proto.SerializeToString())
    res = gp.prune(model, **kw)
    r = oracle.check(gp.load(proto.SerializeToString(), fold=False), model, res.plan)
    assert r.ok, r.diffs
    onnx.checker.check_model(__import__("onnx_ir").serde.serialize_model(model), full_check=True)
    return model, res.plan


def test_blocks_found_in_cnns():
    assert len(find_residual_blocks(gp.load(tiny_resnet().SerializeToString()))) == 2  # not the projection block
    assert len(find_residual_blocks(gp.load(tiny_mobilenet().SerializeToString()))) == 2


@pytest.mark.parametrize("k", [1, 2])
def test_remove_blocks_is_exact(k):
    model, plan = _check(tiny_resnet(), ratio=0.0, remove_blocks=k)
    assert len(plan.blocks) == k and not plan.tensors
    assert len(find_residual_blocks(model)) == 2 - k


def test_depth_and_width_together_and_replay(tmp_path):
    proto = tiny_resnet()
    model, plan = _check(proto, ratio=0.4, remove_blocks=1)
    assert plan.blocks and plan.tensors
    plan.save(tmp_path / "p.json")
    again = gp.prune(gp.load(proto.SerializeToString()), plan=Plan.load(tmp_path / "p.json"))
    assert again.plan.tensors == plan.tensors and [b["branch"] for b in again.plan.blocks] == \
        [b["branch"] for b in plan.blocks]
    with pytest.raises(PlanError):
        gp.prune(gp.load(tiny_mobilenet().SerializeToString()), plan=Plan.load(tmp_path / "p.json"))


def test_influence_picks_the_block_that_changes_the_stream_least():
    proto = tiny_resnet()
    blocks = find_residual_blocks(gp.load(proto.SerializeToString()))
    # shrink the last BN scale of the second block's branch: its output becomes ~0
    model = gp.load(proto.SerializeToString())
    last = model.graph.node(blocks[1].nodes[-1])
    assert last.op_type == "BatchNormalization"
    scale_name, bias_name = last.inputs[1].name, last.inputs[2].name
    for t in proto.graph.initializer:
        if t.name in (scale_name, bias_name):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1e-4, t.name))
    _, plan = _check(proto, ratio=0.0, remove_blocks=1)
    assert plan.blocks[0]["add"] == blocks[1].add
    assert plan.blocks[0]["score"] < 1e-2
    _, plan = _check(proto, ratio=0.0, remove_blocks=1, block_criterion="magnitude")
    assert plan.blocks


def test_user_list_and_too_many():
    proto = tiny_resnet()
    blocks = find_residual_blocks(gp.load(proto.SerializeToString()))
    _, plan = _check(proto, ratio=0.0, blocks=[blocks[0].add])
    assert plan.blocks[0]["add"] == blocks[0].add
    from graphprune.errors import UsageError

    with pytest.raises(UsageError):
        gp.prune(gp.load(proto.SerializeToString()), 0.0, remove_blocks=5)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_transformer_sub_blocks(name, tmp_path):
    pytest.importorskip("transformers")
    from zoo.hf_models import export_hf

    path = export_hf(name, str(tmp_path / f"{name}.onnx"), dynamo=True)
    blocks = find_residual_blocks(gp.load(path))
    assert len(blocks) == 4  # attention + MLP sub-block per layer, 2 layers
    proto = onnx.load(path)
    # round_to=1: the tiny layers (FFN 48) keep no multiple of the host's lanes at ratio 0.5
    model, plan = _check(proto, ratio=0.5, remove_blocks=2, round_to=1)
    assert len(plan.blocks) == 2 and plan.tensors


def test_consecutive_blocks_in_graph_order():
    """Pre-LN transformer shape: block B's skip is block A's Add output. Removing A first
    (listed earlier) must still find B."""
    from samples.make_samples import Builder

    b = Builder(3)
    x = b.conv("input", 3, 8)
    a = b.op("Add", [x, b.conv(b.op("Relu", [x]), 8, 8)])
    c = b.op("Add", [a, b.conv(b.op("Relu", [a]), 8, 8)])
    proto = b.model([1, 3, 8, 8], b.conv(c, 8, 4, k=1), [1, 4, 8, 8], "pre_ln_like")
    blocks = find_residual_blocks(gp.load(proto.SerializeToString()))
    assert len(blocks) == 2 and blocks[1].skip == a  # B starts where A's Add ends
    model, plan = _check(proto, ratio=0.0, blocks=[blocks[0].add, blocks[1].add])
    assert len(plan.blocks) == 2 and not find_residual_blocks(model)


def _independent_masked_run(src, plan: dict, x: np.ndarray) -> np.ndarray:
    """The README contract checked without graphprune: zero every `tensors` slice of the
    input model's initializers (numpy), run it with onnxruntime."""
    m = onnx.load(src)
    inits = {t.name: t for t in m.graph.initializer}
    for e in plan["tensors"]:
        a = numpy_helper.to_array(inits[e["name"]]).copy()
        idx = [slice(None)] * a.ndim
        idx[e["axis"]] = np.asarray(e["removed"], dtype=np.int64)
        a[tuple(idx)] = 0
        inits[e["name"]].CopyFrom(numpy_helper.from_array(a, e["name"]))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


@pytest.mark.parametrize("ratio", ["0", "0.3"])
def test_depth_plan_tensors_alone_rebuild_the_masked_original(tmp_path, capsys, ratio):
    """`prune --remove-blocks 2` wrote `tensors: []` plus `blocks`: zeroing `tensors` in the
    input model left the blocks in (error 3e-2 and more). Each removed block now appears in
    `tensors` (its branch's closing BN scale and bias, all channels)."""
    from graphprune.cli.main import main

    src, out = tmp_path / "r.onnx", tmp_path / "d.onnx"
    onnx.save(tiny_resnet(), src)
    assert main(["prune", str(src), "--remove-blocks", "2", "--ratio", ratio, "-o", str(out), "--no-bench"]) == 0
    plan = json.loads((tmp_path / "d.plan.json").read_text())
    assert len(plan["blocks"]) == 2
    # the summary names the blocks it removed (it said only "removed 2 residual blocks")
    said = capsys.readouterr().out
    assert f"removed 2 residual blocks (ending at {plan['blocks'][0]['add']}, {plan['blocks'][1]['add']})" in said
    pruned = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for seed in range(2):
        x = np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)
        ref = _independent_masked_run(src, plan, x)
        got = pruned.run(None, {"input": x})[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))
    assert {e.get("block") for e in plan["tensors"]} >= {b["branch"] for b in plan["blocks"]}
    # replay from the plan alone gives the same plan
    assert main(["prune", str(src), "--plan", str(tmp_path / "d.plan.json"), "-o", str(tmp_path / "e.onnx"),
                 "--no-bench"]) == 0
    assert json.loads((tmp_path / "e.plan.json").read_text())["tensors"] == plan["tensors"]


def test_old_depth_plans_without_block_tensors_still_replay(tmp_path):
    """Plans written before blocks were listed in `tensors` (blocks only): replay and the
    oracle still work (the oracle zeroes those branches itself)."""
    proto = tiny_resnet()
    _, plan = _check(proto, ratio=0.0, remove_blocks=1)
    old = plan.to_json()
    old["tensors"] = [t for t in old["tensors"] if "block" not in t]
    assert not old["tensors"]
    old_plan = Plan.from_json(old)
    assert not any("tensors" in b for b in old_plan.blocks)
    model = gp.load(proto.SerializeToString())
    again = gp.prune(model, plan=old_plan)
    assert [b["branch"] for b in again.plan.blocks] == [b["branch"] for b in plan.blocks]
    assert oracle.check(gp.load(proto.SerializeToString(), fold=False), model, old_plan).ok
    assert again.plan.to_json()["tensors"] == plan.to_json()["tensors"]  # written again with the block's slices


def test_block_whose_branch_cannot_be_zeroed_is_not_removed():
    """A branch closing with a Sigmoid (σ(0) = 0.5) cannot be made zero by zeroing constants:
    the block is not a candidate, and asking for it by name is refused."""
    from graphprune.errors import UsageError
    from samples.make_samples import Builder

    b = Builder(3)
    x = b.conv("input", 3, 8)
    a = b.op("Add", [x, b.op("Sigmoid", [b.conv(b.op("Relu", [x]), 8, 8)])])
    c = b.op("Add", [a, b.conv(b.op("Relu", [a]), 8, 8)])
    proto = b.model([1, 3, 8, 8], b.conv(c, 8, 4, k=1), [1, 4, 8, 8], "sigmoid_branch")
    blocks = find_residual_blocks(gp.load(proto.SerializeToString()))
    assert len(blocks) == 2
    _, plan = _check(proto, ratio=0.0, remove_blocks=1)
    assert [e["branch"] for e in plan.blocks] == [blocks[1].branch]
    with pytest.raises(UsageError):
        gp.prune(gp.load(proto.SerializeToString()), 0.0, remove_blocks=2)
    with pytest.raises(PlanError, match="cannot be removed exactly"):
        gp.prune(gp.load(proto.SerializeToString()), 0.0, blocks=[blocks[0].add])


def test_depth_plan_checks_on_disk_with_external_data(tmp_path):
    """The on-disk oracle (large models, external data) zeroes the blocks' slices in the
    data file copy, as it does the channels' (reading them through the IR found no file)."""
    from graphprune.cli.main import main

    src = tmp_path / "m" / "r.onnx"
    src.parent.mkdir()
    onnx.save(tiny_resnet(), src, save_as_external_data=True, all_tensors_to_one_file=True, location="r.data",
              size_threshold=0)
    out = tmp_path / "d.onnx"
    assert main(["prune", str(src), "--remove-blocks", "2", "--ratio", "0.2", "-o", str(out), "--no-bench"]) == 0
    plan = Plan.load(tmp_path / "d.plan.json")
    assert plan.block_tensors()
    assert oracle.check_files(str(src), str(out), plan).ok
