"""Passes and the pass manager.

A pass has a kebab-case registered name (also its CLI name and its token in a textual
pipeline such as ``prune-channels{ratio=0.3,round_to=8},dce``), rewrites the model in
place and says whether it changed anything. The manager caches analyses, drops them
when a pass changes the model (unless the pass preserves them), and verifies the IR
after every pass, naming the pass on failure.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import onnx_ir as ir

from graphprune.errors import PassError, UsageError, VerificationError
from graphprune.ir.verifier import verify_model

log = logging.getLogger(__name__)


@dataclass
class PassContext:
    """State shared along a pipeline: analyses cache and results passes leave behind."""

    analyses: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def analysis(self, name: str, model: ir.Model, compute: Callable[[], Any]) -> Any:
        if name not in self.analyses:
            self.analyses[name] = compute()
        return self.analyses[name]


class Pass:
    """Base class. Subclasses set `name` and implement `run`."""

    name: ClassVar[str] = ""
    preserves: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, **options):
        self.options = options

    def run(self, model: ir.Model, ctx: PassContext) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}{{{opts}}}" if opts else self.name


PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", cls.name or ""):
        raise ValueError(f"pass name {cls.name!r} must be kebab-case")
    if cls.name in PASSES and PASSES[cls.name] is not cls:
        raise ValueError(f"a pass named {cls.name!r} is already registered")
    PASSES[cls.name] = cls
    return cls


def _parse_value(text: str):
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise UsageError(f"unbalanced braces in pipeline {text!r}")
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


class PassManager:
    def __init__(self, passes: list[Pass], *, verify: bool = True):
        self.passes = passes
        self.verify = verify
        self.timings: list[tuple[str, float, bool]] = []

    @classmethod
    def parse(cls, pipeline: str, **kw) -> "PassManager":
        from graphprune import passes as _  # noqa: F401  (registers the built-in passes)

        out = []
        for token in _split_top(pipeline, ","):
            m = re.fullmatch(r"([a-z0-9-]+)(?:\{(.*)\})?", token, re.S)
            if not m:
                raise UsageError(f"cannot parse pipeline element {token!r}")
            name, body = m.group(1), m.group(2)
            if name not in PASSES:
                raise UsageError(f"unknown pass {name!r}", hint=f"known passes: {', '.join(sorted(PASSES))}")
            opts = {}
            for kv in _split_top(body or "", ","):
                if "=" not in kv:
                    raise UsageError(f"option {kv!r} of pass {name} needs key=value")
                k, v = kv.split("=", 1)
                v = v.strip()
                if v.startswith("[") and v.endswith("]"):
                    opts[k.strip()] = [_parse_value(x) for x in _split_top(v[1:-1], ",")]
                else:
                    opts[k.strip()] = _parse_value(v)
            out.append(PASSES[name](**opts))
        return cls(out, **kw)

    def __str__(self) -> str:
        return ",".join(repr(p) for p in self.passes)

    def run(self, model: ir.Model, ctx: PassContext | None = None) -> PassContext:
        ctx = ctx or PassContext()
        for p in self.passes:
            t0 = time.perf_counter()
            try:
                changed = bool(p.run(model, ctx))
            except (PassError, UsageError, VerificationError):
                raise
            except Exception as exc:
                from graphprune.errors import GraphpruneError

                if isinstance(exc, GraphpruneError):
                    raise
                raise PassError(f"pass {p.name} failed: {type(exc).__name__}: {exc}") from exc
            self.timings.append((p.name, time.perf_counter() - t0, changed))
            if changed:
                ctx.analyses = {k: v for k, v in ctx.analyses.items() if k in p.preserves}
                if self.verify:
                    try:
                        verify_model(model, where=f"after pass {p.name} (pipeline {self})")
                    except VerificationError as exc:
                        raise VerificationError(str(exc), node=exc.node) from exc
            log.debug("pass %s: %s in %.3fs", p.name, "changed" if changed else "no change",
                     time.perf_counter() - t0)
        return ctx
