"""TVM backend: ONNX -> Relax -> MetaSchedule-tuned library for a target.

Importing this package does not import TVM; every TVM call is in ``adapter.py``.

    backend = TvmBackend()
    ok, why = backend.available()
    result = backend.compile("model.onnx", target, out_dir, trials=64, time_budget_s=None,
                             db_root=Path("~/.cache/graphprune/tvm-db").expanduser())

``target`` is any object with ``name``, ``tvm`` (TVM target JSON dict), ``cross_compiler``
(None for native builds) and ``host`` (artifacts run on this machine): see
``graphprune.backends.targets.Target``.

Artifacts written to ``out_dir``: ``model.so`` (Relax VM executable, weights embedded,
self-contained: load it with ``tvm.runtime.load_module`` + ``relax.VirtualMachine`` or
``adapter.load``) and ``model.meta.json`` (inputs, target, tuning summary). The tuning
database lives in ``db_root/<target key>/`` and is shared by every model compiled for the
same target: layers already tuned there are not tuned again.
"""
from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any, Callable

from graphprune.errors import BackendUnavailableError, UsageError

LIBRARY = "model.so"

# written beside the library: the deployment runs with the TVM runtime alone (no graphprune)
LOADER = '''"""Loader for a graphprune TVM deployment (needs the TVM runtime: apache-tvm 0.27).

python run_model.py [inputs.npz] [-o outputs.npz]: runs model.so on the named arrays of
inputs.npz, or on random inputs of the shapes and types it was built for (model.meta.json);
prints each output's shape and first values, and with -o saves them.
"""
import argparse, json, time
from pathlib import Path
import numpy as np

ap = argparse.ArgumentParser(description="Run the deployed TVM library with the TVM runtime.")
ap.add_argument("inputs", nargs="?", help=".npz of the inputs by name (default: random, at the built shapes)")
ap.add_argument("-o", "--out", help="save the outputs to this .npz file")
args = ap.parse_args()
import tvm
from tvm import relax

here = Path(__file__).resolve().parent
meta = json.loads((here / "model.meta.json").read_text())
dev = tvm.cpu()
vm = relax.VirtualMachine(tvm.runtime.load_module(str(here / "model.so")), dev)
given = dict(np.load(args.inputs)) if args.inputs else None
if given is not None and len(given) == 1 and len(meta["inputs"]) == 1:  # one array: that input
    given = {meta["inputs"][0]["name"]: next(iter(given.values()))}
rng, feeds = np.random.default_rng(0), []
for spec in meta["inputs"]:  # main's parameters, in order
    if given is not None:
        feeds.append(np.ascontiguousarray(given[spec["name"]]))
    elif np.issubdtype(np.dtype(spec["dtype"]), np.floating):
        feeds.append(rng.standard_normal(spec["shape"]).astype(spec["dtype"]))
    else:  # 0 or 1: a valid token id, index or flag
        feeds.append(rng.integers(0, 2, size=spec["shape"]).astype(spec["dtype"]))
t0 = time.perf_counter()
out = vm["main"](*[tvm.runtime.tensor(a, dev) for a in feeds])
outs = [o.numpy() for o in (out if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else [out])]
print(f"ran in {(time.perf_counter() - t0) * 1000:.2f} ms on", {s["name"]: s["shape"] for s in meta["inputs"]})
for k, o in enumerate(outs):
    print(f"output {k}: {list(o.shape)} {o.ravel()[:5]}")
if args.out:
    save = args.out if args.out.endswith(".npz") else args.out + ".npz"  # the name numpy writes
    np.savez(save, *outs)
    print("saved", save)
'''
SPARSE_MIN_DEFAULT = 0.5  # layers with fewer zeros never beat dense (TVM_NOTES, benchmarks/sparse)


