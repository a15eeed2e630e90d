"""Untrimmed video (issue 21): memory that does not grow with the video, and rows/s end to end
against the bare network on the same rows.

1. memory: peak RSS of the whole process tree (the command and its decoding worker, sampled
   from /proc every 50 ms) of ``vidfeat extract ... --grid snippets --stride 16`` on a
   60-minute video against the same command on a 1-minute video (target <= 1.3x), for
   ``extract rgb`` (TSN ResNet-50, crop 224), ``extract flow`` alone (Farneback fields, -N 5,
   short side 128), ``extract flow --checkpoint`` (TSN ResNet-50 on 5 pairs, crop 112) and
   ``extract audio`` (VGGish).
2. speed: rows/s of the same extraction in this process on a 5-minute video, against the bare
   work on the same rows already in memory, in the same precision and batch (target >= 0.85):
   the network's forward; for flow, the flow method on the same number of pairs of frames in
   memory (fields alone), plus the network's forward (through a network). Interleaved rounds,
   medians. A 5-minute run still carries the run's fixed costs (loading the network, creating
   the set, starting the decoding worker), so
3. the same ratio for the 60-minute command of 1. (its rows over its wall time, the process's
   start included), against the bare rate of 2.

The videos are synthetic (a textured pattern drifting, 320x240 at 25 fps, a keyframe every 250
frames as typical web video, AAC tone), written once into a cache folder; the networks have
random weights: neither speed nor memory depends on what they learned.

Usage: python bench/bench_untrimmed.py [--quick] [--json OUT]
  --quick: a 10-minute "long" video, one round.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it

import argparse  # noqa: E402
import json  # noqa: E402
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from bench_extract_rgb import make_run  # bench/ is on the path

from vidfeat.models import TrainConfig, load_trained
from vidfeat.videolist import load_list

TARGET_RSS, TARGET_SPEED = 1.3, 0.85
FPS, W, H = 25, 320, 240
STRIDE = 16
CACHE = Path(os.environ.get("VIDFEAT_BENCH_CACHE", Path(tempfile.gettempdir()) / "vidfeat-bench"))


def long_video(path: Path, minutes: float) -> Path:
    """A synthetic ``minutes``-long H.264/AAC video, encoded frame by frame (never held)."""
    if path.exists():
        return path
    tmp = path.with_suffix(".part.mp4")
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, size=(H, W * 2, 3), dtype=np.uint8)
    n = int(minutes * 60 * FPS)
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"preset": "ultrafast", "g": "250", "crf": "28"}
        aus = out.add_stream("aac", rate=16000, layout="mono")
        t_audio = 0
        for i in range(n):
            x = (i * 3) % W
            frame = np.ascontiguousarray(tex[:, x : x + W])
            frame[:8, : (i % W)] = 255
            out.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            while t_audio < (i + 1) * 16000 // FPS:
                k = np.arange(t_audio, t_audio + 1024)
                wave = 0.2 * np.sin(2 * np.pi * (300 + (k // 16000) % 7 * 50) * k / 16000)
                af = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="fltp",
                                                layout="mono")  # fmt: skip
                af.sample_rate = 16000
                af.pts = t_audio
                out.mux(aus.encode(af))
                t_audio += 1024
        out.mux(vs.encode())
        out.mux(aus.encode())
    tmp.replace(path)
    return path


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return total


def peak_rss(argv: list[str]) -> tuple[int, float]:
    """Peak tree RSS (bytes) and wall seconds of a command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err.decode()[-2000:]}")
    return peak, time.perf_counter() - t0


def runs(root: Path) -> dict[str, Path]:
    """Random-weight runs: TSN ResNet-50 on RGB (crop 224) and on 5 Farneback pairs."""
    out = {}
    for modality, frames in (("rgb", 1), ("flow", 5)):
        path = root / f"{modality}-r50"
        extra = {"method": "farneback"} if modality == "flow" else {}
        short, size = (256, 224) if modality == "rgb" else (128, 112)
        cfg = TrainConfig(modality=modality, train="x.csv", val=None, arch="tsn",
                          backbone="resnet50", frames=frames, size=size, short_side=short,
                          net_options={}, **extra)  # fmt: skip
        if not path.exists():
            make_run(path, cfg, [f"c{k}" for k in range(10)])
        out[modality] = path
    return out


def commands(kind: str, lst: Path, store: Path, run: dict[str, Path]) -> list[str]:
    grid = ["--grid", "snippets", "--stride", str(STRIDE), "--workers", "1", "-q",
            "--videos", str(lst), "--store", str(store)]  # fmt: skip
    base = [sys.executable, "-m", "vidfeat", "extract"]
    return {
        "rgb": [*base, "rgb", "--checkpoint", str(run["rgb"]), *grid],
        "flow-fields": [
            *base,
            "flow",
            "--method",
            "farneback",
            "--short-side",
            "128",
            "-N",
            "5",
            *grid,
        ],  # fmt: skip
        "flow-network": [
            *base,
            "flow",
            "--method",
            "farneback",
            "--checkpoint",
            str(run["flow"]),
            *grid,
        ],  # fmt: skip
        "audio": [*base, "audio", "--random-init", *grid],
    }[kind]


