"""graphprune.outputs: nothing the user owns is overwritten (issue 12 §3). Output folders
are written only when new, empty or graphprune's (marker); a model and its plan are one
result; temporary files never outlive a run."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphprune.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in args])
    return rc, err.getvalue()


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): sha(p) for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def model(samples_dir, tmp_path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(samples_dir / "tiny_resnet.onnx", work / "m.onnx")
    return work / "m.onnx"


# ---- compile -o DIR ---------------------------------------------------------------------

def test_compile_refuses_a_folder_it_did_not_write(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("four years of work")
    rc, err = run("compile", model, "--target", "x86", "-o", out)
    assert rc == 2 and "not written by graphprune" in err and "Traceback" not in err
    assert tree(out) == {"thesis.txt": sha(out / "thesis.txt")}
    assert (out / "thesis.txt").read_text() == "four years of work"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_compile_into_the_folder_holding_the_input(model):
    work = model.parent
    (work / "notes.txt").write_text("mine")
    before = tree(work)
    for extra in ([], ["--force"]):
        rc, err = run("compile", model, "--target", "x86", "-o", work, *extra)
        assert rc == 2 and "holds the input model" in err and "Traceback" not in err, err
        assert tree(work) == before
    cwd = os.getcwd()
    os.chdir(work)  # the issue's `cd work && graphprune compile m.onnx -o .`
    try:
        rc, err = run("compile", "m.onnx", "--target", "x86", "-o", ".")
    finally:
        os.chdir(cwd)
    assert rc == 2 and "internal error" not in err
    assert tree(work) == before


def test_compile_force_and_marker_keep_every_foreign_file(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("mine")
    assert run("compile", model, "--target", "x86", "-o", out, "--force", "--no-check")[0] == 0
    assert (out / "thesis.txt").read_text() == "mine"
    marker = json.loads((out / ".graphprune-output").read_text())
    assert "plan.json" in marker["files"] and "thesis.txt" not in marker["files"]
    # a marked folder is graphprune's: a second run replaces its files without --force,
    # and keeps a file the user put next to them, even inside graphprune's subfolders
    (out / "onnxruntime" / "my_notes.txt").write_text("also mine")
    first_plan = (out / "plan.json").read_text()
    assert run("compile", model, "--target", "x86", "-o", out, "--ratio", "0.5", "--no-check")[0] == 0
    assert (out / "thesis.txt").read_text() == "mine"
    assert (out / "onnxruntime" / "my_notes.txt").read_text() == "also mine"
    assert (out / "plan.json").read_text() != first_plan
    assert run("check", model, out / "model.pruned.onnx", "--plan", out / "plan.json")[0] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_force_on_an_unmarked_folder_keeps_a_user_file_inside_onnxruntime(model, tmp_path):
    """--force on a folder graphprune never marked: its files of compile's names are replaced,
    but a user's file inside a folder that happens to be called onnxruntime/ is not
    graphprune's (it was removed, as if it were)."""
    out = tmp_path / "out"
    (out / "onnxruntime").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "onnxruntime" / "mine.txt").write_text("also mine")
    (out / "report.md").write_text("an old report")
    assert run("compile", model, "--target", "arm", "-o", out)[0] == 2  # refused without --force
    assert run("compile", model, "--target", "arm", "-o", out, "--force", "--no-check")[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "onnxruntime" / "mine.txt").read_text() == "also mine"
    assert (out / "report.md").read_text() != "an old report"  # compile's own name: replaced, as --force says
    marker = json.loads((out / ".graphprune-output").read_text())["files"]
    assert "onnxruntime/mine.txt" not in marker and "onnxruntime/model.onnx" in marker


