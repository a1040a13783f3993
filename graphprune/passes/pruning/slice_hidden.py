"""slice-hidden: prune the hidden size of a pre-norm transformer by rotation.

RMSNorm models are rotated as they are; LayerNorm models are first rewritten into that form
without changing their function (`layernorm_stream`: centred writers, LayerNorm as RMSNorm).

The residual stream is expressed in the basis of its principal directions (eigenvectors
of the calibration activations' second moment, each token normalised as the RMSNorms
do), and the trailing directions are dropped. One orthogonal ``Q`` for the whole stream:

* writers (embedding tables, the linear layers whose outputs are added to the stream, their
  biases) are multiplied by ``Q`` on the hidden axis;
* each RMSNorm's weight is folded into the linear layers reading it (an elementwise scale
  does not commute with a rotation; the norm itself does), and those readers are
  multiplied by ``Q^T`` on the hidden axis;
* a norm whose output is a graph output gets a ``MatMul`` back to the original basis,
  with its weight folded in, so the model's outputs keep their meaning and shape.

Two models come out, and the oracle checks both steps (`workflow.prune`):

* **the rotated reference** (all ``d`` directions): equal to the input model up to float
  rounding. Its norms sum instead of average (``ReduceSum * 1/d``), so that dropping
  directions that are zero leaves them unchanged;
* **the sliced model** (``k`` directions): the reference with the dropped directions
  removed, so `oracle.check(reference, sliced, plan)` is the usual masking oracle, with
  the usual tolerance: the arithmetic is the reference's with zero terms left out. (An
  algebraically equal form — ``ReduceMean`` over ``k`` with ``eps * d/k`` and the readers
  scaled by ``sqrt(d/k)`` — rounds differently: on SmolLM2-135M and the oracle's random
  tokens it missed the tolerance, 1.4e-4 of the output scale.)

The plan records the rotation (`Plan.hidden`, the matrix in a file beside the plan).
"""
from __future__ import annotations

import dataclasses

import logging

import numpy as np
import onnx_ir as ir

from graphprune.analysis.residual_stream import Linear, RMSNorm, Stream, find_stream
from graphprune.passes.pruning.layernorm_stream import prepare_stream
from graphprune.errors import UsageError
from graphprune.ir.constants import const_array, is_constant, set_const_array
from graphprune.passes._infra import Pass, PassContext, register_pass

log = logging.getLogger(__name__)


def kept_width(d: int, ratio: float, round_to: int) -> int:
    """Hidden width left when `ratio` of `d` goes, rounded to a multiple of `round_to`
    (the nearest one, at least one multiple, at most `d`)."""
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"slice-hidden: ratio must be in [0, 1), got {ratio}")
    if round_to < 1:
        raise UsageError(f"slice-hidden: round_to must be >= 1, got {round_to}")
    if ratio == 0.0:
        return d
    k = d * (1.0 - ratio)
    k = int(round(k / round_to)) * round_to
    return max(min(k, d), min(round_to, d))


# ---- statistics ------------------------------------------------------------------------------

def stream_moment(model: ir.Model, stream: Stream, calibration, batches: int | None = None) -> tuple[np.ndarray, int]:
    """(sum over calibration tokens and norms of x x^T, tokens), x = a norm's input scaled to
    unit RMS: the directions the readers see, each norm weighted alike."""
    from graphprune.runtime.calibration import progress
    from graphprune.runtime.ort import Runner
    from graphprune.runtime.positions import padding_mask, real_rows

    names = [n.x.name for n in stream.norms]
    run = Runner(model, names)
    d = stream.hidden
    acc = np.zeros((d, d), dtype=np.float64)
    tokens = 0
    for feeds in progress(calibration.batches(batches), calibration.total(batches), "slice-hidden statistics"):
        out = run(feeds)
        mask = padding_mask(feeds)  # padded positions of a text batch are not tokens
        for i, name in enumerate(names):
            a = np.asarray(out[name], dtype=np.float64)
            x = real_rows(a, a.ndim - 1, mask)[0].reshape(-1, d)
            x /= np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-12)
            acc += x.T @ x
            tokens += len(x) if i == 0 else 0
    if tokens == 0:
        raise UsageError("slice-hidden: the calibration data produced no tokens")
    return acc, tokens


