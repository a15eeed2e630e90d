"""Head-agnostic training of fusion heads on stored features: the config, the run folder and
the loop. Loading a finished run, evaluation and prediction live in :mod:`fusion.evaluate`;
the torchrun context and collectives in :mod:`fusion.dist`.

A run folder holds everything needed to rebuild, audit and continue it:

    RUN/config.yaml        the FuseConfig (store, features, head + options, optimiser, ...)
    RUN/classes.txt        the class index (sorted training labels)
    RUN/feature_sets.json  each feature set's set.json and its fingerprint (sha256), and the
                           sha256 of the train/val lists
    RUN/norm.npz           per-modality mean/std computed on the training split
    RUN/best.pt            state dict of the best epoch (loaded with weights_only=True)
    RUN/last.pt            the training state: model, optimiser, position (epoch, step), best
                           so far, early-stopping counter (plain tensors and numbers only)
    RUN/metrics.jsonl      one line per epoch
    RUN/curves.png         loss and accuracy per epoch

Resuming (``resume=True``) continues exactly where last.pt stands, even inside an epoch: the
batch order is a function of (seed, epoch), the random state of every step a function of
(seed, epoch, step, rank) and the learning rate a function of the step, so a run cut by Ctrl-C
and resumed ends with the same weights as one that was never cut.

Under ``torchrun`` (WORLD_SIZE > 1) every process trains a DistributedDataParallel replica on
its share of each global batch (``batch_size / world``); the shares of step s are exactly the
samples a single process would use at step s, so the averaged gradient is the same. Rank 0
alone writes the run folder, validates and shows progress.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.fusion.config import FuseConfig, read_fuse_config
from vidfeat.fusion.data import FusionDataset, load_norm, save_norm, set_fingerprint
from vidfeat.fusion.dist import (
    DistContext,
    all_sum,
    any_rank,
    dist_from_env,
    processes,
    share,
    stop_requested,
)
from vidfeat.metrics import summarize
from vidfeat.models.config import CONFIG_YAML
from vidfeat.nets.torchfile import fit_state
from vidfeat.outdir import atomic_write, claim_out_dir, remove_stale_temps, write_atomic
from vidfeat.plots import plot_curves
from vidfeat.precision import Precision, resolve_name
from vidfeat.provenance import file_sha256
from vidfeat.schedule import lr_factor
from vidfeat.stop import StopSignals, ignore_stop_signals
from vidfeat.videolist import load_list, read_classes, write_classes


class TrainingInterrupted(VidfeatError):
    """Ctrl-C or SIGTERM stopped training after a whole step; last.pt holds the state."""

    exit_code = 130  # the shell's code for "ended by SIGINT"


def _to(batch: dict, device: torch.device) -> tuple[dict, dict, torch.Tensor]:
    feats = {m: v.to(device, non_blocking=True) for m, v in batch["feats"].items()}
    masks = {m: v.to(device, non_blocking=True) for m, v in batch["masks"].items()}
    return feats, masks, torch.as_tensor(batch["label"], device=device)


def build_head(cfg: FuseConfig, dims: dict[str, int], num_classes: int) -> nn.Module:
    from vidfeat.fusion.heads import create_head

    return create_head(cfg.head, dims, num_classes, **cfg.head_options)


@torch.no_grad()
def predict_scores(
    model: nn.Module, loader: DataLoader, device: torch.device, precision: Precision | None = None
) -> np.ndarray:
    """Softmax class probabilities ``(N, K)`` in dataset order (``precision``: default fp32)."""
    model.eval()
    out = []
    prec = precision or Precision()
    for batch in loader:
        feats, masks, _ = _to(batch, device)
        with prec.autocast(device):
            logits = model(feats, masks)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def lr_at(cfg: FuseConfig, step: int, total: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``. A pure function of the
    position, so a run resumed with a larger --epochs follows the new schedule from the step it
    stands at (same values as torch's CosineAnnealingLR / MultiStepLR closed forms)."""
    return cfg.lr * lr_factor(cfg.schedule, total)(step)


