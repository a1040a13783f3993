"""slice-hidden: the residual stream of tiny pre-norm transformers (RMSNorm: LLaMA, Qwen2,
Mistral; LayerNorm: GPT-2; both torch exporters) rotated to its principal directions and sliced. Both
oracle checks must pass — the rotated input equals the input, the sliced model equals the
rotated input with the dropped directions zeroed — and each check must be able to fail."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from graphprune.analysis.residual_stream import NotAStream, find_stream  # noqa: E402
from graphprune.frontends.onnx import load_onnx  # noqa: E402
from graphprune.passes import PassContext, PassManager  # noqa: E402
from graphprune.passes.pruning.slice_hidden import (  # noqa: E402
    kept_width, plan_record, rotate, rotation_of, rotated_reference)
from graphprune.plan import Plan  # noqa: E402
from graphprune.runtime import oracle  # noqa: E402
from graphprune.runtime.calibration import Calibration  # noqa: E402
from graphprune.workflow.state import PipelineState  # noqa: E402
from zoo.hf_models import export_tied_lm  # noqa: E402

pytestmark = pytest.mark.torch

RMS_MODELS = [(n, dyn) for n in ("llama", "qwen2", "mistral") for dyn in (False, True)]
EMPTY = Plan(tensors=[], groups=[])


@pytest.fixture(scope="module")
def exported(hf_exported):
    return hf_exported  # conftest: one export per model and exporter per session


def _calibration(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return Calibration.from_batches([{"x": rng.integers(0, 97, (2, 8)).astype(np.int64)} for _ in range(n)])


def _slice(path, ratio=0.25, round_to=8):
    model = load_onnx(path)
    ctx = PassContext()
    state = PipelineState(ctx)
    state.calibration = _calibration()
    PassManager.parse(f"slice-hidden{{ratio={ratio},round_to={round_to}}}").run(model, ctx)
    return model, state.hidden


@pytest.mark.parametrize("name,dynamo", RMS_MODELS)
def test_rotated_equals_input_and_sliced_equals_masked_rotated(exported, name, dynamo):
    path = exported(name, dynamo)
    sliced, hidden = _slice(path)
    assert hidden["width"] == [32, 24]
    rot = oracle.check(load_onnx(path, fold=False), hidden["reference"], EMPTY)
    assert rot.ok, rot.summary()
    plan = Plan(tensors=hidden["tensors"], groups=[])
    res = oracle.check(hidden["reference"], sliced, plan)
    assert res.ok, res.summary()
    # physically smaller: the embedding table and every reader/writer lost 8 of 32 columns/rows
    stream = find_stream(sliced)
    assert stream.hidden == 24
    assert all(t["removed"] == list(range(24, 32)) for t in hidden["tensors"])
    # 2 layers x (q, k, v + gate, up) readers, 2 x (o, down) writers, 5 norms, one un-rotation to the output
    assert (hidden["norms"], hidden["writers"], hidden["readers"]) == (5, 4, 10)
    # and the model's output keeps its shape (hidden states in the original basis)
    out = [v for v in sliced.graph.outputs][0]
    assert int(out.shape[-1]) == 32


def test_the_masking_check_can_fail(exported):
    """Against the reference *without* the plan's zeros, the sliced model differs: the check is
    not vacuous (the dropped directions carry ~5% of the stream's energy here)."""
    sliced, hidden = _slice(exported("llama", True))
    res = oracle.check(hidden["reference"], sliced, EMPTY)
    assert not res.ok


def test_the_rotation_check_can_fail(exported):
    """A matrix that is not orthogonal does not commute with the RMSNorms: the rotated input
    differs from the input, and the check says so."""
    path = exported("llama", False)
    model = load_onnx(path)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((32, 32)))
    bad = q @ np.diag(np.linspace(0.5, 2.0, 32))
    rotate(model, bad, None)
    assert not oracle.check(load_onnx(path, fold=False), model, EMPTY).ok
    good = load_onnx(path)
    rotate(good, q, None)
    assert oracle.check(load_onnx(path, fold=False), good, EMPTY).ok


