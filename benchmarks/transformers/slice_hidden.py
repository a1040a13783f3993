"""SmolLM2-135M-Instruct: hidden-size slicing (slice-hidden) against width pruning (KV
groups + FFN channels) and both together, at equal kept MACs, no fine-tuning.

    python benchmarks/transformers/slice_hidden.py [--workdir DIR] [--rows ROWS] [--repair R] [--out FILE]

ROWS is a comma list of `hidden:R` (slice the fraction R of the hidden size, nothing else),
`width:T` (channels only, MAC target T), `channels:T` (the same with `--prune-hidden`: hidden
channels may go too, exactly, norms keeping their statistics over the original width),
`mixed:R:T` (slice R, then channels to the MAC target T of the *input*). Channels: Wanda, global allocation (the defaults search's
choice on this model, accuracy/results.md). Calibration: the 4 chunks of 256 tokens the
other SmolLM2 benchmarks use; perplexity: the 16 held-out chunks of 256 tokens
(benchmarks/transformers/smollm.py). Every row runs `graphprune.workflow.run_prune` with
the oracle on (for slice-hidden: rotated input vs input, and result vs the rotated input
with the plan's slices zeroed); MACs at 1x256 tokens.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

DEFAULT_ROWS = "hidden:0.1,hidden:0.2,hidden:0.3,width:0.8,width:0.7,mixed:0.1:0.8,mixed:0.1:0.7,mixed:0.2:0.7"


def parse_row(text: str) -> dict:
    kind, *vals = text.split(":")
    if kind == "hidden" and len(vals) == 1:
        return {"kind": kind, "slice": float(vals[0]), "target": None}
    if kind in ("width", "channels") and len(vals) == 1:
        return {"kind": kind, "slice": None, "target": float(vals[0])}
    if kind == "mixed" and len(vals) == 2:
        return {"kind": kind, "slice": float(vals[0]), "target": float(vals[1])}
    raise SystemExit(f"bad row {text!r}: hidden:R, width:T, channels:T or mixed:R:T")


def run_row(path: Path, row: dict, calib, repair: str, ev, tmp: Path, latency: int = 0) -> dict:
    from graphprune.workflow import PruneOptions
    from graphprune.workflow.prune import run_prune

    import smollm as S

    alloc = {"allocation": "global"} | ({"target_macs": row["target"]} if row["target"] else {}) \
        | ({"prune_hidden": True} if row["kind"] == "channels" else {})
    opts = PruneOptions(criterion="wanda", allocation=alloc, prune=row["target"] is not None,
                        slice_hidden=row["slice"], calib=calib, repair=repair or "none", max_drop=None,
                        input_shapes={"input_ids": [1, 256]})
    out = tmp / "pruned.onnx"
    t = time.time()
    res = run_prune(path, opts, out=out)
    secs = time.time() - t
    ppl = S.perplexity(out, ev)
    lat = None
    if latency:  # dense and pruned side by side, interleaved, 1 thread, 1x256 tokens
        sessions = {"dense": C.ort_session(path, threads=1), "pruned": C.ort_session(out, threads=1)}
        lat = C.interleaved_latency(sessions, {"input_ids": ev[:1]}, repeats=latency)
        lat["speedup"] = lat["median_ms"]["dense"] / lat["median_ms"]["pruned"]
        del sessions
    for f in tmp.glob("pruned*"):
        f.unlink()
    hidden = res.plan.hidden
    if row["kind"] == "channels":  # the hidden width left: what the norms' 1-D weights [576] lost
        import onnx

        dims = {t.name: list(t.dims) for t in onnx.load(str(path), load_external_data=False).graph.initializer}
        lost = max((len(t["removed"]) for t in res.plan.tensors if dims.get(t["name"]) == [576]), default=0)
        hidden = {"width": [576, 576 - lost]}
    return {**row, "kept_macs": res.after.macs / res.before.macs, "params": [res.before.params, res.after.params],
            "perplexity": ppl, "seconds": round(secs, 1), "latency": lat,
            "hidden_width": hidden.get("width"), "kept_energy": hidden.get("kept_energy"),
            "rotation_oracle": res.rotation_oracle.summary() if res.rotation_oracle else None,
            "oracle": res.oracle.summary() if res.oracle else None,
            "repair": [{k: r.get(k) for k in ("pass", "before", "after", "reverted")} for r in res.repair]}


def main() -> None:
    from transformers import AutoTokenizer

    import smollm as S
    from graphprune.runtime.calibration import Calibration

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="model files (outside the repository; default as run.py's)")
    ap.add_argument("--rows", default=DEFAULT_ROWS)
    ap.add_argument("--repair", default="", help="repair passes for every row (default: none)")
    ap.add_argument("--latency", type=int, default=0, metavar="N",
                    help="also time dense vs pruned in ONNX Runtime (N interleaved rounds, 1 thread, 1x256 tokens)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "slice_hidden.json"))
    args = ap.parse_args()
    wd = C.workdir(args.workdir)
    rows = [parse_row(r) for r in args.rows.split(",") if r]

    path, info = S.get_onnx(wd)
    tok = AutoTokenizer.from_pretrained(C.smollm_dir(), gguf_file=C.SMOL_GGUF)
    ev, cal = S.text_chunks(tok)
    calib = Calibration.from_batches([{"input_ids": cal[i:i + 1]} for i in range(len(cal))],
                                     "4 chunks of 256 tokens of pydoc_data.topics")
    t = time.time()
    dense = S.perplexity(path, ev)
    C.log(f"dense perplexity {dense:.3f} ({time.time() - t:.0f} s)")
    results = {"model": f"SmolLM2-135M-Instruct ({info['exporter']} export)", "dense_perplexity": dense,
               "calibration": calib.description, "evaluation": f"{len(ev)}x{ev.shape[1]} tokens",
               "repair": args.repair or "none", "loadavg_start": __import__("os").getloadavg()[0],
               "rows": []}
    with tempfile.TemporaryDirectory(dir=wd) as tmp:
        for row in rows:
            r = run_row(path, row, calib, args.repair, ev, Path(tmp), args.latency)
            r["x_dense"] = r["perplexity"] / dense
            results["rows"].append(r)
            C.log(f"{row['kind']} slice={row['slice']} target={row['target']}: kept MACs {r['kept_macs']:.3f}, "
                  f"perplexity {r['perplexity']:.2f} ({r['x_dense']:.2f}x dense), {r['seconds']:.0f} s")
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print("| rows | slice | MAC target | kept MACs | hidden | perplexity | × dense | ORT speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        w = r["hidden_width"]
        sp = f"{r['latency']['speedup']:.2f}×" if r.get("latency") else "-"
        print(f"| {r['kind']} | {r['slice'] or '-'} | {r['target'] or '-'} | {r['kept_macs']:.3f} | "
              f"{f'{w[0]}→{w[1]}' if w else '-'} | {r['perplexity']:.2f} | {r['x_dense']:.2f} | {sp} |")


if __name__ == "__main__":
    main()
