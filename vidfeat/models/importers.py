"""The importers of vidfeat.models: the authors' PaddlePaddle StNet / TSN and timm ImageNet
classifiers, each written as a normal run folder."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from vidfeat._version import __version__
from vidfeat.errors import ConfigError
from vidfeat.models.config import TrainConfig
from vidfeat.models.runs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAPER_STNET,
    PAPER_TSN,
    ImportReport,
    Preprocessing,
    _check_out,
    _now,
    _resolve_classes,
    _sha256,
    _versions,
    _write_run,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- Paddle import


PADDLE_ARCHES = {"paddle-stnet": "stnet", "paddle-tsn": "tsn"}


def _paddle_config(info, pre: Preprocessing):
    """The run config of the authors' network and their training recipe (configs/*.yaml)."""
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
    The file is read by :class:`~vidfeat.nets.paddle.FluidReader` (nothing in it runs, and
    only what a Fluid save writes is accepted) and mapped strictly.
    """
    from vidfeat.nets.paddle import describe_params, load_pdparams

    src, out = Path(path), Path(out)
    _check_out(out)
    params = load_pdparams(src)  # a bad file is refused before torch is imported
    k = describe_params(params, str(src)).num_classes
    names, classes_from = _resolve_classes(classes, num_classes, k, str(src))  # before the work
    from vidfeat.nets.backbones import count_parameters

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
    from vidfeat.nets.backbones import read_state_dict

    return read_state_dict(path, "--weights")


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


def _checked_timm_state(name: str, full, src: Path) -> tuple[dict, str]:
    """The state dict of ``src``, refused unless it is exactly timm ``name``'s with its
    ImageNet classifier; returns it and the classifier's name."""
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
    return state, head


def _timm_preprocessing(name: str, full) -> Preprocessing:
    """timm's evaluation transform of ``name`` (crop, crop_pct, mean/std, interpolation)."""
    pcfg = full.pretrained_cfg
    crop = int(pcfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(pcfg.get("crop_pct") or 0.875)
    interp = str(pcfg.get("interpolation") or "bilinear")
    return Preprocessing(
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


def _timm_source(name: str, weights: str | Path | None) -> Path:
    src = Path(weights) if weights is not None else _timm_weights_file(name)
    if src is None:
        raise ConfigError(
            f"the ImageNet weights of timm model {name!r} are not in the local cache "
            "(nothing is downloaded). On a machine with network run "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy "
            "its Hugging Face cache (HF_HOME) here, or pass --weights FILE with the model's timm "
            "state dict"
        )
    from vidfeat.nets.torchfile import check_regular

    check_regular(src, f"--weights {src}")  # read later, by load_torch_file
    return src


def _timm_model(name: str):
    """timm's ``name`` without weights, refused unless timm has it and the segment networks can
    run its family stage by stage."""
    import timm

    from vidfeat.nets.backbones import family_of

    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(
            f"{name!r} is not a timm model; list candidates with "
            "`python -c \"import timm; print(timm.list_models('resnet*'))\"`"
        )
    full = timm.create_model(name, pretrained=False)
    family_of(full)  # only families the segment networks can run stage by stage
    return full


def _timm_classes(full, classes: str | Path | None, k: int, src: Path) -> tuple[list[str], str]:
    """The class names of the ``k`` outputs and where they came from: ``classes`` when given,
    else timm's ImageNet names, else numbered names."""
    if classes is not None:
        return _resolve_classes(classes, None, k, str(src))
    return _imagenet_names(full, k) or _resolve_classes(None, k, k, str(src))


def _timm_config(name: str, pre: Preprocessing) -> TrainConfig:
    """The run config of a timm classifier packaged as TSN: one frame per segment."""
    return TrainConfig(
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


def _timm_tsn(name: str, state: dict, head: str, k: int):
    """The TSN on timm ``name`` with ``state`` loaded strictly: the backbone's tensors under
    ``backbone.``, the classifier ``head`` as the TSN's ``fc``."""
    import torch

    from vidfeat.nets.segment import create_segment_net

    net = create_segment_net("tsn", name, k, in_chans_per_segment=3, frames=1)
    remap = {f"{head}.weight": "fc.weight", f"{head}.bias": "fc.bias"}
    tsn_state = {remap.get(k2, f"backbone.{k2}"): v for k2, v in state.items()}
    for k2, v in net.state_dict().items():
        if k2.endswith("num_batches_tracked") and k2 not in tsn_state:
            tsn_state[k2] = torch.zeros_like(v)
    net.load_state_dict(tsn_state)  # strict: every tensor filled, every tensor used
    return net


def _timm_meta(
    name: str, src: Path, tensors: int, pcfg: dict, pre: Preprocessing, classes_from: str
) -> dict:
    """model.json of a timm import (the weights' entry is added when best.pt is written)."""
    return {
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
            "tensors": tensors,
            "pretrained_cfg": {
                k2: pcfg.get(k2) for k2 in ("hf_hub_id", "url", "tag", "license") if pcfg.get(k2)
            },
        },
        "trained_by": f"timm {name} ImageNet weights (not vidfeat)",
        "classes_from": classes_from,
        "preprocessing": pre.as_dict(),
        "versions": _versions(),
    }


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
    from vidfeat.nets.backbones import count_parameters

    out = Path(out)
    _check_out(out)
    full = _timm_model(name)
    src = _timm_source(name, weights)
    state, head = _checked_timm_state(name, full, src)
    k = int(state[f"{head}.weight"].shape[0])
    names, classes_from = _timm_classes(full, classes, k, src)
    pre = _timm_preprocessing(name, full)
    net = _timm_tsn(name, state, head, k)
    meta = _timm_meta(name, src, len(state), full.pretrained_cfg, pre, classes_from)
    state_out = {k2: v.detach().clone() for k2, v in net.state_dict().items()}
    _write_run(out, _timm_config(name, pre), names, state_out, meta)
    return ImportReport(
        out, "timm", "tsn", name, k, len(state), count_parameters(net), meta["source"]["sha256"]
    )
