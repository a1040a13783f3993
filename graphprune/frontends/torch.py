"""PyTorch frontend: capture an nn.Module with torch.export and lower it to the IR.

Why this route: `torch.onnx.export(..., dynamo=True)` is built on torch.export, and with
`optimize=False` it keeps every parameter and buffer as an initializer named by its
fully qualified name (``conv1.weight``, ``bn.running_mean``) and names every other
value after the FX node that computes it (``view``, ``linear``). The first property lets
a plan computed on the ONNX graph be applied back to the module's state; the second
lets literal sizes in the captured FX graph (``view(x, [-1, 256])``) be matched to the
ONNX values whose new shapes the analysis knows. The optimiser is off because it folds
BatchNorm into Conv and transposes weights into fresh constants, which would break both.

Only this module (and torchprune/, finetuning.py) imports torch; it is imported lazily.
"""
from __future__ import annotations

import contextlib
import re
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from graphprune.errors import FrontendError

log = logging.getLogger(__name__)

# The exporter has no implementations below opset 18.
EXPORT_OPSET = 18
# ONNX Runtime 1.31 rejects IR version 14 (what onnx 1.23 writes by default).
MAX_IR_VERSION = 10


@dataclass
class TorchCapture:
    """Everything one capture of a module gives: the IR for analysis, the ONNX exactly as
    exported (the plan's reference model), and the FX program whose node names are the
    ONNX value names."""

    model: ir.Model  # normalised for analysis (shape math folded)
    onnx_bytes: bytes  # as exported: the model the plan's tensor names refer to
    program: Any  # torch.export.ExportedProgram (decomposed, inference mode)
    input_names: list[str]
    output_names: list[str]
    state_names: dict[str, str] = field(default_factory=dict)  # initializer -> "parameter"/"buffer"


def as_tuple(example_inputs) -> tuple:
    """Example inputs as the positional-argument tuple torch.export expects."""
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs
    raise FrontendError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


@contextlib.contextmanager
def eval_mode(module):
    """Capture in inference mode (BatchNorm on running statistics, no dropout), which is
    the function the plan must preserve, and give the caller back its modes."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def quiet():
    """The exporter logs and warns a lot (missing torchvision ops, progress); the library
    never prints, so route that to debug logging only."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "onnxscript", "onnx_ir", "torch.fx")
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lvl in zip(loggers, old, strict=True):
                lg.setLevel(lvl)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CAUSE = re.compile(r"^<class '(?:[\w.]+\.)?(\w+)'>: (.+)$")


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()  # torch colours "This is step 3/3" for a terminal
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def _export_causes(exc: BaseException) -> list[str]:
    """torch.onnx's report of a failed conversion lists each error as "<class 'X'>: message"
    (the root cause first, then the node being translated); the first line says only
    "Failed to convert ... Next steps:"."""
    causes = []
    for e in (exc, exc.__cause__):
        for line in _ANSI.sub("", str(e or "")).splitlines():
            m = _CAUSE.match(line.strip())
            cause = f"{m[1]}: {m[2][:200]}" if m else None
            if cause and cause not in causes:
                causes.append(cause)
    return causes


def _export(module, args: tuple, dynamic_batch: bool):
    import torch

    if dynamic_batch:
        dims = tuple({0: torch.export.Dim.AUTO} if isinstance(a, torch.Tensor) and a.dim() else None for a in args)
        try:
            return torch.export.export(module, args, dynamic_shapes=dims, strict=False)
        except Exception as exc:  # retried static: the static error is the one to report
            log.debug("dynamic-batch export failed (%s); exporting with static shapes", _first_line(exc))
    return torch.export.export(module, args, strict=False)


def _is_zero_fill(value: ir.Value) -> bool:
    """A tensor computed from a zero constant only (Expand/CastLike/Cast of a scalar 0)."""
    from graphprune.ir.constants import const_array, is_constant

    node = value.producer()
    if node is None or is_constant(value):
        return False
    if node.op_type in ("Expand", "CastLike", "Cast", "Identity") and node.inputs and node.inputs[0] is not None:
        src = node.inputs[0]
        arr = const_array(src)
        if arr is not None:
            return arr.size > 0 and not arr.any()
        return _is_zero_fill(src)
    return False


