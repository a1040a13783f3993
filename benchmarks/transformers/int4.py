"""An int4 LLM in, pruned: SmolLM2-135M-Instruct quantized by ONNX Runtime's weight-only
quantizer (every linear layer a com.microsoft MatMulNBits, int4, blocks of 32 along K,
asymmetric), then pruned by graphprune directly, against the float route (prune the float
model, then quantize it). Perplexity on the same held-out text as smollm.py, the oracle on
the int4 pruning, and ONNX Runtime latency of all models side by side.

    python benchmarks/transformers/int4.py [--workdir DIR] [--quick]

Rows (FFN = the MLP's intermediate channels, 1536 per layer; the int4 model prunes them in
whole quantization blocks of 32, so 25 % is 12 of 48 blocks, the same 384 channels):
* float dense, int4 dense;
* "int4, pruned": graphprune on the int4 model, FFN 25 % (and KV groups 1/3) by wanda on the
  4 calibration chunks of smollm.py, the oracle run against the int4 input;
* "float pruned, then int4": the same selection rule on the float model, then the same
  quantizer.
Latency: batch 1, 128 tokens, no KV cache, 2 threads, every model timed in turn for
several rounds (median per model; load recorded). Writes int4.json next to this file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402
import numpy as np  # noqa: E402
import smollm as S  # noqa: E402

HERE = Path(__file__).resolve().parent
BLOCK = 32


def quantize(src: Path, dst: Path) -> float:
    """ORT's MatMulNBits quantizer (int4, block 32, asymmetric) on `src`; seconds taken."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    t = time.time()
    q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=DefaultWeightOnlyQuantConfig(block_size=BLOCK,
                                                                                          is_symmetric=False))
    q.process()
    for f in dst.parent.glob(dst.name + "*"):
        f.unlink()
    q.model.save_model_to_file(str(dst), use_external_data_format=True)
    return time.time() - t


def select(path: Path, calib, ffn_atoms: int, kv: bool) -> dict:
    """gp.prune keywords: the lowest 25 % of every FFN group's atoms (and 1 of 3 KV groups
    when `kv`) by wanda."""
    import graphprune as gp

    m = gp.load(path)
    d = gp.analyze(m)
    scores = C.atom_scores(d, "wanda", calib)
    sel = C.lowest_selection(d, [g for g in d.prunable_groups if g.num_atoms == ffn_atoms], 0.25, scores)
    if kv:
        sel.update(C.lowest_selection(d, [g for g in d.prunable_groups if g.num_atoms == 3], 1 / 3, scores))
    return sel


def prune(src: Path, dst: Path, selection: dict) -> dict:
    import graphprune as gp

    t = time.time()
    res = gp.prune(gp.load(src), selection=selection)
    for f in dst.parent.glob(dst.name + "*"):
        f.unlink()
    gp.save(res.model, dst)
    res.plan.save(str(dst.with_suffix(".plan.json")))
    return {"prune_s": time.time() - t, **C.cost(res.model)}


