"""Head-agnostic training, evaluation and prediction of fusion heads on stored features.

A run folder holds everything needed to rebuild and audit it:

    RUN/config.yaml        the FuseConfig (store, features, head + options, optimiser, ...)
    RUN/classes.txt        the class index (sorted training labels)
    RUN/feature_sets.json  each feature set's set.json and its fingerprint (sha256)
    RUN/norm.npz           per-modality mean/std computed on the training split
    RUN/best.pt, last.pt   state dicts (loaded with weights_only=True)
    RUN/metrics.jsonl      one line per epoch
    RUN/curves.png         loss and accuracy per epoch
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from fusion.data import FusionDataset, load_norm, save_norm, set_fingerprint
from vidfeat.device import resolve_device
from vidfeat.errors import ConfigError
from vidfeat.metrics import confusion_matrix, summarize
from vidfeat.plots import plot_confusion, plot_curves
from vidfeat.videolist import VideoList, load_list, read_classes, write_classes


@dataclass
class FuseConfig:
    store: str
    features: list[str]
    head: str
    train: str
    val: str | None = None
    head_options: dict = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adam | adamw
    schedule: str = "cosine"  # cosine | step (x0.1 at 1/3 and 2/3, the paper's habit)
    early_stop: int = 0  # stop after this many epochs without a better val Prec@1 (0 = never)
    augment: bool = True  # random temporal subsampling of training sequences
    cache: bool = True  # read each split into memory once (the synthetic sets fit easily)
    workers: int = 0  # DataLoader worker processes
    seed: int = 0
    device: str = "auto"
    video_root: str | None = None

    def validate(self) -> None:
        for name, val, lo in [
            ("--epochs", self.epochs, 1),
            ("--batch-size", self.batch_size, 1),
            ("--workers", self.workers, 0),
            ("--early-stop", self.early_stop, 0),
        ]:
            if val < lo:
                raise ConfigError(f"{name} must be >= {lo} (got {val})")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0 (got {self.lr})")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0 (got {self.weight_decay})")
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"--optimizer must be adam or adamw (got {self.optimizer})")
        if self.schedule not in ("cosine", "step"):
            raise ConfigError(f"--schedule must be cosine or step (got {self.schedule})")


def _to(batch: dict, device: torch.device) -> tuple[dict, dict, torch.Tensor]:
    feats = {m: v.to(device, non_blocking=True) for m, v in batch["feats"].items()}
    masks = {m: v.to(device, non_blocking=True) for m, v in batch["masks"].items()}
    return feats, masks, torch.as_tensor(batch["label"], device=device)


def build_head(cfg: FuseConfig, dims: dict[str, int], num_classes: int) -> nn.Module:
    from fusion.heads import create_head

    return create_head(cfg.head, dims, num_classes, **cfg.head_options)


@torch.no_grad()
def predict_scores(model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Softmax class probabilities ``(N, K)`` in dataset order."""
    model.eval()
    out = []
    for batch in loader:
        feats, masks, _ = _to(batch, device)
        out.append(torch.softmax(model(feats, masks).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def train(cfg: FuseConfig, out: str | Path, *, progress: bool = True, echo=print) -> dict:
    """Fit a head; keeps the best checkpoint by validation Prec@1. Returns the best metrics."""
    from tqdm import tqdm

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    train_list = load_list(cfg.train, video_root=cfg.video_root, require_labels=True)
    classes = train_list.classes
    val_list = (
        load_list(cfg.val, video_root=cfg.video_root, classes=classes, require_labels=True)
        if cfg.val
        else None
    )
    train_ds = FusionDataset(
        cfg.store, cfg.features, train_list, augment=cfg.augment, cache=cfg.cache, seed=cfg.seed
    )
    for line in train_ds.report.lines():
        echo(f"train: {line}")
    norm = train_ds.compute_norm()
    train_ds.norm = norm
    val_ds = None
    if val_list is not None:
        val_ds = FusionDataset(cfg.store, cfg.features, val_list, norm=norm, cache=cfg.cache)
        for line in val_ds.report.lines():
            echo(f"val: {line}")
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_classes(out / "classes.txt", classes)
    save_norm(out / "norm.npz", norm)
    sets = {
        m: {"config": c, "fingerprint": set_fingerprint(c)} for m, c in train_ds.configs.items()
    }
    (out / "feature_sets.json").write_text(
        json.dumps({"dims": train_ds.dims, "T": train_ds.T, "sets": sets}, indent=2, default=str)
    )
    model = build_head(cfg, train_ds.dims, len(classes)).to(device)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_ds) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[total // 3, 2 * total // 3], gamma=0.1
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        drop_last=len(train_ds) > cfg.batch_size,
    )
    val_loader = (
        DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=cfg.workers)
        if val_ds is not None
        else None
    )
    loss_fn = nn.CrossEntropyLoss()
    best: dict = {}
    since_best = 0
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    history = []
    bar = tqdm(range(cfg.epochs), desc=f"fuse {cfg.head}", unit="epoch", disable=not progress)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            train_ds.set_epoch(epoch)
            model.train()
            losses, correct, seen = [], 0, 0
            for batch in loader:
                feats, masks, y = _to(batch, device)
                logits = model(feats, masks)
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            row = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "train_prec1": correct / max(seen, 1),
                "lr": opt.param_groups[0]["lr"],
            }
            if val_loader is not None:
                scores = predict_scores(model, val_loader, device)
                labels = np.asarray(val_ds.labels)
                s = summarize(scores, labels, len(classes))
                val_loss = float(
                    nn.functional.nll_loss(
                        torch.log(torch.from_numpy(scores).clamp_min(1e-12)),
                        torch.from_numpy(labels),
                    )
                )
                row.update(
                    val_loss=val_loss,
                    val_prec1=s["prec1"],
                    val_prec5=s["prec5"],
                    val_mean_class_acc=s["mean_class_acc"],
                )
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            key = row.get("val_prec1", -row["train_loss"])
            if not best or key > best.get("_key", -math.inf):
                best = {**row, "_key": key}
                torch.save(model.state_dict(), out / "best.pt")
                since_best = 0
            else:
                since_best += 1
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}", val=f"{row.get('val_prec1', float('nan')):.3f}"
            )
            if cfg.early_stop and since_best >= cfg.early_stop:
                echo(
                    f"early stop after epoch {epoch + 1}: no better val Prec@1 for "
                    f"{cfg.early_stop} epochs"
                )
                break
    finally:
        torch.save(model.state_dict(), out / "last.pt")
        if history:
            plot_curves(
                history, out / "curves.png", title=f"{cfg.head} on {','.join(cfg.features)}"
            )
    best.pop("_key", None)
    return best


