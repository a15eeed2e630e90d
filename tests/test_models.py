"""Runs as models: importing the authors' PaddlePaddle StNet/TSN files and timm ImageNet
weights as runs, `vidfeat.load_model`, `models info`, and refusing files that carry code.

The Paddle files are built here from the published name list of the authors' StNet-R50 program
(``tests/data/stnet_paddle_params.txt``, a copy of ``shared/reference``) with random weights and
random BN statistics. The imported network is checked against an independent float64 forward
written below straight from the Paddle arrays, by Paddle name, with plain torch.nn.functional
ops (conv3d for the TMB, conv2d over ``[B, C, T, 1]`` for the temporal Xception block, the fc as
``x @ W[in, out]``), at the tolerances the authors' own outputs are held to.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from vidfeat import load_model
from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.models import import_paddle, import_timm, preprocessing_of
from vidfeat.nets.backbones import count_parameters
from vidfeat.nets.paddle import load_pdparams, state_dict_from_paddle

LISTING = Path(__file__).parent / "data" / "stnet_paddle_params.txt"
B, T, HW = 2, 3, 64
K_TSN = 7


# --------------------------------------------------------------------------- Paddle files


def paddle_listing() -> list[tuple[str, tuple[int, ...], str, str]]:
    """(name, shape, trainable|stat, explicit|auto|named-layer) in creation order."""
    rows = []
    for line in LISTING.read_text().splitlines():
        m = re.match(r"^(\S+)\s+\[([\d, ]*)\]\s+(trainable|stat)\s+(\S+)$", line)
        if m:
            shape = tuple(int(d) for d in m.group(2).split(","))
            rows.append((m.group(1), shape, m.group(3), m.group(4)))
    return rows


def random_params(rows, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of the listed shapes; BN statistics random too (mean ≠ 0, var ≠ 1)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape, _, _ in rows:
        n = len(shape)
        if name.endswith(("_scale", ".w_0")) and n == 1:  # BN scale
            a = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("_offset", ".b_0")):  # BN offset, conv/fc bias
            a = rng.normal(0.0, 0.1, shape)
        elif name.endswith(("_mean", ".w_1")):
            a = rng.normal(0.0, 0.2, shape)
        elif name.endswith(("_variance", ".w_2")):
            a = rng.uniform(0.5, 2.0, shape)
        elif n == 2:  # fc [in, out]
            a = rng.normal(0.0, shape[0] ** -0.5, shape)
        else:  # conv weights: He normal
            a = rng.normal(0.0, (2.0 / np.prod(shape[1:])) ** 0.5, shape)
        out[name] = a.astype(np.float32)
    return out


def tsn_rows():
    """The authors' TSN-R50 (tsn_res_model.py): the same explicit ResNet names with a
    3-channel conv1, and fc_0 [2048, K]."""
    rows = [r for r in paddle_listing() if r[3] == "explicit"]
    rows[0] = ("conv1_weights", (64, 3, 7, 7), "trainable", "explicit")
    return rows + [
        ("fc_0.w_0", (2048, K_TSN), "trainable", "auto"),
        ("fc_0.b_0", (K_TSN,), "trainable", "auto"),
    ]


def save_pdparams(params: dict, path: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(params, fh, protocol=2)  # what fluid.save writes
    return path


@pytest.fixture(scope="module")
def stnet_params() -> dict[str, np.ndarray]:
    return random_params(paddle_listing())


@pytest.fixture(scope="module")
def stnet_file(stnet_params, tmp_path_factory) -> Path:
    return save_pdparams(stnet_params, tmp_path_factory.mktemp("paddle") / "STNET.pdparams")


@pytest.fixture(scope="module")
def kinetics_classes(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("classes") / "kinetics400.txt"
    p.write_text("".join(f"action {i}\n" for i in range(400)))
    return p


@pytest.fixture(scope="module")
def stnet_import(stnet_file, kinetics_classes, tmp_path_factory) -> tuple[Path, str]:
    """`vidfeat models import paddle-stnet` of the file: the run folder and the output."""
    out = tmp_path_factory.mktemp("runs") / "stnet"
    code, text = cli(
        "models", "import", "paddle-stnet", stnet_file, "--classes", kinetics_classes,
        "--out", out,
    )  # fmt: skip
    assert code == 0, text
    return out, text


@pytest.fixture(scope="module")
def stnet_run(stnet_import) -> Path:
    return stnet_import[0]


@pytest.fixture(scope="module")
def stnet_model(stnet_run: Path):
    """``load_model`` of the imported run (shared; tests copy it before changing it)."""
    return load_model(stnet_run)


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


# --------------------------------------------------------------------------- reference forward


class Used(dict):
    """The Paddle arrays as float64 tensors, recording which names the reference read."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        super().__init__({k: torch.from_numpy(v.astype(np.float64)) for k, v in params.items()})
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        self.read.add(name)
        return super().__getitem__(name)