def _drop_zero_biases(model: ir.Model) -> int:
    """A conv without bias is exported with a zero bias built at run time (Expand of a
    CastLike'd 0). It is no module state, ties the conv's output channels to shape
    arithmetic, and means nothing: drop the input (ONNX's bias is optional)."""
    dropped = 0
    for node in model.graph:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.inputs) == 3 and node.inputs[2] is not None \
                and _is_zero_fill(node.inputs[2]):
            node.resize_inputs(2)
            dropped += 1
    return dropped


def capture(module, example_inputs, *, dynamic_batch: bool = False,
            onnx_translations: dict | None = None) -> TorchCapture:
    """torch.export the module (inference mode), export that program to ONNX and load it
    into the IR. A module torch.export cannot capture is a FrontendError naming why.

    With `dynamic_batch`, axis 0 of every tensor input is left to torch.export to keep
    symbolic (Dim.AUTO: it specialises silently where the model needs a fixed size). The
    analysis uses a static capture: a run-time batch size makes reshapes that merge batch
    and heads (attention) unmappable, so it would freeze channels a static one can prune;
    the graph fallback of prune_module uses a dynamic one so it accepts any batch size.

    `onnx_translations` maps custom torch ops to onnxscript functions (torch.onnx's
    custom_translation_table); the ONNX op they emit then needs a channel rule in
    graphprune.RULES to be pruned through (fail closed otherwise).

    Parameters and buffers become initializers named by their fully qualified names
    (`state_names` lists those found), which is how a plan maps back onto the module."""
    try:
        import torch
    except ImportError:  # pragma: no cover - the [torch] extra is missing
        raise FrontendError("the PyTorch frontend needs torch", hint="pip install 'graphprune[torch]'") from None
    import onnx

    from graphprune.frontends.onnx import normalize, remove_unused

    if not isinstance(module, torch.nn.Module):
        raise FrontendError(f"expected a torch.nn.Module, got {type(module).__name__}")
    args = as_tuple(example_inputs)
    with eval_mode(module), quiet():
        try:
            ep = _export(module, args, dynamic_batch)
        except Exception as exc:
            raise FrontendError(
                f"torch.export cannot capture {type(module).__name__}: {type(exc).__name__}: {_first_line(exc)}",
                hint="graphprune prunes modules torch.export can trace (no data-dependent Python control "
                     "flow, no untraceable calls); see torch.export's error for the exact line") from exc
        try:
            prog = torch.onnx.export(ep, args, dynamo=True, optimize=False, verbose=False,
                                     external_data=False, opset_version=EXPORT_OPSET,
                                     custom_translation_table=onnx_translations)
        except Exception as exc:
            causes = _export_causes(exc)
            returned = any("translating node return" in c for c in causes)
            raise FrontendError(
                f"torch.onnx cannot export {type(module).__name__}: "
                + ("; ".join(reversed(causes)) if causes else f"{type(exc).__name__}: {_first_line(exc)}"),
                hint="the forward returns something that is not a tensor (an int or None among its outputs): "
                     "return tensors only" if returned else
                     "an operator without an ONNX translation; register a custom translation with "
                     "torch.onnx (custom_translation_table) or rewrite that part of the forward") from exc
    proto = prog.model_proto
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    model = ir.serde.deserialize_model(proto)
    if _drop_zero_biases(model):
        remove_unused(model)
    data = ir.serde.serialize_model(model).SerializeToString()
    model = ir.serde.deserialize_model(onnx.load_from_string(data))
    normalize(model)
    state = {name: "parameter" for name, _ in module.named_parameters(remove_duplicate=False)}
    state.update({name: "buffer" for name, _ in module.named_buffers(remove_duplicate=False)})
    names = {n: state[n] for n in model.graph.initializers if n in state}
    return TorchCapture(model=model, onnx_bytes=data, program=prog.exported_program,
                        input_names=[v.name for v in model.graph.inputs],
                        output_names=[v.name for v in model.graph.outputs], state_names=names)
