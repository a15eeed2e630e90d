"""RAFT optical flow (Teed & Deng 2020) from torchvision: ``--method raft``, a batched method.

Every distinct pair of a video goes through the network in one forward pass (chunked by
``--batch-size``, default: what fits a memory budget), on ``--device`` (CUDA when available).
Frames are RGB (RAFT was trained on colour), scaled to [-1, 1] as torchvision's
``OpticalFlow`` transform does, padded by edge replication to multiples of 8 (RAFT's 1/8
feature grid) and at least 128 px a side (its correlation pyramid), and the flow cropped back.

Weights are never downloaded: they come from ``--flow-weights FILE`` (a state dict, loaded with
``weights_only=True``) or from the torchvision cache (``<torch hub dir>/checkpoints/`` with the
file names of ``Raft_Large_Weights`` / ``Raft_Small_Weights``); without either the method
refuses, naming both ways. The set records the weights' SHA-256, so a resumed set never mixes
weights.

torch and torchvision are imported only when the method is configured or run: :mod:`vidfeat.flow`
imports this module to register the method, and the CLI builds its options from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.flow.base import FlowMethod, _at_least, _opt

RAFT_MODELS = ("large", "small")
# torchvision's weight enums; the first of each is the DEFAULT, the one preferred in the cache
_WEIGHTS_ENUM = {"large": "Raft_Large_Weights", "small": "Raft_Small_Weights"}
_CPU_BUDGET = 2 << 30  # bytes a forward may take on the CPU
# torchvision's correlation pyramid (4 levels below the 1/8 feature grid) needs >= 128 px
_MIN_SIDE = 128
# peak bytes per pair per pixel of a forward (measured on CPU, torchvision 0.29: ~400 small,
# ~600 large at 12 updates, incl. the correlation pyramid), plus 8 per update (the upsampled
# prediction of every update is kept)
_BYTES_PER_PIXEL = 700


@dataclass(frozen=True)
class RAFTParams:
    """RAFT's parameters: the network and its number of recurrent updates."""

    model: str = _opt(
        "large",
        "RAFT network: large (raft_large, 5.3 M parameters) or small (raft_small, 1.0 M, "
        "about 3x faster, coarser)",
        choices=RAFT_MODELS,
    )
    num_flow_updates: int = _opt(
        12, "RAFT recurrent refinement iterations (torchvision's default; the paper uses 32)"
    )


def cache_candidates(model: str) -> list[Path]:
    """The torchvision cache files of ``model``'s weights, the DEFAULT first."""
    import torch
    from torchvision.models import optical_flow

    enum = getattr(optical_flow, _WEIGHTS_ENUM[model])
    ordered = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    root = Path(torch.hub.get_dir()) / "checkpoints"
    return [root / Path(urlparse(w.url).path).name for w in ordered]


def _sha256(path: Path) -> str:
    from vidfeat.provenance import file_sha256

    return file_sha256(path, "--flow-weights")


