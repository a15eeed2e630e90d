"""LightGBM stacking on synthetic score files and on a fusion run over a synthetic store."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from vidfeat.cli import main
from vidfeat.fusion.ensemble import GBDTStacker
from vidfeat.store import FeatureStore, ShardWriter

K = 4


def write_scores(path: Path, ids: list[str], probs: np.ndarray) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", *(f"c{k}" for k in range(K))])
        for v, p in zip(ids, probs, strict=True):
            w.writerow([v, *(f"{x:.5f}" for x in p)])
    return path


def write_list(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A labelled video list of (video id, label) rows."""
    path.write_text("path,label,video_id\n" + "".join(f"{v}.mp4,{k},{v}\n" for v, k in rows))
    return path


def complementary(
    n_per_class: list[int], seed: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Two members with complementary errors: A knows {0,1} vs {2,3} only, B knows the parity
    only; each alone is right about half the time, together they know the class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per_class)
    ids = [f"v{i:03d}" for i in range(len(y))]
    pa = np.full((len(y), K), 0.05)
    pb = np.full((len(y), K), 0.05)
    for i, k in enumerate(y):
        half = [0, 1] if k < 2 else [2, 3]
        par = [0, 2] if k % 2 == 0 else [1, 3]
        pa[i, half] = rng.dirichlet([1, 1]) * 0.9
        pb[i, par] = rng.dirichlet([1, 1]) * 0.9
    return ids, y, pa, pb


@pytest.fixture()
def members(tmp_path: Path) -> tuple[Path, list[Path], np.ndarray]:
    ids, y, pa, pb = complementary([40] * K)
    lst = write_list(tmp_path / "val.csv", [(v, f"c{k}") for v, k in zip(ids, y, strict=True)])
    return (
        lst,
        [write_scores(tmp_path / "a.csv", ids, pa), write_scores(tmp_path / "b.csv", ids, pb)],
        y,
    )


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["ensemble", *args])
    return res.exit_code, res.output


def test_ensemble_beats_each_member_out_of_fold(members, tmp_path: Path) -> None:
    lst, (a, b), _ = members
    out = tmp_path / "ens"
    code, text = run(
        "--members", f"{a},{b}", "--videos", str(lst), "--out", str(out), "--n-estimators", "60"
    )
    assert code == 0, text
    assert "lowered" not in text  # 40 videos per class: the 5 folds asked for
    rows = {r["model"]: r for r in csv.DictReader(open(out / "table.csv"))}
    ens = float(rows["GBDT ensemble (out-of-fold)"]["prec1"])
    assert float(rows["a"]["prec1"]) < 0.7 and float(rows["b"]["prec1"]) < 0.7
    assert ens > 0.9, rows
    assert "mean of probabilities" in rows
    for f in ("table.md", "oof_scores.csv", "bars.png", "model.txt", "ensemble.json"):
        assert (out / f).exists()
    oof = list(csv.DictReader(open(out / "oof_scores.csv")))
    assert len(oof) == 160 and {r["fold"] for r in oof} == {"0", "1", "2", "3", "4"}
    # predict with the fitted model on the same member files
    code, text = run(
        "predict", "--ensemble", str(out), "--videos", str(lst), "--out", str(tmp_path / "pred.csv")
    )
    assert code == 0, text
    pred = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert len(pred) == 160 and pred[0]["top1"] in {"c0", "c1", "c2", "c3"}


