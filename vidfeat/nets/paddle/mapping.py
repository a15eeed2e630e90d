"""What a parameter file holds (:func:`describe_params`) and the strict mapping of its names
onto vidfeat's StNet and TSN (:func:`paddle_mapping`, :func:`state_dict_from_paddle`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.nets.paddle.rules import (
    _CONV1,
    _conv1_ok,
    shape_problem,
)

RESNET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
TXB_LAYERS = (  # Paddle layer name → vidfeat TemporalXceptionBlock child, in creation order
    ("xception_bn", "bn_in"),
    ("xception_att_conv", "dw1"),
    ("xception_att_2", "pw1"),
    ("xception_bndw", "bn1"),
    ("xception_att1", "dw2"),
    ("xception_att1_2", "pw2"),
    ("xception_dw", "skip"),
    ("xception_bn2", "bn_out"),
)


# --------------------------------------------------------------------------- what a file holds


@dataclass(frozen=True)
class PaddleFile:
    """What the parameter names and shapes of a file say about the network that wrote it."""

    arch: str  # "stnet" (xception_* layers present) or "tsn"
    backbone: str  # timm name of the ResNet with the file's block counts
    in_chans: int  # conv1 input channels: 3N for an StNet super-image, 3 for TSN RGB
    frames: int  # N
    num_classes: int  # K, from the classifier's shape
    fc_in: int


_RES_CONV = re.compile(r"^res([2-5])([a-z])(\d*)_branch2a_weights$")


def describe_params(params: dict[str, np.ndarray], source: str = "the file") -> PaddleFile:
    """Architecture, ResNet depth, N and K of a Paddle StNet/TSN parameter dict."""
    if "conv1_weights" not in params:
        raise ConfigError(
            f"{source}: no conv1_weights — not a PaddlePaddle ResNet-based StNet/TSN file "
            f"(it holds e.g. {', '.join(sorted(params)[:4])})"
        )
    blocks = {s: 0 for s in "2345"}
    for name in params:
        m = _RES_CONV.match(name)
        if m:
            blocks[m.group(1)] += 1
    depths = tuple(blocks[s] for s in "2345")
    backbone = RESNET_DEPTHS.get(depths)
    if backbone is None:
        raise ConfigError(
            f"{source}: ResNet blocks per stage {depths} match none of ResNet-50/101/152 "
            f"{tuple(RESNET_DEPTHS)}"
        )
    arch = "stnet" if any(n.startswith("xception_") for n in params) else "tsn"
    conv1 = np.shape(params["conv1_weights"])
    if not _conv1_ok(tuple(conv1)):  # what load_pdparams refuses, for dicts built elsewhere
        raise ConfigError(f"{source}: {shape_problem(_CONV1, tuple(conv1))}")
    in_chans = int(conv1[1])
    if arch == "stnet" and in_chans % 3:
        raise ConfigError(f"{source}: StNet conv1 has {in_chans} input channels, not 3N")
    fcs = _auto_groups(params, "fc")
    if not fcs or "w_0" not in fcs[0][1] or params[fcs[0][1]["w_0"]].ndim != 2:
        raise ConfigError(f"{source}: no classifier fc_<k>.w_0 [in, K] in the file")
    fc_in, k = (int(d) for d in params[fcs[0][1]["w_0"]].shape)
    return PaddleFile(arch, backbone, in_chans, in_chans // 3 if arch == "stnet" else 1, k, fc_in)


# --------------------------------------------------------------------------- name mapping


@dataclass(frozen=True)
class Entry:
    """One tensor: Paddle name → vidfeat state-dict key, and how its array is laid out."""

    paddle: str
    torch: str
    transform: str = "copy"  # copy | reshape (conv3d/conv2d → the 2D/1D conv) | transpose (fc)


@dataclass
class Mapping:
    entries: list[Entry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # expected in the file, absent
    unexpected: list[str] = field(default_factory=list)  # in the file, used by nothing


_BN_EXPLICIT = (("scale", "weight"), ("offset", "bias"), ("mean", "running_mean"))
_BN_EXPLICIT += (("variance", "running_var"),)
_BN_AUTO = (("w_0", "weight"), ("b_0", "bias"), ("w_1", "running_mean"), ("w_2", "running_var"))


def _conv_bn(paddle: str, conv: str, bn: str) -> list[Entry]:
    """A Paddle ``conv_bn_layer`` (conv without bias + BN) named ``paddle`` (res2a_branch2a)."""
    bn_name = "bn_conv1" if paddle == "conv1" else "bn" + paddle[3:]
    out = [Entry(f"{paddle}_weights", f"{conv}.weight")]
    out += [Entry(f"{bn_name}_{p}", f"{bn}.{t}") for p, t in _BN_EXPLICIT]
    return out


def resnet_entries(backbone: str, prefix: str = "backbone.") -> list[Entry]:
    """The explicit ResNet names of ``stnet_res_model.py`` / ``tsn_res_model.py`` → timm keys."""
    depths = next(d for d, name in RESNET_DEPTHS.items() if name == backbone)
    out = _conv_bn("conv1", f"{prefix}conv1", f"{prefix}bn1")
    for stage, n in enumerate(depths):
        s = stage + 2
        for i in range(n):
            if backbone != "resnet50" and s == 4:
                block = "a" if i == 0 else f"b{i}"
            else:
                block = chr(ord("a") + i)
            base, timm_block = f"res{s}{block}", f"{prefix}layer{stage + 1}.{i}"
            for j, br in enumerate("abc"):
                out += _conv_bn(
                    f"{base}_branch2{br}", f"{timm_block}.conv{j + 1}", f"{timm_block}.bn{j + 1}"
                )
            if i == 0:  # projection shortcut: the shape changes at every stage's first block
                out += _conv_bn(
                    f"{base}_branch1", f"{timm_block}.downsample.0", f"{timm_block}.downsample.1"
                )
    return out


def _auto_groups(params: dict[str, Any], prefix: str) -> list[tuple[int, dict[str, str]]]:
    """``prefix_<i>.<suffix>`` names grouped by i, in order of i: [(i, {suffix: name})]."""
    pat = re.compile(rf"^{re.escape(prefix)}_(\d+)\.([wb]_\d+)$")
    groups: dict[int, dict[str, str]] = {}
    for name in params:
        m = pat.match(name)
        if m:
            groups.setdefault(int(m.group(1)), {})[m.group(2)] = name
    return sorted(groups.items())


def _has_channels(params: dict, names: dict[str, str], channels: int, axis: int) -> bool:
    a = params.get(names.get("w_0", names.get("b_0", "")))
    return a is not None and a.ndim > axis and a.shape[axis] == channels


def _assign(
    mapping: Mapping,
    params: dict[str, np.ndarray],
    prefix: str,
    roles: list[tuple[str, int, int]],
    suffixes: tuple[tuple[str, str, str], ...],
) -> None:
    """Match the auto-numbered ``prefix_<i>`` layers to ``roles`` [(torch module, channel
    count, axis of w_0/b_0 holding it)]: by shape first, the lowest number among equals."""
    groups = _auto_groups(params, prefix)
    free = list(groups)
    for module, channels, axis in roles:
        pick = next(
            (g for g in free if _has_channels(params, g[1], channels, axis)),
            free[0] if free else None,
        )
        if pick is None:
            mapping.missing += [f"{prefix}_?.{s} (for {module})" for s, _, _ in suffixes]
            continue
        free.remove(pick)
        i, names = pick
        for suffix, key, transform in suffixes:
            name = names.pop(suffix, None)
            if name is None:
                mapping.missing.append(f"{prefix}_{i}.{suffix} (for {module})")
            else:
                mapping.entries.append(Entry(name, f"{module}.{key}", transform))
        mapping.unexpected += sorted(names.values())
    for _, names in free:
        mapping.unexpected += sorted(names.values())


def paddle_mapping(params: dict[str, np.ndarray], net: Any) -> Mapping:
    """Every tensor of ``net`` (a vidfeat StNet or TSN on a torchvision-style ResNet) paired with
    its Paddle name in ``params``; what cannot be paired lands in ``missing`` / ``unexpected``."""
    arch = net.arch
    mapping = Mapping()
    backbone = net.config["backbone"]
    if backbone not in RESNET_DEPTHS.values():
        raise ConfigError(f"Paddle StNet/TSN files hold a ResNet-50/101/152, not {backbone}")
    mapping.entries += resnet_entries(backbone)
    auto = ("conv3d", "batch_norm", "fc")
    if arch == "stnet":
        for paddle_layer, child in TXB_LAYERS:
            suffixes = _BN_AUTO if "bn" in paddle_layer else (("w_0", "weight"), ("b_0", "bias"))
            for s, t in suffixes:
                transform = "reshape" if s == "w_0" and "bn" not in paddle_layer else "copy"
                mapping.entries.append(Entry(f"{paddle_layer}.{s}", f"txb.{child}.{t}", transform))
        tmb = [(f"tmb.{stage}", int(m.conv.in_channels)) for stage, m in net.tmb.items()]
        _assign(
            mapping,
            params,
            "conv3d",
            [(f"{m}.conv", c, 0) for m, c in tmb],
            (("w_0", "weight", "reshape"), ("b_0", "bias", "copy")),
        )
        _assign(
            mapping,
            params,
            "batch_norm",
            [(f"{m}.bn", c, 0) for m, c in tmb],
            tuple((s, t, "copy") for s, t in _BN_AUTO),
        )
    _assign(
        mapping,
        params,
        "fc",
        [("fc", int(net.fc.in_features), 0)],
        (("w_0", "weight", "transpose"), ("b_0", "bias", "copy")),
    )
    expected = {e.paddle for e in mapping.entries}
    mapping.missing += [e.paddle for e in mapping.entries if e.paddle not in params]
    mapping.entries = [e for e in mapping.entries if e.paddle in params]
    auto_pat = re.compile(rf"^({'|'.join(auto)})_\d+\.[wb]_\d+$")
    mapping.unexpected += sorted(n for n in params if n not in expected and not auto_pat.match(n))
    mapping.unexpected = sorted(set(mapping.unexpected))
    return mapping


def _convert(a: np.ndarray, transform: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The array in the layout of the torch tensor of ``shape``, or None when it cannot be."""
    if transform == "transpose":
        a = a.T if a.ndim == 2 else a
    elif transform == "reshape":
        # conv3d [C, C, 3, 1, 1] → Conv2d (3,1) [C, C, 3, 1]; conv2d [C, c, 3, 1] → Conv1d [C, c, 3]
        if a.size != int(np.prod(shape)) or a.shape[: len(shape) - 1] != shape[:-1]:
            return None
        a = a.reshape(shape)
    return a if tuple(a.shape) == tuple(shape) else None


