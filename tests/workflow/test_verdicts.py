"""Never a silent regression (issue 13 §3): the deployed pruned model is compared with the
input model in ONNX Runtime, "not faster" is said in one line, `--min-speedup` fails
(exit 5, nothing written), a cross target's latency line is never blank, "UNTUNED" only
when no kernel has a schedule, and a run without --calib says accuracy was not measured.
Timings are faked where they decide the outcome: tests check logic, never wall-clock."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphprune.workflow.compile as compile_mod
from graphprune.backends.targets import resolve_target
from graphprune.cli.main import main
from graphprune.errors import SlowerThanAskedError
from graphprune.workflow.compile import CompileOptions, _choose, tvm_tuning
from graphprune.workflow.verdicts import NO_CALIB

NOT_FASTER = "NOT FASTER"


def _fake_latencies(monkeypatch, dense: float, pruned: float) -> None:
    """The side-by-side measurement, faked: dense input in ORT vs the pruned artifacts."""

    def fake(runners):
        lat = {k: pruned for k in runners}
        lat["dense"] = dense
        return lat

    monkeypatch.setattr(compile_mod, "_latencies", fake)


def _compile(samples_dir, out, *flags) -> int:
    return main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--target", "x86", "-o", str(out), *flags])


def test_not_faster_is_said_in_summary_and_report(samples_dir, tmp_path, monkeypatch, capsys):
    _fake_latencies(monkeypatch, dense=1.0, pruned=2.0)
    assert _compile(samples_dir, tmp_path / "slow") == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if NOT_FASTER in ln]
    assert len(lines) == 1 and "2.000 ms" in lines[0] and "1.000 ms" in lines[0]
    assert "dense input (ONNX Runtime) 1.000 ms" in text and "pruned (ONNX Runtime) 2.000 ms" in text
    rep = json.loads((tmp_path / "slow" / "report.json").read_text())
    assert rep["latency"]["not_faster"] and NOT_FASTER in rep["latency"]["line"]
    assert rep["latency"]["speedup"] == pytest.approx(0.5)
    assert NOT_FASTER in (tmp_path / "slow" / "report.md").read_text()
    assert NOT_FASTER in (tmp_path / "slow" / "report.html").read_text()


def test_faster_says_so_and_passes_min_speedup(samples_dir, tmp_path, monkeypatch, capsys):
    _fake_latencies(monkeypatch, dense=2.0, pruned=1.0)
    assert _compile(samples_dir, tmp_path / "fast", "--min-speedup", "1.5") == 0
    text = capsys.readouterr().out
    assert NOT_FASTER not in text and "2.00x faster than the input model in ONNX Runtime" in text
    rep = json.loads((tmp_path / "fast" / "report.json").read_text())
    assert not rep["latency"]["not_faster"] and rep["config"]["min_speedup"] == 1.5


@pytest.mark.parametrize("tuned_threads,split", [(1, True), (0, False)])
def test_speedup_from_tuned_session_settings_is_told_apart(samples_dir, tmp_path, monkeypatch, capsys,
                                                           tuned_threads, split):
    """The input runs with ONNX Runtime's default settings, the deployment with its tuned
    ones: when they differ, the input is measured under the deployment's settings too, and
    the line says how much of the speed-up the model gives and how much the settings."""
    from graphprune.backends.onnxruntime import OrtBackend

    def tuned(self, model_path, base, feeds, log_fn):
        return {**base, "intra_op_num_threads": tuned_threads, "inter_op_num_threads": 1 if tuned_threads else 0}

    seen = {}

    def fake(runners):
        seen.update(runners)
        return {k: {"dense": 3.0, "dense_same_settings": 2.0}.get(k, 1.0) for k in runners}

    monkeypatch.setattr(OrtBackend, "_tune_session", tuned)
    monkeypatch.setattr(compile_mod, "_latencies", fake)
    assert _compile(samples_dir, tmp_path / "o") == 0
    line = json.loads((tmp_path / "o" / "report.json").read_text())["latency"]["line"]
    assert line.startswith("3.00x faster than the input model in ONNX Runtime")
    assert ("dense_same_settings" in seen) == split
    if split:
        assert "runs 2.000 ms: 2.00x from the model, 1.50x from the settings" in line
        assert line in capsys.readouterr().out
    else:
        assert "settings" not in line


def test_session_settings_compare_what_the_session_runs_with():
    from graphprune.workflow.compile import _other_settings

    cores = __import__("os").cpu_count() or 1
    default = {"intra_op_num_threads": 0, "inter_op_num_threads": 0, "execution_mode": "ORT_SEQUENTIAL",
               "graph_optimization_level": "ORT_ENABLE_ALL"}
    same = {**default, "intra_op_num_threads": cores, "inter_op_num_threads": 1, "model": "model.onnx"}
    assert not _other_settings(same, default)  # 0 is one thread per core; inter-op is unused when sequential
    assert _other_settings({**default, "execution_mode": "ORT_PARALLEL", "inter_op_num_threads": cores}, default)
    if cores > 1:
        assert _other_settings({**default, "intra_op_num_threads": 1}, default)


@pytest.mark.parametrize("dense,pruned,floor", [(1.0, 2.0, "1.0"), (1.0, 1.0, "1.0"), (2.0, 1.0, "3")])
def test_min_speedup_fails_with_its_exit_code_and_writes_nothing(samples_dir, tmp_path, monkeypatch, capsys,
                                                                dense, pruned, floor):
    _fake_latencies(monkeypatch, dense=dense, pruned=pruned)
    out = tmp_path / "gate"
    assert _compile(samples_dir, out, "--min-speedup", floor) == SlowerThanAskedError.exit_code == 5
    err = capsys.readouterr().err
    assert "--min-speedup" in err and "nothing was written" in err
    assert not out.exists() and not list(tmp_path.glob(".*"))
    nested = tmp_path / "m.graphprune" / "x86"  # the default layout: the folder made for it goes too
    assert _compile(samples_dir, nested, "--min-speedup", floor) == 5
    capsys.readouterr()
    assert not nested.parent.exists()
    # the hint does not suggest the backend already used ('try --backend onnxruntime' under it)
    assert _compile(samples_dir, out, "--min-speedup", floor, "--backend", "onnxruntime") == 5
    err = capsys.readouterr().err
    assert "try --backend onnxruntime" not in err and "try --backend tvm" in err


def test_min_speedup_is_documented_with_its_exit_code(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "5 slower than --min-speedup" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    assert "--min-speedup" in capsys.readouterr().out


def test_min_speedup_needs_a_measurement_on_the_target(samples_dir, tmp_path):
    out = tmp_path / "arm"
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--target", "arm", "-o", str(out),
                 "--min-speedup", "1.2"]) == 2
    assert not out.exists()


def test_cross_target_without_rpc_gives_a_host_estimate(samples_dir, tmp_path, monkeypatch, capsys):
    _fake_latencies(monkeypatch, dense=3.0, pruned=1.5)
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--target", "arm", "-o",
                 str(tmp_path / "arm")]) == 0
    text = capsys.readouterr().out
    want = "latency: not measured on arm (no --rpc); host estimate"
    assert want in text and "pruned 1.500 ms vs input 3.000 ms (2.00x)" in text
    rep = json.loads((tmp_path / "arm" / "report.json").read_text())
    assert rep["after"]["latency_note"].startswith("not measured on arm (no --rpc); host estimate")
    assert rep["latency"]["host_estimate_ms"] == 1.5
    md = (tmp_path / "arm" / "report.md").read_text()
    assert want in md and "| 3 (this machine) | not measured on the target (below) |" in md


@pytest.mark.parametrize("target,estimate", [("arm", True), ("x86", False)])
def test_a_latency_target_for_another_cpu_is_told_as_a_host_estimate(samples_dir, tmp_path, capsys, target, estimate):
    """--target-latency is met in ONNX Runtime on this machine; compiling for arm said a bare
    'met', read as the device's latency."""
    out = tmp_path / target
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--target", target, "-o", str(out),
                 "--target-latency", "0.7"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("--target-latency 0.7:"))
    assert ("timed on this machine's CPU, not on arm: a host estimate" in line) == estimate, line
    budget = json.loads((out / "report.json").read_text())["budget"]
    assert budget.get("host_estimate", False) == estimate and budget["line"] == line


