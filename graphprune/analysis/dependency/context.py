"""What a channel rule sees and says: `RuleContext`.

A rule couples (value, axis) slots, possibly through an index map, marks constant slots
with a role (weight, bias, norm parameters ...), freezes slots it cannot map exactly, and
registers a rewrite for the op's own attributes/structural constants. Every axis of the
node's inputs and outputs that the rule leaves untouched is frozen afterwards: an axis
a rule did not think about is never pruned through.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import onnx_ir as ir

from graphprune.ir.constants import const_array, is_constant
from graphprune.ir.shapes import dims_of

if TYPE_CHECKING:
    from graphprune.analysis.dependency.graph import DependencyBuilder


class Slot(NamedTuple):
    """One axis of one tensor, or a node-local virtual axis (name starts with '~'). A
    NamedTuple, not a frozen dataclass: the analysis hashes and compares slots about a
    million times on a 30-layer LLaMA, and a tuple does that in C (that graph's build:
    435 -> 280 ms CPU, GC off)."""

    value: str
    axis: int

    def __str__(self) -> str:
        return f"{self.value}[{self.axis}]"

    @property
    def virtual(self) -> bool:
        return self.value.startswith("~")


SlotRemoved = Callable[[Slot], np.ndarray]
RewriteFn = Callable[["RewriteContext"], None]


def virtual_slot(node: ir.Node, tag: str) -> Slot:
    return Slot(f"~{node.name}/{tag}", 0)


class RuleContext:
    def __init__(self, builder: "DependencyBuilder", node: ir.Node, opset: int):
        self._b = builder
        self.node = node
        self.opset = opset
        self.handled: set[tuple[int, int]] = set()

    # ---- reading the node --------------------------------------------------------
    def dims(self, value: ir.Value | None) -> list | None:
        return dims_of(value)

    def dims_or_freeze_all(self, value: ir.Value | None) -> list | None:
        """`dims(value)` for a rule that maps `value` axis by axis. When its rank is unknown
        no axis can be mapped: every slot of the node is frozen ("<op> of unknown rank")
        and None is returned, so the rule stops there."""
        d = self.dims(value)
        if d is None:
            self.freeze_all(f"{self.node.op_type} of unknown rank")
        return d

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        return const_array(value)

    def is_const(self, value: ir.Value | None) -> bool:
        """Whether `value` is a constant, without reading it (`const` copies a memory-mapped
        weight whole: asked of every weight, it read the model once more)."""
        return is_constant(value)

    def carries_weights(self, value: ir.Value, axis: int) -> bool:
        """Whether (value, axis) is, from what the rules upstream said so far, coupled to
        a weight and not frozen: a hint for rules that must pick one axis of several."""
        return self._b.carries_weights(self._b.slot(value, self._norm(value, axis)))

    def keeps_zero(self, value: ir.Value | None, axis: int) -> bool:
        """Whether `value` is zero at the removed indices of `axis` in the oracle's masked
        original (rules.zero_channels.keeps_zero), remembered for this analysis: every
        layer of a residual stream asks it of the stream, which goes back to the first layer."""
        return value is not None and self._b.keeps_zero(value, self._norm(value, axis))

    def element_labels(self, value: ir.Value, axis: int) -> np.ndarray | None:
        """Which elements of (value, axis) the rules upstream already tie together."""
        return self._b.element_labels(self._b.slot(value, self._norm(value, axis)))

    def attr(self, name: str, default=None):
        a = self.node.attributes.get(name)
        return default if a is None else a.value

    def input(self, i: int) -> ir.Value | None:
        return self.node.inputs[i] if i < len(self.node.inputs) else None

    def output(self, i: int) -> ir.Value | None:
        return self.node.outputs[i] if i < len(self.node.outputs) else None

    # ---- saying things -------------------------------------------------------------
    def couple(self, va: ir.Value, axa: int, vb: ir.Value, axb: int,
               a_idx: np.ndarray | None = None, b_idx: np.ndarray | None = None) -> None:
        """Couple slot (va, axa) with (vb, axb). Without index arrays the map is the
        identity (sizes must match); otherwise element a_idx[k] goes with b_idx[k]."""
        axa = self._norm(va, axa)
        axb = self._norm(vb, axb)
        self.handled.add((id(va), axa))
        self.handled.add((id(vb), axb))
        self._b.add_edge(self._b.slot(va, axa), self._b.slot(vb, axb), a_idx, b_idx, self.node)

    def couple_virtual(self, tag: str, size: int, v: ir.Value, ax: int,
                       v_idx: np.ndarray, virt_idx: np.ndarray) -> Slot:
        """Couple (v, ax) with a node-local virtual slot of `size` elements."""
        ax = self._norm(v, ax)
        self.handled.add((id(v), ax))
        vslot = self._b.virtual_slot(self.node, tag, size)
        self._b.add_edge(self._b.slot(v, ax), vslot, v_idx, virt_idx, self.node)
        return vslot

    def identity(self, va: ir.Value, vb: ir.Value) -> None:
        """Couple every axis of two same-rank tensors one to one."""
        da, db = self.dims(va), self.dims(vb)
        if da is None or db is None or len(da) != len(db):
            self.freeze_all(f"{self.node.op_type}: ranks of input and output differ or are unknown")
            return
        for ax in range(len(da)):
            self.couple(va, ax, vb, ax)

    def broadcast(self, inputs: list[ir.Value | None], output: ir.Value) -> None:
        """Numpy broadcasting: couple each input axis whose size equals the output's."""
        dout = self.dims(output)
        if dout is None:
            self.freeze_all(f"{self.node.op_type}: output rank unknown")
            return
        for v in inputs:
            if v is None:
                continue
            dv = self.dims(v)
            if dv is None or len(dv) > len(dout):
                self.freeze_all(f"{self.node.op_type}: cannot align broadcast shapes")
                return
            off = len(dout) - len(dv)
            for ax, d in enumerate(dv):
                if d == 1:
                    # Broadcast (or 1 to 1): a size-1 axis is never sliced.
                    self.handled.add((id(v), ax))
                    if dout[ax + off] == 1:
                        self.handled.add((id(output), ax + off))
                elif d == dout[ax + off]:
                    self.couple(v, ax, output, ax + off)
                else:
                    self.freeze(v, ax, f"{self.node.op_type}: broadcast sizes do not match")

    def structural(self, *values: ir.Value | None) -> None:
        """Inputs read as data (shapes, indices, scalars), not channel-carrying. A constant
        one the rule reads and rewrites itself; a computed one (shape math at run time) is
        frozen so nothing upstream of it is ever sliced."""
        for v in values:
            d = self.dims(v) if v is not None else None
            if d is None:
                continue
            if is_constant(v):
                for ax in range(len(d)):
                    self.handled.add((id(v), ax))
            else:
                self.freeze(v, None, f"{self.node.op_type} reads it as shape/index data")

    def sums_over(self, value: ir.Value, axis: int) -> None:
        """The op adds up the elements of (value, axis), and the removed ones are zero in the
        masked original (`keeps_zero`): the axis may lose indices, nothing here changes."""
        self.handled.add((id(value), self._norm(value, axis)))

    def unchanged(self, value: ir.Value | None, *axes: int) -> None:
        """Axes the op keeps fixed and never needs to slice (e.g. kernel height)."""
        if value is None:
            return
        for ax in axes:
            self.handled.add((id(value), self._norm(value, ax)))

    def param(self, value: ir.Value | None, axis: int, role: str) -> None:
        """Record the role of a constant slot (used by importance criteria)."""
        if value is None:
            return
        self._b.set_role(self._b.slot(value, self._norm(value, axis)), role)

    def normalised_width(self, value: ir.Value, axis: int) -> None:
        """(value, axis) is an axis a normalisation takes its statistics over, kept exact by
        computing them over the original width (a LayerNorm/RMSNorm's hidden size): its group
        is a residual stream, which allocation keeps whole unless asked (`prune_hidden`)."""
        self._b.normalised.add(self._b.slot(value, self._norm(value, axis)))

    def freeze(self, value: ir.Value | None, axis: int | None, reason: str) -> None:
        if value is None:
            return
        d = self.dims(value)
        if d is None:
            self._b.freeze_value_unknown(value, reason)
            return
        axes = range(len(d)) if axis is None else [self._norm(value, axis)]
        for ax in axes:
            self.handled.add((id(value), ax))
            self._b.freeze(self._b.slot(value, ax), reason)

    def freeze_all(self, reason: str) -> None:
        if "unknown" in reason:  # name the node where shape inference lost the shape, not only this one
            reason += _where_shapes_end(self.node)
        for v in list(self.node.inputs) + list(self.node.outputs):
            self.freeze(v, None, reason)

    def on_prune(self, fn: RewriteFn) -> None:
        """Register a rewrite of this node's attributes/structural inputs at prune time."""
        self._b.add_rewrite(self.node, fn)

    # ---- helpers -----------------------------------------------------------------
    def _norm(self, v: ir.Value, ax: int) -> int:
        if ax >= 0:
            return ax
        d = self.dims(v)
        return ax + (len(d) if d is not None else 0)


