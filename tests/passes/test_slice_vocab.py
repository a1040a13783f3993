"""slice-vocab: keep a list of token ids (graphprune.passes.pruning.slice_vocab).

The oracle's form here: sliced(ids) == original(kept[ids])[..., kept], on random ids over
all kept tokens. Every exactness test also shows the check able to FAIL."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from graphprune.errors import PlanError, UsageError  # noqa: E402
from graphprune.frontends.onnx import load_onnx  # noqa: E402
from graphprune.ir.constants import const_array, set_const_array  # noqa: E402
from graphprune.ir.serialize import clone  # noqa: E402
from graphprune.passes.pruning.slice_vocab import (  # noqa: E402
    NotAVocabulary, find_vocab, read_token_list, slice_vocab, vocab_reference, with_token_range)
from graphprune.plan import Plan  # noqa: E402
from graphprune.runtime import oracle  # noqa: E402
from graphprune.runtime.ort import resolve_shapes  # noqa: E402
from zoo.hf_models import export_tied_lm  # noqa: E402

EMPTY = Plan(tensors=[], groups=[])
KEEP = [3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 96]


def _check(path, model, record, *, cover=True):
    ref = vocab_reference(load_onnx(path, fold=False), record)
    shapes = resolve_shapes(model, path)
    return oracle.check(ref, model, EMPTY, shapes=with_token_range(shapes, record) if cover else shapes)


def _sliced(path, keep=KEEP, **kw):
    model = load_onnx(path)
    return model, slice_vocab(model, keep, **kw)


def _prune_cli(capsys, path, tmp_path, *flags, ids="ids.json", keep=KEEP):
    """`graphprune prune PATH --keep-tokens <tmp>/IDS FLAGS -o <tmp>/out.onnx` with the token
    list written first (a JSON list, or space-separated for a .txt name): (exit code,
    stdout, stderr)."""
    from graphprune.cli.main import main

    (tmp_path / ids).write_text(" ".join(map(str, keep)) if ids.endswith(".txt") else json.dumps(keep))
    rc = main(["prune", str(path), "--keep-tokens", str(tmp_path / ids), *map(str, flags),
               "-o", str(tmp_path / "out.onnx")])
    printed = capsys.readouterr()
    return rc, printed.out, printed.err


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name", ["llama_lm", "gpt2_lm"])
def test_kept_tokens_are_exact_and_a_wrong_map_fails(hf_exported, name, dynamo):
    """LLaMA with its own head, GPT-2 (the exporters store its tied head as a transposed
    copy): table rows and head columns of the kept ids only; the result equals the input
    with ids mapped and logits gathered, and a reference with another map FAILs."""
    from graphprune.analysis.cost import model_cost

    path = hf_exported(name, dynamo)
    model, rec = _sliced(path)
    assert rec["vocab_size"] == 97 and rec["kept"] == KEEP and rec["outputs"] == ["y"] and len(rec["heads"]) == 1
    table = model.graph.initializers[rec["tables"][0]]
    assert tuple(table.shape) == (24, 32)
    assert model.graph.outputs[0].shape[-1] == 24
    dense = load_onnx(path)
    assert model_cost(model).params == model_cost(dense).params - 2 * (97 - 24) * 32
    res = _check(path, model, rec)
    assert res.ok, res.summary()
    wrong = dict(rec, kept=KEEP[1:] + [0])
    bad = oracle.check(vocab_reference(load_onnx(path, fold=False), wrong), model, EMPTY,
                       shapes=with_token_range(resolve_shapes(model, path), rec))
    assert not bad.ok


def test_the_oracle_draws_ids_over_all_kept_tokens(hf_exported):
    """Two table rows swapped (a wrong slice the head does not show) FAIL: the random ids
    cover the kept range. With the default ids (0 and 1 only) the same broken model would pass."""
    path = hf_exported("llama_lm", False)
    model, rec = _sliced(path)
    table = model.graph.initializers[rec["tables"][0]]
    arr = const_array(table).copy()
    arr[[10, 11]] = arr[[11, 10]]
    set_const_array(table, arr)
    assert not _check(path, model, rec).ok
    assert _check(path, model, rec, cover=False).ok  # why the range matters


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_table_shared_with_the_head_is_sliced_once(tmp_path, dynamo, monkeypatch):
    """SmolLM2's form: the head reads the token table through a Transpose. The one table
    loses its rows, the Transpose follows, the result is exact."""
    monkeypatch.setattr("graphprune.frontends.onnx.MAX_FOLD_ELEMENTS", 1000)  # keep the Transpose (see slice-hidden)
    path = export_tied_lm(str(tmp_path / "lm.onnx"), dynamo)
    model, rec = _sliced(path)
    assert len(rec["tables"]) == 1 and any(n.op_type == "Transpose" for n in model.graph)
    vocab_sized = [v for v in model.graph.initializers.values() if v.shape is not None and 97 in tuple(v.shape)]
    assert not vocab_sized
    res = _check(path, model, rec)
    assert res.ok, res.summary()


def test_a_model_without_a_head_keeps_its_output(hf_exported):
    """BERT (hidden states out): only the table shrinks; outputs keep their shape."""
    path = hf_exported("bert", False)
    model, rec = _sliced(path)
    assert rec["heads"] == [] and rec["outputs"] == []
    assert _check(path, model, rec).ok


def _edit(path, out, edit):
    import onnx

    m = onnx.load(path)
    edit(m)
    onnx.save(m, out)
    return str(out)


def test_logits_behind_a_softmax_are_refused(hf_exported, tmp_path):
    """Probabilities over fewer tokens are not the original's: refused, the model unchanged."""
    from onnx import helper

    def softmax(m):
        y = m.graph.output[0].name
        for n in m.graph.node:
            for i, o in enumerate(n.output):
                if o == y:
                    n.output[i] = "logits"
        m.graph.node.append(helper.make_node("Softmax", ["logits"], [y], axis=-1))

    path = _edit(hf_exported("llama_lm", False), tmp_path / "p.onnx", softmax)
    model = load_onnx(path)
    with pytest.raises(NotAVocabulary, match="Softmax"):
        slice_vocab(model, KEEP)
    assert model.graph.initializers["m.model.embed_tokens.weight"].shape[0] == 97


