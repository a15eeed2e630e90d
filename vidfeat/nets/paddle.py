"""The authors' PaddlePaddle (Fluid) StNet / TSN parameter files: a safe reader and the strict
mapping of their parameter names onto vidfeat's :class:`~vidfeat.nets.segment.StNet` and
:class:`~vidfeat.nets.segment.TSN`.

Read top to bottom: the reader (:class:`FluidReader`, :func:`load_pdparams`) → what a file
holds (:func:`describe_params`) → the name mapping (:func:`paddle_mapping`) →
:func:`state_dict_from_paddle`.

**File format.** ``fluid.save`` (and ``paddle.static.save``, ``paddle.save`` of a state dict)
writes ``NAME.pdparams``, a pickle (protocol 2 in the Fluid 1.x releases, up to 4 later) of
``{parameter name: numpy array}``, sometimes with a metadata dict of names
(``StructuredToParameterName@@``). A pickle can name any callable, and numpy's own rebuilders
can be turned into a segfault (an object dtype whose raw bytes become pointers) or a huge array
from a small file (zero strides), so :func:`load_pdparams` does not unpickle: it reads the
opcodes of exactly that format itself, with the limits of what the network can be, and refuses
anything else with one :class:`~vidfeat.errors.ConfigError` naming the file and the problem.

**Names** (``PaddleCV/video/models/stnet/stnet_res_model.py``, ``tsn/tsn_res_model.py``):

- ResNet, explicit: ``conv1_weights`` + ``bn_conv1_{scale,offset,mean,variance}``;
  ``res{S}{b}_branch2{a,b,c}_weights`` + ``bn{S}{b}_branch2{a,b,c}_*``; the projection shortcut
  ``res{S}a_branch1_weights`` + ``bn{S}a_branch1_*``. S = 2..5 (timm ``layer1..4``); block b is
  a, b, c, ... except in Res4 of ResNet-101/152 (a, b1, b2, ...).
- StNet's temporal Xception block, named layers ``xception_{bn, att_conv, att_2, bndw, att1,
  att1_2, dw, bn2}`` with ``.w_0`` / ``.b_0`` (BN: + ``.w_1`` mean, ``.w_2`` variance).
- Auto-numbered, so the numbers depend on what the program built before: the TMB convs
  ``conv3d_<i>.{w_0,b_0}`` ``[C, C, 3, 1, 1]``, the TMB BNs ``batch_norm_<j>.{w_0,b_0,w_1,w_2}``,
  the classifier ``fc_<k>.{w_0,b_0}`` with ``w_0`` ``[in, K]`` (a torch Linear weight
  transposed). They are matched by role (prefix), then shape, then order — never by number.

The mapping is strict: every tensor of the file is consumed and every tensor of the network is
filled (BN ``num_batches_tracked`` counters aside), or :class:`~vidfeat.errors.ConfigError`
lists the missing, unexpected and mis-shaped names.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError

__all__ = [
    "FluidReader",
    "PaddleFile",
    "describe_params",
    "load_pdparams",
    "paddle_mapping",
    "state_dict_from_paddle",
]

RESNET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
TXB_LAYERS = (  # Paddle layer name → vidfeat TemporalXceptionBlock child, in creation order
    ("xception_bn", "bn_in"),
    ("xception_att_conv", "dw1"),
    ("xception_att_2", "pw1"),
    ("xception_bndw", "bn1"),
    ("xception_att1", "dw2"),
    ("xception_att1_2", "pw2"),
    ("xception_dw", "skip"),
    ("xception_bn2", "bn_out"),
)
# Paddle metadata a dygraph-era ``paddle.save`` may add beside the arrays (a str → str dict)
METADATA_KEYS = ("StructuredToParameterName@@",)


# --------------------------------------------------------------------------- the reader

# What a Fluid save of a ResNet-50/101/152 StNet or TSN can hold, with a margin. Each limit is
# checked while the file is read, at the opcode that would pass it.
MAX_FILE_BYTES = 2 << 30  # a ResNet-152 StNet with 100k classes in float32 is about 1.1 GB
MAX_OPCODES = 2_000_000  # a Fluid save spends about 40 opcodes per tensor
MAX_DEPTH = 4  # containers inside containers: a Fluid save nests 2 deep
MAX_MARKS = 8  # open MARKs: a Fluid save has at most 3 open at once
MAX_STACK = 10_000  # values on one stack level: the pickler writes dict items 1000 at a time
MAX_TUPLE = 16  # the longest tuple of the format is a dtype's state, 8 items
MAX_NAME = 256  # characters of a parameter name or a metadata string
MAX_ENTRIES = 20_000  # tensors (or metadata entries) in one dict; a ResNet-152 StNet has ~1000
MAX_NDIM = 5  # conv3d weights [C, C, 3, 1, 1]
MAX_WIDTH = 2048  # channels of the widest layer (res5), and so any dimension but the classes
MAX_CLASSES = 100_000  # K of the classifier fc_<k>.w_0 [2048, K], fc_<k>.b_0 [K]
MAX_FRAMES = 64  # N: conv1 has 3N (RGB) or 2N (flow) input channels
MAX_TENSOR_ELEMENTS = MAX_WIDTH * MAX_CLASSES
MAX_TOTAL_ELEMENTS = 300_000_000  # a ResNet-152 StNet (~60M) and a 100k-class classifier
SLACK_BYTES = 1 << 20  # bytes decoded beyond the file's size (Python 2 shares short strings)

# The dtype codes numpy writes for plain numbers (``dtype.__reduce__``): bool, signed and
# unsigned integers, floats. Object, void (structured), text, datetime and complex are refused.
NUMERIC_DTYPES = ("b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8")
_CONV1 = "conv1_weights"
_CLASSIFIER = re.compile(r"^fc_\d+\.[wb]_0$")
_GLOBALS = {  # (module, name) → its role in numpy's array pickles
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
    ("collections", "OrderedDict"): "OrderedDict",
    ("__builtin__", "bytes"): "bytes",  # Python 3 writes b"" as bytes() at protocol 2
    ("builtins", "bytes"): "bytes",
}
for _core in ("numpy.core", "numpy._core"):  # numpy 1.x writes numpy.core, 2.x numpy._core
    _GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = "_reconstruct"
    _GLOBALS[(f"{_core}.multiarray", "scalar")] = "scalar"
    _GLOBALS[(f"{_core}.numeric", "_frombuffer")] = "_frombuffer"


class _Refused(Exception):
    """What in the file is not what a Fluid save writes; becomes one :class:`ConfigError`."""


def _global_name(module: str, name: str) -> str:
    """``module.name`` as the pickle spells it, with the Python 3 name when a protocol-2 pickle
    used the Python 2 one (``__builtin__.eval`` is ``builtins.eval``)."""
    import _compat_pickle

    py3 = _compat_pickle.NAME_MAPPING.get((module, name))
    if py3 is None and module in _compat_pickle.IMPORT_MAPPING:
        py3 = (_compat_pickle.IMPORT_MAPPING[module], name)
    found = f"{module}.{name}"
    return f"{found} ({'.'.join(py3)})" if py3 and ".".join(py3) != found else found


def _short(value: Any, limit: int = 60) -> str:
    """A value of the file for a message, without ever writing out much of it."""
    if isinstance(value, str | bytes | bytearray) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} long)"
    if isinstance(value, tuple):  # nested at most MAX_DEPTH deep
        inner = ", ".join(_short(v, 24) for v in value[:8]) + (", ..." if len(value) > 8 else "")
        text = f"({inner}{',' if len(value) == 1 else ''})"
    elif isinstance(value, np.ndarray):
        text = f"array{list(value.shape)}"
    elif isinstance(value, _Global):
        text = value.name
    elif isinstance(value, _Dtype | _Array | _Dict):
        text = type(value).__name__.strip("_").lower()
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _what(value: Any) -> str:
    """What a value of the file is, in words."""
    if isinstance(value, _Array):
        return "an array" if value.array is not None else "an array never filled (no BUILD)"
    if isinstance(value, _Dict):
        return "a dict of names" if value.kind == "names" else "a dict"
    names = {bool: "a bool", int: "an int", str: "a str", bytearray: "raw bytes", tuple: "a tuple"}
    names |= {type(None): "None", np.ndarray: "an array", _Dtype: "a dtype", _Global: "a global"}
    return names.get(type(value), f"a {type(value).__name__}")


def _conv1_ok(shape: tuple[int, ...]) -> bool:
    if len(shape) != 4 or shape[0] != 64 or shape[2:] != (7, 7):
        return False
    c = shape[1]
    return (c % 3 == 0 and 0 < c <= 3 * MAX_FRAMES) or (c % 2 == 0 and 0 < c <= 2 * MAX_FRAMES)


def shape_problem(name: str | None, shape: tuple[int, ...]) -> str | None:
    """Why an array of ``shape`` cannot be the tensor ``name`` of a Paddle ResNet-50/101/152
    StNet or TSN, or None. With ``name`` None, the limits every tensor is held to."""
    dims = list(shape)
    what = f"{name} has shape {dims}" if name else f"an array of shape {dims}"
    if len(shape) > MAX_NDIM:
        return f"{what}; no tensor of the network has more than {MAX_NDIM} dimensions"
    if any(d > MAX_CLASSES for d in shape) or math.prod(shape) > MAX_TENSOR_ELEMENTS:
        return (
            f"{what}; no dimension of the network exceeds {MAX_CLASSES:,} (the classes) and no "
            f"tensor {MAX_TENSOR_ELEMENTS:,} elements"
        )
    if name is None:
        return None
    if name == _CONV1:
        if _conv1_ok(shape):
            return None
        return (
            f"{what}; the network's conv1 is [64, C, 7, 7] with C = 3N (RGB) or 2N (flow) input "
            f"channels for N ≤ {MAX_FRAMES} frames"
        )
    if _CLASSIFIER.match(name):
        fc_w = name.endswith("w_0")
        if len(shape) == (2 if fc_w else 1) and (not fc_w or shape[0] <= MAX_WIDTH):
            return None
        return (
            f"{what}; the classifier is fc_<k>.w_0 [in ≤ {MAX_WIDTH}, K] and fc_<k>.b_0 [K] "
            f"with K ≤ {MAX_CLASSES:,} classes"
        )
    if any(d > MAX_WIDTH for d in shape):
        return (
            f"{what}; no layer of a ResNet-50/101/152 StNet/TSN is wider than {MAX_WIDTH} "
            f"(only the classifier, fc_<k>, has up to {MAX_CLASSES:,} outputs)"
        )
    return None


def _is(value: Any, *choices: Any) -> bool:
    """``value`` is one of ``choices``, of the same type (a file's value may be an array, whose
    ``==`` compares element by element)."""
    return any(type(value) is type(c) and value == c for c in choices)


class _Global:
    """An allow-listed global, by its role in numpy's array pickles."""

    __slots__ = ("role", "name")

    def __init__(self, role: str, name: str) -> None:
        self.role, self.name = role, name


