"""`compile`: prune for a target, lower with a backend, check, and write a deployable folder.

    <model>.graphprune/<target>/
        model.pruned.onnx  plan.json  report.json  report.md
        onnxruntime/  (model.onnx [+ model.ort], session.json, run_model.py)
        tvm/          (when the TVM backend ran: compiled library + loader)

Untuned TVM code is ~100x slower than ONNX Runtime, so a TVM build is only shipped
tuned; `--backend auto` measures both on host targets and keeps the faster, and says why.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphprune.backends.targets import Target, resolve_target
from graphprune.errors import BackendUnavailableError, OracleMismatchError, UsageError

log = logging.getLogger(__name__)


@dataclass
class CompileOptions:
    target: str = "x86"
    backend: str = "auto"  # auto | onnxruntime | tvm
    ratio: float = 0.3
    prune: bool = True
    criterion: str = "l2"
    round_to: int | None = None  # default: the target's SIMD lanes
    ignore: list[str] = field(default_factory=list)
    plan: str | None = None
    tune_trials: int = 0
    tune_time: float | None = None
    db: str | None = None
    rpc: str | None = None
    rpc_key: str | None = None
    ort_format: bool = False
    check: bool = True
    out: str | None = None
    seed: int = 0
    input_shapes: dict | None = None
    # choosing what to prune and repairing (graphprune.cli.allocation_flags / allocation.driver)
    prune_options: dict = field(default_factory=dict)  # allocation, target_*, max_ratio, protect, ...
    calib: str | None = None  # .npz, image folder or module:function
    calib_preprocess: str | None = None
    calib_batch: int = 8
    calib_samples: int | None = None
    repair: str | None = None  # comma list of bias, bn, lsq, or all
    max_drop: float | None = None  # quality gate: max 1 - mean output cosine on calibration data
    sparsity: dict | None = None  # `sparsify` pass options (after pruning and repair); None: no sparsity
    force: bool = False  # out folder without graphprune's marker: replace only the files graphprune writes

    def resolved(self, target: Target) -> dict:
        d = dict(self.__dict__)
        d["round_to"] = self.round_to if self.round_to is not None else target.simd_lanes
        return d


def default_out_dir(model_path: Path, target: Target) -> Path:
    return model_path.with_name(model_path.name.removesuffix(".onnx") + ".graphprune") / target.name


def _cost(model) -> dict:
    from graphprune.analysis.cost import model_cost

    from graphprune.ir.serialize import model_nbytes

    c = model_cost(model)
    return {"params": c.params, "macs": c.macs, "bytes": model_nbytes(model)}


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
    from graphprune.oracle import compare_outputs

    diffs = compare_outputs(ref, got, names, rtol=rtol, atol=1e-5)
    worst = max((d.max_abs_err / max(d.scale, 1e-12) for d in diffs), default=0.0)
    return {"ok": all(d.ok for d in diffs), "worst_relative_error": worst, "rtol": rtol,
            "summary": f"worst error {worst:.2e} of output scale (tolerance {rtol:g})"}


def compile_model(model_path: str | Path, opts: CompileOptions, *, argv: list[str] | None = None,
                  log_fn=None) -> dict:
    """Run the whole compile; progress goes to `log_fn` (default: this module's logger)."""
    log_fn = log_fn or log.info
    import graphprune as gp
    from graphprune import oracle
    from graphprune.backends.onnxruntime import OrtBackend, measure
    from graphprune.passes import PassContext, PassManager
    from graphprune.passes.pruning.prune_channels import PruneChannels
    from graphprune.plan import Plan, file_sha256
    from graphprune.report import environment, write_report
    from graphprune.report.layers import compare_layers

    src = Path(model_path)
    target = resolve_target(opts.target)
    if opts.backend not in ("auto", "onnxruntime", "ort", "tvm"):
        raise UsageError(f"unknown backend {opts.backend!r}", hint="choose auto, onnxruntime or tvm")
    backend_req = "onnxruntime" if opts.backend == "ort" else opts.backend
    if target.device != "cpu" and backend_req != "tvm":
        log_fn(f"note: target {target.name} is a {target.device} device; the ONNX Runtime deployment lists "
               f"{', '.join(target.ort_providers)} and falls back to the CPU provider")
    out_dir = Path(opts.out) if opts.out else default_out_dir(src, target)
    from graphprune import outputs

    # before any work: the folder holds no input, and is new, empty or graphprune's own
    from graphprune.frontends.onnx import model_files

    inputs = [("input model", f) for f in model_files(src)] + [
        (what, p) for what, p in (("plan", opts.plan), ("--calib data", opts.calib)) if p and Path(p).exists()]
    outputs.check_paths(inputs, folders=[("output folder", out_dir)])
    outputs.check_output_dir(out_dir, force=opts.force)
    resolved = opts.resolved(target)
    model = gp.load(src, input_shapes=opts.input_shapes)
    before = _cost(model)
    log_fn(f"target {target.name}: {target.description}; TVM {target.tvm}; round_to {resolved['round_to']}")

    # ---- prune -------------------------------------------------------------------------
    ctx = PassContext()
    plan = Plan(tensors=[], groups=[])
    if opts.plan:
        ctx.results["plan_in"] = Plan.load(opts.plan)
        outputs.refuse_replay_on_own_product(model, ctx.results["plan_in"], model_name=str(src),
                                             plan_name=str(opts.plan))
    if opts.prune or opts.plan:
        pass_opts = {"ratio": opts.ratio, "criterion": opts.criterion, "round_to": resolved["round_to"],
                     "seed": opts.seed}
        if opts.ignore:
            pass_opts["ignore"] = opts.ignore
        pass_opts.update(opts.prune_options)
        if opts.calib:
            from graphprune.calibration import load_calibration

            ctx.results["calibration"] = load_calibration(opts.calib, model, preprocess=opts.calib_preprocess,
                                                          batch_size=opts.calib_batch, limit=opts.calib_samples)
        PassManager([PruneChannels(**pass_opts)]).run(model, ctx)
        plan = ctx.results["plan"]
    plan.model = {"path": str(src), "sha256": file_sha256(src)}
    checks: dict = {}
    original = gp.load(src, fold=False)
    feeds_sess = oracle.input_session(str(src))
    calib = ctx.results.get("calibration")
    shapes = oracle.representative_shapes(feeds_sess, user=opts.input_shapes,  # one resolution per run
                                          calib=calib.first() if calib is not None else None)
    feeds = oracle.random_inputs(feeds_sess, seed=opts.seed, shapes=shapes)
    if opts.check and plan.tensors:
        res = oracle.check(original, model, plan, shapes=shapes)
        checks["oracle"] = {"ok": res.ok, "summary": res.summary(), "inputs": shapes.describe()}
        log_fn(f"oracle inputs: {shapes.describe()}")
        log_fn(res.summary())
        if not res.ok:
            raise OracleMismatchError((f"nothing was compared: {res.refused}" if res.refused else
                                       "pruned model differs from the masked original") + "; nothing was written")
    if opts.repair:  # after the oracle: repair changes weights beyond zeroing
        from graphprune.passes.reconstruction.repair import run_repair

        for r in run_repair(model, ctx, opts.repair):
            checks[f"repair_{r['pass']}"] = {"ok": True, "summary": f"output error on calibration data "
                                             f"{r['error_before']:.4g} -> {r['error_after']:.4g}"
                                             + (" (undone: no improvement)" if r["reverted"] else "")}
    sparsity_res = _sparsify_step(model, ctx, opts, checks, log_fn) if opts.sparsity else None
    if opts.max_drop is not None:
        from graphprune.errors import QualityGateError

        if ctx.results.get("calibration") is None:
            raise UsageError("--max-drop needs calibration data (--calib)")
        fid = oracle.output_fidelity(str(src), model, ctx.results["calibration"].batches())
        ok = fid["drop"] <= opts.max_drop
        checks["fidelity"] = {"ok": ok, "summary": f"mean cosine {fid['mean_cosine']:.4f} on calibration data "
                                                   f"(drop {fid['drop']:.4f}, max {opts.max_drop:g})"}
        before["fidelity"], after_fid = 1.0, fid["mean_cosine"]
        if not ok:
            raise QualityGateError(f"output fidelity drop {fid['drop']:.4f} exceeds --max-drop {opts.max_drop:g}",
                                   hint="nothing was written; prune less, repair, or raise --max-drop")
    after = _cost(model)
    if opts.max_drop is not None:
        after["fidelity"] = after_fid

    # ---- lower + emit (into a staging dir, moved into place at the end) -------------------
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    outputs.clean_stale_temps(out_dir.parent)
    stage = outputs.mkdtemp_beside(out_dir)
    try:
        pruned_path = stage / "model.pruned.onnx"
        plan.save(stage / "plan.json")
        model.metadata_props[outputs.PLAN_KEY] = outputs.plan_digest(plan)  # one result with plan.json
        gp.save(model, pruned_path)
        notes: list[str] = []
        results: dict = {}
        ort_backend = OrtBackend()
        if backend_req in ("auto", "onnxruntime"):
            log_fn("onnxruntime: offline optimisation and session settings ...")
            results["onnxruntime"] = ort_backend.compile(pruned_path, target, stage / "onnxruntime",
                                                         ort_format=opts.ort_format, feeds=feeds, log_fn=log_fn)
        want_tvm = backend_req == "tvm" or (backend_req == "auto" and opts.tune_trials > 0
                                            and (target.host or opts.rpc))
        if want_tvm:
            results["tvm"] = _compile_tvm(pruned_path, target, stage / "tvm", opts, backend_req, notes, log_fn)
        # ---- numerics + latency on this machine ----------------------------------------------
        ref = oracle.session(model).run(None, feeds)
        names = [o.name for o in model.graph.outputs]
        runners = {}
        if "onnxruntime" in results and target.host:
            checks["numerics_onnxruntime"] = _numerics(ref, ort_backend.run(stage / "onnxruntime", feeds), names)
            runners["onnxruntime"] = lambda: measure(str(stage / "onnxruntime" / "model.onnx"),
                                                     results["onnxruntime"]["session"], feeds, repeats=10)
        tvm_res = results.get("tvm") or {}
        if tvm_res.get("library"):
            from graphprune.backends.tvm import adapter

            lib = stage / "tvm" / tvm_res["library"]
            notes.extend(f"tvm: {n}" for n in tvm_res.get("notes", []))
            art = tvm_res.get("checks", {})
            if art.get("elf_machine"):
                want = "AArch64" if target.arch == "aarch64" else "x86-64"
                ok = art["elf_machine"] == want and (art.get("neon") is not False)
                checks["artifact_tvm"] = {"ok": ok, "summary": f"ELF {art['elf_machine']}"
                                          + (f", NEON: {art['neon']}" if "neon" in art else "")}
            if tvm_res.get("host_runnable"):
                exe = adapter.load(lib)
                checks["numerics_tvm"] = _numerics(ref, adapter.run_loaded(exe, feeds), names)
                runners["tvm"] = lambda: _timed(lambda: adapter.run_loaded(exe, feeds), 10)
            elif target.arch == "aarch64" and adapter.qemu_available()[0]:
                try:
                    got = adapter.qemu_run(lib, feeds, download=True)
                    checks["numerics_tvm_qemu"] = _numerics(ref, got, names)
                except Exception as exc:  # emulation is a bonus check: say why it did not run
                    notes.append(f"tvm: qemu run skipped ({type(exc).__name__}: {exc})")
        dense_cfg = {"intra_op_num_threads": 0, "inter_op_num_threads": 0, "execution_mode": "ORT_SEQUENTIAL",
                     "graph_optimization_level": "ORT_ENABLE_ALL"}
        runners["dense"] = lambda: measure(str(src), dense_cfg, feeds, repeats=10)
        # side by side: interleaved rounds, median per runner
        rounds: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(3):
            for k, fn in runners.items():
                rounds[k].append(fn())
        lat = {k: round(float(np.median(v)), 4) for k, v in rounds.items()}
        before["latency_ms"] = lat["dense"]
        for k in ("onnxruntime", "tvm"):
            if k in lat:
                results[k]["latency_ms"] = lat[k]
        chosen, reason = _choose(backend_req, target, results, opts, notes)
        if target.host:
            after["latency_ms"] = results[chosen].get("latency_ms")
        else:
            after["latency_note"] = (f"not measured: {target.name} is not this machine"
                                     + (" (use graphprune bench --rpc)" if chosen == "tvm" else ""))
        for name, c in checks.items():
            if (name.startswith("numerics") or name.startswith("artifact")) and not c["ok"]:
                raise OracleMismatchError(f"{name}: compiled artifact differs from ONNX Runtime ({c['summary']})")

        report = {
            "command": argv or ["graphprune", "compile", str(src)],
            "config": resolved,
            "environment": environment(),
            "target": target.to_json(),
            "input": {"path": str(src), "sha256": file_sha256(src)},
            "backend": {"chosen": chosen, "reason": reason, "results": results},
            "before": before, "after": after,
            "plan": {"groups": len(plan.groups), "tensors": len(plan.tensors), "blocks": len(plan.blocks)},
            "layers": compare_layers(gp.load(src, input_shapes=opts.input_shapes), model),
            "checks": checks,
            "notes": notes,
        }
        if sparsity_res is not None:  # report.html plots report["sparsity"] (tensor -> fraction of zeros)
            report["sparsity"] = {k: round(r["sparsity"], 6) for k, r in sparsity_res["tensors"].items()}
            report["sparsity_tensors"] = sparsity_res["tensors"]
            report["sparsity_skipped"] = sparsity_res["skipped"]
        write_report(stage, report)
        outputs.install_output_dir(stage, out_dir, force=opts.force)  # only graphprune's files are replaced
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    report["out_dir"] = str(out_dir)
    if sparsity_res is not None:
        report["sparsity_summary"] = sparsity_res
    return report


def _sparsify_step(model, ctx, opts: CompileOptions, checks: dict, log_fn) -> dict:
    """Sparsity after pruning and repair; the zeros are checked against the record."""
    from graphprune.passes.sparsity.sparsify import run_sparsify
    from graphprune.sparsity_meta import measured_sparsity

    if opts.calib and ctx.results.get("calibration") is None:
        from graphprune.calibration import load_calibration

        ctx.results["calibration"] = load_calibration(opts.calib, model, preprocess=opts.calib_preprocess,
                                                      batch_size=opts.calib_batch, limit=opts.calib_samples)
    res = run_sparsify(model, ctx, opts.sparsity)
    meas = measured_sparsity(model, res["tensors"])
    ok = all(abs(meas.get(k, -1) - r["sparsity"]) < 1e-9 for k, r in res["tensors"].items())
    checks["sparsity"] = {"ok": ok, "summary": f"{res['spec']} by {res['criterion']}: {len(res['tensors'])} tensors, "
                                               f"{100 * res['overall']:.1f}% zeros (record matches the weights: {ok})"}
    log_fn(checks["sparsity"]["summary"])
    return res


def _compile_tvm(pruned_path: Path, target: Target, out: Path, opts: CompileOptions, backend_req: str,
                 notes: list, log_fn) -> dict:
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
    db_root = Path(opts.db) if opts.db else Path.home() / ".cache" / "graphprune" / "tvm-db"
    if opts.tune_trials <= 0:
        notes.append("TVM build is untuned (--tune-trials 0): expect it to be far slower than ONNX Runtime")
    log_fn(f"tvm: import, tune ({opts.tune_trials} trials), build for {target.name} ...")
    res = tvm.compile(pruned_path, target, out, trials=opts.tune_trials, time_budget_s=opts.tune_time,
                      db_root=db_root, rpc=opts.rpc, rpc_key=opts.rpc_key, input_shapes=opts.input_shapes,
                      log=log_fn)
    return res


def _choose(backend_req: str, target: Target, results: dict, opts: CompileOptions, notes: list) -> tuple[str, str]:
    tvm = results.get("tvm")
    if backend_req == "onnxruntime":
        return "onnxruntime", "requested with --backend onnxruntime"
    if backend_req == "tvm":
        if not tvm.get("tuned"):
            return "tvm", "requested with --backend tvm (UNTUNED: expect ~100x slower than ONNX Runtime)"
        return "tvm", f"requested with --backend tvm, tuned with {tvm.get('trials')} trials"
    if not tvm or "skipped" in tvm:
        if opts.tune_trials <= 0:
            return "onnxruntime", ("auto: no TVM tuning asked (--tune-trials 0), and untuned TVM code is ~100x "
                                   "slower than ONNX Runtime")
        if not target.host and not opts.rpc:
            return "onnxruntime", (f"auto: {target.name} is not this machine and no --rpc device was given to tune "
                                   "and measure TVM on, so ONNX Runtime is shipped")
        return "onnxruntime", "auto: TVM unavailable (" + (tvm or {}).get("skipped", "not built") + ")"
    ort_ms = results.get("onnxruntime", {}).get("latency_ms")
    tvm_ms = tvm.get("latency_ms")
    if target.host and ort_ms and tvm_ms:
        if tvm_ms < ort_ms:
            return "tvm", f"auto: tuned TVM measured faster here ({tvm_ms:.3f} ms vs ONNX Runtime {ort_ms:.3f} ms)"
        return "onnxruntime", f"auto: ONNX Runtime measured faster here ({ort_ms:.3f} ms vs tuned TVM {tvm_ms:.3f} ms)"
    if tvm.get("tuned"):
        return "tvm", "auto: TVM tuned on the remote device"
    return "onnxruntime", "auto: TVM could not be measured against ONNX Runtime"
