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

Reading and writing config files is here (library); merging a config with the command
line, which derives the schema from the verbs' argparse parsers, is graphprune.cli.config_file.

Why not a dataclass per section: the verbs' options are still growing (allocation,
calibration, depth pruning); deriving the schema from the argparse parsers keeps one
source of truth and rejects a misspelt key with the list of valid ones.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from graphprune.errors import UsageError

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
# [compile.tuning] keys -> the compile verb's option names
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
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config is a table of sections ([prune], [compile])")
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise UsageError(f"{path}: config version {version} is not supported (expected {CONFIG_VERSION})")
    unknown = set(data) - {"version", "prune", "compile"}
    if unknown:
        raise UsageError(f"{path}: unknown section(s) {sorted(unknown)}", hint="sections: [prune], [compile]")
    return data


def _parse(path: Path, text: str):
    """The file's data by its suffix: YAML, JSON, else TOML."""
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UsageError(f"{path}: YAML configs need PyYAML", hint="pip install pyyaml, or use TOML") from None
            return yaml.safe_load(text) or {}
        if path.suffix == ".json":
            return json.loads(text)
        import tomllib

        return tomllib.loads(text)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{path}: cannot parse config: {exc}") from None


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
