"""`compile`: prune for a target (run_prune), lower with a backend, check, and write a
deployable folder.

    <model>.graphprune/<target>/
        model.pruned.onnx  plan.json  report.json  report.md  [vocab.json: --keep-tokens' id map]
        onnxruntime/  (model.onnx [+ model.ort], session.json, run_model.py)
        tvm/          (when the TVM backend ran: model.so, model.meta.json, run_model.py)

Untuned TVM code is ~100x slower than ONNX Runtime, so a TVM build is only shipped
tuned; `--backend auto` measures both on host targets and keeps the faster, and says why.
"""
from __future__ import annotations

import contextlib

import logging
import math
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphprune.backends.targets import Target, resolve_target
from graphprune.errors import BackendUnavailableError, OracleMismatchError, UsageError
from graphprune.workflow.options import DEFAULTS, PruneOptions, check_max_drop, max_drop_of
from graphprune.workflow.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class CompileOptions:
    target: str = "x86"
    backend: str = "auto"  # auto | onnxruntime | tvm
    ratio: float = DEFAULTS.ratio
    prune: bool = True
    criterion: str = DEFAULTS.criterion
    round_to: int | str | None = None  # default (None or "auto"): the target's SIMD lanes
    ignore: list[str] = field(default_factory=list)
    plan: str | None = None
    slice_hidden: float | None = None  # slice-hidden ratio (rotate the residual stream first)
    keep_tokens: Any = None  # slice-vocab: token ids to keep (a list, or a file of them)
    token_input: str | None = None  # ... read from this input (default: the one indexing the largest table)
    keep_experts: int = 0  # prune-experts: experts kept per MoE layer (0: all)
    tune_trials: int = 0
    tune_time: float | None = None
    db: str | None = None
    rpc: str | None = None
    rpc_key: str | None = None
    ort_format: bool = False
    check: bool = True
    out: str | None = None
    seed: int = DEFAULTS.seed
    input_shapes: dict | None = None
    # choosing what to prune and repairing (graphprune.cli.allocation_flags / allocation.driver)
    prune_options: dict = field(default_factory=dict)  # allocation, target_*, max_ratio, protect, ...
    calib: Any = None  # .npz, image folder, module:function, arrays or feed dicts in memory, or a Calibration
    calib_preprocess: str | None = None
    calib_batch: int = DEFAULTS.calib_batch
    calib_samples: int | None = None
    repair: str | None = DEFAULTS.repair  # comma list of bias, bn, lsq, all, none; auto: searched with calib
    search_budget: int = DEFAULTS.search_budget
    score: str | None = None  # module:function scoring the search's candidates
    max_drop: float | str | None = DEFAULTS.max_drop  # quality gate (options.max_drop_of): auto = 0.1 with calib
    sparsity: dict | None = None  # `sparsify` pass options (after pruning and repair); None: no sparsity
    force: bool = False  # out folder without graphprune's marker: replace only the files graphprune writes
    min_speedup: float | None = None  # fail (exit 5, nothing written) below this speed-up vs the input in ORT
    quantize: str = "none"  # none | int8: ORT static int8 (QDQ) of the ONNX Runtime deployment, needs calib

    def __post_init__(self):
        check_max_drop(self.max_drop)

    def resolved(self, target: Target) -> dict:
        d = dict(self.__dict__)
        d["round_to"] = _round_to(self.round_to, target)
        return d


def _round_to(value, target: Target) -> int:
    from graphprune.backends.targets import resolve_round_to

    return resolve_round_to("auto" if value is None else value, target)


def prune_options(opts: CompileOptions, target: Target) -> PruneOptions:
    """compile's pruning step as PruneOptions (round_to defaults to the target's SIMD lanes)."""
    return PruneOptions(
        ratio=opts.ratio, criterion=opts.criterion, ignore=list(opts.ignore), seed=opts.seed,
        round_to=_round_to(opts.round_to, target), round_to_auto=opts.round_to in (None, "auto"),
        allocation=dict(opts.prune_options), prune=opts.prune, plan=opts.plan, slice_hidden=opts.slice_hidden,
        keep_tokens=opts.keep_tokens, token_input=opts.token_input, keep_experts=opts.keep_experts,
        calib=opts.calib,
        calib_preprocess=opts.calib_preprocess, calib_batch=opts.calib_batch, calib_samples=opts.calib_samples,
        input_shapes=opts.input_shapes, check=opts.check, check_unchanged=False, repair=opts.repair,
        sparsity=opts.sparsity, max_drop=opts.max_drop, search_budget=opts.search_budget, score=opts.score)


def default_out_dir(model_path: Path, target: Target) -> Path:
    return model_path.with_name(model_path.name.removesuffix(".onnx") + ".graphprune") / target.name


def _timed(fn, repeats: int) -> float:
    """Median wall time of `fn` in ms, measured the same way for every backend."""
    import time

    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def _numerics(ref: list[np.ndarray], got: list[np.ndarray], names: list[str], rtol: float = 1e-3) -> dict:
    from graphprune.runtime.oracle import compare_outputs

    diffs = compare_outputs(ref, got, names, rtol=rtol, atol=1e-5)
    worst = max((d.max_abs_err / max(d.scale, 1e-12) for d in diffs), default=0.0)
    return {"ok": all(d.ok for d in diffs), "worst_relative_error": worst, "rtol": rtol,
            "summary": f"worst error {worst:.2e} of output scale (tolerance {rtol:g})"}