class _Dtype:
    """``numpy.dtype(code, False, True)``, usable once its BUILD gave the byte order."""

    __slots__ = ("code", "dtype")

    def __init__(self, code: str) -> None:
        self.code, self.dtype = code, None


class _Array:
    """``_reconstruct(ndarray, (0,), b'b')``, usable once its BUILD filled it."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None


class _Dict:
    """A dict or OrderedDict of the file: str keys; parameter arrays (and the metadata dict) or,
    in the metadata dict, str values."""

    __slots__ = ("items", "ordered", "kind", "depth", "meta")

    def __init__(self, ordered: bool) -> None:
        self.items: dict[str, Any] = {}
        self.ordered = ordered
        self.kind: str | None = None  # "params" or "names", set by the first value
        self.depth = 1
        self.meta = False  # the value of a metadata key: may hold names only

    def plain(self) -> dict[str, Any]:
        return (OrderedDict if self.ordered else dict)(self.items)


class _Stop(Exception):
    pass


class FluidReader:
    """Reads what ``fluid.save`` / ``paddle.save`` write, and nothing else.

    Not :mod:`pickle`: it interprets itself the few opcodes such a file holds, never imports or
    calls what a file names, and makes arrays only of an allow-listed numeric dtype from exactly
    ``prod(shape) · itemsize`` bytes of the file. Any other opcode, global, dtype or state, and
    any memo index, nesting, length or shape beyond the limits above, raises :class:`_Refused`
    at the opcode that asks for it. Memory stays within about twice the file's size.
    """

    def __init__(self, fh: Any, size: int) -> None:
        self.fh, self.size = fh, size
        self.pos = 0  # bytes read
        self.ops = 0  # opcodes read
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.depths: dict[int, tuple[tuple, int]] = {}  # id(tuple) → (the tuple, its depth)
        self.decoded = 0  # bytes made beyond those read: latin1 encodes, shared buffers
        self.array_bytes = 0
        self.elements = 0
        self.backing: dict[int, bytearray] = {}  # buffers that already back an array, by id

    # ----------------------------------------------------------------- bytes of the file

    def _check_left(self, n: int, what: str) -> None:
        left = self.size - self.pos
        if n < 0 or n > left:
            raise _Refused(f"{what} of {n:,} bytes, but the file has {left:,} left (truncated?)")

    def _read(self, n: int, what: str) -> bytes:
        self._check_left(n, what)
        data = self.fh.read(n)
        self.pos += len(data)
        if len(data) != n:
            raise _Refused(f"the file ends inside {what} (truncated)")
        return data

    def _buffer(self, n: int) -> bytearray:
        self._check_left(n, "raw bytes")
        buf = bytearray(n)
        got = self.fh.readinto(buf)
        self.pos += got
        if got != n:
            raise _Refused("the file ends inside raw bytes (truncated)")
        return buf

    def _uint(self, n: int, what: str) -> int:
        return int.from_bytes(self._read(n, what), "little")

    def _int(self, n: int, what: str) -> int:
        return int.from_bytes(self._read(n, what), "little", signed=True)

    def _line(self) -> str:
        raw = self.fh.readline(MAX_NAME + 1)
        self.pos += len(raw)
        if not raw.endswith(b"\n"):
            raise _Refused(f"a GLOBAL name longer than {MAX_NAME} bytes or cut off")
        try:
            return raw[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise _Refused(f"a GLOBAL name that is not ASCII ({_short(raw)})") from None

    def _text(self, n: int, encoding: str) -> None:
        raw = self._read(n, "a string")
        try:
            self._push(raw.decode(encoding, "surrogatepass" if encoding == "utf-8" else "strict"))
        except UnicodeDecodeError:
            raise _Refused("a string that is not valid UTF-8") from None

    # ----------------------------------------------------------------- the stack

    def _push(self, value: Any) -> None:
        if len(self.stack) >= MAX_STACK:
            raise _Refused(f"more than {MAX_STACK:,} values on the pickle's stack")
        self.stack.append(value)

    def _pop(self) -> Any:
        if not self.stack:
            raise _Refused("an opcode that takes more values than the stack holds")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack:
            raise _Refused("an opcode that needs a value on an empty stack")
        return self.stack[-1]

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise _Refused("an opcode that needs a MARK without one")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def _depth(self, value: Any) -> int:
        if isinstance(value, tuple):
            return self.depths[id(value)][1]
        return value.depth if isinstance(value, _Dict) else 0

    def _tuple(self, items: list[Any]) -> None:
        if len(items) > MAX_TUPLE:
            raise _Refused(f"a tuple of {len(items):,} items; the longest of the format has 8")
        t = tuple(items)
        depth = 1 + max((self._depth(v) for v in t), default=0)
        if depth > MAX_DEPTH:
            raise _Refused(
                f"containers nested more than {MAX_DEPTH} deep (a parameter file nests 2 deep)"
            )
        self.depths.setdefault(id(t), (t, depth))
        self._push(t)

    # ----------------------------------------------------------------- values of the format

    def _name(self, value: Any, what: str) -> str:
        if not isinstance(value, str):
            raise _Refused(f"{what} is {_what(value)} ({_short(value)}), not a name")
        if len(value) > MAX_NAME or not value.isprintable():
            raise _Refused(
                f"{what} {_short(value)} is not a printable name of at most {MAX_NAME} characters"
            )
        return value

    def _decode(self, n: int) -> None:
        self.decoded += n
        if self.decoded > self.size + SLACK_BYTES:
            raise _Refused(f"it decodes to more bytes than the file's {self.size:,}")

    def _dtype(self, value: Any) -> np.dtype:
        if not isinstance(value, _Dtype) or value.dtype is None:
            raise _Refused(f"an array whose dtype is {_what(value)}, not a numpy dtype")
        return value.dtype

    def _shape(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, tuple) or not all(type(d) is int and d >= 0 for d in value):
            raise _Refused(f"an array shape {_short(value)} that is not a tuple of sizes")
        return value

    def _key_below(self, offset: int) -> str | None:
        """The name an array is being read for: the dict key just below it on the stack."""
        key = self.stack[-offset] if len(self.stack) >= offset else None
        return key if isinstance(key, str) and len(key) <= MAX_NAME else None

    def _array(self, name: str | None, shape: tuple, dtype: np.dtype, data: Any, order: str):
        """The array of exactly the file's bytes, once its shape passed the limits."""
        why = shape_problem(name, shape)
        if why:
            raise _Refused(why)
        n = math.prod(shape)
        nbytes = n * dtype.itemsize
        self.elements += n
        self.array_bytes += nbytes
        what = f"{name} {list(shape)} {dtype.name}" if name else f"{list(shape)} {dtype.name}"
        if self.elements > MAX_TOTAL_ELEMENTS:
            raise _Refused(f"{what} brings the tensors over {MAX_TOTAL_ELEMENTS:,} elements")
        if self.array_bytes > self.size:
            raise _Refused(
                f"{what} brings the arrays to {self.array_bytes:,} bytes, more than the file's "
                f"{self.size:,}"
            )
        if not isinstance(data, bytearray | str):  # str: Python 2 bytes, read as latin1
            raise _Refused(f"{what} has data that is {_what(data)}, not raw bytes")
        if len(data) != nbytes:
            raise _Refused(f"{what} has {len(data):,} bytes of data for {nbytes:,}")
        if isinstance(data, str):
            data = self._latin1(data)
        elif id(data) in self.backing:  # a buffer given to two arrays: the second gets a copy
            self._decode(nbytes)
            data = bytearray(data)
        self.backing[id(data)] = data
        return np.frombuffer(data, dtype=dtype, count=n).reshape(shape, order=order)

    def _latin1(self, text: str) -> bytearray:
        self._decode(len(text))
        try:
            return bytearray(text, "latin1")
        except UnicodeEncodeError:
            raise _Refused("bytes written as text that is not latin1") from None

    # ----------------------------------------------------------------- the calls of the format

    def _call(self, fn: Any, args: Any) -> Any:
        if not isinstance(fn, _Global) or not isinstance(args, tuple):
            raise _Refused(f"a call of {_what(fn)}; only numpy's rebuilders are called")
        role, n = fn.role, len(args)
        if role == "_reconstruct":
            ok = n == 3 and isinstance(args[0], _Global) and args[0].role == "ndarray"
            ok = ok and isinstance(args[1], tuple) and len(args[1]) == 1 and _is(args[1][0], 0)
            tag = args[2] if n == 3 else None
            ok = ok and (_is(tag, "b") or (isinstance(tag, bytearray) and tag == b"b"))
            if not ok:
                raise _Refused(f"{fn.name}{_short(args)}; numpy writes (ndarray, (0,), b'b')")
            return _Array()
        if role == "dtype":
            code = args[0] if n == 3 else None
            if not _is(code, *NUMERIC_DTYPES):
                raise _Refused(
                    f"numpy dtype {_short(code if n == 3 else args)}: a parameter file holds "
                    f"plain numeric arrays only ({', '.join(NUMERIC_DTYPES)})"
                )
            if not (_is(args[1], False, 0) and _is(args[2], True, 1)):
                raise _Refused(f"numpy.dtype{_short(args)}; numpy writes ({code!r}, False, True)")
            return _Dtype(code)
        if role == "encode":  # how Python 3 writes bytes at protocol 2
            if n != 2 or not isinstance(args[0], str) or not _is(args[1], "latin1", "latin-1"):
                raise _Refused("_codecs.encode other than of a str to latin1")
            return self._latin1(args[0])
        if role == "scalar":
            if n != 2:
                raise _Refused(f"{fn.name} of {n} arguments; numpy writes (dtype, data)")
            return self._array(None, (), self._dtype(args[0]), args[1], "C")
        if role == "_frombuffer":  # protocol 5: (buffer, dtype, shape, order)
            if n != 4 or not _is(args[3], "C", "F"):
                raise _Refused(f"{fn.name} with arguments other than (buffer, dtype, shape, order)")
            shape, dtype = self._shape(args[2]), self._dtype(args[1])
            return self._array(self._key_below(1), shape, dtype, args[0], args[3])
        if role == "bytes":  # the data of an empty array
            if args != ():
                raise _Refused(f"{fn.name}{_short(args)}; Python writes b'' as bytes()")
            return bytearray()
        if role == "OrderedDict":
            if args != ():
                raise _Refused("OrderedDict(...) of arguments; Python 3 writes OrderedDict()")
            return _Dict(ordered=True)
        raise _Refused(
            f"{fn.name}(...) called directly (it makes an array of any strides and offset, a "
            "small file claiming a huge one); a Fluid save makes its arrays through _reconstruct "
            "and BUILD"
        )

    def _build(self, obj: Any, state: Any) -> None:
        if isinstance(obj, _Dtype) and obj.dtype is None:
            orders = ("|",) if obj.code in ("b1", "i1", "u1") else ("<", ">")
            ok = isinstance(state, tuple) and len(state) == 8 and _is(state[1], *orders)
            want = (3, state[1] if ok else "", None, None, None, -1, -1, 0)
            if not (ok and all(_is(a, b) for a, b in zip(state, want, strict=True))):
                raise _Refused(
                    f"dtype {obj.code} with the state {_short(state, 100)}; numpy writes "
                    f"(3, '{orders[0]}', None, None, None, -1, -1, 0)"
                )
            obj.dtype = np.dtype(obj.code if orders == ("|",) else state[1] + obj.code)
            return
        if isinstance(obj, _Array) and obj.array is None:
            if isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int:
                version, state = state[0], state[1:]
            else:
                version = 1
            if version != 1 or not isinstance(state, tuple) or len(state) != 4:
                raise _Refused(
                    f"array state {_short(state)}; numpy writes (1, shape, dtype, fortran, data)"
                )
            shape, dtype, fortran, data = state
            shape, dtype = self._shape(shape), self._dtype(dtype)
            if not _is(fortran, False, True, 0, 1):
                raise _Refused(f"array order flag {_short(fortran)}; numpy writes False or True")
            name = self._key_below(2)
            obj.array = self._array(name, shape, dtype, data, "F" if fortran else "C")
            return
        raise _Refused(
            f"BUILD on {_what(obj)}; a Fluid save sets the state of each dtype and array once"
        )

    def _setitems(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, _Dict):
            raise _Refused(f"dict items set on {_what(target)}")
        if len(items) % 2:
            raise _Refused("an odd number of values for dict items")
        for key, value in zip(items[::2], items[1::2], strict=True):
            key = self._name(key, "a key")
            if key in target.items:
                raise _Refused(f"the name {key!r} twice")
            if len(target.items) >= MAX_ENTRIES:
                raise _Refused(f"more than {MAX_ENTRIES:,} entries in one dict")
            if isinstance(value, _Array):
                if value.array is None:
                    raise _Refused(f"entry {key!r} is an array that was never filled (no BUILD)")
                value = value.array
            if isinstance(value, str):
                kind, value = "names", self._name(value, f"the value of {key!r}")
            elif isinstance(value, np.ndarray):
                kind, why = "params", shape_problem(key, value.shape)
                if why:
                    raise _Refused(why)
            elif isinstance(value, _Dict) and key in METADATA_KEYS and value is not target:
                kind = "params"
                if value.kind not in (None, "names"):
                    raise _Refused(f"{key!r} holds arrays; Paddle writes names there")
                value.meta = True
                target.depth = max(target.depth, value.depth + 1)
            else:
                raise _Refused(
                    f"entry {key!r} is {_what(value)} ({_short(value)}), not a numeric "
                    f"array (only {', '.join(METADATA_KEYS)} is a dict, of names)"
                )
            if target.meta and kind != "names":
                raise _Refused(f"entry {key!r} of the metadata dict is not a name")
            if target.kind not in (None, kind):
                raise _Refused(f"entry {key!r} mixes names and arrays in one dict")
            target.kind = kind
            target.items[key] = value

    # ----------------------------------------------------------------- opcodes

    def op_PROTO(self) -> None:
        p = self._uint(1, "PROTO")
        if self.ops != 1:
            raise _Refused("a second protocol header inside the pickle")
        if not 2 <= p <= 5:
            raise _Refused(f"pickle protocol {p}; fluid.save writes protocols 2 to 4")

    def op_FRAME(self) -> None:
        self._check_left(self._uint(8, "FRAME"), "a FRAME")

    def op_STOP(self) -> None:
        raise _Stop

    def op_MARK(self) -> None:
        if len(self.marks) >= MAX_MARKS:
            raise _Refused(f"more than {MAX_MARKS} open MARKs (a parameter file has 3)")
        self.marks.append(self.stack)
        self.stack = []

    def op_EMPTY_DICT(self) -> None:
        self._push(_Dict(ordered=False))

    def op_EMPTY_TUPLE(self) -> None:
        self._tuple([])

    def op_TUPLE(self) -> None:
        self._tuple(self._pop_mark())

    def op_TUPLE1(self) -> None:
        self._tuple([self._pop()])

    def op_TUPLE2(self) -> None:
        b, a = self._pop(), self._pop()
        self._tuple([a, b])

    def op_TUPLE3(self) -> None:
        c, b, a = self._pop(), self._pop(), self._pop()
        self._tuple([a, b, c])

    def op_NONE(self) -> None:
        self._push(None)

    def op_NEWTRUE(self) -> None:
        self._push(True)

    def op_NEWFALSE(self) -> None:
        self._push(False)

    def op_BININT1(self) -> None:
        self._push(self._uint(1, "BININT1"))

    def op_BININT2(self) -> None:
        self._push(self._uint(2, "BININT2"))

    def op_BININT(self) -> None:
        self._push(self._int(4, "BININT"))

    def op_LONG1(self) -> None:
        n = self._uint(1, "LONG1")
        if n > 8:
            raise _Refused(f"an integer of {n} bytes; the sizes of a parameter file fit in 8")
        self._push(self._int(n, "LONG1"))

    def op_SHORT_BINUNICODE(self) -> None:
        self._text(self._uint(1, "a string length"), "utf-8")

    def op_BINUNICODE(self) -> None:
        self._text(self._uint(4, "a string length"), "utf-8")

    def op_BINUNICODE8(self) -> None:
        self._text(self._uint(8, "a string length"), "utf-8")

    def op_SHORT_BINSTRING(self) -> None:  # Python 2 str, read as latin1
        self._text(self._uint(1, "a string length"), "latin1")

    def op_BINSTRING(self) -> None:
        self._text(self._int(4, "a string length"), "latin1")

    def op_SHORT_BINBYTES(self) -> None:
        self._push(self._buffer(self._uint(1, "a length")))

    def op_BINBYTES(self) -> None:
        self._push(self._buffer(self._uint(4, "a length")))

    def op_BINBYTES8(self) -> None:
        self._push(self._buffer(self._uint(8, "a length")))

    op_BYTEARRAY8 = op_BINBYTES8  # protocol 5, in band

    def op_GLOBAL(self) -> None:
        module = self._line()
        self._global(module, self._line())

    def op_STACK_GLOBAL(self) -> None:
        name, module = self._pop(), self._pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise _Refused("STACK_GLOBAL of values that are not names")
        self._global(module, name)

    def _global(self, module: str, name: str) -> None:
        role = _GLOBALS.get((module, name))
        if role is None and (len(module) + len(name) > MAX_NAME or not module.isprintable()):
            raise _Refused(f"the pickle asks for the global {_short(module)}.{_short(name)}")
        if role is None:
            raise _Refused(
                f"the pickle asks for {_global_name(module, name)}, which a PaddlePaddle "
                "parameter file never needs (it holds numpy arrays only)"
            )
        self._push(_Global(role, f"{module}.{name}"))

    def _put(self, idx: int) -> None:
        if idx >= self.ops:  # a pickler numbers its memo 0, 1, 2, ..., one PUT each
            raise _Refused(
                f"memo index {idx:,} at opcode {self.ops:,}; a pickler numbers its memo 0, 1, "
                "2, ..., so an index stays below the count of opcodes before it"
            )
        self.memo[idx] = self._top()

    def op_BINPUT(self) -> None:
        self._put(self._uint(1, "BINPUT"))

    def op_LONG_BINPUT(self) -> None:
        self._put(self._uint(4, "LONG_BINPUT"))

    def op_MEMOIZE(self) -> None:
        self._put(len(self.memo))

    def _get(self, idx: int) -> None:
        if idx not in self.memo:
            raise _Refused(f"memo index {idx:,}, which was never stored")
        self._push(self.memo[idx])

    def op_BINGET(self) -> None:
        self._get(self._uint(1, "BINGET"))

    def op_LONG_BINGET(self) -> None:
        self._get(self._uint(4, "LONG_BINGET"))

    def op_REDUCE(self) -> None:
        args = self._pop()
        self._push(self._call(self._pop(), args))

    def op_BUILD(self) -> None:
        state = self._pop()
        self._build(self._top(), state)

    def op_SETITEM(self) -> None:
        value, key = self._pop(), self._pop()
        self._setitems(self._top(), [key, value])

    def op_SETITEMS(self) -> None:
        items = self._pop_mark()
        self._setitems(self._top(), items)

    # ----------------------------------------------------------------- the loop

    def load(self) -> dict[str, Any]:
        """The file's dict, or :class:`_Refused` with the byte offset and opcode it stopped at."""
        read, at, name = self.fh.read, 0, "PROTO"
        try:
            while True:
                at, code = self.pos, read(1)
                self.pos += len(code)
                if not code:
                    raise _Refused("the file ends before the pickle's STOP (truncated)")
                self.ops += 1
                if self.ops > MAX_OPCODES:
                    raise _Refused(f"more than {MAX_OPCODES:,} opcodes")
                name = _OPCODE_NAMES.get(code)
                if name is None:
                    known = _ALL_OPCODES.get(code, "unknown")
                    raise _Refused(f"opcode {known} ({code!r}), which a parameter file never holds")
                if self.ops == 1 and name != "PROTO":
                    raise _Refused("no protocol header; fluid.save writes pickle protocol 2 to 4")
                getattr(self, "op_" + name)()
        except _Stop:
            pass
        except _Refused as exc:
            raise _Refused(f"{exc} (byte {at:,}, {name})") from None
        if len(self.stack) != 1 or self.marks:
            raise _Refused(f"{len(self.stack)} values on the stack at STOP; a pickle ends with 1")
        result = self.stack.pop()
        if not isinstance(result, _Dict) or result.kind == "names":
            raise _Refused(f"it holds {_what(result)}, not a dict of names → arrays")
        if read(1):
            raise _Refused(f"bytes after the pickle's STOP at byte {at:,}")
        return {k: v.plain() if isinstance(v, _Dict) else v for k, v in result.plain().items()}


