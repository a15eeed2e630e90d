"""VGGish audio on the segment grid: the log-mel frontend, the network, the PCA postprocess.

Frontend (exactly VGGish's ``mel_features.py`` / ``vggish_input.py`` definition): mono 16 kHz;
frames of 25 ms (400 samples) every 10 ms (160), periodic Hann window, magnitude of a 512-point
real FFT; 64 mel bands from 125 to 7500 Hz on the HTK mel scale with triangles that are linear
*in mel* (not in Hz, as librosa's ``htk=True`` filters are), the DC bin weighted 0;
``log(mel + 0.01)``; examples of 96 frames × 64 bands (0.96 s).

On the grid: VGGish cuts a clip into consecutive 0.96 s examples; we instead cut **one example
per segment, centred on the segment centre**, from the 15,600 samples (95 hops + one window)
around it, zero-padded where the window leaves the clip. So audio has the same T (and the same
timestamps) as rgb and flow, whatever the clip length — a clip shorter than 0.96 s still yields T
examples.

Audio is streamed from the container by PyAV (any codec FFmpeg reads, FFmpeg's resampler for
the mono mixdown to 16 kHz, no ffmpeg binary, no temporary WAV), and only the samples under the
T windows are kept: memory is O(T) whatever the track's length, and decoding stops after the
last window.

Network: the VGG stack of VGGish with the tensor names of the widely used PyTorch port
(``features.N.*``, ``embeddings.N.*``), so its ``vggish-10086976.pth`` loads directly. The
original TensorFlow model's embedding is the output of the last linear layer (``pre-relu``,
our default); the PyTorch port appends a ReLU (``post-relu``), which zeroes every negative
component and changes the features and the PCA postprocess downstream.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vidfeat.errors import ConfigError, DecodeError
from vidfeat.nets.txb import masked_mean

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
FFT_SIZE = 512  # the next power of two of the window
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EXAMPLE_SAMPLES = (EXAMPLE_FRAMES - 1) * HOP + WINDOW  # 15,600 samples make 96 frames
EMBEDDING_DIM = 128
EMBEDDINGS = ("pre-relu", "post-relu")
PCA_EIGEN_VECTORS = "pca_eigen_vectors"
PCA_MEANS = "pca_means"
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0

__all__ = [
    "EMBEDDING_DIM",
    "EXAMPLE_SAMPLES",
    "PCAPostprocess",
    "VGGish",
    "VGGishTSN",
    "grid_examples_from_file",
    "grid_windows",
    "load_vggish_weights",
    "log_mel",
    "mel_matrix",
    "require_weights",
]


# --------------------------------------------------------------------------- frontend


def periodic_hann(n: int) -> np.ndarray:
    """The periodic Hann window VGGish uses (``np.hanning`` is the symmetric one)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi / n * np.arange(n))


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@functools.cache
def mel_matrix(
    num_bands: int = NUM_BANDS,
    num_bins: int = FFT_SIZE // 2 + 1,
    rate: int = SAMPLE_RATE,
    low_hz: float = MEL_MIN_HZ,
    high_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """``(num_bins, num_bands)`` float64 weights from FFT magnitudes to mel bands (VGGish's
    ``spectrogram_to_mel_matrix``): triangles linear in mel, band edges equally spaced in mel
    between ``low_hz`` and ``high_hz``, peak 1, the DC bin 0. Read-only (cached)."""
    bins_mel = hz_to_mel(np.linspace(0.0, rate / 2.0, num_bins))[:, None]
    edges = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), num_bands + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (centre - lower)
    falling = (upper - bins_mel) / (upper - centre)
    w = np.maximum(0.0, np.minimum(rising, falling))
    w[0, :] = 0.0
    w.setflags(write=False)
    return w


_WINDOW = periodic_hann(WINDOW)


def _frames_log_mel(frames: np.ndarray) -> np.ndarray:
    """``(..., 400)`` float64 frames → ``(..., 64)`` float32 log-mel (one FFT call for all)."""
    spec = np.abs(np.fft.rfft(frames * _WINDOW, n=FFT_SIZE))
    return np.log(spec @ mel_matrix() + LOG_OFFSET).astype(np.float32)


