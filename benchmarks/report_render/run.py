"""Compile the PP-OCRv4 recognizer (from `rapidocr-onnxruntime`) and render its
report.html in headless Chromium to a PNG, to look at what a user sees.

    apt-get install -y chromium && pip install --no-deps rapidocr-onnxruntime==1.4.4
    python benchmarks/report_render/run.py [--out /tmp/gp-report]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from graphprune.workflow.compile import CompileOptions, compile_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/gp-report")
    args = ap.parse_args()
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        raise SystemExit("pip install --no-deps rapidocr-onnxruntime==1.4.4")
    model = Path(os.path.dirname(spec.origin)) / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    out = Path(args.out)
    rep = compile_model(model, CompileOptions(target="x86", out=str(out / "x86"),
                                              input_shapes={"x": [1, 3, 48, 320]}), log_fn=print)
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chrome is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    png = out / "report.png"
    subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={out / 'chrome-profile'}", "--hide-scrollbars", "--window-size=1200,2400",
                    f"--screenshot={png}", (out / "x86" / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    print(f"backend {rep['backend']['chosen']}; MACs {rep['before']['macs']} -> {rep['after']['macs']}")
    print(f"wrote {png} ({png.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