def test_ids_read_by_anything_but_a_table_are_refused(hf_exported, tmp_path):
    """An Equal on the ids (a padding mask) would see renumbered ids: refused, naming it."""
    from onnx import TensorProto, helper

    def pad_mask(m):
        m.graph.initializer.append(helper.make_tensor("pad", TensorProto.INT64, [], [0]))
        m.graph.node.append(helper.make_node("Equal", ["x", "pad"], ["is_pad"], name="pad_mask"))
        m.graph.output.append(helper.make_tensor_value_info("is_pad", TensorProto.BOOL, None))

    path = _edit(hf_exported("llama_lm", False), tmp_path / "p.onnx", pad_mask)
    with pytest.raises(NotAVocabulary, match="pad_mask"):
        find_vocab(load_onnx(path), "x")


def test_bad_token_lists(hf_exported, tmp_path):
    path = hf_exported("llama_lm", False)
    with pytest.raises(UsageError, match="outside the vocabulary of 97"):
        _sliced(path, [1, 97])
    with pytest.raises(UsageError, match="empty"):
        _sliced(path, [])
    with pytest.raises(UsageError, match="no such input"):
        _sliced(path, [1], input="ids")
    (tmp_path / "t.txt").write_text("1 2\n3,x\n")
    with pytest.raises(UsageError, match="'x' is not an integer"):
        read_token_list(tmp_path / "t.txt")
    with pytest.raises(UsageError, match="no such file"):
        read_token_list(tmp_path / "none.txt")


def test_token_list_formats(tmp_path):
    (tmp_path / "a.txt").write_text("5 3,\n9\n")
    (tmp_path / "b.json").write_text("[5, 3, 9]")
    (tmp_path / "c.json").write_text(json.dumps({"kept": [5, 3, 9]}))
    np.save(tmp_path / "d.npy", np.array([5, 3, 9], dtype=np.int32))
    for f in ("a.txt", "b.json", "c.json", "d.npy"):
        assert read_token_list(tmp_path / f) == [5, 3, 9], f
    np.save(tmp_path / "e.npy", np.array([0.5]))
    with pytest.raises(UsageError, match="not integers"):
        read_token_list(tmp_path / "e.npy")


def test_repeated_and_unsorted_ids_give_the_sorted_map(hf_exported):
    model, rec = _sliced(hf_exported("llama_lm", False), [9, 3, 9, 5])
    assert rec["kept"] == [3, 5, 9]


