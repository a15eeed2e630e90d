"""torchvision's video classifiers imported as ``tvvideo`` runs (vidfeat.nets.tvvideo,
vidfeat.models.import_torchvision): for each of the nine networks, on random weights saved
under torchvision's file name pattern, the run's features and logits equal torchvision's own
forward on the same clips, and its preprocessing is torchvision's transforms of the weights.
No download: every weights file is built here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from click.testing import CliRunner

import vidfeat
from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.models import import_torchvision
from vidfeat.models.import_torchvision import DOCUMENTED_CLIPS, _documented_clips, weights_entry
from vidfeat.nets.clipnet import create_clip_net
from vidfeat.nets.tvvideo import TV_VIDEO_MODELS, classifier_key

# (rows, frames, size) of each parity check: small legal inputs (the ResNets and Swin take any
# clip, Swin's windows padded; s3d needs 224 px and >= 14 frames; MViT exactly 16 x 224², its
# forward ~5 s on one core); two rows where cheap, to check the mean of the rows' logits
INPUTS = {
    "r3d_18": (2, 4, 64),
    "mc3_18": (2, 4, 64),
    "r2plus1d_18": (2, 4, 64),
    "s3d": (1, 14, 224),
    "mvit_v1_b": (1, 16, 224),
    "mvit_v2_s": (1, 16, 224),
    "swin3d_t": (2, 3, 112),
    "swin3d_s": (1, 3, 112),
    "swin3d_b": (1, 3, 112),
}
TABLE = "vidfeat's table of torchvision 0.29's weight docs"
SLOW = {"mvit_v1_b", "mvit_v2_s", "swin3d_b"}  # ~10 s each: MViT's forward, swin3d_b's 350 MB


def _randomised(name: str, num_classes: int = 400, seed: int = 0) -> torch.nn.Module:
    """torchvision's ``name`` with random weights and non-trivial normalisation statistics."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _reference(model: torch.nn.Module, name: str, clip: torch.Tensor):
    """torchvision's logits of ``clip`` and the input of its classifier (s3d: its mean over
    time and space, since the model takes that mean after its 1x1x1 convolution)."""
    seen = {}
    head = model.get_submodule(classifier_key(name).rsplit(".", 1)[0])
    hook = head.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    try:
        with torch.no_grad():
            logits = model(clip)
    finally:
        hook.remove()
    feat = seen["x"]
    feat = feat.mean(dim=(2, 3, 4)) if feat.dim() == 5 else feat
    return logits, feat


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max().item()
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4 * scale, (got - want).abs().max().item()


def _expected_preprocessing(name: str) -> dict:
    """What torchvision's transforms of the DEFAULT weights say, read from torchvision."""
    t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    resize = list(t.resize_size)
    out = dict(
        crop=t.crop_size[0],
        mean=list(t.mean),
        std=list(t.std),
        interpolation=t.interpolation.value,
        antialias=False,  # VideoClassification.forward hard-codes it
        resampler="torch",
    )
    if len(resize) == 2:
        out.update(resize="fixed", resize_size=resize)
    else:
        out.update(resize="short-side", short_side=resize[0], resize_size=None)
    return out


@pytest.fixture
def imported(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple]:
    """(name, torchvision model, run) for ``request.param``; the large files removed after."""
    name = request.param
    model = _randomised(name)
    src = tmp_path / f"{name}-0123abcd.pth"
    torch.save(model.state_dict(), src)
    import_torchvision(name, tmp_path / "run", weights=src)
    src.unlink()  # the run holds its own copy
    yield name, model, tmp_path / "run"
    (tmp_path / "run" / "best.pt").unlink()


@pytest.mark.parametrize(
    "imported",
    [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in TV_VIDEO_MODELS],
    indirect=True,
)
def test_parity_with_torchvision(imported: tuple) -> None:
    """Rows of W frames: each row's feature and logits are torchvision's of that clip, the
    clip logits their mean; the run records torchvision's preprocessing and clip length."""
    name, model, run = imported
    net = vidfeat.load_model(run)
    n, frames, size = INPUTS[name]
    torch.manual_seed(1)
    clips = torch.randn(n, 3, frames, size, size)
    rows = clips.transpose(1, 2).reshape(1, n, 3 * frames, size, size)  # frame-major
    with torch.no_grad():
        feats = net.forward_features(rows)
        logits = net.forward_head(feats)  # what net(rows) returns
    ref_logits, ref_feats = _reference(model, name, clips)
    _close(feats[0], ref_feats)
    _close(net.classify(feats[0]), ref_logits)
    _close(logits[0], ref_logits.mean(0))
    assert net.feature_dim == feats.shape[-1]
    # the run: torchvision's preprocessing, its clip length, its categories
    pre = net.preprocessing.as_dict()
    for key, want in _expected_preprocessing(name).items():
        assert pre[key] == pytest.approx(want), key
    entry = torchvision.models.get_model_weights(name).DEFAULT
    clip_len = int(entry.meta["_docs"].split("clip_len=")[1].split("`")[0])
    assert pre["frames"] == net.frames == clip_len
    assert net.classes == list(entry.meta["categories"])
    meta = json.loads((run / "model.json").read_text())
    assert meta["source"]["torchvision_weights"] == f"{type(entry).__name__}.{entry.name}"
    assert meta["source"]["weights_chosen_by"].startswith(
        "DEFAULT" if name == "swin3d_b" else "file name before the hash"
    )  # swin3d_b's files are swin3d_b_1k-*, swin3d_b_22k-*
    assert create_clip_net(**net.config).config == net.config


