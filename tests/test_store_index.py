"""The store's indexes: the index each shard carries (written before the shard is completed,
checked by verify), the compact set index ``.index.npz`` (round trip, stale or hand-edited
caches, read-only sets, refresh), and stores written before shards carried an index."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

import vidfeat.store.reader as reader_mod
import vidfeat.store.writer as writer_mod
from vidfeat.store import (
    INDEX_FILE,
    SHARD_INDEX_ATTR,
    FeatureSet,
    FeatureStore,
    ShardWriter,
    format_verify,
    verify_store,
)
from vidfeat.store.setindex import SetIndex
from vidfeat.store.shardindex import decode_shard_index, scan_groups

CONFIG = {"modality": "rgb", "T": 4, "dtype": "float32", "feature_shape": [4, -1]}


def new_set(root: Path, name: str = "rgb", config: dict | None = None) -> Path:
    store = FeatureStore(root)
    store.ensure_set(name, config or CONFIG)
    return store.set_dir(name)


def feats(rng: np.random.Generator, t: int = 4, d: int = 8) -> np.ndarray:
    return rng.standard_normal((t, d)).astype(np.float32)


def write(set_dir: Path, job: str, videos: dict[str, np.ndarray], **kw) -> list[Path]:
    with ShardWriter(set_dir, job, **kw) as w:
        for vid, arr in videos.items():
            w.add(vid, arr, {"label": "x"})
    return w.shards


def index_of(shard: Path):
    with h5py.File(shard, "r", locking=False) as f:
        raw = f.attrs.get(SHARD_INDEX_ATTR)
        return None if raw is None else decode_shard_index(raw)


def set_index_attr(shard: Path, edit) -> None:
    """Rewrite a shard's index attribute with ``edit(dict)`` applied (a corrupt index)."""
    with h5py.File(shard, "a", locking=False) as f:
        d = json.loads(f.attrs[SHARD_INDEX_ATTR])
        edit(d)
        f.attrs[SHARD_INDEX_ATTR] = json.dumps(d)


@pytest.fixture
def count_scans(monkeypatch):
    """Names of shards listed by opening every group (the slow path)."""
    scanned: list[str] = []
    real = reader_mod.scan_groups

    def counting(f):
        # readers open a shard through the /proc/self/fd entry of a descriptor checked to be a
        # regular file (vidfeat.store.guard): the name is that of the file HDF5 holds open
        scanned.append(Path(os.readlink(f"/proc/self/fd/{f.id.get_vfd_handle()}")).name)
        return real(f)

    monkeypatch.setattr(reader_mod, "scan_groups", counting)
    return scanned


def snapshot(fs: FeatureSet) -> dict:
    return {
        "ids": fs.ids(),
        "features": {v: fs.features(v).tolist() for v in fs.ids()},
        "shards": {v: fs.shard_of(v).name for v in fs.ids()},
        "dups": {k: [p.name for p in v] for k, v in fs.duplicates().items()},
        "raw": sorted(fs._raw),
    }


# --------------------------------------------------------------------------- per-shard index


