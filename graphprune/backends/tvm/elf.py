"""Checks of compiled artifacts that need no TVM: ELF machine and NEON content.

Used to verify a cross-compiled library before it is shipped: that it really is an AArch64
object, and that the tuned kernels were vectorised (NEON). Only the ELF header is parsed
here; the instruction check shells out to binutils' ``objdump`` for the target.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

# e_machine values (System V ABI, "ELF machine architectures").
_MACHINES = {
    0x03: "x86",
    0x08: "MIPS",
    0x14: "PowerPC",
    0x15: "PowerPC64",
    0x28: "ARM",
    0x3E: "x86-64",
    0xB7: "AArch64",
    0xF3: "RISC-V",
    0x102: "LoongArch",
}

# A NEON (AdvSIMD) instruction names a vector register with an arrangement: v3.4s, v0.16b...
# Scalar FP code uses s/d registers only, so any arrangement operand means vector code.
_NEON_OPERAND = re.compile(r"\bv\d{1,2}\.(?:16b|8b|8h|4h|4s|2s|2d|1d)\b")
_FMLA_VECTOR = re.compile(r"\bfmla\s+v\d{1,2}\.")


def elf_machine(path: str | Path) -> str:
    """The machine an ELF file is built for: "AArch64", "x86-64", ... ("unknown(0x..)").

    Raises ValueError when the file is not ELF (e.g. a .tar export).
    """
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    byteorder = "little" if head[5] == 1 else "big"
    machine = int.from_bytes(head[18:20], byteorder)
    return _MACHINES.get(machine, f"unknown(0x{machine:x})")


def find_objdump(machine: str = "AArch64") -> str | None:
    """An objdump that can disassemble `machine` code, or None."""
    names = {
        "AArch64": ["aarch64-linux-gnu-objdump", "llvm-objdump"],
        "x86-64": ["objdump", "x86_64-linux-gnu-objdump", "llvm-objdump"],
    }.get(machine, ["llvm-objdump"])
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def neon_stats(path: str | Path, objdump: str | None = None) -> dict | None:
    """Counts of vector (NEON) instructions in an AArch64 object, or None without objdump.

    Returns {"instructions": n, "neon": n_vector, "fmla": n_vector_fmla}.
    """
    objdump = objdump or find_objdump("AArch64")
    if objdump is None:
        return None
    out = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", str(path)],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    total = neon = fmla = 0
    for line in out.splitlines():
        # instruction lines look like "  4005d0:\tfmla\tv0.4s, v1.4s, v2.4s"
        if ":\t" not in line:
            continue
        insn = line.split(":\t", 1)[1]
        total += 1
        if _NEON_OPERAND.search(insn):
            neon += 1
            if _FMLA_VECTOR.search(insn):
                fmla += 1
    return {"instructions": total, "neon": neon, "fmla": fmla}


def has_neon(path: str | Path, objdump: str | None = None) -> bool | None:
    """True when the AArch64 object contains vector fmla (tuned GEMM/conv kernels do).

    None when no AArch64-capable objdump is installed (``apt-get install
    binutils-aarch64-linux-gnu``, which ``g++-aarch64-linux-gnu`` pulls in).
    """
    stats = neon_stats(path, objdump)
    if stats is None:
        return None
    return stats["fmla"] > 0
