"""An integer-op (QOperator) PP-OCRv4 recognizer pruned in its own format: does it work on a
real quantized model, how exact is it, and what does it keep?

    python benchmarks/accuracy/qoperator_rec.py [--calib-lines 64] [--eval-lines 100] [--target-macs 0.7]
                                                [--max-drop D]

The dense float recognizer is quantized by onnxruntime.quantization.quantize_static
(QuantFormat.QOperator, per-channel int8 weights, uint8 activations) on rendered lines of the
default font (seed 100; its Constant nodes are made initializers first, which the quantizer
needs). Then, as a user would run it (the CLI, in a subprocess):

    graphprune prune rec_qop.onnx --target-macs 0.7 --calib calib.npz -o rec_qop_pruned.onnx

(calibration data, so the shapes are the real ones and the defaults search criteria;
repairs cannot rewrite integer layers, and say so by changing nothing). Evaluation: exact-match
on other rendered lines of the same style (seed 1) of the dense float model, the int8 model and
the pruned int8 model, and ONNX Runtime latency of the int8 and the pruned int8 model at
1×3×48×320 (2 threads, interleaved, median of 20).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ocr_data as D  # noqa: E402


def initializers_for_constants(src: str, dst: str) -> None:
    import onnx

    m = onnx.load(src)
    keep = []
    for n in m.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.helper.get_attribute_value(n.attribute[0])
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.save(m, dst)


def quantize_qoperator(src: str, dst: str, x: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def session(path: str, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def exact_match(path: str, x: np.ndarray, truth: list[str], chars: list[str]) -> float:
    s = session(path)
    p = np.concatenate([s.run(None, {"x": x[i:i + 16]})[0] for i in range(0, len(x), 16)])
    return D.exact_match(D.ctc_greedy(p, chars), truth)


def latency(paths: dict, x: np.ndarray, rounds: int = 20) -> dict:
    sess = {k: session(p, threads=2) for k, p in paths.items()}
    for s in sess.values():
        s.run(None, {"x": x})
    times = {k: [] for k in sess}
    names = list(sess)
    for r in range(rounds):
        for k in names[r % 2:] + names[:r % 2]:
            t = time.perf_counter()
            sess[k].run(None, {"x": x})
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib-lines", type=int, default=64)
    ap.add_argument("--eval-lines", type=int, default=100)
    ap.add_argument("--target-macs", default="0.7")
    ap.add_argument("--max-drop", help="passed to prune (2 turns the quality gate off, to measure what it refuses)")
    args = ap.parse_args(argv)
    src, chars = D.rec_model()
    with tempfile.TemporaryDirectory(prefix="graphprune-qop-rec-") as tmp:
        dense = os.path.join(tmp, "rec.onnx")
        initializers_for_constants(src, dense)
        cx, _ = D.rec_set(args.calib_lines, seed=100)
        np.savez(os.path.join(tmp, "calib.npz"), x=cx)
        qop = os.path.join(tmp, "rec_qop.onnx")
        t0 = time.time()
        quantize_qoperator(dense, qop, cx)
        print(f"quantized (QOperator) in {time.time() - t0:.0f} s", flush=True)
        out = os.path.join(tmp, "rec_qop_pruned.onnx")
        cmd = [sys.executable, "-m", "graphprune.cli.main", "prune", qop, "--target-macs", args.target_macs,
               "--calib", os.path.join(tmp, "calib.npz"), "--no-bench", "-o", out] \
            + (["--max-drop", args.max_drop] if args.max_drop else [])
        print("$ graphprune " + " ".join(cmd[3:]), flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout + proc.stderr[-3000:])
        print(f"prune: exit {proc.returncode} in {time.time() - t0:.0f} s")
        if proc.returncode != 0:
            return proc.returncode
        x, truth = D.rec_set(args.eval_lines, seed=1)
        em = {"dense float": exact_match(dense, x, truth, chars), "int8 (QOperator)": exact_match(qop, x, truth, chars),
              "pruned int8": exact_match(out, x, truth, chars)}
        print(f"\nexact-match on {len(x)} held-out rendered lines (seed 1):")
        for k, v in em.items():
            print(f"  {k:18s} {v:.3f}  ({v / max(em['dense float'], 1e-9):.3f} of dense float)")
        lat = latency({"int8": qop, "pruned int8": out}, x[:1])
        print("ORT latency at 1x3x48x320, 2 threads, median of 20 interleaved: "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in lat.items())
              + f" ({lat['int8'] / lat['pruned int8']:.2f}x); load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
