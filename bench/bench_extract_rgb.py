"""RGB extraction with a trained StNet vs the bare network forward, and its peak memory.

1. throughput: ``vidfeat extract rgb --checkpoint RUN`` end to end
   (:func:`vidfeat.extract.network.extract_rgb_features`: load + checksum the checkpoint, decode and
   crop on the test grid in DataLoader workers, StNet ``forward_features`` + ``forward_head``,
   HDF5 store with gzip) vs the same forward calls on the same clip tensors already in memory,
   same batch size — clips/s, ratio target >= 0.85 (issue 4). Measured interleaved (order
   rotated each round) so machine noise hits both alike; medians printed.
2. memory: peak RSS (VmHWM) of a fresh process running the same extraction, and what the
   imports alone take.

The run folder is written as ``vidfeat train`` leaves it (config.yaml, classes.txt, best.pt) but
with random weights: throughput does not depend on what the weights learned.

Sizes: StNet on ResNet-50 at 160 px, T=8, N=3, 196-px synthetic videos resized to a 180 short
side (``--quick``: 112 px crops, 126 short side, fewer clips). The network is the paper's
backbone class with T×N = 24 frames per clip, cut down from the paper's test setting (224 px,
T=25, N=5) so a CPU round takes seconds; the per-clip network cost (~17 GFLOPs) then dwarfs
decoding 24 small frames, as it does on real extraction. On a CPU, decoding workers and the
forward pass share the same cores, so the ratio also measures how much CPU the pipeline takes
from the network; with resnet18 at 112 px (``--backbone resnet18 --size 112``) decoding is a
far larger share and the figure says more about decode cost than about vidfeat's overhead.

Usage: python bench/bench_extract_rgb.py [--quick] [--backbone B] [--size S] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from vidfeat.clips import ClipSpec, RGBClips
from vidfeat.extract import RunOptions
from vidfeat.extract.network import extract_rgb_features
from vidfeat.models import TrainConfig, build_model, load_trained
from vidfeat.synth import SynthConfig, generate
from vidfeat.videolist import VideoList, load_list, write_classes

TARGET = 0.85


def make_run(out: Path, cfg: TrainConfig, classes: list[str]) -> None:
    """A run folder as ``vidfeat.train.train`` writes it, with random-init weights."""
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_classes(out / "classes.txt", classes)
    torch.manual_seed(cfg.seed)
    torch.save(build_model(cfg, len(classes)).state_dict(), out / "best.pt")


def synth_clips(root: Path, n: int, px: int) -> VideoList:
    """``n`` synthetic videos of ``px`` pixels (12 classes, train and val splits), listed in
    ``clips.csv`` beside them (paths stay relative to it)."""
    data = root / f"synth{px}"
    generate(data, SynthConfig(classes=12, per_class=max(2, -(-n // 12)), size=px), progress=False)
    rows = [ln for s in ("train", "val") for ln in (data / f"{s}.csv").read_text().splitlines()[1:]]
    listing = data / "clips.csv"
    listing.write_text("path,label,video_id,split\n" + "\n".join(rows[:n]) + "\n")
    return load_list(listing)


def bare_forward(model: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    """The runner's calls alone: features, head, softmax — on tensors already in memory."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            feats = model.forward_features(x)
            torch.softmax(model.forward_head(feats).float(), 1)
    return time.perf_counter() - t0


def extract(videos: VideoList, run: Path, store: Path, T: int, batch: int, workers: int) -> float:
    t0 = time.perf_counter()
    rep = extract_rgb_features(
        videos,
        store,
        set_name="rgb",
        checkpoint=run,
        segments=T,
        batch_size=batch,
        device="cpu",
        precision="fp32",  # as the bare forward (bench_precision measures auto)
        opts=RunOptions(workers=workers, progress=False),
        echo=lambda line: None,
    )
    seconds = time.perf_counter() - t0
    assert rep.failed == 0 and rep.done == len(videos), rep.summary()
    return seconds