def principal_basis(moment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues descending, orthogonal Q whose columns are the eigenvectors), float64."""
    w, v = np.linalg.eigh((moment + moment.T) / 2)
    order = np.argsort(w)[::-1]
    return np.maximum(w[order], 0.0), v[:, order]


# ---- rewriting ---------------------------------------------------------------------------------

class _Writer:
    """Sets node inputs to new constant data: in place when the constant is this input's
    alone (its name is kept, so the plan can name it), else as a new initializer with a
    derived, deterministic name (a shared or tied weight is untied, never changed for
    its other readers)."""

    def __init__(self, model: ir.Model):
        self.graph = model.graph
        self.names = {v.name for v in self.graph.initializers.values()}
        for node in self.graph:
            self.names.update(o.name for o in node.outputs)
            self.names.update(i.name for i in node.inputs if i is not None)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def new(self, base: str, array: np.ndarray) -> ir.Value:
        name = self.fresh(base)
        v = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(np.require(array, requirements="C"), name=name))
        self.graph.register_initializer(v)
        return v

    def set_input(self, node: ir.Node, index: int, array: np.ndarray, base: str) -> str:
        v = node.inputs[index]
        own = v is not None and is_constant(v) and len(list(v.uses())) == 1 and not v.is_graph_output()
        if own:
            set_const_array(v, array)
            return v.name
        nv = self.new(base, array)
        node.replace_input_with(index, nv)
        return nv.name


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def rotate(model: ir.Model, Q: np.ndarray, keep: int | None, inserted: list[str] | None = None) -> list[dict]:
    """Rewrite `model` in place into the stream basis `Q` (d x d): the rotated reference
    (`keep` None) or the model sliced to the first `keep` directions. Returns the hidden-axis
    slices the plan lists: {name, axis, removed} for every tensor carrying the stream,
    named as in the reference (the same names in both: the rewrite is deterministic).
    `inserted` collects the names of the projection weights it adds beside a shared table."""
    stream = find_stream(model)
    d = stream.hidden
    if Q.shape != (d, d):
        raise UsageError(f"slice-hidden: rotation of shape {Q.shape} for a hidden size of {d}")
    k = d if keep is None else keep
    Qk = Q[:, :k]
    out = _Writer(model)
    removed = list(range(k, d)) if keep is not None else []
    slices: list[dict] = []

    def record(name: str, axis: int) -> None:
        slices.append({"name": name, "axis": axis, "removed": removed})

    if any(e.op_type != "Gather" and _projection_width(e) != d for e in stream.embeddings):
        raise UsageError("slice-hidden: the model's hidden size was already rotated (its embedding is projected)")
    carriers = _stream_carriers(stream)
    for e in stream.embeddings:
        if e.op_type == "MatMul":  # a full-width projection after a kept-whole table (layernorm_stream's
            # centring): the rotation folds into it, and it stays beside the table like `.rotate`
            P = const_array(e.inputs[1]).astype(np.float64)
            name = out.set_input(e, 1, _f32(P @ Qk), f"{e.inputs[1].name}.rotated")
            record(name, 1)
            if inserted is not None:
                inserted.append(name)
            continue
        table = e.inputs[0]
        if _shared(table):  # e.g. tied with the output head: kept whole, the rotation beside it
            proj = out.new(f"{e.outputs[0].name}.rotate", _f32(Qk))
            record(proj.name, 1)
            if inserted is not None:
                inserted.append(proj.name)
            mm = ir.node("MatMul", [e.outputs[0], proj], name=f"{e.outputs[0].name}.rotate",
                         outputs=[ir.Value(name=out.fresh(f"{e.outputs[0].name}.rotated"))])
            model.graph.insert_after(e, [mm])
            for node, idx in list(e.outputs[0].uses()):
                if node is not mm:
                    node.replace_input_with(idx, mm.outputs[0])
            carriers = [v for v in carriers if v is not e.outputs[0]] + [mm.outputs[0]]
            mm.outputs[0].shape, mm.outputs[0].type = e.outputs[0].shape, e.outputs[0].type
        else:
            arr = const_array(table).astype(np.float64)
            record(out.set_input(e, 0, _f32(arr @ Qk), f"{table.name}.rotated"), 1)
    for w in stream.writers:
        _rotate_writer(out, w, Qk, record)
    for n in stream.norms:
        _rotate_norm(model, out, n, Qk, d, record, inserted)
    for v in carriers:  # the recorded shapes follow the new width
        if v.shape is not None and len(v.shape) >= 1:
            v.shape = ir.Shape([*list(v.shape)[:-1], k])
    return slices


def _projection_width(e: ir.Node) -> int | None:
    """The output width of an embedding's projection MatMul (Gather -> MatMul(., P[d, w]))."""
    shape = e.inputs[1].shape
    return int(shape[1]) if shape is not None and len(shape) == 2 and isinstance(shape[1], int) else None


