"""bf16 and channels_last against float32: every network family's forward, extraction end to
end, a training epoch, and the machine's practical roof (issue 23).

1. roof: a float32 and a bfloat16 GEMM of the same FLOPs (square, n=4096) on the device.
2. per family (StNet-R50, TSN-R50, VGGish, RAFT-small): the bare forward on rows already in
   memory in fp32 contiguous (what vidfeat ran before --precision), fp32 channels_last and bf16
   channels_last — rows/s, GFLOP/s (FLOPs counted by torch's FlopCounterMode on one batch) and
   the fraction of the roof of that dtype; then `extract` end to end with ``--precision auto``
   against the bare forward of the precision auto picks (target >= 0.85 for RGB).
3. `extract rgb` (StNet-R50, crop 160, T=8, N=3 as in bench_extract_rgb) end to end: auto
   against fp32 contiguous, the path of before (target >= 2.5x).
4. one epoch of `train rgb` (StNet-R50) on the synthetic set: auto against fp32 contiguous
   (target >= 1.8x).

Variants are measured interleaved, round by round, and the medians compared: machine noise hits
all alike. "fp32 contiguous" is the family's ``channels_last`` attribute turned off in this
process. On a GPU the same code measures CUDA (bf16 or fp16 autocast, as auto picks there).

Usage: python bench/bench_precision.py [--quick] [--device D] [--json OUT]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it (vidfeat.cli)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_extract_rgb import make_run, synth_clips  # bench/ is on the path

from vidfeat.audio import VGGish
from vidfeat.device import resolve_device
from vidfeat.extract import RunOptions
from vidfeat.extract.network import extract_audio_features, extract_rgb_features
from vidfeat.models import TrainConfig, load_trained
from vidfeat.nets.segment import SegmentNet
from vidfeat.precision import Precision, resolve_name
from vidfeat.videolist import VideoList

TARGET_E2E, TARGET_EXTRACT, TARGET_TRAIN = 0.85, 2.5, 1.8


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


@contextlib.contextmanager
def contiguous(*classes: type) -> Iterator[None]:
    """The families' channels_last turned off: vidfeat's path before --precision."""
    saved = [c.__dict__.get("channels_last") for c in classes]
    for c in classes:
        c.channels_last = False
    try:
        yield
    finally:
        for c, v in zip(classes, saved, strict=True):
            c.channels_last = v


def roof(device: torch.device, n: int = 4096, reps: int = 3) -> dict[str, float]:
    """GFLOP/s of an n×n×n GEMM in float32 and bfloat16 (median of ``reps``)."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b
        ts = [timed(lambda a=a, b=b: a @ b, device) for _ in range(reps)]
        out[name] = 2 * n**3 / statistics.median(ts) / 1e9
    return out


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


VARIANTS = (("fp32 contiguous", "fp32", False), ("fp32 channels_last", "fp32", True))


def bare_variants(
    model: torch.nn.Module,
    call: Callable[[torch.nn.Module, Any], Any],
    batches: list[Any],
    device: torch.device,
    fast: str,
    rounds: int,
) -> dict[str, float]:
    """Seconds (median over rounds) of ``call`` over ``batches`` per variant, interleaved."""
    variants = [*VARIANTS, (f"{fast} channels_last", fast, True)]
    times: dict[str, list[float]] = {v[0]: [] for v in variants}
    for r in range(rounds):
        for k in range(len(variants)):
            label, name, cl = variants[(k + r) % len(variants)]
            p = Precision(name, cl)
            m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)

            def run(m: torch.nn.Module = m, p: Precision = p) -> None:
                with torch.no_grad(), p.autocast(device):
                    for x in batches:
                        call(m, x)

            if r == 0:
                run()  # warm-up of this variant's kernels
            times[label].append(timed(run, device))
    return {k: statistics.median(v) for k, v in times.items()}


