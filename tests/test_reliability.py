"""Reliability: kill -9 at random moments, concurrent jobs on one store, bad inputs, untrusted
files. Runs the real command line in subprocesses. Figures are printed (pytest -s) and
summarised in bench/RESULTS.md."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import moving_frames
from vidfeat.store import FeatureStore, verify_store
from vidfeat.synth import SynthConfig, generate, write_mp4

pytestmark = pytest.mark.reliability

VIDFEAT = [sys.executable, "-c", "from cli import main; main()"]
FAST = ["--method", "farneback", "-T", "2", "-N", "1", "--short-side", "32", "--quiet"]


def vidfeat(
    *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VIDFEAT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).parents[1],
    )


@pytest.fixture(scope="module")
def forty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 tiny synthetic videos and an absolute-path list of them."""
    root = tmp_path_factory.mktemp("forty")
    generate(
        root,
        SynthConfig(
            classes=4, per_class=10, seconds=1.0, fps=10, size=32, seed=5, val_fraction=0.1
        ),
        progress=False,
    )
    rows = []
    for name in ("train.csv", "val.csv"):
        for line in (root / name).read_text().splitlines()[1:]:
            path, label, vid, _ = line.split(",")
            rows.append(f"{root / path},{label},{vid}")
    (root / "all.csv").write_text("path,label,video_id\n" + "\n".join(rows) + "\n")
    return root


def snapshot(store: Path, name: str = "farneback-fields") -> dict[str, np.ndarray]:
    fs = FeatureStore(store).open_set(name)
    return {v: fs.get(v)[0] for v in fs.ids()}


def test_kill_9_at_random_moments_then_resume(forty: Path, tmp_path: Path) -> None:
    lst = forty / "all.csv"
    clean = tmp_path / "clean"
    t0 = time.perf_counter()
    assert (
        vidfeat("extract", "flow", "--videos", str(lst), "--store", str(clean), *FAST).returncode
        == 0
    )
    duration = time.perf_counter() - t0  # kill times are drawn inside a run's span
    want = snapshot(clean)
    assert len(want) == 40
    rng = random.Random(0)
    trials, kills = 12, 0
    for trial in range(trials):
        store = tmp_path / f"s{trial}"
        env = {}
        if trial % 3 == 2:  # a kill exactly around a shard rename
            env["VIDFEAT_CRASH_AT"] = f"{'before' if trial % 2 else 'after'}-rename:{1 + trial % 4}"
        proc = subprocess.Popen(
            [
                *VIDFEAT,
                "extract",
                "flow",
                "--videos",
                str(lst),
                "--store",
                str(store),
                "--shard-videos",
                "3",
                *FAST,
            ],
            env={**os.environ, **env},
            cwd=Path(__file__).parents[1],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not env:
            time.sleep(rng.uniform(0.3, 0.9) * duration)
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=120)
        kills += rc == -signal.SIGKILL
        rep = verify_store(store) if store.exists() else None
        assert rep is None or rep.ok, rep.problems
        for _ in range(3):  # rerun until complete (a rerun never needs more than one pass)
            res = vidfeat("extract", "flow", "--videos", str(lst), "--store", str(store), *FAST)
            assert res.returncode == 0, res.stdout + res.stderr
            if "0 done" in res.stdout:
                break
        got = snapshot(store)
        assert set(got) == set(want)
        for vid in want:
            assert np.array_equal(got[vid], want[vid]), vid
        assert verify_store(store).ok
        assert not list((store / "farneback-fields").glob("*.partial"))
    print(
        f"\ncrash safety: {trials} trials, {kills} killed mid-run with SIGKILL, all resumed to "
        "the clean store"
    )
    assert kills >= 10


