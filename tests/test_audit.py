"""Guards for what the model audit (paper + the authors' code) found unguarded: the TXB's layer
order, StNet's head (no dropout, max over T), the RGB super-image channel layout, iTXN's early +
per-modality late structure, the unit norm of Attention Clusters' shifting operation, FF-LSTM's
alternating directions, and TXN's early/late forms. Each compares the module with an
independent formula, so a reordered layer or a swapped reduction fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidfeat.fusion.heads import create_head
from vidfeat.nets.txb import TemporalXceptionBlock


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN running statistics, eval mode: every layer changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def _bn(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _txb_reference(txb: TemporalXceptionBlock, x: torch.Tensor) -> torch.Tensor:
    """BN first; main path dw → pw → BN → ReLU → dw → pw; a 1×1 skip on the BN'd input;
    add → BN → ReLU (the authors' released block)."""
    a = _bn(x, txb.bn_in)
    cin, cout = x.shape[1], txb.output_dim

    def dw(y, conv, c):
        return F.conv1d(y, conv.weight, conv.bias, padding=1, groups=c)

    main = F.conv1d(dw(a, txb.dw1, cin), txb.pw1.weight, txb.pw1.bias)
    main = torch.relu(_bn(main, txb.bn1))
    main = F.conv1d(dw(main, txb.dw2, cout), txb.pw2.weight, txb.pw2.bias)
    skip = F.conv1d(a, txb.skip.weight, txb.skip.bias)
    return torch.relu(_bn(skip + main, txb.bn_out))


def test_txb_layer_order_is_the_released_block() -> None:
    txb = _randomise(TemporalXceptionBlock(6, 8)).double()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    assert torch.allclose(txb(x), _txb_reference(txb, x), atol=1e-12)


def test_stnets_txb_is_initialised_as_the_authors_code() -> None:
    """He-uniform (MSRA uniform) conv weights, zero biases, identity BN in StNet's TXB."""
    from vidfeat.nets import create_segment_net

    torch.manual_seed(0)
    txb = create_segment_net(
        "stnet", "resnet10t", num_classes=4, in_chans_per_segment=6, frames=2, txb_width=256
    ).txb
    for conv in (txb.dw1, txb.pw1, txb.dw2, txb.pw2, txb.skip):
        fan_in = conv.weight[0].numel()
        bound = (6.0 / fan_in) ** 0.5
        w = conv.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert torch.count_nonzero(conv.bias) == 0


def test_stnet_head_has_no_dropout_and_takes_the_max_over_t() -> None:
    from vidfeat.nets import create_segment_net

    torch.manual_seed(0)
    net = create_segment_net(
        "stnet", "resnet10t", num_classes=4, in_chans_per_segment=6, frames=2, txb_width=8
    )
    assert not any(isinstance(m, nn.Dropout) for m in net.modules())
    net = _randomise(net).double()
    feats = torch.randn(2, 5, net.feature_dim, dtype=torch.float64)
    y = net.txb(feats.transpose(1, 2))
    logits = net.forward_head(feats)
    assert torch.allclose(logits, net.fc(y.amax(2)), atol=1e-12)
    assert not torch.allclose(logits, net.fc(y.mean(2)), atol=1e-3)


def test_rgb_super_image_is_frame_major(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Channel 3·j + c of segment t holds colour c of the segment's frame j."""
    import vidfeat.clips as clips
    from vidfeat.decode import VideoInfo
    from vidfeat.videolist import VideoList, VideoRecord

    n_frames, size = 40, 32

    def fake_probe(path):
        return VideoInfo(
            str(path), n_frames, True, 10.0, 4.0, size, size, "h264", False, None, None, None,
            None, 1, 1,
        )  # fmt: skip

    def fake_read(path, indices, short_side=None, size=None, **kw):
        idx = np.asarray(indices)
        out = np.zeros((len(idx), 32, 32, 3), np.uint8)
        for k, f in enumerate(idx):
            out[k] = [f, 100 + f, 200 - f]  # a distinct value per frame and colour
        return out

    monkeypatch.setattr(clips, "probe", fake_probe)
    monkeypatch.setattr(clips, "read_frames", fake_read)
    videos = VideoList(tmp_path / "l.csv", [VideoRecord("v", tmp_path / "v.mp4")], [], "csv")
    spec = clips.ClipSpec(4, 3, size, size, train=False)
    ds = clips.RGBClips(videos, spec, layout="stnet")
    x = ds[0]["x"].numpy()  # [T, 3N, S, S]
    std = np.tile(clips.IMAGENET_STD, 3)[None, :, None, None]
    mean = np.tile(clips.IMAGENET_MEAN, 3)[None, :, None, None]
    raw = x * std + mean
    raw = np.rint(raw * 255)
    grid = clips.SegmentGrid(4, 3, "test").sample(n_frames, 10.0)
    for t in range(4):
        for j in range(3):
            f = grid.indices[t, j]
            for c, want in enumerate([f, 100 + f, 200 - f]):
                assert np.all(raw[t, 3 * j + c] == want), (t, j, c)


def test_itxn_is_early_plus_one_late_branch_per_modality() -> None:
    from vidfeat.nets.txb import masked_max

    dims = {"rgb": 6, "audio": 4}
    head = _randomise(create_head("itxn", dims, 3, width=5)).double()
    feats = {m: torch.randn(2, 4, d, dtype=torch.float64) for m, d in dims.items()}
    masks = {m: torch.ones(2, 4, dtype=torch.float64) for m in dims}
    early = masked_max(
        head.early(torch.cat([feats["rgb"], feats["audio"]], -1).transpose(1, 2)), None
    )
    late = [masked_max(head.late[m](feats[m].transpose(1, 2)), None) for m in dims]
    assert head.fc.in_features == 5 * (1 + len(dims))
    want = head.fc(torch.cat([early, *late], 1))
    assert torch.allclose(head(feats, masks), want, atol=1e-12)


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_txn_early_and_late_fusion(fusion: str) -> None:
    from vidfeat.nets.txb import masked_max

    dims = {"rgb": 6, "audio": 4}
    head = _randomise(create_head("txn", dims, 3, width=5, fusion=fusion)).double()
    feats = {m: torch.randn(2, 4, d, dtype=torch.float64) for m, d in dims.items()}
    masks = {m: torch.ones(2, 4, dtype=torch.float64) for m in dims}
    if fusion == "early":
        x = torch.cat([feats["rgb"], feats["audio"]], -1).transpose(1, 2)
        want = head.fc(masked_max(head.txb(x), None))
    else:
        late = [masked_max(head.late[m](feats[m].transpose(1, 2)), None) for m in dims]
        want = head.fc(torch.cat(late, 1))
    assert torch.allclose(head(feats, masks), want, atol=1e-12)


def test_attention_clusters_shifting_gives_unit_norm_over_sqrt_k() -> None:
    """v_k = (α_k g_k + β_k) / (√K ‖α_k g_k + β_k‖): each unit has norm 1/√K, so the cluster's
    concatenation has norm 1 whatever the input scale."""
    head = create_head("attention-clusters", {"rgb": 8}, 3, clusters=4).eval()
    cluster = head.clusters["rgb"]
    for scale in (1e-3, 1.0, 1e3):
        x = torch.randn(2, 5, 8) * scale
        v = cluster(x, torch.ones(2, 5)).view(2, 4, 8)
        assert torch.allclose(v.norm(dim=2), torch.full((2, 4), 0.5), atol=1e-5)


def test_fflstm_directions_alternate() -> None:
    """Layer 1 runs forward, layer 2 backward: a change of the last step reaches the first
    step's output only through the backward layer."""
    head = _randomise(create_head("fflstm", {"rgb": 4}, 3, depth=2, hidden=3)).double()
    outs: dict[int, torch.Tensor] = {}
    for k, layer in enumerate(head.layers):
        layer.register_forward_hook(lambda mod, args, out, k=k: outs.__setitem__(k, out[1]))
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[0, -1] += 1.0
    mask = {"rgb": torch.ones(1, 6, dtype=torch.float64)}
    head({"rgb": x}, mask)
    h1, h2 = outs[0].clone(), outs[1].clone()
    head({"rgb": x2}, mask)
    # layer 1 (forward): steps before the changed one are untouched
    assert torch.allclose(outs[0][0, :-1], h1[0, :-1]) and not torch.allclose(outs[0], h1)
    # layer 2 (backward, returned in the original order): the first step sees the change
    assert not torch.allclose(outs[1][0, 0], h2[0, 0])


def test_fflstm_linear_readout_is_the_reference_fc1() -> None:
    head = create_head("fflstm", {"rgb": 4}, 3, readout="linear", readout_width=7)
    assert [type(m) for m in head.readout] == [nn.Linear, nn.Linear]
    relu = create_head("fflstm", {"rgb": 4}, 3)
    assert [type(m) for m in relu.readout] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]


def test_timm_state_dict_through_backbone_weights_gives_timms_features(tmp_path: Path) -> None:
    """A `timm.create_model(name).state_dict()` file through --backbone-weights: TSN's RGB
    per-segment features are timm's pooled features of each frame with those weights."""
    import timm

    from vidfeat.nets import create_segment_net

    torch.manual_seed(0)
    ref = _randomise(timm.create_model("resnet10t", pretrained=False))
    path = tmp_path / "resnet10t.pth"
    torch.save(ref.state_dict(), path)
    net = create_segment_net(
        "tsn", "resnet10t", num_classes=3, in_chans_per_segment=3, frames=1,
        backbone_weights=str(path),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 3, 64, 64)  # [B, T, C, H, W]
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x.flatten(0, 1)), pre_logits=True)
        got = net.forward_features(x)
    assert torch.allclose(got.flatten(0, 1), want, atol=1e-5)