def test_clip_length_and_other_windows() -> None:
    """The CNNs and Swin take other windows than their clip length; MViT only its own (16);
    s3d at least 14 (torchvision's min_temporal_size)."""
    r3d = create_clip_net("tvvideo", "r3d_18", 3, in_chans_per_segment=48, frames=16)
    assert r3d.variable_frames and r3d.min_frames == 1
    with torch.no_grad():
        assert r3d.forward_features(torch.randn(1, 1, 3 * 4, 32, 32)).shape == (1, 1, 512)
    s3d = create_clip_net("tvvideo", "s3d", 3, in_chans_per_segment=3 * 128, frames=128)
    assert s3d.variable_frames and s3d.min_frames == 14
    with pytest.raises(ValueError, match=">= 14 frames"):
        s3d.rows_as_clips(torch.zeros(1, 1, 3 * 8, 224, 224))
    with pytest.raises(ConfigError, match="exactly 16 frames"):
        create_clip_net("tvvideo", "mvit_v2_s", 3, in_chans_per_segment=24, frames=8)
    mvit = create_clip_net("tvvideo", "mvit_v1_b", 3, in_chans_per_segment=48, frames=16)
    assert not mvit.variable_frames
    with pytest.raises(ValueError, match="takes 16 frames"):
        mvit.rows_as_clips(torch.zeros(1, 1, 3 * 8, 224, 224))
    with pytest.raises(ValueError, match="exactly 224x224"):
        mvit.clip_features(torch.zeros(1, 3, 16, 112, 112))
    with pytest.raises(ConfigError, match="RGB"):
        create_clip_net("tvvideo", "r3d_18", 3, in_chans_per_segment=32, frames=16)


def test_weights_entry_follows_the_file_name() -> None:
    """swin3d_b has two entries: the file name picks one; both have the same transforms."""
    enum = torchvision.models.get_model_weights("swin3d_b")
    k22, k1 = enum.KINETICS400_IMAGENET22K_V1, enum.KINETICS400_V1
    assert weights_entry("swin3d_b", "swin3d_b_22k-7c6ae6fa.pth")[0] is k22
    assert weights_entry("swin3d_b", "swin3d_b_22k-00000000.pth")[0] is k22
    assert weights_entry("swin3d_b", "swin3d_b_1k-24f7c7c6.pth")[0] is k1
    entry, how = weights_entry("swin3d_b", "mine.pth")
    assert entry is enum.DEFAULT and how.startswith("DEFAULT")
    assert repr(k22.transforms()) == repr(k1.transforms())


