"""Choosing criterion, allocation and repair when the user did not: a candidate search.

With calibration data and no explicit `--criterion`, `--allocation` or `--repair`, the
run does not fall back to L2 magnitude (which, measured on PP-OCRv4 rec at 70% MACs,
reads 0% of text lines). It tries the configurations the accuracy benchmarks found best
(benchmarks/accuracy/results.md), in that order, each pruned and repaired on most of the
calibration samples and scored on the rest — the held-back samples, clean and perturbed
(noise, contrast, offset at a strength the dense model is stable under), so a repair that
only fits the calibration style loses. The best configuration is then run as usual on all
the data, oracle included; the table of candidates lands in the outcome and the reports.

Without calibration data: L2 magnitude and no repair (there is nothing to measure with),
and the verbs say that accuracy was not measured.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from graphprune.errors import UsageError
from graphprune.workflow.options import DEFAULT_MAX_DROP, PruneOptions  # noqa: F401  (DEFAULT_MAX_DROP: re-exported)
from graphprune.workflow.progress import Progress

log = logging.getLogger(__name__)

AUTO = "auto"
STABLE_COSINE = 0.98  # a perturbation is used only when the dense model's outputs stay this close
PERTURBATION_STRENGTHS = (1.0, 0.5, 0.25)  # tried strongest first
# held-back outputs below which a figure judged on them is said to be rough: the search's
# ranking and the quality gate's figure (the det defaults row judged 2 pages)
FEW_HELD_BACK = 8


@dataclass(frozen=True)
class Candidate:
    criterion: str
    allocation: str
    repair: str | None
    blocks: int = 0  # residual blocks removed first (depth), the rest of the MAC target by width

    @property
    def name(self) -> str:
        return (f"{self.criterion}/{self.allocation}" + (f" + {self.repair}" if self.repair else "")
                + (f" + {self.blocks} blocks" if self.blocks else ""))


# Best first (benchmarks/accuracy/results.md, 30% of MACs removed: wanda with bias+lsq repair
# wins on rec, cls, det and MiniLM; uniform vs global depends on the model).
CANDIDATES = (
    Candidate("wanda", "uniform", "bias,lsq"),
    Candidate("wanda", "global", "bias,lsq"),
    Candidate("activation", "uniform", "bias,lsq"),
    Candidate("l2", "uniform", "bias,lsq"),
)
# No calibration data: no repair. The data-free `bn-fold` repair is opt-in: measured, it does not help on
# average (benchmarks/accuracy/bn_fold.py; README "Without --calib").
FALLBACK = Candidate("l2", "uniform", None)


def chooses_channels(opts: PruneOptions) -> bool:
    """graphprune decides what to remove (not a replayed plan, a selection or a pipeline)."""
    return bool(opts.prune) and opts.pipeline is None and opts.plan is None and opts.selection is None


def wants_search(opts: PruneOptions) -> bool:
    """Calibration data, channels to choose, and something left for the search to choose."""
    open_choice = opts.criterion == AUTO or opts.repair == AUTO or "allocation" not in opts.allocation
    return opts.calib is not None and chooses_channels(opts) and open_choice


def candidates(opts: PruneOptions) -> list[Candidate]:
    """The candidates consistent with what the user fixed, best first, without repeats."""
    out: list[Candidate] = []
    for c in CANDIDATES:
        c = Candidate(c.criterion if opts.criterion == AUTO else opts.criterion,
                      opts.allocation.get("allocation", c.allocation),
                      c.repair if opts.repair == AUTO else opts.repair)
        if c not in out:
            out.append(c)
    return out[:max(1, opts.search_budget)]


def with_candidate(opts: PruneOptions, c: Candidate) -> PruneOptions:
    alloc = dict(opts.allocation)
    alloc["allocation"] = c.allocation
    depth = {"remove_blocks": c.blocks, "block_criterion": "influence"} if c.blocks else {}
    return dataclasses.replace(opts, criterion=c.criterion, allocation=alloc, repair=c.repair, **depth)


DEPTH_SHARE = 0.5  # a depth candidate removes blocks worth at most this share of the MACs to remove


def wants_depth(opts: PruneOptions) -> bool:
    """A depth + width candidate is worth trying: the user fixed no blocks, and the search
    may evaluate more candidates than the width ones (`--search-budget`)."""
    return not (opts.remove_blocks or opts.blocks) and opts.search_budget > len(candidates(opts))


def depth_candidate(model, first: Candidate, calibration, kept_macs: float) -> Candidate | None:
    """The first candidate with the least influential residual blocks removed first (block
    influence on the calibration data, ShortGPT-style), as many as fit in DEPTH_SHARE of the
    MACs the target removes; width pruning then meets the same target. None when no block fits."""
    from graphprune.analysis.blocks import find_residual_blocks
    from graphprune.analysis.cost import layer_macs
    from graphprune.passes.pruning.prune_blocks import block_influence, branch_zeroing

    blocks = [b for b in find_residual_blocks(model) if branch_zeroing(b, model) is not None]
    if not blocks:
        return None
    macs = layer_macs(model)
    dense = max(sum(macs.values()), 1)
    influence = block_influence(model, blocks, list(calibration.batches()) if calibration is not None else None)
    budget, n = DEPTH_SHARE * (1.0 - kept_macs) * dense, 0
    for b in sorted(blocks, key=lambda b: influence[b.id]):
        cost = sum(macs.get(name, 0) for name in b.nodes)
        if cost > budget:
            break
        budget -= cost
        n += 1
    return dataclasses.replace(first, blocks=n) if n else None


def resolve_without_search(opts: PruneOptions) -> PruneOptions:
    """`auto` choices with no search: the first candidate with data, magnitude and no
    repair without (or when the channels come from a plan, a selection or a pipeline)."""
    first = candidates(opts)[0] if opts.calib is not None and chooses_channels(opts) else FALLBACK
    return dataclasses.replace(opts, criterion=first.criterion if opts.criterion == AUTO else opts.criterion,
                               repair=first.repair if opts.repair == AUTO else opts.repair)


# ---- the data: fit on some samples, score on the others ------------------------------------
def split(batches: list[dict]) -> tuple[list[dict], list[dict], str]:
    """(fit batches, held-back batches, how): every fourth batch when there are four or
    more, else the last quarter of each batch's samples."""
    if len(batches) >= 4:
        return ([b for k, b in enumerate(batches) if k % 4 != 3], [b for k, b in enumerate(batches) if k % 4 == 3],
                "every 4th batch held back")
    sizes = {np.shape(v)[0] if np.ndim(v) else 0 for b in batches for v in b.values()}
    n = min(sizes) if sizes else 0
    if len(sizes) != 1 or n < 2:
        return batches, batches, "too few samples to hold any back: candidates scored on the data they were fit on"
    k = max(1, n // 4)
    return ([{key: v[:n - k] for key, v in b.items()} for b in batches],
            [{key: v[n - k:] for key, v in b.items()} for b in batches], f"last {k} of every {n} samples held back")


def perturb(feeds: dict, rng, strength: float) -> dict:
    """A cheap augmentation of the float inputs: contrast, offset and noise, scaled by the
    input's own spread. Integer inputs (token ids, masks) are left as they are."""
    out = {}
    for k, v in feeds.items():
        a = np.asarray(v)
        if a.dtype.kind != "f" or a.ndim < 2:
            out[k] = a
            continue
        std = float(a.std()) or 1.0
        shape = (a.shape[0],) + (1,) * (a.ndim - 1)
        c = 1.0 - strength * rng.uniform(0.0, 0.3, shape)
        b = strength * std * rng.uniform(-0.2, 0.2, shape)
        out[k] = (a * c + b + strength * 0.1 * std * rng.normal(size=a.shape)).astype(a.dtype)
    return out


def stable_perturbations(dense, held: list[dict], seed: int) -> tuple[list[dict], float, str]:
    """Perturbed copies of the held-back batches at the largest strength (1, 1/2, 1/4) under
    which the dense model's outputs keep a mean cosine ≥ STABLE_COSINE; none when none is.
    Also says why there are none (the table prints it: the two reasons ask different things
    of the user)."""
    cos = 1.0
    for strength in PERTURBATION_STRENGTHS:
        rng = np.random.default_rng(seed)
        pert = [perturb(b, rng, strength) for b in held]
        if all(p[k] is b[k] for p, b in zip(pert, held, strict=True) for k in b):
            return [], 0.0, "no float input to perturb"
        pairs = [(b, p) for b, p in zip(held, pert, strict=True)]
        cos = _cosine_between(dense, pairs)
        if cos >= STABLE_COSINE:
            return pert, strength, ""
    return [], 0.0, (f"the dense model's outputs moved to cosine {cos:.3f} under the weakest perturbation "
                     f"(strength {PERTURBATION_STRENGTHS[-1]:g}; {STABLE_COSINE:g} needed)")


def _cosine_between(model, pairs) -> float:
    """Mean cosine of the model's outputs on each clean batch and its perturbed copy, per
    sample as the scorer measures it (runtime.oracle.sample_cosines)."""
    from graphprune.runtime.oracle import sample_cosines
    from graphprune.runtime.ort import session
    from graphprune.runtime.positions import token_mask

    s = session(model)
    cos = []
    for clean, pert in pairs:
        tokens = token_mask(clean)
        for a, b in zip(s.run(None, clean), s.run(None, pert), strict=True):
            cos.extend(sample_cosines(a, b, tokens))
    return float(np.mean(cos)) if cos else 1.0


# ---- scoring ---------------------------------------------------------------------------------
def user_score(spec: str):
    """`--score module:function` (or path/to/file.py:function): function(session) -> float,
    higher is better; the session is an onnxruntime.InferenceSession of the candidate."""
    from graphprune.runtime.calibration import load_callable

    return load_callable(spec, "--score")


def decision_outputs(model) -> list[int]:
    """Indices of the graph outputs made by Softmax / LogSoftmax over their last axis (class
    or token scores): a user's metric reads their argmax (accuracy, exact-match), not how
    close the probabilities are."""
    out = []
    for k, v in enumerate(model.graph.outputs):
        p = v.producer()
        while p is not None and p.op_type in ("Identity", "Cast"):
            p = p.inputs[0].producer() if p.inputs and p.inputs[0] is not None else None
        if p is None or p.op_type not in ("Softmax", "LogSoftmax"):
            continue
        a = p.attributes.get("axis")
        axis = -1 if a is None else int(a.value)
        rank = len(v.shape) if v.shape is not None else None
        if axis == -1 or (rank is not None and axis == rank - 1):
            out.append(k)
    return out


class Scorer:
    """Scores a candidate model: the user's function; or, against the dense model on the
    held-back samples and their perturbed copies, the mean output cosine (`score`) and, for
    a model whose outputs are softmax scores, the share of samples whose decisions are all
    unchanged (`decisions`, over `decision_samples` samples: shown, see `best`)."""

    def __init__(self, dense, held: list[dict], perturbed: list[dict], score_spec: str | None,
                 cosine_name: str = "output cosine on held-back samples"):
        self.dense, self.held, self.perturbed = dense, held, perturbed
        self.held_back_fidelity: dict | None = None  # output_fidelity on `held` of the last model scored
        self.fn = user_score(score_spec) if score_spec else None
        self.decisions = decision_outputs(dense) if self.fn is None and hasattr(dense, "graph") else []
        self.name = f"user score {score_spec}" if score_spec else \
            (cosine_name + "; unchanged decisions (argmax of the softmax outputs) shown, not scored"
             if self.decisions else cosine_name)

    def __call__(self, model) -> dict:
        from graphprune.runtime.oracle import output_fidelity
        from graphprune.runtime.ort import session

        if self.fn is not None:
            self.held_back_fidelity = output_fidelity(self.dense, model, self.held)  # what the gate judges
            return {"score": self._user_score(session(model))}
        sets = [("held_back", self.held)] + ([("perturbed", self.perturbed)] if self.perturbed else [])
        row, cos, dec, n, err = {}, [], [], 0, []
        for name, batches in sets:
            fid = output_fidelity(self.dense, model, batches, self.decisions)  # one run: cosine and decisions
            if name == "held_back":
                self.held_back_fidelity = fid
            if self.decisions:
                dec.append(fid["decisions"])
                n += fid["decision_samples"]
                row[f"decisions_{name}"] = round(dec[-1], 5)
            cos.append(fid["mean_cosine"])
            err.append(fid["relative_error"])
            row[f"cosine_{name}"] = round(cos[-1], 5)
        score = {"score": round(float(np.mean(cos)), 5), "relative_error": round(float(np.mean(err)), 6)}
        if dec:
            score.update(decisions=round(float(np.mean(dec)), 5), decision_samples=n)
        return {**score, **row}

    def _user_score(self, sess) -> float:
        """The user's score of one candidate: a finite number (NaN made every candidate
        'nan' and the first one won without a word)."""
        value = self.fn(sess)
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = float("nan")
        if not np.isfinite(score):
            raise UsageError(f"{self.name} returned {value!r}: a score must be a finite number (higher is better)")
        return score


def best(rows: list[dict]) -> int:
    """The chosen candidate: the highest score (output cosine, or the user's). Unchanged
    decisions are shown beside it, not used: measured on PP-OCR with 8-16 held-back samples
    (benchmarks/accuracy/README.md, "search score"), choosing by them met one goal and lost
    elsewhere by as much — a held-back set that small cannot rank candidates a few per cent
    apart, whichever of the two is read. Equal scores (PP-OCR cls: a 2-class output compared
    on its centred logits scores 1.0 per sample whenever its decision holds, so every
    candidate scored 1.0 and the first won) are told apart by the outputs' relative error,
    which sees how far the logits moved."""
    return max(range(len(rows)), key=lambda k: (rows[k]["score"], -rows[k].get("relative_error", 0.0)))


# ---- the search --------------------------------------------------------------------------------
def search(model, opts: PruneOptions, calibration, progress, run_prune) -> tuple[PruneOptions, dict]:
    """Evaluate the candidates on copies of `model` with `run_prune` (the workflow's own, passed
    in: the search is a step of it); the options of the best and the table."""
    from graphprune.ir.serialize import clone
    from graphprune.passes.reconstruction.lsq import DENSE_ROWS, DenseRows
    from graphprune.runtime.calibration import Calibration

    cands = candidates(opts)
    info = {"candidates": [], "budget": opts.search_budget}
    if len(cands) == 1:
        info.update(chosen=cands[0].name, note="one candidate: nothing to compare")
        return with_candidate(opts, cands[0]), info
    batches = list(calibration.batches())
    fit, held, how = split(batches)
    perturbed, strength, why_none = stable_perturbations(model, held, opts.seed)
    scorer = Scorer(model, held, perturbed, opts.score)
    info.update(split=how, score=scorer.name, perturbation_strength=strength)
    if why_none:
        info["no_perturbed_copies"] = why_none
    fit_calib = Calibration.from_batches(fit, f"{calibration.description} (search: fit part)")
    # every candidate is a copy of `model` fit on these batches: the dense model's layer
    # outputs that lsq-reconstruct fits to are computed once, for all of them
    fit_calib.cache[DENSE_ROWS] = DenseRows()
    t0 = time.time()
    same_cost = opts
    depth = wants_depth(opts)
    held_back: list[dict] = []  # per candidate: its fidelity on the held-back samples
    i = 0
    while i < len(cands):
        c = cands[i]
        t = time.time()
        # a candidate is compared without sparsity (trial_options: nor oracle, gate, vocabulary slicing)
        trial = dataclasses.replace(trial_options(with_candidate(opts if i == 0 else same_cost, c), fit_calib),
                                    sparsity=None)
        with _trial_logging():
            out = run_prune(clone(model), trial, progress=_TrialProgress())
        kept = out.after.macs / max(out.before.macs, 1)
        # (a model without MACs has no kept fraction to compare at: the candidates keep the ratio)
        if i == 0 and out.before.macs > 0 and not any(k.startswith("target_") for k in opts.allocation):
            # a ratio removes different MACs under different allocations: compare at the first one's cost
            same_cost = dataclasses.replace(opts, allocation={**opts.allocation, "target_macs": round(kept, 4)})
            info["same_cost"] = f"candidates after the first meet its kept MACs ({kept:.3f})"
        scored = scorer(out.model)
        held_back.append(scorer.held_back_fidelity)
        row = {"name": c.name, "criterion": c.criterion, "allocation": c.allocation, "repair": c.repair,
               **({"blocks": c.blocks} if c.blocks else {}),
               **({"repair_changed": any(r.get("changed", True) for r in out.repair or [])} if c.repair else {}),
               **scored, "kept_macs": round(kept, 4), "seconds": round(time.time() - t, 1)}
        info["candidates"].append(row)
        if i == 0 and depth:  # the depth + width mix, at the first candidate's cost
            target = float(same_cost.allocation.get("target_macs", kept))
            d = depth_candidate(model, c, fit_calib, target)
            info["depth"] = d.name if d is not None else "no residual block fits in the MACs to remove"
            if d is not None:
                cands.append(d)
        eta = (time.time() - t0) / (i + 1) * (len(cands) - i - 1)
        progress.candidate(i + 1, len(cands), row, eta)
        i += 1
    cached = fit_calib.cache[DENSE_ROWS]
    info["dense_rows_cached"] = {"reads": cached.hits, "megabytes": round(cached.nbytes / 2**20, 1)}
    k = best(info["candidates"])
    info["chosen"] = cands[k].name
    if fit is not held:  # the quality gate's figure (see held_back_estimate)
        info["held_back_fidelity"] = {**held_back[k], "held_back": how}
        info["held_back_samples"] = held_back[k]["samples"]
    return with_candidate(opts if k == 0 else same_cost, cands[k]), info


def trial_options(opts: PruneOptions, fit_calib) -> PruneOptions:
    """A trial run of `opts` on the fit part of the calibration data, as the search's
    candidates and the gate's held-back estimate run it: no oracle, no gate, no search of
    its own, the input's token ids (no vocabulary slicing)."""
    return dataclasses.replace(opts, calib=fit_calib, check=False, max_drop=None, inputs=None, search_budget=1,
                               keep_tokens=None)


def fits_to_calibration(opts: PruneOptions) -> bool:
    """A repair (or a SparseGPT-style sparsifier) of these options changes weights to fit the
    calibration data, so that data no longer judges the result fairly."""
    from graphprune.passes import PassManager
    from graphprune.passes.reconstruction import DATA_FREE
    from graphprune.passes.reconstruction.repair import repair_passes, split_repair

    names = set(repair_passes(opts.repair))
    sparsifiers = [opts.sparsity or {}]
    if opts.pipeline:
        pruning, rest = split_repair(PassManager.parse(opts.pipeline))
        names |= {p.name for p in rest.passes} if rest is not None else set()
        sparsifiers += [p.options for p in pruning.passes if p.name == "sparsify"]  # sparsify{criterion=sparsegpt}
    return bool(names - DATA_FREE) or any(s.get("criterion") == "sparsegpt" for s in sparsifiers)


def held_back_estimate(model, opts: PruneOptions, calibration, run_prune) -> dict | None:
    """The output fidelity the quality gate judges when a repair fits weights to the
    calibration data: that of the same configuration run on the fit part of the data
    (`split`), measured on the held-back part, which no repair saw. Measured on data the
    repair was fit to, lsq-reconstruct passed a model whose drop on other inputs was ~9x
    --max-drop (its in-sample drop 0.016). The search gives this figure for its chosen
    candidate; without a search this is one more run of the configuration. None when too
    few samples can be held back."""
    from graphprune.ir.serialize import clone
    from graphprune.runtime.calibration import Calibration
    from graphprune.runtime.oracle import output_fidelity

    fit, held, how = split(list(calibration.batches()))
    if fit is held:
        return None
    trial = trial_options(opts, Calibration.from_batches(fit, f"{calibration.description} (fit part)"))
    with _trial_logging():
        out = run_prune(clone(model), trial, progress=_TrialProgress())
    return {**output_fidelity(model, out.model, held), "held_back": how}


class _TrialProgress(Progress):
    """A candidate's run keeps its notes and repair lines in the debug log: the chosen
    configuration's own run says them once, where the summary and the report show them."""

    def note(self, text: str) -> None:
        log.debug("candidate run: %s", text)

    def repair(self, report: dict) -> None:
        from graphprune.workflow.verdicts import repair_line

        log.debug("candidate run: %s", repair_line(report))


class _DebugHandlersOnly(logging.Filter):
    """Passes a record to its handler only when that handler shows debug records (errors always)."""

    def __init__(self, threshold: int):
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        return self.threshold <= logging.DEBUG or record.levelno >= logging.ERROR


@contextmanager
def _trial_logging():
    """What the passes log during a candidate's trial run (repair errors, lsq's warnings, ...)
    reaches only handlers that show debug records (`--log-file`, `-v`), not the terminal: the
    chosen configuration's run logs the same things once, and the candidate table sums up
    the trials. Filters on the handlers, not a logger level, so the debug log keeps them."""
    attached = []
    lg: logging.Logger | None = logging.getLogger("graphprune")
    while lg is not None:
        for h in lg.handlers:
            # a handler without a level shows what its logger lets through (basicConfig: root's level)
            f = _DebugHandlersOnly(h.level or lg.level or logging.WARNING)
            h.addFilter(f)
            attached.append((h, f))
        lg = lg.parent if lg.propagate else None
    try:
        yield
    finally:
        for h, f in attached:
            h.removeFilter(f)


def table(info: dict) -> list[str]:
    """The candidate table as text lines (for the terminal summary)."""
    rows = info.get("candidates") or []
    if not rows:
        return [f"search: {info.get('chosen')} ({info.get('note', '')})"] if info.get("chosen") else []
    extra = [k for k in ("decisions_held_back", "decisions_perturbed", "cosine_held_back", "cosine_perturbed")
             if k in rows[0]]
    pert = (f"; perturbed copies at strength {info['perturbation_strength']:g}" if "cosine_perturbed" in extra else
            f"; no perturbed copies: {info.get('no_perturbed_copies', 'none made')}" if extra else "")
    lines = [f"search: {len(rows)} candidates scored by {info['score']} ({info['split']}{pert})",
             "  " + "  ".join(["candidate".ljust(34), "score".rjust(8), *[k.rjust(16) for k in extra],
                               "kept MACs".rjust(9), "s".rjust(6)])]
    for r in rows:
        mark = "*" if r["name"] == info.get("chosen") else " "
        lines.append(mark + " " + "  ".join([r["name"].ljust(34), f"{r['score']:8.4f}",
                                             *[f"{r[k]:16.4f}" for k in extra], f"{r['kept_macs']:9.3f}",
                                             f"{r['seconds']:6.0f}"]))
    idle = [r["name"] for r in rows if r.get("repair_changed") is False]
    if idle:
        which = "any candidate" if len(idle) == len(rows) else ", ".join(idle)
        lines.append(f"  (the repair changed no layer in {which}: those scores are the pruning's alone)")
    if info.get("held_back_samples", FEW_HELD_BACK) < FEW_HELD_BACK:
        lines.append(f"  (ranked on {info['held_back_samples']} held-back output(s): candidates a few per cent apart "
                     "are not told apart reliably; more --calib samples make the ranking firmer)")
    chosen = next((r for r in rows if r["name"] == info.get("chosen")), None)
    if chosen is not None and sum(r["score"] == chosen["score"] for r in rows) > 1 and "relative_error" in chosen:
        lines.append(f"  (tied on score: chosen by the smaller relative error of the compared outputs, "
                     f"{chosen['relative_error']:.4g})")
    lines.append(f"chosen: {info.get('chosen')}")
    return lines