def test_concurrent_shards_and_a_duplicate_job(forty: Path, tmp_path: Path) -> None:
    lst, store = forty / "all.csv", tmp_path / "store"
    args = [
        "extract",
        "flow",
        "--videos",
        str(lst),
        "--store",
        str(store),
        "--shard-videos",
        "2",
        *FAST,
    ]
    procs = [
        subprocess.Popen(
            [*VIDFEAT, *args, "--shard", f"{i}/4"],
            cwd=Path(__file__).parents[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    procs.append(
        subprocess.Popen(
            [*VIDFEAT, *args, "--shard", "1/4"],
            cwd=Path(__file__).parents[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    fs = FeatureStore(store).open_set("farneback-fields")
    assert len(fs) == 40  # no id lost
    rep = verify_store(store, expect_ids=set(fs.ids()))
    assert rep.ok, rep.problems
    dups = fs.duplicates()
    # the duplicate job raced shard 1/4: whatever it wrote twice is reported, and read once
    if dups:
        import h5py

        assert any("stored in several shards" in w for w in rep.warnings)
        for vid, shards in dups.items():
            stamps = {}
            for sh in shards:
                with h5py.File(sh, "r", locking=False) as f:
                    stamps[sh] = (float(f[vid].attrs["written_at"]), sh.name)
            assert fs.shard_of(vid) == max(stamps, key=stamps.get)  # newest copy wins
    print(
        f"\nconcurrency: 5 jobs (4 shards + 1 duplicate), 40 ids, {len(dups)} duplicated ids "
        "reported and read once"
    )
    res = vidfeat("store", "verify", str(store), "--videos", str(lst))
    assert res.returncode == 0, res.stdout


def test_bad_inputs_among_good_videos(forty: Path, tmp_path: Path) -> None:
    good = sorted((forty / "videos").glob("*.mp4"))[:4]
    bad = tmp_path / "bad"
    bad.mkdir()
    src = good[0].read_bytes()
    (bad / "zero.mp4").write_bytes(b"")
    for frac in (10, 50, 90):
        (bad / f"cut{frac}.mp4").write_bytes(src[: len(src) * frac // 100])
    (bad / "random.mp4").write_bytes(np.random.default_rng(1).bytes(30_000))
    (bad / "text.mp4").write_text("hello\n" * 100)
    import av

    with av.open(str(bad / "audio_only.mp4"), "w") as c:  # an audio-only file
        s = c.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for pkt in [*s.encode(frame), *s.encode(None)]:
            c.mux(pkt)
    write_mp4(bad / "one_frame.mp4", moving_frames(1, 32, 32), 10, None)
    weird = bad / "dir with spaces ünï"
    weird.mkdir()
    shutil.copy(good[1], weird / "vidéo ok.mp4")
    (bad / "adir.mp4").mkdir()
    os.symlink(bad / "loop_b.mp4", bad / "loop_a.mp4")
    os.symlink(bad / "loop_a.mp4", bad / "loop_b.mp4")
    write_mp4(bad / "big4k.mp4", np.zeros((2, 2160, 3840, 3), np.uint8), 10, None)
    entries = [(str(p), p.stem) for p in good]
    entries += [
        (str(bad / f), Path(f).stem.replace(" ", "_"))
        for f in (
            "zero.mp4",
            "cut10.mp4",
            "cut50.mp4",
            "cut90.mp4",
            "random.mp4",
            "text.mp4",
            "audio_only.mp4",
            "adir.mp4",
            "loop_a.mp4",
            "missing.mp4",
        )
    ]
    entries += [
        (str(bad / "one_frame.mp4"), "one_frame"),
        (str(weird / "vidéo ok.mp4"), "spaces"),
        (str(bad / "big4k.mp4"), "big4k"),
    ]
    lst = tmp_path / "list.csv"
    lst.write_text("path,video_id\n" + "".join(f'"{p}",{v}\n' for p, v in entries))
    t0 = time.perf_counter()
    res = vidfeat("extract", "flow", "--videos", str(lst), "--store", str(tmp_path / "s"), *FAST)
    took = time.perf_counter() - t0
    assert res.returncode == 1, res.stdout + res.stderr
    fs = FeatureStore(tmp_path / "s").open_set("farneback-fields")
    fails = {f["video_id"]: f for f in fs.failures()}
    expect_fail = {
        "zero",
        "cut10",
        "cut50",
        "cut90",
        "random",
        "text",
        "audio_only",
        "adir",
        "loop_a",
        "missing",
    }
    assert set(fails) == expect_fail, fails
    assert set(fs.ids()) == {p.stem for p in good} | {"one_frame", "spaces", "big4k"}
    for f in fails.values():
        assert f["message"] and f["error_class"].endswith("Error"), f
    assert fails["audio_only"]["error_class"] == "NoVideoStreamError"
    assert fails["missing"]["error_class"] == "MissingFileError"
    assert fails["zero"]["error_class"] == "EmptyFileError"
    assert fails["adir"]["error_class"] == "NotAFileError"
    print(f"\nbad inputs: {len(expect_fail)} caught with a cause, {len(fs)} extracted, {took:.1f}s")


def test_untrusted_checkpoints_and_ids(tmp_path: Path) -> None:
    from vidfeat.errors import ConfigError, ListError, StoreError
    from vidfeat.store import check_video_id
    from vidfeat.videolist import load_list

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": Evil()}, run / "best.pt")
    (run / "config.yaml").write_text(
        "modality: rgb\ntrain: x.csv\nval: null\nbackbone: resnet10t\n"
    )
    (run / "classes.txt").write_text("a\nb\n")
    from vidfeat.train import load_trained

    with pytest.raises(ConfigError, match="refused"):
        load_trained(run)
    assert not (tmp_path / "pwned").exists()
    for bad in ("../x", "a/b", "..", "."):
        with pytest.raises(StoreError):
            check_video_id(bad)
    (tmp_path / "l.csv").write_text("video_id,path\n../../etc,a.mp4\n")
    with pytest.raises(ListError):
        load_list(tmp_path / "l.csv")
