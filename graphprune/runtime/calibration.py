"""Calibration data: re-iterable sources of feed batches, and a progress bar over them.

A `Calibration` is a re-iterable source of feed batches (``{input name: array}``), made
from one of three things (`load_calibration`):

* an ``.npz`` of inputs: one array per model input, samples along the first axis;
* a folder of images with a declared preprocessing (``size=48x320,mean=0.5,std=0.5,
  layout=nchw,color=rgb``): resized with Pillow, scaled to [0, 1], normalised;
* a Python callable ``module:function`` (or ``path/to/file.py:function``) returning an
  iterable of feed dicts (or of arrays, for single-input models).

`progress` draws a progress bar only when stderr is a terminal; otherwise progress goes
to the log. Statistics of the activations these batches produce are
`graphprune.runtime.stats`; running the model is `graphprune.runtime.ort`.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx_ir as ir

from graphprune.errors import GraphpruneError, UsageError
from graphprune.input_shapes import static_dim
from graphprune.runtime.ort import Feeds

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ---- sources ---------------------------------------------------------------------------
@dataclass
class Calibration:
    """Re-iterable calibration batches. `make` returns a fresh iterator of feed dicts."""

    make: Callable[[], Iterable[Feeds]]
    description: str = "calibration data"
    num_batches: int | None = None  # when known (for the progress bar)
    limit_batches: int | None = None
    # results derived from this data that do not depend on the pruning target (e.g.
    # sensitivity curves), reused when the same data prunes the same model again
    cache: dict = field(default_factory=dict, repr=False)

    def batches(self, limit: int | None = None) -> Iterator[Feeds]:
        limit = min(x for x in (limit, self.limit_batches, 1 << 62) if x is not None)
        for k, feeds in enumerate(self.make()):
            if k >= limit:
                return
            yield feeds

    def __iter__(self):
        return self.batches()

    def first(self) -> Feeds:
        for feeds in self.batches(1):
            return feeds
        raise UsageError(f"{self.description}: no calibration samples")

    def total(self, limit: int | None = None) -> int | None:
        n = [x for x in (self.num_batches, self.limit_batches, limit) if x is not None]
        return min(n) if n else None

    @classmethod
    def from_batches(cls, batches: list[Feeds], description: str = "in-memory batches") -> "Calibration":
        batches = list(batches)
        return cls(lambda: iter(batches), description, len(batches))


@dataclass
class ImagePreprocess:
    """How a folder of images becomes a model input (declared, never guessed)."""

    size: tuple[int, int] | None = None  # (height, width); None keeps the image size
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    layout: str = "nchw"  # or nhwc
    color: str = "rgb"  # rgb | bgr | gray
    input: str | None = None  # model input name (default: the first)

    @classmethod
    def parse(cls, text: str | None) -> "ImagePreprocess":
        """``size=48x320,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=nchw,color=rgb,scale=0.00392``"""
        p = cls()
        if not text:
            return p
        for item in text.split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise UsageError(f"calibration preprocessing {item!r}: expected key=value")
            k, v = (s.strip() for s in item.split("=", 1))
            try:
                if k == "size":
                    h, _, w = v.lower().partition("x")
                    p.size = (int(h), int(w or h))
                elif k in ("mean", "std"):
                    setattr(p, k, tuple(float(x) for x in v.replace(":", "/").split("/")))
                elif k == "scale":
                    p.scale = float(v)
                elif k == "layout" and v.lower() in ("nchw", "nhwc"):
                    p.layout = v.lower()
                elif k == "color" and v.lower() in ("rgb", "bgr", "gray"):
                    p.color = v.lower()
                elif k == "input":
                    p.input = v
                else:
                    raise ValueError(v)
            except ValueError:
                raise UsageError(f"calibration preprocessing: bad value for {k!r}: {v!r}",
                                 hint="keys: size=HxW, mean=a/b/c, std=a/b/c, scale, layout=nchw|nhwc, "
                                      "color=rgb|bgr|gray, input=NAME") from None
        p._check()
        return p

    def _check(self) -> None:
        """Values that parse but cannot preprocess an image (they surfaced as numpy errors
        reported as graphprune bugs, or as NaN inputs): refused with what would work."""
        channels = 1 if self.color == "gray" else 3
        problems = []
        if self.size is not None and min(self.size) <= 0:
            problems.append(f"size {self.size[0]}x{self.size[1]} must be positive")
        for key in ("mean", "std"):
            vals = getattr(self, key)
            if len(vals) not in (1, channels):
                wanted = "1 value" if channels == 1 else f"1 or {channels} values"
                problems.append(f"{key} needs {wanted} for color={self.color}, got {len(vals)}")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(self.std)) or not np.isfinite(self.scale):
            problems.append("mean, std and scale must be finite numbers")
        elif any(x == 0 for x in self.std) or self.scale == 0:
            problems.append("std and scale must be non-zero")
        if problems:
            raise UsageError("calibration preprocessing: " + "; ".join(problems),
                             hint="e.g. size=48x320,mean=0.5,std=0.5 or mean=0.485/0.456/0.406,std=0.229/0.224/0.225")

    def apply(self, path: Path) -> np.ndarray:
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - depends on the environment
            raise UsageError("reading calibration images needs Pillow", hint="pip install 'graphprune[images]'") from None
        with Image.open(path) as im:
            im = im.convert("L" if self.color == "gray" else "RGB")
            if self.size is not None:
                im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
        if a.ndim == 2:
            a = a[:, :, None]
        if self.color == "bgr":
            a = a[:, :, ::-1]
        a = a * self.scale
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        a = (a - mean) / std
        if self.layout == "nchw":
            a = a.transpose(2, 0, 1)
        return np.ascontiguousarray(a, dtype=np.float32)


def _input_info(model: ir.Model) -> list[tuple[str, list]]:
    return [(v.name, list(v.shape) if v.shape is not None else None) for v in model.graph.inputs]


def _fixed_batch(shape) -> int | None:
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return int(shape[0])
    return None


def _rows(feeds: Feeds) -> int:
    first = next(iter(feeds.values()))
    return int(np.shape(first)[0]) if np.ndim(first) else 1


def _batched_samples(samples: Callable[[], Iterable[Feeds]], batch_size: int, model: ir.Model) -> Callable:
    """Stack feeds (per-sample ones with a leading axis of 1, or whole feeds) into batches of
    `batch_size` rows, or of the model's fixed batch size: a whole feed that already has
    that many rows is a batch as it is (stacking four feeds of a fixed batch 4 made 16)."""
    fixed = {name: _fixed_batch(shape) for name, shape in _input_info(model)}
    bs = next((b for b in fixed.values() if b), None) or max(1, int(batch_size))

    def make():
        # samples of different sizes (images of several widths for a model with a dynamic
        # width) cannot be stacked: each size fills its own batches, in order of first sight
        bins: dict[tuple, tuple[list[Feeds], int]] = {}
        for s in samples():
            key = tuple((k, np.shape(v)[1:]) for k, v in s.items())
            buf, rows = bins.get(key, ([], 0))
            buf.append(s)
            rows += _rows(s)
            if rows >= bs:
                yield {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}
                buf, rows = [], 0
            bins[key] = (buf, rows)
        if not any(fixed.values()):
            for buf, _ in bins.values():
                if buf:
                    yield {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}

    return make, bs


def from_npz(path: str | Path, model: ir.Model, batch_size: int = 8, limit: int | None = None) -> Calibration:
    path = Path(path)
    try:
        z = np.load(path)
        arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise UsageError(f"{path}: cannot read calibration inputs as .npz ({exc})") from None
    return from_arrays(arrays, model, batch_size, limit, path.name)


def from_arrays(arrays: dict, model: ir.Model, batch_size: int = 8, limit: int | None = None,
                source: str = "calibration arrays") -> Calibration:
    """{input name: samples along axis 0} (an .npz's arrays, or given in memory), batched."""
    inputs = _input_info(model)
    names = [n for n, _ in inputs]
    if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays:
        log.info("calibration: array %r of %s taken as the model's only input %r", next(iter(arrays)), source,
                 names[0])
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UsageError(f"{source}: no array for model input(s) {missing}", hint=f"arrays found: {sorted(arrays)}")
    ranks = {n: len(s) if s is not None else None for n, s in inputs}
    per_sample = {}
    for n in names:
        a = arrays[n]
        # one more axis than the input: a list of samples, each a whole feed of batch 1..k
        if ranks[n] is not None and a.ndim == ranks[n] + 1:
            per_sample[n] = [a[i] for i in range(a.shape[0])]
        else:
            per_sample[n] = [a[i:i + 1] for i in range(a.shape[0])]
    count = min(len(v) for v in per_sample.values())
    if limit:
        count = min(count, int(limit))

    def samples():
        for i in range(count):
            yield {n: per_sample[n][i] for n in names}

    make, bs = _batched_samples(samples, batch_size, model)
    rows = count * (_rows({n: per_sample[n][0] for n in names}) if count else 1)
    return Calibration(make, f"{source} ({count} samples)", -(-rows // bs))


def from_images(folder: str | Path, model: ir.Model, preprocess: ImagePreprocess, batch_size: int = 8,
                limit: int | None = None) -> Calibration:
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    if limit:
        files = files[: int(limit)]
    names = [n for n, _ in _input_info(model)]
    name = preprocess.input or names[0]
    if name not in names:
        raise UsageError(f"calibration preprocessing names input {name!r}; the model has {names}")
    if len(names) > 1:
        raise UsageError("a folder of images can only feed a single-input model",
                         hint="give an .npz or a module:function for several inputs")
    if preprocess.size is None and len(files) > 1:
        _say_sizes(files)

    def samples():
        for f in files:
            yield {name: preprocess.apply(f)[None]}

    make, bs = _batched_samples(samples, batch_size, model)
    return Calibration(make, f"{folder} ({len(files)} images)", -(-len(files) // bs))


def _say_sizes(files: list[Path]) -> None:
    """Images not resized (no size=HxW): batched size by size, and the run's figures are at
    the first one's size — said when there are several (the first batch gave the summary's
    "measured at" without a word about the others)."""
    from PIL import Image

    sizes: dict[tuple[int, int], int] = {}
    for f in files:
        with Image.open(f) as im:  # the header only
            sizes[im.size] = sizes.get(im.size, 0) + 1
    if len(sizes) == 1:
        return
    (w, h), shown = next(iter(sizes)), ", ".join(f"{w}x{h} ({n})" for (w, h), n in list(sizes.items())[:4])
    log.info("calibration images come in %d sizes (width x height: %s%s), not resized (no size=HxW): each size "
             "fills its own batches, and the figures (MACs, latency, the oracle's inputs) are measured at the "
             "first image's, %dx%d", len(sizes), shown, ", ..." if len(sizes) > 4 else "", w, h)


def load_callable(spec: str, flag: str):
    """The function named by `module:function` or `path/to/file.py:function` (the form of
    --calib and --score); a usage error naming `flag` when it cannot be imported."""
    mod_name, _, fn_name = spec.rpartition(":")
    if not mod_name or not fn_name:
        raise UsageError(f"{flag} {spec!r}: expected module:function")
    try:
        if mod_name.endswith(".py") or "/" in mod_name:
            s = importlib.util.spec_from_file_location(Path(mod_name).stem, mod_name)
            if s is None or s.loader is None:
                raise ImportError(mod_name)
            mod = importlib.util.module_from_spec(s)
            s.loader.exec_module(mod)
        else:
            mod = importlib.import_module(mod_name)
        fn = getattr(mod, fn_name)
    except (ImportError, AttributeError, OSError) as exc:
        raise UsageError(f"{flag} {spec!r}: cannot import ({exc})") from None
    return _reported_as_the_user_s(fn, spec, flag)


def _reported_as_the_user_s(fn, spec: str, flag: str):
    """`fn` whose exceptions (on the call, or while iterating what it returns) name it as
    the user's code: they were reported as graphprune's own bugs ("internal error ...
    please report it")."""
    import functools
    import inspect

    def said(exc: Exception) -> UsageError:
        return UsageError(f"{flag} {spec!r} raised {type(exc).__name__}: {exc}",
                          hint="the error is in that function (rerun with -v for its traceback)")

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            out = fn(*args, **kwargs)
        except GraphpruneError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code: anything it raises is theirs
            raise said(exc) from exc
        return _iterated(out, said) if inspect.isgenerator(out) else out

    return call


def _iterated(gen, said):
    try:
        yield from gen
    except GraphpruneError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise said(exc) from exc


def from_callable(spec: str, model: ir.Model, batch_size: int = 8, limit: int | None = None) -> Calibration:
    fn = load_callable(spec, "--calib")
    names = [n for n, _ in _input_info(model)]

    def make():
        for k, item in enumerate(fn()):
            if limit and k >= int(limit):
                return
            if isinstance(item, dict):
                yield {n: np.asarray(v) for n, v in item.items()}
            elif len(names) == 1:
                yield {names[0]: np.asarray(item)}
            else:
                raise UsageError(f"{spec} yielded a {type(item).__name__}; a model with several inputs "
                                 "needs dicts {input name: array}")

    return Calibration(make, spec)


def load_calibration(spec: str | Calibration | None, model: ir.Model, *, preprocess: str | None = None,
                     batch_size: int = 8, limit: int | None = None) -> Calibration | None:
    """`spec`: an .npz file, a folder of images (with `preprocess`), or module:function;
    every batch checked against the model's inputs (`check_feeds`), the first before any
    work. A `Calibration` object is returned as it is, its first batch checked."""
    if spec is None:
        return None
    if isinstance(spec, Calibration):
        first = spec.first()
        fitted = check_feeds(first, model, spec.description)
        if any(np.asarray(first[k]).dtype != fitted[k].dtype for k in first):  # an object's batches are not rewritten
            raise UsageError(f"{spec.description}: batch dtypes differ from the model's inputs",
                             hint=", ".join(f"{k}: {np.asarray(first[k]).dtype} -> {fitted[k].dtype}" for k in first))
        _say_padding(fitted)
        _say_constant(fitted, spec.description)
        return spec
    calib = _calibration_source(spec, model, preprocess, batch_size, limit)
    hint = _resize_hint(model, preprocess) if isinstance(spec, (str, Path)) and Path(spec).is_dir() else None
    calib.make = _checked(calib.make, model, calib.description, hint)
    first = calib.first()  # a batch the model cannot take fails here, before any work
    _say_padding(first)
    _say_constant(first, calib.description)
    return calib


def _say_constant(first: Feeds, description: str) -> None:
    """A float input whose first batch holds one value throughout (all zeros, a placeholder):
    every statistic, the search and the quality gate would be measured on it and report a
    perfect 1.0000 without a word (probe)."""
    for name, v in first.items():
        a = np.asarray(v)
        if a.dtype.kind == "f" and a.size > 1 and np.all(a == a.flat[0]):
            log.warning("calibration data %s: input %r is constant in the first batch (every value %g); "
                        "importance, repairs, the search and the quality gate measured on it say little about "
                        "real inputs", description, name, float(a.flat[0]))


def _say_padding(first: Feeds) -> None:
    from graphprune.runtime.positions import padding_note

    note = padding_note(first)
    if note:
        log.info("%s", note)


def _resize_hint(model: ir.Model, preprocess: str | None) -> str:
    """What to put in --calib-preprocess so that a folder's images take the model's input:
    its size, and the layout and colour its channel axis asks for (a hint that kept
    `layout=nhwc` or `color=gray` when those were the mismatch repeated the cause)."""
    pre = ImagePreprocess.parse(preprocess)
    dims = list(_input_info(model)[0][1] or [])
    fixes = _layout_color_fixes(pre, dims)
    hw = dims[1:3] if fixes.get("layout", pre.layout) == "nhwc" else dims[2:4]
    size = f"{hw[0]}x{hw[1]}" if len(hw) == 2 and all(isinstance(d, int) for d in hw) else "HxW"
    rest = [item for item in (preprocess or "").split(",")
            if item and item.split("=")[0].strip() not in ("size", *fixes)]
    spec = ",".join([f"size={size}", *rest, *(f"{k}={v}" for k, v in fixes.items())])
    return ("match the model's input" if fixes else "resize the images to the model's input") + \
        f": --calib-preprocess {spec}"


def _layout_color_fixes(pre: ImagePreprocess, dims: list) -> dict:
    """{"layout": ..., "color": ...} where the model's 4-D input (1 or 3 channels on one
    axis) disagrees with the declared preprocessing."""
    if len(dims) != 4:
        return {}
    fixes = {}
    channels = lambda layout: dims[1] if layout == "nchw" else dims[3]  # noqa: E731
    if channels(pre.layout) not in (1, 3):
        other = "nchw" if pre.layout == "nhwc" else "nhwc"
        if channels(other) in (1, 3):
            fixes["layout"] = other
    c = channels(fixes.get("layout", pre.layout))
    if c == 3 and pre.color == "gray":
        fixes["color"] = "rgb"
    elif c == 1 and pre.color != "gray":
        fixes["color"] = "gray"
    return fixes


def _in_memory(spec, model: ir.Model, batch_size: int, limit: int | None) -> Calibration | None:
    """Calibration data given in Python: {input name: array of samples}, one array (a
    one-input model's), or a list of feed dicts (each a batch); None for anything else."""
    if isinstance(spec, (dict, list, tuple)) and not spec:
        raise UsageError(f"calibration data: an empty {type(spec).__name__}", hint="give at least one sample")
    if isinstance(spec, np.ndarray):
        spec = {"(array)": spec}
    if isinstance(spec, dict) and all(isinstance(v, np.ndarray) for v in spec.values()) and spec:
        return from_arrays(dict(spec), model, batch_size, limit, "calibration arrays")
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(b, dict) for b in spec):
        batches = [{k: np.asarray(v) for k, v in b.items()} for b in spec[:limit] if b]
        return Calibration(lambda: iter(batches), f"{len(batches)} in-memory batches", len(batches))
    return None


def _calibration_source(spec, model: ir.Model, preprocess: str | None, batch_size: int,
                        limit: int | None) -> Calibration:
    if (given := _in_memory(spec, model, batch_size, limit)) is not None:
        return given
    if not isinstance(spec, (str, Path)):
        raise UsageError(f"calibration data of type {type(spec).__name__} is not one graphprune reads",
                         hint="give a path (an .npz or an image folder), module:function, {input name: array of "
                              "samples}, a list of feed dicts, or a Calibration")
    p = Path(spec)
    if p.is_dir():
        return from_images(p, model, ImagePreprocess.parse(preprocess), batch_size, limit)
    if p.suffix == ".npz":
        if not p.exists():
            raise UsageError(f"{p}: no such calibration file")
        return from_npz(p, model, batch_size, limit)
    if ":" in str(spec):
        return from_callable(str(spec), model, batch_size, limit)
    raise UsageError(f"--calib {spec!r}: not an .npz file, a folder of images or module:function")


# ---- checking batches against the model ---------------------------------------------------
def _model_inputs(model: ir.Model) -> dict[str, ir.Value]:
    inits = set(model.graph.initializers)
    return {v.name: v for v in model.graph.inputs if v.name not in inits}


def _show(shape) -> str:
    """[N, 3, 48, ?]: static sizes, symbolic names, ? for unnamed dims."""
    names = [d if static_dim(d) else None if isinstance(d, int) else getattr(d, "value", d) for d in shape]
    return "[" + ", ".join("?" if d is None else str(d) for d in names) + "]"


def _fit_dtype(a: np.ndarray, want, name: str, source: str) -> np.ndarray:
    """`a` as the model's element type: float to float, integer to integer (values in range)."""
    if want is None or a.dtype == want:
        return a
    same_kind = (np.issubdtype(a.dtype, np.floating) and np.issubdtype(want, np.floating)) or \
        (np.issubdtype(a.dtype, np.integer) and np.issubdtype(want, np.integer)
         and (a.size == 0 or (np.iinfo(want).min <= a.min() and a.max() <= np.iinfo(want).max)))
    if not same_kind:
        raise UsageError(f"{source}: input {name!r} is {a.dtype}, the model takes {np.dtype(want).name}")
    return a.astype(want)


def check_feeds(feeds: Feeds, model: ir.Model, source: str, shape_hint: str | None = None) -> Feeds:
    """One calibration batch made fit for `model`, or a UsageError naming what does not fit:
    an input the model lacks, a rank or static size it cannot take, NaN or infinite values,
    an integer array for a float input (or the reverse). Float arrays of another precision
    (numpy's float64) are cast to the model's float type, integers to its integer type."""
    inputs = _model_inputs(model)
    out = {}
    for name, value in feeds.items():
        v = inputs.get(name)
        if v is None:
            raise UsageError(f"{source}: array {name!r} is not an input of the model",
                             hint=f"inputs: {', '.join(inputs)}")
        a = _fit_dtype(np.asarray(value), v.dtype.numpy() if v.dtype is not None else None, name, source)
        if v.shape is not None:
            dims = list(v.shape)
            static = [d if static_dim(d) else None for d in dims]
            if a.ndim != len(dims) or any(s is not None and s != n for s, n in zip(static, a.shape, strict=True)):
                raise UsageError(f"{source}: input {name!r} has shape {list(a.shape)}; the model takes "
                                 f"{_show(dims)}", hint=shape_hint)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise UsageError(f"{source}: input {name!r} holds NaN or infinite values")
        out[name] = a
    return out


def _checked(make: Callable[[], Iterable[Feeds]], model: ir.Model, source: str,
             shape_hint: str | None = None) -> Callable:
    def checked():
        for feeds in make():
            yield check_feeds(feeds, model, source, shape_hint)

    return checked


# ---- progress --------------------------------------------------------------------------
def progress(items: Iterable, total: int | None, desc: str, unit: str = "batches") -> Iterator:
    """A progress bar with an ETA on a terminal (stderr; not with -q), log lines every 10 s
    otherwise. `unit` names what `items` are ("batches", "groups", ...)."""
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty() and \
        logging.getLogger("graphprune").isEnabledFor(logging.INFO)
    t0 = time.perf_counter()
    last_log = t0
    k = width = 0
    for k, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if tty:
            line = progress_line(desc, k, total, unit, now - t0)
            sys.stderr.write("\r" + line.ljust(width))  # a shorter line overwrites all of the last one
            sys.stderr.flush()
            width = len(line)
        elif now - last_log > 10.0:
            last_log = now
            log.info("%s", progress_line(desc, k, total, unit, now - t0, bar=False))
    if tty:
        sys.stderr.write("\n")
        sys.stderr.flush()
    log.debug("%s: %d %s in %.2fs", desc, k, unit, time.perf_counter() - t0)


def progress_line(desc: str, done: int, total: int | None, unit: str, elapsed: float, bar: bool = True) -> str:
    """'sensitivity sweep [#####.....] 3/17 groups 4.2s, ETA 19.6s' (no bar, no ETA when the
    total is unknown)."""
    if not total:
        return f"{desc}: {done} {unit} {elapsed:.1f}s"
    filled = int(30 * min(done, total) / total)
    eta = elapsed / done * max(total - done, 0) if done else 0.0
    drawn = f" [{'#' * filled}{'.' * (30 - filled)}]" if bar else ":"
    return f"{desc}{drawn} {done}/{total} {unit} {elapsed:.1f}s, ETA {eta:.1f}s"
