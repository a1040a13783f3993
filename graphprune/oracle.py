"""The oracle: the pruned model must equal the input model with the plan's slices zeroed.

`masked_original` zeroes every slice the plan lists in the *input* model (as read from
disk, before any normalisation); `check` runs both in ONNX Runtime on random and/or
given inputs and compares outputs with a tolerance relative to each output's scale.

An output made by a saturating op (Softmax, Sigmoid, Tanh, HardSigmoid) is also judged on
that op's input: a model pruned hard (before repair) can have logits of 1e4 and more, where
float32 rounding alone (summation order) moves near-tied probabilities by 1e-3 — the
input model run at two ONNX Runtime optimisation levels differs that much from itself. If
the logits agree within the tolerance of their own scale, the output passes (and says so).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphprune.errors import FrontendError, PlanError, VerificationError
from graphprune.ir.constants import const_array, is_constant, set_const_array
from graphprune.plan import Plan

log = logging.getLogger(__name__)

_NP_OF_ONNX = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(int16)": np.int16,
}


def _zero_branches(model: ir.Model, plan: Plan) -> None:
    """Depth pruning: the removed blocks' branch outputs become zero (Add(skip, 0·branch))."""
    for b in plan.blocks:
        adds = [n for n in model.graph if n.op_type == "Add" and
                {v.name for v in n.inputs if v is not None} == {b["skip"], b["branch"]}]
        if len(adds) != 1:
            raise PlanError(f"plan removes a residual block {b['skip']} + {b['branch']} this model does not have")
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
    """Zero the plan's slices (and removed blocks' branches) in `model`, in place."""
    _zero_branches(model, plan)
    values = {v.name: v for v in model.graph.initializers.values()}
    for node in model.graph:
        for o in node.outputs:
            values.setdefault(o.name, o)
    for t in plan.tensors:
        v = values.get(t["name"])
        if v is None or not is_constant(v):
            raise PlanError(f"plan lists tensor {t['name']!r}, which is not a constant of this model")
        arr = const_array(v).copy()
        if not 0 <= t["axis"] < arr.ndim:
            raise PlanError(f"plan axis {t['axis']} out of range for {t['name']!r} of rank {arr.ndim}")
        idx = [slice(None)] * arr.ndim
        idx[t["axis"]] = np.asarray(t["removed"], dtype=np.int64)
        arr[tuple(idx)] = 0
        set_const_array(v, arr)
    return model


def session(model: ir.Model | bytes | str, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # errors reach the user through our exceptions
    if isinstance(model, ir.Model):
        from graphprune.ir.serialize import to_proto

        model = to_proto(model).SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def input_shape(shape, dims: dict | None = None, dim_value: int | None = None) -> list[int]:
    """A concrete shape for a model input: static dims as they are; a symbolic dim takes
    `dims[name]` if given, else `dim_value`, else 1 on the first axis (batch) and 32
    elsewhere (large enough for CNN downsampling and for sequence lengths)."""
    out = []
    for k, d in enumerate(shape):
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif dims and isinstance(d, str) and d in dims:
            out.append(int(dims[d]))
        elif dim_value is not None:
            out.append(dim_value)
        else:
            out.append(1 if k == 0 else 32)
    return out


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:400]


def input_session(model, what: str = "the input model"):
    """An ORT session for a model the user gave us: failure is the model's, not ours."""
    try:
        return session(model)
    except Exception as exc:
        raise FrontendError(f"ONNX Runtime cannot load {what}: {_first_line(exc)}",
                            hint="graphprune needs models that ONNX Runtime can run") from None


