"""`graphprune` command line: one module per verb, imported only when that verb runs."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

VERBS = {
    "inspect": ("graphprune.cli.inspect_cmd", "show inputs, ops, cost, pruning groups and frozen slots"),
    "prune": ("graphprune.cli.prune_cmd", "prune channels and write <out>.onnx + <out>.plan.json"),
    "check": ("graphprune.cli.check_cmd", "oracle: pruned model == input model with the plan's slices zeroed"),
    "compile": ("graphprune.cli.compile_cmd", "prune for a target and emit a deployable folder"),
    "bench": ("graphprune.cli.bench_cmd", "measure latency (median/p90), side by side for two artifacts"),
    "targets": ("graphprune.cli.targets_cmd", "list named targets and what they resolve to"),
    "passes": ("graphprune.cli.passes_cmd", "list passes and the per-op rule table"),
    "env": ("graphprune.cli.env_cmd", "versions of graphprune, onnx, ORT, TVM, torch and CPU features"),
}


class _ArgumentError(Exception):
    def __init__(self, text: str, message: str = "", hint: str | None = None):
        super().__init__(text)
        self.message, self.hint = message, hint


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and a hint (exit 2, returned by main), like every other
    error of the CLI."""

    def error(self, message: str):
        hint = f"see `{self.prog} --help`"
        raise _ArgumentError(f"{self.prog}: error: {message}\n  hint: {hint}", message, hint)


def _add_global_options(p: argparse.ArgumentParser, suffix: str = "") -> None:
    """-v, -q, --log-file and --json: on the main parser, and again (dests ending in `suffix`,
    merged by _merge_global_options) on every verb, so they work before or after the verb."""
    p.add_argument("-v", "--verbose", action="count", default=0, dest="verbose" + suffix,
                   help="more logging; tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", dest="quiet" + suffix,
                   help="print only errors (nothing at all on success; with --json: only the JSON)")
    p.add_argument("--log-file", dest="log_file" + suffix, metavar="FILE",
                   help="also write a detailed (debug) log to this file")
    p.add_argument("--json", action="store_true", dest="json" + suffix,
                   help="print the verb's result as one JSON document on stdout (with a \"schema\" key); "
                        "nothing else goes to stdout (progress and tables go to stderr)")


def _merge_global_options(args) -> None:
    args.verbose += args.__dict__.pop("verbose_sub", 0)
    args.quiet = args.quiet or args.__dict__.pop("quiet_sub", False)
    args.log_file = args.__dict__.pop("log_file_sub", None) or args.log_file
    args.json = args.json or args.__dict__.pop("json_sub", False)


def build_parser() -> argparse.ArgumentParser:
    from graphprune import __version__

    p = _Parser(prog="graphprune", description="A pruning compiler for neural networks.",
                epilog="global options (-v, -q, --log-file, --json) go before or after the verb. "
                       "exit codes: 0 ok, 1 internal error, 2 usage or plan error, 3 oracle or quality gate "
                       "failed, 4 unreadable or unsupported model, 5 slower than --min-speedup (compile: the "
                       "deployed pruned model is not that much faster than the input in ONNX Runtime; nothing "
                       "written), 6 not checkable (check of a model repaired or sparsified after pruning)")
    p.add_argument("--version", action="version", version=f"graphprune {__version__}")
    _add_global_options(p)
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for verb, (mod, help_) in VERBS.items():
        sp = sub.add_parser(verb, help=help_, description=help_)
        sp.set_defaults(_module=mod)
        _add_global_options(sp.add_argument_group("global options"), "_sub")
        importlib.import_module(mod).add_arguments(sp)
    return p


