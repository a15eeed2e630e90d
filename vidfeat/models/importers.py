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
#
# Any timm image model becomes a run. A classifier the segment networks can split into stages
# (the ResNet families of vidfeat.nets.backbones) stays a TSN run, as before, so `train --init`
# fine-tunes it; every other model, and every model without a classifier, becomes a per-frame
# ``frame`` run (vidfeat.nets.framenet). Both record timm's own evaluation transform.

TIMM_LABEL_SETS = ("in1k", "in12k", "in21k", "in22k")  # tags of heads fine-tuned on labels
# timm's eval transform resizes a PIL image (torchvision's Resize calls Image.resize, which
# filters like antialiasing); extraction reproduces it with Pillow ("torch" would be
# torchvision's tensor resize, antialiased too, a few grey levels apart)
TIMM_RESAMPLER = "pil"


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


def _timm_heads(full) -> tuple[str, ...]:
    """The classifier's module name(s) from the model's pretrained cfg (``fc``, ``head``,
    ``head.fc``, ``classifier``, ...)."""
    head = full.pretrained_cfg.get("classifier") or "fc"
    return (head,) if isinstance(head, str) else tuple(head)


def _clip_state(name: str, full, state: dict, src: Path) -> dict:
    """The visual tower of an OpenAI / open_clip CLIP state dict (``visual.*``), converted to
    timm's names by timm's own ``checkpoint_filter_fn`` (tensor renames and reshapes only: the
    file was read by :func:`~vidfeat.nets.backbones.read_state_dict`, nothing in it ran)."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if not isinstance(full, VisionTransformer):
        raise ConfigError(
            f"{src} is a CLIP checkpoint (visual.* tensors); vidfeat converts those only for "
            f"timm's ViT CLIP towers (vit_*_clip_*), not for {name!r} ({type(full).__name__}); "
            "pass the timm state dict of the model instead"
        )
    trunk = any(k.startswith("visual.trunk.") for k in state)
    patch, pos = (
        ("visual.trunk.patch_embed.proj.weight", "visual.trunk.pos_embed")
        if trunk
        else ("visual.conv1.weight", "visual.positional_embedding")
    )
    own_patch, own_pos = full.patch_embed.proj.weight.shape, full.pos_embed.shape
    got_patch = tuple(state[patch].shape) if patch in state else None
    got_pos = state[pos].shape[-2] if pos in state else None
    # timm would resample another patch size or grid; such a file is another model's
    if got_patch != tuple(own_patch) or got_pos != own_pos[1]:
        raise ConfigError(
            f"{src} is the CLIP visual tower of another model: {patch} {got_patch} and {pos} "
            f"of {got_pos} tokens, where timm {name!r} has {tuple(own_patch)} and {own_pos[1]} "
            "tokens; pass the weights of this exact model"
        )
    return checkpoint_filter_fn(state, full)


def _timm_state(name: str, full, src: Path) -> tuple[dict, int, str]:
    """The timm state dict in ``src`` (a CLIP checkpoint converted), refused unless it is
    timm ``name``'s with any classifier width (or none); with that width K and its format."""
    from vidfeat.nets.backbones import read_state_dict

    try:
        state = read_state_dict(src, "--weights")  # .pth/.bin (no pickle runs), .safetensors
    except ConfigError as exc:
        if "clip" not in name.lower():
            raise
        raise ConfigError(
            f"{exc}. OpenAI's own CLIP .pt files are TorchScript programs, which vidfeat does not "
            "run: pass open_clip's state dict (open_clip_pytorch_model.bin / .safetensors, or "
            "the .pt open_clip saves) or timm's (model.safetensors)"
        ) from None
    fmt = "timm state dict"
    if "visual.class_embedding" in state or any(k.startswith("visual.trunk.") for k in state):
        state = _clip_state(name, full, state, src)
        fmt = "OpenAI / open_clip CLIP state dict, visual tower (timm checkpoint_filter_fn)"
    heads = tuple(f"{h}." for h in _timm_heads(full))
    own = full.state_dict()
    skip = ("num_batches_tracked",)
    missing = sorted(
        k for k in own if k not in state and not k.endswith(skip) and not k.startswith(heads)
    )
    unexpected = sorted(k for k in state if k not in own)
    bad = [
        k for k in own if k in state and state[k].shape != own[k].shape and not k.startswith(heads)
    ]
    if missing or unexpected or bad:
        raise ConfigError(
            f"{src} is not a state dict of timm {name!r}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, mis-shaped {bad[:5]}; pass the weights of this exact model"
        )
    head = _timm_heads(full)[0]
    weight = f"{head}.weight"
    k = int(state[weight].shape[0]) if weight in state else 0
    if k:  # any width of classifier, but a whole one on the model's own features
        want = own.get(weight)
        if want is not None and tuple(state[weight].shape[1:]) != tuple(want.shape[1:]):
            raise ConfigError(
                f"{src}: its classifier {weight} is {tuple(state[weight].shape)}, which does not "
                f"take timm {name!r}'s {tuple(want.shape[1:])} features; pass this model's weights"
            )
        if f"{head}.bias" in own and f"{head}.bias" not in state:
            raise ConfigError(f"{src}: its classifier has {weight} but no {head}.bias")
    return state, k, fmt


