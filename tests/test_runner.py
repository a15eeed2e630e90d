"""The extraction runner through `vidfeat extract flow`: resume, shards, failures, store."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.extract.fields import FlowFieldsExtractor
from vidfeat.extract.job import in_shard, parse_shard
from vidfeat.store import FeatureStore, read_failures, verify_store

FAST = ["--segments", "3", "--frames", "2", "--short-side", "32", "--quiet"]


def extract(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["extract", "flow", *args])
    return res.exit_code, res.output


@pytest.fixture()
def listing(tiny_synth: Path, tmp_path: Path) -> Path:
    """train list of the tiny synthetic set plus broken entries, as absolute paths."""
    rows = (tiny_synth / "train.csv").read_text().splitlines()[1:]
    lst = tmp_path / "list.csv"
    lines = ["path,label,video_id"]
    for row in rows:
        path, label, vid, _ = row.split(",")
        lines.append(f"{tiny_synth / path},{label},{vid}")
    lst.write_text("\n".join(lines) + "\n")
    return lst


def test_extract_flow_fields_into_the_store(listing: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    code, out = extract(
        "--method", "farneback", "--videos", str(listing), "--store", str(store), *FAST
    )
    assert code == 0, out
    assert "12 done, 0 skipped, 0 failed" in out
    fs = FeatureStore(store).open_set("farneback-fields")
    assert len(fs) == 12
    arr, attrs = fs.get(fs.ids()[0])
    assert arr.dtype == np.uint8 and arr.shape == (3, 2, 2, 32, 32)
    assert attrs["frame_indices"].shape == (3, 3)
    assert attrs["num_frames"] == 10 and attrs["fps"] == 10.0
    assert attrs["label"] == fs.ids()[0].rsplit("_", 1)[0]
    assert attrs["class_index"] == sorted({v.rsplit("_", 1)[0] for v in fs.ids()}).index(
        attrs["label"]
    )
    cfg = fs.config
    assert cfg["method"] == "farneback" and cfg["T"] == 3 and cfg["N"] == 2
    assert cfg["quantization"]["bound"] == 20.0 and "opencv_version" in cfg
    assert verify_store(store).ok
    # rerun: everything is skipped
    code, out = extract(
        "--method", "farneback", "--videos", str(listing), "--store", str(store), *FAST
    )
    assert code == 0 and "0 done, 12 skipped, 0 failed" in out


def test_moving_object_gives_flow_in_its_direction(listing: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    code, out = extract(
        "--method",
        "tvl1",
        "--videos",
        str(listing),
        "--store",
        str(store),
        "--segments",
        "2",
        "--frames",
        "2",
        "--short-side",
        "64",
        "--quiet",
    )
    assert code == 0, out
    fs = FeatureStore(store).open_set("tvl1-fields")
    from vidfeat.decode import read_frames
    from vidfeat.flow import dequantize
    from vidfeat.synth import COLOURS

    for vid in fs.ids():
        q, attrs = fs.get(vid)
        dx = dequantize(q, 20.0)[:, :, 0]  # (T, N, H, W)
        # the flow on the object's pixels (found by its colour) follows its motion
        idx = attrs["frame_indices"][:, :-1]
        rgb = read_frames(attrs["source_path"], idx.reshape(-1), short_side=64)
        colour = np.array(COLOURS[vid.split("-")[0]], dtype=np.float32)
        mask = np.linalg.norm(rgb.astype(np.float32) - colour, axis=-1) < 60
        mean_dx = dx.reshape(-1, *dx.shape[-2:])[mask].mean()
        motion = "right" if "-right-" in vid else "left"
        assert (mean_dx > 0.2) if motion == "right" else (mean_dx < -0.2), (vid, mean_dx)


def test_bad_videos_are_recorded_and_the_run_goes_on(listing: Path, tmp_path: Path) -> None:
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello")
    with open(listing, "a") as fh:
        fh.write(f"{tmp_path / 'zero.mp4'},x,bad_zero\n")
        fh.write(f"{tmp_path / 'text.mp4'},x,bad_text\n")
        fh.write(f"{tmp_path / 'missing.mp4'},x,bad_missing\n")
    store = tmp_path / "store"
    code, out = extract(
        "--method", "farneback", "--videos", str(listing), "--store", str(store), *FAST
    )
    assert code == 1
    assert "12 done, 0 skipped, 3 failed" in out
    fs = FeatureStore(store).open_set("farneback-fields")
    fails = {f["video_id"]: f for f in fs.failures()}
    assert set(fails) == {"bad_zero", "bad_text", "bad_missing"}
    assert fails["bad_zero"]["error_class"] == "EmptyFileError"
    assert fails["bad_missing"]["error_class"] == "MissingFileError"
    assert "zero.mp4" in fails["bad_zero"]["message"]
    # --retry-failed only touches the failed ids; fixing one file makes it succeed
    good = listing.parent / listing.read_text().splitlines()[1].split(",")[0]  # one of its own
    assert good.is_file() and good.suffix == ".mp4"
    os.remove(tmp_path / "zero.mp4")
    (tmp_path / "zero.mp4").write_bytes(good.read_bytes())
    code, out = extract(
        "--method",
        "farneback",
        "--videos",
        str(listing),
        "--store",
        str(store),
        "--retry-failed",
        *FAST,
    )
    assert code == 1 and "1 done, 0 skipped, 2 failed" in out
    assert "bad_zero" in FeatureStore(store).open_set("farneback-fields").ids()


def test_shards_partition_the_list_and_jobs_share_a_store(listing: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    for i in range(3):
        code, out = extract(
            "--method",
            "farneback",
            "--videos",
            str(listing),
            "--store",
            str(store),
            "--shard",
            f"{i}/3",
            *FAST,
        )
        assert code == 0, out
    fs = FeatureStore(store).open_set("farneback-fields")
    assert len(fs) == 12 and not fs.duplicates()
    shards = sorted(p.name for p in fs.dir.glob("part-*.h5"))
    assert any("s0of3" in s for s in shards) and any("s2of3" in s for s in shards)
    ids = [f"v{i}" for i in range(300)]
    parts = [[v for v in ids if in_shard(v, (i, 4))] for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(40 < len(p) < 110 for p in parts)  # roughly even
    assert [v for v in reversed(ids) if in_shard(v, (1, 4))] == list(reversed(parts[1]))


def test_workers_give_the_same_arrays(listing: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        extract("--method", "farneback", "--videos", str(listing), "--store", str(a), *FAST)[0] == 0
    )
    code, out = extract(
        "--method",
        "farneback",
        "--videos",
        str(listing),
        "--store",
        str(b),
        "--workers",
        "2",
        "--shard-videos",
        "5",
        *FAST,
    )
    assert code == 0, out
    fa = FeatureStore(a).open_set("farneback-fields")
    fb = FeatureStore(b).open_set("farneback-fields")
    assert fa.ids() == fb.ids()
    assert len(list(fb.dir.glob("part-*.h5"))) == 3  # 12 videos, 5 per shard
    for vid in fa.ids():
        assert np.array_equal(fa.get(vid)[0], fb.get(vid)[0])


def test_limit_dry_run_and_config_mismatch(listing: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    code, out = extract(
        "--method", "farneback", "--videos", str(listing), "--store", str(store), "--dry-run", *FAST
    )
    assert code == 0 and "dry run: 12 to extract" in out and not store.exists()
    code, out = extract(
        "--method",
        "farneback",
        "--videos",
        str(listing),
        "--store",
        str(store),
        "--limit",
        "4",
        *FAST,
    )
    assert code == 0 and "4 done" in out
    code, out = extract(
        "--method",
        "farneback",
        "--videos",
        str(listing),
        "--store",
        str(store),
        "--segments",
        "4",
        "--frames",
        "2",
        "--short-side",
        "32",
        "--quiet",
    )
    assert code != 0 and "T" in out and "--name" in out
    code, out = extract(
        "--method",
        "farneback",
        "--videos",
        str(listing),
        "--store",
        str(store),
        "--levels",
        "2",
        *FAST,
    )
    assert code != 0 and "levels" in out


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="0-based"):
        parse_shard("3/3")
    with pytest.raises(ConfigError, match="i/N"):
        parse_shard("two")
    assert parse_shard("2/5") == (2, 5)
    code, out = extract(
        "--method",
        "tvl1",
        "--videos",
        "x.csv",
        "--store",
        "s",
        "--tau",
        "0.3",
        "--pyr-scale",
        "0.4",
    )
    assert code != 0 and "--pyr-scale" in out and "tvl1" in out


def test_failures_file_is_json_lines(listing: Path, tmp_path: Path) -> None:
    with open(listing, "a") as fh:
        fh.write(f"{tmp_path / 'nope.mp4'},x,gone\n")
    store = tmp_path / "store"
    extract(
        "--method",
        "farneback",
        "--videos",
        str(listing),
        "--store",
        str(store),
        "--limit",
        "1",
        *FAST,
    )
    extract("--method", "farneback", "--videos", str(listing), "--store", str(store), *FAST)
    lines = [
        json.loads(ln)
        for f in (store / "farneback-fields").glob("failures-*.jsonl")
        for ln in f.read_text().splitlines()
    ]
    assert [ln["video_id"] for ln in lines] == ["gone"]


def test_unwritable_store_is_a_clear_error(listing: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, out = extract(
        "--method", "farneback", "--videos", str(listing), "--store", str(blocker / "store"), *FAST
    )
    assert code != 0 and "--store" in out and "Not a directory" in out


def test_full_disk_keeps_completed_shards_and_resumes(listing: Path, tmp_path: Path) -> None:
    """A small tmpfs fills up after a few shards: a clear error, completed shards intact,
    and the same command resumes once there is room."""
    import shutil
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1100k", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("needs permission to mount a small tmpfs (root)")
    try:
        store = small / "store"
        code, out = extract(
            "--method",
            "farneback",
            "--videos",
            str(listing),
            "--store",
            str(store),
            "--shard-videos",
            "2",
            "--min-free-mb",
            "1",
            *FAST,
        )
        assert code != 0
        assert "disk full" in out and "--min-free-mb" in out, out
        fs = FeatureStore(store).open_set("farneback-fields")
        kept = fs.ids()
        assert 0 < len(kept) < 12  # some shards completed before the disk filled up
        for vid in kept:
            assert fs.get(vid)[0].shape == (3, 2, 2, 32, 32)
        fs.close()
        big = tmp_path / "big"
        shutil.copytree(store, big)  # "free some space": the same store, somewhere roomier
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
    code, out = extract(
        "--method", "farneback", "--videos", str(listing), "--store", str(big), *FAST
    )
    assert code == 0, out
    assert f"{12 - len(kept)} done, {len(kept)} skipped, 0 failed" in out
    assert verify_store(big).ok


def test_store_info_and_verify_commands(listing: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with open(listing, "a") as fh:
        fh.write(f"{tmp_path / 'gone.mp4'},x,gone\n")
    extract("--method", "farneback", "--videos", str(listing), "--store", str(store), *FAST)
    res = CliRunner().invoke(main, ["store", "info", str(store)])
    assert res.exit_code == 0, res.output
    assert "farneback-fields" in res.output and "12" in res.output
    res = CliRunner().invoke(main, ["store", "verify", str(store)])
    assert res.exit_code == 0, res.output
    # a corrupt shard makes verify fail
    shard = next((store / "farneback-fields").glob("part-*.h5"))
    shard.write_bytes(b"garbage" * 100)
    res = CliRunner().invoke(main, ["store", "verify", str(store)])
    assert res.exit_code == 1 and shard.name in res.output


# --------------------------------------------------------------------------- misbehaving videos


class Misbehaves(FlowFieldsExtractor):
    """Farneback fields, except on chosen ids: ``crash`` ids SIGKILL their own process (a
    segfault or an OOM kill), ``sleep`` ids hang in Python, ``stuck`` ids hang with SIGALRM
    blocked (a C call that never comes back to Python). Module-level, so workers unpickle it."""

    def __init__(self, method, *, crash=(), sleep=(), stuck=(), **kw) -> None:
        super().__init__(method, **kw)
        self.crash, self.sleep, self.stuck = set(crash), set(sleep), set(stuck)

    def extract(self, record, class_index):
        if record.video_id in self.crash:
            os.kill(os.getpid(), signal.SIGKILL)
        if record.video_id in self.sleep:
            time.sleep(60)
        if record.video_id in self.stuck:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(60)
        return super().extract(record, class_index)


def ids_of(listing: Path) -> list[str]:
    return [row.split(",")[2] for row in listing.read_text().splitlines()[1:]]


def failures_by_id(store: Path, name: str = "farneback-fields") -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in FeatureStore(store).open_set(name).failures():
        out.setdefault(f["video_id"], []).append(f)
    return out


def test_a_crashing_worker_fails_only_its_own_video(
    listing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = ids_of(listing)
    poison = {ids[1], ids[2], ids[7]}  # two in a row: both workers busy when the first dies
    monkeypatch.setattr(
        "vidfeat.extract.fields.FlowFieldsExtractor", functools.partial(Misbehaves, crash=poison)
    )
    store = tmp_path / "store"
    res = CliRunner().invoke(
        main,
        ["extract", "flow", "--method", "farneback", "--videos", str(listing)]
        + ["--store", str(store), "--workers", "2", *FAST],
    )
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    assert "9 done, 0 skipped, 3 failed" in res.output
    fails = failures_by_id(store)
    assert set(fails) == poison
    assert all(
        f[0]["error_class"] == "WorkerCrashed" and "SIGKILL" in f[0]["message"]
        for f in fails.values()
    )
    assert set(FeatureStore(store).open_set("farneback-fields").ids()) == set(ids) - poison
    assert verify_store(store).ok


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_video_past_the_timeout_fails_and_the_run_goes_on(
    workers: str, listing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = ids_of(listing)[:6]
    short = tmp_path / "short.csv"
    short.write_text("\n".join(listing.read_text().splitlines()[:7]) + "\n")
    sleeper, stuck = ids[1], ids[3]
    monkeypatch.setattr(
        "vidfeat.extract.fields.FlowFieldsExtractor",
        functools.partial(Misbehaves, sleep={sleeper}, stuck={stuck}),
    )
    store = tmp_path / "store"
    t0 = time.perf_counter()
    res = CliRunner().invoke(
        main,
        ["extract", "flow", "--method", "farneback", "--videos", str(short)]
        + ["--store", str(store), "--workers", workers, "--timeout", "1", *FAST],
    )
    assert time.perf_counter() - t0 < 30  # neither 60 s hang was waited out
    assert res.exit_code == 1, res.output
    assert "4 done, 0 skipped, 2 failed" in res.output
    fails = failures_by_id(store)
    assert set(fails) == {sleeper, stuck}
    for f in fails.values():
        assert f[0]["error_class"] == "Timeout" and "--timeout 1 s" in f[0]["message"]
    assert "worker process was killed" in fails[stuck][0]["message"]
    assert set(FeatureStore(store).open_set("farneback-fields").ids()) == set(ids) - {
        sleeper,
        stuck,
    }


def _sigint_as_from_a_shell() -> None:
    """In the child before exec: SIGINT unblocked and at its default action. Native libraries
    loaded by earlier tests in this process may leave it blocked or ignored in the calling
    thread, which a child inherits — SIGINT would then never arrive."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_the_summary_keeps_shards_and_resumes(
    tiny_synth: Path, tmp_path: Path
) -> None:
    """A real SIGINT to the command line mid-run."""
    reps = 12  # 144 entries: the run is still going when the signal comes, even on a busy box
    rows = (tiny_synth / "train.csv").read_text().splitlines()[1:]
    lst = tmp_path / "many.csv"
    lines = ["path,label,video_id"]
    for rep in range(reps):
        for row in rows:
            path, label, vid, _ = row.split(",")
            lines.append(f"{tiny_synth / path},{label},{vid}-r{rep}")
    lst.write_text("\n".join(lines) + "\n")
    store = tmp_path / "store"
    args = ["extract", "flow", "--method", "farneback", "--videos", str(lst), "--store"]
    args += [str(store), "--shard-videos", "4", *FAST]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from vidfeat.cli import main; main()", *args],
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_from_a_shell,
    )
    deadline = time.monotonic() + 60
    while not list(store.glob("*/part-*.h5")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, out + err
    assert "Traceback" not in err, err
    m = re.search(r"extract: (\d+) done, 0 skipped, 0 failed in .* \(stopped: interrupted\)", out)
    assert m, out + err
    done = int(m.group(1))
    assert 4 <= done < len(rows) * reps
    fs = FeatureStore(store).open_set("farneback-fields")
    assert len(fs) == done  # every video counted as done is in a completed shard
    for vid in fs.ids():
        assert fs.get(vid)[0].shape == (3, 2, 2, 32, 32)
    fs.close()
    res = CliRunner().invoke(main, ["store", "verify", str(store)])
    assert res.exit_code == 0 and "OK" in res.output, res.output
    code, out = extract(*args[2:])
    assert code == 0 and f"{len(rows) * reps - done} done, {done} skipped, 0 failed" in out, out


# --------------------------------------------------------------------------- class index


def test_class_index_is_the_sets_not_the_lists(listing: Path, tmp_path: Path) -> None:
    rows = listing.read_text().splitlines()[1:]
    labels = sorted({r.split(",")[1] for r in rows})
    assert len(labels) >= 3
    # list A: one video of every class; list B: the rest of the videos of the last two classes
    first = {lab: next(r for r in rows if r.split(",")[1] == lab) for lab in labels}
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("path,label,video_id\n" + "\n".join(first.values()) + "\n")
    rest = [r for r in rows if r.split(",")[1] in labels[-2:] and r not in first.values()]
    b.write_text("path,label,video_id\n" + "\n".join(rest) + "\n")
    store = tmp_path / "store"
    for lst in (a, b):
        code, out = extract(
            "--method", "farneback", "--videos", str(lst), "--store", str(store), *FAST
        )
        assert code == 0, out
    fs = FeatureStore(store).open_set("farneback-fields")
    assert fs.config["classes"] == labels
    assert len(fs) == len(labels) + len(rest)
    for vid in fs.ids():
        attrs = fs.attrs(vid)
        assert attrs["class_index"] == labels.index(attrs["label"]), vid
    # a label the set does not know is refused before any work, naming it and the way out
    c = tmp_path / "c.csv"
    c.write_text(f"path,label,video_id\n{rows[0].split(',')[0]},zebra,z1\n")
    code, out = extract("--method", "farneback", "--videos", str(c), "--store", str(store), *FAST)
    assert code != 0 and "'zebra'" in out and "--name" in out
    assert "z1" not in FeatureStore(store).open_set("farneback-fields").ids()


# --------------------------------------------------------------------------- resume options


def test_overwrite_redoes_videos_and_the_newest_copy_wins(listing: Path, tmp_path: Path) -> None:
    rows = listing.read_text().splitlines()[1:]
    src_a, src_b = rows[0].split(",")[0], rows[5].split(",")[0]
    video = tmp_path / "changing.mp4"
    shutil.copyfile(src_a, video)
    lst = tmp_path / "one.csv"
    lst.write_text(f"path,label,video_id\n{video},x,changing\n")
    ref = tmp_path / "ref.csv"
    ref.write_text(f"path,label,video_id\n{src_b},x,b\n")
    store = tmp_path / "store"
    assert (
        extract("--method", "farneback", "--videos", str(lst), "--store", str(store), *FAST)[0] == 0
    )
    before = FeatureStore(store).open_set("farneback-fields").get("changing")[0]
    shutil.copyfile(src_b, video)  # the file is replaced (re-encoded, fixed, ...)
    code, out = extract("--method", "farneback", "--videos", str(lst), "--store", str(store), *FAST)
    assert code == 0 and "0 done, 1 skipped" in out  # without --overwrite: resume skips it
    code, out = extract(
        "--method", "farneback", "--videos", str(lst), "--store", str(store), "--overwrite", *FAST
    )
    assert code == 0 and "1 done, 0 skipped" in out, out
    assert (
        extract("--method", "farneback", "--videos", str(ref), "--store", str(store), *FAST)[0] == 0
    )
    fs = FeatureStore(store).open_set("farneback-fields")
    after = fs.get("changing")[0]
    assert np.array_equal(after, fs.get("b")[0]) and not np.array_equal(after, before)
    assert fs.attrs("changing")["source_size"] == video.stat().st_size
    assert "changing" in fs.duplicates()
    res = CliRunner().invoke(main, ["store", "verify", str(store)])
    assert res.exit_code == 0, res.output  # duplicates are a warning, not a problem
    assert "warning:" in res.output and "'changing'" in res.output and "newest" in res.output


def test_shards_do_not_depend_on_the_order_of_the_list_file(listing: Path, tmp_path: Path) -> None:
    lines = listing.read_text().splitlines()
    reordered = tmp_path / "reordered.csv"
    reordered.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    store = tmp_path / "store"
    base = ["--method", "farneback", "--store", str(store), *FAST]
    code, out = extract("--videos", str(reordered), "--shard", "0/2", *base)
    assert code == 0, out
    first = set(FeatureStore(store).open_set("farneback-fields").ids())
    assert 0 < len(first) < 12
    # the original order names the same shard 0: all of it is done, none of shard 1 is
    code, out = extract("--videos", str(listing), "--shard", "0/2", "--dry-run", *base)
    assert f"dry run: 0 to extract, {len(first)} already done, {12 - len(first)} in other" in out
    code, out = extract("--videos", str(listing), "--shard", "1/2", *base)
    assert code == 0 and f"{12 - len(first)} done, 0 skipped" in out, out
    fs = FeatureStore(store).open_set("farneback-fields")
    assert set(fs.ids()) == set(ids_of(listing)) and not fs.duplicates()


def test_limit_takes_the_next_videos_on_every_rerun(listing: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    base = ["--method", "farneback", "--videos", str(listing), "--store", str(store), *FAST]
    seen: list[set[str]] = []
    for want in ("5 done, 0 skipped", "5 done, 5 skipped", "2 done, 10 skipped"):
        code, out = extract(*base, "--limit", "5")
        assert code == 0 and want in out, out
        seen.append(set(FeatureStore(store).open_set("farneback-fields").ids()))
    assert len(seen[0]) == 5 and len(seen[1]) == 10 and seen[0] < seen[1] < seen[2]
    assert seen[2] == set(ids_of(listing))
    code, out = extract(*base, "--limit", "5")
    assert code == 0 and "0 done, 12 skipped" in out


# --------------------------------------------------------------------------- Ray retries


def test_a_retried_ray_chunk_does_not_log_a_failure_twice(listing: Path, tmp_path: Path) -> None:
    """The retry of a chunk (run here in-process, as Ray would run it again) skips what its
    dead attempt completed or logged as failed."""
    from vidfeat.extract import RunOptions
    from vidfeat.extract.job import open_job
    from vidfeat.extract.ray import extract_chunk
    from vidfeat.flow import make_method
    from vidfeat.store import FailureLog
    from vidfeat.videolist import load_list

    (tmp_path / "bad.mp4").write_text("not a video")
    with open(listing, "a") as fh:
        fh.write(f"{tmp_path / 'bad.mp4'},x,bad\n")
    videos = load_list(listing)
    records = videos.records
    ex = FlowFieldsExtractor(
        make_method("farneback"), segments=2, frames=1, short_side=32, bound=20.0
    )
    store = FeatureStore(tmp_path / "store")
    job = open_job(videos, ex.config(), store.root, "f", RunOptions(job="job"))
    set_dir = store.set_dir("f")
    # the dead first attempt had logged the bad video's failure before its worker died
    FailureLog(set_dir, "job-c00003-deadbeef").add("bad", "bad.mp4", "NotAVideoError", "dead")
    out = extract_chunk(ex, job, records, 3)
    assert out["done"] == 12 and out["failed"] == [("bad", "dead")]
    assert [f["video_id"] for f in read_failures(set_dir)] == ["bad"]


class StuckClips:
    """Network-extraction input (a map-style dataset) that never finishes decoding the
    ``stuck`` ids. torch is imported lazily: the spawned workers of the other tests import this
    module, and should stay quick to start."""

    def __init__(self, videos, stuck: set[str]) -> None:
        self.records, self.stuck, self.with_meta = videos.records, stuck, False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        import torch

        if self.records[i].video_id in self.stuck:
            time.sleep(60)
        item = {"x": torch.full((2, 1, 2, 2), float(i)), "label": -1, "index": i}
        if self.with_meta:
            item["meta"] = {"video_id": self.records[i].video_id}
        return item


def test_a_stuck_decode_stops_network_extraction_instead_of_hanging(
    listing: Path, tmp_path: Path
) -> None:
    import torch

    from vidfeat.errors import VidfeatError
    from vidfeat.extract import RunOptions
    from vidfeat.extract.network import run_network_extraction
    from vidfeat.videolist import load_list

    class MeanNet(torch.nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(2).mean(-1, keepdim=True)  # [B, T, 1]

    videos = load_list(listing)
    stuck = videos.records[2].video_id
    said: list[str] = []
    t0 = time.perf_counter()
    with pytest.raises(VidfeatError, match="--timeout 1 s"):
        run_network_extraction(
            videos,
            lambda vl: StuckClips(vl, {stuck}),
            MeanNet(),
            {"modality": "test", "T": 2, "dtype": "float32", "feature_shape": [2, 1]},
            tmp_path / "store",
            "net",
            RunOptions(workers=1, timeout=1.0, shard_videos=1, progress=False),
            batch_size=1,
            echo=said.append,
        )
    assert time.perf_counter() - t0 < 30
    assert said and "2 done, 0 skipped, 0 failed" in said[-1] and "stopped" in said[-1]
    fs = FeatureStore(tmp_path / "store").open_set("net")
    assert sorted(fs.ids()) == sorted(r.video_id for r in videos.records[:2])