def test_principal_directions_beat_a_random_rotation(exported):
    """The calibration PCA keeps more of the stream than a random basis of the same width:
    the sliced model is closer to the input on the calibration data."""
    from graphprune.runtime.ort import session

    path = exported("qwen2", True)
    sliced, hidden = _slice(path, ratio=0.5)
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((32, 32)))
    rand = load_onnx(path)
    rotate(rand, q, 16)
    dense = session(load_onnx(path))
    feeds = list(_calibration(n=4, seed=0).batches())

    def err(model):
        s = session(model)
        return np.mean([np.linalg.norm(s.run(None, f)[0] - dense.run(None, f)[0]) for f in feeds])

    assert err(sliced) < 0.8 * err(rand)


@pytest.mark.parametrize("dynamo", [False, True])
def test_pre_norm_layernorm_gpt2_rotated_and_sliced(exported, dynamo):
    """GPT-2 (LayerNorm with bias, Conv1D exported as Reshape -> Gemm -> Reshape): the
    LayerNorms become RMSNorms over a centred stream, the Gemms MatMuls, and then both
    checks hold as for the RMSNorm models; the masking check is not vacuous."""
    path = exported("gpt2", dynamo)
    sliced, hidden = _slice(path)
    assert hidden["width"] == [32, 24]
    # 2 layers x (attention in, FFN in) readers, 2 x (attention out, FFN out) writers, 5 norms
    assert (hidden["norms"], hidden["writers"], hidden["readers"]) == (5, 4, 4)
    rot = oracle.check(load_onnx(path, fold=False), hidden["reference"], EMPTY)
    assert rot.ok, rot.summary()
    res = oracle.check(hidden["reference"], sliced, Plan(tensors=hidden["tensors"], groups=[]))
    assert res.ok, res.summary()
    assert not oracle.check(hidden["reference"], sliced, EMPTY).ok
    assert find_stream(sliced).hidden == 24
    assert not any(n.op_type in ("LayerNormalization", "Gemm") for n in sliced.graph)
    assert int(list(sliced.graph.outputs)[0].shape[-1]) == 32


def test_a_layernorm_written_out_below_opset_17_is_rotated_and_sliced(tmp_path):
    """GPT-2 exported at opset 14, where each LayerNorm is written out as ReduceMean, Sub, Pow,
    ReduceMean, Add, Sqrt, Div, Mul, Add: refused before ("the residual stream value ... is
    made by Sub"); now each becomes the LayerNormalization it computes, then the centred
    RMSNorm, and both checks hold."""
    from zoo.hf_models import export_hf

    path = export_hf("gpt2", str(tmp_path / "gpt2_14.onnx"), False, opset=14)
    sliced, hidden = _slice(path)
    assert hidden["width"] == [32, 24] and (hidden["norms"], hidden["writers"], hidden["readers"]) == (5, 4, 4)
    rot = oracle.check(load_onnx(path, fold=False), hidden["reference"], EMPTY)
    assert rot.ok, rot.summary()
    res = oracle.check(hidden["reference"], sliced, Plan(tensors=hidden["tensors"], groups=[]))
    assert res.ok, res.summary()
    assert not oracle.check(hidden["reference"], sliced, EMPTY).ok
    assert not any(n.op_type == "LayerNormalization" for n in sliced.graph)  # none left at opset 14


def test_layernorm_rewrite_alone_is_the_same_function(exported):
    """The LayerNorm -> centred RMSNorm rewrite on its own (no rotation) keeps the outputs;
    without centring the writers it would not (the stream has a mean)."""
    from graphprune.passes.cleanup.dce import eliminate_dead_code
    from graphprune.passes.pruning import layernorm_stream as L

    path = exported("gpt2", False)
    model = load_onnx(path)
    assert L.layernorm_models_as_rms(model)
    assert oracle.check(load_onnx(path, fold=False), model, EMPTY).ok
    uncentred = load_onnx(path)
    for node in [n for n in uncentred.graph if n.op_type == "Gemm"]:
        L._unflatten_gemm(uncentred, node)
    eliminate_dead_code(uncentred)
    for ln in L._layernorms(uncentred):
        L._as_rms(uncentred, ln)
    assert not oracle.check(load_onnx(path, fold=False), uncentred, EMPTY).ok


@pytest.mark.parametrize("name,dynamo,reason", [
    ("bert", False, "post-norm"), ("bert", True, "post-norm"),
    ("vit", False, "constant .* added to the residual stream"), ("vit", True, "constant .* added")])
