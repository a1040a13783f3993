"""The one module of graphprune that calls TVM (apache-tvm >=0.27,<0.28).

TVM's Python API moves every release; everything version-specific is here, so a new TVM
means editing this file only. ``tvm`` is imported inside functions: importing graphprune
never imports TVM. The first call that needs TVM checks ``tvm.__version__`` and raises
:class:`graphprune.errors.BackendUnavailableError` (with an install hint) when TVM is
missing or of another minor version.

API (targets are TVM target JSON dicts, e.g. ``{"kind": "llvm", "mtriple":
"aarch64-linux-gnu", "mattr": ["+neon"]}``; ``log`` is any ``print``-like callable)

``available() -> (bool, reason)``
``host_target(num_cores=None) -> dict``
    llvm target for this machine (its triple, its CPU, its physical cores).
``target_key(target) -> str``; ``db_dir_for(db_root, target) -> Path``
    One tuning database per target: the key hashes the canonical target (TVM fills in
    defaults, e.g. the AArch64 feature flags) and the TVM minor version, so x86 records are
    never applied to aarch64 and records of another TVM release are never read.
``import_onnx(onnx_path, input_shapes=None) -> IRModule``
    Relax module with the weights bound as constants. ``input_shapes`` fixes dynamic dims
    (required when the model has any). When the importer fails, the model is constant-folded
    with ONNX Runtime at ORT_ENABLE_BASIC and imported again. Operators the importer does not
    know raise BackendUnavailableError listing them; dynamic dims without shapes raise
    UsageError.
``tune(mod, target, db_dir, trials, time_budget_s=None, runner=None, log=print) -> TuneStats``
    MetaSchedule into the persistent JSON database in ``db_dir``
    (``database_workload.json`` + ``database_tuning_record.json``). Tasks that already have
    a valid record there (same layer shapes, any model) are not tuned again; ``trials`` is
    spread over the remaining tasks only, so a second run of the same model does nothing.
    ``runner``: None (measure locally; host targets only), ``rpc_runner(...)`` (a device
    behind a tracker) or ``"schedule-only"`` (no measurement: every candidate gets the same
    cost; for artifact checks in CI, never for a database that ships).
``build(mod, target, db_dir=None, prepack=True) -> Executable``
    DecomposeOpsForInference, zero pipeline, AttachAttrLayoutFreeBuffers,
    MetaScheduleApplyDatabase (if ``db_dir``), SplitLayoutRewritePreproc +
    LiftTransformParams + FoldConstant (weight prepacking: weights are constants, so the
    packed layout is computed at compile time), then ``tvm.compile``. Untuned functions are
    compiled unscheduled (slow; the caller decides whether to ship that).
``export(executable, out_path, cross_compiler=None, metadata=None) -> list[Path]``
    One self-contained shared library (weights embedded as constants: nothing else is
    needed to run it) plus ``<stem>.meta.json`` (inputs with their ONNX names, shapes and
    dtypes, the target, free-form metadata). ``cross_compiler``: e.g.
    ``"aarch64-linux-gnu-gcc"`` (Debian ``g++-aarch64-linux-gnu``).
``load_and_run(lib_path, inputs) -> list[np.ndarray]``; ``benchmark(lib_path, inputs,
repeats=50, warmup=5) -> {"median_ms", "p90_ms", ...}``
    Host Relax VM. ``inputs`` maps ONNX input names (or the sanitised Relax names) to
    arrays; a list is taken positionally.
``rpc_runner(tracker="host:port", key=..., ...)`` -> MetaSchedule runner for ``tune``.
``remote_benchmark(lib_path, inputs, tracker, key, repeats=50, warmup=5,
return_outputs=False) -> dict``
    Uploads the library to a device obtained from the tracker and times it there.
``elf_machine(path)``, ``has_neon(path)`` (re-exported from ``elf.py``; no TVM needed).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from graphprune.errors import BackendUnavailableError, UsageError

from .elf import elf_machine, has_neon, neon_stats  # noqa: F401  (re-exported)

SUPPORTED = (0, 27)
PIP_SPEC = "apache-tvm>=0.27,<0.28"
INSTALL_HINT = (
    'pip install "apache-tvm==0.27.0.post1" "apache-tvm-ffi==0.1.14.post1" '
    "xgboost psutil cloudpickle tornado   (or: pip install 'graphprune[tvm]')"
)
# MetaSchedule's build workers import tvm.s_tir.tensor_intrin on their first build (~25 s
# on 2 cores), which overruns the default 30 s builder timeout forever.
BUILDER_TIMEOUT_S = 120.0
RUNNER_TIMEOUT_S = 60.0
DB_WORKLOAD = "database_workload.json"
DB_RECORDS = "database_tuning_record.json"

Log = Callable[[str], Any]


# ----------------------------------------------------------------------------- version gate
@functools.lru_cache(maxsize=1)
def _check_tvm() -> tuple[bool, str]:
    try:
        import tvm  # noqa: F401
    except ImportError as e:
        return False, f"TVM is not installed ({e})"
    except Exception as e:  # noqa: BLE001 - a broken install (ffi mismatch...) is "unavailable"
        return False, f"TVM failed to import: {type(e).__name__}: {e}"
    version = getattr(tvm, "__version__", "?")
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return False, f"cannot parse TVM version {version!r}"
    if major_minor != SUPPORTED:
        return False, f"TVM {version} is installed; graphprune needs {PIP_SPEC}"
    return True, f"TVM {version}"


def available() -> tuple[bool, str]:
    """(True, "TVM 0.27...") or (False, why not)."""
    return _check_tvm()


def _tvm():
    ok, reason = _check_tvm()
    if not ok:
        raise BackendUnavailableError(f"TVM backend unavailable: {reason}", hint=INSTALL_HINT)
    import tvm

    return tvm


# ----------------------------------------------------------------------------- targets
def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if hasattr(obj, "export"):  # a nested Target (host)
        return _jsonable(obj.export())
    return str(obj)


def _target(target):
    tvm = _tvm()
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, str):
        # 0.27 accepts tag names ("raspberry-pi/4b-aarch64") but no "llvm -mcpu=..." strings
        return tvm.target.Target(target)
    return tvm.target.Target(dict(target))


def canonical_target(target) -> dict:
    """The target as TVM completes it (defaults, implied features), JSON-able."""
    return _jsonable(_target(target).export())


def host_target(num_cores: int | None = None) -> dict:
    """An llvm target for this machine: its triple, CPU and physical core count."""
    _tvm()
    from tvm.target import codegen

    if num_cores is None:
        try:
            import psutil

            num_cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        except ImportError:
            num_cores = os.cpu_count() or 1
    return {
        "kind": "llvm",
        "mtriple": str(codegen.llvm_get_system_triple()),
        "mcpu": str(codegen.llvm_get_system_cpu()),
        "num-cores": int(num_cores),
    }


def target_key(target) -> str:
    """Directory-safe key of one target, e.g. "llvm-aarch64-3f2a9c1e0b7d"."""
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
                *, log: Log = lambda s: None):
    """ONNX file -> Relax IRModule (weights bound as constants). See module docstring."""
    _tvm()
    from tvm.relax.frontend.onnx import from_onnx

    from . import onnx_prep

    model = onnx_prep.load(onnx_path)
    if input_shapes:
        try:
            model = onnx_prep.fix_input_shapes(model, dict(input_shapes))
        except KeyError as e:
            raise UsageError(str(e.args[0]), hint="input_shapes keys must be ONNX input names") from e
    dynamic = onnx_prep.dynamic_inputs(model)
    if dynamic:
        shown = ", ".join(f"{k}{v}" for k, v in dynamic.items())
        raise UsageError(
            f"the TVM backend needs static input shapes; dynamic inputs: {shown}",
            hint="give the shapes, e.g. --input-shape " + ",".join(
                f"{k}=" + "x".join(str(d) if isinstance(d, int) else "N" for d in v)
                for k, v in dynamic.items()),
        )

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
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = from_onnx(model, keep_params_in_input=False)
            return mod
        except Exception as e:  # noqa: BLE001 - the importer raises anything
            first_error = first_error or e
    raise BackendUnavailableError(
        f"TVM's ONNX importer failed: {type(first_error).__name__}: {first_error}",
        hint="compile this model with --backend onnxruntime",
    )


# ----------------------------------------------------------------------------- pipeline
def _prepare(mod, target):
    """The part of the pipeline shared by tuning and building (database keys must match)."""
    tvm = _tvm()
    from tvm import relax

    # zero_pipeline applies the current MetaSchedule database if there is one; prepare
    # outside any database scope so tuning and building see the same un-applied functions.
    with _target(target):
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.pipeline.zero_pipeline(),
            relax.transform.AttachAttrLayoutFreeBuffers(),
        ])(mod)


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


def _make_builder():
    import importlib

    from tvm.s_tir import meta_schedule as ms

    # A partial of importlib.import_module pickles by reference: workers need no graphprune.
    init = functools.partial(importlib.import_module, "tvm.s_tir.tensor_intrin")
    return ms.builder.LocalBuilder(timeout_sec=BUILDER_TIMEOUT_S, initializer=init)


def _make_local_runner():
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.LocalRunner(
        timeout_sec=RUNNER_TIMEOUT_S,
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50),
    )


@functools.lru_cache(maxsize=1)
def _py_classes():
    """MetaSchedule Python subclasses (need TVM at class creation, hence built lazily)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import derived_object

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

    @derived_object
    class TimeBudget(ms.measure_callback.PyMeasureCallback):
        """Stops all tasks once the wall-time budget is spent (checked after each batch)."""

        def __init__(self, deadline: float, flag: list):
            self.deadline = deadline
            self.flag = flag

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            if time.monotonic() < self.deadline:
                return
            self.flag[0] = True
            for i, task in enumerate(task_scheduler.tasks_):
                if not task.is_terminated:
                    task_scheduler.terminate_task(i)

    return ScheduleOnlyRunner, TimeBudget