def ref_bn(x, P, scale, offset, mean, var):
    return F.batch_norm(x, P[mean], P[var], P[scale], P[offset], False, 0.0, 1e-5)


def ref_conv_bn(x, P, name: str, stride: int = 1, act: bool = True):
    w = P[f"{name}_weights"]
    y = F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2)
    bn = "bn_conv1" if name == "conv1" else "bn" + name[3:]
    y = ref_bn(y, P, f"{bn}_scale", f"{bn}_offset", f"{bn}_mean", f"{bn}_variance")
    return F.relu(y) if act else y


def ref_bottleneck(x, P, name: str, filters: int, stride: int):
    y = ref_conv_bn(x, P, f"{name}_branch2a")
    y = ref_conv_bn(y, P, f"{name}_branch2b", stride)
    y = ref_conv_bn(y, P, f"{name}_branch2c", act=False)
    if x.shape[1] != 4 * filters or stride != 1:
        x = ref_conv_bn(x, P, f"{name}_branch1", stride, act=False)
    return F.relu(x + y)


def ref_tmb(x, P, t: int, conv: str, bn: str):
    """``temporal_conv_bn``: x + BN(ReLU(conv3d(x) + b)) over [B, C, T, H, W]."""
    bt, c, h, w = x.shape
    y = x.reshape(bt // t, t, c, h, w).permute(0, 2, 1, 3, 4)
    z = F.relu(F.conv3d(y, P[f"{conv}.w_0"], P[f"{conv}.b_0"], padding=(1, 0, 0)))
    z = ref_bn(z, P, f"{bn}.w_0", f"{bn}.b_0", f"{bn}.w_1", f"{bn}.w_2") + y
    return z.permute(0, 2, 1, 3, 4).reshape(bt, c, h, w)


def ref_res5(P, x: torch.Tensor, tmb: bool = True) -> torch.Tensor:
    """[B, T, C, H, W] → pooled Res5 [B, T, 2048] (StNet with the TMBs; TSN without)."""
    b, t = x.shape[:2]
    y = ref_conv_bn(x.flatten(0, 1), P, "conv1", 2)
    y = F.max_pool2d(y, 3, 2, 1)
    for stage, (n, filters) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        for i in range(n):
            stride = 2 if i == 0 and stage else 1
            y = ref_bottleneck(y, P, f"res{stage + 2}{chr(97 + i)}", filters, stride)
        if tmb and stage == 1:
            y = ref_tmb(y, P, t, "conv3d_0", "batch_norm_24")
        if tmb and stage == 2:
            y = ref_tmb(y, P, t, "conv3d_1", "batch_norm_44")
    return y.mean((2, 3)).reshape(b, t, -1)


def ref_stnet_head(P, res5: torch.Tensor) -> torch.Tensor:
    """``xception`` + max over T + fc, on [B, C, T, 1] as the authors' program runs it."""

    def bn(x, n):
        return ref_bn(x, P, f"{n}.w_0", f"{n}.b_0", f"{n}.w_1", f"{n}.w_2")

    def conv(x, n, depthwise=False):
        w, b = P[f"{n}.w_0"], P[f"{n}.b_0"]
        if not depthwise:  # 1x1: [O, I, 1, 1]
            return F.conv2d(x, w, b)
        # groups=C, filter [C, 1, 3, 1], padding [1, 0]: written out over T (torch's float64
        # grouped conv is slow, and this keeps the reference free of vidfeat's Conv1d layout)
        t = x.shape[2]
        xp = F.pad(x, (0, 0, 1, 1))
        taps = sum(w[None, :, 0, k, 0, None, None] * xp[:, :, k : k + t] for k in range(3))
        return taps + b[None, :, None, None]

    x = bn(res5.transpose(1, 2)[..., None], "xception_bn")
    main_path = F.relu(
        bn(conv(conv(x, "xception_att_conv", True), "xception_att_2"), "xception_bndw")
    )
    main_path = conv(conv(main_path, "xception_att1", True), "xception_att1_2")
    out = F.relu(bn(conv(x, "xception_dw") + main_path, "xception_bn2"))
    return out.amax(dim=(2, 3)) @ P["fc_0.w_0"] + P["fc_0.b_0"]


def ref_tsn_head(P, res5: torch.Tensor) -> torch.Tensor:
    return res5.mean(1) @ P["fc_0.w_0"] + P["fc_0.b_0"]  # reduce_mean over T, then fc


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest deviation relative to the reference's scale."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def clip(channels: int, seed: int = 0, hw: int = HW) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, channels, hw, hw, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- StNet parity


def test_listing_is_the_authors_program(stnet_import, stnet_model) -> None:
    rows = paddle_listing()
    kinds = [r[3] for r in rows]
    assert len(rows) == 301 and kinds.count("explicit") == 265 and kinds.count("auto") == 14
    trainable = sum(int(np.prod(s)) for _, s, k, _ in rows if k == "trainable")
    assert trainable == 33_158_864
    assert count_parameters(stnet_model) == trainable  # the same network size
    assert "stnet on resnet50, 400 classes, 301 tensors, 33,158,864 parameters" in stnet_import[1]


def test_imported_stnet_computes_the_authors_function(stnet_params, stnet_model) -> None:
    P = Used(stnet_params)
    x = clip(15)
    with torch.no_grad():
        ref5 = ref_res5(P, x)
        ref_logits = ref_stnet_head(P, ref5)
        feats = stnet_model.forward_features(x.float())
        logits = stnet_model.forward_head(feats)
        head64 = copy.deepcopy(stnet_model).double().forward_head(ref5)
    assert P.read == set(stnet_params), "the reference must read every tensor of the file"
    figures = {
        "res5": rel(feats, ref5),
        "logits": rel(logits, ref_logits),
        "head_float64": rel(head64, ref_logits),
    }
    print(f"parity (max |diff| / max |ref|): {figures}")
    assert feats.shape == (B, T, 2048) and logits.shape == (B, 400)
    assert figures["res5"] < 2e-4
    assert figures["logits"] < 1e-3
    assert figures["head_float64"] < 1e-5
    assert ref_logits.std() > 0.1 and ref5.std() > 0.01  # not a degenerate comparison


def test_every_tensor_lands_where_the_map_says(stnet_params, stnet_run: Path) -> None:
    meta = json.loads((stnet_run / "model.json").read_text())
    tmap = meta["tensor_map"]
    assert set(tmap) == set(stnet_params)
    assert len({dst for dst, _ in tmap.values()}) == len(tmap)  # one destination each
    state = torch.load(stnet_run / "best.pt", weights_only=True)
    for name, (dst, how) in tmap.items():
        a = stnet_params[name]
        a = a.T if how == "transpose" else a
        assert np.array_equal(state[dst].numpy().reshape(a.shape), a), name
    assert tmap["conv3d_0.w_0"][0] == "tmb.layer2.conv.weight"
    assert tmap["batch_norm_44.w_2"][0] == "tmb.layer3.bn.running_var"
    assert tmap["xception_att_conv.w_0"][0] == "txb.dw1.weight"
    assert tmap["xception_dw.b_0"][0] == "txb.skip.bias"
    assert tmap["fc_0.w_0"] == ["fc.weight", "transpose"]
    assert tmap["res4f_branch2c_weights"][0] == "backbone.layer3.5.conv3.weight"
    assert tmap["bn5a_branch1_variance"][0] == "backbone.layer4.0.downsample.1.running_var"


def test_auto_numbers_are_matched_by_role_shape_and_order(stnet_params, stnet_model) -> None:
    net = stnet_model
    base, _ = state_dict_from_paddle(stnet_params, net)
    renames = {"conv3d_0": "conv3d_7", "conv3d_1": "conv3d_8", "batch_norm_24": "batch_norm_90"}
    renames |= {"batch_norm_44": "batch_norm_3", "fc_0": "fc_2"}  # BN order now reversed

    def rename(n: str) -> str:
        layer, _, suffix = n.partition(".")
        return f"{renames.get(layer, layer)}.{suffix}" if suffix else n

    shifted, _ = state_dict_from_paddle({rename(k): v for k, v in stnet_params.items()}, net)
    assert set(shifted) == set(base)
    assert all(torch.equal(shifted[k], base[k]) for k in base)


def test_mapping_is_strict_and_names_what_is_wrong(stnet_params, stnet_model) -> None:
    net = stnet_model
    bad = dict(stnet_params)
    del bad["res3b_branch2b_weights"], bad["batch_norm_44.w_2"]
    bad["conv1_weights"] = bad["conv1_weights"][:, :12]
    bad["extra_layer.w_0"] = np.zeros(3, np.float32)
    bad["conv3d_5.w_0"] = np.zeros((8, 8, 3, 1, 1), np.float32)
    with pytest.raises(ConfigError) as err:
        state_dict_from_paddle(bad, net)
    msg = err.value.message
    for name in ("res3b_branch2b_weights", "batch_norm_44.w_2", "extra_layer.w_0", "conv3d_5.w_0"):
        assert name in msg
    assert "mis-shaped" in msg and "conv1_weights [64, 12, 7, 7]" in msg
    assert "missing" in msg and "unexpected" in msg


def test_classes_must_be_given_and_agree_with_the_fc(stnet_file, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--classes FILE.*--num-classes 400"):
        import_paddle(stnet_file, tmp_path / "a", arch="stnet")
    few = tmp_path / "few.txt"
    few.write_text("a\nb\n")
    with pytest.raises(ConfigError, match="lists 2 classes.*400"):
        import_paddle(stnet_file, tmp_path / "b", arch="stnet", classes=few)
    with pytest.raises(ConfigError, match="--num-classes 10 disagrees"):
        import_paddle(stnet_file, tmp_path / "c", arch="stnet", num_classes=10)
    with pytest.raises(ConfigError, match="holds a STNET.*paddle-stnet"):
        import_paddle(stnet_file, tmp_path / "d", arch="tsn", num_classes=400)
    assert not any((tmp_path / d).exists() for d in "abcd")  # nothing written on refusal


def test_run_records_the_authors_preprocessing(stnet_run: Path) -> None:
    pre = preprocessing_of(stnet_run)
    assert (pre.short_side, pre.crop, pre.segments, pre.frames) == (256, 256, 25, 5)
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert pre.resize == "fixed-4:3"
    cfg = yaml.safe_load((stnet_run / "config.yaml").read_text())
    assert cfg["net_options"]["tmb"] == "residual" and cfg["frames"] == 5
    assert (cfg["size"], cfg["short_side"], cfg["test_segments"]) == (256, 256, 25)


def test_rgb_clips_follow_a_recorded_preprocessing(bframe_video) -> None:
    """fixed-4:3 squeezes any frame to 4:3 before the crop; mean/std come from the spec."""
    from vidfeat.clips import ClipSpec, RGBClips
    from vidfeat.decode import read_frames
    from vidfeat.grid import SegmentGrid
    from vidfeat.videolist import load_list

    path, _ = bframe_video  # 80×64
    lst = path.parent / "one.csv"
    lst.write_text(f"path\n{path}\n")
    vl = load_list(lst)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    spec = ClipSpec(2, 2, 32, 40, False, mean=mean, std=std, resize="fixed-4:3")
    x = RGBClips(vl, spec, layout="stnet")[0]["x"]
    idx = SegmentGrid(2, 2, "test").sample(120, 25.0).indices.reshape(-1)
    frames = read_frames(path, idx, size=(53, 40))  # int(40 * 4 / 3) = 53
    crop = frames[:, 4:36, 10:42].astype(np.float32) / 255.0
    want = (crop - np.float32(mean)) / np.float32(std)
    want = want.reshape(2, 2, 32, 32, 3).transpose(0, 1, 4, 2, 3).reshape(2, 6, 32, 32)
    assert np.allclose(x.numpy(), want, atol=1e-5)


# --------------------------------------------------------------------------- refused pickles


class Payload:
    def __init__(self, call, *args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize(
    "make, found",
    [
        (lambda s: Payload(os.system, f"touch {s}"), f"{os.system.__module__}.system"),
        (lambda s: Payload(eval, f"open({str(s)!r}, 'w')"), "builtins.eval"),
        (lambda s: Payload(subprocess.Popen, ["touch", str(s)]), "subprocess.Popen"),
        (lambda s: Payload(exec, f"open({str(s)!r}, 'w')"), "builtins.exec"),
    ],
    ids=["os.system", "eval", "subprocess", "exec"],
)
def test_pdparams_with_code_is_refused_and_never_runs(tmp_path: Path, make, found) -> None:
    sentinel = tmp_path / "pwned"
    params = {"conv1_weights": np.zeros((64, 3, 7, 7), np.float32), "fc_0.w_0": make(sentinel)}
    f = save_pdparams(params, tmp_path / "evil.pdparams")
    with pytest.raises(ConfigError, match=re.escape(found)):
        load_pdparams(f)
    with pytest.raises(ConfigError, match="refused"):
        import_paddle(f, tmp_path / "run", arch="stnet", num_classes=2)
    assert not sentinel.exists()
    assert not (tmp_path / "run").exists()


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    f = save_pdparams({"x": np.array([1, "a"], dtype=object)}, tmp_path / "obj.pdparams")
    with pytest.raises(ConfigError, match="refused"):
        load_pdparams(f)


def test_plain_pickles_of_every_protocol_load(stnet_params, tmp_path: Path) -> None:
    small = {k: stnet_params[k] for k in ("bn_conv1_scale", "fc_0.b_0")}
    small["scalar"] = np.float32(2.5)[()]
    small["x"] = np.arange(6, dtype=np.float64).reshape(2, 3)
    for proto in (2, 4, 5):
        p = tmp_path / f"p{proto}.pdparams"
        p.write_bytes(pickle.dumps(small, protocol=proto))
        got = load_pdparams(p)
        assert all(np.array_equal(got[k], small[k]) for k in small)


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as a Python 2 ``fluid.save`` did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING
        self.write(head + (b"" if n < 256 else struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def test_python2_numpy1_pickles_load(stnet_params, tmp_path: Path) -> None:
    """The 2019 releases may come from Python 2 and numpy 1.x: str payloads, numpy.core."""
    small = {k: stnet_params[k] for k in ("conv1_weights", "fc_0.w_0")}
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(small)
    data = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in data and b"_codecs" not in data
    p = tmp_path / "py2.pdparams"
    p.write_bytes(data)
    got = load_pdparams(p)
    assert all(np.array_equal(got[k], small[k]) and got[k].dtype == np.float32 for k in small)


# --------------------------------------------------------------------------- TSN


def test_imported_tsn_computes_the_authors_function(tmp_path: Path) -> None:
    params = random_params(tsn_rows(), seed=3)
    f = save_pdparams(params, tmp_path / "TSN.pdparams")
    run = tmp_path / "tsn"
    import_paddle(f, run, arch="tsn", num_classes=K_TSN)
    P = Used(params)
    x = clip(3, seed=1, hw=32)
    with torch.no_grad():
        ref5 = ref_res5(P, x, tmb=False)
        ref_logits = ref_tsn_head(P, ref5)
        model = load_model(run)
        feats = model.forward_features(x.float())
        logits = model.forward_head(feats)
        head64 = model.double().forward_head(ref5)
    assert P.read == set(params)
    figures = {"res5": rel(feats, ref5), "logits": rel(logits, ref_logits)}
    figures["head_float64"] = rel(head64, ref_logits)
    print(f"TSN parity (max |diff| / max |ref|): {figures}")
    assert figures["res5"] < 2e-4 and figures["logits"] < 1e-3
    assert figures["head_float64"] < 1e-5
    pre = preprocessing_of(run)
    assert (pre.crop, pre.segments, pre.frames) == (224, 7, 1)
    assert model.classes[0] == "class_0" and len(model.classes) == K_TSN


# --------------------------------------------------------------------------- load_model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A vidfeat StNet run folder as `vidfeat train rgb` writes it (untrained weights)."""
    from dataclasses import asdict

    from vidfeat.models import TrainConfig, build_model
    from vidfeat.videolist import write_classes

    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    cfg = TrainConfig(
        modality="rgb",
        train="train.csv",
        val=None,
        backbone="resnet10t",
        frames=2,
        size=48,
        short_side=56,
        test_segments=3,
        net_options={"txb_width": 16},
    )
    torch.manual_seed(0)
    net = build_model(cfg, 4)
    with torch.no_grad():  # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    (run / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_classes(run / "classes.txt", ["a", "b", "c", "d"])
    torch.save(net.state_dict(), run / "best.pt")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_prec1": 0.5}) + "\n")
    return run


@pytest.mark.parametrize("which", ["tiny", "imported"])
def test_load_model_contract(which: str, tiny_run: Path, stnet_run: Path, request) -> None:
    if which == "tiny":
        run, model = tiny_run, load_model(tiny_run)
        assert load_model(run / "best.pt").classes == model.classes  # a checkpoint in a run
    else:
        run, model = stnet_run, request.getfixturevalue("stnet_model")
    assert not model.training
    x = torch.randn(1, 2, model.in_chans, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        again = model.forward_head(feats)
        assert logits.shape == (1, len(model.classes)) and feats.shape[:2] == (1, 2)
        assert feats.shape[2] == model.feature_dim
        assert torch.allclose(logits, again)
        model64 = copy.deepcopy(model).double()
        feats64 = model64.forward_features(x.double())
        logits64 = model64(x.double())
        assert feats64.dtype == logits64.dtype == torch.float64
        assert rel(logits, logits64) < 1e-3 and rel(feats, feats64) < 2e-4
        assert torch.allclose(model64.forward_head(feats64), logits64)


def test_load_model_reads_a_pdparams_file_directly(stnet_file, stnet_model) -> None:
    direct = load_model(stnet_file)
    assert len(direct.classes) == 400 and direct.preprocessing == stnet_model.preprocessing
    imported = stnet_model.state_dict()
    assert all(torch.equal(v, imported[k]) for k, v in direct.state_dict().items())


def test_load_model_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such run"):
        load_model(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="not a vidfeat training run"):
        load_model(tmp_path)


# --------------------------------------------------------------------------- timm


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(2)
    model = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("timm") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def test_timm_import_is_the_imagenet_classifier_per_segment(resnet18_state, tmp_path) -> None:
    path, ref = resnet18_state
    run = tmp_path / "r18"
    rep = import_timm("resnet18", run, weights=path)
    assert rep.num_classes == 1000 and rep.arch == "tsn"
    model = load_model(run)
    x = torch.randn(1, T, 3, 96, 96)
    with torch.no_grad():
        want = ref(x[0]).mean(0, keepdim=True)  # TSN: ImageNet logits averaged over T
        got = model(x)
        feats = model.forward_features(x)
    assert torch.allclose(got, want, atol=1e-4)
    assert feats.shape == (1, T, 512)
    assert model.classes[0] == "tench" and len(set(model.classes)) == 1000
    pre = preprocessing_of(run)
    assert pre.crop == 224 and pre.frames == 1 and pre.short_side >= 224


def test_timm_import_refuses_offline_without_weights(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torchhub"))
    with pytest.raises(ConfigError, match=r"not in the local cache.*pretrained=True.*--weights"):
        import_timm("resnet18", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_timm_import_refuses_weights_of_another_model(resnet18_state, tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a state dict of timm 'resnet34'"):
        import_timm("resnet34", tmp_path / "run", weights=resnet18_state[0])


# --------------------------------------------------------------------------- command line


def test_cli_info(stnet_file, stnet_run, tiny_run, tmp_path: Path) -> None:
    code, text = cli("models", "info", stnet_run)
    assert code == 0, text
    for part in (
        "stnet (tmb=residual",
        "resnet50",
        "400 (action 0, action 1",
        "33,158,864",
        "fixed 4:3",
        "centre crop 256",
        "mean [0.485, 0.456, 0.406]",
        "T=25, N=5",
        "STNET.pdparams",
        "paddle-stnet",
        "the authors of PaddlePaddle/models",
    ):
        assert part in text, part
    code, text = cli("models", "info", tiny_run, "--json")
    assert code == 0, text
    info = json.loads(text)
    assert info["origin"] == "trained by vidfeat" and info["classes"] == 4
    assert "train_prec1 0.5000" in info["training"]
    code, text = cli("models", "import", "paddle-stnet", stnet_file, "--out", tmp_path / "x")
    assert code != 0 and "--num-classes 400" in text


def test_extract_rgb_follows_an_imported_run(resnet18_state, tiny_synth, tmp_path) -> None:
    from vidfeat.store import FeatureStore

    run = tmp_path / "r18"
    code, text = cli("models", "import", "timm", "resnet18", "--weights", resnet18_state[0],
                     "--out", run)  # fmt: skip
    assert code == 0, text
    video = next(iter(sorted((tiny_synth / "videos").glob("*.mp4"))))
    videos = tmp_path / "unlabelled.csv"  # ImageNet classes: the list must not carry labels
    videos.write_text(f"path\n{video}\n")
    store = tmp_path / "store"
    code, text = cli(
        "extract", "rgb", "--checkpoint", run, "--videos", videos,
        "--store", store, "-T", "2", "--workers", "1", "--limit", "1", "--quiet",
    )  # fmt: skip
    assert code == 0, text
    fs = FeatureStore(store).open_set("rgb")
    feats, _ = fs.get(fs.ids()[0])
    assert feats.shape == (2, 512)
    pre = fs.config["preprocessing_info"]
    assert pre["crop"] == 224 and pre["mean"] == [0.485, 0.456, 0.406]