def test_clip_length_from_the_weights_docs() -> None:
    """The clip length is parsed from each weight's meta["_docs"]; the documented table (the
    same figures) only serves a torchvision whose wording no longer parses."""
    for name in TV_VIDEO_MODELS:
        entry = torchvision.models.get_model_weights(name).DEFAULT
        clips, where = _documented_clips(name, entry)
        assert clips == DOCUMENTED_CLIPS[name] and where.endswith("meta['_docs']")
    other = SimpleNamespace(meta={"_docs": "reworded"}, name="KINETICS400_V1")
    assert _documented_clips("s3d", other) == (DOCUMENTED_CLIPS["s3d"], TABLE)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mc3_18 (the smallest file, 47 MB) saved under torchvision's own file name, imported;
    a 5-class mc3_18 and an r3d_18 state dict for the refusals."""
    d = tmp_path_factory.mktemp("tvsmall")
    files = {
        "mc3": d / "mc3_18-a90a0ba3.pth",
        "mc3_5": d / "mc3_18-5classes.pth",
        "r3d": d / "r3d_18-b3b3357e.pth",
    }
    torch.save(_randomised("mc3_18").state_dict(), files["mc3"])
    torch.save(_randomised("mc3_18", num_classes=5).state_dict(), files["mc3_5"])
    torch.save(_randomised("r3d_18").state_dict(), files["r3d"])
    import_torchvision("mc3_18", d / "run", weights=files["mc3"])
    (d / "five.txt").write_text("a\nb\nc\nd\ne\n")
    return {**files, "run": d / "run", "five": d / "five.txt", "dir": d}


def test_file_name_entry_and_models_info(small: dict[str, Path]) -> None:
    meta = json.loads((small["run"] / "model.json").read_text())
    assert meta["source"]["torchvision_weights"] == "MC3_18_Weights.KINETICS400_V1"
    assert meta["source"]["weights_chosen_by"].startswith("file name mc3_18-a90a0ba3.pth")
    assert meta["importer"] == "torchvision" and meta["versions"]["torchvision"]
    res = CliRunner().invoke(main, ["models", "info", str(small["run"])])
    assert res.exit_code == 0, res.output
    assert "tvvideo" in res.output and "mc3_18" in res.output
    assert "128x171" in res.output
    assert "N=16" in res.output and "no antialias" in res.output


def test_cli_import_and_classes(small: dict[str, Path]) -> None:
    """--classes names the classifier's outputs; without it a non-Kinetics head is refused."""
    out = small["dir"] / "cli5"
    args = ["models", "import", "torchvision", "mc3_18", "--weights", str(small["mc3_5"])]
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code != 0 and "pass --classes FILE" in res.output
    res = CliRunner().invoke(main, [*args, "--classes", str(small["five"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert vidfeat.load_model(out).classes == ["a", "b", "c", "d", "e"]
    with pytest.raises(ConfigError, match="lists 5 classes"):
        import_torchvision(
            "mc3_18", small["dir"] / "bad", weights=small["mc3"], classes=small["five"]
        )


def test_counters_may_be_absent(small: dict[str, Path]) -> None:
    """A state dict without BatchNorm's num_batches_tracked (older saves) is accepted."""
    state = _randomised("mc3_18").state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    src = small["dir"] / "mc3_18-nocount.pth"
    torch.save(state, src)
    rep = import_torchvision("mc3_18", small["dir"] / "nocount", weights=src)
    assert rep.num_classes == 400 and vidfeat.load_model(small["dir"] / "nocount").frames == 16


def test_refusals(small: dict[str, Path]) -> None:
    """Another model's state dict (names listed), an unknown name (the supported ones
    listed), no --weights."""
    d = small["dir"]
    with pytest.raises(ConfigError) as exc:
        import_torchvision("mc3_18", d / "x1", weights=small["r3d"])
    msg = str(exc.value)
    assert "not a state dict of torchvision's mc3_18" in msg and "mis-shaped" in msg
    assert "layer2.0.conv1.0.weight" in msg  # 3D in r3d_18, 2D in mc3_18
    with pytest.raises(ConfigError) as exc:
        import_torchvision("s3d", d / "x2", weights=small["r3d"])
    msg = str(exc.value)
    assert "387 missing (classifier.1.bias" in msg and "122 unexpected (fc.bias" in msg
    assert "it holds torchvision's r3d_18" in msg
    with pytest.raises(ConfigError) as exc:
        import_torchvision("resnet50", d / "x3", weights=small["r3d"])
    assert all(n in str(exc.value) for n in TV_VIDEO_MODELS)
    with pytest.raises(ConfigError, match="pass --weights FILE.*r3d_18-b3b3357e.pth"):
        import_torchvision("r3d_18", d / "x4", weights=None)
    res = CliRunner().invoke(
        main, ["models", "import", "torchvision", "r3d_18", "--out", str(d / "x5")]
    )
    assert res.exit_code != 0 and "--weights" in res.output
    assert not any((d / f"x{i}").exists() for i in range(1, 6))


def test_windows_and_crops_are_checked_before_any_work() -> None:
    """What --window and --crop-size a run's network takes is known from its name, before a
    set is opened: MViT exactly 16 frames of 224 px, S3D at least 14 frames and 224 px."""
    from types import SimpleNamespace

    from vidfeat.models.build import row_frames
    from vidfeat.nets.tvvideo import TorchvisionVideoNet

    def cfg(name: str, frames: int) -> SimpleNamespace:
        return SimpleNamespace(modality="rgb", arch="tvvideo", backbone=name, frames=frames)

    assert row_frames(cfg("r3d_18", 16), 4, "run") == 4
    assert row_frames(cfg("mvit_v2_s", 16), 16, "run") == 16
    with pytest.raises(ConfigError, match="--window 8: .* exactly 16"):
        row_frames(cfg("mvit_v1_b", 16), 8, "run")
    with pytest.raises(ConfigError, match="--window 4: .* at least 14"):
        row_frames(cfg("s3d", 128), 4, "run")
    TorchvisionVideoNet.check_crop("r3d_18", 64)
    with pytest.raises(ConfigError, match="exactly 224 px, not 192"):
        TorchvisionVideoNet.check_crop("mvit_v2_s", 192)
    with pytest.raises(ConfigError, match=">= 224 px, not 112"):
        TorchvisionVideoNet.check_crop("s3d", 112)