class _Logged(Progress):
    """compile's progress: to the log function; the checks go to the report."""

    def __init__(self, log_fn, notes: list | None = None):
        self.log_fn, self.notes = log_fn, notes if notes is not None else []

    def note(self, text: str) -> None:  # printed at the end and kept in the report's notes
        self.notes.append(text)

    def candidate(self, k: int, n: int, row: dict, eta: float) -> None:  # the search takes minutes: say each step
        self.log_fn(self.candidate_line(k, n, row, eta))

    def oracle(self, res, shapes) -> None:
        self.log_fn(f"oracle inputs: {(res.shapes or shapes).describe()}")  # both sizes of dynamic dims
        self.log_fn(res.summary())

    def rotation(self, res) -> None:
        self.log_fn(f"rotation (slice-hidden): {res.summary().replace('oracle ', 'rotated input vs input: ', 1)}")


# ---- the run ----------------------------------------------------------------------------------

@dataclass
class _Compile:
    """What the phases of one compile share."""
    src: Path
    opts: CompileOptions
    target: Target
    backend_req: str
    out_dir: Path
    log_fn: object
    checks: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    results: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)  # workflow.verdicts.latency_verdict, and the three numbers
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    quant: object = None  # --quantize int8: backends.onnxruntime.quantize.QuantizeResult
    measured: dict = field(default_factory=dict)  # runner -> median ms (_latencies)
    nothing_pruned: bool = False  # the run removed nothing: a speed-up is not the model's


