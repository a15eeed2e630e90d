"""The HDF5 feature store: round trips, shard rotation, crash safety, config checks, the index
cache, duplicates, multi-process reading, verification and info."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
import pytest

import vidfeat.store.reader as store_mod
import vidfeat.store.setindex as setindex_mod
from vidfeat.errors import ConfigError, StoreError
from vidfeat.store import (
    FailureLog,
    FeatureSet,
    FeatureStore,
    ShardWriter,
    StoreWarning,
    cleanup_stale_partials,
    format_info,
    format_verify,
    partial_is_live,
    read_failures,
    store_info,
    verify_store,
)

CONFIG = {"modality": "rgb", "T": 4, "N": 3, "dtype": "float32", "feature_shape": [4, -1]}


def new_set(root: Path, name: str = "rgb", config: dict | None = None) -> Path:
    store = FeatureStore(root)
    store.ensure_set(name, config or CONFIG)
    return store.set_dir(name)


def feats(rng: np.random.Generator, t: int = 4, d: int = 8) -> np.ndarray:
    return rng.standard_normal((t, d)).astype(np.float32)


def write(set_dir: Path, job: str, videos: dict[str, np.ndarray], **kw) -> list[Path]:
    with ShardWriter(set_dir, job, compression=None, **kw) as w:
        for vid, arr in videos.items():
            w.add(vid, arr, {"label": "x"})
    return w.shards


def leftovers(set_dir: Path) -> list[str]:
    return sorted(p.name for p in set_dir.iterdir() if ".partial" in p.name)


INDEX = store_mod.INDEX_FILE  # the set index cache, .index.npz


def load_cache(set_dir: Path) -> dict[str, np.ndarray]:
    with np.load(set_dir / INDEX) as z:
        return {k: z[k] for k in z.files}


def cache_meta(cache: dict[str, np.ndarray]) -> dict:
    return json.loads(cache["meta"].tobytes())


def cache_rows(cache: dict[str, np.ndarray]) -> dict[str, int]:
    return {v: i for i, v in enumerate(cache["ids"].tobytes().decode().split("\0"))}


def save_cache(set_dir: Path, cache: dict[str, np.ndarray]) -> None:
    with open(set_dir / INDEX, "wb") as fh:
        np.savez(fh, **cache)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("float16", [False, True])
@pytest.mark.parametrize("compression", ["auto", "gzip", "lzf", None])
def test_round_trip_features_extra_attrs(tmp_path, compression, float16):
    rng = np.random.default_rng(0)
    d = new_set(tmp_path)
    videos = {
        "vid-ü_1": feats(rng),
        "日本語 id": feats(rng),
        "a.b": feats(rng),
    }
    flow = rng.integers(0, 256, size=(4, 3, 2, 6, 5), dtype=np.uint8)
    scores = rng.random(5)
    attrs = {
        "label": "réveil ☀",
        "class_index": 3,
        "has_audio": False,
        "fps": 29.97,
        "segment_start": np.array([0.0, 0.5, 1.0, 1.5]),
        "frame_indices": np.arange(12).reshape(4, 3),
        "tags": ["a", "bé"],
        "source_path": Path("/videos/x.mp4"),
        "maybe": None,
    }
    with ShardWriter(d, "job1", compression=compression, float16=float16, compression_level=1) as w:
        for vid, arr in videos.items():
            w.add(vid, arr, attrs, extra={"scores": scores})
        w.add("flow", flow, {"label": "q"})
    assert w.written_ids == [*videos, "flow"]

    fs = FeatureStore(tmp_path).open_set("rgb")
    assert fs.ids() == sorted([*videos, "flow"])
    for vid, arr in videos.items():
        got, a = fs.get(vid)
        assert got.dtype == (np.float16 if float16 else np.float32)
        np.testing.assert_allclose(
            got, arr, rtol=1e-3 if float16 else 0, atol=1e-3 if float16 else 0
        )
        np.testing.assert_array_equal(fs.get_extra(vid, "scores"), scores)  # extras stay exact
        assert a["label"] == "réveil ☀" and isinstance(a["label"], str)
        assert a["class_index"] == 3 and isinstance(a["class_index"], int)
        assert a["has_audio"] is False
        assert a["fps"] == 29.97
        np.testing.assert_array_equal(a["segment_start"], attrs["segment_start"])
        np.testing.assert_array_equal(a["frame_indices"], attrs["frame_indices"])
        assert list(a["tags"]) == ["a", "bé"]
        assert a["source_path"] == "/videos/x.mp4"
        assert "maybe" not in a
        assert isinstance(a["written_at"], float)  # added by the writer
        assert set(fs.attrs(vid)) == set(a) and fs.attrs(vid)["label"] == a["label"]
        np.testing.assert_array_equal(fs.features(vid), got)  # the array alone, no attrs
    q, _ = fs.get("flow")
    assert q.dtype == np.uint8  # integers never narrowed
    np.testing.assert_array_equal(q, flow)
    assert fs.get_extra("flow", "scores") is None
    # same process as the open reader: HDF5 insists on the same locking flag
    with h5py.File(fs.shard_of("flow"), "r", locking=False) as f:
        if compression == "auto":  # gzip shrinks integer fields; floats stay contiguous
            assert f["flow/features"].compression == "gzip"
            assert f["a.b/features"].compression is None and f["a.b/features"].chunks is None
        else:
            assert f["flow/features"].compression == compression
    # contiguous arrays are read with one pread at the indexed offset, past h5py
    raw = {"auto": set(videos), None: {*videos, "flow"}}.get(compression, set())
    assert set(fs._raw) == raw
    for vid in raw:
        x = fs.features(vid)
        x += 0  # a writable array, like h5py's
        np.testing.assert_array_equal(x, fs.get(vid)[0])
    assert [v for v, _, _ in fs] == fs.ids()
    with pytest.raises(StoreError, match="not in set 'rgb'"):
        fs.get("nope")
    with pytest.raises(KeyError) as ei:  # also catchable the mapping way
        fs.attrs("nope")
    assert str(ei.value).startswith("video 'nope' is not in set 'rgb'")
    assert "nope" not in fs and len(fs) == 4
    fs.close()


@pytest.mark.parametrize("level", [1, 6, "auto"])
def test_multi_chunk_gzip_arrays_read_back_exactly_by_any_hdf5_reader(tmp_path, level, monkeypatch):
    """Arrays of several chunks are deflated on a thread pool and written chunk by chunk: h5py
    (any HDF5 reader) reads exactly the array back, through the standard gzip (+ shuffle)
    filters, including a last chunk that the array only partly fills."""
    from vidfeat.store import deflate as deflate_mod
    from vidfeat.store import writer as writer_mod

    rng = np.random.default_rng(3)
    fields = rng.integers(100, 156, size=(7, 5, 2, 256, 300), dtype=np.uint8)  # 768 KB rows
    floats = rng.standard_normal((5000, 300)).astype(np.float32)  # 873-row chunks, edge of 635
    ints = rng.integers(-(2**40), 2**40, size=(3000, 64))  # int64: shuffle over 8 bytes
    real, deflated = writer_mod.write_deflated, []

    def counting(g, name, d):
        deflated.append(f"{g.name}/{name}")
        return real(g, name, d)

    monkeypatch.setattr(writer_mod, "write_deflated", counting)
    d = new_set(tmp_path)
    auto = level == "auto"  # ISA-L's deflate for integer arrays; floats stay uncompressed
    assert deflate_mod._isal_zlib is not None  # a dependency: auto's speed depends on it
    comp = {"compression": "auto"} if auto else {"compression": "gzip", "compression_level": level}
    with ShardWriter(d, "job", **comp) as w:
        w.add("fields", fields, {})
        w.add("floats", floats, {}, extra={"ints": ints})
    assert deflated == ["/fields/features"] + ([] if auto else ["/floats/features"]) + [
        "/floats/ints"
    ]
    (shard,) = w.shards
    with h5py.File(shard) as f:
        assert f["floats/features"].compression == (None if auto else "gzip")
        for name, want in (("fields/features", fields), ("floats/features", floats)):
            ds = f[name]
            if auto and want.dtype.kind == "f":
                assert np.array_equal(ds[...], want)
                continue
            assert ds.compression == "gzip" and ds.compression_opts == (1 if auto else level)
            assert ds.shuffle == (want.dtype.itemsize > 1)
            assert ds.chunks[0] < want.shape[0]  # several chunks
            assert ds.dtype == want.dtype and np.array_equal(ds[...], want)
        assert np.array_equal(f["floats/ints"][...], ints) and f["floats/ints"].shuffle
    fs = FeatureStore(tmp_path).open_set("rgb")
    assert np.array_equal(fs.features("fields"), fields)
    assert np.array_equal(fs.features("floats"), floats)


def test_a_workers_deflated_fields_are_stored_as_they_are(tmp_path):
    """An extraction worker deflates integer features under the job's compression before they
    cross the pipe (5-8x fewer bytes); the writer stores them as they are, and refuses ones
    deflated under another rule than its own."""
    import pickle

    from vidfeat.store.deflate import Deflated, deflate_for_store

    rng = np.random.default_rng(5)
    fields = np.full((6, 5, 2, 128, 300), 127, np.uint8)  # still background, a moving patch
    fields[..., 40:80, 100:160] = rng.integers(100, 156, size=(6, 5, 2, 40, 60))
    floats = rng.standard_normal((6, 64)).astype(np.float32)
    d = deflate_for_store(fields, "auto")
    assert isinstance(d, Deflated) and d.nbytes == fields.nbytes
    assert len(pickle.dumps(d)) < fields.nbytes / 3  # what crosses the pipe
    assert deflate_for_store(floats, "auto") is floats  # the writer may narrow floats itself
    assert deflate_for_store(fields, None) is fields and deflate_for_store(fields, "lzf") is fields
    set_dir = new_set(tmp_path)
    with ShardWriter(set_dir, "job") as w:  # compression "auto"
        w.add("v", pickle.loads(pickle.dumps(d)), {"label": "x"})
        with pytest.raises(StoreError, match="deflate_for_store"):  # zlib level 4, not auto's
            w.add("g", deflate_for_store(fields[:1], "gzip"), {})
    with pytest.raises(StoreError, match="deflate_for_store"):
        with ShardWriter(set_dir, "job2", compression=None) as w2:
            w2.add("v", d, {})
    fs = FeatureStore(tmp_path).open_set("rgb")
    assert fs.ids() == ["v"]
    assert np.array_equal(fs.features("v"), fields)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "a\x00b"])
def test_invalid_ids_rejected_and_writer_still_usable(tmp_path, bad):
    d = new_set(tmp_path)
    with ShardWriter(d, "j") as w:
        with pytest.raises(StoreError, match="invalid video id"):
            w.add(bad, np.zeros(3), {})
        w.add("ok", np.zeros(3), {})
    assert FeatureStore(tmp_path).open_set("rgb").ids() == ["ok"]
    assert sorted(p.name for p in tmp_path.rglob("*.h5")) == ["part-j-0.h5"]


def test_unstorable_attrs_refused_and_nothing_half_written(tmp_path):
    d = new_set(tmp_path)
    with ShardWriter(d, "j") as w:
        with pytest.raises(StoreError, match="attr 'meta'"):
            w.add("v", np.zeros(3), {"meta": {"a": 1}})
        w.add("w", np.zeros(3), {})
    assert FeatureStore(tmp_path).open_set("rgb").ids() == ["w"]


def test_large_attr_arrays_are_stored(tmp_path):
    # beyond HDF5's 64 KiB compact-attribute limit (e.g. frame indices of a long video)
    d = new_set(tmp_path)
    big = np.arange(20_000, dtype=np.int64)
    with ShardWriter(d, "j") as w:
        w.add("v", np.zeros(3), {"frame_indices": big})
    np.testing.assert_array_equal(FeatureSet(d).attrs("v")["frame_indices"], big)


def test_float16_overflow_refused(tmp_path):
    d = new_set(tmp_path)
    with ShardWriter(d, "j", float16=True) as w, pytest.raises(StoreError, match="float16"):
        w.add("v", np.array([1e6], dtype=np.float32), {})


# --------------------------------------------------------------------------- shards


def test_rotation_by_max_videos(tmp_path):
    rng = np.random.default_rng(1)
    d = new_set(tmp_path)
    videos = {f"v{i}": feats(rng) for i in range(7)}
    shards = write(d, "j", videos, max_videos=3)
    assert [p.name for p in shards] == ["part-j-0.h5", "part-j-1.h5", "part-j-2.h5"]
    assert leftovers(d) == []
    fs = FeatureSet(d)
    assert fs.ids() == sorted(videos)
    for vid, arr in videos.items():
        np.testing.assert_array_equal(fs.get(vid)[0], arr)


def test_rotation_by_max_mb(tmp_path):
    rng = np.random.default_rng(2)
    d = new_set(tmp_path)
    videos = {f"v{i}": feats(rng, 64, 64) for i in range(7)}  # 16 KiB each
    shards = write(d, "j", videos, max_videos=1000, max_mb=40 / 1024)
    assert len(shards) == 3  # 3 + 3 + 1
    assert leftovers(d) == []
    assert FeatureSet(d).ids() == sorted(videos)


def test_shard_numbers_never_reused(tmp_path):
    d = new_set(tmp_path)
    write(d, "j", {"a": np.zeros(2)})
    write(d, "j", {"b": np.zeros(2)})
    (d / "part-j-2.h5.partial").write_bytes(b"left by a dead job")
    write(d, "j", {"c": np.zeros(2)})
    assert sorted(p.name for p in d.glob("*.h5")) == ["part-j-0.h5", "part-j-1.h5", "part-j-3.h5"]


def test_exception_inside_with_keeps_completed_videos(tmp_path):
    d = new_set(tmp_path)
    with pytest.raises(RuntimeError), ShardWriter(d, "j", max_videos=10) as w:
        w.add("a", np.ones(3), {})
        w.add("b", np.ones(3), {})
        raise RuntimeError("worker blew up")
    assert FeatureSet(d).ids() == ["a", "b"]
    assert leftovers(d) == []
    w.close()  # idempotent


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from vidfeat.store import ShardWriter
    w = ShardWriter(sys.argv[1], "victim", max_videos=2, compression=None)
    rng = np.random.default_rng(5)
    for i in range(3):
        w.add(f"v{i}", rng.standard_normal((4, 8)).astype(np.float32), {"i": i})
    print("ready", flush=True)
    sys.stdin.readline()
    """
)


