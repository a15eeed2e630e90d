"""The reader of ``.pdparams`` files: :class:`FluidReader` interprets the opcodes of exactly
what ``fluid.save`` writes, within the limits of :mod:`~vidfeat.nets.paddle.rules`, and
:func:`load_pdparams` opens a regular file for it and turns every refusal into one
:class:`~vidfeat.errors.ConfigError`."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.nets.paddle.rules import (
    _GLOBALS,
    MAX_DEPTH,
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    MAX_MARKS,
    MAX_NAME,
    MAX_OPCODES,
    MAX_STACK,
    MAX_TOTAL_ELEMENTS,
    MAX_TUPLE,
    METADATA_KEYS,
    NUMERIC_DTYPES,
    SLACK_BYTES,
    _Array,
    _Dict,
    _Dtype,
    _Global,
    _global_name,
    _is,
    _Refused,
    _short,
    _Stop,
    _what,
    shape_problem,
)
from vidfeat.nets.torchfile import open_regular


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


def _open_regular(p: Path) -> tuple[Any, int]:
    """The open file and its size: a regular file only, opened without blocking
    (:func:`vidfeat.nets.torchfile.open_regular`), and no larger than any parameter file."""
    fd, size = open_regular(p, hint="pass the .pdparams file written by fluid.save")
    if size > MAX_FILE_BYTES:
        os.close(fd)
        raise ConfigError(
            f"{p}: {size:,} bytes, more than any StNet/TSN parameter file holds "
            f"({MAX_FILE_BYTES:,}); pass the .pdparams file written by fluid.save"
        )
    return os.fdopen(fd, "rb", buffering=1 << 16), size


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
