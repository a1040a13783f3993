"""Prune a PyTorch module with the same analysis, criteria and plans as an ONNX model.

    pruned, plan = graphprune.prune_module(model, example_inputs, ratio=0.4)

The module is captured with torch.export and lowered to the IR (frontends/torch.py), the
plan is computed on the IR exactly as for an ONNX file, and applied back by name: every
tensor the plan slices is a parameter or buffer of the module. What comes back is

* the module's own class (a deep copy), its tensors sliced into new nn.Parameters and its
  layers' size attributes updated, when its forward runs correctly at the new widths —
  the normal case, which keeps the user's methods, hooks, dropout and BatchNorm training
  (an nn.MultiheadAttention that lost heads becomes a PrunedMultiheadAttention, mha.py);
* otherwise (literal sizes in forward, layers whose class cannot express the result)
  a torch.fx GraphModule of the exported
  program with the literal sizes rewritten (see graph.py for what that costs).

Either way the result is checked before it is returned: it must equal the pruned ONNX
(ONNX Runtime) and the masked original (the input module with the plan's slices zeroed)
on the example inputs and a random variant of them. A module that fails is never returned.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphprune.errors import FrontendError, OracleMismatchError, UsageError, VerificationError
from graphprune.plan import Plan

log = logging.getLogger(__name__)

__all__ = ["TorchPruneResult", "check_module", "masked_module", "prune_module"]


@dataclass
class TorchPruneResult:
    module: Any  # the pruned torch.nn.Module (its own class, or a GraphModule: see `kind`)
    plan: Plan
    onnx_model: Any  # the pruned IR (onnx_ir.Model)
    original_onnx: bytes  # the ONNX export of the input module: the model the plan refers to
    kind: str = "module"  # "module" | "graph"
    notes: list[str] = field(default_factory=list)

    def __iter__(self):  # `pruned, plan = prune_module(...)`
        return iter((self.module, self.plan))


def _flat_outputs(out) -> list[np.ndarray]:
    import torch
    from torch.utils._pytree import tree_leaves

    return [t.detach().cpu().numpy() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _input_sets(args: tuple, seed: int = 0) -> list[tuple]:
    """The example inputs, and a random variant with the same shapes and dtypes (floats
    drawn fresh, integer inputs kept): two points are far stronger than one."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    variant = tuple(torch.randn(a.shape, generator=gen, dtype=a.dtype) if isinstance(a, torch.Tensor)
                    and a.is_floating_point() else a for a in args)
    return [args, variant]


def _run(module, args) -> list[np.ndarray]:
    import torch

    from graphprune.frontends.torch import eval_mode

    with torch.no_grad(), eval_mode(module):
        return _flat_outputs(module(*args))


def _compare(ref: list[np.ndarray], got: list[np.ndarray], rtol: float) -> str | None:
    from graphprune.runtime.oracle import compare_outputs

    if len(ref) != len(got):
        return f"{len(got)} outputs instead of {len(ref)}"
    bad = [d for d in compare_outputs(ref, got, [f"output {i}" for i in range(len(ref))], rtol=rtol) if not d.ok]
    if bad:
        return ", ".join(f"{d.name} error {d.max_abs_err:.3g} {d.scale_text()}" for d in bad)
    return None


