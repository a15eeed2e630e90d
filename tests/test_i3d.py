"""I3D imported from pytorch-i3d's and video_features' state dicts (issue 22).

The weight files are built here with the published names and shapes (pytorch-i3d:
``pytorch_i3d.py``, whose 344 RGB names are checked against the reference list when it is on
this machine; video_features: ``models/i3d/i3d_src/i3d_net.py``), random values. The parity
reference is an independent float64 re-implementation of each source's graph, written below
with ``torch.nn.functional`` from the state dict in the source's own names.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vidfeat.errors import ConfigError

REFERENCE = Path("/work/shared/reference/i3d_pytorch_params.txt")
K = 400

# the Inception blocks of I3D: (name, input channels, b0, b1a, b1b, b2a, b2b, b3b)
BLOCKS = [
    ("3b", 192, 64, 96, 128, 16, 32, 32),
    ("3c", 256, 128, 128, 192, 32, 96, 64),
    ("4b", 480, 192, 96, 208, 16, 48, 64),
    ("4c", 512, 160, 112, 224, 24, 64, 64),
    ("4d", 512, 128, 128, 256, 24, 64, 64),
    ("4e", 512, 112, 144, 288, 32, 64, 64),
    ("4f", 528, 256, 160, 320, 32, 128, 128),
    ("5b", 832, 256, 160, 320, 32, 128, 128),
    ("5c", 832, 384, 192, 384, 48, 128, 128),
]
# the units of a block in each format: (pytorch-i3d name, video_features name, in, out, kernel)
BRANCHES = [
    ("b0", "branch_0", "cin", 0, 1),
    ("b1a", "branch_1.0", "cin", 1, 1),
    ("b1b", "branch_1.1", 1, 2, 3),
    ("b2a", "branch_2.0", "cin", 3, 1),
    ("b2b", "branch_2.1", 3, 4, 3),
    ("b3b", "branch_3.1", "cin", 5, 1),
]


def units(fmt: str, chans: int) -> list[tuple[str, int, int, int]]:
    """(unit name, in channels, out channels, kernel) of every conv + BN unit, in order."""
    pt = fmt == "pytorch-i3d"
    out = [
        ("Conv3d_1a_7x7" if pt else "conv3d_1a_7x7", chans, 64, 7),
        ("Conv3d_2b_1x1" if pt else "conv3d_2b_1x1", 64, 64, 1),
        ("Conv3d_2c_3x3" if pt else "conv3d_2c_3x3", 64, 192, 3),
    ]
    for name, cin, *outs in BLOCKS:
        for pname, vname, i, o, k in BRANCHES:
            unit = f"Mixed_{name}.{pname}" if pt else f"mixed_{name}.{vname}"
            out.append((unit, cin if i == "cin" else outs[i], outs[o], k))
    return out


def shapes(fmt: str, chans: int, nbt: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the format with its shape."""
    bn = "bn" if fmt == "pytorch-i3d" else "batch3d"
    logits = "logits" if fmt == "pytorch-i3d" else "conv3d_0c_1x1"
    out: dict[str, tuple[int, ...]] = {
        f"{logits}.conv3d.weight": (K, 1024, 1, 1, 1),
        f"{logits}.conv3d.bias": (K,),
    }
    for unit, cin, cout, k in units(fmt, chans):
        out[f"{unit}.conv3d.weight"] = (cout, cin, k, k, k)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            out[f"{unit}.{bn}.{leaf}"] = (cout,)
        if nbt:
            out[f"{unit}.{bn}.num_batches_tracked"] = ()
    return out


def random_state(fmt: str, chans: int, seed: int = 0, nbt: bool | None = None) -> dict:
    """Random weights with the format's names and shapes (He-scaled convolutions, BN
    variances in [0.5, 1.5])."""
    g = torch.Generator().manual_seed(seed)
    nbt = fmt == "pytorch-i3d" if nbt is None else nbt
    state = {}
    for name, shape in shapes(fmt, chans, nbt).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("conv3d.weight"):
            fan_in = shape[1] * shape[2] * shape[3] * shape[4]
            state[name] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith(".weight"):
            state[name] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        else:  # biases, running means
            state[name] = 0.1 * torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """The four weight files: {(format, modality): path}."""
    d = tmp_path_factory.mktemp("i3d")
    out = {}
    for fmt in ("pytorch-i3d", "video_features"):
        for mod, chans in (("rgb", 3), ("flow", 2)):
            p = d / f"{fmt}_{mod}.pt"
            torch.save(random_state(fmt, chans, seed=chans), p)
            out[fmt, mod] = p
    return out


