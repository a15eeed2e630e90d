"""A fusion run's configuration: :class:`FuseConfig` (what ``RUN/config.yaml`` holds; its
fields declare the options of ``vidfeat fuse train``) and :func:`read_fuse_config`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidfeat.errors import ConfigError
from vidfeat.models.config import read_config
from vidfeat.params import param
from vidfeat.precision import PRECISION_HELP, PRECISIONS


@dataclass
class FuseConfig:
    """A fusion run's configuration (saved as RUN/config.yaml); each field made with
    :func:`~vidfeat.params.param` is also an option of `vidfeat fuse train`."""

    store: str = param(help="Feature store.", path="dir", exists=True)
    features: list[str] = param(
        help="Comma-separated feature sets of the store, e.g. rgb,tvl1,farneback,audio.",
        kind=str,
    )
    head: str = param(help="Fusion head.", registry="vidfeat.fusion.heads:HEADS")
    train: str = param(help="Training list.", flags=("--train", "train_list"), path="file")
    val: str | None = param(None, "Validation list.", flags=("--val", "val_list"), path="file")
    head_options: dict = param(
        help="Head option, e.g. --head-opt width=256 --head-opt depth=3.",
        flags=("--head-opt", "head_opt"),
        multiple=True,
        metavar="KEY=VALUE",
        default_factory=dict,
    )
    epochs: int = param(30, "Passes over the training split.")
    # the global batch: under torchrun each process takes batch/world
    batch_size: int = param(32, "Videos per step (under torchrun: the global batch).")
    lr: float = param(1e-3, "Learning rate (before the schedule's decay).")
    weight_decay: float = param(1e-4, "Weight decay.")
    optimizer: str = param("adamw", "AdamW or Adam.", choices=("adamw", "adam"))
    # cosine | step (x0.1 at 1/3 and 2/3, the paper's habit)
    schedule: str = param(
        "cosine",
        "cosine: smooth decay; step: lr x0.1 at 1/3 and 2/3 of training.",
        choices=("cosine", "step"),
    )
    early_stop: int = param(  # epochs without a better val Prec@1 (no val: train loss); 0 = never
        0,
        "Stop after this many epochs without a better val Prec@1 (without --val: a lower train "
        "loss, which also picks best.pt; 0: never).",
    )
    augment: bool = param(  # random temporal subsampling of training sequences
        True, "No random temporal subsampling.", flags=("--no-augment",)
    )
    cache: bool = param(  # read each split into memory once (the synthetic sets fit easily)
        True, "Read from HDF5 every epoch.", flags=("--no-cache",)
    )
    workers: int = param(0, "DataLoader workers.")  # DataLoader worker processes
    seed: int = param(0, "Random seed (same seed, same run).")
    device: str = param("auto", "auto, cpu, cuda or cuda:N.")
    # as asked, until `fuse train` resolves it on its device: config.yaml records what ran
    precision: str = param("auto", PRECISION_HELP, choices=PRECISIONS)
    video_root: str | None = param(
        None,
        "Folder of the videos of a Kinetics CSV (ids resolve to class/id files below it).",
        path="dir",
    )

    def validate(self) -> None:
        for name, val, lo in [
            ("--epochs", self.epochs, 1),
            ("--batch-size", self.batch_size, 1),
            ("--workers", self.workers, 0),
            ("--early-stop", self.early_stop, 0),
            ("--seed", self.seed, 0),
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


def read_fuse_config(path: str | Path) -> FuseConfig:
    """The :class:`FuseConfig` of a fusion run's ``config.yaml`` at ``path``, read by the one
    reader of run configs (:func:`vidfeat.models.config.read_config`): keys an older vidfeat
    did not record take their defaults; :class:`~vidfeat.errors.RunError`, naming ``path`` and
    the key, for a file that is no fusion run's config (YAML syntax, not a mapping, missing or
    unknown keys, wrong types)."""
    return read_config(path, FuseConfig, kind="fusion run", made_by="`vidfeat fuse train`")
