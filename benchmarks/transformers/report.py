"""Renders results.json (all parts) as results.md."""
from __future__ import annotations


def _f(x, fmt="{:.3f}", none="n/a"):
    return none if x is None else fmt.format(x)


def _red(x) -> str:
    """A reduction in percent as a signed change ("-8.3%"), or "0" for none."""
    return "0" if not x or abs(x) < 0.05 else f"{-x:+.1f}%"


def _onnx(o: dict) -> str:
    return f"ir_version {o['ir_version']}, opset {o['opset']}, {o['nodes']} nodes"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _minilm(p: dict) -> list[str]:
    L = ["## 1. all-MiniLM-L6-v2 sentence embeddings", "",
         f"Model: {p['model']}. Export: {p['exporter']} ({p['export_s']:.0f} s), ONNX {_onnx(p['onnx'])}. "
         f"{p['sentences']} sentences of `pydoc_data.topics` ({p['tokens']} tokens), mean-pooled and L2-normalised; "
         f"ONNX Runtime vs transformers min cosine (export check): {p['export_check_min_cos_torch_vs_ort']:.6f}. "
         f"Groups found: {p['groups']['heads']} head groups x {p['groups']['heads_atoms']} heads, "
         f"{p['groups']['ffn']} FFN groups x {p['groups']['ffn_atoms']} channels"
         + (f", other {p['groups']['other']}" if p['groups']['other'] else "") + ". "
         f"Residual sub-blocks: {len(p['blocks'])}. Part runtime {p['runtime_s'] / 60:.1f} min.", ""]
    rows = []
    for r in p["rows"]:
        rows.append([r["config"], r["what"], f"{r['macs'] / 1e6:.2f}", _red(r['mac_reduction_pct']),
                     _red(r.get('mac128_reduction_pct')), f"{r['params'] / 1e6:.2f}",
                     _red(r['params_reduction_pct']), f"{r['cos_mean']:.4f}", f"{r['cos_min']:.4f}",
                     f"{r['nn_agreement']:.3f}", r["oracle"], _f(r.get("torch_masked_min_cos"), "{:.6f}", "-"),
                     ", ".join(r.get("removed_blocks") or []) or "-"])
    L += _table(["config", "what", "MMACs/token", "MACs", "MACs @seq128", "params (M)", "params", "mean cos",
                 "min cos", "NN top-1 agree", "oracle", "torch check", "removed blocks"], rows)
    L += ["", "torch check: min cosine between the pruned ONNX model's embeddings and those of the original "
          "transformers model with the same heads / FFN channels zeroed (read from the plan) — the plan means what "
          "it says in the source model."]
    ts = p.get("torchscript_export") or {}
    if ts.get("error"):
        L += ["", f"TorchScript export cross-check failed: {ts['error']}"]
    elif ts:
        L += ["", f"TorchScript export cross-check ({_onnx(ts['onnx'])}): {ts['n_groups']} prunable groups with "
              f"{ts['groups']} atoms, {ts['blocks']} residual sub-blocks (dynamo export: {len(p['blocks'])}); "
              f"`gp.prune(ratio=0.25)` oracle "
              f"{ts['uniform25_oracle']}, {ts['uniform25_macs'] / 1e6:.2f} MMACs/token, mean cos "
              f"{ts['uniform25_cos_mean']:.4f} (vs the dense dynamo export)."]
    L += ["", "Sub-block influence ‖branch‖/‖skip+branch‖ (text calibration / graphprune default random inputs): "
          + ", ".join(f"{b['label']} {b['influence_text']:.2f}/{b['influence_random']:.2f}" for b in p["blocks"]), "",
          "Frozen groups (expected: hidden size behind LayerNorm, vocabulary/positions behind Gather): "
          + "; ".join(f"{k} x{v}" for k, v in p["frozen_reasons"].items()), ""]
    return L


