"""What a Fluid parameter file may hold: the limits of the format and of the networks, the
numpy globals and dtypes its array pickles use, and the small values :class:`FluidReader
<vidfeat.nets.paddle.reader.FluidReader>` builds while it reads."""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Any

import numpy as np

# Paddle metadata a dygraph-era ``paddle.save`` may add beside the arrays (a str → str dict)
METADATA_KEYS = ("StructuredToParameterName@@",)


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
