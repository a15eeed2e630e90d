"""Reading a ``torch.save`` file someone else wrote: :func:`load_torch_file`, the one way
vidfeat reads a ``.pt`` / ``.pth`` file (state dicts for ``--backbone-weights`` and ``models
import --weights``, a run's ``best.pt`` / ``last.pt``, fusion checkpoints, ``--flow-weights``,
VGGish weights and PCA parameters).

``torch.load(weights_only=True)`` runs no code from the file, but on its own it still lets a
file someone else wrote hang, crash or exhaust vidfeat (issue 24):

* a FIFO blocks it forever, ``/dev/zero`` never ends;
* a dict key of tuples nested 3M deep crashes the process (a segfault: hashing the key
  recurses in C);
* a zip member compressed with deflate is inflated to the size it claims (a zip bomb: 1 GiB
  from a 1 MB file);
* its allow-list still lets a 90-byte pickle call ``bytearray(10**10)`` (10 GB of zeros).

So the file is checked first, and torch reads only what was checked:

1. **A regular file.** :func:`open_regular` looks (``stat``) before it opens, then opens
   without blocking (``O_NONBLOCK``) and looks again at the open descriptor (``fstat``):
   anything else (FIFO, device, directory, socket) is refused, never read.
2. **Its structure**, one of the two formats ``torch.save`` writes:

   * *zip* (torch >= 1.6): the end-of-central-directory record (and the zip64 one torch
     writes) at the very end, no comment, the central directory right before it; every member
     *stored* (``torch.save`` compresses nothing) under one top folder, names unique (torch
     looks them up ignoring ASCII case), its data inside the file before the central directory
     and overlapping no other member's; ``<folder>/data.pkl`` present;
   * *legacy* (torch < 1.6, e.g. the VGGish weights): the magic-number, protocol and
     system-info pickles, the object's pickle, the list of storage keys, then each storage as
     its element count and bytes, every one where the pickles say.

3. **The pickles**, opcode by opcode with a stack of placeholders (no object is made and
   nothing named is imported), within limits no state dict or training checkpoint comes near:
   the opcodes torch's weights-only unpickler knows, at most :data:`MAX_OPCODES` of them;
   globals only from :data:`GLOBALS` (a state dict's: ``OrderedDict``, the tensor and parameter
   rebuilders, storage types and dtypes), narrower than torch's allow-list, which also holds
   ``bytearray``, ``set``, ``_codecs.encode`` and the quantized, sparse and nested tensor
   rebuilders; containers nested at most :data:`MAX_DEPTH` deep (a checkpoint nests < 10) and
   never grown after they were put inside another (which could hide depth, or make a cycle);
   a memo index below the number of opcodes read; and each storage a persistent id names at
   most the bytes the file holds for it (zip: exactly its record's size).
4. **torch.load** (``weights_only=True``, ``map_location="cpu"``) from the descriptor that was
   checked, through :class:`_Snapshot`: every byte the checks read is served as the checks saw
   it, so a file rewritten in the meantime cannot swap in another pickle or directory. Any
   exception becomes one :class:`~vidfeat.errors.ConfigError`.
5. **The tensors**: none may claim more elements than its storage holds (a zero-stride view
   of 4 bytes claiming ``[64, 3·10⁶, 7, 7]``, which would take 37.6 GB once copied).

Every refusal is one ``ConfigError``: ``<what> <path>: refused, not a plain state dict
(<the problem>)``, or ``not a regular file (a FIFO)``, or ``file not found``. Imports no torch
until a file has passed the checks.
"""

from __future__ import annotations

import bisect
import io
import os
import stat
import struct
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError

MAX_DEPTH = 100  # containers nested in containers (a training checkpoint nests < 10)
MAX_OPCODES = 2_000_000  # per pickle (a ResNet-50 state dict has 11k, an Adam checkpoint ~3x)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION

