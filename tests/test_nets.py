"""Segment networks (StNet, TSN): shapes over the registry, conv1 inflation, the TMB's paper
initialisation, the ResNet-50 size check, gradients, and weight loading — all offline, tiny
backbones at 64×64 except the one build-only ResNet-50 count."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from vidfeat.errors import ConfigError
from vidfeat.nets.backbones import conv1_inflate, count_parameters
from vidfeat.nets.segment import (
    SEGMENT_NETS,
    SegmentNet,
    TemporalModelingBlock,
    create_segment_net,
)

B, T, N, K, HW = 2, 3, 2, 5, 64


def in_chans(arch: str, modality: str, frames: int = N) -> int:
    if modality == "flow":
        return 2 * frames
    return 3 * frames if arch == "stnet" else 3


def build(arch: str, backbone: str = "resnet10t", modality: str = "rgb", **kw) -> SegmentNet:
    frames = kw.pop("frames", N)
    return create_segment_net(
        arch,
        backbone,
        kw.pop("num_classes", K),
        in_chans_per_segment=in_chans(arch, modality, frames),
        frames=frames,
        **kw,
    )


def clip(net: SegmentNet, segments: int = T, size: int = HW) -> torch.Tensor:
    return torch.randn(B, segments, net.in_chans, size, size)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A fresh 2D timm resnet18 state dict (with its 1000-class fc) saved to a file."""
    torch.manual_seed(1)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


# --------------------------------------------------------------------------- registry + shapes


def test_registry_lists_both_and_rejects_unknown() -> None:
    assert SEGMENT_NETS.names() == ["stnet", "tsn"]
    with pytest.raises(ConfigError, match="stnet, tsn"):
        build("i3d")


@pytest.mark.parametrize("modality", ["rgb", "flow"])
@pytest.mark.parametrize("backbone", ["resnet10t", "resnet18"])
@pytest.mark.parametrize("arch", SEGMENT_NETS.names())
def test_shapes(arch: str, backbone: str, modality: str) -> None:
    net = build(arch, backbone, modality).eval()
    assert net.modality == modality
    # StNet RGB: a 3N super-image; TSN RGB: one frame; flow: N x/y pairs for both.
    assert net.in_chans == {"rgb": 3 * N if arch == "stnet" else 3, "flow": 2 * N}[modality]
    x = clip(net)
    with torch.no_grad():
        feats = net.forward_features(x)
        logits = net.forward_head(feats)
        assert torch.allclose(net(x), logits, atol=1e-5)
    assert feats.shape == (B, T, net.feature_dim) and net.feature_dim == 512
    assert logits.shape == (B, K)
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()


def test_stnet_txb_feature_point_and_any_T() -> None:
    net = build("stnet", feature_point="txb", txb_width=32).eval()
    assert net.feature_dim == net.output_dim == 32
    with torch.no_grad():
        for segments in (T, 5):  # trained with T=7, tested with T=25: T is free
            feats = net.forward_features(clip(net, segments))
            assert feats.shape == (B, segments, 32)
            assert net.forward_head(feats).shape == (B, K)


@pytest.mark.parametrize(
    "backbone, tmb_channels, size",
    [
        ("inception_resnet_v2", {"repeat": 320, "repeat_1": 1088}, 80),
        ("legacy_seresnext26_32x4d", {"layer2": 512, "layer3": 1024}, 64),
    ],
)
def test_other_families_place_tmbs(backbone: str, tmb_channels: dict, size: int) -> None:
    net = build("stnet", backbone, frames=1, txb_width=16).eval()
    assert {k: m.output_dim for k, m in net.tmb.items()} == tmb_channels
    with torch.no_grad():
        out = net(torch.randn(1, 2, 3, size, size))
    assert out.shape == (1, K) and torch.isfinite(out).all()


def test_unsupported_and_unknown_backbones_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="resnet.*senet.*inception_resnet_v2"):
        build("tsn", "mobilenetv3_small_050")
    with pytest.raises(ConfigError, match="not a timm model"):
        build("tsn", "resnet_does_not_exist")