def test_completed_shards_carry_an_index_matching_their_groups(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    d = new_set(tmp_path)
    seen_before_rename: list[bool] = []

    def checkpoint(name):
        if name == "before-rename":  # the partial, closed: the index is already inside
            (partial,) = d.glob("*.partial")
            with h5py.File(partial, "r", locking=False) as f:
                seen_before_rename.append(SHARD_INDEX_ATTR in f.attrs)

    monkeypatch.setattr(writer_mod, "_checkpoint", checkpoint)
    flow = rng.integers(0, 255, (4, 2, 3, 3), dtype=np.uint8)
    with ShardWriter(d, "j", max_videos=3) as w:  # auto: floats raw, integers gzip
        w.add("a", feats(rng), {"written_at": 5.0})
        w.add("b", feats(rng, 5), {}, extra={"scores": np.ones(3)})
        w.add("a", feats(rng), {"written_at": 7.0})  # replaced in the partial
        w.add("flow", flow, {"written_at": "not a time"})
        w.add("c", np.float64(3.5), {})  # a scalar
    with ShardWriter(d, "h", float16=True) as w:
        w.add("half", feats(rng), {})
    assert seen_before_rename == [True, True, True]
    for shard in sorted(d.glob("*.h5")):
        idx = index_of(shard)
        assert idx is not None and idx.indexed
        with h5py.File(shard, "r", locking=False) as f:
            scan = scan_groups(f)
            assert idx.ids == scan.ids == sorted(f)
            # offsets and layouts as a scan of the groups finds them; written_at as the attrs
            assert [r[:3] for r in idx.rows()] == [r[:3] for r in scan.rows()]
            for vid, _, _, t in idx.rows():
                want = f[vid].attrs["written_at"]
                assert t == (float(want) if not isinstance(want, str) else -math.inf)
    first = index_of(d / "part-j-0.h5")  # a, b, flow: the third distinct id rotates
    (a, b, flow) = first.rows()
    assert first.ids == ["a", "b", "flow"]
    assert a[3] == 7.0 and flow[3] == -math.inf
    assert a[1] >= 0 and b[1] >= 0 and flow[1] == -1  # gzip: read through h5py
    assert [a[2], b[2], flow[2]] == [((4, 8), "<f4"), ((5, 8), "<f4"), ((4, 2, 3, 3), "|u1")]
    assert len(first.layouts) == 3
    second = index_of(d / "part-j-1.h5")
    assert second.rows()[0][:3] == ("c", second.offset[0], ((), "<f8")) and second.offset[0] >= 0
    half = index_of(d / "part-h-0.h5")
    assert half.layouts == [((4, 8), "<f2")] and half.offset[0] >= 0


def test_opening_reads_the_shards_indexes_not_their_groups(tmp_path, count_scans):
    rng = np.random.default_rng(1)
    d = new_set(tmp_path)
    videos = {f"v{i:02d}": feats(rng) for i in range(10)}
    write(d, "j", videos, max_videos=4)
    fs = FeatureSet(d)
    assert count_scans == []
    assert fs.ids() == sorted(videos) and set(fs._raw) == set(videos)
    for vid, arr in videos.items():
        np.testing.assert_array_equal(fs.features(vid), arr)
        np.testing.assert_array_equal(fs.get(vid)[0], arr)


def test_a_shard_edited_after_completion_is_scanned(tmp_path, count_scans):
    rng = np.random.default_rng(2)
    d = new_set(tmp_path)
    (shard,) = write(d, "j", {"a": feats(rng), "b": feats(rng)})
    with h5py.File(shard, "a", locking=False) as f:  # the index no longer lists every group
        f.create_group("z").create_dataset("features", data=feats(rng))
    fs = FeatureSet(d)
    assert fs.ids() == ["a", "b", "z"] and count_scans == ["part-j-0.h5"]
    rep = verify_store(tmp_path)
    assert not rep.ok
    assert any("does not match its groups" in p and "'z'" in p for p in rep.problems)


# --------------------------------------------------------------------------- verify


@pytest.mark.parametrize("corruption", ["offset", "shape", "dtype", "ids", "garbage"])
def test_verify_reports_an_index_that_does_not_match_the_groups(tmp_path, corruption):
    rng = np.random.default_rng(3)
    d = new_set(tmp_path)
    (shard,) = write(d, "j", {"a": feats(rng), "b": feats(rng)}, compression=None)
    assert verify_store(tmp_path).ok

    def edit(ix):
        if corruption == "offset":
            ix["offset"][1] += 64
        elif corruption == "shape":
            ix["layouts"].append([[8, 4], "<f4"])
            ix["layout"][0] = 1
        elif corruption == "dtype":
            ix["layouts"].append([[4, 8], "<i4"])
            ix["layout"][0] = 1
        elif corruption == "ids":
            ix["ids"][1] = "c"

    if corruption == "garbage":
        with h5py.File(shard, "a", locking=False) as f:
            f.attrs[SHARD_INDEX_ATTR] = "{not json"
    else:
        set_index_attr(shard, edit)
    rep = verify_store(tmp_path)
    text = format_verify(rep)
    assert not rep.ok, text
    (problem,) = rep.problems
    assert "the index of shard part-j-0.h5 does not match its groups" in problem
    want = {
        "offset": "'b': offset",
        "shape": "shape [8, 4], <f4 in the index but",
        "dtype": "<i4 in the index",
        "ids": "ids only in the index: 'c'; ids only in the groups: 'b'",
        "garbage": "it cannot be decoded",
    }[corruption]
    assert want in problem
    assert len(FeatureSet(d)) == 2  # readers still open the set: verify is what reports


def test_verify_checks_the_written_at_of_duplicated_ids(tmp_path):
    d = new_set(tmp_path)
    one = np.ones((4, 2), np.float32)
    with ShardWriter(d, "a") as w:
        w.add("x", one, {"written_at": 200.0})
    with ShardWriter(d, "b") as w:
        w.add("x", one * 2, {"written_at": 100.0})
    assert verify_store(tmp_path).ok
    set_index_attr(d / "part-b-0.h5", lambda ix: ix["written_at"].__setitem__(0, 900.0))
    fs = FeatureSet(d)
    assert fs.shard_of("x").name == "part-b-0.h5"  # readers trust the index
    rep = verify_store(tmp_path)
    assert any("records written_at 900.0 for duplicated id 'x'" in p for p in rep.problems)


def test_verify_in_worker_processes_reports_the_same(tmp_path):
    rng = np.random.default_rng(4)
    d = new_set(tmp_path)
    nan = feats(rng)
    nan[0, 0] = np.nan
    write(d, "j", {f"v{i}": feats(rng) for i in range(9)}, max_videos=2)
    write(d, "k", {"nan": nan, "v3": feats(rng)}, compression=None)
    (d / "part-junk-0.h5").write_bytes(b"not hdf5")
    one = verify_store(tmp_path, workers=1)
    two = verify_store(tmp_path, workers=3)
    assert not one.ok and format_verify(one) == format_verify(two)
    assert one.sets["rgb"]["shards"] == 7 and one.sets["rgb"]["bad_shards"] == 1


# --------------------------------------------------------------------------- older stores


def test_a_store_written_before_shards_had_an_index(tmp_path, monkeypatch, count_scans):
    rng = np.random.default_rng(5)
    d = new_set(tmp_path)
    monkeypatch.setattr(writer_mod, "_WRITE_SHARD_INDEX", False)  # vidfeat as it was
    old = {f"o{i}": feats(rng) for i in range(5)}
    write(d, "old", old, max_videos=3)
    with ShardWriter(d, "old2") as w:
        w.add("dup", np.zeros((4, 8), np.float32), {"written_at": 50.0})
    monkeypatch.setattr(writer_mod, "_WRITE_SHARD_INDEX", True)
    with ShardWriter(d, "new") as w:
        w.add("n0", feats(rng), {})
        w.add("dup", np.ones((4, 8), np.float32), {"written_at": 10.0})  # older copy
    assert [index_of(p) is None for p in sorted(d.glob("*.h5"))] == [False, True, True, True]

    fs = FeatureSet(d)
    assert sorted(count_scans) == ["part-old-0.h5", "part-old-1.h5", "part-old2-0.h5"]
    assert fs.ids() == sorted([*old, "n0", "dup"])
    for vid, arr in old.items():
        np.testing.assert_array_equal(fs.features(vid), arr)
        np.testing.assert_array_equal(fs.get(vid)[0], arr)
    assert set(fs._raw) == set(fs.ids())  # byte layouts from the scan too
    assert fs.shard_of("dup").name == "part-old2-0.h5" and fs.features("dup").max() == 0
    before = snapshot(fs)
    count_scans.clear()
    again = FeatureSet(d)
    assert count_scans == [] and snapshot(again) == before  # written_at of dup cached too

    rep = verify_store(tmp_path)
    assert rep.ok, format_verify(rep)
    assert rep.sets["rgb"]["unindexed_shards"] == 3
    assert any("3 shard(s) carry no index" in n for n in rep.notes)


def test_an_old_index_json_is_reused_not_rescanned(tmp_path, monkeypatch, count_scans):
    rng = np.random.default_rng(6)
    d = new_set(tmp_path)
    monkeypatch.setattr(writer_mod, "_WRITE_SHARD_INDEX", False)
    videos = {f"v{i}": feats(rng) for i in range(6)}
    write(d, "old", videos, max_videos=4, compression=None)
    # the cache vidfeat wrote before .index.npz (format 2), with one stale shard entry
    legacy = {"format": 2, "shards": {}, "written_at": {}}
    for shard in sorted(d.glob("*.h5")):
        st = shard.stat()
        with h5py.File(shard, "r", locking=False) as f:
            lst = scan_groups(f)
        legacy["shards"][shard.name] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ids": lst.ids,
            "raw": {v: [o, list(lay[0]), lay[1]] for v, o, lay, _ in lst.rows()},
        }
    legacy["shards"]["part-old-1.h5"]["mtime_ns"] += 1
    (d / ".index.json").write_text(json.dumps(legacy))
    fs = FeatureSet(d)
    assert count_scans == ["part-old-1.h5"]  # only the stale one
    for vid, arr in videos.items():
        np.testing.assert_array_equal(fs.features(vid), arr)
    assert (d / INDEX_FILE).exists()


