"""Weights that stay in the .onnx file: a memory-mapped load and a streaming save.

`onnx.load` reads a file into one `bytes` and parses it into a second copy, so a model
whose weights are inside the .onnx costs twice its size in memory before any work, and
writing one serialises every tensor into a proto and then into bytes (two more copies).
Here the protobuf wire format is walked instead (it is simple: tag, then a varint, 8 or
4 bytes, or a length and that many bytes):

* `load_mapped` parses everything *but* the large `raw_data` fields of the main graph's
  initializers; each of those becomes an `ir.ExternalTensor` that points into the .onnx
  file itself (location = the file's own name, offset and length of its raw bytes), read
  through a memory map when something asks for its values, exactly like external data.
* `save_streamed` serialises the model with the initializers' data left out, then writes
  the file piece by piece, inserting each tensor's bytes where its `raw_data` field
  belongs (field order as protobuf writes it), one tensor in memory at a time.

Anything unusual in the wire data (a second graph field, groups, a tensor in another
encoding) makes `load_mapped` return None and the caller parse normally.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx_ir as ir

_LEN = 2  # wire type: length-delimited
_GRAPH = 7  # ModelProto.graph
_INITIALIZER = 5  # GraphProto.initializer
_DATA_TYPE, _NAME, _RAW_DATA = 2, 8, 9  # TensorProto fields
_EXTERNAL_DATA, _DATA_LOCATION = 13, 14
_STRING = 8  # TensorProto.STRING

MIN_MAPPED_BYTES = 1024  # smaller tensors are parsed as usual (shape math stays inline)


class WireError(ValueError):
    """The bytes are not protobuf as this walker reads it (the caller falls back)."""


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf, start: int, end: int):
    """(field number, wire type, start of the tag, start of the value, end) of each field."""
    pos = start
    while pos < end:
        tag, vpos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, vend = _varint(buf, vpos)
        elif wire == 1:
            vend = vpos + 8
        elif wire == 5:
            vend = vpos + 4
        elif wire == _LEN:
            n, vpos = _varint(buf, vpos)
            vend = vpos + n
        else:
            raise WireError(f"wire type {wire}")
        if vend > end or field == 0:
            raise WireError("field runs past its message")
        yield field, wire, pos, vpos, vend
        pos = vend


def _entry(key: str, value: str) -> bytes:
    body = bytearray()
    for num, text in ((1, key), (2, value)):
        data = text.encode()
        body += _encode_varint(num << 3 | _LEN) + _encode_varint(len(data)) + data
    return _encode_varint(_EXTERNAL_DATA << 3 | _LEN) + _encode_varint(len(body)) + bytes(body)


def _mappable(buf, start: int, end: int) -> tuple[int, int, int] | None:
    """(tag start, value start, value end) of a tensor's raw_data worth mapping, or None."""
    raw, dtype = [], None
    for field, wire, tag, vstart, vend in _fields(buf, start, end):
        if field in (_EXTERNAL_DATA, _DATA_LOCATION):
            return None  # already external
        if field == _DATA_TYPE and wire == 0:
            dtype = _varint(buf, vstart)[0]
        elif field == _RAW_DATA and wire == _LEN:
            raw.append((tag, vstart, vend))
    if len(raw) != 1 or dtype in (None, 0, _STRING) or raw[0][2] - raw[0][1] < MIN_MAPPED_BYTES:
        return None
    return raw[0]


