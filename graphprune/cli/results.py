"""What `--json` prints: one JSON document per run, with a top-level "schema" key.

Each verb builds its result with one function here (`compile_result`, `check_result`, ...)
and hands it to `emit`; graphprune.cli.main prints it on stdout after the run, and nothing
else goes to stdout. `prune` emits its report (graphprune.report.build.prune_report) and
`compile_result` is the report.json the run wrote (schema `graphprune.report/N`); the others
are `graphprune.<verb>/1` until the versioned report of graphprune.report covers them (swap
the function, the verbs do not change).
A run that fails prints its result (when it had one, e.g. check's verdict) or a
`graphprune.status/1` document, with "exit_code", "error" and "hint" added.
"""
from __future__ import annotations

import json
import math
from pathlib import Path


def schema(verb: str) -> str:
    return f"graphprune.{verb}/1"


def emit(args, data: dict) -> int:
    """Keep `data` as the run's --json result (printed by main); returns exit code 0."""
    args.json_result = data
    return 0


def dump(args, code: int) -> str:
    """The run's JSON document: its result, or a status document; on failure with the exit
    code and the error."""
    data = getattr(args, "json_result", None)
    if data is None:
        data = {"schema": schema("status"), "verb": args.verb}
    if code:
        data = {**data, "exit_code": code, **(getattr(args, "error", None) or {"error": None, "hint": None})}
    return json.dumps(_finite(data), indent=1, default=str) + "\n"


def _finite(x):
    """inf/nan (an output of another shape, say) are not JSON: null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def oracle_result(res) -> dict | None:
    """An OracleResult (graphprune.runtime.oracle) as JSON."""
    if res is None:
        return None
    return {"ok": bool(res.ok) and not res.refused and not res.unpaired, "summary": res.summary(), "runs": res.runs,
            "worst_relative_error": res.worst_relative, "refused": res.refused, "unpaired": res.unpaired,
            "input_shapes": res.shapes.to_json() if res.shapes is not None else None,
            "outputs": [{"name": d.name, "max_abs_err": d.max_abs_err, "scale": d.scale, "ok": d.ok,
                         "judged_on": d.judged_on, "part": d.part} for d in res.diffs]}


def compile_result(rep: dict) -> dict:
    """What `graphprune compile` wrote as report.json (schema graphprune.report/N), with the
    output folder."""
    out_dir = Path(rep["out_dir"])
    data = json.loads((out_dir / "report.json").read_text())
    return {**data, "verb": "compile", "out_dir": str(out_dir)}


def check_result(args, res) -> dict:
    """`graphprune check`'s verdict."""
    return {"schema": schema("check"), "verb": "check", "original": args.original, "pruned": args.pruned,
            "plan": args.plan, "input_shapes": res.shapes.to_json() if res.shapes is not None else None,
            "oracle": oracle_result(res)}
