"""Every named target resolves to a TVM target dict, ORT providers and a SIMD width."""
from __future__ import annotations

import pytest

from graphprune.backends.targets import TABLE, all_targets, resolve_target
from graphprune.errors import UsageError


@pytest.mark.parametrize("name", ["x86"] + list(TABLE))
def test_named_targets_resolve(name):
    t = resolve_target(name)
    assert t.name == name and t.tvm["kind"] in ("llvm", "cuda")
    assert t.simd_lanes in (4, 8, 16) and t.ort_providers[-1] == "CPUExecutionProvider"
    assert t.key.startswith(name + "-")
    if t.arch == "aarch64":
        host = t.tvm.get("host", t.tvm)
        assert host["mtriple"].startswith("aarch64") and t.cross_compiler == "aarch64-linux-gnu-gcc"


def test_specific_resolutions():
    assert resolve_target("arm").tvm == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    assert resolve_target("rpi4").tvm["mcpu"] == "cortex-a72"
    assert resolve_target("x86-avx512").simd_lanes == 16 and resolve_target("x86-avx2").simd_lanes == 8
    assert "CUDAExecutionProvider" in resolve_target("jetson-orin").ort_providers
    assert not resolve_target("arm").host and not resolve_target("cuda").host


def test_keys_differ_per_target():
    keys = [t.key for t in all_targets()]
    assert len(set(keys)) == len(keys)


def test_raw_json_target():
    t = resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"}')
    assert t.arch == "aarch64" and t.name.startswith("custom-") and t.tvm["mcpu"] == "cortex-a55"
    assert t.key == t.name


@pytest.mark.parametrize("bad", ["nope", "{not json", '{"mtriple": "x"}'])
def test_bad_targets(bad):
    with pytest.raises(UsageError):
        resolve_target(bad)


def test_round_to_auto_is_the_targets_lanes():
    from graphprune.backends.targets import host_target, resolve_round_to
    from graphprune.workflow.options import PruneOptions

    assert resolve_round_to("auto", resolve_target("x86-avx512")) == 16
    assert resolve_round_to("auto", resolve_target("x86-avx2")) == 8
    assert resolve_round_to("auto", resolve_target("arm")) == 4
    assert resolve_round_to(3) == 3
    # prune has no target: "auto" is this machine's CPU, resolved once when the options are made
    assert PruneOptions(round_to="auto").round_to == host_target().simd_lanes
    for bad in (0, -8, "8", 2.5, True):
        with pytest.raises(UsageError):
            resolve_round_to(bad)
