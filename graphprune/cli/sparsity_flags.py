"""Sparsity flags shared by `graphprune prune` and `graphprune compile` (and so config
keys of both): structured pruning first, then sparsity inside what is left. Kept out of
the passes package so that `graphprune --help` imports nothing heavy."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    from graphprune.cli import argtypes as T
    from graphprune.sparsity_meta import FORMATS_HELP

    g = p.add_argument_group("sparsity (exact zeros inside the remaining weights, after structured pruning)")
    g.add_argument("--sparsity", type=T.RATIO, metavar="F",
                   help="fraction of each layer's weights to zero (unstructured and block formats; "
                        "use with --ratio 0 for sparsity alone)")
    g.add_argument("--sparsity-format", metavar="FMT", help=FORMATS_HELP + " (default unstructured)")
    g.add_argument("--sparsity-criterion", metavar="C",
                   help="magnitude (default), wanda (|W|·‖X‖) or sparsegpt (OBS with weight update); "
                        "wanda and sparsegpt need --calib")
    g.add_argument("--sparsity-scope", choices=("layer", "global"), help="per-layer target (default) or one "
                   "global threshold (magnitude/wanda)")
    g.add_argument("--connectivity", type=T.RATIO, metavar="F",
                   help="with pattern formats: also remove this fraction of whole 3x3 kernels by norm")
    g.add_argument("--sparsity-patterns", type=T.POSITIVE_INT, metavar="N", help="pattern library size (default 8)")
    g.add_argument("--sparsity-ignore", action="append", default=[], metavar="PATTERN",
                   help="keep layers whose node/weight/output name matches this regex or glob dense "
                        "(repeatable; --ignore protects them too)")
    g.add_argument("--sparsity-min-params", type=T.COUNT, metavar="N",
                   help="leave layers with fewer weights dense (default 1024)")
    g.add_argument("--sparsify-first", action="store_true",
                   help="also sparsify the first convolution (skipped by default)")
    g.add_argument("--sparsify-last", action="store_true",
                   help="also sparsify the final classifier (skipped by default)")


def wanted(args) -> bool:
    return getattr(args, "sparsity", None) is not None or bool(getattr(args, "sparsity_format", None)) or \
        bool(getattr(args, "connectivity", None))


def pass_options(args) -> dict | None:
    """`sparsify` pass options from the flags (None when no sparsity is asked), validated
    now so that a bad flag fails before any pruning work."""
    if not wanted(args):
        return None
    from graphprune.passes.sparsity.spec import check_criterion, check_scope, parse_spec

    opts: dict = {"format": args.sparsity_format or "unstructured"}
    if args.sparsity is not None:
        opts["sparsity"] = args.sparsity
    if args.connectivity:
        opts["connectivity"] = args.connectivity
    if args.sparsity_patterns:
        opts["patterns"] = args.sparsity_patterns
    opts["criterion"] = check_criterion(args.sparsity_criterion or "magnitude")
    opts["scope"] = check_scope(args.sparsity_scope or "layer")
    ignore = list(getattr(args, "sparsity_ignore", None) or []) + list(getattr(args, "ignore", None) or [])
    if ignore:
        opts["ignore"] = ignore
    if args.sparsity_min_params is not None:
        opts["min_params"] = args.sparsity_min_params
    if args.sparsify_first:
        opts["skip_first"] = False
    if args.sparsify_last:
        opts["skip_last"] = False
    parse_spec(opts["format"], opts.get("sparsity"), connectivity=opts.get("connectivity", 0.0),
               patterns=opts.get("patterns", 8))
    return opts


def require_calibration(opts: dict | None, calib_spec) -> None:
    from graphprune.errors import UsageError

    if opts and opts.get("criterion", "magnitude") != "magnitude" and not calib_spec:
        raise UsageError(f"--sparsity-criterion {opts['criterion']} needs calibration data: give --calib",
                         hint="--calib inputs.npz | image folder (with --calib-preprocess) | module:function; "
                              "or --sparsity-criterion magnitude")


def summary_lines(res: dict, max_rows: int = 40) -> list[str]:
    from graphprune.cli.common import table

    tensors = res["tensors"]
    lines = [f"sparsity: {res['spec']} by {res['criterion']} ({res['scope']}) on {len(tensors)} tensors: "
             f"{100 * res['overall']:.1f}% of their weights are zero; {len(res['skipped'])} layers left dense"]
    rows = [[name, r["op"], r["format"] if r["format"] != "n:m" else f"{r['n']}:{r['m']}",
             f"{100 * r['sparsity']:.1f}%"] for name, r in list(tensors.items())[:max_rows]]
    if rows:
        lines.append(table(rows, ["tensor", "op", "format", "zeros"]))
    if len(tensors) > max_rows:
        lines.append(f"... {len(tensors) - max_rows} more tensors")
    reasons: dict[str, int] = {}
    for s in res["skipped"]:
        key = s["reason"].split(" (")[0] if "min_params" not in s["reason"] else "below min_params"
        reasons[key] = reasons.get(key, 0) + 1
    if reasons:
        lines.append("left dense: " + "; ".join(f"{k} ×{v}" for k, v in reasons.items()))
    return lines


def split_sparsify(pm):
    """(pipeline without sparsify passes, sparsify passes): see graphprune.workflow.pipeline."""
    from graphprune.workflow.pipeline import split_sparsify as split

    return split(pm)
