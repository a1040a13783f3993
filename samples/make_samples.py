"""Generate the bundled sample models (small CNNs written with onnx.helper, no torch).

    python samples/make_samples.py [out_dir]

Writes `tiny_resnet.onnx` (residual blocks, BatchNorm, a depthwise+SE block, a concat,
Flatten→Gemm head) and `tiny_mobilenet.onnx` (inverted residuals, HardSwish). Weights are
random but fixed by a seed, so the files are the same on every machine.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.n = 0

    def name(self, p: str) -> str:
        self.n += 1
        return f"{p}{self.n}"

    def const(self, arr: np.ndarray, p: str = "w") -> str:
        name = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op.lower() + "_") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x, cin, cout, k=3, stride=1, group=1, bias=True):
        w = self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
        w *= np.sqrt(2.0 / (cin // group * k * k))
        ins = [x, self.const(w)]
        if bias:
            ins.append(self.const((0.1 * self.rng.standard_normal(cout)).astype(np.float32), "b"))
        return self.op("Conv", ins, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2, group=group)

    def bn(self, x, c):
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), 0.1 * r.standard_normal(c), 0.1 * r.standard_normal(c), r.uniform(0.5, 2, c)]
        return self.op("BatchNormalization", [x] + [self.const(p.astype(np.float32), "bn") for p in params])

    def model(self, x_shape, out, out_shape, name, opset=17, domains=(), full_check=True):
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
        m = helper.make_model(g, opset_imports=opsets, producer_name="graphprune-samples")
        m.ir_version = 9  # onnxruntime 1.31 rejects the IR version 14 that onnx 1.23 writes
        onnx.checker.check_model(m, full_check=full_check and not domains)
        return m


def tiny_resnet(seed: int = 0) -> onnx.ModelProto:
    b = Builder(seed)
    x = b.op("Relu", [b.bn(b.conv("input", 3, 32), 32)])
    for _ in range(2):  # basic residual blocks
        y = b.op("Relu", [b.bn(b.conv(x, 32, 32, bias=False), 32)])
        y = b.bn(b.conv(y, 32, 32, bias=False), 32)
        x = b.op("Relu", [b.op("Add", [x, y])])
    down = b.bn(b.conv(x, 32, 64, k=1, stride=2, bias=False), 64)  # projection shortcut
    y = b.op("Relu", [b.bn(b.conv(x, 32, 64, stride=2, bias=False), 64)])
    y = b.bn(b.conv(y, 64, 64, bias=False), 64)
    x = b.op("Relu", [b.op("Add", [down, y])])
    # depthwise + squeeze-excitation
    d = b.op("Relu", [b.bn(b.conv(x, 64, 64, group=64), 64)])
    s = b.op("GlobalAveragePool", [d])
    s = b.op("Relu", [b.conv(s, 64, 16, k=1)])
    s = b.op("Sigmoid", [b.conv(s, 16, 64, k=1)])
    d = b.op("Mul", [d, s])
    side = b.op("Relu", [b.conv(x, 64, 32, k=1)])
    x = b.op("Concat", [d, side], axis=1)  # 96 channels
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [x], axis=1)  # 96*4*4
    w = (b.rng.standard_normal((96 * 16, 64)) / np.sqrt(96 * 16)).astype(np.float32)
    x = b.op("Relu", [b.op("Gemm", [x, b.const(w), b.const(np.zeros(64, np.float32), "b")])])
    w2 = (b.rng.standard_normal((10, 64)) / 8).astype(np.float32)
    out = b.op("Gemm", [x, b.const(w2), b.const(np.zeros(10, np.float32), "b")], transB=1)
    return b.model([1, 3, 16, 16], out, [1, 10], "tiny_resnet")


def tiny_mobilenet(seed: int = 1) -> onnx.ModelProto:
    b = Builder(seed)
    x = b.op("HardSwish", [b.bn(b.conv("input", 3, 16, stride=2), 16)])
    c = 16
    for expand, cout in ((4, 16), (4, 24), (6, 24)):
        h = b.op("HardSwish", [b.bn(b.conv(x, c, c * expand, k=1, bias=False), c * expand)])
        h = b.op("HardSwish", [b.bn(b.conv(h, c * expand, c * expand, group=c * expand, bias=False), c * expand)])
        h = b.bn(b.conv(h, c * expand, cout, k=1, bias=False), cout)
        x = b.op("Add", [x, h]) if cout == c else h
        c = cout
    x = b.op("GlobalAveragePool", [b.op("HardSwish", [b.conv(x, c, 96, k=1)])])
    out = b.op("Flatten", [b.conv(x, 96, 10, k=1)], axis=1)
    return b.model([1, 3, 32, 32], out, [1, 10], "tiny_mobilenet")


SAMPLES = {"tiny_resnet": tiny_resnet, "tiny_mobilenet": tiny_mobilenet}


def main(out_dir: str | None = None) -> list[Path]:
    out = Path(out_dir) if out_dir else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in SAMPLES.items():
        p = out / f"{name}.onnx"
        onnx.save(fn(), p)
        paths.append(p)
        print(f"wrote {p}")
    return paths


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
