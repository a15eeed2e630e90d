"""The built-in synthetic action dataset: real H.264 + AAC files whose ground truth we know.

Each class is a triple of cues, one per modality family:

* **appearance** — the colour of the moving object (seen in any single RGB frame);
* **motion** — how the object moves (right, left, up, down, ...); visible only across frames,
  because every video starts at a random phase of a wrap-around motion, so one frame's object
  position says nothing about the direction;
* **sound** — a tone pattern (steady low/high tone, rising/falling chirp, pulse rhythm).

Classes are laid out so that every single cue identifies only a *group* of classes: a model that
sees one cue has a known accuracy ceiling below 100%, and only combining modalities reaches the
top (the paper's fusion finding, built in). With the default 12 classes there are 4 colours,
4 motions and 4 sounds; class ``c`` of group ``g = c // 3`` (member ``j = c % 3``) has colour
``g``, motion ``g + [0, 0, 1][j]`` and sound ``g + j`` (mod 4). Ceilings (balanced classes):
appearance 4/12, appearance + motion 8/12, motion 4/12, sound 4/12, all cues 12/12.

Nuisances per video: object shape, size, speed and phase, background texture and colours, camera
jitter, pixel noise, a grey distractor moving at random, loudness, pitch jitter, noise floor.
About 5% of videos have no audio track at all, as in real data.

Everything is drawn from ``numpy.random.default_rng((seed, video number))``, and x264 runs
single-threaded without B-frames, so a seed always yields the same bytes.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from vidfeat import csvsafe
from vidfeat.errors import ConfigError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 215, 225),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
# unit velocity (dx, dy) per frame, or a rotation / zoom rate
MOTIONS: tuple[str, ...] = (
    "right",
    "left",
    "up",
    "down",
    "rotate-cw",
    "rotate-ccw",
    "zoom-in",
    "zoom-out",
)
SOUNDS: tuple[str, ...] = (
    "low-tone",
    "high-tone",
    "rising-chirp",
    "pulses",
    "falling-chirp",
    "mid-tone",
    "slow-pulses",
    "warble",
)
AUDIO_RATE = 22050  # written at 22.05 kHz so every reader exercises resampling to 16 kHz


@dataclass(frozen=True)
class SynthClass:
    index: int
    name: str
    colour: str
    motion: str
    sound: str


@dataclass(frozen=True)
class SynthConfig:
    classes: int = 12
    per_class: int = 24
    seconds: float = 3.0
    fps: int = 15
    size: int = 112
    seed: int = 0
    val_fraction: float = 0.25
    # a third split for honest reports: models are selected on val, reported on test (0: none)
    test_fraction: float = 0.0
    no_audio_fraction: float = 0.05  # videos written without any audio track

    def validate(self) -> None:
        groups = math.ceil(self.classes / 3)
        if not 4 <= self.classes <= 3 * min(len(COLOURS), len(MOTIONS), len(SOUNDS)):
            raise ConfigError(f"--classes must be between 4 and 24 (got {self.classes})")
        if groups > len(COLOURS):
            raise ConfigError("--classes too large for the cue vocabulary")
        if self.per_class < 2:
            raise ConfigError(f"--per-class must be >= 2 (got {self.per_class})")
        if not 0.25 <= self.seconds <= 600:
            raise ConfigError(f"--seconds must be in [0.25, 600] (got {self.seconds})")
        if not 1 <= self.fps <= 120:
            raise ConfigError(f"--fps must be in [1, 120] (got {self.fps})")
        if not 32 <= self.size <= 1080 or self.size % 2:
            raise ConfigError(f"--size must be an even number in [32, 1080] (got {self.size})")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in (0, 1) (got {self.val_fraction})")
        if not 0.0 <= self.test_fraction < 1.0 or self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"--test-fraction must be in [0, 1) and leave training videos next to "
                f"--val-fraction (got {self.test_fraction} + {self.val_fraction})"
            )
        n_val, n_test = self.split_sizes()
        if n_val + n_test >= self.per_class:
            raise ConfigError(
                f"--per-class {self.per_class} leaves no training video after {n_val} val and "
                f"{n_test} test videos per class; raise --per-class"
            )

    def split_sizes(self) -> tuple[int, int]:
        """Validation and test videos per class (at least one val; test only when asked)."""
        n_val = max(1, int(round(self.per_class * self.val_fraction)))
        n_test = (
            max(1, int(round(self.per_class * self.test_fraction))) if self.test_fraction else 0
        )
        return n_val, n_test


def class_design(num_classes: int) -> list[SynthClass]:
    """The cue triple of every class (see the module docstring for the layout)."""
    groups = math.ceil(num_classes / 3)
    out = []
    for c in range(num_classes):
        g, j = divmod(c, 3)
        colour = list(COLOURS)[g]
        motion = MOTIONS[(g + (0, 0, 1)[j]) % groups]
        sound = SOUNDS[(g + j) % groups]
        out.append(SynthClass(c, f"{colour}-{motion}-{sound}", colour, motion, sound))
    # class indices follow the sorted names, the project-wide convention
    out.sort(key=lambda k: k.name)
    return [SynthClass(i, k.name, k.colour, k.motion, k.sound) for i, k in enumerate(out)]


CUE_SETS: dict[str, tuple[str, ...]] = {
    "appearance (one RGB frame: TSN-RGB)": ("colour",),
    "appearance + motion (RGB clip: StNet)": ("colour", "motion"),
    "motion (optical flow)": ("motion",),
    "sound (audio)": ("sound",),
    "all cues (fusion)": ("colour", "motion", "sound"),
}


def ceilings(design: list[SynthClass], no_audio_fraction: float = 0.0) -> dict[str, float]:
    """Bayes accuracy of a model that sees exactly these cues, balanced classes.

    It equals (number of distinct cue tuples) / K. Videos without audio make the sound cue
    useless for them; the ``no_audio_fraction`` adjusts the sound and fusion ceilings.
    """
    K = len(design)
    out: dict[str, float] = {}
    for name, cues in CUE_SETS.items():
        distinct = len({tuple(getattr(c, q) for q in cues) for c in design})
        acc = distinct / K
        if "sound" in cues and no_audio_fraction > 0:
            rest = tuple(q for q in cues if q != "sound")
            silent = (
                len({tuple(getattr(c, q) for q in rest) for c in design}) / K if rest else 1 / K
            )
            acc = (1 - no_audio_fraction) * acc + no_audio_fraction * silent
        out[name] = acc
    return out


# --------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted random texture (noise, stripes or checks), float32 (h, w, 3)."""
    base = rng.uniform(60, 150, size=3)
    tint = rng.uniform(-25, 25, size=3)
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        noise = rng.standard_normal((h // 4 + 1, w // 4 + 1)).astype(np.float32)
        pattern = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC) * 0.5
    elif kind == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
        pattern = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    else:
        period = rng.uniform(8, 24)
        pattern = np.sign(np.sin(xx * np.pi / period) * np.sin(yy * np.pi / period)) * 0.6
    return np.clip(base + pattern[..., None] * tint, 0, 255).astype(np.float32)


def _shape_points(kind: int, radius: float, angle: float) -> np.ndarray:
    """Polygon (n, 2) around the origin. Asymmetric shapes so rotation shows."""
    if kind == 0:  # arrow-like
        pts = [(1.0, 0.0), (-0.6, 0.55), (-0.3, 0.0), (-0.6, -0.55)]
    elif kind == 1:  # bar with a notch
        pts = [(1.0, 0.35), (-1.0, 0.35), (-1.0, -0.35), (0.4, -0.35), (0.4, -0.1), (1.0, -0.1)]
    else:  # L shape
        pts = [(1.0, -1.0), (1.0, -0.4), (-0.4, -0.4), (-0.4, 1.0), (-1.0, 1.0), (-1.0, -1.0)]
    p = np.asarray(pts, dtype=np.float64) * radius
    c, s = math.cos(angle), math.sin(angle)
    return p @ np.array([[c, s], [-s, c]])


@dataclass
class _Clip:
    frames: np.ndarray  # (F, H, W, 3) uint8
    audio: np.ndarray | None  # (S,) float32 at AUDIO_RATE
    nuisance: dict


@dataclass(frozen=True)
class Actor:
    """The object of one class performing its motion: what a trimmed clip shows throughout,
    and an untrimmed video during each of its actions (:mod:`vidfeat.synth_untrimmed`)."""

    motion: str
    colour: tuple[float, float, float]  # RGB, the class colour dimmed by a random factor
    shape: int
    radius: float  # px
    speed: float  # px per frame
    x0: float
    y0: float
    angle0: float
    phase: float  # of the zoom saw-tooth

    def draw(self, img: np.ndarray, f: int) -> None:
        """Draw the object as it is ``f`` frames after it appeared on ``img`` (S, S, 3)."""
        S = img.shape[0]
        x, y, ang, r = self.x0, self.y0, self.angle0, self.radius
        m, speed, radius = self.motion, self.speed, self.radius
        if m in ("right", "left", "up", "down"):
            v = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}[m]
            x, y = self.x0 + v[0] * speed * f, self.y0 + v[1] * speed * f
        elif m in ("rotate-cw", "rotate-ccw"):
            ang = self.angle0 + (1 if m == "rotate-cw" else -1) * speed / radius * 1.5 * f
        else:  # zoom: a saw-tooth scale with random phase, so one frame shows no trend
            rate = speed / (S * 0.5)
            t = (self.phase + f * rate) % 1.0
            scale = 0.6 + 0.8 * (t if m == "zoom-in" else 1 - t)
            r = radius * scale
        pts = _shape_points(self.shape, r, ang)
        for ox in (-S, 0, S):  # wrap-around: draw the copies that straddle the borders
            for oy in (-S, 0, S):
                cx, cy = (x % S) + ox, (y % S) + oy
                if -2 * r < cx < S + 2 * r and -2 * r < cy < S + 2 * r:
                    poly = np.round((pts + (cx, cy)) * 16).astype(np.int32)
                    cv2.fillPoly(img, [poly], list(self.colour), cv2.LINE_AA, shift=4)


