"""The lines that keep a summary honest (DESIGN invariant 6: a result that is slower or
less accurate than asked is said so, never shipped silently).

* accuracy: without calibration data nothing measured accuracy; the oracle only proves
  the pruned model equals the masked one.
* repair: each repair pass in one line (a data-free one, run without data, says what it
  folded and that nothing measured it).
* latency: the deployed pruned model against the input model in ONNX Runtime (what a user
  would otherwise run), side by side at the representative shape; `--min-speedup F` turns
  "not fast enough" into a failure (SlowerThanAskedError, exit 5, nothing written).
* widths: when the speed-up falls well short of the MAC reduction and the widths were not
  kept multiples of the CPU's float lanes, the one option that fixes it.
* budget: a target (--target-macs ...) against what the result keeps; a target that could
  not be met is said so (it was silent: --target-macs 0.05 kept 0.21 and exited 0).
* nothing pruned: a run that removed nothing says why, and its latency is not compared
  (an identical copy was reported "1.34x faster": timing noise).
"""
from __future__ import annotations

from graphprune.allocation.driver import FINER_TOLERANCE  # "far under a target": the same as the allocation's
from graphprune.errors import QualityGateError, SlowerThanAskedError

NO_CALIB = "accuracy: not measured (no --calib); the oracle proves only equivalence to the masked model"
NO_GATE = ("accuracy: not measured (--calib given without --max-drop); the oracle proves only equivalence to "
           "the masked model")


def repair_line(r: dict) -> str:
    """One repair pass's report as a summary line: the error on calibration data before and
    after, or (a data-free repair run without data) what it did."""
    if r.get("error_before") is None:
        return f"repair {r['pass']}: {r.get('line') or 'done'} (not measured: no calibration data)"
    if r.get("changed") is False:  # no layer it rewrites was next to a pruned one, or none it can rewrite
        return (f"repair {r['pass']}: changed no layer (output error on calibration data {r['error_before']:.4g})"
                + (f"; {r['line']}" if r.get("line") else ""))
    return (f"repair {r['pass']}: output error on calibration data {r['error_before']:.4g} -> "
            f"{r['error_after']:.4g}" + (f" ({r['reference']})" if r.get("reference") else "")
            + (" (undone: no improvement)" if r["reverted"] else "") + (f"; {r['line']}" if r.get("line") else ""))


def accuracy_line(calibration, fidelity: dict | None, changed: bool) -> str | None:
    """One line when the model changed and nothing measured its accuracy; None otherwise."""
    if not changed or fidelity is not None:
        return None
    return NO_CALIB if calibration is None else NO_GATE


def require_fidelity(fid: dict, max_drop: float | None, what: str = "output fidelity",
                     fixes: str = "prune less, repair (--repair)") -> None:
    """The quality gate (--max-drop D): fail when 1 - mean output cosine (report.build.fidelity_basis:
    on held-back samples when a repair fit the rest) exceeds D; the same gate for the pruned
    float model and for its int8 deployment (`fixes`: what would lower this drop)."""
    if max_drop is not None and fid["drop"] > max_drop:
        raise QualityGateError(f"{what} drop {fid['drop']:.4f} exceeds --max-drop {max_drop:g}",
                               hint=f"nothing was written; {fixes}, or raise --max-drop")


def latency_verdict(dense_ms: float, deployed_ms: float, chosen: str, same_settings_ms: float | None = None) -> dict:
    """The deployed model against the dense input in ONNX Runtime: speed-up and one line.
    `same_settings_ms`: the input under the deployment's own tuned session settings, when
    they differ from ONNX Runtime's defaults; the line then says how much of the speed-up
    the model itself gives and how much the settings (which the input could have had too)."""
    speedup = dense_ms / deployed_ms if deployed_ms > 0 else float("inf")
    faster = deployed_ms < dense_ms
    line = (f"{speedup:.2f}x faster than the input model in ONNX Runtime ({deployed_ms:.3f} ms {chosen} vs "
            f"{dense_ms:.3f} ms)" if faster else
            f"NOT FASTER: the pruned model ({chosen}, {deployed_ms:.3f} ms) is {1 / speedup:.2f}x the latency of "
            f"the input model in ONNX Runtime ({dense_ms:.3f} ms)")
    out = {"dense_ort_ms": dense_ms, "deployed_ms": deployed_ms, "speedup": round(speedup, 4),
           "not_faster": not faster}
    if same_settings_ms and deployed_ms > 0:
        model_x, settings_x = same_settings_ms / deployed_ms, dense_ms / same_settings_ms
        line += (f"; the input under the deployment's session settings runs {same_settings_ms:.3f} ms: "
                 f"{model_x:.2f}x from the model, {settings_x:.2f}x from the settings")
        out.update(dense_same_settings_ms=same_settings_ms, model_speedup=round(model_x, 4))
    return {**out, "line": line}