def _shared(table: ir.Value) -> bool:
    """A weight with more than one reader, possibly through a Transpose (a tied embedding
    and output head): rotating it in place would change its other readers, and a rotated
    copy per reader would store it twice (SmolLM2's 49152 x 576 table: +23 M parameters at
    hidden 520). Such a weight stays whole; a small MatMul beside each reader rotates."""
    if table.is_graph_output() or len(list(table.uses())) > 1:
        return True
    p = table.producer()
    return p is not None and p.op_type == "Transpose" and is_constant(p.inputs[0]) and \
        len(list(p.inputs[0].uses())) > 1


def _stream_carriers(stream: Stream) -> list[ir.Value]:
    """Every activation whose last axis is the hidden size: the stream, what writes it, and
    each norm's intermediates up to its (weight-free) output."""
    vals: dict[int, ir.Value] = {id(v): v for v in stream.values}
    for e in stream.embeddings:
        vals[id(e.outputs[0])] = e.outputs[0]
    for w in stream.writers:
        for node in (w.node, w.bias):
            if node is not None:
                vals[id(node.outputs[0])] = node.outputs[0]
    for n in stream.norms:
        pw = n.reduce.inputs[0]
        vals[id(pw)] = pw
        v = n.normed  # back through an optional Cast to x * rsqrt(...)
        while True:
            vals[id(v)] = v
            p = v.producer()
            if p is None or p.op_type != "Cast":
                break
            v = p.inputs[0]
    return list(vals.values())


def _rotate_writer(out: _Writer, w: Linear, Qk: np.ndarray, record) -> None:
    from graphprune.analysis.residual_stream import _weight_of

    W = _weight_of(w.node, 1).astype(np.float64)
    record(out.set_input(w.node, 1, _f32(W @ Qk), f"{w.node.name or w.node.outputs[0].name}.rotated_weight"), 1)
    if w.bias is not None:
        b = const_array(w.bias.inputs[w.bias_input]).astype(np.float64).reshape(-1)
        record(out.set_input(w.bias, w.bias_input, _f32(b @ Qk), f"{w.bias.name or w.bias.outputs[0].name}.rotated_bias"),
               0)