# --------------------------------------------------------------------------- the set index


def test_set_index_round_trip(tmp_path, count_scans):
    rng = np.random.default_rng(7)
    d = new_set(tmp_path, config={**CONFIG, "feature_shape": None})
    write(d, "raw", {f"r{i}": feats(rng, 4, 3 + i % 3) for i in range(7)}, max_videos=3)
    write(d, "z", {"g": feats(rng)}, compression="gzip")
    write(d, "i", {"flow": rng.integers(0, 9, (4, 2, 2), dtype=np.uint8)})
    write(d, "dup", {"r1": np.full((4, 2), 9, np.float32)})
    (d / "part-bad-0.h5").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="part-bad-0.h5 cannot be opened"):
        fresh = FeatureSet(d)
    built = snapshot(fresh)
    assert built["dups"] == {"r1": ["part-dup-0.h5", "part-raw-0.h5"]}
    assert built["shards"]["r1"] == "part-dup-0.h5"
    assert "g" not in built["raw"] and "flow" not in built["raw"] and "r0" in built["raw"]
    n_scanned = len(count_scans)
    with pytest.warns(UserWarning, match="part-bad-0.h5 cannot be opened"):
        cached = FeatureSet(d)
    assert len(count_scans) == n_scanned == 0  # nothing listed by groups, then nothing at all
    assert snapshot(cached) == built
    assert cached.bad_shards() == fresh.bad_shards() and "part-bad-0.h5" in cached.bad_shards()
    idx = SetIndex.load(d / INDEX_FILE)
    assert idx is not None and idx.ids == fresh._index.ids
    for col in ("offset", "layout", "wat"):
        np.testing.assert_array_equal(getattr(idx, col), getattr(fresh._index, col))
    assert idx.layouts == fresh._index.layouts


