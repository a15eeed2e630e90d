"""Joining stored feature sets by video id into the one contract the heads consume.

Each item is ``{"feats": {m: (T, D_m) float32}, "masks": {m: (T,) float32}, "label": int,
"index": int}``. All sets of a store computed on the segment grid share T; a set with another T
is resampled to the common (largest) T by nearest index, and the report says so. A video missing
from a set (its extraction failed) or an audio set's ``has_audio=false`` video gets zeros and
mask 0: counted and reported, never a crash and never a silent drop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vidfeat.errors import ConfigError, StoreError
from vidfeat.videolist import VideoList


@dataclass
class JoinReport:
    videos: int
    T: int
    missing: dict[str, int] = field(default_factory=dict)  # modality -> videos absent from the set
    no_audio: dict[str, int] = field(default_factory=dict)  # modality -> has_audio=false videos
    resampled: dict[str, int] = field(default_factory=dict)  # modality -> its stored T

    def lines(self) -> list[str]:
        out = []
        for m, n in self.missing.items():
            if n:
                out.append(f"{m} missing for {n:,} of {self.videos:,} videos (zeros, masked)")
        for m, n in self.no_audio.items():
            if n:
                out.append(f"{m}: no audio track in {n:,} of {self.videos:,} videos (masked)")
        for m, t in self.resampled.items():
            out.append(f"{m} has T={t}; resampled to T={self.T} by nearest index")
        return out


def set_fingerprint(config: dict) -> str:
    """sha256 of what a set's configuration says about its arrays (provenance keys such as
    versions and paths left out, :func:`vidfeat.store.identity`)."""
    from vidfeat.store import identity

    core = identity(config)
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()


def open_sets(store_root: str | Path, features: list[str]):
    """The FeatureSets named by ``features``, checked to hold per-segment vectors (T, D)."""
    from vidfeat.store import FeatureStore

    store = FeatureStore(store_root)
    sets = {}
    for name in features:
        fs = store.open_set(name)
        grid = fs.config.get("grid")
        if isinstance(grid, dict) and grid.get("mode") in ("snippets", "windows"):
            raise ConfigError(
                f"set {name!r} holds untrimmed rows (--grid {grid['mode']}: L rows per video, L "
                "growing with the video); the fusion heads classify clips on T segments and "
                "would have to cut or resample the rows. Extract on the segments grid (-T) for "
                "fusion, or export the rows for a localization codebase: `vidfeat store export "
                f"STORE --set {name} --layout actionformer|bmn|gtad`"
            )
        shape = fs.config.get("feature_shape")
        if shape is not None and (not isinstance(shape, list) or len(shape) != 2):
            raise ConfigError(
                f"set {name!r} holds arrays of shape {shape}, not per-segment features (T, D); "
                "fusion needs features extracted with a network (vidfeat extract ... "
                "--checkpoint RUN)"
            )
        sets[name] = fs
    return sets


def _has_audio(fs, vid: str) -> bool:
    """The ``has_audio`` attr of an audio set's video (True when absent); StoreError naming
    the video when it is not a boolean (a store written by someone else)."""
    v = fs.attrs(vid).get("has_audio", True)
    if isinstance(v, bool | int | np.bool_ | np.integer) and not isinstance(v, np.ndarray):
        return bool(v)
    raise StoreError(
        f"video {vid!r} of set {fs.name!r} ({fs.shard_of(vid).name}): attr has_audio is "
        f"{type(v).__name__}, not a boolean; run `vidfeat store verify {fs.dir.parent}`"
    )


def nearest_index(t_src: int, t_dst: int) -> np.ndarray:
    """Indices into a length-t_src axis that resample it to t_dst steps (segment centres)."""
    centres = (np.arange(t_dst) + 0.5) / t_dst
    return np.minimum((centres * t_src).astype(np.int64), t_src - 1)


class FusionDataset(Dataset):
    """Aligned multi-modal sequences for the videos of a labelled (or unlabelled) list.

    ``norm``: per-modality ``(mean, std)`` arrays applied to valid steps (padding stays 0).
    ``augment``: random temporal subsampling (a random subset of at least half of the steps,
    in order, left-aligned; the rest masked) — train only.
    ``cache``: read every array once into memory (for splits that fit).
    """

    def __init__(
        self,
        store_root: str | Path,
        features: list[str],
        videos: VideoList,
        *,
        norm: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        augment: bool = False,
        cache: bool = False,
        seed: int = 0,
    ) -> None:
        if not features:
            raise ConfigError("--features needs at least one feature set, e.g. rgb,audio")
        self.store_root = Path(store_root)
        self.features = list(features)
        self.videos = videos
        self.records = videos.records
        self.labels = videos.label_indices() if videos.labelled else [-1] * len(videos)
        self.norm = norm
        self.augment = augment
        self.seed = seed
        self._epoch = 0
        sets = open_sets(store_root, features)
        self.configs = {m: fs.config for m, fs in sets.items()}
        self.dims: dict[str, int] = {}
        stored_T: dict[str, int] = {}
        for m, fs in sets.items():
            ids = fs.ids()
            if not ids:
                raise StoreError(f"set {m!r} of {store_root} holds no videos")
            arr, _ = fs.get(ids[0])
            if arr.ndim != 2:
                raise ConfigError(f"set {m!r} stores arrays of shape {arr.shape}, not (T, D)")
            stored_T[m], self.dims[m] = int(arr.shape[0]), int(arr.shape[1])
        self.T = max(stored_T.values())
        self.is_audio = {m: self.configs[m].get("modality") == "audio" for m in features}
        self.present = {m: set(fs.ids()) for m, fs in sets.items()}
        self.report = JoinReport(len(self.records), self.T)
        ids = [r.video_id for r in self.records]
        for m in features:
            self.report.missing[m] = sum(v not in self.present[m] for v in ids)
            if stored_T[m] != self.T:
                self.report.resampled[m] = stored_T[m]
        # audio sets: videos stored with has_audio=false (zeros) are masked like missing ones;
        # read once here, so loading an item reads its arrays and nothing else
        self.silent: dict[str, set[str]] = {m: set() for m in features}
        for m in features:
            if self.is_audio[m]:
                self.silent[m] = {
                    v for v in ids if v in self.present[m] and not _has_audio(sets[m], v)
                }
                self.report.no_audio[m] = len(self.silent[m])
        self._sets = None if not cache else sets
        self._cache: list[dict] | None = None
        if cache:
            self._cache = [self._load(i) for i in range(len(self.records))]
        self._sets = None  # reopened lazily per process (DataLoader workers)

    # -- loading

    def _get_sets(self):
        if self._sets is None:
            self._sets = open_sets(self.store_root, self.features)
        return self._sets

    def _load(self, i: int) -> dict:
        vid = self.records[i].video_id
        sets = self._get_sets()
        feats, masks = {}, {}
        for m in self.features:
            x = np.zeros((self.T, self.dims[m]), dtype=np.float32)
            mask = np.zeros(self.T, dtype=np.float32)
            if vid in self.present[m] and vid not in self.silent[m]:
                arr = np.asarray(sets[m].features(vid), dtype=np.float32)
                if arr.ndim != 2 or arr.shape[1] != self.dims[m] or not arr.shape[0]:
                    raise StoreError(
                        f"video {vid!r} of set {m!r} ({sets[m].shard_of(vid).name}) has features "
                        f"of shape {arr.shape}, the set's other videos (T, {self.dims[m]}); run "
                        f"`vidfeat store verify {self.store_root}`"
                    )
                if arr.shape[0] != self.T:
                    arr = arr[nearest_index(arr.shape[0], self.T)]
                x, mask = arr, np.ones(self.T, dtype=np.float32)
            feats[m], masks[m] = x, mask
        return {"feats": feats, "masks": masks}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation (deterministic per epoch and item)."""
        self._epoch = epoch

    def __getitem__(self, i: int) -> dict:
        item = self._cache[i] if self._cache is not None else self._load(i)
        feats = {m: item["feats"][m].copy() for m in self.features}
        masks = {m: item["masks"][m].copy() for m in self.features}
        if self.norm is not None:
            for m in self.features:
                mean, std = self.norm[m]
                feats[m] = (feats[m] - mean) / std * masks[m][:, None]
        if self.augment and self.T > 1:
            rng = np.random.default_rng([self.seed, self._epoch, i])
            keep = np.sort(
                rng.choice(
                    self.T, size=int(rng.integers(self.T // 2 + 1, self.T + 1)), replace=False
                )
            )
            for m in self.features:
                f = np.zeros_like(feats[m])
                k = np.zeros_like(masks[m])
                f[: len(keep)], k[: len(keep)] = feats[m][keep], masks[m][keep]
                feats[m], masks[m] = f, k
        return {
            "feats": {m: torch.from_numpy(v) for m, v in feats.items()},
            "masks": {m: torch.from_numpy(v) for m, v in masks.items()},
            "label": self.labels[i],
            "index": i,
        }

    # -- statistics
    def compute_norm(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-modality mean and std over the valid steps of this (training) split."""
        sums = {m: np.zeros(self.dims[m]) for m in self.features}
        sq = {m: np.zeros(self.dims[m]) for m in self.features}
        count = {m: 0.0 for m in self.features}
        for i in range(len(self)):
            item = self._cache[i] if self._cache is not None else self._load(i)
            for m in self.features:
                x, k = item["feats"][m].astype(np.float64), item["masks"][m]
                sums[m] += (x * k[:, None]).sum(0)
                sq[m] += ((x**2) * k[:, None]).sum(0)
                count[m] += k.sum()
        out = {}
        for m in self.features:
            n = max(count[m], 1.0)
            mean = sums[m] / n
            std = np.sqrt(np.maximum(sq[m] / n - mean**2, 0.0))
            out[m] = (mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32))
        return out


def save_norm(path: str | Path, norm: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    arrays = {}
    for m, (mean, std) in norm.items():
        arrays[f"{m}::mean"], arrays[f"{m}::std"] = mean, std
    np.savez(path, **arrays)


def load_norm(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        mods = sorted({k.split("::")[0] for k in z.files})
        return {m: (z[f"{m}::mean"], z[f"{m}::std"]) for m in mods}