def test_the_plan_keeps_the_record_and_refuses_a_malformed_one():
    plan = Plan(tensors=[], groups=[], vocab={"input": "x", "vocab_size": 97, "kept": [1, 2], "outputs": ["y"]})
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again.vocab == plan.vocab
    with pytest.raises(PlanError, match="vocab"):
        Plan.from_json({**plan.to_json(), "vocab": {"input": "x", "kept": []}})
    assert "vocab" not in Plan(tensors=[], groups=[]).to_json()  # plans without it are as before


def test_cli_prune_writes_the_id_map_checks_and_replays(hf_exported, tmp_path, capsys):
    """prune --keep-tokens with channel pruning: both oracles PASS, the id map and the plan's
    record are written, `check` passes on the pair, and --plan replays the same model."""
    import onnx

    from graphprune.cli.main import main

    path = hf_exported("gpt2_lm", True)
    out = tmp_path / "out.onnx"
    rc, stdout, stderr = _prune_cli(capsys, path, tmp_path, "--ratio", "0.3", "--no-bench", ids="ids.txt")
    assert rc == 0, stdout + stderr
    assert "oracle PASS" in stdout and "sliced vs ids mapped: PASS" in stdout
    assert "vocabulary 97 -> 24 tokens" in stdout
    idmap = json.loads((tmp_path / "out.vocab.json").read_text())
    assert idmap["kept"] == KEEP and idmap["input"] == "x"
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert [o["path"] for o in report["outputs"]] == ["out.onnx", "out.plan.json", "out.vocab.json"]
    assert report["plan"]["vocab"]["kept"] == 24 and "PASS" in report["plan"]["vocab"]["oracle"]
    plan = json.loads((tmp_path / "out.plan.json").read_text())
    assert plan["vocab"]["kept"] == KEEP and plan["tensors"]
    assert onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim[-1].dim_value == 24
    rc = main(["check", path, str(out), "--plan", str(tmp_path / "out.plan.json")])
    printed = capsys.readouterr()
    assert rc == 0 and "oracle PASS" in printed.out, printed.out + printed.err
    rc = main(["prune", path, "--plan", str(tmp_path / "out.plan.json"), "--no-bench", "-o", str(tmp_path / "r.onnx")])
    assert rc == 0, capsys.readouterr().err
    a, b = onnx.load(str(out)), onnx.load(str(tmp_path / "r.onnx"))
    del a.metadata_props[:], b.metadata_props[:]  # the plan digests differ (the replay's settings)
    assert a.SerializeToString() == b.SerializeToString()
    assert json.loads((tmp_path / "r.vocab.json").read_text())["kept"] == KEEP


def test_cli_bad_ids_fail_before_any_work(hf_exported, tmp_path, capsys):
    rc, stdout, stderr = _prune_cli(capsys, hf_exported("llama_lm", False), tmp_path, "--no-bench", keep=[1, 2, 500])
    assert rc == 2 and "id 500 is outside the vocabulary of 97" in stderr
    assert "oracle" not in stdout  # refused before the pruning
    assert not list(tmp_path.glob("out*"))


def test_cli_refuses_an_id_map_over_an_input(hf_exported, tmp_path, capsys):
    """The id map is written as <output>.vocab.json: a token list of that name is an input."""
    from graphprune.cli.main import main

    (tmp_path / "out.vocab.json").write_text(json.dumps(KEEP))
    rc = main(["prune", hf_exported("llama_lm", False), "--keep-tokens", str(tmp_path / "out.vocab.json"),
               "--no-bench", "-o", str(tmp_path / "out.onnx")])
    printed = capsys.readouterr()
    assert rc == 2 and "would overwrite the --keep-tokens file" in printed.err, printed.out + printed.err
    assert json.loads((tmp_path / "out.vocab.json").read_text()) == KEEP


def test_api_prune_and_check(hf_exported):
    import graphprune as gp

    path = hf_exported("llama_lm", True)
    res = gp.prune(path, ratio=0.2, keep_tokens=KEEP)
    assert res.plan.vocab["kept"] == KEEP
    assert gp.check(path, res.model, res.plan).ok
    broken = clone(res.model)
    head = next(v for v in broken.graph.initializers.values() if v.shape is not None and tuple(v.shape)[-1:] == (24,) and len(v.shape) == 2 and v.shape[0] != 24)
    set_const_array(head, const_array(head)[:, ::-1].copy())
    assert not gp.check(path, broken, res.plan).ok


