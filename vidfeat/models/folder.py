"""The one rule for "a run folder, or a checkpoint inside one", and what an ``--init`` run
brings to a new training run.

A run folder is a folder holding ``config.yaml``. A path names a run when it is one (its
checkpoint is ``best.pt``) or when it is a file inside one (that file is the checkpoint, e.g.
``last.pt``). Every command that takes a run (``extract --checkpoint``, ``models info``,
``train --init``, :func:`vidfeat.models.load_model`) resolves it through :func:`resolve_run`.
Imports no torch.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError, RunError
from vidfeat.models.config import (
    CONFIG_YAML,
    TrainConfig,
    explicit_net_options,
    read_run_config,
)

BEST = "best.pt"


@dataclass(frozen=True)
class RunFolder:
    """A resolved run: its folder, the checkpoint meant, and its config (checked)."""

    dir: Path
    checkpoint: Path  # dir/best.pt for a folder, else the file named
    config: TrainConfig

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG_YAML


def find_run(path: str | Path) -> tuple[Path, Path] | None:
    """``(run folder, checkpoint)`` when ``path`` is a run folder or a file inside one (its
    config is not read), else None."""
    p = Path(path)
    run, ckpt = (p, p / BEST) if p.is_dir() else (p.parent, p)
    return (run, ckpt) if (run / CONFIG_YAML).is_file() else None


def is_run(path: str | Path) -> bool:
    """True when ``path`` is a run folder or a file inside one."""
    return find_run(path) is not None


def locate_run(path: str | Path, *, flag: str | None = None) -> tuple[Path, Path]:
    """:func:`find_run`, or :class:`RunError` naming what to pass instead (``flag``, e.g.
    ``--init``: the option ``path`` came from)."""
    found = find_run(path)
    if found is None:
        raise RunError(
            path,
            None,
            f"not a vidfeat training run (no {CONFIG_YAML} beside it); pass the --out folder of "
            "`vidfeat train` or `vidfeat models import`",
            flag=flag,
        )
    return found


def resolve_run(path: str | Path, *, flag: str | None = None) -> RunFolder:
    """The run that ``path`` names, its config read and checked. Raises :class:`RunError`
    when ``path`` is no run (see :func:`locate_run`) or its ``config.yaml`` is not a run's
    (naming the file and the key). The checkpoint itself is not opened."""
    run, ckpt = locate_run(path, flag=flag)
    return RunFolder(run, ckpt, read_run_config(run / CONFIG_YAML))


# the options of `vidfeat train` that --init fixes, and their flags (named in refusals)
INIT_ARCH_FLAGS = {"arch": "--arch", "backbone": "--backbone", "frames": "-N/--frames"}


def init_options(run: str | Path, asked: dict[str, Any], given: Collection[str]) -> dict:
    """The training options that ``--init RUN`` sets: the run's architecture (``arch``,
    ``backbone``, ``frames``) and every one of its network options, with ``init`` itself.

    ``asked``: the options of the new run (``arch``, ``backbone``, ``frames``, ``pretrained``,
    ``backbone_weights``, ``net_options``); ``given``: the names of those the user set (the
    others are defaults and take the run's). Raises :class:`RunError` when ``run`` is not a
    valid run, and :class:`~vidfeat.errors.ConfigError` when a given option contradicts it."""
    cfg = resolve_run(run, flag="--init").config
    from vidfeat.nets.clipnet import is_clip_arch

    if is_clip_arch(cfg.arch):
        raise ConfigError(
            f"--init {run}: an imported {cfg.arch} network ({cfg.backbone}) extracts features "
            "(`vidfeat extract ... --checkpoint RUN`) but vidfeat does not fine-tune it; train "
            "a fusion head on its features instead (`vidfeat fuse train`)"
        )
    out: dict[str, Any] = {"init": str(run)}
    for key, flag in INIT_ARCH_FLAGS.items():
        have = getattr(cfg, key)
        if key in given and asked[key] != have:
            raise ConfigError(
                f"{flag} {asked[key]} contradicts the --init run's {key} {have!r}; leave "
                f"{flag} out (it defaults to the run's)"
            )
        out[key] = have
    for key in ("pretrained", "backbone_weights"):
        if asked.get(key):
            raise ConfigError(
                f"--{key.replace('_', '-')} and --init exclude each other: --init brings "
                "every weight of the run"
            )
    run_opts = explicit_net_options(cfg.arch, cfg.modality, cfg.net_options, True)
    for key, value in (asked.get("net_options") or {}).items():
        if run_opts.get(key) != value:
            raise ConfigError(
                f"--net-opt {key}={value} contradicts the --init run's {key}={run_opts.get(key)!r}"
            )
    out["net_options"] = run_opts
    return out
