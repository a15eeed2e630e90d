"""The importer of torchvision's video classification weights: :func:`import_torchvision`
packages torchvision's own weights file of ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``,
``mvit_v1_b``, ``mvit_v2_s`` or ``swin3d_t|s|b`` (e.g. ``r3d_18-b3b3357e.pth``) as a run of the
``tvvideo`` clip network (:mod:`vidfeat.nets.tvvideo`). Nothing is downloaded.

The preprocessing is read from torchvision at import time, never copied into vidfeat: the
weights entry's ``transforms()`` is a ``VideoClassification`` preset (``torchvision/transforms/
_presets.py``) holding ``resize_size`` (two values: a fixed (H, W); one: the short side),
``crop_size``, ``mean``, ``std`` and ``interpolation``; its ``forward`` resizes the uint8 frames
with ``antialias=False`` (hard-coded there, not an attribute), centre-crops, scales to [0, 1]
and normalises. Recorded as a ``resampler="torch"`` :class:`~vidfeat.models.runs.Preprocessing`.

The clip length (the run's ``frames``, the default window W) and the test clips per video are
torchvision's own documentation of each weight: its ``meta["_docs"]`` says "The accuracies are
estimated on video-level with parameters `frame_rate=15`, `clips_per_video=5`, and
`clip_len=16`" (r3d_18, mc3_18, r2plus1d_18: 16 frames at 15 fps, 5 clips; mvit_v1_b,
mvit_v2_s: 16 at 7.5 fps, 5 clips; s3d: 128 at 15 fps, 1 clip, "clip-level"; swin3d_*: 32 at
15 fps, 12 clips). These are parsed from that text; :data:`DOCUMENTED_CLIPS` holds the same
figures (torchvision 0.29's ``torchvision/models/video/*.py`` weight entries) for a torchvision
whose wording no longer parses, and the run's notes say which source was used.

Which entry of the weights enum applies: the one whose URL file name is the ``--weights`` file's
name (``swin3d_b_22k-7c6ae6fa.pth`` → ``KINETICS400_IMAGENET22K_V1``), else the one whose name
before the hash matches (a renamed copy with another hash), else ``DEFAULT``; model.json records
which and how. Both ``swin3d_b`` entries have the same transforms.
"""

from __future__ import annotations

import re
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

__all__ = ["DOCUMENTED_CLIPS", "import_torchvision", "torchvision_preprocessing", "weights_entry"]

# (clip_len, frame_rate, clips_per_video) as torchvision 0.29 documents each weight in its
# meta["_docs"] (torchvision/models/video/resnet.py, s3d.py, mvit.py, swin_transformer.py);
# used only when that text no longer parses
DOCUMENTED_CLIPS: dict[str, tuple[int, float, int]] = {
    "r3d_18": (16, 15.0, 5),
    "mc3_18": (16, 15.0, 5),
    "r2plus1d_18": (16, 15.0, 5),
    "s3d": (128, 15.0, 1),
    "mvit_v1_b": (16, 7.5, 5),
    "mvit_v2_s": (16, 7.5, 5),
    "swin3d_t": (32, 15.0, 12),
    "swin3d_s": (32, 15.0, 12),
    "swin3d_b": (32, 15.0, 12),
}
_DOC_RE = {
    k: re.compile(rf"`?{k}=([0-9.]+)`?") for k in ("clip_len", "frame_rate", "clips_per_video")
}


