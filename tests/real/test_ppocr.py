"""The three PP-OCR models shipped in `rapidocr-onnxruntime` (every weight a Constant node):
prune at ratio 0.3, pass the oracle on text-like images and random inputs, run in ORT."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphprune as gp
from graphprune.analysis.cost import model_cost
from graphprune.runtime import oracle, ort

pytestmark = pytest.mark.real

_spec = importlib.util.find_spec("rapidocr_onnxruntime")
MODELS = os.path.join(os.path.dirname(_spec.origin), "models") if _spec else None
if MODELS is None:
    pytest.skip("rapidocr-onnxruntime not installed (pip install --no-deps rapidocr-onnxruntime)",
                allow_module_level=True)


def text_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Dark glyph-like blobs on a white line, normalised as PP-OCR expects."""
    rng = np.random.default_rng(seed)
    img = np.ones((h, w), np.float32)
    top = 6
    while top + 16 < h:
        x0 = 4
        while x0 < w - 16:
            gw = int(rng.integers(8, 14))
            img[top:top + 16, x0:x0 + gw][rng.random((16, gw)) < 0.35] = 0
            x0 += gw + 3
        top += 28
    return np.repeat(((img - 0.5) / 0.5)[None, None], 3, axis=1).astype(np.float32)


CASES = {
    "ch_PP-OCRv4_det_infer.onnx": (64, 160),
    "ch_PP-OCRv4_rec_infer.onnx": (48, 160),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (48, 192),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ppocr_prunes_at_ratio_03(name, tmp_path):
    path = os.path.join(MODELS, name)
    raw = onnx.load(path)
    assert any(n.op_type == "Constant" for n in raw.graph.node) and not raw.graph.initializer
    model = gp.load(path)
    before = model_cost(model)
    res = gp.prune(model, 0.3)
    after = model_cost(model)
    assert res.plan.tensors and after.params < 0.8 * before.params
    out = tmp_path / "small.onnx"
    gp.save(res.model, out)
    res.plan.save(tmp_path / "small.plan.json")
    onnx.checker.check_model(str(out), full_check=True)
    h, w = CASES[name]
    feeds = [{"x": text_like(h, w, s)} for s in range(2)]
    original = ir.load(path)
    r = oracle.check(original, gp.load(out, fold=False), res.plan, inputs=feeds, n_random=1)
    assert r.ok, r.diffs
    # the text-like inputs make the outputs carry signal (not a saturated, trivially equal output)
    y = ort.session(ir.load(path)).run(None, feeds[0])[0]
    assert float(np.std(y)) > 1e-3


@pytest.mark.parametrize("name", sorted(CASES))
def test_ppocr_oracle_fails_a_pruned_model_against_an_empty_plan(name):
    """Issue 12: at its old 32x32 random inputs the det Sigmoid is <= 3e-8 everywhere, so any
    model passed. At the representative shape, judged on the logits, the pair must fail."""
    from graphprune.plan import Plan

    path = os.path.join(MODELS, name)
    res = gp.prune(gp.load(path), 0.3)
    r = oracle.check(ir.load(path), res.model, Plan(tensors=[], groups=[]), n_random=1)
    assert not r.ok and r.refused is None, r.summary()
    assert any(not d.ok for d in r.diffs)


def test_ppocr_rec_dynamic_width_keeps_conv_groups():
    """At dynamic height/width shape inference loses every rank after the neck's run-time
    Reshape; the convs' weights fix their channels, so as many groups are prunable as at a
    static 48x320 input, and the pruned model passes the oracle at several widths."""
    path = os.path.join(MODELS, "ch_PP-OCRv4_rec_infer.onnx")
    static = gp.analyze(gp.load(path, input_shapes={"x": [1, 3, 48, 320]}))
    model = gp.load(path)
    dynamic = gp.analyze(model)
    assert len(dynamic.prunable_groups) == len(static.prunable_groups) == 24
    res = gp.prune(model, 0.3, round_to=1)  # every group pruned, whatever the host's lanes
    assert len(res.plan.groups) == 24
    feeds = [{"x": text_like(48, w, s)} for s, w in ((0, 97), (1, 320))]
    r = oracle.check(ir.load(path), res.model, res.plan, inputs=feeds, n_random=0)
    assert r.ok, r.diffs


def _per_node_macs(path: str, shape: tuple[int, ...]) -> int:
    """An independent count: ONNX Runtime runs the model at `shape` with every Conv / MatMul /
    Gemm input and output fetched, and their MACs are summed by formula."""
    proto = onnx.load(path)
    nodes = [n for n in proto.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    have = {o.name for o in proto.graph.output}
    names = list(dict.fromkeys(t for n in nodes for t in (n.input[0], n.input[1], n.output[0])))
    for t in names:
        if t not in have:
            proto.graph.output.append(onnx.ValueInfoProto(name=t))
    vals = ort.session(proto.SerializeToString()).run(names, {"x": np.zeros(shape, np.float32)})
    shp = {k: v.shape for k, v in zip(names, vals, strict=True)}
    total = 0
    for n in nodes:
        y, a, b = shp[n.output[0]], shp[n.input[0]], shp[n.input[1]]
        if n.op_type == "Conv":  # output volume × weights per output channel
            total += int(np.prod(y)) * int(np.prod(b[1:]))
        elif n.op_type == "MatMul":
            total += int(np.prod(y)) * int(a[-1])
        else:
            trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
            total += int(np.prod(y)) * int(a[0] if trans_a else a[1])
    return total


def test_rec_macs_at_the_input_shape_match_a_per_node_count(tmp_path, capsys):
    """Issue 13 §1 acceptance: the rec model's MACs at 1×3×48×320 (not with its dynamic H and
    W counted as 1) within 2% of a per-node count at that shape, in inspect and prune."""
    import json

    from graphprune.cli.main import main

    path = os.path.join(MODELS, "ch_PP-OCRv4_rec_infer.onnx")
    ref = _per_node_macs(path, (1, 3, 48, 320))
    assert ref > 5e8
    assert main(["inspect", path, "--input-shape", "x:1,3,48,320", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert abs(data["macs"] - ref) <= 0.02 * ref and abs(sum(r["macs"] for r in data["layers"]) - ref) <= 0.02 * ref
    out = tmp_path / "rec.onnx"
    from graphprune.workflow import PruneOptions, run_prune

    res = run_prune(path, PruneOptions(ratio=0.3, input_shapes={"x": [1, 3, 48, 320]}, check=False), out=out)
    assert res.shapes.sources == {"x": "--input-shape"}
    assert abs(res.before.macs - ref) <= 0.02 * ref
    assert abs(res.after.macs - _per_node_macs(str(out), (1, 3, 48, 320))) <= 0.02 * res.after.macs
