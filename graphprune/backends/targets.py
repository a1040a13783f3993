"""Named targets: what each resolves to for TVM, ONNX Runtime and channel rounding.

A target is a table entry, not a code path: TVM target JSON dict, cross-compiler, ORT
execution providers, float32 SIMD lanes (the default `round_to`, so pruned widths keep
vector lanes full), and whether artifacts for it run on this machine. Raw TVM target
JSON is accepted too (`--target '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}'`).
"""
from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from functools import lru_cache

from graphprune.errors import UsageError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    tvm: dict
    arch: str  # "x86_64" | "aarch64"
    simd_lanes: int  # float32 lanes of the vector unit; default round_to
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    cross_compiler: str | None = None
    requires: tuple[str, ...] = field(default=())  # CPU flags needed to run on this machine
    device: str = "cpu"

    @property
    def host(self) -> bool:
        """Artifacts for this target can run on this machine."""
        if self.device != "cpu" or self.arch != platform.machine():
            return False
        flags = cpu_flags()
        return all(f in flags for f in self.requires)

    @property
    def this_cpu(self) -> bool:
        """Runs on this machine with the same vector width as its CPU: only then may a saved
        model carry layouts chosen for this CPU (ORT's NCHWc blocks are 16 wide on AVX-512 and
        8 on AVX2: a model optimised here for `x86-avx2` on an AVX-512 machine gave wrong
        results on a Haswell)."""
        return self.host and self.simd_lanes == host_target().simd_lanes

    @property
    def key(self) -> str:
        """Stable id for per-target caches (tuning databases): never share across targets."""
        if self.name.startswith("custom-"):
            return self.name
        return f"{self.name}-{tvm_hash(self.tvm)}"

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "tvm": self.tvm, "arch": self.arch,
                "simd_lanes": self.simd_lanes, "ort_providers": list(self.ort_providers),
                "cross_compiler": self.cross_compiler, "device": self.device, "host": self.host,
                "key": self.key}


def tvm_hash(tvm: dict) -> str:
    return hashlib.sha256(json.dumps(tvm, sort_keys=True).encode()).hexdigest()[:10]


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


_X86 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
_A64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}


def _host_x86() -> Target:
    flags = cpu_flags()
    mattr = [f"+{f}" for f in ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq",
                               "avx512vl") if f.replace(".", "_") in flags]
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    return Target("x86", "this machine's x86-64 CPU (features detected from /proc/cpuinfo)",
                  {**_X86, "mattr": mattr} if mattr else dict(_X86), "x86_64", lanes)


TABLE: dict[str, Target] = {
    "x86-avx2": Target("x86-avx2", "x86-64 with AVX2 + FMA (Haswell and later)",
                       {**_X86, "mcpu": "haswell"}, "x86_64", 8, requires=("avx2", "fma")),
    "x86-avx512": Target("x86-avx512", "x86-64 with AVX-512 (Skylake-SP and later)",
                         {**_X86, "mcpu": "skylake-avx512"}, "x86_64", 16, requires=("avx512f",)),
    "arm": Target("arm", "generic AArch64 Linux with NEON (cross-compiled)",
                  {**_A64, "mattr": ["+neon"]}, "aarch64", 4, cross_compiler="aarch64-linux-gnu-gcc"),
    "rpi4": Target("rpi4", "Raspberry Pi 4 (Cortex-A72, AArch64 Linux)",
                   {**_A64, "mcpu": "cortex-a72", "mattr": ["+neon"]}, "aarch64", 4,
                   cross_compiler="aarch64-linux-gnu-gcc"),
    "jetson-orin": Target("jetson-orin", "NVIDIA Jetson Orin (Ampere sm_87 GPU, AArch64 host)",
                          {"kind": "cuda", "arch": "sm_87", "host": {**_A64, "mcpu": "cortex-a78"}}, "aarch64", 8,
                          ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
                          cross_compiler="aarch64-linux-gnu-gcc", device="cuda"),
    "cuda": Target("cuda", "NVIDIA GPU on an x86-64 host", {"kind": "cuda", "host": dict(_X86)}, "x86_64", 8,
                   ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"), device="cuda"),
}


def host_target() -> Target:
    """The target describing this machine's CPU (its lanes are `round_to="auto"` for prune)."""
    if platform.machine() == "aarch64":
        return TABLE["arm"]
    return _host_x86()


def resolve_round_to(value, target: Target | None = None) -> int:
    """A width multiple: an integer >= 1, or "auto": the float32 SIMD lanes of `target`
    (default: this machine). Measured (benchmarks/bench_widths.py): ONNX Runtime's blocked
    conv kernels run widths that are multiples of the lanes at the dense model's throughput,
    and other widths up to 3x slower per MAC."""
    if value == "auto":
        return (target or host_target()).simd_lanes
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"round_to must be an integer >= 1 or 'auto', not {value!r}")
    return value


def all_targets() -> list[Target]:
    return [_host_x86()] + list(TABLE.values())


def resolve_target(spec: str) -> Target:
    """A named target, or raw TVM target JSON (a dict with at least "kind")."""
    spec = spec.strip()
    if spec == "x86":
        return _host_x86()
    if spec in TABLE:
        return TABLE[spec]
    if spec.startswith("{"):
        try:
            d = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise UsageError(f"target JSON does not parse: {exc}") from None
        if not isinstance(d, dict) or "kind" not in d:
            raise UsageError('target JSON needs at least {"kind": ...}')
        host = d.get("host", d) if d.get("kind") == "cuda" else d
        triple = str(host.get("mtriple", ""))
        arch = "aarch64" if triple.startswith("aarch64") else "x86_64" if triple.startswith("x86_64") or not triple else triple.split("-")[0]
        lanes = 4 if arch == "aarch64" else 8
        cross = "aarch64-linux-gnu-gcc" if arch == "aarch64" and platform.machine() != "aarch64" else None
        return Target(f"custom-{tvm_hash(d)}", "raw TVM target JSON", d, arch, lanes, cross_compiler=cross,
                      device="cuda" if d["kind"] == "cuda" else "cpu")
    names = ", ".join(["x86"] + list(TABLE))
    raise UsageError(f"unknown target {spec!r}", hint=f"known targets: {names}, or TVM target JSON")
