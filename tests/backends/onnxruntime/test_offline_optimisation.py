"""The ONNX Runtime backend's saved model: optimised for this CPU only when the target is it."""
from __future__ import annotations

import dataclasses
import platform

import onnx
import pytest

from graphprune.backends import targets
from graphprune.backends.onnxruntime import OrtBackend

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 targets on an x86-64 machine")


def _domains(path) -> set[str]:
    return {n.domain for n in onnx.load(str(path)).graph.node}


def _host_with_lanes(monkeypatch, lanes: int) -> targets.Target:
    """This machine's target, claiming `lanes` float32 lanes (an AVX-512 host has 16)."""
    host = dataclasses.replace(targets._host_x86(), simd_lanes=lanes)
    monkeypatch.setattr(targets, "host_target", lambda: host)
    return host


def test_a_narrower_target_on_this_machine_gets_a_portable_model(samples_dir, tmp_path, monkeypatch):
    """`--target x86-avx2` compiled on an AVX-512 machine saved ORT's ENABLE_ALL model with
    16-wide NCHWc blocks baked in; on a Haswell it gave wrong outputs. A target whose vector
    width differs from this CPU's gets the EXTENDED (layout-free) model and a note saying why."""
    _host_with_lanes(monkeypatch, 16)
    avx2 = dataclasses.replace(targets.TABLE["x86-avx2"], requires=())  # runnable here, 8 lanes
    assert avx2.host and not avx2.this_cpu
    info = OrtBackend().compile(samples_dir / "tiny_resnet.onnx", avx2, tmp_path / "avx2", tune=False)
    assert "com.microsoft.nchwc" not in _domains(tmp_path / "avx2" / "model.onnx")
    assert any("ORT_ENABLE_EXTENDED" in n and "x86-avx2" in n for n in info["notes"])


def test_this_cpu_gets_the_fully_optimised_model(samples_dir, tmp_path, monkeypatch):
    """The control: the same model for this CPU carries the NCHWc layout (the check above can fail)."""
    host = _host_with_lanes(monkeypatch, 16)
    assert host.this_cpu
    OrtBackend().compile(samples_dir / "tiny_resnet.onnx", host, tmp_path / "here", tune=False)
    assert "com.microsoft.nchwc" in _domains(tmp_path / "here" / "model.onnx")