@pytest.fixture(scope="module")
def runs(files: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    from vidfeat.models import import_i3d

    d = tmp_path_factory.mktemp("i3d_runs")
    out = {}
    for (fmt, mod), p in files.items():
        rep = import_i3d(p, d / f"{fmt}_{mod}", modality=mod)
        assert rep.num_classes == K and rep.arch == "i3d"
        out[fmt, mod] = rep.run
    return out


# --------------------------------------------------------------------------- the reference


def ref_pad(sizes, kernel, stride, fmt: str) -> list[int]:
    """F.pad order (w0, w1, h0, h1, t0, t1): pytorch-i3d's compute_pad, video_features'
    get_padding_shape."""
    pads: list[int] = []
    for s, k, st in list(zip(sizes, kernel, stride, strict=True))[::-1]:
        if fmt == "pytorch-i3d":
            total = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
        else:
            total = max(k - st, 0)
        pads += [total // 2, total - total // 2]
    return pads


def ref_unit(x, sd, unit, k, stride, fmt):
    bn = "bn" if fmt == "pytorch-i3d" else "batch3d"
    x = F.pad(x, ref_pad(x.shape[2:], (k,) * 3, stride, fmt))
    x = F.conv3d(x, sd[f"{unit}.conv3d.weight"], stride=stride)
    eps = 1e-3 if fmt == "pytorch-i3d" else 1e-5
    x = F.batch_norm(
        x,
        sd[f"{unit}.{bn}.running_mean"],
        sd[f"{unit}.{bn}.running_var"],
        sd[f"{unit}.{bn}.weight"],
        sd[f"{unit}.{bn}.bias"],
        training=False,
        eps=eps,
    )
    return F.relu(x)


def ref_pool(x, kernel, stride, fmt):
    x = F.pad(x, ref_pad(x.shape[2:], kernel, stride, fmt))
    return F.max_pool3d(x, kernel, stride, ceil_mode=fmt == "video_features")


def reference(sd: dict, clip: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's features and time-averaged logits of ``clip`` [N, C, W, H, W]."""
    sd = {k: v.double() for k, v in sd.items()}
    us = units(fmt, clip.shape[1])
    x = ref_unit(clip.double(), sd, us[0][0], 7, (2, 2, 2), fmt)
    x = ref_pool(x, (1, 3, 3), (1, 2, 2), fmt)
    x = ref_unit(x, sd, us[1][0], 1, (1, 1, 1), fmt)
    x = ref_unit(x, sd, us[2][0], 3, (1, 1, 1), fmt)
    pools = {"3b": ((1, 3, 3), (1, 2, 2)), "4b": ((3, 3, 3), (2, 2, 2)), "5b": ((2, 2, 2),) * 2}
    for i, (name, *_) in enumerate(BLOCKS):
        if name in pools:
            x = ref_pool(x, *pools[name], fmt)
        u = {b[0]: us[3 + 6 * i + j][0] for j, b in enumerate(BRANCHES)}
        one = (1, 1, 1)
        b0 = ref_unit(x, sd, u["b0"], 1, one, fmt)
        b1 = ref_unit(ref_unit(x, sd, u["b1a"], 1, one, fmt), sd, u["b1b"], 3, one, fmt)
        b2 = ref_unit(ref_unit(x, sd, u["b2a"], 1, one, fmt), sd, u["b2b"], 3, one, fmt)
        b3 = ref_unit(ref_pool(x, (3, 3, 3), one, fmt), sd, u["b3b"], 1, one, fmt)
        x = torch.cat([b0, b1, b2, b3], 1)
    x = F.avg_pool3d(x, [min(k, s) for k, s in zip((2, 7, 7), x.shape[2:], strict=True)], 1)
    logits = "logits" if fmt == "pytorch-i3d" else "conv3d_0c_1x1"
    scores = F.conv3d(x, sd[f"{logits}.conv3d.weight"], sd[f"{logits}.conv3d.bias"])
    return x.mean(dim=(2, 3, 4)), scores.mean(dim=(2, 3, 4))


def as_rows(clip: torch.Tensor) -> torch.Tensor:
    """[N, C, W, H, W] → vidfeat's [N, 1, C·W, H, W] (frame-major)."""
    n, c, w, h, wd = clip.shape
    return clip.transpose(1, 2).reshape(n, 1, w * c, h, wd)


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    err = (a.double() - b.double()).abs().max().item()
    scale = b.double().abs().max().item()
    assert scale > 0 and err <= tol * scale, (err, scale, err / scale)


def clip_of(chans: int, frames: int, size: int, n: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, chans, frames, size, size), generator=g) * 2 - 1


# --------------------------------------------------------------------------- the network


def test_the_networks_names_are_pytorch_i3ds() -> None:
    from vidfeat.nets.clipnet import create_clip_net

    want = shapes("pytorch-i3d", 3, nbt=True)
    if REFERENCE.is_file():  # the published list (344 names), when this machine has it
        lines = [ln.split("\t") for ln in REFERENCE.read_text().splitlines() if ln.strip()]
        assert {n: tuple(eval(s)) for n, s in lines} == want  # noqa: S307 - a tuple literal
    net = create_clip_net("i3d", "inception_i3d", K, in_chans_per_segment=30, frames=10)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == want
    assert net.config["convention"] == "pytorch-i3d" and net.min_frames == 10
    with pytest.raises(ConfigError, match="convention"):
        create_clip_net(
            "i3d", "x", K, in_chans_per_segment=30, frames=10, convention="tensorflow"
        )  # fmt: skip


# --------------------------------------------------------------------------- importing


@pytest.mark.parametrize("fmt", ["pytorch-i3d", "video_features"])
@pytest.mark.parametrize("mod", ["rgb", "flow"])
def test_import_writes_a_run(fmt: str, mod: str, runs: dict, files: dict) -> None:
    import yaml

    from vidfeat.models.runs import _sha256

    run = runs[fmt, mod]
    meta = json.loads((run / "model.json").read_text())
    assert meta["source"]["detected_format"] == fmt and meta["source"]["convention"] == fmt
    assert meta["source"]["sha256"] == _sha256(files[fmt, mod])
    nbt = 57 if fmt == "pytorch-i3d" else 0
    assert meta["source"]["tensors"] == 287 + nbt == len(meta["tensor_map"])
    assert meta["flow"]["bound"] == 20
    assert meta["network"]["bn_eps"] == (1e-3 if fmt == "pytorch-i3d" else 1e-5)
    pre = meta["preprocessing"]
    assert (pre["short_side"], pre["crop"], pre["mean"], pre["std"], pre["frames"]) == (
        256, 224, [0.5] * 3, [0.5] * 3, 64,
    )  # fmt: skip
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["arch"], cfg["modality"], cfg["frames"]) == ("i3d", mod, 64)
    assert cfg["net_options"] == {"convention": fmt}
    names = (run / "classes.txt").read_text().split()
    assert len(names) == K and names[0] == "class_000"


def test_import_takes_class_names(files: dict, tmp_path: Path) -> None:
    from vidfeat.models import import_i3d

    cls = tmp_path / "classes.txt"
    cls.write_text("".join(f"action {i}\n" for i in range(K)))
    rep = import_i3d(files["video_features", "rgb"], tmp_path / "r", modality="rgb", classes=cls)
    assert (tmp_path / "r" / "classes.txt").read_text().splitlines()[3] == "action 3"
    assert rep.num_classes == K
    cls.write_text("a\nb\n")
    with pytest.raises(ConfigError, match="lists 2 classes"):
        import_i3d(files["video_features", "rgb"], tmp_path / "r2", modality="rgb", classes=cls)
    with pytest.raises(ConfigError, match="--num-classes 5 disagrees"):
        import_i3d(files["pytorch-i3d", "rgb"], tmp_path / "r3", modality="rgb", num_classes=5)


@pytest.mark.parametrize("fmt", ["pytorch-i3d", "video_features"])
def test_mapping_is_strict(fmt: str, tmp_path: Path) -> None:
    from vidfeat.models import import_i3d

    state = random_state(fmt, 3)
    bn = "bn" if fmt == "pytorch-i3d" else "batch3d"
    mixed = "Mixed_4d.b2b" if fmt == "pytorch-i3d" else "mixed_4d.branch_2.1"
    gone = f"{mixed}.{bn}.running_var"
    bent = f"{mixed}.conv3d.weight"
    del state[gone]
    state["extra.conv3d.weight"] = torch.zeros(3)
    state[bent] = torch.zeros(64, 24, 3, 3, 1)
    p = tmp_path / "bad.pt"
    torch.save(state, p)
    with pytest.raises(ConfigError) as err:
        import_i3d(p, tmp_path / "r", modality="rgb")
    msg = str(err.value)
    assert "1 missing" in msg and gone in msg
    assert "1 unexpected" in msg and "extra.conv3d.weight" in msg
    assert "1 mis-shaped" in msg and bent in msg and "(64, 24, 3, 3, 1)" in msg
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_num_batches_tracked_is_optional(tmp_path: Path) -> None:
    """video_features' converter writes no counters; a pytorch-i3d file may hold them or not."""
    from vidfeat.models import import_i3d

    for fmt in ("pytorch-i3d", "video_features"):
        p = tmp_path / f"{fmt}.pt"
        torch.save(random_state(fmt, 2, nbt=fmt == "video_features"), p)
        rep = import_i3d(p, tmp_path / fmt, modality="flow")
        assert rep.tensors == 287 + (57 if fmt == "video_features" else 0)


def test_wrong_modality_and_foreign_files_are_refused(files: dict, tmp_path: Path) -> None:
    from vidfeat.models import import_i3d

    with pytest.raises(ConfigError, match="holds the FLOW stream .* --modality flow"):
        import_i3d(files["pytorch-i3d", "flow"], tmp_path / "a", modality="rgb")
    with pytest.raises(ConfigError, match="holds the RGB stream .* --modality rgb"):
        import_i3d(files["video_features", "rgb"], tmp_path / "a", modality="flow")
    with pytest.raises(ConfigError, match="rgb or flow"):
        import_i3d(files["video_features", "rgb"], tmp_path / "a", modality="audio")
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(ConfigError, match="not an I3D state dict"):
        import_i3d(other, tmp_path / "a", modality="rgb")
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], lst)
    with pytest.raises(ConfigError, match="not a dict"):
        import_i3d(lst, tmp_path / "a", modality="rgb")


