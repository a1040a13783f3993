"""Run an AArch64 TVM library on this x86 machine under qemu-user (correctness only).

No TVM import here: a small C++ program (the source is below) is cross-compiled against
the TVM runtime of the *aarch64* ``apache-tvm`` / ``apache-tvm-ffi`` wheels (same versions
as installed here, fetched with ``pip download`` on request) and run with ``qemu-aarch64``.
It loads the library into the Relax VM, runs ``main`` once on the given inputs and writes
the outputs back. Emulated timings mean nothing; this checks that the cross-compiled
artifact loads and computes the right numbers.

Needs (Debian): ``apt-get install -y g++-aarch64-linux-gnu qemu-user``.
Runtime libraries: ``ensure_runtime(download=True)`` caches them in
``~/.cache/graphprune/tvm-aarch64-runtime/<versions>/`` (or $GRAPHPRUNE_TVM_AARCH64_RUNTIME,
a folder holding ``lib/libtvm_runtime.so``, ``lib/libtvm_ffi.so`` and ``include/``).
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

QEMU = "qemu-aarch64"
CXX = "aarch64-linux-gnu-g++"
SYSROOT = Path("/usr/aarch64-linux-gnu")

RUNNER_SRC = r"""
// graphprune: run a Relax VM library once. usage: runner lib.so inputs.bin outputs.bin
// Tensor file: int64 count, then per tensor: int64 ndim, int64 shape[ndim],
// uint8 dtype code, uint8 bits, uint16 lanes, int64 nbytes, data.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <vector>

namespace ffi = tvm::ffi;

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    t->data = std::aligned_alloc(64, (ffi::GetDataSize(*t) + 63) / 64 * 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

template <typename T> static T Read(std::istream& in) {
  T v;
  in.read(reinterpret_cast<char*>(&v), sizeof(T));
  if (!in) throw std::runtime_error("truncated input file");
  return v;
}

template <typename T> static void Write(std::ostream& out, T v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof(T));
}

static ffi::Tensor ReadTensor(std::istream& in) {
  int64_t ndim = Read<int64_t>(in);
  std::vector<int64_t> shape(ndim);
  for (auto& d : shape) d = Read<int64_t>(in);
  DLDataType dtype;
  dtype.code = Read<uint8_t>(in);
  dtype.bits = Read<uint8_t>(in);
  dtype.lanes = Read<uint16_t>(in);
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(shape), dtype, DLDevice{kDLCPU, 0});
  int64_t nbytes = Read<int64_t>(in);
  if (nbytes != static_cast<int64_t>(ffi::GetDataSize(static_cast<size_t>(t.numel()), dtype)))
    throw std::runtime_error("input size does not match its shape");
  in.read(static_cast<char*>(t.data_ptr()), nbytes);
  return t;
}

static void WriteTensor(std::ostream& out, const ffi::Tensor& t) {
  Write<int64_t>(out, t.ndim());
  for (int64_t i = 0; i < t.ndim(); ++i) Write<int64_t>(out, t.size(i));
  DLDataType dt = t.dtype();
  Write<uint8_t>(out, dt.code);
  Write<uint8_t>(out, dt.bits);
  Write<uint16_t>(out, dt.lanes);
  int64_t nbytes = static_cast<int64_t>(ffi::GetDataSize(static_cast<size_t>(t.numel()), dt));
  Write<int64_t>(out, nbytes);
  out.write(static_cast<const char*>(t.data_ptr()), nbytes);
}

static void Collect(const ffi::Any& v, std::vector<ffi::Tensor>* outs) {
  if (auto t = v.try_cast<ffi::Tensor>()) {
    outs->push_back(*t);
  } else if (auto arr = v.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& e : *arr) Collect(e, outs);
  } else {
    throw std::runtime_error("unexpected output type");
  }
}

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " lib.so inputs.bin outputs.bin\n";
    return 2;
  }
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);  // pooled
    ffi::Function main_fn = vm->GetFunction("main").value();
    std::ifstream in(argv[2], std::ios::binary);
    int64_t n = Read<int64_t>(in);
    std::vector<ffi::Tensor> inputs;
    for (int64_t i = 0; i < n; ++i) inputs.push_back(ReadTensor(in));
    std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
    ffi::Any ret;
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
    std::vector<ffi::Tensor> outs;
    Collect(ret, &outs);
    std::ofstream out(argv[3], std::ios::binary);
    Write<int64_t>(out, static_cast<int64_t>(outs.size()));
    for (const auto& t : outs) WriteTensor(out, t);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
