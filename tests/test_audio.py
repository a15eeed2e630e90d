"""VGGish audio: the log-mel frontend against its definition, the grid examples, codecs, the
network's weight names, the PCA postprocess, `vidfeat train audio` and `vidfeat extract audio`."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.signal import chirp, get_window

from conftest import moving_frames
from vidfeat.audio import (
    EXAMPLE_SAMPLES,
    PCAPostprocess,
    VGGish,
    examples_from_windows,
    grid_examples_from_file,
    grid_windows,
    load_vggish_weights,
    log_mel,
)
from vidfeat.cli import main
from vidfeat.decode import read_audio
from vidfeat.errors import ConfigError
from vidfeat.store import FeatureStore, verify_store
from vidfeat.synth import write_mp4

RATE = 16000


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


# --------------------------------------------------------------------------- the definition


def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """VGGish's log-mel written out from its definition, independently of vidfeat.audio: loops
    over frames and bands, scipy's periodic Hann, the HTK mel formula, triangles in mel."""
    win, hop, nfft, bands = 400, 160, 512, 64
    window = get_window("hann", win, fftbins=True)  # periodic
    n_frames = 1 + (len(wave) - win) // hop
    nbins = nfft // 2 + 1

    def mel(f: float) -> float:
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(125.0), mel(7500.0)
    edges = [lo + (hi - lo) * i / (bands + 1) for i in range(bands + 2)]
    weights = np.zeros((nbins, bands))
    for b in range(1, nbins):  # the DC bin keeps weight 0
        m = mel(b * RATE / 2 / (nbins - 1))
        for k in range(bands):
            left, centre, right = edges[k], edges[k + 1], edges[k + 2]
            if left < m <= centre:
                weights[b, k] = (m - left) / (centre - left)
            elif centre < m < right:
                weights[b, k] = (right - m) / (right - centre)
    out = np.empty((n_frames, bands))
    for i in range(n_frames):
        frame = np.zeros(nfft)
        frame[:win] = wave[i * hop : i * hop + win] * window
        mag = np.abs(np.fft.fft(frame))[:nbins]
        out[i] = np.log(mag @ weights + 0.01)
    return out


@pytest.mark.parametrize("signal", ["chirp", "white-noise"])
def test_log_mel_matches_the_vggish_definition(signal: str) -> None:
    t = np.arange(int(1.3 * RATE)) / RATE
    if signal == "chirp":
        wave = 0.5 * chirp(t, f0=60, t1=t[-1], f1=7900, method="logarithmic")
    else:
        wave = np.random.default_rng(0).uniform(-1, 1, len(t))
    got = log_mel(wave.astype(np.float32))
    want = reference_log_mel(wave.astype(np.float32).astype(np.float64))
    assert got.shape == want.shape == (1 + (len(t) - 400) // 160, 64)
    assert np.abs(got - want).max() < 1e-4


def test_a_tone_lights_the_band_of_its_frequency() -> None:
    t = np.arange(RATE) / RATE
    for f in (300.0, 1000.0, 4000.0):
        lm = log_mel(0.5 * np.sin(2 * np.pi * f * t))
        centres = 700 * np.expm1(
            np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)[1:-1] / 1127
        )
        assert abs(centres[lm.mean(0).argmax()] - f) < 0.08 * f


# --------------------------------------------------------------------------- on the grid


def test_grid_examples_are_centred_and_padded(bframe_video) -> None:
    path, _ = bframe_video  # 4.8 s, AAC at 44.1 kHz
    wave = read_audio(path, RATE)
    centres = np.array([0.1, 2.4, 4.75])  # the first and last windows leave the clip
    ex, has_audio, note = grid_examples_from_file(path, centres)
    assert has_audio and not note and ex.shape == (3, 96, 64) and ex.dtype == np.float32
    for k, c in enumerate(centres):
        start = int(round(c * RATE)) - EXAMPLE_SAMPLES // 2
        win = np.zeros(EXAMPLE_SAMPLES)
        lo, hi = max(start, 0), min(start + EXAMPLE_SAMPLES, len(wave))
        win[lo - start : hi - start] = wave[lo:hi]
        assert np.abs(ex[k] - log_mel(win)).max() < 1e-4, k
    # the edges are zero-padded: frames wholly before the clip are silence
    assert np.allclose(ex[0, :5], np.log(0.01), atol=1e-6)
    assert ex[1].max() > np.log(0.01) + 5  # the tone is there in the middle