class RAFT(FlowMethod):
    """torchvision's RAFT (``raft_large`` / ``raft_small``), batched, on a torch device."""

    name = "raft"
    params_cls = RAFTParams
    color = True
    uses_torch = True
    precisions = ("auto", "fp32", "bf16", "fp16")
    default_precision = "auto"
    # channels_last: no faster on the CPU (0.9x in fp32, 1.05x in bf16; bench_precision.py)
    channels_last = False

    def validate(self) -> None:
        _at_least(self.params, 1, "num_flow_updates")

    def runtime(
        self,
        *,
        device: str | None = None,
        batch_size: int | None = None,
        weights: Any = None,
        precision: str | None = None,
    ) -> RAFT:
        super().runtime(device=device, batch_size=batch_size, precision=precision)
        if weights is not None:
            p = Path(weights)
            if not p.is_file():
                if p.exists():  # says what it is (a FIFO, a directory...)
                    from vidfeat.nets.torchfile import check_regular

                    check_regular(p, f"--flow-weights {p}")
                raise ConfigError(f"--flow-weights {p}: no such file")
            self.weights = str(p)
            self._local.__dict__.pop("provenance", None)
            self._local.__dict__.pop("net", None)
        return self

    def weights_file(self) -> Path:
        """``--flow-weights``, else the torchvision cache; ConfigError naming both ways."""
        if self.weights is not None:
            return Path(self.weights)
        cands = cache_candidates(self.params.model)
        for c in cands:
            if c.is_file():
                return c
        raise ConfigError(
            f"--method raft --model {self.params.model} needs weights (nothing is downloaded): "
            f"pass --flow-weights FILE (a state dict of torchvision's raft_{self.params.model}), "
            f"or put torchvision's file in its cache: {cands[0]} (e.g. copied from a machine "
            f"where torchvision.models.optical_flow.raft_{self.params.model}"
            f"(weights='DEFAULT') ran)"
        )

    def provenance(self) -> dict[str, Any]:
        """The weights' SHA-256 (compared on resume) and path (informational). Loads them into
        the network once here, so a file that does not fit refuses before any video."""
        prov = getattr(self._local, "provenance", None)
        if prov is None:
            from vidfeat.device import resolve_device

            path = self.weights_file()
            net = self._build(path, "cpu")
            dev = resolve_device(self.device)
            if dev.type == "cpu":  # kept: an in-process run on the CPU loads the weights once
                self._local.net = (net, dev)
            prov = {
                "method_weights": _sha256(path),
                "method_weights_path": str(path),
                **self._precision(dev).record(),
            }
            self._local.provenance = prov
        return prov

    def _build(self, path: Path, device: Any) -> Any:
        from torchvision.models.optical_flow import raft_large, raft_small

        from vidfeat.nets.torchfile import load_torch_file

        net = (raft_large if self.params.model == "large" else raft_small)(weights=None)
        state = load_torch_file(path, "--flow-weights")  # checked before torch sees it
        if not isinstance(state, dict):
            raise ConfigError(
                f"--flow-weights {path}: holds a {type(state).__name__}, not a state dict"
            )
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError) as exc:
            first = str(exc).splitlines()[:2]
            raise ConfigError(
                f"{path} does not fit raft_{self.params.model} ({' '.join(first)[:300]}); "
                f"weights of the other network need --model "
                f"{'small' if self.params.model == 'large' else 'large'}"
            ) from None
        return net.eval().to(device)

    def _precision(self, dev: Any) -> Any:
        """``--precision`` on ``dev`` (fields of one set never mix precisions: recorded)."""
        from vidfeat.precision import resolve_precision

        return resolve_precision(self.precision, dev, self)

    def setup(self) -> None:
        self._net()

    def _net(self) -> tuple[Any, Any]:
        got = getattr(self._local, "net", None)
        if got is None:
            from vidfeat.device import resolve_device

            dev = resolve_device(self.device)
            got = (self._build(self.weights_file(), dev), dev)
            self._local.net = got
        return got

    def default_batch(self, height: int, width: int) -> int:
        """All of a video's pairs when they fit: half the free memory of a CUDA device, 2 GiB
        on the CPU, at ~(700 + 8·updates) bytes per pixel of a (padded) pair."""
        import torch

        from vidfeat.device import resolve_device

        dev = resolve_device(self.device)
        budget = _CPU_BUDGET
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            budget = free // 2
        h, w = max(_MIN_SIDE, height + -height % 8), max(_MIN_SIDE, width + -width % 8)
        per_pair = (_BYTES_PER_PIXEL + 8 * self.params.num_flow_updates) * h * w
        return int(max(1, budget // per_pair))

    def calc_batch(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """uint8 RGB ``(B, H, W, 3)`` × 2 → float32 ``(B, H, W, 2)`` (dx, dy), one forward."""
        import torch
        import torch.nn.functional as F

        self._check_frames(prev, nxt, batch=True)
        net, dev = self._net()
        _, h, w, _ = prev.shape
        ph, pw = max(_MIN_SIDE, h + -h % 8) - h, max(_MIN_SIDE, w + -w % 8) - w
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # left, right, top, bottom

        def prep(x: np.ndarray) -> Any:
            t = torch.from_numpy(np.ascontiguousarray(x)).to(dev).permute(0, 3, 1, 2).float()
            t = t * (2.0 / 255.0) - 1.0  # convert_image_dtype + normalize(0.5, 0.5)
            return F.pad(t, pad, mode="replicate") if ph or pw else t

        with torch.inference_mode(), self._precision(dev).autocast(dev):
            flow = net(prep(prev), prep(nxt), num_flow_updates=self.params.num_flow_updates)[-1]
            flow = flow[:, :, pad[2] : pad[2] + h, pad[0] : pad[0] + w]
            return flow.permute(0, 2, 3, 1).contiguous().float().cpu().numpy()