def test_files_the_user_did_not_name_replace_only_graphprune_s_own(model, tmp_path):
    """`-o x.onnx` names x.onnx; its plan x.plan.json and, without -o, the default name
    m.pruned.onnx are graphprune's choice: a user's file there was silently overwritten. It
    is now refused before any work (exit 2, nothing written); graphprune's own files of
    those names are replaced as before, and so is the file -o names."""
    work = model.parent
    (work / "x.plan.json").write_text("IMPORTANT user data")
    before = tree(work)
    rc, err = run("prune", model, "-o", work / "x.onnx", "--no-bench")
    assert rc == 2 and "x.plan.json (the plan written with the model) exists and was not written by graphprune" in err
    assert tree(work) == before
    (work / "x.plan.json").unlink()
    assert run("prune", model, "-o", work / "x.onnx", "--no-bench")[0] == 0
    assert run("prune", model, "-o", work / "x.onnx", "--no-bench", "--ratio", "0.5")[0] == 0  # its own: replaced
    (work / "m.pruned.onnx").write_text("not a model of graphprune's")
    before = tree(work)
    rc, err = run("prune", model, "--no-bench")
    assert rc == 2 and "m.pruned.onnx (the default output name) exists and was not written by graphprune" in err
    assert tree(work) == before
    (work / "m.pruned.onnx").unlink()
    assert run("prune", model, "--no-bench")[0] == 0 and run("prune", model, "--no-bench")[0] == 0
    # from Python too: gp.run_prune refuses a plan path holding someone else's file
    import graphprune as gp
    from graphprune.errors import UsageError

    (work / "y.plan.json").write_text("{}")
    with pytest.raises(UsageError, match="never replaced"):
        gp.run_prune(str(model), gp.PruneOptions(), out=str(work / "y.onnx"))
    assert not (work / "y.onnx").exists() and (work / "y.plan.json").read_text() == "{}"


@pytest.mark.parametrize("flag,name", [("--save-config", "x.report.json"), ("--save-config", "x.report.md"),
                                       ("--log-file", "x.report.md")])
def test_config_and_log_are_refused_on_the_run_s_report_paths(model, flag, name):
    """--save-config / --log-file on the report this run writes: the config was written first
    (over an earlier report) and the run then failed naming the report; the log was lost
    under the report. Now both are refused before anything is written, as for the plan."""
    work = model.parent
    assert run("prune", model, "-o", work / "x.onnx", "--no-bench")[0] == 0
    before = tree(work)
    rc, err = run("prune", model, "-o", work / "x.onnx", flag, work / name, "--no-bench")
    assert rc == 2 and f"{flag} {work / name} and report" in err and "same path" in err
    assert tree(work) == before


def test_a_marker_cannot_name_files_outside_its_folder(tmp_path):
    from graphprune.outputs import MARKER, install_output_dir

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("graphprune's")
    (out / MARKER).write_text(json.dumps({"files": ["../victim.txt", str(victim), "old.txt"]}))
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "plan.json").write_text("{}")
    install_output_dir(stage, out)
    assert victim.read_text() == "keep"
    assert not (out / "old.txt").exists() and (out / "plan.json").exists()
    assert json.loads((out / MARKER).read_text())["files"] == ["plan.json"]


# ---- prune: paths checked before any work -----------------------------------------------

def test_prune_output_naming_a_directory_fails_before_any_work(model, monkeypatch):
    import graphprune.api

    def no_work(*a, **k):
        raise AssertionError("the model was loaded: the -o check came after the work")

    monkeypatch.setattr(graphprune.api, "load_onnx", no_work)
    (model.parent / "out.onnx").mkdir()
    rc, err = run("prune", model, "-o", model.parent / "out.onnx", "--no-bench")
    assert rc == 2 and "is a directory" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["prune", "{m}", "--save-config", "{m}", "-o", "{o}"],
    ["--log-file", "{m}", "prune", "{m}", "-o", "{o}"],
    ["prune", "{m}", "-o", "{o}", "--save-config", "{o}"],
], ids=["save-config", "log-file", "two-outputs-one-path"])
def test_prune_options_never_write_over_the_model(model, argv):
    before = tree(model.parent)
    rc, err = run(*[str(model) if a == "{m}" else str(model.parent / "o.onnx") if a == "{o}" else a for a in argv])
    assert rc == 2 and "Traceback" not in err, err
    assert tree(model.parent) == before