def test_with_slice_hidden_on_a_tied_gpt2(tmp_path, capsys, monkeypatch):
    """Hidden size by rotation, then the vocabulary: each step's oracle PASSes."""
    from graphprune.cli.main import main

    monkeypatch.setattr("graphprune.frontends.onnx.MAX_FOLD_ELEMENTS", 1000)
    path = export_tied_lm(str(tmp_path / "gpt2.onnx"), False, name="gpt2")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.integers(0, 97, (16, 8)).astype(np.int64))
    (tmp_path / "ids.json").write_text(json.dumps(KEEP))
    rc = main(["prune", path, "--slice-hidden", "0.25", "--keep-tokens", str(tmp_path / "ids.json"), "--calib",
               str(tmp_path / "calib.npz"), "--criterion", "l2", "--allocation", "uniform", "--repair", "none",
               "--max-drop", "2", "--no-bench", "-o", str(tmp_path / "out.onnx")])
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    assert "rotated input vs input: PASS" in printed.out and "oracle PASS" in printed.out
    assert "sliced vs ids mapped: PASS" in printed.out
    # the plan alone replays both steps: the vocabulary was dropped when the rotation's replay
    # rebuilt the plan being replayed, and the replay read the old ids, silently
    assert main(["prune", path, "--plan", str(tmp_path / "out.plan.json"), "--no-bench",
                 "-o", str(tmp_path / "again.onnx")]) == 0
    assert "sliced vs ids mapped: PASS" in capsys.readouterr().out
    assert json.loads((tmp_path / "again.vocab.json").read_text())["kept"] == \
        json.loads((tmp_path / "out.vocab.json").read_text())["kept"]
    import onnx

    dims = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in onnx.load(str(tmp_path / "again.onnx")).graph.output]
    assert dims == [[d.dim_value for d in o.type.tensor_type.shape.dim]
                    for o in onnx.load(str(tmp_path / "out.onnx")).graph.output]


def test_compile_ships_the_id_map(hf_exported, tmp_path, capsys):
    """compile --keep-tokens: vocab.json in the folder, the vocabulary check in the report;
    with --quantize int8 (whose calibration feeds the input's ids) refused before any work."""
    from graphprune.cli.main import main

    path = hf_exported("llama_lm", False)
    (tmp_path / "ids.json").write_text(json.dumps(KEEP))
    out = tmp_path / "c"
    rc = main(["compile", path, "--keep-tokens", str(tmp_path / "ids.json"), "--target", "x86", "-o", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    assert json.loads((out / "vocab.json").read_text())["kept"] == KEEP
    report = json.loads((out / "report.json").read_text())
    assert report["checks"]["vocab"]["ok"] and "97 -> 24 tokens" in report["checks"]["vocab"]["summary"]
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).integers(0, 97, (8, 8)).astype(np.int64))
    rc = main(["compile", path, "--keep-tokens", str(tmp_path / "ids.json"), "--quantize", "int8", "--calib",
               str(tmp_path / "calib.npz"), "-o", str(tmp_path / "q")])
    printed = capsys.readouterr()
    assert rc == 2 and "not supported yet" in printed.err
    assert not (tmp_path / "q").exists()


