"""The two transformer tasks of the accuracy table, built on the helpers of
benchmarks/transformers (export, text data, embeddings, perplexity) — imported, not copied.

* ``minilm``: all-MiniLM-L6-v2 exported to ONNX; metric = mean cosine between each of 200
  sentences' pruned and dense embeddings (mean-pooled, L2-normalised); calibration =
  32 other sentences of pydoc_data.topics in 4 batches of 8.
* ``smollm``: SmolLM2-135M-Instruct (GGUF → float32) exported to ONNX (cached in the work
  directory); metric = perplexity on 16×256 tokens of pydoc_data.topics (lower is
  better); calibration = 4 other 256-token chunks, one per batch.

Models (hundreds of MB) live in a work directory outside the repository.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TF = HERE.parent / "transformers"
if str(TF) not in sys.path:
    sys.path.insert(0, str(TF))

import common as C  # noqa: E402  (benchmarks/transformers/common.py)

WORKDIR = Path(tempfile.gettempdir()) / "graphprune-accuracy"


def workdir(path: str | None) -> Path:
    return C.workdir(path or str(WORKDIR))


class MiniLMTask:
    name, metric_name, higher_better = "minilm", "mean embedding cosine vs dense", True
    sens_ratios = [0.25, 0.5, 0.75]

    def __init__(self, wd: Path, quick: bool = False):
        from transformers import AutoModel, AutoTokenizer

        import minilm as M  # benchmarks/transformers/minilm.py

        self._embed = M.embed
        d = wd / "minilm"
        d.mkdir(parents=True, exist_ok=True)
        mdir = C.minilm_dir()
        tok = AutoTokenizer.from_pretrained(mdir)
        sents = C.sentences()
        ev, cal = sents[::5][:40 if quick else 200], sents[2::5][:32]

        def enc(s):
            e = tok(s, padding=True, truncation=True, max_length=128, return_tensors="np")
            return {k: e[k].astype(np.int64) for k in ("input_ids", "attention_mask")}

        self.enc = enc(ev)
        self._enc, self._sents = enc, sents
        batches = [enc(cal[i:i + 8]) for i in range(0, len(cal), 8)]
        from graphprune.runtime.calibration import Calibration

        self.calib = Calibration.from_batches(batches, "32 sentences of pydoc_data.topics")
        self.oracle_inputs = [{k: v[:8] for k, v in self.enc.items()}]
        self.path = d / "minilm.onnx"
        self.file = "all-MiniLM-L6-v2 (dynamo export, opset 18)"
        self.eval_size = f"{len(ev)} sentences"
        if not self.path.exists():
            hf = AutoModel.from_pretrained(mdir, attn_implementation="eager").eval()
            M.export_onnx(hf, self.enc, self.path)
        self.dense_emb = self.embeddings(self.path)

    def calibration(self, size: int, by_length: bool = False):
        """`size` sentences none of which is an evaluation sentence (those are every 5th; 802
        others exist), in batches of 16. `by_length`: batches of sentences of similar word
        count, so that fewer padding positions enter the importance scores and the
        least-squares rows."""
        from graphprune.runtime.calibration import Calibration

        s = self._sents
        cal = [x for k in (1, 2, 3, 4) for x in s[k::5]][:size]
        if by_length:
            cal.sort(key=lambda x: len(x.split()))
        return Calibration.from_batches([self._enc(cal[i:i + 16]) for i in range(0, len(cal), 16)],
                                        f"{len(cal)} sentences of pydoc_data.topics" +
                                        (", batched by length" if by_length else ""))

    def embeddings(self, model_or_path) -> np.ndarray:
        from graphprune.runtime import ort

        sess = C.ort_session(model_or_path) if isinstance(model_or_path, (str, Path)) else \
            ort.session(model_or_path, threads=2)
        return self._embed(sess, self.enc)

    def evaluate(self, model) -> float:
        e = self.embeddings(model)
        return float((e * self.dense_emb).sum(1).mean())


class SmolLMTask:
    name, metric_name, higher_better = "smollm", "perplexity (lower is better)", False
    sens_ratios = [0.5]  # one point per group: a sweep costs one 540 MB session per point

    def __init__(self, wd: Path, quick: bool = False):
        from transformers import AutoTokenizer

        import smollm as S  # benchmarks/transformers/smollm.py

        self._ppl = S.perplexity
        self.path, info = S.get_onnx(wd)
        tok = AutoTokenizer.from_pretrained(C.smollm_dir(), gguf_file=C.SMOL_GGUF)
        ev, cal = S.text_chunks(tok)
        self.ev = ev[:4] if quick else ev
        from graphprune.runtime.calibration import Calibration

        self.calib = Calibration.from_batches([{"input_ids": cal[i:i + 1]} for i in range(len(cal))],
                                              "4 chunks of 256 tokens of pydoc_data.topics")
        self.oracle_inputs = [{"input_ids": ev[:1, :64]}]
        self.file = f"SmolLM2-135M-Instruct ({info['exporter']} export, cached)"
        self.eval_size = f"{len(self.ev)}x{self.ev.shape[1]} tokens"
        self._tmp = wd / "smollm_eval"
        self._tmp.mkdir(exist_ok=True)

    def evaluate(self, model) -> float:
        import graphprune as gp

        if isinstance(model, (str, Path)):
            return self._ppl(model, self.ev)
        p = self._tmp / "model.onnx"
        gp.save(model, p)
        try:
            return self._ppl(p, self.ev)
        finally:
            for f in self._tmp.glob("model.onnx*"):
                f.unlink()
