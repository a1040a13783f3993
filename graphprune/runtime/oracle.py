"""The oracle: the pruned model must equal the input model with the plan's slices zeroed.

`masked_original` zeroes every slice the plan lists in the *input* model (as read from
disk, before any normalisation); `check` runs both in ONNX Runtime on random and/or
given inputs and compares outputs with a tolerance relative to each output's scale. A model with dynamic
dims is checked at two sizes of each: the representative shapes, and one more input set in
which every dynamic dim has another size (`input_shapes.other_sizes`: batch 2, half the
width ...), since the pruned model is written with those dims dynamic. When the input model
itself cannot run at another size, that is recorded as a note (checked at one size only),
not a failure; when the pruned model cannot run where the input model does, that FAILs.

An output made by a saturating op (Softmax, Sigmoid, Tanh, HardSigmoid) is also judged on
that op's input: a model pruned hard (before repair) can have logits of 1e4 and more, where
float32 rounding alone (summation order) moves near-tied probabilities by 1e-3 — the
input model run at two ONNX Runtime optimisation levels differs that much from itself. If
the logits agree within the tolerance of their own scale, the output passes (and says so).

An output made by a Concat is also judged part by part, each on its own scale (a saturating
part on its input, as above): a detection head that concatenates pixel boxes and class
probabilities has a tensor scale of ~1e3, under which a tolerance of 1e-4 let a wrong
probability (error 0.06) pass.

The ONNX Runtime sessions and feeds it uses are `graphprune.runtime.ort`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphprune.errors import FrontendError, PlanError, UsageError, VerificationError
from graphprune.input_shapes import InputShapes
from graphprune.ir.constants import const_array, is_constant, set_const_array, values_by_name
from graphprune.ir.moe import is_moe
from graphprune.plan import Plan, check_slice
from graphprune.runtime.ort import _first_line, input_session, random_inputs, representative_shapes, session
from graphprune.runtime.positions import per_token, token_mask

log = logging.getLogger(__name__)


def _zero_slices(model: ir.Model, entries: list[dict]) -> None:
    """Zero each plan entry's slice (`{"name", "axis", "removed"}`) of a constant of `model`.
    A quantized weight (read by DequantizeLinear) is set to its zero point instead, which
    dequantizes to 0 (graphprune.ir.quant); the zero points are read before any zeroing."""
    values = values_by_name(model)
    fills = {}
    for t in entries:
        v = values.get(t["name"])
        if v is None or not is_constant(v):
            raise PlanError(f"plan lists tensor {t['name']!r}, which is not a constant of this model")
        fills[t["name"]] = _quantized_fill(v)
    for t in entries:
        v = values[t["name"]]
        arr = const_array(v).copy()
        check_slice(t, arr.shape)
        idx = [slice(None)] * arr.ndim
        idx[t["axis"]] = np.asarray(t["removed"], dtype=np.int64)
        fill = fills[t["name"]]
        arr[tuple(idx)] = 0 if fill is None else fill[tuple(idx)]
        set_const_array(v, arr)


def has_qdq(graph) -> bool:
    """A QDQ model (QuantizeLinear/DequantizeLinear) is compared at ORT's reference level
    (no graph optimisation). ORT's fused int8 kernels are not bit-exact with the ops as
    the ONNX spec defines them: a per-channel int8 CNN differs from itself between the two
    levels by whole quantisation steps, and a pruned one from its masked original likewise,
    while at the reference level they agree exactly."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph)


def _graph_of_file(path: str):
    import onnx

    return onnx.load(path, load_external_data=False).graph.node


def _disk_fills(proto, by_name: dict, base: str, names: set[str]) -> dict:
    """`_quantized_fill` on a ModelProto loaded without its external data (`base`: its folder)."""
    from onnx import helper, numpy_helper

    from graphprune.ir.quant import combined_fill, quantized_input_of

    readers: dict[str, list] = {n: [] for n in names}
    others = dict.fromkeys(names, 0)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name not in readers:
                continue
            q = quantized_input_of(node.domain, node.op_type, i)
            if q is None:
                others[name] += 1
                continue
            zp = None
            zp_i = q[1]
            if zp_i is not None and len(node.input) > zp_i and node.input[zp_i]:
                if node.input[zp_i] not in by_name:
                    raise PlanError(f"cannot mask a slice of the quantized constant {name!r}: "
                                    "its zero point is not an initializer")
                zp = numpy_helper.to_array(by_name[node.input[zp_i]], base_dir=base)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            readers[name].append((zp, q[2](attrs, len(by_name[name].dims))))
    try:
        return {n: combined_fill(n, tuple(by_name[n].dims), readers[n], others[n]) for n in names}
    except ValueError as exc:
        raise PlanError(f"cannot mask a slice of a quantized constant: {exc}") from None


def _quantized_fill(v: ir.Value) -> np.ndarray | None:
    from graphprune.ir.quant import masking_fill

    try:
        return masking_fill(v)
    except ValueError as exc:
        raise PlanError(f"cannot mask a slice of a quantized constant: {exc}") from None


def _zero_branches(model: ir.Model, plan: Plan, zero_slices: bool = True) -> None:
    """Depth pruning: the removed blocks' branch outputs become zero. A block records the
    slices whose zeroing does that (its part of the JSON `tensors`); a plan written before
    blocks were listed in `tensors` has none, and its branches are multiplied by 0.
    `zero_slices=False`: the caller zeroed the blocks' slices itself (on disk)."""
    for b in plan.blocks:
        adds = [n for n in model.graph if n.op_type == "Add" and
                {v.name for v in n.inputs if v is not None} == {b["skip"], b["branch"]}]
        if len(adds) != 1:
            raise PlanError(f"plan removes a residual block {b['skip']} + {b['branch']} this model does not have")
        if "tensors" in b:
            if zero_slices:
                _zero_slices(model, b["tensors"])
            continue
        add = adds[0]
        k = [i for i, v in enumerate(add.inputs) if v.name == b["branch"]][0]
        branch = add.inputs[k]
        zero = ir.Value(name=f"{branch.name}__zero_scale", const_value=ir.tensor(np.zeros((), dtype=
                        branch.dtype.numpy() if branch.dtype is not None else np.float32)))
        model.graph.register_initializer(zero)
        mul = ir.Node("", "Mul", [branch, zero], name=f"{add.name}__zero_branch")
        model.graph.insert_before(add, mul)
        add.replace_input_with(k, mul.outputs[0])


def masked_original(model: ir.Model, plan: Plan) -> ir.Model:
    """Zero the plan's slices (and removed blocks' branches) in `model`, in place; removed
    experts of MoE layers get their router logits at -inf (zeroing does not unroute them)."""
    plan.validate()
    _zero_branches(model, plan)
    _zero_slices(model, plan.tensors)
    if plan.experts:
        _zero_slices(model, [t for e in plan.experts for t in e["tensors"]])
        _route_around(model, plan.experts)
    return model