def _timm_preprocessing(name: str, full) -> Preprocessing:
    """timm's evaluation transform of ``name`` (``resolve_data_config`` →
    ``transforms_imagenet_eval``): resize by torchvision to ``floor(crop / crop_pct)`` (short
    side; both sides for ``crop_mode='squash'``) by Pillow, centre crop, the cfg's mean/std."""
    from timm.data import resolve_data_config

    dc = resolve_data_config(model=full)
    _, h, w = (int(v) for v in dc["input_size"])
    crop_pct, mode, interp = float(dc["crop_pct"]), str(dc["crop_mode"]), str(dc["interpolation"])
    why = (
        f"its input is {h}x{w} (vidfeat crops square)"
        if h != w
        else f"its crop_pct {crop_pct} > 1 pads the frame"
        if crop_pct > 1
        else f"its crop_mode {mode!r} letterboxes the frame"
        if mode not in ("center", "squash")
        else f"its interpolation is {interp}"
        if interp not in ("bilinear", "bicubic")
        else f"it takes {len(dc['mean'])} channels"
        if len(dc["mean"]) != 3
        else ""
    )
    if why:
        raise ConfigError(
            f"timm evaluates {name!r} with a transform vidfeat does not reproduce: {why}; "
            "choose another model or tag"
        )
    scale = math.floor(h / crop_pct)
    return Preprocessing(
        short_side=scale,
        crop=h,
        mean=tuple(float(v) for v in dc["mean"]),
        std=tuple(float(v) for v in dc["std"]),
        segments=25,  # TSN tests with 25 segments
        frames=1,
        resize="fixed" if mode == "squash" else "short-side",
        resize_size=(scale, scale) if mode == "squash" else None,
        interpolation=interp,
        resampler=TIMM_RESAMPLER,
        antialias=True,
    )


def _timm_source(name: str, weights: str | Path | None) -> Path:
    src = Path(weights) if weights is not None else _timm_weights_file(name)
    if src is None:
        raise ConfigError(
            f"the weights of timm model {name!r} are not in the local cache "
            "(nothing is downloaded). On a machine with network run "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy "
            "its Hugging Face cache (HF_HOME) here, or pass --weights FILE with the model's timm "
            "state dict"
        )
    from vidfeat.nets.torchfile import check_regular

    check_regular(src, f"--weights {src}")  # read later, by load_torch_file
    return src


def _timm_model(name: str):
    """timm's ``name`` with its default head, on the meta device (shapes, names and config, no
    memory, no init: what checking a file and reading the model's cfg need), refused unless
    timm has it."""
    import timm
    import torch

    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(
            f"{name!r} is not a timm model; list candidates with "
            "`python -c \"import timm; print(timm.list_models('vit_*'))\"`"
        )
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise ConfigError(f"timm cannot build {name!r}: {exc}") from None


