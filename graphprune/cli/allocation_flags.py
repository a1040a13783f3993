"""Command-line options for choosing what to prune and repairing afterwards, shared by
`graphprune prune` and `graphprune compile` (kept here so the verbs stay small)."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

def add_arguments(p, *, criterion: bool = False) -> None:
    from graphprune.cli import argtypes as T

    g = p.add_argument_group("importance, allocation and repair")
    if criterion:
        g.add_argument("--criterion", default="l2", help=criterion_help())
    g.add_argument("--calib", metavar="SPEC",
                   help="calibration data: inputs.npz, a folder of images (with --calib-preprocess), "
                        "or module:function yielding feed dicts")
    g.add_argument("--calib-preprocess", metavar="SPEC",
                   help="for image folders: size=HxW,mean=a/b/c,std=a/b/c,layout=nchw|nhwc,color=rgb|bgr|gray")
    g.add_argument("--calib-batch", type=T.POSITIVE_INT, default=8, metavar="N", help="calibration batch size (default 8)")
    g.add_argument("--calib-samples", type=T.POSITIVE_INT, metavar="N", help="use at most N calibration samples")
    g.add_argument("--allocation", choices=("uniform", "global", "sensitivity"), default=None,
                   help="how channels are spread over groups (default uniform)")
    g.add_argument("--target-macs", type=T.KEEP_FRACTION, metavar="F", help="keep this fraction of the MACs (e.g. 0.7)")
    g.add_argument("--target-params", type=T.KEEP_FRACTION, metavar="F", help="keep this fraction of the parameters")
    g.add_argument("--target-active-params", type=T.KEEP_FRACTION, metavar="F",
                   help="keep this fraction of the active parameters (mixture-of-experts: each MoE layer's expert "
                        "weights count k/E, what one token reads)")
    g.add_argument("--target-latency", type=T.KEEP_FRACTION, metavar="F",
                   help="keep this fraction of the ONNX Runtime latency measured on this machine")
    g.add_argument("--max-ratio", type=T.FRACTION, metavar="F", help="no group loses more than this fraction")
    g.add_argument("--protect", action="append", default=[], metavar="REGEX", type=T.regex,
                   help="groups touching layers/tensors matching REGEX keep all their channels (repeatable)")
    g.add_argument("--prune-hidden", action="store_true", default=None,
                   help="also prune the hidden size of transformers (the axis a LayerNorm/RMSNorm normalises over: "
                        "exact, the statistics kept over the original width); kept whole by default")
    g.add_argument("--layer-ratio", action="append", default=[], metavar="REGEX=F", type=T.layer_ratio,
                   help="fixed ratio for groups matching REGEX (repeatable)")
    g.add_argument("--reduction", choices=("sum", "mean", "max"), help="how a group's tensors' scores combine")
    g.add_argument("--normalize", choices=("mean", "max", "sum", "none", "lamp"),
                   help="per-tensor score normalisation before the reduction")
    g.add_argument("--repair", metavar="LIST", default="auto",
                   help="after the oracle, repair without retraining: comma list of bias, bn, lsq, all, or none "
                        "(needs --calib), or bn-fold (no data: removed channels' means from BatchNorm statistics "
                        "folded into biases); default auto: chosen by the search with --calib, none without")
    g.add_argument("--search-budget", type=T.POSITIVE_INT, default=3, metavar="N",
                   help="with --calib and no --criterion/--allocation/--repair: try up to N candidate "
                        "configurations on part of the calibration data, score each on the held-back rest, keep "
                        "the best (default 3; 1: take the first, wanda/uniform + bias,lsq, unscored; 5 and more: "
                        "also the first with the least influential residual blocks removed, at the same MACs)")
    g.add_argument("--score", metavar="MODULE:FUNCTION",
                   help="score candidates with FUNCTION(onnxruntime.InferenceSession) -> float, higher is better "
                        "(default: output cosine vs the dense model on held-back and perturbed calibration samples)")


def criterion_help() -> str:
    from graphprune.importance import CRITERIA

    return ("importance: " + ", ".join(sorted(CRITERIA)) + " (default auto: searched with --calib, l2 without; "
            "data-aware ones need --calib)")


def pass_options(args) -> dict:
    """prune-channels options from the parsed flags (only those given)."""
    out = {}
    for k in ("allocation", "target_macs", "target_params", "target_active_params", "target_latency", "max_ratio",
              "reduction", "normalize", "prune_hidden"):
        v = getattr(args, k, None)
        if v is not None:
            out[k] = v
    if getattr(args, "protect", None):
        out["protect"] = list(args.protect)
    if getattr(args, "layer_ratio", None):
        out["layer_ratios"] = list(args.layer_ratio)
    return out


def calibration_options(args) -> dict:
    """PruneOptions / CompileOptions calibration fields from the parsed flags, the search's
    budget and score, and the quality gate: no --max-drop is the workflow's "auto"
    (workflow.options.max_drop_of: DEFAULT_MAX_DROP with --calib, no gate without)."""
    max_drop = getattr(args, "max_drop", None)
    return {"calib": getattr(args, "calib", None), "calib_preprocess": getattr(args, "calib_preprocess", None),
            "calib_batch": getattr(args, "calib_batch", 8), "calib_samples": getattr(args, "calib_samples", None),
            "search_budget": getattr(args, "search_budget", 3), "score": getattr(args, "score", None),
            "max_drop": "auto" if max_drop is None else max_drop}


def write_extras(ctx, plan_path: Path) -> list[Path]:
    """Sensitivity curves: plot beside the plan (the curves are in the plan's settings)."""
    from graphprune.allocation.sensitivity import plot_curves

    info = ctx.results.get("allocation") or {}
    curves = info.get("sensitivity")
    if not curves:
        return []
    name = plan_path.name.removesuffix(".json").removesuffix(".plan")
    png = plan_path.with_name(name + ".sensitivity.png")
    items = {i: {"name": k, **v} for i, (k, v) in enumerate(curves.items())}
    return [png] if plot_curves(items, png) else []
