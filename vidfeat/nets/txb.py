"""The temporal Xception block (TXB), shared by StNet and the fusion heads.

Input ``[B, Cin, T]`` → ``[B, Cout, T]`` (MODELS.md; all convs 1D with bias, BN γ=1 β=0):

1. BN(Cin)
2. depthwise conv k=3 pad 1 → pointwise Cin→Cout → BN → ReLU
3. depthwise conv k=3 pad 1 → pointwise Cout→Cout
4. skip: pointwise Cin→Cout on the output of step 1
5. add → BN → ReLU

With a mask ``[B, T]`` (1 = valid step), padded steps are zeroed again after every operation
that can make them non-zero, and in training the BatchNorm statistics are taken over the valid
steps only (:class:`MaskedBatchNorm1d`), so a sequence padded with masked steps gives exactly the
same outputs at its valid steps as the unpadded sequence — in training as in evaluation — and
padding in one video never shifts another video's normalisation.
"""

from __future__ import annotations

import torch
from torch import nn


def _apply(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask[:, None, :].to(x.dtype)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over ``[B, C, T]`` whose training statistics (and running averages) count only
    the valid steps of ``mask`` ``[B, T]``. Without a mask, or in eval mode, it is exactly
    ``nn.BatchNorm1d`` (same parameters and buffers, so state dicts are interchangeable)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or not self.training or bool(mask.bool().all()):
            return super().forward(x)
        m = mask[:, None, :].to(x.dtype)
        n = m.sum()
        if n < 2:  # no statistics from fewer than two values; a standard BN would raise
            return super().forward(x)
        mean = (x * m).sum((0, 2)) / n
        var = (((x - mean[None, :, None]) ** 2) * m).sum((0, 2)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                mom = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.mul_(1 - mom).add_(mom * mean)
                self.running_var.mul_(1 - mom).add_(mom * var * n / (n - 1))  # unbiased
        y = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y


class TemporalXceptionBlock(nn.Module):
    """``init="authors"``: He-uniform (MSRA) conv weights and zero biases, as the authors'
    StNet code (its ``xception``); ``init="torch"``: PyTorch's defaults, what the fusion heads
    use (a choice: the authors released no fusion-head code, and on small data the heads train
    better from PyTorch's smaller initial weights)."""

    def __init__(self, in_channels: int, out_channels: int = 1024, init: str = "torch") -> None:
        super().__init__()
        self.bn_in = MaskedBatchNorm1d(in_channels)
        self.dw1 = nn.Conv1d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.pw1 = nn.Conv1d(in_channels, out_channels, 1)
        self.bn1 = MaskedBatchNorm1d(out_channels)
        self.dw2 = nn.Conv1d(out_channels, out_channels, 3, padding=1, groups=out_channels)
        self.pw2 = nn.Conv1d(out_channels, out_channels, 1)
        self.skip = nn.Conv1d(in_channels, out_channels, 1)
        self.bn_out = MaskedBatchNorm1d(out_channels)
        self.output_dim = out_channels
        for bn in (self.bn_in, self.bn1, self.bn_out):
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
        if init not in ("authors", "torch"):
            raise ValueError(f"TXB init must be authors or torch (got {init!r})")
        if init == "authors":  # He-uniform (MSRA, uniform) weights, zero biases
            for conv in (self.dw1, self.pw1, self.dw2, self.pw2, self.skip):
                nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, Cin, T]`` (+ mask ``[B, T]``) → ``[B, Cout, T]``."""
        x = _apply(self.bn_in(x, mask), mask)
        y = _apply(torch.relu(self.bn1(self.pw1(self.dw1(x)), mask)), mask)
        y = self.pw2(self.dw2(y))
        return _apply(torch.relu(self.bn_out(y + self.skip(x), mask)), mask)


def masked_max(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Max over valid T of ``[B, C, T]`` → ``[B, C]``; a row without valid steps gives zeros."""
    if mask is None:
        return x.amax(dim=2)
    m = mask[:, None, :].bool()
    out = x.masked_fill(~m, float("-inf")).amax(dim=2)
    return torch.where(m.any(dim=2), out, torch.zeros_like(out))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid T of ``[B, C, T]`` → ``[B, C]``; zeros when nothing is valid."""
    if mask is None:
        return x.mean(dim=2)
    m = mask[:, None, :].to(x.dtype)
    return (x * m).sum(2) / m.sum(2).clamp_min(1.0)
