"""The pickles of a torch checkpoint, scanned opcode by opcode with placeholders
(:class:`_PickleScan`): no object is made and nothing named is imported."""

from __future__ import annotations

import struct
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from typing import Any

from vidfeat.nets.torchfile.files import (
    _ODICT,
    _REBUILDERS,
    _STORAGES,
    GLOBALS,
    MAX_DEPTH,
    MAX_OPCODES,
    _Refused,
)

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
