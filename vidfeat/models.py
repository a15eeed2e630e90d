"""Runs as models: import released weights as run folders, load any run, describe it.

A run folder (``vidfeat train``'s ``--out``) holds ``config.yaml`` (rebuilds the network and its
input pipeline), ``classes.txt`` and ``best.pt``. An *imported* run is the same folder plus
``model.json``: where the weights came from (file, sha256, importer, the Paddle → vidfeat tensor
map) and the preprocessing the weights were trained and tested with, which extraction follows.
So every command that takes a run (``extract rgb --checkpoint RUN``, ``models info RUN``)
takes an imported one.

- :func:`import_paddle` — the authors' PaddlePaddle ``STNET.pdparams`` / ``TSN.pdparams``
  (PaddlePaddle/models, ``PaddleCV/video``), mapped name for name by :mod:`vidfeat.nets.paddle`.
- :func:`import_timm` — a 2D timm ImageNet classifier packaged as a TSN run (its classifier as
  the TSN fc), offline: from the local timm / Hugging Face cache or a state-dict file.
- :func:`load_model` — the network of any run (trained or imported) or ``.pdparams`` file, in
  eval mode: ``model(x)`` → logits ``[B, K]`` for ``x [B, T, C, H, W]``;
  ``model.forward_features(x)`` → ``[B, T, D]`` (what extraction stores);
  ``model.forward_head(f)`` → logits from those features.
- :func:`describe_run` — what ``vidfeat models info`` prints.

The released StNet, checked layer by layer against ``stnet_res_model.py`` (identical on the
release/1.7, 1.8 and 2.0-beta branches; line numbers below are release/1.8): ResNet-50, conv1
7×7/2 on the 15-channel super-image + BN + ReLU + max pool 3×3/2 pad 1 (``net``, l. 253-265);
bottlenecks with the stride on the 3×3 conv and a projection shortcut where the shape or stride
changes (``bottleneck_block`` / ``shortcut``, l. 189-225); after Res3 and Res4 the residual TMB
``x + BN(ReLU(conv3d(x) + b))``, kernel (3,1,1) pad (1,0,0), no ReLU after the add
(``temporal_conv_bn``, l. 29-68); global average pool; the TXB: BN → dw(3) → pw(→1024) → BN+ReLU
→ dw(3) → pw, skip pw(→1024) on the BN'd input, add → BN → ReLU (``xception``, l. 70-153); max
over T, fc, softmax, no dropout (l. 298-311). BN epsilon is Fluid's default 1e-5, running
statistics at test (``is_test``). vidfeat's StNet with ``tmb=residual`` is this network (its
default ``tmb=paper`` is not, so imports set ``residual`` explicitly). TSN (``tsn_res_model.py``)
is the same ResNet; the consensus is the mean over T of the pooled features, before ``fc_0``
``[2048, K]`` (l. 144-157) — the same function as vidfeat's mean of per-segment logits, the fc
being linear; no dropout (imports set ``dropout=0``).

Where each preprocessing fact comes from (PaddlePaddle/models, ``PaddleCV/video``, release/1.8;
the same functions on release/1.7 and 2.0-beta):

- Short side 256, centre crop 256 at test (StNet): ``configs/stnet.yaml`` ``TEST``/``INFER``
  ``short_size: 256``, ``target_size: 256`` (l. 37-49); training crops 224 (``TRAIN``, l. 14-15).
  TSN: ``configs/tsn.yaml`` ``TEST`` ``short_size: 256``, ``target_size: 224`` (l. 36-39).
- The resize is **not** aspect preserving: ``reader/kinetics_reader.py`` ``group_scale``
  (l. 672-690) sets the short side to 256 and the long side to ``int(256·4/3) = 341``, a fixed
  4:3 frame, with PIL bilinear; a frame whose short side is already 256 is left as it is
  (recorded as ``resize: fixed-4:3``).
- Centre crop: ``group_center_crop`` (l. 658-669), offset ``int(round((w - 256) / 2))``.
- RGB: ``imageloader`` (l. 693-699) ``Image.open(...).convert('RGB')`` for the pkl format the
  configs use (``MODEL.format: "pkl"``); ``mp4_loader`` (l. 743) flips OpenCV's BGR to RGB.
- ``/255``, minus mean ``[0.485, 0.456, 0.406]``, divided by std ``[0.229, 0.224, 0.225]``:
  ``imgs_transform`` (l. 541-549) with ``img_mean``/``img_std`` from ``MODEL.image_mean`` /
  ``image_std`` (``configs/stnet.yaml`` l. 7-8, reshaped to ``[3, 1, 1]`` in
  ``KineticsReader.__init__``, l. 83-86).
- Super-image, frame-major (channel = 3·frame + colour): ``video_loader`` appends the N = seglen
  consecutive frames of each segment in order (l. 726-729); ``imgs_transform`` stacks them
  ``[T·N, 3, S, S]`` and reshapes to ``[T, 3N, S, S]`` (l. 550).
- N = 5: ``configs/stnet.yaml`` ``MODEL.seglen: 5`` (l. 6); T = 25 at test: ``TEST.seg_num: 25``
  (l. 38; 7 in training, ``MODEL.seg_num``, l. 5). TSN: ``seglen: 1``, ``seg_num: 3``, test 7.
- Test frames (pkl): ``video_loader`` (l. 702-731): segment i of ``L // T`` frames starts at
  ``i·(L // T)``, its N frames at offset ``((L // T) - N) // 2``, indices wrap modulo L. vidfeat's
  test grid centres the run in segments of ``L / T`` frames (:mod:`vidfeat.grid`): the same
  frames when T divides L, otherwise up to a few frames apart; recorded, not reproduced.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vidfeat import __version__
from vidfeat.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "PAPER_STNET",
    "PAPER_TSN",
    "ImportReport",
    "Preprocessing",
    "describe_run",
    "import_paddle",
    "import_timm",
    "load_model",
    "preprocessing_of",
]

MODEL_JSON = "model.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("short-side", "fixed-4:3")


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

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(mean=list(self.mean), std=list(self.std), notes=list(self.notes))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("mean", "std", "notes"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)

    def summary(self) -> str:
        resize = (
            f"short side {self.short_side} (fixed 4:3 frame, long side "
            f"{int(self.short_side * 4 / 3)})"
            if self.resize == "fixed-4:3"
            else f"short side {self.short_side}"
        )
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


def preprocessing_of(run: str | Path, config: Any = None) -> Preprocessing:
    """The test preprocessing of a run: recorded in ``model.json`` (imported runs), else what
    ``vidfeat train`` used (its short side and crop, ImageNet mean/std, aspect kept)."""
    run = Path(run)
    run = run if run.is_dir() else run.parent
    meta = _read_model_json(run)
    if meta and isinstance(meta.get("preprocessing"), dict):
        return Preprocessing.from_dict(meta["preprocessing"])
    if config is None:
        config = _read_config(run)
    tsn_rgb = config.arch == "tsn" and config.modality == "rgb"
    return Preprocessing(
        short_side=int(config.short_side),
        crop=int(config.size),
        segments=int(config.test_segments),
        frames=1 if tsn_rgb else int(config.frames),
    )


def _read_model_json(run: Path) -> dict | None:
    p = run / MODEL_JSON
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: unreadable ({exc}); re-import the run") from None


def _read_config(run: Path):
    from vidfeat.train import TrainConfig

    p = run / "config.yaml"
    if not p.is_file():
        raise ConfigError(
            f"{run}: not a vidfeat run (no config.yaml); pass the --out folder of `vidfeat "
            "train` or `vidfeat models import`"
        )
    return TrainConfig(**yaml.safe_load(p.read_text()))


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
    if (out / "config.yaml").exists() or (out / "best.pt").exists():
        raise ConfigError(f"--out {out} already holds a run; choose a new folder or delete it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder")


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
    import torch

    from vidfeat.videolist import write_classes

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_classes(out / "classes.txt", classes)
    torch.save(state, out / "best.pt")
    meta = {**meta, "weights": {"file": "best.pt", "sha256": _sha256(out / "best.pt")}}
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=1) + "\n")


def _sha256(path: Path) -> str:
    from vidfeat.provenance import file_sha256

    return file_sha256(path)


def _versions() -> dict:
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


# --------------------------------------------------------------------------- Paddle import


PADDLE_ARCHES = {"paddle-stnet": "stnet", "paddle-tsn": "tsn"}


def _paddle_config(info, pre: Preprocessing):
    """The run config of the authors' network and their training recipe (configs/*.yaml)."""
    from vidfeat.train import TrainConfig

    if info.arch == "stnet":
        # stnet.yaml: seg_num 7 (train), 60 epochs, batch 128, crop 224 in training
        recipe = dict(segments=7, epochs=60, batch_size=128)
        options = dict(tmb="residual", feature_point="res5", txb_width=1024, conv1_init="mean")
    else:
        recipe = dict(segments=3, epochs=45, batch_size=256)  # tsn.yaml
        options = dict(dropout=0.0)
    return TrainConfig(
        modality="rgb",
        train="",  # trained by the file's authors, not by vidfeat (see model.json)
        val=None,
        arch=info.arch,
        backbone=info.backbone,
        test_segments=pre.segments,
        frames=info.frames,
        size=pre.crop,
        short_side=pre.short_side,
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        optimizer="sgd",
        schedule="step",
        net_options=options,
        **recipe,
    )


