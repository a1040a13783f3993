"""The three PP-OCR tasks of the accuracy table (data and metrics in ocr_data.py):
evaluation data, calibration data (disjoint: other seeds) and the metric of a model.

The defaults rows (issue 13) use `goal_calibration` and `goal_metrics`: for the recognizer,
64 calibration lines of the default font at 3×48×320 and two held-out sets of 200 lines,
in-domain (the calibration style) and shifted (other fonts, contrast, noise)."""
from __future__ import annotations

import os

import numpy as np

import ocr_data as D
from graphprune.runtime import ort
from graphprune.runtime.calibration import Calibration

FILES = {"rec": D.REC, "det": D.DET, "cls": D.CLS}


class OcrTask:
    higher_better = True
    sens_ratios = [0.2, 0.4, 0.6, 0.8]

    def __init__(self, name: str, quick: bool = False, calib_size: int | None = None):
        self.name, self.file, self.quick = name, FILES[name], quick
        self.path = os.path.join(D.MODELS, self.file)
        n = 16 if quick else None
        if name == "rec":
            self.x, self.truth = D.rec_set(n or 96, seed=1)
            self.chars = D.characters(self.path)
            self.metric_name = "exact-match"
        elif name == "det":
            self.x, self.truth = D.det_set(4 if quick else 8, seed=2)
            self.metric_name = "line recall@IoU.5"
        else:
            self.x, self.truth = D.cls_set(n or 128, seed=3)
            self.metric_name = "accuracy"
        self.eval_size = f"{len(self.x)} {'pages' if name == 'det' else 'lines'}"
        self.calib = self.calibration(calib_size, quick)
        self.oracle_inputs = [self.calib.first()]

    def calibration(self, size: int | None = None, quick: bool = False) -> Calibration:
        """Rendered calibration data (seeds 100-102, never used for evaluation); `size`
        lines / pages (default rec 16, det 8, cls 32)."""
        if self.name == "rec":
            cx, _ = D.rec_set(size or (8 if quick else 16), seed=100)
            return Calibration.from_batches([{"x": cx[i:i + 8]} for i in range(0, len(cx), 8)],
                                            f"{len(cx)} rendered lines")
        if self.name == "det":
            cx, _ = D.det_set(size or (4 if quick else 8), seed=101)
            return Calibration.from_batches([{"x": np.concatenate(cx[i:i + 2])} for i in range(0, len(cx), 2)],
                                            f"{len(cx)} rendered pages")
        cx, _ = D.cls_set(size or (16 if quick else 32), seed=102)
        return Calibration.from_batches([{"x": cx[i:i + 16]} for i in range(0, len(cx), 16)],
                                        f"{len(cx)} rendered lines (half rotated)")

    def evaluate(self, model) -> float:
        return self._score(ort.session(model, threads=2), self.x, self.truth)

    def _score(self, s, x, truth) -> float:
        if self.name == "rec":
            p = np.concatenate([s.run(None, {"x": x[i:i + 16]})[0] for i in range(0, len(x), 16)])
            return D.exact_match(D.ctc_greedy(p, self.chars), truth)
        if self.name == "det":
            preds = [D.boxes_from_map(s.run(None, {"x": a})[0]) for a in x]
            return D.det_recall(preds, truth)[0]
        o = np.concatenate([s.run(None, {"x": x[i:i + 64]})[0] for i in range(0, len(x), 64)])
        return float((o.argmax(1) == truth).mean())

    # ---- the defaults rows (issue 13) -------------------------------------------------------
    GOAL_CALIB_LINES = 64  # rec: the setup, 64 rendered lines at 3x48x320
    HELDOUT_LINES = 200

    def goal_calibration(self) -> Calibration:
        """rec: 64 rendered lines of the default font (seed 100) at 3×48×320, batches of 8 (as
        `--calib calib.npz` with the default --calib-batch 8 would give); det/cls: the grid's
        data. A new object per call: nothing cached by one run reaches the next."""
        if self.name != "rec":
            return self.calibration(None, self.quick)
        cal = self.calibration(self.GOAL_CALIB_LINES)
        cal.description = f"{self.GOAL_CALIB_LINES} rendered lines of the default font, 3x48x320"
        return cal

    def goal_sets(self) -> dict:
        """name -> (inputs, truth). rec: 200 in-domain lines (seed 1) and 200 shifted lines
        (DejaVu fonts, contrast/brightness, noise; seed 7); det/cls: the grid's evaluation set."""
        if getattr(self, "_goal_sets", None) is None:
            if self.name == "rec":
                n = 16 if self.quick else self.HELDOUT_LINES
                self._goal_sets = {"in-domain": D.rec_set(n, seed=1), "shifted": D.shifted_set(n, seed=7)}
            else:
                self._goal_sets = {self.metric_name: (self.x, self.truth)}
        return self._goal_sets

    def goal_metrics(self, model) -> dict:
        s = ort.session(model, threads=2)
        return {k: self._score(s, x, t) for k, (x, t) in self.goal_sets().items()}

    def goal_description(self) -> str:
        return ", ".join(f"{k}: {len(t)} {'pages' if self.name == 'det' else 'lines'}"
                         for k, (_, t) in self.goal_sets().items())
