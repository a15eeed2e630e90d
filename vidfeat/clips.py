"""Datasets that turn videos (or stored flow fields) into network input clips on the grid.

Every item is ``{"x": Tensor [T, C, S, S], "label": int, "index": int}`` or, when the video
cannot be read, ``{"error": (class name, message), "index": int}`` — a bad video never kills a
DataLoader worker; training counts and skips it, extraction records it as a failure.

* RGB (``rgb_layout="stnet"``): T super-images of N frames, channel = 3·j + c (frame-major).
* RGB (``rgb_layout="tsn"``): one frame per segment (N = 1: the segment's centre frame at test
  time, a random frame of the segment in training).
* Flow: the stored uint8 fields ``(T_s, N, 2, H, W)`` → ``[T, 2N, S, S]`` in [-1, 1], channel =
  2·j + (x, y); training picks T of the T_s stored segments at random (in order).
* Audio: one 96×64 log-mel example per segment → ``[T, 1, 96, 64]``.

Train mode: random segment offsets, one random crop + horizontal flip (``ClipSpec.flip``) for
the whole clip (a flip negates the x component of flow). Test mode: centred segments and a
centre crop.

``RGBClips(..., normalize=False)`` hands the crops over as uint8 and
:meth:`RGBClips.on_device` normalises a batch where the network runs, bit for bit as the
dataset would have: a decoding worker then does a third of the work and moves a quarter of the
bytes, which on a CPU leaves the cores to the network (the trainer and the extractor do so).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vidfeat.decode import probe, read_frames
from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.flow import to_network_input
from vidfeat.grid import SegmentGrid
from vidfeat.videolist import VideoList

RESIZES = ("short-side", "fixed-4:3", "fixed")
RESAMPLERS = ("ffmpeg", "torch", "pil")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut: T segments, N frames each, crop size and the resize before it."""

    segments: int
    frames: int
    size: int  # square crop fed to the network
    short_side: int  # frames are resized to this short side before cropping
    train: bool
    # horizontal flips in training; off for classes a mirror swaps (swiping left vs right, the
    # synthetic dataset's left/right motions): a flipped "right" clip is a "left" clip
    flip: bool = True
    # RGB normalisation and resize of the weights' own preprocessing (an imported run's
    # model.json): "short-side" keeps the aspect ratio; "fixed-4:3" is the Paddle authors'
    # group_scale (long side int(short_side * 4 / 3), unless the short side already fits)
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN.tolist())
    std: tuple[float, ...] = tuple(IMAGENET_STD.tolist())
    resize: str = "short-side"
    # the test-time grid of RGB clips: "test" (centred runs in ⌊t·L/T⌋ segments) or
    # "reference" (the authors' reader, for their networks; see vidfeat.grid)
    test_grid: str = "test"
    # an imported run's own resampling (test time; see library_transform): resize="fixed" to
    # resize_size (height, width); resampler "ffmpeg" (the decoder's scaler), "torch"
    # (torchvision's resize of the uint8 frame) or "pil" (Pillow's, as timm's eval transform)
    resize_size: tuple[int, int] | None = None
    resampler: str = "ffmpeg"
    interpolation: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZES)} (got {self.resize!r})")
        if self.resampler not in RESAMPLERS:
            raise ConfigError(f"resampler must be one of {', '.join(RESAMPLERS)}")
        if (self.resize == "fixed") != (self.resize_size is not None):
            raise ConfigError("resize 'fixed' takes resize_size (height, width), and only it does")
        if self.size < 16:
            raise ConfigError(f"--size must be >= 16 (got {self.size})")
        if self.short_side < self.size:
            raise ConfigError(
                f"--short-side ({self.short_side}) must be >= --size ({self.size}): the crop "
                "is taken from the resized frame"
            )


def _crop_box(h: int, w: int, size: int, rng: np.random.Generator | None) -> tuple[int, int]:
    if rng is None:
        return (h - size) // 2, (w - size) // 2
    return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))


def resize_args(spec: ClipSpec, info: Any) -> dict:
    """``read_frames``'s resize of a video under ``spec``: its short side to ``short_side``, or
    the authors' fixed 4:3 size (``resize="fixed-4:3"``), which leaves a frame whose short side
    already fits as it is; a fixed (height, width) (``resize="fixed"``). None of them when a
    library resamples (:func:`library_transform`): the frames are decoded at their own size."""
    if spec.resampler != "ffmpeg":
        return {"short_side": None, "size": None}
    if spec.resize == "fixed":
        h, w = spec.resize_size
        return {"short_side": None, "size": (w, h)}
    short, size = spec.short_side, None
    if spec.resize == "fixed-4:3" and min(info.width, info.height) != short:
        long = int(short * 4.0 / 3.0)
        short, size = None, (long, short) if info.width >= info.height else (short, long)
    elif spec.resize == "fixed-4:3":
        short = None
    return {"short_side": short, "size": size}


