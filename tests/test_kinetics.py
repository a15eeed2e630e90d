"""A Kinetics-style tree end to end: class folders of `{youtube_id}_{start:06d}_{end:06d}.mp4`,
the official CSV columns, some rows whose video was never downloaded. `data probe`, `extract
flow` and `train rgb` run through --video-root; the missing files are reported once, clearly,
and are not fatal."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.store import FeatureStore


@pytest.fixture(scope="module")
def kinetics(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kinetics")
    videos = root / "videos"
    rows = list(csv.DictReader((tiny_synth / "all.csv").open()))
    out = [("label", "youtube_id", "time_start", "time_end", "split", "is_cc")]
    for i, r in enumerate(rows):
        yid, start = f"yt{i:03d}X-_a", 10 * i
        label = r["label"].replace("-", " ")  # Kinetics labels have spaces
        out.append((label, yid, str(start), str(start + 10), "train", "0"))
        if i % 5 == 4:  # never downloaded
            continue
        dest = videos / label / f"{yid}_{start:06d}_{start + 10:06d}.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_synth / r["path"], dest)
    lst = root / "kinetics_train.csv"
    with lst.open("w", newline="") as fh:
        csv.writer(fh).writerows(out)
    return lst, videos


def cli(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def test_kinetics_tree_end_to_end(kinetics: tuple[Path, Path], tmp_path: Path) -> None:
    lst, root = kinetics
    total = len(lst.read_text().splitlines()) - 1
    gone = total // 5
    code, text = cli("data", "probe", lst, "--video-root", root)
    assert code == 0, text  # missing files are not unreadable files
    assert text.count("missing") >= gone and f"{total - gone} done" in text

    store = tmp_path / "store"
    code, text = cli("extract", "flow", "--method", "farneback", "--videos", lst,
                     "--video-root", root, "--store", store, "-T", "2", "-N", "1",
                     "--short-side", "32", "--quiet")  # fmt: skip
    assert code == 0, text
    notes = [ln for ln in text.splitlines() if "have no video file" in ln]
    assert len(notes) == 1, text  # reported once, with the count and where to see them all
    assert f"{gone} of {total} rows" in notes[0] and "vidfeat data probe" in notes[0]
    assert f"{total - gone} done" in text
    fs = FeatureStore(store).open_set("farneback-fields")
    assert len(fs) == total - gone
    assert all(v.startswith("yt") and v.count("_") >= 3 for v in fs.ids())

    code, text = cli("train", "rgb", "--videos", lst, "--video-root", root, "--out",
                     tmp_path / "run", "--backbone", "resnet10t", "--segments", "2", "--frames",
                     "2", "--size", "32", "--short-side", "40", "--epochs", "1", "--batch-size",
                     "4", "--workers", "0", "--quiet")  # fmt: skip
    assert code == 0, text
    assert sum("have no video file" in ln for ln in text.splitlines()) == 1
    classes = (tmp_path / "run" / "classes.txt").read_text().splitlines()
    assert len(classes) == 4 and all(" " in c for c in classes)
