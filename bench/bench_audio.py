"""Audio extraction (VGGish on the grid) vs the bare network, and memory on a long track.

1. throughput: `vidfeat extract audio` end to end (decode + resample + log-mel in DataLoader
   workers, VGGish forward, HDF5 store) vs the bare VGGish forward on the same examples already
   in memory, same batch size — videos/s, ratio target >= 0.8. Measured interleaved (bare,
   extract, bare, extract, ...) so machine noise hits both alike; medians printed.
2. memory: peak RSS (VmHWM) of a fresh process cutting T=25 grid examples out of a 10-minute
   AAC track vs a 10-second one — the frontend streams and keeps only the windows, so the ratio
   should be close to 1 (target <= 1.3).

Usage: python bench/bench_audio.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from vidfeat.audio import VGGish
from vidfeat.clips import AudioClips, ClipSpec
from vidfeat.extract import RunOptions
from vidfeat.extract.network import extract_audio_features
from vidfeat.synth import SynthConfig, generate
from vidfeat.videolist import load_list


def write_track(path: Path, seconds: float, rate: int = 44100) -> None:
    """A mono AAC track (an .m4a): a tone sweeping slowly, plus noise."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=rate, layout="mono")
        conv = av.AudioResampler(format="fltp", layout="mono", rate=rate, frame_size=1024)
        rng = np.random.default_rng(0)
        block = 10 * rate
        for start in range(0, int(seconds * rate), block):  # 10 s at a time: bounded memory
            t = (start + np.arange(block)) / rate
            y = 0.3 * np.sin(2 * np.pi * (300 + 100 * np.sin(t / 7)) * t)
            y += 0.05 * rng.standard_normal(block)
            f = av.AudioFrame.from_ndarray(y[None].astype(np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = rate, start, Fraction(1, rate)
            for fr in conv.resample(f):
                for p in s.encode(fr):
                    out.mux(p)
        for fr in conv.resample(None):
            for p in s.encode(fr):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


def peak_rss_mb(path: Path, T: int) -> float:
    code = (
        "import numpy as np;from vidfeat.audio import grid_examples_from_file;"
        "from vidfeat.decode import probe;"
        f"import av;d=float(av.open(r'{path}').duration)/1e6;"
        f"c=(np.arange({T})+0.5)*d/{T};"
        f"ex,ok,_=grid_examples_from_file(r'{path}',c);assert ok and ex.shape=={(T, 96, 64)};"
        "print([int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')]"
        "[0]/1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bare_forward(model: VGGish, batches: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            model.forward_features(x)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer videos, narrower net, 2 min")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    n_videos, T, batch, rounds = (12, 10, 4, 2) if a.quick else (48, 25, 8, 3)
    long_s = 120.0 if a.quick else 600.0
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "synth", SynthConfig(classes=12, per_class=4, seed=2), progress=False)
        videos = load_list(tmp / "synth" / "train.csv").subset(
            set(load_list(tmp / "synth" / "train.csv").ids()[:n_videos])
        )
        model = VGGish().eval()
        ds = AudioClips(videos, ClipSpec(T, 1, 16, 16, train=False))
        xs = [ds[i]["x"] for i in range(len(ds))]
        batches = [torch.stack(xs[i : i + batch]) for i in range(0, len(xs), batch)]
        t_bare, t_ext = [], []
        bare_forward(model, batches[:1])  # warm-up
        for r in range(rounds):
            t_bare.append(bare_forward(model, batches))
            t0 = time.perf_counter()
            rep = extract_audio_features(
                videos,
                tmp / f"store{r}",
                set_name="audio",
                checkpoint=None,
                pca=None,
                embedding="pre-relu",
                random_init=True,
                segments=T,
                batch_size=batch,
                device="cpu",
                opts=RunOptions(workers=1, progress=False),
                echo=lambda s: None,
            )
            t_ext.append(time.perf_counter() - t0)
            assert rep.failed == 0 and rep.done == len(videos), rep.summary()
        bare, ext = statistics.median(t_bare), statistics.median(t_ext)
        ratio = bare / ext
        print(f"{len(videos)} videos, T={T}, batch {batch} videos, VGGish (72 M params), CPU")
        print(f"  bare forward on in-memory examples {len(videos) / bare:7.2f} videos/s")
        print(
            f"  vidfeat extract audio (end to end) {len(videos) / ext:7.2f} videos/s   "
            f"ratio {ratio:.2f} (target >= 0.8)"
        )
        figures.update(videos=len(videos), T=T, batch=batch, bare_s=t_bare, extract_s=t_ext)
        figures["throughput_ratio"] = ratio

        short, long_ = tmp / "short.m4a", tmp / "long.m4a"
        write_track(short, 10.0)
        write_track(long_, long_s)
        r_short, r_long = peak_rss_mb(short, 25), peak_rss_mb(long_, 25)
        print(
            f"  peak RSS, T=25 examples: 10 s track {r_short:.0f} MB, {long_s / 60:g} min track "
            f"{r_long:.0f} MB, ratio {r_long / r_short:.2f} (target <= 1.3)"
        )
        figures.update(rss_short_mb=r_short, rss_long_mb=r_long, long_seconds=long_s)
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0  # figures, not a gate


if __name__ == "__main__":
    sys.exit(main())
