"""The graph fallback: a pruned torch.fx GraphModule when the module's own forward cannot
run at the new widths.

Why a graph: a forward such as ``x.view(-1, 16 * 4 * 4)`` or an attention block that
splits heads with literal sizes has the old widths written into Python code, and no
amount of attribute updating changes them. The exported program has those sizes as
plain arguments of ``view``/``expand``/``split``/``slice`` nodes, and its node names are
the ONNX value names the dependency analysis worked on, so the analysis says exactly
how many (and which) indices each node's output loses along each axis. We rewrite those
arguments, slice the state, and return ``ExportedProgram.module()``.

What it costs: the graph was captured in inference mode, so BatchNorm keeps using (and
never updates) its running statistics and dropout is gone, in train() as in eval().
Gradients reach every parameter, so fine-tuning works; it is frozen-BN fine-tuning.
The batch axis stays dynamic when torch.export could keep it dynamic.
"""
from __future__ import annotations

import logging

import numpy as np

from graphprune.analysis.dependency import Slot
from graphprune.errors import PlanError
from graphprune.plan import Plan
from graphprune.torchprune.surgery import slice_state

log = logging.getLogger(__name__)


def _size_arg_ops():
    import torch

    aten = torch.ops.aten
    # op -> position of the size list
    return {aten.view.default: 1, aten._unsafe_view.default: 1, aten.reshape.default: 1,
            aten.expand.default: 1, aten.new_zeros.default: 1, aten.new_ones.default: 1,
            aten.new_empty.default: 1, aten.new_full.default: 1, aten.zeros.default: 0,
            aten.ones.default: 0, aten.full.default: 0, aten.empty.memory_format: 0}


def _groups_arg_ops():
    import torch

    aten = torch.ops.aten
    # op -> position of `groups`
    return {aten.conv1d.default: 6, aten.conv2d.default: 6, aten.conv3d.default: 6, aten.convolution.default: 8}


def _kept_before(removed: np.ndarray, pos: int) -> int:
    """New position of old position `pos` once `removed` indices are gone."""
    return int(pos - np.count_nonzero(removed < pos))


def _norm_index(i, size: int, default: int) -> int:
    if i is None:
        return default
    i = int(i)
    if i < 0:
        i += size
    return max(0, min(size, i))


class _Rewriter:
    def __init__(self, removed: dict[Slot, np.ndarray]):
        self.removed = removed
        self.changed: list[str] = []

    def out_removed(self, node, axis: int) -> np.ndarray:
        return self.removed.get(Slot(node.name, axis), np.zeros(0, np.int64))

    def in_removed(self, arg, axis: int) -> np.ndarray:
        name = getattr(arg, "name", None)
        return self.removed.get(Slot(name, axis), np.zeros(0, np.int64)) if name else np.zeros(0, np.int64)

    def rewrite(self, node) -> None:
        import torch

        aten = torch.ops.aten
        size_ops = _size_arg_ops()
        val = node.meta.get("val")
        if node.target in size_ops:
            self._sizes(node, size_ops[node.target], val)
        elif node.target in (aten.slice.Tensor,):
            self._slice(node, val)
        elif node.target in (aten.split_with_sizes.default, aten.split.Tensor):
            self._split(node)
        elif node.target in _groups_arg_ops():
            self._groups(node, _groups_arg_ops()[node.target])
        elif node.target in (aten.select.int,):
            x, dim, index = node.args[:3]
            dim = dim % x.meta["val"].dim()
            rem = self.in_removed(x, dim)
            if len(rem):
                self._set(node, 2, _kept_before(rem, _norm_index(index, x.meta["val"].shape[dim], 0)))

    def _set(self, node, pos: int, value) -> None:
        args = list(node.args)
        args[pos] = value
        node.args = tuple(args)
        self.changed.append(node.name)

    def _sizes(self, node, pos: int, val) -> None:
        if pos >= len(node.args) or val is None:
            return
        sizes = list(node.args[pos])
        touched = False
        for ax in range(len(sizes)):
            r = len(self.out_removed(node, ax))
            if not r or (isinstance(sizes[ax], int) and sizes[ax] == -1):
                continue
            if not isinstance(sizes[ax], int) or sizes[ax] != int(val.shape[ax]):
                raise PlanError(f"cannot rewrite the sizes of {node.name} ({node.target}): axis {ax} is "
                                f"{sizes[ax]!r}, not a literal equal to its size {val.shape[ax]}")
            sizes[ax] -= r
            touched = True
        if touched:
            self._set(node, pos, sizes)

    def _slice(self, node, val) -> None:
        x = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else 0
        size = int(x.meta["val"].shape[dim])
        dim = dim % x.meta["val"].dim()
        rem = self.in_removed(x, dim)
        if not len(rem):
            return
        start = node.args[2] if len(node.args) > 2 else None
        end = node.args[3] if len(node.args) > 3 else None
        step = node.args[4] if len(node.args) > 4 else 1
        if step != 1:
            raise PlanError(f"cannot rewrite strided slice {node.name} over a pruned axis")
        s, e = _norm_index(start, size, 0), _norm_index(end, size, size)
        args = [x, dim, _kept_before(rem, s), _kept_before(rem, e), 1]
        node.args = tuple(args)
        self.changed.append(node.name)

    def _groups(self, node, pos: int) -> None:
        """A grouped (depthwise) convolution's `groups`: the groups that keep a channel (the
        analysis removes whole groups, or the same positions from every group)."""
        x = node.args[0]
        groups = node.args[pos] if pos < len(node.args) else node.kwargs.get("groups", 1)
        rem = self.in_removed(x, 1)
        if groups == 1 or not len(rem):
            return
        width = int(x.meta["val"].shape[1])
        kept = np.setdiff1d(np.arange(width), rem) // (width // groups)
        per_group = np.bincount(kept)
        per_group = per_group[per_group > 0]
        if len(set(per_group.tolist())) != 1:
            raise PlanError(f"cannot rewrite the groups of {node.name}: groups left unequal ({per_group.tolist()})")
        if pos < len(node.args):
            self._set(node, pos, len(per_group))
        else:
            node.kwargs = {**node.kwargs, "groups": len(per_group)}
            self.changed.append(node.name)

    def _split(self, node) -> None:
        import torch

        x, split = node.args[0], node.args[1]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        size = int(x.meta["val"].shape[dim])
        dim = dim % x.meta["val"].dim()
        rem = self.in_removed(x, dim)
        if not len(rem):
            return
        if isinstance(split, int):
            split = [min(split, size - o) for o in range(0, size, split)]
        new, off = [], 0
        for s in split:
            new.append(int(s - np.count_nonzero((rem >= off) & (rem < off + s))))
            off += s
        node.target = torch.ops.aten.split_with_sizes.default
        node.args, node.kwargs = (x, new, dim), {}
        self.changed.append(node.name)