def weights_entry(name: str, file_name: str | None) -> tuple[Any, str]:
    """The entry of torchvision's weights enum of ``name`` that ``file_name`` is, and how it
    was chosen: the same file name as its URL's, the same name before the hash, or DEFAULT."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    entries = list(enum)
    if file_name:
        urls = {e: Path(e.url).name for e in entries}
        same = [e for e in entries if urls[e] == file_name]
        if same:
            return same[0], f"file name {file_name} = torchvision's {urls[same[0]]}"
        stem = file_name.split(".")[0].rsplit("-", 1)[0]
        alike = [e for e in entries if urls[e].split(".")[0].rsplit("-", 1)[0] == stem]
        if len(alike) == 1:
            return alike[0], f"file name before the hash {stem!r} = torchvision's {urls[alike[0]]}"
    return enum.DEFAULT, f"DEFAULT (no {enum.__name__} entry's file name matches {file_name})"


def _documented_clips(name: str, entry: Any) -> tuple[tuple[int, float, int], str]:
    """(clip_len, frame_rate, clips_per_video) of ``entry`` and where they were read."""
    docs = str(entry.meta.get("_docs", ""))
    found = {k: rx.search(docs) for k, rx in _DOC_RE.items()}
    if all(found.values()):
        vals = {k: float(m.group(1)) for k, m in found.items()}
        clips = (int(vals["clip_len"]), vals["frame_rate"], int(vals["clips_per_video"]))
        return clips, f"torchvision {type(entry).__name__}.{entry.name}.meta['_docs']"
    return DOCUMENTED_CLIPS[name], "vidfeat's table of torchvision 0.29's weight docs"


def torchvision_preprocessing(name: str, entry: Any) -> tuple[Preprocessing, dict]:
    """The test preprocessing of torchvision's ``entry`` (read from ``entry.transforms()``
    and its meta) and a record of where each part came from."""
    from vidfeat.nets.tvvideo import check_name

    t = entry.transforms()
    crop = [int(v) for v in t.crop_size]
    resize = [int(v) for v in t.resize_size]
    if len(crop) != 2 or crop[0] != crop[1]:
        raise ConfigError(f"torchvision's {name} crops {crop}: vidfeat crops squares only")
    if len(resize) not in (1, 2):
        raise ConfigError(f"torchvision's {name} resizes to {resize}: not 1 or 2 values")
    (clip_len, fps, clips), clips_from = _documented_clips(name, entry)
    if check_name(name) == "mvit":  # its window is fixed: what torchvision builds it for
        clip_len = int(entry.meta["min_temporal_size"])
        clips_from += f"; the window: meta['min_temporal_size'] = {clip_len}"
    interp = getattr(t.interpolation, "value", str(t.interpolation))
    fixed_size = tuple(resize) if len(resize) == 2 else None
    pre = Preprocessing(
        short_side=min(resize),
        crop=crop[0],
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        segments=clips,
        frames=clip_len,
        resize="fixed" if fixed_size else "short-side",
        resize_size=fixed_size,
        interpolation=interp,
        resampler="torch",
        antialias=bool(getattr(t, "antialias", False)),
        notes=(
            f"torchvision evaluated these weights on {clip_len}-frame clips at {fps:g} fps, "
            f"{clips} clip(s) per video ({clips_from}); extraction decodes at the rate asked",
        ),
    )
    record = {
        "transforms": repr(t).replace("\n", " "),
        "clip_len": clip_len,
        "frame_rate": fps,
        "clips_per_video": clips,
        "clips_from": clips_from,
    }
    return pre, record


def _names(keys: list[str], limit: int = 6) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return (", ".join(keys[:limit]) + more) or "none"


def _shapes(name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of torchvision's ``name`` (built on the meta device: no memory)."""
    import torch

    from vidfeat.nets.tvvideo import build_torchvision

    with torch.device("meta"):
        return {
            n: tuple(v.shape) for n, v in build_torchvision(name, num_classes).state_dict().items()
        }


def _looks_like(state: dict, name: str) -> str:
    """ " (it holds torchvision's X)" when ``state``'s names are another supported model's."""
    from vidfeat.nets.tvvideo import TV_VIDEO_MODELS, classifier_key

    have = {n for n in state if not n.endswith("num_batches_tracked")}
    for other in TV_VIDEO_MODELS:
        head = classifier_key(other)
        if other == name or head not in state:
            continue
        want = _shapes(other, int(state[head].shape[0]))
        names = {n for n in want if not n.endswith("num_batches_tracked")}
        if have == names and all(tuple(state[n].shape) == want[n] for n in have):
            return f" (it holds torchvision's {other}: `vidfeat models import torchvision {other}`)"
    return ""


def _checked_state(name: str, src: Path) -> tuple[dict, int]:
    """The state dict of ``src`` and its number of classes, refused (one ConfigError listing
    the missing, unexpected and mis-shaped names) unless it is exactly torchvision's ``name``'s.
    BatchNorm's ``num_batches_tracked`` counters (unused at test) may be absent."""
    import torch

    from vidfeat.nets.backbones import read_state_dict
    from vidfeat.nets.tvvideo import classifier_key

    state = read_state_dict(src, "--weights")
    head = classifier_key(name)
    k = int(state[head].shape[0]) if head in state and state[head].dim() >= 1 else 400
    own = _shapes(name, max(k, 1))
    missing = sorted(n for n in own if n not in state and not n.endswith("num_batches_tracked"))
    unexpected = sorted(n for n in state if n not in own)
    bad = sorted(
        f"{n} {tuple(state[n].shape)} (want {own[n]})"
        for n in own
        if n in state and tuple(state[n].shape) != own[n]
    )
    if missing or unexpected or bad:
        raise ConfigError(
            f"--weights {src} is not a state dict of torchvision's {name}"
            f"{_looks_like(state, name)}: {len(missing)} missing ({_names(missing)}); "
            f"{len(unexpected)} unexpected ({_names(unexpected)}); {len(bad)} mis-shaped "
            f"({_names(bad)}). Pass torchvision's own weights file of {name}"
        )
    for n in own:
        if n not in state:  # num_batches_tracked only
            state[n] = torch.zeros((), dtype=torch.long)
    return state, k