def random_inputs(sess, seed: int = 0, dim_value: int | None = None, int_high: int = 2,
                  dims: dict | None = None, shapes: dict | None = None) -> dict[str, np.ndarray]:
    """Random feeds for every model input (see `input_shape` for symbolic dims);
    `shapes` gives whole shapes by input name."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        if shapes and inp.name in shapes:
            shape = [int(d) for d in shapes[inp.name]]
        else:
            shape = input_shape(inp.shape, dims, dim_value)
        dtype = _NP_OF_ONNX.get(inp.type)
        if dtype is None:
            raise PlanError(f"cannot make random data for input {inp.name!r} of type {inp.type}")
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = rng.random(shape) < 0.5
        else:
            feeds[inp.name] = rng.integers(0, int_high, size=shape).astype(dtype)
    return feeds


@dataclass
class OutputDiff:
    name: str
    max_abs_err: float
    scale: float
    ok: bool
    judged_on: str | None = None   # the saturating op's input, when the output was judged there


@dataclass
class OracleResult:
    ok: bool
    diffs: list[OutputDiff] = field(default_factory=list)
    runs: int = 0

    @property
    def worst_relative(self) -> float:
        return max((d.max_abs_err / max(d.scale, 1e-12) for d in self.diffs), default=0.0)

    def summary(self) -> str:
        state = "PASS" if self.ok else "FAIL"
        judged = [f"{d.name} on its logits {d.judged_on}" for d in self.diffs if d.judged_on]
        return (f"oracle {state}: {self.runs} input set(s), worst error "
                f"{self.worst_relative:.2e} of output scale"
                + (f" (saturating outputs judged on their inputs: {', '.join(judged)})" if judged else ""))


def compare_outputs(ref: list[np.ndarray], got: list[np.ndarray], names: list[str],
                    rtol: float = 1e-4, atol: float = 1e-6) -> list[OutputDiff]:
    diffs = []
    for name, a, b in zip(names, ref, got):
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


def check(original: ir.Model, pruned: ir.Model, plan: Plan, *, inputs: list[dict] | None = None,
          n_random: int = 2, seed: int = 0, rtol: float = 1e-4, dim_value: int | None = None,
          dims: dict | None = None, shapes: dict | None = None) -> OracleResult:
    """Run the oracle. `original` is the input model as read (it is not modified)."""
    from graphprune.ir.serialize import BIG_MODEL_BYTES, clone, model_nbytes

    if model_nbytes(original) > BIG_MODEL_BYTES:
        return _check_big(original, pruned, plan, inputs=inputs, n_random=n_random, seed=seed, rtol=rtol,
                          dim_value=dim_value, dims=dims, shapes=shapes)
    masked = clone(original)
    masked_original(masked, plan)
    names = [o.name for o in masked.graph.outputs]
    logits = _saturated_outputs(masked, pruned)
    if logits:  # judged on the logits too (module docstring): both models expose them
        masked = _with_outputs(masked, logits.values())
        pruned = _with_outputs(clone(pruned), logits.values())
    s_ref = input_session(masked, what="the input model (with the plan's slices zeroed)")
    try:
        s_new = session(pruned)
    except Exception as exc:
        raise VerificationError(f"ONNX Runtime cannot load the pruned model: {_first_line(exc)}") from exc
    feeds_list = list(inputs or [])
    for k in range(n_random):
        feeds_list.append(random_inputs(s_ref, seed + k, dim_value=dim_value, dims=dims, shapes=shapes))
    result = OracleResult(ok=True)
    worst: dict[str, OutputDiff] = {}
    for feeds in feeds_list:
        try:
            ref = s_ref.run(None, feeds)
        except Exception as exc:
            raise FrontendError(f"ONNX Runtime fails to run the input model: {_first_line(exc)}",
                                hint="check the inputs (--inputs) or the model itself") from None
        if not all(np.all(np.isfinite(r)) for r in ref if np.asarray(r).dtype.kind == "f"):
            raise FrontendError("the input model gives NaN/Inf outputs on these inputs, so the oracle cannot "
                                "compare anything", hint="check the model's weights, or give real inputs "
                                "with --inputs")
        got = s_new.run(None, feeds)
        diffs = compare_outputs(ref[:len(names)], got[:len(names)], names, rtol=rtol)
        if logits:
            pre = compare_outputs(ref[len(names):], got[len(names):], list(logits.values()), rtol=rtol)
            by_name = dict(zip(logits, pre))
            for k, d in enumerate(diffs):
                p = by_name.get(d.name)
                if not d.ok and p is not None and p.ok:
                    diffs[k] = OutputDiff(d.name, p.max_abs_err, p.scale, True, judged_on=p.name)
        for d in diffs:
            w = worst.get(d.name)
            if w is None or not d.ok or d.max_abs_err / max(d.scale, 1e-12) > w.max_abs_err / max(w.scale, 1e-12):
                if w is None or w.ok:
                    worst[d.name] = d
        result.runs += 1
    result.diffs = list(worst.values())
    result.ok = all(d.ok for d in result.diffs)
    return result


_SATURATING = ("Softmax", "Sigmoid", "Tanh", "HardSigmoid")
_PASS_THROUGH = ("Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _saturated_outputs(ref: ir.Model, pruned: ir.Model) -> dict[str, str]:
    """Graph output -> input value of the saturating op that makes it (through ops that only
    move elements), for the outputs where both models have that value by name."""
    have = {v.name for n in pruned.graph for v in n.outputs if v is not None}
    outputs = {v.name for v in ref.graph.outputs}
    found = {}
    for out in ref.graph.outputs:
        node = out.producer()
        while node is not None and node.op_type in _PASS_THROUGH and node.domain in ("", "ai.onnx"):
            node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        if node is None or node.op_type not in _SATURATING or node.domain not in ("", "ai.onnx"):
            continue
        pre = node.inputs[0]
        if pre is not None and pre.name in have and pre.name not in outputs and pre.producer() is not None:
            found[out.name] = pre.name
    return found


def _with_outputs(model: ir.Model, names) -> ir.Model:
    """`model` (modified) with the named values as extra graph outputs."""
    values = {v.name: v for n in model.graph for v in n.outputs if v is not None}
    for name in names:
        model.graph.outputs.append(values[name])
    return model


def _check_big(original: ir.Model, pruned: ir.Model, plan: Plan, *, inputs, n_random, seed, rtol, dim_value,
               dims, shapes=None) -> OracleResult:
    """Models over ~1.5 GB: masked original and pruned model go through files with external
    data, and their ORT sessions live one after the other, so peak memory stays near one
    model's size. `original` is modified (slices zeroed) and should be a lazily loaded copy."""
    import gc
    import tempfile
    from pathlib import Path

    from graphprune.frontends.onnx import save_onnx

    masked_original(original, plan)
    with tempfile.TemporaryDirectory(prefix="graphprune-oracle-") as tmp:
        ref_path, new_path = Path(tmp) / "masked.onnx", Path(tmp) / "pruned.onnx"
        save_onnx(original, ref_path, external_data=True)
        s_ref = input_session(str(ref_path), what="the input model (with the plan's slices zeroed)")
        feeds_list = list(inputs or []) + [random_inputs(s_ref, seed + k, dim_value=dim_value, dims=dims,
                                                         shapes=shapes)
                                           for k in range(n_random)]
        names = [o.name for o in s_ref.get_outputs()]
        refs = [s_ref.run(None, f) for f in feeds_list]
        del s_ref
        gc.collect()
        save_onnx(pruned, new_path, external_data=True)
        try:
            s_new = session(str(new_path))
        except Exception as exc:
            raise VerificationError(f"ONNX Runtime cannot load the pruned model: {_first_line(exc)}") from exc
        result = OracleResult(ok=True, runs=len(feeds_list))
        worst: dict[str, OutputDiff] = {}
        for feeds, ref in zip(feeds_list, refs):
            for d in compare_outputs(ref, s_new.run(None, feeds), names, rtol=rtol):
                w = worst.get(d.name)
                if w is None or not d.ok or d.max_abs_err / max(d.scale, 1e-12) > w.max_abs_err / max(w.scale, 1e-12):
                    if w is None or w.ok:
                        worst[d.name] = d
        del s_new
    result.diffs = list(worst.values())
    result.ok = all(d.ok for d in result.diffs)
    return result


