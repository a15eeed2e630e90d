"""`vidfeat show`: the contact sheet of one video, on a tiny store built from synthetic data."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from vidfeat.cli import main
from vidfeat.show import SheetResult, contact_sheet, flow_to_rgb
from vidfeat.store import FeatureStore, ShardWriter

T = 4
# seed 6 of these settings writes one video without an audio track (synth's ~5%)
SYNTH = ["--classes", "4", "--per-class", "2", "--seconds", "1", "--fps", "10", "--size", "48"]
SYNTH_SEED = "6"


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Synthetic videos, their farneback fields, and a (T, 8) feature set with clip scores."""
    root = tmp_path_factory.mktemp("show")
    data, store = root / "data", root / "store"
    res = _invoke("data", "synth", str(data), *SYNTH, "--seed", SYNTH_SEED, "--quiet")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(data / "metadata.csv")))
    every = data / "all.csv"
    with open(every, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "video_id"])
        w.writerows([r["path"], r["label"], r["video_id"]] for r in rows)
    res = _invoke(
        "extract", "flow", "--method", "farneback", "--videos", str(every), "--store", str(store),
        "-T", str(T), "-N", "1", "--short-side", "32", "--workers", "1", "--timeout", "0",
        "--quiet",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    fields = FeatureStore(store).open_set("farneback-fields")
    classes = sorted({r["label"] for r in rows})
    FeatureStore(store).ensure_set(
        "toy", {"modality": "rgb", "T": T, "classes": classes, "feature_shape": [T, 8]}
    )
    rng = np.random.default_rng(0)
    with ShardWriter(store / "toy", "test") as w:
        for r in rows:
            attrs = fields.attrs(r["video_id"])
            k = classes.index(r["label"])
            logits = rng.normal(size=len(classes))
            logits[k] += 3.0
            scores = np.exp(logits) / np.exp(logits).sum()
            feats = rng.normal(size=(T, 8)).astype(np.float32) * (1 + k)
            w.add(r["video_id"], feats, attrs, extra={"scores": scores.astype(np.float32)})
    silent = [r["video_id"] for r in rows if r["has_audio"] == "False"]
    assert silent, "the synth settings no longer yield a video without audio: pick another seed"
    by_class: dict[str, str] = {}
    for r in rows:
        if r["has_audio"] == "True":
            by_class.setdefault(r["label"], r["video_id"])
    return {"store": store, "data": data, "rows": rows, "silent": silent[0], "loud": by_class}


def _two_of_different_classes(world: dict) -> tuple[str, str]:
    a, b = list(world["loud"].values())[:2]
    return a, b


def test_sheet_draws_every_panel(world: dict, tmp_path: Path) -> None:
    vid = next(iter(world["loud"].values()))
    out = tmp_path / "sheet.png"
    res = contact_sheet(world["store"], vid, out)
    assert isinstance(res, SheetResult)
    assert res.panels == ["frames", "flow:farneback-fields", "audio", "norms", "scores:toy"]
    assert res.segments == T and res.thumbnails == list(range(T))
    assert res.grid_from in ("farneback-fields", "toy") and res.has_audio
    assert res.skipped == {}
    img = imread(out)
    assert img.ndim == 3 and img.shape[0] > 600 and img.shape[1] == 1400
    assert img[..., :3].std() > 0.05  # not a blank page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]  # no temporary left


def test_two_classes_give_different_sheets(world: dict, tmp_path: Path) -> None:
    a, b = _two_of_different_classes(world)
    ra = contact_sheet(world["store"], a, tmp_path / "a.png")
    rb = contact_sheet(world["store"], b, tmp_path / "b.png")
    assert ra.panels == rb.panels
    ia, ib = imread(tmp_path / "a.png"), imread(tmp_path / "b.png")
    assert ia.shape == ib.shape
    differ = np.abs(ia[..., :3] - ib[..., :3]).max(axis=-1) > 0.1
    assert differ.mean() > 0.02, differ.mean()


def test_video_without_audio_shows_the_marker(world: dict, tmp_path: Path) -> None:
    res = contact_sheet(world["store"], world["silent"], tmp_path / "silent.png")
    assert "no-audio" in res.panels and "audio" not in res.panels
    assert not res.has_audio
    assert any("no audio track" in n for n in res.notes)


def test_cli_prints_one_line(world: dict, tmp_path: Path) -> None:
    vid = next(iter(world["loud"].values()))
    out = tmp_path / "sub" / "vidfeat.cli.png"
    res = _invoke("show", vid, "--store", str(world["store"]), "--out", str(out))
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert str(out) in lines[0] and "frames" in lines[0] and "flow farneback-fields" in lines[0]
    assert imread(out).shape[1] == 1400


def test_unknown_id_is_a_clear_error(world: dict, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    res = _invoke("show", "no-such-video", "--store", str(world["store"]), "--out", str(out))
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "'no-such-video' is in no set" in res.output
    assert world["rows"][0]["video_id"] in res.output  # a few ids that exist
    assert not out.exists()


def test_options_that_do_not_apply_are_refused(world: dict, tmp_path: Path) -> None:
    vid = world["rows"][0]["video_id"]
    store = str(world["store"])
    res = _invoke("show", vid, "--store", store, "--video-root", str(tmp_path), "--out", "x.png")
    assert res.exit_code != 0 and "--video-root applies only with --videos" in res.output
    res = _invoke("show", vid, "--store", store, "--out", str(tmp_path / "x.jpg"))
    assert res.exit_code != 0 and ".png" in res.output


def test_moved_file_is_found_through_videos(world: dict, tmp_path: Path) -> None:
    row = world["rows"][0]
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(world["data"] / row["path"], moved / "clip.mp4")
    lst = tmp_path / "moved.csv"
    lst.write_text(f"path,label,video_id\nmoved/clip.mp4,{row['label']},{row['video_id']}\n")
    res = contact_sheet(world["store"], row["video_id"], tmp_path / "m.png", videos=lst)
    assert res.video_path == moved / "clip.mp4"
    other = tmp_path / "other.csv"
    other.write_text(f"path,label,video_id\nmoved/clip.mp4,{row['label']},someone-else\n")
    r = _invoke(
        "show", row["video_id"], "--store", str(world["store"]), "--videos", str(other),
        "--out", str(tmp_path / "o.png"),
    )  # fmt: skip
    assert r.exit_code != 0 and "is not in --videos" in r.output


def test_a_gone_file_asks_for_videos(world: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    FeatureStore(store).ensure_set("feat", {"T": 2})
    with ShardWriter(store / "feat", "t") as w:
        w.add("lost", np.ones((2, 3), np.float32), {"source_path": str(tmp_path / "gone.mp4")})
    res = _invoke("show", "lost", "--store", str(store), "--out", str(tmp_path / "l.png"))
    assert res.exit_code != 0 and "is gone" in res.output and "--videos" in res.output


def test_flow_colours_follow_the_wheel() -> None:
    right = flow_to_rgb(np.array([[[5.0]], [[0.0]]]), 5.0)[0, 0]
    still = flow_to_rgb(np.zeros((2, 1, 1)), 5.0)[0, 0]
    half = flow_to_rgb(np.array([[[2.5]], [[0.0]]]), 5.0)[0, 0]
    assert np.allclose(right, [1, 0, 0])  # hue 0 = motion to the right, full saturation
    assert np.allclose(still, [1, 1, 1])  # no motion: white
    assert np.allclose(half, [1, 0.5, 0.5])  # half the bound: half saturated
