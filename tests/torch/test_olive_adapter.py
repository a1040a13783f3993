"""graphprune as a pass in a real Microsoft Olive workflow, the example config through
`olive run`, the pass options generated from PruneOptions, and the adapter's lazy import
when Olive (or one of its dependencies) is absent.

The real-Olive tests skip only when olive-ai cannot be imported and the CI variable is
unset: olive-ai is not installed by scripts/install-test-deps.sh (see its `olive` extra), so
CI fails here until it is, rather than skipping silently."""
from __future__ import annotations

import builtins
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import graphprune as gp
from graphprune.errors import BackendUnavailableError


def test_adapter_imports_without_olive(monkeypatch):
    import graphprune.integrations.olive as adapter

    monkeypatch.setitem(sys.modules, "olive", None)  # `import olive` now raises ImportError
    monkeypatch.setattr(adapter, "_CLASS", None)
    with pytest.raises(BackendUnavailableError, match="olive-ai"):
        adapter.GraphprunePrune  # noqa: B018 - building the class needs Olive
    with pytest.raises(BackendUnavailableError):
        adapter.package_config()


ROOT = Path(__file__).resolve().parents[2]


def _need_olive():
    try:
        import olive.passes  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            raise  # in CI the Olive tests run (or fail), they do not skip
        pytest.skip(f"olive-ai cannot be imported ({exc}); pip install -c constraints.txt -e '.[olive]'")


def _quiet_olive(monkeypatch, tmp_path):
    monkeypatch.setenv("OLIVE_DISABLE_TELEMETRY", "1")  # a test sends nothing anywhere
    monkeypatch.setenv("OLIVE_TELEMETRY_CACHE_DIR", str(tmp_path / "telemetry"))


def test_missing_dependency_of_olive_is_named(monkeypatch):
    """olive-ai installed, one of its own dependencies not: the hint names that module."""
    import graphprune.integrations.olive as adapter

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name.split(".")[0] == "olive":
            raise ModuleNotFoundError("No module named 'requests'", name="requests")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    monkeypatch.setattr(adapter, "_CLASS", None)
    with pytest.raises(BackendUnavailableError) as info:
        adapter.GraphprunePrune  # noqa: B018 - building the class imports Olive
    assert "'requests'" in str(info.value) and info.value.hint.startswith("pip install requests")
    assert "pip install olive-ai" not in info.value.hint.split("(")[0]


def test_dependency_that_breaks_on_import_is_named(monkeypatch):
    """Not an ImportError (a torchvision wheel built for another torch raises RuntimeError
    while torchmetrics imports it): the error names the package whose module body failed."""
    import graphprune.integrations.olive as adapter

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name.split(".")[0] == "olive":
            code = compile("raise RuntimeError('operator brokendep::nms does not exist')", "brokendep/ops.py", "exec")
            exec(code, {"__name__": "brokendep.ops"})
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(BackendUnavailableError) as info:
        adapter.package_config()
    assert "brokendep failed (RuntimeError" in str(info.value) and "brokendep" in info.value.hint


def test_missing_olive_itself_says_olive_ai(monkeypatch):
    import graphprune.integrations.olive as adapter

    monkeypatch.setitem(sys.modules, "olive", None)
    with pytest.raises(BackendUnavailableError) as info:
        adapter.package_config()
    assert info.value.hint == "pip install olive-ai"


# Fields of PruneOptions that are not one Olive option of their own name: each with its reason.
def test_every_prune_option_is_an_olive_option():
    from graphprune.integrations.olive import EXCLUDED, EXPANDED, option_specs
    from graphprune.workflow.options import PruneOptions

    names = {f.name for f in dataclasses.fields(PruneOptions)}
    assert set(EXCLUDED) <= names and set(EXPANDED) <= names  # no stale exclusion
    assert all(len(why) > 20 for why in EXCLUDED.values())
    specs = option_specs()
    assert names - set(EXCLUDED) - set(EXPANDED) <= set(specs)
    for name, (_, default, help_) in specs.items():
        assert help_, name
        if name in names and name not in EXPANDED:
            assert default == getattr(PruneOptions(), name), name


def test_every_cli_allocation_flag_is_an_olive_option():
    import argparse

    from graphprune.cli import allocation_flags
    from graphprune.integrations.olive import option_specs

    p = argparse.ArgumentParser()
    allocation_flags.add_arguments(p, criterion=True)
    ns = p.parse_args(["--allocation", "global", "--target-macs", "0.5", "--target-params", "0.5",
                       "--target-latency", "0.5", "--max-ratio", "0.8", "--protect", "fc", "--layer-ratio", "c=0.1",
                       "--reduction", "sum", "--normalize", "max"])
    given = allocation_flags.pass_options(ns)
    assert len(given) == 9 and set(given) <= set(option_specs())
    calib = allocation_flags.calibration_options(ns)
    assert set(calib) <= set(option_specs()) and "repair" in option_specs()