def masked_copy_on_disk(src: str, plan: Plan, dst_dir: str) -> str:
    """The masked original of a large model, built on disk: its external data files are
    copied and the plan's slices zeroed through memory maps, so memory stays small."""
    import os
    import shutil

    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(src, load_external_data=False)
    base = os.path.dirname(os.path.abspath(src))
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    for loc in locations:
        os.makedirs(os.path.dirname(os.path.join(dst_dir, loc)) or dst_dir, exist_ok=True)
        shutil.copyfile(os.path.join(base, loc), os.path.join(dst_dir, loc))
    by_name = {t.name: t for t in proto.graph.initializer}
    for entry in plan.tensors:
        t = by_name.get(entry["name"])
        if t is None:
            raise PlanError(f"plan lists tensor {entry['name']!r}, which is not an initializer of this model")
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        index = [slice(None)] * len(t.dims)
        index[entry["axis"]] = np.asarray(entry["removed"], dtype=np.int64)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            arr = np.memmap(os.path.join(dst_dir, info["location"]), dtype=dtype, mode="r+",
                            offset=int(info.get("offset", 0)), shape=tuple(t.dims))
            arr[tuple(index)] = 0
            arr.flush()
            del arr
        else:
            arr = numpy_helper.to_array(t).copy()
            arr[tuple(index)] = 0
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    out = os.path.join(dst_dir, "masked.onnx")
    if plan.blocks:
        model = ir.serde.deserialize_model(proto)
        _zero_branches(model, plan)
        proto = ir.serde.serialize_model(model)
    onnx.save(proto, out)
    return out