def memory(kinds: list[str], short: Path, long: Path, run: dict[str, Path], tmp: Path) -> dict:
    out = {}
    for kind in kinds:
        got = {}
        for name, video in (("1 min", short), ("long", long)):
            lst = tmp / f"{kind}-{name[:1]}.csv"
            lst.write_text(f"path\n{video}\n")
            store = tmp / f"store-{kind}-{name[:1]}"
            got[name] = peak_rss(commands(kind, lst, store, run))
        ratio = got["long"][0] / got["1 min"][0]
        out[kind] = {"rss_1min_mb": got["1 min"][0] / 2**20, "rss_long_mb": got["long"][0] / 2**20,
                     "ratio": ratio, "long_seconds": got["long"][1]}  # fmt: skip
        print(f"  {kind:13s} peak RSS 1 min {got['1 min'][0] / 2**20:7.0f} MB   long "
              f"{got['long'][0] / 2**20:7.0f} MB   x{ratio:.2f} (target <= {TARGET_RSS})   "
              f"long run {got['long'][1]:.0f} s", flush=True)  # fmt: skip
    return out


# --------------------------------------------------------------------------- speed


def _rows_inputs(kind: str, video: Path, run: dict[str, Path]) -> tuple[list[dict], Any]:
    """Every batch of rows of ``video`` as the stream hands them over, and the model."""
    from vidfeat.extract.rows import DEFAULT_ROWS, row_grid
    from vidfeat.rowclips import RowStream
    from vidfeat.videolist import VideoList

    videos = VideoList(str(video), load_list_records(video), [], "text")
    maker, model, frames = _maker(kind, run)
    grid = row_grid("snippets", stride=STRIDE, window=None, frames=frames, fps=None)
    stream = RowStream(videos, grid, maker, DEFAULT_ROWS)
    items = [it for it in stream if "start" in it]
    return items, model


def load_list_records(video: Path) -> list:
    lst = video.with_suffix(".csv")
    lst.write_text(f"path\n{video}\n")
    return load_list(lst).records


def _maker(kind: str, run: dict[str, Path]) -> tuple[Any, Any, int]:
    from vidfeat.clips import ClipSpec
    from vidfeat.flow import configure
    from vidfeat.rowclips import AudioRows, FlowRows, RGBRows

    if kind == "rgb":
        spec = ClipSpec(1, 1, 224, 256, train=False)
        return RGBRows(spec), load_trained(run["rgb"]).model.eval(), 1
    if kind == "audio":
        from vidfeat.audio import VGGish

        return AudioRows(), VGGish().eval(), 1
    method = configure("farneback", {}, None)
    network = kind == "flow-network"
    maker = FlowRows(method, 128, 20.0, crop=112 if network else None, keep_fields=not network,
                     threads=torch.get_num_threads())  # fmt: skip
    return maker, (load_trained(run["flow"]).model.eval() if network else None), 5


def speed(kinds: list[str], video: Path, run: dict[str, Path], tmp: Path, rounds: int) -> dict:
    from vidfeat.precision import resolve_precision

    out = {}
    for kind in kinds:
        items, model = _rows_inputs(kind, video, run)
        rows = sum(len(it["x"] if "x" in it else it["fields"]) for it in items)
        prec = resolve_precision("auto", torch.device("cpu"), model) if model is not None else None
        if model is not None:
            model = prec.prepare(model)
        _bare(kind, items[:2], model, prec)  # warm-up: oneDNN builds its kernels once
        e2e, bare = [], []
        for r in range(rounds):
            store = tmp / f"speed-{kind}-{r}"
            t0 = time.perf_counter()
            extract_in_process(kind, video, store, run)
            e2e.append(rows / (time.perf_counter() - t0))
            bare.append(rows / _bare(kind, items, model, prec))
        ratio = statistics.median(e2e) / statistics.median(bare)
        out[kind] = {"rows": rows, "e2e_rows_s": statistics.median(e2e),
                     "bare_rows_s": statistics.median(bare), "ratio": ratio}  # fmt: skip
        print(f"  {kind:13s} {rows} rows: end to end {statistics.median(e2e):7.1f} rows/s, bare "
              f"{statistics.median(bare):7.1f} rows/s  x{ratio:.2f} (target >= {TARGET_SPEED})",
              flush=True)  # fmt: skip
    return out