def test_batched_examples_equal_one_log_mel_per_window() -> None:
    # 40 windows: more than one FFT group of 32
    w = np.random.default_rng(0).standard_normal((40, EXAMPLE_SAMPLES)).astype(np.float32)
    ex = examples_from_windows(w)
    assert ex.shape == (40, 96, 64)
    for t in (0, 31, 32, 39):
        np.testing.assert_array_equal(ex[t], log_mel(w[t]))


def test_a_clip_shorter_than_an_example_still_gives_t_examples(tmp_path: Path) -> None:
    path = tmp_path / "short.mp4"
    t = np.arange(int(0.4 * 44100)) / 44100
    write_mp4(path, moving_frames(6), 15, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    ex, has_audio, _ = grid_examples_from_file(path, np.array([0.05, 0.15, 0.25, 0.35]))
    assert has_audio and ex.shape == (4, 96, 64) and np.isfinite(ex).all()


def test_streaming_stops_after_the_last_window() -> None:
    consumed = []

    def chunks():
        for i in range(10_000):  # "a 10-minute track" of 1000-sample chunks, valued 1, 2, ...
            consumed.append(i)
            yield np.full(1000, i + 1, dtype=np.float32)

    windows, read = grid_windows(chunks(), np.array([0.2, 1.0]))
    assert windows.shape == (2, EXAMPLE_SAMPLES)
    # the last window ends at 1.0 s + 7,800 samples = sample 23,800: 24 chunks, then stop
    assert len(consumed) == 24 and read == 24_000
    # window 0 starts 4,600 samples before the audio: zero-padded, then chunk 1 at its place
    assert not windows[0, :4600].any() and windows[0, 4600] == 1 and windows[0, 5600] == 2
    assert windows[1, 0] == 9 and windows[1, -1] == 24  # samples 8,200 and 23,799


def _write_audio(path: Path, codec: str, wave: np.ndarray, rate: int, layout: str) -> None:
    """An audio-only file; FFmpeg's resampler converts to whatever the encoder takes."""
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=rate, layout=layout)
        if codec == "vorbis":
            s.codec_context.options = {"strict": "experimental"}
        conv = av.AudioResampler(
            format=s.codec_context.format.name,
            layout=layout,
            rate=rate,
            frame_size=s.codec_context.frame_size or 1024,
        )
        ch = 2 if layout == "stereo" else 1
        src = av.AudioFrame.from_ndarray(
            np.repeat(wave[None], ch, axis=0).astype(np.float32), format="fltp", layout=layout
        )
        src.sample_rate, src.pts, src.time_base = rate, 0, Fraction(1, rate)
        for frame in conv.resample(src) + conv.resample(None):
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