def test_a_layer_as_wide_as_the_vocabulary_is_not_taken_for_the_head(tmp_path):
    """An FFN whose width equals the vocabulary (V columns) was taken for an output head, and
    the model refused as 'logits read by Sigmoid'. A head is the last weighted layer before an
    output; the FFN is left alone and the real head is sliced, exactly."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    V, d = 11, 4
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("table", (V, d)), ("up", (d, V)), ("down", (V, d)), ("head", (d, V)))]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("MatMul", ["e", "up"], ["u"], name="gate_proj"),
             helper.make_node("Sigmoid", ["u"], ["s"]), helper.make_node("Mul", ["u", "s"], ["a"]),
             helper.make_node("MatMul", ["a", "down"], ["h"]), helper.make_node("Add", ["e", "h"], ["r"]),
             helper.make_node("MatMul", ["r", "head"], ["logits"], name="lm_head")]
    g = helper.make_graph(nodes, "lm", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "n"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "n", V])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "lm.onnx"))
    model = load_onnx(str(tmp_path / "lm.onnx"))
    record = slice_vocab(model, [1, 4, 7])
    assert model.graph.initializers["head"].shape[1] == 3 and model.graph.initializers["up"].shape[1] == V
    assert _check(str(tmp_path / "lm.onnx"), model, record).ok


def _gemm_lm(path, V=11, d=4):
    """ids[n] -> Gather(table) -> Gemm(W[V, d], transB=1, bias[V]) -> Reshape [1, -1, V] -> + c[V]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((V, d)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((V, d)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(V).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1, -1, V], dtype=np.int64), "target"),
             numpy_helper.from_array(rng.standard_normal(V).astype(np.float32), "c")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"], axis=0),
             helper.make_node("Gemm", ["h", "w", "b"], ["z"], transB=1, name="head"),
             helper.make_node("Reshape", ["z", "target"], ["z3"]),
             helper.make_node("Add", ["z3", "c"], ["logits"])]
    g = helper.make_graph(nodes, "gemm_lm", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "n", V])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return str(path)


def test_a_gemm_head_with_biases_and_a_reshape(tmp_path):
    """Gemm (transB) with its bias, a Reshape whose target spells V (rewritten), an Add of a
    constant over V: all follow the kept ids; exact, and fails with the bias left whole."""
    path = _gemm_lm(tmp_path / "g.onnx")
    model, rec = _sliced(path, [0, 4, 7, 10])
    assert tuple(model.graph.initializers["w"].shape) == (4, 4)
    assert tuple(model.graph.initializers["b"].shape) == (4,) and tuple(model.graph.initializers["c"].shape) == (4,)
    res = _check(path, model, rec)
    assert res.ok, res.summary()
    c = model.graph.initializers["c"]
    set_const_array(c, const_array(c)[::-1].copy())
    assert not _check(path, model, rec).ok


def test_an_output_over_the_vocabulary_without_a_head_is_refused(tmp_path):
    """Logits made by an op slice_vocab does not follow (a Gemm with transA) would keep the
    old vocabulary while the ids are renumbered: refused, naming the output."""
    import onnx
    from onnx import helper

    path = _gemm_lm(tmp_path / "g.onnx")
    m = onnx.load(path)
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    t = helper.make_node("Transpose", ["h"], ["hT"], perm=[1, 0])
    gemm.input[0] = "hT"
    gemm.attribute.append(helper.make_attribute("transA", 1))
    m.graph.node.insert(1, t)
    onnx.save(m, str(tmp_path / "t.onnx"))
    with pytest.raises(NotAVocabulary, match="output 'logits' has the vocabulary size 11"):
        find_vocab(load_onnx(str(tmp_path / "t.onnx")))


def test_a_large_model_through_files(hf_exported, tmp_path, capsys, monkeypatch):
    """Above BIG_MODEL_BYTES the pruned model is staged on disk and the oracle works from
    files: the vocabulary step and its oracle work there too, and the pair checks."""
    from graphprune.cli.main import main
    from graphprune.ir import serialize

    monkeypatch.setattr(serialize, "BIG_MODEL_BYTES", 0)
    path = hf_exported("llama_lm", True)
    out = tmp_path / "out.onnx"
    rc, stdout, stderr = _prune_cli(capsys, path, tmp_path, "--ratio", "0.3", "--no-bench")
    assert rc == 0, stdout + stderr
    assert "oracle PASS" in stdout and "sliced vs ids mapped: PASS" in stdout
    assert load_onnx(str(out)).graph.outputs[0].shape[-1] == 24
    rc = main(["check", path, str(out), "--plan", str(tmp_path / "out.plan.json")])
    printed = capsys.readouterr()
    assert rc == 0 and "oracle PASS" in printed.out, printed.out + printed.err


def test_with_calibration_the_search_scores_candidates_before_the_vocabulary(hf_exported, tmp_path, capsys):
    """--calib makes the defaults search candidates; each is scored against the dense model
    on the input's ids, so none is vocabulary-sliced; the chosen one is, once, at the end."""
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).integers(0, 97, (16, 8)).astype(np.int64))
    rc, stdout, stderr = _prune_cli(capsys, hf_exported("llama_lm", False), tmp_path, "--calib",
                                    tmp_path / "calib.npz", "--max-drop", "2", "--no-bench")
    assert rc == 0, stdout + stderr
    assert "search: 3 candidates" in stdout
    assert stdout.count("sliced vs ids mapped: PASS") == 1
    assert load_onnx(str(tmp_path / "out.onnx")).graph.outputs[0].shape[-1] == 24


