"""What ONNX Runtime or TensorRT would read from an ONNX graph file, found without loading it: the graph's
inputs and outputs, and every external-data reference of every tensor, wherever the tensor sits
(initializers, sparse initializers, node attributes, subgraphs of If/Loop/Scan, model-local functions,
training graphs). `check_graph` compares them with what the manifest declares, before any session opens.

Why a protobuf reader of its own: the lean runtime has onnxruntime, not onnx (and onnx's Python
protobuf classes come with onnx). ONNX's wire format is plain protobuf, so a few dozen lines walk
onnx.proto's messages by field number and skip everything else by its length; raw tensor bytes are
never copied (the file is mmapped), so a multi-GB inline graph costs no memory. One code path, with
or without onnx installed; tests compare it with onnx's own reading. Protobuf's merge rules are
respected conservatively: every occurrence of a message field is walked, and every `location` entry
of every tensor is checked, not only the one a runtime would pick.

Lean: stdlib only.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from monkey_trt.core.errors import EngineDirError

MAX_DEPTH = 64  # nested messages (graphs in attributes in nodes in graphs ...): deeper is refused, not a RecursionError

# TensorProto.DataType -> the numpy dtype names the manifest uses
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
               9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64",
               15: "complex128", 16: "bfloat16"}
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class GraphFormatError(ValueError):
    """The file is not a protobuf ONNX model this reader can walk."""


@dataclass(frozen=True)
class ValueInfo:
    name: str
    elem_type: int  # TensorProto.DataType (0: not a tensor or not given)
    dims: tuple[int | str, ...]  # dim_value, else dim_param ("" when neither is given)
    has_shape: bool


@dataclass(frozen=True)
class ExternalRef:
    tensor: str
    locations: tuple[str, ...]  # every `location` entry (normally one)
    offset: str | None
    length: str | None
    data_location: int


@dataclass
class GraphScan:
    inputs: list[ValueInfo] = field(default_factory=list)  # graph inputs that are not initializers
    outputs: list[ValueInfo] = field(default_factory=list)
    external: list[ExternalRef] = field(default_factory=list)

    @property
    def locations(self) -> list[str]:
        return [loc for ref in self.external for loc in ref.locations]


# -- the wire format ------------------------------------------------------------------------------
def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise GraphFormatError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf, pos: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited field) of one message."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield num, 0, value
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise GraphFormatError("a field runs past the end of its message")
            yield num, 2, (pos, pos + n)
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise GraphFormatError(f"wire type {wire} is not used by ONNX")
        if pos > end:
            raise GraphFormatError("a field runs past the end of its message")


def _text(buf, span: tuple[int, int]) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise GraphFormatError("a string is not valid UTF-8") from None


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class _Walker:
    def __init__(self, buf):
        self.buf = buf
        self.scan = GraphScan()

    def _sub(self, span, depth: int):
        if depth > MAX_DEPTH:
            raise GraphFormatError(f"messages nested deeper than {MAX_DEPTH}")
        return _fields(self.buf, span[0], span[1])

    def model(self, end: int) -> None:
        graphs = 0
        for num, wire, v in _fields(self.buf, 0, end):
            if wire != 2:
                continue
            if num == 7:  # graph
                graphs += 1
                self.graph(v, 1, top=True)
            elif num == 20:  # training_info
                for n2, w2, v2 in self._sub(v, 1):
                    if w2 == 2 and n2 in (1, 2):  # initialization, algorithm
                        self.graph(v2, 2, top=False)
            elif num == 25:  # functions
                self.function(v, 1)
        if not graphs:
            raise GraphFormatError("no graph in it")

    def graph(self, span, depth: int, top: bool) -> None:
        inputs, outputs, inits = [], [], set()
        for num, wire, v in self._sub(span, depth):
            if wire != 2:
                continue
            if num == 1:
                self.node(v, depth + 1)
            elif num == 5:
                inits.add(self.tensor(v, depth + 1))
            elif num == 15:
                self.sparse(v, depth + 1)
            elif top and num == 11:
                inputs.append(self.value_info(v, depth + 1))
            elif top and num == 12:
                outputs.append(self.value_info(v, depth + 1))
        if top:
            self.scan.inputs += [i for i in inputs if i.name not in inits]
            self.scan.outputs += outputs

    def function(self, span, depth: int) -> None:
        for num, wire, v in self._sub(span, depth):
            if wire == 2 and num == 7:  # node
                self.node(v, depth + 1)
            elif wire == 2 and num == 11:  # attribute_proto (defaults)
                self.attribute(v, depth + 1)

    def node(self, span, depth: int) -> None:
        for num, wire, v in self._sub(span, depth):
            if wire == 2 and num == 5:
                self.attribute(v, depth + 1)

    def attribute(self, span, depth: int) -> None:
        for num, wire, v in self._sub(span, depth):
            if wire != 2:
                continue
            if num in (5, 10):  # t, tensors
                self.tensor(v, depth + 1)
            elif num in (6, 11):  # g, graphs
                self.graph(v, depth + 1, top=False)
            elif num in (22, 23):  # sparse_tensor, sparse_tensors
                self.sparse(v, depth + 1)

    def sparse(self, span, depth: int) -> None:
        for num, wire, v in self._sub(span, depth):
            if wire == 2 and num in (1, 2):  # values, indices
                self.tensor(v, depth + 1)

    def tensor(self, span, depth: int) -> str:
        name, entries, location = "", [], 0
        for num, wire, v in self._sub(span, depth):
            if num == 8 and wire == 2:
                name = _text(self.buf, v)
            elif num == 13 and wire == 2:
                key = value = ""
                for n2, w2, v2 in self._sub(v, depth + 1):
                    if w2 == 2 and n2 == 1:
                        key = _text(self.buf, v2)
                    elif w2 == 2 and n2 == 2:
                        value = _text(self.buf, v2)
                entries.append((key, value))
            elif num == 14 and wire == 0:
                location = v
        if entries or location == EXTERNAL:
            get = lambda k: next((val for key, val in reversed(entries) if key == k), None)  # noqa: E731
            self.scan.external.append(ExternalRef(name, tuple(val for key, val in entries if key == "location"),
                                                  get("offset"), get("length"), location))
        return name

    def value_info(self, span, depth: int) -> ValueInfo:
        name, elem, dims, has_shape = "", 0, [], False
        for num, wire, v in self._sub(span, depth):
            if num == 1 and wire == 2:
                name = _text(self.buf, v)
            elif num == 2 and wire == 2:  # TypeProto
                for n2, w2, v2 in self._sub(v, depth + 1):
                    if n2 != 1 or w2 != 2:  # tensor_type only; sequences, maps ... stay elem_type 0
                        continue
                    for n3, w3, v3 in self._sub(v2, depth + 2):
                        if n3 == 1 and w3 == 0:
                            elem = v3
                        elif n3 == 2 and w3 == 2:  # shape
                            has_shape = True
                            for n4, w4, v4 in self._sub(v3, depth + 3):
                                if n4 == 1 and w4 == 2:  # dim
                                    d: int | str = ""
                                    for n5, w5, v5 in self._sub(v4, depth + 4):
                                        if n5 == 1 and w5 == 0:
                                            d = _int64(v5)
                                        elif n5 == 2 and w5 == 2:
                                            d = _text(self.buf, v5)
                                    dims.append(d)
        return ValueInfo(name, elem, tuple(dims), has_shape)


def scan_graph(path: Path) -> GraphScan:
    """Inputs, outputs and external-data references of the ONNX file at `path` (GraphFormatError, OSError)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise GraphFormatError("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            walker = _Walker(buf)
            walker.model(size)
            return walker.scan


# -- the checks ----------------------------------------------------------------------------------------
def _dtype(elem: int) -> str:
    return ONNX_DTYPES.get(elem, f"ONNX type {elem}")


def check_graph(root: Path, fname: str, who: str, data_file: str | None, inputs, outputs) -> None:
    """Refuse (EngineDirError, one line) the graph `root/fname` of `who` unless every external-data location
    of every tensor is `data_file` (the one data file its manifest entry lists), within that file, and its
    inputs and outputs are the declared ones (`inputs`/`outputs`: TensorDesc) by name, dtype and rank."""
    root = Path(root)
    try:
        scan = scan_graph(root / fname)
    except GraphFormatError as e:
        raise EngineDirError(f"{root}: {fname} of {who} is not an ONNX graph monkey-trt can read: {e}") from None
    except OSError as e:
        raise EngineDirError(f"{root}: cannot read {fname} of {who}: {e.strerror or e}") from None
    data_size = None
    for ref in scan.external:
        if not ref.locations:
            raise EngineDirError(f"{root}: {fname} of {who} keeps tensor {_q(ref.tensor)} outside the graph without a location")
        for loc in ref.locations:
            if data_file is None or loc != data_file:
                raise EngineDirError(f"{root}: {fname} of {who} reads tensor {_q(ref.tensor)} from {_q(loc)}, not the data file "
                                     f"the manifest lists for it ({_q(data_file) if data_file else 'none'}): refused before any session opens")
        offset, length = _nonneg(ref.offset, 0), _nonneg(ref.length, None)
        if offset is None or (ref.length is not None and length is None):
            raise EngineDirError(f"{root}: {fname} of {who} gives tensor {_q(ref.tensor)} a bad offset or length "
                                 f"({_q(ref.offset)}, {_q(ref.length)})")
        if data_size is None:
            try:
                data_size = os.stat(root / data_file).st_size
            except OSError as e:
                raise EngineDirError(f"{root}: cannot read {data_file} of {who}: {e.strerror or e}") from None
        if offset + (length or 0) > data_size:
            raise EngineDirError(f"{root}: {fname} of {who} reads tensor {_q(ref.tensor)} at {offset}+{length or 0} bytes, "
                                 f"past the end of {data_file} ({data_size} bytes)")
    for kind, declared, found in (("inputs", inputs, scan.inputs), ("outputs", outputs, scan.outputs)):
        names = [t.name for t in declared]
        if sorted(names) != sorted(v.name for v in found) or len(set(names)) != len(names):
            raise EngineDirError(f"{root}: {fname} of {who} has {kind} {_short([v.name for v in found])}, "
                                 f"the manifest declares {_short(names)}")
        by_name = {v.name: v for v in found}
        for t in declared:
            v = by_name[t.name]
            if _dtype(v.elem_type) != t.dtype:
                raise EngineDirError(f"{root}: {fname} of {who}: {_q(t.name)} is {_dtype(v.elem_type)} in the graph, "
                                     f"{t.dtype} in the manifest")
            if not v.has_shape or len(v.dims) != len(t.shape):
                rank = len(v.dims) if v.has_shape else "unknown"
                raise EngineDirError(f"{root}: {fname} of {who}: {_q(t.name)} has rank {rank} in the graph, "
                                     f"{len(t.shape)} in the manifest")
            for i, (g, d) in enumerate(zip(v.dims, t.shape)):
                if isinstance(d, int) and isinstance(g, int) and g > 0 and g != d:
                    raise EngineDirError(f"{root}: {fname} of {who}: dimension {i} of {_q(t.name)} is {g} in the graph, "
                                         f"{d} in the manifest")


def _nonneg(text: str | None, default: int | None) -> int | None:
    if text is None:
        return default
    return int(text) if isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 20 else None


def _q(text: str | None) -> str:
    """A name from a file, quoted and cut: one line whatever it holds."""
    return repr(text if text is None or len(text) <= 80 else text[:80] + "...")


def _short(names: list[str]) -> str:
    shown = ", ".join(_q(n) for n in names[:12])
    return f"[{shown}{', ...' if len(names) > 12 else ''}]"
