"""Tiny random-init transformers from `transformers` configs, exported with both torch
exporters with dynamic batch and sequence: heads (GQA-consistent) and FFN channels prune
exactly, and the pruned models keep their dynamic axes."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import graphprune as gp  # noqa: E402
from helpers import prune_and_check  # noqa: E402
from zoo.hf_models import HF_ZOO, export_hf  # noqa: E402

pytestmark = pytest.mark.torch

# (head groups, FFN groups) expected per model: 2 layers each
EXPECTED = {"bert": (2, 2), "gpt2": (2, 2), "llama": (2, 2), "qwen2": (2, 2), "mistral": (2, 2), "vit": (2, 2)}
HEADS = {"bert": 4, "gpt2": 4, "llama": 2, "qwen2": 2, "mistral": 4, "vit": 4}  # heads; GQA: KV groups; MQA: query heads


@pytest.fixture(scope="module")
def exported(hf_exported):
    return hf_exported  # conftest: one export per model and exporter per session


def _kinds(dg):
    heads = [g for g in dg.prunable_groups if g.num_atoms <= 4]
    ffn = [g for g in dg.prunable_groups if g.num_atoms >= 32]
    return heads, ffn


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(HF_ZOO))
def test_transformer_heads_and_ffn(name, dynamo, exported, tmp_path):
    path = exported(name, dynamo)
    proto = onnx.load(path)
    dg = gp.analyze(gp.load(path))
    heads, ffn = _kinds(dg)
    assert (len(heads), len(ffn)) == EXPECTED[name], [(g.name, g.num_atoms) for g in dg.prunable_groups]
    assert all(g.num_atoms == HEADS[name] for g in heads)
    for seed in range(2):
        pruned, plan, _ = prune_and_check(proto, seed=seed, min_groups=1)
    # dynamic batch and sequence survive: run at two other sizes
    gp.save(pruned, tmp_path / "p.onnx")
    s = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    dims = [d for d in s.get_inputs()[0].shape]
    assert isinstance(dims[0], str)
    for b, t in ((1, 5), (3, 11)):
        shape = [b, t] if len(dims) == 2 else [b, 3, 16, 16]
        x = np.random.default_rng(0).integers(0, 97, shape) if len(dims) == 2 else \
            np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        y = s.run(None, {s.get_inputs()[0].name: x})[0]
        assert y.shape[0] == b and np.isfinite(y).all()


SDPA_OPSETS = [(name, 20) for name in sorted(HF_ZOO)] + [(name, 23) for name in ("bert", "gpt2", "vit")]


@pytest.mark.parametrize("name,opset", SDPA_OPSETS)
def test_sdpa_exports_prune_their_heads(name, opset, tmp_path):
    """transformers' default attention (scaled_dot_product_attention) through the dynamo
    exporter: at opset 20 (torch's default) its key transpose is written as Reshape ->
    Transpose -> Reshape through a batch-merged axis, at 23 as one Attention node. Both froze
    every head ("Reshape: shapes cannot be aligned", "no channel rule for Attention"); the
    groups are now those of the eager export, and prune exactly. (LLaMA, Qwen2 and Mistral
    at 23 write RotaryEmbedding, which ONNX Runtime 1.32 fails to run from this exporter.)"""
    path = export_hf(name, str(tmp_path / f"{name}.onnx"), True, opset=opset, attention="sdpa")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ("Attention" in ops) == (opset >= 23)
    dg = gp.analyze(gp.load(path))
    heads, ffn = _kinds(dg)
    assert (len(heads), len(ffn)) == EXPECTED[name], [(g.name, g.num_atoms) for g in dg.prunable_groups]
    assert all(g.num_atoms == HEADS[name] for g in heads)
    prune_and_check(onnx.load(path), seed=0, min_groups=1)


@pytest.mark.parametrize("opset", [11, 13])
def test_gpt2_below_opset_14_prunes_as_at_17(opset, tmp_path):
    """Below opset 14 onnx infers a Reshape only from a constant target: GPT-2's
    `input_ids.view(-1, seq)` left every value after the embedding without a shape (0 groups,
    MACs of the first layer only), and each layer's `view(-1, x.size(-1))` resolves one
    normalisation round later (4 rounds left the later layers' heads frozen)."""
    path = export_hf("gpt2", str(tmp_path / "g.onnx"), False, opset=opset)
    dg = gp.analyze(gp.load(path))
    heads, ffn = _kinds(dg)
    assert (len(heads), len(ffn)) == EXPECTED["gpt2"], [(g.name, g.num_atoms) for g in dg.prunable_groups]
    prune_and_check(onnx.load(path), seed=0, min_groups=1)


def test_bert_default_init_prunes_heads_with_round_to(tmp_path):
    """`prune --round-to 4` on BERT (transformers' default init): 8-channel heads are
    already a multiple of 4 channels, so heads are removed as without the flag (the
    rounding counted heads, and 3 of 4 heads rounded back to 4: only FFN groups changed)."""
    from graphprune.cli.main import main

    src = export_hf("bert", str(tmp_path / "bert.onnx"), dynamo=False, randomized=False)
    dg = gp.analyze(gp.load(src))
    heads = {g.name for g in dg.prunable_groups if g.num_atoms == HEADS["bert"]}
    assert len(heads) == 2, [(g.name, g.num_atoms) for g in dg.prunable_groups]
    for extra in (["--round-to", "1"], ["--round-to", "4"]):
        out = tmp_path / f"p{extra[-1]}.onnx"
        assert main(["prune", src, "-o", str(out), "--ratio", "0.3", "--no-bench", *extra]) == 0
        plan = json.loads(out.with_suffix(".plan.json").read_text())
        pruned_heads = {g["name"]: len(g["removed_atoms"]) for g in plan["groups"] if g["name"] in heads}
        assert pruned_heads == {h: 1 for h in heads}, (extra, pruned_heads)


def test_compile_removes_heads_of_default_init_bert(tmp_path):
    """`compile --target x86-avx2` rounds widths to the target's 8 float lanes; with
    transformers' default init (one all-zero bias shared by every layer) and that rounding,
    compile used to keep every head (0.902 of the params against 0.785 from prune). (The
    named AVX2 target, not `x86`: on an AVX-512 host `x86` has 16 lanes, and 16 does not
    divide what is left of a 32-wide model after one 8-wide head.)"""
    from graphprune.cli.main import main

    src = export_hf("bert", str(tmp_path / "bert.onnx"), dynamo=False, randomized=False)
    dg = gp.analyze(gp.load(src))
    assert len(dg.prunable_groups) >= 4, [(g.name, g.num_atoms) for g in dg.prunable_groups]
    heads = {g.name for g in dg.prunable_groups if g.num_atoms == HEADS["bert"]}
    out = tmp_path / "out"
    assert main(["compile", src, "--target", "x86-avx2", "--backend", "onnxruntime", "-o", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    removed = {g["name"]: len(g["removed_atoms"]) for g in plan["groups"] if g["name"] in heads}
    assert removed and all(n >= 1 for n in removed.values()), removed