def schedule_only_runner():
    return _py_classes()[0]()


def _count_records(db) -> tuple[int, int]:
    records = db.get_all_tuning_records()
    valid = sum(1 for r in records if r.run_secs is not None and len(r.run_secs) > 0)
    return len(records), valid


def tune(mod, target, db_dir: str | Path, trials: int, time_budget_s: float | None = None,
         runner=None, log: Log = print, *, seed: int | None = None,
         num_trials_per_iter: int = 64) -> TuneStats:
    """MetaSchedule-tune the tasks of `mod` missing from the database in `db_dir`."""
    tvm = _tvm()
    from tvm.s_tir import meta_schedule as ms

    t0 = time.monotonic()
    db_dir = Path(db_dir)
    tgt = _target(target)
    stats = TuneStats(db_dir=str(db_dir), target_key=target_key(target))
    if isinstance(runner, str):
        if runner != "schedule-only":
            raise ValueError(f"unknown runner {runner!r}")
        runner = schedule_only_runner()
    if runner is None and not is_host_runnable(target) and trials > 0:
        raise BackendUnavailableError(
            f"cannot measure {_target_arch(target)} kernels on this {platform.machine()} machine",
            hint="tune through a device: --rpc host:port --rpc-key KEY (tvm.exec.rpc_tracker)",
        )

    prepared = _prepare(mod, tgt)
    with _db_lock(db_dir):
        _write_target_file(db_dir, target)
        db = _open_db(db_dir)
        before, before_valid = _count_records(db)
        tasks = ms.relax_integration.extract_tasks(prepared, tgt)
        stats.tasks_total = len(tasks)
        todo = []
        for task in tasks:
            wl = task.dispatched[0]
            if db.has_workload(wl) and db.query_tuning_record(wl, tgt, task.task_name) is not None:
                stats.tasks_reused += 1
            else:
                todo.append(task)
        log(f"tvm: {len(tasks)} tuning tasks, {stats.tasks_reused} found in {db_dir}, "
            f"{len(todo)} to tune")
        if todo and trials > 0:
            per_task = max(1, -(-trials // len(todo)))
            work_dir = db_dir / "logs"
            work_dir.mkdir(exist_ok=True)
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                todo, str(work_dir), seed=seed)
            callbacks = ms.measure_callback.MeasureCallback.create("default")
            flag = [False]
            if time_budget_s is not None:
                _, TimeBudget = _py_classes()
                callbacks = list(callbacks) + [TimeBudget(t0 + float(time_budget_s), flag)]
            log(f"tvm: tuning {len(todo)} tasks x {per_task} trials "
                f"({'budget %.0f s' % time_budget_s if time_budget_s else 'no time budget'})")
            with tvm.transform.PassContext(opt_level=3):
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=str(work_dir),
                    max_trials_global=per_task * len(todo),
                    max_trials_per_task=per_task,
                    num_trials_per_iter=max(1, min(num_trials_per_iter, per_task)),
                    builder=_make_builder(),
                    runner=runner if runner is not None else _make_local_runner(),
                    database=db,
                    measure_callbacks=callbacks,
                    task_scheduler="gradient",
                )
            stats.stopped_by_budget = flag[0]
            stats.tasks_tuned = len(todo)
            for task in todo:
                wl = task.dispatched[0]
                if not (db.has_workload(wl)
                        and db.query_tuning_record(wl, tgt, task.task_name) is not None):
                    stats.untuned_tasks.append(task.task_name)
        elif todo:
            stats.untuned_tasks = [t.task_name for t in todo]
        after, after_valid = _count_records(db)
    stats.new_records = stats.trials = after - before
    stats.valid_new_records = after_valid - before_valid
    stats.records_total = after
    stats.seconds = time.monotonic() - t0
    log(f"tvm: {stats.trials} trials, {stats.valid_new_records} valid, "
        f"{stats.seconds:.1f} s; {len(stats.untuned_tasks)} tasks still untuned")
    return stats


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
            mod = tvm.transform.Sequential([
                relax.transform.SplitLayoutRewritePreproc(),
                relax.transform.LiftTransformParams(),
                relax.transform.FoldConstant(),
            ])(mod)
        return tvm.compile(mod, target=tgt)


