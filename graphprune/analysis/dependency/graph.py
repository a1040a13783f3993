"""Dependency analysis: channel slots, their couplings, and the pruning groups.

Two levels:
1. Slots — (value, axis) pairs — are joined by the couplings per-op rules declare.
   Connected components of slots are candidate groups. A component with a frozen slot
   (no rule, inexact op, graph input/output, dynamic size ...) is not pruned.
2. Inside a prunable component, couplings carry index maps (concat offsets, flatten
   blocks, grouped-conv ties, gathers ...). Connected components of *elements* are the
   atoms: the smallest sets of channels that can only be removed together. A plan
   removes whole atoms, so any plan is consistent with every op by construction.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.analysis.dependency.context import RewriteFn, RuleContext, Slot, virtual_slot
from graphprune.analysis.dependency.registry import RULES, RuleRegistry
from graphprune.errors import StaleAnalysisError
from graphprune.gc_pause import gc_paused
from graphprune.ir.constants import is_constant
from graphprune.ir.mutation import stamp
from graphprune.ir.quant import is_integer_op_weight, is_quantized_const
from graphprune.ir.shapes import dims_of
from graphprune.ir.untie import untied_copies

log = logging.getLogger(__name__)


@dataclass
class Group:
    """A set of coupled slots whose channels are removed together, atom by atom."""

    id: int
    name: str
    slots: list[Slot]
    sizes: dict[Slot, int]
    labels: dict[Slot, np.ndarray]  # per slot: atom id of each index
    num_atoms: int
    roles: dict[Slot, str]  # constant slots and their role (weight, bias, ...)
    ignored: bool = False  # touched by the user's ignore list
    # a LayerNorm/RMSNorm takes its statistics over this group's axis (a transformer's hidden
    # size): exact, but allocation keeps it whole unless asked (prune_hidden)
    normalised: bool = False

    @property
    def const_slots(self) -> list[Slot]:
        return [s for s in self.slots if s in self.roles]

    def removed_indices(self, slot: Slot, atoms) -> np.ndarray:
        return np.flatnonzero(self.atom_mask(atoms)[self.labels[slot]]).astype(np.int64)

    def atom_mask(self, atoms) -> np.ndarray:
        """A boolean per atom: True for `atoms` (valid ids: `check_removal`)."""
        mask = np.zeros(self.num_atoms, dtype=bool)
        mask[np.asarray(list(atoms), dtype=np.int64)] = True
        return mask

    def atoms_of(self, slot: Slot) -> np.ndarray:
        return np.unique(self.labels[slot])

    def atom_sizes(self) -> np.ndarray:
        """Channels each atom holds in the group's reference slot: the tensor axis that
        sees the most atoms, and of those the narrowest (a channel axis, not a
        flattened feature axis where one channel is a block of features)."""
        ref = min((s for s in self.slots if not s.virtual),
                  key=lambda s: (-len(self.atoms_of(s)), self.sizes[s]))
        return np.bincount(self.labels[ref], minlength=self.num_atoms)

    def check_removal(self, atoms) -> str | None:
        """Why removing `atoms` is not allowed (None if it is)."""
        atoms = set(int(a) for a in atoms)
        bad = [a for a in atoms if not 0 <= a < self.num_atoms]
        if bad:
            return f"group {self.name}: atom ids {bad[:5]} out of range 0..{self.num_atoms - 1}"
        mask = self.atom_mask(atoms)
        for s in self.slots:
            if mask[self.labels[s]].all():
                return f"group {self.name}: removing these channels would leave {s} empty"
        return None


@dataclass
class FrozenGroup:
    """A component holding prunable-looking tensors that is frozen, and why."""

    name: str
    slots: list[Slot]
    reasons: list[str]
    normalised: bool = False  # a norm would take its statistics over it (Group.normalised)


@dataclass
class Diagnostic:
    node: str
    op: str
    message: str


class DependencyBuilder:
    def __init__(self, model: ir.Model, registry: RuleRegistry):
        self.model = model
        self.registry = registry
        self.values: dict[str, ir.Value] = {}
        self.sizes: dict[Slot, int | str | None] = {}
        self.order: dict[Slot, int] = {}
        self.edges: list[tuple[Slot, Slot, np.ndarray | None, np.ndarray | None]] = []
        self.frozen: dict[Slot, list[str]] = defaultdict(list)
        self.roles: dict[Slot, str] = {}
        self.rewrites: list[tuple[ir.Node, RewriteFn]] = []
        self.diagnostics: list[Diagnostic] = []
        self.edge_nodes: list[str] = []
        self.normalised: set[Slot] = set()  # RuleContext.normalised_width
        self._zero_memo: dict[tuple[int, int], bool] = {}
        # A running view of the components built so far, so a rule with a choice to make
        # (which axis of a reshape carries the channels) can ask what is upstream of it.
        self._uf = _UnionFind()
        self._weighted: set[Slot] = set()   # roots whose component holds a float constant
        self._frozen_roots: set[Slot] = set()

    # ---- slots ---------------------------------------------------------------------
    def slot(self, value: ir.Value, axis: int) -> Slot:
        s = Slot(value.name, axis)
        if s not in self.sizes:
            dims = dims_of(value)
            size = dims[axis] if dims is not None and axis < len(dims) else None
            self.values[value.name] = value
            self.sizes[s] = size
            self.order[s] = len(self.order)
            if not isinstance(size, int):
                self.frozen[s].append("dynamic or unknown size")
            if is_constant(value) and s not in self.roles:
                self.roles[s] = "const"
            if is_constant(value) and _is_float(value):
                self._weighted.add(self._uf.find(s))
            if not isinstance(size, int):
                self._frozen_roots.add(self._uf.find(s))
        return s

    def virtual_slot(self, node: ir.Node, tag: str, size: int) -> Slot:
        s = virtual_slot(node, tag)
        if s not in self.sizes:
            self.sizes[s] = size
            self.order[s] = len(self.order)
        return s

    def add_edge(self, a: Slot, b: Slot, a_idx, b_idx, node: ir.Node) -> None:
        if (a_idx is None) != (b_idx is None):
            raise ValueError("couple(): give both index arrays or neither")
        if a_idx is not None:
            a_idx = np.asarray(a_idx, dtype=np.int64).reshape(-1)
            b_idx = np.asarray(b_idx, dtype=np.int64).reshape(-1)
        self.edges.append((a, b, a_idx, b_idx))
        self.edge_nodes.append(node.name)
        ra, rb = self._uf.find(a), self._uf.find(b)
        if ra != rb:
            self._uf.union(ra, rb)
            root = self._uf.find(ra)
            for flags in (self._weighted, self._frozen_roots):
                if ra in flags or rb in flags:
                    flags.add(root)

    def carries_weights(self, s: Slot) -> bool:
        """So far: s is coupled to a float constant and nothing in its component is frozen."""
        root = self._uf.find(s)
        return root in self._weighted and root not in self._frozen_roots

    def element_labels(self, s: Slot) -> np.ndarray | None:
        """So far: which elements of s the couplings already tie together (one label per
        element), or None if some size in its component is unknown or inconsistent."""
        root = self._uf.find(s)
        edges = [e for e in self.edges if self._uf.find(e[0]) == root]
        members = sorted({x for e in edges for x in e[:2]} | {s}, key=lambda x: self.order[x])
        if any(not isinstance(self.sizes[x], int) for x in members):
            return None
        try:
            offset, comp = element_components(members, self.sizes, edges)
        except _BadEdge:
            return None
        return comp[offset[s]: offset[s] + int(self.sizes[s])]

    def keeps_zero(self, value: ir.Value, axis: int) -> bool:
        from graphprune.analysis.dependency.rules.zero_channels import keeps_zero

        return keeps_zero(value, axis, memo=self._zero_memo)

    def freeze(self, s: Slot, reason: str) -> None:
        if reason not in self.frozen[s]:
            self.frozen[s].append(reason)
        self._frozen_roots.add(self._uf.find(s))

    def freeze_value_unknown(self, value: ir.Value, reason: str) -> None:
        # Rank unknown: nothing can be coupled through it, so nothing needs freezing.
        log.debug("value %s has unknown rank (%s)", value.name, reason)

    def set_role(self, s: Slot, role: str) -> None:
        self.roles[s] = role

    def add_rewrite(self, node: ir.Node, fn: RewriteFn) -> None:
        self.rewrites.append((node, fn))

    # ---- building ------------------------------------------------------------------
    def run(self) -> None:
        graph = self.model.graph
        opset = self.model.opset_imports.get("", 0)
        for v in graph.inputs:
            self._freeze_value(v, "graph input keeps its shape")
        for v in graph.outputs:
            self._freeze_value(v, "graph output keeps its shape")
        for node in graph:
            self._apply_rule(node, opset)
        # Values read inside subgraphs (If/Loop/Scan bodies) are used with their shapes.
        for node in graph:
            for sub in _subgraphs(node):
                for inner in sub.all_nodes() if hasattr(sub, "all_nodes") else sub:
                    for v in inner.inputs:
                        if v is not None and v.graph is graph:
                            self._freeze_value(v, f"used inside a subgraph of {node.name!r}")

    def _freeze_value(self, v: ir.Value, reason: str) -> None:
        dims = dims_of(v)
        if dims is None:
            return
        for ax in range(len(dims)):
            self.freeze(self.slot(v, ax), reason)

    def _apply_rule(self, node: ir.Node, opset_default: int) -> None:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return
        opset = self.model.opset_imports.get(node.domain or "", opset_default)
        entry = self.registry.lookup(node.domain, node.op_type, opset)
        ctx = RuleContext(self, node, opset)
        op = node.op_type if not node.domain else f"{node.domain}::{node.op_type}"
        if entry is None:
            reason = f"no channel rule for {op} (opset {opset})"
            self.diagnostics.append(Diagnostic(node.name, op, reason))
            ctx.freeze_all(reason)
            return
        if _subgraphs(node):
            reason = f"{op} has subgraphs"
            self.diagnostics.append(Diagnostic(node.name, op, reason))
            ctx.freeze_all(reason)
            return
        try:
            entry.fn(node, ctx)
        except Exception as exc:  # a rule that fails must fail closed, not crash analysis
            reason = f"rule for {op} failed: {type(exc).__name__}: {exc}"
            log.debug("rule failure at %s", node.name, exc_info=True)
            self.diagnostics.append(Diagnostic(node.name, op, reason))
            ctx.freeze_all(reason)
            return
        for v in list(node.inputs) + list(node.outputs):
            if v is None:
                continue
            dims = dims_of(v)
            if dims is None:
                continue
            for ax in range(len(dims)):
                if (id(v), ax) not in ctx.handled:
                    self.freeze(self.slot(v, ax), f"{op} rule does not map this axis")


def _subgraphs(node: ir.Node) -> list:
    subs = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            subs.append(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            subs.extend(attr.value)
    return subs


def _is_float(v: ir.Value | None) -> bool:
    """A weight-like value: floating point, or an integer-op layer's integer constant
    (QLinearConv's weight ...). Not the integer data behind a QDQ weight's DequantizeLinear:
    the float output is the weight there, and its integer input's axes couple to every axis
    of it, kernel taps included, which must never form a group of their own."""
    return v is not None and v.dtype is not None and (v.dtype.is_floating_point() or is_integer_op_weight(v))


class _BadEdge(ValueError):
    pass


def element_components(slots: list[Slot], sizes: dict, edges) -> tuple[dict[Slot, int], np.ndarray]:
    """Connected components of the elements of `slots` under the index maps of `edges`:
    (offset of each slot in the element numbering, component label per element). Raises
    _BadEdge when an identity edge joins slots of different sizes or an index is out of range.
    Labels are numbered by each component's smallest element (`components`)."""
    offset: dict[Slot, int] = {}
    total = 0
    for s in slots:
        offset[s] = total
        total += int(sizes[s])
    if edges and all(ai is None for _, _, ai, _ in edges) and len({int(sizes[s]) for s in slots}) == 1:
        # identity maps only (a residual stream: hundreds of slots): element i of every slot is
        # atom i, which is what the general path below numbers it, without its rounds
        return offset, np.tile(np.arange(int(sizes[slots[0]])), len(slots))
    rows, cols = [], []
    for a, c, ai, ci in edges:
        if ai is None:
            if sizes[a] != sizes[c]:
                raise _BadEdge(f"size mismatch between {a} ({sizes[a]}) and {c} ({sizes[c]})")
            ai = ci = np.arange(int(sizes[a]))
        if len(ai) and (ai.max() >= sizes[a] or ci.max() >= sizes[c] or ai.min() < 0 or ci.min() < 0):
            raise _BadEdge(f"index map out of range between {a} and {c}")
        rows.append(ai + offset[a])
        cols.append(ci + offset[c])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return offset, components(total, r, c)


def components(n: int, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Connected components of n nodes joined by edges r[k]-c[k]: label 0 for the component
    of node 0, then in the order of each component's smallest node (scipy's numbering, which
    atom ids follow). Union-find in whole-array steps: every root that an edge joins to a
    smaller root is hooked under the smallest such, then every node follows its parents to
    its root; a root is always its tree's smallest node, so the labels end at each
    component's smallest node. (scipy.sparse.csgraph did this; its import alone cost 0.2 s
    of CPU in a fresh process.)"""
    parent = np.arange(n)
    while len(r):
        pr, pc = parent[r], parent[c]
        lo, hi = np.minimum(pr, pc), np.maximum(pr, pc)
        joined = lo != hi
        if not joined.any():
            break
        np.minimum.at(parent, hi[joined], lo[joined])
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    return np.unique(parent, return_inverse=True)[1]


def compile_patterns(patterns, what: str = "pattern") -> list[re.Pattern]:
    """User regexes (--ignore, --protect, ...) compiled once; a bad one is a UsageError.
    `patterns`: None, one string or a list of strings."""
    from graphprune.errors import UsageError

    if patterns is None or patterns == "":
        return []
    out = []
    for p in [patterns] if isinstance(patterns, (str, re.Pattern)) else patterns:
        try:
            out.append(p if isinstance(p, re.Pattern) else re.compile(p))
        except (re.error, TypeError) as exc:
            raise UsageError(f"{what} {p!r} is not a valid regular expression: {exc}") from None
    return out


def slots_match(values: dict[str, ir.Value], slots: list[Slot], patterns: list[re.Pattern],
                extra_names: tuple[str, ...] = ()) -> bool:
    """Whether a pattern finds a slot's tensor name, its producer's or a consumer's node
    name (or one of `extra_names`): how --ignore / --protect / layer ratios pick groups."""
    for s in slots:
        names = [s.value, *extra_names]
        v = values.get(s.value)
        if v is not None:
            if v.producer() is not None:
                names.append(v.producer().name or "")
            names.extend(u.node.name or "" for u in v.uses())
        if any(p.search(n) for p in patterns for n in names):
            return True
    return False


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        p = self.parent.setdefault(x, x)
        while p != self.parent[p]:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        self.parent[x] = p
        return p

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


# model.meta key of an analysis offered for reuse (meta is never serialised)
_OFFERED = "graphprune.dependency.offered"


def _ignore_key(ignore) -> str:
    if not ignore:
        return "[]"
    return repr([ignore] if isinstance(ignore, str) else list(ignore))


def offer(dg: DependencyGraph) -> None:
    """Let the next `DependencyGraph(dg.model, ignore=<same>)` return `dg` itself while the
    model is unchanged (same mutation stamp): `graphprune.analyze` then `graphprune.prune`
    analyse once. The graph is read-only after construction, so sharing it is safe."""
    dg.model.meta[_OFFERED] = dg


def withdraw(model: ir.Model) -> None:
    """Drop an offered analysis (it pins the tensors of the model it was built on)."""
    model.meta.pop(_OFFERED, None)


class DependencyGraph:
    """Result of the dependency analysis of one model (valid until the model changes)."""

    def __new__(cls, model: ir.Model | None = None, *, registry: RuleRegistry | None = None, ignore=None):
        hit = model.meta.get(_OFFERED) if registry is None and isinstance(model, ir.Model) else None
        if (hit is not None and type(hit) is cls and hit.model is model and hit.ignore_key == _ignore_key(ignore)
                and hit.stamp == stamp(model)):
            return hit  # __init__ sees it is built and returns at once
        return super().__new__(cls)

    @gc_paused
    def __init__(self, model: ir.Model, *, registry: RuleRegistry | None = None,
                 ignore: list[str] | None = None):
        if "stamp" in self.__dict__:
            return  # an offered analysis, reused (see __new__)
        ignore_patterns = compile_patterns(ignore, "ignore")  # a bad regex fails before the analysis
        self.ignore_key = _ignore_key(ignore)
        b = DependencyBuilder(model, registry or RULES)
        b.run()
        self.model = model
        self.stamp = stamp(model)  # what the model was when analysed: see check_current
        self.values = b.values
        self.sizes = b.sizes
        self.roles = b.roles
        self.rewrites = b.rewrites
        self.diagnostics = b.diagnostics
        self._frozen = b.frozen
        self.groups: list[Group] = []
        self.frozen_groups: list[FrozenGroup] = []
        self._build_groups(b, ignore_patterns)
        self.slot_group: dict[Slot, Group] = {s: g for g in self.groups for s in g.slots}

    def require_matches(self, patterns, what: str = "ignore", *, group_names: bool = False) -> None:
        """A user's pattern (--ignore, --protect, --layer-ratio) that finds no group, prunable
        or frozen, is refused: a typo in it would prune the layer the user meant to keep, in
        silence. `group_names`: a group's own name counts too (the allocation's
        patterns match it, `allocation.driver.group_matches`)."""
        from graphprune.errors import UsageError

        every = [(g.slots, (g.name,) if group_names else ()) for g in self.groups] + \
            [(f.slots, ()) for f in self.frozen_groups]
        for p in compile_patterns(patterns, what):
            if not any(slots_match(self.values, slots, [p], names) for slots, names in every):
                raise UsageError(f"{what} pattern {p.pattern!r} matches no tensor or node of the model's "
                                 "channel groups: it would apply to nothing",
                                 hint="patterns are regular expressions searched in tensor and node names; "
                                      "`graphprune inspect` lists the groups")

    def check_current(self, model: ir.Model | None = None) -> None:
        """Raise StaleAnalysisError unless the analysed model (and `model`, when given,
        is that model) has not changed since the analysis: groups, slots and rewrites of
        an older model would slice the wrong tensors."""
        if model is not None and model is not self.model:
            raise StaleAnalysisError("dependency graph was computed on another model",
                                     hint="analyse the model the plan is for")
        now = stamp(self.model)
        if now != self.stamp:
            raise StaleAnalysisError(
                f"dependency graph is stale: the model changed since it was analysed "
                f"(mutation {self.stamp[0]} -> {now[0]}, nodes {self.stamp[1]} -> {now[1]})",
                hint="analyse the model again (PassContext.analysis recomputes after a changing pass)")

    def _build_groups(self, b: DependencyBuilder, ignore: list[re.Pattern]) -> None:
        uf = _UnionFind()
        for s in b.sizes:
            uf.find(s)
        for a, c, _, _ in b.edges:
            uf.union(a, c)
        comps: dict[Slot, list[Slot]] = defaultdict(list)
        for s in b.sizes:
            comps[uf.find(s)].append(s)
        comp_edges: dict[Slot, list] = defaultdict(list)
        for e in b.edges:
            comp_edges[uf.find(e[0])].append(e)
        ordered = sorted(comps.values(), key=lambda ss: min(b.order[s] for s in ss))
        untied = untied_copies(self.model)
        untied = set(untied) | set(untied.values())
        for slots in ordered:
            slots.sort(key=lambda s: b.order[s])
            roles = {s: b.roles[s] for s in slots if s in b.roles}
            # Untied all-zero copies are not in a plan's tensors: alone they are no weight.
            floats = [s for s in roles if _is_float(self.values.get(s.value)) and s.value not in untied]
            if not floats:
                continue  # no weight to slice: not a pruning group (spatial axes, shape math)
            name = self._group_name(slots)
            reasons = sorted({r for s in slots for r in b.frozen.get(s, ())})
            if reasons:
                self.frozen_groups.append(FrozenGroup(name, slots, reasons, any(s in b.normalised for s in slots)))
                continue
            group = self._atoms(len(self.groups), name, slots, roles, comp_edges[uf.find(slots[0])], b)
            if group is None:
                continue
            if ignore and self._matches_ignore(slots, ignore):
                group.ignored = True
            group.normalised = any(s in b.normalised for s in slots)
            self.groups.append(group)

    def _group_name(self, slots: list[Slot]) -> str:
        for s in slots:
            v = self.values.get(s.value)
            # a QDQ weight (DequantizeLinear of a constant) is a weight: the group is named by a layer
            if v is not None and not s.virtual and v.producer() is not None and not is_constant(v) \
                    and not is_quantized_const(v):
                return f"{v.producer().name}:{s.axis}"
        return str(slots[0])

    def _matches_ignore(self, slots: list[Slot], ignore: list[re.Pattern]) -> bool:
        return slots_match(self.values, slots, ignore)

    def _atoms(self, gid: int, name: str, slots: list[Slot], roles, edges, b) -> Group | None:
        try:
            offset, comp = element_components(slots, b.sizes, edges)
        except _BadEdge as exc:
            self.frozen_groups.append(FrozenGroup(name, slots, [str(exc)]))
            return None
        # Number atoms by first appearance so ids are stable across runs.
        _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(first))
        atom = rank[inverse]
        labels = {s: atom[offset[s]: offset[s] + int(b.sizes[s])] for s in slots}
        sizes = {s: int(b.sizes[s]) for s in slots}
        return Group(gid, name, slots, sizes, labels, len(first), roles)

    # ---- queries -------------------------------------------------------------------
    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if not g.ignored and g.num_atoms > 1]

    def value(self, name: str) -> ir.Value:
        return self.values[name]
