"""report.html of the sample, rendered by a real headless Chromium (Debian's `chromium`,
installed by scripts/install-test-deps.sh): every figure is present, decodes in the browser
to a non-zero size, and has ink on it; the page itself renders (a screenshot that is not
blank). Skipped only when chromium is missing outside CI (with CI set it must run)."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from graphprune.cli.main import main

# --calib without --criterion/--repair: a search ran, so its candidate plot is there too (two
# candidates are enough for the plot; each one runs its own sensitivity sweep)
FIGURES = {"output width per layer", "MACs per layer", "latency per layer", "sensitivity curves", "candidate trade-off"}


def _chromium() -> str:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/install-test-deps.sh installs it); CI must not skip")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


def _run(exe: str, *args: str) -> str:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def _sample_report(samples_dir, tmp_path):
    pytest.importorskip("matplotlib")
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "small.onnx"
    assert main(["prune", str(samples_dir / "tiny_resnet.onnx"), "-o", str(out), "--allocation", "sensitivity",
                 "--calib", str(calib), "--max-drop", "0.9", "--round-to", "8", "--search-budget", "2"]) == 0
    return tmp_path / "small.report.html"


def test_report_html_renders_every_figure_in_chromium(samples_dir, tmp_path):
    exe = _chromium()
    page = _sample_report(samples_dir, tmp_path)
    html = page.read_text()
    alts = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([^']+)'>", html)
    assert {a for a, _ in alts} == FIGURES
    from matplotlib.image import imread

    for alt, data in alts:  # each figure has ink: not one flat colour
        img = imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100 and float(img[..., :3].std()) > 0.05, alt
    # the browser's view: every <img> decoded to a non-zero natural size
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", "<script>window.onload = () => document.body.setAttribute('data-imgs',"
                                  " JSON.stringify([...document.images].map(i => [i.alt, i.naturalWidth,"
                                  " i.naturalHeight])));</script></body>"))
    dom = _run(exe, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    imgs = json.loads(re.search(r'data-imgs="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert {a for a, _, _ in imgs} == FIGURES and all(w > 100 and h > 100 for _, w, h in imgs), imgs
    shot = tmp_path / "report.png"
    _run(exe, "--window-size=1200,2000", f"--screenshot={shot}", page.as_uri())
    px = imread(str(shot))[..., :3]
    assert px.shape[:2] == (2000, 1200) and float((px.min(axis=2) < 0.9).mean()) > 0.02  # not a blank page
    if os.environ.get("GRAPHPRUNE_REPORT_PNG"):  # docs/report.png is made with this test
        shutil.copy(shot, os.environ["GRAPHPRUNE_REPORT_PNG"])