def test_folder_holds_the_fold_models_that_made_the_out_of_fold_scores(
    members, tmp_path: Path
) -> None:
    lst, (a, b), _ = members
    out = tmp_path / "ens"
    code, text = run(
        "--members", f"{a},{b}", "--videos", str(lst), "--out", str(out), "--n-estimators", "30"
    )
    assert code == 0, text
    meta = json.loads((out / "ensemble.json").read_text())
    assert meta["folds"] == 5 and meta["model"] == "model.txt"
    assert meta["fold_models"] == [f"folds/fold-{f}.txt" for f in range(5)]
    assert sorted(p.name for p in (out / "folds").iterdir()) == [f"fold-{f}.txt" for f in range(5)]
    classes = meta["classes"]
    X = np.concatenate(
        [
            np.array([[float(r[c]) for c in classes] for r in csv.DictReader(open(m))])
            for m in (a, b)
        ],
        axis=1,
    )
    oof = list(csv.DictReader(open(out / "oof_scores.csv")))
    fold = np.array([int(r["fold"]) for r in oof])
    p_oof = np.array([[float(r[c]) for c in classes] for r in oof])
    for f in range(5):
        model = GBDTStacker.load(out / "folds" / f"fold-{f}.txt", classes)
        assert np.allclose(model.predict_proba(X[fold == f]), p_oof[fold == f], atol=1e-5)
    # the final model saw every video: it differs from each fold model
    final = GBDTStacker.load(out / "model.txt", classes)
    assert not np.allclose(final.predict_proba(X[fold == 0]), p_oof[fold == 0], atol=1e-5)
    assert set(final.predict(X)) <= set(classes)


def test_fold_count_lowered_by_the_rarest_class_is_reported(tmp_path: Path) -> None:
    ids, y, pa, pb = complementary([20, 20, 20, 3])
    lst = write_list(tmp_path / "val.csv", [(v, f"c{k}") for v, k in zip(ids, y, strict=True)])
    a, b = write_scores(tmp_path / "a.csv", ids, pa), write_scores(tmp_path / "b.csv", ids, pb)
    out = tmp_path / "ens"
    args = ["--members", f"{a},{b}", "--videos", str(lst), "--n-estimators", "20"]
    code, text = run(*args, "--out", str(out))
    assert code == 0, text
    note = "--folds 5 lowered to 3: the rarest class has only 3 videos"
    assert f"note: {note}" in text
    assert f"- {note}" in (out / "table.md").read_text()
    assert "(3 folds)" in (out / "table.md").read_text()
    assert len(list((out / "folds").iterdir())) == 3
    code, text = run(*args, "--out", str(out), "--folds", "1")
    assert code != 0 and "--folds must be >= 2" in text


def test_mismatched_ids_are_reported_not_intersected(members, tmp_path: Path) -> None:
    lst, (a, b), _ = members
    lines = b.read_text().splitlines()
    b.write_text("\n".join(lines[:-3]) + "\n")  # b lacks the last 3 videos
    code, text = run(
        "--members", str(a), "--members", str(b), "--videos", str(lst), "--out", str(tmp_path / "e")
    )
    assert code != 0
    assert "b lacks scores for 3 of 160 videos: v157, v158, v159" in text
    code, text = run(
        "--members",
        f"{a},{b}",
        "--videos",
        str(lst),
        "--out",
        str(tmp_path / "e"),
        "--intersect",
        "--n-estimators",
        "20",
    )
    assert code == 0 and "3 of 160 videos dropped" in text


def test_deterministic_with_a_seed(members, tmp_path: Path) -> None:
    lst, (a, b), _ = members
    outs = []
    for name in ("x", "y", "z"):
        code, text = run(
            "--members",
            f"{a},{b}",
            "--videos",
            str(lst),
            "--out",
            str(tmp_path / name),
            "--n-estimators",
            "30",
            "--seed",
            "4" if name == "z" else "3",
        )
        assert code == 0, text
        outs.append((tmp_path / name / "oof_scores.csv").read_text())
    assert outs[0] == outs[1] and outs[0] != outs[2]


# --------------------------------------------------------------------------- a fusion run member

T, D = 4, 6


def write_set(root: Path, name: str, modality: str, rows: list[tuple[str, int]], make) -> None:
    fs = FeatureStore(root)
    fs.ensure_set(name, {"modality": modality, "T": T, "feature_shape": [T, D], "dtype": "float32"})
    with ShardWriter(fs.set_dir(name), "fixture", max_videos=10) as w:
        for vid, y in rows:
            w.add(vid, make(y).astype(np.float32), {"label": str(y)})