def test_layernorm_models_it_cannot_rotate_are_refused_unchanged(exported, name, dynamo, reason):
    from graphprune.passes.pruning.layernorm_stream import layernorm_models_as_rms

    model = load_onnx(exported(name, dynamo))
    before = [(n.op_type, n.name) for n in model.graph]
    with pytest.raises(NotAStream, match=reason):
        layernorm_models_as_rms(model)
    assert [(n.op_type, n.name) for n in model.graph] == before
    with pytest.raises(NotAStream, match="LayerNorm"):
        find_stream(model)


def test_a_stream_read_elsewhere_is_refused_naming_it(exported):
    """Fail closed: a second graph output on the stream cannot be rotated."""
    import onnx_ir as ir  # noqa: F401

    model = load_onnx(exported("llama", True))
    stream = find_stream(model)
    v = stream.values[0]
    model.graph.outputs.append(v)
    with pytest.raises(NotAStream, match="graph output"):
        find_stream(model)


def test_a_norm_weight_of_one_element_is_refused_naming_it(exported):
    """A scale of shape [1] (one number for every channel) is not per hidden channel: a
    clear refusal, not a ValueError from reshaping it to the hidden size (adversarial probe)."""
    import onnx_ir as ir

    model = load_onnx(exported("llama", True))
    norm = find_stream(model).norms[0]
    one = ir.Value(name="one_scale", const_value=ir.tensor(np.array([1.5], np.float32), name="one_scale"),
                   shape=ir.Shape([1]), type=ir.TensorType(ir.DataType.FLOAT))
    model.graph.register_initializer(one)
    norm.gamma_mul.replace_input_with(norm.gamma_input, one)
    with pytest.raises(NotAStream, match="not of the hidden size"):
        find_stream(model)


def test_needs_calibration(exported):
    from graphprune.errors import UsageError

    model = load_onnx(exported("llama", True))
    with pytest.raises(UsageError, match="calibration"):
        PassManager.parse("slice-hidden{ratio=0.25}").run(model, PassContext())


def test_kept_width():
    from graphprune.errors import UsageError

    assert kept_width(576, 0.25, 8) == 432
    assert kept_width(576, 0.0, 8) == 576
    assert kept_width(32, 0.99, 8) == 8  # at least one multiple
    assert kept_width(30, 0.1, 1) == 27
    for bad in (1.0, -0.1):
        with pytest.raises(UsageError):
            kept_width(32, bad, 8)
    with pytest.raises(UsageError):
        PassManager.parse("slice-hidden{ratio=1.5}")


