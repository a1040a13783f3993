import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory):
    from samples.make_samples import main

    out = tmp_path_factory.mktemp("samples")
    main(str(out))
    return out


@pytest.fixture(scope="session")
def hf_exported(tmp_path_factory):
    """get(name, dynamo) -> path of the tiny `transformers` model `name` (tests/zoo/hf_models)
    exported once per session by that exporter; tests only read the files."""
    from zoo.hf_models import export_hf

    cache = {}

    def get(name, dynamo):
        if (name, dynamo) not in cache:
            p = tmp_path_factory.mktemp("hf") / f"{name}_{dynamo}.onnx"
            cache[(name, dynamo)] = export_hf(name, str(p), dynamo)
        return cache[(name, dynamo)]

    return get


# --- the IR is verified after every pass a test runs (DESIGN: "Verify after every pass") ---

def pytest_configure(config):
    config.addinivalue_line(
        "markers", "no_ir_verify: the test breaks the IR on purpose; skip the autouse verification")


ONNX_CHECK_MAX_BYTES = 16 << 20  # the ONNX checker serialises the model: only small ones


def _unknown_to_onnx(model) -> bool:
    """The model holds a default-domain op onnx has no schema for (ONNX Runtime registers
    SimplifiedLayerNormalization there): onnx.checker refuses such a model, input or not."""
    import onnx

    return any(n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type) for n in model.graph)


@pytest.fixture(autouse=True)
def _verify_ir_after_every_pass(request, monkeypatch):
    """Every PassManager run in a test verifies the IR before and after each pass, even one
    built with verify=False, and its result passes onnx.checker (the boundary check, for
    models small enough to serialise cheaply). A registered pass a test calls directly,
    `SomePass().run(model, ctx)`, is verified after it too. Mark a test that breaks the IR
    on purpose with `@pytest.mark.no_ir_verify`."""
    if request.node.get_closest_marker("no_ir_verify"):
        yield
        return
    import contextvars
    import functools

    import onnx_ir as ir

    from graphprune.ir.serialize import model_nbytes
    from graphprune.ir.verifier import verify_model
    from graphprune.passes import PASSES, _infra

    in_manager = contextvars.ContextVar("in_manager", default=False)
    manager_run = _infra.PassManager.run

    def run_verified(self, model, ctx=None):
        verify, self.verify = self.verify, True
        token = in_manager.set(True)
        try:
            ctx = manager_run(self, model, ctx)
        finally:
            in_manager.reset(token)
            self.verify = verify
        if model_nbytes(model) <= ONNX_CHECK_MAX_BYTES and not any(
                isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()) \
                and not _unknown_to_onnx(model):
            verify_model(model, where=f"result of pipeline {str(self)!r}", onnx_check=True)
        return ctx

    def verified(name, run):
        @functools.wraps(run)
        def run_pass(self, model, ctx, *args, **kwargs):
            changed = run(self, model, ctx, *args, **kwargs)
            if not in_manager.get():  # inside a manager, the manager verifies
                verify_model(model, where=f"after pass {name} (run directly, not by a PassManager)")
            return changed
        return run_pass

    monkeypatch.setattr(_infra.PassManager, "run", run_verified)
    for name, cls in list(PASSES.items()):
        if "run" in vars(cls):
            monkeypatch.setattr(cls, "run", verified(name, vars(cls)["run"]))
    yield
