"""Fusion-head training throughput: features read from the HDF5 store vs held in memory.

For every registered head (``fusion.heads.HEADS``; ``single`` takes one modality, rgb, the
others take rgb + flow + audio), a fixed number of optimisation steps (AdamW, cross-entropy,
the trainer's loop: shuffled DataLoader, normalised features, same batch size) is timed in
three variants of the same training split:

* ``memory``   — ``FusionDataset(cache=True)``: the split read into memory once (workers 0);
* ``store/w0`` — ``FusionDataset(cache=False)``, every item read from HDF5 in the main process;
* ``store/w2`` — the same with 2 DataLoader workers reading ahead.

Target: store samples/s ÷ memory samples/s >= 0.8 for every head (issue 6: "the store must
never be the bottleneck"). The variants are interleaved in rounds (order rotated each round) so
machine noise hits them alike; medians are printed. Each timed run builds its DataLoader
iterator (worker start-up included), as every epoch of the trainer does.

The store holds synthetic per-segment features of realistic size: by default 1,000 videos,
T=25, rgb 2048-d, flow 2048-d, audio 128-d (5% without audio, masked), float32, written with
the runner's default shards (64 videos each). Values are class prototypes plus noise through a
ReLU, like pooled CNN features (about a third zeros). The store is written three times — the
runner's default ``auto`` (float features uncompressed, read with one ``pread`` each), lzf and
gzip — for one extra line: size on disk, write time and raw read rate (DataLoader, workers 0,
no model) of each; the heads are timed on the default. The files were just written, so reads
come from the OS page cache, as for a store that fits in RAM; a cold disk is not measured.

Usage: python bench/bench_heads.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vidfeat.fusion.data import FusionDataset
from vidfeat.fusion.heads import HEADS, create_head
from vidfeat.store import FeatureStore, ShardWriter
from vidfeat.videolist import VideoList, load_list

DIMS = {"rgb": 2048, "flow": 2048, "audio": 128}
COMPRESSIONS: tuple[str | None, ...] = ("auto", "lzf", "gzip")  # the first is timed
TARGET = 0.8


@dataclass(frozen=True)
class Sizes:
    videos: int
    T: int
    classes: int
    batch: int
    steps: int  # optimisation steps per timed run
    rounds: int


def cname(c: str | None) -> str:
    return c or "none"


def features_of(i: int, label: int, T: int, protos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One video's (T, D) float32 arrays, deterministic in the video number."""
    rng = np.random.default_rng([7, i])
    out = {}
    for m, d in DIMS.items():
        x = protos[m][label] + rng.standard_normal((T, d), dtype=np.float32)
        out[m] = np.maximum(x, 0.0, dtype=np.float32)
    return out


