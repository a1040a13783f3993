"""The three PP-OCR tasks of the accuracy table (data and metrics in ocr_data.py):
evaluation data, calibration data (disjoint: other seeds) and the metric of a model."""
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
        self.name, self.file = name, FILES[name]
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
        s = ort.session(model, threads=2)
        if self.name == "rec":
            p = np.concatenate([s.run(None, {"x": self.x[i:i + 16]})[0] for i in range(0, len(self.x), 16)])
            return D.exact_match(D.ctc_greedy(p, self.chars), self.truth)
        if self.name == "det":
            preds = [D.boxes_from_map(s.run(None, {"x": a})[0]) for a in self.x]
            return D.det_recall(preds, self.truth)[0]
        o = np.concatenate([s.run(None, {"x": self.x[i:i + 64]})[0] for i in range(0, len(self.x), 64)])
        return float((o.argmax(1) == self.truth).mean())