def _route_around(model: ir.Model, experts: list[dict]) -> None:
    """The oracle's masked original for removed experts: their router logits at -inf (in
    place; a removed expert receives no weight and is never in the top k). The expert slices
    themselves are zeroed with the rest of the plan's slices."""
    values = {o.name: o for n in model.graph for o in n.outputs}
    for e in experts:
        logits = values.get(e["logits"])
        moe = next((u.node for u in logits.uses() if is_moe(u.node)), None) if logits is not None else None
        if moe is None:
            raise PlanError(f"plan removes experts routed by {e['logits']!r}, which feeds no MoE layer of this model")
        mask = np.zeros(e["experts"], np.float32)
        mask[e["removed"]] = -np.inf
        const = ir.Value(name=f"{e['logits']}__removed_experts", const_value=ir.tensor(mask))
        const.shape, const.dtype = ir.Shape([e["experts"]]), ir.DataType.FLOAT
        model.graph.register_initializer(const)
        out = ir.Value(name=f"{e['logits']}__routed", shape=logits.shape, type=logits.type)
        add = ir.Node("", "Add", [logits, const], outputs=[out], name=f"{moe.name}__route_around")
        model.graph.insert_before(moe, add)
        moe.replace_input_with(1, out)



ATOL = 1e-6  # absolute floor of the comparison: outputs below it compare nothing


@dataclass
class OutputDiff:
    name: str
    max_abs_err: float
    scale: float
    ok: bool
    judged_on: str | None = None   # the saturating op's input, when the output was judged there
    part: str | None = None  # a Concat-made output wrong in this input of its Concat (judged on its own scale)

    def scale_text(self) -> str:
        """'(scale 0.893)', or '(scale 0.05 of its Concat part p)': what the error is relative to."""
        return f"(scale {self.scale:.3g}" + (f" of its Concat part {self.part}" if self.part else "") + ")"


@dataclass
class OracleShapes(InputShapes):
    """The shapes the oracle's random sets were made at: the representative ones (this
    InputShapes), `other`: another size of every dynamic dim when one was run, `note`: why
    not when the input model runs at no other size."""

    other: InputShapes | None = None
    note: str | None = None

    def describe(self) -> str:
        """'x: 1×3×48×320 (--input-shape), 2×3×48×160 (another size of the dynamic dims)'."""
        from graphprune.input_shapes import shape_text as dims

        parts = []
        for n, s in self.shapes.items():
            text = f"{n}: {dims(s)} ({self.sources[n]})"
            if self.other is not None and tuple(self.other.shapes.get(n, s)) != tuple(s):
                text += f", {dims(self.other.shapes[n])} (another size of the dynamic dims)"
            parts.append(text)
        text = ("; " if self.other is not None and len(parts) > 1 else ", ").join(parts)
        return text + (f" [{self.note}]" if self.note else "")


@dataclass
class OracleResult:
    ok: bool
    diffs: list[OutputDiff] = field(default_factory=list)
    runs: int = 0
    refused: str | None = None  # why nothing was really compared (no input sets, outputs below the floor)
    shapes: object = None  # OracleShapes of the random input sets (None: given inputs only)
    unpaired: str | None = None  # the pruned model records another plan's digest: never a PASS
    error: str | None = None  # the pruned model failed to run where the input model runs
    # repair passes or sparsity changed the weights after pruning (api.changed_after_pruning): not
    # the masked original by design, and a mismatch says nothing about the pruning itself
    changed_after_pruning: str | None = None
    tolerance_note: str | None = None  # a tolerance above the default, and why (check: measured rounding floor)

    @property
    def sizes(self) -> list:
        """The InputShapes the random sets were made at: the representative ones, then the
        other size of the dynamic dims when one was run."""
        if self.shapes is None:
            return []
        return [self.shapes] + ([self.shapes.other] if getattr(self.shapes, "other", None) is not None else [])

    @property
    def worst_relative(self) -> float:
        return max((d.max_abs_err / max(d.scale, 1e-12) for d in self.diffs), default=0.0)

    def summary(self) -> str:
        if self.refused:
            return f"oracle FAIL (nothing compared): {self.refused}"
        if self.error:
            return f"oracle FAIL: {self.error}"
        if self.unpaired:
            agree = "differ too" if any(not d.ok for d in self.diffs) else "agree"
            return (f"oracle FAIL: {self.unpaired}; the outputs {agree} (worst error {self.worst_relative:.2e} "
                    "of output scale)")
        if self.changed_after_pruning and not self.ok:
            return (f"oracle not applicable: {self.changed_after_pruning}; the outputs differ from the masked original by "
                    f"{self.worst_relative:.2e} of output scale, as those changes make them")
        state = "PASS" if self.ok else "FAIL"
        judged = [f"{d.name} on its logits {d.judged_on}" for d in self.diffs if d.judged_on]
        parts = [f"{d.name} in {d.part}" for d in self.diffs if d.part]
        return (f"oracle {state}: {self.runs} input set(s), worst error "
                f"{self.worst_relative:.2e} of output scale"
                + (f" (saturating outputs judged on their inputs: {', '.join(judged)})" if judged else "")
                + (f" (Concat outputs wrong in a part, on the part's own scale: {', '.join(parts)})" if parts else "")
                + (f" ({self.tolerance_note})" if self.tolerance_note else ""))


def compare_outputs(ref: list[np.ndarray], got: list[np.ndarray], names: list[str],
                    rtol: float = 1e-4, atol: float = ATOL) -> list[OutputDiff]:
    diffs = []
    for name, a, b in zip(names, ref, got, strict=True):
        a = np.asarray(a)
        b = np.asarray(b)
        if a.shape != b.shape:
            diffs.append(OutputDiff(name, float("inf"), 0.0, False))
            continue
        if a.dtype.kind in "fc":
            scale = float(np.max(np.abs(a))) if a.size else 0.0
            err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
            ok = bool(np.isfinite(err) and err <= rtol * scale + atol) and \
                bool(np.array_equal(np.isnan(a), np.isnan(b)))
        else:
            scale, err = 1.0, float(np.sum(a != b))
            ok = err == 0
        diffs.append(OutputDiff(name, err, scale, ok))
    return diffs


