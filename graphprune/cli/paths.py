"""The files a verb reads and writes, from its parsed arguments: checked against each
other (graphprune.outputs.check_paths) before any work and before --log-file is opened."""
from __future__ import annotations

from pathlib import Path

# Options that name files a verb reads, and those it writes (attribute names of the
# parsed arguments; a --config file may set some of them).
INPUT_OPTIONS = {"model": "input model", "original": "input model", "pruned": "pruned model", "plan": "plan",
                 "inputs": "--inputs file", "calib": "--calib data", "config": "--config file",
                 "paths": "input", "keep_tokens": "--keep-tokens file"}
OUTPUT_FILE_OPTIONS = {"save_config": "--save-config", "json_out": "--json-out", "log_file": "--log-file"}


def prune_output_path(args) -> Path:
    src = Path(args.model)
    return Path(args.output) if args.output else src.with_name(src.name.removesuffix(".onnx") + ".pruned.onnx")


def plan_path_for(output: Path) -> Path:
    name = output.name[:-5] if output.name.endswith(".onnx") else output.name
    return output.with_name(name + ".plan.json")


def cli_paths(args) -> tuple[list, list, list]:
    """(inputs, output files, output folders) named by a verb's parsed arguments, as
    (what, path) pairs."""
    from graphprune.frontends.onnx import model_files

    inputs = []
    for attr, what in INPUT_OPTIONS.items():
        v = getattr(args, attr, None)
        for p in (v if isinstance(v, list) else [v]):
            if not isinstance(p, str) or not p:
                continue
            if attr == "calib" and not Path(p).exists():
                continue  # module:function
            if attr in ("model", "original", "pruned", "paths"):
                inputs += [(what, f) for f in model_files(p)]
            else:
                inputs.append((what, Path(p)))
    files = [(what, getattr(args, attr)) for attr, what in OUTPUT_FILE_OPTIONS.items()
             if isinstance(getattr(args, attr, None), str)]
    folders = []
    verb = getattr(args, "verb", None)
    out = prune_output_path(args) if verb == "prune" and getattr(args, "model", None) else None
    if out is not None and out.suffix == ".onnx" and not getattr(args, "dry_run", False):
        # (another -o, e.g. ".", is refused by the verb in words: "should end in .onnx")
        from graphprune.report.writer import report_paths

        files += [("-o", out), ("-o (external data)", out.with_name(out.name + ".data")),
                  ("plan", plan_path_for(out))]
        files += [(f"report ({kind})", p) for kind, p in report_paths(out).items()]
        if getattr(args, "keep_tokens", None) or getattr(args, "plan", None):  # a plan may keep tokens too
            from graphprune.passes.pruning.slice_vocab import vocab_path_for

            files.append(("token id map", vocab_path_for(out)))
    elif verb == "compile" and getattr(args, "output", None) and not getattr(args, "dry_run", False):
        folders.append(("output folder", args.output))
    return inputs, files, folders


def check_cli_paths(args) -> None:
    """No output on an input (UsageError, exit 2): run before any work."""
    from graphprune.outputs import check_paths

    check_paths(*cli_paths(args))