def test_plan_record_round_trip_rebuilds_the_reference(exported, tmp_path):
    """The plan stores the exact float32 rotation; rebuilding the rotated input from the input
    and the plan alone gives the reference the run checked against."""
    path = exported("mistral", False)
    sliced, hidden = _slice(path)
    plan = Plan(tensors=hidden["tensors"], groups=[], hidden=plan_record(hidden))
    plan.save(tmp_path / "p.json")
    back = Plan.load(tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["version"] == 1
    assert np.array_equal(rotation_of(back.hidden), hidden["rotation"].astype(np.float64))
    rebuilt = rotated_reference(load_onnx(path), back.hidden)
    assert oracle.check(rebuilt, sliced, back).ok
    # and the rebuilt reference is the run's: same outputs
    assert oracle.check(hidden["reference"], rebuilt, EMPTY).ok


@pytest.mark.parametrize("name,dynamo", [("llama", False), ("gpt2", True)])
def test_cli_prune_with_slice_hidden_and_channels(exported, tmp_path, capsys, name, dynamo):
    """`prune --slice-hidden` with a MAC target: hidden size and heads/FFN in one run, the
    target a fraction of the input's MACs, both oracle lines printed, and `check` on the
    written pair PASSes (it rebuilds the rotated input from the plan), and `--plan` replays it.
    GPT-2: its LayerNorms become RMSNorms over a centred stream first, in the run and in the
    rebuilds alike."""
    from graphprune.cli.main import main

    def run(*args):
        return main([str(a) for a in args])

    path = exported(name, dynamo)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.integers(0, 97, (16, 8)).astype(np.int64))
    out = tmp_path / "out.onnx"
    rc = run("prune", path, "--slice-hidden", "0.25", "--target-macs", "0.6", "--calib", tmp_path / "calib.npz",
             "--criterion", "wanda", "--allocation", "global", "--repair", "none", "--max-drop", "2", "--no-bench",
             "-o", out)
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    assert "rotated input vs input: PASS" in printed.out
    assert "oracle PASS" in printed.out
    plan = json.loads((tmp_path / "out.plan.json").read_text())
    assert plan["hidden"]["width"] == [32, 24]
    axes = {(t["name"], t["axis"]) for t in plan["tensors"]}
    assert len(axes) == len(plan["tensors"]) > 16  # hidden slices and channel slices, none twice
    from graphprune.analysis.cost import model_cost

    shapes = {"x": [1, 8]}
    ratio = model_cost(load_onnx(str(out)), shapes).macs / model_cost(load_onnx(path), shapes).macs
    assert ratio <= 0.6 + 1e-6
    rc = run("check", path, out, "--plan", tmp_path / "out.plan.json")
    printed = capsys.readouterr()
    assert rc == 0 and "oracle PASS" in printed.out, printed.out + printed.err
    # the plan replays exactly: same slices, same function (no calibration data needed)
    rc = run("prune", path, "--plan", tmp_path / "out.plan.json", "--no-bench", "-o", tmp_path / "replay.onnx")
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    assert "rotated input vs input: PASS" in printed.out and "oracle PASS" in printed.out
    again = json.loads((tmp_path / "replay.plan.json").read_text())
    assert sorted(map(json.dumps, again["tensors"])) == sorted(map(json.dumps, plan["tensors"]))
    assert again["hidden"]["rotation"] == plan["hidden"]["rotation"]
    assert oracle.check(load_onnx(str(out)), load_onnx(str(tmp_path / "replay.onnx")), EMPTY).ok


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_tied_output_head_stays_tied_and_the_model_gets_smaller(tmp_path, dynamo, monkeypatch):
    """The embedding table shared with the output head is kept whole (not stored twice): a
    MatMul after the Gather rotates into the stream basis and one before the head rotates
    back. Both checks PASS and the parameters go down."""
    from graphprune.analysis.cost import model_cost

    # the loader folds a Transpose of a small table into a second constant (untying it); a real
    # model's table is above this limit (SmolLM2: 28 M elements), so make the tiny one count as large
    monkeypatch.setattr("graphprune.frontends.onnx.MAX_FOLD_ELEMENTS", 1000)
    path = export_tied_lm(str(tmp_path / "lm.onnx"), dynamo)
    dense = load_onnx(path)
    def tables(model, width):  # token tables: [97, w] or their transposed copies
        return [v for v in model.graph.initializers.values()
                if v.shape is not None and tuple(v.shape) in ((97, width), (width, 97))]

    sliced, hidden = _slice(path)
    assert oracle.check(load_onnx(path, fold=False), hidden["reference"], EMPTY).ok
    assert oracle.check(hidden["reference"], sliced, Plan(tensors=hidden["tensors"], groups=[])).ok
    if len(tables(dense, 32)) == 1:  # one table for both in the file (dynamo): still one, whole
        assert len(tables(sliced, 32)) == 1 and not tables(sliced, 24)
    else:  # the exporter wrote a transposed copy for the head (TorchScript): both narrower
        assert len(tables(sliced, 24)) == 2 and not tables(sliced, 32)
    assert model_cost(sliced).params < model_cost(dense).params


