"""Every registered fusion head: shapes, masking, invariances, gradients, overfitting."""

from __future__ import annotations

import pytest
import torch

from vidfeat.errors import ConfigError
from vidfeat.fusion.heads import HEADS, create_head
from vidfeat.nets.txb import MaskedBatchNorm1d, TemporalXceptionBlock, masked_max

DIMS = {"rgb": 16, "audio": 24}
K, T, B = 5, 6, 4
SMALL = {
    "txn": {"width": 32},
    "itxn": {"width": 32},
    "fflstm": {"hidden": 16, "readout_width": 32},
    "attention-clusters": {"clusters": 4},
    "single": {"hidden": 32},
}


def dims_for(name: str) -> dict[str, int]:
    return {"rgb": 16} if name == "single" else DIMS


def head(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_head(name, dims_for(name), K, **SMALL[name]).eval()


def batch(dims: dict[str, int], b: int = B, t: int = T, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(b, t, d, generator=g) for m, d in dims.items()}
    masks = {m: torch.ones(b, t) for m in dims}
    return feats, masks


def test_registry_names() -> None:
    assert HEADS.names() == ["attention-clusters", "fflstm", "itxn", "single", "txn"]
    with pytest.raises(ConfigError, match="no option"):
        create_head("txn", DIMS, K, hidden=3)
    with pytest.raises(ConfigError, match="one feature set"):
        create_head("single", DIMS, K)


@pytest.mark.parametrize("name", HEADS.names())
def test_shapes_and_finiteness(name: str) -> None:
    feats, masks = batch(dims_for(name))
    out = head(name)(feats, masks)
    assert out.shape == (B, K) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", HEADS.names())
def test_masking(name: str) -> None:
    net = head(name)
    dims = dims_for(name)
    feats, masks = batch(dims)
    ref = net(feats, masks)
    # other videos of the batch change: video 0's logits do not
    f2 = {m: v.clone() for m, v in feats.items()}
    for v in f2.values():
        v[1:] = torch.randn_like(v[1:]) * 3
    assert torch.allclose(net(f2, masks)[0], ref[0], atol=1e-5)
    # right-padding with masked steps (garbage values) does not change a video's logits
    pad = 3
    fp = {m: torch.cat([v, torch.randn(B, pad, v.shape[2]) * 5], 1) for m, v in feats.items()}
    mp = {m: torch.cat([v, torch.zeros(B, pad)], 1) for m, v in masks.items()}
    assert torch.allclose(net(fp, mp), ref, atol=1e-4)
    # a fully missing modality: finite, and other videos unaffected
    m0 = next(iter(dims))
    fm = {m: v.clone() for m, v in feats.items()}
    mm = {m: v.clone() for m, v in masks.items()}
    fm[m0][2] = 0
    mm[m0][2] = 0
    out = net(fm, mm)
    assert torch.isfinite(out).all()
    keep = [0, 1, 3]
    assert torch.allclose(out[keep], ref[keep], atol=1e-5)


def test_attention_clusters_are_permutation_invariant_over_time() -> None:
    net = head("attention-clusters")
    feats, masks = batch(DIMS)
    perm = torch.randperm(T)
    out = net({m: v[:, perm] for m, v in feats.items()}, masks)
    assert torch.allclose(out, net(feats, masks), atol=1e-5)


@pytest.mark.parametrize("name", HEADS.names())
def test_gradient_reaches_every_parameter(name: str) -> None:
    net = head(name).train()
    feats, masks = batch(dims_for(name), b=8)
    y = torch.arange(8) % K
    # one update first: FF-LSTM's zero-initialised h->f weights block the gradient to the lower
    # layers' recurrent weights until they have moved once (by design)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(net(feats, masks), y).backward()
    opt.step()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(feats, masks), y).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_fflstm_zero_initialisation() -> None:
    net = head("fflstm")
    for layer in net.layers:
        assert (layer.recurrent.weight == 0).all()
        if layer.proj_h is not None:
            assert (layer.proj_h.weight == 0).all()
    assert len(net.layers) == 3


@pytest.mark.parametrize("name", HEADS.names())
def test_overfits_32_samples(name: str) -> None:
    # pure memorisation: random features, random labels (no class structure to lean on)
    torch.manual_seed(0)
    dims = dims_for(name)
    n = 32
    y = torch.randint(0, K, (n,))
    feats = {m: torch.randn(n, T, d) for m, d in dims.items()}
    masks = {m: torch.ones(n, T) for m in dims}
    net = create_head(name, dims, K, **SMALL[name])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    acc = 0.0
    for step in range(1, 301):
        net.train()
        loss = torch.nn.functional.cross_entropy(net(feats, masks), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            net.eval()
            acc = (net(feats, masks).argmax(1) == y).float().mean().item()
            if acc == 1.0:
                break
    assert acc == 1.0


@pytest.mark.parametrize("training", [False, True])
def test_txb_padding_invariance_and_size(training: bool) -> None:
    torch.manual_seed(0)
    txb = TemporalXceptionBlock(8, 16).train(training)
    x = torch.randn(2, 8, 5)
    ref = txb(x, torch.ones(2, 5))
    xp = torch.cat([x, torch.randn(2, 8, 3)], 2)
    mp = torch.cat([torch.ones(2, 5), torch.zeros(2, 3)], 1)
    # in training too: BatchNorm statistics count only the valid steps
    assert torch.allclose(txb(xp, mp)[..., :5], ref, atol=1e-5)
    n = sum(p.numel() for p in TemporalXceptionBlock(2048, 1024).parameters())
    assert abs(n - 5.3e6) / 5.3e6 < 0.01
    assert (masked_max(torch.randn(1, 4, 3), torch.zeros(1, 3)) == 0).all()


def test_masked_batchnorm_uses_only_valid_steps() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6)
    mask = torch.ones(3, 6)
    mask[0, 4:] = 0
    mask[2] = 0  # a video without this modality: no say in the statistics
    bn = MaskedBatchNorm1d(4).train()
    out = bn(x, mask)
    valid = x.permute(1, 0, 2)[:, mask.bool()]  # [C, n valid]
    ref_bn = torch.nn.BatchNorm1d(4).train()
    ref = ref_bn(valid.T[None].transpose(1, 2))[0]  # [C, n]
    assert torch.allclose(out.permute(1, 0, 2)[:, mask.bool()], ref, atol=1e-5)
    assert torch.allclose(bn.running_mean, ref_bn.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref_bn.running_var, atol=1e-6)
    # without a mask it is nn.BatchNorm1d
    plain = torch.nn.BatchNorm1d(4).train()
    assert torch.allclose(MaskedBatchNorm1d(4).train()(x), plain(x), atol=1e-6)
