"""Sparse linear kernels inside compiled TVM modules vs ONNX Runtime, the measured choice
(with injected timings, never wall clock), and the ARM cross build.

Every kernel is forced by a fake `measure` that makes one candidate fastest, so each
format is checked numerically whatever this machine's timings are.
"""
from __future__ import annotations

import shutil
import types

import numpy as np
import pytest

pytest.importorskip("tvm")

from graphprune.backends.tvm import TvmBackend, adapter  # noqa: E402
from graphprune.backends.tvm.kernels import linear, rewrite  # noqa: E402

ok, why = adapter.available()
if not ok:
    pytest.skip(why, allow_module_level=True)

ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def make_model(path, kind, x_shape, K, N, *, bias=True, relu=False, sparsity=0.8, block=None,
               nm=None, seed=0, zero_rows=True):
    """One linear layer: Gemm(transB=1) or MatMul([K, N]) (+ Add bias) (+ Relu)."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32)            # [N, K]
    if block:
        r, c = block
        keep = rng.random((-(-N // r), -(-K // c))) > sparsity
        w *= np.kron(keep, np.ones((r, c)))[:N, :K].astype(np.float32)
    elif nm:
        n, m = nm
        for row in w:
            for g in range(0, K, m):
                seg = row[g:g + m]
                seg[rng.permutation(len(seg))[n:]] = 0
    else:
        w[rng.random(w.shape) < sparsity] = 0
    if zero_rows and N > 2:
        w[1] = 0                                                  # an all-zero row / block
    inits = [numpy_helper.from_array(w if kind == "gemm" else np.ascontiguousarray(w.T), "W")]
    b = rng.standard_normal(N).astype(np.float32)
    nodes, cur = [], "x"
    if kind == "gemm":
        ins = ["x", "W"] + (["B"] if bias else [])
        nodes.append(helper.make_node("Gemm", ins, ["h"], transB=1))
    else:
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["h0"]))
        if bias:
            nodes.append(helper.make_node("Add", ["h0", "B"], ["h"]))
        else:
            nodes[-1].output[0] = "h"
    if bias:
        inits.append(numpy_helper.from_array(b, "B"))
    cur = "h"
    if relu:
        nodes.append(helper.make_node("Relu", [cur], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [cur], ["y"]))
    out_shape = [*x_shape[:-1], N]
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", 1, list(x_shape))],
                          [helper.make_tensor_value_info("y", 1, out_shape)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path, w


def ort_out(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def favour(name):
    """A fake measure: `name` takes 1 ms, dense 10 ms, every other candidate 20 ms."""
    seen = []

    def measure(kind, layer, mod):
        seen.append(kind)
        return 10.0 if kind == "dense" else (1.0 if kind == name else 20.0)
    measure.seen = seen
    return measure


def run_host(mod, x):
    import tvm
    from tvm import relax

    exe = adapter.build(mod, adapter.host_target())
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def close(a, b):
    return a.shape == b.shape and float(np.abs(a - b).max()) <= 1e-4 * max(1.0, float(np.abs(b).max()))


CASES = [
    # (id, kind, x_shape, K, N, bias, relu, structure kw, forced candidate)
    ("csr-gemm-bias", "gemm", (16, 40), 40, 24, True, False, {}, "csr"),
    ("csr-M1-ragged", "gemm", (1, 37), 37, 19, False, False, {}, "csr"),
    ("csr-matmul-rank3", "matmul", (2, 3, 33), 33, 17, True, False, {}, "csr"),
    ("bsr4x4-ragged", "gemm", (10, 38), 38, 26, True, False, {"block": (4, 4)}, "bsr4x4"),
    ("bsr8x1-matmul-relu", "matmul", (20, 32), 32, 45, True, True, {"block": (8, 1)}, "bsr8x1"),
    ("bsr1x4-nobias", "matmul", (3, 5, 48), 48, 16, False, False, {"block": (1, 4)}, "bsr1x4"),
    ("nm2:4", "gemm", (12, 32), 32, 20, True, False, {"nm": (2, 4)}, "nm2:4"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_onnxruntime(tmp_path, case):
    _, kind, x_shape, K, N, bias, relu, skw, forced = case
    sp = 0.8 if "nm" not in skw else 0.5
    path, w = make_model(tmp_path / "m.onnx", kind, x_shape, K, N, bias=bias, relu=relu,
                         sparsity=sp, **skw)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    mod = adapter.import_onnx(path)
    measure = favour(forced)
    new, table, notes = rewrite.rewrite_sparse(mod, measure=measure, min_sparsity=0.4, cores=2)
    assert len(table) == 1, (table, notes)
    row = table[0]
    assert forced in row["candidates"], row          # the generator proposed the format
    assert row["chosen"] == forced and row["speedup"] == 10.0
    assert row["fused"] == (["bias"] if bias else []) + (["relu"] if relu else [])
    text = new["main"].script()
    assert "call_tir" in text and "matmul" not in text and "permute_dims" not in text
    assert close(run_host(new, x), ort_out(path, x))


def test_slower_candidates_keep_the_dense_layer(tmp_path):
    path, _ = make_model(tmp_path / "m.onnx", "gemm", (8, 32), 32, 16, sparsity=0.9)
    mod = adapter.import_onnx(path)
    new, table, _ = rewrite.rewrite_sparse(
        mod, measure=lambda kind, layer, m: 1.0 if kind == "dense" else 2.0, min_sparsity=0.5)
    assert table[0]["chosen"] == "dense" and table[0]["candidates"]
    assert table[0]["dense_ms"] == 1.0 and table[0]["speedup"] == 1.0
    assert "call_tir" not in new["main"].script()
    x = np.random.default_rng(2).standard_normal((8, 32)).astype(np.float32)
    assert close(run_host(new, x), ort_out(path, x))


def test_dense_weights_are_not_touched(tmp_path):
    path, _ = make_model(tmp_path / "m.onnx", "gemm", (8, 32), 32, 16, sparsity=0.0, zero_rows=False)
    calls = []
    new, table, _ = rewrite.rewrite_sparse(adapter.import_onnx(path),
                                           measure=lambda *a: calls.append(a) or 1.0)
    assert table == [] and calls == []


@pytest.mark.parametrize("row_block,k_block", [(4, 8), (3, 5), (64, 384)])
def test_csr_tiles_match_onnxruntime(tmp_path, row_block, k_block):
    """Several row and column tiles, ragged edges, segment lengths not a multiple of the
    unroll (plus empty segments), relu: the tiled CSR kernel against ORT."""
    path, w = make_model(tmp_path / "m.onnx", "gemm", (13, 37), 37, 19, relu=True, sparsity=0.7)
    assert w.shape == (19, 37)
    layer = rewrite._find_layers(adapter.import_onnx(path)["main"], 0.0, lambda s: None)[0]
    cand = linear.csr_candidate(w, layer.bias, 13, cores=2, relu=True, row_block=row_block,
                                k_block=k_block)
    assert cand.info["row_block"] == row_block and cand.info["k_block"] == k_block
    x = np.random.default_rng(4).standard_normal((13, 37)).astype(np.float32)
    assert close(run_host(rewrite.layer_module(layer, cand), x), ort_out(path, x))


def test_all_zero_weight(tmp_path):
    path, w = make_model(tmp_path / "m.onnx", "gemm", (4, 16), 16, 8, sparsity=1.0)
    assert not w.any()
    new, table, _ = rewrite.rewrite_sparse(adapter.import_onnx(path), measure=favour("csr"))
    assert table[0]["chosen"] == "csr"
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    assert close(run_host(new, x), ort_out(path, x))


def test_heuristic_without_a_device(tmp_path):
    path, _ = make_model(tmp_path / "m.onnx", "gemm", (16, 32), 32, 32, sparsity=0.9, block=(4, 4))
    new, table, notes = rewrite.rewrite_sparse(adapter.import_onnx(path), measure=None)
    assert table[0]["measured"] is False and table[0]["chosen"].startswith("bsr")
    assert "ort_dense_ms" not in table[0]  # nothing measured on a device: no comparison either
    assert any("without measuring" in n for n in notes)


def test_measured_choice_on_this_machine(tmp_path):
    """The real timer runs (values not asserted: wall clock); the table is well formed."""
    path, _ = make_model(tmp_path / "m.onnx", "gemm", (32, 64), 64, 64, sparsity=0.95, block=(8, 1))
    mod, table, _ = adapter.sparse_rewrite(adapter.import_onnx(path), adapter.host_target(),
                                           repeats=3)
    row = table[0]
    assert row["dense_ms"] > 0 and row["candidates"] and all(v > 0 for v in row["candidates"].values())
    assert row["chosen"] in ("dense", *row["candidates"])
    # and against ONNX Runtime's dense kernel for the same layer, on this host (issue 13 §3)
    chosen_ms = row["candidates"].get(row["chosen"], row["dense_ms"])
    # the table rounds times to 4 decimals (ms) and ratios to 3: on a fast host a 0.007 ms
    # layer is ±0.7% from rounding alone, so the ratio is checked within what rounding allows
    o, c, h = row["ort_dense_ms"], chosen_ms, 5e-5
    assert o > 0 and (o - h) / (c + h) - 5e-4 <= row["speedup_vs_ort"] <= (o + h) / max(c - h, 1e-9) + 5e-4
    x = np.random.default_rng(4).standard_normal((32, 64)).astype(np.float32)
    assert close(run_host(mod, x), ort_out(path, x))


def target(name, tvm, *, host, cross=None):
    return types.SimpleNamespace(name=name, tvm=tvm, cross_compiler=cross, host=host)


def test_backend_reports_sparse_kernels(tmp_path):
    path, _ = make_model(tmp_path / "m.onnx", "matmul", (2, 8, 64), 64, 96, sparsity=0.9,
                         block=(8, 1))
    res = TvmBackend().compile(path, target("host", adapter.host_target(), host=True), tmp_path / "out",
                               trials=0, time_budget_s=None, db_root=tmp_path / "db")
    assert len(res["sparse_kernels"]) == 1 and res["sparse_kernels"][0]["measured"]
    # all compute went to our own kernel: (untuned, trials=0) only the reshapes around it are left
    assert res["sparse_kernels"][0]["chosen"] != "dense"
    assert res["coverage"]["missing"] and all(k.startswith("reshape") for k in res["coverage"]["missing"])
    x = np.random.default_rng(5).standard_normal((2, 8, 64)).astype(np.float32)
    got = adapter.load_and_run(tmp_path / "out" / res["library"], {"x": x})[0]
    assert close(got, ort_out(path, x))


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no aarch64 cross compiler")
def test_arm_cross_build_contains_the_kernel(tmp_path):
    path, _ = make_model(tmp_path / "m.onnx", "gemm", (16, 64), 64, 64, sparsity=0.9, block=(4, 4))
    mod, table, notes = adapter.sparse_rewrite(adapter.import_onnx(path), ARM)
    assert table[0]["measured"] is False and table[0]["chosen"] == "bsr4x4"
    lib = tmp_path / "arm.so"
    adapter.export(adapter.build(mod, ARM), lib, "aarch64-linux-gnu-gcc")
    assert adapter.elf_machine(lib) == "AArch64"
    import subprocess

    syms = subprocess.run(["aarch64-linux-gnu-nm", "-D", str(lib)], capture_output=True, text=True).stdout \
        if shutil.which("aarch64-linux-gnu-nm") else lib.read_bytes().decode("latin1")
    assert "gp_sparse_bsr4x4" in syms
    if adapter.qemu_available()[0]:
        x = np.random.default_rng(6).standard_normal((16, 64)).astype(np.float32)
        try:
            got = adapter.qemu_run(lib, [x])[0]
        except Exception as e:  # noqa: BLE001 - the aarch64 runtime may not be cached
            pytest.skip(f"qemu run unavailable: {e}")
        assert close(got, ort_out(path, x))
