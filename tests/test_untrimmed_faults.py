"""Faults while writing big outputs (issue 21, item 7): a file-size limit (``ulimit -f``) or a
full disk mid-extraction of untrimmed rows stops the run with a message naming the store and
the cause; completed shards stay readable, nothing is half-written, and a rerun resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import moving_frames, tone
from tests.test_untrimmed import _run
from vidfeat.store import FeatureStore
from vidfeat.synth import write_mp4

CHILD = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from vidfeat.cli import main
sys.argv = ["vidfeat", *sys.argv[2:]]
main()
"""


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short and a longer clip (40 and 400 frames), listed short first."""
    d = tmp_path_factory.mktemp("faults")
    write_mp4(d / "a.mp4", moving_frames(40, h=64, w=64, seed=1), 20, tone(2.0, 16000, 440.0),
              16000)  # fmt: skip
    write_mp4(d / "b.mp4", moving_frames(400, h=64, w=64, seed=2), 20, tone(20.0, 16000, 440.0),
              16000)  # fmt: skip
    (d / "list.csv").write_text("path,label\na.mp4,c0\nb.mp4,c1\n")
    return d


def _extract(two: Path, run: Path, store: Path, limit: int | None) -> subprocess.CompletedProcess:
    args = ["extract", "rgb", "--checkpoint", str(run), "--videos", str(two / "list.csv"),
            "--store", str(store), "--grid", "windows", "--window", "1", "--stride", "1",
            "--shard-videos", "1", "--workers", "0", "--timeout", "0", "-q"]  # fmt: skip
    if limit is None:
        return subprocess.run([sys.executable, "-m", "vidfeat", *args], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    return subprocess.run([sys.executable, "-c", CHILD, str(limit), *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_a_file_size_limit_stops_the_run_and_a_rerun_resumes(two: Path, tmp_path: Path) -> None:
    """ulimit -f of 1.5 MiB: the short video's shard (40 rows) fits, the long one's (400 rows
    x 512 floats, 0.8 MiB, plus HDF5's overhead) would not; the run names the store and the
    limit, exits non-zero without a traceback, keeps the completed shard; with the limit
    lifted the rerun extracts only the long video."""
    run = _run(tmp_path, "tsn")
    store = tmp_path / "store"
    r = _extract(two, run, store, int(1.5 * 2**20))
    out = r.stdout + r.stderr
    assert r.returncode not in (0, -25, 153), out  # not killed by SIGXFSZ either
    assert "file-size limit" in out and str(store / "rgb") in out, out
    assert "Traceback" not in out, out
    fs = FeatureStore(store).open_set("rgb")
    assert fs.ids() == ["a"] and fs.features("a").shape == (40, 512)
    assert not list((store / "rgb").glob("*.partial"))
    r = _extract(two, run, store, None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 done, 1 skipped" in r.stdout
    fs = FeatureStore(store).open_set("rgb")
    assert sorted(fs.ids()) == ["a", "b"] and fs.features("b").shape == (400, 512)


def test_a_full_disk_mid_video_keeps_what_was_done(
    two: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up while the long video's rows are being written (free space reported
    by statvfs drops): the run stops naming the store and the cause; the short video's shard
    is complete and readable, no row of the long one is kept; a rerun resumes."""
    from click.testing import CliRunner

    import vidfeat.store.rows as rows_mod
    from vidfeat.cli import main

    store = tmp_path / "store"
    real_statvfs = os.statvfs
    writes = {"n": 0}
    real_write = rows_mod.VideoSink.write

    def counting(self, name, start, a):
        if name == "features" and self.video_id == "b":
            writes["n"] += 1
        return real_write(self, name, start, a)

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 0

    def statvfs(path):
        st = real_statvfs(path)
        return Full(st) if writes["n"] >= 2 else st

    monkeypatch.setattr(rows_mod.VideoSink, "write", counting)
    monkeypatch.setattr(os, "statvfs", statvfs)
    args = ["extract", "flow", "--method", "farneback", "--short-side", "64", "--videos",
            str(two / "list.csv"), "--store", str(store), "--grid", "snippets", "--stride",
            "8", "--batch-size", "4", "--workers", "0", "--timeout", "0", "-q"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    text = " ".join(r.output.split())
    assert r.exit_code != 0 and "disk full" in text and "farneback-fields" in text, r.output
    assert writes["n"] >= 2
    monkeypatch.setattr(os, "statvfs", real_statvfs)
    fs = FeatureStore(store).open_set("farneback-fields")
    assert fs.ids() == ["a"]
    assert fs.features("a").shape[0] == 5 and np.asarray(fs.features("a")).dtype == np.uint8
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "1 done, 1 skipped" in r.output, r.output
    assert FeatureStore(store).open_set("farneback-fields").features("b").shape[0] == 50


READ_ONLY = """
import errno, os, sys
import h5py
store = os.path.realpath(sys.argv[1])

def inside(path):
    try:
        return os.path.realpath(os.fsdecode(path)).startswith(store)
    except (TypeError, ValueError):
        return False

def hook(event, args):
    if event == "open":
        path, mode, flags = (list(args) + [None, None])[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing and inside(path):
            raise OSError(errno.EROFS, "Read-only file system", path)
    elif event in ("os.rename", "os.replace", "os.remove", "os.mkdir") and inside(args[0]):
        raise OSError(errno.EROFS, "Read-only file system", args[0])

real = h5py.File.__init__
def init(self, name, mode="r", *a, **k):
    if mode != "r" and inside(name):
        raise OSError(errno.EROFS, "Read-only file system", name)
    return real(self, name, mode, *a, **k)
h5py.File.__init__ = init
sys.addaudithook(hook)
from vidfeat.cli import main
sys.argv = ["vidfeat", *sys.argv[2:]]
main()
"""


def test_info_verify_and_export_work_on_a_read_only_store(two: Path, tmp_path: Path) -> None:
    """Every write into the store fails as on a read-only filesystem (EROFS; chmod does not
    bind root, so the child process refuses them itself): `store info`, `store verify` and
    `store export --layout actionformer` still do their work and exit 0."""
    run = _run(tmp_path, "tsn")
    store = tmp_path / "store"
    assert _extract(two, run, store, None).returncode == 0
    for p in store.rglob(".index.npz"):
        p.unlink()  # a fresh reader would want to write its cache
    for args in (["store", "info", str(store)], ["store", "verify", str(store)],
                 ["store", "export", str(store), "--set", "rgb", "--layout", "actionformer",
                  "--out", str(tmp_path / "out"), "-q"]):  # fmt: skip
        r = subprocess.run([sys.executable, "-c", READ_ONLY, str(store), *args],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, (args, r.stdout + r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
    assert np.load(tmp_path / "out" / "b.npy").shape == (400, 512)
    assert not list(store.rglob(".index.npz"))