def _is_projection(full, k: int) -> bool:
    """Whether the file's head (``k`` outputs) is CLIP's image projection, not a classifier:
    a CLIP-style image tower (``clip`` in its name, or Perception Encoder's ``vit_pe_core``)
    whose pretrained tag names no label set and whose head has the tag's own width."""
    pcfg = full.pretrained_cfg
    arch, tag = str(pcfg.get("architecture") or ""), str(pcfg.get("tag") or "")
    clip = "clip" in f"{arch}.{tag}".lower() or arch.startswith("vit_pe_core")
    labelled = any(s in tag for s in TIMM_LABEL_SETS)
    return bool(k) and clip and not labelled and k == pcfg.get("num_classes")


def _clip_tag_refusal(name: str, full) -> str:
    """Why a CLIP checkpoint (its head CLIP's projection) cannot be imported as ``name``, whose
    pretrained tag is a fine-tune on a label set (another head, another preprocessing)."""
    import timm

    arch = str(full.pretrained_cfg.get("architecture") or name.split(".")[0])
    tags = [
        t
        for t in timm.list_pretrained(f"{arch}.*")
        if not any(s in t.split(".", 1)[-1] for s in TIMM_LABEL_SETS)
    ]
    tags.sort(key=lambda t: not t.endswith(".openai"))  # the original CLIP first
    listed = ", ".join(tags[:6]) or "none in this timm"
    return (
        f"the file is CLIP's image tower (its head is CLIP's projection, no classifier), but "
        f"timm {name!r} is a fine-tuned classifier ({full.pretrained_cfg.get('tag')}); name the "
        f"CLIP weights' own tag, whose preprocessing they were trained with: {listed}"
    )


def _splittable(full) -> bool:
    from vidfeat.nets.backbones import family_of

    try:
        family_of(full)
    except ConfigError:
        return False
    return True


def _timm_classes(full, classes: str | Path | None, k: int, src: Path) -> tuple[list[str], str]:
    """The class names of the ``k`` outputs and where they came from: ``classes`` when given,
    else timm's ImageNet names, else numbered names (none without a classifier)."""
    if k == 0:
        if classes is not None:
            raise ConfigError(
                f"--classes: {src} holds no classifier (the head of timm "
                f"{full.pretrained_cfg.get('architecture')} is absent or CLIP's projection); "
                "import it without --classes"
            )
        return [], "none: features only"
    if classes is not None:
        return _resolve_classes(classes, None, k, str(src))
    return _imagenet_names(full, k) or _resolve_classes(None, k, k, str(src))