def _stripped(buf, location: str) -> bytes | None:
    """The model's bytes with large initializer data replaced by external-data references
    to (location, offset, length) in `buf` itself; None when nothing is worth it."""
    graphs = [f for f in _fields(buf, 0, len(buf)) if f[0] == _GRAPH]
    if len(graphs) != 1 or graphs[0][1] != _LEN:
        return None
    _, _, gtag, gstart, gend = graphs[0]
    body, mapped = [], 0
    for field, wire, tag, vstart, vend in _fields(buf, gstart, gend):
        raw = _mappable(buf, vstart, vend) if field == _INITIALIZER and wire == _LEN else None
        if raw is None:
            body.append(buf[tag:vend])
            continue
        rtag, rstart, rend = raw
        tensor = b"".join((buf[vstart:rtag], buf[rend:vend], _entry("location", location),
                           _entry("offset", str(rstart)), _entry("length", str(rend - rstart)),
                           _encode_varint(_DATA_LOCATION << 3) + b"\x01"))
        body.append(_encode_varint(_INITIALIZER << 3 | _LEN) + _encode_varint(len(tensor)) + tensor)
        mapped += 1
    if not mapped:
        return None
    graph = b"".join(bytes(b) for b in body)
    return b"".join((buf[:gtag], _encode_varint(_GRAPH << 3 | _LEN), _encode_varint(len(graph)), graph,
                     buf[gend:]))


class _Reader:
    """Bytes of an open file by index and slice, read in small pieces (a memory map of the
    file would make every page whose header is read resident, 40% of resnet50's file)."""

    CHUNK = 256

    def __init__(self, f):
        self._fd = f.fileno()
        self._len = os.fstat(self._fd).st_size
        self._at, self._chunk = -1, b""

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, _ = key.indices(self._len)
            return os.pread(self._fd, max(0, stop - start), start)
        if not self._at <= key < self._at + len(self._chunk):
            self._at, self._chunk = key, os.pread(self._fd, self.CHUNK, key)
        if key >= self._at + len(self._chunk):
            raise IndexError(key)
        return self._chunk[key - self._at]


def load_mapped(path: str | os.PathLike) -> ir.Model | None:
    """The model at `path` with its large initializers memory-mapped from the file itself
    (None: nothing to map, or wire data this walker does not read; parse normally)."""
    import onnx

    path = Path(path)
    if path.is_symlink() or path.stat().st_nlink > 1:
        return None  # onnx_ir refuses to map through links (see ExternalTensor._check_path_containment)
    with open(path, "rb") as f:
        try:
            light = _stripped(_Reader(f), path.name)
        except WireError:
            return None
    if light is None:
        return None
    model = ir.serde.deserialize_model(onnx.load_from_string(light))
    from onnx_ir import external_data

    external_data.set_base_dir(model.graph, str(path.parent))
    return model


# ---- writing ------------------------------------------------------------------------------------


class _Hole(ir.ExternalTensor):
    """Stands for a tensor while the model is serialised without its data."""


def _hole(t) -> _Hole:
    return _Hole("", None, None, t.dtype, shape=t.shape, name=t.name, doc_string=t.doc_string,
                 metadata_props=dict(t.metadata_props) if t.metadata_props else None)


def _plain_tensor(fields: list, data) -> list:
    """A tensor message's pieces with `data` as raw_data and the external fields dropped,
    raw_data placed where protobuf's field order puts it."""
    kept = [f for f in fields if f[0] not in (_EXTERNAL_DATA, _DATA_LOCATION)]
    at = next((i for i, f in enumerate(kept) if f[0] > _RAW_DATA), len(kept))
    raw = [_encode_varint(_RAW_DATA << 3 | _LEN) + _encode_varint(len(data)), data]
    return [f[5] for f in kept[:at]] + raw + [f[5] for f in kept[at:]]


def save_streamed(model: ir.Model, path: str | os.PathLike) -> None:
    """Write `model` as one self-contained .onnx file without ever holding its serialised
    form: the graph is serialised with initializer data left out, and each tensor's bytes
    are written where they belong, read (from memory or a memory map) one at a time."""
    graph = model.graph
    swapped = {}
    for name, v in graph.initializers.items():
        t = v.const_value
        if t is not None and t.dtype not in (None, ir.DataType.STRING) and t.size:
            swapped[name] = t
            v.const_value = _hole(t)
    try:
        light = ir.serde.serialize_model(model).SerializeToString()
    finally:
        for name, t in swapped.items():
            graph.initializers[name].const_value = t
    _write(light, swapped, path)


