"""graphprune env — a doctor: versions, CPU features, and each optional feature either
available or with the exact command that installs it; the plugins that loaded."""
from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from typing import Callable

# pip commands are run from a graphprune checkout (constraints.txt pins torch to the CPU wheel
# and the versions CI has proven); the apt commands are Debian/Ubuntu's packages.
PIP = "pip install 'graphprune[{}]' -c constraints.txt"


@dataclass
class Feature:
    key: str
    what: str
    check: Callable[[], tuple]  # (available, detail) or (False, detail, a better install command)
    install: str


def add_arguments(p):
    pass  # --json is a global option


def _imports(*modules: str) -> Callable[[], tuple]:
    """A check that imports `modules`. A package that is installed but does not import is not
    available: the detail names the module that failed, and the command fixes that one."""
    def check() -> tuple:
        versions = []
        for m in modules:
            try:
                mod = importlib.import_module(m)
            except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
                return False, f"cannot import {m} ({type(exc).__name__}: {exc})", _fix(m, exc)
            versions.append(f"{m.split('.')[0]} {getattr(mod, '__version__', '')}".strip())
        return True, ", ".join(dict.fromkeys(versions))
    return check


def _fix(module: str, exc: Exception) -> str | None:
    """The install command when `module` is there but one of its own imports failed
    (None: the feature's own command)."""
    import importlib.util

    top = module.split(".")[0]
    name = getattr(exc, "name", None)
    if isinstance(exc, ImportError) and name and name.split(".")[0] != top:
        return f"pip install {name.split('.')[0]}  ({top} is installed; its dependency {name} is not)"
    try:
        installed = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        installed = False
    return f"{top} is installed but does not import; reinstall it: " if installed else None


def _program(name: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        path = shutil.which(name)
        return (True, path) if path else (False, f"{name} not on PATH")
    return check


def _tvm() -> tuple[bool, str]:
    from graphprune.backends.tvm import TvmBackend

    return TvmBackend().available()


FEATURES = [
    Feature("torch", "torch frontend (nn.Module in, torchprune)", _imports("torch", "onnxscript"), PIP.format("torch")),
    Feature("tvm", "TVM backend (compile --backend tvm)", _tvm, PIP.format("tvm")),
    Feature("cross_compiler", "aarch64 cross compiler (TVM builds for arm, rpi4, jetson)",
            _program("aarch64-linux-gnu-g++"), "sudo apt-get install g++-aarch64-linux-gnu"),
    Feature("qemu", "qemu-aarch64 (runs arm builds here, for the checks)", _program("qemu-aarch64"),
            "sudo apt-get install qemu-user"),
    Feature("pillow", "Pillow (--calib with a folder of images)", _imports("PIL"), PIP.format("images")),
    Feature("matplotlib", "matplotlib (plots in report.html, sensitivity plots)", _imports("matplotlib"),
            PIP.format("report")),
    Feature("olive", "olive-ai integration (graphprune as an Olive pass)", _imports("olive", "olive.passes"),
            PIP.format("olive")),
]


def _install_command(install: str, fix: str | None) -> str:
    if not fix:
        return install
    return fix + install if fix.endswith(": ") else fix


def features() -> dict[str, dict]:
    """{key: {"what", "available", "detail", "install" (None when available)}}."""
    out = {}
    for f in FEATURES:
        try:
            ok, detail, *fix = f.check()
        except Exception as exc:  # noqa: BLE001 - the doctor must never fail
            ok, detail, fix = False, f"{type(exc).__name__}: {exc}", []
        install = None if ok else _install_command(f.install, fix[0] if fix else None)
        out[f.key] = {"what": f.what, "available": bool(ok), "detail": detail, "install": install}
    return out


def plugins() -> list[dict]:
    from graphprune.plugins import load_plugins

    return [{"group": s.group, "name": s.name, "value": s.value, "dist": s.dist, "loaded": s.ok, "error": s.error}
            for s in load_plugins()]


def doctor() -> dict:
    from graphprune.backends.targets import cpu_flags
    from graphprune.cli.results import schema
    from graphprune.report import environment

    return {"schema": schema("env"), **environment(), "cpu_flags_count": len(cpu_flags()),
            "features": features(), "plugins": plugins()}


def _print(env: dict) -> None:
    for k, v in env.items():
        if k in ("schema", "features", "plugins"):
            continue
        if isinstance(v, dict):
            print(f"{k}: " + ", ".join(f"{kk} {vv if vv is not None else 'not installed'}" for kk, vv in v.items()))
        else:
            print(f"{k}: {', '.join(v) if isinstance(v, list) else v}")
    print("\noptional features:")
    for f in env["features"].values():
        state = "available" if f["available"] else "missing"
        print(f"  {state:9} {f['what']}: {f['detail']}")
        if f["install"]:
            print(f"            install: {f['install']}")
    print("\nplugins:" + ("" if env["plugins"] else " none installed (entry points graphprune.passes, .rules, "
                                                   ".importance, .targets)"))
    for p in env["plugins"]:
        print(f"  {'loaded' if p['loaded'] else 'FAILED':9} {p['group']}: {p['name']} = {p['value']} "
              f"(from {p['dist']})" + (f": {p['error']}" if p["error"] else ""))


def run(args) -> int:
    env = doctor()
    if args.json:
        from graphprune.cli.results import emit

        return emit(args, env)
    _print(env)
    return 0