def test_killed_writer_leaves_completed_shards_and_a_stale_partial(tmp_path):
    d = new_set(tmp_path)
    rng = np.random.default_rng(5)
    expected = [rng.standard_normal((4, 8)).astype(np.float32) for _ in range(3)]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(d)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        partial = d / "part-victim-1.h5.partial"
        assert partial.exists() and (d / "part-victim-0.h5").exists()

        # live writer: its partial is reported as such and never removed
        assert partial_is_live(partial)
        rep = verify_store(tmp_path)
        assert rep.ok and any("live job" in n for n in rep.notes), format_verify(rep)
        assert cleanup_stale_partials(d) == []
        assert partial.exists()
        fs = FeatureSet(d)
        assert fs.ids() == ["v0", "v1"]  # the partial is invisible to readers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    assert partial.exists() and not partial_is_live(partial)
    rep = verify_store(tmp_path)
    assert rep.ok  # a stale partial is a warning, not a broken store
    assert any("stale partial part-victim-1.h5.partial" in w for w in rep.warnings)
    assert rep.sets["rgb"]["stale_partials"] == 1
    assert cleanup_stale_partials(d) == [partial]
    assert leftovers(d) == []
    fs = FeatureSet(d)
    for i in range(2):
        arr, attrs = fs.get(f"v{i}")
        np.testing.assert_array_equal(arr, expected[i])
        assert attrs["i"] == i
    # the next writer with the same job name continues numbering past the completed shard
    assert write(d, "victim", {"v2": expected[2]})[0].name == "part-victim-1.h5"


