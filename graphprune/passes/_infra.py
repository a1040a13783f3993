"""Passes and the pass manager.

A pass has a kebab-case registered name (also its CLI name and its token in a textual
pipeline such as ``prune-channels{ratio=0.3,round_to=8},dce``), rewrites the model in
place and says whether it changed anything. The manager caches analyses, drops them
when a pass changes the model (unless the pass preserves them), and verifies the IR
after every pass, naming the pass on failure.
"""
from __future__ import annotations

import functools
import inspect
import logging
import math
import re
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import onnx_ir as ir

from graphprune.errors import PassError, UsageError, VerificationError
from graphprune.ir.mutation import mark_mutated, restamp_shapes, shapes_current, stamp
from graphprune.ir.verifier import verify_model

log = logging.getLogger(__name__)


@dataclass
class _Cached:
    model: ir.Model  # held, so that the id in the key cannot be reused by another model
    stamp: tuple
    value: Any


@dataclass
class PassContext:
    """State shared along a pipeline: analyses cache and results passes leave behind.

    `analyses` maps (analysis name, id(model)) to the cached value with the model's
    stamp (graphprune.ir.mutation) when it was computed: an analysis is returned only
    for the same model object, unchanged since; the PassManager also drops the analyses
    a changing pass does not preserve."""

    analyses: dict[tuple[str, int], _Cached] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def analysis(self, name: str, model: ir.Model, compute: Callable[[], Any]) -> Any:
        key = (name, id(model))
        hit = self.analyses.get(key)
        if hit is None or hit.model is not model or hit.stamp != stamp(model):
            hit = self.analyses[key] = _Cached(model, stamp(model), compute())
        return hit.value

    def model_changed(self, model: ir.Model, preserves: tuple[str, ...] = ()) -> None:
        """`model` changed: count the mutation and drop its analyses, except `preserves`
        (still valid by the changing pass's word: restamped; "shapes": the value shapes
        shape inference gave, see ir.mutation.shapes_current)."""
        shapes = "shapes" in preserves and shapes_current(model)
        mark_mutated(model)
        if shapes:
            restamp_shapes(model)
        for key, hit in list(self.analyses.items()):
            if hit.model is not model:
                continue
            if key[0] in preserves:
                hit.stamp = stamp(model)
            else:
                del self.analyses[key]


@dataclass(frozen=True)
class OptionSpec:
    """One declared pass option: a keyword parameter of the pass's constructor."""

    name: str
    type: Any  # the annotation, resolved (e.g. float, list[str], str | None); Any when absent
    default: Any  # _REQUIRED when the parameter has no default

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


_REQUIRED = inspect.Parameter.empty
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class Pass:
    """Base class. Subclasses set `name` and implement `run`.

    Options are declared as keyword parameters of the constructor, with annotations and
    defaults (``def __init__(self, *, ratio: float = 0.3, ignore: list[str] | None = None)``).
    Such a constructor is checked whenever the pass is built, from a pipeline string or
    from Python: an unknown key or a value of the wrong type is a UsageError naming the
    valid options; pipeline text is converted to the declared types (bool, int, float,
    str, lists of them). ``self.options`` holds the options that were given (converted),
    which is what ``repr`` and the plan record.

    A pass whose constructor takes ``**options`` (including one that defines no
    constructor) declares nothing: it receives every key unchecked, with pipeline values
    guessed as before (true/false, int, float, else str; ``[a,b]`` a list)."""

    name: ClassVar[str] = ""
    preserves: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, **options):
        self.options = options

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_checks_options", False):
            return
        cls._declared_init = init

        @functools.wraps(init)
        def checked_init(self, *args, **options):
            if args:
                raise UsageError(f"pass {type(self).name or type(self).__name__}: options are keyword arguments")
            given = bind_options(type(self), options)  # a subclass checks under its own name
            init(self, **given)
            self.options = given

        checked_init._checks_options = True
        cls.__init__ = checked_init

    def resolved_options(self) -> dict:
        """The declared options' defaults, overridden by the options given."""
        specs, _ = self.option_specs()
        return {**{k: s.default for k, s in specs.items() if s.default is not _REQUIRED}, **self.options}

    @classmethod
    def option_specs(cls) -> tuple[dict[str, OptionSpec], bool]:
        """(declared options by name, whether undeclared keys are accepted unchecked)."""
        init = next((k.__dict__["_declared_init"] for k in cls.__mro__ if "_declared_init" in k.__dict__), None)
        if init is None:
            return {}, True
        sig = inspect.signature(init)
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that does not resolve: treat it as untyped
            hints = {}
        specs, open_ = {}, False
        for p in list(sig.parameters.values())[1:]:
            if p.kind is p.VAR_KEYWORD:
                open_ = True
            elif p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                specs[p.name] = OptionSpec(p.name, hints.get(p.name, Any), p.default)
        return specs, open_

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


class _Token(str):
    """Option text from a pipeline string (converted to the declared type when bound)."""