class _Judge:
    """The one comparison core of every oracle path (`check`, `_check_big`, `check_files`).

    `add` takes one input set's outputs of the masked original and of the pruned model:
    the graph outputs first, then the Extras (pre-activations of saturating outputs, parts of
    Concat outputs), both models exposing them. A saturating output
    is judged on its pre-activation, relative to that value's own scale: rounding that the
    op amplifies on near-tied huge logits passes, and a real difference that the op squashes
    under the absolute floor (a Sigmoid at 1e-8) fails. A comparison in which every float
    reference (pre-activation where judged there) stays below the floor compares nothing and
    is refused, as is one with no input sets."""

    def __init__(self, names: list[str], extras: Extras, rtol: float, atol: float = ATOL):
        self.names, self.extras, self.rtol, self.atol = names, extras, rtol, atol
        self.worst: dict[str, OutputDiff] = {}
        self.runs = 0
        self.signal = False  # some compared value was above the floor, or exact (non-float)
        self.shapes = None   # OracleShapes of the random sets, for the refusal message
        self.error: str | None = None

    @property
    def failed(self) -> bool:
        return any(not d.ok for d in self.worst.values())

    def add(self, ref: list, got: list) -> None:
        n = len(self.names)
        if not all(np.all(np.isfinite(r)) for r in ref[:n] if np.asarray(r).dtype.kind == "f"):
            raise FrontendError(
                "the masked original (the input model with the removed channels zeroed) gives NaN/Inf outputs "
                "on these inputs, so the oracle cannot compare anything",
                hint="when the input model is finite on them, zeroing a channel made an inf (0 to a negative "
                     "power, log 0): please report the model; else check its weights, or give real inputs with --inputs")
        diffs = compare_outputs(ref[:n], got[:n], self.names, rtol=self.rtol, atol=self.atol)
        extra_names = self.extras.names
        extra = dict(zip(extra_names, compare_outputs(ref[n:], got[n:], extra_names, rtol=self.rtol, atol=self.atol),
                         strict=True))
        for k, d in enumerate(diffs):
            p = extra.get(self.extras.logits.get(d.name))
            if p is not None and (p.ok or d.ok):  # judged on the logits (a failing output keeps its own diff)
                diffs[k] = OutputDiff(d.name, p.max_abs_err, p.scale, p.ok, judged_on=p.name)
            bad = [extra[part] for part in self.extras.parts.get(d.name, ()) if not extra[part].ok]
            if bad and diffs[k].ok:  # a Concat's part wrong on its own scale: the output is wrong
                b = bad[0]
                diffs[k] = OutputDiff(d.name, b.max_abs_err, b.scale, False, part=b.name)
            judged = diffs[k]
            if judged.scale > self.atol or np.asarray(ref[k]).dtype.kind not in "fc":
                self.signal = True
        for d in diffs:
            w = self.worst.get(d.name)
            if w is None or (w.ok and (not d.ok or d.max_abs_err / max(d.scale, 1e-12) >
                                       w.max_abs_err / max(w.scale, 1e-12))):
                self.worst[d.name] = d
        self.runs += 1

    def crashed(self, message: str) -> None:
        """The pruned model could not be run on an input set the input model ran: a FAIL."""
        self.error = message
        for name in self.names:
            self.worst[name] = OutputDiff(name, float("inf"), 0.0, False)

    def result(self) -> OracleResult:
        diffs = list(self.worst.values())
        res = OracleResult(ok=all(d.ok for d in diffs) and self.error is None, diffs=diffs, runs=self.runs,
                           shapes=self.shapes, error=self.error)
        where = f" at inputs {self.shapes.short()}" if self.shapes is not None else ""
        if self.runs == 0:
            res.ok, res.refused = False, "no input sets (give --inputs, or --random N with N >= 1)"
        elif res.ok and not self.signal and diffs:
            res.ok = False
            res.refused = (f"reference outputs are all below {self.atol:g}{where} (so any model would match); "
                           "pass --inputs with real data or --input-shape with a realistic size")
        return res


def checked_rtol(rtol) -> float:
    """`rtol` as a float, or a UsageError: an infinite tolerance passed a model checked
    against another run's plan (gp.check, rtol=inf), and NaN or a negative one judged
    nothing in words that meant anything."""
    import math
    import numbers

    value = float(rtol) if isinstance(rtol, numbers.Real) and not isinstance(rtol, bool) else math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"rtol must be a finite number >= 0, got {rtol!r}", hint="the default is 1e-4")
    return value


def given_input_sets(inputs) -> list[dict]:
    """The oracle's given input sets (`inputs`) as a list of feed dicts: a list (or tuple) of
    dicts or arrays, or one dict or array (an array: the model's only input). Anything else
    is a UsageError (an array given alone failed as 'truth value ... ambiguous', a dict's
    keys were read as input sets)."""
    if inputs is None:
        return []
    if isinstance(inputs, (dict, np.ndarray)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(f, (dict, np.ndarray)) for f in inputs):
        raise UsageError(f"inputs: expected a list of feed dicts ({{input name: array}}), got {type(inputs).__name__}",
                         hint="e.g. inputs=[{'x': batch}]; an array alone is taken for a one-input model's input")
    return [f if isinstance(f, dict) else {"(array)": f} for f in inputs]


class _Given(dict):
    """An input set the user gave (--inputs): a run that fails on it is the user's to fix."""


def fit_given(feeds: dict, sess) -> dict:
    """A given input set (--inputs) named as the model's inputs: one array for a one-input
    model is that input (as --calib reads it); a missing or unknown name is a usage error
    in words (it was ONNX Runtime's message, as if the model were at fault: exit 4)."""
    names = [i.name for i in sess.get_inputs()]
    if len(feeds) == 1 and len(names) == 1 and names[0] not in feeds:
        return _Given({names[0]: next(iter(feeds.values()))})
    missing, unknown = [n for n in names if n not in feeds], [k for k in feeds if k not in names]
    if missing or unknown:
        raise UsageError("--inputs: " + "; ".join(
            ([f"no array for model input(s) {missing}"] if missing else [])
            + ([f"array(s) {unknown} name no input of the model"] if unknown else [])),
            hint=f"the model's inputs: {names}; arrays given: {sorted(feeds)}")
    return _Given(feeds)


def _feed_sets(inputs, n_random: int, seed: int, sess, shapes):
    """The given input sets, then `n_random` random ones made one at a time (streamed)."""
    yield from (fit_given(f, sess) for f in inputs or [])
    for k in range(max(n_random, 0)):
        yield random_inputs(sess, seed + k, shapes=shapes)


def _run_ref(sess, feeds) -> list:
    try:
        return sess.run(None, feeds)
    except Exception as exc:
        if isinstance(feeds, _Given):  # the user's arrays, not the model, are what does not fit
            takes = ", ".join(f"{i.name}: {i.type} {i.shape}" for i in sess.get_inputs())
            given = ", ".join(f"{k}: {np.asarray(v).dtype} {list(np.shape(v))}" for k, v in feeds.items())
            raise UsageError(f"--inputs: the input model does not run on them: {_two_lines(exc)}",
                             hint=f"the model takes {takes}; given {given}") from None
        raise FrontendError(f"ONNX Runtime fails to run the input model: {_first_line(exc)}",
                            hint="check the inputs (--inputs, --input-shape; --calib and --calib-batch for "
                                 "calibration data) or the model itself") from None


def _two_lines(exc: Exception) -> str:
    """ONNX Runtime's message, its second line too ('... for the following indices' / 'index: 0 Got: 16 Expected: 1')."""
    return " ".join(str(exc).strip().splitlines()[:2])[:500] or type(exc).__name__


def _pruned_session(model, reference: bool = False):
    try:
        return session(model, reference=reference)
    except Exception as exc:
        raise VerificationError(f"ONNX Runtime cannot load the pruned model: {_first_line(exc)}") from exc


