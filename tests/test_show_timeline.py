"""`vidfeat show` on a row set (snippets / windows grid): the per-row score timeline, with the
intervals of an annotation file shaded; long videos draw in bounded time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from vidfeat.cli import main
from vidfeat.show import contact_sheet
from vidfeat.store import FeatureStore, ShardWriter
from vidfeat.synth_untrimmed import UntrimmedConfig, generate_untrimmed
from vidfeat.timeline import pool_rows

FPS, STRIDE, WINDOW, D = 10, 4, 16, 8
GRID = {"mode": "windows", "stride": STRIDE, "window": WINDOW, "fps": None}


def _config(classes: list[str]) -> dict:
    """set.json of a windows-grid row set with a classifier's scores (the store contract)."""
    return {"modality": "rgb", "grid": GRID, "feature_shape": [-1, D], "classes": classes}


def _rows(num_frames: int, starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """times (L, 3) and frame_indices (L, W) of a windows grid, per the store contract."""
    s = np.arange(0, num_frames - WINDOW + 1, STRIDE) if starts is None else starts
    times = np.stack([s / FPS, (s + WINDOW) / FPS, (s + WINDOW / 2) / FPS], axis=1)
    return times, s[:, None] + np.arange(WINDOW)


def _scores(times: np.ndarray, acts: list[dict], classes: list[str], seed: int) -> np.ndarray:
    """Softmax rows that peak on the annotated class while the row centre is inside its
    interval: what a good network would give."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 0.5, size=(len(times), len(classes)))
    for a in acts:
        inside = (times[:, 2] >= a["segment"][0]) & (times[:, 2] < a["segment"][1])
        logits[inside, a["label_id"]] += 5.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _add(w: ShardWriter, vid: str, path: Path, entry: dict, times, idx, scores) -> None:
    n = entry["num_frames"]
    attrs = {"video_id": vid, "source_path": str(path), "fps": float(FPS), "grid_fps": float(FPS),
             "num_frames": n, "grid_frames": n, "num_rows": len(times),
             "duration": entry["duration"], "has_audio": True, "padded_frames": 0}  # fmt: skip
    feats = np.random.default_rng(len(times)).normal(size=(len(times), D)).astype(np.float32)
    w.add(vid, feats, attrs, extra={"times": times, "frame_indices": idx, "scores": scores})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two untrimmed synthetic videos and a windows-grid row set of them with row scores."""
    root = tmp_path_factory.mktemp("timeline")
    data, store = root / "data", root / "store"
    cfg = UntrimmedConfig(videos=2, min_seconds=20.0, max_seconds=20.0, size=64, fps=FPS, seed=3)
    generate_untrimmed(data, cfg, progress=False)
    meta = json.loads((data / "annotations.json").read_text())
    classes, db = meta["classes"], meta["database"]
    FeatureStore(store).ensure_set("rows", _config(classes))
    with ShardWriter(store / "rows", "test") as w:
        for i, (vid, entry) in enumerate(db.items()):
            times, idx = _rows(entry["num_frames"])
            scores = _scores(times, entry["annotations"], classes, i)
            _add(w, vid, data / "videos" / f"{vid}.mp4", entry, times, idx, scores)
    return {"data": data, "store": store, "db": db, "classes": classes}


def test_timeline_is_drawn_with_the_annotations(world: dict, tmp_path: Path) -> None:
    vid = next(iter(world["db"]))
    ann = world["data"] / "annotations.json"
    res = contact_sheet(world["store"], vid, tmp_path / "a.png", annotations=ann)
    assert res.panels[-1] == "timeline:rows" and res.grid_from == "rows"
    L = len(_rows(200)[0])
    assert f"timeline rows ({L} rows)" in res.notes
    bare = contact_sheet(world["store"], vid, tmp_path / "b.png")
    assert bare.panels == res.panels
    a, b = imread(tmp_path / "a.png"), imread(tmp_path / "b.png")
    assert a.shape == b.shape and a.shape[1] == 1400
    # the shading and outlines: only the timeline panel (the bottom of the sheet) differs
    differ = np.abs(a[..., :3] - b[..., :3]).max(axis=-1) > 0.05
    rows = np.flatnonzero(differ.any(axis=1))
    assert rows.size and rows.min() > a.shape[0] - 470, (rows.min(), a.shape[0])


def test_cli_takes_annotations_and_refuses_an_id_it_lacks(world: dict, tmp_path: Path) -> None:
    vid, other = list(world["db"])
    store, out = str(world["store"]), str(tmp_path / "c.png")
    ann = world["data"] / "annotations.json"
    res = CliRunner().invoke(main, ["show", vid, "--store", store, "--out", out,
                                    "--annotations", str(ann)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "timeline rows" in res.output
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"database": {other: world["db"][other]}}))
    res = CliRunner().invoke(main, ["show", vid, "--store", store, "--out", str(tmp_path / "d.png"),
                                    "--annotations", str(partial)])  # fmt: skip
    assert res.exit_code != 0 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert f"video '{vid}' is not in --annotations" in text and other in text
    assert not (tmp_path / "d.png").exists()