def _rotate_norm(model: ir.Model, out: _Writer, n: RMSNorm, Qk: np.ndarray, d: int, record,
                 inserted: list[str] | None = None) -> None:
    from graphprune.analysis.residual_stream import _weight_of

    gamma = n.gamma(d).astype(np.float64)
    into = Qk.T * gamma[None, :]  # k x d: stream basis -> gamma-scaled original basis
    for r in n.readers:
        name = r.node.name or r.node.outputs[0].name
        if _shared(r.node.inputs[1]):  # a tied output head: back to the original basis first
            proj = out.new(f"{name}.unrotate", _f32(into))
            record(proj.name, 0)
            if inserted is not None:
                inserted.append(proj.name)
            x = r.node.inputs[0]
            mm = ir.node("MatMul", [x, proj], name=f"{name}.unrotate",
                         outputs=[ir.Value(name=out.fresh(f"{name}.unrotated_input"))])
            model.graph.insert_before(r.node, [mm])
            r.node.replace_input_with(0, mm.outputs[0])
            mm.outputs[0].shape, mm.outputs[0].type = x.shape, x.type  # d wide, as the reader read before
            continue
        W = _weight_of(r.node, 1).astype(np.float64)
        record(out.set_input(r.node, 1, _f32(into @ W), f"{name}.rotated_weight"), 0)
    if n.is_output:
        # back to the original basis for the model's output, the norm weight folded in
        proj = out.new(f"{n.out.name}.unrotate", _f32(into))
        record(proj.name, 0)
        mm = ir.node("MatMul", [n.normed, proj], name=f"{n.out.name}.unrotate",
                     outputs=[ir.Value(name=out.fresh(f"{n.out.name}.unrotated"))])
        anchor = n.gamma_mul
        model.graph.insert_after(anchor if anchor is not None else n.normed.producer(), [mm])
        # with a LayerNorm's + beta after it, the MatMul takes gamma's place before the Add
        replaced = anchor.outputs[0] if n.beta_add is not None else n.out
        for node, idx in list(replaced.uses()):
            if node is not mm:
                node.replace_input_with(idx, mm.outputs[0])
        _take_output(model, replaced, mm.outputs[0])
        if anchor is not None:
            model.graph.remove(anchor, safe=True)
    elif n.gamma_mul is not None:
        g = n.gamma_mul
        ir.convenience.replace_all_uses_with(g.outputs[0], n.normed)
        model.graph.remove(g, safe=True)
    if n.summed is None:
        _sum_norm(model, out, n, d)


def _take_output(model: ir.Model, old: ir.Value, new: ir.Value) -> None:
    """`new` takes `old`'s place and name among the graph outputs."""
    outs = model.graph.outputs
    for i, v in enumerate(outs):
        if v is old:
            name = old.name
            outs[i] = new
            old.name = f"{name}.replaced"
            new.name = name
            new.shape, new.type = old.shape, old.type


def _sum_norm(model: ir.Model, out: _Writer, n: RMSNorm, d: int) -> None:
    """ReduceMean(x^2) -> ReduceSum(x^2) * (1/d): zeros appended to x leave it unchanged."""
    rm = n.reduce
    opset = model.opset_imports.get("", 13)
    dtype = n.x.dtype.numpy() if n.x.dtype is not None else np.float32
    if opset >= 13:
        axes = out.new(f"{rm.name or 'rmsnorm'}.axes", np.array([-1], dtype=np.int64))
        rs = ir.node("ReduceSum", [rm.inputs[0], axes], {"keepdims": 1}, name=f"{rm.name}.sum",
                     outputs=[ir.Value(name=out.fresh(f"{rm.name}.sum"))])
    else:
        rs = ir.node("ReduceSum", [rm.inputs[0]], {"keepdims": 1, "axes": [-1]}, name=f"{rm.name}.sum",
                     outputs=[ir.Value(name=out.fresh(f"{rm.name}.sum"))])
    inv = out.new(f"{rm.name or 'rmsnorm'}.inv_width", np.array(1.0 / d, dtype=dtype))
    mul = ir.node("Mul", [rs.outputs[0], inv], name=f"{rm.name}.mean",
                  outputs=[ir.Value(name=out.fresh(f"{rm.name}.mean"))])
    model.graph.insert_before(rm, [rs, mul])
    ir.convenience.replace_all_uses_with(rm.outputs[0], mul.outputs[0])
    model.graph.remove(rm, safe=True)


def _macs(model: ir.Model, shapes) -> int:
    from graphprune.analysis.cost import model_cost

    return int(model_cost(model, shapes.shapes if shapes is not None else None).macs)


