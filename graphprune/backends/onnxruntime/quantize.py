"""int8 static quantization of the ONNX Runtime deployment (`compile --quantize int8`).

Every ONNX Runtime quantization call of graphprune is here. The float model compile
pruned (and repaired) is quantized by ONNX Runtime's `quantize_static`:

* format QDQ (QuantizeLinear/DequantizeLinear around float ops): a standard ONNX graph
  that ONNX Runtime fuses into integer kernels at load, on x86 and on ARM alike, and that
  graphprune itself can read again;
* weights QInt8, symmetric, per channel (one scale per output channel: pruning leaves
  channels of very different ranges, one per-tensor scale would crush the small ones);
* only the weighted ops (OP_TYPES), the first and the last weighted layer kept float;
* activations QInt8 (S8S8), asymmetric. S8S8 in QDQ is the combination ONNX Runtime's
  quantization guide gives as the default first choice; U8 activations with S8 weights can
  saturate in the x86 AVX2 kernels;
* activation ranges by two methods (RANGE_METHODS), each a complete QDQ model, and the one
  the caller's `score` rates higher is kept (`QuantizeResult.candidates` has both scores).

Calibration is the run's own `--calib` data (graphprune.runtime.calibration batches, fed
through `CalibrationReader`); there is no data-free fallback: static quantization on
random inputs would set activation ranges that real inputs never see.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ops ONNX Runtime may fuse a QDQ group into (the optimised deployment holds these)
QLINEAR_OPS = ("QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
               "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QGemm", "MatMulInteger",
               "ConvInteger", "DynamicQuantizeLinear")
SETTINGS = {"format": "QDQ", "weights": "per-channel symmetric QInt8", "activations": "asymmetric QInt8"}
# How an activation's int8 range is taken from the calibration data. MinMax keeps every value
# seen, so one outlier stretches the steps of all the others; Percentile clips the rarest
# 0.01% so the bulk gets finer steps. Neither wins everywhere. Measured on the dense PP-OCRv4
# models, 64 calibration samples, held-out sets (2026-12-05): rec exact-match MinMax 0.885 /
# 0.885 / 0.87 vs Percentile 0.935 / 0.95 / 0.935 (float 0.975 / 0.955 / 0.98; two in-domain
# sets of 200 lines, one of 200 lines in other fonts); det line recall MinMax 0.979 vs
# Percentile 0.929 (float 0.95, 30 pages); cls accuracy 0.9975 vs 1.0. So both are built and
# scored. Percentile at 99.999 or 99.9 was worse than 99.99 on rec (0.91, 0.90 on 100 lines).
# MinMax holds the activations of one calibration batch at a time (CalibStridedMinMax: ranges
# merged batch by batch); Percentile builds its histograms from all the batches' activations.
RANGE_METHODS = {"minmax": ("MinMax", {"CalibStridedMinMax": 1}), "percentile": ("Percentile", {"CalibPercentile": 99.99})}
# Only the weighted ops are quantized (MatMul only with a constant weight): elementwise ops,
# normalisations, softmax and activation-by-activation products stay float. On PP-OCRv4 rec
# (32 held-out lines) every op quantized kept 0.34 of the dense exact-match, Conv alone 0.66.
OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# The first and the last weighted layer stay float (the raw input and the logits); on PP-OCRv4
# rec the first conv alone in int8 took exact-match from 0.97 to 0.66.
KEEP_FLOAT_ENDS = 3  # ... when the model has at least this many weighted layers


class CalibrationReader(CalibrationDataReader):
    """ONNX Runtime's CalibrationDataReader over graphprune calibration batches: feeds
    restricted to the model's inputs, as contiguous numpy arrays. `batches` is a callable
    returning a fresh iterator (Calibration.batches), so the data can be read again:
    `set_range` restricts it to batches [start, end) (ORT's strided calibration, which
    takes the ranges of each stride and merges them, so only one stride is held in memory)."""

    def __init__(self, batches, input_names: Iterable[str]):
        self._make = batches
        self._names = list(input_names)
        self._n: int | None = None
        self.count = 0  # batches read (all strides)
        self.rewind()

    def __len__(self) -> int:
        if self._n is None:
            self._n = sum(1 for _ in self._make())
        return self._n

    def get_next(self) -> dict | None:
        feeds = next(self._it, None)
        if feeds is None:
            return None
        missing = [n for n in self._names if n not in feeds]
        if missing:
            from graphprune.errors import UsageError

            raise UsageError(f"calibration batch lacks the model input(s) {', '.join(missing)}")
        self.count += 1
        return {n: np.ascontiguousarray(feeds[n]) for n in self._names}

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = itertools.islice(iter(self._make()), start_index, end_index)

    def rewind(self) -> None:
        self._it = iter(self._make())


@dataclass
class QuantizeResult:
    path: Path  # the QDQ model
    batches: int  # calibration batches the ranges were taken from
    ops: dict  # op type -> count in the QDQ model
    settings: dict = field(default_factory=lambda: dict(SETTINGS))
    notes: list = field(default_factory=list)
    candidates: list = field(default_factory=list)  # [{"ranges": method, "score": float}], the kept one first

    @property
    def quantized_nodes(self) -> int:
        return self.ops.get("QuantizeLinear", 0) + self.ops.get("DequantizeLinear", 0)


def op_counts(path: str | Path) -> dict:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return dict(Counter(n.op_type for n in proto.graph.node))


def is_quantized(ops: dict) -> bool:
    """A graph ONNX Runtime runs in int8: QDQ pairs, or the integer ops they fuse into."""
    return any(ops.get(k) for k in QDQ_OPS + QLINEAR_OPS)


PER_AXIS_OPSET = 13  # QuantizeLinear/DequantizeLinear take `axis` (per-channel scales) from opset 13


def _opset(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _per_axis_ready(src: Path, tmp: Path, notes: list) -> tuple[Path, bool]:
    """A model below opset 13 is converted to opset 13 (onnx.version_converter) so its
    weights can have per-channel scales; when it cannot be, per-tensor scales are used."""
    import onnx
    from onnx import version_converter

    opset = _opset(src)
    if opset >= PER_AXIS_OPSET:
        return src, True
    out = tmp / "opset13.onnx"
    try:
        onnx.save(version_converter.convert_version(onnx.load(str(src)), PER_AXIS_OPSET), str(out))
        onnx.checker.check_model(str(out))
    except Exception as exc:  # noqa: BLE001 - per-tensor weights are the fallback, said so
        notes.append(f"opset {opset} could not be converted to {PER_AXIS_OPSET} ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:120]}): weights quantized per tensor")
        return src, False
    notes.append(f"converted from opset {opset} to {PER_AXIS_OPSET} for per-channel weight scales")
    return out, True


def weighted_layers(path: Path) -> list[str]:
    """The float layers ORT's static quantization can make int8: OP_TYPES with a constant weight."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    weighted = [n.name for n in g.node
                if n.op_type in OP_TYPES and len(n.input) > 1 and n.input[1] in consts and n.name]
    return weighted