_OPCODE_NAMES = {getattr(pickle, m[3:]): m[3:] for m in vars(FluidReader) if m[:3] == "op_"}
_ALL_OPCODES = {  # every opcode's name, for messages
    v: k for k, v in vars(pickle).items() if k.isupper() and isinstance(v, bytes) and len(v) == 1
}


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(p: Path, mode: int) -> ConfigError:
    kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
    return ConfigError(
        f"{p}: is {kind}, not a regular file; pass the .pdparams file written by fluid.save"
    )


def _open_regular(p: Path) -> tuple[Any, int]:
    """The open file and its size. What is not a regular file is refused before it is opened (a
    FIFO would block, ``/dev/zero`` never ends) and checked again once open (non-blocking)."""
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(p, st.st_mode)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: file not found; pass the .pdparams file written by fluid.save"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror})") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):  # replaced between the two looks
        problem = _not_regular(p, st.st_mode)
    elif st.st_size > MAX_FILE_BYTES:
        problem = ConfigError(
            f"{p}: {st.st_size:,} bytes, more than any StNet/TSN parameter file holds "
            f"({MAX_FILE_BYTES:,}); pass the .pdparams file written by fluid.save"
        )
    if problem is not None:
        os.close(fd)
        raise problem
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=1 << 16), st.st_size


