"""Representative input shapes: the one concrete shape per model input that a run measures
and checks at (the oracle's inputs now; MACs, latency and reports later).

Resolution order, per input (`resolve`):

1. the user's shapes (`--input-shape name:d1,d2,...`, or `{symbolic dim: size}`),
2. the calibration data's shapes (batch 1 where the model's batch is dynamic),
3. the model's static dims, when every dim is static,
4. a per-kind default the model can run (below), documented so summaries can say it.

Per-kind defaults for symbolic dims (the batch, axis 0, is always 1):

* image-like (a 4-D float input, NCHW, or NHWC when only the last dim is a small static
  channel count): both spatial dims symbolic -> 224×224 (divisible by 32, so detectors
  that downsample 5 times run and see structure); one static spatial dim s (a text-line
  recogniser's H=48) -> the other is 4·s rounded up to a multiple of 32, at least 64
  (48 -> 192). A symbolic channel dim is 3. Some models cannot run at 224×224 (a
  recogniser that needs the height to pool to 1): `candidates` gives the fallbacks
  64×256 and 32×320, which the oracle tries in turn when the first does not run.
* anything else (token ids, sequences, features): 32 per symbolic dim (32 tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

BATCH = 1
IMAGE_SIZES = ((224, 224), (64, 256), (32, 320))  # (H, W) when both are symbolic: default, then fallbacks
SEQUENCE = 32


@dataclass
class InputSpec:
    """What the resolver needs to know about a model input."""

    name: str
    shape: list  # ints (static), str/None/negative (symbolic)
    floating: bool = True


@dataclass
class InputShapes:
    """{input name: concrete shape} and where each came from ("--input-shape",
    "calibration data", "static dims", "default for image inputs", ...)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    # random integer inputs are drawn from [0, int_high[name]) (default [0, 2): safe for any
    # index); a vocabulary-sliced model's token ids cover all kept ids (slice_vocab); an
    # (input, axis) pair: up to that dim's size at these shapes, inclusive (key lengths)
    int_high: dict[str, int | tuple[str, int]] = field(default_factory=dict)

    def high(self, name: str, default: int) -> int:
        """The exclusive upper bound of `name`'s random integers at these shapes."""
        h = self.int_high.get(name, default)
        return int(self.shapes[h[0]][h[1]]) + 1 if isinstance(h, tuple) else h

    @property
    def defaulted(self) -> bool:
        return any(s.startswith("default") for s in self.sources.values())

    def describe(self) -> str:
        """'x: 1×3×224×224 (default for image inputs)' per input, comma-separated."""
        return ", ".join(f"{n}: {shape_text(s)} ({self.sources[n]})" for n, s in self.shapes.items())

    def to_json(self) -> dict:
        """{input: {"shape": [...], "source": "..."}} (report.json's "input_shapes")."""
        return {n: {"shape": list(s), "source": self.sources[n]} for n, s in self.shapes.items()}

    @classmethod
    def from_json(cls, d: dict) -> InputShapes:
        return cls({n: tuple(v["shape"]) for n, v in d.items()}, {n: v["source"] for n, v in d.items()})

    def measured_at(self) -> str:
        """'measured at x: 1×3×48×320 (from --calib)': the line summaries state their figures with."""
        def src(s: str) -> str:
            return {"--input-shape": "from --input-shape", "calibration data": "from --calib",
                    "static dims": "the model's static dims"}.get(s, s)
        return "measured at " + ", ".join(f"{n}: {shape_text(s)} ({src(self.sources[n])})"
                                          for n, s in self.shapes.items())

    def short(self) -> str:
        """'x:1x3x224x224' per input (the form --input-shape takes, with x for commas)."""
        return " ".join(f"{n}:{'x'.join(str(d) for d in s)}" for n, s in self.shapes.items())


