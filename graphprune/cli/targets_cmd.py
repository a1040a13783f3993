"""graphprune targets"""
from __future__ import annotations

import json


def add_arguments(p):
    pass  # --json is a global option


def run(args) -> int:
    from graphprune.backends.targets import all_targets
    from graphprune.cli.common import table

    ts = all_targets()
    if args.json:
        from graphprune.cli.results import emit, schema

        return emit(args, {"schema": schema("targets"), "targets": [t.to_json() for t in ts]})
    rows = [[t.name, "yes" if t.host else "no", t.simd_lanes, t.cross_compiler or "", ",".join(t.ort_providers),
             json.dumps(t.tvm)] for t in ts]
    print(table(rows, ["target", "runs here", "round_to", "cross-compiler", "ORT providers", "TVM target"]))
    print("\nAny TVM target JSON is accepted too: --target '{\"kind\": \"llvm\", \"mtriple\": \"aarch64-linux-gnu\"}'")
    return 0
