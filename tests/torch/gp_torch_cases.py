"""Small torch modules for the torch frontend tests, and the checks every result must pass.

`check_result` is the numeric oracle on the torch side, written independently of
graphprune.torchprune: the input module with the plan's slices zeroed (by parameter
name, straight from plan.tensors) must give the pruned module's outputs, and so must
the pruned ONNX in ONNX Runtime; the ONNX-side oracle must hold for the exported model.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import graphprune as gp


def seeded(factory, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = factory()
        for mod in m.modules():  # BN with non-trivial statistics, so every channel matters
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    mod.running_mean.uniform_(-0.2, 0.2)
                    mod.running_var.uniform_(0.5, 2.0)
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


def flat(out) -> list[np.ndarray]:
    return [t.detach().numpy() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def assert_close(ref, got, rtol=1e-4, what=""):
    assert len(ref) == len(got), f"{what}: {len(got)} outputs, expected {len(ref)}"
    for k, (a, b) in enumerate(zip(ref, got, strict=True)):
        assert a.shape == b.shape, f"{what} output {k}: shape {b.shape} != {a.shape}"
        scale = float(np.abs(a).max()) if a.size else 0.0
        err = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
        assert err <= rtol * scale + 1e-6, f"{what} output {k}: error {err:.3g} (scale {scale:.3g})"


def masked_by_hand(module, plan):
    masked = copy.deepcopy(module)
    state = dict(masked.named_parameters(remove_duplicate=False))
    state.update(dict(masked.named_buffers(remove_duplicate=False)))
    with torch.no_grad():
        for t in plan.tensors:
            idx = [slice(None)] * state[t["name"]].dim()
            idx[t["axis"]] = torch.as_tensor(t["removed"], dtype=torch.long)
            state[t["name"]][tuple(idx)] = 0
    return masked


def run(module, args):
    with torch.no_grad():
        return flat(module(*args))


def input_variants(args, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [args, tuple(torch.randn(a.shape, generator=g) if a.is_floating_point() else a for a in args)]


def check_result(module, args, result, *, min_removed_groups=1, rtol=1e-4, trains=True):
    """Everything the acceptance criteria ask of one pruned module."""
    args = args if isinstance(args, tuple) else (args,)
    pruned, plan = result
    assert len(plan.groups) >= min_removed_groups, plan.groups
    masked = masked_by_hand(module, plan)
    pruned.eval()
    sess = ort.InferenceSession(ir.serde.serialize_model(result.onnx_model).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for a in input_variants(args):
        got = run(pruned, a)
        assert_close(run(masked, a), got, rtol, "pruned module vs masked original")
        assert_close(sess.run(None, {n: x.numpy() for n, x in zip(names, a, strict=True)}), got, rtol,
                     "pruned module vs pruned ONNX")
    # the ONNX-side oracle, on the exported model the plan names
    original = ir.serde.deserialize_model(onnx.load_from_string(result.original_onnx))
    assert gp.check(original, result.onnx_model, plan).ok
    if plan.tensors:
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in module.parameters())
    if trains:  # new Parameters, gradients reach every one that is used
        pruned.train()
        loss = sum(o.float().pow(2).mean() for o in tree_leaves(pruned(*args)) if isinstance(o, torch.Tensor))
        loss.backward()
        used = {t["name"] for t in plan.tensors}
        params = dict(pruned.named_parameters())
        assert all(params[n].grad is not None for n in used if n in params)
        pruned.eval()
    return pruned, plan


def random_importance(seed=0):
    """A deterministic arbitrary ranking: removals not ordered by magnitude."""
    rng = np.random.default_rng(seed)
    return lambda dg, g: rng.random(g.num_atoms)


# ---- models ---------------------------------------------------------------------------------

def conv_bn(cin, cout, k=3, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU())


class ConcatChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 6), conv_bn(6, 4)
        self.c, self.d = conv_bn(10, 5), nn.Conv2d(21, 4, 1)

    def forward(self, x):
        a = self.a(x)
        c = torch.cat([a, self.b(a)], 1)
        e = torch.cat([c, self.c(c)], 1)
        return self.d(torch.cat([e, a], 1))


class ConcatSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 6), conv_bn(3, 10)
        self.p, self.q = conv_bn(8, 6), conv_bn(8, 6)
        self.out = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        p, q = torch.split(y, [8, 8], 1)  # crosses the concat boundary
        return self.out(torch.cat([self.p(p), self.q(q)], 1))


class Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 12)
        self.a, self.b = conv_bn(4, 6), conv_bn(8, 6)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        a, b = torch.split(self.stem(x), [4, 8], 1)
        return self.out(self.a(a) + self.b(b))


class LeNet(nn.Module):
    """Literal sizes in forward: view(-1, 16 * 4 * 4)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 4 * 4, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 4 * 4)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class StackedFC(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Dropout(0.1), nn.Linear(32, 24), nn.GELU(), nn.Linear(24, 5))

    def forward(self, x):
        return self.net(x)


