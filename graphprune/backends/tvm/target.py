"""TVM's version gate and target objects, shared by ``adapter`` and ``kernels/``.

A module of its own so that the kernels (which compile candidates for a target) do not
import ``adapter`` (which imports the kernels' rewrite): no import circle. Like
``adapter``, it imports ``tvm`` inside functions only.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping

from graphprune.errors import BackendUnavailableError

SUPPORTED = (0, 27)
PIP_SPEC = "apache-tvm>=0.27,<0.28"
INSTALL_HINT = (
    'pip install "apache-tvm==0.27.0.post1" "apache-tvm-ffi==0.1.14.post1" '
    "xgboost psutil cloudpickle tornado   (or: pip install 'graphprune[tvm]')"
)


# ----------------------------------------------------------------------------- version gate
@functools.lru_cache(maxsize=1)
def check_tvm() -> tuple[bool, str]:
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
    return check_tvm()


def import_tvm():
    ok, reason = check_tvm()
    if not ok:
        raise BackendUnavailableError(f"TVM backend unavailable: {reason}", hint=INSTALL_HINT)
    import tvm

    return tvm


# ----------------------------------------------------------------------------- targets
def jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "Array":  # tvm_ffi Array
        return [jsonable(v) for v in obj]
    if type(obj).__name__ == "Map":
        return {str(k): jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "export"):  # a nested Target (host)
        return jsonable(obj.export())
    return str(obj)


def to_target(target):
    tvm = import_tvm()
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, str):
        # 0.27 accepts tag names ("raspberry-pi/4b-aarch64") but no "llvm -mcpu=..." strings
        return tvm.target.Target(target)
    return tvm.target.Target(dict(target))


def canonical_target(target) -> dict:
    """The target as TVM completes it (defaults, implied features), JSON-able."""
    return jsonable(to_target(target).export())


def host_target(num_cores: int | None = None) -> dict:
    """An llvm target for this machine: its triple, CPU and physical core count."""
    import_tvm()
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
