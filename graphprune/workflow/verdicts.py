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
"""
from __future__ import annotations

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
            f"{r['error_after']:.4g}" + (" (undone: no improvement)" if r["reverted"] else "")
            + (f"; {r['line']}" if r.get("line") else ""))


def accuracy_line(calibration, fidelity: dict | None, changed: bool) -> str | None:
    """One line when the model changed and nothing measured its accuracy; None otherwise."""
    if not changed or fidelity is not None:
        return None
    return NO_CALIB if calibration is None else NO_GATE


def require_fidelity(fid: dict, max_drop: float | None, what: str = "output fidelity") -> None:
    """The quality gate (--max-drop D): fail when 1 - mean output cosine on the calibration
    data exceeds D; the same gate for the pruned float model and for its int8 deployment."""
    if max_drop is not None and fid["drop"] > max_drop:
        raise QualityGateError(f"{what} drop {fid['drop']:.4f} exceeds --max-drop {max_drop:g}",
                               hint="nothing was written; prune less, repair (--repair), or raise --max-drop")


def latency_verdict(dense_ms: float, deployed_ms: float, chosen: str) -> dict:
    """The deployed model against the dense input in ONNX Runtime: speed-up and one line."""
    speedup = dense_ms / deployed_ms if deployed_ms > 0 else float("inf")
    faster = deployed_ms < dense_ms
    line = (f"{speedup:.2f}x faster than the input model in ONNX Runtime ({deployed_ms:.3f} ms {chosen} vs "
            f"{dense_ms:.3f} ms)" if faster else
            f"NOT FASTER: the pruned model ({chosen}, {deployed_ms:.3f} ms) is {1 / speedup:.2f}x the latency of "
            f"the input model in ONNX Runtime ({dense_ms:.3f} ms)")
    return {"dense_ort_ms": dense_ms, "deployed_ms": deployed_ms, "speedup": round(speedup, 4),
            "not_faster": not faster, "line": line}


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


def require_speedup(verdict: dict, min_speedup: float | None) -> None:
    """--min-speedup F: fail unless the speed-up is at least F (1.0: unless it is faster)."""
    if min_speedup is None:
        return
    s = verdict["speedup"]
    ok = s >= min_speedup and (min_speedup != 1.0 or not verdict["not_faster"])
    if not ok:
        raise SlowerThanAskedError(
            f"speed-up {s:.2f}x is below --min-speedup {min_speedup:g}: {verdict['line']}",
            hint="nothing was written; prune more, tune longer (--tune-trials), try --backend onnxruntime, "
                 "or lower --min-speedup")


def not_measured_note(target_name: str, rpc: str | None, dense_ms: float | None, pruned_ms: float | None) -> str:
    """A cross target's latency line: never blank; the host figures, labelled as such."""
    why = "no --rpc" if not rpc else "compile does not time on the --rpc device; use graphprune bench --rpc"
    note = f"not measured on {target_name} ({why})"
    if dense_ms and pruned_ms:
        return (note + f"; host estimate (ONNX Runtime on this machine): pruned {pruned_ms:.3f} ms vs input "
                f"{dense_ms:.3f} ms ({dense_ms / pruned_ms:.2f}x)")
    return note + "; host estimate: not available"
