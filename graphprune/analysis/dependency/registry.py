"""The table of per-op channel rules, keyed by (domain, op_type, opset range).

A rule is a function `rule(node, ctx)` that tells the dependency analysis how the op
couples the channel slots of its inputs and outputs (see `RuleContext`). Registering two
rules whose opset ranges overlap for the same op is an error, so the table stays a table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

RuleFn = Callable[["object", "object"], None]


@dataclass(frozen=True)
class RuleEntry:
    domain: str
    op_type: str
    since: int
    until: int | None  # inclusive; None = open-ended
    fn: RuleFn
    family: str

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)


class RuleRegistry:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], list[RuleEntry]] = {}

    def add(self, domain: str, op_type: str, fn: RuleFn, *, since: int = 1,
            until: int | None = None, family: str = "") -> None:
        domain = "" if domain == "ai.onnx" else domain
        entries = self._entries.setdefault((domain, op_type), [])
        for e in entries:
            lo, hi = max(e.since, since), min(e.until or 10**9, until or 10**9)
            if lo <= hi:
                raise ValueError(
                    f"duplicate channel rule for {domain or 'ai.onnx'}::{op_type} "
                    f"(opsets {since}..{until or '*'} overlap {e.since}..{e.until or '*'})"
                )
        entries.append(RuleEntry(domain, op_type, since, until, fn, family or fn.__module__.rsplit(".", 1)[-1]))

    def remove(self, domain: str, op_type: str) -> None:
        self._entries.pop(("" if domain == "ai.onnx" else domain, op_type), None)

    def lookup(self, domain: str, op_type: str, opset: int) -> RuleEntry | None:
        domain = "" if domain == "ai.onnx" else domain
        for e in self._entries.get((domain, op_type), ()):
            if e.covers(opset):
                return e
        return None

    def entries(self) -> list[RuleEntry]:
        return sorted((e for es in self._entries.values() for e in es),
                      key=lambda e: (e.family, e.domain, e.op_type, e.since))


RULES = RuleRegistry()


def rule(op_types: str | Iterable[str], *, domain: str = "", since: int = 1,
         until: int | None = None, registry: RuleRegistry | None = None):
    """Decorator: register `fn` as the channel rule for the given op type(s)."""
    names = [op_types] if isinstance(op_types, str) else list(op_types)

    def deco(fn: RuleFn) -> RuleFn:
        for name in names:
            (registry or RULES).add(domain, name, fn, since=since, until=until)
        return fn

    return deco