def load_pdparams(path: str | Path) -> dict[str, np.ndarray]:
    """``{parameter name: array}`` of a ``.pdparams`` file, read without executing anything.

    The file must be what ``fluid.save`` (or ``paddle.save`` of a state dict) writes: a pickle
    of a dict of names to plain numeric arrays, and optionally the metadata dict of names
    (dropped here); :class:`FluidReader` reads it opcode by opcode within the limits above.
    Anything else — a global other than numpy's array rebuilders, an object dtype, a truncated
    or foreign file, a FIFO — raises one :class:`ConfigError` naming the file and the problem.
    """
    p = Path(path)
    fh, size = _open_regular(p)
    try:
        with fh:
            params = FluidReader(fh, size).load()
    except _Refused as exc:
        raise ConfigError(
            f"{p}: refused — {exc}. Nothing in it was run; a PaddlePaddle parameter file "
            "(fluid.save) holds a dict of names to numeric arrays only. Use the file as "
            "published by the authors"
        ) from None
    except MemoryError:
        raise ConfigError(f"{p}: not enough memory to read its {size:,} bytes") from None
    except Exception as exc:  # noqa: BLE001 - a reader bug must still end in one clear error
        raise ConfigError(
            f"{p}: not a readable PaddlePaddle parameter file ({type(exc).__name__}: {exc}); "
            "pass the .pdparams file written by fluid.save"
        ) from None
    return {k: v for k, v in params.items() if isinstance(v, np.ndarray)}