def latencies(paths: dict[str, Path], rounds: int, seq: int = 128) -> dict:
    """Median ms per model, timed in turn (one run of each model per round)."""
    x = {"input_ids": np.random.default_rng(0).integers(100, 1000, (1, seq)).astype(np.int64)}
    sessions = {k: C.ort_session(p, threads=2) for k, p in paths.items()}
    for s in sessions.values():
        s.run(None, x)
    times = {k: [] for k in sessions}
    load = []
    for _ in range(rounds):
        load.append(os.getloadavg()[0])
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, x)
            times[k].append(1000 * (time.perf_counter() - t))
    return {"ms": {k: float(np.median(v)) for k, v in times.items()}, "rounds": rounds, "seq": seq,
            "load_1min": [min(load), max(load)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="where models go (outside the repo); default $TMPDIR/graphprune-transformers")
    ap.add_argument("--quick", action="store_true", help="4 evaluation chunks, FFN rows only, 3 latency rounds")
    args = ap.parse_args(argv)
    t0 = time.time()
    wd = C.workdir(args.workdir)
    d = wd / "int4"
    d.mkdir(exist_ok=True)

    import graphprune as gp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(C.smollm_dir(), gguf_file=C.SMOL_GGUF)
    ev, cal = S.text_chunks(tok)
    if args.quick:
        ev = ev[:4]
    dense, info = S.get_onnx(wd)
    calib = C.calibration([{"input_ids": cal[i: i + 1]} for i in range(len(cal))])
    dense_int4 = d / "dense_int4.onnx"
    q_s = quantize(dense, dense_int4)
    C.log(f"int4 quantization: {q_s:.0f}s")
    rows = [{"config": "float dense", **C.cost(gp.load(dense)), "ppl": S.perplexity(dense, ev)},
            {"config": "int4 dense", **C.cost(gp.load(dense_int4)), "ppl": S.perplexity(dense_int4, ev),
             "quantize_s": q_s}]
    for r in rows:
        C.log(f"{r['config']}: ppl {r['ppl']:.3f}")
    paths = {"float dense": dense, "int4 dense": dense_int4}
    oracle_feeds = {"input_ids": ev[:1, :64]}
    for what, kv in [("FFN 25%", False)] + ([] if args.quick else [("FFN 25% + KV 1/3", True)]):
        slug = what.replace(" ", "").replace("%", "").replace("+", "_").replace("/", "of")
        # graphprune on the int4 model: FFN atoms are blocks of 32 channels
        p_int4 = d / f"int4_pruned_{slug}.onnx"
        row = {"config": f"int4, pruned: {what} (wanda)", **prune(dense_int4, p_int4,
                                                                      select(dense_int4, calib, 1536 // BLOCK, kv))}
        t = time.time()
        r = gp.check(str(dense_int4), str(p_int4), str(p_int4.with_suffix(".plan.json")), inputs=[oracle_feeds])
        row.update(oracle=f"{'PASS' if r.ok else 'FAIL'} ({r.worst_relative:.1e})", check_s=time.time() - t,
                   ppl=S.perplexity(p_int4, ev))
        rows.append(row)
        # the float route: prune the float model by the same rule, then quantize
        p_float = d / f"float_pruned_{slug}.onnx"
        frow = {"config": f"float pruned: {what} (wanda)", **prune(dense, p_float, select(dense, calib, 1536, kv))}
        frow["ppl"] = S.perplexity(p_float, ev)
        rows.append(frow)
        p_fq = d / f"float_pruned_int4_{slug}.onnx"
        qrow = {"config": f"float pruned, then int4: {what} (wanda)", "quantize_s": quantize(p_float, p_fq),
                **C.cost(gp.load(p_fq))}
        qrow["ppl"] = S.perplexity(p_fq, ev)
        rows.append(qrow)
        for x in rows[-3:]:
            C.log(f"{x['config']}: ppl {x['ppl']:.3f} MACs {x['macs']:,} {x.get('oracle', '')}")
        paths.update({rows[-3]["config"]: p_int4, rows[-1]["config"]: p_fq})
    lat = latencies(paths, 3 if args.quick else 15)
    for f in d.glob("*pruned*"):
        f.unlink()  # pruned models are not kept (hundreds of MB each); the int4 dense model is rebuilt in 1 s
    for r in rows:
        r["ms"] = lat["ms"].get(r["config"])
    data = {"model": "SmolLM2-135M-Instruct (smollm.py's export), int4 by onnxruntime MatMulNBitsQuantizer "
                     f"(block {BLOCK}, asymmetric)", "eval": f"{len(ev)} x {S.CHUNK} tokens", "rows": rows,
            "latency": {k: v for k, v in lat.items() if k != "ms"}, "exporter": info["exporter"],
            "versions": C.versions(), "runtime_s": time.time() - t0, "quick": args.quick}
    text = json.dumps(data, indent=1, default=C._jsonable)
    if args.quick:
        print(text)
    else:
        (HERE / "int4.json").write_text(text + "\n")
    print("| config | MACs | params | perplexity | ms (1x128, 2 threads) | oracle |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ms = f"{r['ms']:.1f}" if r.get("ms") else "-"
        print(f"| {r['config']} | {r['macs'] / 1e6:.1f} M | {r['params'] / 1e6:.1f} M | {r['ppl']:.2f} | {ms} | "
              f"{r.get('oracle', '-')} |")
    C.log(f"int4 part done in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
