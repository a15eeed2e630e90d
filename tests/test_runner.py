"""The extraction runner through `vidfeat extract flow`: resume, shards, failures, store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from vidfeat.errors import ConfigError
from vidfeat.runner import in_shard, parse_shard
from vidfeat.store import FeatureStore, verify_store

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
    good = next(p for p in (tmp_path.parent).rglob("*.mp4") if "_000" in p.name)
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
