"""The backbones of issue 22: rows/s end to end against the bare forward on the same rows.

For one network of each family, imported as a user imports it (random weights in the
family's own file format: a timm state dict, torchvision's, the pytorch-i3d port's), at its
default crop and clip length on its device (CUDA when there is one, else the CPU, with the
precision ``auto`` picks there):

- ``timm-cnn``: ``convnext_tiny``, one frame per row (snippets every 8 frames);
- ``timm-clip``: ``vit_base_patch16_clip_224.openai``, CLIP's image embedding per frame;
- ``i3d``: two-stream I3D's RGB stream, 16-frame windows every 16 frames, 224 px;
- ``torchvision``: ``r2plus1d_18``, 16-frame windows every 16 frames, 112 px.

End to end: ``extract rgb --grid ...`` in this process with one decoding worker (decode, the
weights' own resize and crop, the forward, the store), its rows over its wall time. Bare: the
forward (with the device-side normalisation) on the same rows already in memory, in the same
precision and batch. Interleaved rounds, medians; target >= 0.85.

The video is synthetic (a textured pattern drifting, 320x240 at 25 fps, H.264 with a keyframe
every 250 frames), written once into the bench cache; its length is chosen per family so that
each round has some 100 rows or more of work (the run's fixed costs — loading the network,
creating the set, starting the decoding worker — are part of end to end).

Usage: python bench/bench_backbones.py [--quick] [--families a,b] [--json OUT]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from bench_untrimmed import CACHE, long_video  # noqa: E402  (bench/ is on the path)

TARGET = 0.85


@dataclass
class Family:
    name: str
    model: str
    build: Callable[[Path, Path], Path]  # (weights folder, run folder) → the run
    grid: dict
    seconds: float  # the video's length: some 100+ rows a round


def _timm(name: str) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, out: Path) -> Path:
        import timm

        from vidfeat.models import import_timm

        w = tmp / f"{name}.pth"
        torch.save(timm.create_model(name, pretrained=False).state_dict(), w)
        import_timm(name, out, weights=w)
        return out

    return build


def _torchvision(name: str) -> Callable[[Path, Path], Path]:
    def build(tmp: Path, out: Path) -> Path:
        import torchvision

        from vidfeat.models import import_torchvision

        w = tmp / f"{name}.pth"
        torch.save(torchvision.models.get_model(name, weights=None).state_dict(), w)
        import_torchvision(name, out, weights=w)
        return out

    return build


def _i3d(tmp: Path, out: Path) -> Path:
    """pytorch-i3d's ``rgb_imagenet.pt`` format: vidfeat's I3D has its very parameter names."""
    from vidfeat.models import import_i3d
    from vidfeat.nets.clipnet import create_clip_net

    net = create_clip_net("i3d", "inception_i3d", 400, in_chans_per_segment=3 * 16, frames=16)
    w = tmp / "rgb_imagenet.pt"
    torch.save(net.state_dict(), w)
    import_i3d(w, out, modality="rgb")
    return out


def snippets(stride: int) -> dict:
    return {"mode": "snippets", "stride": stride, "window": None, "fps": None}


def windows(w: int, stride: int) -> dict:
    return {"mode": "windows", "stride": stride, "window": w, "fps": None}


FAMILIES = [
    Family("timm-cnn", "convnext_tiny", _timm("convnext_tiny"), snippets(8), 240),
    Family(
        "timm-clip",
        "vit_base_patch16_clip_224.openai",
        _timm("vit_base_patch16_clip_224.openai"),
        snippets(8),
        64,
    ),  # fmt: skip
    Family("i3d", "i3d rgb (pytorch-i3d)", _i3d, windows(16, 16), 64),
    Family("torchvision", "r2plus1d_18", _torchvision("r2plus1d_18"), windows(16, 16), 64),
]


def rows_in_memory(video: Path, run: Path, grid: dict) -> list[dict]:
    """Every batch of rows of ``video`` as the extraction's stream hands them over."""
    from vidfeat.extract.network import RGBNetwork
    from vidfeat.extract.rows import DEFAULT_ROWS, _window, row_grid
    from vidfeat.rowclips import RGBRows, RowStream
    from vidfeat.videolist import load_list

    base = RGBNetwork(run, segments=1, batch_size=1, device="cpu", window=_window(grid))
    n = base.frames()
    g = row_grid(frames=n, **grid)
    stream = RowStream(load_list(video.with_suffix(".csv")), g, RGBRows(base.clip_spec(1, n)),
                       DEFAULT_ROWS)  # fmt: skip
    return [it for it in stream if "start" in it]


