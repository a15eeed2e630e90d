"""Reliability: kill -9 at chosen moments, concurrent jobs on one store, bad inputs, load
(500 videos), untrusted files. Runs the real command line in subprocesses. Figures are printed
(pytest -s) and summarised in bench/RESULTS.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import moving_frames
from vidfeat.store import FeatureStore, verify_store
from vidfeat.synth import SynthConfig, generate, write_mp4

pytestmark = pytest.mark.reliability

VIDFEAT = [sys.executable, "-c", "from vidfeat.cli import main; main()"]
# the command line with a crash point armed: ``[*CRASHHOOK, "<point>:<n>:stop", "--", *args]``
CRASHHOOK = [sys.executable, str(Path(__file__).with_name("crashhook.py"))]
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


SUMMARY = re.compile(r"\b(\d+) done, (\d+) skipped, (\d+) failed\b")


def summary(stdout: str) -> tuple[int, int, int]:
    """(done, skipped, failed) from an extract command's summary line."""
    m = SUMMARY.search(stdout)
    assert m, stdout
    done, skipped, failed = (int(x) for x in m.groups())
    return done, skipped, failed


# Where each trial kills the run (40 videos, --shard-videos 3: 14 shards, the last of one
# video): a crash point of the shard writer where the process stops itself (armed by
# tests/crashhook.py), or "start" (killed as soon as it exists), and how many shards are
# complete at that moment.
CRASH_TRIALS = [
    ("start", 0),
    ("after-open:1", 0),  # first partial created, still empty
    ("after-add:1", 0),
    ("after-add:3", 0),  # a full partial, just before its rename
    ("after-add:4", 1),
    ("after-add:20", 6),
    ("after-add:40", 13),  # the last video, before the closing flush
    ("before-rename:1", 0),
    ("before-rename:7", 6),
    ("before-rename:14", 13),  # the closing flush
    ("after-rename:1", 1),
    ("after-rename:7", 7),
    ("after-rename:14", 14),  # everything durable, the process not yet done
]


def _stop_then_kill(proc: subprocess.Popen, deadline: float = 120.0) -> None:
    """Wait until ``proc`` SIGSTOPs itself at its crash point, then SIGKILL it from outside."""
    watchdog = threading.Timer(deadline, proc.kill)  # a run that never stops fails, not hangs
    watchdog.start()
    try:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
    finally:
        watchdog.cancel()
    assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP, (
        f"the run did not stop at its crash point (wait status {status})"
    )


def test_kill_9_at_chosen_moments_then_resume(forty: Path, tmp_path: Path) -> None:
    lst = forty / "all.csv"
    args = ["extract", "flow", "--videos", str(lst), *FAST]
    clean = tmp_path / "clean"
    t0 = time.perf_counter()
    assert vidfeat(*args, "--store", str(clean)).returncode == 0
    want = snapshot(clean)
    assert len(want) == 40
    kills = 0
    for trial, (point, shards_done) in enumerate(CRASH_TRIALS):
        store = tmp_path / f"s{trial}"
        set_dir = store / "farneback-fields"
        run = VIDFEAT if point == "start" else [*CRASHHOOK, f"{point}:stop", "--"]
        with open(tmp_path / f"s{trial}.log", "wb") as log:
            proc = subprocess.Popen(
                [*run, *args, "--store", str(store), "--shard-videos", "3"],
                cwd=Path(__file__).parents[1],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if point != "start":
            _stop_then_kill(proc)
            # the store as the kill finds it: the stop landed exactly where asked
            assert len(list(set_dir.glob("part-*.h5"))) == shards_done, point
            partials = list(set_dir.glob("part-*.h5.partial"))
            assert len(partials) == (0 if point.startswith("after-rename") else 1), point
            rep = verify_store(store)
            assert rep.ok, rep.problems
            assert len([n for n in rep.notes if "live job" in n]) == len(partials)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=60)
        assert rc == -signal.SIGKILL, (point, rc, (tmp_path / f"s{trial}.log").read_text())
        kills += 1
        rep = verify_store(store) if store.exists() else None
        assert rep is None or rep.ok, rep.problems
        # one rerun completes the store: exactly the videos of completed shards are skipped
        res = vidfeat(*args, "--store", str(store))
        assert res.returncode == 0, res.stdout + res.stderr
        kept = min(3 * shards_done, 40)
        assert summary(res.stdout) == (40 - kept, kept, 0), (point, res.stdout)
        got = snapshot(store)
        assert set(got) == set(want)
        for vid in want:
            assert np.array_equal(got[vid], want[vid]), (point, vid)
        rep = verify_store(store, expect_ids=set(want))
        assert rep.ok and not rep.warnings, (point, rep.problems, rep.warnings)
        assert not [p.name for p in set_dir.iterdir() if ".partial" in p.name], point
    took = time.perf_counter() - t0
    print(
        f"\ncrash safety: {len(CRASH_TRIALS)} trials, {kills} killed with an external SIGKILL at "
        f"their crash point, all resumed to the clean store in one rerun ({took:.1f}s)"
    )
    assert kills == len(CRASH_TRIALS) >= 12


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


