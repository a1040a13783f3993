"""argparse `type=` validators shared by every verb (and by config files, whose values
go through the same `type`): numbers in their valid range, regexes that compile.

A validator accepts the command line's text and a config file's value (int, float or
str) alike, and raises argparse.ArgumentTypeError with the reason; argparse turns that
into exit code 2 with one line (see cli.main)."""
from __future__ import annotations

import math
import re
from argparse import ArgumentTypeError


def _number(value, kind: type):
    if isinstance(value, bool):
        raise ArgumentTypeError(f"{value!r} is not a number")
    try:
        if kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip())
        x = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{value!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(x):
        raise ArgumentTypeError(f"{value!r} is not a finite number")
    return x


def int_at_least(lo: int):
    def check(value) -> int:
        i = _number(value, int)
        if i < lo:
            raise ArgumentTypeError(f"must be >= {lo}, got {i}")
        return i

    check.__name__ = f"integer >= {lo}"
    return check


def float_in(lo: float, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = True):
    """A finite float in the interval; `hi=None` is unbounded above."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    where = f">= {lo:g}" if hi is None and not lo_open else f"> {lo:g}" if hi is None else \
        f"in {left}{lo:g}, {hi:g}{right}"

    def check(value) -> float:
        x = _number(value, float)
        bad = (x <= lo if lo_open else x < lo) or (hi is not None and (x >= hi if hi_open else x > hi))
        if bad:
            raise ArgumentTypeError(f"must be {where}, got {x:g}")
        return x

    check.__name__ = f"number {where}"
    return check


def regex(value) -> str:
    try:
        re.compile(value)
    except (re.error, TypeError) as exc:
        raise ArgumentTypeError(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


def layer_ratio(value) -> str:
    """REGEX=F with F a ratio in [0, 1)."""
    pat, sep, r = str(value).rpartition("=")
    if not sep or not pat:
        raise ArgumentTypeError(f"{value!r}: expected REGEX=RATIO")
    regex(pat)
    RATIO(r)
    return value


RATIO = float_in(0.0, 1.0)  # a fraction to remove: [0, 1)
KEEP_FRACTION = float_in(0.0, 1.0, lo_open=True, hi_open=False)  # a fraction to keep: (0, 1]
FRACTION = float_in(0.0, 1.0, hi_open=False)  # [0, 1]
NONNEG = float_in(0.0)  # finite, >= 0
POSITIVE = float_in(0.0, lo_open=True)  # finite, > 0
COUNT = int_at_least(0)
POSITIVE_INT = int_at_least(1)
SEED = int_at_least(0)  # numpy's generators take non-negative seeds


def round_to(value):
    """--round-to: an integer >= 1, or auto (the target's float32 SIMD lanes)."""
    return "auto" if str(value).strip().lower() == "auto" else POSITIVE_INT(value)
