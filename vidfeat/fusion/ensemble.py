"""LightGBM stacking over the class scores of several members, evaluated honestly.

Members are named on the command line as

* a fusion run folder (``vidfeat fuse train --out RUN``): its head scores the videos from the
  store;
* ``set:NAME``: the clip scores stored with a feature set by ``vidfeat extract rgb|flow|audio
  --checkpoint`` (dataset ``scores`` of each video, over the network's classes: set.json's
  ``score_classes``, which are refused, named beside the list's, unless they are its classes);
* a CSV file with ``video_id`` and one column per class (e.g. ``fuse eval``'s scores.csv).

Scores are joined by video id; a member lacking some of the list's videos is an error that
names the ids (never a silent intersection; ``intersect=True`` makes it explicit). A fusion run
lacks a video when the video is absent from *every* feature set the run reads: the head would
score all-zero, fully masked input. A video absent from only some of the run's sets (or an
audio set's ``has_audio=false`` video) is scored, as ``fuse eval`` scores it — the head masks the
missing modality — and the run's join report ("audio missing for 3 of 96 videos") is returned as
notes.

Evaluation: the GBDT never scores a video it was fit on. On the held-out list, stratified
K-fold cross-fitting gives an out-of-fold prediction for every video; every member and the
mean-of-probabilities baseline are scored on the same videos. K is at most the number of videos
of the rarest class (a note says so when it lowers ``--folds``). The per-fold models are kept in
``ENS/folds/``; the model saved for ``ensemble predict`` (``ENS/model.txt``) is then fit on all
of the videos.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from vidfeat import csvsafe
from vidfeat.csvsafe import uncell
from vidfeat.errors import ConfigError
from vidfeat.metrics import topk_accuracy
from vidfeat.outdir import claim_out_dir
from vidfeat.videolist import VideoList

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6 (pyproject allows >= 1.3) has the method only

    def validate_data(estimator: BaseEstimator, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


# --------------------------------------------------------------------------- the estimator


class GBDTStacker(ClassifierMixin, BaseEstimator):
    """A scikit-learn multiclass classifier: a LightGBM GBDT over stacked member scores.

    ``fit(X, y)`` with X ``(n, features)`` (the members' probabilities side by side) and labels
    of any kind (strings, or integers such as 1..4), encoded into the sorted ``classes_``;
    ``predict_proba(X)`` → ``(n, len(classes_))`` with columns in ``classes_`` order;
    ``predict(X)`` → ``classes_[argmax]``; ``score`` is accuracy. ``__init__`` only stores the
    parameters, so ``clone``, ``GridSearchCV`` and pipelines work.
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

    def _encode(self, y: np.ndarray, classes: ArrayLike | None) -> np.ndarray:
        """Sets ``classes_`` and returns y as column indices into it."""
        if classes is None:
            enc = LabelEncoder().fit(y)
            self.classes_ = enc.classes_
            return enc.transform(y)
        self.classes_ = np.asarray(classes)
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        unknown = sorted({str(v) for v in y.tolist() if v not in index})
        if unknown:
            raise ValueError(f"labels not in the given classes: {', '.join(unknown[:8])}")
        return np.array([index[v] for v in y.tolist()], dtype=np.int64)

    def fit(self, X: ArrayLike, y: ArrayLike, classes: ArrayLike | None = None) -> GBDTStacker:
        """Fit on X ``(n, features)`` and labels y ``(n,)``.

        ``classes``: every label in column order (default: the sorted labels of y). A class
        absent from y still gets a column, so models fit on different folds line up.
        """
        import lightgbm as lgb

        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        codes = self._encode(y, classes)
        if len(self.classes_) < 2:
            raise ValueError("GBDTStacker needs at least 2 classes; y holds one class")
        params = self._lgb_params(len(self.classes_))
        rounds = self.n_estimators
        if self.early_stopping and len(codes) >= 20:
            # an inner hold-out picks the number of rounds; the final fit uses all rows
            rng = np.random.default_rng(self.seed)
            order = rng.permutation(len(codes))
            cut = max(1, len(codes) // 5)
            va, tr = order[:cut], order[cut:]
            booster = lgb.train(
                params,
                lgb.Dataset(X[tr], codes[tr]),
                num_boost_round=self.n_estimators,
                valid_sets=[lgb.Dataset(X[va], codes[va])],
                callbacks=[lgb.early_stopping(self.early_stopping, verbose=self.verbose)],
            )
            rounds = max(1, booster.best_iteration or self.n_estimators)
        self.booster_ = lgb.train(params, lgb.Dataset(X, codes), num_boost_round=rounds)
        self.n_rounds_ = rounds
        return self

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """``(n, len(classes_))`` probabilities, columns in ``classes_`` order."""
        check_is_fitted(self, "booster_", msg="GBDTStacker is not fitted yet: call fit(X, y) first")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        p = self.booster_.predict(X)
        return np.asarray(p).reshape(len(X), len(self.classes_))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """``(n,)`` labels: ``classes_`` of the most probable column."""
        best = self.predict_proba(X).argmax(1)  # first: an unfitted model has no classes_
        return self.classes_[best]

    def save(self, path: str | Path) -> None:
        """The LightGBM model as text; the classes are kept by the caller (ensemble.json)."""
        check_is_fitted(self, "booster_", msg="GBDTStacker is not fitted yet: call fit(X, y) first")
        self.booster_.save_model(str(path))

    @classmethod
    def load(cls, path: str | Path, classes: Sequence) -> GBDTStacker:
        """A fitted estimator from :meth:`save`'s file and the classes it was fit with."""
        import lightgbm as lgb

        est = cls()
        est.booster_ = lgb.Booster(model_file=str(path))
        est.classes_ = np.asarray(classes)
        est.n_features_in_ = est.booster_.num_feature()
        est.n_rounds_ = est.booster_.current_iteration()
        return est


# --------------------------------------------------------------------------- members


@dataclass
class Member:
    name: str
    spec: str
    scores: dict[str, np.ndarray]  # video id -> (K,) probabilities
    classes: list[str]
    notes: list[str] = field(default_factory=list)  # e.g. a run's join report
    hint: str = ""  # why an id may lack scores, appended to the mismatch error


def _run_member(p: Path, store: str | Path, videos: VideoList, device: str) -> Member:
    """A fusion run's scores for the list's videos present in at least one of its sets."""
    from vidfeat.fusion.evaluate import load_run, run_scores

    lr = load_run(p, device=device)
    sub = VideoList(videos.source, videos.records, lr.classes, videos.format)
    probs, ds = run_scores(lr, store, sub)
    # a video absent from every set would be scored on zeros alone; one absent from some sets
    # is scored with those modalities masked, as `fuse eval` does
    seen = {v for v in videos.ids() if any(v in ds.present[m] for m in ds.features)}
    scores = {v: s for v, s in zip(videos.ids(), probs, strict=True) if v in seen}
    notes = [f"{p.name}: {line}" for line in ds.report.lines()]
    hint = f"absent from all of its feature sets ({', '.join(ds.features)})"
    return Member(p.name, str(p), scores, lr.classes, notes, hint)


def member_kind(spec: str) -> str | None:
    """What a member spec names: ``set`` (stored clip scores), ``run`` (a fusion run folder),
    ``scores`` (a score file), or None (nothing: :func:`load_member` says so)."""
    if spec.startswith("set:"):
        return "set"
    p = Path(spec)
    return "run" if p.is_dir() else "scores" if p.is_file() else None


def fitted_members(ens: str | Path) -> list[str]:
    """The member specs an ensemble folder was fit on ([] when it is none)."""
    try:
        return list(json.loads((Path(ens) / "ensemble.json").read_text())["members"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def load_member(
    spec: str, store: str | Path | None, videos: VideoList, device: str = "auto"
) -> Member:
    """Scores of one member for (at least) the videos of the list."""
    p = Path(spec)
    kind = member_kind(spec)
    if kind == "set":
        if store is None:
            raise ConfigError(f"member {spec}: stored scores need --store")
        from vidfeat.store import FeatureStore, score_classes

        fs = FeatureStore(store).open_set(spec[4:])
        # the network's classes (a set's ``classes`` are its list's labels); flow fields and
        # raw VGGish sets may record the list's classes but store no scores
        classes = score_classes(fs.config)
        ids = fs.ids()
        if not classes or (ids and fs.get_extra(ids[0], "scores") is None):
            raise ConfigError(
                f"set {spec[4:]!r} stores no class scores (extract it with a "
                "network that has a classifier: vidfeat extract ... --checkpoint RUN)"
            )
        scores = {}
        for vid in videos.ids():
            if vid in fs:
                s = fs.get_extra(vid, "scores")
                if s is not None:
                    scores[vid] = np.asarray(s, dtype=np.float64)
        return Member(spec[4:], spec, scores, list(classes))
    if kind == "run":
        if store is None:
            raise ConfigError(f"member {spec}: a fusion run needs --store to score the videos")
        return _run_member(p, store, videos, device)
    if kind == "scores":
        with open(p, newline="") as fh:  # cells vidfeat wrote through vidfeat.csvsafe
            rows = [
                {uncell(k): uncell(v) if isinstance(v, str) else v for k, v in r.items()}
                for r in csv.DictReader(fh)
            ]
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
    lacking = [(m, [v for v in ids if v not in m.scores]) for m in members]
    bad = [(m, v) for m, v in lacking if v]
    if bad and not intersect:
        lines = [
            f"{m.name} lacks scores for {len(v)} of {len(ids)} videos: {', '.join(v[:8])}"
            + (" ..." if len(v) > 8 else "")
            + (f" ({m.hint})" if m.hint else "")
            for m, v in bad
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
            raise ConfigError(_other_classes(m, videos, classes))
        order = [m.classes.index(c) for c in classes]
        mats.append(np.stack([m.scores[v][order] for v in keep]))
    return keep, mats


def _names(classes: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(c) for c in list(classes)[:limit])
    return shown + (f" and {len(classes) - limit} more" if len(classes) > limit else "")


def _other_classes(m: Member, videos: VideoList, classes: list[str]) -> str:
    """Why member ``m``'s scores cannot be class predictions for the list: the stacker needs
    every label of the list as a column of every member's scores."""
    missing = [c for c in classes if c not in set(m.classes)]
    extra = [c for c in m.classes if c not in set(classes)]
    why = [f"it never scores {_names(missing)}"] if missing else []
    why += [f"it scores {_names(extra)}, which the list does not label"] if extra else []
    return (
        f"member {m.name} scores other classes than the labels of {videos.source}: its scores "
        f"are over {len(m.classes)} classes ({_names(m.classes)}), the list's labels are "
        f"{len(classes)} classes ({_names(classes)}); {'; '.join(why)}. An ensemble stacks "
        "scores of the list's classes (features of a network trained on other classes go to "
        "`vidfeat fuse train`, which learns the list's labels)"
    )


# --------------------------------------------------------------------------- evaluation


def _scores(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return topk_accuracy(p, y, 1), topk_accuracy(p, y, 5)


@dataclass
class CrossFit:
    oof: np.ndarray  # (n, K) out-of-fold probabilities
    fold_of: np.ndarray  # (n,) the fold whose model scored each row
    models: list[GBDTStacker]  # model f was fit on every fold but f
    folds: int  # used; at most the requested number (see cross_fit)


def cross_fit(
    mats: list[np.ndarray], y: np.ndarray, classes: list[str], est: GBDTStacker, folds: int
) -> CrossFit:
    """Out-of-fold probabilities for every row (stratified K folds, seeded by ``est.seed``).

    ``y``: (n,) indices into ``classes``. Stratification needs every class present in every
    fold, so K is lowered to the number of videos of the rarest class present."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ConfigError(f"--folds must be >= 2 (got {folds})")
    X = np.concatenate(mats, axis=1)
    counts = np.bincount(y, minlength=len(classes))
    rarest = int(counts[counts > 0].min())
    k = min(folds, rarest)
    if k < 2:
        raise ConfigError(
            "cross-fitting needs at least 2 videos of every class present "
            f"(the rarest class has {rarest})"
        )
    labels = np.asarray(classes)[y]
    oof = np.zeros((len(y), len(classes)))
    fold_of = np.zeros(len(y), dtype=np.int64)
    models = []
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=est.seed)
    for f, (tr, te) in enumerate(skf.split(X, y)):
        m = clone(est).fit(X[tr], labels[tr], classes=classes)
        oof[te] = m.predict_proba(X[te])
        fold_of[te] = f
        models.append(m)
    return CrossFit(oof, fold_of, models, k)


@dataclass
class EnsembleReport:
    rows: list[dict]  # the table: model, kind (member/baseline/ensemble/reference), prec1, prec5
    notes: list[str]  # what the user should know about how the numbers were made
    videos: int
    folds: int
    out: Path


def run_ensemble(
    member_specs: list[str],
    store: str | Path | None,
    videos: VideoList,
    out: str | Path,
    *,
    est: GBDTStacker,
    folds: int = 5,
    intersect: bool = False,
    device: str = "auto",
    overwrite: bool = False,
) -> EnsembleReport:
    """Fit and evaluate; writes ENS/ (models, table, out-of-fold scores, bar chart). An ``out``
    that holds other content is refused unless ``overwrite`` (moved aside)."""

    if len(member_specs) < 1:
        raise ConfigError("--members needs at least one member")
    if not videos.labelled:
        raise ConfigError(f"{videos.source}: the ensemble is fit on labelled videos")
    if folds < 2:  # checked here too, so a bad option is named before any output is claimed
        raise ConfigError(f"--folds must be >= 2 (got {folds})")
    out = Path(out)
    claim_out_dir(out, overwrite=overwrite, what="an ensemble")
    classes = videos.classes
    members = [load_member(s, store, videos, device) for s in member_specs]
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"two members share a name: {names}")
    ids, mats = stack(members, videos, classes, intersect)
    notes = [n for m in members for n in m.notes]
    if len(ids) < len(videos):
        notes.append(f"--intersect: {len(videos) - len(ids)} of {len(videos)} videos dropped")
    lookup = {c: i for i, c in enumerate(classes)}
    rec = videos.by_id()
    y = np.array([lookup[rec[v].label] for v in ids])
    cv = cross_fit(mats, y, classes, est, folds)
    if cv.folds < folds:
        notes.append(
            f"--folds {folds} lowered to {cv.folds}: the rarest class has only {cv.folds} videos"
        )
    rows = _table_rows(members, mats, cv.oof, y)
    _save(out, est, members, mats, classes, ids, y, cv, folds, rows, notes)
    return EnsembleReport(rows, notes, len(ids), cv.folds, out)


def _table_rows(members, mats, oof: np.ndarray, y: np.ndarray) -> list[dict]:
    """Each member, the mean of probabilities and the out-of-fold GBDT, on the same videos."""
    rows = []
    for m, sc in zip(members, mats, strict=True):
        p1, p5 = _scores(sc, y)
        rows.append({"model": m.name, "kind": "member", "prec1": p1, "prec5": p5})
    best = max(rows, key=lambda r: r["prec1"])
    p1, p5 = _scores(np.mean(mats, axis=0), y)
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
    return rows


def _save(out: Path, est, members, mats, classes, ids, y, cv, folds, rows, notes) -> None:
    """ENS/: the model fit on every video, the fold models, ensemble.json, the table, the
    out-of-fold scores and the bar chart."""
    from vidfeat.plots import plot_bars

    names = [m.name for m in members]
    X = np.concatenate(mats, axis=1)
    final = clone(est).fit(X, np.asarray(classes)[y], classes=classes)
    final.save(out / "model.txt")
    fold_dir = out / "folds"
    fold_dir.mkdir(exist_ok=True)
    for old in fold_dir.glob("fold-*.txt"):  # a rerun with fewer folds leaves none behind
        old.unlink()
    fold_models = []
    for f, m in enumerate(cv.models):
        m.save(fold_dir / f"fold-{f}.txt")
        fold_models.append(f"folds/fold-{f}.txt")
    meta = {
        "members": [m.spec for m in members],
        "names": names,
        "classes": classes,
        "params": est.get_params(),
        "folds": cv.folds,
        "folds_requested": folds,
        "videos": len(ids),
        "rounds": final.n_rounds_,
        "model": "model.txt",  # fit on all videos; used by `ensemble predict`
        "fold_models": fold_models,  # fold f's model scored the rows of fold f (oof_scores.csv)
        "notes": notes,
    }
    (out / "ensemble.json").write_text(json.dumps(meta, indent=2))
    write_table(rows, out, len(ids), cv.folds, notes)
    with open(out / "oof_scores.csv", "w", newline="") as fh:
        w = csvsafe.writer(fh)
        w.writerow(["video_id", "label", "fold", *classes])
        for i, v in enumerate(ids):
            w.writerow([v, classes[y[i]], int(cv.fold_of[i]), *(f"{x:.6f}" for x in cv.oof[i])])
    plot_bars(
        [(r["model"], r["prec1"], r["prec5"]) for r in rows if r["kind"] != "reference"],
        out / "bars.png",
        title=f"ensemble on {len(ids)} videos ({cv.folds}-fold)",
    )


def write_table(rows: list[dict], out: Path, n: int, folds: int, notes: Sequence[str] = ()) -> None:
    lines = [
        f"Scores on the same {n} videos; the ensemble's are out-of-fold ({folds} folds).",
        "",
        "| model | Prec@1 | Prec@5 |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['model']} | {100 * r['prec1']:.1f} | {100 * r['prec5']:.1f} |" for r in rows]
    if notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in notes)]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    with open(out / "table.csv", "w", newline="") as fh:
        w = csvsafe.dict_writer(fh, fieldnames=["model", "kind", "prec1", "prec5"])
        w.writeheader()
        w.writerows(rows)


def format_table(rows: list[dict]) -> str:
    width = max(len(r["model"]) for r in rows)
    out = [f"{'model':{width}s}  Prec@1  Prec@5"]
    out += [
        f"{r['model']:{width}s}  {100 * r['prec1']:6.1f}  {100 * r['prec5']:6.1f}" for r in rows
    ]
    return "\n".join(out)


@dataclass
class PredictReport:
    videos: int
    notes: list[str]  # the members' notes (e.g. a run's join report)


def predict_ensemble(
    ens: str | Path,
    store: str | Path | None,
    videos: VideoList,
    out: str | Path,
    member_specs: list[str] | None = None,
    device: str = "auto",
) -> PredictReport:
    """Score new videos with the ensemble fit on all videos (members rescored on them)."""
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
    est = GBDTStacker.load(ens / meta.get("model", "model.txt"), classes)
    X = np.concatenate(mats, axis=1)
    p = est.predict_proba(X)
    from vidfeat.fusion.evaluate import write_scores_csv

    write_scores_csv(Path(out), ids, p, classes, None, top=5)
    return PredictReport(len(ids), [n for m in members for n in m.notes])