def check(original: ir.Model, pruned: ir.Model, plan: Plan, *, inputs: list[dict] | None = None,
          n_random: int = 2, seed: int = 0, rtol: float = 1e-4, dim_value: int | None = None,
          dims: dict | None = None, shapes=None, calib: dict | None = None) -> OracleResult:
    """Run the oracle (`_check`). A mismatch below ROUNDING_CAP of the output scale is
    judged once more against what float32 rounding alone does to this model on these inputs
    (`rounding_floor` of the masked original): within ROUNDING_FACTOR times that, it is
    rounding, and the result PASSes saying so (`tolerance_note`). Most models' floor is
    ~1e-7, so their tolerance stays `rtol`; an LLM on the oracle's random tokens (0 and 1,
    degenerate attention) moves ~1.5e-4 of its output scale under one-ulp weight noise
    (SmolLM2-135M), above the 1e-4 default, so removing zero terms from its sums can exceed
    it. A wrong pruning is off by far more than either.

    A quantized (QDQ) model that misses is first judged again, exactly (at `rtol`), with
    every Q/DQ scale of both models rounded to a power of two (`power_of_two_scales`): its
    float sums then round nowhere, so the one-step flips that summation order makes at a
    QuantizeLinear vanish, while a wrong plan still differs; the scales themselves, which
    that rounding blurs, must be the input's sliced as planned (`_scales_as_planned`). An
    ORT-quantized ResNet-18 pruned exactly was one output quantisation step (8.5e-3 of its
    scale) from its masked original, and equal to it with power-of-two scales. (Not on the
    file oracle of models over BIG_MODEL_BYTES.)"""
    rtol, inputs = checked_rtol(rtol), given_input_sets(inputs)
    kw = dict(inputs=inputs, n_random=n_random, seed=seed, dim_value=dim_value, dims=dims, shapes=shapes, calib=calib)
    res = _check(original, pruned, plan, rtol=rtol, **kw)
    from graphprune.ir.serialize import BIG_MODEL_BYTES, clone, model_nbytes

    big = model_nbytes(original) > BIG_MODEL_BYTES
    if _numeric_miss(res) and not big and has_qdq(original.graph):
        exact = _check(original, pruned, plan, rtol=rtol, power_of_two=True, **kw)
        if exact.ok and _scales_as_planned(original, pruned, plan):
            return _judged_exactly(exact, res)
    if not _rejudge(res, rtol):
        return res
    if big:  # no in-memory copies of a large model: on disk
        floors = _big_model_floors(original, plan, inputs=inputs, shapes=shapes, seed=seed)
    else:
        masked = clone(original)
        masked_original(masked, plan)
        floors = rounding_floors(masked, inputs=inputs, shapes=shapes, seed=seed)
    tol = ROUNDING_FACTOR * max(floors.values(), default=0.0)
    if tol <= rtol:
        return res
    again = _check(original, pruned, plan, rtol=min(tol, ROUNDING_CAP), **kw)
    return _each_within_its_floor(again, floors, rtol)


def _numeric_miss(res: OracleResult) -> bool:
    """It failed on a numeric mismatch: not a refusal, an error or a pass."""
    return not (res.ok or res.error or res.refused or not res.diffs)


def _rejudge(res: OracleResult, rtol: float) -> bool:
    """Whether a result may be judged again against the rounding floor: it failed on a
    numeric mismatch that is below ROUNDING_CAP."""
    return _numeric_miss(res) and res.worst_relative <= ROUNDING_CAP


def _scales_as_planned(original: ir.Model, pruned: ir.Model, plan: Plan) -> bool:
    """Every QuantizeLinear / DequantizeLinear of `pruned` reads as its scale a constant equal,
    bit for bit, to the scale the same-named node of `original` reads, with the plan's slices
    of that tensor removed: what the power-of-two run cannot see (two scales in one rounding
    cell look alike there, and a scale computed by an Identity is not rounded at all). A node
    it cannot match by name and op, or a scale that is not a constant on either side, fails.
    Compared node by node, not tensor by tensor: a node rewired to another existing scale of
    the same cell passed a check by tensor name."""
    from graphprune.ir.quant import qdq_nodes

    def by_name(model) -> dict | None:  # None: names missing or repeated, nodes cannot be matched
        nodes = qdq_nodes(model)
        named = {n.name: n for n in nodes}
        return named if len(named) == len(nodes) and "" not in named and None not in named else None

    ref_nodes, new_nodes = by_name(original), by_name(pruned)
    if ref_nodes is None or new_nodes is None:
        return False
    slices: dict[str, list[dict]] = {}
    for t in plan.tensors:
        slices.setdefault(t["name"], []).append(t)
    for name, node in new_nodes.items():
        ref = ref_nodes.get(name)
        if ref is None or ref.op_type != node.op_type or len(ref.inputs) < 2 or len(node.inputs) < 2:
            return False
        want, got = const_array(ref.inputs[1]), const_array(node.inputs[1])
        if want is None or got is None:
            return False
        for t in slices.get(ref.inputs[1].name, []):
            want = np.delete(want, np.asarray(t["removed"], dtype=np.int64), axis=t["axis"])
        if want.dtype != got.dtype or not np.array_equal(want, got):
            return False
    return True


def _judged_exactly(exact: OracleResult, as_is: OracleResult) -> OracleResult:
    """The PASS of a QDQ model judged with power-of-two scales (`power_of_two_scales`),
    saying how far apart the two models are at their own scales."""
    worst = max(as_is.diffs, key=lambda d: d.max_abs_err / max(d.scale, 1e-12))
    exact.tolerance_note = (
        "quantized model: judged with every Q/DQ scale rounded to a power of two in both models, where "
        "ONNX Runtime's float sums are exact, and the pruned model's scales checked to be the input's, "
        "sliced as planned; at the model's own scales they differ by up to "
        f"{as_is.worst_relative:.2e} of output scale ({worst.name} err {worst.max_abs_err:.3g}), "
        "from float rounding before a QuantizeLinear, not from the pruning")
    return exact


def _allowed(floors: dict[str, float], name: str, rtol: float) -> float:
    """An output's tolerance: `rtol`, or ROUNDING_FACTOR times its own rounding floor (at
    most ROUNDING_CAP) when that is larger."""
    return max(rtol, min(ROUNDING_FACTOR * floors.get(name, 0.0), ROUNDING_CAP))


def _each_within_its_floor(res: OracleResult, floors: dict[str, float], rtol: float) -> OracleResult:
    """`res` (judged at the loosest output's tolerance) with every output held to its own:
    one rounding-sensitive output (x*1e6 - x*1e6 + x) loosened the tolerance of every
    output, and a wrongly pruned one beside it passed."""
    for k, d in enumerate(res.diffs):
        if d.ok and d.max_abs_err > _allowed(floors, d.name, rtol) * d.scale + ATOL:
            res.diffs[k] = OutputDiff(d.name, d.max_abs_err, d.scale, False, judged_on=d.judged_on, part=d.part)
            res.ok = False
    res.tolerance_note = _tolerance_note(floors, rtol)
    return res


def _tolerance_note(floors: dict[str, float], rtol: float) -> str:
    loose = {n: _allowed(floors, n, rtol) for n in floors if _allowed(floors, n, rtol) > rtol}
    shown = ", ".join(f"{n} {t:.2e}" for n, t in sorted(loose.items(), key=lambda kv: -kv[1])[:3])
    return (f"tolerance per output, {ROUNDING_FACTOR}x what one-ulp weight changes make of it on these inputs "
            f"(at most {ROUNDING_CAP:g}, at least {rtol:g}): {shown}" + (" ..." if len(loose) > 3 else ""))


