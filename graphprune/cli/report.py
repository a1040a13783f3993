"""How the prune verb shows a run: progress lines while it runs, the before/after table
at the end (what graphprune.workflow.run_prune returned; nothing is computed here but
the figures of the written files)."""
from __future__ import annotations

import sys
from pathlib import Path

from graphprune.workflow.progress import Progress


class Printer(Progress):
    """Progress of `graphprune prune`, on stdout."""

    def oracle(self, res, shapes) -> None:
        if res.shapes is not None:
            print(f"oracle inputs: {res.shapes.describe()}")
        print(res.summary())

    def note(self, text: str) -> None:
        print(f"note: {text}")

    def rotation(self, res) -> None:
        print(f"rotation (slice-hidden): {res.summary().replace('oracle ', 'rotated input vs input: ', 1)}")

    def vocabulary(self, record: dict, res) -> None:
        print(f"vocabulary (--keep-tokens): {record['vocab_size']} -> {len(record['kept'])} tokens of input "
              f"{record['input']!r}; "
              + (res.summary().replace("oracle ", "sliced vs ids mapped: ", 1) if res is not None else "not checked"))

    def repair(self, r: dict) -> None:
        from graphprune.workflow.verdicts import repair_line

        print(repair_line(r))

    def sparsity(self, res: dict) -> None:
        from graphprune.cli.sparsity_flags import summary_lines

        for line in summary_lines(res):
            print(line)

    def candidate(self, k: int, n: int, row: dict, eta: float) -> None:
        print(self.candidate_line(k, n, row, eta), flush=True)

    def fidelity(self, fid: dict, max_drop: float) -> None:
        from graphprune.report.build import fidelity_basis

        inside = fid.get("in_sample")
        print(f"fidelity {fidelity_basis(fid)}: mean cosine {fid['mean_cosine']:.4f} (drop {fid['drop']:.4f}, "
              f"max {max_drop:g}), min {fid['min_cosine']:.4f} over {fid['samples']} outputs"
              + (f"; on all calibration data after the final repair {inside['mean_cosine']:.4f} (in-sample, not judged)"
                 if isinstance(inside, dict) else ""))


def _nonzero(model) -> int:
    """Parameters that are not exact zeros of the sparsified tensors."""
    from graphprune.analysis.cost import model_cost
    from graphprune.sparsity_meta import zero_count

    return int(model_cost(model).params - zero_count(model)[0])


def _ratio_row(name: str, b, a, fmt=None) -> list:
    from graphprune.cli.common import human

    fmt = fmt or human
    return [name, fmt(b), fmt(a), f"{a / max(b, 1):.3f}"]


def measure_latency(outcome, bench: bool, round_to: int = 1) -> dict:
    """The input and the written model in ONNX Runtime at the run's shapes (the figures' and
    the oracle's), as workflow.verdicts.latency_verdict, with the widths hint
    (verdicts.widths_line) when it applies; {} without --bench."""
    if not bench or outcome.out is None or outcome.source is None:
        return {}
    from graphprune.backends.targets import host_target
    from graphprune.cli.common import ort_latency_ms
    from graphprune.workflow.verdicts import latency_verdict, widths_line

    t0 = ort_latency_ms(str(outcome.source), shapes=outcome.shapes)
    t1 = ort_latency_ms(str(outcome.out), shapes=outcome.shapes)
    verdict = latency_verdict(t0, t1, "pruned")
    if outcome.nothing_pruned:  # the same model twice: any difference is noise
        return {**verdict, "not_faster": False,
                "line": "not compared: nothing was pruned (the two timings are of the same model)"}
    if outcome.after is not None and outcome.after.macs:
        hint = widths_line(verdict["speedup"], outcome.before.macs / outcome.after.macs, round_to,
                           host_target().simd_lanes)
        if hint:
            verdict["widths_line"] = hint
    return verdict


