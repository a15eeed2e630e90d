"""Any timm image model as a run of per-frame features (vidfeat.nets.framenet, the ``frame``
architecture, and ``vidfeat models import timm``): parity with timm's own forward on random
weights, CLIP's image embedding against open_clip's ``encode_image``, the recorded preprocessing
against timm's ``resolve_data_config`` / ``create_transform``, and the refusals.

Random weights only (nothing is downloaded); small models and inputs, except one CLIP ViT-B/16
(built a few times)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vidfeat import load_model
from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.models import import_timm, preprocessing_of
from vidfeat.models.importers import _timm_preprocessing

T = 2
SMALL = {  # model → input side (ViTs take their fixed 224)
    "vit_tiny_patch16_224": 224,
    "convnext_atto": 64,
    "efficientnet_b0": 64,
    "regnetx_002": 64,
}
CLIP_NAME = "vit_base_patch16_clip_224.openai"


def cli(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal to float32 rounding: within 1e-4 of the largest value."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return bool((got - want).abs().max() <= 1e-4 * want.abs().max().clamp_min(1e-6))


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every float tensor moved off its init (norm scales, zero-init heads, BN statistics)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


def frames(side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, T, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module, dict]]:
    """Each small model: random weights saved as a timm state dict and imported."""
    root = tmp_path_factory.mktemp("timm_any")
    runs = {}
    for i, name in enumerate(SMALL):
        model = randomised(timm.create_model(name, pretrained=False), i)
        path = root / f"{name}.pth"
        torch.save(model.state_dict(), path)
        rep = import_timm(name, root / name, weights=path)
        assert rep.arch == "frame" and rep.num_classes == 1000, rep
        runs[name] = (root / name, model, model.state_dict())
    return runs


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(SMALL))
def test_features_and_logits_are_timms(small_runs, name: str) -> None:
    run, full, state = small_runs[name]
    model = load_model(run)
    assert model.config["arch"] == "frame" and model.num_classes == 1000
    assert all(k.startswith("net.") for k in model.state_dict())
    assert model.channels_last == ("vit" not in name)
    bare = timm.create_model(name, pretrained=False, num_classes=0).eval()
    missing, unexpected = bare.load_state_dict(state, strict=False)
    head = full.pretrained_cfg["classifier"]
    assert not missing and all(k.startswith(f"{head}.") for k in unexpected), unexpected
    x = frames(SMALL[name])
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        want_feats = bare(x[0])  # timm's num_classes=0 model: the pooled pre-logits feature
        want_logits = full(x[0])
    assert feats.shape == (1, T, model.feature_dim)
    assert close(feats[0], want_feats)
    assert close(logits[0], want_logits.mean(0))  # the mean over T of the frames' logits
    assert close(model.forward_head(feats)[0], want_logits.mean(0))
    assert model.classes[0] == "tench" and len(model.classes) == 1000


@pytest.mark.parametrize("name", [*SMALL, "resnet18"])
def test_recorded_preprocessing_is_timms_eval_transform(small_runs, name, tmp_path) -> None:
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms

    if name == "resnet18":  # a ResNet stays a TSN run, with timm's own preprocessing now
        model = timm.create_model(name, pretrained=False)
        torch.save(model.state_dict(), tmp_path / "r18.pth")
        assert import_timm(name, tmp_path / "r18", weights=tmp_path / "r18.pth").arch == "tsn"
        run = tmp_path / "r18"
    else:
        run, model, _ = small_runs[name]
    pre = preprocessing_of(run)
    dc = resolve_data_config(model=model)
    resize, crop = create_transform(**dc, is_training=False).transforms[:2]
    assert isinstance(resize, transforms.Resize) and isinstance(crop, transforms.CenterCrop)
    assert dc["crop_mode"] == "center" and pre.resize == "short-side"
    assert pre.short_side == resize.size == math.floor(dc["input_size"][-1] / dc["crop_pct"])
    assert [pre.crop, pre.crop] == list(crop.size) == list(dc["input_size"][1:])
    assert pre.interpolation == dc["interpolation"] == resize.interpolation.value
    assert pre.mean == tuple(dc["mean"]) and pre.std == tuple(dc["std"])
    assert pre.resampler == "pil" and pre.antialias and pre.frames == 1


def test_preprocessing_squash_and_what_vidfeat_cannot_do() -> None:
    def pre(**cfg):
        base = dict(input_size=(3, 224, 224), crop_pct=0.9, interpolation="bicubic")
        return _timm_preprocessing("m", SimpleNamespace(pretrained_cfg={**base, **cfg}))

    squash = pre(crop_mode="squash", crop_pct=0.95)
    assert squash.resize == "fixed" and squash.resize_size == (235, 235) and squash.crop == 224
    assert pre(crop_pct=1.0).short_side == 224
    for cfg, why in [
        (dict(input_size=(3, 256, 192)), "256x192"),
        (dict(crop_mode="border"), "letterboxes"),
        (dict(crop_pct=1.15), "pads"),
        (dict(interpolation="nearest"), "nearest"),
    ]:
        with pytest.raises(ConfigError, match=why):
            pre(**cfg)


# --------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """timm's CLIP ViT-B/16 tower with random weights, imported from its timm state dict."""
    root = tmp_path_factory.mktemp("clip")
    model = randomised(timm.create_model(CLIP_NAME, pretrained=False), 7)
    assert model.num_classes == 512  # the head is CLIP's projection
    path = root / "clip.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    rep = import_timm(CLIP_NAME, root / "run", weights=path)
    assert rep.arch == "frame" and rep.num_classes == 0
    assert any("QuickGELU" in n for n in rep.notes)  # timm's cfg note, passed on
    return root / "run", model