def scheduled_functions(mod, target, db_dir: str | Path) -> tuple[int, int]:
    """(functions with a database schedule, all TIR functions) after applying the database."""
    tvm = _tvm()
    from tvm import relax, tirx

    tgt = _target(target)
    mod = _prepare(mod, tgt)
    total = sum(1 for _, f in mod.functions.items() if isinstance(f, tirx.PrimFunc))
    with tgt, tvm.transform.PassContext(opt_level=3), _open_db(Path(db_dir)):
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    done = sum(1 for _, f in mod.functions.items()
               if isinstance(f, tirx.PrimFunc) and f.attrs is not None
               and bool(f.attrs.get("tirx.is_scheduled", False)))
    return done, total


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
    if isinstance(out, (list, tuple)) or hasattr(out, "__len__"):
        res = []
        for o in out:
            res.extend(_to_numpy(o))
        return res
    return [out]


def _read_meta(lib_path) -> dict | None:
    mp = meta_path(lib_path)
    return json.loads(mp.read_text()) if mp.exists() else None


def _host_vm(lib_path):
    tvm = _tvm()
    from tvm import relax

    lib = tvm.runtime.load_module(str(lib_path))
    dev = tvm.cpu()
    return relax.VirtualMachine(lib, dev), dev


def load_and_run(lib_path: str | Path, inputs) -> list:
    """Run an exported library on this machine; outputs as numpy arrays, in order."""
    tvm = _tvm()
    vm, dev = _host_vm(lib_path)
    args = [tvm.runtime.tensor(a, dev) for a in _arrange_inputs(vm, inputs, _read_meta(lib_path))]
    return _to_numpy(vm["main"](*args))