def test_stale_cache_lists_only_changed_shards(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    d = new_set(tmp_path)
    write(d, "a", {"a0": feats(rng), "a1": feats(rng)})
    write(d, "b", {"b0": feats(rng)})
    FeatureSet(d)
    listed: list[str] = []
    real = reader_mod._scan_shard
    monkeypatch.setattr(reader_mod, "_scan_shard", lambda p: listed.append(p.name) or real(p))
    # a shard replaced by another with other contents, one removed, one added
    tmp = d / "x.tmp"
    write(d, "tmp", {"a0": feats(rng) + 50})
    os.replace(d / "part-tmp-0.h5", tmp)
    os.replace(tmp, d / "part-a-0.h5")
    (d / "part-b-0.h5").unlink()
    write(d, "c", {"c0": feats(rng)})
    fs = FeatureSet(d)
    assert sorted(listed) == ["part-a-0.h5", "part-c-0.h5"]
    assert fs.ids() == ["a0", "c0"] and fs.features("a0").min() > 40


@pytest.mark.parametrize(
    "damage",
    ["torn", "zeros", "not-npz", "format", "lengths", "dtype", "layout-code", "bad-name", "id"],
)
def test_a_hand_edited_cache_is_ignored_and_rebuilt(tmp_path, damage, count_scans):
    rng = np.random.default_rng(9)
    d = new_set(tmp_path)
    videos = {f"v{i}": feats(rng) for i in range(5)}
    write(d, "j", videos, max_videos=2, compression=None)
    FeatureSet(d)
    path = d / INDEX_FILE
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    meta = json.loads(a["meta"].tobytes())
    if damage == "torn":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "zeros":
        path.write_bytes(bytes(path.stat().st_size))
    elif damage == "not-npz":
        path.write_text(json.dumps({"format": 3}))
    else:
        if damage == "format":
            meta["format"] = 99
        elif damage == "lengths":
            a["offset"] = a["offset"][:-1]
        elif damage == "dtype":
            a["offset"] = a["offset"].astype(np.float64)
        elif damage == "layout-code":
            a["layout"] = a["layout"] + 5
        elif damage == "bad-name":
            names = a["shard_names"].tobytes().replace(b"part-j-0.h5", b"../../etc/passwd")
            a["shard_names"] = np.frombuffer(names, np.uint8)
        elif damage == "id":
            a["ids"] = np.frombuffer(a["ids"].tobytes().replace(b"v1", b"a/"), np.uint8)
        a["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        with open(path, "wb") as fh:
            np.savez(fh, **a)
    assert SetIndex.load(path) is None
    fs = FeatureSet(d)
    assert fs.ids() == sorted(videos) and count_scans == []  # rebuilt from the shards' indexes
    for vid, arr in videos.items():
        np.testing.assert_array_equal(fs.features(vid), arr)
    assert SetIndex.load(path) is not None


def test_read_only_set_opens_without_writing(tmp_path, count_scans, monkeypatch):
    rng = np.random.default_rng(10)
    d = new_set(tmp_path)
    videos = {f"v{i}": feats(rng) for i in range(7)}
    write(d, "j", videos, max_videos=3)
    fs = FeatureStore(tmp_path).open_set("rgb", read_only=True)
    assert not (d / INDEX_FILE).exists() and count_scans == []
    assert fs.ids() == sorted(videos)
    np.testing.assert_array_equal(fs.features("v3"), videos["v3"])
    write(d, "k", {"k0": feats(rng)})
    listed: list[str] = []
    real = reader_mod._scan_shard
    monkeypatch.setattr(reader_mod, "_scan_shard", lambda p: listed.append(p.name) or real(p))
    fs.refresh()  # from the index in memory: only the new shard is listed
    assert listed == ["part-k-0.h5"] and "k0" in fs and not (d / INDEX_FILE).exists()
    if os.geteuid() != 0:  # root writes through a chmod; others get a truly read-only folder
        mode = d.stat().st_mode
        os.chmod(d, 0o555)
        try:
            assert FeatureSet(d).ids() == sorted([*videos, "k0"])
            assert not (d / INDEX_FILE).exists()
        finally:
            os.chmod(d, mode)


def test_refresh_sees_new_shards_and_pickled_sets_read(tmp_path):
    rng = np.random.default_rng(11)
    d = new_set(tmp_path)
    a = feats(rng)
    write(d, "j", {"a": a})
    fs = FeatureSet(d)
    np.testing.assert_array_equal(fs.features("a"), a)  # a descriptor is now open
    b = feats(rng)
    write(d, "k", {"b": b})
    assert "b" not in fs
    fs.refresh()
    assert fs.ids() == ["a", "b"]
    np.testing.assert_array_equal(fs.features("b"), b)
    clone = pickle.loads(pickle.dumps(fs))  # spawn-started DataLoader workers get a pickle
    assert clone._fds == {} and clone._handles == {}
    np.testing.assert_array_equal(clone.features("a"), a)
    np.testing.assert_array_equal(clone.get("b")[0], b)


def test_verify_finds_nan_and_inf_in_contiguous_arrays_of_any_size_and_dtype(tmp_path):
    # the raw float features of a shard are checked in one read: small arrays of several
    # dtypes gathered, big ones one by one; each bad array is reported with its counts
    d = new_set(tmp_path, config={**CONFIG, "dtype": None, "feature_shape": None})
    good32, good16 = np.zeros((4, 8), np.float32), np.zeros((4, 8), np.float16)
    big = np.zeros((4, 2000), np.float32)  # 32 KB: past the gather size
    videos = {"a": good32, "b": good16, "c": good32.copy(), "d": good16.copy(), "e": big.copy()}
    videos["c"][1, 1] = np.nan
    videos["d"][0, :3] = np.inf
    videos["e"][3, 1999] = -np.inf
    videos["f"] = big.copy()
    write(d, "j", videos, compression=None)
    rep = verify_store(tmp_path)
    bad = {p.split("video ")[1].split(" ")[0]: p for p in rep.problems}
    assert sorted(bad) == ["'c'", "'d'", "'e'"], rep.problems
    assert "holds 1 NaN values" in bad["'c'"] and "holds 3 Inf values" in bad["'d'"]
    assert "holds 1 Inf values" in bad["'e'"]