def _graph_only(src: Path):
    """The ONNX proto at `src` without its weights, or None when it does not read (the
    load reports that later, in its own words)."""
    import onnx

    try:
        return onnx.load(str(src), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf raises many types for damaged files
        return None


def completed_shapes(src: Path, user: dict | None, proto=None) -> dict | None:
    """--input-shape with the inputs whose dims it names all (a mask's N, H, W as its image's:
    `input_shapes.resolve`), so TVM gets them as ONNX Runtime's side does."""
    proto = proto if proto is not None else _graph_only(src) if user else None
    if not user or proto is None:
        return user
    from graphprune.backends.tvm.onnx_prep import input_specs
    from graphprune.input_shapes import InputSpec, resolve

    res = resolve([InputSpec(s["name"], s["shape"], "float" in s["dtype"]) for s in input_specs(proto)], user=user)
    return {n: list(shape) for n, shape in res.shapes.items()
            if res.sources[n] == "--input-shape" or res.sources[n].startswith("dims named as in")}


def _check_tvm_request(src: Path, target: Target, input_shapes: dict | None, calib) -> None:
    """What --backend tvm needs, said before the pruning, not after: static input shapes
    (after --input-shape; with --calib and no --input-shape, the run's representative shapes
    are taken from the data: `tvm_input_shapes`) and a compiler for the target's architecture."""
    from graphprune.backends.tvm.onnx_prep import with_static_inputs

    proto = _graph_only(src)
    if proto is not None and (input_shapes or calib is None):
        with_static_inputs(proto, completed_shapes(src, input_shapes, proto))
    if target.arch != platform.machine() and not target.cross_compiler:
        raise UsageError(f"TVM cannot build for {target.arch} here: no cross compiler is known for it "
                         f"(this machine is {platform.machine()})",
                         hint="--backend onnxruntime writes a portable ONNX Runtime deployment")


def _setup(model_path, opts: CompileOptions, log_fn) -> _Compile:
    """Target and backend resolved, output folder checked: before any work."""
    from graphprune import outputs
    from graphprune.frontends.onnx import model_files

    src = Path(model_path)
    target = resolve_target(opts.target)
    if opts.backend not in ("auto", "onnxruntime", "ort", "tvm"):
        raise UsageError(f"unknown backend {opts.backend!r}", hint="choose auto, onnxruntime or tvm")
    backend_req = "onnxruntime" if opts.backend == "ort" else opts.backend
    from graphprune.workflow.quantized import check_options

    check_options(opts.quantize, opts.calib, backend_req, src)  # int8 without --calib, with TVM, twice: refused
    if opts.quantize != "none" and (opts.keep_tokens is not None):
        # its calibration and quality line feed the calibration's token ids (the input's) to the
        # deployment, which reads new ids after slice-vocab
        raise UsageError("--keep-tokens with --quantize int8 is not supported yet",
                         hint="compile with one of them, or quantize the written model.pruned.onnx yourself")
    if target.device != "cpu" and backend_req != "tvm":
        log_fn(f"note: target {target.name} is a {target.device} device; the ONNX Runtime deployment lists "
               f"{', '.join(target.ort_providers)} and falls back to the CPU provider")
    if opts.min_speedup is not None and not (isinstance(opts.min_speedup, (int, float))
                                              and math.isfinite(opts.min_speedup) and opts.min_speedup > 0):
        raise UsageError(f"min_speedup must be a finite number > 0, got {opts.min_speedup!r}",
                         hint="e.g. 1.0: the deployment must not be slower than its input")
    if opts.min_speedup is not None and not target.host:
        raise UsageError(f"--min-speedup needs a latency measured on the target; {target.name} is not this machine",
                         hint="compile on the device itself, or check the speed-up with graphprune bench --rpc")
    if backend_req == "tvm":
        _check_tvm_request(src, target, opts.input_shapes, opts.calib)
    if opts.rpc:  # a key and a tracker that answers, before any work
        from graphprune.backends.tvm.adapter import require_tracker

        require_tracker(opts.rpc, opts.rpc_key)
    if opts.db and Path(opts.db).exists() and not Path(opts.db).is_dir():
        raise UsageError(f"--db {opts.db}: not a folder", hint="--db names the folder of TVM tuning databases")
    out_dir = Path(opts.out) if opts.out else default_out_dir(src, target)
    # the folder holds no input, and is new, empty or graphprune's own
    inputs = [("input model", f) for f in model_files(src)] + [
        (what, p) for what, p in (("plan", opts.plan), ("--calib data", opts.calib))
        if isinstance(p, (str, os.PathLike)) and Path(p).exists()]
    outputs.check_paths(inputs, folders=[("output folder", out_dir)])
    outputs.check_output_dir(out_dir, force=opts.force)
    return _Compile(src, opts, target, backend_req, out_dir, log_fn)


def _prune(c: _Compile):
    """The prune sequence (workflow.run_prune), its checks in the report's terms."""
    from graphprune.workflow.prune import run_prune
    from graphprune.workflow.verdicts import latency_on_this_cpu, repair_line

    popts = prune_options(c.opts, c.target)
    c.log_fn(f"target {c.target.name}: {c.target.description}; TVM {c.target.tvm}; round_to {popts.round_to}")
    outcome = run_prune(c.src, popts, progress=_Logged(c.log_fn, c.notes))
    if outcome.budget and outcome.budget["flag"] == "--target-latency" and not c.target.this_cpu:
        outcome.budget = latency_on_this_cpu(outcome.budget, c.target.name)
    c.before = {"params": outcome.before.params, "macs": outcome.before.macs, "bytes": outcome.before_nbytes}
    if outcome.oracle is not None:
        res = outcome.oracle
        c.checks["oracle"] = {"ok": res.ok, "summary": res.summary(), "inputs": outcome.shapes.describe()}
    if outcome.vocab_oracle is not None:  # slice-vocab: the result vs the model before it, ids mapped
        v = outcome.plan.vocab
        c.checks["vocab"] = {"ok": outcome.vocab_oracle.ok,
                             "summary": f"vocabulary {v['vocab_size']} -> {len(v['kept'])} tokens (vocab.json maps the "
                                        f"new ids); {outcome.vocab_oracle.summary()}"}
    for r in outcome.repair:
        c.checks[f"repair_{r['pass']}"] = {"ok": True, "summary": repair_line(r).split(": ", 1)[1]}
    if outcome.nothing_pruned:  # the deployment is the input model's: say why
        c.notes.append(outcome.nothing_pruned)
        c.nothing_pruned = True
    if outcome.sparsity is not None:
        _sparsity_check(c, outcome)
    from graphprune.ir.serialize import model_nbytes

    c.after = {"params": outcome.after.params, "macs": outcome.after.macs,  # the run's count, at its shapes
               "bytes": model_nbytes(outcome.model)}
    if outcome.fidelity is not None:
        fid = outcome.fidelity
        from graphprune.report.build import fidelity_basis

        c.checks["fidelity"] = {"ok": True, "summary": f"mean cosine {fid['mean_cosine']:.4f} {fidelity_basis(fid)} "
                                                       f"(drop {fid['drop']:.4f}, max {max_drop_of(c.opts):g})"}
        c.before["fidelity"], c.after["fidelity"] = 1.0, fid["mean_cosine"]
    return outcome


def _sparsity_check(c: _Compile, outcome) -> None:
    """The zeros are checked against the record."""
    from graphprune.sparsity_meta import measured_sparsity

    res = outcome.sparsity
    meas = measured_sparsity(outcome.model, res["tensors"])
    ok = all(abs(meas.get(k, -1) - r["sparsity"]) < 1e-9 for k, r in res["tensors"].items())
    c.checks["sparsity"] = {"ok": ok, "summary": f"{res['spec']} by {res['criterion']}: {len(res['tensors'])} "
                                                 f"tensors, {100 * res['overall']:.1f}% zeros (record matches the "
                                                 f"weights: {ok})"}
    c.log_fn(c.checks["sparsity"]["summary"])


def compile_model(model_path: str | Path, opts: CompileOptions, *, argv: list[str] | None = None,
                  log_fn=None) -> dict:
    """Run the whole compile; progress goes to `log_fn` (default: this module's logger)."""
    from graphprune import outputs

    c = _setup(model_path, opts, log_fn or log.info)
    outcome = _prune(c)
    # ---- lower + emit (into a staging dir, moved into place at the end) -------------------
    made_parent = not c.out_dir.parent.exists()  # model.graphprune/ of model.graphprune/arm
    c.out_dir.parent.mkdir(parents=True, exist_ok=True)
    outputs.clean_stale_temps(c.out_dir.parent)
    stage = outputs.mkdtemp_beside(c.out_dir)
    try:
        report = _build(c, outcome, stage, argv)
        outputs.install_output_dir(stage, c.out_dir, force=opts.force)  # only graphprune's files are replaced
    except BaseException:  # a failure, or SIGTERM: nothing written, not even the empty folder made for it
        shutil.rmtree(stage, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):
                c.out_dir.parent.rmdir()  # only if still empty
        raise
    report["out_dir"] = str(c.out_dir)
    if outcome.sparsity is not None:
        report["sparsity_summary"] = outcome.sparsity
    return report


def _feeds(c: _Compile, outcome) -> dict:
    """Random inputs at the run's one representative shape (the oracle's, when it ran)."""
    from graphprune.runtime import ort

    sess = ort.input_session(str(c.src))
    shapes = outcome.shapes
    if shapes is None:
        calib = outcome.calibration
        shapes = ort.representative_shapes(sess, user=c.opts.input_shapes,
                                           calib=calib.first() if calib is not None else None)
    return ort.random_inputs(sess, seed=c.opts.seed, shapes=shapes)


def _build(c: _Compile, outcome, stage: Path, argv) -> dict:
    from graphprune import outputs
    from graphprune.frontends.onnx import save_onnx
    from graphprune.report import write_report
    from graphprune.workflow.verdicts import require_speedup

    feeds = _feeds(c, outcome)
    model, plan = outcome.model, outcome.plan
    pruned_path = stage / "model.pruned.onnx"
    plan.save(stage / "plan.json")
    if plan.vocab:  # the id map a tokenizer needs: the deployment reads new ids
        from graphprune.passes.pruning.slice_vocab import write_id_map

        write_id_map(plan.vocab, stage / "vocab.json")
    model.metadata_props[outputs.PLAN_KEY] = outputs.plan_digest(plan)  # one result with plan.json
    save_onnx(model, pruned_path)
    _lower(c, pruned_path, stage, feeds, outcome.calibration)
    runners = _verify(c, model, stage, feeds)
    _drop_incorrect_tvm(c, runners, stage)
    chosen, reason = _measure_and_choose(c, runners)
    for name, chk in c.checks.items():
        if (name.startswith("numerics") or name.startswith("artifact")) and not chk["ok"]:
            raise OracleMismatchError(f"{name}: compiled artifact differs from ONNX Runtime ({chk['summary']})")
    if c.quant is not None:
        _quant_quality(c, outcome, stage)  # its own quality line and latency; --max-drop gates it too
    if "speedup" in c.latency:
        require_speedup(c.latency, c.opts.min_speedup, c.backend_req, quantized=c.quant is not None)  # before writing
    report = _report(c, outcome, chosen, reason, argv)
    _report_sections(report, c, outcome, stage)
    write_report(stage, report)
    return report


def _lower(c: _Compile, pruned_path: Path, stage: Path, feeds: dict, calibration=None) -> None:
    from graphprune.backends.onnxruntime import OrtBackend

    if c.backend_req in ("auto", "onnxruntime"):
        ort_src = pruned_path
        if c.opts.quantize == "int8":  # the deployment is the int8 model (after pruning and repair)
            from graphprune.workflow import quantized

            c.quant = quantized.quantize(pruned_path, calibration, stage / "onnxruntime", c.log_fn, src=c.src,
                                         score=c.opts.score)
            ort_src = c.quant.path
            from graphprune.workflow.files import model_size

            # the model that ships is the int8 one: its bytes, the float pruned model's beside them
            # (the column showed the float model's 350K beside the int8 deployment's latency)
            c.after["pruned_float_bytes"], c.after["bytes"] = c.after["bytes"], model_size(c.quant.path)
        c.log_fn("onnxruntime: offline optimisation and session settings ...")
        c.results["onnxruntime"] = OrtBackend().compile(ort_src, c.target, stage / "onnxruntime",
                                                        ort_format=c.opts.ort_format, feeds=feeds, log_fn=c.log_fn)
        if c.quant is not None:
            c.results["onnxruntime"]["artifacts"].append(c.quant.path.name)
    if _want_tvm(c):
        c.results["tvm"] = _compile_tvm(pruned_path, c.target, stage / "tvm", c.opts, c.backend_req, c.notes,
                                        c.log_fn, tvm_input_shapes(c, pruned_path, feeds))


def _want_tvm(c: _Compile) -> bool:
    if c.backend_req == "tvm":
        return True
    wanted = c.backend_req == "auto" and c.opts.tune_trials > 0 and (c.target.host or c.opts.rpc)
    if wanted and c.opts.quantize != "none":
        c.notes.append("TVM not built: --quantize int8 ships the int8 ONNX Runtime deployment (graphprune's TVM "
                       "backend compiles float models only)")
        return False
    return bool(wanted)


def _verify(c: _Compile, model, stage: Path, feeds: dict) -> dict:
    """Numerics of each artifact against ONNX Runtime on the pruned model; latency runners."""
    from graphprune.backends.onnxruntime import OrtBackend, measure
    from graphprune.runtime import ort

    ref = ort.session(model).run(None, feeds)
    names = [o.name for o in model.graph.outputs]
    runners = {}
    if "onnxruntime" in c.results and c.target.host:  # int8: against the QDQ model in ORT, before offline opt.
        ort_ref = ort.session(str(c.quant.path)).run(None, feeds) if c.quant is not None else ref
        c.checks["numerics_onnxruntime"] = _numerics(ort_ref, OrtBackend().run(stage / "onnxruntime", feeds), names)
        runners["onnxruntime"] = lambda: measure(str(stage / "onnxruntime" / "model.onnx"),
                                                 c.results["onnxruntime"]["session"], feeds, repeats=10)
    tvm_res = c.results.get("tvm") or {}
    if tvm_res.get("library"):
        _verify_tvm(c, tvm_res, stage, feeds, ref, names, runners)
    dense_cfg = {"intra_op_num_threads": 0, "inter_op_num_threads": 0, "execution_mode": "ORT_SEQUENTIAL",
                 "graph_optimization_level": "ORT_ENABLE_ALL"}
    runners["dense"] = lambda: measure(str(c.src), dense_cfg, feeds, repeats=10)
    session = (c.results.get("onnxruntime") or {}).get("session")
    if "onnxruntime" in runners and session and _other_settings(session, dense_cfg):
        # the input under the deployment's tuned settings: the speed-up split into model and settings
        runners["dense_same_settings"] = lambda: measure(str(c.src), session, feeds, repeats=10)
    if not c.target.host:  # a host estimate, labelled as such: a cross target's latency line is never blank
        runners["pruned_host"] = lambda: measure(str(stage / "model.pruned.onnx"), dense_cfg, feeds, repeats=10)
    if c.quant is not None:
        _quant_runners(c, stage, feeds, dense_cfg, runners)
    return runners


def _other_settings(session: dict, default: dict) -> bool:
    """Whether a tuned session runs differently from ONNX Runtime's defaults: threads (0 is
    one per core), execution mode, optimisation level (inter-op threads only count in
    parallel mode)."""
    cores = os.cpu_count() or 1

    def key(cfg: dict) -> tuple:
        parallel = cfg.get("execution_mode") == "ORT_PARALLEL"
        return (cfg.get("intra_op_num_threads") or cores, cfg.get("execution_mode"), cfg.get("graph_optimization_level"),
                (cfg.get("inter_op_num_threads") or cores) if parallel else None)
    return key(session) != key(default)


def _quant_runners(c: _Compile, stage: Path, feeds: dict, dense_cfg: dict, runners: dict) -> None:
    """--quantize int8: the pruned float model too (int8 against float at equal widths, and
    under the int8 deployment's own session settings, so that the ratio is the quantization's
    alone) and, on a cross target, the int8 deployment on this machine (a host estimate)."""
    from graphprune.backends.onnxruntime import measure

    if c.target.host:
        session = (c.results.get("onnxruntime") or {}).get("session") or dense_cfg
        runners["pruned_float"] = lambda: measure(str(stage / "model.pruned.onnx"), session, feeds, repeats=10)
    else:
        runners["int8_host"] = lambda: measure(str(stage / "onnxruntime" / "model.onnx"), dense_cfg, feeds,
                                               repeats=10)


def _verify_tvm(c: _Compile, tvm_res: dict, stage: Path, feeds: dict, ref, names, runners: dict) -> None:
    from graphprune.backends.tvm import adapter

    lib = stage / "tvm" / tvm_res["library"]
    c.notes.extend(f"tvm: {n}" for n in tvm_res.get("notes", []))
    art = tvm_res.get("checks", {})
    if art.get("elf_machine"):
        c.checks["artifact_tvm"] = artifact_check(c.target, art)
    if tvm_res.get("host_runnable"):
        exe = adapter.load(lib)
        c.checks["numerics_tvm"] = _numerics(ref, adapter.run_loaded(exe, feeds), names)
        runners["tvm"] = lambda: _timed(lambda: adapter.run_loaded(exe, feeds), 10)
    elif c.target.arch == "aarch64" and adapter.qemu_available()[0]:
        try:
            got = adapter.qemu_run(lib, feeds, download=True)
            c.checks["numerics_tvm_qemu"] = _numerics(ref, got, names)
        except Exception as exc:  # emulation is a bonus check: say why it did not run
            c.notes.append(f"tvm: qemu run skipped ({type(exc).__name__}: {exc})")


def artifact_check(target: Target, art: dict) -> dict:
    """The TVM library is for the target's machine and, for AArch64 (NEON unless the target
    says -neon), holds vector instructions: a scalar-only build passes numerics and runs
    several times slower. `art`: the backend's ELF machine and NEON counts (or why not counted)."""
    want = "AArch64" if target.arch == "aarch64" else "x86-64"
    ok, summary = art["elf_machine"] == want, f"ELF {art['elf_machine']}"
    neon = art.get("neon")
    if isinstance(neon, dict):
        expected = "-neon" not in (target.tvm.get("mattr") or [])
        summary += (f", NEON: {neon['neon']} of {neon['instructions']} instructions vector "
                    f"({neon['fmla']} vector fmla)")
        if expected and neon["neon"] == 0:
            ok, summary = False, summary + ": none, the build is scalar"
    elif neon is not None:
        summary += f", NEON: {neon}"
    if not ok and art["elf_machine"] != want:
        summary += f" (the target needs {want})"
    return {"ok": ok, "summary": summary}


def _drop_incorrect_tvm(c: _Compile, runners: dict, stage: Path) -> None:
    """auto ships the fastest *correct* artifact: a TVM build whose outputs differ is not
    measured, not shipped, and said so (a wrong artifact asked for by name still fails)."""
    chk = c.checks.get("numerics_tvm")
    if c.backend_req != "auto" or chk is None or chk["ok"] or not c.checks.get("numerics_onnxruntime", {}).get("ok"):
        return
    runners.pop("tvm", None)
    shutil.rmtree(stage / "tvm", ignore_errors=True)
    c.results["tvm"]["rejected"] = f"outputs differ from ONNX Runtime ({chk['summary']})"
    c.checks["rejected_tvm"] = {**c.checks.pop("numerics_tvm"), "summary": "TVM build not shipped: " + chk["summary"]}
    c.notes.append(f"tvm: not shipped, its outputs differ from ONNX Runtime ({chk['summary']})")


def _latencies(runners: dict) -> dict[str, float]:
    """Side by side: interleaved rounds, median per runner (ms)."""
    rounds: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(3):
        for k, fn in runners.items():
            rounds[k].append(fn())
    return {k: round(float(np.median(v)), 4) for k, v in rounds.items()}


def _measure_and_choose(c: _Compile, runners: dict) -> tuple[str, str]:
    from graphprune.workflow.verdicts import latency_verdict, not_measured_note, widths_line

    lat = c.measured = _latencies(runners)
    c.before["latency_ms"] = lat["dense"]
    for k in ("onnxruntime", "tvm"):
        if k in lat:
            c.results[k]["latency_ms"] = lat[k]
    chosen, reason = _choose(c.backend_req, c.target, c.results, c.opts, c.notes)
    deployed = c.results[chosen].get("latency_ms")
    if c.target.host and deployed:
        c.after["latency_ms"] = deployed
        c.latency = latency_verdict(lat["dense"], deployed, chosen + (" int8" if c.quant is not None else ""),
                                    lat.get("dense_same_settings") if chosen == "onnxruntime" else None)
        if c.nothing_pruned and c.quant is None:  # as prune says it
            c.latency["line"] += ("; nothing was pruned: the difference is the deployment's offline optimisation "
                                  "and session settings (and timing noise), not a smaller model")
        if chosen == "onnxruntime" and c.after.get("macs"):  # odd widths (--round-to off the lanes) in ORT
            hint = widths_line(c.latency["speedup"], c.before["macs"] / c.after["macs"],
                               prune_options(c.opts, c.target).round_to, c.target.simd_lanes,
                               f"the {c.target.name} target's")
            if hint:
                c.latency["widths_line"] = hint
    else:
        c.after["latency_note"] = not_measured_note(c.target.name, c.opts.rpc, lat["dense"], lat.get("pruned_host"))
        c.latency = {"dense_ort_ms": lat["dense"], "host_estimate_ms": lat.get("pruned_host"),
                     "line": "latency: " + c.after["latency_note"]}
    c.latency["measured_ms"] = {"dense input (ONNX Runtime)": lat["dense"],
                                "pruned (ONNX Runtime)": lat.get("onnxruntime"), "pruned (TVM)": lat.get("tvm")}
    if c.quant is not None:  # the deployment is int8; the float pruned model measured beside it
        c.latency["measured_ms"] = {"dense input (ONNX Runtime)": lat["dense"],
                                    "pruned int8 (ONNX Runtime)": lat.get("onnxruntime"),
                                    "pruned float (ONNX Runtime)": lat.get("pruned_float")}
    return chosen, reason


def _quant_quality(c: _Compile, outcome, stage: Path) -> None:
    """The int8 deployment against the dense float input: output cosine on the calibration
    data (the --max-drop gate, as for the float model: nothing written when it fails) and
    ORT latency at the representative shape."""
    from graphprune.workflow import quantized
    from graphprune.workflow.verdicts import require_fidelity

    deployed = stage / "onnxruntime" / "model.onnx"
    c.log_fn("onnxruntime: int8 deployment against the dense float input on the calibration data ...")
    fid = quantized.fidelity(c.src, deployed, outcome.calibration)
    lat = {"dense_float": c.measured.get("dense"), "pruned_float": c.measured.get("pruned_float"),
           "int8": c.measured.get("onnxruntime") if c.target.host else c.measured.get("int8_host")}
    max_drop = max_drop_of(c.opts)
    sec = quantized.section(c.quant, fid, deployed, lat, max_drop=max_drop, host=c.target.host)
    c.notes.extend(f"quantization: {n}" for n in sec["notes"])
    ok = max_drop is None or fid["drop"] <= max_drop
    c.checks["quantized_int8"] = {"ok": sec["runs_int8"] and ok, "summary": quantized.check_summary(sec, max_drop)}
    c.results["onnxruntime"]["quantization"] = sec
    require_fidelity(fid, max_drop, "int8 output fidelity",
                     "drop --quantize (nothing was pruned: the drop is int8's)" if not c.opts.prune else
                     "prune less, repair (--repair), or drop --quantize (int8 adds its own drop)")
    if not sec["runs_int8"]:
        raise BackendUnavailableError("--quantize int8: the ONNX Runtime deployment holds no int8 op (ONNX "
                                      "Runtime found nothing to quantize in this model)",
                                      hint="nothing was written; compile without --quantize")


def _report(c: _Compile, outcome, chosen: str, reason: str, argv) -> dict:
    from graphprune.frontends.onnx import load_onnx
    from graphprune.plan import file_sha256
    from graphprune.report import environment
    from graphprune.report.layers import compare_layers
    from graphprune.workflow.verdicts import accuracy_line

    plan = outcome.plan
    report = {
        "command": argv or ["graphprune", "compile", str(c.src)],
        "config": c.opts.resolved(c.target),
        "environment": environment(),
        "target": c.target.to_json(),
        "input": {"path": str(c.src), "sha256": file_sha256(c.src)},
        "backend": {"chosen": chosen, "reason": reason, "results": c.results},
        "before": c.before, "after": c.after,
        "input_shapes": outcome.shapes.to_json() if outcome.shapes is not None else None,  # what figures are at
        "plan": {"groups": len(plan.groups), "tensors": len(plan.tensors), "blocks": len(plan.blocks)},
        "layers": compare_layers(load_onnx(c.src, input_shapes=c.opts.input_shapes), outcome.model,
                                 outcome.shapes.shapes if outcome.shapes is not None else None,
                                 costs=(outcome.before, outcome.after)),
        "checks": c.checks, "verb": "compile",
        "notes": c.notes,
        "latency": c.latency,
        "quantization": (c.results.get("onnxruntime") or {}).get("quantization"),  # None without --quantize
        "accuracy": accuracy_line(outcome.calibration, outcome.fidelity, bool(plan.removes or outcome.sparsity)),
    }
    res = outcome.sparsity
    if res is not None:  # report.html plots report["sparsity"] (tensor -> fraction of zeros)
        report["sparsity"] = {k: round(r["sparsity"], 6) for k, r in res["tensors"].items()}
        report["sparsity_tensors"] = res["tensors"]
        report["sparsity_skipped"] = res["skipped"]
    return report


def _report_sections(report: dict, c: _Compile, outcome, stage: Path) -> None:
    """What every verb's report shows (graphprune.report.build): op counts, group widths,
    ORT per-layer latency, sensitivity curves, search, oracle, quality, red lines."""
    from graphprune.frontends.onnx import load_onnx
    from graphprune.report import build
    from graphprune.report.profile import profile_pair

    before_model = load_onnx(c.src, input_shapes=c.opts.input_shapes)
    common = build.sections(before_model, outcome, accuracy=report["accuracy"],
                            round_to=prune_options(c.opts, c.target).round_to, max_drop=max_drop_of(c.opts))
    report.update({k: v for k, v in common.items() if k not in ("layers", "plan", "input_shapes")})
    report["profile"] = profile_pair(c.src, stage / "model.pruned.onnx", outcome.shapes)
    build.add_layer_latency(report["layers"], report["profile"])
    report["kernel_wins"] = build.kernel_wins(c.results)
    report["red"] = build.red_lines(report, max_drop_of(c.opts))


def tvm_input_shapes(c: _Compile, pruned_path: Path, feeds: dict) -> dict | None:
    """The static shapes TVM builds at: --input-shape's (completed), else — for --backend tvm
    with --calib — the run's representative shapes, those of `feeds`, which the calibration
    data gave (the ONNX Runtime side and every figure use them too; an explicit request only:
    under auto, a dynamic model stays with the deployment that takes every size)."""
    given = completed_shapes(pruned_path, c.opts.input_shapes)
    if given or c.backend_req != "tvm" or c.opts.calib is None:
        return given
    from graphprune.backends.tvm.onnx_prep import dynamic_inputs

    proto = _graph_only(pruned_path)
    if proto is None or not dynamic_inputs(proto):
        return None
    shapes = {k: [int(d) for d in np.shape(v)] for k, v in feeds.items()}
    c.notes.append("TVM module built at " + ", ".join(f"{k}: {'×'.join(map(str, v))}" for k, v in shapes.items())
                   + " (the calibration data's shapes; the model's dynamic dims are fixed there: it runs at "
                   "those shapes only)")
    return shapes


def _compile_tvm(pruned_path: Path, target: Target, out: Path, opts: CompileOptions, backend_req: str,
                 notes: list, log_fn, input_shapes: dict | None = None) -> dict:
    try:
        from graphprune.backends.tvm import TvmBackend
    except ImportError as exc:  # pragma: no cover - package is part of graphprune
        raise BackendUnavailableError(f"TVM backend missing: {exc}") from exc
    tvm = TvmBackend()
    ok, why = tvm.available()
    if not ok:
        if backend_req == "tvm":
            raise BackendUnavailableError(f"TVM is not usable: {why}",
                                          hint='pip install "graphprune[tvm]" (apache-tvm 0.27)')
        notes.append(f"TVM not used: {why}")
        return {"skipped": why}
    from graphprune.cache import tvm_db_root

    db_root = Path(opts.db) if opts.db else Path(tvm_db_root())  # $XDG_CACHE_HOME/graphprune/tvm-db
    log_fn(f"tvm: import, tune ({opts.tune_trials} trials), build for {target.name} ...")
    try:
        res = tvm.compile(pruned_path, target, out, trials=opts.tune_trials, time_budget_s=opts.tune_time,
                          db_root=db_root, rpc=opts.rpc, rpc_key=opts.rpc_key,
                          input_shapes=input_shapes, log=log_fn)
    except (UsageError, BackendUnavailableError) as exc:
        if backend_req == "tvm":
            raise
        # auto: the ONNX Runtime deployment is built and checked; TVM's refusal (dynamic
        # inputs, operators its importer lacks) is a note, not the end of the run
        hint = f" ({exc.hint})" if getattr(exc, "hint", None) else ""
        notes.append(f"TVM not used: {exc}{hint}")
        return {"skipped": str(exc)}
    res["tuning_summary"] = tvm_tuning(res, opts.tune_trials)
    if res["tuning_summary"].startswith("UNTUNED"):
        notes.append(f"TVM build is {res['tuning_summary']}")
    return res


def tvm_tuning(tvm: dict, requested: int) -> str:
    """The TVM build's tuning in words. "UNTUNED" only when no kernel has a tuned schedule
    (and none went to graphprune's own sparse kernels); the requested and the measured trial
    counts are both stated."""
    cov = tvm.get("coverage") or {}
    tasks, scheduled = cov.get("tasks", 0), cov.get("with_schedule", 0)
    n_sparse = sum(1 for r in tvm.get("sparse_kernels") or [] if r.get("chosen") != "dense")
    measured = tvm.get("trials", 0)
    trials = f"--tune-trials {requested}, {measured} trials measured in this run"
    if 0 < requested < tasks and measured > requested:  # adapter.tune owes every kernel at least one
        trials += f" (at least one per kernel, {tasks} kernels: one without a tuned schedule runs ~100x slower)"
    if tvm.get("tuned"):
        light = ""
        if tasks and measured / tasks < 8:  # a schedule from one or two measurements is far from a tuned one
            light = (f"; about {measured / tasks:.0f} trial(s) per kernel, lightly tuned: a Linear kernel reached "
                     "ONNX Runtime's speed here only after 64-128 trials")
        return f"tuned ({trials}; {scheduled} of {tasks} kernels have a tuned schedule{light})"
    if scheduled == 0 and not n_sparse:
        return f"UNTUNED ({trials}; none of {tasks} kernels has a tuned schedule): expect ~100x slower than ONNX Runtime"
    return f"partly tuned ({trials}; {tasks - scheduled} of {tasks} kernels without a tuned schedule)"


def _choose(backend_req: str, target: Target, results: dict, opts: CompileOptions, notes: list) -> tuple[str, str]:
    tvm = results.get("tvm")
    if backend_req == "onnxruntime":
        return "onnxruntime", "requested with --backend onnxruntime"
    if backend_req == "tvm":
        return "tvm", f"requested with --backend tvm, {tvm.get('tuning_summary') or tvm_tuning(tvm, opts.tune_trials)}"
    if not tvm or "skipped" in tvm:
        return "onnxruntime", _why_no_tvm(tvm, target, opts)
    return _auto(tvm, target, results)


def _why_no_tvm(tvm: dict | None, target: Target, opts: CompileOptions) -> str:
    if opts.tune_trials <= 0:
        return "auto: no TVM tuning asked (--tune-trials 0), and untuned TVM code is ~100x slower than ONNX Runtime"
    if not target.host and not opts.rpc:
        return (f"auto: {target.name} is not this machine and no --rpc device was given to tune "
                "and measure TVM on, so ONNX Runtime is shipped")
    return "auto: TVM unavailable (" + (tvm or {}).get("skipped", "not built") + ")"


def _auto(tvm: dict, target: Target, results: dict) -> tuple[str, str]:
    if tvm.get("rejected"):
        return "onnxruntime", f"auto: the TVM build is not correct ({tvm['rejected']})"
    ort_ms = results.get("onnxruntime", {}).get("latency_ms")
    tvm_ms = tvm.get("latency_ms")
    if target.host and ort_ms and tvm_ms:
        if tvm_ms < ort_ms:
            return "tvm", f"auto: TVM measured faster here ({tvm_ms:.3f} ms vs ONNX Runtime {ort_ms:.3f} ms)"
        return "onnxruntime", f"auto: ONNX Runtime measured faster here ({ort_ms:.3f} ms vs TVM {tvm_ms:.3f} ms)"
    if tvm.get("tuned"):
        return "tvm", "auto: TVM tuned on the remote device"
    return "onnxruntime", "auto: TVM could not be measured against ONNX Runtime"
