"""ONNX Runtime for graphprune: sessions, feeds, and running a model for named tensors.

`session` opens a CPU session (one thread, quiet) on an IR model, bytes or a path;
`input_session` does so for a model the user gave us (a failure is the model's).
`random_inputs` makes feeds at the representative shapes (`representative_shapes`,
`graphprune.input_shapes`). `session_with_outputs` / `Runner` run a copy of a model whose
outputs are intermediate tensors (only the nodes they need), and `concrete_shapes` reads
their shapes from one run. onnxruntime is imported inside the functions.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx_ir as ir

from graphprune.errors import FrontendError, PlanError

Feeds = dict[str, np.ndarray]

_NP_OF_ONNX = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(int16)": np.int16,
}


def session(model: ir.Model | bytes | str, threads: int = 1, *, reference: bool = False):
    """`reference`: no graph optimisation, each op as the ONNX spec defines it (the oracle
    on QDQ models: ORT's fused int8 kernels are not exact, see runtime.oracle)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # errors reach the user through our exceptions
    if reference:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, ir.Model):
        from graphprune.ir.serialize import to_proto

        model = to_proto(model).SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def representative_shapes(sess, *, user: dict | None = None, calib: dict | None = None,
                          dims: dict | None = None, dim_value: int | None = None):
    """The inputs' representative shapes (`graphprune.input_shapes.resolve`) for the model
    of `sess`; when a default was used and the model does not run at it, the next default
    (see `input_shapes.candidates`) is tried, so the shapes are ones the model can run."""
    from graphprune import input_shapes as shp

    specs = shp.specs_of_session(sess)
    first = shp.resolve(specs, user=user, calib=calib, dims=dims, dim_value=dim_value)
    if not first.defaulted:
        return first
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a size the model cannot run is expected here: not an error for the user's terminal
    for attempt in range(shp.candidates(specs)):
        res = first if attempt == 0 else shp.resolve(specs, user=user, calib=calib, dims=dims, attempt=attempt)
        try:
            sess.run(None, random_inputs(sess, 0, shapes=res), quiet)
            return res
        except Exception:  # noqa: BLE001 - the model cannot run at this size: try the next
            continue
    return first


def resolve_shapes(model: ir.Model, path=None, *, user: dict | None = None, calib: dict | None = None):
    """The run's representative shapes for `model` (read from `path` when given): resolved
    from the model's inputs, and only when a default is needed checked by running the model
    (`representative_shapes`), so a user, calibration or static shape costs no session."""
    from graphprune import input_shapes as shp

    res = shp.resolve(shp.specs_of_model(model), user=user, calib=calib)
    if not res.defaulted:
        return res
    try:
        sess = input_session(str(path)) if path is not None else input_session(model)
    except (FrontendError, ImportError):  # nothing can run it (e.g. --no-check on such a model): the default
        return res
    return representative_shapes(sess, user=user, calib=calib)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:400]


def input_session(model, what: str = "the input model", *, reference: bool = False):
    """An ORT session for a model the user gave us: failure is the model's, not ours."""
    try:
        return session(model, reference=reference)
    except Exception as exc:
        raise FrontendError(f"ONNX Runtime cannot load {what}: {_first_line(exc)}",
                            hint="graphprune needs models that ONNX Runtime can run") from None


def random_inputs(sess, seed: int = 0, dim_value: int | None = None, int_high: int = 2,
                  dims: dict | None = None, shapes=None) -> dict[str, np.ndarray]:
    """Random feeds for every model input at its representative shape: `shapes` is an
    `InputShapes` (used as is) or {input name: shape} from the user; other inputs are
    resolved by `representative_shapes`."""
    from graphprune.input_shapes import InputShapes

    if not isinstance(shapes, InputShapes):
        shapes = representative_shapes(sess, user=shapes, dims=dims, dim_value=dim_value)
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [int(d) for d in shapes.shapes[inp.name]]
        dtype = _NP_OF_ONNX.get(inp.type)
        if dtype is None:
            raise PlanError(f"cannot make random data for input {inp.name!r} of type {inp.type}")
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = np.asarray(rng.random(shape) < 0.5)  # rank 0: a 0-d array, not np.bool_
        else:
            feeds[inp.name] = rng.integers(0, shapes.high(inp.name, int_high), size=shape).astype(dtype)
    return feeds


def session_with_outputs(model: ir.Model, names: Iterable[str], threads: int = 1, only: bool = False):
    """ORT session on a copy of `model` whose outputs are its own plus `names` — or, with
    `only`, just `names`, with every node they do not depend on dropped (ONNX Runtime
    runs the whole graph whatever is fetched, so this is what makes early layers cheap)."""
    import onnx

    from graphprune.ir.serialize import to_proto

    proto = to_proto(model)
    names = list(dict.fromkeys(names))
    if only:
        del proto.graph.output[:]
        need = set(names)
        keep = []
        for node in reversed(proto.graph.node):
            if any(o in need for o in node.output):
                keep.append(node)
                need.update(i for i in node.input if i)
        keep.reverse()
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
        used = {i for n in keep for i in n.input}
        inits = [t for t in proto.graph.initializer if t.name in used]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(inits)
    have = {o.name for o in proto.graph.output}
    for n in names:
        if n not in have:
            proto.graph.output.append(onnx.ValueInfoProto(name=n))
            have.add(n)
    return session(proto.SerializeToString(), threads=threads)


def calibration_threads() -> int:
    """Intra-op threads for calibration passes (statistics, repair, scoring): the CPUs this
    process may use, at most 4 (GRAPHPRUNE_THREADS overrides). Latency measurements set
    their own thread count; these runs only need to be fast (PP-OCRv4 rec's outputs were
    measured bit-identical at 1, 2 and 4 threads)."""
    import os

    env = os.environ.get("GRAPHPRUNE_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


class Runner:
    """Runs a model on calibration batches and returns the requested tensors by name."""

    def __init__(self, model: ir.Model, names: Iterable[str], threads: int | None = None):
        self.names = list(dict.fromkeys(names))
        threads = calibration_threads() if threads is None else threads
        self.sess = session_with_outputs(model, self.names, threads=threads, only=True)
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def __call__(self, feeds: Feeds, names: list[str] | None = None) -> dict[str, np.ndarray]:
        want = names if names is not None else self.names
        res = self.sess.run(want, {k: v for k, v in feeds.items() if k in self.inputs})
        return dict(zip(want, res, strict=True))


def concrete_shapes(model: ir.Model, names: Iterable[str], feeds: Feeds) -> dict[str, tuple[int, ...]]:
    """Shapes of the named tensors when the model runs on `feeds` (one ORT run)."""
    run = Runner(model, names)
    return {k: tuple(int(d) for d in v.shape) for k, v in run(feeds).items()}