def test_bad_options_and_channels_name_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"--net-opt dropout.*tmb=residual"):
        build("stnet", dropout=0.3)
    with pytest.raises(ConfigError, match="tmb=bogus: choose one of paper, residual"):
        build("stnet", tmb="bogus")
    with pytest.raises(ConfigError, match="takes 6 channels.*or 4"):
        create_segment_net("stnet", "resnet10t", K, in_chans_per_segment=3, frames=2)
    with pytest.raises(ConfigError, match="TSN takes 3 channels"):
        create_segment_net("tsn", "resnet10t", K, in_chans_per_segment=6, frames=2)


def test_config_rebuilds_the_same_network() -> None:
    net = build("stnet", "resnet10t", "flow", tmb="residual", txb_width=16).eval()
    again = create_segment_net(**net.config).eval()
    again.load_state_dict(net.state_dict())
    x = clip(net)
    with torch.no_grad():
        assert torch.equal(net(x), again(x))
    assert net.config["tmb"] == "residual" and net.config["arch"] == "stnet"


def test_channels_last_gives_the_same_output() -> None:
    net = build("stnet", txb_width=16).eval()
    x = clip(net)
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=torch.channels_last)(x)
    assert torch.allclose(ref, out, atol=1e-4)


def test_tsn_head_averages_valid_segments_only() -> None:
    net = build("tsn", dropout=0.0).eval()
    feats = torch.randn(B, 4, net.feature_dim)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    with torch.no_grad():
        out = net.forward_head(feats, mask)
        assert torch.allclose(out[0], net.fc(feats[0, :2]).mean(0), atol=1e-5)
        assert torch.allclose(out[1], net.forward_head(feats[1:])[0], atol=1e-5)


# --------------------------------------------------------------------------- conv1 inflation


def test_conv1_inflate_modes_and_identical_frames_property() -> None:
    w = torch.randn(8, 3, 7, 7)
    frame = torch.randn(1, 3, 32, 32)
    for frames in (1, 3, 5):
        inflated = conv1_inflate(w, frames, "rgb-i3d")
        assert inflated.shape == (8, 3 * frames, 7, 7)
        assert torch.equal(inflated[:, 3 * (frames - 1) + 2], w[:, 2] / frames)
        superimg = frame.repeat(1, frames, 1, 1)  # frame-major: channel 3j + c
        assert torch.allclose(
            F.conv2d(superimg, inflated, padding=3), F.conv2d(frame, w, padding=3), atol=1e-4
        )
    flow = conv1_inflate(w, 5, "flow-cross-modality")
    assert flow.shape == (8, 10, 7, 7)
    assert torch.allclose(flow, (w.mean(1, keepdim=True) / 5).expand(-1, 10, -1, -1))
    assert conv1_inflate(w, 5, "rgb-mean").shape == (8, 15, 7, 7)
    with pytest.raises(ConfigError, match="rgb-i3d"):
        conv1_inflate(w, 2, "bogus")


@pytest.mark.parametrize("backbone", ["resnet18", "resnet10t"])
def test_stnet_conv1_on_identical_frames_equals_2d_conv1(backbone: str, tmp_path: Path) -> None:
    """Through the real build path: StNet (N=3) built from a 2D state dict inflates that dict's
    conv1 so a super-image of 3 copies of a frame gives the 2D conv1 response on the frame
    (deep stems inflate conv1[0])."""
    torch.manual_seed(3)
    model2d = timm.create_model(backbone, num_classes=0)
    torch.save(model2d.state_dict(), tmp_path / "2d.pth")
    name = "conv1" if backbone == "resnet18" else "conv1.0"
    conv2d = model2d.get_submodule(name)
    net = build("stnet", backbone, frames=3, backbone_weights=str(tmp_path / "2d.pth"))
    stconv = net.backbone.get_submodule(name)
    assert stconv.in_channels == 9
    with torch.no_grad():
        frame = torch.randn(2, 3, HW, HW)
        assert torch.allclose(stconv(frame.repeat(1, 3, 1, 1)), conv2d(frame), atol=1e-5)
        # frame-major channels: changing frame 1 alone changes the response
        other = frame.repeat(1, 3, 1, 1)
        other[:, 3:6] = torch.randn(2, 3, HW, HW)
        assert not torch.allclose(stconv(other), conv2d(frame), atol=1e-3)


