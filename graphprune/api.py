"""The Python API: load, analyze, prune, check, save."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_ir as ir

from graphprune.analysis.dependency import DependencyGraph
from graphprune.errors import ArgumentTypeError, UsageError
from graphprune.frontends.onnx import load_onnx, save_onnx
from graphprune.passes import PassContext, PassManager
from graphprune.plan import Plan
from graphprune.workflow.options import DEFAULTS as _DEFAULTS
from graphprune.workflow.options import ROUND_TO_DEFAULT, name_list

if TYPE_CHECKING:  # the oracle's module (and ONNX Runtime's helpers) load when `check` runs
    from graphprune.runtime.oracle import OracleResult


def load(path: str | os.PathLike | bytes, *, fold: bool = True, input_shapes: dict | None = None) -> ir.Model:
    """Read an ONNX model and normalise it for analysis (shapes inferred, shape math folded);
    `input_shapes` ({name: dims}) makes dynamic inputs static."""
    if not isinstance(path, (str, os.PathLike, bytes, bytearray)):  # an nn.Module's repr was the message
        hint = " (an nn.Module: graphprune.prune_module prunes it)" if hasattr(path, "named_modules") else ""
        raise ArgumentTypeError(f"graphprune.load reads an ONNX file (a path or its bytes), got "
                                f"{type(path).__name__}{hint}")
    return load_onnx(path, fold=fold, input_shapes=input_shapes)


def _model(model, fn: str) -> ir.Model:
    """The model argument of `fn`: an ir.Model, or a path (or bytes) that `load` reads."""
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, (str, os.PathLike, bytes, bytearray)):
        return load(model)
    raise ArgumentTypeError(f"graphprune.{fn}: model must be an onnx_ir Model (from graphprune.load) or a path "
                            f"to an .onnx file, got {type(model).__name__}")


def save(model: ir.Model | PruneResult, path: str | os.PathLike) -> None:
    """Write a model atomically (external data beside it when it is large). A `prune` result
    is written as the CLI writes one: its model, recording its plan's digest, and the plan
    beside it (`<name>.plan.json`, never over a file graphprune did not write), so that
    `check(original, path)` finds the plan (it asked for one)."""
    result = model if isinstance(model, PruneResult) else None
    if result is not None:
        model = result.model
    if not isinstance(model, ir.Model):
        raise ArgumentTypeError(f"graphprune.save: model must be an onnx_ir Model, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"graphprune.save: path must be a file path, got {type(path).__name__}")
    if os.path.isdir(path):
        raise UsageError(f"graphprune.save: {path} is a directory; give the path of the .onnx file to write",
                         hint=f"e.g. {os.path.join(path, 'model.onnx')}")
    if result is None:
        save_onnx(model, path)
        return
    from pathlib import Path

    from graphprune.outputs import PLAN_KEY, is_graphprune_plan, plan_digest, refuse_foreign

    name = Path(path).name
    plan_path = Path(path).with_name(f"{name[:-5] if name.endswith('.onnx') else name}.plan.json")
    refuse_foreign(plan_path, "the plan written beside the model", is_graphprune_plan)
    model.metadata_props[PLAN_KEY] = plan_digest(result.plan)  # the model and this plan are one result
    save_onnx(model, path)
    result.plan.save(plan_path)


def analyze(model: ir.Model | str | os.PathLike, *, ignore: list[str] | None = None) -> DependencyGraph:
    """Dependency analysis: pruning groups, frozen groups and diagnostics. `model`: an
    ir.Model or a path to load."""
    from graphprune.analysis.dependency.graph import offer

    dg = DependencyGraph(_model(model, "analyze"), ignore=ignore)
    dg.require_matches(ignore)
    offer(dg)  # a prune of the unchanged model reuses it instead of analysing again
    return dg


@dataclass
class PruneResult:
    model: ir.Model
    plan: Plan
    changed: bool


def prune(model: ir.Model | str | os.PathLike, ratio: float = _DEFAULTS.ratio, *, criterion: str = _DEFAULTS.criterion,
          round_to: int | str = ROUND_TO_DEFAULT, ignore: list[str] | None = None, plan: Plan | None = None,
          seed: int = _DEFAULTS.seed, selection: dict[int, list[int]] | None = None,
          remove_blocks: int = _DEFAULTS.remove_blocks, block_criterion: str = _DEFAULTS.block_criterion,
          blocks: list[str] | None = None, keep_tokens=None, token_input: str | None = None,
          keep_experts: int = _DEFAULTS.keep_experts, prune_hidden: bool = False) -> PruneResult:
    """Prune `model` in place. With `plan`, replay it exactly; with `selection`
    (group id → atom ids from `analyze`), remove exactly those atoms. `remove_blocks=k`
    (or `blocks=[Add node names]`) first removes whole residual blocks (depth pruning).
    `keep_experts=n` keeps the n most routed-to experts of each com.microsoft MoE layer (first).
    `keep_tokens` (token ids, or a file of them) keeps only those rows of the token table and
    columns of the output head, last: the model then reads new ids (new id i = the i-th
    smallest kept id; the result's `plan.vocab["kept"]` is the map). `prune_hidden=True` also
    prunes the axis a LayerNorm/RMSNorm normalises over (a transformer's hidden size), kept
    whole by default; it stays exact. `round_to="auto"` keeps
    widths multiples of this CPU's float32 SIMD lanes (what ONNX Runtime runs fastest).
    A path is loaded first (the file is never changed): the result's model is the pruned one.
    The sequence is graphprune.workflow.run_prune, without the oracle (see `check`)."""
    from graphprune.outputs import PLAN_KEY
    from graphprune.workflow import PruneOptions, run_prune

    model = _model(model, "prune")
    opts = PruneOptions(ratio=ratio, criterion=criterion, round_to=round_to, ignore=name_list(ignore), seed=seed,
                        plan=plan, selection=selection, remove_blocks=remove_blocks, block_criterion=block_criterion,
                        blocks=name_list(blocks), keep_tokens=keep_tokens, token_input=token_input,
                        keep_experts=keep_experts, check=False, figures=False,
                        allocation={"prune_hidden": True} if prune_hidden else {})
    outcome = run_prune(model, opts)
    from graphprune.analysis.dependency.graph import withdraw

    withdraw(model)  # an analysis from before the pruning would pin the old tensors
    model.metadata_props.pop(PLAN_KEY, None)  # an input's record of its own plan says nothing about this one
    return PruneResult(model=model, plan=outcome.plan, changed=outcome.changed)


def compile(model_path: str | os.PathLike, *, target: str = "x86", out: str | os.PathLike | None = None,
            **options) -> dict:
    """Prune for `target`, lower with a backend, check, and write a deployable folder (the
    `graphprune compile` verb; `options` are graphprune.compile.CompileOptions fields).
    Returns the report."""
    import dataclasses
    import difflib

    from graphprune.workflow.compile import CompileOptions, compile_model

    fields = [f.name for f in dataclasses.fields(CompileOptions)]
    unknown = [k for k in options if k not in fields]
    if unknown:  # a misspelt option is named, with the closest field, not a bare dataclass TypeError
        close = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
        raise ArgumentTypeError(f"gp.compile: unknown option(s) {', '.join(map(repr, unknown))}",
                                hint="; ".join(f"{k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
                                or "options are the fields of graphprune.workflow.compile.CompileOptions")
    if not isinstance(model_path, (str, os.PathLike)):
        raise ArgumentTypeError(f"graphprune.compile: model_path must be a path to an .onnx file, got "
                                f"{type(model_path).__name__}", hint="gp.save(model, 'm.onnx') first, then compile it")
    # the report's `command` is this call, not a CLI line that would do something else
    call = [f"gp.compile({str(model_path)!r}", f"target={target!r}"] + ([f"out={str(out)!r}"] if out is not None else []) \
        + [f"{k}={v!r}" for k, v in options.items()]
    return compile_model(model_path, CompileOptions(target=target, out=None if out is None else str(out), **options),
                         argv=[", ".join(call) + ")"])


def _plan_of(pruned) -> os.PathLike:
    """The plan written together with a pruned model file (check without a plan)."""
    if isinstance(pruned, ir.Model):
        raise UsageError("check of an in-memory pruned model needs its plan",
                         hint="pass the Plan that prune returned (PruneResult.plan)")
    from graphprune.outputs import plan_beside

    return plan_beside(pruned)


def _checked_pair(original, pruned, plan):
    """(pruned model or path, plan) for `check`: a PruneResult is its model against its own
    plan unless one is given; a file without a plan, the plan written with it."""
    if isinstance(pruned, PruneResult):
        pruned, plan = pruned.model, pruned.plan if plan is None else plan
    if isinstance(original, ir.Model) and original is pruned:  # (equal paths may be one str object)
        raise UsageError("graphprune.check: the original and the pruned model are the same object (prune works "
                         "in place, so the model it was given is the pruned one)",
                         hint="pass the original's path, or a model loaded again before pruning")
    return pruned, _plan_of(pruned) if plan is None else plan


def check(original: ir.Model | str | os.PathLike, pruned: ir.Model | PruneResult | str | os.PathLike,
          plan: Plan | str | os.PathLike | None = None, **kwargs) -> OracleResult:
    """The oracle: pruned == original with the plan's slices zeroed (see oracle.check).
    Without `plan`, a pruned model file is checked against the plan written together with
    it (`outputs.plan_beside`).
    A pruned model that records its plan's digest (graphprune writes it) checked against a
    plan with another digest is never a PASS: the oracle still runs (its figures tell how far
    apart they are) and the result is a FAIL whose `unpaired` says "plan X does not belong
    to model Y"."""
    from graphprune.errors import PlanError
    from graphprune.outputs import verify_pair
    from graphprune.runtime import oracle

    pruned, plan = _checked_pair(original, pruned, plan)
    pruned_name = "the pruned model" if isinstance(pruned, ir.Model) else str(pruned)
    plan_name = "the plan" if isinstance(plan, Plan) else str(plan)
    if not isinstance(pruned, ir.Model):
        pruned = load_onnx(pruned, fold=False)
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    unpaired = None
    try:
        note = verify_pair(pruned, plan, model_name=pruned_name, plan_name=plan_name)
    except PlanError as exc:
        note, unpaired = "", str(exc)
    if note:
        import logging

        logging.getLogger(__name__).info(note)
    if plan.hidden:  # slice-hidden: the slices are of the rotated input, rebuilt from the plan
        from graphprune.ir.serialize import clone
        from graphprune.passes.pruning.slice_hidden import rotated_reference

        original = rotated_reference(load_onnx(original) if not isinstance(original, ir.Model) else clone(original),
                                     plan.hidden)
    elif not isinstance(original, ir.Model):
        original = load_onnx(original, fold=False)
    if plan.vocab:  # slice-vocab: the masked original with its ids mapped and its logits gathered
        original, kwargs = _vocab_reference(original, plan.vocab, kwargs)
    result = oracle.check(original, pruned, plan, **kwargs)
    if unpaired:
        result.unpaired, result.ok = unpaired, False
    result.changed_after_pruning = changed_after_pruning(plan, pruned)
    return result


def _vocab_reference(original: ir.Model, record: dict, kwargs: dict) -> tuple[ir.Model, dict]:
    """The oracle's reference and options for a plan with a vocabulary record: random token
    ids over all kept tokens, at the shapes the caller gave (or the resolved ones)."""
    from graphprune.input_shapes import InputShapes
    from graphprune.ir.serialize import clone
    from graphprune.passes.pruning.slice_vocab import vocab_reference, with_token_range
    from graphprune.runtime.ort import resolve_shapes

    ref = vocab_reference(clone(original), record)
    shapes = kwargs.get("shapes")
    if not isinstance(shapes, InputShapes):
        shapes = resolve_shapes(ref, user=shapes)
    return ref, {**kwargs, "shapes": with_token_range(shapes, record)}


def changed_after_pruning(plan: Plan, pruned: ir.Model) -> str | None:
    """What changed the weights after the pruning on purpose (the plan's repair passes that were
    kept, sparsity zeros recorded in the model), so that the model is not the masked original;
    None when nothing did."""
    from graphprune.sparsity_meta import read_sparsity

    kept = [r.get("pass", "?") for r in plan.settings.get("repair") or []
            if isinstance(r, dict) and not r.get("reverted")]
    try:
        sparse = len(read_sparsity(pruned)["tensors"])
    except ValueError:  # an unreadable record: not graphprune's sparsity, nothing to say about it
        sparse = 0
    what = ([f"repair passes changed weights after pruning ({', '.join(kept)})"] if kept else []) + \
        ([f"{sparse} tensors were sparsified after pruning"] if sparse else [])
    if not what:
        return None
    return " and ".join(what) + ", so the pruned model is not the masked original by design"


@dataclass
class SparsifyResult:
    model: ir.Model
    tensors: dict  # per tensor: the record written to metadata_props["graphprune.sparsity"]
    skipped: list  # layers left dense, with the reason
    overall: float  # fraction of zeros over the sparsified tensors


def sparsify(model: ir.Model | str | os.PathLike, sparsity: float | None = None, *, format: str = "unstructured",
             criterion: str = "magnitude", calib=None, ignore: list[str] | None = None, scope: str = "layer",
             **options) -> SparsifyResult:
    """Sparsify `model` in place with exact zeros (it stays a dense ONNX model) and record
    the format per tensor in its metadata. `format`: unstructured, "2:4"-style N:M,
    "block:8x1" (output × input channels), "pattern:4" (3×3 convs; `connectivity=`);
    `criterion`: magnitude, wanda or sparsegpt (the last two need `calib`: a Calibration,
    an .npz path, a folder of images or module:function). More options: see the
    `sparsify` pass (skip_first, skip_last, min_params, damp, blocksize, ...)."""
    from graphprune.passes.sparsity.sparsify import Sparsify
    from graphprune.runtime.calibration import load_calibration

    model = _model(model, "sparsify")
    opts = {"format": format, "criterion": criterion, "scope": scope, **options}
    if sparsity is not None:
        opts["sparsity"] = sparsity
    if ignore:
        opts["ignore"] = name_list(ignore)
    ctx = PassContext()
    if calib is not None:
        ctx.results["calibration"] = load_calibration(calib, model)
    PassManager([Sparsify(**opts)]).run(model, ctx)
    res = ctx.results["sparsity"]
    return SparsifyResult(model, res["tensors"], res["skipped"], res["overall"])
