"""graphprune bench out/arm/ [other] — latency: warm-up, repeats, median/p90, side by side."""
from __future__ import annotations

import json
import time
from pathlib import Path


def add_arguments(p):
    from graphprune.cli import argtypes as T

    p.add_argument("paths", nargs="+", help="compile folder(s) (<model>.graphprune/<target>/) or .onnx file(s); "
                                            "two paths are measured side by side")
    p.add_argument("--backends", action="store_true",
                   help="for one compile folder holding several backends: compare them side by side")
    p.add_argument("--repeats", type=T.POSITIVE_INT, default=30,
                   help="timed runs per artifact, at least (spread over --rounds; default 30)")
    p.add_argument("--warmup", type=T.COUNT, default=5, help="untimed runs per artifact first (default 5)")
    p.add_argument("--rounds", type=T.POSITIVE_INT, default=3, help="interleaved rounds for side-by-side runs")
    p.add_argument("--threads", type=T.COUNT, default=0, help="ORT intra-op threads (0: the deployment's / ORT default)")
    p.add_argument("--inputs", help=".npz of inputs (default: random)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="shape of the random inputs for this input (repeatable); default: the shapes the compile "
                        "folder was measured at (its report), else the first model's representative shapes")
    p.add_argument("--rpc", metavar="HOST:PORT", help="TVM RPC tracker: run TVM artifacts on a device")
    p.add_argument("--rpc-key", help="device key at the tracker")
    p.add_argument("--json-out", metavar="FILE", help="also write the results as JSON to this file "
                   "(--json prints them on stdout)")


class Runner:
    def __init__(self, label: str, fn):
        self.label = label
        self.fn = fn
        self.remote = None
        self.times: list[float] = []


def _ort_runner(label: str, model: Path, cfg: dict, feeds_fn):
    import onnxruntime as ort

    from graphprune.backends.onnxruntime import _session_options

    sess = ort.InferenceSession(str(model), _session_options(cfg), providers=["CPUExecutionProvider"])
    feeds = feeds_fn(sess)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # its failure is said once, in _runs_once's words
    _runs_once(label, lambda: sess.run(None, feeds, quiet))
    return Runner(label, lambda: sess.run(None, feeds))


def _runs_once(label: str, fn) -> None:
    """One run before any timing: inputs the artifact cannot take (--inputs of another batch
    size) are the user's error in words, not an internal error after the warm-up."""
    from graphprune.errors import UsageError
    from graphprune.runtime.ort import _first_line

    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime and TVM raise many types for bad inputs
        raise UsageError(f"{label} does not run on these inputs: {_first_line(exc)}",
                         hint="check --inputs / --input-shape against the model's inputs") from None


def _threads(cfg: dict) -> str:
    """The session's thread setting, in the label: a tuned deployment and a model under ORT's
    defaults may run with different thread counts, and the speed ratio includes that."""
    n = cfg.get("intra_op_num_threads") or 0
    return f"{n} thread{'s' if n > 1 else ''}" if n else "threads: ORT default"