def _paddle_network(params: dict, source: str, arch: str | None = None):
    """The vidfeat network of a Paddle parameter dict, loaded; and what the file holds."""
    from vidfeat.nets.paddle import describe_params, state_dict_from_paddle
    from vidfeat.nets.segment import create_segment_net

    info = describe_params(params, source)
    if arch is not None and info.arch != arch:
        other = {v: k for k, v in PADDLE_ARCHES.items()}[info.arch]
        raise ConfigError(
            f"{source} holds a {info.arch.upper()} (it "
            f"{'has' if info.arch == 'stnet' else 'has no'} xception_* layers), not a "
            f"{arch.upper()}; import it with `vidfeat models import {other}`"
        )
    pre = PAPER_STNET if info.arch == "stnet" else PAPER_TSN
    cfg = _paddle_config(info, pre)
    net = create_segment_net(
        info.arch,
        info.backbone,
        info.num_classes,
        in_chans_per_segment=info.in_chans,
        frames=info.frames,
        **cfg.net_options,
    )
    state, entries = state_dict_from_paddle(params, net, source)
    net.load_state_dict(state)
    return net, state, entries, info, cfg, pre


def import_paddle(
    path: str | Path,
    out: str | Path,
    *,
    arch: str,
    classes: str | Path | None = None,
    num_classes: int | None = None,
) -> ImportReport:
    """Import the authors' ``STNET.pdparams`` (``arch="stnet"``) or ``TSN.pdparams``
    (``"tsn"``) as a run folder ``out``.

    ``classes``: a text file, one class name per line in the classifier's order; or
    ``num_classes`` when the names are unknown. Either must agree with the file's fc shape.
    The file is read with a restricted unpickler (nothing in it runs) and mapped strictly.
    """
    from vidfeat.nets.backbones import count_parameters
    from vidfeat.nets.paddle import describe_params, load_pdparams

    src, out = Path(path), Path(out)
    _check_out(out)
    params = load_pdparams(src)
    k = describe_params(params, str(src)).num_classes
    names, classes_from = _resolve_classes(classes, num_classes, k, str(src))  # before the work
    net, state, entries, info, cfg, pre = _paddle_network(params, str(src), arch)
    importer = {v: k for k, v in PADDLE_ARCHES.items()}[info.arch]
    meta = {
        "format": "vidfeat-model/1",
        "origin": "imported",
        "importer": importer,
        "importer_version": f"vidfeat {__version__} (vidfeat.models.import_paddle)",
        "imported_at": _now(),
        "source": {
            "path": str(src.resolve()),
            "name": src.name,
            "sha256": _sha256(src),
            "size_bytes": src.stat().st_size,
            "format": "fluid.save pickle {parameter name: ndarray}",
            "tensors": len(params),
            "code": "PaddlePaddle/models PaddleCV/video/models/"
            + ("stnet/stnet_res_model.py" if info.arch == "stnet" else "tsn/tsn_res_model.py"),
        },
        "trained_by": "the authors of PaddlePaddle/models PaddleCV/video (not by vidfeat)",
        "classes_from": classes_from,
        "preprocessing": pre.as_dict(),
        "tensor_map": {e.paddle: [e.torch, e.transform] for e in entries},
        "versions": _versions(),
    }
    _write_run(out, cfg, names, state, meta)
    return ImportReport(
        out,
        importer,
        info.arch,
        info.backbone,
        info.num_classes,
        len(params),
        count_parameters(net),
        meta["source"]["sha256"],
    )


