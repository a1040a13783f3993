"""Sparsity on the command line: prune/compile flags, the metadata record, inspect, config
files, pipelines, and clear errors (exit 2) for bad input or missing calibration data."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphprune.cli.main import main
from graphprune.runtime import ort
from graphprune.sparsity_meta import read_sparsity


def run(*args):
    return main([str(a) for a in args])


def inits(path) -> dict[str, np.ndarray]:
    p = onnx.load(str(path))
    out = {t.name: numpy_helper.to_array(t) for t in p.graph.initializer}
    for n in p.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


@pytest.fixture()
def calib(tmp_path):
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    return tmp_path / "calib.npz"


def test_prune_sparsity_alone_matches_numpy_masked_original(samples_dir, tmp_path, capsys):
    src = samples_dir / "tiny_resnet.onnx"
    out = tmp_path / "s.onnx"
    assert run("prune", src, "--ratio", "0", "--sparsity", "0.6", "-o", out, "--no-bench") == 0
    text = capsys.readouterr().out
    assert "sparsity: unstructured by magnitude" in text and "nonzero params" in text
    rec = read_sparsity(out)["tensors"]
    assert rec and all(abs(r["sparsity"] - 0.6) < 0.01 for r in rec.values())
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    # the oracle of sparsity: zero the same weights of the ORIGINAL model with numpy
    orig, sp = onnx.load(str(src)), inits(out)
    for t in orig.graph.initializer:
        if t.name in rec:
            a = numpy_helper.to_array(t)
            assert np.array_equal(sp[t.name][sp[t.name] != 0], a[sp[t.name] != 0])
            t.CopyFrom(numpy_helper.from_array(np.where(sp[t.name] == 0, 0, a).astype(a.dtype), t.name))
    x = {"input": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    y0 = ort.session(orig.SerializeToString()).run(None, x)
    y1 = ort.session(str(out)).run(None, x)
    np.testing.assert_allclose(y0[0], y1[0], rtol=1e-5, atol=1e-5)


def test_prune_then_nm_and_inspect(samples_dir, tmp_path, capsys):
    out = tmp_path / "nm.onnx"
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--ratio", "0.25", "--round-to", "4",
               "--sparsity-format", "2:4", "-o", out, "--no-bench") == 0
    assert "oracle PASS" in capsys.readouterr().out
    rec = read_sparsity(out)["tensors"]
    w = inits(out)
    assert len(rec) >= 5
    for name, r in rec.items():
        assert (r["format"], r["n"], r["m"]) == ("n:m", 2, 4)
        a = np.moveaxis(w[name], r["in_axis"], -1)  # input channels last; for Conv at each tap
        assert ((a != 0).reshape(-1, 4).sum(-1) <= 2).all()
    assert run("inspect", out) == 0
    text = capsys.readouterr().out
    assert "sparse tensors" in text and "2:4" in text and "measured zeros" in text
    assert run("inspect", out, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["sparsity"]) == set(rec) and all(v["measured"] == 0.5 for v in data["sparsity"].values())


def test_data_aware_criteria_need_calib_exit_2(samples_dir, tmp_path, capsys):
    for crit in ("wanda", "sparsegpt"):
        out = tmp_path / f"{crit}.onnx"
        assert run("prune", samples_dir / "tiny_resnet.onnx", "--ratio", "0", "--sparsity", "0.5",
                   "--sparsity-criterion", crit, "-o", out, "--no-bench") == 2
        assert "--calib" in capsys.readouterr().err
        assert not out.exists()
    assert run("compile", samples_dir / "tiny_resnet.onnx", "--sparsity", "0.5", "--sparsity-criterion", "wanda",
               "-o", tmp_path / "c") == 2
    assert "--calib" in capsys.readouterr().err


@pytest.mark.parametrize("flags,msg", [
    (["--sparsity", "1.0"], "[0, 1)"), (["--sparsity-format", "5:4"], "N must be smaller"),
    (["--sparsity-format", "diagonal", "--sparsity", "0.5"], "unknown sparsity format"),
    (["--sparsity", "0.5", "--sparsity-criterion", "taylor"], "unknown sparsity criterion"),
    (["--sparsity-format", "block:0x4", "--sparsity", "0.5"], "block"),
])
def test_bad_sparsity_flags_exit_2(samples_dir, tmp_path, capsys, flags, msg):
    out = tmp_path / "bad.onnx"
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--ratio", "0", *flags, "-o", out, "--no-bench") == 2
    assert msg in capsys.readouterr().err and not out.exists()


def test_wanda_and_sparsegpt_with_calib(samples_dir, tmp_path, calib, capsys):
    for crit in ("wanda", "sparsegpt"):
        out = tmp_path / f"{crit}.onnx"
        assert run("prune", samples_dir / "tiny_resnet.onnx", "--ratio", "0", "--sparsity", "0.5",
                   "--sparsity-criterion", crit, "--calib", calib, "-o", out, "--no-bench",
                   "--search-budget", "1") == 0  # no channels removed: nothing for a search to compare
        rec = read_sparsity(out)["tensors"]
        assert rec and {r["criterion"] for r in rec.values()} == {crit}


def test_pattern_connectivity_and_pipeline(samples_dir, tmp_path, capsys):
    out = tmp_path / "pat.onnx"
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--ratio", "0", "--sparsity-format", "pattern:4",
               "--connectivity", "0.3", "-o", out, "--no-bench") == 0
    rec = read_sparsity(out)["tensors"]
    assert rec and all(r["format"] == "pattern" and r["connectivity"] == 0.3 for r in rec.values())
    out2 = tmp_path / "pipe.onnx"
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--pipeline",
               "prune-channels{ratio=0.2},sparsify{format=block,block=4x1,sparsity=0.7}", "-o", out2,
               "--no-bench") == 0
    assert "oracle PASS" in capsys.readouterr().out  # sparsity runs after the oracle
    assert {r["block"][0] for r in read_sparsity(out2)["tensors"].values()} == {4}


def test_config_file_and_compile_report(samples_dir, tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('version = 1\n[prune]\nratio = 0.0\nsparsity = 0.75\nsparsity_format = "block:1x4"\n')
    out = tmp_path / "cfg.onnx"
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--config", cfg, "-o", out, "--no-bench") == 0
    rec = read_sparsity(out)["tensors"]
    assert rec and all(r["block"] == [1, 4] for r in rec.values())
    d = tmp_path / "comp"
    assert run("compile", samples_dir / "tiny_resnet.onnx", "--config", cfg, "-o", d) == 0
    rep = json.loads((d / "report.json").read_text())
    assert rep["checks"]["sparsity"]["ok"] and rep["sparsity"] and set(rep["sparsity"]) == set(rep["sparsity_tensors"])
    assert read_sparsity(d / "model.pruned.onnx")["tensors"].keys() == rep["sparsity"].keys()


def test_dry_run_mentions_sparsity_and_writes_nothing(samples_dir, tmp_path, capsys):
    out = tmp_path / "dry.onnx"
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--sparsity-format", "4:8", "--dry-run", "-o", out) == 0
    assert "then sparsity: sparsify{format=4:8" in capsys.readouterr().out and not out.exists()
    assert run("compile", samples_dir / "tiny_resnet.onnx", "--sparsity", "0.5", "--dry-run", "-o", tmp_path / "c") == 0
    assert "then sparsity: sparsify{format=unstructured" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["2:4", "block:4x1"])
def test_structured_pruning_of_a_sparse_model_keeps_its_sparsity_record_true(samples_dir, tmp_path, capsys, fmt):
    """A 2:4 (or block) sparse model pruned structurally: slicing input channels shifts the
    groups, and the record went on claiming 2:4 for tensors with 4 nonzeros in a group of 4
    (and the old sizes). Each sliced tensor's record now has its measured size and zeros,
    and a format that no longer holds is recorded as unstructured, with what it was."""
    from graphprune.sparsity_meta import _still_holds

    sparse = tmp_path / "sparse.onnx"
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--ratio", "0", "--sparsity", "0.5",
               "--sparsity-format", fmt, "-o", sparse, "--no-bench") == 0
    before = read_sparsity(str(sparse))["tensors"]
    assert before and all(r["format"] != "unstructured" for r in before.values())
    out = tmp_path / "pruned.onnx"
    assert run("prune", sparse, "--ratio", "0.3", "--round-to", "1", "-o", out, "--no-bench") == 0
    after, arrays = read_sparsity(str(out))["tensors"], inits(out)
    assert set(after) == set(before)
    sliced = {t["name"] for t in json.loads((tmp_path / "pruned.plan.json").read_text())["tensors"]}
    for name, rec in after.items():
        arr = arrays[name]
        assert rec["size"] == arr.size and rec["sparsity"] == pytest.approx(float((arr == 0).mean()), abs=1e-6)
        assert _still_holds(arr, rec), (name, rec)  # every recorded format is true of the zeros
        if rec["format"] == "unstructured":
            assert name in sliced and rec["was"]["format"] == before[name]["format"]
    broken = [n for n, r in after.items() if r["format"] == "unstructured"]
    assert broken and "no longer holds after structured pruning" in capsys.readouterr().err