def test_a_new_prune_option_becomes_an_olive_option(monkeypatch):
    """A field added to PruneOptions is a pass option, and reaches PruneOptions, untouched."""
    import graphprune.workflow.options as options_mod
    from graphprune.integrations import olive as adapter

    @dataclasses.dataclass
    class Grown(options_mod.PruneOptions):
        search_budget: int = 7
        score: str | None = None

    monkeypatch.setattr(options_mod, "PruneOptions", Grown)
    monkeypatch.setattr(options_mod, "DEFAULTS", Grown())
    specs = adapter.option_specs()
    assert specs["search_budget"][:2] == (int, 7) and "score" in specs
    config = {k: d for k, (_, d, _) in specs.items()}
    config.update(search_budget=3, score="pkg:fn", target_macs=0.7, calib="c.npz", repair="bias", ignore=None)
    opts = adapter.options(types.SimpleNamespace(**config))
    assert isinstance(opts, Grown) and (opts.search_budget, opts.score) == (3, "pkg:fn")
    assert opts.allocation == {"target_macs": 0.7}  # only the allocation keys given
    assert (opts.calib, opts.repair, opts.ignore) == ("c.npz", "bias", [])


def test_graphprune_pass_in_an_olive_workflow(samples_dir, tmp_path, monkeypatch):
    _quiet_olive(monkeypatch, tmp_path)
    _need_olive()
    from graphprune.analysis.cost import model_cost
    from graphprune.integrations.olive import PASS_NAME, run_workflow, write_package_config

    src = samples_dir / "tiny_resnet.onnx"
    out = tmp_path / "olive_out"
    run_workflow({
        "input_model": {"type": "ONNXModel", "model_path": str(src)},
        "passes": {"prune": {"type": PASS_NAME, "ratio": 0.5, "round_to": 2}},
        "output_dir": str(out), "cache_dir": str(tmp_path / "cache"), "log_severity_level": 3,
        "evaluate_input_model": False,
    })
    model_path, plan_path = out / "model.onnx", out / "tiny_resnet.plan.json"
    assert model_path.exists() and plan_path.exists()
    assert gp.check(src, model_path, plan_path).ok  # the oracle, on Olive's output
    assert model_cost(gp.load(model_path)).macs < 0.5 * model_cost(gp.load(src)).macs
    assert json.loads(plan_path.read_text())["settings"]["ratio"] == 0.5
    cfg = json.loads(write_package_config(tmp_path / "pkg.json").read_text())
    assert cfg["passes"][PASS_NAME]["module_path"] == "graphprune.integrations.olive.GraphprunePrune"
    assert "OnnxPeepholeOptimizer" in cfg["passes"]  # Olive's own passes are all still there


def test_olive_workflow_with_calibration_and_repair(samples_dir, tmp_path, monkeypatch):
    _quiet_olive(monkeypatch, tmp_path)
    _need_olive()
    from graphprune.analysis.cost import model_cost
    from graphprune.integrations.olive import PASS_NAME, run_workflow

    src = samples_dir / "tiny_resnet.onnx"
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    out = tmp_path / "olive_out"
    run_workflow({
        "input_model": {"type": "ONNXModel", "model_path": str(src)},
        "passes": {"prune": {"type": PASS_NAME, "target_macs": 0.6, "calib": str(tmp_path / "calib.npz"),
                             "calib_batch": 1, "repair": "bias", "max_drop": 0.9,
                             "search_budget": 1}},  # not about the search: one candidate, no comparison
        "output_dir": str(out), "cache_dir": str(tmp_path / "cache"), "log_severity_level": 3,
        "evaluate_input_model": False,
    })
    plan = json.loads((out / "tiny_resnet.plan.json").read_text())
    assert plan["settings"]["target_macs"] == 0.6 and plan["settings"]["allocation_result"]["reached"]
    assert [r["pass"] for r in plan["settings"]["repair"]] == ["bias-compensate"]
    assert model_cost(gp.load(out / "model.onnx")).macs <= 0.62 * model_cost(gp.load(src)).macs


def test_example_config_runs_with_olive_run(samples_dir, tmp_path):
    """examples/olive/config.json, as the README runs it: from a folder holding samples/ and examples/."""
    _need_olive()
    from graphprune.integrations.olive import PASS_NAME, pass_entry

    packages = json.loads((ROOT / "examples/olive/packages.json").read_text())
    assert packages["passes"][PASS_NAME] == pass_entry()  # the committed file is what the adapter writes
    shutil.copytree(ROOT / "examples/olive", tmp_path / "examples/olive")
    (tmp_path / "samples").mkdir()
    shutil.copy(samples_dir / "tiny_resnet.onnx", tmp_path / "samples")
    env = {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "OLIVE_TELEMETRY_CACHE_DIR": str(tmp_path / "telemetry")}
    r = subprocess.run([sys.executable, "-m", "olive", "run", "--config", "examples/olive/config.json",
                        "--package-config", "examples/olive/packages.json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from graphprune.analysis.cost import model_cost

    out = tmp_path / "olive-out"  # repaired after the oracle: smaller, not equal to the masked original
    assert model_cost(gp.load(out / "model.onnx")).macs <= 0.62 * model_cost(gp.load(samples_dir / "tiny_resnet.onnx")).macs
    settings = json.loads((out / "tiny_resnet.plan.json").read_text())["settings"]
    assert settings["target_macs"] == 0.6 and settings["repair"]


def test_package_config_command(tmp_path, capsys):
    from graphprune.integrations.olive import PASS_NAME, main, pass_entry

    assert main([]) == 2 and "usage" in capsys.readouterr().err
    _need_olive()
    assert main([str(tmp_path / "pkg.json")]) == 0
    passes = json.loads((tmp_path / "pkg.json").read_text())["passes"]
    assert passes[PASS_NAME] == pass_entry() and "OnnxPeepholeOptimizer" in passes