def _smollm(p: dict) -> list[str]:
    L = ["## 2. SmolLM2-135M-Instruct perplexity", "",
         f"Model: {p['model']}. Export: {p['exporter']} ({p['export_s']:.0f} s), ONNX {_onnx(p['onnx'])}. "
         f"Evaluation: {p['eval']}. Dense perplexity: ONNX Runtime {p['ppl_dense_onnx']:.3f}, "
         f"transformers {_f(p['ppl_dense_transformers'])} (one evaluation: {p['ppl_eval_s']:.0f} s). "
         f"Groups: {p['groups']['kv']} KV-head groups x 3, {p['groups']['ffn']} FFN groups x 1536"
         + (f", other {p['groups']['other']}" if p['groups']['other'] else "") + ". "
         f"Residual sub-blocks: {len(p['blocks'])}. Part runtime {p['runtime_s'] / 60:.1f} min.", ""]
    rows = []
    for r in p["rows"]:
        g = r.get("gqa")
        gtxt = "-" if not g else f"{'ok' if g['ok'] else 'BROKEN'} {'/'.join(g['q:k:v'])} ({g['layers_checked']} layers)"
        rem = r.get("removed_blocks") or []
        rtxt = ", ".join(rem) if len(rem) <= 8 else ", ".join(rem[:8]) + f", ... ({len(rem)})"
        rows.append([r["config"], r["what"], f"{r['macs'] / 1e6:.1f}", _red(r['mac_reduction_pct']),
                     _red(r.get('mac256_reduction_pct')), f"{r['params'] / 1e6:.1f}",
                     _red(r['params_reduction_pct']), _f(r["ppl"], "{:.2f}"), r["oracle"], gtxt, rtxt or "-"])
    L += _table(["config", "what", "MMACs/token", "MACs", "MACs @seq256", "params (M)", "params", "perplexity",
                 "oracle", "GQA q:k:v out widths", "removed blocks"], rows)
    li = p["layer_influence"]
    L += ["", "Layer influence 1 − cos(in, out) on text, per layer: " + ", ".join(f"L{i} {v:.3f}" for i, v in enumerate(li)),
          "", "Least influential sub-blocks (text): " + ", ".join(
              f"{b['label']} {b['influence_text']:.3f}" for b in sorted(p["blocks"], key=lambda b: b["influence_text"])[:16]),
          "", "Frozen groups (expected: hidden size behind RMSNorm/ReduceMean, vocabulary behind Gather and the "
          "logits output, head_dim behind the rotary embedding): "
          + "; ".join(f"{k} x{v}" for k, v in p["frozen_reasons"].items()), ""]
    return L


def _lat_table(part: dict, macs_unit: float, unit: str) -> list[str]:
    rows = []
    dense = part["rows"][0]
    threads = list(dense["latency"])
    for r in part["rows"]:
        cells = [r["config"], f"{r['macs'] / macs_unit:.2f}", _red(r.get('mac_reduction_pct')),
                 f"{r['params'] / 1e6:.2f}"]
        for t in threads:
            cells += [f"{r['latency'][t]:.1f}", f"{dense['latency'][t] / r['latency'][t]:.2f}x"]
        rem = r.get("removed") or []
        cells += [r["oracle"], ", ".join(str(x) for x in rem) if len(rem) <= 8 else f"{len(rem)} blocks"]
        rows.append(cells)
    head = ["config", unit, "MACs", "params (M)"]
    for t in threads:
        head += [f"ms ({t})", f"speed-up ({t})"]
    meta = "; ".join(f"{t}: {m['repeats']} interleaved rounds, other processes used "
                     f"{_f(m['other_busy'], '{:.0%}')} of the CPU" for t, m in part["latency_meta"].items())
    return _table(head + ["oracle", "removed"], rows) + ["", f"Latency: median per model; {meta}.", ""]


