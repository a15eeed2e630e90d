"""The temporal Xception block (TXB), shared by StNet and the fusion heads.

Input ``[B, Cin, T]`` → ``[B, Cout, T]`` (MODELS.md; all convs 1D with bias, BN γ=1 β=0):

1. BN(Cin)
2. depthwise conv k=3 pad 1 → pointwise Cin→Cout → BN → ReLU
3. depthwise conv k=3 pad 1 → pointwise Cout→Cout
4. skip: pointwise Cin→Cout on the output of step 1
5. add → BN → ReLU

With a mask ``[B, T]`` (1 = valid step), padded steps are zeroed again after every operation
that can make them non-zero, so a sequence padded with masked steps gives exactly the same
outputs at its valid steps as the unpadded sequence (in eval mode).
"""

from __future__ import annotations

import torch
from torch import nn


def _apply(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask[:, None, :].to(x.dtype)


class TemporalXceptionBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 1024) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm1d(in_channels)
        self.dw1 = nn.Conv1d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.pw1 = nn.Conv1d(in_channels, out_channels, 1)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.dw2 = nn.Conv1d(out_channels, out_channels, 3, padding=1, groups=out_channels)
        self.pw2 = nn.Conv1d(out_channels, out_channels, 1)
        self.skip = nn.Conv1d(in_channels, out_channels, 1)
        self.bn_out = nn.BatchNorm1d(out_channels)
        self.output_dim = out_channels
        for bn in (self.bn_in, self.bn1, self.bn_out):
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = _apply(self.bn_in(x), mask)
        y = _apply(torch.relu(self.bn1(self.pw1(self.dw1(x)))), mask)
        y = self.pw2(self.dw2(y))
        return _apply(torch.relu(self.bn_out(y + self.skip(x))), mask)


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
