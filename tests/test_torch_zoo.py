"""CNN families exported from torch with both exporters: prune, run in ORT, oracle.

ResNet (basic + bottleneck), ResNeXt (groups 32), MobileNetV2/V3 (depthwise, SE,
hardswish), DenseNet (concat), ShuffleNetV2 (split + channel shuffle), VGG
(Flatten→Gemm), U-Net (ConvTranspose + concat skips), a pixel-shuffle upsampler.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


import graphprune as gp  # noqa: E402
from graphprune.analysis.cost import model_cost  # noqa: E402
from helpers import prune_and_check  # noqa: E402
from zoo.torch_models import ZOO, export_onnx  # noqa: E402

pytestmark = pytest.mark.torch

# groups that must be prunable per model (a floor: catches rules regressing to frozen)
MIN_GROUPS = {"resnet_basic": 7, "resnet_bottleneck": 11, "resnext": 9, "mobilenet_v2": 8, "mobilenet_v3": 13,
              "densenet": 8, "shufflenet_v2": 9, "vgg": 6, "unet": 10, "pixel_shuffle_upsampler": 2}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def get(name, dynamo):
        key = (name, dynamo)
        if key not in cache:
            module, x = ZOO[name]()
            path = tmp_path_factory.mktemp("zoo") / f"{name}_{'dynamo' if dynamo else 'ts'}.onnx"
            export_onnx(module, x, str(path), dynamo=dynamo)
            cache[key] = path
        return cache[key]

    return get


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_prunes_exactly(name, dynamo, exported):
    import onnx

    proto = onnx.load(exported(name, dynamo))
    before = model_cost(gp.load(proto.SerializeToString()))
    pruned, plan, dg = prune_and_check(proto, ratio=0.3, min_groups=MIN_GROUPS[name])
    after = model_cost(pruned)
    assert after.macs < 0.85 * before.macs, (before.macs, after.macs)
    assert not dg.diagnostics, [(d.node, d.message) for d in dg.diagnostics]
    for seed in (1, 2):  # arbitrary (not magnitude-ordered) removals too
        prune_and_check(proto, seed=seed, min_groups=MIN_GROUPS[name])
