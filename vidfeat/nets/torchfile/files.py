"""The file under a torch checkpoint: the limits and allow-lists of the format, a regular
file opened without blocking, and :class:`_Snapshot`, which serves torch exactly the bytes the
checks read."""

from __future__ import annotations

import bisect
import io
import os
import stat
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


def _not_regular(label: str, mode: int, hint: str = "pass the file itself") -> ConfigError:
    kind = next((k for test, k in _KINDS if test(mode)), "of another kind")
    return ConfigError(f"{label}: not a regular file ({kind}); {hint}")


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


def open_regular(
    path: str | Path, label: str | None = None, hint: str = "pass the file itself"
) -> tuple[int, int]:
    """``(descriptor, size)`` of the regular file ``path`` (symlinks to one are followed),
    opened for reading. Anything else is refused before it is opened (a FIFO would block,
    ``/dev/zero`` never end, opening a device may act on it) and checked again once open, without
    blocking, in case it was replaced in between. Errors name ``label`` (default: the path) and
    end with ``hint`` (what to pass instead). The caller closes the descriptor."""
    label = label or str(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(label, st.st_mode, hint)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{label}: file not found; {hint}") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_regular(label, st.st_mode, hint)
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