class MultiIO(nn.Module):
    def __init__(self):
        super().__init__()
        self.fx, self.fy = conv_bn(3, 8), conv_bn(2, 8)
        self.mix = conv_bn(8, 10)
        self.head1, self.head2 = nn.Conv2d(10, 4, 1), nn.Linear(10, 3)

    def forward(self, x, y):
        h = self.mix(self.fx(x) + self.fy(y))
        return self.head1(h), {"pooled": self.head2(h.mean((2, 3))), "skip": h.amax((1, 2, 3))}


class ConcatHeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 8), conv_bn(3, 8)
        self.out = nn.Conv2d(8, 2, 3)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], 2))  # concat over H: channels tie a and b


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.conv2 = conv_bn(3, 8), conv_bn(8, 6)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 16), nn.Linear(6 * 4 * 4, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.max_pool2d(self.conv2(self.conv(x)), 2)
        return self.out(torch.relu(self.fc1(h.reshape(h.shape[0], -1)) + self.fc2(torch.flatten(h, 1))))


class SingleChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.feat = conv_bn(3, 8)
        self.gate = nn.Conv2d(8, 1, 1)  # one channel: nothing to prune there
        self.body = conv_bn(8, 8)
        self.out = nn.Conv2d(8, 1, 3, padding=1)  # single-channel output

    def forward(self, x):
        f = self.feat(x)
        return self.out(self.body(f * torch.sigmoid(self.gate(f))))


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 8), nn.Conv2d(8, 2, 1)
        self.spare = nn.Linear(7, 7)  # never called
        self.extra = nn.Parameter(torch.randn(5))
        self.register_buffer("table", torch.arange(4.0))

    def forward(self, x):
        return self.b(self.a(x))


class GroupedAfterConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 8), conv_bn(3, 8)
        self.g = conv_bn(16, 16, groups=4)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.out(self.g(torch.cat([self.a(x), self.b(x)], 1)))


class GroupedUneven(nn.Module):
    """Group 0 of the grouped conv gets tiny input channels, so by magnitude one group
    'deserves' to lose everything: the plan must still keep groups equal."""

    def __init__(self, depthwise=False):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=16 if depthwise else 4)
        self.out = nn.Conv2d(16, 4, 1)
        with torch.no_grad():
            self.stem[0].weight[:4] *= 1e-3
            self.stem[1].weight[:4] *= 1e-3

    def forward(self, x):
        return self.out(torch.relu(self.g(self.stem(x))))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = nn.Linear(16, 8)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.out(a)


class SelfAttention(nn.Module):
    """Separate q/k/v projections split into heads with literal sizes (4 heads of 4)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))
        self.out = nn.Linear(16, 8)

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape
        q, k, v = (p(h).view(b, t, 4, 4).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
        return self.out(self.o(a.transpose(1, 2).reshape(b, t, 16)))
