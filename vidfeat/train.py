"""The training loop of a modality network (RGB / flow / audio) on labelled videos.

The run folder it writes (its format, config and loading belong to :mod:`vidfeat.models`):

    RUN/config.yaml     everything needed to rebuild the model and its input pipeline
    RUN/classes.txt     the class index
    RUN/best.pt         state dict of the best epoch by validation Prec@1 (weights_only load)
    RUN/last.pt         state dict + optimiser state of the last epoch (for --resume)
    RUN/metrics.jsonl   one line per epoch
    RUN/curves.png      loss and accuracy per epoch

SGD with momentum and a step schedule (x0.1 at 1/3 and 2/3 of training) by default, as in the
paper. On CUDA: mixed precision (bf16 where supported, else fp16 with a scaler) and
channels_last. Ctrl-C saves ``last.pt`` before stopping. Checkpoints and ``config.yaml`` are
written atomically (:func:`vidfeat.outdir.atomic_write`): a crash mid-save leaves the previous
``best.pt`` / ``last.pt`` whole.
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

from vidfeat.clips import on_input
from vidfeat.device import resolve_device
from vidfeat.errors import ConfigError
from vidfeat.metrics import summarize
from vidfeat.models.build import build_model, load_trained
from vidfeat.models.config import TrainConfig, explicit_net_options, read_run_config
from vidfeat.models.folder import resolve_run
from vidfeat.outdir import atomic_write, claim_out_dir, remove_stale_temps, write_atomic
from vidfeat.plots import plot_curves
from vidfeat.precision import resolve_name, resolve_precision
from vidfeat.schedule import lr_factor
from vidfeat.videolist import VideoList, load_list, read_classes, write_classes

# --------------------------------------------------------------------------- data


def build_dataset(cfg: TrainConfig, videos: VideoList, train: bool, segments: int | None = None):
    from vidfeat.clips import AudioClips, ClipSpec, FlowClips, RGBClips

    spec = ClipSpec(
        segments or (cfg.segments if train else cfg.test_segments),
        cfg.frames,
        cfg.size,
        cfg.short_side,
        train,
        flip=cfg.flip,
    )
    if cfg.modality == "rgb":  # uint8 crops, normalised on the device (on_input)
        return RGBClips(videos, spec, layout=cfg.arch, seed=cfg.seed, normalize=False)
    if cfg.modality == "flow":
        return FlowClips(videos, spec, cfg.store, cfg.fields_set, seed=cfg.seed)
    return AudioClips(videos, spec, seed=cfg.seed)


def make_loader(
    ds, batch_size: int, workers: int, shuffle: bool, device: torch.device, seed: int = 0
) -> DataLoader:
    from vidfeat.clips import EpochSampler, collate

    return DataLoader(
        ds,
        batch_size=batch_size,
        # the sampler hands each index to the workers with its epoch: persistent workers keep
        # their own copy of the dataset, so ds.set_epoch() in this process would not reach them
        sampler=EpochSampler(len(ds), shuffle, seed),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=False,
        # the loader's base seed comes from its own generator, not torch's global one: a
        # workers=0 loader draws it every epoch, persistent workers once, and each draw would
        # shift the dropout masks of the steps that follow (weights would follow --workers)
        generator=torch.Generator().manual_seed(seed),
    )


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, n: int, dtype: torch.dtype | None
):
    """Softmax scores (n, K) in dataset order, NaN rows for videos that failed to load;
    ``dtype``: the autocast dtype of the run's precision (None: float32)."""
    model.eval()
    scores: np.ndarray | None = None
    errors = []
    for batch in loader:
        errors += batch["errors"]
        if "x" not in batch:
            continue
        x = on_input(loader, batch["x"].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        p = torch.softmax(logits.float(), 1).cpu().numpy()
        if scores is None:
            scores = np.full((n, p.shape[1]), np.nan, dtype=np.float32)
        scores[batch["index"]] = p
    return scores, errors


# --------------------------------------------------------------------------- training


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo=print,
) -> dict:
    """Train and validate each epoch; returns the best epoch's metrics. A folder that already
    holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (start again; the
    old run is moved aside)."""
    cfg.validate()
    out = Path(out)
    claim_out_dir(out, resume=resume, overwrite=overwrite, what="a training run")
    remove_stale_temps(out)  # half-written checkpoints of a killed run
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    cfg.precision = resolve_name(cfg.precision, device)  # config.yaml records what runs
    train_list, val_list, classes = _load_lists(cfg, echo)
    _write_run(cfg, out, classes, resume)
    fit = _build(cfg, out, device, train_list, classes)
    if cfg.init and not (resume and (out / "last.pt").exists()):
        _init_from(fit, echo)
    start_epoch = _start(fit, resume, echo)
    val_loader = None
    if val_list is not None:
        val_ds = build_dataset(cfg, val_list, False)
        val_loader = make_loader(val_ds, cfg.batch_size, cfg.workers, False, device)
    metrics_path = out / "metrics.jsonl"
    fit.history = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    fit.epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            fit.epoch = epoch
            t0 = time.perf_counter()
            row = _train_epoch(fit, epoch, progress=progress, echo=echo)
            if val_loader is not None and val_list is not None:
                row.update(_validate(fit, val_loader, val_list))
            row["seconds"] = time.perf_counter() - t0
            _record(fit, row)
            echo(_epoch_line(row))
    except KeyboardInterrupt:
        fit.save_last()
        echo(f"interrupted: saved {out / 'last.pt'}; continue with --resume")
        raise
    finally:
        if fit.history:
            plot_curves(
                fit.history, out / "curves.png", title=f"{cfg.modality} {cfg.arch} {cfg.backbone}"
            )
    fit.best.pop("key", None)
    return fit.best


