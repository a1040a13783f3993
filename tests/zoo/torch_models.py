"""Tiny PyTorch model zoo for exactness tests of ONNX pruning.

Every builder returns ``(module, example_input)`` where ``module`` is in eval
mode and ``example_input`` is a fixed float32 tensor (``1x3x32x32``).  Models are
built deterministically from ``seed`` without disturbing the global RNG state.
All architectures are small (< 0.5M parameters) hand-written versions of the
well known families, so that forward + ONNX export take well under a second.

BatchNorm layers get randomised running statistics and affine parameters so
that, after export (where BN is usually folded or kept as
BatchNormalization), every channel carries a distinct, non-trivial signal.

``export_onnx`` exports with either the TorchScript exporter
(``dynamo=False``) or the torch.export based exporter (``dynamo=True``) and
post-processes the file so that it is a single self-contained ``.onnx`` with
static shapes, ``ir_version <= 13`` and default-domain opset <= 20.

Run ``python -m tests.zoo.torch_models`` for a self-check that exports every
model with both exporters, compares ONNX Runtime against torch and prints the
op-type histograms.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections import Counter
from typing import Callable

import torch
from torch import nn

__all__ = [
    "ZOO",
    "INPUT_SHAPE",
    "MAX_IR_VERSION",
    "MAX_OPSET",
    "DYNAMO_MIN_OPSET",
    "build",
    "export_onnx",
    "randomize_batchnorm",
    "op_histogram",
    "resnet_basic",
    "resnet_bottleneck",
    "resnext",
    "mobilenet_v2",
    "mobilenet_v3",
    "densenet",
    "shufflenet_v2",
    "vgg",
    "unet",
    "pixel_shuffle_upsampler",
]

INPUT_SHAPE = (1, 3, 32, 32)
NUM_CLASSES = 10
# ONNX Runtime 1.31 rejects IR version 14 (written by onnx 1.23).
MAX_IR_VERSION = 13
MAX_OPSET = 20
# torch.onnx's dynamo exporter has no implementations below opset 18.
DYNAMO_MIN_OPSET = 18


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def randomize_batchnorm(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Give every BatchNorm layer random running stats and affine parameters.

    running_mean ~ U[-0.2, 0.2], running_var ~ U[0.5, 2], weight ~ U[0.5, 1.5],
    bias ~ U[-0.2, 0.2].  Uses ``generator`` (or the global RNG).
    """

    def u(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=generator, dtype=t.dtype) * (hi - lo) + lo

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.copy_(u(m.running_mean, -0.2, 0.2))
                    m.running_var.copy_(u(m.running_var, 0.5, 2.0))
                if m.weight is not None:
                    m.weight.copy_(u(m.weight, 0.5, 1.5))
                    m.bias.copy_(u(m.bias, -0.2, 0.2))


def _init_weights(module: nn.Module) -> None:
    """Variance preserving init so activations stay O(1) through the net."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.uniform_(m.bias, -0.1, 0.1)


def build(factory: Callable[[], nn.Module], seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Construct ``factory()`` deterministically, randomise BN, return (eval module, input)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
        _init_weights(model)
        randomize_batchnorm(model)
        x = torch.randn(INPUT_SHAPE)
    model.eval()
    return model, x


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class _ClassifierHead(nn.Module):
    def __init__(self, cin: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------------------
# ResNet (basic + bottleneck) / ResNeXt
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (optionally grouped) -> 1x1 expand, residual add."""

    def __init__(self, cin: int, width: int, cout: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, stem: int, blocks: list[nn.Module], cout: int):
        super().__init__()
        self.stem = conv_bn(3, stem, 3)
        self.layers = nn.Sequential(*blocks)
        self.head = _ClassifierHead(cout)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