def _depth(p: dict) -> list[str]:
    L = ["## 3. Depth pruning: MACs and ONNX Runtime latency side by side", ""]
    c = p["cnn"]
    L += [f"### {c['model']}", "", f"{c['removable_blocks']} removable residual blocks (the 3 downsampling blocks "
          f"have a projection skip); blocks chosen by {c['criterion']}; removed = block indices among the removable "
          "ones.", ""]
    L += _lat_table(c, 1e9, "GMACs/image")
    if "smollm" in p:
        s = p["smollm"]
        L += [f"### {s['model']}", "", f"Blocks chosen by {s['criterion']}. MACs per token.", ""]
        L += _lat_table(s, 1e6, "MMACs/token")
    L += [f"Part runtime {p['runtime_s'] / 60:.1f} min.", ""]
    return L


def _errors(parts: dict) -> list[str]:
    out = []
    ml = parts.get("minilm", {})
    ts = ml.get("torchscript_export") or {}
    if ts.get("error"):
        out.append(f"minilm / TorchScript export cross-check failed: {ts['error']}")
    elif ts and ts.get("blocks", 0) < len(ml.get("blocks", [])):
        out.append(f"minilm / TorchScript export: find_residual_blocks finds {ts['blocks']} residual sub-blocks, the "
                   f"dynamo export {len(ml['blocks'])}: layer 0's attention block is missed because the attention-mask "
                   "computation, which reads the shape of the embeddings output, feeds every layer (the branch "
                   "looks open).")
    for pname, p in parts.items():
        rows = list(p.get("rows", []))
        for sub in ("cnn", "smollm"):
            if isinstance(p.get(sub), dict):
                rows += [dict(r, config=f"{sub}: {r['config']}") for r in p[sub].get("rows", [])]
        for r in rows:
            if r.get("graphprune_error"):
                out.append(f"{pname} / {r['config']}: `gp.prune(remove_blocks=k)` raised `{r['graphprune_error']}`; "
                           "the row shows the same k blocks (same criterion) removed with `blocks=` listed "
                           "last-first, which avoids the bug.")
            if str(r.get("oracle", "")).startswith(("FAIL", "ERROR")):
                out.append(f"{pname} / {r['config']}: oracle {r['oracle']}")
            g = r.get("gqa")
            if g and not g.get("ok"):
                out.append(f"{pname} / {r['config']}: GQA widths inconsistent: {g}")
    return out


def render(res: dict) -> str:
    parts = res.get("parts", {})
    L = ["# graphprune on real transformers (and depth pruning latency)", "",
         f"Date: {res['date']}. Machine: {res['machine']}. Produced by `python benchmarks/transformers/run.py` "
         "(see README.md for what each metric means). No fine-tuning anywhere: these are one-shot pruning "
         "numbers.", ""]
    v = next((p.get("versions") for p in parts.values() if p.get("versions")), None)
    for lr in res.get("runs", [])[-3:]:
        L += [f"Run {lr.get('started', '')}: parts {', '.join(lr['parts'])}; minutes per part "
              + ", ".join(f"{k} {m}" for k, m in lr["part_minutes"].items()) + f"; total {lr['total_minutes']} min"
              + (f"; FAILED: {lr['failed']}" if lr.get("failed") else "") + ".", ""]
    if v:
        L += ["Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()), ""]
    if "minilm" in parts:
        L += _minilm(parts["minilm"])
    if "smollm" in parts:
        L += _smollm(parts["smollm"])
    if "depth" in parts:
        L += _depth(parts["depth"])
    errs = _errors(parts)
    L += ["## graphprune problems seen in this run", ""] + ([f"- {e}" for e in errs] or ["- none"]) + [""]
    L += ["`blocks=[...]` lists are passed last-first (graph order reversed): before graphprune commit 8b7f365 an "
          "earlier block listed before a consecutive later one (e.g. a layer's attention, then its MLP) made "
          "`prune-blocks` fail with StopIteration. `(default)` rows call `gp.prune(remove_blocks=k)` itself; if it "
          "raises, the error is listed above and the row shows the same blocks removed through `blocks=`.", ""]
    return "\n".join(L)
