"""2D backbones for the segment networks: timm models with explicit stages, their weights, and
the inflation of the first convolution to super-image / optical-flow input.

A backbone is a plain timm model built with ``num_classes=0``; a :class:`BackboneFamily` names
the children its ``forward_features`` runs, in order, so a segment network can run them itself
and slot temporal blocks between them without renaming any timm parameter (a timm or
torchvision state dict of the same architecture still loads key for key).

Supported families (anything else raises :class:`ConfigError` naming them), and where StNet's
two temporal modelling blocks go:

- ``resnet`` — timm's ``ResNet`` class: resnet*, resnet*d / *t (deep stem, first conv
  ``conv1.0``), resnext*, seresnext*, ecaresnet*, skresnet*, ...: after ``layer2`` (Res3) and
  ``layer3`` (Res4); 512 and 1024 channels on ResNet-50.
- ``senet`` — timm's ``SENet`` class (legacy_seresnet*, legacy_seresnext*, legacy_senet154,
  the original Caffe ports): after ``layer2`` and ``layer3``.
- ``inception_resnet_v2`` — after ``repeat`` (the 35×35 Inception-ResNet-A stage, 320
  channels) and ``repeat_1`` (the 17×17 Inception-ResNet-B stage, 1088 channels).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from vidfeat.errors import ConfigError
from vidfeat.nets.torchfile import load_torch_file, open_regular

log = logging.getLogger(__name__)

CONV1_MODES = ("rgb-i3d", "rgb-mean", "flow-cross-modality")


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class BackboneFamily:
    """How to run one family of timm models stage by stage."""

    name: str
    cls_path: str  # "module:Class" of the timm model class, imported lazily
    stages: tuple[str, ...]  # children in the order ``forward_features`` runs them
    tmb_after: tuple[str, str]  # StNet's temporal blocks follow these two stages
    examples: str  # for error messages

    def model_class(self) -> type:
        mod, cls = self.cls_path.split(":")
        return getattr(__import__(mod, fromlist=[cls]), cls)


FAMILIES: tuple[BackboneFamily, ...] = (
    BackboneFamily(
        "resnet",
        "timm.models.resnet:ResNet",
        ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"),
        ("layer2", "layer3"),  # Res3, Res4 in the paper's naming
        "resnet18, resnet50, resnet50d, resnext101_32x8d, seresnext101_32x4d",
    ),
    BackboneFamily(
        "senet",
        "timm.models.senet:SENet",
        ("layer0", "pool0", "layer1", "layer2", "layer3", "layer4"),
        ("layer2", "layer3"),
        "legacy_seresnext101_32x4d",
    ),
    BackboneFamily(
        "inception_resnet_v2",
        "timm.models.inception_resnet_v2:InceptionResnetV2",
        (
            "conv2d_1a",
            "conv2d_2a",
            "conv2d_2b",
            "maxpool_3a",
            "conv2d_3b",
            "conv2d_4a",
            "maxpool_5a",
            "mixed_5b",
            "repeat",  # 35×35 stage (Inception-ResNet-A ×10)
            "mixed_6a",
            "repeat_1",  # 17×17 stage (Inception-ResNet-B ×20)
            "mixed_7a",
            "repeat_2",
            "block8",
            "conv2d_7b",
        ),
        ("repeat", "repeat_1"),
        "inception_resnet_v2",
    ),
)


def family_of(model: nn.Module) -> BackboneFamily:
    for fam in FAMILIES:
        if isinstance(model, fam.model_class()):
            return fam
    raise ConfigError(
        f"backbone {type(model).__name__} has no explicit ResNet-style stages the segment "
        "networks know how to split; use a model of a supported family: "
        + "; ".join(f"{f.name} ({f.examples})" for f in FAMILIES)
    )


# --------------------------------------------------------------------------- conv1 inflation


def conv1_inflate(weight_2d: torch.Tensor, frames: int, mode: str) -> torch.Tensor:
    """Inflate a 2D first-conv weight ``[O, 3, kh, kw]`` to a stacked-frames input.

    Modes:

    - ``"rgb-i3d"`` → ``[O, 3N, kh, kw]``: ``W[:, c] / N`` at channel ``3j + c`` for every
      frame j (frame-major super-image). N identical frames give exactly the 2D response.
    - ``"rgb-mean"`` → ``[O, 3N, kh, kw]``: the authors' released code; the colour-averaged
      kernel ``mean_c W[:, c] / N`` tiled to all 3N channels.
    - ``"flow-cross-modality"`` → ``[O, 2N, kh, kw]`` (x/y interleaved): TSN's cross-modality
      init, the colour-averaged kernel replicated to 2N channels, divided by N so the response
      keeps the scale of a 2-channel input (TSN's code does not divide; the following BN
      absorbs the scale in training, but eval-mode running stats from ImageNet do not).
    """
    if weight_2d.dim() != 4 or weight_2d.shape[1] != 3:
        raise ValueError(
            f"expected a 2D RGB conv weight [O, 3, kh, kw], got {tuple(weight_2d.shape)}"
        )
    if frames < 1:
        raise ConfigError(f"--frames must be >= 1 (got {frames})")
    if mode == "rgb-i3d":
        return weight_2d.repeat(1, frames, 1, 1) / frames
    if mode == "rgb-mean":
        return weight_2d.mean(1, keepdim=True).repeat(1, 3 * frames, 1, 1) / frames
    if mode == "flow-cross-modality":
        return weight_2d.mean(1, keepdim=True).repeat(1, 2 * frames, 1, 1) / frames
    raise ConfigError(f"unknown conv1 inflation {mode!r}; choose one of: {', '.join(CONV1_MODES)}")


def first_conv_name(model: nn.Module) -> str:
    """Dotted name of the RGB input conv (``conv1``, ``conv1.0`` for deep stems, ...)."""
    name = model.pretrained_cfg.get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0]
    conv = model.get_submodule(name) if name else None
    if not isinstance(conv, nn.Conv2d) or conv.in_channels != 3:
        raise ConfigError(f"cannot find the RGB input convolution of {type(model).__name__}")
    return name


def inflate_first_conv(model: nn.Module, in_chans: int, frames: int, mode: str) -> str:
    """Replace the backbone's 3-channel first conv by an ``in_chans`` one initialised with
    :func:`conv1_inflate` from its current (loaded) weights. Returns the conv's name."""
    name = first_conv_name(model)
    old: nn.Conv2d = model.get_submodule(name)
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv1_inflate(old.weight, frames, mode))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return name