class TvmBackend:
    name = "tvm"

    def available(self) -> tuple[bool, str]:
        from . import adapter

        return adapter.available()

    def compile(self, onnx_path: Path, target, out_dir: Path, *, trials: int,
                time_budget_s: float | None, db_root: Path, rpc: str | None = None,
                rpc_key: str | None = None, input_shapes=None,
                log: Callable[[str], Any] | None = None,
                sparse_min: float | None = SPARSE_MIN_DEFAULT) -> dict:
        """Import, tune (trials>0) into db_root/<target-key>/, build, export into out_dir.

        Returns a JSON-able dict: {"artifacts": [...paths relative to out_dir], "library",
        "tuned": bool (every kernel has a tuned schedule), "trials": n (measured in this
        run), "new_records": n, "tuning_seconds": s, "target": dict, "host_runnable": bool,
        "notes": [...], "db_dir", "coverage", "checks", "sparse_kernels": [per-layer choice
        rows, see adapter.sparse_rewrite]}. ``log``: a print-like callable (default: the
        graphprune.backends.tvm logger). ``sparse_min``: layers whose constant weight has at
        least this fraction of exact zeros get sparse kernels when they measure faster
        (None: no sparse kernels).
        """
        from . import adapter

        ok, why = adapter.available()
        if not ok:
            raise BackendUnavailableError(f"TVM backend unavailable: {why}", hint=adapter.INSTALL_HINT)
        log = log or adapter._default_log
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        notes: list[str] = []
        cross = None if target.host else target.cross_compiler
        if cross and shutil.which(cross) is None:
            raise BackendUnavailableError(
                f"cross compiler {cross} not found (needed for {target.name})",
                hint="apt-get install -y g++-aarch64-linux-gnu" if "aarch64" in cross else None)
        if rpc and not rpc_key:
            raise UsageError("--rpc needs --rpc-key (the device key registered at the tracker)")

        mod, specs = adapter.import_onnx(onnx_path, input_shapes, log=log, return_specs=True)
        db_dir = adapter.db_dir_for(db_root, target.tvm)
        stats = runner = None
        if trials > 0 and (target.host or rpc):
            runner = adapter.rpc_runner(rpc, rpc_key) if rpc else None
            stats = adapter.tune(mod, target.tvm, db_dir, trials, time_budget_s, runner=runner, log=log)
            if stats.stopped_by_budget:
                notes.append(f"tuning stopped by the time budget ({time_budget_s:.0f} s)")
        elif trials > 0:
            notes.append(f"not tuned: {target.name} is not this machine and no --rpc device was given "
                         "to measure on; schedules already in the database are applied")
        sparse_table: list = []
        n_sparse = 0
        if sparse_min is not None:
            # after tuning: sparse layers are measured against their tuned dense version
            mod, sparse_table, sparse_notes = adapter.sparse_rewrite(
                mod, target.tvm, db_dir=db_dir, min_sparsity=sparse_min,
                rpc=(rpc, rpc_key) if rpc else None, cross_compiler=cross, log=log)
            notes.extend(sparse_notes)
            n_sparse = sum(1 for r in sparse_table if r["chosen"] != "dense")
            if sparse_table:
                notes.append(f"sparse kernels: {n_sparse} of {len(sparse_table)} sparse layers "
                             "replaced (the others measured faster dense)")
        coverage = adapter.db_coverage(mod, target.tvm, db_dir)
        if n_sparse and coverage["missing"] and stats is not None:
            # the rewrite leaves new small kernels (the reshapes around a sparse layer, the
            # ops that were fused with the dense layer): tune just those, briefly
            extra = adapter.tune(mod, target.tvm, db_dir, min(trials, 8 * len(coverage["missing"])),
                                 time_budget_s, runner=runner, log=log)
            stats.trials += extra.trials
            stats.new_records += extra.new_records
            stats.seconds += extra.seconds
            coverage = adapter.db_coverage(mod, target.tvm, db_dir)
        # every kernel TVM generates has a schedule; a model whose compute all went to our
        # own (hand-scheduled) sparse kernels has no tuning task left, and is tuned too
        tuned = not coverage["missing"] and (coverage["tasks"] > 0 or n_sparse > 0)
        if coverage["missing"]:
            notes.append(f"{len(coverage['missing'])} of {coverage['tasks']} kernels have no tuned schedule "
                         f"(compiled unscheduled, slow): {', '.join(coverage['missing'][:8])}"
                         + (" ..." if len(coverage["missing"]) > 8 else ""))

        log(f"tvm: building for {target.name}" + (f" with {cross}" if cross else ""))
        executable = adapter.build(mod, target.tvm, db_dir if coverage["with_schedule"] else None)
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "inputs": specs,
            "target": {"name": target.name, "tvm": target.tvm},
            "target_key": db_dir.name,
            "tuned": tuned,
            "coverage": coverage,
            "tuning": stats.as_dict() if stats else None,
            "source": onnx_path.name,
        }
        files = adapter.export(executable, out_dir / LIBRARY, cross, metadata=meta)
        (out_dir / "run_model.py").write_text(LOADER)

        checks: dict = {"elf_machine": adapter.elf_machine(files[0])}
        if checks["elf_machine"] == "AArch64":
            neon = adapter.neon_stats(files[0])
            checks["neon"] = neon if neon is not None else "not checked (no aarch64 objdump)"
        host_machine = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "AArch64",
                        "arm64": "AArch64"}.get(platform.machine().lower(), platform.machine())
        host_runnable = bool(target.host) and checks["elf_machine"] == host_machine
        return {
            "artifacts": [f.name for f in files] + ["run_model.py"],
            "library": files[0].name,
            "tuned": tuned,
            "trials": stats.trials if stats else 0,
            "new_records": stats.new_records if stats else 0,
            "tuning_seconds": round(stats.seconds, 2) if stats else 0.0,
            "target": dict(target.tvm),
            "host_runnable": host_runnable,
            "notes": notes,
            "db_dir": str(db_dir),
            "coverage": coverage,
            "checks": checks,
            "sparse_kernels": sparse_table,
        }
