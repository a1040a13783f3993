"""Vocabulary pruning on SmolLM2-135M (`--keep-tokens`): what keeping only the tokens a
domain uses removes, whether it stays exact, what it costs in coverage and what it gains
in latency.

    python benchmarks/transformers/vocab.py [--workdir DIR] [--share 0.7] [--repeats 15]

Data: the standard library's `pydoc_data.topics`, tokenised. The first `--share` of the
tokens is the "domain sample": the kept ids are every id it contains plus the tokenizer's
special ids. The rest is held out:
* coverage: the share of held-out tokens that are kept (a deployment would have to map
  the others to an unknown token);
* greedy agreement: on 4 held-out chunks of 256 tokens whose tokens are all kept, the
  share of positions where the dense model's top-1 next token is a kept token. There the
  sliced model's top-1 is the same token (its logits are the dense logits at the kept
  ids: the oracle line proves it), elsewhere the sliced model must pick another.
The model is pruned by `run_prune` (no channel pruning, `keep_tokens`, its oracle: the
result vs the input with ids mapped and logits gathered). Latency: ONNX Runtime, 2 threads,
dense and sliced interleaved (median of `--repeats` rounds) at 1×256 and 1×32 tokens.
Results: `vocab.json` beside this script. The models live in the work directory.
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


def token_split(tok, share: float) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(tok(C.topics_text())["input_ids"], dtype=np.int64)
    cut = int(len(ids) * share)
    return ids[:cut], ids[cut:]


def held_out_chunks(held: np.ndarray, kept: set, n: int = 4, size: int = 256) -> np.ndarray:
    """`n` chunks of `size` held-out tokens that are all kept (the sliced model can read them)."""
    out, i = [], 0
    while len(out) < n and i + size <= len(held):
        c = held[i: i + size]
        if all(int(t) in kept for t in c):
            out.append(c)
            i += size
        else:
            i += 1 + int(np.argmax([int(t) not in kept for t in c]))  # past the first unkept token
    return np.stack(out) if out else np.zeros((0, size), np.int64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir")
    ap.add_argument("--share", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    wd = C.workdir(args.workdir)
    from smollm import get_onnx
    from transformers import AutoTokenizer

    from graphprune.analysis.cost import model_cost
    from graphprune.frontends.onnx import load_onnx
    from graphprune.workflow import PruneOptions, run_prune
    from graphprune.workflow.files import model_size

    path, info = get_onnx(wd)
    tok = AutoTokenizer.from_pretrained(C.smollm_dir(), gguf_file=C.SMOL_GGUF)
    domain, held = token_split(tok, args.share)
    kept = sorted(set(domain.tolist()) | set(tok.all_special_ids))
    vocab = len(tok)
    coverage = float(np.isin(held, kept).mean())
    C.log(f"kept {len(kept)} of {vocab} token ids ({len(domain)} domain tokens); held-out coverage {coverage:.4f}")
    d = wd / "vocab"
    d.mkdir(exist_ok=True)
    (d / "kept.json").write_text(json.dumps(kept))
    out = d / "smollm_vocab.onnx"
    t = time.time()
    outcome = run_prune(str(path), PruneOptions(prune=False, keep_tokens=str(d / "kept.json"), check_unchanged=False),
                        out=out)
    prune_s = time.time() - t
    res = outcome.vocab_oracle
    C.log(f"sliced in {prune_s:.0f}s; {res.summary()}")
    shapes = {"input_ids": [1, 256]}
    before = model_cost(load_onnx(str(path)), shapes)
    after = model_cost(load_onnx(str(out)), shapes)

    chunks = held_out_chunks(held, set(kept))
    dense = C.ort_session(path)
    sliced = C.ort_session(out)
    kept_arr = np.asarray(kept)
    agree, total = 0, 0
    remap = {int(k): i for i, k in enumerate(kept)}
    for c in chunks:
        lg = dense.run(None, {"input_ids": c[None]})[0][0]
        top = lg.argmax(-1)
        agree += int(np.isin(top, kept_arr).sum())
        total += top.size
        new = np.asarray([remap[int(t)] for t in c])[None]
        lg_s = sliced.run(None, {"input_ids": new})[0][0]
        assert np.array_equal(kept_arr[lg_s.argmax(-1)][np.isin(top, kept_arr)], top[np.isin(top, kept_arr)])
    C.log(f"greedy next token kept at {agree}/{total} held-out positions")

    lat = {}
    for seq in (256, 32):
        feeds_d = {"input_ids": held[:seq][None]}
        ids = np.asarray([remap.get(int(t), 0) for t in held[:seq]])[None]
        # the two models read different ids: time each with its own feeds, rounds interleaved
        r = _interleaved({"dense": (dense, feeds_d), "sliced": (sliced, {"input_ids": ids})}, args.repeats)
        lat[f"1x{seq}"] = r
        C.log(f"latency 1x{seq}: dense {r['median_ms']['dense']:.1f} ms, sliced {r['median_ms']['sliced']:.1f} ms")

    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": C.MACHINE, "versions": C.versions(), "export": info,
        "vocab": vocab, "kept": len(kept), "domain_tokens": int(len(domain)), "held_out_tokens": int(len(held)),
        "held_out_coverage": coverage, "greedy_top1_kept": agree / total if total else None,
        "greedy_positions": total,
        "params": [int(before.params), int(after.params)], "macs_1x256": [int(before.macs), int(after.macs)],
        "file_bytes": [model_size(Path(path)), model_size(out)],
        "oracle": res.summary(), "oracle_ok": res.ok, "prune_s": prune_s, "latency": lat,
        "load_at_end": os.getloadavg(),
    }
    (C.HERE / "vocab.json").write_text(json.dumps(result, indent=1, default=C._jsonable) + "\n")
    C.log(f"wrote {C.HERE / 'vocab.json'}")
    return 0


def _interleaved(runs: dict, repeats: int) -> dict:
    import statistics

    names = list(runs)
    for n in names:
        runs[n][0].run(None, runs[n][1])
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % 2:] + names[:r % 2]:
            sess, feeds = runs[n]
            t = time.perf_counter()
            sess.run(None, feeds)
            times[n].append((time.perf_counter() - t) * 1e3)
    return {"median_ms": {n: statistics.median(v) for n, v in times.items()}, "repeats": repeats}


if __name__ == "__main__":
    sys.exit(main())
