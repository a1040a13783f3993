"""graphprune passes [--rules]"""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("--rules", action="store_true", help="list the per-op channel rules (coverage)")


def run(args) -> int:
    from graphprune.cli.common import table
    from graphprune.passes import PASSES

    print(table([[n, PASSES[n].description] for n in sorted(PASSES)], ["pass", "what it does"]))
    if args.rules:
        from graphprune.analysis.dependency import RULES

        rows = [[e.family, e.domain or "ai.onnx", e.op_type, f"{e.since}..{e.until or ''}"] for e in RULES.entries()]
        print()
        print(table(rows, ["family", "domain", "op", "opsets"]))
        print(f"{len(rows)} rules; ops without a rule freeze the channels they touch")
    return 0
