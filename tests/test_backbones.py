"""The backbones of issue 22 end to end on real H.264 clips: every family imported from its own
weight format (random weights, the published names and shapes) extracts features on the
segments, snippets and windows grids through the command line, and a stored row equals the
network's own forward on the same decoded frames (the row's frames, their order and their
preprocessing are the run's). Two-stream I3D on vidfeat's TV-L1, exported for ActionFormer.

The parity of each network with its library or source is in test_i3d.py, test_tvvideo.py and
test_timm_any.py; here, what a user of the command line gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import moving_frames
from vidfeat import load_model
from vidfeat.cli import main
from vidfeat.clips import library_transform, normalize_on_device
from vidfeat.decode import read_frames
from vidfeat.store import FeatureStore
from vidfeat.synth import write_mp4

# the list's labels are none of the networks' classes (issue 22, item 7)
LABELS = ("walk", "run")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two labelled H.264 clips, 40 and 33 frames of 128x160 at 12 fps, and their list."""
    d = tmp_path_factory.mktemp("backbones")
    rows = ["path,label"]
    for i, (n, label) in enumerate(zip((40, 33), LABELS, strict=True)):
        p = d / f"clip{i}.mp4"
        write_mp4(p, moving_frames(n, h=128, w=160, seed=i), 12, None, crf=16)
        rows.append(f"{p},{label}")
    (d / "list.csv").write_text("\n".join(rows) + "\n")
    return d / "list.csv"


def run_cli(*args: str) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def i3d_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """pytorch-i3d's rgb_imagenet.pt / flow_imagenet.pt format (its parameter names are
    vidfeat's), random weights, imported with `vidfeat models import i3d`."""
    from vidfeat.nets.clipnet import create_clip_net

    d = tmp_path_factory.mktemp("i3d")
    out = {}
    for mod, chans in (("rgb", 3), ("flow", 2)):
        torch.manual_seed(chans)
        net = create_clip_net(
            "i3d", "inception_i3d", 400, in_chans_per_segment=chans * 16, frames=16
        )
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        src = d / f"{mod}_imagenet.pt"
        torch.save(net.state_dict(), src)
        out[mod] = d / f"run-{mod}"
        run_cli("models", "import", "i3d", src, "--modality", mod, "--out", out[mod])
    return out


def stored(store: Path, name: str) -> tuple[dict, dict]:
    fs = FeatureStore(store).open_set(name)
    return fs.config, {vid: fs.get(vid) for vid in fs.ids()} | {
        f"{vid}/frame_indices": fs.get_extra(vid, "frame_indices") for vid in fs.ids()
    }


def own_forward(run: Path, video: Path, frames: np.ndarray, crop: int | None = None) -> np.ndarray:
    """The network's feature of one row, computed here, alone, from the decoded frames: the
    run's own resize and crop (test_library_resize.py checks them against the libraries'),
    stacked frame-major ``[1, 1, 3·W, S, S]``, float32."""
    from vidfeat.clips import _crop_box, resize_args
    from vidfeat.decode import probe
    from vidfeat.extract.network import RGBNetwork

    spec = RGBNetwork(run, segments=1, batch_size=1, device="cpu", crop_size=crop).clip_spec(
        1, len(frames)
    )
    fr = read_frames(video, frames, **resize_args(spec, probe(video)))
    lib = library_transform(spec)
    if lib is not None:
        fr = np.stack([lib(f) for f in fr])
    else:
        y0, x0 = _crop_box(fr.shape[1], fr.shape[2], spec.size, None)
        fr = fr[:, y0 : y0 + spec.size, x0 : x0 + spec.size]
    x = torch.from_numpy(np.ascontiguousarray(fr)).permute(0, 3, 1, 2)
    x = normalize_on_device(x.reshape(1, 1, -1, *fr.shape[1:3]), spec.mean, spec.std)
    model = load_model(run)
    with torch.no_grad():
        return model.forward_features(x)[0, 0].numpy()