@pytest.mark.parametrize(
    "codec,suffix,rate,layout",
    [
        ("aac", ".m4a", 44100, "stereo"),
        ("libmp3lame", ".mp3", 44100, "mono"),
        ("libopus", ".opus", 48000, "stereo"),
        ("vorbis", ".ogg", 22050, "stereo"),
        ("pcm_s16le", ".wav", 8000, "mono"),
    ],
)
def test_codecs_decode_to_mono_16k(tmp_path: Path, codec, suffix, rate, layout) -> None:
    t = np.arange(2 * rate) / rate
    wave = 0.4 * np.sin(2 * np.pi * 1000.0 * t)
    path = tmp_path / f"tone{suffix}"
    _write_audio(path, codec, wave, rate, layout)
    got = read_audio(path, RATE)
    assert abs(len(got) - 2 * RATE) < 0.06 * RATE  # codec padding is a few ms
    mid = got[RATE // 2 : RATE // 2 + 4000].astype(np.float64)
    ref = np.sin(2 * np.pi * 1000.0 * np.arange(len(mid)) / RATE)
    # a 1 kHz tone of amplitude 0.4 (stereo averaged to the same amplitude), whatever the phase
    amp = np.hypot(mid @ ref, mid @ np.cos(2 * np.pi * 1000.0 * np.arange(len(mid)) / RATE))
    assert abs(2 * amp / len(mid) - 0.4) < 0.03, codec


# --------------------------------------------------------------------------- network


def test_vggish_is_the_published_network() -> None:
    net = VGGish()
    n = sum(p.numel() for p in net.parameters())
    assert n == 72_141_184  # VGGish's published parameter count
    names = sorted(net.state_dict())
    assert names[:2] == ["embeddings.0.bias", "embeddings.0.weight"]
    assert {k.split(".")[1] for k in names if k.startswith("features")} == {
        "0",
        "3",
        "6",
        "8",
        "11",
        "13",
    }
    assert net.state_dict()["embeddings.0.weight"].shape == (4096, 12288)
    x = torch.randn(3, 1, 96, 64)
    assert net(x).shape == (3, 128)
    post = VGGish(embedding="post-relu")
    post.load_state_dict(net.state_dict())
    with torch.no_grad():
        pre_out, post_out = net(x), post(x)
    assert (pre_out < 0).any() and torch.equal(post_out, torch.relu(pre_out))


def test_loading_weights_checks_names_and_shapes(tmp_path: Path) -> None:
    src = VGGish()
    good = tmp_path / "vggish.pth"
    torch.save(src.state_dict(), good)
    dst = VGGish()
    load_vggish_weights(dst, good)
    assert torch.equal(dst.features[0].weight, src.features[0].weight)

    bad = dict(src.state_dict())
    bad["embeddings.4.weight"] = torch.zeros(64, 4096)
    bad["features.99.weight"] = bad.pop("features.13.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConfigError) as e:
        load_vggish_weights(VGGish(), tmp_path / "bad.pth")
    msg = str(e.value)
    assert "features.13.weight" in msg and "features.99.weight" in msg
    assert "embeddings.4.weight (64, 4096)" in msg
    with pytest.raises(ConfigError, match="width"):
        load_vggish_weights(VGGish(width=0.25), good)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="refused"):
        load_vggish_weights(VGGish(), tmp_path / "evil.pth")


def test_pca_postprocess_is_the_audioset_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(128, 128)))
    means = rng.normal(size=128)
    torch.save(
        {"pca_eigen_vectors": torch.tensor(q), "pca_means": torch.tensor(means[:, None])},
        tmp_path / "pca.pth",
    )
    post = PCAPostprocess.from_file(tmp_path / "pca.pth")
    emb = rng.normal(size=(5, 128)) * 2
    out = post.apply(emb)
    assert out.dtype == np.uint8 and out.shape == (5, 128)
    pca = (emb - means) @ q.T
    want = ((np.clip(pca, -2, 2) + 2) * 255 / 4).astype(np.uint8)
    assert np.array_equal(out, want)
    deq = post.dequantize(out)
    # the YouTube-8M readers' mapping, half-bin term included: a value comes back as the
    # centre of its bin, within half a bin of the original (without the term: a whole bin)
    assert np.allclose(deq, out.astype(np.float64) * 4 / 255 + 4 / 512 - 2, atol=1e-6)
    assert np.abs(deq - np.clip(pca, -2, 2)).max() <= 2 / 255 + 1e-4
    np.savez(tmp_path / "pca.npz", pca_eigen_vectors=q, pca_means=means)
    assert np.array_equal(PCAPostprocess.from_file(tmp_path / "pca.npz").apply(emb), out)


# --------------------------------------------------------------------------- commands


def test_extract_audio_refuses_without_weights(tiny_synth: Path, tmp_path: Path) -> None:
    code, text = cli(
        "extract", "audio", "--videos", str(tiny_synth / "val.csv"), "--store", str(tmp_path)
    )
    assert code != 0
    assert "--checkpoint vggish-10086976.pth" in text and "vidfeat train audio" in text
    assert not (tmp_path / "audio").exists()


