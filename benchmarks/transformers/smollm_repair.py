"""SmolLM2-135M, FFN channels by wanda with least-squares repair, against issue 16's
perplexity goals (<= 1.5x dense at 20 % fewer MACs, <= 2.5x at 30 %), and what the size of
the calibration set does to it.

    python benchmarks/transformers/smollm_repair.py --ffn 0.54 --chunks 64 --repair lsq [--workdir DIR]
    python benchmarks/transformers/smollm_repair.py --defaults 0.7 --chunks 64     # graphprune's defaults

One run = one row: the lowest `--ffn` fraction of every layer's 1536 FFN channels by wanda
(attention untouched), then `--repair` (none, or graphprune's repair passes, e.g. lsq), on
`--chunks` calibration chunks of 256 tokens taken from the gaps between smollm.py's 16
evaluation chunks (never overlapping them; smollm.py's own calibration is 4 chunks).
`--defaults T` instead runs what `graphprune prune --target-macs T --calib` does with no
other flag (its candidate search chooses criterion, allocation and repair), on the same data.
The oracle runs unless `--no-check` (rows record which).
Perplexity on smollm.py's 16 x 256 evaluation tokens; MACs per token (symbolic sequence as
1) and at sequence 256 (attention included), as in benchmarks/accuracy. Prints one JSON line
and appends it to smollm_repair.json next to this file.
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
import smollm as S  # noqa: E402

HERE = Path(__file__).resolve().parent


def calibration_chunks(ids: np.ndarray, n: int) -> np.ndarray:
    """n chunks (a multiple of 16) spread over the gaps between the evaluation chunks."""
    step = (len(ids) - S.CHUNK) // S.N_CHUNKS
    per_gap = n // S.N_CHUNKS
    stride = (step - S.CHUNK) // per_gap
    starts = [i * step + S.CHUNK + k * stride for i in range(S.N_CHUNKS) for k in range(per_gap)]
    assert all(a % step >= S.CHUNK and a % step + S.CHUNK <= step for a in starts)  # inside a gap
    return np.stack([ids[a: a + S.CHUNK] for a in starts])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--ffn", type=float, help="fraction of each layer's FFN channels removed")
    what.add_argument("--defaults", type=float, metavar="T", help="graphprune's defaults at --target-macs T")
    ap.add_argument("--chunks", type=int, default=16, help="calibration chunks of 256 tokens (multiple of 16)")
    ap.add_argument("--repair", default="lsq", help="none, or graphprune repair passes (bias, lsq, ...)")
    ap.add_argument("--workdir", help="where the export is cached (as smollm.py)")
    ap.add_argument("--no-check", action="store_true", help="skip the oracle")
    args = ap.parse_args(argv)
    if args.chunks % S.N_CHUNKS:
        raise SystemExit(f"--chunks must be a multiple of {S.N_CHUNKS}")
    import graphprune as gp
    from graphprune.errors import QualityGateError
    from graphprune.workflow import PruneOptions, run_prune
    from transformers import AutoTokenizer

    t0 = time.time()
    wd = C.workdir(args.workdir)
    tok = AutoTokenizer.from_pretrained(C.smollm_dir(), gguf_file=C.SMOL_GGUF)
    ev, _ = S.text_chunks(tok)
    cal = calibration_chunks(np.asarray(tok(C.topics_text())["input_ids"], dtype=np.int64), args.chunks)
    dense, _ = S.get_onnx(wd)
    calib = C.calibration([{"input_ids": cal[i: i + 1]} for i in range(len(cal))])
    model = gp.load(dense)
    dense_per_token = C.cost(model)["macs"]
    if args.defaults is not None:
        opts = PruneOptions(allocation={"target_macs": args.defaults}, calib=calib, check=not args.no_check)
    else:
        dg = gp.analyze(model)
        sel = C.lowest_selection(dg, [g for g in dg.prunable_groups if g.num_atoms == 1536], args.ffn,
                                 C.atom_scores(dg, "wanda", calib))
        del dg
        opts = PruneOptions(selection=sel, repair=args.repair, calib=calib, check=not args.no_check, round_to=1)
    res = HERE / "smollm_repair.json"
    try:
        out = run_prune(model, opts)
    except QualityGateError as e:  # what `graphprune prune` with these options gives too: nothing written
        row = {"ffn_removed": args.ffn, "defaults": args.defaults, "chunks": args.chunks, "refused": str(e),
               "seconds": time.time() - t0, "versions": C.versions()}
        print(json.dumps(row, default=C._jsonable), flush=True)
        rows = json.loads(res.read_text()) if res.exists() else []
        res.write_text(json.dumps(rows + [row], indent=1, default=C._jsonable) + "\n")
        return 0
    path = wd / "smollm" / "repair_row.onnx"
    gp.save(out.model, path)
    per_token = C.cost(out.model)["macs"]
    assert out.before.shapes == {"input_ids": (1, S.CHUNK)}  # the run counted at the calibration shape
    chosen = out.search.get("chosen") if out.search else None
    row = {"ffn_removed": args.ffn, "defaults": args.defaults, "chosen": chosen, "chunks": args.chunks,
           "repair": args.repair if args.defaults is None else None, "oracle": None if out.oracle is None else bool(out.oracle.ok),
           "repair_error": [(r.get("pass"), r.get("error_before"), r.get("error_after")) for r in out.repair or []],
           "macs_per_token": per_token, "mac_reduction": 1 - per_token / dense_per_token,
           "mac_reduction_seq256": 1 - out.after.macs / out.before.macs, "ppl": S.perplexity(path, ev),
           "seconds": time.time() - t0, "versions": C.versions()}
    for f in path.parent.glob(path.name + "*"):
        f.unlink()
    print(json.dumps(row, default=C._jsonable), flush=True)
    rows = json.loads(res.read_text()) if res.exists() else []
    res.write_text(json.dumps(rows + [row], indent=1, default=C._jsonable) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