def log_mel(wave: np.ndarray) -> np.ndarray:
    """Samples at 16 kHz ``(L,)`` (float, about [-1, 1]) → VGGish log-mel ``(F, 64)`` float32
    with ``F = 1 + (L - 400) // 160`` frames (0 when ``L < 400``: no padding, as VGGish)."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    if len(wave) < WINDOW:
        return np.zeros((0, NUM_BANDS), dtype=np.float32)
    return _frames_log_mel(np.lib.stride_tricks.sliding_window_view(wave, WINDOW)[::HOP])


def window_starts(centres: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """First sample of the example window centred on each time in ``centres`` (seconds)."""
    c = np.round(np.asarray(centres, dtype=np.float64) * rate).astype(np.int64)
    return c - EXAMPLE_SAMPLES // 2


def grid_windows(chunks: Iterable[np.ndarray], centres: np.ndarray) -> tuple[np.ndarray, int]:
    """Cut the example windows centred on ``centres`` (seconds) out of a stream of 16 kHz
    chunks: ``(T, 15600)`` float32, zeros where a window leaves the audio; also the number of
    samples read. Only the windows are kept, and the stream is abandoned after the last one."""
    starts = window_starts(centres)
    ends = starts + EXAMPLE_SAMPLES
    out = np.zeros((len(starts), EXAMPLE_SAMPLES), dtype=np.float32)
    if len(starts) == 0:
        return out, 0
    order = np.argsort(starts, kind="stable")
    s_sorted, e_sorted = starts[order], ends[order]
    e_max = np.maximum.accumulate(e_sorted)  # windows have equal lengths; this keeps it general
    need = int(ends.max())
    pos = 0
    for chunk in chunks:
        n = len(chunk)
        # the windows overlapping [pos, pos + n)
        first = int(np.searchsorted(e_max, pos, side="right"))
        last = int(np.searchsorted(s_sorted, pos + n, side="left"))
        for k in range(first, last):
            t = order[k]
            lo, hi = max(int(starts[t]), pos), min(int(ends[t]), pos + n)
            if lo < hi:
                out[t, lo - starts[t] : hi - starts[t]] = chunk[lo - pos : hi - pos]
        pos += n
        if pos >= need:
            break
    return out, pos


def examples_from_windows(windows: np.ndarray) -> np.ndarray:
    """``(T, 15600)`` windows → ``(T, 96, 64)`` float32 log-mel examples: the same values as
    :func:`log_mel` on each window, computed 32 windows per FFT call (half the time of a
    call per window at T=25; a group's float64 spectra take 13 MB)."""
    out = np.empty((len(windows), EXAMPLE_FRAMES, NUM_BANDS), dtype=np.float32)
    for k in range(0, len(windows), 32):
        w = np.asarray(windows[k : k + 32], dtype=np.float64)
        out[k : k + 32] = _frames_log_mel(
            np.lib.stride_tricks.sliding_window_view(w, WINDOW, axis=1)[:, ::HOP]
        )
    return out


def silence(n: int) -> np.ndarray:
    """``n`` examples of silence: what a video without audio looks like to the network."""
    return examples_from_windows(np.zeros((n, EXAMPLE_SAMPLES), dtype=np.float32))


def load_track(path: str | Path) -> tuple[np.ndarray | None, str]:
    """The whole first audio track, mono 16 kHz float32 — or ``(None, why)`` when the file has
    no usable track (the notes of :func:`grid_examples_from_file`). For training caches; the
    extraction streams instead."""
    from vidfeat.decode import read_audio

    try:
        wave = read_audio(path, SAMPLE_RATE)
    except DecodeError as exc:
        if not Path(path).is_file():
            raise
        return None, f"audio track failed to decode: {exc.detail or exc}"
    if wave is None:
        return None, "no audio track"
    if len(wave) == 0:
        return None, "audio track holds no samples"
    return wave, ""


def grid_examples_from_track(wave: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Like :func:`grid_examples_from_file`, from a track already in memory."""
    windows, _ = grid_windows([wave], np.asarray(centres, dtype=np.float64))
    return examples_from_windows(windows)


def grid_examples_from_file(path: str | Path, centres: np.ndarray) -> tuple[np.ndarray, bool, str]:
    """One VGGish example per grid segment of a media file.

    Returns ``(examples (T, 96, 64) float32, has_audio, note)``. A file without an audio track,
    or whose track fails to decode, is not an error: its examples are those of silence,
    ``has_audio`` is False and ``note`` says why (the extraction stores zeros for it). A
    silent track is real audio (``has_audio`` True).
    """
    from vidfeat.decode import iter_audio

    centres = np.asarray(centres, dtype=np.float64)
    try:
        chunks = iter_audio(path, SAMPLE_RATE)
        if chunks is None:
            return silence(len(centres)), False, "no audio track"
        windows, read = grid_windows(chunks, centres)
    except DecodeError as exc:
        if not Path(path).is_file():
            raise
        return silence(len(centres)), False, f"audio track failed to decode: {exc.detail or exc}"
    if read == 0:
        return silence(len(centres)), False, "audio track holds no samples"
    return examples_from_windows(windows), True, ""


# --------------------------------------------------------------------------- network


def _width(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


class VGGish(nn.Module):
    """VGGish: ``[B, 1, 96, 64]`` log-mel examples → ``[B, 128]`` embeddings.

    Conv stack 64, M, 128, M, 256, 256, M, 512, 512, M (3×3 convs + ReLU, 2×2 max pools) →
    flatten in (H, W, C) order, as the TensorFlow original (so its weights apply) → 4096 →
    4096 → 128. ``width`` scales every conv and the two 4096 layers (1.0 = VGGish; smaller for
    CPU budgets; weights of the original only load at 1.0). ``embedding``: ``pre-relu`` (the
    original) or ``post-relu`` (the PyTorch port's trailing ReLU).
    """

    # faster in channels_last on CPU and CUDA (bench/bench_precision.py); the flatten below
    # reads NHWC order whatever the memory format
    channels_last = True

    def __init__(self, *, width: float = 1.0, embedding: str = "pre-relu") -> None:
        super().__init__()
        if not (isinstance(width, int | float) and 0 < width <= 4):
            raise ConfigError(f"--width must be in (0, 4] (got {width!r})")
        if embedding not in EMBEDDINGS:
            raise ConfigError(f"--embedding must be one of {', '.join(EMBEDDINGS)}")
        self.width = float(width)
        self.embedding = embedding
        layers: list[nn.Module] = []
        c_in = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c = _width(int(v), width)
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = c
        self.features = nn.Sequential(*layers)
        fc = _width(4096, width)
        # indices 0, 2, 4 carry weights: the port's names embeddings.{0,2,4}.*
        self.embeddings = nn.Sequential(
            nn.Linear(c_in * 6 * 4, fc),
            nn.ReLU(inplace=True),
            nn.Linear(fc, fc),
            nn.ReLU(inplace=True),
            nn.Linear(fc, EMBEDDING_DIM),
        )
        self.embedding_dim = EMBEDDING_DIM
        self.output_dim = EMBEDDING_DIM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 96, 64]`` → ``[B, 128]``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, EXAMPLE_FRAMES, NUM_BANDS):
            raise ValueError(
                f"VGGish expects [B, 1, 96, 64] log-mel examples, got {tuple(x.shape)}"
            )
        x = self.features(x)  # [B, C, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)  # TensorFlow's NHWC flattening order
        x = self.embeddings(x)
        return torch.relu(x) if self.embedding == "post-relu" else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """One example per segment ``[B, T, 1, 96, 64]`` → ``[B, T, 128]``."""
        b, t = x.shape[:2]
        return self(x.flatten(0, 1)).view(b, t, -1)


class VGGishTSN(nn.Module):
    """The paper's "TSN-VGG audio": VGGish on each segment's example, a linear classifier per
    segment, consensus = mean of the segment logits (the segment-network contract:
    ``forward_features`` ``[B, T, 128]``, ``forward_head`` → ``[B, K]``)."""

    channels_last = VGGish.channels_last

    def __init__(self, vggish: VGGish, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.vggish = vggish
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(vggish.embedding_dim, num_classes)
        self.feature_dim = vggish.embedding_dim
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vggish.forward_features(x)

    def forward_head(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.fc(self.drop(feats))  # [B, T, K]
        return masked_mean(logits.transpose(1, 2), mask)  # segmental consensus

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- weights


def _load_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A flat name → tensor mapping from a ``.pth`` (read by
    :func:`~vidfeat.nets.torchfile.load_torch_file`: checked before torch sees it, no pickled
    code runs) or an ``.npz`` file (a regular file, no pickles)."""
    from vidfeat.nets.torchfile import load_torch_file, open_regular

    path = Path(path)
    if path.suffix != ".npz":
        state = load_torch_file(path, what)
    else:
        fd, size = open_regular(path, f"{what} {path}")  # a FIFO would block np.load
        try:
            with os.fdopen(fd, "rb") as fh:
                _check_npz(fh, size)
                with np.load(fh, allow_pickle=False) as z:
                    state = {k: torch.from_numpy(z[k]) for k in z.files}
        except ConfigError as exc:
            raise ConfigError(f"{what} {path}: refused, {exc}") from None
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign files
            first = " ".join(str(exc).split())[:200]
            raise ConfigError(
                f"{what} {path}: refused, not a plain .npz of arrays ({type(exc).__name__}: "
                f"{first})"
            ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(f"{what} {path}: must be a state dict of tensors")
    return state


NPZ_INFLATION = 4  # the most an .npz may inflate to, over its size (weights barely compress)


def _check_npz(fh, size: int) -> None:
    """Refuses an .npz whose members would inflate to more than :data:`NPZ_INFLATION` times
    the file (a zip bomb: 1 GiB of zeros deflates to 1 MB). numpy reads no member past the
    size it declares, so the declared sizes bound what loading it takes."""
    import zipfile

    try:
        with zipfile.ZipFile(fh) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"not an .npz ({exc})") from None
    if total > NPZ_INFLATION * size + (1 << 20):
        raise ConfigError(
            f"its arrays inflate to {total:,} bytes from {size:,} (more than {NPZ_INFLATION}×: "
            "a zip bomb, not weights)"
        )
    fh.seek(0)


def load_vggish_weights(model: VGGish, path: str | Path) -> None:
    """Load VGGish weights (e.g. ``vggish-10086976.pth``) into ``model``, checking every
    tensor's name and shape first; mismatches are reported by name (ConfigError)."""
    state = _load_tensors(path, "VGGish weights")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"wrong shape: {'; '.join(wrong)}")
    if problems:
        hint = "" if model.width == 1.0 else f" (the model has --width {model.width:g}; use 1)"
        raise ConfigError(f"{path} does not fit VGGish{hint}: " + " | ".join(problems))
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own})