# Storage types by the name torch.save writes, with their element size in bytes.
_STORAGES = {
    ("torch", "DoubleStorage"): 8,
    ("torch", "FloatStorage"): 4,
    ("torch", "HalfStorage"): 2,
    ("torch", "BFloat16Storage"): 2,
    ("torch", "LongStorage"): 8,
    ("torch", "IntStorage"): 4,
    ("torch", "ShortStorage"): 2,
    ("torch", "CharStorage"): 1,
    ("torch", "ByteStorage"): 1,
    ("torch", "BoolStorage"): 1,
    ("torch", "ComplexFloatStorage"): 8,
    ("torch", "ComplexDoubleStorage"): 16,
    ("torch.storage", "UntypedStorage"): 1,  # tensors of the newer dtypes (uint16, float8...)
}
# a legacy file saved from a GPU names torch.cuda's (map_location="cpu" loads them on the CPU)
_STORAGES.update({("torch.cuda", n): size for (m, n), size in _STORAGES.items() if m == "torch"})
_REBUILDERS = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
}
_ODICT = ("collections", "OrderedDict")
# dtypes appear as globals beside _rebuild_tensor_v3 (torch.uint16, torch.float8_e4m3fn, ...)
_DTYPES = {
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
    "bool", "complex64", "complex128", "complex32", "uint16", "uint32", "uint64",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2",
}  # fmt: skip
GLOBALS = {_ODICT, *_REBUILDERS, *_STORAGES, *(("torch", d) for d in _DTYPES)}


class _Refused(Exception):
    """The file is not a plain torch.save of tensors; the message says where and why."""


# --------------------------------------------------------------------------- the file


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(label: str, mode: int) -> ConfigError:
    kind = next((k for test, k in _KINDS if test(mode)), "of another kind")
    return ConfigError(f"{label}: not a regular file ({kind}); pass the file itself")


def check_regular(path: str | Path, label: str | None = None) -> None:
    """Refuses ``path`` unless it is a regular file (or a symlink to one), as
    :func:`open_regular` does, without opening it: to fail early, before other work."""
    label = label or str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{label}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(label, mode)