def summary_rows(outcome, latency: dict) -> list[list]:
    from graphprune.cli.common import human
    from graphprune.workflow.files import model_size

    before, after = outcome.before, outcome.after
    rows = [_ratio_row("params", before.params, after.params), _ratio_row("MACs", before.macs, after.macs)]
    if outcome.sparsity:
        rows.append(_ratio_row("nonzero params", before.params, _nonzero(outcome.model)))
    rows.append(_ratio_row("file size", outcome.before_bytes, model_size(outcome.out), lambda n: human(n) + "B"))
    if latency:
        t0, t1 = latency["dense_ort_ms"], latency["deployed_ms"]
        rows.append(["ORT latency (median, ms)", f"{t0:.3f}", f"{t1:.3f}", f"{t1 / max(t0, 1e-9):.3f}"])
    return rows


def write_prune_report(args, opts, outcome, latency: dict) -> Path:
    """<out>.report.{json,md,html} beside the model (paths checked before the run by
    graphprune.report.writer.check_report_paths); returns the .html path."""
    from graphprune.report.build import prune_report
    from graphprune.report.writer import write_beside
    from graphprune.workflow.options import max_drop_of
    from graphprune.workflow.verdicts import accuracy_line

    plan = outcome.plan
    accuracy = accuracy_line(outcome.calibration, outcome.fidelity, bool(plan.removes or outcome.sparsity))
    rep = prune_report(outcome, argv=["graphprune"] + sys.argv[1:], latency=latency, accuracy=accuracy,
                       round_to=opts.round_to, max_drop=max_drop_of(opts), input_shapes=opts.input_shapes,
                       profile=not getattr(args, "no_bench", False))  # --no-bench: no timing at all
    args.prune_report = rep
    return write_beside(outcome.out, rep)


def _experts_text(records: list[dict]) -> str:
    """'8 -> 6 in 2 MoE layer(s)' (prune-experts)."""
    counts = sorted({f"{r['experts']} -> {r['experts'] - len(r['removed'])}" for r in records})
    return f"{', '.join(counts)} in {len(records)} MoE layer(s)"


def widths_off_multiple(model, plan, round_to: int) -> list[tuple[str, int]]:
    """(tensor, kept width) of the sliced weights of `model` whose width along the sliced axis
    is not a multiple of `round_to`: the allocation leaves a weight narrower than round_to
    unconstrained (allocation.uniform.rounded_removal), and the summary said 'multiples of 16'
    of widths 9 and 7."""
    if model is None:
        return []
    from graphprune.ir.constants import values_by_name

    values = values_by_name(model)  # Constant nodes' too: PP-OCR's weights are those
    out = []
    for t in plan.tensors:
        v = values.get(t["name"])
        if v is None or v.shape is None or len(v.shape) < 2 or not 0 <= t["axis"] < len(v.shape):
            continue  # weights only (their biases and norm parameters have the same widths)
        width = v.shape[t["axis"]]
        if isinstance(width, int) and width % round_to and (t["name"], width) not in out:
            out.append((t["name"], width))
    return out


def _hidden_lines(allocation: dict, plan) -> list[str]:
    """What the summary says of the hidden size: why --prune-hidden found none, or that it
    was kept whole — not after slice-hidden narrowed it (the first line says so; "kept
    whole" beside "hidden size 32 -> 24" contradicted it)."""
    out = []
    if allocation.get("hidden_none"):
        out.append(f"--prune-hidden: no hidden size to prune in this model: {allocation['hidden_none']}")
    hidden = allocation.get("hidden_kept")
    if hidden and not plan.hidden:
        out.append(f"hidden size: kept whole ({len(hidden)} group(s) that a LayerNorm/RMSNorm or a sum over channels "
                   f"reads whole, e.g. {hidden[0]}); --prune-hidden prunes it too, exactly (statistics kept over the "
                   "original width)")
    return out