# --------------------------------------------------------------------------- weights


@dataclass
class WeightsReport:
    """What :func:`load_backbone_weights` matched; kept on the network as ``weights_report``."""

    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)  # in the backbone, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the backbone
    ignored: list[str] = field(default_factory=list)  # classifier keys, dropped on purpose


def _names(keys: list[str], limit: int = 8) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_state_dict(path: str | Path, flag: str = "--backbone-weights") -> dict[str, torch.Tensor]:
    """A plain state dict from a ``.pth``/``.pt`` file (read by
    :func:`~vidfeat.nets.torchfile.load_torch_file`: checked before torch sees it, a pickle
    payload refused, never run) or a ``.safetensors`` file; training checkpoints'
    ``state_dict`` / ``model`` wrappers and DataParallel's ``module.`` prefix are undone.
    Errors name ``flag``."""
    p = Path(path)
    if p.suffix == ".safetensors":
        fd, _ = open_regular(p, f"{flag} {p}")  # a FIFO would block, /dev/zero never end
        os.close(fd)
        try:
            from safetensors.torch import load_file

            state = load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign files
            raise ConfigError(f"{flag} {p}: not a loadable plain state dict ({exc})") from None
    else:
        state = load_torch_file(p, flag)  # refuses tensors beyond their storage too
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{flag} {p}: holds a {type(state).__name__}, not a dict")
    return {
        k.removeprefix("module."): v
        for k, v in state.items()
        if isinstance(k, str) and isinstance(v, torch.Tensor)
    }