def open_regular(path: str | Path, label: str | None = None) -> tuple[int, int]:
    """``(descriptor, size)`` of the regular file ``path`` (symlinks to one are followed),
    opened for reading. Anything else is refused before it is opened (a FIFO would block,
    ``/dev/zero`` never end, opening a device may act on it) and checked again once open, without
    blocking, in case it was replaced in between. Errors name ``label`` (default: the path).
    The caller closes the descriptor."""
    label = label or str(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(label, st.st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{label}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_regular(label, st.st_mode)
    os.set_blocking(fd, True)
    return fd, st.st_size


class _Snapshot(io.RawIOBase):
    """The open file as the checks saw it, for ``torch.load``.

    Reads come from the descriptor (``pread``), within the size it had when opened. While
    ``pinning``, the first read of each byte keeps its value, and every later read of that
    byte returns it: the checks read the zip directories, the local headers and the pickles
    this way, so torch parses exactly those bytes even if the file changes on disk meanwhile.
    Bytes never read while pinning (the storages' data) are read from the file as it is."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd, self._size, self._pos = fd, size, 0
        self._starts: list[int] = []  # sorted, disjoint pinned ranges
        self._pins: list[bytes] = []
        self.pinning = True

    def readable(self) -> bool:
        return True

    def close(self) -> None:  # the descriptor is the caller's; wrappers may come and go
        pass

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        got = 0
        while got < n:  # a short read of a regular file: the file shrank (torch then fails)
            k = _pread_into(self._fd, view[got:n], self._pos + got)
            if k <= 0:
                break
            got += k
        self._overlay(self._pos, view[:got])
        self._pos += got
        return got

    def _overlay(self, start: int, view: memoryview) -> None:
        end = start + len(view)
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        gaps, at = [], start
        while i < len(self._starts) and self._starts[i] < end:
            s, data = self._starts[i], self._pins[i]
            lo, hi = max(s, start), min(s + len(data), end)
            if lo < hi:
                view[lo - start : hi - start] = data[lo - s : hi - s]
                if lo > at:
                    gaps.append((at, lo))
                at = max(at, hi)
            i += 1
        if at < end:
            gaps.append((at, end))
        if self.pinning:
            for lo, hi in gaps:
                j = bisect.bisect_left(self._starts, lo)
                self._starts.insert(j, lo)
                self._pins.insert(j, bytes(view[lo - start : hi - start]))


def _pread_into(fd: int, view: memoryview, pos: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], pos)
    data = os.pread(fd, len(view), pos)
    view[: len(data)] = data
    return len(data)


# --------------------------------------------------------------------------- the pickles


class _Obj:
    """A placeholder for what an opcode makes: its kind, how deeply it nests, whether it was
    put inside another object, and its value when known (constants, globals, small tuples)."""

    __slots__ = ("kind", "depth", "placed", "value")

    def __init__(self, kind: str, depth: int = 0, value: Any = None) -> None:
        self.kind, self.depth, self.placed, self.value = kind, depth, False, value


class _G(tuple):
    """A global's ``(module, name)``, told apart from a tuple of two strings."""


_MARK = object()
_UNKNOWN = object()


def _value(obj: _Obj) -> Any:
    """What ``obj`` stands for, when known: a constant, ``None``, a :class:`_G`, a tuple of
    such; else ``_UNKNOWN``."""
    if obj.kind == "none":
        return None
    return _UNKNOWN if obj.value is None else obj.value


class _PickleScan:
    """Reads one pickle from ``fh`` as torch's weights-only unpickler would, building
    :class:`_Obj` placeholders instead of objects; raises :class:`_Refused` at the first
    opcode beyond the limits of the module docstring. ``storages``: the persistent ids
    (storage references) met, as tuples of their values."""

    def __init__(self, fh: Any, where: str, end: int) -> None:
        self.read, self.readline = fh.read, fh.readline
        self.tell = fh.tell
        self.where, self.end = where, end  # ``end``: where the stream ends
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, _Obj] = {}
        self.ops = 0
        self.storages: list[tuple] = []

    # ---- helpers
    def _refuse(self, at: int, why: str) -> _Refused:
        return _Refused(f"{self.where}, byte {at:,}: {why}")

    def _take(self, n: int) -> bytes:
        left = self.end - self.tell()
        if n > left:  # checked before reading: a 4 GiB string length allocates nothing
            raise _Refused(f"{self.where}: cut off (an opcode wants {n:,} bytes, {left:,} left)")
        data = self.read(n)
        if len(data) != n:
            raise _Refused(f"{self.where}: cut off (the file shrank while it was read)")
        return data

    def _pop(self, at: int) -> _Obj:
        if not self.stack or self.stack[-1] is _MARK:
            raise self._refuse(at, "an opcode takes a value from an empty stack")
        return self.stack.pop()

    def _pop_mark(self, at: int) -> list[_Obj]:
        if not self.marks:
            raise self._refuse(at, "an opcode closes a MARK that was never opened")
        k = self.marks.pop()
        items = self.stack[k + 1 :]
        del self.stack[k:]
        return items

    def _top(self, at: int, kinds: set[str], op: str) -> _Obj:
        if not self.stack or self.stack[-1] is _MARK:
            raise self._refuse(at, f"{op} with nothing to act on")
        top = self.stack[-1]
        if top.kind not in kinds:
            raise self._refuse(at, f"{op} on a {top.kind}")
        return top

    def _nest(self, at: int, items: list[_Obj]) -> int:
        """Puts ``items`` inside a new or growing container: its depth (1 + the deepest)."""
        for it in items:
            it.placed = True
        depth = 1 + max((it.depth for it in items), default=0)
        if depth > MAX_DEPTH:
            raise self._refuse(
                at, f"containers nested more than {MAX_DEPTH} deep (a state dict nests < 10)"
            )
        return depth

    def _grow(self, at: int, container: _Obj, items: list[_Obj]) -> None:
        depth = self._nest(at, items)
        if depth > container.depth:
            if container.placed:  # its holders' depth would no longer be known (or a cycle)
                raise self._refuse(
                    at, f"a {container.kind} grows deeper after it was put inside another"
                )
            container.depth = depth

    def _tuple(self, at: int, items: list[_Obj]) -> _Obj:
        values = tuple(_value(it) for it in items) if len(items) <= 8 else (_UNKNOWN,)
        known = all(v is not _UNKNOWN for v in values)
        return _Obj("tuple", self._nest(at, items), values if known else None)

    # ---- the opcodes
    def run(self) -> _Obj:
        """The placeholder of the pickled object; the file is left after its STOP."""
        while True:
            at = self.tell()
            code = self.read(1)
            if not code:
                raise _Refused(f"{self.where}: cut off before the pickle's STOP")
            self.ops += 1
            if self.ops > MAX_OPCODES:
                raise self._refuse(at, f"more than {MAX_OPCODES:,} opcodes")
            op = _OPS.get(code)
            if op is None:
                raise self._refuse(
                    at,
                    f"opcode {code!r} ({_OPNAMES.get(code, 'unknown')}), which no torch.save "
                    "of tensors writes",
                )
            if op(self, at) is _STOP:
                break
        top = self._pop(at)
        if self.stack or self.marks:
            raise self._refuse(at, "values left on the stack at STOP")
        return top

    def _proto(self, at: int) -> None:
        proto = self._take(1)[0]
        if proto not in (2, 3):  # torch.save writes 2; 4 and above frame what torch cannot read
            raise self._refuse(at, f"pickle protocol {proto} (torch.save writes 2)")

    def _stop(self, at: int) -> object:
        return _STOP

    def _push(self, obj: _Obj) -> None:
        self.stack.append(obj)

    def _mark(self, at: int) -> None:
        if len(self.marks) >= MAX_DEPTH:
            raise self._refuse(at, f"more than {MAX_DEPTH} open MARKs")
        self.marks.append(len(self.stack))
        self.stack.append(_MARK)

    def _none(self, at: int) -> None:
        self._push(_Obj("none"))

    def _true(self, at: int) -> None:
        self._push(_Obj("const", value=True))

    def _false(self, at: int) -> None:
        self._push(_Obj("const", value=False))

    def _binint(self, at: int) -> None:
        self._push(_Obj("const", value=struct.unpack("<i", self._take(4))[0]))

    def _binint1(self, at: int) -> None:
        self._push(_Obj("const", value=self._take(1)[0]))

    def _binint2(self, at: int) -> None:
        self._push(_Obj("const", value=struct.unpack("<H", self._take(2))[0]))

    def _long1(self, at: int) -> None:
        data = self._take(self._take(1)[0])
        self._push(_Obj("const", value=int.from_bytes(data, "little", signed=True)))

    def _binfloat(self, at: int) -> None:
        self._push(_Obj("const", value=struct.unpack(">d", self._take(8))[0]))

    def _binunicode(self, at: int) -> None:
        data = self._take(struct.unpack("<I", self._take(4))[0])
        try:
            self._push(_Obj("const", value=str(data, "utf-8", "surrogatepass")))
        except UnicodeDecodeError:
            raise self._refuse(at, "a string that is not UTF-8") from None

    def _short_binstring(self, at: int) -> None:  # Python 2 str, decoded as torch.load does
        data = self._take(self._take(1)[0])
        try:
            self._push(_Obj("const", value=data.decode("utf-8")))
        except UnicodeDecodeError:
            raise self._refuse(at, "a string that is not UTF-8") from None

    def _empty_tuple(self, at: int) -> None:
        self._push(_Obj("tuple", 1, ()))

    def _empty_list(self, at: int) -> None:
        self._push(_Obj("list", 1, []))

    def _empty_dict(self, at: int) -> None:
        self._push(_Obj("dict", 1))

    def _tuple_mark(self, at: int) -> None:
        self._push(self._tuple(at, self._pop_mark(at)))

    def _tuple1(self, at: int) -> None:
        self._push(self._tuple(at, [self._pop(at)]))

    def _tuple2(self, at: int) -> None:
        b, a = self._pop(at), self._pop(at)
        self._push(self._tuple(at, [a, b]))

    def _tuple3(self, at: int) -> None:
        c, b, a = self._pop(at), self._pop(at), self._pop(at)
        self._push(self._tuple(at, [a, b, c]))

    def _global(self, at: int) -> None:
        module, name = self._line(at), self._line(at)
        if (module, name) in NAME_MAPPING:
            module, name = NAME_MAPPING[(module, name)]
        elif module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        if (module, name) not in GLOBALS:
            raise self._refuse(
                at,
                f"global {module}.{name}, which no state dict needs (its globals: "
                "collections.OrderedDict, torch's tensor rebuilders, storage types and dtypes)",
            )
        self._push(_Obj("global", value=_G((module, name))))

    def _line(self, at: int) -> str:
        raw = self.readline(256)
        if not raw.endswith(b"\n"):
            raise self._refuse(at, "a GLOBAL name cut off or longer than 255 bytes")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self._refuse(at, "a GLOBAL name that is not UTF-8") from None

    def _reduce(self, at: int) -> None:
        args = self._pop(at)
        func = self._top(at, {"global"}, "REDUCE")
        if args.kind != "tuple":
            raise self._refuse(at, f"REDUCE with a {args.kind} for arguments")
        if func.value == _ODICT:
            if args.value != ():
                raise self._refuse(at, "OrderedDict called with arguments")
            self.stack[-1] = _Obj("odict", 1)
        elif func.value in _REBUILDERS:
            self.stack[-1] = _Obj("tensor", self._nest(at, [args]))
        else:
            raise self._refuse(at, f"REDUCE calls {'.'.join(func.value)}, which is no function")

    def _build(self, at: int) -> None:  # OrderedDict's attributes (a state dict's _metadata)
        state = self._pop(at)
        inst = self._top(at, {"odict"}, "BUILD")
        if state.kind != "dict":
            raise self._refuse(at, f"BUILD with a {state.kind} for state")
        self._grow(at, inst, [state])

    def _append(self, at: int) -> None:
        item = self._pop(at)
        self._grow(at, self._top(at, {"list"}, "APPEND"), [item])
        self._track(self.stack[-1], [item])

    def _appends(self, at: int) -> None:
        items = self._pop_mark(at)
        self._grow(at, self._top(at, {"list"}, "APPENDS"), items)
        self._track(self.stack[-1], items)

    @staticmethod
    def _track(lst: _Obj, items: list[_Obj]) -> None:
        """A list's value is kept while it holds only constants (the legacy format's list of
        storage keys); else it is unknown."""
        if lst.value is not None:
            if all(it.kind == "const" for it in items) and len(lst.value) < 1 << 20:
                lst.value.extend(it.value for it in items)
            else:
                lst.value = None

    def _setitem(self, at: int) -> None:
        value, key = self._pop(at), self._pop(at)
        self._grow(at, self._top(at, {"dict", "odict"}, "SETITEM"), [key, value])

    def _setitems(self, at: int) -> None:
        items = self._pop_mark(at)
        if len(items) % 2:
            raise self._refuse(at, "SETITEMS with a key and no value")
        self._grow(at, self._top(at, {"dict", "odict"}, "SETITEMS"), items)

    def _binpersid(self, at: int) -> None:
        pid = self._pop(at)
        pid.placed = True
        if pid.kind != "tuple" or pid.value is None or pid.value[:1] != ("storage",):
            raise self._refuse(at, "a persistent id that is not a storage reference")
        self.storages.append(pid.value)
        self._push(_Obj("storage"))

    def _put(self, at: int, idx: int) -> None:
        if idx >= self.ops:
            raise self._refuse(at, f"memo index {idx:,} beyond the {self.ops:,} opcodes read")
        if not self.stack or self.stack[-1] is _MARK:
            raise self._refuse(at, "a memo PUT with nothing to keep")
        self.memo[idx] = self.stack[-1]

    def _get(self, at: int, idx: int) -> None:
        if idx not in self.memo:
            raise self._refuse(at, f"memo index {idx:,} read before it was written")
        self._push(self.memo[idx])

    def _binput(self, at: int) -> None:
        self._put(at, self._take(1)[0])

    def _long_binput(self, at: int) -> None:
        self._put(at, struct.unpack("<I", self._take(4))[0])

    def _binget(self, at: int) -> None:
        self._get(at, self._take(1)[0])

    def _long_binget(self, at: int) -> None:
        self._get(at, struct.unpack("<I", self._take(4))[0])


_STOP = object()
# what torch's weights-only unpickler reads, but NEWOBJ and EMPTY_SET (no torch.save of
# tensors writes them); every other opcode is refused
_OPS = {
    b"\x80": _PickleScan._proto,
    b".": _PickleScan._stop,
    b"(": _PickleScan._mark,
    b"N": _PickleScan._none,
    b"\x88": _PickleScan._true,
    b"\x89": _PickleScan._false,
    b"J": _PickleScan._binint,
    b"K": _PickleScan._binint1,
    b"M": _PickleScan._binint2,
    b"\x8a": _PickleScan._long1,
    b"G": _PickleScan._binfloat,
    b"X": _PickleScan._binunicode,
    b"U": _PickleScan._short_binstring,
    b")": _PickleScan._empty_tuple,
    b"]": _PickleScan._empty_list,
    b"}": _PickleScan._empty_dict,
    b"t": _PickleScan._tuple_mark,
    b"\x85": _PickleScan._tuple1,
    b"\x86": _PickleScan._tuple2,
    b"\x87": _PickleScan._tuple3,
    b"c": _PickleScan._global,
    b"R": _PickleScan._reduce,
    b"b": _PickleScan._build,
    b"a": _PickleScan._append,
    b"e": _PickleScan._appends,
    b"s": _PickleScan._setitem,
    b"u": _PickleScan._setitems,
    b"Q": _PickleScan._binpersid,
    b"q": _PickleScan._binput,
    b"r": _PickleScan._long_binput,
    b"h": _PickleScan._binget,
    b"j": _PickleScan._long_binget,
}


def _opnames() -> dict[bytes, str]:
    import pickle

    return {
        v: k
        for k, v in vars(pickle).items()
        if k.isupper() and isinstance(v, bytes) and len(v) == 1
    }


_OPNAMES = _opnames()


def _scan(fh: Any, where: str, end: int) -> tuple[_Obj, list[tuple]]:
    """The placeholder of the pickle at ``fh`` (which ends at byte ``end``) and its storage
    references; ``fh`` is left after its STOP."""
    scan = _PickleScan(fh, where, end)
    return scan.run(), scan.storages


def _nbytes(where: str, storage_type: Any, numel: Any) -> int:
    size = _STORAGES.get(storage_type) if isinstance(storage_type, _G) else None
    if size is None:
        raise _Refused(f"{where}: a storage reference with {storage_type!r} for its type")
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise _Refused(f"{where}: a storage reference with {numel!r} for its size")
    return numel * size


# --------------------------------------------------------------------------- zip


def _zip_tail(snap: _Snapshot, size: int) -> tuple[int, int, int]:
    """``(central directory offset, its size, entries)`` from the end records, which must end
    the file with no comment, the central directory right before them (where both Python's
    zipfile and torch's miniz find it)."""

    def at(pos: int, n: int) -> bytes:
        snap.seek(pos)
        data = snap.read(n)
        if len(data) != n:
            raise _Refused("zip archive: cut off")
        return data

    if size < 22:
        raise _Refused("zip archive: cut off")
    sig, disk, cd_disk, n_disk, n, cd_size, cd_off, comment = struct.unpack(
        "<4sHHHHIIH", at(size - 22, 22)
    )
    if sig != b"PK\x05\x06" or comment or disk or cd_disk or n_disk != n:
        raise _Refused("zip archive: no end record at the end of the file, or a comment")
    end = size - 22
    if size >= 98 and at(size - 42, 4) == b"PK\x06\x07":  # the zip64 records torch writes
        _, disk, eocd64, disks = struct.unpack("<4sIQI", at(size - 42, 20))
        fields = struct.unpack("<4sQHHIIQQQQ", at(size - 98, 56))
        sig, rec, _, _, disk2, cd_disk, n_disk, n, cd_size, cd_off = fields
        if (
            eocd64 != size - 98
            or sig != b"PK\x06\x06"
            or rec != 44
            or disk
            or disk2
            or cd_disk
            or disks != 1
            or n_disk != n
        ):
            raise _Refused("zip archive: zip64 end records not where torch.save writes them")
        end = size - 98
    if cd_off + cd_size != end:
        raise _Refused("zip archive: the central directory does not end where its records begin")
    return cd_off, cd_size, n


def _check_zip(snap: _Snapshot, size: int) -> None:
    cd_off, _, entries = _zip_tail(snap, size)
    try:
        zf = zipfile.ZipFile(snap)  # closing it leaves ``snap`` open
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise _Refused(f"zip archive: {exc}") from None
    with zf:
        _check_members(snap, zf, cd_off, entries)


def _check_members(snap: _Snapshot, zf: zipfile.ZipFile, cd_off: int, entries: int) -> None:
    size = snap.seek(0, io.SEEK_END)
    infos = zf.infolist()
    if zf.start_dir != cd_off or len(infos) != entries or not infos:
        raise _Refused("zip archive: its directories disagree")
    folder = infos[0].filename.split("/")[0]
    names, spans = set(), []
    for info in infos:
        key = _raw_name(info).lower()  # bytes.lower: ASCII only, as miniz compares names
        if key in names:
            raise _Refused(f"zip archive: member {info.filename!r} named twice (ignoring case)")
        names.add(key)
        if not info.filename.startswith(folder + "/"):
            raise _Refused(f"zip archive: member {info.filename!r} outside {folder}/")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise _Refused(
                f"zip archive: member {info.filename!r} is compressed or encrypted "
                "(torch.save stores every member as is)"
            )
        if info.file_size != info.compress_size:
            raise _Refused(f"zip archive: member {info.filename!r} has two sizes")
        snap.seek(info.header_offset)
        head = snap.read(30)
        if len(head) != 30:
            raise _Refused(f"zip archive: member {info.filename!r} beyond the end")
        sig, _, _, method, _, _, _, _, _, n_name, n_extra = struct.unpack("<4sHHHHHIIIHH", head)
        if sig != b"PK\x03\x04" or method != 0 or snap.read(n_name) != _raw_name(info):
            raise _Refused(f"zip archive: the local header of {info.filename!r} differs")
        start = info.header_offset + 30 + n_name + n_extra
        spans.append((info.header_offset, start + info.file_size, info.filename))
    spans.sort()
    for (_, end, name), (nxt, _, _) in zip(spans, spans[1:] + [(cd_off, 0, "")], strict=True):
        if end > nxt:
            raise _Refused(f"zip archive: member {name!r} overlaps what follows it")
    if sum(i.file_size for i in infos) > size:
        raise _Refused("zip archive: members larger than the file")
    by_name = {i.filename: i for i in infos}
    if f"{folder}/constants.pkl" in by_name:
        raise _Refused("a TorchScript archive (torch.jit.save), not a state dict")
    pkl = by_name.get(f"{folder}/data.pkl")
    if pkl is None:
        raise _Refused(f"zip archive: no {folder}/data.pkl")
    try:
        data = zf.read(pkl)
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise _Refused(f"zip archive: {folder}/data.pkl: {exc}") from None
    fh = io.BytesIO(data)
    _, storages = _scan(fh, f"{folder}/data.pkl", len(data))
    if fh.read(1):
        raise _Refused(f"{folder}/data.pkl: bytes after the pickle's STOP")
    for pid in storages:
        if len(pid) != 5 or not isinstance(pid[2], str) or not isinstance(pid[3], str):
            raise _Refused(f"{folder}/data.pkl: a storage reference {pid!r}")
        nbytes = _nbytes(f"{folder}/data.pkl", pid[1], pid[4])
        rec = by_name.get(f"{folder}/data/{pid[2]}")
        if rec is None:
            raise _Refused(f"{folder}/data.pkl: storage {pid[2]!r} has no record")
        if rec.file_size != nbytes:
            raise _Refused(
                f"{folder}/data.pkl: storage {pid[2]!r} claims {nbytes:,} bytes, its record "
                f"holds {rec.file_size:,}"
            )


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The member's name as the archive spells it."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")


# --------------------------------------------------------------------------- legacy


def _check_legacy(snap: _Snapshot, size: int) -> None:
    snap.seek(0)
    fh = io.BufferedReader(snap, 1 << 16)
    magic, _ = _scan(fh, "legacy torch file, magic number", size)
    if magic.value != LEGACY_MAGIC:
        raise _Refused("neither a zip archive nor a legacy torch file (no magic number)")
    proto, _ = _scan(fh, "legacy torch file, protocol", size)
    if proto.value != LEGACY_PROTOCOL:
        raise _Refused(f"legacy torch file of protocol {proto.value!r}, not {LEGACY_PROTOCOL}")
    _scan(fh, "legacy torch file, system info", size)
    where = "legacy torch file, the pickle"
    _, storages = _scan(fh, where, size)
    keys, _ = _scan(fh, "legacy torch file, storage keys", size)
    if keys.kind != "list" or keys.value is None or not all(isinstance(k, str) for k in keys.value):
        raise _Refused("legacy torch file: the storage keys are not a list of names")
    roots: dict[str, int] = {}  # storage key -> its bytes (the first reference makes it)
    elements: dict[str, int] = {}
    for pid in storages:
        if len(pid) != 6 or not isinstance(pid[2], str) or not isinstance(pid[3], str):
            raise _Refused(f"{where}: a storage reference {pid!r}")
        _, stype, key, _, numel, view = pid
        nbytes = _nbytes(where, stype, numel)
        roots.setdefault(key, nbytes)
        elements.setdefault(key, numel)
        if view is not None:
            ok = isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
            if not ok or not all(isinstance(v, int) and v >= 0 for v in view[1:]):
                raise _Refused(f"{where}: a storage view {view!r}")
            if (view[1] + view[2]) * _STORAGES[stype] > roots[key]:
                raise _Refused(f"{where}: a view beyond storage {key!r}")
    if sorted(roots) != sorted(keys.value) or len(set(keys.value)) != len(keys.value):
        raise _Refused("legacy torch file: the storage keys differ from the storages referenced")
    if sum(roots.values()) > size:
        raise _Refused(
            f"legacy torch file: storages claim {sum(roots.values()):,} bytes, the file holds "
            f"{size:,}"
        )
    pos = fh.tell()
    for key in keys.value:
        snap.seek(pos)
        head = snap.read(8)
        if len(head) != 8 or struct.unpack("<q", head)[0] != elements[key]:
            raise _Refused(f"legacy torch file: storage {key!r} is not the size its reference says")
        pos += 8 + roots[key]
        if pos > size:
            raise _Refused(f"legacy torch file: storage {key!r} cut off")


# --------------------------------------------------------------------------- loading


def _check(snap: _Snapshot, size: int) -> None:
    """Raises :class:`_Refused` unless the file is a zip or legacy torch.save that passes the
    checks of the module docstring."""
    snap.seek(0)
    head = snap.read(4)
    if head == b"PK\x03\x04":  # as torch.serialization._is_zipfile decides
        _check_zip(snap, size)
    elif head[:2] == b"\x80\x02":
        _check_legacy(snap, size)
    else:
        raise _Refused("neither a zip archive nor a legacy torch file")


def load_torch_file(path: str | Path, what: str = "") -> Any:
    """What ``torch.save`` wrote to ``path``, read as the module docstring says: a regular
    file, checked (structure, pickles, storage sizes) before torch reads it, loaded with
    ``weights_only=True`` onto the CPU, its tensors within their storages. ``what`` (e.g.
    ``--flow-weights``) starts every error message, before the path."""
    label = f"{what} {path}" if what else str(path)
    fd, size = open_regular(path, label)
    try:
        snap = _Snapshot(fd, size)
        try:
            _check(snap, size)
        except _Refused as exc:
            raise ConfigError(f"{label}: refused, not a plain state dict ({exc})") from None
        except OSError as exc:
            raise ConfigError(f"{label}: cannot be read ({exc.strerror or exc})") from None
        except Exception as exc:  # noqa: BLE001 - a file no check foresaw is still refused
            raise ConfigError(f"{label}: refused, not a plain state dict ({_brief(exc)})") from None
        snap.pinning = False
        snap.seek(0)
        import torch

        try:
            obj = torch.load(
                io.BufferedReader(snap, 1 << 16), map_location="cpu", weights_only=True
            )
        except Exception as exc:  # noqa: BLE001 - whatever torch makes of a foreign file
            raise ConfigError(f"{label}: refused, not a plain state dict ({_brief(exc)})") from None
    finally:
        os.close(fd)
    problem = _tensor_beyond_storage(obj)
    if problem:
        raise ConfigError(f"{label}: {problem}; pass a plain state dict")
    return obj


def _brief(exc: BaseException) -> str:
    """One line of a torch exception (weights-only errors run to a paragraph)."""
    text = str(exc)
    for marker in ("WeightsUnpickler error: ",):
        if marker in text:
            text = text.split(marker, 1)[1]
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:300]}"


def _tensor_beyond_storage(obj: Any) -> str | None:
    """A message for the first tensor holding more elements than its storage: a zero-stride
    (expanded) or overlapping view, which no saved state dict has; else None."""
    import torch

    todo: list[tuple[Any, str]] = [(obj, "")]
    seen: set[int] = set()
    while todo:
        item, where = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            if beyond_storage(item):
                return (
                    f"tensor {where or 'the file'} claims {list(item.shape)} ({item.numel():,} "
                    f"elements) over {item.untyped_storage().nbytes():,} bytes of data (repeated "
                    "or overlapping strides, which no saved state dict has)"
                )
        elif isinstance(item, dict):
            todo += [(v, f"{where} → {k!r}" if where else repr(k)) for k, v in item.items()]
        elif isinstance(item, list | tuple):
            todo += [(v, f"{where}[{i}]") for i, v in enumerate(item)]
    return None


def beyond_storage(t: Any) -> bool:
    """The tensor has more elements than its storage holds: a zero-stride (expanded) or
    overlapping view, a small file claiming a huge tensor."""
    try:
        return t.numel() * t.element_size() > t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return False