def test_compile_without_calib_says_accuracy_not_measured(samples_dir, tmp_path, monkeypatch, capsys):
    _fake_latencies(monkeypatch, dense=2.0, pruned=1.0)
    assert _compile(samples_dir, tmp_path / "nc") == 0
    assert NO_CALIB in capsys.readouterr().out
    assert json.loads((tmp_path / "nc" / "report.json").read_text())["accuracy"] == NO_CALIB
    assert NO_CALIB in (tmp_path / "nc" / "report.md").read_text()


def _calib(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    return str(tmp_path / "calib.npz")


def test_compile_with_calib_does_not_say_no_calib(samples_dir, tmp_path, monkeypatch, capsys):
    _fake_latencies(monkeypatch, dense=2.0, pruned=1.0)
    assert _compile(samples_dir, tmp_path / "c", "--calib", _calib(tmp_path), "--calib-batch", "1",
                    "--max-drop", "1", "--search-budget", "1") == 0  # not about the search: one candidate
    assert "no --calib" not in capsys.readouterr().out
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    assert rep["accuracy"] is None and "no --calib" not in (tmp_path / "c" / "report.md").read_text()


def test_compile_shows_the_search_as_it_runs_and_its_table_at_the_end(samples_dir, tmp_path, monkeypatch, capsys):
    """The candidate search takes minutes on a real model: compile says each scored
    candidate as it finishes (it said nothing until the oracle) and prints the table of
    candidates and scores with the summary, as prune does."""
    _fake_latencies(monkeypatch, dense=2.0, pruned=1.0)
    assert _compile(samples_dir, tmp_path / "c", "--calib", _calib(tmp_path), "--calib-batch", "1",
                    "--max-drop", "1", "--search-budget", "2") == 0
    cap = capsys.readouterr()
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    names = [r["name"] for r in rep["search"]["candidates"]]
    assert len(names) == 2
    # progress goes where compile's other progress goes (the log, on stderr), the summary to stdout
    assert cap.err.index(f"search 1/2: {names[0]}: score") < cap.err.index(f"search 2/2: {names[1]}: score") \
        < cap.err.index("oracle inputs:")
    assert "search: 2 candidates scored by" in cap.out and f"chosen: {rep['search']['chosen']}" in cap.out


def test_prune_says_accuracy_not_measured_without_calib(samples_dir, tmp_path, capsys):
    src = str(samples_dir / "tiny_resnet.onnx")
    assert main(["prune", src, "-o", str(tmp_path / "p.onnx"), "--no-bench"]) == 0
    assert NO_CALIB in capsys.readouterr().out
    assert main(["prune", src, "-o", str(tmp_path / "q.onnx"), "--no-bench", "--calib", _calib(tmp_path),
                 "--calib-batch", "1", "--max-drop", "1", "--search-budget", "1"]) == 0
    assert "no --calib" not in capsys.readouterr().out


# ---- "UNTUNED" only when no kernel has a tuned schedule ----------------------------------------

def _tvm_result(tuned: bool, tasks: int, scheduled: int, trials: int, sparse: int = 0) -> dict:
    return {"tuned": tuned, "trials": trials,
            "coverage": {"tasks": tasks, "with_schedule": scheduled,
                         "missing": [f"k{i}" for i in range(tasks - scheduled)]},
            "sparse_kernels": [{"chosen": "bsr_8x1"}] * sparse}


@pytest.mark.parametrize("res,requested,untuned", [
    (_tvm_result(False, 5, 0, 0), 0, True),        # no trials, empty database
    (_tvm_result(True, 5, 5, 0), 0, False),        # --tune-trials 0, schedules reused from the database
    (_tvm_result(False, 5, 3, 8), 8, False),       # partly tuned: not UNTUNED, says how many lack one
    (_tvm_result(True, 5, 5, 40), 32, False),      # tuned (the sparse kernels' extra tuning: 40 measured)
    (_tvm_result(False, 0, 0, 0, sparse=2), 0, False),  # all compute in graphprune's own sparse kernels
    (_tvm_result(True, 16, 16, 16), 8, False),     # fewer trials than kernels: one each, and it says why
    (_tvm_result(True, 2, 2, 256), 256, False),    # 128 per kernel: tuned, not 'lightly'
])
def test_untuned_only_without_any_schedule(res, requested, untuned):
    opts = CompileOptions(backend="tvm", tune_trials=requested)
    chosen, reason = _choose("tvm", resolve_target("x86"), {"tvm": res}, opts, [])
    assert chosen == "tvm" and ("UNTUNED" in reason) == untuned
    # the requested and the measured trial counts are both stated, never one for the other
    assert f"--tune-trials {requested}, {res['trials']} trials measured in this run" in reason
    text = tvm_tuning(res, requested)
    assert ("at least one per kernel" in text) == (0 < requested < res["coverage"]["tasks"] < res["trials"] + 1), text
    if res["coverage"]["missing"] and res["coverage"]["with_schedule"]:
        assert text.startswith("partly tuned") and f"{len(res['coverage']['missing'])} of 5 kernels" in text
    # one trial per kernel was called plainly 'tuned' of a build 14.6x slower than ONNX Runtime
    tasks = res["coverage"]["tasks"]
    assert ("lightly tuned" in text) == (res["tuned"] and tasks > 0 and res["trials"] / tasks < 8), text


def test_slower_than_asked_error_has_its_own_exit_code():
    from graphprune import errors

    codes = {c.exit_code for n, c in vars(errors).items()
             if isinstance(c, type) and issubclass(c, errors.GraphpruneError) and c is not SlowerThanAskedError}
    assert SlowerThanAskedError.exit_code == 5 and 5 not in codes


def test_per_layer_kernel_speedups_are_labelled_and_next_to_end_to_end():
    """The per-layer table compares with TVM's dense kernel: the report says so, and puts the
    end-to-end figure against the input model in ONNX Runtime next to it."""
    from graphprune.report.writer import markdown
    from graphprune.workflow.verdicts import latency_verdict

    verdict = latency_verdict(1.0, 1.6, "tvm")
    report = {"input": {"path": "mlp.onnx"}, "target": {"name": "x86", "description": "this CPU"},
              "command": ["graphprune", "compile"], "before": {"latency_ms": 1.0}, "after": {"latency_ms": 1.6},
              "latency": verdict,
              "backend": {"chosen": "tvm", "reason": "requested", "results": {"tvm": {"sparse_kernels": [
                  {"layer": "fc1", "shape": [[1, 64], [256, 64]], "sparsity": 0.9, "dense_ms": 0.7,
                   "candidates": {"bsr_8x1": 0.05}, "chosen": "bsr_8x1", "speedup": 14.0, "measured": True}]}}}}
    md = markdown(report)
    table = md.split("## Sparse kernels")[1]
    assert "against TVM's own dense kernel" in table and "not against ONNX Runtime's dense kernel" in table
    assert "End to end against the input model in ONNX Runtime: NOT FASTER" in table
    assert md.count("NOT FASTER") == 2 and "1.60x the latency" in md


def test_auto_ships_the_fastest_correct_artifact(tmp_path):
    """auto: a TVM build whose outputs differ is neither measured nor shipped, and it is said."""
    from graphprune.workflow.compile import _Compile, _drop_incorrect_tvm

    (tmp_path / "tvm").mkdir()
    c = _Compile(tmp_path / "m.onnx", CompileOptions(tune_trials=8), resolve_target("x86"), "auto", tmp_path / "o",
                 print)
    c.results = {"onnxruntime": {"latency_ms": 2.0}, "tvm": {"tuned": True, "trials": 8}}
    c.checks = {"numerics_onnxruntime": {"ok": True, "summary": "ok"},
                "numerics_tvm": {"ok": False, "summary": "worst error 3e-01"}}
    runners = {"onnxruntime": None, "tvm": None, "dense": None}
    _drop_incorrect_tvm(c, runners, tmp_path)
    assert "tvm" not in runners and not (tmp_path / "tvm").exists()
    assert "numerics_tvm" not in c.checks and c.checks["rejected_tvm"]["ok"] is False
    chosen, reason = _choose("auto", c.target, c.results, c.opts, c.notes)
    assert chosen == "onnxruntime" and "not correct" in reason and any("not shipped" in n for n in c.notes)
    # asked for by name, a wrong TVM build still fails the run (nothing is dropped here)
    c2 = _Compile(tmp_path / "m.onnx", CompileOptions(), resolve_target("x86"), "tvm", tmp_path / "o", print)
    c2.checks = {"numerics_tvm": {"ok": False, "summary": "bad"}}
    runners = {"tvm": None}
    _drop_incorrect_tvm(c2, runners, tmp_path)
    assert "tvm" in runners and "numerics_tvm" in c2.checks


def _fake_prune_latency(monkeypatch, dense: float, pruned: float) -> None:
    """prune's side-by-side ORT measurement, faked: the input model vs the written one."""
    import graphprune.cli.common as common

    monkeypatch.setattr(common, "ort_latency_ms", lambda path, shapes=None: pruned if ".pruned" in str(path) else dense)


@pytest.mark.parametrize("round_to,dense,pruned,hint", [
    ("1", 1.0, 0.95, True),  # far fewer MACs, almost no speed-up, odd widths allowed: the hint
    ("auto", 1.0, 0.95, False),  # widths already multiples of the lanes: something else is slow
    ("1", 3.5, 1.0, False),  # speed-up close to the MAC reduction (3.6x): nothing to say
])
def test_prune_names_the_width_multiple_when_odd_widths_cost_the_speedup(samples_dir, tmp_path, monkeypatch, capsys,
                                                                         round_to, dense, pruned, hint):
    from graphprune.backends.targets import host_target

    _fake_prune_latency(monkeypatch, dense, pruned)
    out = tmp_path / "m.pruned.onnx"
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "--ratio", "0.5", "--round-to", round_to,
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.loads(out.with_name("m.pruned.report.json").read_text())
    plan = json.loads(out.with_name("m.pruned.plan.json").read_text())
    lanes = host_target().simd_lanes
    assert plan["settings"]["round_to"] == (lanes if round_to == "auto" else 1)
    # the summary says which multiple the widths were kept to, and why (auto: the lanes)
    assert (f"round-to: widths kept multiples of {lanes} (auto: this CPU's {lanes} float32 lanes" in text) \
        == (round_to == "auto")
    assert 3.0 < rep["before"]["macs"] / rep["after"]["macs"] < 4.3  # what the fake speed-ups are set against
    lines = [ln for ln in text.splitlines() if ln.startswith("widths: ")]
    if hint:
        assert len(lines) == 1 and f"not of this CPU's {lanes} float lanes" in lines[0]
        assert "--round-to auto" in lines[0] and rep["latency"]["widths_line"] == lines[0]
        assert lines[0] in out.with_name("m.pruned.report.md").read_text()
    else:
        assert not lines and "widths_line" not in rep["latency"]


@pytest.mark.parametrize("round_to,hint", [("1", True), ("auto", False)])
def test_compile_names_the_width_multiple_when_odd_widths_cost_the_speedup(samples_dir, tmp_path, monkeypatch,
                                                                           capsys, round_to, hint):
    _fake_latencies(monkeypatch, dense=1.0, pruned=0.95)  # far fewer MACs, almost no speed-up
    assert _compile(samples_dir, tmp_path / "c", "--ratio", "0.5", "--backend", "onnxruntime",
                    "--round-to", round_to) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("widths: ")]
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    if hint:
        lanes = resolve_target("x86").simd_lanes
        assert len(lines) == 1 and f"not of the x86 target's {lanes} float lanes" in lines[0]
        assert rep["latency"]["widths_line"] == lines[0]
        assert lines[0] in (tmp_path / "c" / "report.md").read_text()
    else:
        assert not lines and "widths_line" not in rep["latency"]