def _type_name(tp) -> str:
    if tp is Any:
        return "any"
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + \
            (" | none" if type(None) in args else "")
    if typing.get_origin(tp) in (list, tuple):
        return f"list[{_type_name(args[0]) if args else 'any'}]"
    if typing.get_origin(tp) is dict:
        return "dict"
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp):
    """`value` as type `tp`, or raise ValueError. Pipeline text is parsed; Python values
    must already have the type (ints are accepted as floats, text is parsed as numbers)."""
    if tp is Any:
        if isinstance(value, _Token):
            return _parse_value(value)
        return [_convert(x, Any) for x in value] if isinstance(value, list) else value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, args)
    if origin in (list, tuple) or tp in (list, tuple):
        inner = args[0] if args else Any
        items = list(value) if isinstance(value, (list, tuple)) else [value]  # a single value is a list of one
        return [_convert(x, inner) for x in items]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError
        return dict(value)
    if isinstance(tp, type) and tp in _SCALARS:
        return _SCALARS[tp](value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ValueError
    return value


def _convert_union(value, args: tuple):
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    # pipeline lists go to the list member; anything else tries the members in order
    if isinstance(value, list):
        members = sorted(members, key=lambda a: typing.get_origin(a) not in (list, tuple))
    for a in members:
        try:
            return _convert(value, a)
        except ValueError:
            pass
    raise ValueError


def _to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError


def _to_int(value) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError


def _to_float(value) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)) or isinstance(value, str):
        f = float(value.strip() if isinstance(value, str) else value)
        if not math.isfinite(f):
            raise ValueError
        return f
    raise ValueError


def _to_str(value) -> str:
    if isinstance(value, str):
        return str(value)
    raise ValueError


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _show(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_show(x) for x in value) + "]"
    return str(value) if isinstance(value, _Token) else repr(value)


def bind_options(cls: type[Pass], options: dict) -> dict:
    """Check `options` against the pass's declared options and convert them; returns the
    given options with their converted values (defaults are not filled in)."""
    specs, open_ = cls.option_specs()
    name = cls.name or cls.__name__
    unknown = [k for k in options if k not in specs]
    if unknown and not open_:
        valid = ", ".join(f"{s.name} ({s.type_name})" for s in specs.values()) or "none"
        raise UsageError(f"pass {name}: unknown option{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(sorted(unknown))}", hint=f"valid options of {name}: {valid}")
    missing = [s.name for s in specs.values() if s.default is _REQUIRED and s.name not in options]
    if missing:
        raise UsageError(f"pass {name}: option{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         "must be given")
    out = {}
    for k, v in options.items():
        tp = specs[k].type if k in specs else Any
        try:
            out[k] = _convert(v, tp)
        except (ValueError, TypeError):
            raise UsageError(f"pass {name}: option {k}={_show(v)} is not a valid {_type_name(tp)}") from None
    return out


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
                if k.strip() in opts:
                    raise UsageError(f"option {k.strip()} of pass {name} is given twice")
                if v.startswith("[") and v.endswith("]"):
                    opts[k.strip()] = [_Token(x) for x in _split_top(v[1:-1], ",")]
                else:
                    opts[k.strip()] = _Token(v)
            cls_ = PASSES[name]
            # a pass without declared options gets the values guessed (see Pass)
            out.append(cls_(**(opts if hasattr(cls_, "_declared_init") else
                               {k: _convert(v, Any) for k, v in opts.items()})))
        return cls(out, **kw)

    def __str__(self) -> str:
        return ",".join(repr(p) for p in self.passes)

    def _verify(self, model: ir.Model, p: Pass | None, ran: list[str]) -> None:
        """Run the IR verifier; blame `p` (None: the pipeline's input) for what it finds."""
        if p is None:
            verify_model(model, where=f"input of pipeline {str(self)!r}")
            return
        try:
            verify_model(model, where=f"pass {p.name} left an invalid IR {self._context(ran)}")
        except VerificationError as exc:
            raise PassError(str(exc), node=exc.node, violations=exc.violations, **self._blame(p, ran)) from exc

    def _context(self, ran: list[str]) -> str:
        return f"(pipeline {str(self)!r}; ran before it: {', '.join(ran) or 'nothing'})"

    def _blame(self, p: Pass, ran: list[str]) -> dict:
        return {"pass_name": p.name, "pipeline": str(self), "ran_before": tuple(ran)}

    def run(self, model: ir.Model, ctx: PassContext | None = None) -> PassContext:
        ctx = ctx or PassContext()
        if self.verify:  # a broken input is not the first pass's fault
            self._verify(model, None, [])
        ran: list[str] = []
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
                raise PassError(f"pass {p.name} failed {self._context(ran)}: {type(exc).__name__}: {exc}",
                                **self._blame(p, ran)) from exc
            self.timings.append((p.name, time.perf_counter() - t0, changed))
            if changed:
                ctx.model_changed(model, p.preserves)
            if self.verify:  # also after "no change": a pass that mutates but says it did not is caught
                self._verify(model, p, ran)
            ran.append(p.name)
            log.debug("pass %s: %s in %.3fs", p.name, "changed" if changed else "no change",
                     time.perf_counter() - t0)
        return ctx
