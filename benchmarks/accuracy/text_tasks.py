"""The two transformer tasks of the accuracy table, built on the helpers of
benchmarks/transformers (export, text data, embeddings, perplexity) — imported, not copied.

* ``minilm``: all-MiniLM-L6-v2 exported to ONNX; metric = mean cosine between each of 200
  sentences' pruned and dense embeddings (mean-pooled, L2-normalised); calibration =
  32 other sentences of pydoc_data.topics in 4 batches of 8. The defaults rows add
  retrieval R@1 (`r_at_1`): the 200 evaluation sentences are queries, the corpus is the
  other sentences of pydoc_data.topics (duplicates of a query removed), query and corpus
  both embedded by the model under test; R@1 = fraction of queries whose nearest corpus
  sentence (cosine) is the same one the dense model retrieves (dense: 1 by definition);
  and a retrieval with known answers (`R@1 labeled`): the first half of the words of each
  evaluation sentence of 8 words or more is a query whose answer is its whole sentence, in
  a corpus of the evaluation sentences and the other sentences (dense: below 1).
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


def _without_broken_torchvision() -> None:
    """transformers imports torchvision when it is installed; a torchvision built for another
    torch fails on import (``operator torchvision::nms does not exist``) and takes every
    model class with it. These tasks need no torchvision: tell transformers it is absent."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001  (a RuntimeError from its C extension, or ImportError)
        for k in [k for k in sys.modules if k.split(".")[0] == "torchvision"]:
            del sys.modules[k]
        import transformers.utils as tu
        import transformers.utils.import_utils as iu

        iu.is_torchvision_available = tu.is_torchvision_available = lambda: False


_without_broken_torchvision()

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
        self._enc, self._sents, self._ev = enc, sents, ev
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

    # ---- the defaults rows (issue 13) -------------------------------------------------------
    def goal_calibration(self):
        """The grid's 32 calibration sentences, as a new object (nothing cached carries over)."""
        from graphprune.runtime.calibration import Calibration

        return Calibration(self.calib.make, self.calib.description, self.calib.num_batches)

    def _corpus(self) -> dict:
        if getattr(self, "_corpus_enc", None) is None:
            ev = set(self._sents[::5])
            seen, corpus = set(), []
            for x in (x for k in (1, 2, 3, 4) for x in self._sents[k::5]):
                if x not in ev and x not in seen:
                    seen.add(x)
                    corpus.append(x)
            self.corpus_size = len(corpus)
            self._corpus_enc = self._enc(corpus)
            self._dense_top1 = self._top1(self.dense_emb, self.path)
        return self._corpus_enc

    def _top1(self, queries: np.ndarray, model) -> np.ndarray:
        from graphprune.runtime import ort

        sess = C.ort_session(model) if isinstance(model, (str, Path)) else ort.session(model, threads=2)
        corpus = self._embed(sess, self._corpus())
        return (queries @ corpus.T).argmax(1)

    def r_at_1(self, model, emb: np.ndarray | None = None) -> float:
        self._corpus()
        e = self.embeddings(model) if emb is None else emb
        return float((self._top1(e, model) == self._dense_top1).mean())

    def _halves(self) -> dict:
        """Queries with a known answer: the first half of the words of each evaluation sentence
        of at least 8 words. Its answer is the whole sentence, among all evaluation sentences
        and the corpus of other sentences."""
        if getattr(self, "_halves_enc", None) is None:
            idx = [i for i, x in enumerate(self._ev) if len(x.split()) >= 8]
            self._half_idx = np.array(idx)
            self._halves_enc = self._enc([" ".join(self._ev[i].split()[:len(self._ev[i].split()) // 2]) for i in idx])
        return self._halves_enc

    def goal_metrics(self, model) -> dict:
        """cosine vs dense; R@1 = nearest-neighbour agreement with dense (dense: 1); R@1
        labeled = half a sentence retrieves its whole sentence (dense: below 1)."""
        from graphprune.runtime import ort

        corpus_enc, halves_enc = self._corpus(), self._halves()
        sess = C.ort_session(model) if isinstance(model, (str, Path)) else ort.session(model, threads=2)
        e, corpus, halves = (self._embed(sess, x) for x in (self.enc, corpus_enc, halves_enc))
        labeled = (halves @ np.concatenate([e, corpus]).T).argmax(1)  # evaluation sentences first
        return {"cosine": float((e * self.dense_emb).sum(1).mean()),
                "R@1": float(((e @ corpus.T).argmax(1) == self._dense_top1).mean()),
                "R@1 labeled": float((labeled == self._half_idx).mean())}

    def goal_description(self) -> str:
        self._corpus()
        self._halves()
        return f"cosine: {len(self.dense_emb)} sentences; R@1: {len(self.dense_emb)} queries, corpus of " \
               f"{self.corpus_size} other sentences; R@1 labeled: {len(self._half_idx)} half-sentence queries, " \
               f"answer = the whole sentence among {len(self.dense_emb) + self.corpus_size}"


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

    def goal_calibration(self):
        from graphprune.runtime.calibration import Calibration

        return Calibration(self.calib.make, self.calib.description, self.calib.num_batches)

    def goal_metrics(self, model) -> dict:
        return {"perplexity": self.evaluate(model)}

    def goal_description(self) -> str:
        return f"perplexity: {self.eval_size}"

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
