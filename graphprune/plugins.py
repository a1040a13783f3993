"""Plugins: other packages extend graphprune through entry points, found at start.

    [project.entry-points."graphprune.passes"]      my-pass = "mypkg.passes:MyPass"
    [project.entry-points."graphprune.rules"]       "com.acme::Fused" = "mypkg.rules:fused_rule"
    [project.entry-points."graphprune.importance"]  my_score = "mypkg.scores:score"
    [project.entry-points."graphprune.targets"]     my-board = "mypkg.targets:BOARD"

What each entry point may load:
* passes: a `Pass` subclass (registered under its own `name`);
* rules: a rule function ``fn(node, ctx)``, registered for the op named by the entry
  point (``OpType`` or ``domain::OpType``, any opset);
* importance: a criterion ``fn(dg, group, **kw) -> scores per atom`` (or a `Criterion`),
  registered under the entry point's name;
* targets: a `Target`, a dict of `Target` fields, or a callable returning one;
and in every group a module (its import registers things itself) or a zero-argument
function that registers things when called.

A plugin that fails to import or to register costs one warning line, never the run:
graphprune works without it. Loading is idempotent (the CLI calls it once per process;
the API on demand: `graphprune.load_plugins()`).
"""
from __future__ import annotations

import inspect
import logging
import types
from dataclasses import dataclass

log = logging.getLogger(__name__)

GROUPS = ("graphprune.passes", "graphprune.rules", "graphprune.importance", "graphprune.targets")


@dataclass
class PluginStatus:
    group: str
    name: str
    value: str
    dist: str
    ok: bool
    error: str = ""


_LOADED: dict[tuple[str, str, str], PluginStatus] = {}
_SCANNED: set[tuple] = set()  # (groups, sys.path) already scanned: listing entry points is ~40 ms


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "?"


def _register_pass(name: str, obj) -> None:
    from graphprune.passes import PASSES, Pass, register_pass

    if not (inspect.isclass(obj) and issubclass(obj, Pass)):
        raise TypeError(f"expected a graphprune Pass subclass, got {obj!r}")
    if PASSES.get(obj.name) is not obj:
        register_pass(obj)


def _register_rule(name: str, obj) -> None:
    from graphprune.analysis.dependency import RULES

    domain, _, op = name.rpartition("::")
    if not op:
        raise ValueError(f"entry point name {name!r} must be OpType or domain::OpType")
    existing = RULES.lookup(domain, op, 10**6)
    if existing is not None and existing.fn is obj:
        return
    RULES.add(domain, op, obj, family="plugin")


def _register_criterion(name: str, obj) -> None:
    from graphprune.importance import CRITERIA

    if not callable(obj):
        raise TypeError(f"expected a criterion callable, got {obj!r}")
    if name in CRITERIA and CRITERIA[name] is not obj:
        raise ValueError(f"criterion {name!r} is already defined")
    CRITERIA[name] = obj


def _register_target(name: str, obj) -> None:
    from graphprune.backends.targets import TABLE, Target

    if callable(obj) and not isinstance(obj, Target):
        obj = obj()
    if isinstance(obj, dict):
        obj = Target(**{**obj, "name": name})
    if not isinstance(obj, Target):
        raise TypeError(f"expected a Target, got {obj!r}")
    if obj.name != name:  # --target takes the entry point's name: `graphprune targets` lists that one
        import dataclasses

        obj = dataclasses.replace(obj, name=name)
    if name in ("x86",) or (name in TABLE and TABLE[name] != obj):
        raise ValueError(f"target {name!r} is already defined")
    TABLE[name] = obj


_REGISTER = {"graphprune.passes": _register_pass, "graphprune.rules": _register_rule,
             "graphprune.importance": _register_criterion, "graphprune.targets": _register_target}


def _apply(group: str, name: str, obj) -> None:
    if isinstance(obj, types.ModuleType):
        return  # importing it was the registration
    if group == "graphprune.passes" and inspect.isclass(obj):
        return _register_pass(name, obj)
    if inspect.isfunction(obj) and not inspect.signature(obj).parameters \
            and group in ("graphprune.passes", "graphprune.rules"):
        obj()  # a registration hook
        return
    _REGISTER[group](name, obj)


def load_plugins(groups: tuple[str, ...] = GROUPS) -> list[PluginStatus]:
    """Load every graphprune entry point once; returns the status of each (also cached)."""
    import sys
    from importlib.metadata import entry_points

    scan = (tuple(groups), tuple(sys.path))
    if scan in _SCANNED:
        return list(_LOADED.values())
    _SCANNED.add(scan)
    for group in groups:
        try:
            eps = entry_points(group=group)
        except Exception as exc:  # a broken distribution's metadata must not stop the tool
            log.warning("graphprune: cannot list %s plugins: %s", group, exc)
            continue
        for ep in eps:
            key = (group, ep.name, ep.value)
            if key in _LOADED:
                continue
            status = PluginStatus(group, ep.name, ep.value, _dist_name(ep), ok=True)
            try:
                _apply(group, ep.name, ep.load())
            except Exception as exc:  # noqa: BLE001 - any plugin failure is the plugin's
                status.ok = False
                status.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                log.warning("graphprune: plugin %s = %s (%s, from %s) not loaded: %s",
                            ep.name, ep.value, group, status.dist, status.error)
            _LOADED[key] = status
    return list(_LOADED.values())