def _library_size(h: int, w: int, spec: ClipSpec) -> tuple[int, int]:
    """(height, width) after the library's resize: ``resize_size``, or the short side to
    ``short_side`` and the long side ``int(short_side * long / short)``, as torchvision's
    ``Resize(int)`` (which timm's eval transform uses) computes it."""
    if spec.resize == "fixed":
        return spec.resize_size
    s = spec.short_side
    if h <= w:
        return s, int(s * w / h)
    return int(s * h / w), s


def library_transform(spec: ClipSpec):
    """The weights' own test resize and centre crop of one decoded uint8 RGB frame ``(H, W, 3)``
    → ``(S, S, 3)``, or None where FFmpeg's scaler resizes (:func:`resize_args`) and vidfeat's
    crop (:func:`_crop_box`) follows.

    ``resampler="torch"``: ``torchvision.transforms.functional.resize`` of the uint8 tensor
    with the spec's interpolation and antialias, what torchvision's video presets run;
    ``"pil"``: Pillow's ``Image.resize``, what timm's eval transform runs on a PIL image. Both
    crop as torchvision's ``center_crop``: offset ``int(round((h - S) / 2))``.
    """
    if spec.resampler == "ffmpeg":
        return None
    s = spec.size

    def crop(fr: np.ndarray) -> np.ndarray:
        h, w = fr.shape[:2]
        if min(h, w) < s:
            raise VidfeatError(f"frames resized to {w}x{h} are smaller than the crop {s}")
        y0, x0 = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return fr[y0 : y0 + s, x0 : x0 + s]

    if spec.resampler == "pil":
        from PIL import Image

        method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[spec.interpolation]

        def pil(fr: np.ndarray) -> np.ndarray:
            h, w = _library_size(*fr.shape[:2], spec)
            return crop(np.asarray(Image.fromarray(fr).resize((w, h), method)))

        return pil
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    mode = InterpolationMode(spec.interpolation)

    def tv(fr: np.ndarray) -> np.ndarray:
        size = list(_library_size(*fr.shape[:2], spec))
        t = torch.from_numpy(np.ascontiguousarray(fr)).permute(2, 0, 1)
        t = TF.resize(t, size, interpolation=mode, antialias=spec.antialias)
        return crop(t.permute(1, 2, 0).numpy())

    return tv


