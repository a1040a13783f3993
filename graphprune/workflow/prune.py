"""run_prune: the one prune sequence.

    load → plan (pipeline, calibration, plan to replay) → apply → oracle → repair →
    sparsify → quality gate → write (model + plan as one result)

`graphprune prune`, `graphprune compile` (its pruning step), `graphprune.prune`, the
config dry runs and the Olive pass all call it. The verbs only print the outcome: what
happens on the way is reported to a `Progress` (printing, logging, or nothing), so a
verb can show the oracle's verdict before a failure ends the run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from graphprune.errors import OracleMismatchError, UsageError
from graphprune.plan import Plan
from graphprune.workflow import files, pipeline
from graphprune.workflow.options import PruneOptions
from graphprune.workflow.progress import Progress
from graphprune.workflow.state import PipelineState

log = logging.getLogger(__name__)


@dataclass
class PruneOutcome:
    model: ir.Model
    plan: Plan
    state: PipelineState
    source: Path | None = None
    before: Any = None  # analysis.cost of the input model, at `shapes`
    after: Any = None  # ... and of the result
    before_bytes: int | None = None  # input file (+ external data) size
    before_nbytes: int = 0  # the input model's tensors, in bytes
    changed: bool = False  # a pass changed the model
    oracle: Any = None  # OracleResult, None when not run
    rotation_oracle: Any = None  # slice-hidden: the rotated input vs the input (OracleResult)
    vocab_oracle: Any = None  # slice-vocab: the result vs the model before it, ids mapped (OracleResult)
    vocab_out: Path | None = None  # the written id map (<out>.vocab.json)
    shapes: Any = None  # the run's representative input shapes (InputShapes): costs, targets, oracle
    repair: list[dict] = field(default_factory=list)
    sparsity: dict | None = None
    fidelity: dict | None = None
    out: Path | None = None  # written model
    plan_out: Path | None = None  # its plan
    groups_before: Any = None  # dry run: the dependency graph before pruning
    sparsify_passes: list = field(default_factory=list)  # dry run: what would run after the oracle
    search: dict | None = None  # the candidate search (workflow.search): candidates, scores, the chosen one
    budget: dict | None = None  # a target (--target-macs ...) against what the result keeps (verdicts.budget_result)
    nothing_pruned: str | None = None  # why the run removed nothing (verdicts.nothing_pruned_line), else None

    @property
    def calibration(self):
        return self.state.calibration


def run_prune(source: str | Path | ir.Model, opts: PruneOptions | None = None, *, out: str | Path | None = None,
              dry_run: bool = False, progress: Progress | None = None) -> PruneOutcome:
    """Prune `source` (a path, never modified; or an ir.Model, pruned in place). With `out`,
    write the model and its plan (`<out>.plan.json`) as one result; with `dry_run`, apply
    the pruning in memory only and stop before the oracle."""
    from graphprune.errors import ArgumentTypeError

    if opts is not None and not isinstance(opts, PruneOptions):
        raise ArgumentTypeError(f"run_prune: opts must be a PruneOptions, got {type(opts).__name__}",
                                hint="gp.run_prune(path, gp.PruneOptions(ratio=0.3, ...))")
    run = _Run(source, opts or PruneOptions(), Path(out) if out is not None else None, progress or Progress())
    try:
        return run.go(dry_run)
    finally:
        for t in run.temps:  # staged model files of this run: removed on any exit (SIGTERM included)
            files.remove_model(t)


class _Run:
    def __init__(self, source, opts: PruneOptions, out: Path | None, progress: Progress):
        self.opts, self.out, self.progress = opts, out, progress
        self.src = None if isinstance(source, ir.Model) else Path(source)
        self.model = source if isinstance(source, ir.Model) else None
        self.state = PipelineState()
        self.temps: list[Path] = []
        self.staged: Path | None = None
        self.big = False
        self.reference: ir.Model | None = None  # an in-memory input as it came: the oracle's reference
        self.held_back: dict | None = None  # output fidelity on held-back samples no repair fit (the gate's)
        self.input_session = None  # the load's ORT session of the input file (check_runs_at_given_shapes)

    def go(self, dry_run: bool) -> PruneOutcome:
        from graphprune import outputs
        from graphprune.passes.reconstruction.repair import keep_dense

        if self.out is not None and not dry_run:  # before any work: nothing lands on an input or a user's file
            outputs.check_paths(self.input_files(), files=self.output_files())
            if self.out.suffix != ".onnx":  # (the CLI says so too; an extensionless model file was written)
                raise UsageError(f"out {self.out} should end in .onnx", hint=f"e.g. out={self.out}.onnx")
            files.check_sidecars(self.out, vocab=bool(self.opts.keep_tokens or self.opts.plan))
        outcome = self.load()
        self.load_calibration()
        self.check_runs_at_given_shapes()
        self.choose(outcome, dry_run)
        pm, repair_pm, sparsify_passes = self.plan_step()
        self.check_tokens()
        self.resolve_shapes(outcome)
        if dry_run:
            return self.dry(outcome, pm, sparsify_passes)
        keep_dense(self.state.ctx, self.opts.repair, repair_pm)  # a repair reads the dense weights
        self.apply(outcome, pm)
        self.stage_big()
        self.check(outcome)
        self.repair(outcome, repair_pm)
        self.sparsify(outcome, sparsify_passes)
        self.gate(outcome)
        self.vocabulary(outcome)
        if self.out is not None:
            self.write(outcome)
        outcome.model = self.model
        if not self.opts.figures:
            return outcome
        outcome.after = _cost(self.model, outcome.shapes)
        from graphprune.workflow.verdicts import budget_result, nothing_pruned_line

        # with no target of the user's, the search's common cost is told as what it is
        by_search = f"--ratio {self.opts.ratio:g}" if (outcome.search or {}).get("same_cost") else None
        outcome.budget = budget_result(self.state.allocation, outcome.before, outcome.after,
                                       int((outcome.plan.settings or {}).get("round_to") or 1),
                                       set_by_search=by_search)
        outcome.nothing_pruned = nothing_pruned_line(outcome)
        return outcome

    def input_files(self) -> list[tuple[str, Path]]:
        """The files this run reads (as the CLI's path checks list them): the model and its
        external data, the plan, the calibration and token files given as paths."""
        from graphprune.frontends.onnx import model_files

        found = [("input model", f) for f in model_files(self.src)] if self.src is not None else []
        o = self.opts
        for what, v in (("plan", o.plan), ("--calib data", o.calib), ("--keep-tokens file", o.keep_tokens)):
            if isinstance(v, (str, Path)) and Path(v).exists():
                found.append((what, Path(v)))
        return found

    def output_files(self) -> list[tuple[str, Path]]:
        out = self.out
        return [("out", out), ("out (external data)", out.with_name(out.name + ".data")),
                ("plan", files.plan_path_for(out))]

    # ---- load -------------------------------------------------------------------------------
    def load(self) -> PruneOutcome:
        from graphprune.frontends.onnx import load_onnx
        from graphprune.ir.serialize import BIG_MODEL_BYTES, model_nbytes
        from graphprune.runtime import ort

        before_bytes = None
        if self.src is not None:
            self.model = load_onnx(self.src, input_shapes=self.opts.input_shapes)
            if self.opts.check:  # fail early, and as the model's fault, if ORT cannot run the input
                self.input_session = ort.input_session(str(self.src))  # kept only until the shapes check
            before_bytes = files.model_size(self.src)
        elif self.opts.check:  # an in-memory model is pruned in place: keep the input to check against
            from graphprune.ir.serialize import clone

            self.reference = clone(self.model)
        nbytes = model_nbytes(self.model)
        self.big = self.src is not None and nbytes > BIG_MODEL_BYTES
        return PruneOutcome(model=self.model, plan=Plan(tensors=[], groups=[]), state=self.state, source=self.src,
                            before_bytes=before_bytes, before_nbytes=nbytes)

    def resolve_shapes(self, outcome: PruneOutcome) -> None:
        """Once per run: the shapes every figure, target and oracle input is taken at."""
        from graphprune.runtime import ort

        calib = self.state.calibration
        o = self.opts
        if not (o.figures or o.check or calib is not None or o.input_shapes or o.allocation or o.slice_hidden):
            return  # nothing would use them (api.prune): the passes take their own shapes where they need some
        outcome.shapes = self.state.input_shapes = ort.resolve_shapes(
            self.model, self.src, user=o.input_shapes, calib=calib.first() if calib is not None else None)
        if o.figures:
            outcome.before = _cost(self.model, outcome.shapes)

    # ---- plan: what to run, on which data, replaying what -------------------------------------
    def load_calibration(self) -> None:
        o = self.opts
        if o.calib is None:  # (load_calibration(None) is None: its module is not needed)
            self.state.calibration = None
        else:
            from graphprune.runtime.calibration import load_calibration

            self.state.calibration = load_calibration(o.calib, self.model, preprocess=o.calib_preprocess,
                                                      batch_size=o.calib_batch, limit=o.calib_samples)
        from graphprune.workflow.options import max_drop_of

        if self.state.calibration is None and max_drop_of(o) is not None:  # said before any work
            raise UsageError("--max-drop needs calibration data (--calib)")

    def check_runs_at_given_shapes(self) -> None:
        """A model with dynamic sizes is analysed at the user's --input-shape or the
        calibration data's shapes: that it runs there is checked once, before any work, so
        a size it cannot take (a Flatten into a Gemm fixes the spatial size) is the user's
        error in words, not an IR violation or ONNX Runtime's message from deep inside."""
        from graphprune import input_shapes as shp
        from graphprune.runtime import ort

        calib = self.state.calibration
        sess, self.input_session = self.input_session, None  # not held through the run (its weights)
        if not self.opts.check or (not self.opts.input_shapes and calib is None):
            return  # (the search's trial runs have check off: the run that started them checked once)
        specs = shp.specs_of_model(self.model)
        if not shp.dynamic_dims(specs):  # static sizes: the calibration check compared them already
            return
        shapes = shp.resolve(specs, user=self.opts.input_shapes, calib=calib.first() if calib is not None else None)
        feeds = calib.first() if calib is not None and not self.opts.input_shapes else None
        if sess is None:  # an in-memory input (the load opened no session)
            try:
                sess = ort.session(self.reference or self.model)
            except Exception:  # noqa: BLE001 - ORT cannot load it at all: nothing to check here
                return
        where = (", ".join(f"{k}: {'×'.join(str(d) for d in np.shape(v))}" for k, v in feeds.items())
                 + " (the calibration data's first batch)") if feeds is not None else shapes.describe()
        try:
            sess.run(None, feeds if feeds is not None else ort.random_inputs(sess, 0, shapes=shapes))
        except Exception as exc:  # noqa: BLE001 - the model loads: a failure to run is the shapes'
            hint = ("the calibration data's sizes and values must be ones the model takes (ONNX Runtime's words say "
                    "which: e.g. token ids past the vocabulary)" if feeds is not None else
                    "give --input-shape / calibration data at a size the model takes")
            raise UsageError(f"the model does not run at {where}: {ort._first_line(exc)[:300]}", hint=hint) from None

    def choose(self, outcome: PruneOutcome, dry_run: bool) -> None:
        """Criterion, allocation and repair the user left to graphprune: searched with
        calibration data (not in a dry run: it would prune the model several times)."""
        from graphprune.workflow import search

        if search.wants_search(self.opts) and not dry_run:
            self.opts, outcome.search = search.search(self.model, self.opts, self.state.calibration, self.progress,
                                                      run_prune)
        self.opts = search.resolve_without_search(self.opts)
        self.held_back = (outcome.search or {}).get("held_back_fidelity")
        if self.held_back is None and not dry_run and self._gate_needs_held_back():
            self.progress.note("quality estimate: the same configuration repaired without the held-back calibration "
                               "samples, judged on them (the gate's figure)")
            self.held_back = search.held_back_estimate(self.model, self.opts, self.state.calibration, run_prune)

    def _gate_needs_held_back(self) -> bool:
        """The quality gate will judge a repair that fits the calibration data, and no search
        measured it on samples it did not fit."""
        from graphprune.workflow import search
        from graphprune.workflow.options import max_drop_of

        return (max_drop_of(self.opts) is not None and self.state.calibration is not None
                and search.fits_to_calibration(self.opts))

    def plan_step(self):
        self.state.plan_in = self._plan_in()
        self.state.selection = self.opts.selection
        return pipeline.build(self.opts, self.state.plan_in)

    def _plan_in(self) -> Plan | None:
        from graphprune import outputs
        from graphprune.plan import file_sha256

        plan_in = self.opts.plan
        if plan_in is None or isinstance(plan_in, Plan):
            return plan_in
        name = str(plan_in)
        plan_in = Plan.load(plan_in)
        if self.src is not None:
            outputs.refuse_replay_on_own_product(self.model, plan_in, model_name=str(self.src), plan_name=name)
            digest = plan_in.model.get("sha256")
            if digest and digest != file_sha256(self.src):
                log.warning("plan %s was made for a different file (sha256 differs); applying it if it fits", name)
        return plan_in

    def dry(self, outcome: PruneOutcome, pm, sparsify_passes) -> PruneOutcome:
        from graphprune.analysis.dependency import DependencyGraph

        outcome.groups_before = DependencyGraph(self.model, ignore=self.opts.ignore or None)
        pm.run(self.model, self.state.ctx)
        outcome.plan = self.state.plan or outcome.plan
        keep, name = self._tokens()
        if keep is not None:
            from graphprune.passes.pruning.slice_vocab import slice_vocab

            outcome.plan.vocab = slice_vocab(self.model, keep, input=name)
        outcome.after = _cost(self.model, outcome.shapes)
        outcome.sparsify_passes = sparsify_passes
        outcome.model = self.model
        if not sparsify_passes:  # why nothing would be removed, as the run itself says it
            from graphprune.workflow.verdicts import nothing_pruned_line

            outcome.nothing_pruned = nothing_pruned_line(outcome)
        return outcome

    # ---- apply ------------------------------------------------------------------------------
    def apply(self, outcome: PruneOutcome, pm) -> None:
        from graphprune.plan import file_sha256

        if pm.passes:
            pm.run(self.model, self.state.ctx)
            outcome.changed = any(t[2] for t in pm.timings)
        plan = self.state.plan or Plan(tensors=[], groups=[])
        hidden = self.state.hidden
        if hidden is not None:  # slice-hidden ran: its slices are of the rotated reference, like the rest
            from graphprune.passes.pruning.slice_hidden import plan_record

            plan.tensors = hidden["tensors"] + plan.tensors
            plan.hidden = plan_record(hidden)
        if self.src is not None:
            plan.model = {"path": str(self.src), "sha256": file_sha256(self.src)}
        outcome.plan = self.state.plan = plan
        self.state.ctx.analyses.clear()  # analyses pin the pre-pruning tensors; large models need them gone
        self._note_block_quantized(plan)

    def _note_block_quantized(self, plan: Plan) -> None:
        """Int4 (MatMulNBits) layers take input channels only in whole quantization blocks:
        a coarser choice than channels, which costs accuracy (measured in
        benchmarks/transformers/int4.py); the user may have the float model."""
        from graphprune.ir.nbits import is_nbits

        sizes = sorted({int(n.attributes["block_size"].value) for n in self.model.graph
                        if is_nbits(n) and "block_size" in n.attributes})
        if plan.tensors and sizes:
            self.progress.note(f"block-quantized layers (MatMulNBits) lose input channels only in whole blocks of "
                               f"{'/'.join(map(str, sizes))}, and no repair rewrites them; with the float model, "
                               "pruning it and quantizing after chooses channel by channel (SmolLM2-135M, FFN -25 % "
                               "by wanda: perplexity 65 pruned in int4, 31 pruned in float then quantized; 21 dense int4)")

    def stage_big(self) -> None:
        """A large model is written first (external data) and its in-memory tensors dropped;
        the oracle then works from files, one ORT session at a time."""
        if not (self.big and self.out is not None):
            return
        import gc

        from graphprune.frontends.onnx import load_onnx, save_onnx

        self.staged = files.staging_path(self.out, "staging")
        self.temps.append(self.staged)
        save_onnx(self.model, self.staged, external_data=True)
        self.model = load_onnx(self.staged)  # lazily backed by the file: the sliced arrays can go
        gc.collect()  # the old IR graph is cyclic (nodes <-> values): free it now, not later

    # ---- the oracle ---------------------------------------------------------------------------
    def check(self, outcome: PruneOutcome) -> None:
        plan = outcome.plan
        if not self.opts.check or not (plan.removes or self.opts.check_unchanged):
            return
        from graphprune.frontends.onnx import load_onnx
        from graphprune.runtime import oracle

        original = self._reference(outcome)
        if self.staged is not None:
            res = oracle.check_files(original, str(self.staged), plan, inputs=self.opts.inputs,
                                     shapes=outcome.shapes)
        else:
            res = oracle.check(original if isinstance(original, ir.Model) else load_onnx(original, fold=False),
                               self.model, plan, inputs=self.opts.inputs, shapes=outcome.shapes)
        outcome.oracle = res
        self.progress.oracle(res, outcome.shapes)
        # (the file oracle of a large model has no power-of-two run: the plain hint there)
        _require_pass(res, "pruned model differs from the masked original",
                      quantized=self.staged is None and oracle.has_qdq(self.model.graph))

    def _reference(self, outcome: PruneOutcome):
        """What the plan's slices are masked in: the input file, or after slice-hidden the
        rotated input — checked first against the input (equal up to float rounding)."""
        from graphprune.frontends.onnx import load_onnx, save_onnx
        from graphprune.runtime import oracle

        hidden = self.state.hidden
        if hidden is None:
            return str(self.src) if self.src is not None else self.reference
        reference = hidden["reference"]
        if self.staged is not None:  # a large model: the oracle works from files
            path = files.staging_path(self.out, "rotated")
            self.temps.append(path)
            save_onnx(reference, path, external_data=True)
            reference = str(path)
        original = load_onnx(self.src, fold=False) if self.src is not None else self.reference
        res = oracle.check(original, hidden["reference"], Plan(tensors=[], groups=[]),
                           inputs=self.opts.inputs, shapes=outcome.shapes)
        outcome.rotation_oracle = res
        self.progress.rotation(res)
        _require_pass(res, "the rotated model differs from the input")
        return reference

    # ---- after the oracle: repair, sparsity, the quality gate ----------------------------------
    def _say_unrepeated_repair(self, done: list) -> None:
        """A replayed plan whose run repaired its weights, replayed without those repairs: the
        pruning is the same, the weights are not, and nothing said so (outputs differed from
        the first run's model by a third of their scale)."""
        plan_in = self.state.plan_in
        then = [r.get("pass") for r in (plan_in.settings.get("repair") or []) if isinstance(r, dict)
                and not r.get("reverted")] if plan_in is not None else []
        now = {r.get("pass") for r in done or [] if not r.get("reverted")}
        missing = [p for p in then if p not in now]
        if missing:
            self.progress.note(f"the plan's run also repaired the weights ({', '.join(missing)}); this replay "
                               "did not, so its weights differ from that run's model: add --repair "
                               f"{','.join(missing)} --calib DATA to repeat it")

    def repair(self, outcome: PruneOutcome, repair_pm) -> None:
        from graphprune.passes.reconstruction.repair import run_repair

        outcome.repair = run_repair(self.model, self.state.ctx, self.opts.repair, repair_pm)
        self._say_unrepeated_repair(outcome.repair)
        if self.state.removed_blocks:  # the repairs' reference is the model after the blocks went
            for r in outcome.repair:
                r["reference"] = "against the model with the removed blocks, before channel pruning"
        for r in outcome.repair:
            self.progress.repair(r)
        from graphprune.ir.layers import is_integer_layer

        from graphprune.ir.nbits import is_nbits

        # MatMulNBits: the block-quantized note (apply) already says it, with the int4 advice
        integer = sorted({n.op_type for n in self.model.graph if is_integer_layer(n) and not is_nbits(n)})
        if outcome.repair and integer and outcome.plan.tensors:
            self.progress.note(f"repairs do not rewrite integer-op layers ({', '.join(integer)}): they keep the "
                               "error the pruning made; for accuracy, prune and repair the float model, then quantize "
                               "it (compile --quantize int8)")

    def sparsify(self, outcome: PruneOutcome, sparsify_passes: list) -> None:
        if not sparsify_passes:  # zeros beyond the plan's slices: after the oracle and repair
            return
        from graphprune.passes import PassManager

        PassManager(sparsify_passes).run(self.model, self.state.ctx)
        outcome.sparsity = self.state.sparsity
        self.progress.sparsity(outcome.sparsity)

    def gate(self, outcome: PruneOutcome) -> None:
        from graphprune.workflow.options import max_drop_of

        max_drop = max_drop_of(self.opts)
        if max_drop is None:
            return
        from graphprune.runtime import oracle
        from graphprune.workflow import search

        calib = self.state.calibration
        if calib is None:
            raise UsageError("--max-drop needs calibration data (--calib)")
        dense = str(self.src) if self.src is not None else self.state.dense_model
        fid = oracle.output_fidelity(dense, self.model, calib.batches())
        if self.held_back is not None:  # judged where no repair fit; the in-sample figure shown beside it
            fid = {**self.held_back, "in_sample": {k: fid[k] for k in ("mean_cosine", "drop", "samples")}}
            if fid["samples"] < search.FEW_HELD_BACK:
                self.progress.note(f"the quality gate judged {fid['samples']} held-back output(s): a rough figure; "
                                   "more --calib samples make it firmer")
        elif search.fits_to_calibration(self.opts):
            fid["in_sample"] = True  # too few samples to hold any back: said with the figure
        outcome.fidelity = fid
        self.progress.fidelity(fid, max_drop)
        from graphprune.workflow.verdicts import require_fidelity

        require_fidelity(fid, max_drop)

    # ---- the vocabulary: last, so that everything before it sees the input's token ids ----------
    def _tokens(self) -> tuple:
        """(token ids to keep, their input) from the options or the plan being replayed."""
        keep, name = self.opts.keep_tokens, self.opts.token_input
        replayed = (self.state.plan_in.vocab if self.state.plan_in is not None else None) or {}
        if replayed:
            from graphprune.passes.pruning.slice_vocab import read_token_list

            if keep is not None and sorted(set(read_token_list(keep))) != replayed["kept"]:
                raise UsageError("--keep-tokens differs from the token list of the plan being replayed",
                                 hint="give one of them: the plan's list is replayed by --plan alone")
            keep, name = replayed["kept"], replayed["input"]
        return keep, name

    def check_tokens(self) -> None:
        """A bad token list (ids outside the vocabulary) or a model slice-vocab cannot keep
        exact fails before any work, not after the pruning."""
        keep, name = self._tokens()
        if keep is None:
            return
        if self.opts.sparsity:
            # the sparsity record and its block formats describe the weights before the columns
            # of the dropped tokens go; its data-aware criteria read the input's ids
            raise UsageError("--keep-tokens with sparsity is not supported yet",
                             hint="sparsify the vocabulary-sliced model in a second run: graphprune prune SLICED.onnx "
                                  "--ratio 0 --sparsity F (or gp.sparsify)")
        from graphprune.passes.pruning.slice_vocab import find_vocab, kept_ids

        kept_ids(keep, find_vocab(self.model, name).vocab)

    def vocabulary(self, outcome: PruneOutcome) -> None:
        """slice-vocab, then its own oracle: the result equals the model before it with the ids
        mapped and the logits gathered (graphprune.passes.pruning.slice_vocab)."""
        keep, name = self._tokens()
        if keep is None:
            return
        from graphprune.ir.serialize import clone
        from graphprune.passes.pruning.slice_vocab import slice_vocab, vocab_reference, with_token_range
        from graphprune.runtime import oracle

        before = clone(self.model) if self.opts.check else None
        outcome.plan.vocab = record = slice_vocab(self.model, keep, input=name)
        outcome.changed = True
        res = None
        if before is not None:
            res = oracle.check(vocab_reference(before, record), self.model, Plan(tensors=[], groups=[]),
                               shapes=with_token_range(outcome.shapes, record))
            outcome.vocab_oracle = res
        self.progress.vocabulary(record, res)
        if res is not None:
            _require_pass(res, "the vocabulary-sliced model differs from the model with its ids mapped")

    # ---- write --------------------------------------------------------------------------------
    def write(self, outcome: PruneOutcome) -> None:
        rewritten = bool(outcome.repair and any(not r["reverted"] for r in outcome.repair)) or \
            bool(outcome.sparsity) or bool(outcome.plan.vocab)
        outcome.plan_out = files.write_pair(self.model, outcome.plan, self.out, staged=self.staged,
                                            rewritten=rewritten, temps=self.temps)
        outcome.out = self.out
        if self.staged is not None:
            from graphprune.frontends.onnx import load_onnx

            # the large model's tensors were read from the staged file, which is now `out` (or
            # gone): the returned model, and what is counted on it, read the written file
            self.model = load_onnx(self.out)
        if outcome.plan.vocab:  # the id map a tokenizer needs, beside the model
            from graphprune.passes.pruning.slice_vocab import vocab_path_for, write_id_map

            outcome.vocab_out = vocab_path_for(self.out)
            write_id_map(outcome.plan.vocab, outcome.vocab_out)


# A QDQ model the oracle could not clear even with power-of-two scales (oracle.check: exact
# float sums, scales checked as sliced): a wrong plan, or rounding in float ops that are not
# sums of dequantized terms; either way the float model is the safe route.
_QDQ_HINT = ("nothing was written; judging this quantized (QDQ) model again with every Q/DQ scale rounded to a "
             "power of two (where its float sums are exact) did not clear it: please report this model, and "
             "meanwhile prune the float model and quantize after (compile --quantize int8)")


def _require_pass(res, what: str, *, quantized: bool = False) -> None:
    if not res.ok:  # a FAIL (or nothing compared) writes nothing
        raise OracleMismatchError(
            f"nothing was compared: {res.refused}" if res.refused else
            f"{what}: {res.error}" if getattr(res, "error", None) else
            f"{what}: " + ", ".join(f"{d.name} err {d.max_abs_err:.3g} {d.scale_text()}" for d in res.diffs if not d.ok),
            hint=_QDQ_HINT if quantized and res.diffs and not (res.refused or getattr(res, "error", None))
            else "nothing was written; please report this model")


def _cost(model, shapes=None):
    from graphprune.analysis.cost import model_cost

    return model_cost(model, shapes.shapes if shapes is not None else None)