def resnet_basic(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """ResNet with BasicBlocks; blocks 2 and 4 have a 1x1 conv+BN downsample shortcut."""
    return build(lambda: ResNet(16, [
        BasicBlock(16, 16),
        BasicBlock(16, 32, stride=2),
        BasicBlock(32, 32),
        BasicBlock(32, 64, stride=2),
    ], 64), seed)


def resnet_bottleneck(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """ResNet with Bottleneck blocks (expansion 4: width w -> output 4w)."""
    return build(lambda: ResNet(16, [
        Bottleneck(16, 8, 32),             # projection shortcut (channel change)
        Bottleneck(32, 8, 32),             # identity shortcut
        Bottleneck(32, 16, 64, stride=2),  # projection shortcut (stride 2)
        Bottleneck(64, 16, 64),
    ], 64), seed)


def resnext(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """ResNeXt: bottlenecks whose 3x3 conv is grouped with groups=32."""
    return build(lambda: ResNet(32, [
        Bottleneck(32, 64, 64, groups=32),
        Bottleneck(64, 64, 64, groups=32),
        Bottleneck(64, 128, 128, stride=2, groups=32),
    ], 128), seed)


# ---------------------------------------------------------------------------
# MobileNet V2 / V3
# ---------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        cfg = [  # cin, cout, stride, expand
            (16, 16, 1, 1),
            (16, 24, 2, 6),
            (24, 24, 1, 6),
            (24, 32, 2, 6),
            (32, 32, 1, 6),
        ]
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.ReLU6),
            *[InvertedResidual(*c) for c in cfg],
            conv_bn(32, 128, 1, act=nn.ReLU6),
        )
        self.head = _ClassifierHead(128)

    def forward(self, x):
        return self.head(self.features(x))


def mobilenet_v2(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    return build(MobileNetV2, seed)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return x * s


def _make_divisible(v: float, d: int = 8) -> int:
    return max(d, int(v + d / 2) // d * d)


class MBV3Block(nn.Module):
    def __init__(self, cin: int, exp: int, cout: int, k: int, se: bool,
                 act: type[nn.Module], stride: int):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, act=act))
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp, _make_divisible(exp // 4)))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()
        RE, HS = nn.ReLU, nn.Hardswish
        cfg = [  # cin, exp, cout, k, se, act, stride
            (16, 16, 16, 3, True, RE, 2),
            (16, 64, 24, 3, False, RE, 2),
            (24, 72, 24, 3, False, RE, 1),
            (24, 96, 40, 5, True, HS, 2),
            (40, 120, 40, 5, True, HS, 1),
        ]
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=HS),
            *[MBV3Block(*c) for c in cfg],
            conv_bn(40, 240, 1, act=HS),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(240, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, NUM_CLASSES)
        )

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v3(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    return build(MobileNetV3, seed)


# ---------------------------------------------------------------------------
# DenseNet
# ---------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-1x1conv-BN-ReLU-3x3conv producing ``growth`` channels."""

    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, n: int, cin: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    def __init__(self, growth: int = 8):
        super().__init__()
        c = 16
        self.stem = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        self.block1 = DenseBlock(3, c, growth)
        c += 3 * growth                      # 40
        self.trans1 = Transition(c, c // 2)  # 20
        c //= 2
        self.block2 = DenseBlock(3, c, growth)
        c += 3 * growth                      # 44
        self.norm = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.head = _ClassifierHead(c)

    def forward(self, x):
        x = self.block2(self.trans1(self.block1(self.stem(x))))
        return self.head(self.relu(self.norm(x)))


def densenet(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    return build(DenseNet, seed)


# ---------------------------------------------------------------------------
# ShuffleNet V2
# ---------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 1:
            assert cin == cout
            self.branch1 = nn.Identity()
            b2_in = half
        else:
            self.branch1 = nn.Sequential(
                conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                conv_bn(cin, half, 1),
            )
            b2_in = cin
        self.branch2 = nn.Sequential(
            conv_bn(b2_in, half, 1),
            conv_bn(half, half, 3, stride, groups=half, act=None),
            conv_bn(half, half, 1),
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn(3, 24, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage2 = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 48, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(48, 96, 2), ShuffleUnit(96, 96, 1))
        self.conv5 = conv_bn(96, 256, 1)
        self.fc = nn.Linear(256, NUM_CLASSES)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage3(self.stage2(x)))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    return build(ShuffleNetV2, seed)


# ---------------------------------------------------------------------------
# VGG
# ---------------------------------------------------------------------------


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16), conv_bn(16, 16), nn.MaxPool2d(2, 2),   # 16x16
            conv_bn(16, 32), conv_bn(32, 32), nn.MaxPool2d(2, 2),  # 8x8
            conv_bn(32, 64), nn.MaxPool2d(2, 2),                   # 4x4
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    return build(VGG, seed)


# ---------------------------------------------------------------------------
# U-Net
# ---------------------------------------------------------------------------


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))