def report(
    name: str,
    rows: int,
    flops: int,
    times: dict[str, float],
    top: dict[str, float],
    e2e: float | None,
) -> dict[str, Any]:
    base = times["fp32 contiguous"]
    print(f"  {name}: {rows} rows, {flops / rows / 1e9:.2f} GFLOP per row")
    out: dict[str, Any] = {"rows": rows, "gflop_per_row": flops / rows / 1e9, "variants": {}}
    for label, t in times.items():
        gf = flops / t / 1e9
        frac = gf / top["bf16" if label.startswith(("bf16", "fp16")) else "fp32"]
        print(
            f"    {label:20s} {rows / t:8.1f} rows/s {gf:7.1f} GFLOP/s  {frac:5.1%} of roof  "
            f"x{base / t:.2f}"
        )
        out["variants"][label] = {"rows_per_s": rows / t, "gflops": gf, "roof_fraction": frac}
    if e2e is not None:
        fast = [t for label, t in times.items() if not label.startswith("fp32 contiguous")][-1]
        ratio = fast / e2e
        print(
            f"    extract end to end (auto) {rows / e2e:8.1f} rows/s  = {ratio:.3f} of its bare "
            f"forward (target >= {TARGET_E2E})"
        )
        out["extract_rows_per_s"], out["extract_over_bare"] = rows / e2e, ratio
    return out


# --------------------------------------------------------------------------- data and runs


def rgb_cfg(arch: str, videos: VideoList, size: int, short: int, T: int, N: int) -> TrainConfig:
    return TrainConfig(
        modality="rgb",
        train=str(videos.source),
        val=None,
        arch=arch,
        backbone="resnet50",
        segments=T,
        test_segments=T,
        frames=N,
        size=size,
        short_side=short,
        device="cpu",
    )


def noop(_: str) -> None:
    pass


def opts() -> RunOptions:
    return RunOptions(workers=1, progress=False)


# --------------------------------------------------------------------------- the families


def rgb_family(
    arch: str, root: Path, videos: VideoList, geo: dict, device: torch.device, a: Any
) -> tuple[dict, dict[str, list[float]]]:
    """Bare variants and extraction end to end of one RGB family; for StNet also the
    extraction of before (fp32 contiguous): the seconds of each, per round."""
    from vidfeat.clips import ClipSpec, RGBClips

    T, N, size, short, batch = geo["T"], geo["N"], geo["size"], geo["short"], geo["batch"]
    N = N if arch == "stnet" else 1
    run = root / f"run-{arch}"
    make_run(run, rgb_cfg(arch, videos, size, short, T, N), videos.classes)
    model = load_trained(run).model.to(device).eval()
    ds = RGBClips(videos, ClipSpec(T, N, size, short, train=False), layout=arch)
    xs = [ds[i]["x"] for i in range(len(ds))]
    batches = [torch.stack(xs[i : i + batch]).to(device) for i in range(0, len(xs), batch)]

    def call(m: torch.nn.Module, x: torch.Tensor) -> None:
        torch.softmax(m.forward_head(m.forward_features(x)).float(), 1)

    flops = count_flops(lambda: call(model, batches[0])) * len(xs) // len(batches[0])
    times = bare_variants(model, call, batches, device, a.fast, a.rounds)

    def extract(tag: str, precision: str) -> float:
        store = root / f"store-{arch}-{tag}-{time.monotonic_ns()}"
        return timed(
            lambda: extract_rgb_features(
                videos, store, set_name="rgb", checkpoint=run, segments=T, batch_size=batch,
                device=str(device), opts=opts(), echo=noop, precision=precision,
            ),
            device,
        )  # fmt: skip

    e2e: dict[str, list[float]] = {"auto": [], "before": []}
    extract("warm", "auto")
    for r in range(a.rounds):
        for k in range(2):
            if (k + r) % 2 == 0:
                e2e["auto"].append(extract(f"auto{r}", "auto"))
            elif arch == "stnet":
                with contiguous(SegmentNet):
                    e2e["before"].append(extract(f"before{r}", "fp32"))
    out = report(
        f"{arch}-R50 crop {size}, T={T} N={N}, batch {batch}",
        len(xs) * T,
        flops,
        times,
        a.roof,
        statistics.median(e2e["auto"]),
    )
    start = timed(lambda: load_trained(run), device)
    print(f"    of which start-up (load and checksum the checkpoint) {start:.2f} s a run")
    out["startup_s"] = start
    return out, e2e


