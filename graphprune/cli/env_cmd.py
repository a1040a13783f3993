"""graphprune env — versions and CPU features, for bug reports."""
from __future__ import annotations

import json


def add_arguments(p):
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from graphprune.backends.targets import cpu_flags
    from graphprune.report import environment

    env = environment()
    try:
        from graphprune.backends.tvm import TvmBackend

        ok, why = TvmBackend().available()
        env["tvm_backend"] = "available" if ok else f"unavailable: {why}"
    except Exception as exc:  # the env report must never fail
        env["tvm_backend"] = f"unavailable: {exc}"
    import shutil

    env["cross_compiler_aarch64"] = shutil.which("aarch64-linux-gnu-gcc")
    env["qemu_aarch64"] = shutil.which("qemu-aarch64")
    env["cpu_flags_count"] = len(cpu_flags())
    if args.json:
        print(json.dumps(env, indent=1))
        return 0
    for k, v in env.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                print(f"{k}.{kk}: {vv if vv is not None else 'not installed'}")
        else:
            print(f"{k}: {v}")
    return 0
