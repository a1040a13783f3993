"""The one module of graphprune that calls TVM's Python API (apache-tvm >=0.27,<0.28).

TVM's Python API moves every release; everything version-specific is here, so a new TVM
means editing this file (and the C++ runner in ``qemu.py``; the version gate and target
objects, shared with ``kernels/``, are in ``target.py``). ``tvm`` is imported inside
functions: importing graphprune never imports TVM. The first call that needs TVM checks
``tvm.__version__`` and raises :class:`graphprune.errors.BackendUnavailableError` (with an
install hint) when TVM is missing, broken or of another minor version.

Targets are TVM target JSON dicts (``{"kind": "llvm", "mtriple": "aarch64-linux-gnu",
"mattr": ["+neon"]}``) or tag names. ``log`` arguments take any ``print``-like callable;
the default logs to the ``graphprune.backends.tvm`` logger (the library never prints).

Availability and targets
    ``available() -> (ok, reason)``; ``host_target(num_cores=None) -> dict`` (this machine:
    LLVM triple, CPU, physical cores); ``canonical_target(t) -> dict`` (as TVM completes
    it); ``is_host_runnable(t)``; ``target_key(t) -> str`` and ``db_dir_for(db_root, t)``:
    one tuning database per target, keyed by a hash of the canonical target and the TVM
    minor version, so x86 records are never applied to aarch64 and records of another TVM
    release are never read.

Import
    ``import_onnx(onnx_path, input_shapes=None, *, log=None, return_specs=False)`` -> Relax
    IRModule with the weights bound as constants (``(mod, input specs)`` with
    ``return_specs``). ``input_shapes`` fixes dynamic dims and is required when the model
    has any (UsageError otherwise). Operators the importer lacks raise
    BackendUnavailableError listing them; when the importer fails, the model is
    constant-folded with ONNX Runtime at ORT_ENABLE_BASIC and imported again.

Tuning (MetaSchedule)
    ``tune(mod, target, db_dir, trials, time_budget_s=None, runner=None, log=None, *,
    seed=None, num_trials_per_iter=64, only=None) -> TuneStats``. The database in
    ``db_dir`` is persistent JSON (``database_workload.json`` +
    ``database_tuning_record.json``; logs in ``db_dir/logs``). Tasks (fused kernels) that
    already have a valid record there, from any model with the same layer shapes, are not
    tuned again; ``trials`` is spread over the remaining tasks, so tuning the same model
    twice does nothing the second time (TuneStats.trials == new_records == 0).
    ``runner``: None (measure on this machine; host targets only), ``rpc_runner(...)``, or
    ``"schedule-only"`` (measures nothing, all candidates cost the same: CI checks of
    cross targets, never a database that ships). Build/measure workers are started once
    per process (``shutdown_workers()``; also at exit). ``db_coverage(mod, target,
    db_dir)`` says which kernels have a schedule, without tuning.

Build and export
    ``build(mod, target, db_dir=None, *, prepack=True) -> executable``:
    DecomposeOpsForInference, zero pipeline (legalize, fuse), AttachAttrLayoutFreeBuffers,
    MetaScheduleApplyDatabase (if the database exists), SplitLayoutRewritePreproc +
    FoldConstant (weight prepacking, computed at compile time since weights are constants;
    LiftTransformParams when weights are parameters), ``tvm.compile``. Kernels without a
    record compile unscheduled (slow; the caller decides whether to ship that).
    ``export(executable, out_path, cross_compiler=None, metadata=None) -> [lib, meta]``:
    one self-contained shared library (weights embedded: nothing else is needed to load
    and run it) and ``<stem>.meta.json`` (ONNX input names/shapes/dtypes, target, tuning
    summary). ``cross_compiler`` e.g. ``"aarch64-linux-gnu-gcc"``.

Sparse kernels (``kernels/``: structure, linear, conv, rewrite)
    ``sparse_rewrite(mod, target, *, db_dir=None, min_sparsity=0.5, measure="auto",
    rpc=None, cross_compiler=None, repeats=20, log=None) -> (mod, table, notes)``: replaces
    matmul / Gemm (and conv2d, when ``kernels.conv`` provides candidates) layers whose
    constant weight has >= ``min_sparsity`` exact zeros by generated sparse kernels (CSR,
    BSR r×c, N:M; bias and a following relu fused), each only if it measured faster than
    the dense layer (built with the database of ``db_dir``, i.e. tuned when it has a
    record). ``measure``: "auto" (this machine for host targets; the RPC device
    ``rpc=(tracker, key)`` otherwise, libraries cross-compiled with ``cross_compiler``;
    with neither, a documented sparsity heuristic, noted in ``notes``), or a callable
    ``(kind, layer, one_layer_module) -> ms`` (tests inject timings). ``table``: one row
    per layer {"layer", "kind", "shape", "sparsity", "fused", "candidates": {name: ms},
    "dense_ms", "chosen", "speedup", "measured", "info"}. Build the result with ``build``.

Running
    ``load(lib) -> Loaded``; ``run_loaded(loaded, inputs)``; ``load_and_run(lib, inputs)
    -> [np.ndarray]``; ``benchmark(lib, inputs, repeats=50, warmup=5) -> {"median_ms",
    "p90_ms", "min_ms", "repeats"}`` (timed inside the runtime). ``inputs``: dict keyed by
    ONNX input names (or the sanitised Relax names), or a list in order.
    ``rpc_runner(tracker="host:port", key=...)`` (for ``tune``), ``load_remote(lib,
    tracker, key)``, ``remote_benchmark(lib, inputs, tracker, key, repeats=50, warmup=5,
    return_outputs=False)``: a device from an RPC tracker.
    ``qemu_available()``, ``qemu_run(lib, inputs, download=False)``: run an AArch64
    library once under qemu-aarch64 with the aarch64 TVM runtime (see ``qemu.py``).

Artifact checks (no TVM needed, from ``elf.py``)
    ``elf_machine(path) -> "AArch64" | "x86-64" | ...``; ``has_neon(path)`` (vector fmla
    present; None without an aarch64 objdump); ``neon_stats(path)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from graphprune.errors import BackendUnavailableError, UsageError

from .elf import elf_machine, has_neon, neon_stats  # noqa: F401  (re-exported)
from .target import (  # noqa: F401  (re-exported: adapter is the backend's API)
    INSTALL_HINT, PIP_SPEC, SUPPORTED, available, canonical_target, host_target,
)
from .target import check_tvm as _check_tvm  # noqa: F401  (tests clear its cache)
from .target import import_tvm as _tvm
from .target import jsonable as _jsonable
from .target import to_target as _target

# Per build batch. The default 30 s is overrun by a worker's first build when it imports all
# of tvm.s_tir.tensor_intrin (25-80 s on 2 cores): every build then times out and workers
# restart forever. Workers here skip that import (see _INTRINS_SRC); keep the margin anyway.
BUILDER_TIMEOUT_S = 120.0
RUNNER_TIMEOUT_S = 60.0
DEFAULT_DEVICE_CORES = 4  # tuning a remote CPU target that does not say (RPi 4/5, most SBCs)
DB_WORKLOAD = "database_workload.json"
DB_RECORDS = "database_tuning_record.json"

Log = Callable[[str], Any]
_LOG = logging.getLogger("graphprune.backends.tvm")


def _default_log(msg: str) -> None:
    _LOG.info(msg)



def target_key(target) -> str:
    """Directory-safe key of one target, e.g. "llvm_aarch64-0fdcc4c09164"."""
    canon = canonical_target(target)
    canon.pop("tag", None)
    blob = json.dumps({"target": canon, "tvm": ".".join(map(str, SUPPORTED))}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    arch = str(canon.get("mtriple", "host")).split("-")[0] or "host"
    safe = "".join(c if c.isalnum() or c in "._" else "_" for c in f"{canon.get('kind')}-{arch}")
    return f"{safe}-{digest}"


def db_dir_for(db_root: str | Path, target) -> Path:
    """``db_root/<target_key>/``: the tuning database of this target."""
    return Path(db_root) / target_key(target)


def _target_arch(target) -> str:
    canon = canonical_target(target)
    triple = str(canon.get("mtriple", "")) or platform.machine()
    return triple.split("-")[0]


def is_host_runnable(target) -> bool:
    """Can code for `target` run on this machine (same CPU architecture, CPU kind)?"""
    canon = canonical_target(target)
    if canon.get("kind") not in ("llvm", "c"):
        return False
    arch = _target_arch(target)
    host = platform.machine().lower()
    aliases = {"amd64": "x86_64", "arm64": "aarch64"}
    return aliases.get(arch.lower(), arch.lower()) == aliases.get(host, host)


# ----------------------------------------------------------------------------- import
def _unsupported_ops(model) -> list[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from . import onnx_prep

    known = set(_get_convert_map()) | {"Constant", "If"}
    bad = set()
    for domain, op in onnx_prep.op_types(model):
        if domain not in ("", "ai.onnx") or op not in known:
            bad.add(op if domain in ("", "ai.onnx") else f"{domain}.{op}")
    return sorted(bad)


def import_onnx(onnx_path: str | Path, input_shapes: Mapping[str, Sequence[int]] | None = None,
                *, log: Log | None = None, return_specs: bool = False):
    """ONNX file -> Relax IRModule (weights bound as constants). See module docstring.

    With ``return_specs``: (module, [{"name", "shape", "dtype"}] of the ONNX inputs as
    imported, i.e. with the fixed shapes).
    """
    _tvm()
    from tvm.relax.frontend.onnx import from_onnx

    log = log or _default_log
    from . import onnx_prep

    model = onnx_prep.with_static_inputs(onnx_prep.load(onnx_path), input_shapes)
    onnx_prep.hidden_norms_written_out(model)

    folded = False
    unsupported = _unsupported_ops(model)
    if unsupported:
        # Folding can remove unsupported ops that only compute constants (shape subgraphs).
        try:
            model, folded = onnx_prep.ort_basic_fold(model), True
            unsupported = _unsupported_ops(model)
        except Exception as e:  # noqa: BLE001
            log(f"tvm: ONNX Runtime folding failed ({type(e).__name__}: {e})")
    if unsupported:
        raise BackendUnavailableError(
            f"TVM's ONNX importer does not support: {', '.join(unsupported)}",
            hint="compile this model with --backend onnxruntime",
        )

    first_error: Exception | None = None
    for attempt in ("as is", "folded"):
        if attempt == "folded":
            if folded:
                break
            log(f"tvm: import failed ({type(first_error).__name__}: {first_error}); "
                "retrying after ONNX Runtime ORT_ENABLE_BASIC constant folding")
            try:
                model = onnx_prep.ort_basic_fold(model)
            except Exception as e:  # noqa: BLE001
                log(f"tvm: ONNX Runtime folding failed ({type(e).__name__}: {e})")
                break
        said = _Captured()
        try:
            import warnings

            with warnings.catch_warnings(), _captured_output() as said:
                warnings.simplefilter("ignore")
                try:
                    mod = from_onnx(model, keep_params_in_input=False)
                except Exception as exc:  # noqa: BLE001 - its frames hold a BlockBuilder whose
                    import gc  # destructor warns: released here, inside the capture

                    failed = exc.with_traceback(None)
                    del exc
                    gc.collect()
                    raise failed from None
            return (mod, onnx_prep.input_specs(model)) if return_specs else mod
        except Exception as e:  # noqa: BLE001 - the importer raises anything
            first_error = first_error or e
            if said.text:  # the importer's own dump (IR fragments): kept out of the user's terminal
                log(f"tvm: the importer printed {len(said.text.splitlines())} line(s), first: "
                    f"{said.text.strip().splitlines()[0][:200]}")
    raise BackendUnavailableError(
        f"TVM's ONNX importer failed: {type(first_error).__name__}: {first_error}",
        hint="compile this model with --backend onnxruntime",
    )


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_output():
    """Whatever TVM's importer prints to stdout/stderr (Python prints and C++ logs of Relax IR
    fragments, on a failed first attempt) goes to a temporary file; `.text` after the block."""
    import io
    import tempfile

    got, python_side = _Captured(), io.StringIO()  # Python's prints, wherever sys.stdout points
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stdout(python_side), contextlib.redirect_stderr(python_side):
                yield got
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            got.text = python_side.getvalue() + tmp.read().decode("utf-8", "replace")


# ----------------------------------------------------------------------------- pipeline
def _prepare(mod, target):
    """The part of the pipeline shared by tuning and building (database keys must match)."""
    tvm = _tvm()
    from tvm import relax

    # zero_pipeline applies the current MetaSchedule database if there is one; prepare
    # outside any database scope so tuning and building see the same un-applied functions.
    with _target(target):
        mod = tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.pipeline.zero_pipeline(),
            relax.transform.AttachAttrLayoutFreeBuffers(),
        ])(mod)
    return _release_own_kernels(mod)


OWN_KERNEL_ATTR = "graphprune.kernel"


def _is_own_kernel(mod) -> bool:
    """Is this (one-function) tuning-task module one of graphprune's own kernels?"""
    from tvm import tirx

    return any(isinstance(f, tirx.PrimFunc) and f.attrs is not None
               and (OWN_KERNEL_ATTR in f.attrs or bool(f.attrs.get("tirx.is_scheduled", False)))
               for _, f in mod.functions.items())


