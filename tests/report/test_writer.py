"""report.md: the sparsity record and the per-layer sparse-kernel choice are shown."""
from graphprune.report.writer import markdown


def _report(**extra):
    return {"input": {"path": "m.onnx"}, "target": {"name": "x86", "description": "this machine"},
            "command": ["graphprune", "compile", "m.onnx"], "backend": {"chosen": "tvm", "reason": "faster"},
            "before": {}, "after": {}, **extra}


def test_markdown_lists_sparsity_and_kernel_choices():
    rep = _report(sparsity_tensors={"fc.weight": {"format": "block", "block": [8, 1], "sparsity": 0.9},
                                    "fc2.weight": {"format": "n:m", "n": 2, "m": 4, "sparsity": 0.5}})
    rep["backend"]["results"] = {"tvm": {"sparse_kernels": [
        {"layer": "matmul_3", "shape": [128, 768, 3072], "sparsity": 0.9, "dense_ms": 10.0,
         "candidates": {"bsr8x1": 1.25, "csr": 2.5}, "chosen": "bsr8x1", "speedup": 8.0, "measured": True},
        {"layer": "conv2d_5", "shape": [], "sparsity": 0.9, "candidates": {}, "chosen": "dense", "speedup": 1.0}]}}
    md = markdown(rep)
    assert "| fc.weight | block 8x1 | 90.0% |" in md
    assert "| fc2.weight | 2:4 | 50.0% |" in md
    assert "| matmul_3 | [128, 768, 3072] | 0.9 | 10 | bsr8x1 1.25, csr 2.5 | bsr8x1 | 8 | measured |" in md
    assert "| conv2d_5 | [] | 0.9 |  |  | dense | 1 | no sparse kernel for this layer |" in md


def test_markdown_without_sparsity_has_no_such_sections():
    md = markdown(_report())
    assert "Sparsity" not in md and "Sparse kernels" not in md