"""

_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 1}
_NP_KINDS = {0: "i", 1: "u", 2: "f"}


def available() -> tuple[bool, str]:
    """Can AArch64 programs be built and emulated here?"""
    missing = [tool for tool in (QEMU, CXX) if shutil.which(tool) is None]
    if missing:
        return False, f"missing {', '.join(missing)} (apt-get install -y g++-aarch64-linux-gnu qemu-user)"
    if not (SYSROOT / "lib").is_dir():
        return False, f"no AArch64 sysroot at {SYSROOT} (apt-get install -y g++-aarch64-linux-gnu)"
    return True, "qemu-aarch64 + aarch64 g++"


def _versions() -> tuple[str, str]:
    from importlib.metadata import version

    return version("apache-tvm"), version("apache-tvm-ffi")


def _cache_root() -> Path:
    env = os.environ.get("GRAPHPRUNE_TVM_AARCH64_RUNTIME")
    if env:
        return Path(env)
    tvm_v, ffi_v = _versions()
    from graphprune.cache import cache_dir

    return cache_dir("tvm-aarch64-runtime", f"tvm-{tvm_v}_ffi-{ffi_v}")


def _has_runtime(root: Path) -> bool:
    return all((root / "lib" / n).exists() for n in ("libtvm_runtime.so", "libtvm_ffi.so")) and \
        (root / "include" / "tvm" / "ffi" / "function.h").exists()


def ensure_runtime(download: bool = False, log=lambda s: None) -> Path:
    """Folder with the aarch64 TVM runtime libraries and tvm-ffi headers.

    With ``download``: fetch the aarch64 wheels of the installed versions with
    ``pip download`` (~100 MB) and unpack the three files needed. Raises RuntimeError
    when they are absent and cannot be fetched.
    """
    root = _cache_root()
    if _has_runtime(root):
        return root
    if not download:
        raise RuntimeError(f"no aarch64 TVM runtime in {root} (call ensure_runtime(download=True))")
    tvm_v, ffi_v = _versions()
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="gp-a64-") as tmp:
        log(f"qemu: pip download apache-tvm=={tvm_v} apache-tvm-ffi=={ffi_v} (aarch64 wheels)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
               "--python-version", py, "-d", tmp,
               f"apache-tvm=={tvm_v}", f"apache-tvm-ffi=={ffi_v}"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"pip download of the aarch64 TVM wheels failed: {r.stderr.strip()[-500:]}")
        staging = Path(tmp) / "rt"
        (staging / "lib").mkdir(parents=True)
        (staging / "include").mkdir()
        for whl in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(whl) as z:
                for name in z.namelist():
                    if name in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"):
                        (staging / "lib" / Path(name).name).write_bytes(z.read(name))
                    for prefix in ("tvm_ffi/include/", "tvm_ffi/3rdparty/dlpack/include/"):
                        if name.startswith(prefix) and not name.endswith("/"):
                            dst = staging / "include" / name[len(prefix):]
                            dst.parent.mkdir(parents=True, exist_ok=True)
                            dst.write_bytes(z.read(name))
        if not _has_runtime(staging):
            raise RuntimeError("the aarch64 wheels did not contain the expected runtime files")
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            shutil.rmtree(root)
        shutil.move(str(staging), str(root))
    return root


def build_runner(runtime: Path) -> Path:
    """The cross-compiled runner next to the runtime libraries (rebuilt if the source changed)."""
    tag = hashlib.sha256(RUNNER_SRC.encode()).hexdigest()[:10]
    exe = runtime / "lib" / f"graphprune-vm-runner-{tag}"
    if exe.exists():
        return exe
    with tempfile.TemporaryDirectory(prefix="gp-a64-") as tmp:
        src = Path(tmp) / "runner.cc"
        src.write_text(RUNNER_SRC)
        out = Path(tmp) / exe.name
        cmd = [CXX, "-std=c++17", "-O2", "-I", str(runtime / "include"), str(src), "-o", str(out),
               "-L", str(runtime / "lib"), "-ltvm_ffi", "-ltvm_runtime", "-Wl,-rpath,$ORIGIN"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"building the aarch64 runner failed:\n{r.stderr[-2000:]}")
        shutil.move(str(out), str(exe))
    return exe


def _write_tensors(path: Path, arrays) -> None:
    import numpy as np

    with open(path, "wb") as f:
        f.write(struct.pack("<q", len(arrays)))
        for a in arrays:
            a = np.ascontiguousarray(a)
            if a.dtype.kind not in _DL_CODES:
                raise TypeError(f"unsupported input dtype {a.dtype}")
            f.write(struct.pack("<q", a.ndim))
            f.write(struct.pack(f"<{a.ndim}q", *a.shape))
            bits = 1 if a.dtype.kind == "b" else a.dtype.itemsize * 8
            f.write(struct.pack("<BBH", _DL_CODES[a.dtype.kind], bits, 1))
            f.write(struct.pack("<q", a.nbytes))
            f.write(a.tobytes())


def _read_tensors(path: Path) -> list:
    import numpy as np

    data = io.BytesIO(path.read_bytes())

    def unpack(fmt):
        return struct.unpack(fmt, data.read(struct.calcsize(fmt)))

    (count,) = unpack("<q")
    out = []
    for _ in range(count):
        (ndim,) = unpack("<q")
        shape = unpack(f"<{ndim}q") if ndim else ()
        code, bits, _lanes = unpack("<BBH")
        (nbytes,) = unpack("<q")
        dtype = np.bool_ if (code == 1 and bits == 1) else np.dtype(f"{_NP_KINDS[code]}{bits // 8}")
        out.append(np.frombuffer(data.read(nbytes), dtype=dtype).reshape(shape).copy())
    return out


def run(lib_path: str | Path, inputs: list, *, runtime: Path | None = None,
        download: bool = False, timeout: float = 600) -> list:
    """Run ``main`` of an AArch64 library once under qemu; inputs in order, outputs as numpy."""
    ok, why = available()
    if not ok:
        raise RuntimeError(why)
    runtime = runtime or ensure_runtime(download=download)
    exe = build_runner(runtime)
    with tempfile.TemporaryDirectory(prefix="gp-qemu-") as tmp:
        fin, fout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        _write_tensors(fin, inputs)
        env = {**os.environ, "LD_LIBRARY_PATH": str(runtime / "lib")}
        r = subprocess.run([QEMU, "-L", str(SYSROOT), str(exe), str(Path(lib_path).resolve()),
                            str(fin), str(fout)], capture_output=True, text=True, env=env,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"aarch64 run under qemu failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-2000:]}")
        return _read_tensors(fout)