def _log_handlers(verbose: int, quiet: bool, log_file: str | None) -> list[logging.Handler]:
    """Library code logs; the CLI shows graphprune's INFO progress on stderr (-q: errors
    only, -v: debug with module names) and writes everything to --log-file (OSError if it
    cannot be opened)."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    if not log_file:
        return [console]
    fh = logging.FileHandler(log_file)
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return [console, fh]


@contextlib.contextmanager
def _logging_to(handlers: list[logging.Handler]):
    """The 'graphprune' logger writes only to these handlers while the verb runs; afterwards
    it is as it was, so main() called in-process (a toolchain step, a test) leaves neither a
    handler on a stream that may since have closed nor propagate=False behind it."""
    root = logging.getLogger("graphprune")
    saved = (list(root.handlers), root.level, root.propagate)
    root.handlers[:] = handlers
    root.setLevel(logging.DEBUG)
    root.propagate = False
    # onnx_ir warns once per value it cannot write the type of (an ORT-optimised model's NCHWc
    # values): 30 lines on stderr when checking a deployment, to a user who can do nothing about it
    serde = logging.getLogger("onnx_ir.serde")
    serde_level = serde.level
    if all(h.level > logging.DEBUG for h in handlers if not isinstance(h, logging.FileHandler)):
        serde.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for h in handlers:
            h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]
        serde.setLevel(serde_level)


def _print_error(verb: str | None, exc) -> int:
    """A GraphpruneError as the CLI shows it: one line, then the hint; its exit code."""
    print(f"graphprune{' ' + verb if verb else ''}: error: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)
    return exc.exit_code


def _guard_outputs(args) -> int | None:
    """Before --log-file is opened or any work: no output may land on an input."""
    from graphprune.cli.paths import check_cli_paths
    from graphprune.errors import UsageError
    from graphprune.outputs import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()  # SIGTERM unwinds, so temporary files are removed
    try:
        check_cli_paths(args)
    except UsageError as exc:
        return _print_error(args.verb, exc)
    return None


def _run_verb(args, verbose: int) -> int:
    """The verb's own run; typed errors become their exit codes, anything else exit 1
    (what went wrong is kept in args.error for --json)."""
    from graphprune.errors import GraphpruneError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except GraphpruneError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        args.error = {"error": str(exc), "hint": exc.hint}
        return _print_error(args.verb, exc)
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        args.error = {"error": "interrupted", "hint": None}
        return 130
    except Exception as exc:  # an internal error: one line unless -v
        from graphprune.outputs import terminated_by

        if (signum := terminated_by()) is not None:  # SIGTERM, turned into another exception by a library
            print(f"graphprune {args.verb}: terminated (signal {signum})", file=sys.stderr)
            args.error = {"error": "terminated", "hint": None}
            return 128 + signum
        if verbose:
            raise
        print(f"graphprune {args.verb}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  hint: rerun with -v for the traceback, and please report it", file=sys.stderr)
        args.error = {"error": f"internal error: {type(exc).__name__}: {exc}",
                      "hint": "rerun with -v for the traceback, and please report it"}
        return 1


def _run_quiet_or_json(args, verbose: int) -> int:
    """-q: the verb's stdout goes nowhere (and Python warnings are not shown); --json: its
    stdout goes to stderr, and its result (graphprune.cli.results) is the only thing on stdout,
    also after an error."""
    import contextlib
    import os
    import warnings

    stdout = sys.stdout
    if not (args.quiet or args.json):
        return _run_verb(args, verbose)
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(os.devnull, "w")) if args.quiet else sys.stderr
        stack.enter_context(contextlib.redirect_stdout(sink))
        if args.quiet:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
        code = _run_verb(args, verbose)
    if args.json:
        from graphprune.cli.results import dump

        stdout.write(dump(args, code))
        stdout.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """The CLI. Ctrl-C before a verb runs (parsing, the path checks, the plugins' imports)
    is exit 130 in one line, as during the run (it printed a 40-line traceback)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _ArgumentError as exc:
        print(exc, file=sys.stderr)
        _json_status_of_a_parse_error(sys.argv[1:] if argv is None else argv, exc)
        return 2
    _merge_global_options(args)
    refused = _guard_outputs(args) if args.verb else None
    if refused is not None:
        return refused
    try:
        handlers = _log_handlers(args.verbose, args.quiet, args.log_file)
    except OSError as exc:
        print(f"graphprune: error: cannot write the log file {args.log_file}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    with _logging_to(handlers):
        return _run_logged(parser, args, argv)


def _json_status_of_a_parse_error(argv: list[str], exc: _ArgumentError) -> None:
    """Under --json a failure prints its status document, one that argparse refused too
    (--ratio 2 printed nothing on stdout, exit 2, while other usage errors printed one)."""
    if "--json" not in argv:
        return
    from graphprune.cli.results import dump

    verb = next((a for a in argv if a in VERBS), None)
    status = argparse.Namespace(verb=verb, json_result=None, error={"error": exc.message, "hint": exc.hint})
    sys.stdout.write(dump(status, 2))
    sys.stdout.flush()


def _run_logged(parser, args, argv: list[str] | None) -> int:
    args._argv = list(sys.argv[1:] if argv is None else argv)  # lets --config tell given options from defaults
    from graphprune.plugins import load_plugins

    load_plugins()  # entry-point plugins (passes, rules, criteria, targets); a broken one only warns
    if not args.verb:
        parser.print_help()
        return 2
    return _run_quiet_or_json(args, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