def _load_lists(cfg: TrainConfig, echo) -> tuple[VideoList, VideoList | None, list[str]]:
    """Step 1: the training and validation lists and the class index (of the whole training
    list, before audio training leaves out the videos without a sound track)."""
    train_list = load_list(cfg.train, video_root=cfg.video_root, require_labels=True)
    classes = train_list.classes
    val_list = (
        load_list(cfg.val, video_root=cfg.video_root, classes=classes, require_labels=True)
        if cfg.val
        else None
    )
    for vl in (train_list, val_list):
        note = vl.missing_note() if vl is not None else None
        if note:
            echo(f"note: {note}")
    if cfg.modality == "audio":
        train_list, dropped = videos_with_audio(train_list)
        if dropped:
            echo(
                f"audio: {dropped} of {dropped + len(train_list)} training videos have no audio "
                "track; they are left out of audio training"
            )
    return train_list, val_list, classes


def _write_run(cfg: TrainConfig, out: Path, classes: list[str], resume: bool) -> None:
    """Step 2: config.yaml and classes.txt (resuming: after checking the run's own)."""
    if cfg.init:
        from vidfeat.provenance import file_sha256

        cfg.init_sha256 = file_sha256(resolve_run(cfg.init, flag="--init").checkpoint, "--init")
    if resume:
        old = out / "config.yaml"
        if not old.exists():
            raise ConfigError(f"--resume: {out} holds no config.yaml to resume")
        classes_old = read_classes(out / "classes.txt")
        if classes_old != classes:
            raise ConfigError(f"--resume: the class index of {out} differs from this list's")
        was = asdict(read_run_config(old))
        was["net_options"] = explicit_net_options(
            was["arch"], was["modality"], was.get("net_options") or {}, legacy=True
        )
        # options not asked again are the run's own; asked ones must agree (checked below)
        cfg.net_options = {**was["net_options"], **cfg.net_options}
        if cfg.init is None:  # a fine-tuned run resumes without naming its --init again
            cfg.init, cfg.init_sha256 = was.get("init"), was.get("init_sha256")
        _check_resume(was, asdict(cfg), out)
    else:
        cfg.net_options = explicit_net_options(cfg.arch, cfg.modality, cfg.net_options)
    write_atomic(out / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_classes(out / "classes.txt", classes)


@dataclass
class _Fit:
    """What the epochs of one run work with and where they stand."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    train_list: VideoList
    classes: list[str]
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None  # autocast dtype (None: full precision)
    loader: DataLoader
    steps: int  # optimiser steps per epoch
    epoch: int = 0  # epochs completed (what last.pt records)
    best: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    bad_ids: set[int] = field(default_factory=set)  # unreadable videos, reported once

    def save_last(self) -> None:
        _save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "epoch": self.epoch,
                "best": self.best,
            },
            self.out / "last.pt",
        )


def _save_checkpoint(obj: dict, path: Path) -> None:
    """``torch.save`` whole or not at all: a kill mid-save leaves the previous file intact."""
    with atomic_write(path) as fh:
        torch.save(obj, fh)


def _build(
    cfg: TrainConfig, out: Path, device: torch.device, train_list: VideoList, classes: list[str]
) -> _Fit:
    """Step 3: model, optimiser, the training loader, the schedule and mixed precision."""
    model = build_model(cfg, len(classes)).to(device)
    prec = resolve_precision(cfg.precision, device, model)
    model = prec.prepare(model)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_ds = build_dataset(cfg, train_list, True)
    loader = make_loader(train_ds, cfg.batch_size, cfg.workers, True, device, cfg.seed)
    steps = max(1, math.ceil(len(train_ds) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.schedule, cfg.epochs * steps))
    dtype = prec.dtype
    # fp16's narrow range needs loss scaling; bf16 has float32's
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return _Fit(
        cfg, out, device, train_list, classes, model, opt, sched, scaler, dtype, loader, steps
    )


INIT_FIXED = ("modality", "arch", "backbone", "frames", "net_options", "width")


def _init_from(fit: _Fit, echo) -> None:
    """Fine-tuning: start from every weight of ``cfg.init``'s network except the classifier,
    which is rebuilt for this list's classes (kept when the class lists are equal)."""
    cfg = fit.cfg
    src = load_trained(cfg.init)
    for k in INIT_FIXED:
        if getattr(src.config, k) != getattr(cfg, k):
            raise ConfigError(
                f"--init {cfg.init}: its {k} is {getattr(src.config, k)!r}, this run asks "
                f"{getattr(cfg, k)!r}; leave the option out to take the run's"
            )
    state = src.model.state_dict()
    head = [k for k in state if k.startswith("fc.")]
    same_classes = src.classes == fit.classes
    if not same_classes:
        state = {k: v for k, v in state.items() if k not in head}
    missing, unexpected = fit.model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(head):
        raise ConfigError(
            f"--init {cfg.init}: the networks differ (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    how = "kept" if same_classes else f"rebuilt for {len(fit.classes)} classes"
    echo(f"init: every weight of {cfg.init} but the classifier ({how})")


def _start(fit: _Fit, resume: bool, echo) -> int:
    """Step 4: the first epoch to train. Resuming restores last.pt (when there is one) and
    the schedule's position; a new run starts an empty metrics.jsonl."""
    cfg, out = fit.cfg, fit.out
    if resume and (out / "last.pt").exists():
        state = _read_last(fit, out / "last.pt")
        start_epoch = state["epoch"]
        # the schedule follows this run's --epochs (it may have grown), from the first step of
        # the epoch that starts now (an epoch cut by Ctrl-C is redone)
        fit.sched.last_epoch = start_epoch * fit.steps
        factor = lr_factor(cfg.schedule, cfg.epochs * fit.steps)
        for g in fit.opt.param_groups:
            g["lr"] = cfg.lr * factor(fit.sched.last_epoch)
        fit.best = {k: v for k, v in state.get("best", {}).items()}
        echo(f"resuming {out} after epoch {start_epoch}")
        return start_epoch
    if not resume:
        (out / "metrics.jsonl").write_text("")
    return 0


def _read_last(fit: _Fit, path: Path) -> dict:
    """last.pt (read by :func:`~vidfeat.nets.torchfile.load_torch_file`) restored into the
    network and the optimiser; anything but what :meth:`_Fit.save_last` writes, for this
    network and optimiser, is refused with a :class:`ConfigError` naming the file."""
    from vidfeat.nets.torchfile import fit_state, load_torch_file

    state = load_torch_file(path, "--resume")
    if not isinstance(state, dict):
        state = {}
    epoch, best = state.get("epoch"), state.get("best", {})
    if (
        not isinstance(state.get("model"), dict)
        or not isinstance(state.get("optimizer"), dict)
        or type(epoch) is not int
        or epoch < 0
        or not isinstance(best, dict)
        or not isinstance(best.get("key", 0.0), int | float)
    ):
        raise ConfigError(
            f"--resume {path}: not a last.pt of vidfeat train (model, optimizer, epoch, best)"
        )
    refusal = f"--resume {path} does not fit this run's network and optimiser"
    fit_state(fit.model, state["model"], refusal)
    fit_state(fit.opt, state["optimizer"], refusal)
    return state


def _train_epoch(fit: _Fit, epoch: int, *, progress: bool, echo) -> dict:
    """Step 5: one pass over the training videos; the epoch's first metrics (loss, Prec@1,
    learning rate). Unreadable videos are skipped and named once."""
    from tqdm import tqdm

    cfg, model, opt, device = fit.cfg, fit.model, fit.opt, fit.device
    fit.loader.sampler.set_epoch(epoch)
    # dropout of this epoch: a function of (seed, epoch), so a resumed run draws what an uncut
    # one draws, whatever ran before (validation, loaders, a restored checkpoint)
    torch.manual_seed(int(np.random.SeedSequence([cfg.seed, epoch]).generate_state(1)[0]))
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    losses, correct, seen = [], 0, 0
    bar = tqdm(
        fit.loader,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    for batch in bar:
        for idx, err in batch["errors"]:
            if idx not in fit.bad_ids:
                fit.bad_ids.add(idx)
                echo(f"skipping unreadable video {fit.train_list.records[idx].video_id}: {err[1]}")
        if "x" not in batch:
            continue
        x = on_input(fit.loader, batch["x"].to(device, non_blocking=True))
        y = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=fit.dtype, enabled=fit.dtype is not None):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(opt)
        fit.scaler.update()
        fit.sched.step()
        losses.append(loss.item())
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    if not losses:
        raise ConfigError("no training video could be read; check `vidfeat data probe`")
    return {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(losses)),
        "train_prec1": correct / max(seen, 1),
        "lr": opt.param_groups[0]["lr"],
    }


def _validate(fit: _Fit, loader: DataLoader, videos: VideoList) -> dict:
    """Step 6: Prec@1/5 and mean class accuracy on the readable validation videos."""
    scores, errors = predict(fit.model, loader, fit.device, len(videos), fit.dtype)
    if scores is None:
        raise ConfigError(
            f"no validation video of {fit.cfg.val} could be read; check `vidfeat data probe` on it"
        )
    ok = ~np.isnan(scores).any(1)
    labels = np.asarray(videos.label_indices())
    s = summarize(scores[ok], labels[ok], len(fit.classes))
    row = {
        "val_prec1": s["prec1"],
        "val_prec5": s["prec5"],
        "val_mean_class_acc": s["mean_class_acc"],
        "val_videos": int(ok.sum()),
    }
    if errors:
        row["val_unreadable"] = len(errors)
    return row


def _record(fit: _Fit, row: dict) -> None:
    """Step 7: the epoch's metrics line, best.pt when it is the best so far, then last.pt."""
    fit.history.append(row)
    with open(fit.out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    key = row.get("val_prec1", row["train_prec1"])
    if not fit.best or key > fit.best["key"]:
        fit.best = {"key": key, **row}
        _save_checkpoint(fit.model.state_dict(), fit.out / "best.pt")
    fit.epoch += 1
    fit.save_last()


def _epoch_line(row: dict) -> str:
    return (
        f"epoch {row['epoch']}: loss {row['train_loss']:.3f}, train Prec@1 "
        f"{row['train_prec1']:.3f}"
        + (
            f", val Prec@1 {row['val_prec1']:.3f} Prec@5 {row['val_prec5']:.3f}"
            if "val_prec1" in row
            else ""
        )
        + f" ({row['seconds']:.0f}s)"
    )


# what may change when a run is resumed, and the flags that set them (the message lists these)
RESUMABLE_CHANGES = {
    "epochs": "--epochs",
    "workers": "--workers",
    "device": "--device",
    "precision": "--precision",
    "video_root": "--video-root",
    "train": "--videos",
    "val": "--val",
    "store": "--store",
}


def _check_resume(old: dict, new: dict, out: Path) -> None:
    """Refuse to resume with options that change the model or its training."""
    diff = sorted(
        k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)
    )
    if diff:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in diff)
        now = ", ".join(f"{k}={new.get(k)!r}" for k in diff)
        raise ConfigError(
            f"--resume: {out} was trained with {was}; this run asks {now}. Resume with the "
            f"same options (only {', '.join(RESUMABLE_CHANGES.values())} may change) or use a "
            "new --out"
        )


def videos_with_audio(videos: VideoList) -> tuple[VideoList, int]:
    """The videos that have an audio track (probe), and how many were left out."""
    from vidfeat.decode import probe
    from vidfeat.errors import DecodeError

    keep = set()
    for r in videos.records:
        try:
            if probe(r.path, count_frames=False).has_audio:
                keep.add(r.video_id)
        except DecodeError:
            keep.add(r.video_id)  # unreadable: let the loader report it
    sub = videos.subset(keep)
    return sub, len(videos) - len(sub)