def vggish_family(root: Path, videos: VideoList, device: torch.device, a: Any) -> dict:
    from vidfeat.clips import AudioClips, ClipSpec

    T, batch = 25, 8
    torch.manual_seed(0)
    vgg = VGGish().to(device).eval()
    weights = root / "vggish.pth"
    torch.save(VGGish().state_dict(), weights)
    ds = AudioClips(videos, ClipSpec(T, 1, 16, 16, train=False))
    xs = [ds[i]["x"] for i in range(len(ds))]
    batches = [torch.stack(xs[i : i + batch]).to(device) for i in range(0, len(xs), batch)]
    flops = count_flops(lambda: vgg.forward_features(batches[0])) * len(xs) // len(batches[0])
    times = bare_variants(
        vgg, lambda m, x: m.forward_features(x), batches, device, a.fast, a.rounds
    )
    e2e = []
    for r in range(a.rounds + 1):
        t = timed(
            lambda r=r: extract_audio_features(
                videos, root / f"store-audio{r}", set_name="audio", checkpoint=weights, pca=None,
                embedding=None, random_init=False, segments=T, batch_size=batch,
                device=str(device), opts=opts(), echo=noop, precision="auto",
            ),
            device,
        )  # fmt: skip
        if r:  # the first is a warm-up
            e2e.append(t)
    return report(
        f"VGGish, T={T}, batch {batch} videos",
        len(xs) * T,
        flops,
        times,
        a.roof,
        statistics.median(e2e),
    )


def raft_family(root: Path, videos: VideoList, device: torch.device, a: Any) -> dict:
    """RAFT-small on frame pairs (bare); `extract flow --method raft` on the grid's pairs."""
    import av
    from click.testing import CliRunner
    from torchvision.models.optical_flow import raft_small

    from vidfeat.cli import main as cli

    torch.manual_seed(0)
    net = raft_small(weights=None).to(device).eval()
    weights = root / "raft_small.pth"
    torch.save(net.state_dict(), weights)
    T, N, pairs = 4, 2, []
    for r in videos.records:
        with av.open(str(r.path)) as c:
            decoded = zip(range(T * N + 1), c.decode(video=0), strict=False)
            fr = np.stack([f.to_ndarray(format="rgb24") for _, f in decoded])
        t = torch.from_numpy(fr).permute(0, 3, 1, 2).float() / 127.5 - 1
        pairs += [(t[i : i + 1], t[i + 1 : i + 2]) for i in range(T * N)]
    batch = 8
    batches = [
        tuple(torch.cat(z).to(device) for z in zip(*pairs[i : i + batch], strict=True))
        for i in range(0, len(pairs), batch)
    ]

    def call(m: torch.nn.Module, x: tuple) -> None:
        m(x[0], x[1], num_flow_updates=12)

    flops = count_flops(lambda: call(net, batches[0])) * len(pairs) // len(batches[0][0])
    times = bare_variants(net, call, batches, device, a.fast, a.rounds)
    e2e = []
    for r in range(a.rounds + 1):
        args = ["extract", "flow", "--method", "raft", "--model", "small", "--flow-weights",
                str(weights), "-T", str(T), "-N", str(N), "--short-side",
                str(videos_px(videos)), "--batch-size", str(batch), "--device", str(device),
                "--videos", str(videos.source), "--store", str(root / f"store-raft{r}"),
                "--quiet"]  # fmt: skip
        res: list = []
        t = timed(lambda args=args, res=res: res.append(CliRunner().invoke(cli, args)), device)
        assert res[0].exit_code == 0, res[0].output
        if r:
            e2e.append(t)
    return report(
        f"RAFT-small, 12 updates, {T * N} pairs per video, batch {batch} pairs",
        len(pairs),
        flops,
        times,
        a.roof,
        statistics.median(e2e),
    )