def test_run_member_reports_videos_absent_from_all_its_sets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    protos = rng.normal(0, 1, (K, D))
    train = [(f"t{k}_{i}", k) for k in range(K) for i in range(6)]
    val = [(f"v{k}_{i}", k) for k in range(K) for i in range(4)]
    ghost, half = "v3_3", "v2_1"  # ghost: no features at all; half: only in set 'a'
    store = tmp_path / "store"
    present = [r for r in train + val if r[0] != ghost]
    write_set(store, "a", "rgb", present, lambda y: protos[y] + rng.normal(0, 0.3, (T, D)))
    write_set(
        store,
        "b",
        "audio",
        [r for r in present if r[0] != half],
        lambda y: protos[(y + 1) % K] + rng.normal(0, 0.3, (T, D)),
    )
    train_csv = write_list(tmp_path / "train.csv", [(v, f"c{y}") for v, y in train])
    val_csv = write_list(tmp_path / "val.csv", [(v, f"c{y}") for v, y in val])
    fused = tmp_path / "fuse"
    res = CliRunner().invoke(
        main,
        ["fuse", "train", "--store", str(store), "--features", "a,b", "--head", "txn"]
        + ["--train", str(train_csv), "--out", str(fused), "--epochs", "2", "--quiet"]
        + ["--head-opt", "width=16"],
    )
    assert res.exit_code == 0, res.output
    base = ["--members", str(fused), "--store", str(store), "--videos", str(val_csv)]
    code, text = run(*base, "--out", str(tmp_path / "e"))
    assert code != 0
    assert "fuse lacks scores for 1 of 16 videos: v3_3 (absent from all of its feature sets" in text
    assert half not in text  # absent from 'b' only: the head masks 'b' and scores it
    out = tmp_path / "e2"
    code, text = run(*base, "--out", str(out), "--intersect", "--n-estimators", "10")
    assert code == 0, text
    assert "note: fuse: b missing for 2 of 16 videos (zeros, masked)" in text
    assert "note: --intersect: 1 of 16 videos dropped" in text
    scored = {r["video_id"] for r in csv.DictReader(open(out / "oof_scores.csv"))}
    assert half in scored and ghost not in scored and len(scored) == 15
    assert "b missing for 2 of 16 videos" in (out / "table.md").read_text()
    # predict names the same ghost, and scores the rest with the join report as a note
    pred = tmp_path / "pred.csv"
    predict = ["predict", "--ensemble", str(out), "--store", str(store), "--out", str(pred)]
    code, text = run(*predict, "--videos", str(val_csv))
    assert code != 0 and "v3_3" in text
    known = write_list(tmp_path / "known.csv", [(v, f"c{y}") for v, y in val if v != ghost])
    code, text = run(*predict, "--videos", str(known))
    assert code == 0, text
    assert "note: fuse: b missing for 1 of 15 videos (zeros, masked)" in text
    assert len(list(csv.DictReader(open(pred)))) == 15


def test_a_set_without_class_scores_is_named(tmp_path: Path) -> None:
    # flow fields / raw VGGish sets record the list's classes but hold no scores
    store = tmp_path / "store"
    fs = FeatureStore(store)
    cfg = {"modality": "flow-fields", "T": T, "feature_shape": [T, D], "dtype": "float32"}
    fs.ensure_set("tvl1-fields", {**cfg, "classes": ["c0", "c1"]})
    rows = [(f"v{k}_{i}", k) for k in range(2) for i in range(4)]
    with ShardWriter(fs.set_dir("tvl1-fields"), "fixture") as w:
        for vid, y in rows:
            w.add(vid, np.zeros((T, D), np.float32), {"label": f"c{y}"})
    val = write_list(tmp_path / "val.csv", [(v, f"c{y}") for v, y in rows])
    code, text = run(
        "--members", "set:tvl1-fields", "--store", str(store), "--videos", str(val),
        "--out", str(tmp_path / "e"),
    )  # fmt: skip
    assert code != 0 and "'tvl1-fields' stores no class scores" in text


