"""A ResNet-18-shaped CNN written with onnx.helper (random weights, randomised BatchNorm
statistics so activations carry signal). Used for the latency-target check: its layers
have the widths and strides of ResNet-18 at a smaller input."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from samples.make_samples import Builder  # noqa: E402


def resnet18_like(size: int = 112, seed: int = 0, widths=(64, 128, 256, 512)) -> onnx.ModelProto:
    b = Builder(seed)
    x = b.op("Relu", [b.bn(b.conv("input", 3, widths[0], k=7, stride=2, bias=False), widths[0])])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = widths[0]
    for stage, w in enumerate(widths):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            y = b.op("Relu", [b.bn(b.conv(x, c, w, stride=stride, bias=False), w)])
            y = b.bn(b.conv(y, w, w, bias=False), w)
            short = x if (stride == 1 and c == w) else b.bn(b.conv(x, c, w, k=1, stride=stride, bias=False), w)
            x = b.op("Relu", [b.op("Add", [short, y])])
            c = w
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    fc = (b.rng.standard_normal((c, 100)) / np.sqrt(c)).astype(np.float32)
    out = b.op("Gemm", [x, b.const(fc), b.const(np.zeros(100, np.float32), "b")])
    return b.model([1, 3, size, size], out, [1, 100], "resnet18_like")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "resnet18_like.onnx")
    onnx.save(resnet18_like(), out)
    print(f"wrote {out}")
