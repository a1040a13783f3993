"""results.json → results.md, the goal check of issue 5 (best configuration) and of issue 13
(graphprune's defaults: `goal13`)."""
from __future__ import annotations

GOALS = {"rec": ("fraction", 0.95), "det": ("fraction", 0.95), "minilm": ("value", 0.97)}
# issue 13 §2: (model, MAC fraction kept, held-out metric, needed fraction of the dense figure),
# for `graphprune prune M --target-macs T --calib calib.npz` with no other flag
GOALS13 = [("rec", 0.7, "in-domain", 0.98), ("rec", 0.7, "shifted", 0.90), ("rec", 0.5, "in-domain", 0.95),
           ("minilm", 0.7, "cosine", 0.95), ("minilm", 0.7, "R@1", 0.95), ("minilm", 0.7, "R@1 labeled", 0.95)]


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
        rows = [r for r in (d or {}).get("rows", []) if r["target_macs"] == 0.7 and not r.get("kind")]
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
        if r.get("kind"):  # defaults / flags rows: their own table
            continue
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


def _kind_row(d: dict, kind: str, target: float):
    return next((r for r in d.get("rows", []) if r.get("kind") == kind and r["target_macs"] == target), None)


def _ratio(d: dict, v: float, dense: float) -> float:
    return v / max(dense, 1e-9) if d["higher_better"] else dense / max(v, 1e-9)


def goal13(res: dict) -> list[str]:
    """MET / NOT MET for each goal of issue 13 §2, with the figures."""
    out = ["Goal check (issue 13 §2: `graphprune prune M --target-macs T --calib calib.npz`, no other flag; "
           "held-out data):"]
    for name, target, metric, need in GOALS13:
        d = res["models"].get(name) or {}
        r = _kind_row(d, "defaults", target)
        head = f"  {name} at {100 * target:.0f}% MACs, {metric} ≥ {100 * need:.0f}% of dense:"
        if r is None:
            out.append(f"{head} not measured (run.py --rows defaults --models {name})")
            continue
        if r.get("refused"):
            out.append(f"{head} NOT MET — nothing written: {r['refused']} [graphprune {r['graphprune']}]")
            continue
        v, dense = r["metrics"].get(metric), d["dense_goal"].get(metric)
        if v is None or dense is None:
            out.append(f"{head} not measured by this row (run.py --rows defaults --models {name})")
            continue
        got = _ratio(d, v, dense)
        out.append(f"{head} {v:.3f} / dense {dense:.3f} = {100 * got:.1f}% → {'MET' if got >= need else 'NOT MET'} "
                   f"(kept MACs {r['macs_kept']:.3f}; chose {_chose(r)}; graphprune {r['graphprune']}, {r['date']})")
    return out


def _chose(r: dict) -> str:
    rep = [x["pass"] for x in r.get("repair") or [] if not x["reverted"]]
    reverted = [x["pass"] for x in r.get("repair") or [] if x["reverted"]]
    return f"{r.get('criterion')}/{r.get('method') or 'uniform'}, repair " + (",".join(rep) or "none") + \
        (f" ({','.join(reverted)} reverted)" if reverted else "")


def _cell(d: dict, r, metric: str, dense: float) -> str:
    if r is None:
        return "-"
    if r.get("refused"):
        return "nothing written (" + r["refused"].split(":")[0] + ")"
    v = r["metrics"][metric]
    return f"{_fmt(v)} ({100 * _ratio(d, v, dense):.1f}%)"


def defaults_section(res: dict) -> list[str]:
    L = ["## Defaults vs best flags (issue 13)", "",
         "`defaults` = `graphprune prune model.onnx --target-macs T --calib calib.npz` with no other flag "
         "(run_prune with `PruneOptions(allocation={\"target_macs\": T}, calib=...)` only; the configuration "
         "graphprune chose is named, with the graphprune revision it ran). `best flags, same data` = the best "
         "configuration as prune flags, run the same way on the same calibration and held-out data; `best row "
         "(grid run)` = the best-configuration row of the tables below (its own calibration and evaluation set, "
         "see there). Figures in brackets: % of dense (perplexity: dense / pruned).", "",
         "| model | MACs kept | metric (held-out set) | dense | best row (grid run) | best flags, same data | defaults "
         "| defaults chose | graphprune |",
         "|---|---|---|---|---|---|---|---|---|"]
    for name, d in res["models"].items():
        kinds = [r for r in d.get("rows", []) if r.get("kind")]
        if not kinds:
            continue
        best = next((r for r in d["rows"] if r.get("best") and r["target_macs"] == 0.7), None)
        for target in sorted({r["target_macs"] for r in kinds}, reverse=True):
            dr, fr = _kind_row(d, "defaults", target), _kind_row(d, "flags", target)
            for metric, dense in d["dense_goal"].items():
                b = "-"
                if best is not None and target == 0.7 and metric in (d["metric_name"], "in-domain", "cosine",
                                                                      "perplexity"):
                    v = _best_metric(best, d["higher_better"])
                    b = f"{_fmt(v)} ({100 * _ratio(d, v, d['dense']):.1f}% of {_fmt(d['dense'])}; {d['eval_size']})"
                kept = dr["macs_kept"] if dr and not dr.get("refused") else None
                L.append(f"| {name} | {target:g}" + (f" ({kept:.3f})" if kept is not None else "") +
                         f" | {metric} | {_fmt(dense)} | {b} | {_cell(d, fr, metric, dense)} | {_cell(d, dr, metric, dense)} | "
                         f"{_chose(dr) if dr and not dr.get('refused') else '-'} | "
                         f"{dr['graphprune'] if dr else '-'} |")
    L.append("")
    for name, d in res["models"].items():
        r = next((r for r in d.get("rows", []) if r.get("kind")), None)
        if r is not None:
            L.append(f"- {name}: calibration {r['calibration']}; held-out {d.get('goal_evaluation', '')}.")
    for run in res.get("defaults_runs", []):
        L.append(f"- run: `{run['command']}`, {run['minutes']} min, graphprune {'; '.join(run['graphprune'])}")
    diffs = {(r["model"], r["target_macs"]): r["cli_difference"] for d in res["models"].values()
             for r in d.get("rows", []) if r.get("cli_difference")}
    L.append("- the CLI's parsed options equal the run's in every row" if not diffs else
             f"- WARNING: the CLI's options differ from the run's: {diffs}")
    return L + [""] + goal13(res) + [""]


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
    if any(r.get("kind") for d in res["models"].values() for r in d.get("rows", [])):
        L += defaults_section(res)
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