def test_channel_pruning_after_slicing_leaves_a_kept_whole_table_alone(tmp_path, capsys, monkeypatch):
    """After slice-hidden keeps a tied table whole, the group through its projections is the
    table's hidden axis: channel pruning must not narrow the table there (it did, and SmolLM2
    at 80% MACs went from perplexity 29 to 380)."""
    from graphprune.cli.main import main

    monkeypatch.setattr("graphprune.frontends.onnx.MAX_FOLD_ELEMENTS", 1000)  # as in the test above
    path = export_tied_lm(str(tmp_path / "lm.onnx"), True)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).integers(0, 97, (16, 8)).astype(np.int64))
    out = tmp_path / "out.onnx"
    rc = main(["prune", path, "--slice-hidden", "0.25", "--ratio", "0.5", "--criterion", "l2", "--allocation",
               "uniform", "--calib", str(tmp_path / "calib.npz"), "--repair", "none", "--max-drop", "2", "--no-bench",
               "-o", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    plan = json.loads((tmp_path / "out.plan.json").read_text())
    tables = [v.name for v in load_onnx(path).graph.initializers.values() if tuple(v.shape) == (97, 32)]
    assert len(tables) == 1 and not [t for t in plan["tensors"] if t["name"] == tables[0]]
    assert "hidden size 32 -> 24" in printed.out
    assert len(plan["groups"]) >= 2  # heads / FFN channels were still pruned


def test_the_summary_does_not_call_a_sliced_hidden_size_kept_whole(hf_exported, tmp_path, capsys):
    """'hidden size 32 -> 24 (slice-hidden)' was followed by 'hidden size: kept whole (...)'
    (the channel allocation's view of the stream after slicing; probe)."""
    from graphprune.cli.main import main

    path = hf_exported("llama", False)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).integers(0, 97, (16, 32)).astype(np.int64))
    rc = main(["prune", path, "--slice-hidden", "0.25", "--ratio", "0.3", "--criterion", "l2", "--allocation",
               "uniform", "--calib", str(tmp_path / "calib.npz"), "--repair", "none", "--max-drop", "2", "--no-bench",
               "-o", str(tmp_path / "out.onnx")])
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    assert "hidden size 32 -> 24 (slice-hidden)" in printed.out and "hidden size: kept whole" not in printed.out


@pytest.mark.parametrize("trans_b", [0, 1])
def test_flattened_gemm_becomes_matmul_with_the_same_outputs(trans_b):
    """Reshape([B, S, 2, 4] -> [-1, 8]) -> Gemm -> Reshape([B, S, 6]) (heads merged on the way
    in, as GPT-2's attention output) becomes Reshape([0, 0, -1]) -> MatMul + bias: no width
    constant left on the output side, same outputs; a transposed weight is transposed once."""
    from helpers import make_model
    from onnx import helper

    import graphprune as gp
    from graphprune.passes.cleanup.dce import eliminate_dead_code
    from graphprune.passes.pruning.layernorm_stream import _unflatten_gemm

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 8) if trans_b else (8, 6)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["g"], transB=trans_b),
             helper.make_node("Reshape", ["g", "back"], ["y"])]
    proto = make_model(nodes, [("x", [2, 3, 2, 4])], [("y", [2, 3, 6])],
                       {"w": w, "b": rng.standard_normal(6).astype(np.float32),
                        "flat": np.array([-1, 8], np.int64), "back": np.array([2, 3, 6], np.int64)})
    original = gp.load(proto.SerializeToString())
    model = gp.load(proto.SerializeToString())
    _unflatten_gemm(model, next(n for n in model.graph if n.op_type == "Gemm"))
    eliminate_dead_code(model)
    assert [n.op_type for n in model.graph] == ["Reshape", "MatMul", "Add"]
    assert list(model.graph.initializers["w" if not trans_b else "w.transposed"].const_value.numpy().shape) == [8, 6]
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert oracle.check(original, model, EMPTY).ok


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_tied_gpt2_head_keeps_its_table_whole(tmp_path, dynamo, monkeypatch):
    """GPT-2 with its LM head tied to the token table (read through a Transpose, as real
    checkpoints are): the table cannot be centred in place without changing the head, so a
    centring MatMul goes after the Gather, the rotation folds into it, and the head gets its
    un-rotation and beta's share as a bias. Both checks PASS, the table stays one and whole."""
    from graphprune.analysis.cost import model_cost

    monkeypatch.setattr("graphprune.frontends.onnx.MAX_FOLD_ELEMENTS", 1000)  # keep the Transpose
    path = export_tied_lm(str(tmp_path / "gpt2.onnx"), dynamo, name="gpt2")
    dense = load_onnx(path)
    sliced, hidden = _slice(path)
    rot = oracle.check(load_onnx(path, fold=False), hidden["reference"], EMPTY)
    assert rot.ok, rot.summary()
    res = oracle.check(hidden["reference"], sliced, Plan(tensors=hidden["tensors"], groups=[]))
    assert res.ok, res.summary()
    assert not oracle.check(hidden["reference"], sliced, EMPTY).ok
    tables = [v for v in sliced.graph.initializers.values() if v.shape is not None and tuple(v.shape) == (97, 32)]
    assert len(tables) == 1
    # the centring projection (d x k after slicing) is protected from channel pruning like `.rotate`
    centre = [n for n in hidden["protect"] if ".centre" in n]
    assert len(centre) == 1 and tuple(sliced.graph.initializers[centre[0]].shape) == (32, 24)
    assert model_cost(sliced).params < model_cost(dense).params


