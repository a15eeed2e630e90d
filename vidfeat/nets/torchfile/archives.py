"""The two containers ``torch.save`` writes: the zip archive (torch >= 1.6) and the legacy
format (a run of pickles, then the storages), each checked member by member."""

from __future__ import annotations

import io
import struct
import zipfile

from vidfeat.nets.torchfile.files import (
    _STORAGES,
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    _Refused,
    _Snapshot,
)
from vidfeat.nets.torchfile.pickles import (
    _nbytes,
    _scan,
)

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