# --------------------------------------------------------------------------- timm import


def _timm_weights_file(name: str) -> Path | None:
    """The cached pretrained weights of a timm model, or None: the Hugging Face hub cache
    (``model.safetensors`` / ``pytorch_model.bin``), then torch.hub's checkpoints folder."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        names += ["model.safetensors", "pytorch_model.bin"]
        for fname in names:
            hit = try_to_load_from_cache(
                repo, fname, cache_dir=constants.HF_HUB_CACHE, revision=revision or None
            )
            if isinstance(hit, str):
                return Path(hit)
    if cfg.url:
        import torch

        p = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url.split("?")[0]).name
        if p.is_file():
            return p
    return None


def _read_timm_state(path: Path) -> dict:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle payloads, corrupt or foreign files
        raise ConfigError(f"{path}: not a loadable plain state dict ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _imagenet_names(model, k: int) -> tuple[list[str], str] | None:
    """Readable unique class names of a timm ImageNet classifier (timm ships the synsets)."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        info = ImageNetInfo(subset)
        if info.num_classes() != k:
            return None
        synsets = info.label_names()
        first = [d.split(",")[0].strip() for d in info.label_descriptions()]
    except Exception:  # noqa: BLE001 - older timm without the class metadata
        return None
    dup = {n for n in first if first.count(n) > 1}
    names = [f"{n} ({s})" if n in dup else n for n, s in zip(first, synsets, strict=True)]
    return names, f"timm ImageNetInfo({subset!r})"


