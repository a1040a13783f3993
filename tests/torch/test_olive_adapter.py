"""graphprune as a pass in a real Microsoft Olive workflow (skipped without olive-ai), and
the adapter's lazy import when Olive is absent."""
from __future__ import annotations

import json
import sys

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


def test_graphprune_pass_in_an_olive_workflow(samples_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OLIVE_DISABLE_TELEMETRY", "1")  # a test sends nothing anywhere
    monkeypatch.setenv("OLIVE_TELEMETRY_CACHE_DIR", str(tmp_path / "telemetry"))
    pytest.importorskip("olive.passes")
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