def _network(name: str, k: int, frames: int, state: dict):
    """The ``tvvideo`` network holding ``state`` (its tensors themselves: the network is built
    on the meta device, so the weights are never allocated twice)."""
    import itertools

    import torch

    from vidfeat.nets.tvvideo import TorchvisionVideoNet

    with torch.device("meta"):
        net = TorchvisionVideoNet(name, k, in_chans_per_segment=3 * frames, frames=frames)
    state = {n: v.float() if v.is_floating_point() else v for n, v in state.items()}
    net.net.load_state_dict(state, assign=True)  # strict: checked above
    if any(t.is_meta for t in itertools.chain(net.parameters(), net.buffers())):
        raise ConfigError(f"torchvision's {name} holds tensors no state dict fills; report this")
    return net


def _classes(entry: Any, classes: str | Path | None, k: int, src: Path) -> tuple[list[str], str]:
    """``--classes`` when given, else the weights' ``meta["categories"]`` (Kinetics-400)."""
    if classes is not None:
        return _resolve_classes(classes, None, k, str(src))
    cats = list(entry.meta.get("categories") or [])
    if len(cats) != k:
        raise ConfigError(
            f"--weights {src} has {k} classes, torchvision's {type(entry).__name__}.{entry.name} "
            f"names {len(cats)}: pass --classes FILE (one name per line, in the classifier's order)"
        )
    return cats, f"torchvision {type(entry).__name__}.{entry.name}.meta['categories']"


def _config(name: str, pre: Preprocessing) -> TrainConfig:
    return TrainConfig(
        modality="rgb",
        train="",  # trained by torchvision's authors (see model.json)
        val=None,
        arch="tvvideo",
        backbone=name,
        segments=pre.segments,
        test_segments=pre.segments,
        frames=pre.frames,
        size=pre.crop,
        short_side=pre.short_side,
        net_options={},
    )


def _meta(src: Path, entry: Any, how: str, tensors: int, pre: Preprocessing, rec: dict) -> dict:
    """model.json of a torchvision import (the weights' entry is added by ``_write_run``)."""
    import torchvision

    sha = _sha256(src)
    published = Path(entry.url).name.split(".")[0].rsplit("-", 1)[-1]
    return {
        "format": "vidfeat-model/1",
        "origin": "imported",
        "importer": "torchvision",
        "importer_version": f"vidfeat {__version__} (vidfeat.models.import_torchvision)",
        "imported_at": _now(),
        "source": {
            "path": str(src.resolve()),
            "name": src.name,
            "sha256": sha,
            "size_bytes": src.stat().st_size,
            "format": "torchvision state dict",
            "tensors": tensors,
            "torchvision_weights": f"{type(entry).__name__}.{entry.name}",
            "weights_chosen_by": how,
            "url": entry.url,
            # torchvision names its files <model>-<first 8 hex digits of the sha256>.pth
            "sha256_matches_url": sha.startswith(published),
            "recipe": entry.meta.get("recipe"),
            "preprocessing_from": rec,
        },
        "trained_by": f"torchvision's {type(entry).__name__}.{entry.name} ({entry.url}; recipe "
        f"{entry.meta.get('recipe')}), not vidfeat",
        "preprocessing": pre.as_dict(),
        "versions": {**_versions(), "torchvision": torchvision.__version__},
    }


def import_torchvision(
    name: str,
    out: str | Path,
    *,
    weights: str | Path | None,
    classes: str | Path | None = None,
) -> ImportReport:
    """Package torchvision's video classifier ``name`` from its weights file ``weights`` (a
    state dict, read through :func:`~vidfeat.nets.backbones.read_state_dict` and checked name
    for name) as a ``tvvideo`` run ``out`` with torchvision's test preprocessing and, unless
    ``classes`` is given, the weights' Kinetics-400 class names. Nothing is downloaded."""
    from vidfeat.nets.backbones import count_parameters
    from vidfeat.nets.torchfile import check_regular
    from vidfeat.nets.tvvideo import check_name

    out = Path(out)
    _check_out(out)
    check_name(name)
    if weights is None:
        import torchvision

        url = torchvision.models.get_model_weights(name).DEFAULT.url
        raise ConfigError(
            f"pass --weights FILE: torchvision's weights file of {name} (e.g. {Path(url).name} "
            f"from {url}, fetched on a machine with network); nothing is downloaded"
        )
    src = Path(weights)
    check_regular(src, f"--weights {src}")
    entry, how = weights_entry(name, src.name)
    pre, rec = torchvision_preprocessing(name, entry)
    state, k = _checked_state(name, src)
    names, classes_from = _classes(entry, classes, k, src)
    net = _network(name, k, pre.frames, state)
    meta = _meta(src, entry, how, len(state), pre, rec)
    meta["classes_from"] = classes_from
    state_out = {n: v.detach() for n, v in net.state_dict().items()}
    _write_run(out, _config(name, pre), names, state_out, meta)
    return ImportReport(
        out,
        "torchvision",
        "tvvideo",
        name,
        k,
        len(state),
        count_parameters(net),
        meta["source"]["sha256"],
    )
