"""``--precision``: what auto picks, refusals, what sets and runs record, and the bf16 fast path's
parity with float32 on real decoded frames (issue 23).

Parity bounds (per stored row ``a`` in fp32, ``b`` in bf16): cosine ≥ 0.999 and
``max|a - b| / max|a|`` ≤ 1e-2. The networks are the paper's (StNet and TSN on ResNet-50,
VGGish) with seeded random weights and non-trivial BN statistics, on small crops so the test
takes seconds.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import moving_frames, tone
from vidfeat import precision as precision_mod
from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.precision import Precision, cpu_bf16, resolve_name, resolve_precision
from vidfeat.store import FeatureStore
from vidfeat.synth import write_mp4

CPU = torch.device("cpu")
HAS_BF16 = cpu_bf16()[0]
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason=f"no fast bf16 here: {cpu_bf16()[1]}")


def _caps(monkeypatch: pytest.MonkeyPatch, **caps: bool) -> None:
    monkeypatch.setattr(precision_mod, "cpu_capabilities", lambda: dict(caps))


# --------------------------------------------------------------------------- resolution


def test_auto_follows_what_the_cpu_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    _caps(monkeypatch, amx_bf16=True)
    assert resolve_name("auto", CPU) == "bf16"
    _caps(monkeypatch, avx512_bf16=True)
    assert resolve_name("auto", CPU) == "bf16"
    _caps(monkeypatch, avx512_bw=True)  # AVX-512 without its bf16 dot products: emulated
    assert resolve_name("auto", CPU) == "fp32"
    assert resolve_name("fp32", CPU) == "fp32"


def test_a_precision_the_cpu_cannot_run_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _caps(monkeypatch, avx2=True)
    with pytest.raises(ConfigError, match="--precision bf16 on cpu: this CPU has neither AMX-BF16"):
        resolve_name("bf16", CPU)
    with pytest.raises(ConfigError, match="--precision fp16 on cpu: this CPU has neither AMX-FP16"):
        resolve_name("fp16", CPU)
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16, fp16"):
        resolve_name("half", CPU)


def test_this_machine_auto_is_what_its_cpu_supports() -> None:
    """On a CPU with AVX512-BF16 or AMX-BF16 (this machine's kind), auto is bf16."""
    caps = precision_mod.cpu_capabilities()
    fast = bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    assert resolve_name("auto", CPU) == ("bf16" if fast else "fp32")


def test_channels_last_is_the_family_s_and_weights_stay_fp32() -> None:
    from vidfeat.audio import VGGish
    from vidfeat.nets.segment import create_segment_net

    net = create_segment_net("tsn", "resnet10t", 3, in_chans_per_segment=3, frames=1)
    p = resolve_precision("fp32", CPU, net)
    assert p == Precision("fp32", True) and p.record()["memory_format_info"] == "channels_last"
    net = p.prepare(net)
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.dtype == torch.float32
    assert resolve_precision("fp32", CPU, VGGish(width=0.125)).channels_last
    assert not resolve_precision("fp32", CPU, torch.nn.LSTM(4, 4)).channels_last


def test_the_command_line_refuses_what_the_cpu_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_synth: Path
) -> None:
    _caps(monkeypatch, avx2=True)
    r = CliRunner().invoke(
        main,
        ["train", "rgb", "--videos", str(tiny_synth / "train.csv"), "--out", str(tmp_path / "r"),
         "--backbone", "resnet10t", "--precision", "bf16", "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code != 0 and "--precision bf16 on cpu: this CPU has neither" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "r" / "best.pt").exists()


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real H.264/AAC clip (2 s at 15 fps, 96x128) and a list of it."""
    d = tmp_path_factory.mktemp("prec")
    frames = moving_frames(30, h=96, w=128, seed=4)
    write_mp4(d / "a.mp4", frames, 15, tone(2.0, 16000, 440.0), 16000)
    (d / "list.csv").write_text("path,label\na.mp4,c0\n")
    return d


def _run(root: Path, arch: str) -> Path:
    """A run folder of an R50 ``arch`` with seeded random weights and BN statistics."""
    from vidfeat.models import TrainConfig, build_model
    from vidfeat.videolist import write_classes

    run = root / arch
    run.mkdir()
    frames = 3 if arch == "stnet" else 1
    cfg = TrainConfig(modality="rgb", train="list.csv", val=None, arch=arch, backbone="resnet50",
                      frames=frames, size=64, short_side=72, net_options={})  # fmt: skip
    torch.manual_seed(0)
    net = build_model(cfg, 3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    (run / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_classes(run / "classes.txt", ["c0", "c1", "c2"])
    torch.save(net.state_dict(), run / "best.pt")
    return run


def _extract(args: list[str], store: Path, precision: str, name: str) -> None:
    r = CliRunner().invoke(
        main,
        [*args, "--store", str(store), "--name", name, "--precision", precision, "-T", "3",
         "--workers", "0", "--timeout", "0", "--device", "cpu", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output


def _rows(store: Path, name: str) -> np.ndarray:
    s = FeatureStore(store).open_set(name)
    return np.concatenate([s.features(v).reshape(-1, s.features(v).shape[-1]) for v in s.ids()])


def _assert_parity(a: np.ndarray, b: np.ndarray) -> None:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rel = np.abs(a - b).max(1) / np.abs(a).max(1)
    assert cos.min() >= 0.999, cos
    assert rel.max() <= 1e-2, rel
    assert np.abs(a - b).max() > 0  # bf16 did run: float32 would agree bit for bit


@needs_bf16
@pytest.mark.parametrize("arch", ["stnet", "tsn"])
def test_bf16_rgb_features_agree_with_fp32(arch: str, clip: Path, tmp_path: Path) -> None:
    run = _run(tmp_path, arch)
    store = tmp_path / "store"
    args = ["extract", "rgb", "--checkpoint", str(run), "--videos", str(clip / "list.csv")]
    _extract(args, store, "fp32", "f32")
    _extract(args, store, "bf16", "b16")
    _assert_parity(_rows(store, "f32"), _rows(store, "b16"))
    fs = FeatureStore(store)
    assert fs.open_set("f32").config["precision"] == "fp32"
    assert fs.open_set("b16").config["precision"] == "bf16"
    assert fs.open_set("b16").config["memory_format_info"] == "channels_last"


@needs_bf16
def test_bf16_vggish_features_agree_with_fp32(clip: Path, tmp_path: Path) -> None:
    from vidfeat.audio import VGGish

    torch.manual_seed(0)
    weights = tmp_path / "vggish.pth"
    torch.save(VGGish().state_dict(), weights)
    store = tmp_path / "store"
    args = ["extract", "audio", "--checkpoint", str(weights), "--videos", str(clip / "list.csv")]
    _extract(args, store, "fp32", "f32")
    _extract(args, store, "bf16", "b16")
    _assert_parity(_rows(store, "f32"), _rows(store, "b16"))


# --------------------------------------------------------------------------- what is recorded


@needs_bf16
def test_a_set_never_mixes_precisions_and_store_info_shows_it(clip: Path, tmp_path: Path) -> None:
    from vidfeat.audio import VGGish

    torch.manual_seed(0)
    weights = tmp_path / "vggish.pth"
    torch.save(VGGish().state_dict(), weights)
    (clip / "two.csv").write_text("path\na.mp4\n")  # unlabelled: the same video id
    store = tmp_path / "store"
    args = ["extract", "audio", "--checkpoint", str(weights), "--videos"]
    _extract([*args, str(clip / "list.csv")], store, "auto", "audio")
    assert FeatureStore(store).open_set("audio").config["precision"] == "bf16"
    (clip / "b.mp4").write_bytes((clip / "a.mp4").read_bytes())
    (clip / "more.csv").write_text("path\na.mp4\nb.mp4\n")
    r = CliRunner().invoke(
        main,
        [*args, str(clip / "more.csv"), "--store", str(store), "--precision", "fp32", "-T",
         "3", "--workers", "0", "--timeout", "0", "--quiet"],
    )  # fmt: skip
    assert r.exit_code != 0 and "precision" in r.output and "bf16" in r.output, r.output
    assert "fp32" in r.output and len(FeatureStore(store).open_set("audio").ids()) == 1
    r = CliRunner().invoke(main, ["store", "info", str(store)])
    assert r.exit_code == 0 and "precision: bf16" in r.output


def test_a_set_of_an_older_vidfeat_reads_as_fp32(clip: Path, tmp_path: Path) -> None:
    """Sets written before --precision ran in float32: appending in fp32 is allowed."""
    from vidfeat.audio import VGGish

    torch.manual_seed(0)
    weights = tmp_path / "vggish.pth"
    torch.save(VGGish(width=0.125).state_dict(), weights)
    store = tmp_path / "store"
    args = ["extract", "audio", "--random-init", "--videos", str(clip / "list.csv")]
    _extract(args, store, "fp32", "audio")
    sj = store / "audio" / "set.json"
    conf = json.loads(sj.read_text())
    del conf["precision"]
    sj.write_text(json.dumps(conf))
    (clip / "b.mp4").write_bytes((clip / "a.mp4").read_bytes())
    (clip / "more.csv").write_text("path,label\na.mp4,c0\nb.mp4,c0\n")
    args[-1] = str(clip / "more.csv")
    _extract(args, store, "fp32", "audio")
    assert len(FeatureStore(store).open_set("audio").ids()) == 2


def test_training_records_the_precision_it_ran_and_keeps_fp32_weights(
    tiny_synth: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    r = CliRunner().invoke(
        main,
        ["train", "rgb", "--videos", str(tiny_synth / "train.csv"), "--out", str(out),
         "--arch", "tsn", "--backbone", "resnet10t", "--segments", "2", "--frames", "1",
         "--size", "32", "--short-side", "40", "--epochs", "1", "--batch-size", "4",
         "--workers", "0", "--device", "cpu", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["precision"] == resolve_name("auto", CPU)
    state = torch.load(out / "best.pt", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    r = CliRunner().invoke(main, ["models", "info", str(out)])
    assert r.exit_code == 0 and f"trained in {cfg['precision']}" in r.output


def test_a_run_of_an_older_vidfeat_with_amp_still_reads(tmp_path: Path) -> None:
    from vidfeat.models.config import read_run_config

    for amp, want in ((False, "fp32"), (True, "auto")):
        p = tmp_path / f"config-{amp}.yaml"
        p.write_text(yaml.safe_dump({"modality": "rgb", "train": "t.csv", "val": None, "amp": amp}))
        assert read_run_config(p).precision == want


@needs_bf16
def test_raft_fields_record_their_precision_and_never_mix(clip: Path, tmp_path: Path) -> None:
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights = tmp_path / "raft.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)
    store = tmp_path / "store"

    def run(listing: str, precision: str) -> tuple[int, str]:
        r = CliRunner().invoke(
            main,
            ["extract", "flow", "--method", "raft", "--model", "small", "--num-flow-updates",
             "1", "--flow-weights", str(weights), "-T", "2", "-N", "1", "--short-side", "96",
             "--device", "cpu", "--videos", str(clip / listing), "--store", str(store),
             "--precision", precision, "--quiet"],
        )  # fmt: skip
        return r.exit_code, r.output

    code, text = run("list.csv", "fp32")
    assert code == 0, text
    fields = FeatureStore(store).open_set("raft-fields")
    assert fields.config["precision"] == "fp32"
    (clip / "c.mp4").write_bytes((clip / "a.mp4").read_bytes())
    (clip / "raft.csv").write_text("path,label\na.mp4,c0\nc.mp4,c0\n")
    code, text = run("raft.csv", "bf16")
    assert code != 0 and "precision" in text and "fp32" in text and "bf16" in text, text
    assert FeatureStore(store).open_set("raft-fields").ids() == ["a"]


@pytest.mark.parametrize("layout", ["stnet", "tsn"])
def test_uint8_crops_normalised_on_the_device_equal_the_dataset_s(layout: str, clip: Path) -> None:
    """The extractor and the trainer move uint8 crops and normalise them where the network
    runs: bit for bit what the dataset computes itself, with any mean and std."""
    from vidfeat.clips import ClipSpec, RGBClips
    from vidfeat.videolist import load_list

    vl = load_list(clip / "list.csv")
    for spec in (
        ClipSpec(3, 2, 48, 56, train=False),
        ClipSpec(3, 2, 48, 56, train=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)),
    ):
        ref = RGBClips(vl, spec, layout=layout)[0]["x"]
        fast = RGBClips(vl, spec, layout=layout, normalize=False)
        item = fast[0]["x"]
        assert item.dtype == torch.uint8 and item.shape == ref.shape
        assert torch.equal(fast.on_device(item[None])[0], ref)
        assert fast.on_device(ref) is ref  # an already normalised batch is left alone