def _runners_for(path: Path, args, feeds_fn, all_backends: bool) -> list[Runner]:
    from graphprune.errors import UsageError

    default_cfg = {"intra_op_num_threads": args.threads, "inter_op_num_threads": 0,
                   "execution_mode": "ORT_SEQUENTIAL", "graph_optimization_level": "ORT_ENABLE_ALL"}
    if path.is_file():
        return [_ort_runner(f"{path.name} (onnxruntime, {_threads(default_cfg)})", path, default_cfg, feeds_fn)]
    report_path = path / "report.json"
    if not report_path.exists():
        raise UsageError(f"{path}: neither an .onnx file nor a compile folder with report.json")
    rep = json.loads(report_path.read_text())
    chosen = rep["backend"]["chosen"]
    built = [b for b, r in (rep["backend"].get("results") or {}).items()  # a kept folder of the user's is none
             if isinstance(r, dict) and not r.get("skipped") and (path / b).is_dir()]
    backends = [b for b in ("onnxruntime", "tvm") if b in built] if all_backends else [chosen]
    out = []
    for b in backends:
        if b == "onnxruntime":
            session_json = path / "onnxruntime" / "session.json"
            if not session_json.is_file():
                raise UsageError(f"{path}: {session_json.name} is missing from onnxruntime/: not a whole compile "
                                 "folder", hint="compile again, or bench the .onnx file itself")
            cfg = json.loads(session_json.read_text())
            if args.threads:
                cfg["intra_op_num_threads"] = args.threads
            out.append(_ort_runner(f"{path.name}/onnxruntime ({_threads(cfg)})", path / "onnxruntime" / cfg["model"],
                                   cfg, feeds_fn))
        else:
            from graphprune.backends.tvm import adapter

            res = rep["backend"]["results"]["tvm"]
            lib = path / "tvm" / res["library"]
            feeds = feeds_fn(None, path / "model.pruned.onnx")
            if args.rpc:
                r = Runner(f"{path.name}/tvm@{args.rpc_key}", None)
                # the device times itself: one upload, then its own repeats per round
                r.remote = lambda lib=lib, feeds=feeds: adapter.remote_benchmark(
                    lib, feeds, args.rpc, args.rpc_key, repeats=-(-args.repeats // max(1, args.rounds)))
                out.append(r)
            elif not rep["target"]["host"]:
                raise UsageError(f"{path}: TVM artifact for {rep['target']['name']} does not run here",
                                 hint="give --rpc HOST:PORT --rpc-key KEY of a device")
            else:
                exe = adapter.load(lib)
                _runs_once(f"{path.name}/tvm", lambda exe=exe, feeds=feeds: adapter.run_loaded(exe, feeds))
                out.append(Runner(f"{path.name}/tvm", lambda exe=exe, feeds=feeds: adapter.run_loaded(exe, feeds)))
    return out


def _measure(runners: list[Runner], args) -> None:
    """Warm up, then time every runner in interleaved rounds, so drift hits every runner alike."""
    for r in runners:
        for _ in range(args.warmup if r.fn else 0):
            r.fn()
    per_round = -(-args.repeats // max(1, args.rounds))  # at least --repeats in all ('5' gave 3)
    for _ in range(args.rounds):
        for r in runners:
            if r.fn is None:
                res = r.remote()
                r.times.append(float(res["median_ms"]))
                continue
            for _ in range(per_round):
                t0 = time.perf_counter()
                r.fn()
                r.times.append((time.perf_counter() - t0) * 1000)


def _summary(r: Runner) -> dict:
    import numpy as np

    t = np.array(r.times)
    return {"label": r.label, "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "min_ms": float(t.min()), "runs": len(t)}


def _model_of(path: Path) -> Path:
    """The ONNX model a path stands for: the file, or a compile folder's pruned model."""
    return path if path.is_file() else path / "model.pruned.onnx"


def _shapes(args, paths: list[Path]):
    """One set of input shapes for every artifact, so that they are compared on the same
    work: --input-shape, else the shapes the first compile folder was measured at (its
    report.json), else the first model's representative shapes. (Each artifact used to
    resolve its own default, and a compiled model could be timed at another size than its
    input model.)"""
    from graphprune.cli.common import parse_shapes, recorded_shapes
    from graphprune.runtime.ort import input_session, representative_shapes

    user = parse_shapes(args.input_shape)
    if user is None:
        for p in paths:
            recorded = recorded_shapes(p) if p.is_dir() else None
            if recorded is not None:
                return recorded
    first = _model_of(paths[0])
    return representative_shapes(input_session(str(first), f"{first}"), user=user)


def run(args) -> int:
    import numpy as np

    from graphprune.cli.common import load_inputs, table
    from graphprune.runtime.ort import random_inputs, session

    paths = [Path(p) for p in args.paths]
    if args.inputs and args.input_shape:  # the arrays have their shapes: one of the two
        from graphprune.errors import UsageError

        raise UsageError("--inputs and --input-shape: give one (the arrays of --inputs have their own shapes)")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:  # it was 'ONNX Runtime cannot load nope.onnx/model.pruned.onnx' (exit 4)
        from graphprune.errors import UsageError

        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    given = load_inputs(args.inputs)
    shapes = None if given else _shapes(args, paths)

    def feeds_fn(sess, model_path=None):
        sess = sess if sess is not None else session(str(model_path))
        if given:  # named as the model's inputs, or the missing / unknown names said
            from graphprune.runtime.oracle import fit_given

            return fit_given(given[0], sess)
        names = {i.name for i in sess.get_inputs()}
        if not names <= set(shapes.shapes):
            from graphprune.errors import UsageError

            raise UsageError(f"the artifacts do not take the same inputs ({sorted(names)} vs {sorted(shapes.shapes)})",
                             hint="compare models of one input signature, or give --inputs")
        return random_inputs(sess, seed=0, shapes=shapes)

    runners: list[Runner] = []
    for p in paths:
        runners += _runners_for(p, args, feeds_fn, args.backends)
    _measure(runners, args)
    results = [_summary(r) for r in runners]
    base = results[0]["median_ms"]
    rows = [[x["label"], f"{x['median_ms']:.3f}", f"{x['p90_ms']:.3f}", f"{x['min_ms']:.3f}", x["runs"],
             f"{base / x['median_ms']:.2f}x"] for x in results]
    print(table(rows, ["artifact", "median ms", "p90 ms", "min ms", "runs", "speed vs first"]))
    print(shapes.measured_at() if shapes is not None else f"measured on the first input set of {args.inputs}: "
          + ", ".join(f"{k}: {'×'.join(map(str, np.shape(v)))}" for k, v in given[0].items()))
    from graphprune.cli.results import emit, schema

    data = {"schema": schema("bench"), "results": results, "threads": args.threads, "repeats": args.repeats,
            "warmup": args.warmup, "input_shapes": shapes.to_json() if shapes is not None else None}
    if args.json_out:
        from graphprune.outputs import write_text_atomic

        write_text_atomic(args.json_out, json.dumps(data, indent=1))
    return emit(args, data) if args.json else 0
