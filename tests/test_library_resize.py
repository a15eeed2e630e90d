"""An imported run's preprocessing equals its library's own transform on real decoded frames
(issue 22, item 5): torchvision's video presets (resize of the uint8 video tensor without
antialias, centre crop) and timm's eval transform (Pillow's resize of a PIL image, centre
crop), against vidfeat's clips of the same frames of an H.264 file."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from conftest import moving_frames
from vidfeat.clips import ClipSpec, RGBClips, normalize_on_device
from vidfeat.synth import write_mp4
from vidfeat.videolist import load_list

T = 4  # segments, one frame each from the stacked window's point of view


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 320x240 H.264 clip (odd-sized resizes: 240 → 128 / 224 / 248) and its list."""
    d = tmp_path_factory.mktemp("libresize")
    frames = moving_frames(24, h=240, w=320, seed=5)
    # smooth gradients as well as texture, so both kernels' tails matter
    ramp = np.linspace(0, 255, 320, dtype=np.float32)[None, :, None]
    frames[:, 120:] = (0.5 * frames[:, 120:] + 0.5 * ramp).astype(np.uint8)
    path = d / "v.mp4"
    write_mp4(path, frames, 12, None, crf=18)
    (d / "list.csv").write_text(f"path\n{path}\n")
    return path, d / "list.csv"


def decoded(path: Path) -> np.ndarray:
    """Every frame as a user's script decodes it: PyAV, rgb24."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def vidfeat_clip(lst: Path, spec: ClipSpec) -> tuple[torch.Tensor, np.ndarray]:
    """vidfeat's normalised test clip ``[T, 3, S, S]`` of the list's video and its frames."""
    ds = RGBClips(load_list(lst), spec, layout="tsn", normalize=False)
    ds.with_meta = True
    item = ds[0]
    x = normalize_on_device(item["x"], spec.mean, spec.std)
    return x, np.asarray(item["meta"]["frame_indices"]).reshape(-1)


@pytest.mark.parametrize("name", ["r3d_18", "mvit_v2_s"])
def test_torchvision_video_preset(video: tuple[Path, Path], name: str) -> None:
    """resize_size (128, 171) (a fixed size) and 256 (the short side), bilinear, no antialias."""
    from torchvision.models import get_model_weights

    path, lst = video
    tf = get_model_weights(name).DEFAULT.transforms()
    fixed = len(tf.resize_size) == 2
    spec = ClipSpec(
        T,
        1,
        tf.crop_size[0],
        tf.resize_size[0],
        train=False,
        mean=tuple(tf.mean),
        std=tuple(tf.std),
        resize="fixed" if fixed else "short-side",
        resize_size=tuple(tf.resize_size) if fixed else None,
        resampler="torch",
        interpolation="bilinear",
        antialias=False,
    )
    ours, idx = vidfeat_clip(lst, spec)
    vid = torch.from_numpy(decoded(path)[idx]).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
    theirs = tf(vid).permute(1, 0, 2, 3)  # [3, T, S, S] → [T, 3, S, S]
    grey = (torch.tensor(tf.std).view(1, 3, 1, 1) * 255.0).reciprocal()  # one level, normalised
    err = ((ours - theirs).abs() / grey).max().item()
    assert ours.shape == theirs.shape
    assert err <= 1.0 + 1e-4, f"{name}: {err:.3f} grey levels apart"


def test_timm_eval_transform(video: tuple[Path, Path]) -> None:
    """A bicubic ViT's eval transform: short side floor(224 / 0.9) = 248 by Pillow, crop 224."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    path, lst = video
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    cfg = resolve_data_config({}, model=model)
    tf = create_transform(**cfg)
    assert cfg["interpolation"] == "bicubic"
    crop = cfg["input_size"][-1]
    spec = ClipSpec(
        T,
        1,
        crop,
        int(np.floor(crop / cfg["crop_pct"])),
        train=False,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resampler="pil",
        interpolation="bicubic",
    )
    ours, idx = vidfeat_clip(lst, spec)
    frames = decoded(path)[idx]
    theirs = torch.stack([tf(Image.fromarray(f)) for f in frames])
    grey = (torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255.0).reciprocal()
    err = ((ours - theirs).abs() / grey).max().item()
    assert ours.shape == theirs.shape
    assert err <= 1.0 + 1e-4, f"{err:.3f} grey levels apart"
