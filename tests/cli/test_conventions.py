"""CLI conventions (issue 17 §3): --json on every verb is one JSON document on stdout with a
"schema" key; -q prints nothing on success; global options work after the verb; `env` is a
doctor listing each optional feature; caches honour XDG_CACHE_HOME; progress counts what it
says; `--help` imports no heavy package."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphprune.cli.main import VERBS, main

FEATURES = {"torch", "tvm", "cross_compiler", "qemu", "pillow", "matplotlib", "olive"}


@pytest.fixture(scope="module")
def work(samples_dir, tmp_path_factory):
    """A pruned tiny_resnet with its plan, and a compile folder of it."""
    d = tmp_path_factory.mktemp("conventions")
    src = samples_dir / "tiny_resnet.onnx"
    assert main(["prune", str(src), "-o", str(d / "small.onnx"), "--no-bench", "-q"]) == 0
    assert main(["compile", str(src), "--target", "x86", "-o", str(d / "c"), "-q"]) == 0
    return {"src": str(src), "small": str(d / "small.onnx"), "plan": str(d / "small.plan.json"),
            "compiled": str(d / "c"), "dir": d, "mobilenet": str(samples_dir / "tiny_mobilenet.onnx")}


def _argv(verb: str, w: dict, n: int) -> list[str]:
    """A successful run of `verb` (outputs numbered by `n`, so runs do not collide)."""
    d = w["dir"]
    return {
        "inspect": ["inspect", w["src"]],
        "prune": ["prune", w["src"], "-o", str(d / f"p{n}.onnx"), "--ratio", "0.4"],
        "check": ["check", w["src"], w["small"], "--plan", w["plan"], "--random", "1"],
        "compile": ["compile", w["src"], "--target", "x86", "-o", str(d / f"c{n}")],
        "bench": ["bench", w["compiled"], w["src"], "--repeats", "2", "--warmup", "0", "--rounds", "1"],
        "targets": ["targets"],
        "passes": ["passes", "--rules"],
        "env": ["env"],
    }[verb]


def test_every_verb_is_covered():
    assert set(VERBS) == {"inspect", "prune", "check", "compile", "bench", "targets", "passes", "env"}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_json_is_the_only_stdout(verb, work, capfd):
    """--json (here after the verb) prints one JSON document, with a schema key, and nothing
    else on stdout; the human text goes to stderr."""
    assert main(_argv(verb, work, 1) + ["--json"]) == 0
    out, _ = capfd.readouterr()
    data = json.loads(out)  # the whole of stdout is one document
    assert isinstance(data, dict) and data["schema"].startswith("graphprune.") and "/" in data["schema"]
    if verb in ("prune", "check"):
        assert data["oracle"]["ok"] is True and "PASS" in data["oracle"]["summary"]
        assert data["input_shapes"]["input"]["shape"] == [1, 3, 16, 16]
    if verb == "prune":
        assert data["before"]["macs"] > data["after"]["macs"] > 0
        assert data["after"]["latency_ms"] > 0 and data["before"]["bytes"] > data["after"]["bytes"]
        assert [Path(p).name for p in data["wrote"]] == ["p1.onnx", "p1.plan.json"]
        assert all(Path(p).exists() for p in data["wrote"])
    if verb == "compile":
        assert data["schema"].startswith("graphprune.report/") and Path(data["out_dir"]).name == "c1"
        assert data["backend"]["chosen"] == "onnxruntime" and data["checks"]["oracle"]["ok"]
    if verb == "bench":
        assert len(data["results"]) == 2 and all(r["median_ms"] > 0 for r in data["results"])


def test_json_before_the_verb_and_after_a_failure(work, capfd):
    """A failed check still prints its verdict as JSON, with the exit code and the error."""
    argv = ["--json", "check", work["mobilenet"], work["small"], "--plan", work["plan"]]
    code = main(argv)
    out, err = capfd.readouterr()
    data = json.loads(out)
    assert code == data["exit_code"] != 0 and data["error"] and "error" in err
    assert data["schema"].startswith("graphprune.")


@pytest.mark.parametrize("argv,says", [
    (["prune", "m.onnx", "--ratio", "2", "--json"], "--ratio: must be in [0, 1)"),
    (["--json", "prune", "m.onnx", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
])
def test_json_prints_a_status_for_an_option_argparse_refuses(capfd, argv, says):
    """--ratio 2 or an unknown flag printed nothing on stdout under --json (exit 2), while
    other usage errors printed the status document (probe)."""
    assert main(argv) == 2
    out, err = capfd.readouterr()
    data = json.loads(out)
    assert data == {"schema": "graphprune.status/1", "verb": "prune", "exit_code": 2, "error": data["error"],
                    "hint": "see `graphprune --help`" if "bogus" in says else data["hint"]}
    assert says in data["error"] and says in err


def test_bench_json_out_writes_the_file(work, capfd):
    path = work["dir"] / "bench.json"
    assert main(_argv("bench", work, 2) + ["--json-out", str(path)]) == 0
    assert "speed vs first" in capfd.readouterr().out  # the table, as without --json-out
    assert json.loads(path.read_text())["schema"] == "graphprune.bench/1"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_quiet_prints_nothing_on_success(verb, work, capfd):
    assert main(_argv(verb, work, 3) + ["-q"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_quiet_still_prints_errors(work, capfd):
    assert main(["check", work["mobilenet"], work["small"], "--plan", work["plan"], "-q"]) != 0
    out, err = capfd.readouterr()
    assert out == "" and "error" in err


def test_global_options_after_the_verb(work, tmp_path, capfd):
    log = tmp_path / "run.log"
    out = tmp_path / "v.onnx"
    assert main(["prune", work["src"], "-o", str(out), "--no-bench", "--log-file", str(log), "-q"]) == 0
    assert capfd.readouterr() == ("", "")
    assert "DEBUG graphprune.passes" in log.read_text() and out.exists()
    # -v before and after the verb add up to debug logging with module names
    assert main(["-v", "inspect", work["src"], "-v"]) == 0
    assert "prunable groups" in capfd.readouterr().out
    assert main(["prune", work["src"], "-o", str(tmp_path / "w.onnx"), "--no-bench", "-v"]) == 0
    assert "DEBUG graphprune.passes" in capfd.readouterr().err
    # a log file given after the verb is checked like one given before: it may not be the input
    assert main(["inspect", work["src"], "--log-file", work["src"]]) == 2
    assert "--log-file" in capfd.readouterr().err


def test_main_in_process_leaves_the_graphprune_logger_as_it_was(work, tmp_path, caplog):
    """main() called in-process (a toolchain step, a test) once left the 'graphprune' logger
    with propagate=False and a handler on its (since closed) stderr: later records reached
    neither the caller's handlers nor pytest's caplog, and each one printed 'Logging error'."""
    import logging

    lg = logging.getLogger("graphprune")
    before = (list(lg.handlers), lg.level, lg.propagate)
    log = tmp_path / "run.log"
    assert main(["prune", work["src"], "-o", str(tmp_path / "v.onnx"), "--no-bench", "--log-file", str(log)]) == 0
    assert (list(lg.handlers), lg.level, lg.propagate) == before
    with caplog.at_level(logging.WARNING, logger="graphprune"):
        logging.getLogger("graphprune.passes").warning("after main")
    assert "after main" in caplog.text
    assert "DEBUG graphprune.passes" in log.read_text()


def test_env_lists_each_optional_feature(capfd):
    assert main(["env", "--json"]) == 0
    data = json.loads(capfd.readouterr().out)
    assert set(data["features"]) == FEATURES
    for key, f in data["features"].items():
        assert f["available"] or f["install"].startswith(("pip install", "sudo apt-get install")) or \
            "reinstall it: pip install" in f["install"], (key, f)
        assert f["available"] is (f["install"] is None)
    assert isinstance(data["plugins"], list)
    assert main(["env"]) == 0
    text = capfd.readouterr().out
    assert "optional features:" in text and "plugins:" in text and "\x1b[" not in text
    for f in data["features"].values():
        assert f["what"] in text


def test_env_gives_the_install_command_of_a_missing_or_broken_feature(tmp_path, monkeypatch, capfd):
    from graphprune.cli import env_cmd
    from graphprune.plugins import PluginStatus

    (tmp_path / "gp_broken_pkg").mkdir()
    (tmp_path / "gp_broken_pkg" / "__init__.py").write_text("import gp_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    features = [env_cmd.Feature("absent", "an absent package", env_cmd._imports("gp_absent_pkg_xyz"),
                                "pip install 'graphprune[absent]'"),
                env_cmd.Feature("broken", "a broken package", env_cmd._imports("gp_broken_pkg"),
                                "pip install 'graphprune[broken]'"),
                env_cmd.Feature("tool", "a program", env_cmd._program("gp-no-such-program"),
                                "sudo apt-get install gp-tool")]
    monkeypatch.setattr(env_cmd, "FEATURES", features)
    monkeypatch.setattr("graphprune.plugins.load_plugins", lambda: [
        PluginStatus("graphprune.passes", "my-pass", "mypkg:MyPass", "mypkg", True),
        PluginStatus("graphprune.rules", "Fused", "bad:rule", "badpkg", False, "ImportError: no module bad")])
    assert main(["env", "--json"]) == 0
    data = json.loads(capfd.readouterr().out)
    f = data["features"]
    assert f["absent"]["install"] == "pip install 'graphprune[absent]'" and not f["absent"]["available"]
    assert f["broken"]["install"].startswith("pip install gp_missing_dependency_xyz")  # the module that failed
    assert f["tool"]["install"] == "sudo apt-get install gp-tool"
    assert [(p["name"], p["loaded"]) for p in data["plugins"]] == [("my-pass", True), ("Fused", False)]
    assert main(["env"]) == 0
    text = capfd.readouterr().out
    assert "install: pip install 'graphprune[absent]'" in text and "install: sudo apt-get install gp-tool" in text
    assert "loaded    graphprune.passes: my-pass" in text and "FAILED" in text and "no module bad" in text


def test_caches_honour_xdg_cache_home(tmp_path, monkeypatch):
    from graphprune.cache import cache_dir, tvm_db_root
    from graphprune.cli import compile_cmd
    from graphprune.cli.main import build_parser

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tvm_db_root() == tmp_path / "xdg" / "graphprune" / "tvm-db"
    args = build_parser().parse_args(["compile", "m.onnx"])
    assert compile_cmd.options(args).db == str(tmp_path / "xdg" / "graphprune" / "tvm-db")
    assert compile_cmd.options(build_parser().parse_args(["compile", "m.onnx", "--db", "/x"])).db == "/x"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # not absolute: ignored (XDG spec)
    assert cache_dir() == Path.home() / ".cache" / "graphprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tvm_db_root() == Path.home() / ".cache" / "graphprune" / "tvm-db"


def test_tvm_aarch64_runtime_cache_honours_xdg_cache_home(tmp_path, monkeypatch):
    from importlib import metadata

    try:
        metadata.version("apache-tvm")
        metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError:
        pytest.skip("TVM not installed")
    from graphprune.backends.tvm import qemu

    monkeypatch.delenv("GRAPHPRUNE_TVM_AARCH64_RUNTIME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert qemu._cache_root().parent == tmp_path / "graphprune" / "tvm-aarch64-runtime"


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_counts_its_unit_with_an_eta(monkeypatch):
    from graphprune.runtime.calibration import progress

    logging.getLogger("graphprune").setLevel(logging.INFO)
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert list(progress(range(3), 3, "sensitivity sweep", unit="groups")) == [0, 1, 2]
    text = tty.getvalue()
    assert "3/3 groups" in text and "ETA" in text and "batches" not in text
    plain = io.StringIO()  # not a terminal: no bar
    monkeypatch.setattr(sys, "stderr", plain)
    assert list(progress(range(3), 3, "calibration statistics")) == [0, 1, 2]
    assert plain.getvalue() == ""


def test_sensitivity_sweep_counts_groups(samples_dir, tmp_path, monkeypatch, capfd):
    """The sweep iterates over groups, and its progress says so (it said "batches")."""
    import graphprune.runtime.calibration as calibration

    seen = []
    real = calibration.progress

    def recording(items, total, desc, unit="batches"):
        seen.append((desc, unit))
        return real(items, total, desc, unit)

    monkeypatch.setattr(calibration, "progress", recording)
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32))
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "-o", str(tmp_path / "s.onnx"), "--no-bench",
                 "--allocation", "sensitivity", "--calib", str(tmp_path / "calib.npz"), "-q",
                 "--search-budget", "1"]) == 0  # one sweep (not one per search candidate)
    assert ("sensitivity sweep", "groups") in seen


def test_help_imports_no_heavy_package():
    """`graphprune --help` stays fast: building the parser imports none of numpy, onnx, ORT,
    torch, TVM (each verb imports what it needs when it runs)."""
    code = ("import sys; from graphprune.cli.main import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('numpy', 'onnx', 'onnx_ir', 'onnxruntime', 'torch', 'tvm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