def normalize_on_device(x: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """uint8 ``[..., C, S, S]`` (C a multiple of 3) → float32 ``(x / 255 - mean) / std`` per
    channel, in the datasets' own float32 arithmetic and order; a float tensor as it is."""
    if x.dtype != torch.uint8:
        return x
    c = x.shape[-3]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).repeat(c // 3)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).repeat(c // 3)
    shape = (1,) * (x.dim() - 3) + (c, 1, 1)
    return x.float().div_(255.0).sub_(mean_t.view(shape)).div_(std_t.view(shape))


class _Base(Dataset):
    def __init__(self, videos: VideoList, spec: ClipSpec, seed: int = 0) -> None:
        self.with_meta = False  # extraction also wants the attrs stored with the features
        self.videos = videos
        self.records = videos.records
        self.labels = videos.label_indices() if videos.labelled else [-1] * len(videos)
        self.spec = spec
        self.seed = seed
        self.epoch = 0
        self._infos: dict[int, object] = {}  # probe() per video, per process (epochs reuse it)

    def _probe(self, i: int):
        info = self._infos.get(i)
        if info is None:
            info = self._infos[i] = probe(self.records[i].path)
        return info

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain-index lookups (in this process only; DataLoader workers get the
        epoch with each index from :class:`EpochSampler`)."""
        self.epoch = epoch

    def _rng(self, i: int, epoch: int) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, epoch, i]) if self.spec.train else None

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``ds[i]``, or ``ds[(epoch, i)]`` as :class:`EpochSampler` asks: the epoch seeds the
        item's augmentation, so persistent DataLoader workers draw new offsets and crops every
        epoch."""
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        try:
            x, meta = self.load(i, self._rng(i, epoch))
        except VidfeatError as exc:
            return {"error": (type(exc).__name__, exc.format_message()), "index": i}
        except Exception as exc:  # noqa: BLE001 - reported per video, never fatal
            return {"error": (type(exc).__name__, f"{self.records[i].path}: {exc}"), "index": i}
        item = {"x": x, "label": self.labels[i], "index": i}
        if self.with_meta:
            item["meta"] = meta
        return item

    def load(self, i: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, dict]:
        """The clip tensor and the attrs to store with its features."""
        raise NotImplementedError


class RGBClips(_Base):
    """RGB clips decoded on the fly (see module docstring for the layouts)."""

    def __init__(
        self,
        videos: VideoList,
        spec: ClipSpec,
        layout: str = "stnet",
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__(videos, spec, seed)
        if layout not in ("stnet", "tsn"):
            raise ConfigError(f"rgb layout must be stnet or tsn (got {layout!r})")
        self.layout = layout
        self.normalize = normalize
        n = spec.frames if layout == "stnet" else 1
        self.grid = SegmentGrid(spec.segments, n, "train" if spec.train else spec.test_grid)

    def on_device(self, x: torch.Tensor) -> torch.Tensor:
        """A collated batch ``[B, T, 3n, S, S]`` as the network takes it: uint8 crops
        (``normalize=False``) normalised with the spec's mean and std, in the dataset's own
        float32 arithmetic and order; an already normalised batch as it is."""
        return normalize_on_device(x, self.spec.mean, self.spec.std)

    def load(self, i: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, dict]:
        rec = self.records[i]
        info = self._probe(i)
        g = self.grid.sample(info.num_frames, info.fps, rng)
        s = self.spec.size
        lib = library_transform(self.spec) if rng is None else None
        if lib is not None:  # the weights' own resize and crop (test time), frame by frame as
            # they decode: the full-size frames of T·N indices are never held at once
            small: dict[int, np.ndarray] = {}
            read_frames(rec.path, g.indices.reshape(-1), on_frame=lambda r, f: small.__setitem__(
                r, lib(f)), keep=False)  # fmt: skip
            clip = np.stack([small[int(r)] for r in g.indices.reshape(-1)])
        else:
            frames = read_frames(rec.path, g.indices.reshape(-1), **resize_args(self.spec, info))
            _, h, w, _ = frames.shape
            y0, x0 = _crop_box(h, w, s, rng)
            clip = frames[:, y0 : y0 + s, x0 : x0 + s]
        if rng is not None and self.spec.flip and rng.uniform() < 0.5:
            clip = clip[:, :, ::-1]
        if self.normalize:
            mean = np.asarray(self.spec.mean, dtype=np.float32)
            std = np.asarray(self.spec.std, dtype=np.float32)
            x = (clip.astype(np.float32) / 255.0 - mean) / std
        else:
            x = clip  # uint8: on_device() normalises the batch
        T, n = g.indices.shape
        # [T*n, S, S, 3] -> [T, n*3, S, S], channel 3*j + c
        x = x.reshape(T, n, s, s, 3).transpose(0, 1, 4, 2, 3).reshape(T, n * 3, s, s)
        return torch.from_numpy(np.ascontiguousarray(x)), _meta(rec, info, g)


class FlowClips(_Base):
    """Flow stacks from a store's ``<method>-fields`` set."""

    def __init__(
        self,
        videos: VideoList,
        spec: ClipSpec,
        store_root: str | Path,
        set_name: str,
        seed: int = 0,
    ) -> None:
        super().__init__(videos, spec, seed)
        self.store_root = Path(store_root)
        self.set_name = set_name
        self._fs = None
        stored_n = int(self._set().config["N"])
        if spec.frames > stored_n:
            raise ConfigError(
                f"--frames {spec.frames} > the {stored_n} flow pairs per segment stored in "
                f"set {set_name!r}; extract flow with --frames {spec.frames} (or use fewer)"
            )

    def _set(self):
        if self._fs is None:
            from vidfeat.store import FeatureStore

            self._fs = FeatureStore(self.store_root).open_set(self.set_name)
        return self._fs

    def load(self, i: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, dict]:
        from vidfeat.errors import StoreError

        vid = self.records[i].video_id
        fs = self._set()
        if vid not in fs:
            raise StoreError(f"video {vid!r} has no flow fields in set {self.set_name!r}")
        q, attrs = fs.get(vid)  # (Ts, Ns, 2, H, W) uint8
        T, n, s = self.spec.segments, self.spec.frames, self.spec.size
        Ts = q.shape[0]
        if rng is not None and Ts >= T:
            # random T of the stored segments, kept in temporal order (TSN-style sampling)
            seg = np.sort(rng.choice(Ts, size=T, replace=False))
        else:
            seg = np.minimum(((np.arange(T) + 0.5) * Ts / T).astype(np.int64), Ts - 1)
        q = q[seg, :n]
        h, w = q.shape[-2:]
        if min(h, w) < s:
            raise ConfigError(
                f"stored flow fields are {h}x{w}, smaller than --size {s}; extract flow with "
                f"--short-side >= {s}"
            )
        y0, x0 = _crop_box(h, w, s, rng)
        x = to_network_input(q[..., y0 : y0 + s, x0 : x0 + s])
        if rng is not None and self.spec.flip and rng.uniform() < 0.5:
            x = x[..., ::-1].copy()
            x[:, :, 0] = -x[:, :, 0]  # mirrored motion: horizontal component changes sign
        meta = {k: v for k, v in attrs.items() if k not in ("written_at", "frame_indices")}
        for k in ("segment_start", "segment_end"):
            if k in meta:
                meta[k] = np.asarray(meta[k])[seg]
        meta["frame_indices"] = np.asarray(attrs["frame_indices"])[seg, : n + 1]
        return torch.from_numpy(np.ascontiguousarray(x.reshape(T, n * 2, s, s))), meta


class AudioClips(_Base):
    """One log-mel example per grid segment. Videos without audio yield silence; training drops
    them beforehand (see :func:`videos_with_audio`).

    Training revisits every video each epoch with new window offsets, so its decoded 16 kHz
    track is kept in a per-process LRU cache of ``cache_mb`` MiB (tracks larger than an eighth
    of it are not cached); extraction (test mode) streams each video once and caches nothing.
    """

    def __init__(
        self, videos: VideoList, spec: ClipSpec, seed: int = 0, cache_mb: float = 512.0
    ) -> None:
        super().__init__(videos, spec, seed)
        self.grid = SegmentGrid(spec.segments, 1, "train" if spec.train else "test")
        self.cache_bytes = int(cache_mb * 1024 * 1024) if spec.train else 0
        self._tracks: OrderedDict[int, tuple[np.ndarray | None, str]] = OrderedDict()
        self._cached = 0

    def _track(self, i: int) -> tuple[np.ndarray | None, str]:
        from vidfeat.audio import load_track

        hit = self._tracks.get(i)
        if hit is not None:
            self._tracks.move_to_end(i)
            return hit
        entry = load_track(self.records[i].path)
        size = 0 if entry[0] is None else entry[0].nbytes
        if size <= self.cache_bytes // 8:
            self._tracks[i] = entry
            self._cached += size
            while self._cached > self.cache_bytes:
                _, (old, _) = self._tracks.popitem(last=False)
                self._cached -= 0 if old is None else old.nbytes
        return entry

    def load(self, i: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, dict]:
        from vidfeat.audio import grid_examples_from_file, grid_examples_from_track, silence

        rec = self.records[i]
        info = self._probe(i)
        g = self.grid.sample(info.num_frames, info.fps, rng)
        centres = g.centre
        if rng is not None:  # jitter the window inside its segment
            half = (g.end - g.start) / 2
            centres = centres + rng.uniform(-1, 1, size=len(centres)) * half * 0.8
        if self.cache_bytes:
            wave, note = self._track(i)
            has_audio = wave is not None
            ex = grid_examples_from_track(wave, centres) if has_audio else silence(len(centres))
        else:
            ex, has_audio, note = grid_examples_from_file(rec.path, centres)
        meta = _meta(rec, info, g)
        meta["has_audio"] = bool(has_audio)
        if note:
            meta["note"] = note
        return torch.from_numpy(np.ascontiguousarray(ex[:, None].astype(np.float32))), meta


class EpochSampler(Sampler):
    """Indices as ``(epoch, i)``: a shuffled (seeded by seed and epoch) or ordered pass over a
    dataset, carrying the epoch to the workers that load the items. Call :meth:`set_epoch`
    before each pass."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
        )
        return iter([(self.epoch, int(i)) for i in order])


def _meta(rec, info, g) -> dict:
    from vidfeat.videolist import base_attrs

    return base_attrs(rec, None, info, g)


def on_input(loader: Any, x: torch.Tensor) -> torch.Tensor:
    """A batch as the network takes it: what the loader's dataset leaves to the device
    (``RGBClips.on_device``: uint8 crops normalised there) done."""
    finish = getattr(loader.dataset, "on_device", None)
    return finish(x) if finish is not None else x


def collate(items: list[dict]) -> dict:
    """Stack the good items; keep the failed ones aside (``errors``: [(index, (cls, msg))])."""
    good = [it for it in items if "error" not in it]
    out: dict = {"errors": [(it["index"], it["error"]) for it in items if "error" in it]}
    if good:
        out["x"] = torch.stack([it["x"] for it in good])
        out["label"] = torch.as_tensor([it["label"] for it in good])
        out["index"] = [it["index"] for it in good]
        if "meta" in good[0]:
            out["meta"] = [it["meta"] for it in good]
    return out
