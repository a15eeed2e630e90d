"""LightGBM stacking on synthetic score files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from fusion.ensemble import GBDTStacker
from vidfeat.errors import ConfigError

K = 4


def write_scores(path: Path, ids: list[str], probs: np.ndarray) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", *(f"c{k}" for k in range(K))])
        for v, p in zip(ids, probs, strict=True):
            w.writerow([v, *(f"{x:.5f}" for x in p)])
    return path


@pytest.fixture()
def members(tmp_path: Path) -> tuple[Path, list[Path], np.ndarray]:
    """Two members with complementary errors: A knows {0,1} vs {2,3} only, B knows the parity
    only; each alone is right about half the time, together they know the class."""
    rng = np.random.default_rng(0)
    n = 160
    y = np.repeat(np.arange(K), n // K)
    ids = [f"v{i:03d}" for i in range(n)]
    pa = np.full((n, K), 0.05)
    pb = np.full((n, K), 0.05)
    for i, k in enumerate(y):
        half = [0, 1] if k < 2 else [2, 3]
        par = [0, 2] if k % 2 == 0 else [1, 3]
        pa[i, half] = rng.dirichlet([1, 1]) * 0.9
        pb[i, par] = rng.dirichlet([1, 1]) * 0.9
    lst = tmp_path / "val.csv"
    lst.write_text(
        "path,label,video_id\n"
        + "".join(f"{v}.mp4,c{k},{v}\n" for v, k in zip(ids, y, strict=True))
    )
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
    for name in ("x", "y"):
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
            "3",
        )
        assert code == 0, text
        outs.append((tmp_path / name / "oof_scores.csv").read_text())
    assert outs[0] == outs[1]


def test_sklearn_contract() -> None:
    from sklearn.base import clone

    est = GBDTStacker(num_leaves=5, n_estimators=30, seed=1)
    assert est.get_params()["num_leaves"] == 5
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "booster_")
    with pytest.raises(ConfigError, match="call fit"):
        est.predict_proba(np.zeros((2, 4)))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    y = (X[:, 0] > 0).astype(int) + 2 * (X[:, 1] > 0).astype(int)
    p = est.fit(X, y).predict_proba(X)
    assert p.shape == (80, 4) and np.allclose(p.sum(1), 1)
    assert (est.predict(X) == y).mean() > 0.9
    est.set_params(early_stopping=5, n_estimators=200).fit(X, y)
    assert est.n_rounds_ <= 200
