"""`vidfeat data synth --untrimmed`: long videos whose annotated intervals are where the
actions are, frame for frame, and an annotation file the localisation codebases load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.decode import probe, read_audio, read_frames
from vidfeat.errors import ConfigError
from vidfeat.synth import COLOURS, class_design, write_mp4_stream
from vidfeat.synth_untrimmed import UntrimmedConfig, generate_untrimmed, plan_video
from vidfeat.videolist import load_list

SMALL = UntrimmedConfig(videos=2, min_seconds=20.0, max_seconds=20.0, size=64, fps=10, seed=3)
ARGS = ["--untrimmed", "--videos", "2", "--min-seconds", "20", "--max-seconds", "20",
        "--size", "64", "--fps", "10", "--seed", "3", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def untrimmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("untrimmed") / "ds"
    res = CliRunner().invoke(main, ["data", "synth", str(out), *ARGS])
    assert res.exit_code == 0, res.output
    assert "2 videos (1 validation, 1 test)" in res.output
    return out


def _database(root: Path) -> dict:
    return json.loads((root / "annotations.json").read_text())["database"]


def test_json_loads_as_the_localisation_loaders_read_it(untrimmed: Path) -> None:
    """The keys ActionFormer's THUMOS/ActivityNet datasets and its evaluation read:
    database.<id>.subset (lower-cased, matched against the split), fps, duration, annotations
    (every video has the list) with segment, label, label_id; label -> label_id one to one."""
    data = json.loads((untrimmed / "annotations.json").read_text())
    db = data["database"]
    assert sorted(db) == ["video_00000", "video_00001"]
    classes = (untrimmed / "classes.txt").read_text().split()
    assert classes == [k.name for k in class_design(12)]  # the trimmed set's index
    label_dict: dict[str, int] = {}
    for vid, v in db.items():
        assert v["subset"].lower() in ("validation", "test")
        assert v["fps"] == 10.0 and v["duration"] == 20.0 and v["num_frames"] == 200
        info = probe(untrimmed / "videos" / f"{vid}.mp4")
        assert (info.num_frames, info.fps, info.width) == (200, 10.0, 64)
        acts = v["annotations"]
        assert len(acts) >= 2  # several actions per video
        ends = [0.0]
        for act in acts:
            s, e = act["segment"]
            a, b = act["segment_frames"]
            assert (s, e) == (a / 10, b / 10)  # frame-exact
            assert 2.0 <= e - s <= 6.0 and s - ends[-1] >= 1.0  # a few seconds, gaps between
            assert classes[act["label_id"]] == act["label"]
            assert label_dict.setdefault(act["label"], act["label_id"]) == act["label_id"]
            ends.append(e)
        assert v["duration"] - ends[-1] >= 1.0
    assert {v["subset"] for v in db.values()} == {"validation", "test"}
    lst = load_list(untrimmed / "all.csv")
    assert lst.ids() == sorted(db) and not lst.labelled
    assert [r.split for r in lst] == [db[i]["subset"] for i in lst.ids()]
    readme = (untrimmed / "README.txt").read_text()
    assert "segment [a/fps, b/fps]" in readme and "train_split ['validation']" in readme


def _colour_share(frames: np.ndarray, colour: str) -> np.ndarray:
    """Per frame, the share of pixels within 60 of ``colour`` (RGB distance)."""
    d = np.linalg.norm(frames.astype(np.float32) - np.array(COLOURS[colour]), axis=-1)
    return (d < 60).mean(axis=(1, 2))


def test_object_is_there_exactly_on_the_annotated_frames(untrimmed: Path) -> None:
    design = {k.name: k for k in class_design(12)}
    for vid, v in _database(untrimmed).items():
        frames = read_frames(untrimmed / "videos" / f"{vid}.mp4", np.arange(v["num_frames"]))
        inside = np.zeros(v["num_frames"], bool)
        for act in v["annotations"]:
            a, b = act["segment_frames"]
            inside[a:b] = True
            share = _colour_share(frames, design[act["label"]].colour)
            assert share[a:b].min() > 0.004, (vid, act)  # every frame of the action shows it
            assert share[a - 1] < 0.001 and share[b] < 0.001, (vid, act)  # not one frame more
        for colour in {k.colour for k in design.values()}:
            assert _colour_share(frames[~inside], colour).max() < 0.001, (vid, colour)


def _rms(audio: np.ndarray, s: float, e: float) -> float:
    return float(np.sqrt(np.mean(audio[int(s * 16000) : int(e * 16000)] ** 2)))


def test_sound_plays_during_the_actions_only(untrimmed: Path) -> None:
    for vid, v in _database(untrimmed).items():
        audio = read_audio(untrimmed / "videos" / f"{vid}.mp4")
        assert audio is not None and abs(len(audio) / 16000 - 20.0) < 0.1
        ends = [0.0]
        for act in v["annotations"]:
            s, e = act["segment"]
            assert _rms(audio, s + 0.1, e - 0.1) > 0.02  # the class's sound
            assert _rms(audio, ends[-1] + 0.1, s - 0.1) < 0.01  # the noise floor before it
            ends.append(e)
        assert _rms(audio, ends[-1] + 0.1, 19.9) < 0.01


def test_same_seed_same_bytes(untrimmed: Path, tmp_path: Path) -> None:
    rep = generate_untrimmed(tmp_path / "again", SMALL, progress=False)
    assert rep.videos == 2 and rep.actions == sum(len(v["annotations"]) for v in
                                                   _database(untrimmed).values())  # fmt: skip
    for f in sorted(p for p in untrimmed.rglob("*") if p.is_file()):
        assert f.read_bytes() == (tmp_path / "again" / f.relative_to(untrimmed)).read_bytes(), f
    # a video depends on its number and the seed, not on how many are written
    design = class_design(12)
    plan = plan_video(SMALL, design, 0)
    more = plan_video(UntrimmedConfig(**{**SMALL.__dict__, "videos": 5}), design, 0)
    assert (more.num_frames, more.actions) == (plan.num_frames, plan.actions)
    other = plan_video(UntrimmedConfig(**{**SMALL.__dict__, "seed": 4}), design, 0)
    assert other.actions != plan.actions


def test_lengths_vary_within_the_range() -> None:
    cfg = UntrimmedConfig(videos=6, min_seconds=20, max_seconds=120, fps=15)
    plans = [plan_video(cfg, class_design(12), v) for v in range(cfg.videos)]
    assert all(20 * 15 <= p.num_frames <= 120 * 15 for p in plans)
    assert len({p.num_frames for p in plans}) == 6
    assert [p.subset for p in plans] == ["validation"] * 3 + ["test"] * 3
    long = max(plans, key=lambda p: p.num_frames)
    assert len(long.actions) >= 5 and len({a.klass for a in long.actions}) >= 4


@pytest.mark.parametrize(
    "bad, flag",
    [
        ({"min_seconds": 5}, "--min-seconds"),
        ({"min_seconds": 60, "max_seconds": 30}, "--max-seconds"),
        ({"max_seconds": 20000}, "--max-seconds"),
        ({"videos": 0}, "--videos"),
        ({"test_fraction": 1.0}, "--test-fraction"),
        ({"classes": 3}, "--classes"),
        ({"size": 63}, "--size"),
    ],
)
def test_config_is_validated(bad: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        UntrimmedConfig(**bad).validate()


def test_track_does_not_depend_on_its_chunks() -> None:
    """The soundtrack is made in chunks (an hour need not be held whole): the samples, and the
    encoded bytes, are those of the track made or encoded in one piece."""
    from vidfeat.synth_untrimmed import _streams, render_soundtrack

    plan = plan_video(SMALL, class_design(12), 1)
    tracks = []
    for chunk_seconds in (10.0, 3.7, 60.0):
        *_, floor, sounds = _streams(SMALL, 1)
        tracks.append(
            np.concatenate(list(render_soundtrack(plan, 10, floor, sounds, chunk_seconds)))
        )
    assert len(tracks[0]) == 20 * 22050
    assert np.array_equal(tracks[0], tracks[1]) and np.array_equal(tracks[0], tracks[2])


def test_audio_in_chunks_encodes_to_the_same_bytes(tmp_path: Path) -> None:
    frames = np.zeros((10, 32, 32, 3), np.uint8)
    track = np.sin(np.arange(30_000) / 7.0).astype(np.float32) * 0.3
    write_mp4_stream(tmp_path / "a.mp4", iter(frames), (32, 32), 10, track, bframes=0)
    parts = np.split(track, [1000, 1500, 9999, 20_000])
    write_mp4_stream(tmp_path / "b.mp4", iter(frames), (32, 32), 10, iter(parts), bframes=0)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