# Measured (benchmarks/bench_widths.py, 3 torchvision CNNs): widths that are multiples of the
# lanes run at 0.90-0.99 of the dense model's MACs per second; other widths at 0.3-0.8.
SLOW_WIDTHS_EFFICIENCY = 0.8


def widths_line(speedup: float, mac_reduction: float, round_to: int, lanes: int,
                whose: str = "this CPU's") -> str | None:
    """A hint when the pruned model runs fewer MACs per second than the dense one because its
    widths are not multiples of the CPU's float32 lanes (ONNX Runtime's blocked conv
    kernels fall back to slower paths for them); None when that cannot be the reason."""
    if round_to % lanes == 0 or mac_reduction < 1.05 or speedup >= SLOW_WIDTHS_EFFICIENCY * mac_reduction:
        return None
    return (f"widths: {mac_reduction:.2f}x fewer MACs gave only {speedup:.2f}x; widths were kept multiples of "
            f"{round_to}, not of {whose} {lanes} float lanes, which ONNX Runtime runs fastest: try --round-to auto")


def require_speedup(verdict: dict, min_speedup: float | None, backend: str = "auto", quantized: bool = False) -> None:
    """--min-speedup F: fail unless the speed-up is at least F (1.0: unless it is faster).
    `backend`: the deployment's; the hint does not suggest the one already used. `quantized`:
    an int8 deployment (ONNX Runtime only), which can be slower than the pruned float model."""
    if min_speedup is None:
        return
    s = verdict["speedup"]
    ok = s >= min_speedup and (min_speedup != 1.0 or not verdict["not_faster"])
    if not ok:
        other = ("drop --quantize (int8 is slower than float on some CPUs and shapes: the report's quantization "
                 "section times both)" if quantized else
                 {"tvm": "tune longer (--tune-trials), try --backend onnxruntime",
                  "onnxruntime": "try --backend tvm with --tune-trials (tuned per layer shape)"}.get(
                     backend, "tune longer (--tune-trials), try --backend onnxruntime"))
        raise SlowerThanAskedError(
            f"speed-up {s:.2f}x is below --min-speedup {min_speedup:g}: {verdict['line']}",
            hint=f"nothing was written; prune more (a larger --ratio or a smaller --round-to), {other}, "
                 "or lower --min-speedup")


def not_measured_note(target_name: str, rpc: str | None, dense_ms: float | None, pruned_ms: float | None) -> str:
    """A cross target's latency line: never blank; the host figures, labelled as such."""
    why = "no --rpc" if not rpc else "compile does not time on the --rpc device; use graphprune bench --rpc"
    note = f"not measured on {target_name} ({why})"
    if dense_ms and pruned_ms:
        return (note + f"; host estimate (ONNX Runtime on this machine): pruned {pruned_ms:.3f} ms vs input "
                f"{dense_ms:.3f} ms ({dense_ms / pruned_ms:.2f}x)")
    return note + "; host estimate: not available"


# The allocation targets (fractions of the dense model to keep) and how the result is told.
_TARGETS = {"target_macs": ("--target-macs", "MACs"), "target_params": ("--target-params", "params"),
            "target_active_params": ("--target-active-params", "active params"),
            "target_latency": ("--target-latency", "latency")}  # option -> (flag, what it counts)


def latency_on_this_cpu(budget: dict, target_name: str) -> dict:
    """--target-latency is met in ONNX Runtime on this machine's CPU: for a compile to another
    target that is an estimate of the target's latency, and the line says so (a bare "met"
    read as measured on the device)."""
    return {**budget, "host_estimate": True,
            "line": budget["line"] + f"; timed on this machine's CPU, not on {target_name}: a host estimate"}


def _why_under(allocation: dict, asked: float, kept: float, round_to: int) -> str:
    """Why a met target landed far under the ask: the SIMD lanes' steps (round_to auto), a
    fixed multiple, or uniform allocation's whole-atom steps (LLaMA with 2 KV groups and
    --round-to 1: 0.7 asked, 0.5 kept, and no word)."""
    stepped = allocation.get("round_to")
    if stepped:  # round_to auto: the lanes' steps left the target far under
        return (f"; widths in multiples of {stepped['used']}, not of the {stepped['lanes']} SIMD lanes: those "
                f"kept only {stepped['lanes_kept']:.3f} (--round-to {stepped['lanes']} keeps the lanes)")
    if asked - kept <= FINER_TOLERANCE:
        return ""
    if round_to > 1:
        return f"; {asked - kept:.3f} under it: widths stay multiples of {round_to} (--round-to 1 allows finer steps)"
    if allocation.get("mode") == "uniform":
        return (f"; {asked - kept:.3f} under it: uniform allocation takes the same share of every group in whole "
                "atoms, and a group of few atoms (2: a step of half) lands far under; --allocation global may "
                "meet it closer")
    return ""