def extract_in_process(kind: str, video: Path, store: Path, run: dict[str, Path]) -> None:
    """The extraction as the command runs it (one decoding worker), in this process."""
    from vidfeat.extract import RunOptions
    from vidfeat.extract.rows import extract_audio_rows, extract_flow_rows, extract_rgb_rows

    videos = load_list(video.with_suffix(".csv"))
    opts = RunOptions(workers=1, progress=False)
    grid = {"mode": "snippets", "stride": STRIDE, "window": None, "fps": None}
    common = dict(batch_size=None, device="cpu", precision="auto", opts=opts, echo=lambda m: None)
    if kind == "rgb":
        rep = extract_rgb_rows(videos, store, set_name="rgb", checkpoint=run["rgb"], grid=grid,
                               crop_size=None, **common)  # fmt: skip
    elif kind == "audio":
        rep = extract_audio_rows(videos, store, set_name="audio", checkpoint=None, pca=None,
                                 embedding=None, random_init=True, grid=grid, frames=1,
                                 **common)  # fmt: skip
    else:
        net = kind == "flow-network"
        rep = extract_flow_rows(videos, store, method="farneback", params={},
                                set_name="flow", fields_set="fields",
                                checkpoint=run["flow"] if net else None, grid=grid, frames=5,
                                short_side=None if net else 128, bound=20.0, keep_fields=False,
                                crop_size=None, **common)  # fmt: skip
    assert rep.done == 1 and not rep.failed, rep.summary()


def _bare(kind: str, items: list[dict], model, prec) -> float:
    """Seconds of the bare work on the rows in memory: the network (with the device-side
    normalisation of uint8 RGB), or the flow method for fields alone."""
    from vidfeat.clips import normalize_on_device

    t0 = time.perf_counter()
    if kind.startswith("flow"):  # the flow of the same pairs is work of both flow pipelines
        _flow_again(items)
    if model is None:
        return time.perf_counter() - t0
    with torch.no_grad(), prec.autocast(torch.device("cpu")):
        for it in items:
            x = it["x"]
            if x.dtype == torch.uint8:
                x = normalize_on_device(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            f = model.forward_features(x)
            if hasattr(model, "forward_head"):
                torch.softmax(model.forward_head(f).float(), 1)
    return time.perf_counter() - t0


_FRAMES: dict = {}


def _flow_again(items: list[dict]) -> None:
    """The Farneback flow of as many 128-px pairs as the items hold fields, on frames already
    in memory (the bare cost of the fields)."""
    from vidfeat.flow import configure, flow_on_grid

    method = configure("farneback", {}, None)
    method.setup()
    for it in items:
        if "fields" in it:
            R, k, _, h, w = it["fields"].shape
        else:  # a network's input: [R, 1, 2k, crop, crop] of 128-px fields
            R, k, h, w = it["x"].shape[0], it["x"].shape[2] // 2, 128, 170
        frames = _FRAMES.setdefault((h, w), np.random.default_rng(0).integers(
            0, 256, size=(1, 2, h, w), dtype=np.uint8))  # fmt: skip
        both = np.repeat(frames, R * k, axis=0)
        flow_on_grid(both, method, None, bound=20.0, threads=torch.get_num_threads())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--kinds", default="rgb,flow-fields,flow-network,audio")
    ap.add_argument("--skip-memory", action="store_true", help="the speed figures alone")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    CACHE.mkdir(parents=True, exist_ok=True)
    minutes = 10 if args.quick else 60
    print(f"videos: {W}x{H} at {FPS} fps; snippets every {STRIDE} frames; "
          f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip
    short = long_video(CACHE / "untrimmed-1min.mp4", 1)
    mid = long_video(CACHE / "untrimmed-5min.mp4", 5)
    long = long_video(CACHE / f"untrimmed-{minutes}min.mp4", minutes)
    run = runs(CACHE)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"1. peak RSS, 1 min against {minutes} min", flush=True)
        mem = {} if args.skip_memory else memory(kinds, short, long, run, tmp)
        print("2. rows/s end to end against the bare work on the same rows (5 min video, in "
              "this process, interleaved rounds)")  # fmt: skip
        spd = speed(kinds, mid, run, tmp, 1 if args.quick else 3)
    if mem:
        long_rows = -(-(minutes * 60 * FPS - STRIDE // 2) // STRIDE)
        print(f"3. the {minutes}-min command of 1. ({long_rows} rows, process start included) "
              "against the bare work of 2.")  # fmt: skip
        for kind in kinds:
            rate = long_rows / mem[kind]["long_seconds"]
            ratio = rate / spd[kind]["bare_rows_s"]
            mem[kind].update(rows_s=rate, ratio_to_bare=ratio)
            print(f"  {kind:13s} {rate:7.1f} rows/s  x{ratio:.2f} (target >= {TARGET_SPEED})")
    if args.json:
        Path(args.json).write_text(json.dumps({"memory": mem, "speed": spd}, indent=1))


if __name__ == "__main__":
    main()