def test_annotations_without_row_scores_are_refused(world: dict, tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    store.ensure_set("seg", {"modality": "rgb", "T": 2, "classes": ["x", "y"]})
    with ShardWriter(store.set_dir("seg"), "t") as w:
        w.add("a", np.ones((2, 3), np.float32), {}, extra={"scores": np.ones(2, np.float32) / 2})
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"database": {"a": {"annotations": []}}}))
    with pytest.raises(Exception, match="--annotations applies to a row set's score timeline"):
        contact_sheet(store, "a", tmp_path / "x.png", annotations=ann)


def test_a_row_set_without_times_is_skipped_with_the_reason(world: dict, tmp_path: Path) -> None:
    vid = next(iter(world["db"]))
    entry = world["db"][vid]
    store = FeatureStore(tmp_path / "store")
    store.ensure_set("rows", _config(world["classes"]))
    times, _ = _rows(entry["num_frames"])
    scores = _scores(times, entry["annotations"], world["classes"], 0)
    attrs = {"source_path": str(world["data"] / "videos" / f"{vid}.mp4")}
    with ShardWriter(store.set_dir("rows"), "t") as w:
        w.add(vid, np.ones((len(times), D), np.float32), attrs, extra={"scores": scores})
    res = contact_sheet(store, vid, tmp_path / "s.png")
    assert not any(p.startswith("timeline") for p in res.panels)
    assert res.skipped == {"rows": "row scores but no times"}


def test_pooling_keeps_a_one_row_peak() -> None:
    L = 100_000
    x = np.arange(L) / 30.0
    v = np.zeros((L, 3), np.float32)
    v[54_321, 1] = 0.9
    px, pv, pool = pool_rows(x, v, 2000)
    assert len(px) == 2000 and pool == 50
    assert pv[:, 1].max() == pytest.approx(0.9) and pv[54_321 // 50, 1] == pytest.approx(0.9)
    assert px[0] == pytest.approx(x[:50].mean())


def test_a_hundred_thousand_rows_draw_in_bounded_time(world: dict, tmp_path: Path) -> None:
    """L = 100,000 rows (a long video's stride-1 windows): every panel that scales with L
    pools or thins, so the whole sheet takes seconds."""
    vid = next(iter(world["db"]))
    entry = world["db"][vid]
    L = 100_000
    starts = np.linspace(0, entry["num_frames"] - WINDOW, L)  # rows on a fine grid
    times, idx = _rows(entry["num_frames"], starts)
    store = FeatureStore(tmp_path / "store")
    store.ensure_set("rows", _config(world["classes"]))
    with ShardWriter(store.set_dir("rows"), "t") as w:
        scores = _scores(times, entry["annotations"], world["classes"], 0)
        _add(w, vid, world["data"] / "videos" / f"{vid}.mp4", entry, times,
             idx.astype(np.int64), scores)  # fmt: skip
    t0 = time.perf_counter()
    res = contact_sheet(store, vid, tmp_path / "long.png", annotations=world["data"] /
                        "annotations.json")  # fmt: skip
    took = time.perf_counter() - t0
    assert res.panels[-1] == "timeline:rows" and "pooled by 50" in res.notes[-1]
    assert took < 20, took