def float_layers(weighted: list[str]) -> list[str]:
    """The first and last weighted layer, kept float."""
    return [weighted[0], weighted[-1]] if len(weighted) >= KEEP_FLOAT_ENDS else []


def _require_layers(weighted: list[str], keep_float: list[str]) -> None:
    """A model with no float layer left to quantize is refused in words (ORT's histogram
    calibration otherwise fails with 'Histogram has not been collected')."""
    from graphprune.errors import UsageError

    if not [n for n in weighted if n not in keep_float]:
        raise UsageError("--quantize int8: the model has no float Conv, ConvTranspose, Gemm or MatMul with a "
                         "constant weight to quantize", hint="nothing was written; compile it without --quantize")


def _preprocess(src: Path, tmp: Path, notes: list) -> Path:
    """ORT's quantization pre-processing (shape inference, Conv+BN folding and other basic
    fusions), so each fused op gets one scale; the model as it is when it cannot run."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
        return out
    except Exception as exc:  # noqa: BLE001 - the pre-processing is an optimisation only
        notes.append(f"quantization pre-processing skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        return src


def _histogram_reader(batches, names: list[str]) -> tuple[CalibrationReader | None, str]:
    """A reader for ORT's histogram (Percentile) calibration, which stacks the activations of
    all the batches it reads into one array: the batches as they are when they all have one
    shape; else one sample per feed when only their batch sizes differ (a last, partial
    batch); None, and why, when the samples themselves differ in size (images of several
    widths), which no feeding can stack."""
    shapes = {tuple((n, np.shape(b[n])) for n in names if n in b) for b in batches()}
    if len(shapes) <= 1:
        return CalibrationReader(batches, names), ""
    if len({tuple((n, shp[1:]) for n, shp in key) for key in shapes}) == 1:
        def rows():
            for b in batches():
                for i in range(len(next(iter(b.values())))):
                    yield {n: v[i:i + 1] for n, v in b.items()}
        return CalibrationReader(rows, names), ""
    return None, "the calibration samples differ in size, and ORT's histogram calibration stacks them"


def _quantize(pre: Path, out: Path, reader: CalibrationReader, method: str, per_channel: bool,
              keep_float: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate, extra = RANGE_METHODS[method]
    reader.rewind()
    # ORT's histogram calibration prints its progress to stdout, where the CLI's summary goes
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, calibrate),
                        op_types_to_quantize=list(OP_TYPES), nodes_to_exclude=keep_float,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                       "MatMulConstBOnly": True, **extra})


def quantize_int8(model_path: str | Path, batches, out_path: str | Path, *, score=None,
                  methods: tuple[str, ...] = tuple(RANGE_METHODS), log_fn=None) -> QuantizeResult:
    """Quantize the float ONNX model at `model_path` to a QDQ int8 model at `out_path`,
    activation ranges from `batches` (a callable returning an iterator of feed dicts).

    With `score` (path of a QDQ model -> float, higher is better) one model per range method
    in `methods` is built and the best scored is kept; without, the first method's."""
    import shutil

    import onnxruntime as ort

    src, out = Path(model_path), Path(out_path)
    names = [i.name for i in ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()]
    notes: list = []
    reader = CalibrationReader(batches, names)
    if len(reader) == 0:
        from graphprune.errors import UsageError

        raise UsageError("--quantize int8: the calibration data gave no batch")
    unknown = [m for m in methods if m not in RANGE_METHODS]
    if unknown or not methods:
        raise ValueError(f"range methods {unknown or methods}: choose from {', '.join(RANGE_METHODS)}")
    methods = methods if score is not None else methods[:1]
    if "percentile" in methods:
        hist_reader, why = _histogram_reader(batches, names)
        if hist_reader is None:  # ORT stacks every batch's activations for the histograms
            methods = tuple(m for m in methods if m != "percentile") or ("minmax",)
            notes.append(f"percentile ranges not built: {why}; ranges by {', '.join(methods)} only")
    candidates = []
    with tempfile.TemporaryDirectory(prefix="graphprune-quant-") as tmp:
        ready, per_channel = _per_axis_ready(src, Path(tmp), notes)
        pre = _preprocess(ready, Path(tmp), notes)
        weighted = weighted_layers(pre)
        keep_float = float_layers(weighted)
        _require_layers(weighted, keep_float)
        for k, method in enumerate(methods):
            if log_fn and len(methods) > 1:
                log_fn(f"  int8 with {method} ranges ({k + 1}/{len(methods)}) ...")
            used = hist_reader if method == "percentile" else reader
            path, before = Path(tmp) / f"{method}.onnx", used.count
            _quantize(pre, path, used, method, per_channel, keep_float)
            row = {"ranges": method, "path": path, "batches": used.count - before}
            if score is not None:
                row["score"] = round(float(score(path)), 6)
            candidates.append(row)
        best = max(candidates, key=lambda r: r.get("score", 0.0)) if score is not None else candidates[0]
        shutil.copyfile(best["path"], out)
    candidates.sort(key=lambda r: r is not best)
    ops = op_counts(out)
    if not ops.get("QuantizeLinear"):
        notes.append("ONNX Runtime found nothing to quantize in this model (no QuantizeLinear inserted)")
    settings = {**SETTINGS, "ranges": best["ranges"], "op_types": list(OP_TYPES), "float_layers": keep_float}
    if not per_channel:
        settings["weights"] = "per-tensor symmetric QInt8"
    return QuantizeResult(path=out, batches=best["batches"], ops=ops, settings=settings, notes=notes,
                          candidates=[{k: v for k, v in r.items() if k not in ("path", "batches")} for r in candidates])