def _time_vm(vm, dev, args, repeats: int, warmup: int) -> dict:
    vm.set_input("main", *args)
    for _ in range(max(0, warmup)):
        vm.invoke_stateful("main")
    timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=max(1, repeats))
    secs = sorted(timer("main").results)
    ms_ = [s * 1e3 for s in secs]
    p90 = ms_[min(len(ms_) - 1, int(round(0.9 * (len(ms_) - 1))))]
    return {"median_ms": statistics.median(ms_), "p90_ms": p90, "min_ms": ms_[0],
            "repeats": len(ms_)}


def benchmark(lib_path: str | Path, inputs, repeats: int = 50, warmup: int = 5) -> dict:
    """Latency of one call of ``main`` on this machine: {"median_ms", "p90_ms", ...}."""
    tvm = _tvm()
    vm, dev = _host_vm(lib_path)
    args = [tvm.runtime.tensor(a, dev) for a in _arrange_inputs(vm, inputs, _read_meta(lib_path))]
    return _time_vm(vm, dev, args, repeats, warmup)


# ----------------------------------------------------------------------------- RPC
def _split_tracker(tracker: str) -> tuple[str, int]:
    host, sep, port = tracker.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"RPC tracker must be host:port, got {tracker!r}")
    return host, int(port)


def rpc_runner(tracker: str, key: str, *, session_timeout_s: int = 120, max_workers: int = 1,
               repeat: int = 1, number: int = 3, min_repeat_ms: int = 50):
    """A MetaSchedule runner that measures on a device registered at `tracker` as `key`."""
    _tvm()
    from tvm.s_tir import meta_schedule as ms

    host, port = _split_tracker(tracker)
    return ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                       session_timeout_sec=session_timeout_s),
        evaluator_config=ms.runner.EvaluatorConfig(number=number, repeat=repeat,
                                                   min_repeat_ms=min_repeat_ms),
        max_workers=max_workers,
    )


def remote_benchmark(lib_path: str | Path, inputs, tracker: str, key: str, repeats: int = 50,
                     warmup: int = 5, *, return_outputs: bool = False,
                     session_timeout_s: int = 120) -> dict:
    """Upload `lib_path` to a device from the tracker, time ``main`` there."""
    tvm = _tvm()
    from tvm import relax, rpc

    host, port = _split_tracker(tracker)
    try:
        sess = rpc.connect_tracker(host, port).request(key, priority=1,
                                                       session_timeout=session_timeout_s)
    except Exception as e:  # noqa: BLE001
        raise BackendUnavailableError(f"no RPC device {key!r} at tracker {tracker}: {e}",
                                      hint="check `python -m tvm.exec.query_rpc_tracker`") from e
    lib_path = Path(lib_path)
    sess.upload(str(lib_path))
    rlib = sess.load_module(lib_path.name)
    dev = sess.cpu()
    vm = relax.VirtualMachine(rlib, dev)
    args = [tvm.runtime.tensor(a, dev) for a in _arrange_inputs(vm, inputs, _read_meta(lib_path))]
    res = _time_vm(vm, dev, args, repeats, warmup)
    res["device_key"] = key
    if return_outputs:
        res["outputs"] = _to_numpy(vm["main"](*args))
    return res