# ---- a model and its plan are one result -------------------------------------------------

def test_model_records_its_plan_and_foreign_pairs_are_refused(model):
    import graphprune as gp
    from graphprune.outputs import PLAN_KEY, plan_digest
    from graphprune.plan import Plan

    d = model.parent
    assert run("prune", model, "-o", d / "a.onnx", "--no-bench")[0] == 0
    assert run("prune", model, "--ratio", "0.5", "-o", d / "b.onnx", "--no-bench")[0] == 0
    a = gp.load(d / "a.onnx", fold=False)
    assert a.metadata_props[PLAN_KEY] == plan_digest(Plan.load(d / "a.plan.json"))
    # what a run killed between writing the plan and renaming the model left: a new plan
    # beside the old model
    shutil.copy(d / "b.plan.json", d / "a.plan.json")
    rc, err = run("check", model, d / "a.onnx", "--plan", d / "a.plan.json")
    assert rc == 3 and "does not belong to model" in err
    res = gp.check(model, d / "a.onnx", Plan.load(d / "b.plan.json"))
    assert not res.ok and "does not belong" in res.unpaired and "FAIL" in res.summary()
    # a re-indented plan is still the same plan
    data = json.loads((d / "b.plan.json").read_text())
    (d / "b2.plan.json").write_text(json.dumps(data, indent=4, sort_keys=True))
    assert run("check", model, d / "b.onnx", "--plan", d / "b2.plan.json")[0] == 0


def test_replaying_a_plan_on_the_model_it_produced_is_refused(model):
    d = model.parent
    assert run("prune", model, "-o", d / "a.onnx", "--no-bench")[0] == 0
    rc, err = run("prune", d / "a.onnx", "--plan", d / "a.plan.json", "-o", d / "twice.onnx", "--no-bench")
    assert rc == 2 and "already pruned" in err
    assert not (d / "twice.onnx").exists()
    # the plan still replays on the model it was made for
    assert run("prune", model, "--plan", d / "a.plan.json", "-o", d / "again.onnx", "--no-bench")[0] == 0


# ---- temporary files -------------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_a_killed_run_are_removed_by_the_next(model):
    d = model.parent
    dead = d / f".graphprune-tmp.{_dead_pid()}.a.onnx.x1y2.tmp"
    dead.write_bytes(b"")  # what SIGKILL left: a 0-byte temp file
    live = d / ".graphprune-tmp.1.a.onnx.x3y4.tmp"  # pid 1 is alive: another run's file
    live.write_bytes(b"")
    assert run("prune", model, "-o", d / "a.onnx", "--no-bench")[0] == 0
    assert not dead.exists() and live.exists()


SIGTERM_SCRIPT = r"""
import os, signal, sys
import graphprune.plan
from graphprune.cli.main import main

def save(self, path):  # SIGTERM arrives while the run writes its results
    os.kill(os.getpid(), signal.SIGTERM)

graphprune.plan.Plan.save = save
sys.exit(main(["prune", sys.argv[1], "-o", sys.argv[2], "--no-bench", "--no-check"]))
"""


def test_sigterm_leaves_no_temporary_and_no_half_result(model):
    d = model.parent
    out = d / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, str(model), str(out / "a.onnx")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode in (143, -15) and "Traceback" not in p.stderr, p.stderr
    assert list(out.iterdir()) == []  # no model without its plan, no temporary file


SIGTERM_IN_A_CALLBACK = r"""
import os, signal, sys
import graphprune.plan
from graphprune.cli.main import main

def save(self, path):  # SIGTERM inside a C++ callback: TVM's FFI hands the SystemExit back as RuntimeError('143')
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except SystemExit as exc:
        raise RuntimeError(str(exc.code)) from None

graphprune.plan.Plan.save = save
sys.exit(main(["prune", sys.argv[1], "-o", sys.argv[2], "--no-bench", "--no-check"]))
"""