def _step_seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


# --------------------------------------------------------------------------- the run folder

# options that may change when a run is resumed: how long, where, on what hardware; everything
# else changes the model or the data and is refused
_FROZEN = {
    "features": "--features",
    "head": "--head",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "optimizer": "--optimizer",
    "schedule": "--schedule",
    "augment": "--no-augment",
    "seed": "--seed",
}


@dataclass
class _RunStart:
    norm: dict[str, tuple[np.ndarray, np.ndarray]]
    state: dict | None  # last.pt when resuming
    history: list[dict]


def _sha256(path: str | Path | None) -> str | None:
    return file_sha256(path) if path else None


def _head_options(head: str, options: dict) -> dict:
    from vidfeat.fusion.heads import HEADS

    return {**HEADS.get(head).default_options(), **options}


def _resume_differences(old: FuseConfig, new: FuseConfig, meta: dict, now: dict) -> list[str]:
    """One line per option of ``new`` that would change the model or the data of run ``old``.
    ``meta``: the run's feature_sets.json; ``now``: the same for ``new``."""
    from vidfeat.store import identity

    diffs = [
        f"{flag} (run {getattr(old, k)!r}, now {getattr(new, k)!r})"
        for k, flag in _FROZEN.items()
        if getattr(old, k) != getattr(new, k)
    ]
    if old.head == new.head:
        a, b = _head_options(old.head, old.head_options), _head_options(new.head, new.head_options)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                flag = "--dropout" if k == "dropout" else f"--head-opt {k}"
                diffs.append(f"{flag} (run {a.get(k)!r}, now {b.get(k)!r})")
    for split in ("train", "val"):
        was = meta.get("lists", {}).get(split, getattr(old, split))
        is_ = now["lists"][split] if "lists" in meta else getattr(new, split)
        if was != is_:
            diffs.append(f"--{split} (another list: its contents differ from the run's)")
    if old.features == new.features:
        for m in new.features:
            want, got = meta["sets"][m], now["sets"][m]
            if want["fingerprint"] != got["fingerprint"]:
                w, g = identity(want["config"]), identity(got["config"])
                keys = sorted(k for k in set(w) | set(g) if w.get(k) != g.get(k))
                detail = ", ".join(f"{k}: run {w.get(k)!r} vs store {g.get(k)!r}" for k in keys)
                diffs.append(f"--store (feature set {m!r}: {detail})")
    return diffs


def load_state(path: Path) -> dict:
    """A checkpoint of a run folder (best.pt, last.pt) as a dict, read by
    :func:`~vidfeat.nets.torchfile.load_torch_file` (checked before torch sees it; a pickled
    payload is refused, never run)."""
    from vidfeat.nets.torchfile import load_torch_file

    if not (path.exists() or path.is_symlink()):
        raise ConfigError(f"{path} not found; was training interrupted?")
    state = load_torch_file(path)
    if not isinstance(state, dict):
        kind = type(state).__name__
        raise ConfigError(f"{path}: refused, not a plain state dict (it holds a {kind})")
    return state


def _is_last_pt(state: dict) -> bool:
    """``state`` has the keys and types :meth:`_Loop.save_last` writes."""
    ints = ("epoch", "step", "steps_per_epoch", "since_best")
    partial = state.get("partial")
    return (
        all(isinstance(state.get(k), dict) for k in ("model", "optimizer", "best"))
        and all(type(state.get(k)) is int and state[k] >= 0 for k in ints)
        and isinstance(partial, list | tuple)
        and len(partial) == 3
        and all(isinstance(v, int | float) for v in partial)
    )


