"""How much calibration data do graphprune's defaults need? all-MiniLM-L6-v2 pruned to 70%
of its MACs with `--target-macs 0.7 --calib calib.npz` and no other flag (the defaults
row of run.py, `run_defaults`), calibrated on N sentences of pydoc_data.topics (none of
them an evaluation sentence), evaluated on the same held-out sets as the defaults rows:
mean embedding cosine vs dense on 200 sentences, and R@1 = nearest-neighbour agreement
with the dense embeddings (200 queries, corpus of 801 other sentences).

    PYTHONPATH=. python benchmarks/accuracy/calib_size.py [--sizes 32,256,800] [--out calib_size.json]

Why: run.py's defaults row calibrates MiniLM on 32 sentences, and lsq-reconstruct warns
there that the set is small for the layers it fits ("more varied --calib data repairs
better"). This measures what a user who follows that warning gets.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "transformers"), str(HERE.parent)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="32,256,800", help="calibration sentences per run")
    ap.add_argument("--target", type=float, default=0.7, help="MAC fraction kept")
    ap.add_argument("--workdir", help="where the exported model is cached (as run.py)")
    ap.add_argument("--out", default=str(HERE / "calib_size.json"))
    args = ap.parse_args()

    import run as R  # benchmarks/accuracy/run.py
    import text_tasks as T

    task = T.MiniLMTask(T.workdir(args.workdir))
    res = {"model": task.file, "target_macs": args.target, "evaluation": task.goal_description(),
           "dense": R.dense_goal_metrics(task), "rows": []}
    for size in (int(s) for s in args.sizes.split(",")):
        # run_defaults asks the task for its calibration: here N sentences in batches of 16
        task.goal_calibration = lambda size=size: task.calibration(size)
        t0 = time.perf_counter()
        row = R.run_defaults(task, args.target)
        row.pop("cli_difference", None)
        row["sentences"] = size
        res["rows"].append(row)
        print(f"{size:4d} sentences: {row.get('refused') or row['metrics']} ({row.get('criterion')}/"
              f"{row.get('method')}, macs kept {row.get('macs_kept')}, {time.perf_counter() - t0:.0f} s)", flush=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