def require_weights(checkpoint: str | Path | None, random_init: bool) -> str | None:
    """Refuse to extract with random weights unless asked; returns a warning to print when
    ``random_init`` is set."""
    if checkpoint is None and not random_init:
        raise ConfigError(
            "extract audio needs weights: pass --checkpoint vggish-10086976.pth (the VGGish "
            "weights) or a run of `vidfeat train audio --out RUN` (--checkpoint RUN)"
        )
    if checkpoint is not None and random_init:
        raise ConfigError("--random-init and --checkpoint exclude each other; pick one")
    if random_init:
        return (
            "WARNING: --random-init: VGGish with RANDOM weights. These features mean nothing; "
            "use them for smoke tests only (recorded as random_init in set.json)"
        )
    return None


class PCAPostprocess:
    """The AudioSet / YouTube-8M postprocess of VGGish embeddings: PCA (subtract the means,
    multiply by the eigenvectors), clip to [-2, 2], quantise to 0..255 (truncating, as the
    TensorFlow original's ``astype(np.uint8)``)."""

    def __init__(self, eigen_vectors: np.ndarray, means: np.ndarray) -> None:
        e = np.asarray(eigen_vectors, dtype=np.float64)
        m = np.asarray(means, dtype=np.float64).reshape(-1)
        if e.shape != (EMBEDDING_DIM, EMBEDDING_DIM) or m.shape != (EMBEDDING_DIM,):
            raise ConfigError(
                f"PCA parameters must be {PCA_EIGEN_VECTORS} (128, 128) and {PCA_MEANS} (128,); "
                f"got {e.shape} and {np.shape(means)}"
            )
        self.eigen_vectors, self.means = e, m

    @classmethod
    def from_file(cls, path: str | Path) -> PCAPostprocess:
        """``vggish_pca_params.pth`` (the PyTorch port) or ``vggish_pca_params.npz`` (the
        TensorFlow release); both hold ``pca_eigen_vectors`` and ``pca_means``."""
        state = _load_tensors(path, "PCA parameters")
        missing = [k for k in (PCA_EIGEN_VECTORS, PCA_MEANS) if k not in state]
        if missing:
            raise ConfigError(
                f"{path}: no {', '.join(missing)} (holds {', '.join(sorted(state)) or 'nothing'})"
            )
        return cls(state[PCA_EIGEN_VECTORS].numpy(), state[PCA_MEANS].numpy())

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """``(n, 128)`` embeddings → ``(n, 128)`` uint8."""
        x = np.asarray(embeddings, dtype=np.float64)
        pca = (x - self.means) @ self.eigen_vectors.T
        clipped = np.clip(pca, QUANTIZE_MIN, QUANTIZE_MAX)
        q = (clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))
        return q.astype(np.uint8)

    @staticmethod
    def dequantize(q: np.ndarray) -> np.ndarray:
        """uint8 → float32, the YouTube-8M readers' mapping ``q·4/255 + 4/512 − 2``: each value
        is the centre of its quantisation bin (hence the half-bin term), in [-1.992, 2.008]."""
        scale = (QUANTIZE_MAX - QUANTIZE_MIN) / 255.0
        bias = (QUANTIZE_MAX - QUANTIZE_MIN) / 512.0 + QUANTIZE_MIN  # as the readers have it
        return np.asarray(q, dtype=np.float32) * np.float32(scale) + np.float32(bias)