# --------------------------------------------------------------------------- TMB


def test_tmb_paper_init_is_relu_of_temporal_channel_mean() -> None:
    b, t, c, h, w = 2, 5, 6, 3, 4
    tmb = TemporalModelingBlock(c, "paper").eval()
    x = torch.randn(b * t, c, h, w)
    with torch.no_grad():
        out = tmb(x, t)
        out_cl = tmb(x.contiguous(memory_format=torch.channels_last), t)
    # By hand: mean over channels, then over the 3 temporal neighbours with zero padding.
    m = x.view(b, t, c, h, w).mean(2)  # [b, t, h, w]
    padded = F.pad(m, (0, 0, 0, 0, 1, 1))  # zero frame before and after along t
    expect = torch.relu((padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3)
    expect = expect.unsqueeze(2).expand(b, t, c, h, w).reshape(b * t, c, h, w)
    assert out.shape == x.shape
    assert torch.allclose(out, expect, atol=1e-6)
    assert torch.allclose(out_cl, expect, atol=1e-6)


@pytest.mark.parametrize("mode", ["paper", "residual"])
def test_tmb_is_the_conv3d_of_models_md(mode: str) -> None:
    """The (3,1) Conv2d over [B, C, T, H·W] is exactly MODELS.md's Conv3d (3,1,1) over
    [B, C, T, H, W] (checked with random weights and a trained-looking BN)."""
    b, t, c, h, w = 2, 4, 5, 3, 3
    tmb = TemporalModelingBlock(c, mode)
    with torch.no_grad():
        tmb.conv.weight.normal_()
        tmb.conv.bias.normal_()
        tmb.bn.running_mean.normal_()
        tmb.bn.running_var.uniform_(0.5, 2.0)
    tmb.eval()
    x = torch.randn(b * t, c, h, w)
    x5 = x.view(b, t, c, h, w).transpose(1, 2)  # [B, C, T, H, W]
    conv = F.conv3d(x5, tmb.conv.weight.unsqueeze(-1), tmb.conv.bias, padding=(1, 0, 0))

    def bn(z: torch.Tensor) -> torch.Tensor:  # BN3d in eval; γ=1, β=0
        return F.batch_norm(z, tmb.bn.running_mean, tmb.bn.running_var, eps=tmb.bn.eps)

    y5 = x5 + bn(torch.relu(conv)) if mode == "residual" else torch.relu(bn(conv))
    expect = y5.transpose(1, 2).reshape(b * t, c, h, w)
    with torch.no_grad():
        assert torch.allclose(tmb(x, t), expect, atol=1e-5)


def test_residual_tmb_builds_runs_and_differs() -> None:
    tmb = TemporalModelingBlock(8, "residual").eval()
    assert tmb.conv.weight.std() > 0  # He init, not the constant paper init
    x = torch.randn(2 * 3, 8, 4, 4)
    with torch.no_grad():
        y = tmb(x, 3)
        assert y.shape == x.shape and torch.isfinite(y).all()
        # BN at init is the identity in eval, so the block adds ReLU(conv(x)) to x.
        assert torch.all(y >= x - 1e-6)
    net = build("stnet", tmb="residual", txb_width=16).eval()
    with torch.no_grad():
        assert net(clip(net)).shape == (B, K)


# --------------------------------------------------------------------------- size + gradients


def test_stnet_resnet50_parameter_count() -> None:
    net = build("stnet", "resnet50", frames=5, num_classes=400)
    total = count_parameters(net)
    txb = count_parameters(net.txb)
    print(
        f"StNet-R50 (N=5, 400 classes): {total:,} parameters; TXB {txb:,}; "
        f"TMBs {count_parameters(net.tmb):,}; fc {count_parameters(net.fc):,}"
    )
    assert abs(total - 33.2e6) / 33.2e6 < 0.005, total
    assert round(txb / 1e6, 1) == 5.3, txb
    assert net.backbone.conv1.weight.shape == (64, 15, 7, 7)
    assert {k: m.output_dim for k, m in net.tmb.items()} == {"layer2": 512, "layer3": 1024}


@pytest.mark.parametrize("modality", ["rgb", "flow"])
@pytest.mark.parametrize("arch, opts", [("stnet", {}), ("stnet", {"tmb": "residual"}), ("tsn", {})])
def test_gradients_reach_every_parameter(arch: str, opts: dict, modality: str) -> None:
    if arch == "stnet":
        net = build(arch, "resnet10t", modality, txb_width=16, **opts)
    else:
        net = build(arch, "resnet10t", modality)
    net.train()
    x, y = clip(net), torch.tensor([0, 1])
    # one update first: timm zero-initialises the last BN of every residual branch, which
    # blocks the gradient to the branch's other layers until it has moved once (by design)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing
    for name, tmb in net.tmb.items():  # constant at paper init, but must still learn
        assert tmb.conv.weight.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- weights


def test_pretrained_offline_without_cache_is_a_helpful_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # huggingface_hub reads these at import time, so patch its constants as well as the env.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        build("stnet", "resnet18", pretrained=True)
    msg = err.value.message
    for needed in (
        "resnet18",
        "HF_HUB_OFFLINE",
        "nothing is downloaded",
        "Hugging Face cache",
        "--backbone-weights",
    ):
        assert needed in msg, msg


@pytest.mark.parametrize("arch", SEGMENT_NETS.names())
def test_backbone_weights_load_before_inflation(arch: str, resnet18_file) -> None:
    path, state = resnet18_file
    net = build(arch, "resnet18", "flow" if arch == "tsn" else "rgb", backbone_weights=str(path))
    own = net.backbone.state_dict()
    for k, v in own.items():
        if k == "conv1.weight":
            mode = "flow-cross-modality" if arch == "tsn" else "rgb-i3d"
            assert torch.allclose(v, conv1_inflate(state[k], N, mode))
        else:
            assert torch.equal(v, state[k]), k
    rep = net.weights_report
    assert rep.missing == [] and rep.unexpected == []
    assert rep.ignored == ["fc.bias", "fc.weight"]
    assert net.init_info["backbone_weights"] == str(path)


def test_backbone_weights_problems_are_named(
    tmp_path: Path, resnet18_file, caplog: pytest.LogCaptureFixture
) -> None:
    _, state = resnet18_file
    partial = {k: v for k, v in state.items() if k != "layer4.1.bn2.weight"}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    with caplog.at_level(logging.WARNING):
        net = build("tsn", "resnet18", backbone_weights=str(tmp_path / "partial.pth"))
    assert net.weights_report.missing == ["layer4.1.bn2.weight"]
    assert net.weights_report.unexpected == ["extra.weight"]
    assert "layer4.1.bn2.weight" in caplog.text and "extra.weight" in caplog.text

    torch.save({"foo": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(ConfigError, match="no tensor name matches"):
        build("tsn", "resnet18", backbone_weights=str(tmp_path / "foreign.pth"))

    torch.save({**state, "conv1.weight": torch.zeros(64, 6, 7, 7)}, tmp_path / "inflated.pth")
    with pytest.raises(ConfigError, match="wrong shape.*conv1.weight"):
        build("stnet", "resnet18", backbone_weights=str(tmp_path / "inflated.pth"))

    with pytest.raises(ConfigError, match="not both"):
        build("tsn", "resnet18", pretrained=True, backbone_weights=str(tmp_path / "x.pth"))
