"""graphprune as a pass in Microsoft Olive workflows (needs `olive-ai`).

    from graphprune.integrations.olive import run_workflow
    run_workflow({
        "input_model": {"type": "ONNXModel", "model_path": "model.onnx"},
        "passes": {"prune": {"type": "GraphprunePrune", "ratio": 0.3, "round_to": 8},
                   "ort": {"type": "OrtSessionParamsTuning"}},
        "output_dir": "out",
    })

Olive finds a pass type through its package config (module path per pass name), so the
pass is usable in a workflow run with `package_config()` (Olive's own table plus this
pass) — which `run_workflow` passes for you — or from the `olive run` CLI with
``--package-config`` pointing at `write_package_config()`'s file.

The pass prunes the ONNX model Olive hands it exactly like `graphprune prune` does
(same pass pipeline, same plan), checks the oracle before writing, and writes the plan
beside the pruned model as an Olive "additional file", so it reaches the workflow's
output folder (``model_attributes["graphprune_plan"]`` is its file name).

Olive is imported only when the pass class is first used: importing this module, or
graphprune itself, never needs it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from graphprune.errors import BackendUnavailableError

log = logging.getLogger(__name__)

PASS_NAME = "GraphprunePrune"
_CLASS = None


def _olive():
    try:
        import olive.passes  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(f"the Olive adapter needs olive-ai ({exc})",
                                      hint="pip install olive-ai") from None


def _build_class():
    """The Olive Pass subclass (built on first use so olive is imported lazily)."""
    _olive()
    from olive.model import ONNXModelHandler
    from olive.model.utils import resolve_onnx_path
    from olive.passes import Pass
    from olive.passes.onnx.common import get_external_data_config, model_proto_to_olive_model
    from olive.passes.pass_config import PassConfigParam

    class GraphprunePrune(Pass):
        """Structured channel pruning by graphprune: physically smaller, oracle-checked."""

        @classmethod
        def _default_config(cls, accelerator_spec):
            from graphprune.workflow.options import DEFAULTS

            config = {
                "ratio": PassConfigParam(type_=float, default_value=DEFAULTS.ratio,
                                         description="fraction of each group's channels to remove"),
                "criterion": PassConfigParam(type_=str, default_value=DEFAULTS.criterion,
                                             description="importance criterion"),
                "round_to": PassConfigParam(type_=int, default_value=DEFAULTS.round_to,
                                            description="keep widths multiples of N"),
                "ignore": PassConfigParam(type_=list, default_value=None,
                                          description="regexes of nodes/tensors whose groups are kept"),
                "seed": PassConfigParam(type_=int, default_value=DEFAULTS.seed, description="seed for random criteria"),
                "pipeline": PassConfigParam(type_=str, default_value=None,
                                            description="graphprune pass pipeline (overrides the options above)"),
                "plan": PassConfigParam(type_=str, default_value=None, description="replay this plan.json"),
                "check": PassConfigParam(type_=bool, default_value=True,
                                         description="run the oracle before writing (recommended)"),
            }
            config.update(get_external_data_config())
            return config

        def _run_for_config(self, model, config, output_model_path: str):
            if not isinstance(model, ONNXModelHandler):
                raise ValueError(f"{PASS_NAME} prunes ONNX models; convert the model first (OnnxConversion)")
            src = Path(model.model_path)
            proto, plan = prune_file(src, options(config))
            out = Path(resolve_onnx_path(output_model_path, src.name))
            handler = model_proto_to_olive_model(proto, out, config)
            plan_path = out.with_name(out.name.removesuffix(".onnx") + ".plan.json")
            plan.save(plan_path)
            # additional_files travel with the model through later passes into the output folder
            attrs = dict(model.model_attributes or {})
            attrs["additional_files"] = sorted(set(attrs.get("additional_files") or []) | {str(plan_path)})
            attrs["graphprune_plan"] = plan_path.name
            handler.model_attributes = attrs
            return handler

    GraphprunePrune.__module__ = __name__
    GraphprunePrune.__qualname__ = PASS_NAME
    return GraphprunePrune


def options(config):
    """The pass's Olive config as PruneOptions (the same options `graphprune prune` builds)."""
    from graphprune.workflow import PruneOptions

    return PruneOptions(ratio=config.ratio, criterion=config.criterion, round_to=config.round_to,
                        ignore=list(config.ignore or []), seed=config.seed, pipeline=config.pipeline,
                        plan=config.plan, check=config.check)


def prune_file(src, opts=None, **kwargs):
    """Prune an ONNX file as `graphprune prune` does (graphprune.workflow.run_prune, the
    oracle before anything is returned); returns (ModelProto, Plan). `opts`: PruneOptions,
    or its fields as keyword arguments."""
    from graphprune.errors import OracleMismatchError
    from graphprune.ir.serialize import to_proto
    from graphprune.outputs import PLAN_KEY, plan_digest
    from graphprune.workflow import PruneOptions, run_prune

    opts = opts or PruneOptions(**kwargs)
    try:
        outcome = run_prune(src, opts)
    except OracleMismatchError as exc:
        raise OracleMismatchError(f"{PASS_NAME}: {exc}", hint=exc.hint) from None
    if outcome.oracle is not None:
        log.info("%s: %s", PASS_NAME, outcome.oracle.summary())
    outcome.model.metadata_props[PLAN_KEY] = plan_digest(outcome.plan)  # the model and this plan are one result
    return to_proto(outcome.model), outcome.plan


def package_config() -> dict:
    """Olive's default package config with this pass added."""
    _olive()
    from olive.package_config import OlivePackageConfig

    data = json.loads(Path(OlivePackageConfig.get_default_config_path()).read_text())
    data["passes"][PASS_NAME] = {
        "module_path": f"{__name__}.{PASS_NAME}",
        "supported_providers": ["*"], "supported_accelerators": ["*"], "supported_precisions": ["*"],
        "extra_dependencies": [],
    }
    return data


def write_package_config(path) -> Path:
    """The package config as a file, for `olive run --package-config FILE`."""
    from graphprune.plan import write_text_atomic

    write_text_atomic(path, json.dumps(package_config(), indent=1) + "\n")
    return Path(path)


def run_workflow(config, **kwargs):
    """`olive.workflows.run` with this pass known to Olive."""
    _olive()
    from olive.workflows import run

    return run(config, package_config=package_config(), **kwargs)


def __getattr__(name: str):
    global _CLASS
    if name == PASS_NAME:
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