def bare(model: Any, prec: Any, device: Any, items: list[dict], pre: Any) -> float:
    """Seconds of the forward (normalisation on the device included) on the rows in memory."""
    from vidfeat.clips import normalize_on_device
    from vidfeat.extract.network import has_classifier

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad(), prec.autocast(device):
        for it in items:
            x = normalize_on_device(it["x"].to(device, non_blocking=True), pre.mean, pre.std)
            f = model.forward_features(x)
            if has_classifier(model):
                torch.softmax(model.forward_head(f).float(), 1)
            f.float().cpu()
    sync()
    return time.perf_counter() - t0


def end_to_end(video: Path, run: Path, grid: dict, store: Path, device: str) -> None:
    """``vidfeat extract rgb --grid ...`` as the command runs it, in this process."""
    from vidfeat.extract import RunOptions
    from vidfeat.extract.rows import extract_rgb_rows
    from vidfeat.videolist import load_list

    opts = RunOptions(workers=1, progress=False)
    rep = extract_rgb_rows(load_list(video.with_suffix(".csv")), store, set_name="rgb",
                           checkpoint=run, grid=grid, batch_size=None, device=device,
                           precision="auto", crop_size=None, opts=opts,
                           echo=lambda m: None)  # fmt: skip
    assert rep.done == 1 and not rep.failed, rep.summary()


def measure(fam: Family, tmp: Path, rounds: int) -> dict:
    from vidfeat import load_model
    from vidfeat.device import resolve_device
    from vidfeat.precision import resolve_precision

    video = long_video(CACHE / f"backbones-{int(fam.seconds)}s.mp4", fam.seconds / 60)
    video.with_suffix(".csv").write_text(f"path\n{video}\n")
    run = fam.build(tmp, tmp / f"run-{fam.name}")
    device = resolve_device("auto")
    model = load_model(run, device)
    prec = resolve_precision("auto", device, model)
    model = prec.prepare(model).eval()
    items = rows_in_memory(video, run, fam.grid)
    rows = sum(len(it["x"]) for it in items)
    bare(model, prec, device, items[:1], model.preprocessing)  # warm-up
    e2e, bar = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        end_to_end(video, run, fam.grid, tmp / f"store-{fam.name}-{r}", "auto")
        e2e.append(rows / (time.perf_counter() - t0))
        bar.append(rows / bare(model, prec, device, items, model.preprocessing))
    ratio = statistics.median(e2e) / statistics.median(bar)
    out = {"model": fam.model, "device": str(device), "precision": prec.name,
           "memory_format": prec.memory_format, "rows": rows,
           "e2e_rows_s": statistics.median(e2e), "bare_rows_s": statistics.median(bar),
           "ratio": ratio}  # fmt: skip
    print(f"  {fam.name:12s} {fam.model:34s} {device.type} {prec.name:4s} "
          f"{prec.memory_format:16s} {rows:4d} rows: end to "
          f"end {out['e2e_rows_s']:6.2f} rows/s, bare {out['bare_rows_s']:6.2f} rows/s  "
          f"x{ratio:.2f} (target >= {TARGET})", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one round")
    ap.add_argument("--families", default=",".join(f.name for f in FAMILIES))
    ap.add_argument("--json")
    args = ap.parse_args()
    wanted = args.families.split(",")
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"rows/s end to end against the bare forward on the same rows; "
          f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for fam in FAMILIES:
            if fam.name in wanted:
                res[fam.name] = measure(fam, Path(d), 1 if args.quick else 3)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