# ---- a target that could not be met is said so -------------------------------------------------

def test_a_target_the_result_misses_is_a_red_line_and_one_it_meets_says_by_how_much(samples_dir, tmp_path,
                                                                                   capsys):
    """--target-macs 0.05 kept 0.21 of the MACs and exited 0 without a word (the allocation's
    'reached' flag was read by nothing). The result's own MACs are compared with the ask."""
    src = str(samples_dir / "tiny_resnet.onnx")
    assert main(["prune", src, "--target-macs", "0.05", "-o", str(tmp_path / "a.onnx"), "--no-bench"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("--target-macs 0.05: NOT met"))
    rep = json.loads((tmp_path / "a.report.json").read_text())
    budget = rep["budget"]
    assert budget["met"] is False and budget["asked"] == 0.05 and line in rep["red"]
    assert budget["kept"] == pytest.approx(rep["after"]["macs"] / rep["before"]["macs"], abs=1e-4)
    assert budget["kept"] > 0.05
    assert f"**{line}**" in (tmp_path / "a.report.md").read_text()

    assert main(["prune", src, "--target-macs", "0.7", "--round-to", "1", "-o", str(tmp_path / "b.onnx"),
                 "--no-bench"]) == 0
    assert "--target-macs 0.7: met, the result keeps 0." in capsys.readouterr().out
    rep = json.loads((tmp_path / "b.report.json").read_text())
    assert rep["budget"]["met"] and rep["budget"]["kept"] <= 0.7 and not rep["red"]
    # a coarse width step that lands far under the ask names it
    assert main(["prune", src, "--target-macs", "0.8", "--round-to", "16", "-o", str(tmp_path / "c.onnx"),
                 "--no-bench"]) == 0
    assert "widths stay multiples of 16 (--round-to 1 allows finer steps)" in capsys.readouterr().out
    # no target, no line
    assert main(["prune", src, "--ratio", "0.3", "-o", str(tmp_path / "d.onnx"), "--no-bench"]) == 0
    assert ": met, the result keeps" not in capsys.readouterr().out
    assert json.loads((tmp_path / "d.report.json").read_text())["budget"] is None


def test_compile_says_a_missed_target_too(samples_dir, tmp_path, monkeypatch, capsys):
    _fake_latencies(monkeypatch, dense=1.0, pruned=0.5)
    assert _compile(samples_dir, tmp_path / "c", "--target-macs", "0.05") == 0
    assert "--target-macs 0.05: NOT met" in capsys.readouterr().out
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    assert rep["budget"]["met"] is False and rep["budget"]["line"] in rep["red"]


# ---- a run that removed nothing says why, and claims no speed-up ------------------------------

def _single_matmul(path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    import onnx

    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_nothing_pruned_is_said_and_no_speedup_is_claimed(samples_dir, tmp_path, monkeypatch, capsys):
    """A model with no prunable group was written unchanged and reported '1.34x faster than
    the input' (two timings of the same model)."""
    import graphprune.cli.common as common

    times = iter([1.0, 0.5] * 4)  # the "pruned" copy timed 2x faster: noise, not a result
    monkeypatch.setattr(common, "ort_latency_ms", lambda *a, **k: next(times))
    src = _single_matmul(tmp_path / "single.onnx")
    assert main(["prune", src, "-o", str(tmp_path / "p.onnx")]) == 0
    out = capsys.readouterr().out
    assert "nothing pruned: no channel group of this model can be pruned (2 frozen)" in out
    assert "not compared: nothing was pruned" in out and "faster than the input" not in out
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "--ratio", "0", "-o", str(tmp_path / "q.onnx")]) == 0
    out = capsys.readouterr().out
    assert "nothing pruned: the options removed no channel (a ratio of 0" in out and "faster than the input" not in out
    # a small ratio under round-to 16: every width rounds back up to the whole group; said, with what prunes
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "--ratio", "0.1", "--round-to", "16", "-o",
                 str(tmp_path / "s.onnx")]) == 0
    assert "round back up to the whole groups at this ratio; a smaller --round-to, e.g. 8" in capsys.readouterr().out
    # something pruned: no such line, and the speed-up is reported
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "-o", str(tmp_path / "r.onnx")]) == 0
    out = capsys.readouterr().out
    assert "nothing pruned" not in out and "2.00x faster than the input" in out
    _fake_latencies(monkeypatch, dense=1.5, pruned=1.0)
    assert main(["compile", src, "--target", "x86", "-o", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out  # compile's speed-up of an unpruned model is said to be no pruning's
    assert "note: nothing pruned: no channel group" in out
    assert "1.50x faster than the input model" in out and "nothing was pruned: the difference is" in out


def test_round_to_auto_meets_a_target_the_lanes_overshoot_and_says_so(samples_dir, tmp_path, capsys, monkeypatch):
    """The default (round_to auto = 16 lanes) made --target-macs 0.8 keep 0.325 of the sample's
    MACs. Now a finer multiple meets it, and the line says which and what the lanes kept."""
    import dataclasses

    from graphprune.backends import targets

    monkeypatch.setattr(targets, "host_target", lambda: dataclasses.replace(targets._host_x86(), simd_lanes=16))
    src = str(samples_dir / "tiny_resnet.onnx")
    assert main(["prune", src, "--target-macs", "0.8", "-o", str(tmp_path / "a.onnx"), "--no-bench"]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "a.report.json").read_text())
    assert rep["budget"]["met"] and 0.75 <= rep["budget"]["kept"] <= 0.8
    assert "not of the 16 SIMD lanes: those kept only 0.3" in rep["budget"]["line"] and rep["budget"]["line"] in out
    step = json.loads((tmp_path / "a.plan.json").read_text())["settings"]["round_to"]
    assert step < 16 and f"round-to: widths kept multiples of {step}" in out


@pytest.mark.parametrize("target,art,ok,said", [
    ("arm", {"elf_machine": "AArch64", "neon": {"instructions": 900, "neon": 300, "fmla": 40}}, True,
     "ELF AArch64, NEON: 300 of 900 instructions vector (40 vector fmla)"),
    ("arm", {"elf_machine": "AArch64", "neon": {"instructions": 900, "neon": 0, "fmla": 0}}, False,
     "none, the build is scalar"),
    ('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["-neon"]}',
     {"elf_machine": "AArch64", "neon": {"instructions": 900, "neon": 0, "fmla": 0}}, True, "0 of 900"),
    ("arm", {"elf_machine": "AArch64", "neon": "not checked (no aarch64 objdump)"}, True, "NEON: not checked"),
    ("arm", {"elf_machine": "x86-64"}, False, "ELF x86-64 (the target needs AArch64)"),
])
def test_the_tvm_artifact_check_fails_a_scalar_arm_build(target, art, ok, said):
    """The NEON half compared the counts (a dict) with False, so it could not fail: a build
    with no vector instruction passed as 'NEON: {...}'. A target that turns NEON off expects none."""
    from graphprune.backends.targets import resolve_target

    check = compile_mod.artifact_check(resolve_target(target), art)
    assert check["ok"] == ok and said in check["summary"], check


@pytest.mark.parametrize("stored", ["initializers", "Constant nodes"])
def test_the_round_to_line_names_the_weights_narrower_than_the_multiple(tmp_path, capsys, stored):
    """A weight narrower than round_to is cut freely (allocation.uniform.rounded_removal); the
    summary still said 'widths kept multiples of 16' of written widths 7 and 24 (and, once it
    named them, missed weights stored as Constant nodes, as PP-OCR's are)."""
    from onnx import helper, numpy_helper

    from helpers import make_model, w

    weights = {"w1": w(16, 10, seed=1), "w2": w(10, 48, seed=2), "w3": w(48, 16, seed=3)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["g0"]), helper.make_node("Relu", ["g0"], ["g"]),
             helper.make_node("MatMul", ["g", "w3"], ["y"])]
    if stored == "Constant nodes":
        nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(a, k))
                 for k, a in weights.items()] + nodes
    m = make_model(nodes, [("x", ["B", 16])], [("y", ["B", 16])], weights if stored == "initializers" else {})
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    assert main(["prune", str(tmp_path / "m.onnx"), "--ratio", "0.3", "--round-to", "16", "-o",
                 str(tmp_path / "p.onnx"), "--no-bench"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("round-to:"))
    import onnx

    written = onnx.load(tmp_path / "p.onnx").graph
    kept = {t.name: list(t.dims) for t in written.initializer}
    kept.update({n.output[0]: list(n.attribute[0].t.dims) for n in written.node if n.op_type == "Constant"})
    assert kept["w1"][1] < 10 and kept["w2"][1] % 16 == 0  # the narrow layer was cut, the wide one rounded
    assert line.endswith(f"except 2 weight(s) narrower than that, cut freely: w1 {kept['w1'][1]}, "
                         f"w2 {kept['w2'][0]}"), line


def test_max_drop_without_calibration_is_refused_before_any_work(samples_dir, tmp_path, capsys):
    """It was refused after the pruning and the oracle ('oracle PASS', then the error)."""
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "--max-drop", "0.05", "-o",
                 str(tmp_path / "p.onnx"), "--no-bench"]) == 2
    said = capsys.readouterr()
    assert "--max-drop needs calibration data" in said.err and "oracle" not in said.out + said.err
    assert not list(tmp_path.iterdir())