def peak_rss(listing: Path, run: Path, store: Path, T: int, batch: int, workers: int) -> dict:
    """VmHWM (MB) of a fresh process after its imports and after the whole extraction."""
    hwm = "[int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')][0]/1024"
    code = (
        "from pathlib import Path;"
        "from vidfeat.extract.network import extract_rgb_features;"
        "from vidfeat.extract import RunOptions;"
        "from vidfeat.videolist import load_list;import timm,torch;"
        f"h0={hwm};"
        f"v=load_list(Path(r'{listing}'));"
        f"r=extract_rgb_features(v,Path(r'{store}'),set_name='rgb',checkpoint=Path(r'{run}'),"
        f"segments={T},batch_size={batch},device='cpu',precision='fp32',"
        f"opts=RunOptions(workers={workers},progress=False),echo=lambda s:None);"
        "assert r.failed==0 and r.done==len(v);"
        # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
        f"print(h0,{hwm})"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imports_mb, peak_mb = map(float, out.stdout.strip().splitlines()[-1].split())
    return {"after_imports_mb": imports_mb, "peak_mb": peak_mb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="112 px, 12 clips, 2 rounds")
    ap.add_argument("--backbone", default="resnet50", help="timm backbone (default resnet50)")
    ap.add_argument("--size", type=int, help="crop size (default 160; --quick 112)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (CLI default 1)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    n_clips, batch, rounds = (12, 4, 2) if a.quick else (32, 8, 3)
    size = a.size or (112 if a.quick else 160)
    short = size * 9 // 8 & ~1  # frames resized so the centre crop keeps most of them
    video_px = short + 16  # and the decoder's output is resized, as with real videos
    T, N = 8, 3
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        videos = synth_clips(root, n_clips, video_px)
        listing = videos.source
        cfg = TrainConfig(
            modality="rgb",
            train=str(listing),  # the run records it; nothing trains
            val=None,
            arch="stnet",
            backbone=a.backbone,
            segments=T,
            test_segments=T,
            frames=N,
            size=size,
            short_side=short,
            device="cpu",
        )
        run = root / "run"
        make_run(run, cfg, videos.classes)
        model = load_trained(run).model
        n_params = sum(p.numel() for p in model.parameters())
        ds = RGBClips(videos, ClipSpec(T, N, size, short, train=False), layout="stnet")
        xs = [ds[i]["x"] for i in range(len(ds))]  # decoded once, untimed
        batches = [torch.stack(xs[i : i + batch]) for i in range(0, len(xs), batch)]
        print(
            f"{len(videos)} clips ({video_px} px videos, {time.perf_counter() - t0:.0f} s to "
            f"prepare); StNet/{a.backbone} ({n_params / 1e6:.1f} M params), crop {size} from "
            f"short side {short}, T={T} N={N}, batch {batch}, {a.workers} decode worker(s), "
            f"torch threads {torch.get_num_threads()}, {rounds} rounds"
        )
        bare_forward(model, batches[:1])  # warm-up (allocator, oneDNN kernels)
        extract(videos, run, root / "warm", T, batch, a.workers)  # warm-up (page cache)
        t_bare: list[float] = []
        t_ext: list[float] = []
        for r in range(rounds):
            for k in range(2):
                if (k + r) % 2 == 0:
                    t_bare.append(bare_forward(model, batches))
                else:
                    t_ext.append(extract(videos, run, root / f"store{r}", T, batch, a.workers))
        t0 = time.perf_counter()
        load_trained(run)
        t_load = time.perf_counter() - t0
        bare, ext = statistics.median(t_bare), statistics.median(t_ext)
        ratio = bare / ext
        met = ratio >= TARGET
        print(f"  bare forward on in-memory clips     {len(videos) / bare:6.2f} clips/s")
        print(
            f"  vidfeat extract rgb (end to end)    {len(videos) / ext:6.2f} clips/s   ratio "
            f"{ratio:.3f} (target >= {TARGET}: {'met' if met else 'NOT met'})"
        )
        print(
            f"    of which loading + checksumming the checkpoint {t_load:.2f} s "
            f"({t_load / ext:.1%} of the run; a fixed start-up cost)"
        )
        rss = peak_rss(listing, run, root / "rss", T, batch, a.workers)
        ckpt_mb = (run / "best.pt").stat().st_size / 2**20
        print(
            f"  peak RSS (VmHWM) of a fresh extraction process: {rss['peak_mb']:.0f} MB, of "
            f"which {rss['after_imports_mb']:.0f} MB after importing torch/timm/vidfeat "
            f"(checkpoint {ckpt_mb:.0f} MB; decode workers are separate processes)"
        )
        figures.update(
            clips=len(videos),
            backbone=a.backbone,
            size=size,
            short_side=short,
            T=T,
            N=N,
            batch=batch,
            workers=a.workers,
            bare_s=t_bare,
            extract_s=t_ext,
            load_checkpoint_s=t_load,
            throughput_ratio=ratio,
            target=TARGET,
            met=met,
            peak_rss=rss,
        )
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0  # figures, not a gate


if __name__ == "__main__":
    sys.exit(main())
