"""PP-OCRv4 recognizer pruned, repaired, then int8-quantized by `graphprune compile --quantize int8`:
exact-match of the int8 deployment against the dense float model, and ONNX Runtime latency.

    python benchmarks/accuracy/quantize_rec.py [--calib-lines 64] [--eval-lines 100] [--target-macs 0.7]
                                                [--score-lines N]

Calibration: rendered lines of the default font (seed 100, as the defaults rows), written to a
calib.npz the CLI reads. Evaluation: other rendered lines of the same style (seed 1, never
calibrated on). The compile runs as a user would run it (the CLI, in a subprocess):

    graphprune compile rec.onnx --target x86 --backend onnxruntime --target-macs 0.7
        --calib calib.npz --search-budget 1 --quantize int8 -o OUT

With `--score-lines N` the compile also gets `--score`: exact-match on N more rendered lines
(seed 200: neither calibrated on nor evaluated on), the task score a user of a recognizer
would give; it picks the activation range method of the int8 model (output cosine otherwise).

Prints the compile's summary, then exact-match of the dense float model, the pruned float model
(model.pruned.onnx) and the int8 deployment (onnxruntime/model.onnx), each over the dense one,
and the latencies compile measured side by side at the calibration shape (report.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ocr_data as D  # noqa: E402


SCORE = """import sys
sys.path.insert(0, {here!r})
import numpy as np
import ocr_data as D
X, TRUTH = D.rec_set({n}, seed=200)
CHARS = D.characters({model!r})


def score(session):
    name = session.get_inputs()[0].name
    p = np.concatenate([session.run(None, {{name: X[i:i + 16]}})[0] for i in range(0, len(X), 16)])
    return D.exact_match(D.ctc_greedy(p, CHARS), TRUTH)
"""


def exact_match(path: str, x: np.ndarray, truth: list[str], chars: list[str]) -> float:
    from graphprune.runtime import ort

    s = ort.session(path, threads=1)
    p = np.concatenate([s.run(None, {"x": x[i:i + 16]})[0] for i in range(0, len(x), 16)])
    return D.exact_match(D.ctc_greedy(p, chars), truth)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib-lines", type=int, default=64)
    ap.add_argument("--eval-lines", type=int, default=100)
    ap.add_argument("--target-macs", default="0.7")
    ap.add_argument("--search-budget", default="1")
    ap.add_argument("--score-lines", type=int, default=0,
                    help="give compile --score: exact-match on this many other rendered lines (seed 200)")
    ap.add_argument("--keep", help="copy the compile's output folder here")
    args = ap.parse_args(argv)
    src, chars = D.rec_model()
    with tempfile.TemporaryDirectory(prefix="graphprune-qrec-") as tmp:
        model = os.path.join(tmp, "rec.onnx")
        shutil.copy(src, model)
        cx, _ = D.rec_set(args.calib_lines, seed=100)
        np.savez(os.path.join(tmp, "calib.npz"), x=cx)
        out = os.path.join(tmp, "out")
        cmd = [sys.executable, "-m", "graphprune.cli.main", "compile", model, "--target", "x86",
               "--backend", "onnxruntime", "--target-macs", args.target_macs, "--calib",
               os.path.join(tmp, "calib.npz"), "--search-budget", args.search_budget, "--quantize", "int8",
               "-o", out]
        if args.score_lines:
            score = os.path.join(tmp, "rec_score.py")
            with open(score, "w") as f:
                f.write(SCORE.format(here=os.path.dirname(os.path.abspath(__file__)), n=args.score_lines,
                                     model=src))
            cmd += ["--score", f"{score}:score"]
        print("$ graphprune " + " ".join(cmd[3:]), flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout + proc.stderr[-3000:])
        print(f"compile: exit {proc.returncode} in {time.time() - t0:.0f} s")
        if proc.returncode != 0:
            return proc.returncode
        rep = json.loads(open(os.path.join(out, "report.json")).read())
        x, truth = D.rec_set(args.eval_lines, seed=1)
        em = {"dense float": exact_match(model, x, truth, chars),
              "pruned float": exact_match(os.path.join(out, "model.pruned.onnx"), x, truth, chars),
              "pruned int8 (deployed)": exact_match(os.path.join(out, "onnxruntime", "model.onnx"), x, truth, chars)}
        print(f"\nexact-match on {len(x)} held-out rendered lines (seed 1):")
        for k, v in em.items():
            print(f"  {k:24s} {v:.3f}  ({v / max(em['dense float'], 1e-9):.3f} of dense float)")
        q = rep["quantization"]
        print(f"MACs kept {rep['after']['macs'] / rep['before']['macs']:.3f}; {q['line']}")
        print("latency (ms, ORT, " + ", ".join(f"{k} {v:.2f}" for k, v in q["latency_ms"].items() if v) + ")")
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