def _tensor_pieces(buf, vstart: int, vend: int, swapped: dict) -> tuple[list, int] | None:
    fields, name = [], None
    for field, _wire, tag, _vs, vend_ in _fields(buf, vstart, vend):
        fields.append((field, _wire, tag, _vs, vend_, bytes(buf[tag:vend_])))
        if field == _NAME:
            name = bytes(buf[_vs:vend_]).decode()
    t = swapped.get(name)
    if t is None or not any(f[0] == _DATA_LOCATION for f in fields):
        return None
    data = _tensor_bytes(t)
    pieces = _plain_tensor(fields, data)
    return pieces, sum(len(p) for p in pieces)


_PACKED = {ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.FLOAT4E2M1, ir.DataType.INT2, ir.DataType.UINT2,
           ir.DataType.FLOAT6E2M3, ir.DataType.FLOAT6E3M2}


def _tensor_bytes(t):
    """`t.tobytes()`, or for a tensor of a numpy array (a pruned weight) the same bytes as a
    view of the array: `ir.Tensor.tobytes` is `array.tobytes()` (C order, the array's own
    byte order), a copy of every sliced weight otherwise made just to be written."""
    raw = getattr(t, "raw", None)
    plain = type(t).tobytes is ir.Tensor.tobytes and type(t).numpy is ir.Tensor.numpy
    if not plain or not isinstance(raw, np.ndarray) or t.dtype in _PACKED \
            or raw.dtype.itemsize != t.dtype.itemsize or raw.dtype.hasobject:
        return t.tobytes()
    return memoryview(np.ascontiguousarray(raw).reshape(-1).view(np.uint8))


def _write(light: bytes, swapped: dict, path) -> None:
    graphs = [f for f in _fields(light, 0, len(light)) if f[0] == _GRAPH]
    if len(graphs) != 1:
        raise WireError("serialised model without exactly one graph")
    _, _, gtag, gstart, gend = graphs[0]
    # First pass: sizes only (a tensor's bytes are produced again when written).
    sizes = []
    for field, wire, tag, vstart, vend in _fields(light, gstart, gend):
        t = None
        if field == _INITIALIZER and wire == _LEN:
            t = _swapped_of(light, vstart, vend, swapped)
        if t is None:
            sizes.append(vend - tag)
            continue
        head = vend - vstart - _external_bytes(light, vstart, vend) + _raw_overhead(t.nbytes)
        sizes.append(len(_encode_varint(_INITIALIZER << 3 | _LEN)) + len(_encode_varint(head)) + head)
    with open(path, "wb") as f:
        f.write(light[:gtag])
        f.write(_encode_varint(_GRAPH << 3 | _LEN) + _encode_varint(sum(sizes)))
        for k, (field, wire, tag, vstart, vend) in enumerate(_fields(light, gstart, gend)):
            got = _tensor_pieces(light, vstart, vend, swapped) if field == _INITIALIZER and wire == _LEN else None
            if got is None:
                f.write(light[tag:vend])
                continue
            pieces, n = got
            head = _encode_varint(_INITIALIZER << 3 | _LEN) + _encode_varint(n)
            if len(head) + n != sizes[k]:  # tobytes() disagreeing with nbytes: never write a bad file
                raise WireError(f"tensor {k}: {len(head) + n} bytes written, {sizes[k]} announced")
            f.write(head)
            for p in pieces:
                f.write(p)
            del pieces
        f.write(light[gend:])


def _swapped_of(buf, vstart: int, vend: int, swapped: dict):
    name, external = None, False
    for field, _wire, _tag, vs, ve in _fields(buf, vstart, vend):
        if field == _NAME:
            name = bytes(buf[vs:ve]).decode()
        elif field == _DATA_LOCATION:
            external = True
    return swapped.get(name) if external else None


def _external_bytes(buf, vstart: int, vend: int) -> int:
    return sum(e - t for field, _w, t, _v, e in _fields(buf, vstart, vend) if field in (_EXTERNAL_DATA, _DATA_LOCATION))


def _raw_overhead(n: int) -> int:
    return len(_encode_varint(_RAW_DATA << 3 | _LEN)) + len(_encode_varint(n)) + n
