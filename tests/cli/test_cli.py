"""The command line: verbs, outputs, exit codes, never touching the input."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphprune.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return main([str(a) for a in args])


def test_readme_first_command_works(tmp_path):
    """The README's first set-up command (minus the pip install, done by the test setup)."""
    lines = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1).splitlines()
    first = lines[0]
    assert first.startswith("pip install . && ")
    cmd = first.removeprefix("pip install . && ")
    shutil.copytree(ROOT / "samples", tmp_path / "samples", ignore=shutil.ignore_patterns("*.onnx", "*.json"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "oracle PASS" in out.stdout and "MACs" in out.stdout and "backend: onnxruntime" in out.stdout
    folder = tmp_path / "samples" / "tiny_resnet.graphprune" / "arm"
    assert (folder / "onnxruntime" / "model.onnx").exists() and (folder / "report.md").exists()
    assert json.loads((folder / "plan.json").read_text())["tensors"]
    assert json.loads((folder / "report.json").read_text())["target"]["tvm"]["mtriple"] == "aarch64-linux-gnu"


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        run("--version")
    assert e.value.code == 0 and "graphprune" in capsys.readouterr().out
    assert run() == 2


def test_inspect_text_and_json(samples_dir, capsys):
    assert run("inspect", samples_dir / "tiny_resnet.onnx") == 0
    out = capsys.readouterr().out
    assert "prunable groups" in out and "MACs" in out and "frozen" in out
    assert run("inspect", samples_dir / "tiny_resnet.onnx", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["groups"] and data["params"] > 0 and data["macs"] > 0
    assert any("graph input" in r for f in data["frozen"] for r in f["reasons"])


def test_prune_check_replay(samples_dir, tmp_path, capsys):
    src = samples_dir / "tiny_mobilenet.onnx"
    before = src.read_bytes()
    out = tmp_path / "small.onnx"
    assert run("prune", src, "--ratio", "0.5", "-o", out, "--round-to", "4") == 0
    text = capsys.readouterr().out
    assert "oracle PASS" in text and "ORT latency" in text
    assert (tmp_path / "small.plan.json").exists()
    assert src.read_bytes() == before
    assert run("check", src, out, "--plan", tmp_path / "small.plan.json") == 0
    assert run("prune", src, "--plan", tmp_path / "small.plan.json", "-o", tmp_path / "again.onnx", "--no-bench") == 0
    a = json.loads((tmp_path / "small.plan.json").read_text())["tensors"]
    b = json.loads((tmp_path / "again.plan.json").read_text())["tensors"]
    assert a == b


def test_check_detects_a_wrong_pairing(samples_dir, tmp_path, capsys):
    src = samples_dir / "tiny_resnet.onnx"
    assert run("prune", src, "--ratio", "0.3", "-o", tmp_path / "a.onnx", "--no-bench") == 0
    assert run("prune", src, "--ratio", "0.5", "-o", tmp_path / "b.onnx", "--no-bench") == 0
    # model b checked against plan a: b records its own plan's digest -> FAIL, exit 3
    assert run("check", src, tmp_path / "b.onnx", "--plan", tmp_path / "a.plan.json") == 3
    assert "does not belong to model" in capsys.readouterr().err
    # without that record (another tool, an older graphprune) the oracle still tells: exit 3
    import onnx

    proto = onnx.load(str(tmp_path / "b.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "b_old.onnx"))
    assert run("check", src, tmp_path / "b_old.onnx", "--plan", tmp_path / "a.plan.json") == 3


def test_check_finds_the_plan_written_with_the_pruned_model(samples_dir, tmp_path, capsys):
    """Without --plan, check takes the plan written together with the pruned model (prune's
    <name>.plan.json, a compile folder's plan.json) and only one whose digest the model
    records; otherwise it asks for --plan (exit 2), nothing compared."""
    src = samples_dir / "tiny_resnet.onnx"
    assert run("prune", src, "--ratio", "0.3", "-o", tmp_path / "a.onnx", "--no-bench") == 0
    capsys.readouterr()
    assert run("check", src, tmp_path / "a.onnx") == 0
    out = capsys.readouterr().out
    assert f"plan: {tmp_path / 'a.plan.json'}" in out and "oracle PASS" in out
    import graphprune as gp

    assert gp.check(src, tmp_path / "a.onnx").ok  # the API finds it the same way
    folder = tmp_path / "c"
    assert run("compile", src, "--target", "x86", "-o", folder) == 0
    capsys.readouterr()
    assert run("check", src, folder / "onnxruntime" / "model.onnx") == 0
    said = capsys.readouterr()
    assert f"plan: {folder / 'plan.json'}" in said.out

    assert run("check", src, folder) == 0  # the folder itself: its model.pruned.onnx ('no such file')
    said = capsys.readouterr().out
    assert f"pruned: {folder / 'model.pruned.onnx'}" in said and "oracle PASS" in said
    assert "(the compile's, from its report.json)" in said  # at the shapes the folder was measured at
    assert run("check", src, folder / "onnxruntime") == 2  # a folder without one: said, not 'no such file'
    assert "a folder without model.pruned.onnx" in capsys.readouterr().err
    # a deployment copied in from another run: the folder check proved model.pruned.onnx and passed
    other = tmp_path / "c2"
    assert run("compile", src, "--target", "x86", "--ratio", "0.5", "-o", other) == 0
    shutil.copy(other / "onnxruntime" / "model.onnx", folder / "onnxruntime" / "model.onnx")
    capsys.readouterr()
    assert run("check", src, folder) == 3
    assert "the folder's deployment is not the model checked" in capsys.readouterr().err
    # a plan beside the model that is not its own is not taken
    assert run("prune", src, "--ratio", "0.5", "-o", tmp_path / "b.onnx", "--no-bench") == 0
    shutil.copy(tmp_path / "a.plan.json", tmp_path / "b.plan.json")
    capsys.readouterr()
    assert run("check", src, tmp_path / "b.onnx") == 2
    assert "no plan of" in capsys.readouterr().err
    # a model that records no plan (another tool) needs --plan
    assert run("check", src, src) == 2
    assert "records no plan digest" in capsys.readouterr().err
    # a plan of another name beside the model (the Olive pass names it after the input model,
    # Olive names the model) is found by the digest the model records
    (tmp_path / "b.plan.json").unlink()  # (a copy of a's plan: it would be found too)
    (tmp_path / "a.plan.json").rename(tmp_path / "tiny_resnet.plan.json")
    assert run("check", src, tmp_path / "a.onnx") == 0
    said = capsys.readouterr().out
    assert f"plan: {tmp_path / 'tiny_resnet.plan.json'}" in said
    # found by the digest beside a model of another name: not "written together with" it (probe)
    assert "found beside" in said and "written together with" not in said


def test_check_names_repair_and_sparsity_instead_of_a_plain_fail(samples_dir, tmp_path, capsys):
    """A repaired or sparsified model is not the masked original by design: check proves
    nothing about it and says why instead of "differs", with its own exit code 6 (it was 3,
    the mismatch's: a script could not tell the two apart; probe)."""
    import numpy as np

    src = samples_dir / "tiny_resnet.onnx"
    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.random.default_rng(3).standard_normal((16, 3, 16, 16)).astype(np.float32))
    assert run("prune", src, "--ratio", "0.3", "--calib", calib, "--criterion", "l2", "--allocation", "uniform",
               "--repair", "bias", "-o", tmp_path / "r.onnx", "--no-bench") == 0
    assert "oracle PASS" in capsys.readouterr().out  # verified before the repair
    assert run("check", src, tmp_path / "r.onnx", "--plan", tmp_path / "r.plan.json") == 6
    cap = capsys.readouterr()
    assert "oracle not applicable: repair passes changed weights after pruning (bias-compensate)" in cap.out
    assert "cannot check this model against the masked original" in cap.err and "--repair none" in cap.err
    assert run("prune", src, "--ratio", "0.3", "--sparsity", "0.5", "-o", tmp_path / "s.onnx", "--no-bench") == 0
    capsys.readouterr()
    assert run("check", src, tmp_path / "s.onnx", "--plan", tmp_path / "s.plan.json") == 6
    assert "tensors were sparsified after pruning" in capsys.readouterr().out
    # the same pruning without repair or sparsity passes: the message is not a blanket excuse
    assert run("prune", src, "--ratio", "0.3", "--calib", calib, "--criterion", "l2", "--allocation", "uniform",
               "--repair", "none", "--max-drop", "1", "-o", tmp_path / "n.onnx", "--no-bench") == 0
    assert run("check", src, tmp_path / "n.onnx", "--plan", tmp_path / "n.plan.json") == 0
    assert "oracle PASS" in capsys.readouterr().out
    # a replay of the repaired run's plan without repair records no repair of its own, and checks
    assert json.loads((tmp_path / "r.plan.json").read_text())["settings"]["repair"]
    assert run("prune", src, "--plan", tmp_path / "r.plan.json", "-o", tmp_path / "p.onnx", "--no-bench") == 0
    assert "repair" not in json.loads((tmp_path / "p.plan.json").read_text())["settings"]
    assert run("check", src, tmp_path / "p.onnx", "--plan", tmp_path / "p.plan.json") == 0


def test_refuses_to_overwrite_input(samples_dir, tmp_path, capsys):
    src = tmp_path / "m.onnx"
    shutil.copy(samples_dir / "tiny_resnet.onnx", src)
    before = src.read_bytes()
    assert run("prune", src, "-o", src) == 2
    assert src.read_bytes() == before
    assert "overwrite" in capsys.readouterr().err


def test_error_exit_codes_and_one_line_messages(tmp_path, samples_dir, capsys):
    assert run("inspect", tmp_path / "missing.onnx") == 4
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    (tmp_path / "junk.onnx").write_bytes(b"garbage" * 100)
    assert run("prune", tmp_path / "junk.onnx", "-o", tmp_path / "x.onnx") == 4
    assert not (tmp_path / "x.onnx").exists()
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--ratio", "1.5", "-o", tmp_path / "y.onnx") == 2
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--criterion", "bogus", "-o", tmp_path / "y.onnx") == 2
    assert not (tmp_path / "y.onnx").exists()
    (tmp_path / "bad.plan.json").write_text("{}")
    assert run("prune", samples_dir / "tiny_resnet.onnx", "--plan", tmp_path / "bad.plan.json", "-o", tmp_path / "z.onnx") == 2
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(samples_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert run("prune", samples_dir / "tiny_resnet.onnx", "-o", ro / "x.onnx") == 2


def test_passes_and_rules_listing(capsys):
    assert run("passes", "--rules") == 0
    out = capsys.readouterr().out
    assert "prune-channels" in out and "Conv" in out and "DepthToSpace" in out


def test_help_imports_no_heavy_modules():
    """--help stays fast because onnxruntime/onnx/torch/tvm load only when a verb runs."""
    code = ("import sys; from graphprune.cli.main import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('onnxruntime', 'onnx', 'torch', 'tvm', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m_runs_the_command(samples_dir):
    """`python -m graphprune` is the graphprune command (it said "No module named
    graphprune.__main__"), exit codes included."""
    ok = subprocess.run([sys.executable, "-m", "graphprune", "inspect", str(samples_dir / "tiny_resnet.onnx")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "prunable groups" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "graphprune", "inspect", str(samples_dir / "missing.onnx")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "missing.onnx" in bad.stderr


def test_max_drop_gate_with_calibration(samples_dir, tmp_path, capsys):
    import numpy as np

    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    src = samples_dir / "tiny_resnet.onnx"
    # a mild prune passes a loose gate ...
    # (one search candidate: the gate is the subject here, not the search)
    assert run("prune", src, "--ratio", "0.1", "--calib", tmp_path / "calib.npz", "--max-drop", "0.5",
               "-o", tmp_path / "ok.onnx", "--no-bench", "--search-budget", "1") == 0
    assert "fidelity on held-back calibration samples" in capsys.readouterr().out  # a repair fit the rest
    # ... a heavy prune fails a strict one: exit 3 and nothing written
    assert run("prune", src, "--ratio", "0.9", "--calib", tmp_path / "calib.npz", "--max-drop", "0.0001",
               "-o", tmp_path / "bad.onnx", "--no-bench", "--search-budget", "1") == 3
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.plan.json").exists()
    assert run("prune", src, "--max-drop", "0.1", "-o", tmp_path / "x.onnx", "--no-bench") == 2


def test_onnx_ir_s_warnings_per_untyped_value_are_not_shown(samples_dir, tmp_path, monkeypatch, caplog):
    """Checking an ORT-optimised deployment printed ~30 'The value type for shape ... is not
    known ... Skipping serialization' lines from onnx_ir (one per NCHWc value) on PP-OCR cls.
    While a verb runs (not under -v) that logger shows errors only, and it is put back after."""
    import logging

    import graphprune as gp

    real = gp.check

    def noisy(*a, **k):
        logging.getLogger("onnx_ir.serde").warning("The value type for shape [1] is not known. Skipping serialization")
        return real(*a, **k)

    src = samples_dir / "tiny_resnet.onnx"
    assert run("prune", src, "-o", tmp_path / "p.onnx", "--no-bench") == 0
    monkeypatch.setattr(gp, "check", noisy)
    with caplog.at_level(logging.WARNING):
        assert run("check", src, tmp_path / "p.onnx") == 0
    assert not [r for r in caplog.records if r.name == "onnx_ir.serde"]
    assert logging.getLogger("onnx_ir.serde").level == logging.NOTSET


def test_an_output_folder_is_named_as_one(samples_dir, tmp_path, capsys):
    """-o adir/ said 'output adir should end in .onnx' (the slash the user typed dropped);
    a folder is said to be one, with the file name it could take."""
    src = samples_dir / "tiny_resnet.onnx"
    (tmp_path / "adir").mkdir()
    for given in (f"{tmp_path / 'adir'}/", str(tmp_path / "adir")):
        assert run("prune", src, "-o", given, "--no-bench") == 2
        err = capsys.readouterr().err
        assert "is a folder: prune writes one .onnx file" in err and "tiny_resnet.onnx" in err
    assert run("prune", src, "-o", tmp_path / "x.txt", "--no-bench") == 2
    assert "should end in .onnx" in capsys.readouterr().err
    assert list((tmp_path / "adir").iterdir()) == []


def test_a_dry_run_that_removes_nothing_says_why(samples_dir, capsys):
    """--dry-run printed '0 of 7 prunable groups change: 0 of 0 channels removed' and no reason,
    where the real run explains the round-to cause (probe)."""
    src = samples_dir / "tiny_resnet.onnx"
    assert run("prune", src, "--ratio", "0.1", "--round-to", "16", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "nothing pruned: the options removed no channel (widths in multiples of 16" in out
    assert run("prune", src, "--ratio", "0.5", "--round-to", "4", "--dry-run") == 0
    assert "nothing pruned" not in capsys.readouterr().out


def test_an_interrupt_before_the_verb_runs_is_one_line(monkeypatch, capsys, samples_dir, tmp_path):
    """Ctrl-C in the first seconds (the plugins' entry points being read) printed a 40-line
    KeyboardInterrupt traceback; exit 130 and one line, as during the run (new-user probe)."""
    import graphprune.plugins as plugins

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(plugins, "load_plugins", interrupted)
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "-o", str(tmp_path / "s.onnx")]) == 130
    assert capsys.readouterr().err == "graphprune: interrupted\n" and not (tmp_path / "s.onnx").exists()