def _check(original: ir.Model, pruned: ir.Model, plan: Plan, *, inputs: list[dict] | None = None,
           n_random: int = 2, seed: int = 0, rtol: float = 1e-4, dim_value: int | None = None,
           dims: dict | None = None, shapes=None, calib: dict | None = None,
           power_of_two: bool = False) -> OracleResult:
    """Run the oracle once at `rtol`. `original` is the input model as read (it is not
    modified; nor is `pruned`). `power_of_two`: both models' Q/DQ scales rounded to powers
    of two first (`graphprune.ir.quant.power_of_two_scales`). Random
    input sets are made at the representative shapes (`graphprune.input_shapes`): `shapes`
    (an InputShapes, or {input: shape} from --input-shape), else `calib` ({input: array},
    one calibration batch), else static dims, else a default the model runs; they are
    streamed (one set made, run, compared, dropped), and the first failing set ends it."""
    from graphprune.ir.serialize import BIG_MODEL_BYTES, clone, model_nbytes

    if model_nbytes(original) > BIG_MODEL_BYTES:
        return _check_big(original, pruned, plan, inputs=inputs, n_random=n_random, seed=seed, rtol=rtol,
                          dim_value=dim_value, dims=dims, shapes=shapes, calib=calib)
    masked = clone(original)
    masked_original(masked, plan)
    names = [o.name for o in masked.graph.outputs]
    if power_of_two:
        from graphprune.ir.quant import power_of_two_scales

        pruned = clone(pruned)
        power_of_two_scales(masked)
        power_of_two_scales(pruned)
    extras = _extra_values(masked, pruned)
    if extras:  # logits and Concat parts (module docstring): both models expose them
        masked = _with_outputs(masked, extras.names, [])
        pruned = _with_outputs(pruned if power_of_two else clone(pruned), extras.names, [])
    reference = has_qdq(masked.graph)
    s_ref = input_session(_as_written(masked), what="the input model (with the plan's slices zeroed)",
                          reference=reference)
    s_new = _pruned_session(_as_written(pruned), reference)
    judge = _Judge(names, extras, rtol)
    if n_random > 0:
        judge.shapes = _oracle_shapes(s_ref, shapes, calib, dims, dim_value)
        _key_lengths(masked, judge.shapes)
    for feeds in _feed_sets(inputs, n_random, seed, s_ref, judge.shapes):
        judge.add(_run_ref(s_ref, feeds), s_new.run(None, feeds))
        if judge.failed:
            break
    if n_random > 0 and not judge.failed:
        other_ref = _pick_other_size(s_ref, judge.shapes, seed + n_random)
        if other_ref is not None:
            _judge_other_size(judge, s_new, random_inputs(s_ref, seed + n_random, shapes=judge.shapes.other),
                              other_ref)
    return judge.result()


ROUNDING_FACTOR = 10  # a rewrite may round up to this many times worse than one ulp on every weight
ROUNDING_CAP = 1e-2  # never a tolerance above this share of the output scale, whatever the floor


def rounding_floor(original: ir.Model, *, inputs: list[dict] | None = None, shapes=None, seed: int = 0,
                   per_output: bool = False):
    """How far `original`'s outputs move (worst relative error, on the oracle's input sets)
    when every float weight moves by one ulp (random sign, seeded): what float32 rounding
    alone does to this model on these inputs. Real LLMs on the oracle's degenerate random
    tokens amplify it to ~1e-4 of the output scale (SmolLM2-135M: 1.4e-4). `per_output`:
    {output: its own floor} instead of the worst."""
    from graphprune.ir.serialize import clone

    noisy = clone(original)
    rng = np.random.default_rng(seed)
    for v in noisy.graph.initializers.values():
        a = const_array(v)
        if a is not None and a.dtype == np.float32 and a.size > 1:
            set_const_array(v, _ulp_noise(a, rng))
    res = _check(original, noisy, Plan(tensors=[], groups=[]), inputs=inputs, shapes=shapes, seed=seed, rtol=1e9)
    floors = _relative(res)
    return floors if per_output else max(floors.values(), default=0.0)


def rounding_floors(original: ir.Model, **kw) -> dict[str, float]:
    """`rounding_floor` per output: {output: how far one-ulp weight noise moves it}."""
    return rounding_floor(original, per_output=True, **kw)


def _relative(res: OracleResult) -> dict[str, float]:
    return {d.name: d.max_abs_err / max(d.scale, 1e-12) for d in res.diffs}


def _ulp_noise(a: np.ndarray, rng) -> np.ndarray:
    """`a` (float32) with every element moved by one ulp, random sign: the perturbation
    `rounding_floor` measures a model's sensitivity to."""
    return (a * (1 + rng.choice(np.float32([-1, 1]), a.shape) * np.float32(2.0 ** -23))).astype(np.float32)


def rounding_floor_files(ref_path: str, *, inputs: list[dict] | None = None, shapes=None, seed: int = 0,
                         calib: dict | None = None, per_output: bool = False):
    """`rounding_floor` of a model on disk (a large one): a copy with one-ulp noise on every
    float32 weight is written beside it in a temporary folder (the weights through memory
    maps, so memory stays small; the disk holds one more copy while it runs), and both are
    run one session at a time."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="graphprune-floor-") as tmp:
        noisy = _noisy_copy_on_disk(ref_path, tmp, seed)
        names = [o.name for o in onnx.load(ref_path, load_external_data=False).graph.output]
        res = _check_one_session_at_a_time(ref_path, noisy, names, Extras(), inputs=inputs, n_random=2, seed=seed,
                                           rtol=1e9, shapes=shapes, calib=calib)
    floors = _relative(res)
    return floors if per_output else max(floors.values(), default=0.0)


def _noisy_copy_on_disk(src: str, dst_dir: str, seed: int) -> str:
    """The model at `src` with `_ulp_noise` on every float32 initializer of more than one
    element, written to `dst_dir` (external data copied and changed in place)."""
    import os

    import onnx
    from onnx import numpy_helper

    proto = onnx.load(src, load_external_data=False)
    base = os.path.dirname(os.path.abspath(src))
    _copy_external_files(proto, base, dst_dir)
    rng = np.random.default_rng(seed)
    for t in proto.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT or int(np.prod(t.dims)) <= 1:
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            arr = np.memmap(os.path.join(dst_dir, info["location"]), dtype=np.float32, mode="r+",
                            offset=int(info.get("offset", 0)), shape=tuple(t.dims))
            arr[...] = _ulp_noise(np.asarray(arr), rng)
            arr.flush()
            del arr
        else:
            t.CopyFrom(numpy_helper.from_array(_ulp_noise(numpy_helper.to_array(t), rng), t.name))
    out = os.path.join(dst_dir, "noisy.onnx")
    onnx.save(proto, out)
    return out


def _copy_external_files(proto, base: str, dst_dir: str) -> None:
    """Copy the external data files `proto` (loaded from folder `base`) names into `dst_dir`."""
    import os
    import shutil

    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    for loc in locations:
        os.makedirs(os.path.dirname(os.path.join(dst_dir, loc)) or dst_dir, exist_ok=True)
        shutil.copyfile(os.path.join(base, loc), os.path.join(dst_dir, loc))


def _big_model_floors(original: ir.Model, plan: Plan, *, inputs, shapes, seed: int) -> dict[str, float]:
    """The rounding floors of a large in-memory model's masked original, measured on disk."""
    import os
    import tempfile

    from graphprune.frontends.onnx import save_onnx
    from graphprune.ir.serialize import clone

    with tempfile.TemporaryDirectory(prefix="graphprune-floor-") as tmp:
        path = os.path.join(tmp, "original.onnx")
        save_onnx(clone(original), path, external_data=True)
        masked_dir = os.path.join(tmp, "masked")
        os.makedirs(masked_dir)
        return rounding_floor_files(masked_copy_on_disk(path, plan, masked_dir), inputs=inputs, shapes=shapes,
                                    seed=seed, per_output=True)