@pytest.mark.parametrize("name,dynamo,expect", [
    ("llama", True, "residual stream: hidden size 32 "), ("gpt2", False, "residual stream: hidden size 32 "),
    ("bert", False, "residual stream: --slice-hidden would be refused: .*post-norm")])
def test_inspect_points_a_frozen_hidden_size_to_slice_hidden(exported, capsys, name, dynamo, expect):
    """The norms freeze the hidden size for channel pruning; inspect says which pass reaches
    it (or why that pass would refuse), and leaves the model it inspects unchanged."""
    import re

    from graphprune.cli.inspect_cmd import stream_data
    from graphprune.cli.main import main

    path = exported(name, dynamo)
    assert main(["inspect", path]) == 0
    assert re.search(expect, capsys.readouterr().out)
    model = load_onnx(path)
    before = [(n.op_type, n.name) for n in model.graph]
    stream_data(model)
    assert [(n.op_type, n.name) for n in model.graph] == before


def test_inspect_says_nothing_of_a_stream_in_a_model_without_norms(samples_dir, capsys):
    from graphprune.cli.main import main

    assert main(["inspect", str(samples_dir / "tiny_resnet.onnx")]) == 0
    assert "residual stream" not in capsys.readouterr().out


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_norm_weights_shared_through_identity_nodes(tmp_path, name):
    """The TorchScript exporter shares equal parameters through Identity nodes: with unit
    norm weights (an untrained model) every norm's scale was an Identity, and slice-hidden
    refused the model ('Mul reads the output of the RMSNorm', 'its scale is not a constant').
    Each such vector now gets its own copy; both oracle checks and the plan's rebuild hold."""
    from zoo.hf_models import export_hf

    path = export_hf(name, str(tmp_path / f"{name}.onnx"), False, randomized=False)
    assert any(n.op_type == "Identity" for n in load_onnx(path).graph)
    sliced, hidden = _slice(path)
    assert hidden["width"] == [32, 24]
    assert oracle.check(load_onnx(path, fold=False), hidden["reference"], EMPTY).ok
    plan = Plan(tensors=hidden["tensors"], groups=[], hidden=plan_record(hidden))
    res = oracle.check(hidden["reference"], sliced, plan)
    assert res.ok, res.summary()
    rebuilt = rotated_reference(load_onnx(path), plan.hidden)
    assert oracle.check(rebuilt, sliced, plan).ok


def _norms_as_division(path, out):
    """The same model with every RMSNorm's x * (1 / sqrt(.)) written x / sqrt(.) (T5's and
    hand-written norms; ONNX Runtime fuses this form too)."""
    import onnx_ir as ir

    from graphprune.frontends.onnx import save_onnx

    model = load_onnx(path, fold=False)
    changed = 0
    for sq in [n for n in model.graph if n.op_type == "Sqrt"]:
        (inv, _), = sq.outputs[0].uses()
        (mul, _), = inv.outputs[0].uses()
        x = mul.inputs[1] if mul.inputs[0] is inv.outputs[0] else mul.inputs[0]
        div = ir.node("Div", [x, sq.outputs[0]], name=f"{mul.name}.div", outputs=[ir.Value(name=f"{mul.name}.q")])
        model.graph.insert_before(mul, [div])
        div.outputs[0].shape, div.outputs[0].type = mul.outputs[0].shape, mul.outputs[0].type
        ir.convenience.replace_all_uses_with(mul.outputs[0], div.outputs[0])
        model.graph.remove([mul, inv], safe=True)
        changed += 1
    save_onnx(model, out)
    return changed


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_norm_written_as_a_division_is_rotated_and_sliced(exported, tmp_path, dynamo):
    """x / sqrt(mean(x²) + eps) is the same RMSNorm as x * (1 / sqrt(...)): slice-hidden and
    the hidden-width rewrite recognise one chain (graphprune/ir/rms_norm.py). slice-hidden
    refused this form ('no RMSNorm found')."""
    path = str(tmp_path / "div.onnx")
    assert _norms_as_division(exported("llama", dynamo), path) == 5
    sliced, hidden = _slice(path)
    assert hidden["width"] == [32, 24] and hidden["norms"] == 5
    assert oracle.check(load_onnx(path, fold=False), hidden["reference"], EMPTY).ok
    res = oracle.check(hidden["reference"], sliced, Plan(tensors=hidden["tensors"], groups=[]))
    assert res.ok, res.summary()