def check_files(src: str, pruned_path: str, plan: Plan, *, inputs: list[dict] | None = None, n_random: int = 2,
                seed: int = 0, rtol: float = 1e-4, shapes: dict | None = None) -> OracleResult:
    """The oracle for models on disk (large ones): masked original built on disk, the two
    ORT sessions one after the other."""
    import gc
    import tempfile

    with tempfile.TemporaryDirectory(prefix="graphprune-oracle-") as tmp:
        ref_path = masked_copy_on_disk(src, plan, tmp)
        s_ref = input_session(ref_path, what="the input model (with the plan's slices zeroed)")
        feeds_list = list(inputs or []) + [random_inputs(s_ref, seed + k, shapes=shapes) for k in range(n_random)]
        names = [o.name for o in s_ref.get_outputs()]
        refs = [s_ref.run(None, f) for f in feeds_list]
        del s_ref
        gc.collect()
    try:
        s_new = session(pruned_path)
    except Exception as exc:
        raise VerificationError(f"ONNX Runtime cannot load the pruned model: {_first_line(exc)}") from exc
    worst: dict[str, OutputDiff] = {}
    for feeds, ref in zip(feeds_list, refs):
        for d in compare_outputs(ref, s_new.run(None, feeds), names, rtol=rtol):
            w = worst.get(d.name)
            if w is None or (w.ok and (not d.ok or d.max_abs_err / max(d.scale, 1e-12) >
                                       w.max_abs_err / max(w.scale, 1e-12))):
                worst[d.name] = d
    del s_new
    diffs = list(worst.values())
    return OracleResult(ok=all(d.ok for d in diffs), diffs=diffs, runs=len(feeds_list))


def output_fidelity(dense, pruned, batches) -> dict:
    """How close the pruned model's outputs stay to the dense model's on real inputs:
    per sample and output, the cosine of the flattened outputs; `drop` = 1 - mean cosine."""
    s_dense, s_pruned = session(dense), session(pruned)
    names = [o.name for o in s_dense.get_outputs()]
    cos = []
    for feeds in batches:
        a_all, b_all = s_dense.run(None, feeds), s_pruned.run(None, feeds)
        for a, b in zip(a_all, b_all):
            a = np.asarray(a, dtype=np.float64)
            b = np.asarray(b, dtype=np.float64)
            if a.dtype.kind != "f" or a.shape != b.shape or a.ndim == 0:
                continue
            a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
            num = (a2 * b2).sum(1)
            den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
            cos.extend(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0).tolist())
    mean = float(np.mean(cos)) if cos else 1.0
    return {"mean_cosine": mean, "min_cosine": float(np.min(cos)) if cos else 1.0, "drop": 1.0 - mean,
            "samples": len(cos), "outputs": names}