# --------------------------------------------------------------------------- the sklearn contract


@parametrize_with_checks([GBDTStacker(n_estimators=50)])
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.fixture()
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    y = (X[:, 0] > 0).astype(int) + 2 * (X[:, 1] > 0).astype(int)
    return X, y


def test_params_clone_and_unfitted_error(xy) -> None:
    X, y = xy
    est = GBDTStacker(num_leaves=5, n_estimators=30, seed=1)
    assert is_classifier(est) and est.get_params()["num_leaves"] == 5
    with pytest.raises(TypeError):
        GBDTStacker(5)  # keyword-only, as LightGBM's own estimators
    with pytest.raises(NotFittedError, match="call fit"):
        est.predict(X)
    est.fit(X, y)
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "booster_")
    p = est.predict_proba(X)
    assert p.shape == (80, 4) and np.allclose(p.sum(1), 1) and est.n_features_in_ == 4
    assert est.score(X, y) > 0.9
    with pytest.raises(ValueError, match="4 features"):
        est.predict(X[:, :3])
    # on labels that are noise the inner hold-out stops the boosting early
    noise = np.random.default_rng(1).integers(0, 4, len(y))
    est.set_params(early_stopping=5, n_estimators=200).fit(X, noise)
    assert est.n_rounds_ < 50
    assert est.set_params(early_stopping=0).fit(X, noise).n_rounds_ == 200


@pytest.mark.parametrize("names", [["walk", "run", "jump", "swim"], [1, 2, 3, 4]])
def test_arbitrary_labels_are_encoded_into_classes(xy, names) -> None:
    X, codes = xy
    y = np.array(names)[codes]
    est = GBDTStacker(n_estimators=30).fit(X, y)
    assert est.classes_.tolist() == sorted(names)
    pred = est.predict(X)
    assert (pred == y).mean() > 0.9 and set(pred.tolist()) <= set(names)
    # predict_proba's columns follow classes_
    p = est.predict_proba(X)
    assert (est.classes_[p.argmax(1)] == pred).all()
    col = est.classes_.tolist().index(y[0])
    assert p[0, col] == p[0].max()


def test_explicit_classes_keep_a_column_for_a_class_absent_from_y(xy) -> None:
    X, y = xy
    keep = y != 2
    est = GBDTStacker(n_estimators=20).fit(X[keep], y[keep], classes=[3, 2, 1, 0])
    assert est.classes_.tolist() == [3, 2, 1, 0]
    p = est.predict_proba(X)
    assert p.shape == (80, 4) and p[:, 1].max() < 0.2  # class 2 never seen
    assert (est.predict(X[keep]) == y[keep]).mean() > 0.9
    with pytest.raises(ValueError, match="not in the given classes: 2"):
        est.fit(X, y, classes=[0, 1, 3])


def test_pipeline_cross_val_score_and_grid_search(xy) -> None:
    X, codes = xy
    y = np.array(["a", "b", "c", "d"])[codes]
    pipe = make_pipeline(StandardScaler(), GBDTStacker(n_estimators=30))
    assert pipe.fit(X, y).score(X, y) > 0.9 and pipe.predict(X[:2]).dtype.kind == "U"
    for scoring in (None, "accuracy"):
        s = cross_val_score(GBDTStacker(n_estimators=30), X, y, cv=4, scoring=scoring)
        assert s.shape == (4,) and s.mean() > 0.8
    grid = GridSearchCV(
        GBDTStacker(n_estimators=30), {"num_leaves": [3, 7], "learning_rate": [0.001, 0.1]}, cv=3
    ).fit(X, y)
    assert grid.best_params_["learning_rate"] == 0.1 and grid.best_score_ > 0.8