# --------------------------------------------------------------------------- using a run


@dataclass
class LoadedRun:
    path: Path
    config: FuseConfig
    classes: list[str]
    model: nn.Module
    norm: dict
    sets: dict
    device: torch.device


def load_run(run: str | Path, *, device: str = "auto", checkpoint: str = "best.pt") -> LoadedRun:
    run = Path(run)
    if not (run / "config.yaml").exists():
        raise ConfigError(
            f"{run} is not a fusion run folder (no config.yaml); "
            "pass the --out folder of `vidfeat fuse train`"
        )
    raw = yaml.safe_load((run / "config.yaml").read_text())
    cfg = FuseConfig(**raw)
    classes = read_classes(run / "classes.txt")
    meta = json.loads((run / "feature_sets.json").read_text())
    dev = resolve_device(device)
    model = build_head(cfg, meta["dims"], len(classes))
    try:
        state = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{run / checkpoint} not found; was training interrupted?") from None
    except Exception as exc:  # noqa: BLE001 - pickle payloads and corrupt files alike
        raise ConfigError(f"{run / checkpoint}: not a plain state dict ({exc})") from None
    model.load_state_dict(state)
    model.to(dev).eval()
    return LoadedRun(run, cfg, classes, model, load_norm(run / "norm.npz"), meta["sets"], dev)


def check_store_matches(lr: LoadedRun, store: str | Path) -> None:
    """Refuse a store whose feature sets differ from those the run was trained on."""
    from fusion.data import open_sets
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
    return predict_scores(lr.model, loader, lr.device), ds


def evaluate(
    run: str | Path,
    store: str | Path,
    videos_path: str | Path,
    *,
    device: str = "auto",
    name: str | None = None,
    video_root=None,
) -> dict:
    """Prec@1/5 and mean class accuracy; writes RUN/eval-<name>/ (scores.csv, per_class.csv,
    confusion.png)."""
    lr = load_run(run, device=device)
    videos = load_list(videos_path, classes=lr.classes, require_labels=True, video_root=video_root)
    scores, ds = run_scores(lr, store, videos)
    labels = np.asarray(videos.label_indices())
    res = summarize(scores, labels, len(lr.classes))
    res["videos"] = len(videos)
    res["notes"] = ds.report.lines()
    out = lr.path / f"eval-{name or Path(videos_path).stem}"
    out.mkdir(exist_ok=True)
    write_scores_csv(out / "scores.csv", videos.ids(), scores, lr.classes, labels)
    cm = confusion_matrix(scores.argmax(1), labels, len(lr.classes))
    with open(out / "per_class.csv", "w") as fh:
        fh.write("class,videos,accuracy\n")
        for k, c in enumerate(lr.classes):
            n = cm[k].sum()
            fh.write(f"{c},{n},{cm[k, k] / n if n else float('nan'):.4f}\n")
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
) -> int:
    """Per-video class scores + top-5 labels (CSV) for a list, labelled or not."""
    from dataclasses import replace

    lr = load_run(run, device=device)
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
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        head = ["video_id"] + (["label"] if labels is not None else [])
        head += [f"top{k + 1}" for k in range(min(top, len(classes)))] + classes
        w.writerow(head)
        for i, vid in enumerate(ids):
            row = [vid] + ([classes[labels[i]]] if labels is not None else [])
            order = np.argsort(-scores[i])[: min(top, len(classes))]
            row += [classes[k] for k in order] + [f"{v:.6f}" for v in scores[i]]
            w.writerow(row)