def shape_text(shape) -> str:
    """1×3×224×224; a rank-0 input (a flag) is 'scalar', not an empty string."""
    return "×".join(str(d) for d in shape) if len(shape) else "scalar"


def static_dim(d) -> bool:
    """A concrete size: an int >= 0 (exporters write -1 for a dynamic size; it is not one)."""
    return isinstance(d, int) and not isinstance(d, bool) and d >= 0


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _image_layout(spec: InputSpec) -> tuple[int, int, int] | None:
    """(channel axis, H axis, W axis) for an image-like input, else None."""
    s = spec.shape
    if not spec.floating or len(s) != 4:
        return None
    if static_dim(s[3]) and s[3] in (1, 3, 4) and not static_dim(s[1]):
        return 3, 1, 2  # NHWC
    return 1, 2, 3


def _default_shape(spec: InputSpec, attempt: int, dims: Mapping | None) -> tuple[list[int], str]:
    shape = list(spec.shape)
    out: list[int | None] = [None] * len(shape)
    for k, d in enumerate(shape):
        if static_dim(d):
            out[k] = int(d)
        elif dims and isinstance(d, str) and d in dims:
            out[k] = int(dims[d])
    layout = _image_layout(spec)
    # what was defaulted names the label: only the batch of an otherwise static input is no
    # "sequence" (a [N, 64] feature vector read "default for sequence inputs")
    only_batch = not layout and [k for k, d in enumerate(out) if d is None] == [0]
    kind = "image" if layout else ("sequence" if not spec.floating or len(shape) <= 3 else "tensor")
    if layout:
        c, h, w = layout
        if out[c] is None:
            out[c] = 3
        if out[h] is None and out[w] is None:
            out[h], out[w] = IMAGE_SIZES[min(attempt, len(IMAGE_SIZES) - 1)]
        elif out[h] is None or out[w] is None:
            known = out[w] if out[h] is None else out[h]
            other = max(64, _round_up(4 * known, 32))
            out[h if out[h] is None else w] = other
    for k in range(len(out)):
        if out[k] is None:
            out[k] = BATCH if k == 0 else SEQUENCE
    return [int(d) for d in out], ("default batch" if only_batch else f"default for {kind} inputs")


def candidates(specs: Iterable[InputSpec]) -> int:
    """How many default attempts `resolve(..., attempt=k)` has (image fallbacks)."""
    return len(IMAGE_SIZES) if any(_image_layout(s) for s in specs) else 1


def check_user(specs: Iterable[InputSpec], user: Mapping) -> None:
    """The user's shapes (--input-shape) fit the model, or a UsageError says which does not:
    every verb refuses the same shapes (inspect counted MACs at a shape the model cannot
    take, and said it had)."""
    from graphprune.errors import UsageError

    by_name = {s.name: s for s in specs}
    for name, dims in user.items():
        spec = by_name.get(name)
        if spec is None:
            raise UsageError(f"--input-shape: the model has no input {name!r}", hint=f"inputs: {', '.join(by_name)}")
        dims = [int(d) for d in dims]
        if any(d <= 0 for d in dims):  # 0: an empty input, at which inspect counted the MACs of size 1
            raise UsageError(f"--input-shape {name}: {dims} has a negative or zero size",
                             hint="give sizes of at least 1")
        old = spec.shape
        if old and len(old) != len(dims):
            raise UsageError(f"--input-shape {name}: rank {len(dims)} given, the input has rank {len(old)}")
        if old and any(static_dim(o) and o != d for o, d in zip(old, dims, strict=True)):
            raise UsageError(f"--input-shape {name}: {dims} contradicts the model's static shape {list(old)}")