# ---- written-out LayerNorms (below opset 17) in a hand-built pre-norm token model ----------------
WIDTH = 8


def _token_model(path, *, opset=14, written=True, share_mean=False, beta_len=WIDTH, eps_shape=(),
                 bias_free=False, half=False, rms=False, two_shape=()):
    """ids -> table -> two pre-norm blocks (norm a and, reading the same stream value, norm b
    when `share_mean`: a parallel block) -> final norm -> head. `written`: LayerNorms as
    ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add; else LayerNormalization
    nodes (opset >= 17). `rms`: RMSNorms instead (Pow, ReduceMean, Add, Sqrt, Div, Mul), with
    the exponent 2 of shape `two_shape`. `bias_free`: the block's first linear layer has no bias."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    ft = np.float16 if half else np.float32

    def r(*shape):
        return rng.standard_normal(shape).astype(ft)

    inits = {"table": r(50, WIDTH), "two": np.full(two_shape, 2.0, ft), "eps": np.full(eps_shape, 1e-5, ft),
             "axes": np.array([-1], np.int64)}
    nodes = [helper.make_node("Gather", ["table", "x"], ["h0"])]
    means = {}

    def mean(src, out):
        if opset >= 18:
            return helper.make_node("ReduceMean", [src, "axes"], [out])
        return helper.make_node("ReduceMean", [src], [out], axes=[-1])

    def norm(src, tag, beta_len=WIDTH):
        inits[f"g{tag}"], inits[f"b{tag}"] = r(WIDTH), r(beta_len)
        if rms:
            del inits[f"b{tag}"]
            nodes.extend([helper.make_node("Pow", [src, "two"], [f"sq{tag}"]), mean(f"sq{tag}", f"v{tag}"),
                          helper.make_node("Add", [f"v{tag}", "eps"], [f"ve{tag}"]),
                          helper.make_node("Sqrt", [f"ve{tag}"], [f"sd{tag}"]),
                          helper.make_node("Div", [src, f"sd{tag}"], [f"nn{tag}"]),
                          helper.make_node("Mul", [f"nn{tag}", f"g{tag}"], [f"n{tag}"])])
            return f"n{tag}"
        if not written:
            nodes.append(helper.make_node("LayerNormalization", [src, f"g{tag}", f"b{tag}"], [f"n{tag}"],
                                          epsilon=1e-5))
            return f"n{tag}"
        if src not in means or not share_mean:
            nodes.append(mean(src, f"mu{tag}"))
            means[src] = f"mu{tag}"
        nodes.extend([helper.make_node("Sub", [src, means[src]], [f"c{tag}"]),
                      helper.make_node("Pow", [f"c{tag}", "two"], [f"sq{tag}"]), mean(f"sq{tag}", f"v{tag}"),
                      helper.make_node("Add", [f"v{tag}", "eps"], [f"ve{tag}"]),
                      helper.make_node("Sqrt", [f"ve{tag}"], [f"sd{tag}"]),
                      helper.make_node("Div", [f"c{tag}", f"sd{tag}"], [f"nn{tag}"]),
                      helper.make_node("Mul", [f"nn{tag}", f"g{tag}"], [f"gn{tag}"]),
                      helper.make_node("Add", [f"gn{tag}", f"b{tag}"], [f"n{tag}"])])
        return f"n{tag}"

    def ffn(src, tag):
        inits[f"w1{tag}"], inits[f"w2{tag}"], inits[f"b2{tag}"] = r(WIDTH, 16), r(16, WIDTH), r(WIDTH)
        nodes.append(helper.make_node("MatMul", [src, f"w1{tag}"], [f"m1{tag}"]))
        hidden = f"m1{tag}"
        if not bias_free:
            inits[f"b1{tag}"] = r(16)
            nodes.append(helper.make_node("Add", [hidden, f"b1{tag}"], [f"a1{tag}"]))
            hidden = f"a1{tag}"
        nodes.extend([helper.make_node("Relu", [hidden], [f"r{tag}"]),
                      helper.make_node("MatMul", [f"r{tag}", f"w2{tag}"], [f"m2{tag}"]),
                      helper.make_node("Add", [f"m2{tag}", f"b2{tag}"], [f"f{tag}"])])
        return f"f{tag}"

    fa = ffn(norm("h0", "a", beta_len), "a")
    nodes.append(helper.make_node("Add", ["h0", fa], ["h1"]))
    stream = "h1"
    if share_mean:
        fb = ffn(norm("h0", "b"), "b")
        nodes.append(helper.make_node("Add", ["h1", fb], ["h2"]))
        stream = "h2"
    inits["head"], inits["head_bias"] = r(WIDTH, 5), r(5)
    nodes.extend([helper.make_node("MatMul", [norm(stream, "f"), "head"], ["logits"]),
                  helper.make_node("Add", ["logits", "head_bias"], ["y"])])
    elem = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.INT64, ["B", "S"])],
                          [helper.make_tensor_value_info("y", elem, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    path.write_bytes(m.SerializeToString())
    return str(path)


def _token_slice(path):
    model = load_onnx(path)
    ctx = PassContext()
    state = PipelineState(ctx)
    rng = np.random.default_rng(0)
    state.calibration = Calibration.from_batches([{"x": rng.integers(0, 50, (2, 6))} for _ in range(4)])
    PassManager.parse("slice-hidden{ratio=0.25,round_to=1}").run(model, ctx)
    return model, state.hidden


def _both_checks_hold(path):
    sliced, hidden = _token_slice(path)
    assert hidden["width"] == [WIDTH, 6]
    rot = oracle.check(load_onnx(path, fold=False), hidden["reference"], EMPTY)
    assert rot.ok, rot.summary()
    res = oracle.check(hidden["reference"], sliced, Plan(tensors=hidden["tensors"], groups=[]))
    assert res.ok, res.summary()
    assert not oracle.check(hidden["reference"], sliced, EMPTY).ok  # the masking check can fail
    return sliced


def test_rms_norms_in_the_hand_built_model_are_sliced(tmp_path):
    """The refusal below is of the exponent's shape alone: the same model with a scalar 2 slices."""
    _both_checks_hold(_token_model(tmp_path / "m.onnx", rms=True))