def write_stores(root: Path, sz: Sizes) -> tuple[Path, dict[str, dict[str, float]]]:
    """Three stores (auto, lzf, gzip) of the same features, and a train list of their ids.

    Returns the list path and, per compression, seconds spent in ``ShardWriter.add`` + close
    and megabytes on disk.
    """
    rng = np.random.default_rng(0)
    protos = {m: rng.normal(0.3, 0.5, (sz.classes, d)).astype(np.float32) for m, d in DIMS.items()}
    ids = [f"v{i:05d}" for i in range(sz.videos)]
    labels = [i % sz.classes for i in range(sz.videos)]
    no_audio = {ids[i] for i in range(0, sz.videos, 20)}  # 5%, as in real data
    writers: dict[tuple[str, str], ShardWriter] = {}
    spent = {cname(c): 0.0 for c in COMPRESSIONS}
    with ExitStack() as stack:
        for c in COMPRESSIONS:
            fs = FeatureStore(root / f"store-{cname(c)}")
            for m, d in DIMS.items():
                cfg = {"modality": m, "T": sz.T, "feature_shape": [sz.T, d], "dtype": "float32"}
                fs.ensure_set(m, cfg)
                # the runner's default shards: 64 videos or 256 MiB
                w = ShardWriter(fs.set_dir(m), "bench", max_videos=64, max_mb=256.0, compression=c)
                writers[(cname(c), m)] = stack.enter_context(w)
        for i, (vid, y) in enumerate(zip(ids, labels, strict=True)):
            feats = features_of(i, y, sz.T, protos)
            for m, x in feats.items():
                silent = m == "audio" and vid in no_audio
                attrs = {"label": f"class{y:03d}", "has_audio": not silent}
                if silent:
                    x = np.zeros_like(x)
                for c in COMPRESSIONS:
                    t0 = time.perf_counter()
                    writers[(cname(c), m)].add(vid, x, attrs)
                    spent[cname(c)] += time.perf_counter() - t0
        for (c, _), w in writers.items():  # the last shards: compressed and fsync'ed here
            t0 = time.perf_counter()
            w.close()
            spent[c] += time.perf_counter() - t0
    listing = root / "train.csv"
    with open(listing, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "video_id"])
        for vid, y in zip(ids, labels, strict=True):
            w.writerow([f"{vid}.mp4", f"class{y:03d}", vid])
    stats = {}
    for c in COMPRESSIONS:
        size = sum(p.stat().st_size for p in (root / f"store-{cname(c)}").rglob("*.h5"))
        stats[cname(c)] = {"write_s": spent[cname(c)], "mb": size / 2**20}
    return listing, stats


def batches(ds: FusionDataset, batch: int, workers: int, seed: int) -> Iterator[dict]:
    """The trainer's loader: shuffled, last partial batch dropped."""
    return iter(
        DataLoader(
            ds,
            batch_size=batch,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=workers,
            drop_last=True,
        )
    )