def test_cleanup_removes_lock_without_partial_but_not_a_held_lock(tmp_path):
    import fcntl

    d = new_set(tmp_path)
    lone = d / "part-x-0.h5.partial.lock"
    lone.write_text("")
    held = d / "part-y-0.h5.partial.lock"
    held_partial = d / "part-y-0.h5.partial"
    held_partial.write_bytes(b"")
    fd = os.open(held, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert cleanup_stale_partials(d) == []
        assert not lone.exists() and held.exists() and held_partial.exists()
    finally:
        os.close(fd)
    assert cleanup_stale_partials(d) == [held_partial]
    assert not held.exists()


# --------------------------------------------------------------------------- ensure_set


def test_ensure_set_refuses_a_different_config_naming_keys(tmp_path):
    store = FeatureStore(tmp_path)
    cfg = {**CONFIG, "T": 25, "run_config": {"lr": 0.1, "epochs": 3}, "torch_version": "2.1"}
    assert store.ensure_set("tvl1-fields", cfg) == cfg
    assert store.sets() == ["tvl1-fields"]
    assert store.ensure_set("tvl1-fields", dict(cfg)) == cfg  # same config: fine

    other = {**cfg, "T": 7, "N": 5, "run_config": {"lr": 0.01, "epochs": 3}}
    with pytest.raises(ConfigError) as ei:
        store.ensure_set("tvl1-fields", other)
    msg = ei.value.message
    assert "set 'tvl1-fields' was written with" in msg
    assert "T=25" in msg and "T=7" in msg and "N=3" in msg and "N=5" in msg
    assert "run_config.lr=0.1" in msg and "run_config.lr=0.01" in msg
    assert "epochs" not in msg
    assert "use --name" in msg

    with pytest.warns(StoreWarning, match="torch_version"):
        store.ensure_set("tvl1-fields", {**cfg, "torch_version": "2.2"})
    # provenance never refuses: the same weights from another path, another training record
    store.ensure_set(
        "tvl1-fields", {**cfg, "checkpoint_path": "/elsewhere/best.pt", "run_info": {"lr": 1}}
    )
    # the stored config is unchanged by a refused or warned run
    assert json.loads((store.set_dir("tvl1-fields") / "set.json").read_text()) == cfg


@pytest.mark.parametrize("first,second", [("float16", None), (None, "float16")])
def test_float16_and_float32_sets_never_mix_either_way(tmp_path, first, second):
    # what runner.storage_config produces: the key only for --float16 runs
    def cfg(storage: str | None) -> dict:
        return {**CONFIG, **({"storage_dtype": storage} if storage else {})}

    store = FeatureStore(tmp_path)
    store.ensure_set("rgb", cfg(first))
    with pytest.raises(ConfigError) as ei:
        store.ensure_set("rgb", cfg(second))
    msg = ei.value.message
    assert 'storage_dtype="float16"' in msg and 'storage_dtype="native"' in msg, msg
    store.ensure_set("rgb", cfg(first))  # the same storage again is fine
    # "native" written explicitly equals the key's absence
    store.ensure_set("other", {**CONFIG, "storage_dtype": "native"})
    store.ensure_set("other", CONFIG)


def test_float16_then_float32_extraction_is_refused_both_ways(tiny_synth, tmp_path):
    from vidfeat.extract import RunOptions, run_extraction
    from vidfeat.extract.fields import FlowFieldsExtractor
    from vidfeat.flow import make_method
    from vidfeat.videolist import load_list

    videos = load_list(tiny_synth / "train.csv", video_root=tiny_synth)
    ex = FlowFieldsExtractor(
        make_method("farneback"), segments=2, frames=1, short_side=16, bound=20.0
    )
    for first in (True, False):
        root = tmp_path / f"store-{first}"
        opts = RunOptions(limit=1, progress=False, float16=first)
        assert run_extraction(videos, ex, root, "f", opts, echo=lambda *_: None).done == 1
        again = RunOptions(limit=1, progress=False, float16=not first)
        with pytest.raises(ConfigError, match="storage_dtype"):
            run_extraction(videos, ex, root, "f", again, echo=lambda *_: None)


def test_config_keys_only_in_the_set_refuse_too(tmp_path):
    store = FeatureStore(tmp_path)
    store.ensure_set("rgb", {**CONFIG, "short_side": 128})
    with pytest.raises(ConfigError, match="short_side=128"):
        store.ensure_set("rgb", CONFIG)  # the run does not say: it is not the same set
    # provenance recorded only by the set still never refuses
    store.ensure_set("prov", {**CONFIG, "checkpoint_path": "/a/best.pt", "train_info": {"x": 1}})
    store.ensure_set("prov", CONFIG)
    store.ensure_set("ver", {**CONFIG, "torch_version": "2.1"})
    with pytest.warns(StoreWarning, match="torch_version"):
        store.ensure_set("ver", CONFIG)


def test_classes_compared_only_when_both_sides_record_them(tmp_path):
    store = FeatureStore(tmp_path)
    store.ensure_set("rgb", {**CONFIG, "classes": ["a", "b"]})
    store.ensure_set("rgb", CONFIG)  # a later run over an unlabelled list
    store.ensure_set("rgb", {**CONFIG, "classes": ["a", "b"]})
    with pytest.raises(ConfigError, match="classes"):
        store.ensure_set("rgb", {**CONFIG, "classes": ["a", "c"]})
    store.ensure_set("bare", CONFIG)
    store.ensure_set("bare", {**CONFIG, "classes": ["a"]})


def test_open_set_missing_lists_sets_and_bad_names(tmp_path):
    store = FeatureStore(tmp_path)
    store.ensure_set("rgb", CONFIG)
    store.ensure_set("audio", CONFIG)
    with pytest.raises(StoreError, match=r"sets present: audio, rgb"):
        store.open_set("flow")
    for bad in ["", "..", "a/b", ".hidden"]:
        with pytest.raises(ConfigError, match="invalid set name"):
            store.ensure_set(bad, CONFIG)


def _ensure_many(root: str, k: int, names: list[str], barrier, queue) -> None:
    store = FeatureStore(root)
    barrier.wait()
    out = []
    for n in names:
        cfg = {**CONFIG, "T": k} if n.startswith("diff") else CONFIG
        try:
            store.ensure_set(n, cfg)
            out.append((n, "ok"))
        except ConfigError:
            out.append((n, "refused"))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            out.append((n, f"{type(exc).__name__}: {exc}"))
    queue.put(out)


def test_concurrent_ensure_set(tmp_path):
    ctx = get_context("fork")
    procs_n = 3
    names = [f"same{i}" for i in range(15)] + [f"diff{i}" for i in range(15)]
    barrier, queue = ctx.Barrier(procs_n), ctx.Queue()
    procs = [
        ctx.Process(target=_ensure_many, args=(str(tmp_path), k, names, barrier, queue))
        for k in range(procs_n)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    for n in names:
        outcomes = [dict(r)[n] for r in results]
        if n.startswith("same"):
            assert outcomes == ["ok"] * procs_n, (n, outcomes)
        else:  # exactly one config wins; the others are refused, nobody crashes
            assert sorted(outcomes) == ["ok"] + ["refused"] * (procs_n - 1), (n, outcomes)
    assert len(FeatureStore(tmp_path).sets()) == len(names)
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*.tmp-*"))


# --------------------------------------------------------------------------- index cache


def test_index_cache_reused_and_rebuilt_on_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    d = new_set(tmp_path)
    write(d, "a", {"a0": feats(rng), "a1": feats(rng)})
    assert FeatureSet(d).ids() == ["a0", "a1"]
    assert (d / INDEX).exists()

    scans: list[str] = []
    real_scan = store_mod._scan_shard

    def counting(path):
        scans.append(Path(path).name)
        return real_scan(path)

    monkeypatch.setattr(store_mod, "_scan_shard", counting)
    assert FeatureSet(d).ids() == ["a0", "a1"]
    assert scans == []  # nothing changed: served from the cache

    write(d, "b", {"b0": feats(rng)})
    assert FeatureSet(d).ids() == ["a0", "a1", "b0"]
    assert scans == ["part-b-0.h5"]  # only the new shard is scanned

    scans.clear()
    shard = d / "part-a-0.h5"
    st = shard.stat()
    with h5py.File(shard, "a") as f:
        f.create_group("a9").create_dataset("features", data=feats(rng))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert FeatureSet(d).ids() == ["a0", "a1", "a9", "b0"]
    assert scans == ["part-a-0.h5"]

    (d / INDEX).write_text("{ torn")
    assert FeatureSet(d).ids() == ["a0", "a1", "a9", "b0"]
    assert cache_meta(load_cache(d))["format"] == store_mod.INDEX_FORMAT

    shard.unlink()
    assert FeatureSet(d).ids() == ["b0"]


def test_raw_reads_check_the_shard_and_the_cached_layouts(tmp_path):
    rng = np.random.default_rng(5)
    d = new_set(tmp_path)
    a0, a1 = feats(rng), feats(rng)
    write(d, "a", {"a0": a0, "a1": a1})
    FeatureSet(d)  # writes the index
    cache = load_cache(d)
    shard = d / "part-a-0.h5"
    rows = cache_rows(cache)
    assert set(rows) == {"a0", "a1"} and (cache["offset"] >= 0).all()
    # the cache is untrusted: a malformed one is ignored (rebuilt from the shards), and an
    # offset pointing past the end of the file is an error, never a short array
    bad = {**cache, "offset": cache["offset"].copy()}
    bad["offset"][rows["a0"]] = -7
    save_cache(d, bad)
    fs = FeatureSet(d)
    np.testing.assert_array_equal(fs.features("a0"), a0)
    np.testing.assert_array_equal(fs.features("a1"), a1)
    assert (load_cache(d)["offset"] >= 0).all()  # rebuilt
    huge = {**cache, "layout": cache["layout"].copy()}
    huge["lay_ndim"] = np.append(cache["lay_ndim"], np.int16(1))
    huge["lay_dims"] = np.append(cache["lay_dims"], np.int64(10**8))
    huge["lay_dtype"] = np.append(cache["lay_dtype"], cache["lay_dtype"][0])
    huge["layout"][rows["a1"]] = len(cache["lay_ndim"])
    save_cache(d, huge)
    fs = FeatureSet(d)
    np.testing.assert_array_equal(fs.features("a0"), a0)
    with pytest.raises(StoreError, match="shorter than its index says"):
        fs.features("a1")
    (d / INDEX).unlink()
    fs, fresh = FeatureSet(d), FeatureSet(d)
    np.testing.assert_array_equal(fs.features("a1"), a1)
    # a shard replaced behind a reader: one that has it open keeps reading its snapshot (as
    # through h5py); one that opens it now refuses rather than read at the old offsets
    tmp = d / "replacement.tmp"
    with h5py.File(tmp, "w") as f:
        for v in ("zz", "a1"):
            f.create_group(v).create_dataset("features", data=feats(rng) + 100)
    os.replace(tmp, shard)
    np.testing.assert_array_equal(fs.features("a0"), a0)
    with pytest.raises(StoreError, match="replaced since the set was opened"):
        fresh.features("a0")
    fresh.refresh()
    assert fresh.ids() == ["a1", "zz"] and fresh.features("a1").min() > 90


def test_reader_works_when_cache_cannot_be_written(tmp_path, monkeypatch):
    d = new_set(tmp_path)
    write(d, "a", {"x": np.ones(3)})

    def read_only(*_a, **_k):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(setindex_mod.SetIndex, "save", read_only)
    fs = FeatureSet(d)
    np.testing.assert_array_equal(fs.get("x")[0], np.ones(3))
    assert not (d / INDEX).exists()


# --------------------------------------------------------------------------- duplicates


def test_duplicates_resolved_by_written_at_then_shard_name(tmp_path):
    d = new_set(tmp_path)
    one, two = np.full((4, 3), 1.0, np.float32), np.full((4, 3), 2.0, np.float32)
    with ShardWriter(d, "a") as w:
        w.add("x", one, {"written_at": 200.0})  # the newest copy, in the "smaller" shard
        w.add("y", one, {"written_at": 100.0})
    with ShardWriter(d, "b") as w:
        w.add("x", two, {"written_at": 100.0})
        w.add("y", two, {"written_at": 100.0})  # tie: the larger shard name wins
    for _ in range(2):  # fresh index, then the cached one
        fs = FeatureSet(d)
        assert fs.ids() == ["x", "y"] and len(fs) == 2
        assert fs.get("x")[0][0, 0] == 1.0 and fs.shard_of("x").name == "part-a-0.h5"
        assert fs.get("y")[0][0, 0] == 2.0 and fs.shard_of("y").name == "part-b-0.h5"
        assert {k: [p.name for p in v] for k, v in fs.duplicates().items()} == {
            "x": ["part-a-0.h5", "part-b-0.h5"],
            "y": ["part-a-0.h5", "part-b-0.h5"],
        }
    rep = verify_store(tmp_path)
    assert rep.ok and rep.sets["rgb"]["duplicates"] == 2
    assert any("'x' in part-a-0.h5, part-b-0.h5" in w for w in rep.warnings)


# --------------------------------------------------------------------------- multi-process


class _Items:
    def __init__(self, fs: FeatureSet) -> None:
        self.fs = fs
        self.ids = fs.ids()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        arr, attrs = self.fs.get(self.ids[i])
        # HDF5 ids of the handles used here: a worker must not reuse the parent's
        handles = {h.id.id for h in self.fs._handles.values()}
        return self.ids[i], arr, handles, os.getpid()


def test_dataloader_fork_workers_read_the_same_arrays(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    rng = np.random.default_rng(4)
    d = new_set(tmp_path)
    videos = {f"v{i:02d}": feats(rng) for i in range(12)}
    with ShardWriter(d, "j", max_videos=4) as w:
        for k, (vid, arr) in enumerate(videos.items()):
            w.add(vid, arr, {"k": k})
    fs = FeatureSet(d, max_open=2)
    direct = {vid: fs.get(vid)[0] for vid in fs.ids()}  # handles now open in the parent
    parent_handles = {h.id.id for h in fs._handles.values()}
    assert len(parent_handles) == 2
    loader = DataLoader(
        _Items(fs),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="fork",
        collate_fn=lambda x: x,
    )
    seen, pids = {}, set()
    for vid, arr, handles, pid in loader:
        seen[vid] = arr
        pids.add(pid)
        assert handles and not handles & parent_handles
    assert os.getpid() not in pids and len(pids) == 2
    assert sorted(seen) == sorted(videos)
    for vid in videos:
        np.testing.assert_array_equal(seen[vid], direct[vid])
        np.testing.assert_array_equal(seen[vid], videos[vid])
    np.testing.assert_array_equal(fs.get("v00")[0], videos["v00"])  # parent handles still fine
    assert torch.utils.data.get_worker_info() is None


# --------------------------------------------------------------------------- verify


def test_verify_detects_bad_data_and_missing_ids(tmp_path):
    d = new_set(tmp_path, config={**CONFIG, "feature_shape": [4, -1], "dtype": "float32"})
    good = np.zeros((4, 8), np.float32)
    nan = good.copy()
    nan[1, 2] = np.nan
    with ShardWriter(d, "j", compression=None) as w:
        w.add("good", good, {})
        w.add("nan", nan, {})
        w.add("shape", np.zeros((5, 8), np.float32), {})
        w.add("dtype", np.zeros((4, 8), np.float64), {})
        w.add("inf-score", good, {}, extra={"scores": np.array([np.inf, 0.0])})
    (d / "part-junk-0.h5").write_bytes(b"\x89HDF garbage, not a shard" * 20)

    with pytest.warns(StoreWarning, match="part-junk-0.h5 cannot be opened"):
        fs = FeatureSet(d)
    np.testing.assert_array_equal(fs.get("good")[0], good)  # one bad shard hides nothing else

    expect = {"good", "nan", "shape", "dtype", "inf-score", "missing-1"}
    rep = verify_store(tmp_path, expect_ids=expect)
    text = format_verify(rep)
    assert not rep.ok and text.splitlines()[-1].startswith("FAILED")
    joined = "\n".join(rep.problems)
    assert "'nan'" in joined and "1 NaN" in joined
    assert "'inf-score'" in joined and "'scores' holds 1 Inf" in joined
    assert "'shape'" in joined and "shape [5, 8]" in joined
    assert "'dtype'" in joined and "float64" in joined
    assert "part-junk-0.h5 cannot be opened" in joined
    assert "1 expected id(s) missing: 'missing-1'" in joined
    assert not any("'good'" in p for p in rep.problems)
    assert rep.sets["rgb"]["bad_shards"] == 1

    rep = verify_store(tmp_path, expect_ids={"good"})
    assert any("not in the expected list" in p for p in rep.problems)


@pytest.mark.parametrize("storage_dtype", [None, "float16"])
def test_verify_accepts_float16_storage(tmp_path, storage_dtype):
    cfg = {**CONFIG, "dtype": "float32"}
    if storage_dtype:
        cfg["storage_dtype"] = storage_dtype
    d = new_set(tmp_path, config=cfg)
    with ShardWriter(d, "j", float16=True) as w:
        w.add("v", np.ones((4, 8), np.float32), {})
    rep = verify_store(tmp_path)
    assert rep.ok, format_verify(rep)
    assert format_verify(rep).splitlines()[-1] == "OK: no problems found"


# --------------------------------------------------------------------------- failures + info


def test_failure_log_tolerates_a_torn_last_line(tmp_path):
    d = new_set(tmp_path)
    log = FailureLog(d, "j")
    log.add("a", "/v/a.mp4", "NotAVideoError", "a.mp4: not a video")
    log.add("b", "/v/b.mp4", "TruncatedVideoError", "multi\nline message")
    with open(log.path, "ab") as fh:
        fh.write(b'{"video_id": "c", "pa')  # killed mid-write
    assert [r["video_id"] for r in read_failures(d)] == ["a", "b"]
    assert read_failures(d)[1]["message"] == "multi\nline message"
    log.add("d", "/v/d.mp4", "DecodeError", "boom")  # the resumed job appends after the tear
    recs = read_failures(d)
    assert [r["video_id"] for r in recs] == ["a", "b", "d"]
    assert recs[0] == {
        "video_id": "a",
        "path": "/v/a.mp4",
        "error_class": "NotAVideoError",
        "message": "a.mp4: not a video",
        "time": recs[0]["time"],
        "job": "j",
    }
    assert [r["video_id"] for r in FeatureSet(d).failures()] == ["a", "b", "d"]


def test_store_info_counts(tmp_path):
    rng = np.random.default_rng(6)
    d = new_set(tmp_path)
    write(d, "j", {f"v{i}": feats(rng) for i in range(3)}, max_videos=2)
    log = FailureLog(d, "j")
    log.add("v0", "/v/v0.mp4", "DecodeError", "failed, then retried")
    log.add("bad", "/v/bad.mp4", "DecodeError", "broken")
    log.add("bad", "/v/bad.mp4", "DecodeError", "broken again")
    (d / "part-dead-0.h5.partial").write_bytes(b"")
    new_set(tmp_path, "audio", {**CONFIG, "modality": "audio", "torch_version": "2.14"})

    rows = {r["name"]: r for r in store_info(tmp_path)}
    assert sorted(rows) == ["audio", "rgb"]
    rgb = rows["rgb"]
    assert rgb["videos"] == 3 and rgb["shards"] == 2
    assert rgb["failures"] == 1  # 'bad' once; 'v0' was completed later
    assert rgb["partials"] == 1
    assert rgb["bytes"] >= sum(p.stat().st_size for p in d.glob("*.h5")) > 0
    assert rgb["config"] == CONFIG
    assert rows["audio"]["videos"] == 0 and rows["audio"]["shards"] == 0

    text = format_info(list(rows.values()))
    assert "rgb: 3 videos, 2 shards" in text and "1 failed" in text and "1 partial" in text
    assert "modality: audio" in text and "versions: torch 2.14" in text
    assert "no feature sets" in format_info(store_info(tmp_path / "empty"))

    rep = verify_store(tmp_path)
    assert rep.sets["rgb"]["failed"] == 1
    assert any("failed once and were extracted later: 'v0'" in n for n in rep.notes)


def test_shards_without_set_json_and_empty_store(tmp_path):
    rep = verify_store(tmp_path / "nowhere")
    assert not rep.ok and "no store at" in rep.problems[0]
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "part-j-0.h5").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = verify_store(tmp_path)
    assert rep.ok and any("no set.json" in w for w in rep.warnings)
    with pytest.raises(StoreError, match="no feature set 'orphan'"):
        FeatureStore(tmp_path).open_set("orphan")
