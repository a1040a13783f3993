"""The content of a report (schema graphprune.report/1, docs/report-schema.md), built from
what a run already has: the prune outcome (shapes, costs, plan, oracle, allocation,
fidelity, search), the input model, and the verb's own figures. Nothing here decides or
measures anything the run did not, except ORT's per-node profile (graphprune.report.profile).

Sections shared by every verb are built by `sections`; `prune_report`, `check_report` and
`inspect_report` add their verb's own; compile adds its own in graphprune.workflow.compile.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path


def op_counts(model) -> dict[str, int]:
    return dict(Counter((n.domain + "::" if n.domain else "") + n.op_type for n in model.graph).most_common())


def op_table(before, after) -> list[dict]:
    """One row per op type of either model: count before and after."""
    b, a = op_counts(before), op_counts(after) if after is not None else {}
    return [{"op": op, "before": b.get(op, 0), "after": a.get(op, 0)} for op in list(b) + [k for k in a if k not in b]]


def sensitivity(allocation: dict | None) -> dict[str, list[list[float]]]:
    """Per group: [[ratio removed, output error], ...] (allocation driver's sweeps), or {}."""
    curves = (allocation or {}).get("sensitivity") or {}
    return {name: [[float(r), float(e)] for r, e in zip(c.get("ratios", []), c.get("error", []), strict=False)]
            for name, c in curves.items()}


def search_section(search) -> dict | None:
    """The candidate search (outcome.search, when one ran): candidates and the chosen one."""
    if not search:
        return None
    if not isinstance(search, dict):
        search = getattr(search, "__dict__", {"candidates": []})
    cands = []
    for c in search.get("candidates") or []:
        c = dict(c) if isinstance(c, dict) else dict(getattr(c, "__dict__", {}))
        cands.append(c)
    chosen = search.get("chosen")
    if isinstance(chosen, dict):
        chosen = chosen.get("name")
    return {**{k: v for k, v in search.items() if k not in ("candidates", "chosen")},
            "candidates": cands, "chosen": chosen}


def add_layer_latency(layers: list[dict], profile: dict) -> list[dict]:
    """The per-node profile on the layer rows (latency_ms_before / _after, None when the
    node has no kernel of its own)."""
    b, a = profile.get("before") or {}, profile.get("after") or {}
    for r in layers:
        r["latency_ms_before"] = b.get(r["name"])
        r["latency_ms_after"] = a.get(r["name"]) if not r.get("removed") else None
    return layers


def group_rows(dg, plan, round_to: int) -> list[dict]:
    """Groups the plan changes, widths from graphprune.report.widths (what dry-run and
    inspect show), with why a width is not a multiple of round_to."""
    from graphprune.report.widths import plan_widths

    rows = []
    for w in plan_widths(dg, plan):
        row = w.to_json()
        why = w.why_not_multiple(round_to)
        if why:
            row["not_multiple"] = why
        rows.append(row)
    return rows


def oracle_section(res, shapes) -> dict | None:
    if res is None:
        return None
    return {"ok": bool(res.ok), "summary": res.summary(), "inputs": shapes.describe() if shapes is not None else None,
            "runs": getattr(res, "runs", None)}


def fidelity_basis(fid: dict) -> str:
    """Where an output fidelity figure was measured: on held-back calibration samples that
    no repair was fit to (`held_back`: how they were chosen), or on the calibration data —
    said to be in-sample when a repair was fit to it (too few samples to hold any back)."""
    logits = f" ({', '.join(fid['on_logits'])}: softmax scores compared on their logits, centred)" \
        if fid.get("on_logits") else ""
    if fid.get("held_back"):
        return (f"on held-back calibration samples ({fid['held_back']}; the same configuration repaired without "
                f"them){logits}")
    if fid.get("in_sample") is True:
        return f"on calibration data (in-sample: the repair was fit to it; too few samples to hold any back){logits}"
    return f"on calibration data{logits}"


def quality_line(fidelity: dict | None, max_drop, accuracy: str | None) -> str | None:
    if fidelity:
        return (f"quality: mean output cosine {fidelity['mean_cosine']:.4f} {fidelity_basis(fidelity)} (drop "
                f"{fidelity['drop']:.4f}" + (f", max {max_drop:g}" if max_drop is not None else "") + ")")
    return accuracy


def hidden_section(plan, rotation_oracle) -> dict:
    """{"hidden": ...} when slice-hidden rotated and sliced the hidden size, else {}."""
    if not plan.hidden:
        return {}
    return {"hidden": {"width": plan.hidden.get("width"), "kept_energy": plan.hidden.get("kept_energy"),
                       "rotation_oracle": rotation_oracle.summary() if rotation_oracle is not None else None}}


def vocab_section(plan, vocab_oracle) -> dict:
    """{"vocab": ...} when slice-vocab kept a list of token ids, else {}."""
    if not plan.vocab:
        return {}
    return {"vocab": {"input": plan.vocab["input"], "vocab_size": plan.vocab.get("vocab_size"),
                      "kept": len(plan.vocab["kept"]),
                      "oracle": vocab_oracle.summary() if vocab_oracle is not None else None}}


def sections(before_model, outcome, *, accuracy: str | None, round_to: int = 1, max_drop=None) -> dict:
    """What every verb's report shows of a prune outcome: shapes, op counts, per-layer
    widths and MACs, group widths, sensitivity curves, search, oracle, quality.
    `accuracy`: workflow.verdicts.accuracy_line of the run (the caller's: the report
    package does not import the workflow, which imports it). The width multiple is the
    one the plan records (round_to auto may have stepped finer), else `round_to`."""
    from graphprune.report.layers import compare_layers

    round_to = int((outcome.plan.settings or {}).get("round_to") or round_to)
    shapes = outcome.shapes
    at = shapes.shapes if shapes is not None else None
    plan = outcome.plan
    out = {
        "input_shapes": shapes.to_json() if shapes is not None else None,
        "ops": op_table(before_model, outcome.model),
        "layers": compare_layers(before_model, outcome.model, at,
                                 costs=(getattr(outcome, "before", None), getattr(outcome, "after", None))),
        "plan": {"groups": len(plan.groups), "tensors": len(plan.tensors), "blocks": len(plan.blocks),
                 **hidden_section(plan, getattr(outcome, "rotation_oracle", None)),
                 **vocab_section(plan, getattr(outcome, "vocab_oracle", None)),
                 **({"experts": [{"moe": e["moe"], "experts": e["experts"], "kept": e["experts"] - len(e["removed"]),
                                  "removed": e["removed"]} for e in plan.experts]} if plan.experts else {})},
        "groups": group_rows(_analysis(before_model), plan, round_to),
        "sensitivity": sensitivity(outcome.state.allocation),
        "search": search_section(getattr(outcome, "search", None)),
        "budget": getattr(outcome, "budget", None),
        "oracle": oracle_section(outcome.oracle, shapes),
        "fidelity": outcome.fidelity,
        "accuracy": accuracy,
        "quality": quality_line(outcome.fidelity, max_drop, accuracy),
        "macs_uncounted": list(getattr(outcome.before, "uncounted", None) or []),
    }
    return out


def _analysis(model):
    from graphprune.analysis.dependency import DependencyGraph

    return DependencyGraph(model)


def kernel_wins(results: dict) -> dict | None:
    """compile with TVM sparse kernels: how many chosen kernels beat ONNX Runtime's dense kernel
    and TVM's own, with the report's summary line (graphprune.report.kernels); None without them."""
    from graphprune.report.kernels import kernel_wins as wins

    rows = ((results or {}).get("tvm") or {}).get("sparse_kernels") or []
    return wins(rows) if rows else None


def red_lines(report: dict, max_drop=None) -> list[str]:
    """Lines in red: the result is slower or worse than asked."""
    from graphprune.analysis.cost import uncounted_line

    red = [line] if (line := uncounted_line(report.get("macs_uncounted"))) else []
    budget = report.get("budget")
    if budget and not budget["met"]:
        red.append(budget["line"])
    lat = report.get("latency") or {}
    if lat.get("not_faster"):
        red.append(lat["line"])
    fid = report.get("fidelity")
    if fid and max_drop is not None and fid.get("drop", 0) > max_drop:
        red.append(f"output fidelity drop {fid['drop']:.4f} exceeds --max-drop {max_drop:g}")
    return red


def prune_report(outcome, *, argv: list[str], latency: dict, accuracy: str | None, profile: bool = True,
                 round_to: int = 1, max_drop=None, input_shapes: dict | None = None) -> dict:
    """The report of `graphprune prune` (written beside the model by writer.write_beside).
    `latency`: workflow.verdicts.latency_verdict of the input and the written model in
    ONNX Runtime at the run's shapes ({} when not measured)."""
    from graphprune.frontends.onnx import load_onnx
    from graphprune.plan import file_sha256
    from graphprune.report.profile import profile_pair
    from graphprune.report.writer import REPORT_SCHEMA, environment

    src = Path(outcome.source)
    before_model = load_onnx(src, input_shapes=input_shapes)  # as the run loaded it
    rep = {"schema": REPORT_SCHEMA, "verb": "prune", "command": argv, "environment": environment(),
           "input": {"path": str(src), "sha256": file_sha256(src)},
           "output": {"model": str(outcome.out), "plan": str(outcome.plan_out),
                      **({"vocab": str(outcome.vocab_out)} if getattr(outcome, "vocab_out", None) else {})}}
    rep.update(sections(before_model, outcome, accuracy=accuracy, round_to=round_to, max_drop=max_drop))
    lat = latency
    rep["before"] = {"params": outcome.before.params, "macs": outcome.before.macs, "bytes": int(outcome.before_nbytes),
                     "latency_ms": lat.get("dense_ort_ms")}
    rep["after"] = {"params": outcome.after.params, "macs": outcome.after.macs, "bytes": _nbytes(outcome.model),
                    "latency_ms": lat.get("deployed_ms")}
    if outcome.fidelity:
        rep["before"]["fidelity"], rep["after"]["fidelity"] = 1.0, outcome.fidelity["mean_cosine"]
    rep["latency"] = lat
    rep["profile"] = {}  # not measured: --no-bench, or nothing written
    if profile and outcome.out is not None:
        rep["profile"] = profile_pair(src, outcome.out, outcome.shapes)
        add_layer_latency(rep["layers"], rep["profile"])
    if outcome.sparsity:
        rep["sparsity"] = {k: round(r["sparsity"], 6) for k, r in outcome.sparsity["tensors"].items()}
    rep["checks"] = {"oracle": rep["oracle"]} if rep.get("oracle") else {}
    rep["red"] = red_lines(rep, max_drop)
    return rep


def _nbytes(model) -> int:
    from graphprune.ir.serialize import model_nbytes

    return int(model_nbytes(model))


def inspect_report(model, dg, shapes, *, path: str, argv: list[str]) -> dict:
    """`graphprune inspect --report`: the model as it is (after = before), its groups'
    widths (the figure inspect prints), frozen groups and MACs per layer at `shapes`."""
    from graphprune.analysis.cost import model_cost, uncounted_line
    from graphprune.plan import file_sha256
    from graphprune.report.layers import compare_layers
    from graphprune.report.widths import group_width
    from graphprune.report.writer import REPORT_SCHEMA, environment

    at = shapes.shapes if shapes is not None else None
    cost = model_cost(model, at)
    figures = {"params": cost.params, "macs": cost.macs, "bytes": _nbytes(model), "latency_ms": None}
    return {"schema": REPORT_SCHEMA, "verb": "inspect", "command": argv, "environment": environment(),
            "input": {"path": path, "sha256": file_sha256(path)},
            "input_shapes": shapes.to_json() if shapes is not None else None,
            "before": figures, "after": dict(figures), "latency": {}, "ops": op_table(model, model),
            "layers": compare_layers(model, model, at), "profile": {}, "plan": {"groups": 0, "tensors": 0, "blocks": 0},
            "groups": [{**group_width(g).to_json(), "prunable": not g.ignored, "hidden": g.normalised} for g in dg.groups],
            "frozen": [{"name": f.name, "reasons": f.reasons} for f in dg.frozen_groups],
            "sensitivity": {}, "search": None, "budget": None, "oracle": None, "checks": {}, "fidelity": None, "quality": None,
            "accuracy": None, "macs_uncounted": cost.uncounted or [],
            "red": [line] if (line := uncounted_line(cost.uncounted)) else []}


def check_report(original: str, pruned: str, plan_path: str, res, *, argv: list[str], input_shapes=None) -> dict:
    """`graphprune check --report`: the oracle's verdict on a pair, with the inputs it used,
    the pair's figures at those shapes, op counts, per-layer widths and the plan's groups."""
    from graphprune.analysis.cost import model_cost
    from graphprune.frontends.onnx import load_onnx
    from graphprune.plan import Plan, file_sha256
    from graphprune.report.layers import compare_layers
    from graphprune.report.writer import REPORT_SCHEMA, environment

    shapes = res.shapes
    at = shapes.shapes if shapes is not None else None
    before, after = load_onnx(original, input_shapes=input_shapes), load_onnx(pruned, input_shapes=input_shapes)
    cb, ca = model_cost(before, at), model_cost(after, at)
    ok = bool(res.ok) and not res.refused and not res.unpaired
    oracle = {"ok": ok, "summary": res.summary(), "inputs": shapes.describe() if shapes is not None else None,
              "runs": getattr(res, "runs", None)}
    plan = Plan.load(plan_path)
    return {"schema": REPORT_SCHEMA, "verb": "check", "command": argv, "environment": environment(),
            "input": {"path": str(original), "sha256": file_sha256(original)},
            "output": {"model": str(pruned), "plan": str(plan_path)},
            "input_shapes": shapes.to_json() if shapes is not None else None,
            "before": {"params": cb.params, "macs": cb.macs, "bytes": _nbytes(before), "latency_ms": None},
            "after": {"params": ca.params, "macs": ca.macs, "bytes": _nbytes(after), "latency_ms": None},
            "latency": {}, "ops": op_table(before, after), "layers": compare_layers(before, after, at), "profile": {},
            "plan": {"groups": len(plan.groups), "tensors": len(plan.tensors), "blocks": len(plan.blocks)},
            "groups": group_rows(_analysis(before), plan, 1), "sensitivity": {}, "search": None, "budget": None,
            "oracle": oracle, "checks": {"oracle": oracle}, "fidelity": None, "quality": None, "accuracy": None,
            "red": [] if ok else ["oracle FAIL: " + res.summary()]}