def _pick_other_size(s_ref, shapes, seed: int):
    """Find another size of every dynamic dim that the input model (`s_ref`, masked) runs
    at (`input_shapes.other_sizes`): all dims at their first, then their second candidate,
    else dim by dim, keeping what runs. Record it on `shapes` (an OracleShapes: `other`,
    and `note` for dims checked at one size only) and return the input model's outputs
    there, or None (a static model, or nothing ran)."""
    from graphprune.input_shapes import dynamic_dims, other_sizes, specs_of_session

    specs = specs_of_session(s_ref)
    dims = dynamic_dims(specs)
    if not dims:
        return None
    tried: dict = {}  # InputShapes.short() -> outputs, or the reason it did not run

    def run(choice):
        other = other_sizes(specs, shapes, choice)
        if other is None:
            return None, None
        key = other.short()
        if key not in tried:
            try:
                ref = s_ref.run(None, random_inputs(s_ref, seed, shapes=other))
                ok = all(np.all(np.isfinite(r)) for r in ref if np.asarray(r).dtype.kind == "f")
                tried[key] = ref if ok else "NaN/Inf outputs"
            except Exception as exc:  # the input model's own limit at that size, not a pruning failure
                tried[key] = _first_line(exc)
        got = tried[key]
        return (other, got) if not isinstance(got, str) else (None, None)

    for candidate in (0, 1):
        other, ref = run(candidate)
        if other is not None:
            shapes.other = other
            return ref
    accepted: dict = {}
    best = (None, None)
    for dim in dims:  # dim by dim: keep each change the input model runs with
        for candidate in (0, 1):
            other, ref = run({**accepted, dim: candidate})
            if other is not None:
                accepted[dim] = candidate
                best = (other, ref)
                break
    fixed = [d for d in dims if d not in accepted]
    why = next((v for v in reversed(tried.values()) if isinstance(v, str)), "")[:200]
    if fixed:
        shapes.note = (f"{', '.join(fixed)} checked at one size only: the input model does not run at other sizes "
                       f"of {'it' if len(fixed) == 1 else 'them'} either ({why})")
        log.info("oracle: %s", shapes.note)
    shapes.other = best[0]
    return best[1]


def _judge_other_size(judge: _Judge, s_new, feeds: dict, ref: list) -> None:
    try:
        got = s_new.run(None, feeds)
    except Exception as exc:
        judge.crashed(f"the pruned model does not run at {judge.shapes.other.short()}, where the input model "
                      f"does: {_first_line(exc)}")
        return
    judge.add(ref, got)


def _key_lengths(model: ir.Model, shapes: OracleShapes | None) -> None:
    """An integer graph input read as an Attention's nonpad_kv_seqlen (the valid key positions
    of each batch row): random 0s and 1s leave every query at most one key, whose softmax
    weight is 1 whatever the scores, so a model with its scores wrong passed (adversarial
    probe: a wrong scale, PASS with error 0). Drawn from [0, T] instead, T the key positions:
    a static dim, or the dim of an input with the same name (so the other size follows)."""
    if shapes is None:
        return
    inputs = {v.name for v in model.graph.inputs}
    found = [n for n in model.graph if n.op_type == "Attention" and n.domain in ("", "ai.onnx")
             and len(n.inputs) > 6 and n.inputs[6] is not None and n.inputs[6].name in inputs]
    if any(n.inputs[1] is not None and n.inputs[1].shape is None for n in found):
        from graphprune.frontends.onnx import infer_shapes

        infer_shapes(model, warn=False)  # (the oracle's own copy: a model as read has no inner shapes)
    for node in found:
        lengths, k = node.inputs[6], node.inputs[1]
        if k is None or k.shape is None or len(k.shape) < 2:
            continue
        t = k.shape[-2]
        if isinstance(t, int):
            shapes.int_high[lengths.name] = t + 1
            continue
        named = next(((v.name, j) for v in model.graph.inputs if v.shape is not None
                      for j, d in enumerate(v.shape) if isinstance(d, ir.SymbolicDim) and d == t), None)
        if named is not None:
            shapes.int_high[lengths.name] = named


def _oracle_shapes(sess, shapes, calib, dims, dim_value):
    if not isinstance(shapes, InputShapes):
        shapes = representative_shapes(sess, user=shapes, calib=calib, dims=dims, dim_value=dim_value)
    return OracleShapes(dict(shapes.shapes), dict(shapes.sources), dict(shapes.int_high))


