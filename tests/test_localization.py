"""Untrimmed video end to end (issue 21, item 6): a network trained on the trimmed synthetic set,
run on the untrimmed one with `--grid snippets`, finds the annotated actions in its per-row
scores; the exports load as the localization codebases load them; `show` draws the timeline."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.store import FeatureStore

SYNTH = ["--classes", "12", "--size", "64", "--fps", "10", "--seed", "3", "--quiet"]


def _ok(*args: object) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("loc")
    _ok("data", "synth", d / "trimmed", "--per-class", "8", "--seconds", "1.5", *SYNTH)
    _ok("train", "rgb", "--arch", "tsn", "--backbone", "resnet10t", "--videos",
        d / "trimmed" / "train.csv", "--val", d / "trimmed" / "val.csv", "--out", d / "run",
        "--segments", "3", "--test-segments", "3", "--size", "48", "--short-side", "56",
        "--epochs", "10", "--batch-size", "8", "--optimizer", "adamw", "--lr", "0.003",
        "--schedule", "cosine", "--no-flip", "--workers", "0", "--quiet")  # fmt: skip
    _ok("data", "synth", d / "untrimmed", "--untrimmed", "--videos", "2", "--min-seconds", "40",
        "--max-seconds", "40", *SYNTH)  # fmt: skip
    _ok("extract", "rgb", "--checkpoint", d / "run", "--videos", d / "untrimmed" / "all.csv",
        "--store", d / "store", "--grid", "snippets", "--stride", "5", "--workers", "0",
        "--timeout", "0", "-q")  # fmt: skip
    return {"root": d, "store": d / "store", "data": d / "untrimmed"}


def _rows(world: dict[str, Path], vid: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    fs = FeatureStore(world["store"]).open_set("rgb")
    db = json.loads((world["data"] / "annotations.json").read_text())["database"]
    return fs.rows(vid)["centre"], fs.get_extra(vid, "scores"), db[vid]["annotations"]


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """The chance that a row of ``pos`` scores above a row of ``neg`` (ties count half)."""
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_the_scores_of_rows_find_the_annotated_actions(world: dict[str, Path]) -> None:
    """Each action's class, read off the per-row scores, picks out the rows inside its
    intervals from the background rows (AUC: the chance that a row inside scores above a row
    outside every action), and scores higher inside than outside. One RGB frame sees the
    colour only (three classes share each colour, told apart by motion and sound), so the
    argmax class is not asked for."""
    classes = (world["root"] / "run" / "classes.txt").read_text().split()
    db = json.loads((world["data"] / "annotations.json").read_text())["database"]
    aucs, higher = [], []
    for vid in db:
        centres, scores, anns = _rows(world, vid)
        assert scores.shape == (len(centres), len(classes))
        label = np.full(len(centres), -1)
        for a in anns:
            assert classes[a["label_id"]] == a["label"]
            label[(centres >= a["segment"][0]) & (centres < a["segment"][1])] = a["label_id"]
        for k in sorted(set(label[label >= 0].tolist())):
            aucs.append(_auc(scores[label == k, k], scores[label == -1, k]))
            higher.append(scores[label == k, k].mean() > scores[label == -1, k].mean())
    assert len(aucs) >= 6 and (label >= 0).sum() >= 10
    assert np.median(aucs) >= 0.9, aucs
    assert np.mean(np.array(aucs) >= 0.7) >= 0.8, aucs
    assert np.mean(higher) >= 0.8, higher


def test_the_exports_load_as_the_codebases_load_them(world: dict[str, Path], tmp_path) -> None:
    store = world["store"]
    _ok("store", "export", store, "--set", "rgb", "--layout", "actionformer", "--out",
        tmp_path / "af", "-q")  # fmt: skip
    _ok("store", "export", store, "--set", "rgb", "--layout", "bmn", "--out", tmp_path / "bmn",
        "-q")  # fmt: skip
    _ok("store", "export", store, "--set", "rgb", "--layout", "gtad", "--split", "rgb_val",
        "--out", tmp_path / "gtad", "-q")  # fmt: skip
    fs = FeatureStore(store).open_set("rgb")
    for vid in fs.ids():
        L = len(fs.rows(vid)["centre"])
        assert np.load(tmp_path / "af" / f"{vid}.npy").shape == (L, 512)
        csv = np.loadtxt(tmp_path / "bmn" / f"{vid}.csv", delimiter=",", skiprows=1)
        assert csv.shape == (100, 512)
        with h5py.File(tmp_path / "gtad" / "rgb_val.h5", "r") as h:
            assert h[vid][::1, ...].shape == (L, 512)
    conf = (tmp_path / "af" / "actionformer.yaml").read_text()
    assert "feat_stride: 5" in conf and "input_dim: 512" in conf


def test_show_draws_the_score_timeline_with_the_intervals(world: dict[str, Path], tmp_path):
    db = json.loads((world["data"] / "annotations.json").read_text())["database"]
    vid = next(iter(db))
    ann = world["data"] / "annotations.json"
    out = _ok("show", vid, "--store", world["store"], "--videos", world["data"] / "all.csv",
              "--annotations", ann, "--out", tmp_path / "s.png")  # fmt: skip
    assert (tmp_path / "s.png").stat().st_size > 10_000
    assert "timeline" in out