def test_clip_feature_is_the_projected_embedding(clip_run) -> None:
    run, ref = clip_run
    model = load_model(run)
    assert model.num_classes == 0 and model.feature_dim == 512 and model.classes == []
    assert (run / "classes.txt").read_text() == ""
    assert model.config["embed_dim"] == 512 and model.config["normalize"] is False
    x = frames(224, 3)
    with torch.no_grad():
        feats = model.forward_features(x)
        want = ref(x[0])
    assert close(feats[0], want)
    with pytest.raises(ConfigError, match="no classifier"):
        model.forward_head(feats)
    pre = model.preprocessing
    assert pre.mean == timm.data.OPENAI_CLIP_MEAN and pre.interpolation == "bicubic"
    code, text = cli("models", "info", run)
    assert code == 0, text
    assert "frame (embed_dim=512, normalize=False)" in text and "classes:        0" in text


def test_clip_refusals(clip_run, tmp_path) -> None:
    src = clip_run[0].parent / "clip.safetensors"
    with pytest.raises(ConfigError, match="--normalize: timm 'efficientnet_b0'"):
        model = timm.create_model("efficientnet_b0", pretrained=False)
        torch.save(model.state_dict(), tmp_path / "e.pth")
        import_timm("efficientnet_b0", tmp_path / "e", weights=tmp_path / "e.pth", normalize=True)
    (tmp_path / "c.txt").write_text("a\nb\n")
    with pytest.raises(ConfigError, match="holds no classifier"):
        import_timm(CLIP_NAME, tmp_path / "c", weights=src, classes=tmp_path / "c.txt")
    assert not (tmp_path / "c").exists() and not (tmp_path / "e").exists()
    with warnings.catch_warnings():  # torch.jit.save is deprecated
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "ViT-B-16.pt")
    with pytest.raises(ConfigError, match="OpenAI's own CLIP .pt files are TorchScript"):
        import_timm(CLIP_NAME, tmp_path / "j", weights=tmp_path / "ViT-B-16.pt")


# --------------------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def open_clip_model(tmp_path_factory):
    """open_clip's ViT-B-16 with random weights, its visual tower saved in open_clip's names."""
    import open_clip  # a test dependency (pyproject.toml: the test extra)

    torch.manual_seed(11)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    randomised(model.visual, 11)
    path = tmp_path_factory.mktemp("open_clip") / "open_clip_visual.pth"
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("visual.")}, path)
    return model.eval(), path


def test_open_clip_checkpoint_gives_encode_image(open_clip_model, tmp_path) -> None:
    oc, path = open_clip_model
    code, text = cli("models", "import", "timm", CLIP_NAME, "--weights", path, "--normalize",
                     "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, text
    assert "0 classes" in text and "note: natively QuickGELU" in text
    model = load_model(tmp_path / "run")
    assert model.config["normalize"] is True
    x = frames(224, 5)
    with torch.no_grad():
        want = oc.encode_image(x[0])
        got = model.forward_features(x)[0]
        raw = model.net(x[0])  # the embedding before normalisation
    assert close(raw, want)
    assert close(got, F.normalize(want, dim=-1))
    with pytest.raises(ConfigError, match="CLIP visual tower of another model"):
        import_timm("vit_base_patch32_clip_224.openai", tmp_path / "b32", weights=path)
    # the untagged name is timm's ImageNet fine-tune: a CLIP file is not its classifier
    with pytest.raises(
        ConfigError, match=r"fine-tuned classifier .* vit_base_patch16_clip_224\.openai"
    ):
        import_timm("vit_base_patch16_clip_224", tmp_path / "plain", weights=path)
    assert not (tmp_path / "plain").exists()


# --------------------------------------------------------------------------- refusals


def test_refuses_unknown_names_and_other_models_weights(small_runs, tmp_path) -> None:
    with pytest.raises(ConfigError, match="'no_such_net' is not a timm model"):
        import_timm("no_such_net", tmp_path / "x")
    _, model, _ = small_runs["efficientnet_b0"]
    torch.save(model.state_dict(), tmp_path / "b0.pth")
    with pytest.raises(
        ConfigError, match=r"not a state dict of timm 'regnetx_002': missing \['s1\.b1"
    ):
        import_timm("regnetx_002", tmp_path / "x", weights=tmp_path / "b0.pth")
    # a classifier of any width, but on the model's own features and whole
    state = dict(model.state_dict())
    state["classifier.weight"] = torch.zeros(7, 100)
    state["classifier.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match=r"classifier.weight is \(7, 100\)"):
        import_timm("efficientnet_b0", tmp_path / "x", weights=tmp_path / "wide.pth")
    del state["classifier.bias"]
    state["classifier.weight"] = torch.zeros(7, 1280)
    torch.save(state, tmp_path / "nobias.pth")
    with pytest.raises(ConfigError, match="no classifier.bias"):
        import_timm("efficientnet_b0", tmp_path / "x", weights=tmp_path / "nobias.pth")
    assert not (tmp_path / "x").exists()


def test_stnet_still_refuses_what_it_cannot_split() -> None:
    from vidfeat.nets.segment import create_segment_net

    with pytest.raises(ConfigError, match="VisionTransformer has no explicit ResNet-style"):
        create_segment_net("stnet", "vit_tiny_patch16_224", 4, in_chans_per_segment=15, frames=5)