@pytest.fixture(scope="module")
def mixed_list(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The val videos plus one without an audio track and one with a silent track."""
    d = tmp_path_factory.mktemp("mixed")
    write_mp4(d / "noaudio.mp4", moving_frames(15, seed=4), 10, None)
    write_mp4(d / "silent.mp4", moving_frames(15, seed=5), 10, np.zeros(44100, np.float32))
    rows = (tiny_synth / "val.csv").read_text().splitlines()
    lines = [rows[0]] + [r.replace("videos/", f"{tiny_synth}/videos/", 1) for r in rows[1:]]
    label = lines[1].split(",")[1]
    lines += [f"{d}/{v}.mp4,{label},{v},val" for v in ("noaudio", "silent")]
    (d / "list.csv").write_text("\n".join(lines) + "\n")
    return d / "list.csv"


def test_random_init_smoke_run_stores_zeros_without_audio(mixed_list: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    code, text = cli(
        "extract", "audio", "--random-init", "--videos", str(mixed_list), "--store", str(store),
        "-T", "3", "--workers", "0", "--quiet",
    )  # fmt: skip
    assert code == 0, text  # a video without audio is not a failure
    assert "RANDOM weights" in text and "1 no audio track" in text
    fs = FeatureStore(store).open_set("audio")
    assert fs.config["random_init"] is True and fs.config["feature_shape"] == [3, 128]
    feats, attrs = fs.get("noaudio")
    assert feats.shape == (3, 128) and not feats.any() and attrs["has_audio"] is False
    assert attrs["note"] == "no audio track"
    feats, attrs = fs.get("silent")
    assert attrs["has_audio"] is True and feats.any()  # silence is real audio
    assert verify_store(store).ok


def test_undecodable_track_is_masked_not_failed(
    mixed_list: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vidfeat.decode as decode
    from vidfeat.errors import CorruptVideoError

    real = decode._audio_chunks

    def broken(path, rate):
        if "silent" in str(path):
            raise CorruptVideoError(path, "audio: Invalid data found when processing input")
        yield from real(path, rate)

    monkeypatch.setattr(decode, "_audio_chunks", broken)
    store = tmp_path / "store"
    code, text = cli(
        "extract", "audio", "--random-init", "--videos", str(mixed_list), "--store", str(store),
        "-T", "2", "--workers", "0", "--quiet",
    )  # fmt: skip
    assert code == 0, text
    assert "1 audio track failed to decode" in text
    feats, attrs = FeatureStore(store).open_set("audio").get("silent")
    assert attrs["has_audio"] is False and not feats.any() and "Invalid data" in attrs["note"]


@pytest.fixture(scope="module")
def audio_run(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "audio"
    code, text = cli(
        "train", "audio", "--videos", str(tiny_synth / "train.csv"),
        "--val", str(tiny_synth / "val.csv"), "--out", str(out), "--width", "0.125",
        "--segments", "2", "--epochs", "2", "--batch-size", "4", "--workers", "0",
        "--optimizer", "adamw", "--lr", "0.001", "--quiet",
    )  # fmt: skip
    assert code == 0, text
    return out


def test_train_audio_writes_a_run_folder(audio_run: Path) -> None:
    for f in ("config.yaml", "classes.txt", "best.pt", "last.pt", "metrics.jsonl", "curves.png"):
        assert (audio_run / f).exists(), f
    rows = [json.loads(x) for x in (audio_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "val_prec1" in rows[-1]


def test_extract_audio_with_a_trained_run(
    audio_run: Path, mixed_list: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    code, text = cli(
        "extract", "audio", "--checkpoint", str(audio_run), "--videos", str(mixed_list),
        "--store", str(store), "-T", "3", "--batch-size", "4", "--workers", "1", "--quiet",
    )  # fmt: skip
    assert code == 0, text
    fs = FeatureStore(store).open_set("audio")
    assert len(fs) == 6 and fs.config["checkpoint_sha256"] and fs.config["embedding"] == "pre-relu"
    scores = fs.get_extra("noaudio", "scores")
    assert np.allclose(scores, 1 / len(scores))  # no audio: no opinion
    vid = next(v for v in fs.ids() if v not in ("noaudio", "silent"))
    scores = fs.get_extra(vid, "scores")
    assert abs(scores.sum() - 1) < 1e-5 and not np.allclose(scores, 1 / len(scores))
    # resumable like every extraction: a rerun skips everything
    code, text = cli(
        "extract", "audio", "--checkpoint", str(audio_run), "--videos", str(mixed_list),
        "--store", str(store), "-T", "3", "--workers", "0", "--quiet",
    )  # fmt: skip
    assert code == 0 and "0 done, 6 skipped" in text