def _listing(names: list[str], limit: int = 12) -> str:
    more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def state_dict_from_paddle(
    params: dict[str, np.ndarray], net: Any, source: str = "the file"
) -> tuple[dict[str, Any], list[Entry]]:
    """A complete state dict for ``net`` from the Paddle arrays (float32), and the entries used.

    Strict: raises :class:`ConfigError` listing the missing, unexpected and mis-shaped names
    unless every array is used once and every tensor of ``net`` (BN counters aside) is filled.
    """
    import torch

    mapping = paddle_mapping(params, net)
    own = net.state_dict()
    state: dict[str, torch.Tensor] = {}
    misshaped: list[str] = []
    for e in mapping.entries:
        if e.torch not in own:
            mapping.unexpected.append(f"{e.paddle} (no {e.torch} in the network)")
            continue
        want = tuple(own[e.torch].shape)
        a = _convert(params[e.paddle], e.transform, want)
        if a is None:
            misshaped.append(
                f"{e.paddle} {list(params[e.paddle].shape)} for {e.torch} {list(want)}"
            )
            continue
        state[e.torch] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    unfilled = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    mapped_torch = {e.torch for e in mapping.entries}
    unfilled = [k for k in unfilled if k not in mapped_torch]  # mis-shaped ones are listed there
    if mapping.missing or mapping.unexpected or misshaped or unfilled:
        parts = []
        if mapping.missing:
            parts.append(
                f"missing from the file ({len(mapping.missing)}): {_listing(mapping.missing)}"
            )
        if mapping.unexpected:
            parts.append(
                f"unexpected in the file ({len(mapping.unexpected)}): "
                f"{_listing(mapping.unexpected)}"
            )
        if misshaped:
            parts.append(f"mis-shaped ({len(misshaped)}): {_listing(misshaped)}")
        if unfilled:
            parts.append(f"network tensors left unfilled ({len(unfilled)}): {_listing(unfilled)}")
        raise ConfigError(
            f"{source} does not match the authors' {net.arch.upper()} on "
            f"{net.config['backbone']} with {net.num_classes} classes tensor for tensor — "
            + "; ".join(parts)
            + ". Pass the unmodified STNET.pdparams / TSN.pdparams (paddle-stnet for StNet, "
            "paddle-tsn for TSN)"
        )
    for k, v in own.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.zeros_like(v)
    return state, mapping.entries