def budget_result(allocation: dict | None, before, after, round_to: int = 1, *,
                  set_by_search: str | None = None) -> dict | None:
    """The run's target (--target-macs ...) against what it kept, with its summary line; None
    without a target. MACs and params are the result's own, at the run's shapes; latency is
    what the allocation measured in ONNX Runtime; active params are the allocation's count.
    A target is a ceiling: not met when the result keeps more (the most that could be
    removed without emptying a group, within --max-ratio / --protect / round-to).
    `set_by_search`: the user gave no target, only this (e.g. "--ratio 0.3"), and the
    candidate search compared its candidates at the first one's MACs: the line names what
    the user asked for, not a --target-macs flag they never gave."""
    target = (allocation or {}).get("target")
    if not target:
        return None
    (kind, asked), = target.items()
    measure = {"target_macs": "macs", "target_params": "params"}.get(kind)
    if measure is not None and getattr(before, measure, 0):
        kept, how = getattr(after, measure) / getattr(before, measure), ""
    elif kind == "target_latency" and allocation.get("measured_ratio") is not None:
        kept, how = allocation["measured_ratio"], " (measured in ONNX Runtime while allocating)"
    elif allocation.get("predicted_ratio") is not None:
        kept, how = allocation["predicted_ratio"], " (as the allocation counts it)"
    else:
        return None
    from graphprune.allocation.driver import LATENCY_BAND

    met = kept <= asked * (1 + LATENCY_BAND) if kind == "target_latency" else kept <= asked + 1e-3
    flag, what = _TARGETS.get(kind, (kind, kind))
    if set_by_search:
        head = f"{set_by_search} (the candidates compared at the first one's cost: {what} {asked:g})"
        line = (f"{head}: NOT met, the chosen one keeps {kept:.3f} of the input's {what}: the most it could "
                "remove (no group emptied, within --max-ratio/--protect)" if not met else
                f"{head}: the result keeps {kept:.3f} of the input's {what}")
        return {"flag": set_by_search, "asked": asked, "kept": round(float(kept), 4), "met": bool(met), "line": line}
    steps = f", widths multiples of {round_to}" if round_to > 1 else ""
    if not met:
        line = (f"{flag} {asked:g}: NOT met, the result keeps {kept:.3f} of the input's {what}{how}: "
                f"the most this run could remove (no group emptied{steps}, within --max-ratio/--protect)")
    else:
        line = f"{flag} {asked:g}: met, the result keeps {kept:.3f} of the input's {what}{how}"
        if kept > asked:  # a latency within the timing-noise band: say so, not a bare "met" above the ask
            line += f" (within the {LATENCY_BAND:.0%} band allowed for timing noise)"
        line += _why_under(allocation, asked, kept, round_to)
    return {"flag": flag, "asked": asked, "kept": round(float(kept), 4), "met": bool(met), "line": line}


def nothing_pruned_line(outcome) -> str | None:
    """One line when the run removed nothing (the written model is the input's function,
    unchanged in size): why, so that an identical copy is not read as a result; None otherwise."""
    plan = outcome.plan
    if plan.removes or plan.vocab or outcome.sparsity:
        return None
    from graphprune.analysis.dependency import DependencyGraph

    dg = DependencyGraph(outcome.model)  # the model as written: the input's groups (rare: nothing was removed)
    if not dg.prunable_groups:
        return (f"nothing pruned: no channel group of this model can be pruned ({len(dg.frozen_groups)} frozen); "
                "`graphprune inspect` says why")
    if all(g.normalised for g in dg.prunable_groups) and not (plan.settings or {}).get("prune_hidden"):
        return ("nothing pruned: the only prunable groups are the hidden size, kept whole by default "
                "(--prune-hidden prunes it)")
    settings = plan.settings or {}
    round_to = int(settings.get("round_to") or 1)
    if round_to > 1 and float(settings.get("ratio") or 0) > 0:  # widths rounded up are the whole width again
        return (f"nothing pruned: the options removed no channel (widths in multiples of {round_to} round back "
                f"up to the whole groups at this ratio; a smaller --round-to, e.g. {max(1, round_to // 2)}, or a "
                "larger --ratio prunes them; or every group is protected)")
    return "nothing pruned: the options removed no channel (a ratio of 0, or every group protected or too narrow)"