def test_sigterm_that_a_library_turns_into_another_error_is_not_an_internal_error(model):
    """SIGTERM during TVM tuning came back from its FFI as 'internal error: RuntimeError: 143
    ... please report it' with exit 1; it is a termination: exit 143, said in words, and the
    outputs cleaned up as for a plain SIGTERM."""
    out = model.parent / "out2"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", SIGTERM_IN_A_CALLBACK, str(model), str(out / "a.onnx")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 143 and "terminated (signal 15)" in p.stderr, p.stderr
    assert "internal error" not in p.stderr and list(out.iterdir()) == []


def test_outputs_inside_input_folders_or_the_compile_folder(model, tmp_path):
    d = model.parent
    (d / "imgs").mkdir()
    (d / "imgs" / "a.png").write_bytes(b"not really")
    (d / "c").mkdir()
    (d / "c" / "report.json").write_text("{}")  # a compile folder given to bench
    before = tree(d)
    cases = [["compile", model, "-o", d / "imgs" / "out", "--calib", d / "imgs"],
             ["--log-file", d / "new" / "log.txt", "compile", model, "-o", d / "new"],
             ["bench", d / "c", "--json-out", d / "c" / "report.json"]]
    for argv in cases:
        rc, err = run(*argv)
        assert rc == 2 and "Traceback" not in err, (argv, err)
        assert tree(d) == before, argv
    assert not (d / "new").exists()


def test_an_output_that_is_not_a_model_file_is_refused_in_words(model):
    """`-o .` raised a ValueError traceback (exit 1) from the path checks; a folder is said
    to be one."""
    for out in (".", str(model.parent) + "/"):
        rc, err = run("prune", model, "-o", out)
        assert rc == 2 and "is a folder: prune writes one .onnx file" in err and "Traceback" not in err


def test_inputs_file_is_fitted_to_the_model_s_inputs_or_refused_in_words(model, tmp_path):
    """--inputs with one array under another name (what --calib accepts) failed as an
    'unreadable model' (exit 4, ONNX Runtime's message); an array naming no input likewise.
    One array for a one-input model is now that input; a wrong name is a usage error (2)."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)  # the sample's input
    np.savez(tmp_path / "one.npz", foo=x)
    np.savez(tmp_path / "two.npz", input=x, extra=np.zeros(3, np.float32))
    assert run("prune", model, "-o", tmp_path / "a.onnx", "--inputs", tmp_path / "one.npz", "--no-bench")[0] == 0
    rc, err = run("prune", model, "-o", tmp_path / "b.onnx", "--inputs", tmp_path / "two.npz", "--no-bench")
    assert rc == 2 and "array(s) ['extra'] name no input of the model" in err and not (tmp_path / "b.onnx").exists()
    rc, err = run("check", model, tmp_path / "a.onnx", "--inputs", tmp_path / "two.npz")
    assert rc == 2 and "['extra']" in err
    # arrays the model cannot take (another channel count, ints): the user's, exit 2 with both
    # shapes; it was exit 4 'ONNX Runtime fails to run the input model ... or the model itself'
    np.savez(tmp_path / "shape.npz", input=x[:, :2])
    np.savez(tmp_path / "ints.npz", input=x.astype(np.int64))
    for npz, said in (("shape.npz", "index: 1 Got: 2 Expected: 3"), ("ints.npz", "tensor(int64)")):
        rc, err = run("check", model, tmp_path / "a.onnx", "--inputs", tmp_path / npz)
        assert rc == 2 and "--inputs: the input model does not run on them" in err and said in err, err


def test_a_plan_saved_onto_a_folder_is_refused_in_words(samples_dir, tmp_path):
    """res.plan.save('.') was an OSError (EBUSY) from the atomic rename."""
    import graphprune as gp
    from graphprune.errors import UsageError

    res = gp.prune(samples_dir / "tiny_resnet.onnx", ratio=0.3)
    with pytest.raises(UsageError, match="is a directory"):
        res.plan.save(tmp_path)
    assert not list(tmp_path.iterdir())