def videos_px(videos: VideoList) -> int:
    import av

    with av.open(str(videos.records[0].path)) as c:
        s = c.streams.video[0]
        return min(s.width, s.height)


def train_epochs(root: Path, videos: VideoList, device: torch.device, a: Any) -> dict:
    """One epoch of `train rgb` (StNet-R50, crop 112, 3 segments of 3 frames): auto against
    fp32 contiguous, interleaved."""
    from vidfeat.train import train

    cfg = rgb_cfg("stnet", videos, 112, 126, 3, 3)
    cfg.epochs, cfg.batch_size, cfg.workers, cfg.device = 1, 8, 1, str(device)
    times: dict[str, list[float]] = {"auto": [], "before": []}

    def once(tag: str, precision: str) -> float:
        cfg.precision = precision
        out = root / f"train-{tag}-{time.monotonic_ns()}"
        return timed(lambda: train(cfg, out, progress=False, echo=noop), device)

    once("warm", "auto")
    for r in range(a.rounds):
        for k in range(2):
            if (k + r) % 2 == 0:
                times["auto"].append(once("auto", "auto"))
            else:
                with contiguous(SegmentNet):
                    times["before"].append(once("before", "fp32"))
    auto, before = statistics.median(times["auto"]), statistics.median(times["before"])
    print(
        f"  train rgb, 1 epoch of {len(videos)} videos (StNet-R50, crop 112, T=3 N=3, batch 8): "
        f"fp32 contiguous {before:.1f} s, auto ({a.fast}) {auto:.1f} s: x{before / auto:.2f} "
        f"(target >= {TARGET_TRAIN})"
    )
    return {"seconds": times, "speedup": before / auto, "target": TARGET_TRAIN}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer clips, one round")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    device = resolve_device(a.device)
    a.fast = resolve_name("auto", device)
    a.rounds = 1 if a.quick else 2
    n = 16 if a.quick else 64  # enough that the run's fixed start-up (~1 s) weighs little
    a.roof = roof(device)
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, --precision auto = {a.fast}; "
        f"GEMM roof (n=4096): fp32 {a.roof['fp32']:.0f} GFLOP/s, bf16 {a.roof['bf16']:.0f} "
        f"GFLOP/s (x{a.roof['bf16'] / a.roof['fp32']:.2f})"
    )
    figures: dict[str, Any] = {"device": str(device), "auto": a.fast, "roof": a.roof}
    geo = {"T": 8, "N": 3, "size": 160, "short": 180, "batch": 8}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rgb_videos = synth_clips(root, n, 196)
        figures["stnet"], e2e = rgb_family("stnet", root, rgb_videos, geo, device, a)
        before, auto = statistics.median(e2e["before"]), statistics.median(e2e["auto"])
        print(
            f"  extract rgb (StNet-R50) end to end: auto x{before / auto:.2f} the fp32 "
            f"contiguous rate of before (target >= {TARGET_EXTRACT})"
        )
        figures["extract_rgb_speedup"] = before / auto
        figures["tsn"], _ = rgb_family("tsn", root, rgb_videos, geo, device, a)
        figures["vggish"] = vggish_family(root, rgb_videos, device, a)
        figures["raft"] = raft_family(root, synth_clips(root, 4 if a.quick else 8, 128), device, a)
        figures["train"] = train_epochs(root, rgb_videos, device, a)
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0  # figures, not a gate


if __name__ == "__main__":
    sys.exit(main())