def _timm_config(name: str, pre: Preprocessing, arch: str, options: dict) -> TrainConfig:
    """The run config of a timm model: TSN (one frame per segment) or a per-frame network."""
    return TrainConfig(
        modality="rgb",
        train="",
        val=None,
        arch=arch,
        backbone=name,
        segments=3,
        test_segments=pre.segments,
        frames=1,
        size=pre.crop,
        short_side=pre.short_side,
        net_options=options,
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


def _timm_frame(name: str, state: dict, k: int, options: dict, size: int):
    """The per-frame network on timm ``name`` with ``state`` loaded strictly at ``net.``;
    refused when its classifier is not a linear map of the pooled feature (checked on a
    random frame: the logits from vidfeat's feature equal timm's own forward)."""
    import torch

    from vidfeat.nets.clipnet import create_clip_net

    with torch.device("meta"):  # no random init of what the file fills
        net = create_clip_net("frame", name, k, in_chans_per_segment=3, frames=1, **options)
    state = dict(state)
    for k2, v in net.net.state_dict().items():
        if k2 in state:
            state[k2] = state[k2].to(v.dtype)  # assign keeps the file's dtype otherwise
        elif k2.endswith("num_batches_tracked"):  # BN counters old files lack
            state[k2] = torch.zeros(v.shape, dtype=v.dtype)
    net.net.load_state_dict(state, assign=True)  # strict: every tensor filled, every one used
    if any(t.is_meta for t in (*net.parameters(), *net.buffers())):  # unsaved buffers: init
        net = create_clip_net("frame", name, k, in_chans_per_segment=3, frames=1, **options)
        net.net.load_state_dict(state)
    net.eval()
    if k:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ff = net.net.forward_features(x)
            want = net.net.forward_head(ff)
            got = net.classify(net.net.forward_head(ff, pre_logits=True).flatten(1))
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
            raise ConfigError(
                f"timm {name!r}'s logits are not its classifier applied to its pooled feature; "
                "vidfeat cannot score frames from stored features of this model"
            )
    return net


def _timm_meta(name: str, src: Path, tensors: int, full, pre: Preprocessing, cls_from, fmt):
    """model.json of a timm import (the weights' entry is added when best.pt is written)."""
    pcfg = full.pretrained_cfg
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
            "format": fmt,
            "tensors": tensors,
            "pretrained_cfg": {
                k2: pcfg.get(k2)
                for k2 in ("architecture", "tag", "hf_hub_id", "url", "license")
                if pcfg.get(k2)
            },
        },
        "trained_by": f"timm {name} pretrained weights (not vidfeat)",
        "classes_from": cls_from,
        "preprocessing": pre.as_dict(),
        "notes": [str(n) for n in pcfg.get("notes") or ()],
        "versions": _versions(),
    }


def import_timm(
    name: str,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    classes: str | Path | None = None,
    normalize: bool = False,
) -> ImportReport:
    """Package the timm image model ``name`` (any: ResNets, ViTs, ConvNeXt, EfficientNet, CLIP's
    image towers, ...) as a run of per-frame features, recording timm's eval preprocessing.

    A ResNet-family classifier becomes a TSN run (trainable with ``train --init``); any other
    model a ``frame`` run (:class:`~vidfeat.nets.framenet.FrameNet`). A classifier's feature is
    its pooled pre-logits vector and its clip scores the logits averaged over T. A CLIP tower
    (timm's head is CLIP's projection) has no classifier: its feature is the image embedding,
    L2-normalised with ``normalize``. Offline: the weights come from ``weights`` (a timm state
    dict, or an OpenAI / open_clip CLIP checkpoint for timm's ViT CLIP towers) or the local
    timm / Hugging Face cache; without either, :class:`ConfigError` says how to get them.
    """
    from vidfeat.nets.backbones import count_parameters

    out = Path(out)
    _check_out(out)
    full = _timm_model(name)
    pre = _timm_preprocessing(name, full)
    src = _timm_source(name, weights)
    state, k, fmt = _timm_state(name, full, src)
    if fmt != "timm state dict" and not _is_projection(full, k):
        raise ConfigError(_clip_tag_refusal(name, full))
    embed = k if _is_projection(full, k) else 0
    k = 0 if embed else k
    if normalize and k:
        raise ConfigError(
            f"--normalize: timm {name!r} has a {k}-class classifier, whose logits need the "
            "features as they are; --normalize applies to CLIP towers and headless models"
        )
    names, classes_from = _timm_classes(full, classes, k, src)
    if k and _splittable(full):
        arch, options = "tsn", {}
        net = _timm_tsn(name, state, _timm_heads(full)[0], k)
    else:
        arch, options = "frame", {"embed_dim": embed, "normalize": bool(normalize)}
        net = _timm_frame(name, state, k, options, pre.crop)
    meta = _timm_meta(name, src, len(state), full, pre, classes_from, fmt)
    state_out = {k2: v.detach().clone() for k2, v in net.state_dict().items()}
    _write_run(out, _timm_config(name, pre, arch, options), names, state_out, meta)
    for note in meta["notes"]:
        log.warning("timm %s: %s", name, note)
    return ImportReport(
        out,
        "timm",
        arch,
        name,
        k,
        len(state),
        count_parameters(net),
        meta["source"]["sha256"],
        notes=list(meta["notes"]),
    )