# Runs the command line and, on exit, prints the peak RSS of the process (VmHWM: ru_maxrss
# would include the pytest process it was started from, which Linux carries over exec) and
# the largest ru_maxrss of its waited-for children (the workers that extract; each starts at
# most at this process's size, which the baseline run shares).
MEASURED = [
    sys.executable,
    "-c",
    "import atexit, re, resource, sys\n"
    "def peak():\n"
    "    with open('/proc/self/status') as f:\n"
    "        s = re.search(r'VmHWM:\\s+(\\d+)', f.read()).group(1)\n"
    "    c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "    sys.stderr.write(f'\\npeak-rss-kib {s} {c}\\n')\n"
    "atexit.register(peak)\n"
    "from vidfeat.cli import main\n"
    "main()",
]


def peak_rss_mib(res: subprocess.CompletedProcess) -> tuple[float, float]:
    """(process, largest child) peak RSS in MiB from a MEASURED run."""
    m = re.search(r"peak-rss-kib (\d+) (\d+)", res.stderr)
    assert m, res.stderr
    return int(m.group(1)) / 1024, int(m.group(2)) / 1024


def measured(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MEASURED, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )


# A 3840x2160 yuv420p picture is 12.4 MB. Decoding the 2-frame 4K clip holds a few such
# surfaces in FFmpeg (the reference, the frame being decoded, the pool's spare: ~37 MB); every
# frame leaves the decoder already scaled to --short-side (measured: +33 MiB). 64 MiB over the
# same run without the 4K clip leaves room for allocator slack, while full-size frames on our
# side would exceed it: the grid's 4 frames (T=2 x 2) are 100 MB as RGB, 33 MB as gray on top
# of the decoder's, and flow at full size is 66 MB a pair.
PEAK_4K_MIB = 64


