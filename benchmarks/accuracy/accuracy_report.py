"""results.json → results.md, and the goal check of issue 5."""
from __future__ import annotations

GOALS = {"rec": ("fraction", 0.95), "det": ("fraction", 0.95), "minilm": ("value", 0.97)}


def _best_metric(r: dict, higher: bool) -> float:
    vals = [v for v in (r["metric"], r.get("metric_repaired")) if v is not None]
    return max(vals) if higher else min(vals)


def _rel(d: dict, v: float) -> str:
    if v is None:
        return "-"
    if d["higher_better"]:
        return f"{100 * v / max(d['dense'], 1e-9):.1f}%"
    return f"{v / d['dense']:.2f}x"


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if abs(v) >= 1000 else f"{v:.3f}"


def goal(res: dict) -> str:
    out = []
    for name, (kind, need) in GOALS.items():
        d = res["models"].get(name)
        rows = [r for r in (d or {}).get("rows", []) if r["target_macs"] == 0.7]
        if not rows:
            continue
        best = max(rows, key=lambda r: _best_metric(r, True))
        v = _best_metric(best, True)
        got = v / max(d["dense"], 1e-9) if kind == "fraction" else v
        how = f"{best['criterion']}/{best['method']}" + (" + " + best["repair_passes"]
                                                         if best.get("metric_repaired") == v else "")
        shown = f"{100 * got:.1f}% of dense" if kind == "fraction" else f"cosine {got:.4f}"
        want = f"≥ {100 * need:.0f}%" if kind == "fraction" else f"≥ {need}"
        out.append(f"{name}: best at 30% fewer MACs = {shown} ({how}) → {'MET' if got >= need else 'NOT MET'} "
                   f"(goal {want})")
    return "; ".join(out)


def model_table(name: str, d: dict) -> list[str]:
    L = [f"## {name}: {d['file']} — {d['metric_name']}, dense = {_fmt(d['dense'])} on {d['eval_size']}", "",
         f"Calibration: {d['calibration']}. Grid repair: " + (f"`{d['repair']}`." if d["repair"] else "none (see README.md)."), "",
         "| MACs removed | criterion / allocation | kept MACs | metric | vs dense | + repair | vs dense | oracle (logits) |",
         "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        label = f"{r['criterion']} / {r['method']}"
        if r.get("options"):
            label += " (" + ", ".join(f"{k}={v}" for k, v in r["options"].items()) + ")"
        if r.get("best"):
            label = f"**best: {label}" + (f", {r['calibration']} calib." if r.get("calibration") else "") + \
                    (f", repair `{r['repair_passes']}`" if r.get("repair_passes") else ", no repair") + "**"
        kept = "-" if r["macs_kept"] is None else f"{r['macs_kept']:.3f}"
        if r.get("target_reached") is False:
            kept += " (target not reachable)"
        orc = f"{'PASS' if r['oracle'] else 'FAIL'} ({r['oracle_worst_rel_err']:.1e})"
        L.append(f"| {round((1 - r['target_macs']) * 100)}% | {label} | {kept} | {_fmt(r['metric'])} | "
                 f"{_rel(d, r['metric'])} | {_fmt(r.get('metric_repaired'))} | {_rel(d, r.get('metric_repaired'))} | "
                 f"{orc} |")
    return L + [""]


def tp_section(tp: dict) -> list[str]:
    L = ["## Side by side with Torch-Pruning", "", tp["method"], "",
         "| model | tool | configuration | MACs/token @seq | MACs removed | metric | dense | ran in ORT |",
         "|---|---|---|---|---|---|---|---|"]
    for r in tp["rows"]:
        L.append(f"| {r['model']} | {r['tool']} | {r['config']} | {r['macs_per_token'] / 1e6:.2f} M @{r['seq']} | "
                 f"{r['mac_reduction_pct']:.1f}% | {r['metric_name']} {_fmt(r['metric'])} | {_fmt(r['dense'])} | "
                 f"{r.get('ran', '-')} |")
    L += ["", tp.get("verdict", ""), ""]
    return L


def markdown(res: dict) -> str:
    L = [f"# Accuracy after pruning without fine-tuning ({res['date']})", "",
         f"Machine: {res['machine']}. Command: `{res['command']}`"
         + (f" ({res['note']})" if res.get("note") else "") + f"; {res.get('seconds', 0) / 60:.1f} min.", "",
         "Grid rows: L2 magnitude criterion (group-reduced), allocation uniform / global / sensitivity, "
         "MAC target = fraction of the dense MACs kept (counted at the calibration input shape). "
         "`metric` = after pruning, `+ repair` = after the repair passes named above each table, on calibration "
         "data disjoint from the evaluation data (a repair pass undoes itself if it does not lower the output "
         "error on the calibration data). `vs dense` = % of the dense metric (perplexity: × dense, lower is "
         "better). Oracle: pruned model == original with the plan's slices zeroed, on one real calibration batch, "
         "compared on the logits (inputs of a final Softmax/Sigmoid) with tolerance 1e-4 of the output scale; "
         "value = worst error relative to the output scale. See README.md.", ""]
    for name, d in res["models"].items():
        L += model_table(name, d)
    lat = res.get("latency")
    if lat:
        L += ["## Latency target", "",
              f"`prune-channels{{allocation=global,target_latency=0.5}}` on a {lat['model']}: measured "
              f"pruned/dense latency **{lat['measured_ratio']:.3f}** ({lat['pruned_ms']:.2f} ms / "
              f"{lat['dense_ms']:.2f} ms, 1 thread, 9 interleaved rounds), asked 0.5 → within 10%: "
              f"{lat['within_10pct']}. NetAdapt rounds: {lat['rounds']}", ""]
    if res.get("torch_pruning"):
        L += tp_section(res["torch_pruning"])
    L += ["## Goal (issue 5: at 30% fewer MACs, no fine-tuning)", "", res.get("goal", ""), ""]
    return "\n".join(L)
