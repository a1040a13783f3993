"""graphprune passes [--rules]"""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("--rules", action="store_true", help="list the per-op channel rules (coverage)")


def options_line(cls) -> str:
    """`key: type = default, ...` of a pass's declared options."""
    from graphprune.passes._infra import _REQUIRED

    specs, open_ = cls.option_specs()
    items = [f"{s.name}: {s.type_name}" + ("" if s.default is _REQUIRED else f" = {_default(s.default)}")
             for s in specs.values()]
    if open_:
        items.append("any other key (not checked)")
    return ", ".join(items) or "none"


def _default(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "none" if v is None else str(v)


def _emit_json(args) -> int:
    from graphprune.cli.results import emit, schema
    from graphprune.passes import PASSES

    data = {"schema": schema("passes"),
            "passes": [{"name": n, "description": PASSES[n].description, "options": options_line(PASSES[n])}
                       for n in sorted(PASSES)]}
    if args.rules:
        from graphprune.analysis.dependency import RULES

        data["rules"] = [{"family": e.family, "domain": e.domain or "ai.onnx", "op": e.op_type, "since": e.since,
                          "until": e.until} for e in RULES.entries()]
    return emit(args, data)


def run(args) -> int:
    from graphprune.cli.common import table
    from graphprune.passes import PASSES

    if args.json:
        return _emit_json(args)
    print(table([[n, PASSES[n].description] for n in sorted(PASSES)], ["pass", "what it does"], text=(1,)))
    print()
    print("options (pipeline syntax: name{key=value,list=[a,b]}; unknown keys and wrong types are errors):")
    for n in sorted(PASSES):
        print(f"  {n}: {options_line(PASSES[n])}")
    if args.rules:
        from graphprune.analysis.dependency import RULES

        rows = [[e.family, e.domain or "ai.onnx", e.op_type, f"{e.since}..{e.until or ''}"] for e in RULES.entries()]
        print()
        print(table(rows, ["family", "domain", "op", "opsets"], text=(1, 2, 3)))
        print(f"{len(rows)} rules; ops without a rule freeze the channels they touch")
    return 0