def test_two_written_out_norms_sharing_their_mean_are_sliced(tmp_path):
    """A parallel block reads the stream through a second norm that shares the first's
    ReduceMean (after common-subexpression elimination): both became LayerNormalization
    nodes named after that mean, and the RMSNorm ops written from them collided ('two nodes
    with same node name', adversarial probe). Each is named after its own last node now."""
    _both_checks_hold(_token_model(tmp_path / "m.onnx", share_mean=True))


@pytest.mark.parametrize("written,opset", [(True, 14), (False, 18)])
def test_a_norm_read_by_a_linear_layer_without_bias_is_sliced(tmp_path, written, opset):
    """beta folds into the bias of every layer reading the norm; a layer without one gets an
    Add, which read itself ('the graph is not acyclic', adversarial probe, both norm forms)."""
    _both_checks_hold(_token_model(tmp_path / "m.onnx", written=written, opset=opset, bias_free=True))


@pytest.mark.parametrize("case,says", [
    ({"beta_len": 1}, "reads the output of"),  # a one-element beta is no LayerNorm bias: was a matmul ValueError
    ({"eps_shape": (1, 1, 1, 1)}, "reads the residual stream ('h0')"),  # eps adding an axis: no LayerNorm
    ({"half": True}, "float16 values: slice-hidden rewrites LayerNorms of float32 models only"),
    # an RMSNorm's exponent adding an axis: the same rank guard as a LayerNorm's (was an oracle FAIL)
    ({"rms": True, "two_shape": (1, 1, 1, 1)}, "reads the residual stream ('h0')"),
])
def test_written_out_norms_slice_hidden_cannot_take_are_refused(tmp_path, case, says):
    """Refused naming why (they crashed, or — eps of shape [1, 1, 1, 1], whose sum has one
    more axis than a LayerNorm's — became a model of another rank), the model unchanged."""
    path = _token_model(tmp_path / "m.onnx", **case)
    with pytest.raises(NotAStream, match=re.escape(says)):
        _token_slice(path)