def draw_actor(klass: SynthClass, size: int, fps: float, rng: np.random.Generator) -> Actor:
    """A random instance of ``klass``'s object: shape, size, speed, start position and phase."""
    colour = np.array(COLOURS[klass.colour], dtype=np.float64) * rng.uniform(0.85, 1.0)
    shape = int(rng.integers(3))
    radius = size * rng.uniform(0.13, 0.2)
    speed = size * rng.uniform(0.025, 0.04) * 15.0 / fps  # px per frame, same per-second speed
    x0, y0 = rng.uniform(0, size, size=2)
    angle0 = rng.uniform(0, 2 * np.pi)
    phase = rng.uniform(0, 1)
    return Actor(klass.motion, tuple(colour.tolist()), shape, radius, speed, x0, y0, angle0, phase)


@dataclass(frozen=True)
class Distractor:
    """A grey blob drifting in a random direction (never a class colour)."""

    direction: float
    speed: float  # px per frame
    x0: float
    y0: float

    def draw(self, img: np.ndarray, f: int) -> None:
        S = img.shape[0]
        gx = (self.x0 + f * self.speed * math.cos(self.direction)) % S
        gy = (self.y0 + f * self.speed * math.sin(self.direction)) % S
        cv2.circle(img, (int(gx), int(gy)), max(2, S // 22), (200.0, 200.0, 200.0), -1, cv2.LINE_AA)


def draw_distractor(size: int, rng: np.random.Generator) -> Distractor:
    direction = rng.uniform(0, 2 * np.pi)
    speed = size * rng.uniform(0.01, 0.03)
    x0, y0 = rng.uniform(0, size, size=2)
    return Distractor(direction, speed, x0, y0)


def compose_frame(
    bg: np.ndarray,
    shift: tuple[int, int],
    distractor: Distractor,
    f: int,
    actor: Actor | None,
    actor_frame: int,
    noise: np.ndarray,
) -> np.ndarray:
    """Frame ``f`` of a scene: the (S + 2 pad)² background ``bg`` cropped at ``pad + shift``
    (camera jitter), the distractor, the actor (if any) ``actor_frame`` frames into its action,
    plus pixel ``noise`` (S, S, 3) float32. Returns (S, S, 3) uint8."""
    S = noise.shape[0]
    pad = (bg.shape[0] - S) // 2
    jx, jy = shift
    img = bg[pad + jy : pad + jy + S, pad + jx : pad + jx + S].copy()
    distractor.draw(img, f)
    if actor is not None:
        actor.draw(img, actor_frame)
    img += noise
    return np.clip(img, 0, 255).astype(np.uint8)


def render_clip(klass: SynthClass, cfg: SynthConfig, rng: np.random.Generator) -> _Clip:
    """Frames and sound of one video of ``klass``."""
    S, F = cfg.size, max(2, int(round(cfg.seconds * cfg.fps)))
    pad = max(4, S // 16)  # room for camera jitter
    bg = _background(rng, S + 2 * pad, S + 2 * pad)
    actor = draw_actor(klass, S, cfg.fps, rng)
    noise_sigma = rng.uniform(2.0, 6.0)
    distractor = draw_distractor(S, rng)
    jitter = np.cumsum(rng.normal(0, 0.6, size=(F, 2)), axis=0)
    jitter = np.clip(jitter - jitter.mean(axis=0), -pad + 1, pad - 1)

    frames = np.empty((F, S, S, 3), dtype=np.uint8)
    for f in range(F):
        shift = int(round(jitter[f, 0])), int(round(jitter[f, 1]))
        noise = rng.normal(0, noise_sigma, size=(S, S, 3)).astype(np.float32)
        frames[f] = compose_frame(bg, shift, distractor, f, actor, f, noise)

    audio = None
    if rng.uniform() >= cfg.no_audio_fraction:
        audio = render_sound(klass.sound, cfg.seconds, rng)
    nuisance = {
        "shape": actor.shape,
        "radius": round(actor.radius, 2),
        "speed": round(actor.speed, 3),
        "noise_sigma": round(noise_sigma, 2),
    }
    return _Clip(frames, audio, nuisance)


def render_sound(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    sr = AUDIO_RATE
    t = np.arange(int(round(seconds * sr)), dtype=np.float64) / sr
    pitch = rng.uniform(0.95, 1.05)  # pitch jitter
    offset = rng.uniform(0, 1)  # phase of periodic patterns
    period = 0.5

    def tone(f0: float | np.ndarray) -> np.ndarray:
        ph = 2 * np.pi * np.cumsum(np.broadcast_to(f0 * pitch, t.shape)) / sr
        return np.sin(ph) + 0.3 * np.sin(2 * ph)

    if kind == "low-tone":
        y = tone(300.0)
    elif kind == "high-tone":
        y = tone(1800.0)
    elif kind == "mid-tone":
        y = tone(800.0)
    elif kind in ("rising-chirp", "falling-chirp"):
        u = ((t / period) + offset) % 1.0
        if kind == "falling-chirp":
            u = 1.0 - u
        y = tone(400.0 * (4.0**u))  # 400 → 1600 Hz, log sweep each half second
    elif kind in ("pulses", "slow-pulses"):
        rate = 4.0 if kind == "pulses" else 1.5
        gate = (((t * rate) + offset) % 1.0) < 0.35
        y = tone(650.0) * gate
    elif kind == "warble":
        y = tone(900.0 + 250.0 * np.sin(2 * np.pi * 6.0 * t + offset * 2 * np.pi))
    else:
        raise ConfigError(f"unknown sound {kind!r}")
    loud = rng.uniform(0.1, 0.45)
    noise = rng.normal(0, rng.uniform(0.002, 0.02), size=t.shape)
    return (loud * y / 1.3 + noise).astype(np.float32)


# --------------------------------------------------------------------------- encoding


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: int | Fraction,
    audio: np.ndarray | None = None,
    audio_rate: int = AUDIO_RATE,
    **options: Any,
) -> None:
    """Encode ``frames`` (F, H, W, 3) uint8 RGB (even H, W) as H.264 (+ mono ``audio``) in MP4;
    ``options`` are those of :func:`write_mp4_stream`."""
    H, W = frames.shape[1:3]
    write_mp4_stream(path, iter(frames), (H, W), fps, audio, audio_rate, **options)


def write_mp4_stream(
    path: str | Path,
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    fps: int | Fraction,
    audio: np.ndarray | None = None,
    audio_rate: int = AUDIO_RATE,
    *,
    gop: int | None = None,
    bframes: int = 2,
    crf: int = 18,
    audio_codec: str = "aac",
    audio_layout: str = "mono",
    faststart: bool = False,
    mbtree: bool = False,
) -> None:
    """Encode ``frames``, (H, W, 3) uint8 RGB arrays of ``size`` = (H, W) (even), one at a
    time as they come (a long video need not fit in memory), as H.264 (+ mono ``audio``:
    samples, or chunks of them, encoded after the frames) in MP4.

    ``gop`` defaults to one keyframe per second, which makes seeking meaningful on longer clips;
    ``faststart`` puts the index (moov) first, as web-optimised files do. x264 (through PyAV 18)
    was seen to vary its output from run to run with B-frames, so the synthetic dataset is
    written without them. The cause is its macroblock-tree rate control: at some frame sizes
    (128×170 and 128×176, not 64×64 or 112×112) its lookahead reads uninitialised memory
    (valgrind), with or without B-frames, so the bytes depend on what the process ran before.
    So it is off by default (``mbtree=False``): the bytes depend only on the input, at any
    size, and a rerun writes the same files; ``mbtree=True`` turns it on again.
    """
    H, W = size
    opts = {"movflags": "faststart"} if faststart else {}
    x264 = {} if mbtree else {"mbtree": "0"}
    with av.open(str(path), mode="w", format="mp4", options=opts) as out:
        vs = out.add_stream(
            "libx264",
            rate=fps,
            options={
                "crf": str(crf),
                "preset": "veryfast",
                "bf": str(bframes),
                "g": str(gop if gop is not None else max(1, int(round(float(fps))))),
                "keyint_min": "1",
                "sc_threshold": "0",
                **x264,
            },
        )
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        # PyAV defaults to sliced threads, which also make x264's output vary
        vs.codec_context.thread_type = "NONE"
        vs.codec_context.thread_count = 1
        aus = None
        if audio is not None:
            aus = out.add_stream(audio_codec, rate=audio_rate, layout=audio_layout)
        time_base = Fraction(1, 1) / Fraction(fps)
        for f, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = f, time_base
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        if aus is not None:
            _encode_audio(out, aus, audio, audio_rate, audio_layout)


def _encode_audio(out, stream, audio, rate: int, layout: str) -> None:
    """Encode ``audio``, (S,) or (channels, S) float samples, or an iterable of such chunks (a
    long track made while it is encoded), in frames of the codec's size; the same frames, so
    the same bytes, however the track is chunked."""
    channels = 2 if layout == "stereo" else 1
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    frame_size = stream.codec_context.frame_size or 1024
    # the encoder may read a frame's samples after encode() returns: the last frames are kept
    # alive (a few frames of delay; an hour of frames would hold the whole track)
    alive: deque = deque(maxlen=256)
    pos = 0
    rest = np.zeros((channels, 0), np.float32)
    for part in [audio] if isinstance(audio, np.ndarray) else audio:
        data = np.asarray(part, dtype=np.float32)
        if data.ndim == 1:  # mono: a view, not a copy
            data = data[None, :] if channels == 1 else np.repeat(data[None, :], channels, axis=0)
        if rest.shape[1]:
            data = np.concatenate([rest, data], axis=1)
        whole = data.shape[1] - data.shape[1] % frame_size
        for k in range(0, whole, frame_size):
            chunk = data[:, k : k + frame_size]
            alive.append(_audio_frame(out, stream, chunk, pos, fmt, layout, rate))
            pos += frame_size
        rest = data[:, whole:]
    if rest.shape[1]:
        alive.append(_audio_frame(out, stream, rest, pos, fmt, layout, rate))
    for packet in stream.encode(None):
        out.mux(packet)


def _audio_frame(out, stream, chunk: np.ndarray, pos: int, fmt: str, layout: str, rate: int):
    """Encode one frame of samples ``chunk`` (channels, n) at sample ``pos``; what must stay
    alive while the encoder may read it."""
    if fmt.endswith("p"):
        arr = np.ascontiguousarray(chunk)
    else:
        arr = np.ascontiguousarray(chunk.T.reshape(1, -1))
    if "s16" in fmt:
        arr = np.clip(arr * 32767, -32768, 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout=layout)
    frame.sample_rate = rate
    frame.pts = pos
    for packet in stream.encode(frame):
        out.mux(packet)
    return arr, frame


# --------------------------------------------------------------------------- dataset


@dataclass
class SynthReport:
    out: Path
    videos: int
    train: int
    val: int
    without_audio: int
    seconds: float
    test: int = 0


def _split_of(i: int, cfg: SynthConfig) -> str:
    """The last n_test videos of each class are test, the n_val before them validation:
    stratified and deterministic."""
    n_val, n_test = cfg.split_sizes()
    if i >= cfg.per_class - n_test:
        return "test"
    if i >= cfg.per_class - n_test - n_val:
        return "val"
    return "train"


def _render_all(out: Path, cfg: SynthConfig, design: list, progress: bool) -> list[dict]:
    """Render and encode every video under ``out/videos``; one metadata row per video."""
    from tqdm import tqdm

    rows: list[dict] = []
    jobs = [(k, i) for k in design for i in range(cfg.per_class)]
    for klass, i in tqdm(jobs, desc="synth", unit="video", disable=not progress):
        number = klass.index * cfg.per_class + i
        rng = np.random.default_rng([cfg.seed, number])
        clip = render_clip(klass, cfg, rng)
        vid = f"{klass.name}_{i:03d}"
        rel = f"videos/{vid}.mp4"
        write_mp4(out / rel, clip.frames, cfg.fps, clip.audio, bframes=0)
        rows.append(
            {
                "video_id": vid,
                "path": rel,
                "label": klass.name,
                "split": _split_of(i, cfg),
                "colour": klass.colour,
                "motion": klass.motion,
                "sound": klass.sound,
                "has_audio": clip.audio is not None,
                **clip.nuisance,
            }
        )
    return rows


def _write_lists(out: Path, rows: list[dict], splits: list[str]) -> None:
    """One list per split, ``all.csv`` (their union: what one extracts) and metadata.csv."""
    for split in (*splits, "all"):
        with open(out / f"{split}.csv", "w", newline="") as fh:
            w = csvsafe.writer(fh)
            w.writerow(["path", "label", "video_id", "split"])
            for r in rows:
                if split in ("all", r["split"]):
                    w.writerow([r["path"], r["label"], r["video_id"], r["split"]])
    with open(out / "metadata.csv", "w", newline="") as fh:
        w = csvsafe.dict_writer(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def generate(out: str | Path, cfg: SynthConfig, progress: bool = True) -> SynthReport:
    """Write the dataset under ``out`` (videos/, train.csv, val.csv, test.csv when
    ``test_fraction`` > 0, all.csv (their union), classes.txt, README.txt, synth.json,
    metadata.csv). Rerunning with the same options rewrites identical files."""
    import time

    cfg.validate()
    t0 = time.perf_counter()
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    design = class_design(cfg.classes)
    _, n_test = cfg.split_sizes()
    rows = _render_all(out, cfg, design, progress)
    _write_lists(out, rows, ["train", "val"] + (["test"] if n_test else []))
    (out / "classes.txt").write_text("".join(k.name + "\n" for k in design))
    without_audio = sum(not r["has_audio"] for r in rows)
    ceil = ceilings(design, without_audio / len(rows))
    meta = {
        "config": asdict(cfg),
        "classes": [asdict(k) for k in design],
        "ceilings": ceil,
        "ceilings_all_audio": ceilings(design, 0.0),
        "videos": len(rows),
        "without_audio": without_audio,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.txt").write_text(_readme(cfg, design, ceil, without_audio, len(rows)))
    count = {sp: sum(r["split"] == sp for r in rows) for sp in ("train", "val", "test")}
    return SynthReport(
        out,
        len(rows),
        count["train"],
        count["val"],
        without_audio,
        time.perf_counter() - t0,
        count["test"],
    )


def load_ceilings(root: str | Path) -> dict[str, float]:
    """The per-modality ceilings a synthetic dataset states (from its synth.json)."""
    return json.loads((Path(root) / "synth.json").read_text())["ceilings"]


def _readme(
    cfg: SynthConfig,
    design: list[SynthClass],
    ceil: dict[str, float],
    without_audio: int,
    total: int,
) -> str:
    lines = [
        "vidfeat synthetic action dataset",
        "================================",
        "",
        f"{cfg.classes} classes x {cfg.per_class} videos, {cfg.seconds:g} s at {cfg.fps} fps, "
        f"{cfg.size}x{cfg.size} px, H.264 video + AAC audio ({AUDIO_RATE} Hz mono), "
        f"seed {cfg.seed}.",
        (
            f"Split: train.csv / val.csv / test.csv (val fraction {cfg.val_fraction:g}, test "
            f"fraction {cfg.test_fraction:g}, stratified): select models on val, report on test."
            if cfg.test_fraction
            else f"Split: train.csv / val.csv (val fraction {cfg.val_fraction:g}, stratified)."
        ),
        "all.csv lists every video (the union of the splits): extract features with it.",
        f"{without_audio} of {total} videos have no audio track.",
        "",
        "Each class is a triple of cues: the object's colour (appearance, one frame shows it),",
        "its motion (only visible across frames: every video starts at a random phase of a",
        "wrap-around motion) and a sound pattern. Each single cue identifies only a group of",
        "classes; all three together identify the class.",
        "",
        "Classes (index, name: colour / motion / sound):",
    ]
    for k in design:
        lines.append(f"  {k.index:2d}  {k.name}: {k.colour} / {k.motion} / {k.sound}")
    lines += [
        "",
        "Accuracy ceilings (Bayes accuracy of a model that sees only these cues; the sound",
        "ceilings account for the videos without audio):",
    ]
    for name, acc in ceil.items():
        lines.append(f"  {name:40s} {100 * acc:5.1f}%")
    lines += [
        "",
        "Nuisances: object shape/size/speed/phase, background texture and colours, camera",
        "jitter, pixel noise, a grey distractor blob, loudness, pitch jitter, noise floor.",
        "metadata.csv lists every video's cues and nuisances; synth.json the design.",
        "",
    ]
    return "\n".join(lines)
