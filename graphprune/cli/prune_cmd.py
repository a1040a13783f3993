"""graphprune prune model.onnx --ratio 0.3 -o small.onnx

Parse → PruneOptions → workflow.run_prune → print; the sequence itself is in
graphprune.workflow.prune."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from graphprune.cli.paths import plan_path_for  # noqa: F401  (importable from here too)
from graphprune.cli.paths import prune_output_path as output_path
from graphprune.workflow.options import DEFAULTS, ROUND_TO_DEFAULT

log = logging.getLogger(__name__)


def add_arguments(p):
    from graphprune.cli import argtypes as T

    p.add_argument("model", help="input ONNX model (never modified)")
    p.add_argument("-o", "--output", help="output .onnx (default: <model>.pruned.onnx); the plan goes to <output>.plan.json")
    p.add_argument("--ratio", type=T.RATIO, default=DEFAULTS.ratio,
                   help=f"fraction of each group's channels to remove (default {DEFAULTS.ratio:g})")
    p.add_argument("--criterion", default=DEFAULTS.criterion, help="importance: auto (default: searched with --calib, "
                   "l2 without), l1, l2, random, bn_scale, fpgm, lamp, activation, apoz, wanda, obs (data-aware "
                   "ones need --calib)")
    p.add_argument("--round-to", type=T.round_to, default=ROUND_TO_DEFAULT, metavar="N",
                   help="keep widths multiples of N; auto (default): this CPU's float32 SIMD lanes (16 with "
                        "AVX-512, 8 with AVX2, 4 on ARM), the widths ONNX Runtime's kernels run fastest; 1: any width")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", type=T.regex,
                   help="never prune groups touching nodes/tensors matching REGEX (repeatable)")
    p.add_argument("--plan", help="replay this plan.json exactly instead of choosing channels")
    p.add_argument("--pipeline", help="textual pass pipeline, e.g. 'prune-channels{ratio=0.5},dce'")
    p.add_argument("--seed", type=T.SEED, default=DEFAULTS.seed)
    p.add_argument("--remove-blocks", type=T.COUNT, default=DEFAULTS.remove_blocks, metavar="K",
                   help="depth pruning: first remove the K least influential residual blocks")
    p.add_argument("--block-criterion", default=DEFAULTS.block_criterion, help="influence (default) or magnitude")
    p.add_argument("--blocks", action="append", default=[], metavar="ADD_NODE",
                   help="remove this residual block (its Add node, see inspect --blocks; repeatable)")
    p.add_argument("--slice-hidden", type=T.RATIO, metavar="R",
                   help="pre-norm transformers (LLaMA, Qwen2, Mistral, GPT-2): rotate the residual stream to its "
                        "principal directions (needs --calib) and remove the fraction R of the hidden size first")
    add_vocab_arguments(p)
    p.add_argument("--no-check", action="store_true", help="skip the oracle (on by default)")
    p.add_argument("--no-bench", action="store_true", help="skip the ONNX Runtime latency measurements (the summary's and the report's per-layer profile)")
    p.add_argument("--inputs", help=".npz with model inputs for the oracle (random inputs are used too)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="make a dynamic input static (repeatable)")
    p.add_argument("--max-drop", type=T.NONNEG, metavar="D",
                   help="quality gate with --calib: fail (exit 3, nothing written) when 1 - mean cosine of "
                        "pruned vs dense outputs on the calibration data exceeds D (default with --calib: 0.1; "
                        "2 turns it off)")
    from graphprune.cli.config_file import add_pipeline_arguments

    add_pipeline_arguments(p)


def add_vocab_arguments(p) -> None:
    """--keep-tokens / --token-input, and --keep-experts (prune and compile)."""
    from graphprune.cli import argtypes as T

    p.add_argument("--keep-tokens", metavar="FILE",
                   help="language models: keep only these token ids (a JSON list, .npy, or integers separated by "
                        "spaces, commas or lines): token-table rows and output-head columns of the others are "
                        "removed; the model then reads new ids (new id i = the i-th smallest kept id), written "
                        "as <output>.vocab.json")
    p.add_argument("--token-input", metavar="NAME",
                   help="the input of token ids for --keep-tokens (default: the one indexing the largest table)")
    p.add_argument("--keep-experts", type=T.COUNT, default=DEFAULTS.keep_experts, metavar="N",
                   help="mixture-of-experts models (ONNX Runtime's com.microsoft MoE): keep the N experts of each "
                        "MoE layer the router sends the most weight to on --calib data, remove the others first")


def options(args):
    """PruneOptions from the parsed flags (sparsity flags validated now, before any work)."""
    from graphprune.cli import allocation_flags as alloc_cli
    from graphprune.cli import sparsity_flags as sparsity_cli
    from graphprune.cli.common import load_inputs, parse_shapes
    from graphprune.workflow import PruneOptions

    sparsity = sparsity_cli.pass_options(args)
    sparsity_cli.require_calibration(sparsity, args.calib)
    return PruneOptions(
        ratio=args.ratio, criterion=args.criterion, round_to=args.round_to, ignore=list(args.ignore),
        seed=args.seed, allocation=alloc_cli.pass_options(args), plan=args.plan, pipeline=args.pipeline,
        remove_blocks=args.remove_blocks, block_criterion=args.block_criterion, blocks=list(args.blocks),
        slice_hidden=args.slice_hidden, keep_tokens=args.keep_tokens, token_input=args.token_input,
        keep_experts=args.keep_experts, input_shapes=parse_shapes(args.input_shape), check=not args.no_check,
        inputs=None if args.no_check else load_inputs(args.inputs), repair=args.repair, sparsity=sparsity,
        **alloc_cli.calibration_options(args))


# options that choose the channels: a --pipeline (its passes take their own options) or a
# --plan (its channels are replayed exactly) decides them instead
CHANNEL_CHOICES = ("ratio", "criterion", "round_to", "ignore", "seed", "allocation", "target_macs",
                   "target_params", "target_active_params", "target_latency", "max_ratio", "protect", "layer_ratio",
                   "prune_hidden", "reduction", "normalize", "remove_blocks", "blocks", "block_criterion")


def refuse_flags_ignored(args, verb: str = "prune") -> None:
    """--ratio, --target-macs, --criterion ... next to --pipeline or --plan had no effect,
    without a word (a --plan with --target-macs 0.5 wrote the plan's 0.93 of the MACs and
    said nothing about the target). Refused in words, before any work."""
    from graphprune.cli.config_file import _dests
    from graphprune.errors import UsageError

    actions = _dests(verb)
    given = [d for d in CHANNEL_CHOICES if d in actions and getattr(args, d, None) not in (actions[d].default, None)]
    flags = ", ".join("--" + d.replace("_", "-") for d in given)
    if given and getattr(args, "pipeline", None):
        raise UsageError(f"{flags}: not used with --pipeline, whose passes take their own options",
                         hint="put them in the pipeline, e.g. --pipeline 'prune-channels{ratio=0.5,criterion=l1}', "
                              "or drop --pipeline")
    if given and getattr(args, "plan", None):
        raise UsageError(f"{flags}: not used with --plan, which replays the plan's channels exactly",
                         hint="drop them to replay the plan, or drop --plan to choose channels anew")


def _checked_output(args) -> Path:
    from graphprune.cli.common import same_file
    from graphprune.errors import UsageError

    src, out = Path(args.model), output_path(args)
    if out.suffix != ".onnx":
        folder = str(args.output or "").endswith(("/", os.sep)) or out.is_dir()
        raise UsageError(f"output {args.output if folder else out} is a folder: prune writes one .onnx file" if folder
                         else f"output {out} should end in .onnx",
                         hint=f"e.g. -o {out / Path(args.model).name}" if folder else None)
    if src.exists() and (same_file(src, out) or same_file(src, plan_path_for(out))):
        raise UsageError("the output would overwrite the input model", hint="choose another -o")
    if not args.output and not args.dry_run:  # a name the user did not give replaces only graphprune's model
        from graphprune.outputs import is_graphprune_model, refuse_foreign

        refuse_foreign(out, "the default output name", is_graphprune_model)
    if out.parent.exists() and not os.access(out.parent, os.W_OK):
        raise UsageError(f"cannot write to {out.parent}")
    return out


def run(args) -> int:
    from graphprune.cli import dry_run
    from graphprune.cli.config_file import apply_config
    from graphprune.cli.paths import check_cli_paths
    from graphprune.cli.report import Printer, measure_latency, print_prune_summary, write_prune_report
    from graphprune.workflow import run_prune

    apply_config(args, "prune", check_paths=check_cli_paths)  # no output on an input, before any write
    refuse_flags_ignored(args)
    opts = options(args)
    out = _checked_output(args)
    if args.dry_run:
        return dry_run.show_prune(args.model, opts, args.save_config)
    _check_report_paths(args, out)
    outcome = run_prune(args.model, opts, out=out, progress=Printer())
    latency = measure_latency(outcome, not args.no_bench, opts.round_to)
    html = write_prune_report(args, opts, outcome, latency)  # <out>.report.{json,md,html}
    if args.json:  # the report as JSON (schema graphprune.report/1), not the table
        from graphprune.cli.results import emit

        wrote = [str(outcome.out), str(outcome.plan_out)] + ([str(outcome.vocab_out)] if outcome.vocab_out else [])
        return emit(args, {**args.prune_report, "wrote": wrote, "report": str(html)})
    print_prune_summary(outcome, latency=latency)
    _print_search(outcome)
    _print_accuracy(outcome)
    print(f"report: {html}")
    return 0


def _check_report_paths(args, out: Path) -> None:
    """The report beside the model lands on no input and on no file graphprune did not write."""
    from graphprune.cli.paths import cli_paths
    from graphprune.report.writer import check_report_paths

    check_report_paths(out, cli_paths(args)[0])


def _print_search(outcome) -> None:
    from graphprune.workflow.search import table

    for line in table(outcome.search or {}):
        print(line)


def _print_accuracy(outcome) -> None:
    """Without calibration data nothing measured accuracy: say so (the oracle is not accuracy)."""
    from graphprune.workflow.verdicts import accuracy_line

    plan = outcome.plan
    line = accuracy_line(outcome.calibration, outcome.fidelity, bool(plan.removes or outcome.sparsity))
    if line:
        print(line)
