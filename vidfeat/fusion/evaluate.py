"""Using a trained fusion run: load it from its folder, check a store against the feature sets
it was trained on, then evaluate (metrics, per-video scores, per-class accuracy, confusion
plot) or predict (per-video scores and top-5 labels) on a list of videos.

The run folder is the one :mod:`fusion.trainer` writes; a run is rebuilt from it alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vidfeat import csvsafe
from vidfeat.device import resolve_device
from vidfeat.errors import ConfigError, RunError
from vidfeat.fusion.config import FuseConfig, read_fuse_config
from vidfeat.fusion.data import FusionDataset, load_norm, set_fingerprint
from vidfeat.fusion.trainer import build_head, load_state, predict_scores
from vidfeat.metrics import confusion_matrix, summarize
from vidfeat.models.config import CONFIG_YAML
from vidfeat.nets.torchfile import fit_state
from vidfeat.outdir import claim_out_dir
from vidfeat.plots import plot_confusion
from vidfeat.precision import Precision, resolve_precision
from vidfeat.videolist import VideoList, load_list, read_classes


@dataclass
class LoadedRun:
    path: Path
    config: FuseConfig
    classes: list[str]
    model: nn.Module
    norm: dict
    sets: dict
    device: torch.device
    precision: Precision


def load_run(
    run: str | Path, *, device: str = "auto", checkpoint: str = "best.pt", precision: str = "auto"
) -> LoadedRun:
    """The fusion run in folder ``run``: its config, classes, head with the weights of
    ``checkpoint``, normalisation and feature sets, to run on ``device`` in ``precision``
    (``--precision``, resolved there). Raises :class:`RunError` when ``run`` is
    no fusion run or its ``config.yaml`` is not a fusion run's (naming the file and the key)."""
    run = Path(run)
    if not (run / CONFIG_YAML).is_file():
        raise RunError(
            run,
            None,
            f"not a fusion run folder (no {CONFIG_YAML}); pass the --out folder of "
            "`vidfeat fuse train`",
        )
    cfg = read_fuse_config(run / CONFIG_YAML)
    classes = read_classes(run / "classes.txt")
    meta = json.loads((run / "feature_sets.json").read_text())
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model = build_head(cfg, meta["dims"], len(classes))
    state = load_state(run / checkpoint)
    if "optimizer" in state:  # last.pt: the training state around the weights
        state = state["model"]
    fit_state(
        model, state, f"{run / checkpoint}: refused, not a plain state dict of this run's head"
    )
    model.to(dev).eval()
    norm = load_norm(run / "norm.npz")
    return LoadedRun(run, cfg, classes, model, norm, meta["sets"], dev, prec)


def check_store_matches(lr: LoadedRun, store: str | Path) -> None:
    """Refuse a store whose feature sets differ from those the run was trained on."""
    from vidfeat.fusion.data import open_sets
    from vidfeat.store import identity

    sets = open_sets(store, lr.config.features)
    for m, fs in sets.items():
        want = lr.sets[m]["config"]
        got = fs.config
        if set_fingerprint(got) != lr.sets[m]["fingerprint"]:
            want, got = identity(want), identity(got)
            keys = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            detail = ", ".join(f"{k}: run {want.get(k)!r} vs store {got.get(k)!r}" for k in keys)
            raise ConfigError(
                f"feature set {m!r} of {store} differs from the one run {lr.path} was trained "
                f"on ({detail}); extract features with the same configuration or retrain"
            )


def run_scores(lr: LoadedRun, store: str | Path, videos: VideoList, batch_size: int = 64):
    check_store_matches(lr, store)
    ds = FusionDataset(store, lr.config.features, videos, norm=lr.norm, cache=False)
    loader = DataLoader(ds, batch_size=batch_size)
    return predict_scores(lr.model, loader, lr.device, lr.precision), ds


def evaluate(
    run: str | Path,
    store: str | Path,
    videos_path: str | Path,
    *,
    device: str = "auto",
    name: str | None = None,
    video_root=None,
    overwrite: bool = False,
    precision: str = "auto",
) -> dict:
    """Prec@1/5 and mean class accuracy; writes RUN/eval-<name>/ (scores.csv, per_class.csv,
    confusion.png). An earlier evaluation of that name is refused unless ``overwrite``."""
    lr = load_run(run, device=device, precision=precision)
    videos = load_list(videos_path, classes=lr.classes, require_labels=True, video_root=video_root)
    check_store_matches(lr, store)  # a store that cannot be evaluated is named first
    out = lr.path / f"eval-{name or Path(videos_path).stem}"
    claim_out_dir(out, overwrite=overwrite, what="an evaluation (or pick another --name)")
    scores, ds = run_scores(lr, store, videos)
    labels = np.asarray(videos.label_indices())
    res = summarize(scores, labels, len(lr.classes))
    res["videos"] = len(videos)
    res["precision"] = lr.precision.name
    res["notes"] = ds.report.lines()
    write_scores_csv(out / "scores.csv", videos.ids(), scores, lr.classes, labels)
    cm = confusion_matrix(scores.argmax(1), labels, len(lr.classes))
    with open(out / "per_class.csv", "w", newline="") as fh:
        w = csvsafe.writer(fh, lineterminator="\n")
        w.writerow(["class", "videos", "accuracy"])
        for k, c in enumerate(lr.classes):
            n = cm[k].sum()
            w.writerow([c, n, f"{cm[k, k] / n if n else float('nan'):.4f}"])
    plot_confusion(cm, lr.classes, out / "confusion.png")
    (out / "metrics.json").write_text(json.dumps(res, indent=2))
    res["out"] = str(out)
    return res


def predict(
    run: str | Path,
    store: str | Path,
    videos_path: str | Path,
    out: str | Path,
    *,
    device: str = "auto",
    video_root=None,
    precision: str = "auto",
) -> int:
    """Per-video class scores + top-5 labels (CSV) for a list, labelled or not."""
    from dataclasses import replace

    lr = load_run(run, device=device, precision=precision)
    listed = load_list(videos_path, video_root=video_root)
    # prediction ignores labels: a list may carry labels the run never saw
    videos = VideoList(
        listed.source, [replace(r, label=None) for r in listed.records], lr.classes, listed.format
    )
    scores, _ = run_scores(lr, store, videos)
    write_scores_csv(Path(out), videos.ids(), scores, lr.classes, None, top=5)
    return len(videos)


def write_scores_csv(
    path: Path,
    ids: list[str],
    scores: np.ndarray,
    classes: list[str],
    labels: np.ndarray | None,
    top: int = 0,
) -> None:
    with open(path, "w", newline="") as fh:
        w = csvsafe.writer(fh)
        head = ["video_id"] + (["label"] if labels is not None else [])
        head += [f"top{k + 1}" for k in range(min(top, len(classes)))] + classes
        w.writerow(head)
        for i, vid in enumerate(ids):
            row = [vid] + ([classes[labels[i]]] if labels is not None else [])
            order = np.argsort(-scores[i])[: min(top, len(classes))]
            row += [classes[k] for k in order] + [f"{v:.6f}" for v in scores[i]]
            w.writerow(row)