# --------------------------------------------------------------------------- what a file holds


@dataclass(frozen=True)
class PaddleFile:
    """What the parameter names and shapes of a file say about the network that wrote it."""

    arch: str  # "stnet" (xception_* layers present) or "tsn"
    backbone: str  # timm name of the ResNet with the file's block counts
    in_chans: int  # conv1 input channels: 3N for an StNet super-image, 3 for TSN RGB
    frames: int  # N
    num_classes: int  # K, from the classifier's shape
    fc_in: int


_RES_CONV = re.compile(r"^res([2-5])([a-z])(\d*)_branch2a_weights$")


def describe_params(params: dict[str, np.ndarray], source: str = "the file") -> PaddleFile:
    """Architecture, ResNet depth, N and K of a Paddle StNet/TSN parameter dict."""
    if "conv1_weights" not in params:
        raise ConfigError(
            f"{source}: no conv1_weights — not a PaddlePaddle ResNet-based StNet/TSN file "
            f"(it holds e.g. {', '.join(sorted(params)[:4])})"
        )
    blocks = {s: 0 for s in "2345"}
    for name in params:
        m = _RES_CONV.match(name)
        if m:
            blocks[m.group(1)] += 1
    depths = tuple(blocks[s] for s in "2345")
    backbone = RESNET_DEPTHS.get(depths)
    if backbone is None:
        raise ConfigError(
            f"{source}: ResNet blocks per stage {depths} match none of ResNet-50/101/152 "
            f"{tuple(RESNET_DEPTHS)}"
        )
    arch = "stnet" if any(n.startswith("xception_") for n in params) else "tsn"
    conv1 = np.shape(params["conv1_weights"])
    if not _conv1_ok(tuple(conv1)):  # what load_pdparams refuses, for dicts built elsewhere
        raise ConfigError(f"{source}: {shape_problem(_CONV1, tuple(conv1))}")
    in_chans = int(conv1[1])
    if arch == "stnet" and in_chans % 3:
        raise ConfigError(f"{source}: StNet conv1 has {in_chans} input channels, not 3N")
    fcs = _auto_groups(params, "fc")
    if not fcs or "w_0" not in fcs[0][1] or params[fcs[0][1]["w_0"]].ndim != 2:
        raise ConfigError(f"{source}: no classifier fc_<k>.w_0 [in, K] in the file")
    fc_in, k = (int(d) for d in params[fcs[0][1]["w_0"]].shape)
    return PaddleFile(arch, backbone, in_chans, in_chans // 3 if arch == "stnet" else 1, k, fc_in)


# --------------------------------------------------------------------------- name mapping


@dataclass(frozen=True)
class Entry:
    """One tensor: Paddle name → vidfeat state-dict key, and how its array is laid out."""

    paddle: str
    torch: str
    transform: str = "copy"  # copy | reshape (conv3d/conv2d → the 2D/1D conv) | transpose (fc)


@dataclass
class Mapping:
    entries: list[Entry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # expected in the file, absent
    unexpected: list[str] = field(default_factory=list)  # in the file, used by nothing


_BN_EXPLICIT = (("scale", "weight"), ("offset", "bias"), ("mean", "running_mean"))
_BN_EXPLICIT += (("variance", "running_var"),)
_BN_AUTO = (("w_0", "weight"), ("b_0", "bias"), ("w_1", "running_mean"), ("w_2", "running_var"))


def _conv_bn(paddle: str, conv: str, bn: str) -> list[Entry]:
    """A Paddle ``conv_bn_layer`` (conv without bias + BN) named ``paddle`` (res2a_branch2a)."""
    bn_name = "bn_conv1" if paddle == "conv1" else "bn" + paddle[3:]
    out = [Entry(f"{paddle}_weights", f"{conv}.weight")]
    out += [Entry(f"{bn_name}_{p}", f"{bn}.{t}") for p, t in _BN_EXPLICIT]
    return out


def resnet_entries(backbone: str, prefix: str = "backbone.") -> list[Entry]:
    """The explicit ResNet names of ``stnet_res_model.py`` / ``tsn_res_model.py`` → timm keys."""
    depths = next(d for d, name in RESNET_DEPTHS.items() if name == backbone)
    out = _conv_bn("conv1", f"{prefix}conv1", f"{prefix}bn1")
    for stage, n in enumerate(depths):
        s = stage + 2
        for i in range(n):
            if backbone != "resnet50" and s == 4:
                block = "a" if i == 0 else f"b{i}"
            else:
                block = chr(ord("a") + i)
            base, timm_block = f"res{s}{block}", f"{prefix}layer{stage + 1}.{i}"
            for j, br in enumerate("abc"):
                out += _conv_bn(
                    f"{base}_branch2{br}", f"{timm_block}.conv{j + 1}", f"{timm_block}.bn{j + 1}"
                )
            if i == 0:  # projection shortcut: the shape changes at every stage's first block
                out += _conv_bn(
                    f"{base}_branch1", f"{timm_block}.downsample.0", f"{timm_block}.downsample.1"
                )
    return out


def _auto_groups(params: dict[str, Any], prefix: str) -> list[tuple[int, dict[str, str]]]:
    """``prefix_<i>.<suffix>`` names grouped by i, in order of i: [(i, {suffix: name})]."""
    pat = re.compile(rf"^{re.escape(prefix)}_(\d+)\.([wb]_\d+)$")
    groups: dict[int, dict[str, str]] = {}
    for name in params:
        m = pat.match(name)
        if m:
            groups.setdefault(int(m.group(1)), {})[m.group(2)] = name
    return sorted(groups.items())


def _has_channels(params: dict, names: dict[str, str], channels: int, axis: int) -> bool:
    a = params.get(names.get("w_0", names.get("b_0", "")))
    return a is not None and a.ndim > axis and a.shape[axis] == channels


def _assign(
    mapping: Mapping,
    params: dict[str, np.ndarray],
    prefix: str,
    roles: list[tuple[str, int, int]],
    suffixes: tuple[tuple[str, str, str], ...],
) -> None:
    """Match the auto-numbered ``prefix_<i>`` layers to ``roles`` [(torch module, channel
    count, axis of w_0/b_0 holding it)]: by shape first, the lowest number among equals."""
    groups = _auto_groups(params, prefix)
    free = list(groups)
    for module, channels, axis in roles:
        pick = next(
            (g for g in free if _has_channels(params, g[1], channels, axis)),
            free[0] if free else None,
        )
        if pick is None:
            mapping.missing += [f"{prefix}_?.{s} (for {module})" for s, _, _ in suffixes]
            continue
        free.remove(pick)
        i, names = pick
        for suffix, key, transform in suffixes:
            name = names.pop(suffix, None)
            if name is None:
                mapping.missing.append(f"{prefix}_{i}.{suffix} (for {module})")
            else:
                mapping.entries.append(Entry(name, f"{module}.{key}", transform))
        mapping.unexpected += sorted(names.values())
    for _, names in free:
        mapping.unexpected += sorted(names.values())


def paddle_mapping(params: dict[str, np.ndarray], net: Any) -> Mapping:
    """Every tensor of ``net`` (a vidfeat StNet or TSN on a torchvision-style ResNet) paired with
    its Paddle name in ``params``; what cannot be paired lands in ``missing`` / ``unexpected``."""
    arch = net.arch
    mapping = Mapping()
    backbone = net.config["backbone"]
    if backbone not in RESNET_DEPTHS.values():
        raise ConfigError(f"Paddle StNet/TSN files hold a ResNet-50/101/152, not {backbone}")
    mapping.entries += resnet_entries(backbone)
    auto = ("conv3d", "batch_norm", "fc")
    if arch == "stnet":
        for paddle_layer, child in TXB_LAYERS:
            suffixes = _BN_AUTO if "bn" in paddle_layer else (("w_0", "weight"), ("b_0", "bias"))
            for s, t in suffixes:
                transform = "reshape" if s == "w_0" and "bn" not in paddle_layer else "copy"
                mapping.entries.append(Entry(f"{paddle_layer}.{s}", f"txb.{child}.{t}", transform))
        tmb = [(f"tmb.{stage}", int(m.conv.in_channels)) for stage, m in net.tmb.items()]
        _assign(
            mapping,
            params,
            "conv3d",
            [(f"{m}.conv", c, 0) for m, c in tmb],
            (("w_0", "weight", "reshape"), ("b_0", "bias", "copy")),
        )
        _assign(
            mapping,
            params,
            "batch_norm",
            [(f"{m}.bn", c, 0) for m, c in tmb],
            tuple((s, t, "copy") for s, t in _BN_AUTO),
        )
    _assign(
        mapping,
        params,
        "fc",
        [("fc", int(net.fc.in_features), 0)],
        (("w_0", "weight", "transpose"), ("b_0", "bias", "copy")),
    )
    expected = {e.paddle for e in mapping.entries}
    mapping.missing += [e.paddle for e in mapping.entries if e.paddle not in params]
    mapping.entries = [e for e in mapping.entries if e.paddle in params]
    auto_pat = re.compile(rf"^({'|'.join(auto)})_\d+\.[wb]_\d+$")
    mapping.unexpected += sorted(n for n in params if n not in expected and not auto_pat.match(n))
    mapping.unexpected = sorted(set(mapping.unexpected))
    return mapping


def _convert(a: np.ndarray, transform: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The array in the layout of the torch tensor of ``shape``, or None when it cannot be."""
    if transform == "transpose":
        a = a.T if a.ndim == 2 else a
    elif transform == "reshape":
        # conv3d [C, C, 3, 1, 1] → Conv2d (3,1) [C, C, 3, 1]; conv2d [C, c, 3, 1] → Conv1d [C, c, 3]
        if a.size != int(np.prod(shape)) or a.shape[: len(shape) - 1] != shape[:-1]:
            return None
        a = a.reshape(shape)
    return a if tuple(a.shape) == tuple(shape) else None


def _listing(names: list[str], limit: int = 12) -> str:
    more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def state_dict_from_paddle(
    params: dict[str, np.ndarray], net: Any, source: str = "the file"
) -> tuple[dict[str, Any], list[Entry]]:
    """A complete state dict for ``net`` from the Paddle arrays (float32), and the entries used.

    Strict: raises :class:`ConfigError` listing the missing, unexpected and mis-shaped names
    unless every array is used once and every tensor of ``net`` (BN counters aside) is filled.
    """
    import torch

    mapping = paddle_mapping(params, net)
    own = net.state_dict()
    state: dict[str, torch.Tensor] = {}
    misshaped: list[str] = []
    for e in mapping.entries:
        if e.torch not in own:
            mapping.unexpected.append(f"{e.paddle} (no {e.torch} in the network)")
            continue
        want = tuple(own[e.torch].shape)
        a = _convert(params[e.paddle], e.transform, want)
        if a is None:
            misshaped.append(
                f"{e.paddle} {list(params[e.paddle].shape)} for {e.torch} {list(want)}"
            )
            continue
        state[e.torch] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    unfilled = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    mapped_torch = {e.torch for e in mapping.entries}
    unfilled = [k for k in unfilled if k not in mapped_torch]  # mis-shaped ones are listed there
    if mapping.missing or mapping.unexpected or misshaped or unfilled:
        parts = []
        if mapping.missing:
            parts.append(
                f"missing from the file ({len(mapping.missing)}): {_listing(mapping.missing)}"
            )
        if mapping.unexpected:
            parts.append(
                f"unexpected in the file ({len(mapping.unexpected)}): "
                f"{_listing(mapping.unexpected)}"
            )
        if misshaped:
            parts.append(f"mis-shaped ({len(misshaped)}): {_listing(misshaped)}")
        if unfilled:
            parts.append(f"network tensors left unfilled ({len(unfilled)}): {_listing(unfilled)}")
        raise ConfigError(
            f"{source} does not match the authors' {net.arch.upper()} on "
            f"{net.config['backbone']} with {net.num_classes} classes tensor for tensor — "
            + "; ".join(parts)
            + ". Pass the unmodified STNET.pdparams / TSN.pdparams (paddle-stnet for StNet, "
            "paddle-tsn for TSN)"
        )
    for k, v in own.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.zeros_like(v)
    return state, mapping.entries