def test_with_sparsity_refused_before_any_work(hf_exported, tmp_path, capsys):
    """The sparsity record (and its block formats) would describe the weights before the
    dropped tokens' columns go: refused, with the two-run way in the hint."""
    rc, _, stderr = _prune_cli(capsys, hf_exported("llama_lm", False), tmp_path, "--sparsity", "0.5", "--no-bench")
    assert rc == 2 and "--keep-tokens with sparsity is not supported yet" in stderr
    assert "--ratio 0 --sparsity" in stderr and not list(tmp_path.glob("out*"))


def test_a_block_quantized_int4_head_loses_whole_rows(hf_exported, tmp_path):
    """An int4 LLM as ONNX Runtime's MatMulNBits quantizer writes it (every linear layer a
    MatMulNBits: weight [N, blocks, bytes], scales and packed zero points one row per
    output): the head keeps the kept tokens' rows and N follows; exact, and rows of scales
    taken in another order FAIL."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(hf_exported("llama_lm", False)),
                             algo_config=DefaultWeightOnlyQuantConfig(block_size=16, is_symmetric=False))
    q.process()
    path = str(tmp_path / "int4.onnx")
    q.model.save_model_to_file(path, use_external_data_format=False)
    model, rec = _sliced(path)
    head = next(n for n in model.graph if n.name == rec["heads"][0])
    assert head.op_type == "MatMulNBits" and head.attributes["N"].value == 24
    assert [tuple(v.shape)[0] for v in head.inputs[1:4]] == [24, 24, 24]
    res = _check(path, model, rec)
    assert res.ok and res.worst_relative == 0.0, res.summary()
    scales = head.inputs[2]
    set_const_array(scales, np.roll(const_array(scales), 1, axis=0))
    assert not _check(path, model, rec).ok


def test_inspect_shows_the_vocabulary(hf_exported, tmp_path, capsys):
    """inspect says what --keep-tokens would slice, or why it would be refused."""
    from onnx import TensorProto, helper

    from graphprune.cli.main import main

    assert main(["inspect", hf_exported("gpt2_lm", True)]) == 0
    assert "vocabulary: 97 tokens of input 'x'" in capsys.readouterr().out

    def pad_mask(m):
        m.graph.initializer.append(helper.make_tensor("pad", TensorProto.INT64, [], [0]))
        m.graph.node.append(helper.make_node("Equal", ["x", "pad"], ["is_pad"], name="pad_mask"))
        m.graph.output.append(helper.make_tensor_value_info("is_pad", TensorProto.BOOL, None))

    path = _edit(hf_exported("llama_lm", False), tmp_path / "p.onnx", pad_mask)
    assert main(["--json", "inspect", path]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "pad_mask" in data["vocab"]["refused"]


def test_a_table_row_read_by_a_fixed_index_is_refused(tmp_path):
    """A Gather of the token table at a constant row (a fixed token's embedding) would read
    another token once the rows are renumbered: refused, naming it."""
    import onnx
    from onnx import TensorProto, helper

    path = _gemm_lm(tmp_path / "g.onnx")
    m = onnx.load(path)
    m.graph.initializer.append(helper.make_tensor("row", TensorProto.INT64, [1], [5]))
    m.graph.node.append(helper.make_node("Gather", ["table", "row"], ["bos"], axis=0, name="bos_row"))
    m.graph.output.append(helper.make_tensor_value_info("bos", TensorProto.FLOAT, None))
    onnx.save(m, tmp_path / "bos.onnx")
    with pytest.raises(NotAVocabulary, match="bos_row"):
        find_vocab(load_onnx(str(tmp_path / "bos.onnx")))


def test_dry_run_shows_the_vocabulary_and_writes_nothing(hf_exported, tmp_path, capsys):
    rc, out, _ = _prune_cli(capsys, hf_exported("llama_lm", False), tmp_path, "--dry-run")
    assert rc == 0 and "vocabulary (--keep-tokens): 97 -> 24 tokens" in out and "dry run: nothing written" in out
    assert not list(tmp_path.glob("out*"))
