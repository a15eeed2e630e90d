"""Features of one's own labelled videos from a network trained on other classes: extraction
keeps the list's labels (``classes``, ``label``, ``class_index``) beside the network's scores
(``score_classes``); fusion and export use the list's labels; an ensemble, which needs scores of
the list's classes, refuses such a set by naming both."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.csvsafe import uncell
from vidfeat.errors import ConfigError
from vidfeat.show import contact_sheet
from vidfeat.store import FeatureStore, score_classes


def cli(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def own_list(tiny_synth: Path, out: Path) -> tuple[Path, dict[str, str], list[str]]:
    """The synthetic videos labelled with classes B: one of the network's (overlapping, at
    another index) and two it never saw."""
    with open(tiny_synth / "all.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    network = (tiny_synth / "classes.txt").read_text().split()
    names = ["zz-mine", network[-1], "aa-mine"]
    labels = {r["video_id"]: names[i % 3] for i, r in enumerate(rows)}
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "video_id"])
        for r in rows:
            w.writerow(
                [str((tiny_synth / r["path"]).resolve()), labels[r["video_id"]], r["video_id"]]
            )
    return out, labels, sorted(names)


def check_set(fs, labels: dict[str, str], own: list[str], network: list[str]) -> None:
    assert fs.config["classes"] == own and fs.config["score_classes"] == network
    assert score_classes(fs.config) == network
    assert sorted(fs.ids()) == sorted(labels)
    for vid in fs.ids():
        a = fs.attrs(vid)
        assert a["label"] == labels[vid] and a["class_index"] == own.index(labels[vid]), vid
        assert fs.get_extra(vid, "scores").shape[-1] == len(network)


def test_own_labels_through_extraction_export_fusion_and_ensemble(
    tiny_rgb_run: Path, tiny_synth: Path, tmp_path: Path
) -> None:
    videos, labels, own = own_list(tiny_synth, tmp_path / "mine.csv")
    network = (tiny_rgb_run / "classes.txt").read_text().split()
    assert set(own) - set(network) and set(own) & set(network)
    store = tmp_path / "store"
    base = ["extract", "rgb", "--checkpoint", tiny_rgb_run, "--videos", videos, "--store", store,
            "--quiet", "--workers", "0"]  # fmt: skip
    code, text = cli(*base, "-T", "2")
    assert code == 0, text
    code, text = cli(*base, "--name", "rows", "--grid", "snippets", "--stride", "8")
    assert code == 0, text
    fs, rows = FeatureStore(store).open_set("rgb"), FeatureStore(store).open_set("rows")
    check_set(fs, labels, own, network)
    check_set(rows, labels, own, network)
    vid = fs.ids()[0]
    assert fs.get_extra(vid, "scores").shape == (len(network),)
    assert rows.get_extra(vid, "scores").ndim == 2
    # resuming with the same list is the same set (both keys compared, nothing redone)
    code, text = cli(*base, "-T", "2")
    assert code == 0 and "0 done" in text and f"{len(labels)} skipped" in text, text

    # the contact sheet names the scores by the network's classes (clip scores and timeline)
    sheet = contact_sheet(store, vid, tmp_path / "sheet.png")
    assert {"scores:rgb", "timeline:rows"} <= set(sheet.panels) and not sheet.skipped, sheet

    # export: the list's labels; top1 names the network's class of the best score
    out = tmp_path / "export"
    code, text = cli("store", "export", store, "--set", "rgb", "--out", out, "--with-scores",
                     "--quiet")  # fmt: skip
    assert code == 0, text
    with open(out / "manifest.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert {r["id"]: uncell(r["label"]) for r in manifest} == labels
    for r in manifest:
        best = int(np.argmax(fs.get_extra(r["id"], "scores")))
        assert int(r["top1_index"]) == best and uncell(r["top1"]) == network[best]

    # fusion learns the list's classes from the list's labels
    fused = tmp_path / "fuse"
    code, text = cli("fuse", "train", "--store", store, "--features", "rgb", "--train", videos,
                     "--head", "single", "--epochs", "1", "--out", fused, "--quiet")  # fmt: skip
    assert code == 0, text
    assert (fused / "classes.txt").read_text().split() == own

    # the ensemble stacks scores as predictions of the list's classes: refused, naming both
    code, text = cli("ensemble", "--members", "set:rgb", "--store", store, "--videos", videos,
                     "--out", tmp_path / "ens")  # fmt: skip
    text = " ".join(text.split())
    assert code != 0 and "member rgb scores other classes than the labels of" in text, text
    assert f"its scores are over {len(network)} classes ({network[0]!r}" in text
    assert f"the list's labels are 3 classes ({own[0]!r}, {own[1]!r}, {own[2]!r})" in text
    assert "never scores 'aa-mine', 'zz-mine'" in text and "`vidfeat fuse train`" in text
    fs.close()
    rows.close()


def test_the_networks_classes_label_their_own_list_as_before(
    tiny_rgb_run: Path, tiny_synth: Path, tmp_path: Path
) -> None:
    """A list labelled with the network's classes: both keys name the same classes, and the
    set's scores are a member an ensemble accepts."""
    store = tmp_path / "store"
    network = (tiny_rgb_run / "classes.txt").read_text().split()
    code, text = cli("extract", "rgb", "--checkpoint", tiny_rgb_run, "--videos",
                     tiny_synth / "all.csv", "--store", store, "-T", "2", "--quiet", "--workers",
                     "0")  # fmt: skip
    assert code == 0, text
    fs = FeatureStore(store).open_set("rgb")
    assert fs.config["classes"] == sorted(network) == fs.config["score_classes"] == network
    fs.close()
    code, text = cli("ensemble", "--members", "set:rgb", "--store", store, "--videos",
                     tiny_synth / "all.csv", "--out", tmp_path / "ens", "--folds", "2",
                     "--n-estimators", "5")  # fmt: skip
    assert code == 0, text
    meta = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert meta["classes"] == network
    # a list without labels: no class index, the scores still named
    paths = [ln.split(",")[0] for ln in (tiny_synth / "val.csv").read_text().splitlines()[1:]]
    bare = tmp_path / "bare.txt"
    bare.write_text("".join(f"{(tiny_synth / q).resolve()}\n" for q in paths))
    code, text = cli("extract", "rgb", "--checkpoint", tiny_rgb_run, "--videos", bare, "--store",
                     store, "--name", "bare", "-T", "2", "--quiet", "--workers", "0")  # fmt: skip
    assert code == 0, text
    fs = FeatureStore(store).open_set("bare")
    assert "classes" not in fs.config and fs.config["score_classes"] == network
    assert all("label" not in fs.attrs(v) and "class_index" not in fs.attrs(v) for v in fs.ids())
    fs.close()


def test_older_sets_name_their_scores_by_classes_and_resume(tmp_path: Path) -> None:
    """A set.json written before ``score_classes``: its scores are over ``classes``, and a run
    of today's configuration (``score_classes``, no network ``classes``) matches it; two
    different ``score_classes`` refuse."""
    conf = {"modality": "rgb", "T": 2, "feature_shape": [2, 4], "dtype": "float32"}
    assert score_classes({**conf, "classes": ["b", "a"]}) == ["b", "a"]
    assert score_classes({**conf, "classes": ["x"], "score_classes": ["b", "a"]}) == ["b", "a"]
    assert score_classes(conf) is None
    store = FeatureStore(tmp_path / "store")
    store.ensure_set("old", {**conf, "classes": ["b", "a"]})
    assert store.ensure_set("old", {**conf, "score_classes": ["b", "a"]})["classes"] == ["b", "a"]
    store.ensure_set("new", {**conf, "score_classes": ["b", "a"], "classes": ["x", "y"]})
    store.ensure_set("new", {**conf, "score_classes": ["b", "a"]})
    with pytest.raises(ConfigError, match="score_classes"):
        store.ensure_set("new", {**conf, "score_classes": ["a", "b"]})