def _onnx_outputs(sess, names: list[str], args) -> list[np.ndarray]:
    import torch

    feeds = {n: (a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
             for n, a in zip(names, [a for a in args if isinstance(a, torch.Tensor)], strict=True)}
    return list(sess.run(None, feeds))


def _mismatch(module, input_sets, sess, names, rtol) -> str | None:
    for args in input_sets:
        try:
            got = _run(module, args)
        except Exception as exc:  # literal sizes in forward typically fail here
            return f"fails ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})"
        why = _compare(_onnx_outputs(sess, names, args), got, rtol)
        if why:
            return f"differs from the pruned ONNX ({why})"
    return None


def masked_module(module, plan: Plan | str | os.PathLike):
    """The masked original: a copy of `module` with every slice the plan removes zeroed."""
    from graphprune.torchprune.surgery import mask_state

    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    masked = copy.deepcopy(module)
    mask_state(masked, plan)
    return masked


NOTHING_COMPARED = "nothing compared"


def check_module(original, pruned, plan: Plan, example_inputs, *, rtol: float = 1e-4, seed: int = 0) -> str | None:
    """The oracle on the torch side: None when `pruned` equals the masked original on the
    example inputs and a random variant, else what differs, or (starting NOTHING_COMPARED)
    that every output of the masked original is below the oracle's floor on both, which
    any module would match (torchvision's ViT, whose head is initialised to zeros)."""
    from graphprune.frontends.torch import as_tuple
    from graphprune.runtime.oracle import ATOL

    masked = masked_module(original, plan)
    signal = False
    for args in _input_sets(as_tuple(example_inputs), seed):
        ref = _run(masked, args)
        signal = signal or any(r.dtype.kind not in "fc" or (r.size and float(np.abs(r).max()) > ATOL) for r in ref)
        why = _compare(ref, _run(pruned, args), rtol)
        if why:
            return why
    if not signal:
        return (f"{NOTHING_COMPARED}: every output of the masked original is below {ATOL:g} on the example inputs "
                "and a random variant of them, so any module would match")
    return None


def _graph_fallback(module, args, cap, plan, removed, input_sets, sess, names, rtol, translations):
    """A GraphModule with rewritten literal sizes, from a dynamic-batch capture when its
    node names and shapes line up with the analysed one (any batch size then works), else
    from the analysed static capture (the example's batch size only)."""
    import torch

    from graphprune.frontends.torch import capture
    from graphprune.torchprune.graph import build_graph_module, first_mismatch

    # another batch size, and batch 1 (which a dynamic capture's input constraints exclude)
    other_batch = [tuple(torch.cat([a, a[:1]]) if isinstance(a, torch.Tensor) and a.dim() else a for a in args),
                   tuple(a[:1] if isinstance(a, torch.Tensor) and a.dim() else a for a in args)]
    try:
        dyn = capture(module, args, dynamic_batch=True, onnx_translations=translations)
        gm = build_graph_module(dyn.program, plan, removed, check_inputs=False)
        masked = masked_module(module, plan)
        if _mismatch(gm, input_sets, sess, names, rtol) is None and \
                all(_compare(_run(masked, b), _run(gm, b), rtol) is None for b in other_batch):
            return gm, ("the graph accepts any batch size; its other dims stay those of the example inputs ("
                        + ", ".join("×".join(["N", *map(str, a.shape[1:])]) for a in args if hasattr(a, "shape"))
                        + ")")
    except Exception as exc:  # any failure here only means: use the static graph
        log.debug("dynamic-batch graph fallback failed: %s", exc)
    gm = build_graph_module(cap.program, plan, removed)
    why = _mismatch(gm, input_sets, sess, names, rtol)
    if why:
        detail = first_mismatch(gm, cap.program, removed, args) or why
        raise VerificationError(f"cannot build a pruned module for {type(module).__name__}: {detail}",
                                hint="the pruned ONNX (result.onnx_model) is still valid; please report this")
    batch = args[0].shape[0] if args and hasattr(args[0], "shape") and len(args[0].shape) else "?"
    return gm, f"the graph was captured with batch size {batch} and only accepts that"


def _scores(module, dg, criterion, importance, loss_fn, data, seed, max_batches):
    from graphprune.importance import group_scores
    from graphprune.torchprune.taylor import taylor_scores

    if importance is None:
        importance = criterion
    if callable(importance):
        return {g.id: _checked_scores(importance, dg, g) for g in dg.prunable_groups}
    if importance in ("taylor", "taylor_group"):
        scores = taylor_scores(module, dg, loss_fn, data, max_batches=max_batches)
        return group_scores(dg, "taylor_group", taylor_group=scores)
    if not isinstance(importance, str):
        raise UsageError(f"importance must be a criterion name or a callable, got {type(importance).__name__}")
    from graphprune.importance.registry import CRITERIA

    if getattr(CRITERIA.get(importance), "needs_calibration", False):  # its hint named --calib, not here
        raise UsageError(f"criterion {importance!r} needs calibration data, which prune_module does not take",
                         hint="use a data-free criterion (l2, l1, lamp), importance='taylor' with data= and loss_fn=, "
                              "or prune the exported ONNX with gp.run_prune(path, gp.PruneOptions(calib=..., "
                              f"criterion={importance!r}))")
    return group_scores(dg, importance, seed=seed)


def _export_runs(module, cap, args) -> None:
    """FrontendError when torch's ONNX export of the unpruned module does not run in ONNX
    Runtime on the example inputs (an nn.LSTM with proj_size: the exporter writes an initial
    cell state of the projection's width): nothing pruned from it can be checked."""
    from graphprune.frontends.torch import _first_line
    from graphprune.runtime.ort import session

    try:
        sess = session(cap.onnx_bytes)
        _onnx_outputs(sess, [i.name for i in sess.get_inputs()], args)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own error classes
        raise FrontendError(
            f"torch.onnx's export of {type(module).__name__} does not run in ONNX Runtime, before any pruning: "
            f"{_first_line(exc)}",
            hint="the exporter's translation of one of its layers is wrong for this module; graphprune checks "
                 "every result in ONNX Runtime, so it cannot prune it") from exc


def _checked_scores(importance, dg, group) -> np.ndarray:
    """A callable importance's scores for `group`: one finite number per atom, or a
    UsageError (3 scores for 16 channels removed 3, NaN scores removed the first channels)."""
    name = getattr(importance, "__name__", type(importance).__name__)
    try:
        scores = np.asarray(importance(dg, group), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"importance {name} gave scores that are not numbers for group {group.name!r}: {exc}") from exc
    if scores.shape != (group.num_atoms,) or not np.isfinite(scores).all():
        what = f"shape {scores.shape}" if scores.shape != (group.num_atoms,) else "NaN or infinite values"
        raise UsageError(f"importance {name} gave {what} for group {group.name!r} of {group.num_atoms} atoms",
                         hint="return one finite score per atom of the group (group.num_atoms), higher = keep")
    return scores


def _tolerance(module, args: tuple, rtol: float | None) -> float:
    """The check's tolerance for the module's float type; float64 and bfloat16 are refused
    before any work: ONNX Runtime, which checks the result, has no CPU convolution or matrix
    product for them (its raw error came after the capture and the pruning)."""
    import torch

    kinds = {p.dtype for p in module.parameters() if p.is_floating_point()}
    kinds |= {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
    other = sorted(str(k).replace("torch.", "") for k in kinds - {torch.float32, torch.float16})
    if other:
        raise UsageError(f"prune_module checks its result in ONNX Runtime, which does not run {', '.join(other)} "
                         "convolutions and matrix products on the CPU",
                         hint="prune a float32 copy (module.float() and float inputs), then cast the result back, "
                              f"e.g. result.module.to(torch.{other[0]})")
    if rtol is not None:
        return rtol
    return 1e-2 if torch.float16 in kinds else 1e-4


DEFAULT_RATIO = 0.3


def prune_module(module, example_inputs, ratio: float | None = None, *, criterion: str = "l2", round_to: int | str = 1,
                 ignore: list[str] | None = None, plan: Plan | str | os.PathLike | None = None,
                 importance=None, loss_fn=None, data=None, max_batches: int | None = None,
                 selection: dict[int, list[int]] | None = None, seed: int = 0, check: bool = True,
                 rtol: float | None = None, onnx_translations: dict | None = None) -> TorchPruneResult:
    """Prune `module` (not modified) and return a physically smaller copy with its plan.

    ratio (default 0.3)/criterion/round_to/ignore/seed mean what they mean for `graphprune.prune`, but
    round_to defaults to 1 (any width): the result is a torch module, often trained further
    and deployed anywhere, not an ONNX file for this CPU (`round_to="auto"`: this CPU's lanes);
    `plan` replays a plan (made by either path); `selection` removes exactly the given
    atoms of `graphprune.analyze` groups. `importance` overrides `criterion`: a CRITERIA
    name, ``"taylor"`` (group first-order Taylor, |Σ w·dL/dw| over each atom, from
    ``loss_fn(module(*inputs), target)`` over the ``(inputs, target)`` batches of `data`,
    at most `max_batches`; see torchprune/taylor.py), or a callable
    ``fn(dependency_graph, group) -> scores per atom``. `check` runs the torch-side oracle
    (pruned == masked original); agreement with the pruned ONNX is always checked, within
    `rtol` of each output's scale (default 1e-4; 1e-2 for a float16 module, near its resolution).
    `onnx_translations` exports custom torch ops (see frontends.torch.capture).
    """
    import graphprune as gp
    from graphprune.allocation import uniform
    from graphprune.analysis.dependency import DependencyGraph
    from graphprune.frontends.torch import as_tuple, capture
    from graphprune.plan import build_plan, removed_by_slot, selection_from_plan
    from graphprune.runtime.ort import session
    from graphprune.torchprune.surgery import slice_state, update_attributes

    from graphprune.backends.targets import resolve_round_to

    from graphprune.workflow.options import name_list

    import torch

    if not isinstance(module, torch.nn.Module):  # (was an AttributeError on .parameters)
        raise UsageError(f"prune_module takes a torch.nn.Module, got {type(module).__name__}",
                         hint="for an ONNX file or model use graphprune.prune")
    if plan is not None and (ratio is not None or selection is not None):  # as the CLI refuses --plan with --ratio
        raise UsageError(f"plan= replays a plan; {'ratio' if ratio is not None else 'selection'}= would be ignored",
                         hint="pass the plan alone, or no plan")
    ratio = DEFAULT_RATIO if ratio is None else ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise UsageError(f"ratio must be a number in [0, 1), got {ratio!r}")  # '0.3' was a TypeError
    round_to = resolve_round_to(round_to)
    ignore = name_list(ignore) or None  # one string is one pattern, not a list of characters
    args = as_tuple(example_inputs)
    rtol = _tolerance(module, args, rtol)
    cap = capture(module, args, onnx_translations=onnx_translations)
    dg = DependencyGraph(cap.model, ignore=ignore)
    scores = None
    allocated = plan is None and selection is None  # by ratio, here
    if plan is not None:
        plan = plan if isinstance(plan, Plan) else Plan.load(plan)
        selection = selection_from_plan(dg, plan)
    elif selection is None:
        scores = _scores(module, dg, criterion, importance, loss_fn, data, seed, max_batches)
        selection = uniform(dg, scores, ratio, round_to)
    removed = removed_by_slot(dg, selection)
    settings = {"ratio": ratio, "criterion": importance if isinstance(importance, str) else
                criterion if importance is None else f"callable {getattr(importance, '__name__', 'importance')}",
                "round_to": round_to, "seed": seed}
    if ignore:
        settings["ignore"] = list(ignore)
    new_plan = build_plan(dg, selection, scores=scores, settings=plan.settings if plan is not None else settings,
                          model_info={"source": "torch", "class": type(module).__name__})
    res = gp.prune(cap.model, selection=selection, ignore=ignore)  # rewrites cap.model
    if res.plan.tensors != new_plan.tensors:  # same analysis twice: must agree
        raise VerificationError("internal: the pruning pass and the torch frontend disagree on the plan")

    input_sets = _input_sets(args, seed)
    sess = session(cap.model)
    names = [i.name for i in sess.get_inputs()]
    pruned = copy.deepcopy(module)
    slice_state(pruned, new_plan)
    inexpressible = update_attributes(pruned, cap.model, new_plan)
    kind, notes = "module", []
    if inexpressible:
        why = f"{', '.join(inexpressible)} cannot be expressed by its own class after pruning"
    else:
        why = _mismatch(pruned, input_sets, sess, names, rtol)
        why = why and f"its own forward {why}"
    if why:
        log.info("%s: returning a graph module (%s)", type(module).__name__, why)
        notes.append(f"returned a torch.fx GraphModule because {why}")
        try:
            gm, note = _graph_fallback(module, args, cap, new_plan, removed, input_sets, sess, names, rtol,
                                       onnx_translations)
        except VerificationError:
            _export_runs(module, cap, args)  # a broken export is the cause to name, not the pruning
            raise
        notes.append(note)
        notes.append("to keep it: torch.save(result.module.state_dict()) and result.plan.save(path); rebuild with "
                     "gp.prune_module(module, example_inputs, plan=path) and load_state_dict (a graph from "
                     "torch.export cannot be pickled whole: torch.save(result.module) fails)")
        pruned, kind = gm, "graph"
    if not new_plan.tensors:  # said, as the prune verb says it: an identical copy is not a result
        ignored = sum(1 for g in dg.groups if g.ignored)
        why = (f"all {ignored} prunable channel group(s) are excluded by ignore={list(ignore)} (patterns are regular "
               "expressions searched in tensor names, not globs: e.g. 'c1*' matches any name with a 'c')"
               if ignored and not dg.prunable_groups else
               f"no channel group of this module can be pruned ({len(dg.frozen_groups)} frozen; "
               "graphprune.analyze(result.onnx_model).frozen_groups says why, e.g. an op without a channel rule)"
               if not dg.prunable_groups else
               f"its {len(dg.prunable_groups)} prunable group(s) are each a hidden size a LayerNorm/RMSNorm normalises "
               "over, which is kept whole (the ONNX path prunes it with prune_hidden=True / --prune-hidden)"
               if allocated and all(g.normalised for g in dg.prunable_groups) else
               f"ratio {ratio:g} removes no whole channel of its {len(dg.prunable_groups)} prunable group(s)"
               + (f" in multiples of {round_to}" if round_to > 1 else ""))
        log.warning("prune_module: nothing pruned: %s", why)
        notes.append(f"nothing pruned: {why}")
    if check:
        why = check_module(module, pruned, new_plan, args, rtol=rtol, seed=seed)
        if why and why.startswith(NOTHING_COMPARED):
            raise OracleMismatchError(f"the pruned module could not be checked: {why}",
                                      hint="nothing was returned; give example inputs on which the module's outputs "
                                           "are not all zero (a layer initialised to zeros, e.g. a classifier head not "
                                           "trained yet, makes them zero: prune the trained module)")
        if why:
            raise OracleMismatchError(f"pruned module differs from the masked original: {why}",
                                      hint="nothing was returned; please report this model")
    return TorchPruneResult(module=pruned, plan=new_plan, onnx_model=cap.model, original_onnx=cap.onnx_bytes,
                            kind=kind, notes=notes)


def _register_criteria() -> None:
    from graphprune.torchprune.taylor import register

    register()


_register_criteria()