def resolve(specs: Iterable[InputSpec], *, user: Mapping | None = None, calib: Mapping | None = None,
            dims: Mapping | None = None, dim_value: int | None = None, attempt: int = 0) -> InputShapes:
    """Concrete shapes for `specs`. `user`: {input name: shape} (from --input-shape);
    `calib`: {input name: array or shape} (one calibration batch); `dims`: {symbolic dim
    name: size}; `dim_value`: one size for every symbolic dim (tests); `attempt`: which
    image default to use (0 = 224×224, see `candidates`).

    A symbolic dim name is one size in every input that has it (an image x[N,3,H,W] and its
    mask m[N,1,H,W]): inputs are resolved in the order above, and a dim named by an input
    already resolved takes that input's size (the mask had the 32 of a sequence default)."""
    specs = list(specs)
    if user:
        check_user(specs, user)
    res = InputShapes()
    bound, named_by = dict(dims or {}), {}  # symbolic dim -> size, and the input it came from
    for spec in sorted(specs, key=lambda sp: _order(sp, user, calib)):
        shape, source = _one(spec, user, calib, bound, dim_value, attempt)
        shared = sorted({named_by[d] for d in _symbols(spec) if d in named_by})
        if shared and source == "given dims" and not dims:
            source = f"dims named as in {', '.join(shared)}"
        elif shared and source.startswith("default"):
            source += f"; dims named as in {', '.join(shared)} of the same size"
        res.shapes[spec.name], res.sources[spec.name] = tuple(shape), source
        _bind(spec, shape, bound, named_by)
    order = [sp.name for sp in specs]  # the model's order, as before
    res.shapes = {n: res.shapes[n] for n in order}
    res.sources = {n: res.sources[n] for n in order}
    return res


def _symbols(spec: InputSpec) -> list[str]:
    return [d for d in (spec.shape or []) if isinstance(d, str)]


def _order(spec: InputSpec, user, calib) -> int:
    """Which inputs name the size of a shared dim first: the user's, calibration data's,
    static ones, then images (their spatial default), then the rest."""
    if user and spec.name in user:
        return 0
    if calib and spec.name in calib:
        return 1
    if spec.shape is not None and all(static_dim(d) for d in spec.shape):
        return 2
    return 3 if _image_layout(InputSpec(spec.name, list(spec.shape or []), spec.floating)) else 4


def _bind(spec: InputSpec, shape, bound: dict, named_by: dict) -> None:
    """Record the sizes this input gave its symbolic dims; a name given two sizes in one
    input (PP-OCR names H and W both '?') names no size."""
    seen: dict = {}
    for d, n in zip(spec.shape or [], shape, strict=False):
        if isinstance(d, str):
            seen.setdefault(d, set()).add(int(n))
    for d, sizes in seen.items():
        if d not in bound and len(sizes) == 1 and d != "?":
            bound[d], named_by[d] = sizes.pop(), spec.name


def _one(spec: InputSpec, user, calib, bound: dict, dim_value, attempt) -> tuple[list[int], str]:
    """One input's shape and where it came from (`resolve`'s order)."""
    name = spec.name
    if user and name in user:
        return [int(d) for d in user[name]], "--input-shape"
    if calib and name in calib:
        got = [int(d) for d in getattr(calib[name], "shape", calib[name])]
        if got and spec.shape and not static_dim(spec.shape[0]):
            got[0] = BATCH
        return got, "calibration data"
    if spec.shape is not None and all(static_dim(d) for d in spec.shape):
        return [int(d) for d in spec.shape], "static dims"
    if spec.shape is not None and bound and all(static_dim(d) or (isinstance(d, str) and d in bound)
                                                for d in spec.shape):
        return [int(d) if static_dim(d) else int(bound[d]) for d in spec.shape], "given dims"
    if dim_value is not None:
        return [int(d) if static_dim(d) else int(dim_value) for d in (spec.shape or [])], "given dims"
    return _default_shape(InputSpec(name, list(spec.shape or []), spec.floating), attempt, bound)


def specs_of_session(sess) -> list[InputSpec]:
    """Input specs from an ONNX Runtime session."""
    return [InputSpec(i.name, list(i.shape) if i.shape is not None else [],
                      "float" in i.type or "double" in i.type) for i in sess.get_inputs()]


