"""Run folders of vidfeat.models: the recorded preprocessing of a run, writing an imported run,
and the shared bits of provenance. Imports only :mod:`vidfeat.models.config` and
:mod:`vidfeat.models.folder` of vidfeat.models."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vidfeat._version import __version__
from vidfeat.errors import ConfigError
from vidfeat.models.config import CONFIG_YAML, TrainConfig, read_run_config
from vidfeat.models.folder import locate_run
from vidfeat.outdir import atomic_write, refuse_planted_links, write_atomic

log = logging.getLogger(__name__)


MODEL_JSON = "model.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("short-side", "fixed-4:3", "fixed")
RESAMPLERS = ("ffmpeg", "torch", "pil")
INTERPOLATIONS = ("bilinear", "bicubic")


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How frames become network input at test time (what extraction does with a run)."""

    short_side: int  # frames are resized to this short side ...
    crop: int  # ... and a centred square of this size is cut
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB in [0, 1] minus mean, over std
    std: tuple[float, float, float] = IMAGENET_STD
    segments: int = 25  # T at test
    frames: int = 5  # N frames per segment (StNet super-image: 3N channels, frame-major)
    # "short-side" keeps the aspect ratio (vidfeat); "fixed-4:3" is the authors' group_scale:
    # the long side becomes int(short_side * 4 / 3) whatever the video's aspect ratio
    resize: str = "short-side"
    interpolation: str = "bilinear"  # what the weights were trained with (vidfeat: bilinear)
    notes: tuple[str, ...] = ()  # differences extraction does not reproduce
    # "fixed": every frame resized to (height, width) = resize_size, whatever its aspect
    resize_size: tuple[int, int] | None = None
    # who resizes: "ffmpeg" (the decoder's scaler, vidfeat's own runs and the Paddle imports),
    # "torch" (torchvision's resize of the decoded uint8 frame, as torchvision's video presets)
    # or "pil" (Pillow's, as timm's eval transform), with ``interpolation`` and ``antialias``
    # (torch), and torchvision's centre crop (offset round((h - crop) / 2))
    resampler: str = "ffmpeg"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)} ({self.resize!r})")
        if self.resampler not in RESAMPLERS:
            raise ConfigError(
                f"resampler must be one of {', '.join(RESAMPLERS)} ({self.resampler!r})"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be bilinear or bicubic ({self.interpolation!r})")
        if (self.resize == "fixed") != (self.resize_size is not None):
            raise ConfigError("resize 'fixed' takes resize_size (height, width), and only it does")
        if self.resize_size is not None:
            object.__setattr__(self, "resize_size", tuple(int(v) for v in self.resize_size))

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(mean=list(self.mean), std=list(self.std), notes=list(self.notes))
        if self.resize_size is not None:
            d["resize_size"] = list(self.resize_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("mean", "std", "notes", "resize_size"):
            if k in known and known[k] is not None:
                known[k] = tuple(known[k])
        return cls(**known)

    def summary(self) -> str:
        resize = (
            f"short side {self.short_side} (fixed 4:3 frame, long side "
            f"{int(self.short_side * 4 / 3)})"
            if self.resize == "fixed-4:3"
            else f"{self.resize_size[0]}x{self.resize_size[1]} (height x width, any aspect)"
            if self.resize == "fixed"
            else f"short side {self.short_side}"
        )
        if self.resampler == "torch":
            resize += f" by torchvision{'' if self.antialias else ', no antialias'}"
        elif self.resampler == "pil":
            resize += " by Pillow"
        fmt = ", ".join
        return (
            f"resize {resize}, {self.interpolation}; centre crop {self.crop}; RGB/255 - mean "
            f"[{fmt(f'{v:g}' for v in self.mean)}] / std [{fmt(f'{v:g}' for v in self.std)}]; "
            f"T={self.segments}, N={self.frames}"
        )


PAPER_STNET = Preprocessing(
    short_side=256,
    crop=256,
    segments=25,
    frames=5,
    resize="fixed-4:3",
    notes=(
        "test frames: the authors' reader cuts L//T-frame segments (video_loader); vidfeat's "
        "grid cuts L/T-frame segments, the same frames when T divides L",
        "centre crop offset: the authors round((w - crop) / 2) half to even, vidfeat floors; they "
        "differ by one pixel only for frames left at their own size",
        "resize: the authors use PIL bilinear, vidfeat FFmpeg's bilinear scaler",
    ),
)
PAPER_TSN = Preprocessing(
    short_side=256,
    crop=224,
    segments=7,
    frames=1,
    resize="fixed-4:3",
    notes=PAPER_STNET.notes,
)


def preprocessing_of(run: str | Path, config: TrainConfig | None = None) -> Preprocessing:
    """The test preprocessing of a run (its folder or a checkpoint in one): recorded in
    ``model.json`` (imported runs), else what ``vidfeat train`` used (its short side and crop,
    ImageNet mean/std, aspect kept). ``config``: the run's, when the caller has read it."""
    run, _ = locate_run(run)
    meta = _read_model_json(run)
    if meta and isinstance(meta.get("preprocessing"), dict):
        return Preprocessing.from_dict(meta["preprocessing"])
    if config is None:
        config = read_run_config(run / CONFIG_YAML)
    tsn_rgb = config.arch == "tsn" and config.modality == "rgb"
    return Preprocessing(
        short_side=int(config.short_side),
        crop=int(config.size),
        segments=int(config.test_segments),
        frames=1 if tsn_rgb else int(config.frames),
    )


def recorded_flow_bound(run: str | Path) -> float | None:
    """The bound (px) an imported flow network's fields were clipped to, as its ``model.json``
    records it (I3D: 20), or None."""
    meta = _read_model_json(Path(run)) or {}
    want = (meta.get("flow") or {}).get("bound") if isinstance(meta, dict) else None
    return float(want) if isinstance(want, int | float) else None


def _read_model_json(run: Path) -> dict | None:
    p = run / MODEL_JSON
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: unreadable ({exc}); re-import the run") from None


# --------------------------------------------------------------------------- writing runs


@dataclass
class ImportReport:
    """What an import wrote."""

    run: Path
    importer: str
    arch: str
    backbone: str
    num_classes: int
    tensors: int  # tensors read from the source
    parameters: int  # trainable values of the network
    source_sha256: str | None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.importer}: {self.arch} on {self.backbone}, {self.num_classes} classes, "
            f"{self.tensors} tensors, {self.parameters:,} parameters -> {self.run}"
        )


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder")
    if any(os.path.lexists(out / name) for name in ("config.yaml", "best.pt")):
        raise ConfigError(f"--out {out} already holds a run; choose a new folder or delete it")
    refuse_planted_links(out)