_ANALYSED_NAME = "graphprune.analysed_name"  # a replaced value's name when the plan's slots were made


class RewriteContext:
    """Given to a rule's rewrite at prune time: which indices go from which slot."""

    def __init__(self, node: ir.Node, slot_removed: SlotRemoved,
                 new_const: Callable[[np.ndarray, str], ir.Value], unique_name: Callable[[str], str],
                 replaced: dict[str, ir.Value] | None = None):
        self.node = node
        self._slot_removed = slot_removed
        self._new_const = new_const
        self.unique_name = unique_name
        # take_place_of: value name -> the value now carrying it, whose shape the surgery
        # shrinks after every rewrite ran (until then every value keeps its analysed shape)
        self.replaced = replaced if replaced is not None else {}

    def removed(self, value: ir.Value | None, axis: int) -> np.ndarray:
        """Sorted indices removed from (value, axis) in the input model's numbering. A value
        another rewrite replaced (`take_place_of`) still answers for the slots it was
        analysed under: a rule's rewrite reads the values it saw at analysis, and found
        nothing removed after a norm or mean before it had replaced its input (a
        depthwise conv kept its group; an Attention its scale)."""
        if value is None:
            return np.zeros(0, dtype=np.int64)
        if axis < 0:
            axis += len(value.shape)
        return self._slot_removed(Slot(value.meta.get(_ANALYSED_NAME, value.name), axis))

    def kept(self, value: ir.Value, axis: int, size: int) -> np.ndarray:
        return np.setdiff1d(np.arange(size), self.removed(value, axis))

    def pruned_dims(self, value: ir.Value) -> list:
        """`value`'s recorded dims less the indices the plan removes from each axis."""
        return [d - len(self.removed(value, ax)) if isinstance(d, int) else d for ax, d in enumerate(value.shape)]

    def virtual_removed(self, tag: str) -> np.ndarray:
        return self._slot_removed(virtual_slot(self.node, tag))

    def new_const(self, array: np.ndarray, hint: str) -> ir.Value:
        return self._new_const(np.asarray(array), hint)

    def const(self, value: ir.Value) -> np.ndarray | None:
        """A constant input's array as it is before the surgery slices it."""
        return const_array(value)

    def set_input_const(self, i: int, array: np.ndarray, hint: str = "") -> None:
        """Point input i at a new constant (never mutates a possibly shared one)."""
        v = self._new_const(np.asarray(array), hint or f"{self.node.name}_in{i}")
        self.node.replace_input_with(i, v)

    def insert(self, op_type: str, inputs: list, *, like: ir.Value, dims: list | None = None,
               attributes: dict | None = None, after: bool = False, hint: str = "") -> ir.Value:
        """A new standard-domain node before (`after`: after) this one; its one output gets
        `like`'s type and the shape `dims` (default: `like`'s shape as it is now, before the
        surgery shrinks anything), so the model's shapes stay current."""
        label = f"{self.node.name}/{hint or op_type}"
        node = ir.Node("", op_type, inputs, attributes=ir.convenience.convert_attributes(attributes or {}),
                       name=self.unique_name(label))
        out = node.outputs[0]
        out.name = self.unique_name(f"{label}_out")
        out.type = like.type
        shape = dims if dims is not None else (list(like.shape) if like.shape is not None else None)
        out.shape = ir.Shape(shape) if shape is not None else None
        (self.node.graph.insert_after if after else self.node.graph.insert_before)(self.node, node)
        return out

    def zeros_put_back(self, value: ir.Value, dims: list, axes) -> ir.Value | None:
        """`value` with its removed indices back as zeros, at the end of each of `axes` (a Pad
        before this node): what a norm or a mean over those axes read in the masked original,
        up to order. `dims`: value's dims as analysed (the original widths). None when
        nothing is removed there."""
        rank = len(dims)
        pads = np.zeros(2 * rank, dtype=np.int64)
        for ax in axes:
            pads[rank + ax] = len(self.removed(value, ax))
        if not pads.any():
            return None
        return self.insert("Pad", [value, self.new_const(pads, f"{self.node.name}_pads")], like=value, dims=dims,
                           hint="zeros_of_removed_channels")

    def take_place_of(self, old: ir.Value, new: ir.Value) -> None:
        """`new` replaces `old` for every reader except its own maker, and takes its name and
        its analysed shape: the plan's slots name values, so old's slots describe `new` from
        now on, and the surgery shrinks `new` as it would have shrunk `old` (old is left
        unread, and removed with its maker)."""
        maker = new.producer()
        for use in list(old.uses()):
            if use.node is not maker:
                use.node.replace_input_with(use.idx, new)
        outputs = self.node.graph.outputs
        for i, o in enumerate(outputs):
            if o is old:
                outputs[i] = new
        name = old.name
        old.meta[_ANALYSED_NAME] = old.meta.get(_ANALYSED_NAME, name)
        old.name = self.unique_name(f"{name}_replaced")
        new.name = name
        new.shape = old.shape
        self.replaced[name] = new

    def set_attr_int(self, name: str, value: int) -> None:
        self.node.attributes[name] = ir.AttrInt64(name, int(value))

    def set_attr_float(self, name: str, value: float) -> None:
        self.node.attributes[name] = ir.AttrFloat32(name, float(value))

    def set_attr_ints(self, name: str, values) -> None:
        self.node.attributes[name] = ir.AttrInt64s(name, [int(x) for x in values])


def _where_shapes_end(node: ir.Node, limit: int = 200) -> str:
    """' (shapes unknown from X (Reshape) on)' for the first node upstream of `node` whose
    output shape is unknown while its inputs' are known; '' when `node`'s inputs are known or
    no such node is found. A TorchScript opset-13 GroupNorm export lost the rank at a
    Reshape, and the reasons named only the Resize and DepthToSpace far downstream."""
    todo = [v for v in node.inputs if v is not None and v.shape is None]
    seen: set[int] = set()
    while todo and len(seen) < limit:
        v = todo.pop()
        p = v.producer()
        if p is None or id(p) in seen:
            continue
        seen.add(id(p))
        unknown = [x for x in p.inputs if x is not None and x.shape is None and x.producer() is not None]
        if not unknown:
            return f" (shapes unknown from {p.name} ({p.op_type}) on: shape inference could not follow it)"
        todo.extend(unknown)
    return ""