def import_timm(
    name: str,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    classes: str | Path | None = None,
) -> ImportReport:
    """Package the 2D timm ImageNet classifier ``name`` as a TSN run (one frame per segment,
    the classifier's logits averaged over T), so ImageNet-only RGB features take the same path
    as trained networks: ``forward_features`` is the pooled backbone feature per segment.

    Offline: the weights come from ``weights`` (a timm state dict file) or the local timm /
    Hugging Face cache; without either, :class:`ConfigError` says how to get them.
    """
    import timm
    import torch

    from vidfeat.nets.backbones import count_parameters, family_of
    from vidfeat.nets.segment import create_segment_net
    from vidfeat.train import TrainConfig

    out = Path(out)
    _check_out(out)
    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(
            f"{name!r} is not a timm model; list candidates with "
            "`python -c \"import timm; print(timm.list_models('resnet*'))\"`"
        )
    full = timm.create_model(name, pretrained=False)
    family_of(full)  # only families the segment networks can run stage by stage
    src = Path(weights) if weights is not None else _timm_weights_file(name)
    if src is None:
        raise ConfigError(
            f"the ImageNet weights of timm model {name!r} are not in the local cache "
            "(nothing is downloaded). On a machine with network run "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy "
            "its Hugging Face cache (HF_HOME) here, or pass --weights FILE with the model's timm "
            "state dict"
        )
    if not src.is_file():
        raise ConfigError(f"--weights {src}: file not found")
    state = _read_timm_state(src)
    head = full.pretrained_cfg.get("classifier") or "fc"
    head = head[0] if isinstance(head, list | tuple) else head
    own = full.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise ConfigError(
            f"{src} is not a state dict of timm {name!r}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, mis-shaped {bad[:5]}; pass the weights of this exact model"
        )
    if f"{head}.weight" not in state:
        raise ConfigError(f"{src} has no ImageNet classifier ({head}.weight) to package")
    k = int(state[f"{head}.weight"].shape[0])
    if classes is not None:
        names, classes_from = _resolve_classes(classes, None, k, str(src))
    else:
        found = _imagenet_names(full, k)
        names, classes_from = found or _resolve_classes(None, k, k, str(src))
    pcfg = full.pretrained_cfg
    crop = int(pcfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(pcfg.get("crop_pct") or 0.875)
    interp = str(pcfg.get("interpolation") or "bilinear")
    pre = Preprocessing(
        short_side=max(crop, math.floor(crop / crop_pct)),  # timm's eval transform
        crop=crop,
        mean=tuple(float(v) for v in pcfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in pcfg.get("std", IMAGENET_STD)),
        segments=25,  # TSN tests with 25 segments
        frames=1,
        interpolation=interp,
        notes=()
        if interp == "bilinear"
        else (f"timm evaluates {name} with {interp} resizing; vidfeat resizes bilinearly",),
    )
    cfg = TrainConfig(
        modality="rgb",
        train="",
        val=None,
        arch="tsn",
        backbone=name,
        segments=3,
        test_segments=pre.segments,
        frames=1,
        size=pre.crop,
        short_side=pre.short_side,
    )
    net = create_segment_net("tsn", name, k, in_chans_per_segment=3, frames=1)
    remap = {f"{head}.weight": "fc.weight", f"{head}.bias": "fc.bias"}
    tsn_state = {remap.get(k2, f"backbone.{k2}"): v for k2, v in state.items()}
    for k2, v in net.state_dict().items():
        if k2.endswith("num_batches_tracked") and k2 not in tsn_state:
            tsn_state[k2] = torch.zeros_like(v)
    net.load_state_dict(tsn_state)  # strict: every tensor filled, every tensor used
    meta = {
        "format": "vidfeat-model/1",
        "origin": "imported",
        "importer": "timm",
        "importer_version": f"vidfeat {__version__} (vidfeat.models.import_timm)",
        "imported_at": _now(),
        "source": {
            "path": str(src.resolve()),
            "name": name,
            "sha256": _sha256(src),
            "size_bytes": src.stat().st_size,
            "format": "timm state dict",
            "tensors": len(state),
            "pretrained_cfg": {
                k2: pcfg.get(k2) for k2 in ("hf_hub_id", "url", "tag", "license") if pcfg.get(k2)
            },
        },
        "trained_by": f"timm {name} ImageNet weights (not vidfeat)",
        "classes_from": classes_from,
        "preprocessing": pre.as_dict(),
        "versions": _versions(),
    }
    state_out = {k2: v.detach().clone() for k2, v in net.state_dict().items()}
    _write_run(out, cfg, names, state_out, meta)
    return ImportReport(
        out, "timm", "tsn", name, k, len(state), count_parameters(net), meta["source"]["sha256"]
    )


# --------------------------------------------------------------------------- loading


def load_model(run_or_file: str | Path, device: str | Any = "cpu"):
    """The network of a run, in eval mode on ``device``.

    ``run_or_file``: a run folder (``vidfeat train`` or ``vidfeat models import``), a
    checkpoint inside one (``best.pt``, ``last.pt``), or a Paddle ``.pdparams`` file (imported
    in memory, classes numbered). Returns the :class:`~vidfeat.nets.segment.SegmentNet` (or the
    audio network) with two extra attributes, ``classes`` (list of names) and ``preprocessing``
    (:class:`Preprocessing`)::

        model(x)                   x [B, T, C, H, W] → logits [B, K]
        model.forward_features(x)  → [B, T, D]   the per-segment features extraction stores
        model.forward_head(f)      f [B, T, D] → logits [B, K]

    ``model.double()`` runs it in float64.
    """
    import torch

    from vidfeat.device import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    p = Path(run_or_file)
    if p.suffix == ".pdparams" and p.is_file():
        from vidfeat.nets.paddle import load_pdparams

        net, _, _, info, _, pre = _paddle_network(load_pdparams(p), str(p))
        width = len(str(info.num_classes - 1))
        classes = [f"class_{i:0{width}d}" for i in range(info.num_classes)]
    else:
        if not p.exists():
            raise ConfigError(f"{p}: no such run folder or file")
        from vidfeat.train import load_trained

        loaded = load_trained(p)
        net, classes = loaded.model, loaded.classes
        pre = preprocessing_of(loaded.path, loaded.config)
    net.classes = classes
    net.preprocessing = pre
    return net.to(dev).eval()


# --------------------------------------------------------------------------- describing


def describe_run(run: str | Path) -> dict:
    """What ``vidfeat models info`` prints: architecture, classes, size, preprocessing and
    where the weights came from."""
    from vidfeat.nets.backbones import count_parameters

    run = Path(run)
    run = run if run.is_dir() else run.parent
    cfg = _read_config(run)
    model = load_model(run)
    meta = _read_model_json(run) or {}
    buffers = sum(
        b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")
    )
    info: dict[str, Any] = {
        "run": str(run),
        "modality": cfg.modality,
        "architecture": cfg.arch if cfg.modality != "audio" else "vggish",
        "backbone": cfg.backbone if cfg.modality != "audio" else "vggish",
        "options": dict(cfg.net_options),
        "classes": len(model.classes),
        "class_names": list(model.classes[:5]),
        "parameters": count_parameters(model),
        "statistics": buffers,
        "feature_dim": int(getattr(model, "feature_dim", 0)) or None,
        "preprocessing": model.preprocessing.as_dict(),
        "preprocessing_summary": model.preprocessing.summary(),
    }
    best = run / "best.pt"
    info["weights"] = {"file": str(best), "sha256": _sha256(best) if best.is_file() else None}
    if meta.get("origin") == "imported":
        info["origin"] = "imported"
        info["source"] = meta.get("source", {})
        info["importer"] = f"{meta.get('importer')} — {meta.get('importer_version')}"
        info["imported_at"] = meta.get("imported_at")
        info["training"] = meta.get("trained_by")
        info["classes_from"] = meta.get("classes_from")
    else:
        info["origin"] = "trained by vidfeat"
        info["training"] = _training_record(run, cfg)
    return info


def _training_record(run: Path, cfg) -> str:
    rows = []
    mpath = run / "metrics.jsonl"
    if mpath.is_file():
        for line in mpath.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    text = f"train list {cfg.train or '?'}, {cfg.epochs} epochs planned, T={cfg.segments}"
    if rows:
        key = "val_prec1" if any("val_prec1" in r for r in rows) else "train_prec1"
        best = max(rows, key=lambda r: r.get(key, -1.0))
        text += f"; {len(rows)} epochs run, best epoch {best.get('epoch')} {key} "
        text += f"{best.get(key, float('nan')):.4f}"
    return text


def format_description(info: dict) -> str:
    """The text of ``vidfeat models info``."""
    opts = ", ".join(f"{k}={v}" for k, v in info["options"].items())
    names = ", ".join(info["class_names"])
    more = ", ..." if info["classes"] > len(info["class_names"]) else ""
    lines = [
        f"run:            {info['run']}",
        f"architecture:   {info['architecture']}{f' ({opts})' if opts else ''}, {info['modality']}",
        f"backbone:       {info['backbone']}",
        f"classes:        {info['classes']} ({names}{more})",
        f"parameters:     {info['parameters']:,} (+ {info['statistics']:,} BN statistics)",
    ]
    if info.get("feature_dim"):
        lines.append(f"features:       (T, {info['feature_dim']}) per segment")
    lines.append(f"preprocessing:  {info['preprocessing_summary']}")
    for note in info["preprocessing"].get("notes", []):
        if note:
            lines.append(f"                note: {note}")
    w = info["weights"]
    lines.append(f"weights:        {w['file']} sha256 {w['sha256']}")
    if info["origin"] == "imported":
        s = info["source"]
        lines += [
            f"source:         {s.get('path')} sha256 {s.get('sha256')} "
            f"({s.get('tensors')} tensors)",
            f"importer:       {info['importer']}, {info['imported_at']}",
            f"classes from:   {info['classes_from']}",
            f"training:       {info['training']}",
        ]
    else:
        lines.append(f"training:       {info['training']}")
    return "\n".join(lines)