class _Payload:
    def __reduce__(self):
        return os.system, ("touch pwned-i3d",)


def test_a_pickle_payload_is_refused_unrun(tmp_path: Path, monkeypatch) -> None:
    from vidfeat.models import import_i3d

    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    state = {"Conv3d_1a_7x7.conv3d.weight": torch.zeros(64, 3, 7, 7, 7), "x": _Payload()}
    with open(p, "wb") as fh:
        torch.save(state, fh, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(ConfigError):
        import_i3d(p, tmp_path / "r", modality="rgb")
    assert not (tmp_path / "pwned-i3d").exists() and not (tmp_path / "r" / "best.pt").exists()


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "fmt, mod, frames, size",
    [
        ("pytorch-i3d", "rgb", 16, 112),
        ("video_features", "rgb", 16, 112),
        ("pytorch-i3d", "flow", 13, 99),  # odd sizes: the padding rules differ
        ("video_features", "flow", 13, 99),
    ],
)
def test_parity_with_the_source(fmt, mod, frames, size, runs: dict, files: dict) -> None:
    import vidfeat
    from vidfeat.nets.torchfile import load_torch_file

    sd = load_torch_file(files[fmt, mod])
    chans = 3 if mod == "rgb" else 2
    clip = clip_of(chans, frames, size, seed=frames)
    feat_ref, logit_ref = reference(sd, clip, fmt)
    model = vidfeat.load_model(runs[fmt, mod])
    assert model.config["convention"] == fmt
    with torch.no_grad():
        f32 = model.forward_features(as_rows(clip))[:, 0]
        l32 = model.forward_head(f32[:, None])
        m64 = model.double()
        f64 = m64.forward_features(as_rows(clip).double())[:, 0]
        l64 = m64(as_rows(clip).double())
    close(f64, feat_ref, 1e-5)
    close(l64, logit_ref, 1e-5)
    close(f32, feat_ref, 1e-4)
    close(l32, logit_ref, 1e-4)