def _open_run(
    cfg: FuseConfig, out: Path, train_ds: FusionDataset, classes: list[str], resume: bool
) -> _RunStart:
    """Rank 0: write (or, resuming, check and update) the run folder."""
    now = {
        "dims": train_ds.dims,
        "T": train_ds.T,
        "sets": {
            m: {"config": c, "fingerprint": set_fingerprint(c)} for m, c in train_ds.configs.items()
        },
        "lists": {"train": _sha256(cfg.train), "val": _sha256(cfg.val)},
    }
    state, history = None, []
    if resume:
        if not (out / CONFIG_YAML).exists() or not (out / "last.pt").exists():
            raise ConfigError(
                f"--resume: {out} holds no run to continue (no {CONFIG_YAML} or last.pt); "
                "leave out --resume to start one"
            )
        old = read_fuse_config(out / CONFIG_YAML)
        meta = json.loads((out / "feature_sets.json").read_text())
        diffs = _resume_differences(old, cfg, meta, now)
        if read_classes(out / "classes.txt") != classes:
            diffs.append("--train (its class index differs from the run's classes.txt)")
        if diffs:
            raise ConfigError(
                f"--resume: {out} was trained with other options: {'; '.join(diffs)}. "
                "Resume with the run's options, or start a new run in another --out"
            )
        state = load_state(out / "last.pt")
        if "optimizer" not in state:
            raise ConfigError(
                f"--resume: {out}/last.pt holds model weights only (written by an older "
                "vidfeat) and cannot be continued; start a new run in another --out"
            )
        if not _is_last_pt(state):
            raise ConfigError(
                f"--resume: {out}/last.pt is not a last.pt of vidfeat fuse train (model, "
                "optimizer, best: dicts; epoch, step, steps_per_epoch, since_best: whole "
                "numbers; partial: 3 numbers)"
            )
        epoch, step = int(state["epoch"]), int(state["step"])
        if epoch >= cfg.epochs:
            raise ConfigError(
                f"--resume: {out} has trained {epoch} epochs already; pass --epochs > {epoch} "
                "to train on"
            )
        if cfg.early_stop and int(state["since_best"]) >= cfg.early_stop:
            raise ConfigError(
                f"--resume: {out} has had no better val Prec@1 for {int(state['since_best'])} "
                f"epochs (--early-stop {cfg.early_stop}); pass a larger --early-stop or "
                "--early-stop 0 to train on"
            )
        # rows past last.pt (a kill between the metrics line and the checkpoint) are redone
        history = [r for r in _metrics_rows(out / "metrics.jsonl") if r["epoch"] <= epoch]
        write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        norm = load_norm(out / "norm.npz")
        state["_resumed_at"] = (epoch, step)
    else:
        out.mkdir(parents=True, exist_ok=True)
        norm = train_ds.compute_norm()
        save_norm(out / "norm.npz", norm)
        write_classes(out / "classes.txt", classes)
        write_atomic(out / "metrics.jsonl", "")
    write_atomic(out / CONFIG_YAML, yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_atomic(out / "feature_sets.json", json.dumps(now, indent=2, default=str))
    return _RunStart(norm, state, history)


def _metrics_rows(path: Path) -> list[dict]:
    """The epoch rows of a run's metrics.jsonl; a line a kill cut short (the file is appended
    to, one line per epoch) is not a row."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
    return rows


def _save_checkpoint(obj: dict, path: Path) -> None:
    # a kill during the write leaves the previous best.pt / last.pt intact
    with atomic_write(path) as fh:
        torch.save(obj, fh)


# --------------------------------------------------------------------------- training


def train(
    cfg: FuseConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> dict:
    """Fit a head; keeps the best checkpoint by validation Prec@1. Returns the best metrics
    (on every rank of a torchrun launch). ``resume``: continue the run in ``out`` from last.pt;
    an ``out`` that holds a run is refused without it, unless ``overwrite`` (moved aside).

    Raises :class:`TrainingInterrupted` after saving last.pt when Ctrl-C / SIGTERM arrives.
    """
    cfg.validate()
    ctx = dist_from_env()
    if cfg.batch_size % ctx.world:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch and must be a multiple of the "
            f"{ctx.world} processes torchrun started"
        )
    if ctx.main:  # rank 0 owns the run folder
        claim_out_dir(out, resume=resume, overwrite=overwrite, what="a fusion run")
        remove_stale_temps(out)  # half-written checkpoints of a killed run
    with processes(cfg.device, ctx) as device:
        return _train(
            cfg,
            Path(out),
            ctx,
            device,
            resume=resume,
            progress=progress and ctx.main,
            echo=echo if ctx.main else (lambda s: None),
        )


def _train(
    cfg: FuseConfig,
    out: Path,
    ctx: DistContext,
    device: torch.device,
    *,
    resume: bool,
    progress: bool,
    echo: Callable[[str], Any],
) -> dict:
    """The steps of one process: data and run folder, model and optimiser, then the epochs."""
    # same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    cfg.precision = resolve_name(cfg.precision, device)  # config.yaml records what runs
    data = _load_data(cfg, out, ctx, resume=resume, echo=echo)
    model, net, opt = _build_model(cfg, data, ctx, device, out / "last.pt")
    loop = _Loop(cfg, out, ctx, device, data, model, net, opt, echo=echo)
    return loop.run(progress=progress)


@dataclass
class _Data:
    classes: list[str]
    train_ds: FusionDataset
    val_ds: FusionDataset | None  # rank 0 only
    val_loader: DataLoader | None
    start: _RunStart


def _load_data(
    cfg: FuseConfig, out: Path, ctx: DistContext, *, resume: bool, echo: Callable[[str], Any]
) -> _Data:
    """Step 1: the training split, the run folder opened (or resumed) on rank 0 and its
    normalisation on every rank, and the validation split."""
    train_list = load_list(cfg.train, video_root=cfg.video_root, require_labels=True)
    classes = train_list.classes
    train_ds = FusionDataset(
        cfg.store, cfg.features, train_list, augment=cfg.augment, cache=cfg.cache, seed=cfg.seed
    )
    for line in train_ds.report.lines():
        echo(f"train: {line}")
    # rank 0 computes (or, resuming, reads) the statistics; every rank gets the same arrays
    start = share(ctx, lambda: _open_run(cfg, out, train_ds, classes, resume))
    train_ds.norm = start.norm
    val_ds = val_loader = None
    if cfg.val and ctx.main:  # validation runs whole on rank 0: metrics as in one process
        val_list = load_list(
            cfg.val, video_root=cfg.video_root, classes=classes, require_labels=True
        )
        val_ds = FusionDataset(cfg.store, cfg.features, val_list, norm=start.norm, cache=cfg.cache)
        for line in val_ds.report.lines():
            echo(f"val: {line}")
        val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=cfg.workers)
    return _Data(classes, train_ds, val_ds, val_loader, start)


def _build_model(
    cfg: FuseConfig, data: _Data, ctx: DistContext, device: torch.device, last: Path
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """Step 2: the head (last.pt's weights when resuming), the module that trains it (its
    DistributedDataParallel wrapper under torchrun, else the head) and the optimiser."""
    model = build_head(cfg, data.train_ds.dims, len(data.classes))
    state = data.start.state
    if state is not None:
        _restore(model, state["model"], last)
    model.to(device)
    net: nn.Module = model
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            # batch statistics over the global batch, as in one process (CPU has no SyncBN:
            # there each rank normalises its own share)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        _restore(opt, state["optimizer"], last)
    return model, net, opt


def _restore(into: Any, state: dict, last: Path) -> None:
    """``into.load_state_dict(state)`` (the head or its optimiser), refused in one
    :class:`ConfigError` when last.pt's state does not fit it."""
    fit_state(into, state, f"--resume {last} does not fit this run's {type(into).__name__}")


class _Loop:
    """Steps 3 and 4: where training stands (epoch, step, best so far, the sums of a cut epoch)
    and the epochs from there, each trained, then validated and checkpointed on rank 0."""

    def __init__(
        self,
        cfg: FuseConfig,
        out: Path,
        ctx: DistContext,
        device: torch.device,
        data: _Data,
        model: nn.Module,
        net: nn.Module,
        opt: torch.optim.Optimizer,
        *,
        echo: Callable[[str], Any],
    ) -> None:
        self.cfg, self.out, self.ctx, self.device, self.echo = cfg, out, ctx, device, echo
        self.precision = Precision(cfg.precision)  # resolved by _train
        # fp16's narrow range needs loss scaling; bf16 has float32's
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.data, self.model, self.net, self.opt = data, model, net, opt
        # Rank r takes samples r, r+world, ... of the epoch's permutation; its k-th batch of
        # batch/world samples and the other ranks' k-th batches together are exactly the k-th
        # global batch of a single process (world 1) with the same seed.
        self.per_rank = cfg.batch_size // ctx.world
        self.drop = len(data.train_ds) > cfg.batch_size
        self.sampler = DistributedSampler(
            data.train_ds,
            num_replicas=ctx.world,
            rank=ctx.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=self.drop,
        )
        self.steps_per_epoch = len(BatchSampler(self.sampler, self.per_rank, drop_last=self.drop))
        self.total = cfg.epochs * self.steps_per_epoch
        self.first_epoch, self.skip = 0, 0
        self.best: dict = {}
        self.since_best = 0
        # loss x samples, correct, samples (all ranks) of a cut epoch
        self.partial = [0.0, 0.0, 0.0]
        state = data.start.state
        if state is not None:
            self.first_epoch, self.skip = state["_resumed_at"]
            if int(state["steps_per_epoch"]) != self.steps_per_epoch:
                raise ConfigError(
                    f"--resume: this run had {int(state['steps_per_epoch'])} steps per epoch, "
                    f"the training list now gives {self.steps_per_epoch}; resume with the "
                    "run's data"
                )
            self.best = dict(state["best"])
            self.since_best = int(state["since_best"])
            self.partial = [float(v) for v in state["partial"]]
            echo(
                f"resuming {out} at epoch {self.first_epoch + 1}, step {self.skip} of "
                f"{self.steps_per_epoch}"
            )
        self.loss_fn = nn.CrossEntropyLoss()
        self.history = list(data.start.history)

    def run(self, *, progress: bool) -> dict:
        """Train from where the run stands to the last epoch (or an early stop); the best
        epoch's metrics, on every rank."""
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(
            range(self.first_epoch, cfg.epochs),
            desc=f"fuse {cfg.head}",
            unit="epoch",
            initial=self.first_epoch,
            total=cfg.epochs,
            disable=not progress,
        )
        try:
            with StopSignals() as stop:
                for epoch in bar:
                    t0 = time.perf_counter()
                    sums = self.train_epoch(epoch, stop)
                    if self.end_epoch(epoch, sums, t0, bar):
                        self.echo(
                            f"early stop after epoch {epoch + 1}: no better val Prec@1 for "
                            f"{cfg.early_stop} epochs"
                        )
                        break
                    if epoch + 1 < cfg.epochs and stop_requested(self.ctx, stop, self.device):
                        raise TrainingInterrupted(
                            f"interrupted after epoch {epoch + 1}; saved {self.out / 'last.pt'}; "
                            "run the same command with --resume to continue"
                        )
        finally:
            if self.ctx.main and self.history:
                plot_curves(
                    self.history,
                    self.out / "curves.png",
                    title=f"{cfg.head} on {','.join(cfg.features)}",
                )
        best = share(self.ctx, lambda: self.best)
        best.pop("_key", None)
        return best

    def train_epoch(self, epoch: int, stop: StopSignals) -> list[float]:
        """Step 3: the steps of ``epoch`` from where it stands; its sums over all ranks (loss x
        samples, correct, samples). A stop signal before the last step saves last.pt (rank 0)
        and raises :class:`TrainingInterrupted`."""
        cfg, ctx, device, ds = self.cfg, self.ctx, self.device, self.data.train_ds
        ds.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        batches = list(BatchSampler(self.sampler, self.per_rank, drop_last=self.drop))
        loader = DataLoader(
            ds,
            batch_sampler=batches[self.skip :],
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            worker_init_fn=ignore_stop_signals if cfg.workers else None,
            generator=torch.Generator().manual_seed(_step_seed(cfg.seed, epoch, self.skip)),
        )
        # the cut epoch's sums so far are global: counted once, on rank 0
        sums = self.partial if ctx.main else [0.0, 0.0, 0.0]
        self.net.train()
        step = self.skip
        for batch in loader:
            # dropout of this step: the same on resume, independent across ranks
            torch.manual_seed(_step_seed(cfg.seed, epoch, step, ctx.rank))
            for g in self.opt.param_groups:
                g["lr"] = lr_at(cfg, epoch * self.steps_per_epoch + step, self.total)
            feats, masks, y = _to(batch, device)
            with self.precision.autocast(device):
                logits = self.net(feats, masks)
                loss = self.loss_fn(logits.float(), y)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            step += 1
            sums[0] += loss.item() * len(y)
            sums[1] += int((logits.argmax(1) == y).sum())
            sums[2] += len(y)
            if step < self.steps_per_epoch and stop_requested(ctx, stop, device):
                sums = all_sum(ctx, sums, device)
                if ctx.main:
                    self.save_last(epoch, step, sums)
                raise TrainingInterrupted(
                    f"interrupted in epoch {epoch + 1} after step {step} of "
                    f"{self.steps_per_epoch}; saved {self.out / 'last.pt'}; run the same "
                    "command with --resume to continue"
                )
        self.skip, self.partial = 0, [0.0, 0.0, 0.0]
        return all_sum(ctx, sums, device)

    def end_epoch(self, epoch: int, sums: list[float], t0: float, bar: Any) -> bool:
        """Step 4, on rank 0: the epoch's metrics line (with validation), best.pt when it is
        the best so far, last.pt. Whether early stopping ends training (on every rank)."""
        cfg = self.cfg
        row = {
            "epoch": epoch + 1,
            "train_loss": sums[0] / max(sums[2], 1.0),
            "train_prec1": sums[1] / max(sums[2], 1.0),
            "lr": lr_at(cfg, (epoch + 1) * self.steps_per_epoch, self.total),
        }
        early = False
        if self.ctx.main:
            data = self.data
            if data.val_loader is not None and data.val_ds is not None:
                row.update(
                    _validate(
                        self.model,
                        data.val_loader,
                        data.val_ds,
                        self.device,
                        len(data.classes),
                        self.precision,
                    )
                )
            row["seconds"] = time.perf_counter() - t0
            self.history.append(row)
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            key = row.get("val_prec1", -row["train_loss"])
            if not self.best or key > self.best["_key"]:
                self.best = {**row, "_key": key}
                _save_checkpoint(self.model.state_dict(), self.out / "best.pt")
                self.since_best = 0
            else:
                self.since_best += 1
            early = bool(cfg.early_stop and self.since_best >= cfg.early_stop)
            self.save_last(epoch + 1, 0, [0.0, 0.0, 0.0], stopped_early=early)
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}",
                val=f"{row.get('val_prec1', float('nan')):.3f}",
            )
        return any_rank(self.ctx, early, self.device)

    def save_last(
        self, epoch: int, step: int, sums: list[float], stopped_early: bool = False
    ) -> None:
        _save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "epoch": epoch,  # epochs completed
                "step": step,  # steps done in the epoch that follows
                "steps_per_epoch": self.steps_per_epoch,
                "best": self.best,
                "since_best": self.since_best,
                "stopped_early": stopped_early,
                "partial": sums,
            },
            self.out / "last.pt",
        )


def _validate(
    model: nn.Module,
    loader: DataLoader,
    ds: FusionDataset,
    device: torch.device,
    num_classes: int,
    precision: Precision,
) -> dict[str, float]:
    scores = predict_scores(model, loader, device, precision)
    labels = np.asarray(ds.labels)
    s = summarize(scores, labels, num_classes)
    val_loss = float(
        nn.functional.nll_loss(
            torch.log(torch.from_numpy(scores).clamp_min(1e-12)), torch.from_numpy(labels)
        )
    )
    return {
        "val_loss": val_loss,
        "val_prec1": s["prec1"],
        "val_prec5": s["prec5"],
        "val_mean_class_acc": s["mean_class_acc"],
    }
