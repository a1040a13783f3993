"""`compile` with the ONNX Runtime backend: folder layout, report, numerics, choices."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from graphprune.cli.main import main
from graphprune.workflow.compile import CompileOptions, compile_model


def test_compile_host_ort(samples_dir, tmp_path, capsys):
    out = tmp_path / "x86"
    rep = compile_model(samples_dir / "tiny_mobilenet.onnx", CompileOptions(target="x86", out=str(out),
                                                                            ort_format=True), log_fn=lambda *a: None)
    assert rep["backend"]["chosen"] == "onnxruntime" and "tune" in rep["backend"]["reason"]
    for f in ("model.pruned.onnx", "plan.json", "report.json", "report.md", "onnxruntime/model.onnx",
              "onnxruntime/model.ort", "onnxruntime/session.json", "onnxruntime/run_model.py"):
        assert (out / f).exists(), f
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "graphprune.report/1"
    assert report["checks"]["oracle"]["ok"] and report["checks"]["numerics_onnxruntime"]["ok"]
    assert report["after"]["macs"] < report["before"]["macs"] and report["after"]["latency_ms"] > 0
    assert report["config"]["round_to"] == report["target"]["simd_lanes"]
    assert {"onnx", "onnxruntime"} <= set(report["environment"]["packages"])
    assert all(len(f["sha256"]) == 64 for f in report["outputs"])
    cfg = json.loads((out / "onnxruntime" / "session.json").read_text())
    assert cfg["measured"]["median_ms"] > 0 and len(cfg["measured"]["candidates"]) >= 2
    # the deployment runs with its own loader settings and matches the pruned model
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg["intra_op_num_threads"]
    s1 = ort.InferenceSession(str(out / "onnxruntime" / "model.onnx"), so)
    s2 = ort.InferenceSession(str(out / "model.pruned.onnx"))
    x = {"input": np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    np.testing.assert_allclose(s1.run(None, x)[0], s2.run(None, x)[0], rtol=1e-4, atol=1e-5)
    assert "# graphprune report" in (out / "report.md").read_text()


def test_compile_arm_explains_choice(samples_dir, tmp_path):
    rep = compile_model(samples_dir / "tiny_resnet.onnx", CompileOptions(target="arm", out=str(tmp_path / "a")),
                        log_fn=lambda *a: None)
    assert rep["backend"]["chosen"] == "onnxruntime"
    assert "not measured" in rep["after"]["latency_note"]
    assert rep["config"]["round_to"] == 4
    for g in json.loads((tmp_path / "a" / "plan.json").read_text())["groups"]:
        assert (g["atoms"] - len(g["removed_atoms"])) % 4 == 0 or g["atoms"] < 4


def test_compile_no_prune_and_cli(samples_dir, tmp_path, capsys):
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--target", "x86-avx2", "--no-prune",
                 "-o", str(tmp_path / "np")]) == 0
    text = capsys.readouterr().out
    assert "backend: onnxruntime" in text and "numerics_onnxruntime: PASS" in text
    rep = json.loads((tmp_path / "np" / "report.json").read_text())
    assert rep["after"]["params"] == rep["before"]["params"]


def test_compile_failure_leaves_nothing(samples_dir, tmp_path):
    out = tmp_path / "bad"
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--target", "nope", "-o", str(out)]) == 2
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--backend", "magic", "-o", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_bench_side_by_side(samples_dir, tmp_path, capsys):
    compile_model(samples_dir / "tiny_resnet.onnx", CompileOptions(target="x86", out=str(tmp_path / "c")),
                  log_fn=lambda *a: None)
    assert main(["bench", str(tmp_path / "c"), str(samples_dir / "tiny_resnet.onnx"), "--repeats", "6",
                 "--warmup", "1", "--json-out", str(tmp_path / "b.json")]) == 0
    res = json.loads((tmp_path / "b.json").read_text())["results"]
    assert len(res) == 2 and all(r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] for r in res)


def test_bench_times_every_artifact_at_one_shape_and_says_which(samples_dir, tmp_path, capsys, monkeypatch):
    """A model with dynamic sizes: bench used to resolve a default shape per artifact, so a
    compile folder and its input model could be timed at different sizes. Now every artifact
    runs at the shapes the compile folder was measured at (or --input-shape), and the
    summary says which."""
    import onnx

    import graphprune.runtime.ort as gort

    proto = onnx.load(str(samples_dir / "tiny_resnet.onnx"))
    for v in proto.graph.input:
        for k, name in ((0, "n"), (2, "h"), (3, "w")):
            v.type.tensor_type.shape.dim[k].dim_param = name
    for v in proto.graph.output:
        v.type.tensor_type.shape.dim[0].dim_param = "n"
    src = tmp_path / "dyn.onnx"
    onnx.save(proto, str(src))
    # (the sample flattens into a Gemm: it runs at 16x16 only, at any batch)
    compile_model(src, CompileOptions(target="x86", out=str(tmp_path / "c"), input_shapes={"input": [2, 3, 16, 16]}),
                  log_fn=lambda *a: None)
    seen = []
    real = gort.random_inputs

    def recorded(sess, *a, **k):
        feeds = real(sess, *a, **k)
        seen.append(tuple(feeds["input"].shape))
        return feeds

    monkeypatch.setattr(gort, "random_inputs", recorded)
    argv = ["bench", str(tmp_path / "c"), str(src), "--repeats", "2", "--warmup", "1", "--rounds", "1", "--json-out"]
    assert main([*argv, str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr()
    assert seen == [(2, 3, 16, 16)] * 2 and "measured at input: 2×3×16×16 (from --input-shape)" in out.out
    assert json.loads((tmp_path / "b.json").read_text())["input_shapes"]["input"]["shape"] == [2, 3, 16, 16]
    seen.clear()
    assert main([*argv, str(tmp_path / "b2.json"), "--input-shape", "input:3,3,16,16"]) == 0
    assert seen == [(3, 3, 16, 16)] * 2 and "input: 3×3×16×16 (from --input-shape)" in capsys.readouterr().out


def test_report_html_is_self_contained(samples_dir, tmp_path):
    pytest.importorskip("matplotlib")
    compile_model(samples_dir / "tiny_resnet.onnx", CompileOptions(target="x86", out=str(tmp_path / "r")),
                  log_fn=lambda *a: None)
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2  # width and MACs per layer
    assert "<table>" in page and "Before / after" in page and "http" not in page.split("<body>")[1][:2000]
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["layers"] and any(r["width_after"] < r["width_before"] for r in rep["layers"])
    assert (tmp_path / "r").stat().st_mode & 0o777 != 0o700  # not a private temp dir


def _tvm_or_skip():
    from graphprune.backends.tvm import TvmBackend

    ok, why = TvmBackend().available()
    if not ok:
        pytest.skip(f"TVM not usable: {why}")


def _mlp(path):
    """x[1,64] -> Linear 128 -> ReLU -> Linear 32: a handful of TVM tuning tasks (tiny_mobilenet
    has 12, each tuned at least once: most of this file's time)."""
    import onnx
    from helpers import make_model, w
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    inits = {"w1": w(64, 128, seed=1), "b1": w(128, seed=2), "w2": w(128, 32, seed=3), "b2": w(32, seed=4)}
    onnx.save(make_model(nodes, [("x", [1, 64])], [("y", [1, 32])], inits), path)
    return path


def test_compile_auto_measures_tvm_against_ort(tmp_path):
    """--backend auto with tuning: both backends built, numerics checked, the faster kept."""
    _tvm_or_skip()
    rep = compile_model(_mlp(tmp_path / "mlp.onnx"),
                        CompileOptions(target="x86", out=str(tmp_path / "auto"), tune_trials=4,
                                       db=str(tmp_path / "db")), log_fn=lambda *a: None)
    assert rep["checks"]["oracle"]["ok"] and rep["after"]["macs"] < rep["before"]["macs"]
    assert rep["checks"]["numerics_tvm"]["ok"] and rep["checks"]["numerics_onnxruntime"]["ok"]
    r = rep["backend"]["results"]
    faster = "tvm" if r["tvm"]["latency_ms"] < r["onnxruntime"]["latency_ms"] else "onnxruntime"
    assert rep["backend"]["chosen"] == faster and "measured faster" in rep["backend"]["reason"]
    assert (tmp_path / "auto" / "tvm" / r["tvm"]["library"]).exists()


def test_compile_arm_tvm_cross(samples_dir, tmp_path):
    _tvm_or_skip()
    import shutil

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 cross compiler")
    rep = compile_model(samples_dir / "tiny_resnet.onnx",
                        CompileOptions(target="arm", backend="tvm", out=str(tmp_path / "arm"),
                                       db=str(tmp_path / "db")), log_fn=lambda *a: None)
    assert rep["backend"]["chosen"] == "tvm" and "UNTUNED" in rep["backend"]["reason"]
    assert rep["checks"]["artifact_tvm"]["ok"] and "AArch64" in rep["checks"]["artifact_tvm"]["summary"]
    if "numerics_tvm_qemu" in rep["checks"]:
        assert rep["checks"]["numerics_tvm_qemu"]["ok"]


def test_compile_checks_a_depth_only_plan(samples_dir, tmp_path):
    """A replayed plan that removes residual blocks and no channels is still checked by the
    oracle (compile skipped the oracle when the plan sliced no channels)."""
    src = samples_dir / "tiny_resnet.onnx"
    assert main(["prune", str(src), "--remove-blocks", "2", "--ratio", "0", "-o", str(tmp_path / "d.onnx"),
                 "--no-bench"]) == 0
    plan = json.loads((tmp_path / "d.plan.json").read_text())
    assert plan["blocks"] and all("block" in t for t in plan["tensors"])
    out = tmp_path / "c"
    assert main(["compile", str(src), "--target", "x86", "--backend", "onnxruntime", "--plan",
                 str(tmp_path / "d.plan.json"), "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["checks"]["oracle"]["ok"] is True


def test_the_wrote_line_lists_a_backend_built_but_not_chosen(samples_dir, tmp_path, capsys):
    """--backend auto keeps the TVM build it measured (tvm/model.so, in the folder's marker)
    beside the ONNX Runtime deployment it chose; the 'wrote' line named only the chosen one."""
    from graphprune.cli.compile_cmd import print_report

    rep = compile_model(samples_dir / "tiny_resnet.onnx", CompileOptions(target="x86", out=str(tmp_path / "c")),
                        log_fn=lambda *a: None)
    capsys.readouterr()
    print_report(rep)
    assert "not chosen" not in capsys.readouterr().out
    (tmp_path / "c" / "tvm").mkdir()  # a folder kept from an earlier run (a file of the user's in it)
    print_report(rep)
    assert "not chosen" not in capsys.readouterr().out  # said 'built' of a TVM this run never built
    rep["backend"]["results"]["tvm"] = {"library": "model.so"}  # as auto leaves it when ORT wins
    print_report(rep)
    assert "onnxruntime/, tvm/ (built, not chosen))" in capsys.readouterr().out


def test_the_deployment_s_loader_runs_token_ids_at_the_measured_shape_and_saves_outputs(tmp_path):
    """run_model.py fed float32 to every input (an int64 token-id model failed), set every
    dynamic dim to 1 and printed only shapes. It now makes inputs of each input's type at the
    shapes the compile measured at, prints values, and -o saves outputs that equal the pruned model's."""
    import subprocess
    import sys

    from onnx import TensorProto, helper

    from helpers import make_model, w

    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w1"], ["h0"]),
             helper.make_node("Relu", ["h0"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])]
    path = tmp_path / "tok.onnx"
    path.write_bytes(make_model(nodes, [ids], [("y", ["B", "T", 16])],
                                {"emb": w(50, 16, seed=1), "w1": w(16, 64, seed=2), "w2": w(64, 16, seed=3)})
                     .SerializeToString())
    out = tmp_path / "c"
    assert main(["compile", str(path), "--target", "x86", "--ratio", "0.5", "-o", str(out)]) == 0
    loader = out / "onnxruntime" / "run_model.py"
    said = subprocess.run([sys.executable, str(loader)], capture_output=True, text=True, check=True).stdout
    assert "on {'ids': [1, 32]}" in said and "y: [1, 32, 16]" in said  # the measured 1x32, not 1x1
    feeds = {"ids": np.random.default_rng(3).integers(0, 50, (2, 7)).astype(np.int64)}
    np.savez(tmp_path / "in.npz", **feeds)
    subprocess.run([sys.executable, str(loader), str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")],
                   capture_output=True, text=True, check=True)
    want = ort.InferenceSession(str(out / "model.pruned.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], want, rtol=1e-5, atol=1e-6)
    # its own arguments: --help is help (it was a traceback), -o without .npz names the file numpy
    # writes, one array under another name is the one input
    said = subprocess.run([sys.executable, str(loader), "--help"], capture_output=True, text=True)
    assert said.returncode == 0 and "usage: run_model.py" in said.stdout
    np.savez(tmp_path / "other.npz", tokens=feeds["ids"])
    said = subprocess.run([sys.executable, str(loader), str(tmp_path / "other.npz"), "-o", str(tmp_path / "o2")],
                          capture_output=True, text=True, check=True)
    assert f"saved {tmp_path / 'o2.npz'}" in said.stdout
    np.testing.assert_allclose(np.load(tmp_path / "o2.npz")["y"], want, rtol=1e-5, atol=1e-6)


def test_bench_says_what_is_wrong_with_its_inputs_or_folder(samples_dir, tmp_path, capsys):
    """Each was an internal error ('please report it'): a user's tvm/ folder in an ONNX
    Runtime-only compile folder under --backends, --inputs of another batch size or naming no
    input, and a folder whose session.json is gone."""
    out = tmp_path / "c"
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--target", "x86", "-o", str(out)]) == 0
    (out / "tvm").mkdir()
    (out / "tvm" / "my_notes.txt").write_text("mine\n")
    quick = ["--repeats", "2", "--warmup", "1", "--rounds", "1"]
    capsys.readouterr()
    assert main(["bench", str(out), "--backends", *quick]) == 0  # the ONNX Runtime build only
    assert "c/tvm" not in capsys.readouterr().out
    x = np.zeros((4, 3, 32, 32), np.float32)  # the model's batch is 1
    np.savez(tmp_path / "b4.npz", input=x)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    for npz, said in (("b4.npz", "does not run on these inputs"), ("two.npz", "no array for model input(s) ['input']")):
        assert main(["bench", str(out), "--inputs", str(tmp_path / npz), *quick]) == 2
        assert said in capsys.readouterr().err
    (out / "onnxruntime" / "session.json").unlink()
    assert main(["bench", str(out), *quick]) == 2
    assert "session.json is missing" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "nope.onnx"), *quick]) == 2  # was exit 4, 'cannot load nope.onnx/model...'
    assert "no such file or folder" in capsys.readouterr().err
    src = str(tmp_path / "m.onnx")
    shutil.copy(out / "model.pruned.onnx", src)
    np.savez(tmp_path / "b1.npz", input=np.zeros((1, 3, 16, 16), np.float32))  # the sample's input
    assert main(["bench", src, "--inputs", str(tmp_path / "b1.npz"), "--input-shape", "input:1,3,16,16", *quick]) == 2
    assert "--inputs and --input-shape: give one" in capsys.readouterr().err  # the shape was ignored
    assert main(["bench", src, "--inputs", str(tmp_path / "b1.npz"), "--repeats", "5", "--rounds", "3",
                 "--warmup", "0", "--json-out", str(tmp_path / "b.json")]) == 0
    said = capsys.readouterr().out
    assert "measured on the first input set of" in said and "input: 1×3×16×16" in said  # the shape it ran at
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["runs"] >= 5  # '--repeats 5' gave 3 runs


def test_tvm_gets_the_inputs_that_given_shapes_name_fully(tmp_path):
    """--input-shape image:... fixed the mask's H and W for ONNX Runtime (the dims named alike)
    but TVM refused 'dynamic inputs: mask[N, 1, H, W]'; the shapes handed to TVM now include
    every input whose dims the given ones name, and no other."""
    from onnx import TensorProto, helper

    from graphprune.workflow.compile import completed_shapes
    from helpers import make_model, w

    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, "H", "W"])
    other = helper.make_tensor_value_info("other", TensorProto.FLOAT, ["M", 4])
    nodes = [helper.make_node("Conv", ["image", "w1"], ["a"], pads=[1] * 4), helper.make_node("Mul", ["a", "mask"], ["y"]),
             helper.make_node("MatMul", ["other", "w2"], ["z"])]
    m = make_model(nodes, [("image", ["N", 3, "H", "W"]), mask, other],
                   [("y", ["N", 8, "H", "W"]), ("z", ["M", 2])], {"w1": w(8, 3, 3, 3), "w2": w(4, 2)})
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    got = completed_shapes(tmp_path / "m.onnx", {"image": [2, 3, 40, 64]})
    assert got == {"image": [2, 3, 40, 64], "mask": [2, 1, 40, 64]}  # 'other' stays the user's to give