def time_training(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    ds: FusionDataset,
    sz: Sizes,
    workers: int,
    steps: int,
    seed: int,
) -> float:
    """Seconds for ``steps`` optimisation steps, DataLoader start-up included."""
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    t0 = time.perf_counter()
    it = batches(ds, sz.batch, workers, seed)
    for _ in range(steps):
        try:
            b = next(it)
        except StopIteration:  # a split shorter than the run: start another epoch
            it = batches(ds, sz.batch, workers, seed + 1)
            b = next(it)
        logits = model(b["feats"], b["masks"])
        loss = loss_fn(logits, torch.as_tensor(b["label"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    del it  # shuts the workers down before the clock stops
    return time.perf_counter() - t0


def time_reading(ds: FusionDataset, sz: Sizes, steps: int, seed: int) -> float:
    """Seconds to draw ``steps`` batches (workers 0), no model."""
    t0 = time.perf_counter()
    it = batches(ds, sz.batch, 0, seed)
    for _ in range(steps):
        next(it)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 videos, fewer steps (a smoke run)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    sz = (
        Sizes(videos=300, T=25, classes=20, batch=32, steps=6, rounds=2)
        if a.quick
        else Sizes(videos=1000, T=25, classes=20, batch=32, steps=20, rounds=3)
    )
    torch.manual_seed(0)
    figures: dict = {"config": {**sz.__dict__, "dims": DIMS}, "heads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        listing, store_stats = write_stores(root, sz)
        videos: VideoList = load_list(listing, require_labels=True)
        print(
            f"store: {sz.videos} videos, T={sz.T}, "
            + ", ".join(f"{m} {d}-d" for m, d in DIMS.items())
            + f", float32 ({time.perf_counter() - t0:.0f} s to write 3 copies); batch {sz.batch}, "
            f"{sz.steps} steps per timed run, {sz.rounds} rounds; torch threads "
            f"{torch.get_num_threads()}"
        )
        timed = root / f"store-{cname(COMPRESSIONS[0])}"
        all_m = list(DIMS)
        mem_all = FusionDataset(timed, all_m, videos, cache=True)
        norm = mem_all.compute_norm()  # the trainer normalises; both paths pay for it
        mem_all.norm = norm
        disk_all = FusionDataset(timed, all_m, videos, norm=norm, cache=False)
        mem_rgb = FusionDataset(timed, ["rgb"], videos, cache=True, norm={"rgb": norm["rgb"]})
        disk_rgb = FusionDataset(timed, ["rgb"], videos, cache=False, norm={"rgb": norm["rgb"]})
        for line in disk_all.report.lines():
            print(f"  join: {line}")

        header = (
            f"{'head':<19} {'params':>7} {'memory':>9} {'store/w0':>9} {'ratio':>6} "
            f"{'store/w2':>9} {'ratio':>6}  (samples/s, medians)"
        )
        print(header)
        print("-" * len(header))
        worst = {"store/w0": float("inf"), "store/w2": float("inf")}
        for name in HEADS.names():
            mods = ["rgb"] if name == "single" else all_m
            mem, disk = (mem_rgb, disk_rgb) if name == "single" else (mem_all, disk_all)
            model = create_head(name, {m: DIMS[m] for m in mods}, sz.classes)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
            variants = {"memory": (mem, 0), "store/w0": (disk, 0), "store/w2": (disk, 2)}
            for ds, w in variants.values():  # warm-up: allocator, page cache, first workers
                time_training(model, opt, ds, sz, w, 2, seed=99)
            times: dict[str, list[float]] = {v: [] for v in variants}
            keys = list(variants)
            for r in range(sz.rounds):
                for k in range(len(keys)):
                    v = keys[(k + r) % len(keys)]
                    ds, w = variants[v]
                    times[v].append(time_training(model, opt, ds, sz, w, sz.steps, seed=r))
            rate = {v: sz.steps * sz.batch / statistics.median(t) for v, t in times.items()}
            r0, r2 = rate["store/w0"] / rate["memory"], rate["store/w2"] / rate["memory"]
            worst = {"store/w0": min(worst["store/w0"], r0), "store/w2": min(worst["store/w2"], r2)}
            n_params = sum(p.numel() for p in model.parameters())
            print(
                f"{name:<19} {n_params / 1e6:>6.1f}M {rate['memory']:>9.0f} "
                f"{rate['store/w0']:>9.0f} {r0:>6.2f} {rate['store/w2']:>9.0f} {r2:>6.2f}"
            )
            figures["heads"][name] = {
                "modalities": mods,
                "params": n_params,
                "samples_per_s": rate,
                "ratio_store_w0": r0,
                "ratio_store_w2": r2,
                "seconds_all": times,
            }

        # compression: what reading costs per codec, without a model
        readers = {
            c: FusionDataset(root / f"store-{c}", all_m, videos, norm=norm, cache=False)
            for c in map(cname, COMPRESSIONS)
        }
        for ds in readers.values():
            time_reading(ds, sz, 2, seed=99)
        read_t: dict[str, list[float]] = {c: [] for c in readers}
        for r in range(sz.rounds):
            for k in range(len(readers)):
                c = list(readers)[(k + r) % len(readers)]
                read_t[c].append(time_reading(readers[c], sz, sz.steps, seed=r))
        print("compression (all three sets, read = DataLoader workers 0, no model):")
        raw_mb = sz.videos * sz.T * sum(DIMS.values()) * 4 / 2**20
        for c, ts in read_t.items():
            st = store_stats[c]
            st["read_samples_per_s"] = sz.steps * sz.batch / statistics.median(ts)
            print(
                f"  {c:<5} {st['mb']:7.0f} MB on disk ({st['mb'] / raw_mb:4.0%} of raw), "
                f"write {st['write_s']:5.1f} s, read {st['read_samples_per_s']:7.0f} samples/s"
            )
        figures["compression"] = store_stats

    met = {v: r >= TARGET for v, r in worst.items()}
    for v, r in worst.items():
        print(
            f"target: store/memory >= {TARGET} for every head, {v}: worst head {r:.2f} — "
            f"{'met' if met[v] else 'NOT met'}"
        )
    figures["worst_ratio"], figures["target"], figures["met"] = worst, TARGET, met
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0  # figures, not a gate


if __name__ == "__main__":
    sys.exit(main())