def build_graph_module(program, plan: Plan, removed: dict[Slot, np.ndarray], *, check_inputs: bool = True):
    """The program's module with sliced state and rewritten literal sizes."""
    gm = program.module(check_guards=False)
    # module() forbids train()/eval() because they would not change the captured graph;
    # training loops call them anyway, and the graph's behaviour is documented above.
    for attr in ("train", "eval"):
        gm.__dict__.pop(attr, None)
    rw = _Rewriter(removed)
    for node in gm.graph.nodes:
        if node.op == "call_function":
            rw.rewrite(node)
    gm.recompile()
    slice_state(gm, plan)
    if not check_inputs:
        # The unlifted module checks inputs against the capture's range constraints in a
        # pre-hook (a dynamic batch excludes 1 there: torch.export's 0/1 specialisation
        # rule); the caller has verified the graph at other batch sizes instead.
        for hook_id, hook in list(gm._forward_pre_hooks.items()):
            if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
                del gm._forward_pre_hooks[hook_id]
    log.debug("graph fallback: rewrote sizes of %s", rw.changed)
    gm._graphprune_rewritten = rw.changed
    return gm


def first_mismatch(gm, program, removed: dict[Slot, np.ndarray], args) -> str | None:
    """Run the rewritten graph node by node and name the first node whose output shape is
    not the one the analysis predicts (or that fails): what to report when it is wrong."""
    import torch

    expected = {}
    for node in program.graph.nodes:
        shape = getattr(node.meta.get("val"), "shape", None)
        if shape is not None:
            expected[node.name] = [int(d) - len(removed.get(Slot(node.name, ax), ())) if isinstance(d, int) else None
                                   for ax, d in enumerate(shape)]

    class Probe(torch.fx.Interpreter):
        def run_node(self, n):
            try:
                out = super().run_node(n)
            except Exception as exc:
                raise RuntimeError(f"node {n.name} ({n.target}) fails: {exc}".splitlines()[0]) from None
            want, shape = expected.get(n.name), getattr(out, "shape", None)
            if want is not None and shape is not None and (len(want) != len(shape) or any(
                    w is not None and w != int(d) for w, d in zip(want, shape, strict=True))):
                raise RuntimeError(f"node {n.name} ({n.target}) has shape {tuple(shape)}, expected "
                                   f"{tuple(w if w is not None else '?' for w in want)}")
            return out

    try:
        with torch.no_grad():
            Probe(gm).run(*args)
    except RuntimeError as exc:
        return str(exc)
    return None
