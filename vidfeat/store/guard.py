"""What the store reads from files someone else may have written: only its own bytes, bounded.

Stores are shared (a cluster's scratch space, a colleague's folder), so every file of a set is
untrusted input. This module is the one place that decides what vidfeat reads from one:

* **Files**: :func:`open_regular` opens a file of the set without following a symbolic link
  (``O_NOFOLLOW``) and without blocking (``O_NONBLOCK``: a FIFO would otherwise hang the
  reader), and refuses anything but a regular file (FIFO, directory, device, symlink).
  :func:`read_capped` reads a small file (``set.json``, a legacy index) that way up to a cap.
  :func:`h5_path` gives HDF5 a ``/proc/self/fd`` name for such a descriptor, so the shard HDF5
  opens is the very file that was checked.
* **Links**: :func:`hard_link` accepts a group member only when it is a hard link: soft
  links, external links (another file) and user-defined links are refused before HDF5 would
  follow them.
* **Datasets**: :func:`check_dataset` accepts a dataset only when its data lies in this file
  (contiguous, chunked or compact: never HDF5 *external raw storage* nor a *virtual dataset*,
  which read other files), its type is numeric, its size is at most :data:`MAX_ARRAY_BYTES`
  and it fits the set's ``feature_shape`` (:class:`ShapeRule`), and its chunks' filters are
  ones vidfeat writes (shuffle, deflate, lzf). All of this from the file's metadata, before a
  byte of data is allocated or decompressed. :func:`read_dataset` then reads it; deflated
  chunks are inflated here, never past their declared size (HDF5's own deflate filter grows
  its buffer for as long as the stream goes on, so a 1 MB chunk of zeros inflates to 1 GiB).
* **Text**: :func:`parse_json` and :func:`parse_dtype` turn JSON and dtype strings read from
  a store into values or a :class:`~vidfeat.errors.StoreError` naming the file, never another
  exception (deep nesting, ``"f8,,"``, object dtypes).

Caps (the error messages state them):

* :data:`MAX_ARRAY_BYTES`, 512 MiB per array (``features`` or an extra dataset), also the
  bound of a filtered chunk: the largest arrays vidfeat writes are flow fields, uint8
  ``(T, N, 2, H, W)``, 29 MB per video at the defaults (T=25, N=5, 256 px short side) and
  230 MB at a 720 px short side. A store you trust holding larger arrays is read with
  ``VIDFEAT_MAX_ARRAY_MB`` set higher.
* :data:`MAX_JSON_BYTES`, 64 MiB for ``set.json`` and the legacy ``.index.json`` (a set.json
  with 100k class names is ~2 MB); :data:`MAX_INDEX_ATTR_BYTES`, 64 MiB for a shard's index
  attribute (64 videos take ~10 KB; 100k videos in one shard ~5 MB).

Imports only :mod:`vidfeat.errors`, numpy and h5py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from h5py import h5d, h5l, h5s, h5z

from vidfeat.errors import StoreError

try:  # ISA-L's inflate: zlib's format at 2-3x the speed (the store's deflate writes with it)
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover
    _zlib = zlib  # type: ignore[misc]


def _env_mb(name: str, default: int) -> int:
    try:
        mb = int(os.environ.get(name, default))
    except ValueError:
        mb = default
    return max(1, mb) * 2**20


MAX_ARRAY_BYTES = _env_mb("VIDFEAT_MAX_ARRAY_MB", 512)
MAX_JSON_BYTES = 64 * 2**20
MAX_INDEX_ATTR_BYTES = 64 * 2**20
CAP_HINT = "set VIDFEAT_MAX_ARRAY_MB higher to read larger arrays from a store you trust"

# --------------------------------------------------------------------------- files


class NotRegularFile(StoreError):
    """A file of the store is a symlink, FIFO, directory or device: never read."""


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str | Path, what: str = "file") -> int:
    """A read-only descriptor of ``path`` if it is a regular file (not through a symlink).

    Raises FileNotFoundError when absent and :class:`NotRegularFile` for a symlink
    (``O_NOFOLLOW``), a FIFO, directory, device or socket (``fstat`` of the descriptor, so a
    file swapped meanwhile is judged as what was opened). Opening never blocks."""
    try:  # O_NONBLOCK: opening a FIFO returns at once (and fstat refuses it below)
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(
                f"{path} ({what}) is a symbolic link: vidfeat reads only regular files "
                "inside a store, so it is skipped; remove it"
            ) from exc
        raise StoreError(f"{path} ({what}) cannot be opened ({exc})") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(
            f"{path} ({what}) is {file_kind(mode)}, not a regular file: vidfeat reads only "
            "regular files inside a store, so it is skipped; remove it"
        )
    return fd


def read_capped(path: str | Path, cap: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, refused (:class:`StoreError`) past ``cap``."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > cap:
            raise StoreError(
                f"{path} ({what}) holds {size:,} bytes, more than the {cap:,} such a file can "
                "have; it is not one vidfeat wrote"
            )
        chunks, got = [], 0
        while got <= cap:
            b = os.read(fd, min(1 << 20, cap + 1 - got))
            if not b:
                break
            chunks.append(b)
            got += len(b)
        if got > cap:
            raise StoreError(f"{path} ({what}) grows past {cap:,} bytes while being read")
        return b"".join(chunks)
    except OSError as exc:
        raise StoreError(f"{path} ({what}) cannot be read ({exc})") from exc
    finally:
        os.close(fd)


_FD_DIR = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)


def h5_path(fd: int, path: str | Path) -> str:
    """The name HDF5 should open for the checked descriptor ``fd`` of ``path``: its
    ``/proc/self/fd`` entry (the same file, whatever happens to ``path`` meanwhile), or
    ``path`` where the system has none (callers then check :func:`same_file`)."""
    return f"{_FD_DIR}/{fd}" if _FD_DIR is not None else os.fspath(path)


def same_file(fid: Any, fd: int) -> bool:
    """Whether the HDF5 file ``fid`` (sec2 driver) is the file of descriptor ``fd`` (always,
    when HDF5 opened it through :func:`h5_path`'s ``/proc/self/fd`` name)."""
    if _FD_DIR is not None:
        return True
    try:
        a, b = os.fstat(fid.get_vfd_handle()), os.fstat(fd)
    except Exception:  # noqa: BLE001 - another driver: nothing to compare
        return True
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# --------------------------------------------------------------------------- text


MAX_JSON_DEPTH = 64  # set.json nests a few levels (method_params, a run's config)


def parse_json(data: bytes | str, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON read from a store, or :class:`StoreError` naming ``where`` (bad UTF-8, syntax,
    nesting deeper than ``max_depth``: such a value would make a RecursionError of whatever
    prints or compares it later)."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        obj = json.loads(data)
    except (ValueError, RecursionError, MemoryError) as exc:
        msg = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise StoreError(f"{where} is not valid JSON ({msg})") from None
    if json_depth(obj, max_depth) > max_depth:
        raise StoreError(
            f"{where} is not valid JSON (nested too deeply: more than {max_depth} levels)"
        )
    return obj


def json_depth(obj: Any, limit: int) -> int:
    """How many levels of lists and objects a parsed JSON value nests (``[]`` is 1), counted
    level by level without recursion, and never past ``limit + 1``."""
    depth = 0
    level = [obj] if isinstance(obj, dict | list) else []
    while level and depth <= limit:
        depth += 1
        nxt: list = []
        for v in level:
            vals = v.values() if isinstance(v, dict) else v
            nxt.extend(x for x in vals if isinstance(x, dict | list))
        level = nxt
    return depth


_DTYPE_RE = re.compile(r"^[<>|=]?(?:[fc](?:2|4|8|16)|[iu](?:1|2|4|8)|b1)$")
_DTYPE_NAMES = frozenset(
    ["bool", "float16", "float32", "float64", "complex64", "complex128"]
    + [f"{p}int{n}" for p in ("", "u") for n in (8, 16, 32, 64)]
)


def parse_dtype(s: object) -> np.dtype | None:
    """The numeric dtype a stored string names (``"<f4"``, ``"|u1"``, ``"float32"``), or None
    for anything else: numpy never parses an arbitrary string from a store."""
    if not isinstance(s, str) or not (_DTYPE_RE.match(s) or s in _DTYPE_NAMES):
        return None
    try:
        return np.dtype(s)
    except TypeError:  # e.g. f16/c16 on a platform without float128
        return None


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ShapeRule:
    """What a set's ``feature_shape`` allows: ``dims`` (None = open) or no rule at all.

    An array is larger than the set allows when it holds more elements than a fully stated
    ``feature_shape`` (``[25, 2048]``: 51,200); a set with an open dimension (``null`` or
    ``-1`` in set.json, e.g. the width of flow fields) or without a ``feature_shape`` is
    bounded by :data:`MAX_ARRAY_BYTES` alone. (A shape that differs without being larger is
    read, and ``vidfeat store verify`` reports it.)"""

    dims: tuple[int | None, ...] | None = None

    @classmethod
    def from_config(cls, config: dict, where: str) -> ShapeRule:
        want = config.get("feature_shape")
        if want is None:
            return cls()
        ok = isinstance(want, list) and len(want) <= 32
        dims: list[int | None] = []
        for w in want if ok else []:
            if w is None or (type(w) is int and w == -1):
                dims.append(None)
            elif type(w) is int and 0 <= w < 2**62:
                dims.append(w)
            else:
                ok = False
        if not ok:
            raise StoreError(
                f"{where}: feature_shape must be a list of sizes (null or -1 for an open "
                f"dimension), not {json.dumps(want)[:80]}"
            )
        return cls(tuple(dims))

    def problem(self, shape: tuple[int, ...]) -> str | None:
        """Why an array of ``shape`` is larger than the set allows, or None."""
        if self.dims is None or None in self.dims:
            return None
        if math.prod(shape) > math.prod(self.dims):  # type: ignore[arg-type]
            return (
                f"shape {list(shape)} holds more values than the set's feature_shape "
                f"{list(self.dims)} allows"
            )
        return None


def size_problem(shape: tuple[int, ...], itemsize: int, rule: ShapeRule | None) -> str | None:
    """Why an array of ``shape`` x ``itemsize`` bytes is refused unread, or None."""
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_ARRAY_BYTES:
        return (
            f"shape {list(shape)} makes {nbytes:,} bytes, more than the "
            f"{MAX_ARRAY_BYTES:,} a stored array may have ({CAP_HINT})"
        )
    return rule.problem(shape) if rule is not None else None


# --------------------------------------------------------------------------- links


_LINK_KIND = {h5l.TYPE_SOFT: "a soft link", h5l.TYPE_EXTERNAL: "an external link (another file)"}


def link_problem(gid: Any, name: bytes) -> str | None:
    """Why member ``name`` of group ``gid`` is refused (not a hard link), or None. Raises
    KeyError when there is no such member."""
    try:
        t = gid.links.get_info(name).type
    except KeyError:
        raise
    except Exception as exc:  # noqa: BLE001 - HDF5 says "not found" with several classes
        raise KeyError(name) from exc
    if t == h5l.TYPE_HARD:
        return None
    return f"it is {_LINK_KIND.get(t, 'a user-defined link')}, not data of this shard"


# --------------------------------------------------------------------------- datasets

_ALLOWED_FILTERS = {
    h5z.FILTER_SHUFFLE: "shuffle",
    h5z.FILTER_DEFLATE: "deflate",
    h5z.FILTER_LZF: "lzf",
    h5z.FILTER_FLETCHER32: "fletcher32",
}


@dataclass(frozen=True)
class Plan:
    """How :func:`read_dataset` reads a dataset :func:`check_dataset` accepted."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None = None  # chunked and filtered: read chunk by chunk here
    filters: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (code, cd_values), write order
    lzf: bool = False  # read by HDF5 after checking the chunks' stored sizes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class Refused(StoreError):
    """A dataset that is not read (the message says why)."""


def check_dataset(
    did: Any, rule: ShapeRule | None = None, file_size: int | None = None, chunks: bool = False
) -> Plan:
    """The :class:`Plan` of reading dataset ``did``, or :class:`Refused` saying why it is not
    read: data outside the file (external raw storage, a virtual dataset), a type that is not
    numeric, a size past :data:`MAX_ARRAY_BYTES` or the set's ``feature_shape`` (``rule``),
    filters vidfeat does not write. Only metadata is read.

    Contiguous data at an offset inside the file (``file_size``) is accepted on that alone
    (one cheap call: HDF5 gives no offset for external, virtual or unallocated data).
    ``chunks``: also check every chunk of a compressed dataset as :func:`read_dataset` does
    (its place in the chunk grid and its stored size), as ``store verify`` wants."""
    try:
        space = did.get_space()
        if space.get_simple_extent_type() == h5s.NULL:
            raise Refused("it holds no data (a null dataspace)")
        shape = tuple(int(n) for n in (space.get_simple_extent_dims() or ()))
        dtype = did.dtype
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001
        raise Refused(f"its type or shape cannot be read ({exc})") from exc
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise Refused(f"it holds {dtype} values, not numbers")
    why = size_problem(shape, dtype.itemsize, rule)
    if why:
        raise Refused(why)
    nbytes = math.prod(shape) * dtype.itemsize
    offset = did.get_offset()  # None unless contiguous, in this file and allocated
    if offset is not None:
        if file_size is not None and offset + nbytes > file_size:
            raise Refused(f"its data would end {offset + nbytes - file_size:,} bytes past the file")
        return Plan(shape, dtype)
    dcpl = did.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        raise Refused("it is a virtual dataset: its data would come from other files")
    if dcpl.get_external_count():
        raise Refused("its data is stored in external files (HDF5 external raw storage)")
    if layout == h5d.COMPACT or (layout == h5d.CONTIGUOUS):
        return Plan(shape, dtype)  # compact: inside the object header; contiguous: unallocated
    if layout != h5d.CHUNKED:
        raise Refused(f"its storage layout ({layout}) is not one vidfeat reads")
    grid = tuple(int(c) for c in dcpl.get_chunk())
    if len(grid) != len(shape) or not all(c > 0 for c in grid):
        raise Refused(f"its chunk shape {list(grid)} does not match its shape {list(shape)}")
    chunk_bytes = math.prod(grid) * dtype.itemsize
    if chunk_bytes > MAX_ARRAY_BYTES:
        raise Refused(
            f"its chunks of {list(grid)} make {chunk_bytes:,} bytes each, more than the "
            f"{MAX_ARRAY_BYTES:,} a stored array may have ({CAP_HINT})"
        )
    filters = []
    for i in range(dcpl.get_nfilters()):
        code, _flags, cd, name = dcpl.get_filter(i)
        if code not in _ALLOWED_FILTERS:
            shown = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
            raise Refused(f"it is compressed with filter {code} ({shown}), not one vidfeat writes")
        filters.append((int(code), tuple(int(v) for v in cd)))
    codes = [c for c, _ in filters]
    if h5z.FILTER_DEFLATE in codes:
        inner = [c for c in codes if c != h5z.FILTER_FLETCHER32]
        if inner not in ([h5z.FILTER_DEFLATE], [h5z.FILTER_SHUFFLE, h5z.FILTER_DEFLATE]) or (
            h5z.FILTER_FLETCHER32 in codes and codes[-1] != h5z.FILTER_FLETCHER32
        ):
            raise Refused(
                f"its filters {[_ALLOWED_FILTERS[c] for c in codes]} are not ones vidfeat writes"
            )
        plan = Plan(shape, dtype, grid, tuple(filters))
    elif h5z.FILTER_LZF in codes:  # read by HDF5 once every chunk's stored size is checked
        plan = Plan(shape, dtype, grid, tuple(filters), lzf=True)
    else:
        return Plan(shape, dtype)  # shuffle/fletcher32 alone: the chunk's own size
    if chunks:
        _check_chunks(did, plan)
    return plan


def read_dataset(did: Any, plan: Plan) -> np.ndarray:
    """The data of dataset ``did`` as :func:`check_dataset` planned it."""
    if plan.lzf:
        _check_chunks(did, plan)
    elif plan.chunks is not None:
        return _read_deflated(did, plan)
    out = np.empty(plan.shape, plan.dtype)
    if out.size:
        did.read(h5s.ALL, h5s.ALL, out)
    return out


def _chunk_infos(did: Any) -> list:
    infos: list = []
    try:
        did.chunk_iter(infos.append)
    except AttributeError:  # pragma: no cover - HDF5 before 1.14: one call per chunk
        infos = [did.get_chunk_info(i) for i in range(did.get_num_chunks())]
    return infos


def _check_chunks(did: Any, plan: Plan) -> list[tuple[int, ...]]:
    """The offsets of the chunks of a filtered dataset, each checked to lie on its chunk grid
    and to store at most what compressing its data could take (so that LZF, whose largest
    ratio is about 88, and deflate, bounded here, never expand a chunk far)."""
    shape, chunks = plan.shape, plan.chunks
    assert chunks is not None
    chunk_bytes = math.prod(chunks) * plan.dtype.itemsize
    # compressing never grows data by more than deflate's 5 bytes per 16 KiB block + header
    stored_max = chunk_bytes + chunk_bytes // 1000 + 64
    expect = math.prod(-(-s // c) for s, c in zip(shape, chunks, strict=True))
    infos = _chunk_infos(did)
    if len(infos) > expect:
        raise Refused(f"it lists {len(infos)} chunks, its shape has room for {expect}")
    offsets = []
    for info in infos:
        off = tuple(int(o) for o in info.chunk_offset)
        if len(off) != len(shape) or any(
            o % c or o >= s for o, c, s in zip(off, chunks, shape, strict=True)
        ):
            raise Refused(f"a chunk at {list(off)} lies outside its shape {list(shape)}")
        if info.size > stored_max:
            raise Refused(f"a chunk stores {info.size:,} bytes for {chunk_bytes:,} of data")
        offsets.append(off)
    return offsets


def _read_deflated(did: Any, plan: Plan) -> np.ndarray:
    """Read a deflated dataset chunk by chunk: each chunk's stored bytes are inflated here to
    at most the chunk's size, and a stream that would go on is refused."""
    shape, dtype, chunks = plan.shape, plan.dtype, plan.chunks
    assert chunks is not None
    out = np.zeros(shape, dtype)
    if not out.size:
        return out
    chunk_bytes = math.prod(chunks) * dtype.itemsize
    infos = _check_chunks(did, plan)
    if len(infos) < math.prod(-(-s // c) for s, c in zip(shape, chunks, strict=True)):
        with contextlib.suppress(Exception):  # unwritten chunks read as the fill value
            fill = np.zeros((), dtype)
            did.get_create_plist().get_fill_value(fill)
            if fill != 0:
                out[...] = fill
    codes = [c for c, _ in plan.filters]
    shuffle_size = next((cd[0] for c, cd in plan.filters if c == h5z.FILTER_SHUFFLE and cd), 0)
    for off in infos:
        mask, data = did.read_direct_chunk(off)
        for k in range(len(codes) - 1, -1, -1):
            if mask & (1 << k):
                continue  # this filter was skipped for this chunk
            if codes[k] == h5z.FILTER_FLETCHER32:
                data = data[:-4]
            elif codes[k] == h5z.FILTER_DEFLATE:
                data = _inflate(data, chunk_bytes)
            elif codes[k] == h5z.FILTER_SHUFFLE:
                data = _unshuffle(data, shuffle_size or dtype.itemsize)
        if len(data) != chunk_bytes:
            raise Refused(
                f"a chunk holds {len(data):,} bytes after its filters, not {chunk_bytes:,}"
            )
        block = np.frombuffer(data, dtype).reshape(chunks)
        dst = tuple(slice(o, min(o + c, s)) for o, c, s in zip(off, chunks, shape, strict=True))
        out[dst] = block[tuple(slice(0, d.stop - d.start) for d in dst)]
    return out


def _inflate(data: bytes, limit: int) -> bytes:
    d = _zlib.decompressobj()
    try:
        got = d.decompress(data, limit)
    except (zlib.error, _zlib.error) as exc:
        raise Refused(f"a chunk cannot be inflated ({exc})") from exc
    if d.unconsumed_tail or (not d.eof and d.decompress(b"", 1)):
        raise Refused(
            f"a chunk inflates to more than the {limit:,} bytes its shape holds "
            "(a decompression bomb); it is not read"
        )
    return got


def _unshuffle(data: bytes, size: int) -> bytes:
    n = len(data) // size if size > 1 else 0
    if n <= 1:
        return data
    body = np.frombuffer(data, np.uint8, n * size).reshape(size, n).T.tobytes()
    return body + data[n * size :]