def test_bad_inputs_among_good_videos(forty: Path, tmp_path: Path) -> None:
    import av
    from test_decode import patch_mp4

    good = sorted((forty / "videos").glob("*.mp4"))[:4]
    bad = tmp_path / "bad"
    bad.mkdir()
    src = good[0].read_bytes()
    (bad / "zero.mp4").write_bytes(b"")
    for frac in (10, 50, 90):
        (bad / f"cut{frac}.mp4").write_bytes(src[: len(src) * frac // 100])
    (bad / "random.mp4").write_bytes(np.random.default_rng(1).bytes(30_000))
    (bad / "text.mp4").write_text("hello\n" * 100)
    with av.open(str(bad / "audio_only.mp4"), "w") as c:  # an audio-only file
        s = c.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for pkt in [*s.encode(frame), *s.encode(None)]:
            c.mux(pkt)
    write_mp4(bad / "one_frame.mp4", moving_frames(1, 32, 32), 10, None)
    # broken headers, patched into a good file: a zero media timescale, zero frame durations
    # (every frame at one time), a duration claim of ~116 hours
    (bad / "zero_fps.mp4").write_bytes(patch_mp4(src, timescale=0))
    (bad / "zero_stts.mp4").write_bytes(patch_mp4(src, stts_delta=0))
    (bad / "long_claim.mp4").write_bytes(patch_mp4(src, duration=0xFFFFFFF0))
    weird = bad / "dir with spaces ünï"
    weird.mkdir()
    shutil.copy(good[1], weird / "vidéo ok.mp4")
    (bad / "adir.mp4").mkdir()
    os.symlink(bad / "loop_b.mp4", bad / "loop_a.mp4")
    os.symlink(bad / "loop_a.mp4", bad / "loop_b.mp4")
    write_mp4(bad / "big4k.mp4", np.zeros((2, 2160, 3840, 3), np.uint8), 10, None)
    failing = [
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
        "one_frame",
        "zero_fps",
        "zero_stts",
    ]
    entries = [(str(p), p.stem) for p in good]
    entries += [(str(bad / f"{v}.mp4"), v) for v in failing]
    entries += [
        (str(weird / "vidéo ok.mp4"), "spaces"),
        (str(bad / "long_claim.mp4"), "long_claim"),
        (str(bad / "big4k.mp4"), "big4k"),
    ]
    lst = tmp_path / "list.csv"
    lst.write_text("path,video_id\n" + "".join(f'"{p}",{v}\n' for p, v in entries))
    base = tmp_path / "base.csv"
    base.write_text("path,video_id\n" + "".join(f'"{p}",{p.stem}\n' for p in good))

    t0 = time.perf_counter()
    res = measured("extract", "flow", "--videos", str(lst), "--store", str(tmp_path / "s"), *FAST)
    took = time.perf_counter() - t0
    assert res.returncode == 1, res.stdout + res.stderr
    fs = FeatureStore(tmp_path / "s").open_set("farneback-fields")
    fails = {f["video_id"]: f for f in fs.failures()}
    assert set(fails) == set(failing), fails
    assert set(fs.ids()) == {p.stem for p in good} | {"spaces", "long_claim", "big4k"}
    for f in fails.values():
        assert f["message"] and f["error_class"].endswith("Error"), f
    cls = {v: f["error_class"] for v, f in fails.items()}
    msg = {v: f["message"] for v, f in fails.items()}
    assert cls["audio_only"] == "NoVideoStreamError"
    assert cls["missing"] == "MissingFileError"
    assert cls["zero"] == "EmptyFileError"
    assert cls["adir"] == "NotAFileError"
    assert cls["loop_a"] == "NotAFileError" and "symbolic links" in msg["loop_a"]
    assert cls["one_frame"] == "TooFewFramesError"
    assert "needs at least 2 frames for optical flow" in msg["one_frame"]
    assert cls["zero_fps"] == "NoFrameRateError" and "timescale is 0" in msg["zero_fps"]
    assert cls["zero_stts"] == "NoFrameRateError" and "timing table" in msg["zero_stts"]
    for v in ("one_frame", "zero_fps", "zero_stts"):
        assert "truncated" not in msg[v], msg[v]
    # the absurd duration claim changes nothing: the frames present are what counts
    arr, attrs = fs.get("long_claim")
    assert attrs["num_frames"] == 10 and attrs["duration"] == pytest.approx(1.0)
    assert np.array_equal(arr, fs.get(good[0].stem)[0])
    _, big = fs.get("big4k")
    assert (big["num_frames"], big["fps"]) == (2, 10.0)

    # memory: the same run without the bad files and the 4K clip is the baseline
    ref = measured("extract", "flow", "--videos", str(base), "--store", str(tmp_path / "r"), *FAST)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    (main_mib, worker_mib), (main_ref, worker_ref) = peak_rss_mib(res), peak_rss_mib(ref)
    peak, peak_ref = max(main_mib, worker_mib), max(main_ref, worker_ref)
    print(
        f"\nbad inputs: {len(failing)} caught with a cause, {len(fs)} extracted, {took:.1f}s; "
        f"peak RSS with the 4K clip: process {main_mib:.0f} MiB, worker {worker_mib:.0f} MiB; "
        f"without: {main_ref:.0f} / {worker_ref:.0f} MiB (+{peak - peak_ref:.0f} MiB, limit "
        f"+{PEAK_4K_MIB})"
    )
    assert peak - peak_ref < PEAK_4K_MIB


# Runs in its own process: three in-process extractions (20 videos to warm up, then the rest of
# the list, then a rerun that skips everything), counting this process's open fds and child
# processes after each, and the peak RSS (VmHWM) of this process and of every worker, sampled
# from /proc while the run goes (a high-water mark: sampling misses at most the last moments).
LOAD_SCRIPT = """
import json, os, re, sys, threading, time
import psutil
from vidfeat.extract.fields import FlowFieldsExtractor
from vidfeat.flow import make_method
from vidfeat.extract import RunOptions, run_extraction
from vidfeat.videolist import load_list

def hwm_mib(pid="self"):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmHWM:\\s+(\\d+)", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return 0.0

def main():
    lst, store, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    me = psutil.Process()
    videos = load_list(lst)
    ex = FlowFieldsExtractor(
        make_method("farneback"), segments=2, frames=1, short_side=32, bound=20.0
    )
    out = {"start": {"fds": len(os.listdir("/proc/self/fd"))}}
    for name, limit in (("warmup", 20), ("run", None), ("rerun", None)):
        peaks, stop = {}, threading.Event()

        def sample():
            while not stop.wait(0.05):
                for c in me.children(recursive=True):
                    peaks[c.pid] = max(peaks.get(c.pid, 0.0), hwm_mib(c.pid))

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        rep = run_extraction(
            videos, ex, store, "load",
            RunOptions(workers=workers, limit=limit, progress=False), echo=lambda *_: None,
        )
        seconds = time.perf_counter() - t0
        stop.set()
        watcher.join()
        out[name] = {
            "seconds": seconds, "done": rep.done, "skipped": rep.skipped, "failed": rep.failed,
            "fds": len(os.listdir("/proc/self/fd")), "children": len(me.children()),
            "rss_mib": hwm_mib(), "worker_rss_mib": max(peaks.values(), default=0.0),
            "workers_seen": len(peaks),
        }
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_load_500_videos_two_workers_bounded_memory_no_leaks(forty: Path, tmp_path: Path) -> None:
    """500 tiny videos (copies of the 40 synthetic clips under distinct names and ids)."""
    src = sorted((forty / "videos").glob("*.mp4"))
    d = tmp_path / "videos"
    d.mkdir()
    rows = ["path,label,video_id"]
    for i in range(500):
        shutil.copy(src[i % len(src)], d / f"v{i:03d}.mp4")
        rows.append(f"{d / f'v{i:03d}.mp4'},{src[i % len(src)].stem.rsplit('_', 1)[0]},v{i:03d}")
    lst = tmp_path / "list.csv"
    lst.write_text("\n".join(rows) + "\n")
    res = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(lst), str(tmp_path / "store"), "2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert res.returncode == 0, res.stderr
    fig = json.loads(res.stdout.strip().splitlines()[-1])
    warm, run, rerun = fig["warmup"], fig["run"], fig["rerun"]
    assert (warm["done"], run["done"], run["skipped"]) == (20, 480, 20)
    assert warm["failed"] == run["failed"] == 0 and (rerun["done"], rerun["skipped"]) == (0, 500)
    assert len(FeatureStore(tmp_path / "store").open_set("load")) == 500
    # no file handle or process outlives a run: 480 videos and a dozen shards later, the
    # same count as after the 20-video warm-up
    assert run["fds"] == warm["fds"] == rerun["fds"], fig
    assert run["children"] == warm["children"] == rerun["children"], fig
    # bounded memory: the high-water marks after 480 more videos stay within 16 MiB of the
    # warm-up's (a leak of 34 KiB a video would pass that)
    assert run["rss_mib"] - warm["rss_mib"] < 16, fig
    assert run["worker_rss_mib"] - warm["worker_rss_mib"] < 16, fig
    print(
        f"\nload: 500 videos, --workers 2: {run['done']} in {run['seconds']:.1f}s after a "
        f"20-video warm-up; peak RSS parent {run['rss_mib']:.0f} MiB (warm-up "
        f"{warm['rss_mib']:.0f}), workers {run['worker_rss_mib']:.0f} MiB (warm-up "
        f"{warm['worker_rss_mib']:.0f}, {run['workers_seen']} seen); open fds "
        f"{fig['start']['fds']} at start, {warm['fds']} / {run['fds']} / {rerun['fds']} after "
        f"each run; {run['children']} child processes left"
    )


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
    from vidfeat.models import load_trained

    with pytest.raises(ConfigError, match="refused"):
        load_trained(run)
    assert not (tmp_path / "pwned").exists()
    for bad in ("../x", "a/b", "..", "."):
        with pytest.raises(StoreError):
            check_video_id(bad)
    (tmp_path / "l.csv").write_text("video_id,path\n../../etc,a.mp4\n")
    with pytest.raises(ListError):
        load_list(tmp_path / "l.csv")


class _Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_fusion_run_refuses_a_pickle_payload_checkpoint(tmp_path: Path) -> None:
    from vidfeat.errors import ConfigError
    from vidfeat.fusion.evaluate import load_run
    from vidfeat.fusion.heads import create_head

    pwned = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("store: s\nfeatures: [rgb]\nhead: single\ntrain: t.csv\n")
    (run / "classes.txt").write_text("a\nb\n")
    (run / "feature_sets.json").write_text(json.dumps({"dims": {"rgb": 8}, "sets": {}}))
    np.savez(run / "norm.npz", **{"rgb::mean": np.zeros(8), "rgb::std": np.ones(8)})
    state = create_head("single", {"rgb": 8}, 2).state_dict()
    torch.save(state, run / "best.pt")
    assert load_run(run, device="cpu").classes == ["a", "b"]  # the folder itself is fine
    for name, payload in [
        ("best.pt", {**state, "extra": _Payload(pwned)}),  # a state dict with a rider
        ("last.pt", {"model": state, "optimizer": _Payload(pwned)}),
        ("bare.pt", _Payload(pwned)),
    ]:
        torch.save(payload, run / name)
        with pytest.raises(ConfigError, match="not a plain state dict"):
            load_run(run, device="cpu", checkpoint=name)
    assert not pwned.exists()


def test_hdf5_attrs_that_look_like_code_stay_strings(tmp_path: Path) -> None:
    import pickle

    import h5py

    from vidfeat.store import ShardWriter, format_info, store_info

    pwned = tmp_path / "pwned"
    code = f"__import__('os').system('touch {pwned}')"
    store = FeatureStore(tmp_path / "s")
    cfg = {"modality": "rgb", "dtype": "float32", "feature_shape": [2, 4], "model": code}
    store.ensure_set("x", cfg)
    with ShardWriter(store.set_dir("x"), "j") as w:
        w.add("v", np.zeros((2, 4), np.float32), {"label": code, "notes": [code, "ok"]})
    # attrs planted by another tool: fixed-length bytes, and an opaque pickle blob
    blob = pickle.dumps(_Payload(pwned))
    with h5py.File(w.shards[0], "r+") as f:
        f["v"].attrs["raw"] = np.bytes_(code.encode())
        f["v"].attrs["blob"] = np.void(blob)
    fs = store.open_set("x")
    _, attrs = fs.get("v")
    assert attrs["label"] == code and isinstance(attrs["label"], str)
    assert attrs["raw"] == code and isinstance(attrs["raw"], str)
    assert list(attrs["notes"]) == [code, "ok"]
    assert attrs["blob"] == blob  # bytes, never unpickled
    assert fs.config["model"] == code
    assert verify_store(tmp_path / "s").ok
    assert "__import__('os')" in format_info(store_info(tmp_path / "s"))  # shown, not run
    assert not pwned.exists()
