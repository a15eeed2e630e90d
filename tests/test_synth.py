from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vidfeat.decode import probe, read_audio, read_frames
from vidfeat.errors import ConfigError
from vidfeat.synth import (
    COLOURS,
    SynthClass,
    SynthConfig,
    ceilings,
    class_design,
    generate,
    render_clip,
)
from vidfeat.videolist import load_list


def test_default_design_needs_every_cue_to_reach_the_top() -> None:
    design = class_design(12)
    assert len({(c.colour, c.motion, c.sound) for c in design}) == 12
    assert [c.name for c in design] == sorted(c.name for c in design)
    ceil = ceilings(design)
    assert ceil["appearance (one RGB frame: TSN-RGB)"] == pytest.approx(4 / 12)
    assert ceil["appearance + motion (RGB clip: StNet)"] == pytest.approx(8 / 12)
    assert ceil["motion (optical flow)"] == pytest.approx(4 / 12)
    assert ceil["sound (audio)"] == pytest.approx(4 / 12)
    assert ceil["all cues (fusion)"] == 1.0
    # videos without audio lower only the ceilings that use sound
    ceil5 = ceilings(design, 0.05)
    assert ceil5["sound (audio)"] < ceil["sound (audio)"]
    assert ceil5["motion (optical flow)"] == ceil["motion (optical flow)"]


@pytest.mark.parametrize("k", [4, 5, 9, 12, 13, 24])
def test_every_class_count_has_unique_cue_triples(k: int) -> None:
    design = class_design(k)
    assert len({(c.colour, c.motion, c.sound) for c in design}) == k
    ceil = ceilings(design)
    assert max(v for n, v in ceil.items() if "fusion" not in n) < 1.0


def test_same_seed_same_files(tmp_path: Path) -> None:
    cfg = SynthConfig(classes=4, per_class=2, seconds=0.6, fps=10, size=48, seed=11)
    a, b = generate(tmp_path / "a", cfg, False), generate(tmp_path / "b", cfg, False)
    assert a.videos == b.videos == 8
    for f in sorted((tmp_path / "a" / "videos").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / "videos" / f.name).read_bytes()
    c = generate(tmp_path / "c", SynthConfig(**{**cfg.__dict__, "seed": 12}), False)
    assert c.videos == 8
    first = sorted((tmp_path / "a" / "videos").iterdir())[0]
    assert first.read_bytes() != (tmp_path / "c" / "videos" / first.name).read_bytes()


def test_dataset_files_lists_and_readme(tiny_synth: Path) -> None:
    train = load_list(tiny_synth / "train.csv")
    val = load_list(tiny_synth / "val.csv", classes=train.classes)
    assert len(train) == 12 and len(val) == 4
    assert (tiny_synth / "classes.txt").read_text().split() == train.classes
    assert not set(train.ids()) & set(val.ids())
    readme = (tiny_synth / "README.txt").read_text()
    assert "motion (optical flow)" in readme and "%" in readme
    meta = json.loads((tiny_synth / "synth.json").read_text())
    assert set(meta["ceilings"]) == {
        "appearance (one RGB frame: TSN-RGB)",
        "appearance + motion (RGB clip: StNet)",
        "motion (optical flow)",
        "sound (audio)",
        "all cues (fusion)",
    }
    info = probe(train.records[0].path)
    assert (info.num_frames, info.width, info.fps) == (10, 64, 10.0)


def test_videos_show_their_colour_and_sound(tiny_synth: Path) -> None:
    rows = list(csv.DictReader(open(tiny_synth / "metadata.csv")))
    for row in rows:
        path = tiny_synth / row["path"]
        frames = read_frames(path, [0, 5]).astype(np.float32)
        dist = np.linalg.norm(frames - np.array(COLOURS[row["colour"]]), axis=-1)
        assert (dist < 70).mean() > 0.01, row["video_id"]  # the object is there, in its colour
        others = [c for c in ("red", "green", "blue", "yellow") if c != row["colour"]]
        for other in others:
            d2 = np.linalg.norm(frames - np.array(COLOURS[other]), axis=-1)
            assert (d2 < 40).mean() < (dist < 40).mean()
        audio = read_audio(path)
        if row["has_audio"] == "False":
            assert audio is None
            continue
        spec = np.abs(np.fft.rfft(audio[:16000] * np.hanning(len(audio[:16000]))))
        peak = np.argmax(spec) * 16000 / len(audio[:16000])
        expect = {"low-tone": 300.0, "high-tone": 1800.0}[row["sound"]]
        assert abs(peak - expect) < 0.08 * expect, (row["video_id"], peak)


@pytest.mark.parametrize(
    "motion,direction", [("right", (1, 0)), ("left", (-1, 0)), ("up", (0, -1)), ("down", (0, 1))]
)
def test_motion_cue_is_visible_across_frames(motion: str, direction: tuple[int, int]) -> None:
    klass = SynthClass(0, "x", "red", motion, "low-tone")
    cfg = SynthConfig(size=96, fps=15, seconds=1.0)
    clip = render_clip(klass, cfg, np.random.default_rng(4))
    red = np.array(COLOURS["red"], dtype=np.float32)
    mask = (np.linalg.norm(clip.frames.astype(np.float32) - red, axis=-1) < 60).astype(np.float32)
    shifts = np.array([cv2.phaseCorrelate(mask[i], mask[i + 1])[0] for i in range(len(mask) - 1)])
    mean = shifts.mean(axis=0)
    assert np.sign(np.round(mean)).tolist() == list(direction), mean


def test_no_audio_fraction_and_config_validation(tmp_path: Path) -> None:
    cfg = SynthConfig(classes=4, per_class=2, seconds=0.5, size=32, no_audio_fraction=1.0)
    rep = generate(tmp_path, cfg, False)
    assert rep.without_audio == rep.videos
    for bad, opt in [
        ({"classes": 2}, "--classes"),
        ({"size": 33}, "--size"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "--test-fraction"),
        ({"per_class": 2, "test_fraction": 0.2}, "--per-class"),
    ]:
        with pytest.raises(ConfigError, match=opt):
            SynthConfig(**bad).validate()


def test_test_split_is_stratified_and_disjoint(tmp_path: Path) -> None:
    cfg = SynthConfig(classes=4, per_class=5, seconds=0.5, size=32, val_fraction=0.2,
                      test_fraction=0.2)  # fmt: skip
    rep = generate(tmp_path, cfg, False)
    assert (rep.train, rep.val, rep.test) == (12, 4, 4)
    lists = {s: load_list(tmp_path / f"{s}.csv") for s in ("train", "val", "test")}
    ids = [set(v.ids()) for v in lists.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert all(len(set(v.classes)) == 4 for v in lists.values())  # every class in every split
    assert "select models on val, report on test" in (tmp_path / "README.txt").read_text()


def test_trimmed_rendering_is_unchanged() -> None:
    """The trimmed clips' pixels and sound, drawn through the pieces the untrimmed videos share
    (Actor, Distractor, compose_frame), are those of before the split: same seed, same data.
    (The digest is of numpy/OpenCV output: a new version of either may move it.)"""
    cfg = SynthConfig(classes=12, seconds=1.0, fps=10, size=64, seed=5)
    h = hashlib.sha256()
    for k in class_design(12):
        clip = render_clip(k, cfg, np.random.default_rng([5, k.index]))
        h.update(clip.frames.tobytes())
        h.update(b"" if clip.audio is None else clip.audio.tobytes())
    assert h.hexdigest() == "e24c400620cd21b34fe8361c43c043b7e961e15a5c4629623aab20080ec9d644"
