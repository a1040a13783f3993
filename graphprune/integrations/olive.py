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
``--package-config`` pointing at `write_package_config()`'s file (``python -m
graphprune.integrations.olive FILE``), or at examples/olive/packages.json (this pass only).

The pass's options are generated from `graphprune.workflow.options.PruneOptions` (one per
field; the `allocation` dict becomes one option per allocation.driver key), so the pass takes
what `graphprune prune` takes; see `option_specs()` and examples/olive/config.json.

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
        message, hint = _import_failure(exc)
        raise BackendUnavailableError(message, hint=hint) from None
    except Exception as exc:  # noqa: BLE001 - a dependency that is installed but breaks on import
        culprit = _importing_module(exc)
        raise BackendUnavailableError(
            f"olive-ai is installed but does not import: {culprit} failed ({type(exc).__name__}: {exc})",
            hint=f"reinstall or remove {culprit}: pip install --force-reinstall {culprit}") from None


def _importing_module(exc: BaseException) -> str:
    """The top-level package whose module body was running when `exc` was raised (the
    deepest module-level frame of the traceback): the dependency that broke."""
    tb, name = exc.__traceback__, "olive"
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "<module>":
            name = tb.tb_frame.f_globals.get("__name__") or name
        tb = tb.tb_next
    return name.split(".")[0]


def _import_failure(exc: ImportError) -> tuple[str, str]:
    """Message and hint for a failed `import olive...`: the module that actually failed
    (`exc.name`), which is olive-ai itself only when the top-level `olive` is missing."""
    missing = (exc.name or "").split(".")[0]
    if missing in ("", "olive"):
        return f"the Olive adapter needs olive-ai ({exc})", "pip install olive-ai"
    return (f"olive-ai is installed but its dependency {missing!r} failed to import ({exc})",
            f"pip install {missing} (or reinstall olive-ai: pip install --force-reinstall olive-ai)")


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
            config = {name: PassConfigParam(type_=t, default_value=d, description=h)
                      for name, (t, d, h) in option_specs().items()}
            config.update(get_external_data_config())
            return config

        def _run_for_config(self, model, config, output_model_path: str):
            if not isinstance(model, ONNXModelHandler):
                raise ValueError(f"{PASS_NAME} prunes ONNX models; convert the model first (OnnxConversion)")
            src = Path(model.model_path)
            proto, plan = prune_file(src, options(config))
            out = Path(resolve_onnx_path(output_model_path, src.name))
            # Olive wants its external-data keys as a dict (its docstring): those, not the whole config
            external = {k: getattr(config, k) for k in get_external_data_config() if hasattr(config, k)}
            handler = model_proto_to_olive_model(proto, out, external)
            plan_path = out.with_name(out.name.removesuffix(".onnx") + ".plan.json")
            plan.save(plan_path)
            # additional_files travel with the model through later passes into the output folder
            attrs = dict(model.model_attributes or {})
            extra = {str(plan_path)}
            if plan.vocab:  # slice-vocab: the id map a tokenizer needs travels with the model
                from graphprune.passes.pruning.slice_vocab import vocab_path_for, write_id_map

                write_id_map(plan.vocab, vocab_path_for(out))
                extra.add(str(vocab_path_for(out)))
            attrs["additional_files"] = sorted(set(attrs.get("additional_files") or []) | extra)
            attrs["graphprune_plan"] = plan_path.name
            handler.model_attributes = attrs
            return handler

    GraphprunePrune.__module__ = __name__
    GraphprunePrune.__qualname__ = PASS_NAME
    return GraphprunePrune


# PruneOptions fields that are not Olive options, and why (tests/torch/test_olive_adapter.py
# checks every other field is one).
EXCLUDED = {
    "selection": "group ids of the in-memory analysis (Python API); a config replays a plan.json with `plan`",
    "inputs": "numpy feed dicts (Python API); a config gives data with `calib`",
}
# PruneOptions.allocation is a dict of allocation.driver options: each key is an Olive option
# (`allocation` itself is the mode), given to the driver only when set, as the CLI does.
EXPANDED = {"allocation"}
_HELP = {
    "ratio": "fraction of each group's channels to remove",
    "criterion": "importance criterion (graphprune passes: l1, l2, taylor, wanda, ...)",
    "round_to": "keep widths multiples of N; \"auto\": this CPU's float32 SIMD lanes",
    "ignore": "regexes of nodes/tensors whose groups are kept",
    "seed": "seed for random criteria",
    "plan": "replay this plan.json exactly",
    "pipeline": "graphprune pass pipeline (overrides the options above)",
    "remove_blocks": "number of residual blocks to remove (depth pruning)",
    "keep_experts": "experts kept per com.microsoft MoE layer, the most routed-to on calib (0: all)",
    "block_criterion": "how blocks are ranked for removal",
    "blocks": "regexes of the blocks that may be removed",
    "slice_hidden": "pre-norm transformers (RMSNorm or LayerNorm): rotate the residual stream (needs calib) and remove this "
                    "fraction of the hidden size",
    "keep_tokens": "language models: keep only these token ids (a list, or a file of them); the model then reads new "
                   "ids, mapped by <model>.vocab.json",
    "token_input": "the input of token ids for keep_tokens (default: the one indexing the largest table)",
    "calib": "calibration data: inputs.npz, a folder of images (with calib_preprocess), or module:function",
    "calib_preprocess": "for image folders: size=HxW,mean=a/b/c,std=a/b/c,layout=nchw|nhwc,color=rgb|bgr|gray",
    "calib_batch": "calibration batch size",
    "calib_samples": "use at most N calibration samples",
    "input_shapes": "{input: dims}: the shapes dynamic inputs take (oracle, MACs and latency targets)",
    "check": "run the oracle before writing (recommended)",
    "repair": "after the oracle, repair without retraining: comma list of bias, bn, lsq, or all (needs calib)",
    "sparsity": "options of the `sparsify` pass, e.g. {\"sparsity\": 0.5, \"pattern\": \"1x4\"}; null: none",
    "max_drop": "quality gate: max 1 - mean output cosine on calibration data; auto (default): 0.1 with "
                "calib, none without; null: no gate",
    "allocation": "how channels are spread over groups: uniform, global or sensitivity",
    "target_macs": "keep this fraction of the MACs (e.g. 0.7)",
    "target_params": "keep this fraction of the parameters",
    "target_active_params": "keep this fraction of the active parameters (MoE experts count k/E)",
    "target_latency": "keep this fraction of the ONNX Runtime latency measured on this machine",
    "max_ratio": "no group loses more than this fraction",
    "protect": "regexes: groups touching matching layers/tensors keep all their channels",
    "prune_hidden": "also prune the hidden size (the axis a LayerNorm/RMSNorm normalises over; exact); kept whole "
                    "by default",
    "layer_ratios": "{regex: ratio} or [\"regex=ratio\"]: fixed ratios for the groups they match",
}