def close(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> None:
    scale = max(float(np.abs(b).max()), 1e-6)
    assert float(np.abs(a - b).max()) <= tol * scale, float(np.abs(a - b).max()) / scale


def test_i3d_rgb_on_every_grid(clips: Path, i3d_runs: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    common = (
        "--videos",
        clips,
        "--store",
        store,
        "--checkpoint",
        i3d_runs["rgb"],
        "--crop-size",
        "112",
        "--precision",
        "fp32",
    )
    run_cli("extract", "rgb", *common, "-T", "2", "--window", "12", "--name", "seg")
    run_cli("extract", "rgb", *common, "--grid", "snippets", "--stride", "16", "--name", "snip")
    run_cli(
        "extract",
        "rgb",
        *common,
        "--grid",
        "windows",
        "--window",
        "16",
        "--stride",
        "8",
        "--name",
        "win",
    )
    conf, seg = stored(store, "seg")
    assert conf["N"] == 12 and conf["T"] == 2 and seg["clip0"][0].shape == (2, 1024)
    conf, snip = stored(store, "snip")
    # a snippet holds the run's clip length (64: video_features' default), centred every 16
    assert conf["N"] == 64 and snip["clip0"][0].shape == (2, 1024)  # centres 8 and 24
    conf, win = stored(store, "win")
    assert conf["N"] == 16 and conf["grid"]["window"] == 16
    assert conf["memory_format_info"] == "channels_last_3d"  # the 3D CNNs' faster format
    assert win["clip0"][0].shape == (4, 1024) and win["clip1"][0].shape == (3, 1024)
    # the list's labels are the set's; the scores are over the network's 400 classes
    assert conf["classes"] == sorted(LABELS) and len(conf["score_classes"]) == 400
    assert win["clip1"][1]["label"] == "run"
    # a stored window is the network's feature of that window's decoded frames
    idx = win["clip0/frame_indices"][2]
    np.testing.assert_array_equal(idx, np.arange(16, 32))
    video = clips.parent / "clip0.mp4"
    close(win["clip0"][0][2], own_forward(i3d_runs["rgb"], video, idx, crop=112))


def test_i3d_window_refusals(clips: Path, i3d_runs: dict, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main,
        [
            "extract",
            "rgb",
            "--videos",
            str(clips),
            "--store",
            str(tmp_path / "s"),
            "--checkpoint",
            str(i3d_runs["rgb"]),
            "--grid",
            "windows",
            "--window",
            "4",
            "--stride",
            "4",
        ],
    )
    assert res.exit_code != 0 and "--window 4" in res.output and "at least" in res.output
    res = CliRunner().invoke(
        main,
        [
            "extract",
            "flow",
            "--method",
            "farneback",
            "--videos",
            str(clips),
            "--store",
            str(tmp_path / "s"),
            "--checkpoint",
            str(i3d_runs["flow"]),
            "--grid",
            "windows",
            "--window",
            "16",
            "--stride",
            "16",
            "--bound",
            "15",
        ],
    )
    assert res.exit_code != 0 and "pass --bound 20" in res.output
    # fields stored with another bound are refused too, not fed at another scale
    store = str(tmp_path / "s2")
    common = ["--method", "farneback", "--videos", str(clips), "--store", store, "-T", "1"]
    run_cli("extract", "flow", *common, "-N", "12", "--bound", "15", "--short-side", "112")
    net = ["--checkpoint", str(i3d_runs["flow"]), "--window", "12", "--crop-size", "112"]
    res = CliRunner().invoke(main, ["extract", "flow", *common, *net])
    assert res.exit_code != 0 and "holds fields clipped to ±15 px" in res.output, res.output


def test_two_stream_i3d_on_tvl1_for_actionformer(clips: Path, i3d_runs: dict, tmp_path: Path):
    """The THUMOS recipe at test size: RGB and TV-L1 flow I3D on the same windows, exported
    as ActionFormer's (L, 2048) features."""
    store = tmp_path / "store"
    one = clips.read_text().splitlines()[:2]  # one clip: TV-L1 on two cores is the slow part
    clips = tmp_path / "one.csv"
    clips.write_text("\n".join(one) + "\n")
    grid = (
        "--grid",
        "windows",
        "--window",
        "16",
        "--stride",
        "16",
        "--crop-size",
        "112",
        "--precision",
        "fp32",
    )
    run_cli(
        "extract",
        "rgb",
        "--videos",
        clips,
        "--store",
        store,
        "--checkpoint",
        i3d_runs["rgb"],
        *grid,
        "--name",
        "i3d-rgb",
    )
    run_cli(
        "extract",
        "flow",
        "--method",
        "tvl1",
        "--short-side",
        "128",
        "--videos",
        clips,
        "--store",
        store,
        "--checkpoint",
        i3d_runs["flow"],
        *grid,
        "--name",
        "i3d-flow",
    )
    conf, flow = stored(store, "i3d-flow")
    assert conf["N"] == 16 and flow["clip0"][0].shape == (2, 1024)
    out = tmp_path / "af"
    run_cli(
        "store",
        "export",
        store,
        "--set",
        "i3d-rgb,i3d-flow",
        "--layout",
        "actionformer",
        "--out",
        out,
    )
    feats = np.load(out / "clip0.npy")
    _, rgb = stored(store, "i3d-rgb")
    assert feats.shape == (2, 2048) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats[:, :1024], rgb["clip0"][0])
    np.testing.assert_array_equal(feats[:, 1024:], flow["clip0"][0])
    import yaml

    keys = yaml.safe_load((out / "actionformer.yaml").read_text())["dataset"]
    assert (keys["feat_stride"], keys["num_frames"], keys["input_dim"]) == (16, 16, 2048)


@pytest.fixture(scope="module")
def timm_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ViT classifier (bicubic, Pillow-resized) and a CLIP image tower (TinyCLIP's ViT-XS/16,
    a 512-d embedding, no classes; test_timm_any.py has ViT-B/16), from timm state dicts with
    random weights."""
    import timm

    d = tmp_path_factory.mktemp("timm")
    out = {}
    for key, name in (
        ("vit", "vit_tiny_patch16_224"),
        ("clip", "vit_xsmall_patch16_clip_224.tinyclip_yfcc15m"),
    ):
        src = d / f"{key}.pth"
        torch.manual_seed(1)
        torch.save(timm.create_model(name, pretrained=False).state_dict(), src)
        out[key] = d / f"run-{key}"
        run_cli("models", "import", "timm", name, "--weights", src, "--out", out[key])
    return out


def test_timm_per_frame_on_every_grid(clips: Path, timm_runs: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    common = ("--videos", clips, "--store", store, "--checkpoint", timm_runs["vit"], "--precision",
              "fp32")  # fmt: skip
    run_cli("extract", "rgb", *common, "-T", "3", "--name", "seg")
    run_cli("extract", "rgb", *common, "--grid", "snippets", "--stride", "8", "--name", "snip")
    run_cli("extract", "rgb", *common, "--grid", "windows", "--window", "1", "--stride", "10",
            "--name", "win")  # fmt: skip
    for name, rows in (("seg", 3), ("snip", 5), ("win", 4)):
        conf, got = stored(store, name)
        assert conf["N"] == 1 and got["clip0"][0].shape == (rows, 192), name
        if name != "seg":  # a row set stores its rows' frames (the segments: in the attrs)
            assert got["clip0/frame_indices"].shape[-1] == 1
    conf, snip = stored(store, "snip")
    assert conf["preprocessing_info"]["resampler"] == "pil"
    assert conf["preprocessing_info"]["interpolation"] == "bicubic"
    # a stored frame is the ViT's feature of that frame, resized as timm's eval transform does
    idx = snip["clip0/frame_indices"][1]
    close(snip["clip0"][0][1], own_forward(timm_runs["vit"], clips.parent / "clip0.mp4", idx))


def test_clip_embeddings_without_scores(clips: Path, timm_runs: dict, tmp_path: Path) -> None:
    """CLIP's image embedding per frame (512-d): no classifier, so no scores and no
    score_classes; the list's labels are still the set's."""
    store = tmp_path / "store"
    run_cli("extract", "rgb", "--videos", clips, "--store", store, "--checkpoint",
            timm_runs["clip"], "--grid", "snippets", "--stride", "16", "--name", "clip",
            "--precision", "fp32")  # fmt: skip
    conf, got = stored(store, "clip")
    assert got["clip0"][0].shape == (2, 512) and not conf.get("score_classes")
    assert conf["classes"] == sorted(LABELS)
    fs = FeatureStore(store).open_set("clip")
    assert fs.get_extra("clip0", "scores") is None
    idx = got["clip0/frame_indices"][0]
    close(got["clip0"][0][0], own_forward(timm_runs["clip"], clips.parent / "clip0.mp4", idx))


@pytest.fixture(scope="module")
def r3d_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's r3d_18 from its own weights file's format (random weights)."""
    import torchvision

    d = tmp_path_factory.mktemp("tv")
    torch.manual_seed(2)
    src = d / "r3d_18-b3b3357e.pth"
    torch.save(torchvision.models.get_model("r3d_18", weights=None).state_dict(), src)
    run_cli("models", "import", "torchvision", "r3d_18", "--weights", src, "--out", d / "run")
    return d / "run"


def test_torchvision_video_on_every_grid(clips: Path, r3d_run: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    common = ("--videos", clips, "--store", store, "--checkpoint", r3d_run, "--precision", "fp32")
    run_cli("extract", "rgb", *common, "-T", "2", "--window", "8", "--name", "seg")
    run_cli("extract", "rgb", *common, "--grid", "snippets", "--stride", "16", "--name", "snip")
    run_cli("extract", "rgb", *common, "--grid", "windows", "--window", "8", "--stride", "12",
            "--name", "win")  # fmt: skip
    conf, seg = stored(store, "seg")
    assert conf["N"] == 8 and seg["clip0"][0].shape == (2, 512)
    conf, snip = stored(store, "snip")
    assert conf["N"] == 16 and snip["clip0"][0].shape == (2, 512)  # the clip length: 16
    conf, win = stored(store, "win")
    assert (
        conf["N"] == 8 and win["clip0"][0].shape == (3, 512) and len(conf["score_classes"]) == 400
    )
    assert conf["memory_format_info"] == "channels_last_3d"
    pre = conf["preprocessing_info"]
    assert (pre["resize"], pre["resize_size"], pre["crop"]) == ("fixed", [128, 171], 112)
    assert (pre["resampler"], pre["antialias"]) == ("torch", False)
    idx = win["clip0/frame_indices"][1]
    np.testing.assert_array_equal(idx, np.arange(12, 20))
    close(win["clip0"][0][1], own_forward(r3d_run, clips.parent / "clip0.mp4", idx))
