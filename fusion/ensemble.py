"""LightGBM stacking over the class scores of several members, evaluated honestly.

Members are named on the command line as

* a fusion run folder (``vidfeat fuse train --out RUN``): its head scores the videos from the
  store;
* ``set:NAME``: the clip scores stored with a feature set by ``vidfeat extract rgb|flow|audio
  --checkpoint`` (dataset ``scores`` of each video);
* a CSV file with ``video_id`` and one column per class (e.g. ``fuse eval``'s scores.csv).

Scores are joined by video id; a member lacking some of the list's videos is an error that
names the ids (never a silent intersection; ``intersect=True`` makes it explicit).

Evaluation: the GBDT never scores a video it was fit on. On the held-out list, stratified
K-fold cross-fitting gives an out-of-fold prediction for every video; every member and the
mean-of-probabilities baseline are scored on the same videos. The model saved for
``ensemble predict`` is then fit on all of them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.metrics import topk_accuracy
from vidfeat.videolist import VideoList

# --------------------------------------------------------------------------- the estimator


class GBDTStacker:
    """A scikit-learn compatible multiclass GBDT (LightGBM) over stacked member scores.

    ``fit(X, y)`` with X ``(n, features)`` (the members' probabilities side by side) and integer
    labels; ``predict_proba(X)`` → ``(n, n_classes)``. Parameters only stored by ``__init__``.
    """

    def __init__(
        self,
        *,
        num_leaves: int = 7,
        learning_rate: float = 0.05,
        n_estimators: int = 200,
        min_child_samples: int = 5,
        early_stopping: int = 0,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.n_estimators = n_estimators
        self.min_child_samples = min_child_samples
        self.early_stopping = early_stopping
        self.seed = seed
        self.verbose = verbose

    # the sklearn contract
    def get_params(self, deep: bool = True) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "num_leaves",
                "learning_rate",
                "n_estimators",
                "min_child_samples",
                "early_stopping",
                "seed",
                "verbose",
            )
        }

    def set_params(self, **params) -> GBDTStacker:
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def _lgb_params(self, n_classes: int) -> dict:
        return {
            "objective": "multiclass",
            "num_class": n_classes,
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_child_samples": self.min_child_samples,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": 1,  # deterministic and polite on shared machines
            "verbose": 1 if self.verbose else -1,
        }

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> GBDTStacker:
        import lightgbm as lgb

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        self.n_classes_ = int(n_classes or (y.max() + 1))
        self.classes_ = np.arange(self.n_classes_)
        params = self._lgb_params(self.n_classes_)
        rounds = self.n_estimators
        if self.early_stopping and len(y) >= 20:
            # an inner hold-out picks the number of rounds; the final fit uses all rows
            rng = np.random.default_rng(self.seed)
            order = rng.permutation(len(y))
            cut = max(1, len(y) // 5)
            va, tr = order[:cut], order[cut:]
            booster = lgb.train(
                params,
                lgb.Dataset(X[tr], y[tr]),
                num_boost_round=self.n_estimators,
                valid_sets=[lgb.Dataset(X[va], y[va])],
                callbacks=[lgb.early_stopping(self.early_stopping, verbose=self.verbose)],
            )
            rounds = max(1, booster.best_iteration or self.n_estimators)
        self.booster_ = lgb.train(params, lgb.Dataset(X, y), num_boost_round=rounds)
        self.n_rounds_ = rounds
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "booster_"):
            raise ConfigError("GBDTStacker: call fit() before predict_proba()")
        p = self.booster_.predict(np.asarray(X, dtype=np.float64))
        return np.asarray(p).reshape(len(X), self.n_classes_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def save(self, path: str | Path) -> None:
        self.booster_.save_model(str(path))

    @classmethod
    def load(cls, path: str | Path, n_classes: int) -> GBDTStacker:
        import lightgbm as lgb

        est = cls()
        est.booster_ = lgb.Booster(model_file=str(path))
        est.n_classes_ = n_classes
        est.classes_ = np.arange(n_classes)
        return est


# --------------------------------------------------------------------------- members


@dataclass
class Member:
    name: str
    spec: str
    scores: dict[str, np.ndarray]  # video id -> (K,) probabilities
    classes: list[str]


def load_member(
    spec: str, store: str | Path | None, videos: VideoList, device: str = "auto"
) -> Member:
    """Scores of one member for (at least) the videos of the list."""
    p = Path(spec)
    if spec.startswith("set:"):
        if store is None:
            raise ConfigError(f"member {spec}: stored scores need --store")
        from vidfeat.store import FeatureStore

        fs = FeatureStore(store).open_set(spec[4:])
        classes = fs.config.get("classes")
        if not classes:
            raise ConfigError(
                f"set {spec[4:]!r} stores no class scores (extract it with a "
                "network that has a classifier)"
            )
        scores = {}
        for vid in videos.ids():
            if vid in fs:
                s = fs.get_extra(vid, "scores")
                if s is not None:
                    scores[vid] = np.asarray(s, dtype=np.float64)
        return Member(spec[4:], spec, scores, list(classes))
    if p.is_dir():
        from fusion.trainer import load_run, run_scores

        if store is None:
            raise ConfigError(f"member {spec}: a fusion run needs --store to score the videos")
        lr = load_run(p, device=device)
        sub = VideoList(videos.source, videos.records, lr.classes, videos.format)
        probs, _ = run_scores(lr, store, sub)
        return Member(p.name, spec, dict(zip(videos.ids(), probs, strict=True)), lr.classes)
    if p.is_file():
        with open(p, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "video_id" not in rows[0]:
            raise ConfigError(f"{p}: a score file needs a video_id column and one per class")
        skip = {"video_id", "label"} | {k for k in rows[0] if k.startswith("top")}
        classes = [k for k in rows[0] if k not in skip]
        scores = {r["video_id"]: np.array([float(r[c]) for c in classes]) for r in rows}
        return Member(p.stem, spec, scores, classes)
    raise ConfigError(f"member {spec!r}: not a run folder, a score file, or set:NAME")


def stack(
    members: list[Member], videos: VideoList, classes: list[str], intersect: bool = False
) -> tuple[list[str], list[np.ndarray]]:
    """The video ids all members score and each member's (n, K) matrix in the class order.

    Missing ids are an error naming them, unless ``intersect`` (then they are dropped, and
    the caller reports how many)."""
    ids = videos.ids()
    missing = {m.name: [v for v in ids if v not in m.scores] for m in members}
    bad = {k: v for k, v in missing.items() if v}
    if bad and not intersect:
        lines = [
            f"{k} lacks scores for {len(v)} of {len(ids)} videos: {', '.join(v[:8])}"
            + (" ..." if len(v) > 8 else "")
            for k, v in bad.items()
        ]
        raise ConfigError(
            "member scores do not cover the list:\n  "
            + "\n  ".join(lines)
            + "\n(rerun the members on these videos, or pass --intersect)"
        )
    keep = [v for v in ids if all(v in m.scores for m in members)]
    mats = []
    for m in members:
        if set(m.classes) != set(classes):
            raise ConfigError(f"member {m.name} was trained on other classes than the list")
        order = [m.classes.index(c) for c in classes]
        mats.append(np.stack([m.scores[v][order] for v in keep]))
    return keep, mats


def _scores(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return topk_accuracy(p, y, 1), topk_accuracy(p, y, 5)


def cross_fit(
    mats: list[np.ndarray], y: np.ndarray, n_classes: int, est: GBDTStacker, folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities for every row (stratified K folds) and the fold of each row."""
    from sklearn.model_selection import StratifiedKFold

    X = np.concatenate(mats, axis=1)
    counts = np.bincount(y, minlength=n_classes)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        raise ConfigError(
            "cross-fitting needs at least 2 videos of every class present "
            f"(the rarest class has {counts[counts > 0].min()})"
        )
    oof = np.zeros((len(y), n_classes))
    fold_of = np.zeros(len(y), dtype=np.int64)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (tr, te) in enumerate(skf.split(X, y)):
        m = GBDTStacker(**est.get_params()).fit(X[tr], y[tr], n_classes)
        oof[te] = m.predict_proba(X[te])
        fold_of[te] = f
    return oof, fold_of


def run_ensemble(
    member_specs: list[str],
    store,
    videos: VideoList,
    out: str | Path,
    *,
    est: GBDTStacker,
    folds: int = 5,
    intersect: bool = False,
    device: str = "auto",
    echo=print,
) -> list[dict]:
    """Fit and evaluate; writes ENS/ and returns the table rows."""
    from vidfeat.plots import plot_bars

    if len(member_specs) < 1:
        raise ConfigError("--members needs at least one member")
    if not videos.labelled:
        raise ConfigError(f"{videos.source}: the ensemble is fit on labelled videos")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = videos.classes
    members = [load_member(s, store, videos, device) for s in member_specs]
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"two members share a name: {names}")
    ids, mats = stack(members, videos, classes, intersect)
    if len(ids) < len(videos):
        echo(f"--intersect: {len(videos) - len(ids)} of {len(videos)} videos dropped")
    lookup = {c: i for i, c in enumerate(classes)}
    rec = videos.by_id()
    y = np.array([lookup[rec[v].label] for v in ids])
    oof, fold_of = cross_fit(mats, y, len(classes), est, folds, est.seed)
    rows = []
    for m, s in zip(members, mats, strict=True):
        p1, p5 = _scores(s, y)
        rows.append({"model": m.name, "kind": "member", "prec1": p1, "prec5": p5})
    best = max(rows, key=lambda r: r["prec1"])
    mean = np.mean(mats, axis=0)
    p1, p5 = _scores(mean, y)
    rows.append({"model": "mean of probabilities", "kind": "baseline", "prec1": p1, "prec5": p5})
    p1, p5 = _scores(oof, y)
    rows.append(
        {"model": "GBDT ensemble (out-of-fold)", "kind": "ensemble", "prec1": p1, "prec5": p5}
    )
    rows.append(
        {
            "model": f"best single member ({best['model']})",
            "kind": "reference",
            "prec1": best["prec1"],
            "prec5": best["prec5"],
        }
    )
    final = GBDTStacker(**est.get_params()).fit(np.concatenate(mats, axis=1), y, len(classes))
    final.save(out / "model.txt")
    meta = {
        "members": [m.spec for m in members],
        "names": names,
        "classes": classes,
        "params": est.get_params(),
        "folds": int(fold_of.max() + 1),
        "videos": len(ids),
        "rounds": final.n_rounds_,
    }
    (out / "ensemble.json").write_text(json.dumps(meta, indent=2))
    write_table(rows, out, len(ids), meta["folds"])
    with open(out / "oof_scores.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "label", "fold", *classes])
        for i, v in enumerate(ids):
            w.writerow([v, classes[y[i]], int(fold_of[i]), *(f"{x:.6f}" for x in oof[i])])
    plot_bars(
        [(r["model"], r["prec1"], r["prec5"]) for r in rows if r["kind"] != "reference"],
        out / "bars.png",
        title=f"ensemble on {len(ids)} videos ({meta['folds']}-fold)",
    )
    return rows


def write_table(rows: list[dict], out: Path, n: int, folds: int) -> None:
    lines = [
        f"Scores on the same {n} videos; the ensemble's are out-of-fold ({folds} folds).",
        "",
        "| model | Prec@1 | Prec@5 |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['model']} | {100 * r['prec1']:.1f} | {100 * r['prec5']:.1f} |" for r in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    with open(out / "table.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["model", "kind", "prec1", "prec5"])
        w.writeheader()
        w.writerows(rows)


def format_table(rows: list[dict]) -> str:
    width = max(len(r["model"]) for r in rows)
    out = [f"{'model':{width}s}  Prec@1  Prec@5"]
    out += [
        f"{r['model']:{width}s}  {100 * r['prec1']:6.1f}  {100 * r['prec5']:6.1f}" for r in rows
    ]
    return "\n".join(out)


def predict_ensemble(
    ens: str | Path,
    store,
    videos: VideoList,
    out: str | Path,
    member_specs: list[str] | None = None,
    device: str = "auto",
) -> int:
    """Score new videos with a fitted ensemble (members rescored on them)."""
    ens = Path(ens)
    try:
        meta = json.loads((ens / "ensemble.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{ens} is not an ensemble folder (no ensemble.json)") from None
    specs = member_specs or meta["members"]
    if len(specs) != len(meta["members"]):
        raise ConfigError(
            f"the ensemble was fit on {len(meta['members'])} members, {len(specs)} given"
        )
    classes = meta["classes"]
    videos.classes = classes
    members = [load_member(s, store, videos, device) for s in specs]
    ids, mats = stack(members, videos, classes)
    est = GBDTStacker.load(ens / "model.txt", len(classes))
    p = est.predict_proba(np.concatenate(mats, axis=1))
    from fusion.trainer import write_scores_csv

    write_scores_csv(Path(out), ids, p, classes, None, top=5)
    return len(ids)