def _set_aside_own_kernels(mod):
    """(module without graphprune's kernels, {GlobalVar: PrimFunc} of them)."""
    tvm = _tvm()
    from tvm import tirx

    own = {gv: f for gv, f in mod.functions.items()
           if isinstance(f, tirx.PrimFunc) and f.attrs is not None and OWN_KERNEL_ATTR in f.attrs}
    if not own:
        return mod, own
    rest = {gv: f for gv, f in mod.functions.items() if gv not in own}
    return tvm.IRModule(rest, attrs=mod.attrs), own


def _release_own_kernels(mod):
    """graphprune's hand-scheduled kernels (kernels/*, attr OWN_KERNEL_ATTR) have no
    block structure: keep layout rewriting (which needs a root block) away from them."""
    from tvm import tirx

    from tvm import relax

    own = [gv for gv, f in mod.functions.items()
           if isinstance(f, tirx.PrimFunc) and f.attrs is not None and OWN_KERNEL_ATTR in f.attrs]
    if not own:
        return mod
    # AttachAttrLayoutFreeBuffers left the originals next to its annotated copies
    mod = relax.transform.DeadCodeElimination(["main"])(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None \
                and OWN_KERNEL_ATTR in func.attrs and "layout_free_buffers" in func.attrs:
            mod[gv] = func.without_attr("layout_free_buffers")
    return mod


def _open_db(db_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    db_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(db_dir / DB_WORKLOAD),
        path_tuning_record=str(db_dir / DB_RECORDS),
        allow_missing=True,
        module_equality="structural",
    )


@contextlib.contextmanager
def _db_lock(db_dir: Path):
    """Exclusive lock: two processes appending to one JSON database corrupt it."""
    db_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(db_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_target_file(db_dir: Path, target) -> None:
    f = db_dir / "target.json"
    if not f.exists():
        f.write_text(json.dumps({"target": canonical_target(target),
                                 "tvm": _tvm().__version__}, indent=1, sort_keys=True))


@dataclasses.dataclass
class TuneStats:
    db_dir: str
    target_key: str
    tasks_total: int = 0          # tuning tasks (fused TIR functions) in the model
    tasks_reused: int = 0         # already had a valid record in the database
    tasks_tuned: int = 0          # tuned in this run
    trials: int = 0               # candidates measured in this run (= new records)
    new_records: int = 0
    valid_new_records: int = 0    # ... of which built and ran
    records_total: int = 0        # database size after the run
    seconds: float = 0.0          # wall time of tune()
    stopped_by_budget: bool = False
    untuned_tasks: list = dataclasses.field(default_factory=list)  # tuned but no valid record

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# MetaSchedule imports tvm.s_tir.tensor_intrin in the tuning process (TuneContext) and in
# every build worker (default_build); importing it whole takes 30-80 s on 2 cores, 26 s of
# which parse the CUDA intrinsics alone. This source, run by exec(), imports the package
# with every submodule stubbed, drops the stubs, then imports for real only the submodules
# named in NEEDED (a later target needing others imports them then). The tuning process
# needs its target's intrinsics (schedule rules look them up by name while sampling);
# CPU build workers need none: they compile already-scheduled (already tensorized) TIR.
# A partial of the exec builtin pickles by reference: workers need no graphprune on their path.
_INTRINS_SRC = """
import importlib, sys, types
pkg = "tvm.s_tir.tensor_intrin"
if pkg not in sys.modules:
    stubs = {}
    for name in ("cuda", "rocm", "hexagon", "metal", "arm_cpu", "x86", "riscv_cpu",
                 "dot_product_common"):
        full = pkg + "." + name
        if full not in sys.modules:
            stubs[full] = sys.modules[full] = types.ModuleType(full)
    try:
        importlib.import_module(pkg)
    finally:
        parent = sys.modules.get(pkg)
        for full, stub in stubs.items():
            if sys.modules.get(full) is stub:
                del sys.modules[full]
            short = full.rsplit(".", 1)[1]
            if parent is not None and getattr(parent, short, None) is stub:
                delattr(parent, short)
for name in NEEDED:
    importlib.import_module(pkg + "." + name)
"""


def _needed_intrins(tgt) -> tuple[str, ...]:
    if not _is_cpu(tgt):
        return ("cuda", "rocm", "metal", "hexagon", "arm_cpu", "x86", "riscv_cpu")
    arch = (str(tgt.attrs.get("mtriple", "")) or platform.machine()).split("-")[0].lower()
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        return ("x86",)
    if arch.startswith(("aarch64", "arm")):
        return ("arm_cpu",)
    if arch.startswith("riscv"):
        return ("riscv_cpu",)
    return ("x86", "arm_cpu", "riscv_cpu")


def _is_cpu(tgt) -> bool:
    return tgt.kind.name in ("llvm", "c")


def _register_tensor_intrins(tgt) -> None:
    exec(_INTRINS_SRC, {"NEEDED": _needed_intrins(tgt)})  # noqa: S102 - fixed source above


def _builder_initializer(tgt):
    needed = () if _is_cpu(tgt) else _needed_intrins(tgt)
    return functools.partial(exec, _INTRINS_SRC, {"NEEDED": needed})


# Build and measure workers are kept for the life of the process: starting them costs
# 10-30 s (each imports TVM and the intrinsics), more than tuning a small model.
_WORKERS: dict = {}


def _shared_builder(tgt):
    key = ("builder", "cpu" if _is_cpu(tgt) else tgt.kind.name)
    if key not in _WORKERS:
        _, PooledBuilder, _ = _py_classes()
        _register_shutdown()
        _WORKERS[key] = PooledBuilder(max_workers=os.cpu_count() or 1,
                                      timeout_sec=BUILDER_TIMEOUT_S,
                                      initializer=_builder_initializer(tgt))
    return _WORKERS[key]


def _shared_local_runner():
    if "runner" not in _WORKERS:
        from tvm.s_tir import meta_schedule as ms

        _register_shutdown()
        _WORKERS["runner"] = ms.runner.LocalRunner(
            timeout_sec=RUNNER_TIMEOUT_S,
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50),
        )
    return _WORKERS["runner"]


@functools.lru_cache(maxsize=1)
def _register_shutdown() -> None:
    import atexit

    atexit.register(shutdown_workers)


def shutdown_workers() -> None:
    """Stop the build/measure worker processes kept by tune() (they restart on demand)."""
    for key in list(_WORKERS):
        worker = _WORKERS.pop(key)
        if hasattr(worker, "close"):
            worker.close()
        elif hasattr(worker, "pool"):
            with contextlib.suppress(Exception):
                worker.pool.shutdown()


@functools.lru_cache(maxsize=1)
def _py_classes():
    """MetaSchedule Python subclasses (need TVM at class creation, hence built lazily)."""
    return _schedule_only_runner_class(), _pooled_builder_class(), _progress_class()


@functools.lru_cache(maxsize=1)
def _schedule_only_runner_class():
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object

    @derived_object
    class _FixedFuture(ms.runner.PyRunnerFuture):
        def done(self) -> bool:
            return True

        def result(self):
            return ms.runner.RunnerResult([1.0], None)

    @derived_object
    class ScheduleOnlyRunner(ms.runner.PyRunner):
        """Measures nothing: for building artifacts of targets with no device at hand."""

        def run(self, runner_inputs):
            return [_FixedFuture() for _ in runner_inputs]

    return ScheduleOnlyRunner


@functools.lru_cache(maxsize=1)
def _pooled_builder_class():
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import local_builder
    from tvm.ir.utils import derived_object
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(ms.builder.PyBuilder):
        """LocalBuilder whose worker pool lives across batches.

        LocalBuilder starts a fresh pool for every batch (a worker memory leak upstream), so
        every batch pays the worker start-up again; here a pool serves `recycle_every`
        batches. Call close() when tuning ends.
        """

        def __init__(self, max_workers: int, timeout_sec: float, initializer,
                     recycle_every: int = 16):
            self.max_workers = max_workers
            self.timeout_sec = timeout_sec
            self.initializer = initializer
            self.recycle_every = recycle_every
            self._pool = None
            self._uses = 0

        def _get_pool(self):
            if self._pool is None or self._uses >= self.recycle_every:
                self.close()
                self._pool = PopenPoolExecutor(max_workers=self.max_workers,
                                               timeout=self.timeout_sec,
                                               initializer=self.initializer)
                self._uses = 0
            self._uses += 1
            return self._pool

        def build(self, build_inputs):
            pool = self._get_pool()
            work = [(None, None, b.mod, b.target, local_builder._serialize_params(b.params))
                    for b in build_inputs]
            results = []
            for res in pool.map_with_error_catching(
                    lambda x, _f=local_builder._worker_func: _f(*x), work):
                if res.status == StatusKind.COMPLETE:
                    results.append(ms.builder.BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(ms.builder.BuilderResult(
                        None, f"PooledBuilder: timeout after {self.timeout_sec} s"))
                else:
                    results.append(ms.builder.BuilderResult(
                        None, f"PooledBuilder: exception\n{res.value}"))
            return results

        def close(self):
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    return PooledBuilder


@functools.lru_cache(maxsize=1)
def _progress_class():
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        """Logs each measured batch through graphprune's log callable."""

        def __init__(self, log, measured: dict):
            self.log = log
            self.measured = measured

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            ok = [float(sum(r.run_secs) / len(r.run_secs)) for r in runner_results
                  if r.run_secs is not None and len(r.run_secs)]
            name = str(task_scheduler.tasks_[task_id].ctx.task_name)
            self.measured[name] = self.measured.get(name, 0) + len(measure_candidates)
            if not len(measure_candidates):
                return
            failed = len(measure_candidates) - len(ok)
            self.log(f"tvm:   {name}: {len(measure_candidates)} measured"
                     + (f", {failed} failed" if failed else "")
                     + (f", best {min(ok) * 1e6:.1f} us" if ok else ""))

    return Progress


def schedule_only_runner():
    return _py_classes()[0]()


def _count_records(db) -> tuple[int, int]:
    records = db.get_all_tuning_records()
    valid = sum(1 for r in records if r.run_secs is not None and len(r.run_secs) > 0)
    return len(records), valid


def _search_strategy(per_task: int):
    """Evolutionary search sized to the trial budget.

    The defaults (population 512, 4 genetic iterations) cost 5-20 s of search per batch on
    2 cores; that is noise at 1000 trials and most of the time at 8-16. Small budgets get a
    smaller population (still >> the number of candidates measured).
    """
    from tvm.s_tir import meta_schedule as ms

    if per_task >= 64:
        return "evolutionary"
    if per_task > 16:
        return ms.search_strategy.EvolutionarySearch(
            population_size=128, init_min_unmeasured=32, genetic_num_iters=2)
    return ms.search_strategy.EvolutionarySearch(
        population_size=64, init_min_unmeasured=16, genetic_num_iters=1)


_MS_LOGGER = "tvm.s_tir.meta_schedule"


@contextlib.contextmanager
def _quiet_meta_schedule():
    """Make MetaSchedule's logging safe and quiet for one tuning call.

    MetaSchedule rebuilds its loggers with `logging.config.dictConfig` on every tuning
    call, listing every handler already on the ``tvm.s_tir.meta_schedule`` logger *by
    name*: a handler someone else attached (pytest >= 9.1's unnamed capture handlers, or a
    user's own logging set-up) makes it fail (``None.format``) or refuse ("Unable to
    add handler"). So foreign handlers are detached for the call and put back after it;
    MetaSchedule's own handlers (named ``tvm.s_tir.meta_schedule.*``) stay.
    Its console shows every trial and a task table at INFO: keep it to warnings (the full
    log still goes to <db_dir>/logs/) unless GRAPHPRUNE_TVM_VERBOSE is set."""
    import logging

    logger = logging.getLogger(_MS_LOGGER)
    old_level = logger.level
    foreign = [h for h in logger.handlers if not (h.get_name() or "").startswith(_MS_LOGGER + ".")]
    for h in foreign:
        logger.removeHandler(h)
    if not os.environ.get("GRAPHPRUNE_TVM_VERBOSE"):
        logger.setLevel(logging.WARNING)  # read by create_loggers for the console handler
    try:
        yield
    finally:
        logger.setLevel(old_level)
        for h in foreign:
            if h not in logger.handlers:
                logger.addHandler(h)


def _task_done(db, task, tgt) -> bool:
    wl = task.dispatched[0]
    return bool(db.has_workload(wl)) and db.query_tuning_record(wl, tgt, task.task_name) is not None


ATTEMPTS_FILE = "graphprune_trials.json"  # per kernel: trials already spent on it


def _workload_key(task) -> str:
    _tvm()
    from tvm_ffi import structural_hash  # 0.27: tvm.ir no longer re-exports it

    return f"{structural_hash(task.dispatched[0]) & 0xFFFFFFFFFFFFFFFF:016x}"


def _read_attempts(db_dir: Path) -> dict:
    f = db_dir / ATTEMPTS_FILE
    try:
        return json.loads(f.read_text()) if f.exists() else {}
    except (OSError, ValueError):
        return {}


def _write_attempts(db_dir: Path, attempts: dict) -> None:
    tmp = db_dir / (ATTEMPTS_FILE + ".partial")
    tmp.write_text(json.dumps(attempts, indent=0, sort_keys=True))
    os.replace(tmp, db_dir / ATTEMPTS_FILE)


@contextlib.contextmanager
def deferred_interrupts(log: Log | None = None):
    """Ctrl-C (SIGINT) and SIGTERM inside MetaSchedule's tuning call are held until the call
    returns, then raised as they would have been: raised inside it, they unwound through
    TVM's C++ (the Python cost-model callback) and ended the process in std::terminate,
    a segfault (exit 139) or a bare 'internal error', leaving the staged output behind
    (4 of 7 interrupts, new-user probe). A second signal while one is held exits at once
    (128 + signal), without unwinding. Main thread only; elsewhere nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    before = {sig: h for sig, h in before.items() if h is not signal.SIG_IGN}  # an ignored signal stays ignored

    def hold(signum, frame):
        if held:
            os._exit(128 + signum)
        held.append(signum)
        (log or _default_log)(f"tvm: {signal.Signals(signum).name} received: stopping after this tuning round "
                              "(again to stop at once)")

    for sig in before:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if held:
        handler = before[held[0]]
        if callable(handler):
            handler(held[0], None)  # SIGINT: KeyboardInterrupt; SIGTERM: graphprune's SystemExit(143)
        else:
            signal.raise_signal(held[0])  # the default action, as if it had come now


def tune(mod, target, db_dir: str | Path, trials: int, time_budget_s: float | None = None,
         runner=None, log: Log | None = None, *, seed: int | None = None,
         num_trials_per_iter: int = 64, only: Sequence[str] | None = None) -> TuneStats:
    """MetaSchedule-tune the kernels of `mod` that the database in `db_dir` lacks.

    ``trials`` is the budget for this model: each kernel (task) is owed
    ceil(trials / tasks) trials. The database remembers how many trials each kernel already
    had (``graphprune_trials.json``, keyed by the kernel's structure, so shared by every
    model with that layer shape); a kernel is tuned only for what it is still owed, and
    not at all when it has a valid record and is owed nothing, so tuning the same model
    again (or another with the same layers) does no new trials. A kernel whose search
    space is exhausted counts as fully tuned. Tuning runs in rounds of at most
    ``num_trials_per_iter`` trials per kernel; ``time_budget_s`` is checked before each
    round (0: tune nothing), so it can be overrun by one round. Build/measure workers start
    on first use (10-30 s on 2 cores) and are kept for the process
    (``shutdown_workers()``). ``only``: tune just kernels whose task name contains one of
    these strings (e.g. ["conv2d"]).
    """
    tvm = _tvm()
    from tvm.s_tir import meta_schedule as ms

    log = log or _default_log
    t0 = time.monotonic()
    db_dir = Path(db_dir)
    tgt = _target(target)
    stats = TuneStats(db_dir=str(db_dir), target_key=target_key(target))
    schedule_only = runner == "schedule-only"
    if isinstance(runner, str):
        if not schedule_only:
            raise ValueError(f"unknown runner {runner!r}")
        runner = schedule_only_runner()
    if runner is None and not is_host_runnable(target) and trials > 0:
        raise BackendUnavailableError(
            f"cannot measure {_target_arch(target)} kernels on this {platform.machine()} machine",
            hint="tune through a device: --rpc host:port --rpc-key KEY (tvm.exec.rpc_tracker)",
        )
    if tgt.kind.name == "llvm" and "num-cores" not in tgt.attrs:
        # MetaSchedule needs the core count of the device (parallel extents); the database
        # key stays that of the target as given.
        cores = host_target()["num-cores"] if is_host_runnable(target) else DEFAULT_DEVICE_CORES
        log(f"tvm: target has no num-cores; tuning for {cores} cores")
        base = dict(target) if isinstance(target, Mapping) else canonical_target(target)
        tgt = _target({**base, "num-cores": cores})

    prepared = _prepare(mod, tgt)
    with _db_lock(db_dir), _quiet_meta_schedule():
        _write_target_file(db_dir, target)
        db = _open_db(db_dir)
        attempts = _read_attempts(db_dir)
        before, before_valid = _count_records(db)
        tasks = [t for t in ms.relax_integration.extract_tasks(prepared, tgt)
                 if not _is_own_kernel(t.dispatched[0])]
        selected = [t for t in tasks if not only or any(o in t.task_name for o in only)]
        stats.tasks_total = len(tasks)
        per_task = max(1, -(-trials // max(1, len(selected)))) if trials > 0 else 0
        keys = {t.task_name: _workload_key(t) for t in tasks}
        owed = {}
        for t in selected:
            due = per_task - int(attempts.get(keys[t.task_name], 0))
            if due > 0 or not _task_done(db, t, tgt):
                owed[t.task_name] = max(due, 1) if trials > 0 else 0
        owed = {k: v for k, v in owed.items() if v > 0}
        stats.tasks_reused = sum(1 for t in tasks if t.task_name not in owed and _task_done(db, t, tgt))
        log(f"tvm: {len(tasks)} kernels, {stats.tasks_reused} already tuned in {db_dir}, "
            f"{len(owed)} to tune")
        if owed and time_budget_s is not None and time_budget_s <= 0:
            stats.stopped_by_budget = True
            log("tvm: no time budget for tuning")
        elif owed:
            _register_tensor_intrins(tgt)
            work_dir = db_dir / "logs"
            work_dir.mkdir(exist_ok=True)
            Progress = _py_classes()[2]
            builder = _shared_builder(tgt)
            runner = runner if runner is not None else _shared_local_runner()
            # Nothing to learn from constant costs: skip XGBoost training (seconds per batch).
            cost_model = ms.cost_model.CostModel.create("random", seed=seed) if schedule_only else \
                ms.cost_model.CostModel.create("xgb", num_tuning_cores=os.cpu_count() or 1,
                                               tree_method="auto")
            measured: dict[str, int] = {}
            callbacks = list(ms.measure_callback.MeasureCallback.create("default")) + \
                [Progress(log, measured)]
            stats.tasks_tuned = len(owed)
            log(f"tvm: tuning {len(owed)} kernels, up to {max(owed.values())} trials each"
                + (f", time budget {time_budget_s:.0f} s" if time_budget_s else ""))
            rnd = 0
            while owed:
                if time_budget_s is not None and time.monotonic() - t0 > time_budget_s:
                    stats.stopped_by_budget = True
                    log(f"tvm: time budget of {time_budget_s:.0f} s spent; stopping")
                    break
                n = max(1, min(num_trials_per_iter, max(owed.values())))
                todo = [t for t in selected if t.task_name in owed]
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    todo, str(work_dir), strategy=_search_strategy(per_task),
                    seed=None if seed is None else seed + rnd)
                measured.clear()
                with deferred_interrupts(log), tvm.transform.PassContext(opt_level=3):
                    ms.tune.tune_tasks(
                        tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                        max_trials_global=n * len(todo), max_trials_per_task=n,
                        num_trials_per_iter=n, builder=builder, runner=runner,
                        database=db, cost_model=cost_model, measure_callbacks=callbacks,
                        task_scheduler="round-robin",
                    )
                for t in todo:
                    name, got = t.task_name, measured.get(t.task_name, 0)
                    # fewer than asked: the search space is exhausted, nothing more to try
                    spent = per_task if got < min(n, owed[name]) else got
                    key = keys[name]
                    attempts[key] = int(attempts.get(key, 0)) + spent
                    owed[name] -= spent
                    if owed[name] <= 0:
                        del owed[name]
                _write_attempts(db_dir, attempts)
                rnd += 1
        stats.untuned_tasks = [t.task_name for t in tasks if not _task_done(db, t, tgt)]
        after, after_valid = _count_records(db)
    stats.new_records = stats.trials = after - before
    stats.valid_new_records = after_valid - before_valid
    stats.records_total = after
    stats.seconds = time.monotonic() - t0
    log(f"tvm: {stats.trials} trials ({stats.valid_new_records} valid) in "
        f"{stats.seconds:.1f} s; {len(stats.untuned_tasks)} kernels without a schedule")
    return stats


def _has_weight_params(mod) -> bool:
    main = mod["main"]
    num_input = main.attrs.get("num_input") if main.attrs is not None else None
    return num_input is not None and int(num_input) < len(main.params)


def build(mod, target, db_dir: str | Path | None = None, *, prepack: bool = True):
    """Relax IRModule -> executable, applying the database of `db_dir` when given."""
    tvm = _tvm()
    from tvm import relax

    tgt = _target(target)
    mod = _prepare(mod, tgt)
    with tgt, tvm.transform.PassContext(opt_level=3):
        if db_dir is not None and (Path(db_dir) / DB_RECORDS).exists():
            with _open_db(Path(db_dir)):
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        if prepack:
            # Tuned kernels may want weights in a blocked layout ("layout rewrite"): split
            # that transform out of the kernel, then precompute it. Weights are constants
            # (keep_params_in_input=False), so FoldConstant packs them at compile time;
            # LiftTransformParams only matters for weights passed as parameters.
            passes = [relax.transform.SplitLayoutRewritePreproc()]
            if _has_weight_params(mod):
                passes.append(relax.transform.LiftTransformParams())
            passes.append(relax.transform.FoldConstant())
            # SplitLayoutRewritePreproc needs every TIR function to have a root block;
            # graphprune's own kernels have none (and no layout rewrite): set them aside.
            mod, own = _set_aside_own_kernels(mod)
            mod = tvm.transform.Sequential(passes)(mod)
            for gv, func in own.items():
                mod[gv] = func
        return tvm.compile(mod, target=tgt)


def db_coverage(mod, target, db_dir: str | Path | None) -> dict:
    """Which tuning tasks of `mod` have a valid schedule in the database of `db_dir`.

    {"tasks": n, "with_schedule": n, "missing": [task names]}. Reads only (no tuning).
    """
    _tvm()
    from tvm.s_tir import meta_schedule as ms

    tgt = _target(target)
    tasks = [t for t in ms.relax_integration.extract_tasks(_prepare(mod, tgt), tgt)
             if not _is_own_kernel(t.dispatched[0])]
    if db_dir is None or not (Path(db_dir) / DB_RECORDS).exists():
        missing = [t.task_name for t in tasks]
    else:
        db = _open_db(Path(db_dir))
        missing = [t.task_name for t in tasks if not _task_done(db, t, tgt)]
    return {"tasks": len(tasks), "with_schedule": len(tasks) - len(missing), "missing": missing}


# ----------------------------------------------------------------------------- export/run
def meta_path(lib_path: str | Path) -> Path:
    p = Path(lib_path)
    return p.with_name(p.name.split(".")[0] + ".meta.json")


def export(executable, out_path: str | Path, cross_compiler: str | None = None,
           metadata: Mapping | None = None) -> list[Path]:
    """Write the shared library (weights embedded) and its ``.meta.json``; returns both."""
    _tvm()
    from tvm.support import cc

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    if cross_compiler:
        fcompile = cc.cross_compiler(cross_compiler)
        executable.export_library(str(tmp), fcompile=fcompile)
    else:
        executable.export_library(str(tmp))
    os.replace(tmp, out_path)  # atomic: a failed export leaves no half library
    meta = {"library": out_path.name, "format": "tvm-relax-vm", "tvm": _tvm().__version__,
            "entry": "main", "weights": "embedded"}
    meta.update(_jsonable(dict(metadata or {})))
    mp = meta_path(out_path)
    mp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    return [out_path, mp]


def _arrange_inputs(vm, inputs, meta: dict | None) -> list:
    import numpy as np

    if not isinstance(inputs, Mapping):
        return [np.ascontiguousarray(a) for a in inputs]
    arity = vm._get_function_arity("main")
    names = [vm._get_function_param_name("main", i) for i in range(arity)]
    onnx_names = [s.get("name") for s in (meta or {}).get("inputs", [])]
    args = []
    for i, name in enumerate(names):
        candidates = [name]
        if i < len(onnx_names) and onnx_names[i]:
            candidates.insert(0, onnx_names[i])
        candidates += [k for k in inputs if k.replace(".", "_") == name]
        key = next((c for c in candidates if c in inputs), None)
        if key is None:
            raise KeyError(f"no input given for {name!r} (expected: {onnx_names or names})")
        args.append(np.ascontiguousarray(inputs[key]))
    return args


def _to_numpy(out) -> list:
    tvm = _tvm()
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    if isinstance(out, (list, tuple)) or type(out).__name__ == "Array":
        res = []
        for o in out:
            res.extend(_to_numpy(o))
        return res
    return [out]


def _read_meta(lib_path) -> dict | None:
    mp = meta_path(lib_path)
    return json.loads(mp.read_text()) if mp.exists() else None


class Loaded:
    """An exported library loaded into a Relax VM, on this machine or on an RPC device."""

    def __init__(self, vm, dev, meta: dict | None, session=None, label: str = "host"):
        self.vm, self.dev, self.meta, self.session, self.label = vm, dev, meta, session, label

    def _device_args(self, inputs) -> list:
        tvm = _tvm()
        return [tvm.runtime.tensor(a, self.dev)
                for a in _arrange_inputs(self.vm, inputs, self.meta)]

    def run(self, inputs) -> list:
        """One call of ``main`` (inputs copied to the device each time)."""
        return _to_numpy(self.vm["main"](*self._device_args(inputs)))

    def time(self, inputs, repeats: int = 50, warmup: int = 5) -> dict:
        """Runtime-side timing with the inputs already on the device."""
        return _time_vm(self.vm, self.dev, self._device_args(inputs), repeats, warmup)


def load(lib_path: str | Path) -> Loaded:
    """Load an exported library for repeated runs on this machine (see run_loaded)."""
    tvm = _tvm()
    from tvm import relax

    lib = tvm.runtime.load_module(str(lib_path))
    dev = tvm.cpu()
    return Loaded(relax.VirtualMachine(lib, dev), dev, _read_meta(lib_path))


def run_loaded(loaded: Loaded, inputs) -> list:
    """Run a library from load()/load_remote(); outputs as numpy arrays, in order."""
    return loaded.run(inputs)


def load_and_run(lib_path: str | Path, inputs) -> list:
    """Run an exported library on this machine; outputs as numpy arrays, in order."""
    return load(lib_path).run(inputs)


def _time_vm(vm, dev, args, repeats: int, warmup: int) -> dict:
    vm.set_input("main", *args)
    for _ in range(max(0, warmup)):
        vm.invoke_stateful("main")
    timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=max(1, repeats))
    ms_ = sorted(s * 1e3 for s in timer("main").results)
    p90 = ms_[min(len(ms_) - 1, int(round(0.9 * (len(ms_) - 1))))]
    return {"median_ms": statistics.median(ms_), "p90_ms": p90, "min_ms": ms_[0],
            "repeats": len(ms_)}


def benchmark(lib_path: str | Path, inputs, repeats: int = 50, warmup: int = 5) -> dict:
    """Latency of one call of ``main`` on this machine: {"median_ms", "p90_ms", ...}.

    Timed inside the runtime (time_evaluator), inputs already on the device: no Python or
    copy overhead, unlike a perf_counter around run_loaded().
    """
    return load(lib_path).time(inputs, repeats, warmup)


# ----------------------------------------------------------------------------- qemu
def qemu_available() -> tuple[bool, str]:
    """Can AArch64 libraries be run here under qemu-user? (see qemu.py)"""
    from . import qemu

    return qemu.available()


def qemu_run(lib_path: str | Path, inputs, *, download: bool = False,
             timeout: float = 600) -> list:
    """Run an exported AArch64 library once under qemu-aarch64 (correctness, not speed).

    ``inputs``: list in order, or a dict keyed by the ONNX input names of ``.meta.json``.
    ``download``: fetch the aarch64 TVM runtime wheels (pip download) if not cached.
    """
    import numpy as np

    from . import qemu

    if isinstance(inputs, Mapping):
        names = [s["name"] for s in (_read_meta(lib_path) or {}).get("inputs", [])]
        if not names and len(inputs) == 1:
            names = list(inputs)
        missing = [n for n in names if n not in inputs]
        if not names or missing:
            raise KeyError(f"cannot order inputs {sorted(inputs)} (library inputs: {names})")
        inputs = [inputs[n] for n in names]
    try:
        return qemu.run(lib_path, [np.asarray(a) for a in inputs], download=download,
                        timeout=timeout)
    except RuntimeError as e:
        raise BackendUnavailableError(f"cannot run {Path(lib_path).name} under qemu: {e}") from e


# ----------------------------------------------------------------------------- RPC
def _split_tracker(tracker: str) -> tuple[str, int]:
    host, sep, port = tracker.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"RPC tracker must be host:port, got {tracker!r}")
    return host, int(port)


def require_tracker(tracker: str, key: str | None, timeout_s: float = 5.0) -> None:
    """The --rpc tracker answers at host:port and a key is given, checked before any work (no
    TVM needed): an unreachable tracker made every kernel retry for a minute, 16 minutes for
    a small model, before the run failed."""
    import socket

    if not key:
        raise UsageError("--rpc needs --rpc-key (the device key registered at the tracker)")
    host, port = _split_tracker(tracker)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise BackendUnavailableError(f"the RPC tracker at {tracker} does not answer ({exc})",
                                      hint="start it (python -m tvm.exec.rpc_tracker --port N) and "
                                           "the device's server, or check --rpc host:port") from None


def rpc_runner(tracker: str, key: str, *, session_timeout_s: int = 120, max_workers: int = 1,
               repeat: int = 1, number: int = 3, min_repeat_ms: int = 50):
    """A MetaSchedule runner for ``tune`` measuring on a device registered as `key`.

    Candidates are uploaded as .tar of object files and linked on the device (the RPC
    server needs a C compiler there; Debian/Raspberry Pi OS: ``apt-get install gcc``).
    """
    _tvm()
    from tvm.s_tir import meta_schedule as ms

    host, port = _split_tracker(tracker)
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                       session_timeout_sec=session_timeout_s),
        evaluator_config=ms.runner.EvaluatorConfig(number=number, repeat=repeat,
                                                   min_repeat_ms=min_repeat_ms),
        max_workers=max_workers,
    )
    _register_shutdown()
    _WORKERS[("rpc", tracker, key, id(runner))] = runner  # its pool is stopped at exit
    return runner


def load_remote(lib_path: str | Path, tracker: str, key: str, *,
                session_timeout_s: int = 300) -> Loaded:
    """Upload `lib_path` to a device obtained from the tracker and load it there.

    The session is held until the returned object is dropped.
    """
    _tvm()
    from tvm import relax, rpc

    host, port = _split_tracker(tracker)
    try:
        sess = rpc.connect_tracker(host, port).request(key, priority=1,
                                                       session_timeout=session_timeout_s)
    except Exception as e:  # noqa: BLE001
        raise BackendUnavailableError(f"no RPC device {key!r} at tracker {tracker}: {e}",
                                      hint="check: python -m tvm.exec.query_rpc_tracker "
                                           f"--host {host} --port {port}") from e
    lib_path = Path(lib_path)
    sess.upload(str(lib_path))
    rlib = sess.load_module(lib_path.name)
    dev = sess.cpu()
    return Loaded(relax.VirtualMachine(rlib, dev), dev, _read_meta(lib_path), session=sess,
                  label=f"rpc:{key}")


def remote_benchmark(lib_path: str | Path, inputs, tracker: str, key: str, repeats: int = 50,
                     warmup: int = 5, *, return_outputs: bool = False,
                     session_timeout_s: int = 300) -> dict:
    """Upload `lib_path` to a device from the tracker and time ``main`` there.

    {"median_ms", "p90_ms", "min_ms", "repeats", "device_key"} (+ "outputs" when asked).
    """
    loaded = load_remote(lib_path, tracker, key, session_timeout_s=session_timeout_s)
    res = loaded.time(inputs, repeats, warmup)
    res["device_key"] = key
    if return_outputs:
        res["outputs"] = loaded.run(inputs)
    return res


# ----------------------------------------------------------------------------- sparse kernels
def _layer_timer(target, db_dir, repeats: int, rpc=None, cross_compiler=None):
    """measure(kind, layer, module) -> median ms of one call of the one-layer module."""
    import tempfile

    import numpy as np

    def measure(kind, layer, mod):
        exe = build(mod, target, db_dir if db_dir is not None and (Path(db_dir) / DB_RECORDS).exists()
                    else None)
        shape = [int(d) for d in mod["main"].params[0].ty.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        if rpc is None:
            tvm = _tvm()
            from tvm import relax

            dev = tvm.cpu()
            vm = relax.VirtualMachine(exe, dev)
            return _time_vm(vm, dev, [tvm.runtime.tensor(x, dev)], repeats, 3)["median_ms"]
        with tempfile.TemporaryDirectory() as tmp:
            lib = Path(tmp) / "layer.so"
            export(exe, lib, cross_compiler)
            return remote_benchmark(lib, [x], rpc[0], rpc[1], repeats=repeats)["median_ms"]

    return measure


def sparse_rewrite(mod, target, *, db_dir: str | Path | None = None, min_sparsity: float = 0.5,
                   measure="auto", rpc: tuple[str, str] | None = None,
                   cross_compiler: str | None = None, repeats: int = 20,
                   log: Log | None = None):
    """Insert measured-faster sparse kernels; see the module docstring."""
    _tvm()
    from .kernels import rewrite

    log = log or _default_log
    canon = canonical_target(target)
    cores = int(canon.get("num-cores") or 0) or (
        host_target()["num-cores"] if is_host_runnable(target) else DEFAULT_DEVICE_CORES)
    ort_dense = None
    if measure == "auto":
        if rpc is not None:
            measure = _layer_timer(target, db_dir, repeats, rpc=rpc, cross_compiler=cross_compiler)
        elif is_host_runnable(target):
            measure = _layer_timer(target, db_dir, repeats)
        else:
            measure = None
    if measure is not None and rpc is None and is_host_runnable(target):  # ORT's dense kernel, on the same host
        from .kernels.ort_dense import ort_dense_ms

        def ort_dense(layer):
            return ort_dense_ms(layer, threads=cores)
    return rewrite.rewrite_sparse(mod, measure=measure, min_sparsity=min_sparsity, cores=cores,
                                  log=log, ort_dense=ort_dense)