def load_backbone_weights(model: nn.Module, path: str | Path) -> WeightsReport:
    """Load a local 2D state dict into a timm backbone built with ``num_classes=0``.

    Classifier keys (``fc.*``, or the family's classifier name) are ignored. Missing and
    unexpected keys are logged by name; a file sharing no key with the backbone, or any shape
    mismatch (another architecture, an already inflated conv1), raises :class:`ConfigError`.
    """
    state = read_state_dict(path)
    head = model.pretrained_cfg.get("classifier") or "fc"
    heads = tuple(f"{h}." for h in ((head,) if isinstance(head, str) else head))
    ignored = sorted(k for k in state if k.startswith(heads))
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    own = model.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        raise ConfigError(
            f"--backbone-weights {path}: no tensor name matches backbone "
            f"{model.pretrained_cfg.get('architecture', type(model).__name__)} (file has e.g. "
            f"{_names(sorted(state), 4)}; backbone expects e.g. {_names(sorted(own), 4)}); "
            "pass a 2D state dict of the same timm/torchvision architecture"
        )
    bad = [
        f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
        for k in matched
        if state[k].shape != own[k].shape
    ]
    if bad:
        raise ConfigError(
            f"--backbone-weights {path}: {len(bad)} tensors have the wrong shape "
            f"({_names(bad, 4)}); pass a 2D state dict of the same architecture, before any "
            "conv1 inflation"
        )
    model.load_state_dict({k: state[k] for k in matched}, strict=False)
    # BN counters are absent from old torchvision files and harmless to leave at zero.
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    if missing:
        log.warning(
            "%s: %d backbone tensors not in the file, left at random init: %s",
            path,
            len(missing),
            _names(missing),
        )
    if unexpected:
        log.warning(
            "%s: %d tensors in the file unused by the backbone: %s",
            path,
            len(unexpected),
            _names(unexpected),
        )
    return WeightsReport(str(path), len(matched), missing, unexpected, ignored)


def _hub_state() -> tuple[bool, str]:
    """(offline mode?, Hugging Face cache folder) as huggingface_hub sees them right now."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE), str(constants.HF_HUB_CACHE)
    except ImportError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        return offline, os.environ.get("HF_HOME", "~/.cache/huggingface")


def create_backbone(
    name: str, *, pretrained: bool = False, backbone_weights: str | Path | None = None
) -> tuple[nn.Module, WeightsReport | None]:
    """A timm model without classifier (``num_classes=0``), 3-channel input, optionally with
    ImageNet weights from the local timm / Hugging Face cache or from a local state dict.

    Returns the model and, for ``backbone_weights``, what the file matched."""
    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(
            f"--backbone {name!r} is not a timm model; list candidates with "
            "`python -c \"import timm; print(timm.list_models('resnet*'))\"`"
        )
    if pretrained and backbone_weights:
        raise ConfigError("pass either --pretrained or --backbone-weights FILE, not both")
    if not pretrained:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        family_of(model)  # fail before loading anything
        report = load_backbone_weights(model, backbone_weights) if backbone_weights else None
        return model, report
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as exc:  # hub/cache/HTTP errors are all OSError subclasses
        try:
            cfg = timm.models.get_pretrained_cfg(name)
            src = (cfg.hf_hub_id or cfg.url) if cfg is not None else None
        except (KeyError, RuntimeError, AttributeError):
            src = None
        offline, cache = _hub_state()
        why = (
            f"HF_HUB_OFFLINE is set, so nothing is downloaded, and they are not in {cache}"
            if offline
            else f"downloading them failed (no network?) and they are not in {cache}"
        )
        raise ConfigError(
            f"cannot load the pretrained weights of timm backbone {name!r}"
            f"{f' ({src})' if src else ''}: {why} [{type(exc).__name__}: {exc}]. "
            "Either populate the Hugging Face cache (HF_HOME) on a machine with network, e.g. "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`, "
            "and copy it here; or pass --backbone-weights FILE with a local 2D state dict."
        ) from None
    family_of(model)
    return model, None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