def specs_of_model(model) -> list[InputSpec]:
    """Input specs from an onnx_ir model (initializers that are also inputs excluded)."""
    out = []
    inits = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.name in inits:
            continue
        shape = [d if isinstance(d, int) else (str(d) if d is not None else None) for d in v.shape] \
            if v.shape is not None else []
        floating = v.dtype is not None and v.dtype.is_floating_point()
        out.append(InputSpec(v.name, shape, floating))
    return out


# ---- a second size of every dynamic dim (the oracle) -------------------------------------------
#
# A model with dynamic dims is written with them (`analyse_at`), so the oracle proves it at
# two sizes of each: the representative shapes, and one set in which every dynamic dim has
# another size. Batch (axis 0 of a rank >= 2 input) -> 2 (1 when it was 2); an image's
# spatial dim s -> half of it rounded up to a multiple of 32 (at least 32; 320 -> 160,
# 224 -> 128), else s + 32 (room to downsample); any other dim s -> s // 2 (at least 1),
# else 2·s. Dims that share a symbolic name are one dim (input_ids and attention_mask keep
# one length). The oracle tries every dim at its first, then its second candidate, then
# dim by dim, keeping the changes the input model runs with.


def _dynamic(d) -> bool:
    return not static_dim(d)


def _dim_key(spec: InputSpec, axis: int) -> str:
    d = spec.shape[axis]
    return d if isinstance(d, str) and d not in ("", "?") else f"{spec.name}[{axis}]"


def dynamic_dims(specs: Iterable[InputSpec]) -> list[str]:
    """The dynamic dims of `specs`, once each: a symbolic name, or 'x[2]' for an unnamed dim
    (empty: a static model)."""
    keys: dict[str, None] = {}
    for s in specs:
        for ax, d in enumerate(s.shape or []):
            if _dynamic(d):
                keys[_dim_key(s, ax)] = None
    return list(keys)


def _other_size(size: int, candidate: int, *, batch: bool, spatial: bool) -> int:
    if batch:
        return 1 if size == 2 else 2
    if spatial:
        half = max(32, _round_up(size // 2, 32))
        options = [half if half != size else size + 32, size + 32]
    else:
        options = [max(1, size // 2) if size > 1 else 2, 2 * size]
    return options[min(candidate, 1)]


def other_sizes(specs: Iterable[InputSpec], shapes: InputShapes, choice: Mapping[str, int] | int = 0
                ) -> InputShapes | None:
    """`shapes` with dynamic dims of `specs` at another size (see above). `choice`: which
    candidate (0 or 1) for every dynamic dim, or {dim (as `dynamic_dims` names it):
    candidate} for some of them. None when that changes nothing."""
    out = InputShapes(int_high=dict(shapes.int_high))
    chosen: dict[str, int] = {}  # dim -> its new size: a shared name changes everywhere alike
    changed = False
    for spec in specs:
        base = shapes.shapes.get(spec.name)
        if base is None:
            continue
        new = list(base)
        layout = _image_layout(spec)
        for ax, d in enumerate(spec.shape or []):
            if ax >= len(new) or not _dynamic(d) or (layout and ax == layout[0]):
                continue
            key = _dim_key(spec, ax)
            candidate = choice if isinstance(choice, int) else choice.get(key)
            if candidate is None:
                continue
            if key not in chosen:
                chosen[key] = _other_size(int(new[ax]), candidate, batch=ax == 0 and len(new) >= 2,
                                          spatial=layout is not None and ax in layout[1:])
            new[ax] = chosen[key]
            changed |= new[ax] != base[ax]
        out.shapes[spec.name] = tuple(new)
        out.sources[spec.name] = "another size of the dynamic dims" if tuple(new) != tuple(base) else \
            shapes.sources.get(spec.name, "")
    return out if changed else None