class UNet(nn.Module):
    def __init__(self, out_channels: int = 2):
        super().__init__()
        self.enc1 = _double_conv(3, 16)    # 32x32
        self.enc2 = _double_conv(16, 32)   # 16x16
        self.mid = _double_conv(32, 64)    # 8x8
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = _double_conv(64, 32)
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec1 = _double_conv(32, 16)
        self.out = nn.Conv2d(16, out_channels, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)


def unet(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    return build(UNet, seed)


# ---------------------------------------------------------------------------
# ESPCN-like sub-pixel upsampler
# ---------------------------------------------------------------------------


class PixelShuffleUpsampler(nn.Module):
    """conv -> conv(64 = 16*2*2) -> PixelShuffle(2) -> conv; output 1x3x64x64."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.act1 = nn.Tanh()
        self.conv2 = nn.Conv2d(32, 16 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        x = self.act1(self.conv1(x))
        x = self.act2(self.shuffle(self.conv2(x)))
        return self.conv3(x)


def pixel_shuffle_upsampler(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    return build(PixelShuffleUpsampler, seed)


ZOO: dict[str, Callable[..., tuple[nn.Module, torch.Tensor]]] = {
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "resnext": resnext,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3": mobilenet_v3,
    "densenet": densenet,
    "shufflenet_v2": shufflenet_v2,
    "vgg": vgg,
    "unet": unet,
    "pixel_shuffle_upsampler": pixel_shuffle_upsampler,
}


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_exporter():
    """Silence exporter warnings/progress chatter. Exceptions still propagate."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                               "onnxscript", "onnx_ir", "torch.fx")]
    old = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lvl in zip(loggers, old, strict=True):
                lg.setLevel(lvl)


def _default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ValueError("exported model has no default-domain opset import")


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: str | os.PathLike,
                dynamo: bool, opset: int = 17) -> str:
    """Export ``module`` to a single self-contained ONNX file at ``path``.

    * ``dynamo=False``: TorchScript exporter; ``dynamo=True``: torch.export based
      exporter (``optimize=True``).
    * ``opset`` is used as-is for the TorchScript exporter; the dynamo exporter gets
      ``max(opset, 18)`` (it cannot emit opset 17, see below).
    * static shapes (no dynamic axes), graph input ``"input"``, output ``"output"``.
    * the written file has ``ir_version <= 13``, default-domain opset <= 20 and all
      weights embedded (no external data file is left next to it).

    Returns ``str(path)``.
    """
    import onnx

    if opset > MAX_OPSET:
        raise ValueError(f"opset {opset} > {MAX_OPSET}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    module = module.eval()
    args = (example_input,)
    names = dict(input_names=["input"], output_names=["output"])

    with _quiet_exporter(), torch.no_grad():
        if dynamo:
            # The dynamo exporter only has opset >= 18 implementations.  Asked for 17 it
            # translates at 18 and then tries a down-conversion *before* its optimizer
            # runs; that fails for ReduceMean (axes not yet constant) and silently keeps
            # 18, so the result would be 17 or 18 depending on the model.  Request
            # max(opset, 18) instead so the output opset is predictable.
            # verbose=False stops the "[torch.onnx] ... ✅" progress prints.
            prog = torch.onnx.export(module, args, dynamo=True, external_data=False,
                                     optimize=True, verbose=False,
                                     opset_version=max(opset, DYNAMO_MIN_OPSET), **names)
            model = prog.model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, args, buf, dynamo=False, do_constant_folding=True,
                              opset_version=opset, **names)
            model = onnx.load_from_string(buf.getvalue())

    got = _default_opset(model)
    if got > MAX_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, opset)
        got = _default_opset(model)
        if got > MAX_OPSET:
            raise RuntimeError(f"could not bring exported opset {got} down to <= {MAX_OPSET}")
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION

    # Drop any external-data references (there should be none) and write one file.
    onnx.save_model(model, path, save_as_external_data=False)
    stray = path + ".data"
    if os.path.exists(stray):
        os.remove(stray)
    return path