def print_prune_summary(outcome, *, latency: dict) -> None:
    from graphprune.cli import allocation_flags as alloc_cli
    from graphprune.cli.common import basis_lines, table

    for extra in alloc_cli.write_extras(outcome.state.ctx, outcome.plan_out):
        print(f"wrote {extra}")
    rows = summary_rows(outcome, latency)
    plan = outcome.plan
    print(f"pruned {len(plan.groups)} groups, sliced {len(plan.tensors)} tensors"
          + (f", removed {len(plan.blocks)} residual block{'s' if len(plan.blocks) > 1 else ''} (ending at "
             f"{', '.join(str(b.get('add')) for b in plan.blocks[:5])}{' ...' if len(plan.blocks) > 5 else ''})"
             if plan.blocks else "")
          + (f", hidden size {plan.hidden['width'][0]} -> {plan.hidden['width'][1]} (slice-hidden)"
             if plan.hidden else "")
          + (f", vocabulary {plan.vocab['vocab_size']} -> {len(plan.vocab['kept'])} tokens" if plan.vocab else "")
          + (f", experts {_experts_text(plan.experts)}" if plan.experts else ""))
    print(table(rows, ["", "before", "after", "ratio"]))
    round_to = int((plan.settings or {}).get("round_to") or 1)
    if round_to > 1 and plan.groups:
        from graphprune.backends.targets import host_target

        lanes = host_target().simd_lanes
        odd = widths_off_multiple(outcome.model, plan, round_to)
        print(f"round-to: widths kept multiples of {round_to}"
              + (f" (auto: this CPU's {lanes} float32 lanes; --round-to 1 allows any width)" if round_to == lanes
                 else "")
              + (f"; except {len(odd)} weight(s) narrower than that, cut freely: "
                 f"{', '.join(f'{n} {w}' for n, w in odd[:4])}{' ...' if len(odd) > 4 else ''}" if odd else ""))
    for line in _hidden_lines(outcome.state.ctx.results.get("allocation") or {}, plan):
        print(line)
    for line in basis_lines(outcome.shapes.measured_at() if outcome.shapes is not None else None,
                            outcome.before.uncounted):
        print(line)
    if outcome.budget:
        print(outcome.budget["line"])
    if outcome.nothing_pruned:
        print(outcome.nothing_pruned)
    for line in (latency.get("line"), latency.get("widths_line")):
        if line:
            print(line if line.startswith("latency: ") or line.startswith("widths: ") else "latency: " + line)
    print(f"wrote {outcome.out} and {outcome.plan_out}"
          + (f", and the token id map {outcome.vocab_out} (the model reads new ids)" if outcome.vocab_out else ""))


def check_inspect_report(args) -> None:
    """inspect --report PATH: PATH.report.{json,md,html} land on no input and on no file
    graphprune did not write (checked before any work)."""
    if getattr(args, "report", None):
        from graphprune.cli.paths import cli_paths
        from graphprune.report.writer import check_report_paths

        check_report_paths(Path(args.report), cli_paths(args)[0])


def write_inspect_report(args, model, dg) -> None:
    if not getattr(args, "report", None):
        return
    from graphprune.report.build import inspect_report
    from graphprune.report.writer import write_beside

    rep = inspect_report(model, dg, args.shapes, path=args.model, argv=["graphprune"] + sys.argv[1:])
    print(f"report: {write_beside(Path(args.report), rep)}", file=sys.stderr if getattr(args, "json", False) else None)


def check_report_option(args) -> None:
    """--report PATH (inspect, check): PATH.report.{json,md,html} land on no input and on no
    file graphprune did not write (checked before any work)."""
    check_inspect_report(args)


def write_check_report(args, res) -> None:
    """check --report PATH: the verdict (also a failing one) as a report."""
    if not getattr(args, "report", None):
        return
    from graphprune.cli.common import parse_shapes
    from graphprune.report.build import check_report
    from graphprune.report.writer import write_beside

    rep = check_report(args.original, args.pruned, args.plan, res, argv=["graphprune"] + sys.argv[1:],
                       input_shapes=parse_shapes(args.input_shape))
    print(f"report: {write_beside(Path(args.report), rep)}", file=sys.stderr if getattr(args, "json", False) else None)