# ---- the plan's record ----------------------------------------------------------------------

def plan_record(hidden: dict) -> dict:
    """The JSON record of a slice-hidden run (`Plan.hidden`): widths, the rotation as
    base64 float32 (the exact matrix the run used), and what was measured."""
    import base64

    Q = np.ascontiguousarray(hidden["rotation"], dtype="<f4")
    return {"pass": "slice-hidden", "width": list(hidden["width"]),
            "rotation": {"dtype": "float32", "shape": list(Q.shape), "base64": base64.b64encode(Q.tobytes()).decode()},
            "kept_energy": None if hidden.get("kept_energy") is None else round(hidden["kept_energy"], 6), "tokens": hidden["tokens"], "norms": hidden["norms"],
            "writers": hidden["writers"], "readers": hidden["readers"], "options": hidden["options"]}


def rotation_of(record: dict) -> np.ndarray:
    """The rotation matrix of a plan's `hidden` record."""
    import base64

    from graphprune.errors import PlanError

    try:
        r = record["rotation"]
        shape = tuple(int(x) for x in r["shape"])
        Q = np.frombuffer(base64.b64decode(r["base64"]), dtype="<f4").reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"malformed 'hidden' rotation record in the plan ({exc})") from None
    return Q.astype(np.float64)


def rotated_reference(model: ir.Model, record: dict) -> ir.Model:
    """`model` (the input, changed in place) rotated as a plan's `hidden` record says: the
    model whose slices the plan's `tensors` zero (what `check` compares against)."""
    from graphprune.passes.cleanup.dce import eliminate_dead_code

    prepare_stream(model)
    rotate(model, rotation_of(record), None)
    eliminate_dead_code(model)
    return model


# ---- the pass ----------------------------------------------------------------------------------

@register_pass
class SliceHidden(Pass):
    name = "slice-hidden"
    description = ("prune the hidden size of a pre-norm transformer (RMSNorm or LayerNorm): rotate the residual stream to its "
                   "principal directions (calibration data) and drop the trailing ones")

    def __init__(self, *, ratio: float = 0.25, round_to: int = 8, batches: int | None = None):
        kept_width(64, ratio, round_to)  # option errors at construction, not mid-pipeline
        if batches is not None and batches < 1:
            raise UsageError(f"slice-hidden: batches must be >= 1, got {batches}")
        self.ratio, self.round_to, self.batches = ratio, round_to, batches

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        # the pipeline state's fields by their keys (graphprune.workflow.state names them;
        # passes do not import the workflow)
        state = _State(ctx.results)
        if state.hidden is not None:
            raise UsageError("slice-hidden runs once per pipeline")
        if state.plan_in is not None and state.plan_in.hidden:
            return self._replay(model, state)
        calib = state.calibration
        if calib is None:
            raise UsageError("slice-hidden needs calibration data to find the stream's principal directions",
                             hint="give --calib")
        if prepare_stream(model):
            log.info("slice-hidden: LayerNorm written as RMSNorm over a centred stream (the same function)")
        stream = find_stream(model)
        d = stream.hidden
        k = kept_width(d, self.ratio, self.round_to)
        if k == d:
            log.info("slice-hidden: ratio %s keeps all %d directions", self.ratio, d)
            return False
        moment, tokens = stream_moment(model, stream, calib, self.batches)
        eig, Q = principal_basis(moment)
        Q = Q.astype(np.float32).astype(np.float64)  # the matrix the plan stores, exactly
        kept_energy = float(eig[:k].sum() / max(eig.sum(), 1e-30))
        _apply(model, state, stream, Q, k, {"tokens": tokens, "kept_energy": kept_energy,
                                            "options": dict(self.resolved_options())})
        log.info("slice-hidden: hidden %d -> %d (%.4f of the normalised stream's energy kept, %d tokens)",
                 d, k, kept_energy, tokens)
        return True

    def _replay(self, model: ir.Model, state: _State) -> bool:
        """`--plan` of a run that sliced the hidden size: the plan's rotation and width, no
        statistics; the plan's hidden slices must be exactly the ones this rebuild makes,
        and the rest of the plan (channels) replays on the sliced model."""
        from graphprune.errors import PlanError

        plan_in = state.plan_in
        rec = plan_in.hidden
        prepare_stream(model)
        stream = find_stream(model)
        Q = rotation_of(rec)
        try:
            d, k = (int(x) for x in rec["width"])
        except (KeyError, TypeError, ValueError):
            raise PlanError("malformed 'hidden' record in the plan: no width [d, k]") from None
        if Q.shape != (stream.hidden, stream.hidden) or d != stream.hidden or not 0 < k <= d:
            raise PlanError(f"the plan slices a hidden size of {d} to {k} with a {Q.shape} rotation; "
                            f"this model's hidden size is {stream.hidden}")
        slices = _apply(model, state, stream, Q, k, {k2: rec.get(k2) for k2 in ("tokens", "kept_energy", "options")})
        keys = {(t["name"], t["axis"]) for t in slices}
        listed = {(t["name"], t["axis"]): sorted(t["removed"]) for t in plan_in.tensors
                  if (t["name"], t["axis"]) in keys}
        if listed != {(t["name"], t["axis"]): t["removed"] for t in slices}:
            raise PlanError("the plan's hidden-size slices are not the ones its rotation gives on this model",
                            hint="was the plan made for another model?")
        # the rest of the plan replays as it is: everything but the hidden slices (its vocabulary
        # and experts too: a rebuilt Plan that named only some fields dropped the vocab record)
        state.plan_in = dataclasses.replace(
            plan_in, tensors=[t for t in plan_in.tensors if (t["name"], t["axis"]) not in keys], hidden={})
        return True