def op_histogram(model_or_path) -> Counter:
    """Op-type counts over the main graph (domain-qualified for non-default domains)."""
    import onnx

    model = onnx.load(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                   for n in model.graph.node)


# ---------------------------------------------------------------------------
# self-check
# ---------------------------------------------------------------------------


def _self_check(out_dir: str | None = None) -> int:
    import tempfile
    import time

    import numpy as np
    import onnx
    import onnxruntime as ort

    tmp = tempfile.TemporaryDirectory() if out_dir is None else None
    out_dir = out_dir or tmp.name
    rows, hists, failures = [], {}, 0
    for name, fn in ZOO.items():
        t0 = time.perf_counter()
        model, x = fn()
        nparams = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            ref = model(x).numpy()
        t_build = time.perf_counter() - t0
        for dynamo in (False, True):
            tag = "dynamo" if dynamo else "script"
            path = os.path.join(out_dir, f"{name}_{tag}.onnx")
            status, err, t_exp = "PASS", float("nan"), float("nan")
            info = ""
            try:
                t1 = time.perf_counter()
                export_onnx(model, x, path, dynamo=dynamo)
                t_exp = time.perf_counter() - t1
                m = onnx.load(path)
                onnx.checker.check_model(m, full_check=True)
                files = sorted(f for f in os.listdir(out_dir) if f.startswith(os.path.basename(path)))
                assert files == [os.path.basename(path)], files
                assert m.ir_version <= MAX_IR_VERSION and _default_opset(m) <= MAX_OPSET
                for vi in list(m.graph.input) + list(m.graph.output):
                    dims = vi.type.tensor_type.shape.dim
                    assert all(d.HasField("dim_value") for d in dims), f"non-static {vi.name}"
                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
                assert out.shape == ref.shape, (out.shape, ref.shape)
                scale = float(np.abs(ref).max())
                err = float(np.abs(out - ref).max()) / scale
                if not err < 1e-4:
                    status = "FAIL"
                hists[(name, tag)] = op_histogram(m)
                info = f"ir={m.ir_version} opset={_default_opset(m)} out_std={ref.std():.3g}"
            except Exception as e:  # noqa: BLE001 - report everything
                status, info = "FAIL", f"{type(e).__name__}: {e}"[:300]
            failures += status != "PASS"
            rows.append((name, tag, status, nparams, t_build, t_exp, err, info))

    print(f"{'model':26s}{'exporter':9s}{'status':7s}{'params':>8s}{'build':>8s}{'export':>8s}"
          f"{'rel_err':>10s}  info")
    for name, tag, status, npar, tb, te, err, info in rows:
        print(f"{name:26s}{tag:9s}{status:7s}{npar:8d}{tb:8.2f}{te:8.2f}{err:10.2e}  {info}")
    print()
    for (name, tag), h in hists.items():
        print(f"{name:24s} {tag:6s} " + " ".join(f"{k}:{v}" for k, v in sorted(h.items())))
    print(f"\n{len(rows) - failures}/{len(rows)} passed")
    if tmp is not None:
        tmp.cleanup()
    return failures


if __name__ == "__main__":
    import sys

    sys.exit(1 if _self_check(sys.argv[1] if len(sys.argv) > 1 else None) else 0)
