"""Random, valid, tiny ONNX CNN-style DAGs for property tests.

``build_random_model(rng, max_nodes=12, opset=17)`` grows a graph from a single
float32 input ``x`` of static shape ``[1, C, H, W]`` (C in 3..8, H/W mostly 8)
by repeatedly picking an existing NCHW activation (or two of them) and
appending one "family" of ops (Conv, ConvTranspose, normalisations, unary
activations, element-wise binaries, Concat/Split/Slice/Gather, channel
shuffle, DepthToSpace/SpaceToDepth, ...).  The exact shape of every tensor is
tracked so that merges are always valid; at the end every dangling tensor is
merged into one or two graph outputs, optionally through a classifier head.

About a quarter of the models store *all* constants (weights, shapes,
indices) as ``Constant`` nodes instead of initializers.

``random_models()`` is a hypothesis strategy returning such models.

Supported opsets: 13, 17 (default), 18 and 21.  GroupNormalization is only
generated for opset >= 21: the opset-18 version is deprecated and
``onnx.checker`` (1.23) refuses it, although ONNX Runtime still runs it.

Run ``python tests/random_graphs.py [N] [--opset K]`` for the self-validation
(onnx checker full_check, shape-tracking check, ONNX Runtime execution).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "SUPPORTED_OPSETS",
    "IR_VERSION",
    "build_random_model",
    "random_models",
    "random_feeds",
]

SUPPORTED_OPSETS = (13, 17, 18, 21)
IR_VERSION = 10  # onnx 1.23 writes 11+, which ONNX Runtime 1.31 rejects.

_MAX_HW = 16  # spatial sizes stay within 1..16
_MAX_C = 48  # channel counts of body tensors stay <= 48
_MAG_LIMIT = 1e3  # rough bound on activation magnitudes (keeps outputs finite)
_INT64_MAX = np.iinfo(np.int64).max


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _conv_out(n: int, k: int, s: int = 1, p0: int = 0, p1: int = 0, d: int = 1) -> int:
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


def _convt_out(n: int, k: int, s: int, p0: int, p1: int, op: int = 0, d: int = 1) -> int:
    return s * (n - 1) + op + d * (k - 1) + 1 - p0 - p1


def _broadcastable_to(small: tuple, big: tuple) -> bool:
    """True if ``small`` broadcasts to exactly ``big`` (same rank)."""
    return len(small) == len(big) and all(a == b or a == 1 for a, b in zip(small, big, strict=True))


class _Builder:
    def __init__(self, rng: np.random.Generator, opset: int):
        if opset not in SUPPORTED_OPSETS:
            raise ValueError(f"opset must be one of {SUPPORTED_OPSETS}, got {opset}")
        self.rng = rng
        self.opset = opset
        self.const_nodes = bool(rng.random() < 0.25)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shape: dict[str, tuple] = {}  # every non-constant tensor -> exact shape
        self.mag: dict[str, float] = {}  # rough magnitude estimate
        self.uses: dict[str, int] = {}  # consumer count
        self.pool: list[str] = []  # NCHW activations available for growth
        self.n_body = 0  # number of non-Constant nodes
        self._counter = 0
        self.features: dict[str, int] = {}  # variant counts, for coverage reports

    def tag(self, feature: str) -> None:
        self.features[feature] = self.features.get(feature, 0) + 1

    # ------------------------------------------------------------------ utils
    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def choice(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def randint(self, lo: int, hi: int) -> int:  # inclusive bounds
        return int(self.rng.integers(lo, hi + 1))

    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def weight(self, shape, fan_in: int, gain: float = 1.0) -> np.ndarray:
        std = gain / np.sqrt(max(fan_in, 1))
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def normal(self, shape, std: float = 1.0, mean: float = 0.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std + mean).astype(np.float32)

    def const(self, arr, hint: str = "c") -> str:
        arr = np.asarray(arr)
        name = self.fresh(hint)
        t = numpy_helper.from_array(arr, name)
        if self.const_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_node", value=t))
        else:
            self.inits.append(t)
        return name

    def i64(self, values, hint: str = "i") -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def f32(self, values, hint: str = "f") -> str:
        return self.const(np.asarray(values, dtype=np.float32), hint)

    def emit(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh(f"n_{op}"), **attrs))
        self.n_body += 1
        for i in inputs:
            if i in self.uses:
                self.uses[i] += 1
        return outs

    def op(self, op: str, inputs: list[str], shape: tuple, mag: float, pool: bool = False, **attrs) -> str:
        (out,) = self.emit(op, inputs, 1, **attrs)
        self.register(out, shape, mag, pool)
        return out

    def register(self, name: str, shape: tuple, mag: float, pool: bool) -> None:
        self.shape[name] = tuple(int(s) for s in shape)
        self.mag[name] = float(mag)
        self.uses[name] = 0
        if pool:
            assert len(shape) == 4 and shape[0] == 1
            self.pool.append(name)

    def pick(self, pred=None) -> str | None:
        cands = [t for t in self.pool if pred is None or pred(self.shape[t])]
        if not cands:
            return None
        r = self.rng.random()
        if r < 0.45:
            return cands[-1]
        dangling = [t for t in cands if self.uses[t] == 0]
        if r < 0.75 and dangling:
            return self.choice(dangling)
        return self.choice(cands)

    def pick_pair(self, allow_broadcast: bool = True):
        """Two pool tensors with equal shapes (or one broadcastable to the other)."""
        exact, bcast = [], []
        n = len(self.pool)
        for i in range(n):
            for j in range(n):
                a, b = self.pool[i], self.pool[j]
                sa, sb = self.shape[a], self.shape[b]
                if i < j and sa == sb:
                    exact.append((a, b))
                elif i != j and sa != sb and _broadcastable_to(sb, sa) and sa[1] == sb[1]:
                    bcast.append((a, b))
        if exact and (not bcast or not allow_broadcast or self.chance(0.75)):
            # prefer pairs that involve recent / dangling tensors
            last = self.pool[-1]
            pref = [p for p in exact if last in p or self.uses[p[0]] == 0 or self.uses[p[1]] == 0]
            a, b = self.choice(pref if pref and self.chance(0.7) else exact)
        elif bcast and allow_broadcast:
            a, b = self.choice(bcast)
        elif self.chance(0.1):  # same tensor twice, e.g. Add(t, t)
            a = self.pick()
            b = a
        else:
            return None
        return (a, b) if self.chance(0.5) else (b, a)

    # ----------------------------------------------------------- primitives
    def conv(self, x: str, m: int, k: int, stride: int = 1, pads=None, dil: int = 1,
             group: int = 1, bias: bool = True, auto_pad: str | None = None, pool: bool = True) -> str:
        _, c, h, w = self.shape[x]
        assert c % group == 0 and m % group == 0
        self.tag("Conv/depthwise x%d" % (m // c) if group == c > 1 else "Conv/grouped" if group > 1 else "Conv/dense")
        self.tag(f"Conv/k{k}")
        if dil > 1:
            self.tag("Conv/dilation2")
        if stride > 1:
            self.tag("Conv/stride2")
        if not bias:
            self.tag("Conv/no-bias")
        if auto_pad:
            self.tag("Conv/auto_pad")
        if pads is None:
            p = dil * (k - 1) // 2
            pads = [p, p, p, p]
        wname = self.const(self.weight((m, c // group, k, k), c // group * k * k), "W")
        inputs = [x, wname]
        if bias:
            inputs.append(self.const(self.normal((m,), 0.1), "B"))
        if auto_pad is not None:  # SAME_UPPER with stride 1 keeps the size
            oh, ow = -(-h // stride), -(-w // stride)
            pads_attr = None
        else:
            oh = _conv_out(h, k, stride, pads[0], pads[2], dil)
            ow = _conv_out(w, k, stride, pads[1], pads[3], dil)
            pads_attr = list(pads) if (any(pads) or self.chance(0.5)) else None
        return self.op(
            "Conv", inputs, (1, m, oh, ow), self.mag[x] * 1.5 + 0.3, pool,
            kernel_shape=[k, k],
            strides=[stride, stride] if (stride != 1 or self.chance(0.5)) else None,
            dilations=[dil, dil] if (dil != 1 or self.chance(0.3)) else None,
            group=group if (group != 1 or self.chance(0.3)) else None,
            pads=pads_attr, auto_pad=auto_pad,
        )

    def down(self, x: str) -> str | None:
        """Halve the spatial size (MaxPool/AveragePool k2s2 or strided conv)."""
        _, c, h, w = self.shape[x]
        if h < 2 or w < 2:
            return None
        kind = self.randint(0, 3)
        if kind == 0:
            return self.op("MaxPool", [x], (1, c, h // 2, w // 2), self.mag[x], True,
                           kernel_shape=[2, 2], strides=[2, 2])
        if kind == 1:
            return self.op("AveragePool", [x], (1, c, h // 2, w // 2), self.mag[x], True,
                           kernel_shape=[2, 2], strides=[2, 2])
        m = self.randint(4, 16)
        if kind == 2:
            return self.conv(x, m, 3, stride=2, pads=[1, 1, 1, 1], bias=self.chance(0.7))
        return self.conv(x, m, 2, stride=2, pads=[0, 0, 0, 0], bias=self.chance(0.7))

    def per_channel_shape(self, c: int) -> tuple:
        return self.choice([(1, c, 1, 1), (1, c, 1, 1), (c, 1, 1)])

    # ------------------------------------------------------------- families
    def f_conv(self) -> bool:
        x = self.pick()
        _, c, h, w = self.shape[x]
        kind = self.rng.random()
        group = 1
        if kind < 0.5:
            m = self.randint(4, 16)
        elif kind < 0.75:
            gs = [g for g in _divisors(c) if 1 < g < c]
            if not gs:
                m = self.randint(4, 16)
            else:
                group = self.choice(gs)
                m = group * self.randint(1, max(1, 16 // group))
        else:  # depthwise, channel multiplier 1 or 2
            group = c
            m = c * (2 if (2 * c <= _MAX_C and self.chance(0.4)) else 1)
        k = 3 if self.chance(0.7) else 1
        dil = 2 if (k == 3 and self.chance(0.2)) else 1
        auto_pad = "SAME_UPPER" if (k == 3 and dil == 1 and self.chance(0.1)) else None
        self.conv(x, m, k, dil=dil, group=group, bias=self.chance(0.7), auto_pad=auto_pad)
        return True

    def f_conv_transpose(self) -> bool:
        x = self.pick()
        _, c, h, w = self.shape[x]
        variants = [(1, 3, 1, 0), (1, 1, 0, 0)]  # (stride, kernel, pad, output_padding)
        if 2 * h <= _MAX_HW and 2 * w <= _MAX_HW:
            variants += [(2, 2, 0, 0), (2, 3, 1, 1), (2, 4, 1, 0)]
        s, k, p, opad = self.choice(variants)
        group = self.choice(_divisors(c)) if self.chance(0.3) else 1
        m = group * self.randint(max(1, 4 // group), max(1, 16 // group))
        wname = self.const(self.weight((c, m // group, k, k), c // group * k * k // (s * s)), "Wt")
        inputs = [x, wname]
        if self.chance(0.5):
            inputs.append(self.const(self.normal((m,), 0.1), "Bt"))
        oh, ow = _convt_out(h, k, s, p, p, opad), _convt_out(w, k, s, p, p, opad)
        self.tag(f"ConvTranspose/stride{s}" + ("/grouped" if group > 1 else ""))
        y = self.op("ConvTranspose", inputs, (1, m, oh, ow), self.mag[x] * 2 + 0.3, True,
                    kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p],
                    output_padding=[opad, opad] if opad else None,
                    group=group if group != 1 else None)
        if s == 2 and self.chance(0.7):
            self.down(y)
        return True

    def f_batchnorm(self) -> bool:
        x = self.pick()
        c = self.shape[x][1]
        ins = [x,
               self.const(self.normal((c,), 0.3, 1.0), "bn_scale"),
               self.const(self.normal((c,), 0.2), "bn_bias"),
               self.const(self.normal((c,), 0.2), "bn_mean"),
               self.const(self.rng.uniform(0.5, 2.0, c).astype(np.float32), "bn_var")]
        self.op("BatchNormalization", ins, self.shape[x], self.mag[x] * 2.5 + 1, True,
                epsilon=1e-5 if self.chance(0.5) else None)
        return True

    def f_instancenorm(self) -> bool:
        x = self.pick()
        c = self.shape[x][1]
        ins = [x, self.const(self.normal((c,), 0.3, 1.0), "in_scale"),
               self.const(self.normal((c,), 0.2), "in_bias")]
        self.op("InstanceNormalization", ins, self.shape[x], 10.0, True,
                epsilon=1e-5 if self.chance(0.5) else None)
        return True

    def f_groupnorm(self) -> bool:
        # Only enabled for opset >= 21 (see module docstring); in opset 18 the
        # scale/bias had shape [num_groups], from 21 on they are [C].
        x = self.pick()
        c = self.shape[x][1]
        g = self.choice(_divisors(c))
        pshape = (c,) if self.opset >= 21 else (g,)
        ins = [x, self.const(self.normal(pshape, 0.3, 1.0), "gn_scale"),
               self.const(self.normal(pshape, 0.2), "gn_bias")]
        self.op("GroupNormalization", ins, self.shape[x], 10.0, True, num_groups=g,
                epsilon=1e-5 if self.chance(0.5) else None)
        return True

    def f_unary(self) -> bool:
        x = self.pick()
        s, mg = self.shape[x], self.mag[x]
        ops = ["Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Erf", "Softplus",
               "Elu", "Clip", "Swish"]
        if self.opset >= 14:
            ops.append("HardSwish")
        if self.opset >= 18:
            ops.append("Mish")
        op = self.choice(ops)
        self.tag(f"unary/{op}")
        if op == "LeakyRelu":
            self.op(op, [x], s, mg, True, alpha=float(self.rng.uniform(0.01, 0.3)))
        elif op == "HardSigmoid":
            self.op(op, [x], s, 1.0, True, alpha=float(self.rng.uniform(0.1, 0.3)),
                    beta=float(self.rng.uniform(0.3, 0.7)))
        elif op == "Elu":
            self.op(op, [x], s, mg + 1, True, alpha=float(self.rng.uniform(0.5, 1.5)))
        elif op == "Clip":
            lo = float(self.rng.uniform(-2.0, 0.0))
            hi = float(self.rng.uniform(0.5, 6.0))
            form = self.randint(0, 2)
            if form == 0:
                ins = [x, self.f32(lo, "clip_min"), self.f32(hi, "clip_max")]
            elif form == 1:
                ins = [x, self.f32(lo, "clip_min")]
            else:
                ins = [x, "", self.f32(hi, "clip_max")]
            self.op(op, ins, s, min(mg, 6.0) if form != 1 else mg, True)
        elif op == "Swish":  # x * sigmoid(x)
            sig = self.op("Sigmoid", [x], s, 1.0)
            a, b = (x, sig) if self.chance(0.5) else (sig, x)
            self.op("Mul", [a, b], s, mg, True)
        elif op in ("Sigmoid", "Tanh", "Erf"):
            self.op(op, [x], s, 1.0, True)
        elif op == "Softplus":
            self.op(op, [x], s, mg + 1, True)
        else:  # Relu, HardSwish, Mish
            self.op(op, [x], s, mg, True)
        return True

    def f_prelu(self) -> bool:
        x = self.pick()
        c = self.shape[x][1]
        sshape = (c, 1, 1) if self.chance(0.8) else (1, c, 1, 1)
        slope = self.const(self.normal(sshape, 0.25), "slope")
        self.op("PRelu", [x, slope], self.shape[x], self.mag[x], True)
        return True

    def f_binary(self) -> bool:
        pair = self.pick_pair()
        if pair is None:
            return False
        a, b = pair
        op = self.choice(["Add", "Sub", "Mul", "Max", "Min"])
        ma, mb = self.mag[a], self.mag[b]
        if op == "Mul" and ma * mb > _MAG_LIMIT:
            op = "Add"
        out_shape = tuple(max(p, q) for p, q in zip(self.shape[a], self.shape[b], strict=True))
        self.tag("binary/" + ("same-tensor" if a == b else "same-shape" if self.shape[a] == self.shape[b] else "broadcast"))
        mag = ma * mb if op == "Mul" else (ma + mb if op in ("Add", "Sub") else max(ma, mb))
        self.op(op, [a, b], out_shape, mag, True)
        return True

    def f_const_binary(self) -> bool:
        x = self.pick()
        c = self.shape[x][1]
        op = self.choice(["Add", "Mul", "Sub"])
        cshape = self.choice([self.per_channel_shape(c), self.per_channel_shape(c), (), (1,)])
        val = self.normal(cshape, 0.5, 1.0 if op == "Mul" else 0.0)
        cmax = float(np.max(np.abs(val))) if val.size else 0.0
        if op == "Mul" and self.mag[x] * cmax > _MAG_LIMIT:
            return False
        cname = self.const(val, f"{op.lower()}_c")
        self.tag("const-binary/" + {0: "scalar[]", 1: "[1]", 3: "[C,1,1]", 4: "[1,C,1,1]"}[len(cshape)])
        ins = [x, cname] if self.chance(0.6) else [cname, x]  # also c - x, c * x, ...
        mag = self.mag[x] * cmax if op == "Mul" else self.mag[x] + cmax
        self.op(op, ins, self.shape[x], mag, True)
        return True

    def f_div(self) -> bool:
        x = self.pick()
        d = float(self.rng.uniform(0.5, 4.0))
        cname = self.f32(d if self.chance(0.5) else [d], "div_c")
        self.op("Div", [x, cname], self.shape[x], self.mag[x] / d, True)
        return True

    def f_where(self) -> bool:
        pair = self.pick_pair(allow_broadcast=False) if self.chance(0.7) else None
        if pair is None:
            a = self.pick()
            b = self.const(self.normal(self.choice([(), self.per_channel_shape(self.shape[a][1])]), 0.5), "where_c")
            if self.chance(0.5):
                a, b = b, a
        else:
            a, b = pair
        s = self.shape[a] if a in self.shape else self.shape[b]
        c = s[1]
        cond = self.rng.random(self.per_channel_shape(c)) < 0.5
        cname = self.const(cond, "cond")
        self.op("Where", [cname, a, b], s, max(self.mag.get(a, 1.5), self.mag.get(b, 1.5)), True)
        return True

    def f_pow(self) -> bool:
        x = self.pick()
        mg = self.mag[x]
        if (mg + 1) ** 2 > _MAG_LIMIT:
            return False
        s = self.shape[x]
        ab = self.op("Abs", [x], s, mg)
        p1 = self.op("Add", [ab, self.f32(1.0, "one")], s, mg + 1)
        self.op("Pow", [p1, self.f32(2.0, "two")], s, (mg + 1) ** 2, True)
        return True

    def f_se(self) -> bool:
        x = self.pick()
        _, c, h, w = self.shape[x]
        r = self.randint(2, max(2, min(8, c // 2)))
        g = self.op("GlobalAveragePool", [x], (1, c, 1, 1), self.mag[x])
        z = self.conv(g, r, 1, bias=True, pool=False)
        z = self.op("Relu", [z], (1, r, 1, 1), self.mag[z])
        z = self.conv(z, c, 1, bias=True, pool=False)
        z = self.op("Sigmoid", [z], (1, c, 1, 1), 1.0)
        self.tag("squeeze-excitation")
        a, b = (x, z) if self.chance(0.7) else (z, x)
        self.op("Mul", [a, b], self.shape[x], self.mag[x], True)
        return True

    def f_pool(self) -> bool:
        x = self.pick()
        s, mg = self.shape[x], self.mag[x]
        op = self.choice(["MaxPool", "AveragePool", "LpPool"])
        common = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                      strides=[1, 1] if self.chance(0.5) else None)
        if op == "MaxPool":
            self.op(op, [x], s, mg, True, **common)
        elif op == "AveragePool":
            self.op(op, [x], s, mg, True, count_include_pad=self.choice([None, 0, 1]), **common)
        else:
            p = self.choice([1, 2, 2])
            if mg * (9 if p == 1 else 3) > _MAG_LIMIT:
                return False
            self.op(op, [x], s, mg * (9 if p == 1 else 3), True, p=p if p != 2 else None, **common)
        return True

    def f_global_pool(self) -> bool:
        x = self.pick(lambda s: s[2] * s[3] > 1)
        if x is None:
            return False
        c = self.shape[x][1]
        self.op(self.choice(["GlobalAveragePool", "GlobalMaxPool"]), [x], (1, c, 1, 1), self.mag[x], True)
        return True

    def f_pad(self) -> bool:
        x = self.pick()
        _, c, h, w = self.shape[x]
        mode = self.choice(["constant", "constant", "reflect", "edge"])
        fix = self.chance(0.7)  # pad by 2 per axis, then a valid 3x3 to restore the size
        if fix:
            pt = self.randint(0, 2)
            pl = self.randint(0, 2)
            pb, pr = 2 - pt, 2 - pl
        else:
            pt, pl, pb, pr = (self.randint(0, 2) for _ in range(4))
            if h + pt + pb > _MAX_HW or w + pl + pr > _MAX_HW:
                return False
        if mode == "reflect" and max(pt, pb) >= h or mode == "reflect" and max(pl, pr) >= w:
            mode = "edge"
        ins = [x]
        if self.opset >= 18 and self.chance(0.4):
            axes = [2, 3] if self.chance(0.7) else [-2, -1]
            ins += [self.i64([pt, pl, pb, pr], "pads")]
            tail = [self.i64(axes, "pad_axes")]
        else:
            ins += [self.i64([0, 0, pt, pl, 0, 0, pb, pr], "pads")]
            tail = []
        if mode == "constant" and (tail or self.chance(0.5)):
            ins.append(self.f32(float(self.choice([0.0, 0.0, 0.5, -1.0])), "pad_val") if self.chance(0.7) else "")
        elif tail:
            ins.append("")
        ins += tail
        self.tag(f"Pad/{mode}" + ("/axes" if tail else "") + ("/restored" if fix else ""))
        y = self.op("Pad", ins, (1, c, h + pt + pb, w + pl + pr), self.mag[x] + 1, True,
                    mode=mode if (mode != "constant" or self.chance(0.5)) else None)
        if fix:
            if self.chance(0.6):
                self.conv(y, self.randint(4, 16), 3, pads=[0, 0, 0, 0], bias=self.chance(0.7))
            else:
                op = self.choice(["MaxPool", "AveragePool"])
                self.op(op, [y], (1, c, h, w), self.mag[y], True, kernel_shape=[3, 3])
        return True

    def f_resize(self) -> bool:
        x = self.pick(lambda s: 2 * s[2] <= _MAX_HW and 2 * s[3] <= _MAX_HW)
        if x is None:
            return False
        _, c, h, w = self.shape[x]
        attrs = dict(mode="nearest")
        if self.chance(0.3):
            attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        if self.chance(0.6):
            ins = [x, "", self.f32([1.0, 1.0, 2.0, 2.0], "scales")]
        else:
            ins = [x, "", "", self.i64([1, c, 2 * h, 2 * w], "sizes")]
        self.tag("Resize/" + ("scales" if len(ins) == 3 else "sizes"))
        y = self.op("Resize", ins, (1, c, 2 * h, 2 * w), self.mag[x], True, **attrs)
        if self.chance(0.75):
            self.down(y)
        return True

    def f_concat(self) -> bool:
        x = self.pick()
        _, c, h, w = self.shape[x]
        others = [t for t in self.pool if self.shape[t][2:] == (h, w) and t != x]
        if not others and not self.chance(0.2):
            return False
        n = 1 if not others else self.randint(1, 2)
        parts = [x] + [self.choice(others) if others else x for _ in range(n)]
        order = self.rng.permutation(len(parts))
        parts = [parts[i] for i in order]
        total = sum(self.shape[t][1] for t in parts)
        if total > _MAX_C:
            return False
        self.op("Concat", parts, (1, total, h, w), max(self.mag[t] for t in parts), True,
                axis=1 if self.chance(0.8) else -3)
        return True

    def f_split(self) -> bool:
        x = self.pick(lambda s: s[1] >= 2)
        if x is None:
            return False
        _, c, h, w = self.shape[x]
        n = self.randint(2, min(3, c))
        axis = 1 if self.chance(0.8) else -3
        if self.opset >= 18 and self.chance(0.5):
            chunk = -(-c // n)
            sizes = [chunk] * (n - 1) + [c - chunk * (n - 1)]
            if sizes[-1] <= 0:
                return False
            outs = self.emit("Split", [x], n, axis=axis, num_outputs=n)
            self.tag("Split/num_outputs" + ("/uneven" if c % n else ""))
        elif self.opset < 18 and c % n == 0 and self.chance(0.25):
            sizes = [c // n] * n  # implicit equal split (no 'split' input)
            outs = self.emit("Split", [x], n, axis=axis)
            self.tag("Split/implicit-equal")
        else:
            cuts = sorted(self.rng.choice(np.arange(1, c), size=n - 1, replace=False).tolist())
            sizes = [b - a for a, b in zip([0] + cuts, cuts + [c], strict=True)]
            outs = self.emit("Split", [x, self.i64(sizes, "split")], n, axis=axis)
            self.tag("Split/split-input")
        for o, sz in zip(outs, sizes, strict=True):
            self.register(o, (1, sz, h, w), self.mag[x], True)
        return True

    def f_slice(self) -> bool:
        x = self.pick(lambda s: s[1] >= 2)
        if x is None:
            return False
        _, c, h, w = self.shape[x]
        start = self.randint(0, c - 1)
        end = self.randint(start + 1, c)
        out_c = end - start
        s_val = start - c if self.chance(0.2) else start
        e_val = _INT64_MAX if (end == c and self.chance(0.4)) else (end - c if end < c and self.chance(0.2) else end)
        form = self.rng.random()
        if form < 0.15:  # no axes: starts/ends cover axes 0 and 1
            ins = [x, self.i64([0, s_val], "starts"), self.i64([1, e_val], "ends")]
        else:
            ins = [x, self.i64([s_val], "starts"), self.i64([e_val], "ends"),
                   self.i64([1 if self.chance(0.8) else -3], "axes")]
            if self.chance(0.4):
                ins.append(self.i64([1], "steps"))
        self.tag("Slice/" + ("no-axes" if form < 0.15 else "axes"))
        self.op("Slice", ins, (1, out_c, h, w), self.mag[x], True)
        return True

    def f_transpose(self) -> bool:
        x = self.pick()
        _, c, h, w = self.shape[x]
        t = self.op("Transpose", [x], (1, h, w, c), self.mag[x], perm=[0, 2, 3, 1])
        self.tag("NHWC-transpose-pair")
        mid = self.rng.random()
        if mid < 0.3:  # per-channel scale in NHWC layout
            val = self.normal((c,), 0.3, 1.0)
            t = self.op("Mul", [t, self.const(val, "nhwc_c")], (1, h, w, c),
                        self.mag[x] * float(np.max(np.abs(val))))
        elif mid < 0.5:
            t = self.op("Relu", [t], (1, h, w, c), self.mag[x])
        self.op("Transpose", [t], (1, c, h, w), self.mag[t], True, perm=[0, 3, 1, 2])
        return True

    def f_reshape(self) -> bool:
        x = self.pick()
        _, c, h, w = self.shape[x]
        s1 = self.choice([[1, c, h * w], [1, c, -1], [0, 0, -1], [1, -1, h * w]])
        t = self.op("Reshape", [x, self.i64(s1, "shape")], (1, c, h * w), self.mag[x])
        self.tag("Reshape-3D-pair")
        if self.chance(0.3):
            t = self.op(self.choice(["Relu", "Tanh"]), [t], (1, c, h * w), self.mag[x])
        s2 = self.choice([[1, c, h, w], [0, 0, h, w], [1, -1, h, w], [1, c, h, -1]])
        self.op("Reshape", [t, self.i64(s2, "shape")], (1, c, h, w), self.mag[x], True)
        return True

    def f_depth_to_space(self) -> bool:
        x = self.pick(lambda s: s[1] % 4 == 0 and 2 * s[2] <= _MAX_HW and 2 * s[3] <= _MAX_HW)
        if x is None:
            return False
        _, c, h, w = self.shape[x]
        self.tag("DepthToSpace-first")
        y = self.op("DepthToSpace", [x], (1, c // 4, 2 * h, 2 * w), self.mag[x], True,
                    blocksize=2, mode=self.choice(["DCR", "CRD", None]))
        if self.chance(0.7):
            self.down(y)
        return True

    def f_space_to_depth(self) -> bool:
        x = self.pick(lambda s: s[2] % 2 == 0 and s[3] % 2 == 0 and s[1] * 4 <= _MAX_C)
        if x is None:
            return False
        _, c, h, w = self.shape[x]
        self.tag("SpaceToDepth-first")
        y = self.op("SpaceToDepth", [x], (1, 4 * c, h // 2, w // 2), self.mag[x], True, blocksize=2)
        if self.chance(0.8):
            mid = self.rng.random()
            if mid < 0.4:  # 1x1 conv to 4*m channels keeps the DepthToSpace valid
                y = self.conv(y, 4 * self.randint(1, 8), 1, bias=self.chance(0.5))
            elif mid < 0.6:
                y = self.op("Relu", [y], self.shape[y], self.mag[y], True)
            self.op("DepthToSpace", [y], (1, self.shape[y][1] // 4, h, w), self.mag[y], True,
                    blocksize=2, mode=self.choice(["DCR", "CRD", None]))
        return True

    def f_channel_shuffle(self) -> bool:
        x = self.pick(lambda s: any(1 < g < s[1] for g in _divisors(s[1])))
        if x is None:
            return False
        _, c, h, w = self.shape[x]
        g = self.choice([d for d in _divisors(c) if 1 < d < c])
        s1 = self.choice([[1, g, c // g, h, w], [1, g, -1, h, w], [0, g, c // g, h, w]])
        t = self.op("Reshape", [x, self.i64(s1, "shape")], (1, g, c // g, h, w), self.mag[x])
        self.tag("channel-shuffle")
        t = self.op("Transpose", [t], (1, c // g, g, h, w), self.mag[x], perm=[0, 2, 1, 3, 4])
        s2 = self.choice([[1, c, h, w], [1, -1, h, w], [0, c, h, w]])
        self.op("Reshape", [t, self.i64(s2, "shape")], (1, c, h, w), self.mag[x], True)
        return True

    def f_gather(self) -> bool:
        x = self.pick()
        _, c, h, w = self.shape[x]
        kind = self.randint(0, 2)
        if kind == 0:  # permutation
            idx = self.rng.permutation(c)
        elif kind == 1:  # subset, not necessarily sorted
            k = self.randint(1, c)
            idx = self.rng.choice(c, size=k, replace=False)
            if self.chance(0.5):
                idx = np.sort(idx)
        else:  # with repeats
            idx = self.rng.integers(0, c, size=self.randint(1, c + 2))
        idx = idx.astype(np.int64)
        self.tag(["Gather/permutation", "Gather/subset", "Gather/repeats"][kind])
        if self.chance(0.2):  # some negative (wrapped) indices
            self.tag("Gather/negative-indices")
            neg = self.rng.random(idx.shape) < 0.5
            idx = np.where(neg, idx - c, idx)
        self.op("Gather", [x, self.i64(idx, "gidx")], (1, len(idx), h, w), self.mag[x], True,
                axis=1 if self.chance(0.8) else -3)
        return True

    def f_reduce(self) -> bool:
        x = self.pick(lambda s: s[2] * s[3] > 1)
        if x is None:
            return False
        _, c, h, w = self.shape[x]
        op = self.choice(["ReduceMean", "ReduceSum"])
        axes = self.choice([[2, 3], [2, 3], [-2, -1], [2], [3]])
        norm = [a % 4 for a in axes]
        out = (1, c, 1 if 2 in norm else h, 1 if 3 in norm else w)
        factor = (h if 2 in norm else 1) * (w if 3 in norm else 1)
        mag = self.mag[x] * (factor if op == "ReduceSum" else 1)
        if mag > _MAG_LIMIT:
            op, mag = "ReduceMean", self.mag[x]
        if op == "ReduceSum" or self.opset >= 18:
            self.op(op, [x, self.i64(axes, "axes")], out, mag, True, keepdims=1 if self.chance(0.5) else None)
        else:
            self.op(op, [x], out, mag, True, axes=axes, keepdims=1 if self.chance(0.5) else None)
        return True

    def f_identity(self) -> bool:
        x = self.pick()
        op = self.choice(["Identity", "Dropout", "Cast"])
        self.op(op, [x], self.shape[x], self.mag[x], True,
                to=TensorProto.FLOAT if op == "Cast" else None)
        return True

    # --------------------------------------------------------------- finish
    def merge(self, a: str, b: str) -> str:
        sa, sb = self.shape[a], self.shape[b]
        ma, mb = self.mag[a], self.mag[b]
        if sa == sb:
            op = self.choice(["Add", "Max", "Concat", "Sub", "Mul"])
            if op == "Mul" and ma * mb > _MAG_LIMIT:
                op = "Add"
            if op == "Concat" and sa[1] + sb[1] <= 2 * _MAX_C:
                return self.op("Concat", [a, b], (1, sa[1] + sb[1], sa[2], sa[3]), max(ma, mb), True, axis=1)
            op = "Add" if op == "Concat" else op
            return self.op(op, [a, b], sa, ma * mb if op == "Mul" else ma + mb, True)
        if sa[1] == sb[1] and (_broadcastable_to(sa, sb) or _broadcastable_to(sb, sa)):
            return self.op(self.choice(["Add", "Mul"]) if ma * mb <= _MAG_LIMIT else "Add", [a, b],
                           tuple(max(p, q) for p, q in zip(sa, sb, strict=True)), ma * mb + ma + mb, True)
        if sa[2:] == sb[2:] and sa[1] + sb[1] <= 2 * _MAX_C:
            return self.op("Concat", [a, b], (1, sa[1] + sb[1], sa[2], sa[3]), max(ma, mb), True, axis=1)
        # different spatial sizes: global-pool both, then concatenate channels
        red = []
        for t in (a, b):
            s = self.shape[t]
            if s[2:] != (1, 1):
                t = self.op(self.choice(["GlobalAveragePool", "GlobalMaxPool"]), [t], (1, s[1], 1, 1), self.mag[t], True)
            red.append(t)
        c = self.shape[red[0]][1] + self.shape[red[1]][1]
        return self.op("Concat", red, (1, c, 1, 1), max(ma, mb), True, axis=1)

    def head(self, t: str) -> str:
        _, c, h, w = self.shape[t]
        n_cls = self.randint(2, 10)
        kind = self.randint(0, 2)
        if kind == 1 and c * h * w > 1024:
            kind = 0
        self.tag(["head/pool-flatten-fc", "head/flatten-fc", "head/conv1x1"][kind])
        if kind == 2:  # final 1x1 conv to a fixed number of channels
            return self.conv(t, n_cls, 1, bias=self.chance(0.7), pool=False)
        if kind == 0:
            if h * w > 1:
                if self.chance(0.7):
                    t = self.op("GlobalAveragePool", [t], (1, c, 1, 1), self.mag[t])
                else:
                    t = self.op("ReduceMean", [t, self.i64([2, 3], "axes")] if self.opset >= 18 else [t],
                                (1, c, 1, 1), self.mag[t],
                                axes=[2, 3] if self.opset < 18 else None, keepdims=1)
            feat = c
        else:
            feat = c * h * w
        f = self.op("Flatten", [t], (1, feat), self.mag[t], axis=1 if self.chance(0.7) else None)
        if self.chance(0.6):
            trans_b = self.chance(0.5)
            self.tag("head/Gemm" + ("/transB" if trans_b else ""))
            wv = self.weight((n_cls, feat) if trans_b else (feat, n_cls), feat)
            ins = [f, self.const(wv, "fc_W")]
            if self.chance(0.7):
                ins.append(self.const(self.normal(self.choice([(n_cls,), (1, n_cls)]), 0.1), "fc_B"))
            return self.op("Gemm", ins, (1, n_cls), self.mag[t] * 2, transB=1 if trans_b else None,
                           alpha=float(self.rng.uniform(0.5, 1.5)) if self.chance(0.2) else None)
        self.tag("head/MatMul")
        y = self.op("MatMul", [f, self.const(self.weight((feat, n_cls), feat), "fc_W")], (1, n_cls), self.mag[t] * 2)
        if self.chance(0.5):
            y = self.op("Add", [y, self.const(self.normal((n_cls,), 0.1), "fc_B")], (1, n_cls), self.mag[y] + 0.3)
        return y

    def finish(self) -> list[str]:
        dangling = [t for t in self.pool if self.uses[t] == 0]
        n_out = 2 if self.chance(0.3) else 1
        while len(dangling) > n_out:
            b = dangling.pop(int(self.rng.integers(len(dangling))))
            a = dangling.pop(int(self.rng.integers(len(dangling))))
            dangling.append(self.merge(a, b))
        if n_out == 2 and len(dangling) == 1:  # also export an already-consumed tensor
            used = [t for t in self.pool if t != "x" and t != dangling[0]]
            if used:
                dangling.insert(0, self.choice(used))
        outs = []
        self.tag(f"outputs/{len(dangling)}")
        for i, t in enumerate(dangling):
            if self.chance(0.8 if i == len(dangling) - 1 else 0.5):
                t = self.head(t)
            outs.append(t)
        return outs


_FAMILIES = [  # (method name, weight, minimum opset)
    ("f_conv", 4.0, 13),
    ("f_conv_transpose", 1.0, 13),
    ("f_batchnorm", 1.5, 13),
    ("f_instancenorm", 0.7, 13),
    ("f_groupnorm", 0.7, 21),
    ("f_unary", 4.0, 13),
    ("f_prelu", 0.8, 13),
    ("f_binary", 3.0, 13),
    ("f_const_binary", 1.5, 13),
    ("f_div", 0.6, 13),
    ("f_where", 0.8, 13),
    ("f_pow", 0.5, 13),
    ("f_se", 0.8, 13),
    ("f_pool", 1.5, 13),
    ("f_global_pool", 0.4, 13),
    ("f_pad", 1.0, 13),
    ("f_resize", 0.8, 13),
    ("f_concat", 2.0, 13),
    ("f_split", 1.5, 13),
    ("f_slice", 1.2, 13),
    ("f_transpose", 0.8, 13),
    ("f_reshape", 0.8, 13),
    ("f_depth_to_space", 0.7, 13),
    ("f_space_to_depth", 0.8, 13),
    ("f_channel_shuffle", 0.8, 13),
    ("f_gather", 1.2, 13),
    ("f_reduce", 0.7, 13),
    ("f_identity", 0.8, 13),
]


def _build(rng: np.random.Generator, max_nodes: int, opset: int):
    """Returns (model, tracked shapes of every non-constant tensor, variant counts)."""
    if max_nodes < 1:
        raise ValueError("max_nodes must be >= 1")
    b = _Builder(rng, opset)
    c = b.randint(3, 8)
    h = b.choice([8, 8, 8, 8, 6, 4])
    w = h if b.chance(0.75) else b.choice([8, 6, 4])
    b.register("x", (1, c, h, w), 3.0, True)

    fams = [(name, wt) for name, wt, min_op in _FAMILIES if opset >= min_op]
    probs = np.array([wt for _, wt in fams])
    probs /= probs.sum()
    target = b.randint(max(1, max_nodes // 2), max_nodes)
    for _ in range(50 * max_nodes):
        if b.n_body >= target:
            break
        getattr(b, fams[int(rng.choice(len(fams), p=probs))][0])()
    outs = b.finish()

    # every produced tensor is consumed or exported (internal invariant)
    consumed = {i for n in b.nodes for i in n.input}
    produced = [o for n in b.nodes for o in n.output]
    assert all(o in consumed or o in outs for o in produced), "dangling tensor"
    assert "x" in consumed
    assert len(set(outs)) == len(outs)

    graph = helper.make_graph(
        b.nodes, "random_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(b.shape["x"]))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(b.shape[o])) for o in outs],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="graphprune-tests.random_graphs")
    model.ir_version = IR_VERSION
    if b.const_nodes:
        b.tag("weights-as-Constant-nodes")
    return model, dict(b.shape), b.features


def build_random_model(rng: np.random.Generator, max_nodes: int = 12, opset: int = 17) -> onnx.ModelProto:
    """A random valid ONNX CNN-style DAG; deterministic given ``rng``'s state.

    ``max_nodes`` bounds the number of nodes of the grown body (between
    max_nodes//2 and max_nodes, a family may overshoot by a few nodes); the
    final merges and the optional classifier head come on top, and
    ``Constant`` nodes are not counted.
    """
    return _build(rng, max_nodes, opset)[0]


def random_models(max_nodes: int = 12, opsets=(17, 13, 18, 21)):
    """Hypothesis strategy of tiny random ONNX models (``onnx.ModelProto``).

    Draws a seed, a size in 1..max_nodes and an opset; shrinks towards seed 0,
    smaller models and the first opset.  The model's ``doc_string`` records
    how to rebuild it.
    """
    from hypothesis import note, strategies as st

    @st.composite
    def _models(draw):
        seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
        n = draw(st.integers(min_value=1, max_value=max_nodes))
        opset = draw(st.sampled_from(tuple(opsets)))
        m = build_random_model(np.random.default_rng(seed), max_nodes=n, opset=opset)
        m.doc_string = (f"build_random_model(np.random.default_rng({seed}), "
                        f"max_nodes={n}, opset={opset})")
        note(f"model: {m.doc_string}")  # printed with a falsifying example
        return m

    return _models()


def random_feeds(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs for every graph input of ``model``."""
    feeds = {}
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# --------------------------------------------------------------- validation
def _validate(n: int, opset: int | None, max_nodes: int = 12) -> int:
    import collections
    import sys
    import time

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    op_models = collections.Counter()
    op_nodes = collections.Counter()
    failures = []
    n_nodes, n_body, t_gen, t_check, t_ort = [], [], [], [], []
    n_const_models = 0
    n_uninferred = []
    feat_models = collections.Counter()
    max_abs = []
    out_counts = collections.Counter()
    per_opset = collections.Counter()
    for seed in range(n):
        ops = opset if opset is not None else SUPPORTED_OPSETS[[1, 0, 2, 3][seed % 4]]
        try:
            t0 = time.perf_counter()
            m, shapes, feats = _build(np.random.default_rng(seed), max_nodes, ops)
            t1 = time.perf_counter()
            m2 = build_random_model(np.random.default_rng(seed), max_nodes, ops)
            assert m2.SerializeToString() == m.SerializeToString(), "not deterministic"
            t2 = time.perf_counter()
            onnx.checker.check_model(m, full_check=True)
            inf = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
            t3 = time.perf_counter()
            inferred = {}
            for vi in list(inf.graph.value_info) + list(inf.graph.output):
                tt = vi.type.tensor_type
                if tt.HasField("shape"):  # no shape e.g. after GroupNormalization (onnx 1.23)
                    inferred[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                              for d in tt.shape.dim)
            n_uninferred.append(sum(name not in inferred for name in shapes if name != "x"))
            for name, s in shapes.items():
                got = inferred.get(name)
                if got is not None and (len(got) != len(s) or any(g not in (None, d) for g, d in zip(got, s, strict=True))):
                    raise AssertionError(f"shape of {name}: tracked {s}, inferred {got}")
            t4 = time.perf_counter()
            sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            res = sess.run(None, random_feeds(m, np.random.default_rng(seed + 12345)))
            t5 = time.perf_counter()
            for o, r in zip(m.graph.output, res, strict=True):
                want = tuple(d.dim_value for d in o.type.tensor_type.shape.dim)
                assert r.shape == want, f"output {o.name}: ORT shape {r.shape}, declared {want}"
                assert r.dtype == np.float32
                assert np.isfinite(r).all(), f"non-finite output {o.name}"
                max_abs.append(float(np.abs(r).max()))
        except Exception as e:  # noqa: BLE001
            failures.append((seed, ops, f"{type(e).__name__}: {str(e)[:300]}"))
            continue
        t_gen.append(t1 - t0)
        t_check.append(t3 - t2)
        t_ort.append(t5 - t4)
        types = [nd.op_type for nd in m.graph.node]
        n_nodes.append(len(types))
        n_body.append(sum(t != "Constant" for t in types))
        n_const_models += "Constant" in types
        out_counts[len(m.graph.output)] += 1
        per_opset[ops] += 1
        op_nodes.update(types)
        op_models.update(set(types))
        feat_models.update(set(feats))

    ok = n - len(failures)
    print(f"models: {n}, passed: {ok}, failed: {len(failures)}  "
          f"(opset: {opset or 'cycled 17/13/18/21'}, max_nodes: {max_nodes})")
    for f in failures[:20]:
        print("  FAIL seed=%d opset=%d %s" % f)
    if not ok:
        return 1
    print(f"models per opset: {dict(sorted(per_opset.items()))}")
    print(f"mean nodes/model: {np.mean(n_nodes):.1f} (without Constant nodes: {np.mean(n_body):.1f}, "
          f"max {max(n_body)}); models with Constant-node weights: {n_const_models}; "
          f"outputs per model: {dict(sorted(out_counts.items()))}")
    print(f"tensors without an onnx-inferred shape: {sum(n_uninferred)} in "
          f"{sum(k > 0 for k in n_uninferred)} models (all checked against tracked shapes otherwise)")
    print(f"time/model: generate {1e3 * np.mean(t_gen):.2f} ms, checker+shape inference "
          f"{1e3 * np.mean(t_check):.2f} ms, ORT session+run {1e3 * np.mean(t_ort):.2f} ms "
          f"(p99 {1e3 * np.percentile(t_ort, 99):.2f} ms)")
    print(f"{'op_type':<24}{'models':>8}{'nodes':>8}")
    for op, cnt in sorted(op_models.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{op:<24}{cnt:>8}{op_nodes[op]:>8}")
    print(f"max |output| over outputs: median {np.median(max_abs):.3g}, p99 {np.percentile(max_abs, 99):.3g}, "
          f"max {max(max_abs):.3g}")
    print(f"{'variant':<34}{'models':>8}")
    for f, cnt in sorted(feat_models.items()):
        print(f"{f:<34}{cnt:>8}")
    sys.stdout.flush()
    return 0 if not failures else 1


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=1000, help="number of seeds (0..n-1)")
    ap.add_argument("--opset", type=int, default=None, choices=SUPPORTED_OPSETS,
                    help="fixed opset (default: cycle through all supported opsets)")
    ap.add_argument("--max-nodes", type=int, default=12)
    args = ap.parse_args()
    raise SystemExit(_validate(args.n, args.opset, args.max_nodes))
