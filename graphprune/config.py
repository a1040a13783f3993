"""Pipeline config files: one file for the whole run, and the dry run.

    # graphprune.toml
    version = 1
    [prune]                 # how to prune (graphprune prune, and compile's pruning step)
    ratio = 0.4
    criterion = "l2"
    round_to = 8
    ignore = ["head"]
    pipeline = "prune-channels{ratio=0.4},dce"   # prune only
    [compile]               # where to deploy (graphprune compile)
    target = "arm"
    backend = "auto"
    [compile.tuning]
    trials = 256            # --tune-trials
    time = 600              # --tune-time
    db = "~/.cache/graphprune/tvm-db"

Keys are the verbs' long options (``round_to`` or ``round-to``), so a new CLI option is a
config key without any change here. Precedence: an option given on the command line >
the config file > the option's default. `--save-config` writes the resolved options of
the run (TOML written here; YAML when the file ends in .yaml/.yml and PyYAML is there);
`--config` reads TOML (tomllib), YAML or JSON.

Why not a dataclass per section: the verbs' options are still growing (allocation,
calibration, depth pruning); deriving the schema from the argparse parsers keeps one
source of truth and rejects a misspelt key with the list of valid ones.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from graphprune.errors import UsageError

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
# Not pipeline settings: what to read/write in this particular run, and the CLI's own flags.
NOT_CONFIG = {"model", "output", "config", "save_config", "dry_run", "force", "verbose_sub", "help", "_module"}
TUNING = {"trials": "tune_trials", "time": "tune_time", "db": "db", "rpc": "rpc", "rpc_key": "rpc_key"}


# ---- reading and writing ---------------------------------------------------------------

def load_config(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"{path}: no such config file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file (a config is a .toml, .yaml or .json file)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read config: {exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UsageError(f"{path}: YAML configs need PyYAML", hint="pip install pyyaml, or use TOML") from None
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{path}: cannot parse config: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config is a table of sections ([prune], [compile])")
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise UsageError(f"{path}: config version {version} is not supported (expected {CONFIG_VERSION})")
    unknown = set(data) - {"version", "prune", "compile"}
    if unknown:
        raise UsageError(f"{path}: unknown section(s) {sorted(unknown)}", hint="sections: [prune], [compile]")
    return data


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise UsageError(f"cannot write {type(v).__name__} value {v!r} to a config")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps_toml(data: dict) -> str:
    """TOML for nested tables of scalars/lists (what a config holds); None is left out."""
    lines: list[str] = []

    def table(prefix: str, d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix and (scalars or not subs):
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in subs.items():
            table(f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k), v)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def save_config(path: str | Path, data: dict) -> None:
    from graphprune.plan import write_text_atomic

    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError("writing a YAML config needs PyYAML", hint="pip install pyyaml, or use .toml") from None
        text = yaml.safe_dump(_drop_none(data), sort_keys=False)
    elif path.suffix == ".json":
        text = json.dumps(_drop_none(data), indent=1) + "\n"
    else:
        text = "# graphprune pipeline config (graphprune prune|compile --config FILE)\n" + dumps_toml(data)
    write_text_atomic(path, text)


def _drop_none(d: dict) -> dict:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


# ---- merging with the command line ---------------------------------------------------------

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
    for where, dest, v in items:
        if dest in own:
            values[dest] = v
        elif dest not in other:
            valid = sorted(set(own) | set(other))
            raise UsageError(f"{path}: unknown key {where}", hint=f"valid keys: {', '.join(valid)}")
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
    for dest in _dests(verb):
        value = getattr(args, dest, None)
        if value is None or value == []:
            continue
        if verb == "prune" or dest in prune_keys:
            out["prune"][dest] = value
        elif dest in tuning_of:
            out["compile"]["tuning"][tuning_of[dest]] = value
        else:
            out["compile"][dest] = value
    if verb == "compile" and not out["compile"]["tuning"]:
        del out["compile"]["tuning"]
    return out


# ---- dry run ------------------------------------------------------------------------------

def plan_table(dg, plan) -> str:
    """Groups the plan changes: channels of the group's activation, removed, kept."""
    from graphprune.cli.common import table

    by_name = {g.name: g for g in dg.groups}
    rows, lost, total = [], 0, 0
    for entry in plan.groups:
        g = by_name.get(entry.get("name"))
        if g is None:
            rows.append([entry.get("name", "?"), "?", len(entry.get("removed_atoms", ())), "?"])
            continue
        ref = next((s for s in g.slots if not s.virtual and s not in g.roles), g.slots[0])
        n = g.sizes[ref]
        r = len(g.removed_indices(ref, entry.get("removed_atoms", ())))
        rows.append([g.name, n, r, n - r])
        lost, total = lost + r, total + n
    text = table(rows, ["group", "channels", "removed", "kept"]) if rows else "(no group changes)"
    return text + f"\n{len(plan.groups)} of {len(dg.prunable_groups)} prunable groups change: {lost} of {total} " \
                  f"channels removed, {len(plan.tensors)} tensors sliced"


def dry_run(model, pm, ctx, ignore=None) -> int:
    """Run the pruning pipeline on the in-memory model and show the plan; write nothing."""
    from graphprune.analysis.cost import model_cost
    from graphprune.analysis.dependency import DependencyGraph
    from graphprune.cli.common import human
    from graphprune.plan import Plan

    dg = DependencyGraph(model, ignore=ignore or None)
    before = model_cost(model)
    pm.run(model, ctx)
    plan = ctx.results.get("plan") or Plan(tensors=[], groups=[])
    after = model_cost(model)
    print(plan_table(dg, plan))
    print(f"params {human(before.params)} -> {human(after.params)}, MACs {human(before.macs)} -> {human(after.macs)}")
    print("dry run: nothing written")
    return 0


def dry_run_compile(model_path: str, opts) -> int:
    """compile --dry-run: the target's resolution and the plan compile would apply."""
    import graphprune as gp
    from graphprune.backends.targets import resolve_target
    from graphprune.passes import PassContext, PassManager
    from graphprune.passes.pruning.prune_channels import PruneChannels
    from graphprune.plan import Plan

    target = resolve_target(opts.target)
    resolved = opts.resolved(target)
    print(f"target:  {target.name} ({target.description}); round_to {resolved['round_to']}")
    print(f"backend: {opts.backend} (requested; chosen when compiling)")
    model = gp.load(model_path)
    ctx = PassContext()
    if opts.plan:
        ctx.results["plan_in"] = Plan.load(opts.plan)
    if not (opts.prune or opts.plan):
        if getattr(opts, "sparsity", None):
            print("sparsity only: sparsify{" + ",".join(f"{k}={v}" for k, v in opts.sparsity.items()) + "}")
        print("no pruning (--no-prune)\ndry run: nothing written")
        return 0
    pass_opts = {"ratio": opts.ratio, "criterion": opts.criterion, "round_to": resolved["round_to"], "seed": opts.seed}
    if opts.ignore:
        pass_opts["ignore"] = opts.ignore
    pass_opts.update(getattr(opts, "prune_options", None) or {})
    if getattr(opts, "sparsity", None):
        print("then sparsity: sparsify{" + ",".join(f"{k}={v}" for k, v in opts.sparsity.items()) + "}")
    return dry_run(model, PassManager([PruneChannels(**pass_opts)]), ctx, opts.ignore)