def _hints(cls) -> dict:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # a name only importable for type checkers: Any for every field
        return {}


def _json_type(t):
    """A type Olive's pydantic config accepts from JSON (Any for what it cannot describe)."""
    import typing

    try:
        from pydantic import TypeAdapter

        TypeAdapter(t)
        return t
    except Exception:
        return typing.Any


def _allocation_specs() -> dict:
    """Allocation keys (graphprune.allocation.driver.OPTIONS) typed from plan-channels'
    signature; default None: a key reaches the driver only when given."""
    import inspect
    import typing

    from graphprune.allocation.driver import OPTIONS
    from graphprune.passes.pruning.plan_channels import PlanChannels

    params = inspect.signature(PlanChannels.__init__).parameters
    hints = _hints(PlanChannels.__init__)
    out = {}
    for key in sorted(OPTIONS):
        p = params.get(key)
        default = None if p is None or p.default is inspect.Parameter.empty else p.default
        help_ = _HELP.get(key, f"allocation option {key}")
        if default is not None:
            help_ += f" (default {default})"
        out[key] = (typing.Optional[_json_type(hints.get(key, typing.Any))], None, help_)
    return out


def option_specs() -> dict:
    """{Olive option: (type, default, description)}, generated from PruneOptions' fields
    (dataclasses.fields) so that a new workflow option is a new pass option."""
    import copy
    import dataclasses
    import typing

    from graphprune.workflow.options import DEFAULTS, PruneOptions

    hints = _hints(PruneOptions)
    out = {}
    for f in dataclasses.fields(PruneOptions):
        if f.name in EXCLUDED:
            continue
        if f.name in EXPANDED:
            for key, spec in _allocation_specs().items():
                if key in out:
                    raise RuntimeError(f"{PASS_NAME}: allocation option {key!r} collides with an option")
                out[key] = spec
            continue
        if f.name in out:
            raise RuntimeError(f"{PASS_NAME}: option {f.name!r} collides with an allocation option")
        help_ = f.metadata.get("help") or _HELP.get(f.name) or f"PruneOptions.{f.name} (see graphprune prune --help)"
        out[f.name] = (_json_type(hints.get(f.name, typing.Any)), copy.deepcopy(getattr(DEFAULTS, f.name)), help_)
    return out


def options(config):
    """The pass's Olive config as PruneOptions (the same options `graphprune prune` builds):
    every field from the option of its name, allocation from the allocation keys given."""
    import copy
    import dataclasses

    from graphprune.workflow.options import DEFAULTS, PruneOptions

    kwargs = {}
    for f in dataclasses.fields(PruneOptions):
        if f.name in EXCLUDED:
            continue
        if f.name in EXPANDED:
            kwargs[f.name] = {k: v for k in sorted(_allocation_specs())
                              if (v := getattr(config, k, None)) is not None}
            continue
        v = getattr(config, f.name, None)
        if v is None and f.default_factory is not dataclasses.MISSING:
            v = copy.deepcopy(getattr(DEFAULTS, f.name))  # an option set to null: the field's empty value
        kwargs[f.name] = v
    return PruneOptions(**kwargs)


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


def pass_entry() -> dict:
    """This pass's entry in an Olive package config (`"passes": {PASS_NAME: ...}`)."""
    return {"module_path": f"graphprune.integrations.olive.{PASS_NAME}",  # also when run as __main__
            "supported_providers": ["*"], "supported_accelerators": ["*"], "supported_precisions": ["*"],
            "extra_dependencies": []}


def package_config() -> dict:
    """Olive's default package config with this pass added."""
    _olive()
    from olive.package_config import OlivePackageConfig

    data = json.loads(Path(OlivePackageConfig.get_default_config_path()).read_text())
    data["passes"][PASS_NAME] = pass_entry()
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


def main(argv=None) -> int:
    """`python -m graphprune.integrations.olive FILE`: write Olive's package config with this
    pass added, for `olive run --config CONFIG --package-config FILE` workflows that also use
    Olive's own passes (examples/olive/packages.json lists this pass only)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m graphprune.integrations.olive PACKAGE_CONFIG.json", file=sys.stderr)
        return 2
    try:
        print(write_package_config(args[0]))
    except BackendUnavailableError as exc:
        print(f"error: {exc} (hint: {exc.hint})", file=sys.stderr)
        return 2
    return 0


def __getattr__(name: str):
    global _CLASS
    if name == PASS_NAME:
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
