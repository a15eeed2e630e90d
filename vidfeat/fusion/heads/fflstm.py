"""Fast-Forward LSTM (the authors' YouTube-8M model, after Zhou et al. 2016).

Layer k has a linear fast-forward projection ``f_k`` of width 4·hidden computed from
``[f_{k-1}, h_{k-1}]`` (layer 1: from the input); ``f_k`` is the input part of the gates of
layer k's LSTM, whose recurrent weights, like the weights from ``h_{k-1}`` into ``f_k``, start
at zero — so at initialisation the network is a deep feed-forward stack along the fast-forward
path. Directions alternate per layer (1 forward, 2 backward, ...); the candidate activation is
ReLU. Readout: masked max over time of the last LSTM output and the last projection →
Linear(readout) → ReLU → dropout → Linear → K.

Masks are taken as valid prefixes (how the store and the data pipeline pad); the backward
direction reverses each sequence within its valid length, and masked steps leave the state
unchanged, so padding never changes a video's output. Defaults are smaller than the paper's
depth 7 / hidden 512 / readout 2048 (small data); all three are options.
"""

from __future__ import annotations

import torch
from torch import nn

from vidfeat.fusion.heads.base import HEADS, FusionHead
from vidfeat.nets.txb import masked_max


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse ``x`` [B, T, C] along T within each row's first ``lengths[b]`` steps."""
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class FFLayer(nn.Module):
    def __init__(self, in_f: int, in_h: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.proj_f = nn.Linear(in_f, 4 * hidden)
        self.proj_h = nn.Linear(in_h, 4 * hidden, bias=False) if in_h else None
        self.recurrent = nn.Linear(hidden, 4 * hidden, bias=False)
        nn.init.zeros_(self.recurrent.weight)
        if self.proj_h is not None:
            nn.init.zeros_(self.proj_h.weight)

    def forward(self, f_prev, h_prev, mask):
        """f_prev [B,T,in_f], h_prev [B,T,in_h] or None, mask [B,T] → (f_k, h_k)."""
        f = self.proj_f(f_prev)
        if self.proj_h is not None:
            f = f + self.proj_h(h_prev)
        B, T, _ = f.shape
        h = f.new_zeros(B, self.hidden)
        c = f.new_zeros(B, self.hidden)
        out = []
        for t in range(T):
            gates = f[:, t] + self.recurrent(h)
            i, fg, o, g = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(fg) * c + torch.sigmoid(i) * torch.relu(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            m = mask[:, t, None].to(f.dtype)
            c = m * c_new + (1 - m) * c
            h = m * h_new + (1 - m) * h
            out.append(h * m)
        return f, torch.stack(out, dim=1)


@HEADS.register("fflstm")
class FastForwardLSTM(FusionHead):
    options = {"depth": 3, "hidden": 128, "readout": "relu", "readout_width": 512, "dropout": 0.5}

    def __init__(
        self,
        dims: dict[str, int],
        num_classes: int,
        *,
        depth: int,
        hidden: int,
        readout: str | int,
        readout_width: int,
        dropout: float,
    ) -> None:
        super().__init__(dims, num_classes)
        from vidfeat.errors import ConfigError

        if depth < 1 or hidden < 1:
            raise ConfigError("fflstm needs depth >= 1 and hidden >= 1")
        if isinstance(readout, int):  # runs made before readout named the form held its width
            readout, readout_width = "relu", readout
        if readout not in ("relu", "linear"):
            raise ConfigError(f"--head-opt readout={readout}: choose relu or linear")
        d_in = sum(dims.values())
        self.layers = nn.ModuleList(
            [
                FFLayer(d_in if k == 0 else 4 * hidden, 0 if k == 0 else hidden, hidden)
                for k in range(depth)
            ]
        )
        # "linear": the reference readout, fc1 linear straight into the classifier; "relu" (a
        # choice, MODELS.md): ReLU and dropout between them
        between = [nn.ReLU(), nn.Dropout(dropout)] if readout == "relu" else []
        self.readout = nn.Sequential(
            nn.Linear(hidden + 4 * hidden, readout_width),
            *between,
            nn.Linear(readout_width, num_classes),
        )

    def forward(self, feats: dict, masks: dict) -> torch.Tensor:
        x, mask = self.concat(feats, masks)
        lengths = mask.sum(1).long()
        f, h = x, None
        for k, layer in enumerate(self.layers):
            backward = k % 2 == 1
            if backward:  # run this layer from the last valid step to the first
                f, h = reverse_valid(f, lengths), None if h is None else reverse_valid(h, lengths)
            f, h = layer(f, h, mask)
            if backward:
                f, h = reverse_valid(f, lengths), reverse_valid(h, lengths)
        f = f * mask.unsqueeze(-1).to(f.dtype)
        pooled = torch.cat(
            [masked_max(h.transpose(1, 2), mask), masked_max(f.transpose(1, 2), mask)], dim=1
        )
        return self.readout(pooled)
