"""--config / --save-config of the verbs: a config file (graphprune.config reads and
writes the file formats) merged into the parsed arguments under the command line.

Keys are the verbs' long options, so the schema is derived from the verbs' argparse
parsers (one source of truth; a misspelt key is rejected with the list of valid ones).
Precedence: an option given on the command line > the config file > the option's default.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from graphprune.config import CONFIG_VERSION, TUNING, load_config, save_config
from graphprune.errors import UsageError

log = logging.getLogger(__name__)

# Not pipeline settings: what to read/write in this particular run, and the CLI's own flags.
NOT_CONFIG = {"model", "output", "config", "save_config", "dry_run", "force", "verbose_sub", "help", "_module"}


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """The options the pipeline verbs (prune, compile) share, after their own: a config
    file (--config, --save-config), --dry-run, and the allocation and sparsity flags."""
    from graphprune.cli import allocation_flags, sparsity_flags

    p.add_argument("--config", metavar="FILE",
                   help="pipeline config (TOML/YAML/JSON); options given here win. A config can run code "
                        "(calib = \"module:function\" imports and calls it): use only configs you trust")
    p.add_argument("--save-config", metavar="FILE", help="write this run's resolved options as a config")
    p.add_argument("--dry-run", action="store_true", help="show the plan (groups, channels removed); write nothing")
    allocation_flags.add_arguments(p)
    sparsity_flags.add_arguments(p)


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    import importlib

    from graphprune.cli.main import VERBS

    p = argparse.ArgumentParser(prog=f"graphprune {verb}", add_help=False)
    importlib.import_module(VERBS[verb][0]).add_arguments(p)
    return p


def _dests(verb: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _verb_parser(verb)._actions if a.dest not in NOT_CONFIG}


def explicit_dests(verb: str, argv: list[str] | None) -> set[str] | None:
    """Options given on the command line (None when the argv is not known)."""
    if argv is None:
        return None
    from graphprune.cli.main import build_parser

    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                stack.extend(a.choices.values())
            elif a.dest != "help":
                a.default = argparse.SUPPRESS
        p._defaults.clear()
    ns, _ = parser.parse_known_args(argv)
    return set(vars(ns))


def _norm(key: str) -> str:
    return key.replace("-", "_")


def _flatten(cfg: dict, verb: str, path: str) -> dict[str, object]:
    """Config keys → this verb's argparse dests, checking every key against both verbs."""
    own, other = _dests(verb), _dests("compile" if verb == "prune" else "prune")
    values: dict[str, object] = {}
    items = [(f"prune.{k}", _norm(k), v) for k, v in (cfg.get("prune") or {}).items()]
    comp = dict(cfg.get("compile") or {})
    tuning = comp.pop("tuning", None) or {}
    items += [(f"compile.{k}", _norm(k), v) for k, v in comp.items()]
    for k, v in tuning.items():
        if _norm(k) not in TUNING:
            raise UsageError(f"{path}: unknown key compile.tuning.{k}", hint=f"valid: {', '.join(TUNING)}")
        items.append((f"compile.tuning.{k}", TUNING[_norm(k)], v))
    prune_dests = own if verb == "prune" else other
    for where, dest, v in items:
        if dest not in own and dest not in other:
            valid = sorted(set(own) | set(other))
            raise UsageError(f"{path}: unknown key {where}", hint=f"valid keys: {', '.join(valid)}")
        section = where.split(".", 1)[0]
        if section == "prune" and dest not in prune_dests:  # e.g. target or quantize under [prune]
            log.warning("config key %s is a compile option: it belongs in [compile]%s", where,
                        "; prune ignores it" if verb == "prune" else "")
        if verb == "prune" and section == "compile":
            log.debug("config key %s is compile's ([compile]: where to deploy); prune ignores it", where)
            continue
        if dest in own:
            values[dest] = v  # compile: its [compile] keys come after [prune] and win
        else:
            log.debug("config key %s does not apply to %s", where, verb)
    return values


def _coerce(action: argparse.Action, value, where: str):
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UsageError(f"config key {where} must be true or false")
        return value
    try:
        if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
            value = value if isinstance(value, list) else [value]
            return [action.type(x) if action.type else x for x in value]
        return action.type(value) if action.type else value
    except argparse.ArgumentTypeError as exc:  # the CLI's range/regex validators (cli.argtypes)
        raise UsageError(f"config key {where}: {exc}") from None
    except (TypeError, ValueError):
        raise UsageError(f"config key {where}: {value!r} is not a valid value") from None


def apply_config(args, verb: str, check_paths=None) -> dict | None:
    """Merge --config into `args` (in place) under the command line; write --save-config.
    `check_paths(args)` runs after the merge, before --save-config is written.
    Returns the loaded config (None without --config)."""
    cfg = None
    if getattr(args, "config", None):
        cfg = load_config(args.config)
        given = explicit_dests(verb, getattr(args, "_argv", None))
        actions = _dests(verb)
        for dest, value in _flatten(cfg, verb, args.config).items():
            explicit = dest in given if given is not None else getattr(args, dest) != actions[dest].default
            if not explicit:
                setattr(args, dest, _coerce(actions[dest], value, dest))
    if check_paths is not None:
        check_paths(args)  # the config may name inputs too: no output may land on one
    if getattr(args, "save_config", None):
        save_config(args.save_config, resolved_config(args, verb))
        log.info("wrote config %s", args.save_config)
    return cfg


def resolved_config(args, verb: str) -> dict:
    """The options of this run as a config: shared pruning options in [prune]."""
    prune_keys = set(_dests("prune"))
    out: dict = {"version": CONFIG_VERSION, "prune": {}}
    if verb == "compile":
        out["compile"] = {"tuning": {}}
    tuning_of = {v: k for k, v in TUNING.items()}
    from graphprune.cli.paths import INPUT_OPTIONS

    for dest in _dests(verb):
        value = getattr(args, dest, None)
        if value is None or value == []:
            continue
        if dest in INPUT_OPTIONS and isinstance(value, str) and Path(value).exists():
            # a file the run read, as an absolute path: the config works from any folder
            value = str(Path(value).resolve())
        if verb == "prune" or dest in prune_keys:
            out["prune"][dest] = value
        elif dest in tuning_of:
            out["compile"]["tuning"][tuning_of[dest]] = value
        else:
            out["compile"][dest] = value
    if verb == "compile" and not out["compile"]["tuning"]:
        del out["compile"]["tuning"]
    return out