def test_the_conventions_differ(files: dict) -> None:
    """The same weights under the other source's rules give other numbers (eps, padding)."""
    from vidfeat.nets.torchfile import load_torch_file

    sd = load_torch_file(files["pytorch-i3d", "flow"])
    vf = {}
    for (name, *_), (vname, *_) in zip(
        units("pytorch-i3d", 2), units("video_features", 2), strict=True
    ):
        for leaf in ("conv3d.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            vf[f"{vname}.{leaf.replace('bn.', 'batch3d.')}"] = sd[f"{name}.{leaf}"]
    vf |= {f"conv3d_0c_1x1.conv3d.{k}": sd[f"logits.conv3d.{k}"] for k in ("weight", "bias")}
    clip = clip_of(2, 11, 67)
    a, b = reference(sd, clip, "pytorch-i3d")[0], reference(vf, clip, "video_features")[0]
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


def test_parity_at_224_float32(runs: dict, files: dict) -> None:
    """The unclipped (2, 7, 7) pooling: 224 px, 16 frames, float32."""
    import vidfeat
    from vidfeat.nets.torchfile import load_torch_file

    torch.set_num_threads(2)
    sd = load_torch_file(files["video_features", "rgb"])
    clip = clip_of(3, 16, 224, seed=3)
    model = vidfeat.load_model(runs["video_features", "rgb"])
    with torch.no_grad():
        feats = model.forward_features(as_rows(clip))[:, 0]
        logits = model.forward_head(feats[:, None])
    feat_ref, logit_ref = reference(sd, clip, "video_features")
    close(feats, feat_ref, 1e-4)
    close(logits, logit_ref, 1e-4)


def test_rows_and_batches(runs: dict) -> None:
    """model(x) with T = 2 is the mean of the rows' logits; a window's feature does not depend
    on the batch it is computed in; classify(feature) is the logits conv on the pooled map."""
    import vidfeat

    model = vidfeat.load_model(runs["pytorch-i3d", "rgb"])
    clips = clip_of(3, 10, 64, n=3, seed=5)
    rows = as_rows(clips)  # [3, 1, 30, 64, 64]
    with torch.no_grad():
        alone = model.forward_features(rows[1:2])[0, 0]
        batch = model.forward_features(rows)[:, 0]
        two = model(rows[:2].reshape(1, 2, 30, 64, 64))
        each = [model(rows[i : i + 1]) for i in range(2)]
        pooled = model.pooled_map(clips[:1])
        direct = model.logits(pooled).mean(dim=(2, 3, 4))
    close(batch[1], alone, 1e-5)
    close(two, (each[0] + each[1]) / 2, 1e-5)
    close(model.classify(batch[:1]), direct, 1e-5)
    with pytest.raises(ValueError, match=">= 10 frames"):
        model(as_rows(clip_of(3, 9, 64)))


# --------------------------------------------------------------------------- the CLI


def test_cli_import_and_info(files: dict, runs: dict, tmp_path: Path) -> None:
    from vidfeat.cli import main

    out = tmp_path / "cli_run"
    argv = ["models", "import", "i3d", str(files["video_features", "flow"])]
    res = CliRunner().invoke(main, [*argv, "--modality", "flow", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "i3d: i3d on inception_i3d, 400 classes" in res.output
    res = CliRunner().invoke(main, [*argv, "--modality", "rgb", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "--modality flow" in " ".join(res.output.split())
    res = CliRunner().invoke(main, ["models", "info", str(out)])
    assert res.exit_code == 0, res.output
    assert "architecture:   i3d (convention=video_features), flow" in res.output
    assert "features:       (T, 1024)" in res.output and "short side 256" in res.output
    res = CliRunner().invoke(main, ["models", "info", "--json", str(runs["pytorch-i3d", "rgb"])])
    info = json.loads(res.output)
    assert info["source"]["detected_format"] == "pytorch-i3d" and info["feature_dim"] == 1024