def _resolve_classes(
    classes: str | Path | None, num_classes: int | None, k: int, source: str
) -> tuple[list[str], str]:
    """Class names in the weights' order, and where they came from."""
    from vidfeat.videolist import read_classes

    if classes is None and num_classes is None:
        raise ConfigError(
            f"{source} has {k} classes: pass --classes FILE (one class name per line, in the "
            f"order of the weights' classifier) or, when the names are unknown, --num-classes {k}"
        )
    if num_classes is not None and num_classes != k:
        raise ConfigError(
            f"--num-classes {num_classes} disagrees with {source}, whose classifier has {k} outputs"
        )
    if classes is None:
        width = len(str(k - 1))
        return [f"class_{i:0{width}d}" for i in range(k)], "--num-classes (names unknown)"
    names = read_classes(classes)
    if len(names) != k:
        raise ConfigError(
            f"--classes {classes} lists {len(names)} classes, but {source}'s classifier has {k} "
            "outputs; pass the class list of these weights (one name per line, in order)"
        )
    return names, str(Path(classes).resolve())


def _write_run(out: Path, cfg: Any, classes: list[str], state: dict, meta: dict) -> None:
    """Write an imported run into ``out``: every file whole or not at all (a temporary renamed
    over it), ``config.yaml`` last, so a folder a crash interrupts is no run (a folder is one
    when it holds ``config.yaml``)."""
    import torch
    import yaml

    from vidfeat.videolist import write_classes

    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "best.pt") as fh:
        torch.save(state, fh)
    write_classes(out / "classes.txt", classes)
    meta = {**meta, "weights": {"file": "best.pt", "sha256": _sha256(out / "best.pt")}}
    write_atomic(out / MODEL_JSON, json.dumps(meta, indent=1) + "\n")
    write_atomic(out / CONFIG_YAML, yaml.safe_dump(asdict(cfg), sort_keys=False))


def _sha256(path: Path) -> str:
    from vidfeat.provenance import file_sha256

    return file_sha256(path)


def _versions() -> dict:
    import numpy as np
    import timm
    import torch

    return {
        "vidfeat": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
