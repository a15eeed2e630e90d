"""Shared fixtures: real encoded media written with PyAV (H.264 + AAC), seeds fixed, no network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vidfeat.synth import SynthConfig, generate, write_mp4


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Every test starts with one torch intra-op thread in this process (the test's own
    processes and workers keep theirs). The suite's tensors are tiny: a second thread only adds
    synchronisation, which on a busy 2-core machine costs more than the arithmetic (training
    steps 10-40x slower). A test that sets threads itself still does; the count is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def moving_frames(n: int, h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """Frames whose content differs every frame (a textured pattern drifting + a frame counter
    bar), so a wrong frame index shows up as different pixels."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, size=(h, w * 3, 3), dtype=np.uint8)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        x = (i * 2) % (w * 2)
        out[i] = tex[:, x : x + w]
        out[i, :6, :] = 0
        out[i, :6, : (i * w) // n + 1] = 255
    return out


def tone(seconds: float, rate: int, freq: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    y = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return y if channels == 1 else np.stack([y] * channels)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def bframe_video(media_dir: Path) -> tuple[Path, np.ndarray]:
    """120 frames at 25 fps, H.264 with B-frames and a 40-frame GOP, AAC audio."""
    frames = moving_frames(120)
    path = media_dir / "bframes.mp4"
    write_mp4(path, frames, 25, tone(4.8, 44100, 440.0), 44100, gop=40, bframes=3, crf=12)
    return path, frames


@pytest.fixture(scope="session")
def silent_video(media_dir: Path) -> Path:
    """A video without any audio track."""
    path = media_dir / "noaudio.mp4"
    write_mp4(path, moving_frames(30, seed=1), 15, None)
    return path


@pytest.fixture(scope="session")
def broken_files(media_dir: Path, bframe_video: tuple[Path, np.ndarray]) -> dict[str, Path]:
    src = bframe_video[0].read_bytes()
    d = media_dir / "broken"
    d.mkdir()
    files = {
        "zero": d / "zero.mp4",
        "text": d / "text.mp4",
        "random": d / "random.mp4",
        "truncated": d / "truncated.mp4",
        "head": d / "head.mp4",
        "dir": d / "adir.mp4",
        "missing": d / "missing.mp4",
    }
    files["zero"].write_bytes(b"")
    files["text"].write_text("this is not a video\n" * 20)
    files["random"].write_bytes(np.random.default_rng(0).bytes(50_000))
    files["truncated"].write_bytes(src[: len(src) // 2])
    files["head"].write_bytes(src[:2000])
    files["dir"].mkdir()
    return files


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (4 classes x 4 videos, 1 s at 10 fps, 64 px)."""
    out = tmp_path_factory.mktemp("synth")
    generate(
        out,
        SynthConfig(classes=4, per_class=4, seconds=1.0, fps=10, size=64, seed=3),
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def tiny_rgb_run(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny StNet run trained one epoch on ``tiny_synth``'s classes (32 px, T=2, N=2): a
    network to extract with, read only by the tests that take it."""
    from click.testing import CliRunner

    from vidfeat.cli import main

    out = tmp_path_factory.mktemp("runs") / "rgb"
    args = [
        "train", "rgb", "--videos", tiny_synth / "train.csv", "--out", out, "--backbone",
        "resnet10t", "--net-opt", "txb_width=16", "--segments", "2", "--frames", "2", "--size",
        "32", "--short-side", "48", "--epochs", "1", "--batch-size", "4", "--workers", "0",
        "--quiet",
    ]  # fmt: skip
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return out