_SATURATING = ("Softmax", "Sigmoid", "Tanh", "HardSigmoid")
_PASS_THROUGH = ("Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


@dataclass
class Extras:
    """Values the oracle compares besides the graph outputs, which both models expose by
    name: `logits`, output -> the input of the saturating op that makes it; `parts`,
    output -> the inputs of the Concat that makes it (a saturating part by its input)."""

    logits: dict[str, str] = field(default_factory=dict)
    parts: dict[str, list[str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Every extra value once, in the order they are appended as outputs."""
        return list(dict.fromkeys([*self.logits.values(), *(p for ps in self.parts.values() for p in ps)]))

    def __bool__(self) -> bool:
        return bool(self.logits or self.parts)


def _std(node: ir.Node | None) -> bool:
    return node is not None and node.domain in ("", "ai.onnx")


def _maker(v: ir.Value | None) -> ir.Node | None:
    """The node that computes `v`, through ops that only move elements."""
    node = v.producer() if v is not None else None
    while _std(node) and node.op_type in _PASS_THROUGH:
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    return node


def _extra_values(ref: ir.Model, pruned: ir.Model) -> Extras:
    """The Extras of `ref`'s outputs, for the values `pruned` has by the same name."""
    have = {v.name for n in pruned.graph for v in n.outputs if v is not None}
    outputs = {v.name for v in ref.graph.outputs}

    def comparable(v: ir.Value | None) -> bool:
        return v is not None and v.name in have and v.name not in outputs and v.producer() is not None

    def judged_value(v: ir.Value) -> ir.Value:
        node = _maker(v)
        return node.inputs[0] if _std(node) and node.op_type in _SATURATING and comparable(node.inputs[0]) else v

    extras = Extras()
    for out in ref.graph.outputs:
        node = _maker(out)
        if _std(node) and node.op_type in _SATURATING and comparable(node.inputs[0]):
            extras.logits[out.name] = node.inputs[0].name
        elif _std(node) and node.op_type == "Concat" and len(node.inputs) > 1:
            parts = [judged_value(v) for v in node.inputs]
            if all(comparable(v) for v in parts):
                extras.parts[out.name] = [v.name for v in parts]
    return extras


def _with_outputs(model: ir.Model, names, saved: list | None = None) -> ir.Model:
    """`model` (modified) with the named values as extra graph outputs, their shapes
    cleared (appended to `saved` as (value, shape) for the caller to restore): a declared
    output shape at the representative size is folded by ONNX Runtime into Shape ops,
    which would make the model wrong at the oracle's other size."""
    values = {v.name: v for n in model.graph for v in n.outputs if v is not None}
    for name in names:
        v = values[name]
        if saved is not None:
            saved.append((v, v.shape))
        v.shape = None
        model.graph.outputs.append(v)
    return model


def _as_written(model: ir.Model) -> bytes:
    """`model` serialised as `save_onnx` writes it, without its intermediate shapes
    (`to_proto`): the oracle must run what is written."""
    from graphprune.ir.serialize import to_proto

    return to_proto(model).SerializeToString()


def _check_big(original: ir.Model, pruned: ir.Model, plan: Plan, *, inputs, n_random, seed, rtol, dim_value,
               dims, shapes=None, calib=None) -> OracleResult:
    """Models over ~1.5 GB: masked original and pruned model go through files with external
    data, and their ORT sessions live one after the other, so peak memory stays near one
    model's size. `original` is modified (slices zeroed) and should be a lazily loaded copy."""
    import tempfile
    from pathlib import Path

    from graphprune.frontends.onnx import save_onnx

    masked_original(original, plan)
    extras = _extra_values(original, pruned)
    names = [o.name for o in original.graph.outputs]
    saved: list = []
    if extras:
        _with_outputs(original, extras.names, saved)
        _with_outputs(pruned, extras.names, saved)
    try:
        with tempfile.TemporaryDirectory(prefix="graphprune-oracle-") as tmp:
            ref_path, new_path = Path(tmp) / "masked.onnx", Path(tmp) / "pruned.onnx"
            save_onnx(original, ref_path, external_data=True)
            save_onnx(pruned, new_path, external_data=True)
            return _check_one_session_at_a_time(str(ref_path), str(new_path), names, extras, inputs=inputs,
                                                key_lengths_of=original,
                                                n_random=n_random, seed=seed, rtol=rtol, shapes=shapes,
                                                calib=calib, dims=dims, dim_value=dim_value)
    finally:
        if extras:  # the callers' models get their outputs (and those values their shapes) back
            for m in (original, pruned):
                del m.graph.outputs[len(names):]
            for v, shape in saved:
                v.shape = shape


class _InputsOf:
    def __init__(self, sess):
        self._inputs = sess.get_inputs()

    def get_inputs(self):
        return self._inputs


def _check_one_session_at_a_time(ref_path: str, new_path: str, names: list[str], extras: Extras, *, inputs,
                                 key_lengths_of: ir.Model | None = None,
                                 n_random, seed, rtol, shapes=None, calib=None, dims=None,
                                 dim_value=None) -> OracleResult:
    """The large-model loop: the masked original's outputs for every input set first (the
    sets are streamed, and made again from their seeds for the pruned model, so only the
    reference outputs are kept), then the pruned model's session."""
    import gc

    reference = has_qdq(_graph_of_file(ref_path))
    s_ref = input_session(ref_path, what="the input model (with the plan's slices zeroed)", reference=reference)
    judge = _Judge(names, extras, rtol)
    if n_random > 0:
        judge.shapes = _oracle_shapes(s_ref, shapes, calib, dims, dim_value)
        if key_lengths_of is not None:  # (the in-memory model the file was written from)
            _key_lengths(key_lengths_of, judge.shapes)
    refs = [_run_ref(s_ref, feeds) for feeds in _feed_sets(inputs, n_random, seed, s_ref, judge.shapes)]
    other_ref = _pick_other_size(s_ref, judge.shapes, seed + n_random) if n_random > 0 else None
    input_meta = _InputsOf(s_ref)  # random_inputs needs only the input list, not the session
    del s_ref
    gc.collect()
    s_new = _pruned_session(new_path, reference)
    for feeds, ref in zip(_feed_sets(inputs, n_random, seed, input_meta, judge.shapes), refs, strict=True):
        judge.add(ref, s_new.run(None, feeds))
        if judge.failed:
            break
    if other_ref is not None and not judge.failed:
        _judge_other_size(judge, s_new, random_inputs(input_meta, seed + n_random, shapes=judge.shapes.other),
                          other_ref)
    del s_new
    return judge.result()


def masked_copy_on_disk(src: str, plan: Plan, dst_dir: str) -> str:
    """The masked original of a large model, built on disk: its external data files are
    copied and the plan's slices zeroed through memory maps, so memory stays small."""
    import os

    import onnx
    from onnx import helper, numpy_helper

    plan.validate()
    proto = onnx.load(src, load_external_data=False)
    base = os.path.dirname(os.path.abspath(src))
    _copy_external_files(proto, base, dst_dir)
    by_name = {t.name: t for t in proto.graph.initializer}
    entries = plan.tensors + plan.block_tensors()
    for entry in entries:
        if entry["name"] not in by_name:
            raise PlanError(f"plan lists tensor {entry['name']!r}, which is not an initializer of this model")
        check_slice(entry, by_name[entry["name"]].dims)
    fills = _disk_fills(proto, by_name, base, {e["name"] for e in entries})  # read from src: before any zeroing
    for entry in entries:
        t = by_name[entry["name"]]
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        index = [slice(None)] * len(t.dims)
        index[entry["axis"]] = np.asarray(entry["removed"], dtype=np.int64)
        fill = fills.get(t.name)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            arr = np.memmap(os.path.join(dst_dir, info["location"]), dtype=dtype, mode="r+",
                            offset=int(info.get("offset", 0)), shape=tuple(t.dims))
            arr[tuple(index)] = 0 if fill is None else fill[tuple(index)]
            arr.flush()
            del arr
        else:
            arr = numpy_helper.to_array(t).copy()
            arr[tuple(index)] = 0 if fill is None else fill[tuple(index)]
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    out = os.path.join(dst_dir, "masked.onnx")
    if plan.blocks or plan.experts:
        model = ir.serde.deserialize_model(proto)
        if plan.blocks:
            _zero_branches(model, plan, zero_slices=False)  # the blocks' slices: zeroed above, on disk
        if plan.experts:  # removed experts routed to by nothing (their weights then never count)
            _route_around(model, plan.experts)
        proto = ir.serde.serialize_model(model)
    onnx.save(proto, out)
    return out


def check_files(src: str, pruned_path: str, plan: Plan, *, inputs: list[dict] | None = None, n_random: int = 2,
                seed: int = 0, rtol: float = 1e-4, shapes=None, calib: dict | None = None) -> OracleResult:
    """The oracle for models on disk (large ones): masked original built on disk, the two
    ORT sessions one after the other (`_check_one_session_at_a_time`). A mismatch below
    ROUNDING_CAP is judged again against the masked original's rounding floor, measured on
    disk (`rounding_floor_files`), as `check` does in memory."""
    import tempfile

    rtol, inputs = checked_rtol(rtol), given_input_sets(inputs)
    with tempfile.TemporaryDirectory(prefix="graphprune-oracle-") as tmp:
        ref_path = masked_copy_on_disk(src, plan, tmp)
        kw = dict(inputs=inputs, n_random=n_random, seed=seed, shapes=shapes, calib=calib)
        res = _check_masked_file(ref_path, pruned_path, rtol=rtol, **kw)
        if not _rejudge(res, rtol):
            return res
        floors = rounding_floor_files(ref_path, inputs=inputs, shapes=shapes, seed=seed, calib=calib, per_output=True)
        tol = ROUNDING_FACTOR * max(floors.values(), default=0.0)
        if tol <= rtol:
            return res
        again = _check_masked_file(ref_path, pruned_path, rtol=min(tol, ROUNDING_CAP), **kw)
        return _each_within_its_floor(again, floors, rtol)


def _check_masked_file(ref_path: str, pruned_path: str, *, inputs, n_random, seed, rtol, shapes, calib) -> OracleResult:
    """One run of the file oracle at `rtol` against the masked original at `ref_path`, which
    is left as it is (a copy beside it gets the extra outputs: logits, Concat parts)."""
    import os
    import tempfile

    import onnx

    ref_proto = onnx.load(ref_path, load_external_data=False)
    new_proto = onnx.load(pruned_path, load_external_data=False)
    names = [o.name for o in ref_proto.graph.output]
    ref = ir.serde.deserialize_model(ref_proto)
    extras = _extra_values(ref, ir.serde.deserialize_model(new_proto))
    if not extras:
        return _check_one_session_at_a_time(ref_path, pruned_path, names, extras, inputs=inputs, key_lengths_of=ref,
                                            n_random=n_random, seed=seed, rtol=rtol, shapes=shapes, calib=calib)
    for proto in (ref_proto, new_proto):
        for name in extras.names:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    # both copies beside their originals, so their external data resolves (ONNX Runtime
    # refuses data outside the model's folder); removed after
    made = []
    try:
        for proto, beside in ((ref_proto, ref_path), (new_proto, pruned_path)):
            fd, path = tempfile.mkstemp(prefix=f".{os.path.basename(beside)}.oracle-", suffix=".onnx",
                                        dir=os.path.dirname(os.path.abspath(beside)))
            os.close(fd)
            made.append(path)
            onnx.save(proto, path)
        return _check_one_session_at_a_time(made[0], made[1], names, extras, inputs=inputs, key_lengths_of=ref,
                                            n_random=n_random, seed=seed, rtol=rtol, shapes=shapes, calib=calib)
    finally:
        for path in made:
            os.unlink(path)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of `a` with the same row of `b` (1 where both are zero)."""
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)


def sample_cosines(a, b, tokens: np.ndarray | None) -> list[float]:
    """Per sample, how close output `b` is to output `a`: the cosine of the flattened
    sample, or for the output of a token sequence (runtime/positions.py: `tokens` is the
    batch's token mask) the mean over the sample's real tokens of the cosine at each
    token. [] when the two cannot be compared (other shapes, a scalar)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim == 0:
        return []
    if per_token(a, tokens):
        c = _cosines(a.reshape(a.shape[:2] + (-1,)), b.reshape(b.shape[:2] + (-1,)))  # (batch, positions)
        real = tokens.sum(1)
        return np.where(real > 0, (c * tokens).sum(1) / np.maximum(real, 1), 1.0).tolist()
    return _cosines(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)).tolist()


def class_logits(dense: ir.Model, pruned: ir.Model) -> dict[str, tuple[str, tuple]]:
    """{graph output made by Softmax / LogSoftmax: (its input, which both models compute by
    that name; the axes the softmax normalises over, of that input)}. The fidelity of such
    an output is measured on those logits, centred over those axes (what softmax ignores):
    on probabilities, PP-OCR rec models reading 0.16 / 0.26 / 0.37 of the lines the dense
    one reads (0.99) kept cosines 0.935 / 0.967 / 0.955 and passed the default gate; on the
    centred logits 0.685 / 0.897 / 0.738, no model at >= 98% of dense below 0.9, and on the
    2-class cls model the figure is 2 x (decisions kept) - 1 (benchmarks/accuracy/README.md, "The gate
    on Softmax outputs")."""
    have = {v.name for n in pruned.graph for v in n.outputs if v is not None}
    outputs = {v.name for v in dense.graph.outputs}
    opset = dense.opset_imports.get("", dense.opset_imports.get("ai.onnx", 13))
    found = {}
    for out in dense.graph.outputs:
        node = _maker(out)
        if not _std(node) or node.op_type not in ("Softmax", "LogSoftmax"):
            continue
        x = node.inputs[0]
        if x is None or x.name not in have or x.name in outputs or x.shape is None:
            continue
        rank = len(x.shape)
        a = node.attributes.get("axis")
        axis = (int(a.value) if a is not None else (-1 if opset >= 13 else 1)) % rank
        found[out.name] = (x.name, (axis,) if opset >= 13 else tuple(range(axis, rank)))  # < 13: the 2-D coercion
    return found


def _centred(a, axes: tuple):
    a = np.asarray(a, dtype=np.float64)
    return a - a.mean(axis=axes, keepdims=True)


def _fidelity_sessions(dense, pruned):
    """(dense session, pruned session, {output index: (index of its logits among the run's
    results, axes)}, the graph outputs' names): each model with its class logits
    (`class_logits`) as extra outputs."""
    from graphprune.frontends.onnx import load_onnx
    from graphprune.ir.serialize import clone

    models = [m if isinstance(m, ir.Model) else load_onnx(str(m), fold=False) for m in (dense, pruned)]
    logits = class_logits(*models)
    names = [o.name for o in models[0].graph.outputs]
    if not logits:  # (a path stays a path: ONNX Runtime reads the file itself)
        return session(dense), session(pruned), {}, names
    extra = list(dict.fromkeys(x for x, _ in logits.values()))
    sessions = [session(_with_outputs(clone(m), extra)) for m in models]
    at = {names.index(out): (len(names) + extra.index(x), axes) for out, (x, axes) in logits.items()}
    return sessions[0], sessions[1], at, names


def output_fidelity(dense, pruned, batches, decisions: list[int] | None = None) -> dict:
    """How close the pruned model's outputs stay to the dense model's on real inputs:
    per sample and output, `sample_cosines`; `drop` = 1 - mean cosine. An output made by
    Softmax / LogSoftmax is compared on its logits, centred (`class_logits`: `on_logits`
    names them). `decisions` (indices of outputs whose last axis is class or token scores):
    also `decisions`, the share of samples whose every argmax there is the dense model's,
    from the same runs. A text batch's padded positions count in neither."""
    s_dense, s_pruned, at, names = _fidelity_sessions(dense, pruned)
    cos, same, sq_diff, sq_ref = [], [], 0.0, 0.0
    for feeds in batches:
        a_all = _run_ref(s_dense, feeds)  # calibration batches that do not fit the input: said in words
        b_all = s_pruned.run(None, feeds)
        tokens = token_mask(feeds)
        if decisions:
            n = len(a_all[decisions[0]])
            ok = np.ones(n, dtype=bool)
            for i in decisions:
                eq = np.argmax(a_all[i], -1) == np.argmax(b_all[i], -1)
                if per_token(np.asarray(a_all[i]), tokens):
                    eq = eq | ~tokens.reshape(tokens.shape + (1,) * (eq.ndim - 2))
                ok &= eq.reshape(n, -1).all(axis=1)
            same.extend(ok.tolist())
        for k in range(len(names)):
            a, b = a_all[k], b_all[k]
            if k in at:
                i, axes = at[k]
                a, b = _centred(a_all[i], axes), _centred(b_all[i], axes)
            cos.extend(sample_cosines(a, b, tokens))
            if np.shape(a) == np.shape(b):
                a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
                sq_diff, sq_ref = sq_diff + float(np.sum((a - b) ** 2)), sq_ref + float(np.sum(a * a))
    mean = float(np.mean(cos)) if cos else 1.0
    out = {"mean_cosine": mean, "min_cosine": float(np.min(cos)) if cos else 1.0, "drop": 1.0 - mean,
           "samples": len(cos), "outputs": names,
           # over every compared value: unlike a cosine it sees magnitudes (a 2-class output's
           # centred logits [d, -d] have cosine +-1 per sample, whatever d became)
           "relative_error": float(np.sqrt(sq_diff / sq_ref)) if sq_ref > 0 else 0.0}
    if at:
        out["on_logits"] = [names[k] for k in sorted(at)]
    if decisions:
        out["decisions"], out["decision_samples"] = (float(np.mean(same)) if same else 1.0), len(same)
    return out