def test_a_quantized_model_s_oracle_failure_says_what_rounding_can_do():
    """A quantized model that differs even with power-of-two scales (oracle.check) is
    reported, and the user told the safe route (prune the float model, quantize after);
    'please report this model' alone left them nowhere to go. A float model keeps the plain
    hint."""
    from graphprune.errors import OracleMismatchError
    from graphprune.runtime.oracle import OracleResult, OutputDiff
    from graphprune.workflow.prune import _require_pass

    res = OracleResult(ok=False, diffs=[OutputDiff("y", 0.0627, 8.03, False)], runs=2)
    for quantized, said in ((True, "prune the float model and quantize after"), (False, "please report this model")):
        with pytest.raises(OracleMismatchError) as e:
            _require_pass(res, "pruned model differs from the masked original", quantized=quantized)
        assert said in e.value.hint and ("quantize after" in e.value.hint) == quantized


def test_a_model_whose_only_group_is_the_hidden_size_says_how_to_prune_it(tmp_path, capsys):
    """x -> MatMul -> LayerNorm -> MatMul: the one prunable group is the LayerNorm's width, kept
    whole by default; the summary said 'a ratio of 0, or every group protected', and named
    no flag. With --prune-hidden it is pruned, and the oracle passes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (8, 16)), ("g", (16,)), ("b", (16,)), ("W2", (16, 4)))]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W1"], ["h"]),
                           helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"]),
                           helper.make_node("MatMul", ["n", "W2"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    src = str(tmp_path / "ln.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    assert main(["prune", src, "--round-to", "1", "--no-bench", "-o", str(tmp_path / "p.onnx")]) == 0
    out = capsys.readouterr().out
    assert "nothing pruned: the only prunable groups are the hidden size, kept whole by default " \
           "(--prune-hidden prunes it)" in out
    assert main(["prune", src, "--round-to", "1", "--prune-hidden", "--no-bench", "-o", str(tmp_path / "q.onnx")]) == 0
    out = capsys.readouterr().out
    assert "oracle PASS" in out and "pruned 1 groups, sliced 4 tensors" in out


def test_a_target_met_far_under_by_uniform_steps_says_why(hf_exported):
    """LLaMA with 2 KV groups, --target-macs 0.7 --round-to 1: uniform allocation steps by half
    a group and kept 0.500 with no word (the default round-to explained its own steps; probe).
    The line says why and names the allocation that meets it closer (measured: 0.666)."""
    from graphprune.workflow import PruneOptions, run_prune

    path = hf_exported("llama", False)
    out = run_prune(path, PruneOptions(allocation={"target_macs": 0.7}, round_to=1, criterion="l2", repair="none"))
    line = out.budget["line"]
    assert out.budget["kept"] < 0.65 and "under it: uniform allocation takes the same share of every group" in line
    closer = run_prune(path, PruneOptions(allocation={"target_macs": 0.7, "allocation": "global"}, round_to=1,
                                          criterion="l2", repair="none"))
    assert out.budget["kept"] < closer.budget["kept"] <= 0.7 + 1e-3 and "under it" not in closer.budget["line"]


def test_repair_lines_after_removed_blocks_say_what_they_are_measured_against(samples_dir):
    """With --remove-blocks the repairs fit, and measure, against the model with the blocks
    removed: 'output error 0.035' stood beside a 0.30 drop against the input (probe)."""
    import numpy as np

    from graphprune.runtime.calibration import Calibration
    from graphprune.workflow import PruneOptions, run_prune
    from graphprune.workflow.verdicts import repair_line

    rng = np.random.default_rng(0)
    calib = Calibration.from_batches([{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                                      for _ in range(8)])
    src = str(samples_dir / "tiny_resnet.onnx")
    out = run_prune(src, PruneOptions(remove_blocks=1, ratio=0.2, criterion="l2", allocation={"allocation": "uniform"},
                                      repair="bias", calib=calib, max_drop=None, round_to=1))
    assert out.plan.blocks and out.repair
    assert all("against the model with the removed blocks" in repair_line(r) for r in out.repair)
    plain = run_prune(src, PruneOptions(ratio=0.2, criterion="l2", allocation={"allocation": "uniform"},
                                        repair="bias", calib=calib, max_drop=None, round_to=1))
    assert plain.repair and not any("removed blocks" in repair_line(r) for r in plain.repair)


def test_an_int8_deployment_too_slow_is_told_to_drop_quantize():
    """An int8 deployment slower than asked was told to prune more, tune TVM and try
    --backend onnxruntime (which it already was); the pruned float model would have met
    the bar (new-user probe)."""
    from graphprune.workflow.verdicts import latency_verdict, require_speedup

    slow = latency_verdict(0.278, 0.407, "onnxruntime")
    with pytest.raises(SlowerThanAskedError) as e:
        require_speedup(slow, 1.0, "onnxruntime", quantized=True)
    assert "drop --quantize" in e.value.hint and "--backend" not in e.value.hint
    with pytest.raises(SlowerThanAskedError) as e:
        require_speedup(slow, 1.0, "onnxruntime")
    assert "drop --quantize" not in e.value.hint