class _State:
    """The `results` keys this pass reads and writes, as attributes (None when absent)."""

    KEYS = ("hidden", "plan_in", "calibration", "input_shapes", "dense_model")

    def __init__(self, results: dict):
        object.__setattr__(self, "_r", results)

    def __getattr__(self, key):
        if key not in self.KEYS:
            raise AttributeError(key)
        return self._r.get(key)

    def __setattr__(self, key, value):
        if key not in self.KEYS:
            raise AttributeError(key)
        self._r[key] = value


def _apply(model: ir.Model, state: _State, stream: Stream, Q: np.ndarray, k: int, info: dict) -> list[dict]:
    """Rotate `model` into `Q`, slice it to `k` and leave the record in `state.hidden` (the
    reference the oracle masks, the plan's slices, the MACs before and after)."""
    from graphprune.ir.serialize import clone
    from graphprune.passes.cleanup.dce import eliminate_dead_code

    from graphprune.passes.pruning.plan_channels import note_input_cost

    shapes = state.input_shapes
    note_input_cost(model, state._r)  # cost targets stay fractions of the input
    macs_before = _macs(model, shapes)
    reference = clone(model)
    rotate(reference, Q, None)
    inserted: list[str] = []
    slices = rotate(model, Q, k, inserted)
    eliminate_dead_code(reference)  # a tied table's Transpose, the removed norm weights
    eliminate_dead_code(model)
    # Repairs compare against the rotated reference: the same function as the input, in the
    # basis whose trailing directions were dropped, so every layer has a target for its kept outputs.
    state.dense_model = reference
    removed = list(range(k, stream.hidden))
    activations = {(v.name, len(v.shape) - 1): removed for v in _stream_carriers(find_stream(model))
                   if v.shape is not None and v.name}
    # the projections beside a kept-whole shared table carry the hidden size between the table and
    # the stream: channel pruning must not narrow the table through them (plan_channels ignores them)
    state.hidden = {"protect": inserted, "activations": activations, "width": [stream.hidden, k], "rotation": Q.astype(np.float32),
                    "reference": reference,
                    "tensors": slices, "norms": len(stream.norms), "writers": len(stream.writers),
                    "readers": len(stream.readers), **info, "macs": [macs_before, _macs(model, shapes)]}
    return slices
