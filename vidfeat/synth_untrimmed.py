"""The synthetic untrimmed dataset: long videos in which the synthetic actions occur in known
intervals, with an annotation file in the ActivityNet / THUMOS JSON form.

Each video is one scene of :mod:`vidfeat.synth` (a background texture, camera jitter, pixel
noise, the grey distractor, a quiet noise floor) that lasts 20–120 s by default. Over it, several
actions of a few seconds each take place, one at a time, with background between them: during
an action the object of a class (its colour and motion) is drawn exactly as in a trimmed clip,
and the class's sound plays; outside every action there is no object and no tone. The classes
are those of the trimmed set with the same ``--classes`` (sorted names, same indices), drawn at
the same ``--size`` and ``--fps``, so a network trained on the trimmed set recognises them.

Action boundaries are frame-exact: frame k spans ``[k/fps, (k+1)/fps)``, and an action drawn
on frames a … b-1 is annotated ``"segment": [a/fps, b/fps]`` (``"segment_frames": [a, b]``
too). The annotation file ``annotations.json`` is what ActionFormer's THUMOS / ActivityNet
loaders and their evaluation read: ``database.<id>.subset`` (``validation`` to fit a localiser
on, ``test`` to report on: THUMOS' naming), ``duration``, ``fps`` and ``annotations`` (a list,
possibly empty, of ``segment``, ``label``, ``label_id``).

Each video draws from its own random streams, ``SeedSequence((seed, 21, number))``: a video's
content depends on the seed, its number, classes, size, fps and the length range, not on how
many videos are written. Frames are rendered and encoded one at a time (an hour-long video need
not fit in memory), with x264 single-threaded and without B-frames as in :mod:`vidfeat.synth`,
so a seed always yields the same bytes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vidfeat import csvsafe
from vidfeat.errors import ConfigError
from vidfeat.synth import (
    AUDIO_RATE,
    Actor,
    SynthClass,
    SynthConfig,
    _background,
    class_design,
    compose_frame,
    draw_actor,
    draw_distractor,
    render_sound,
    write_mp4_stream,
)

STREAM = 21  # tags the untrimmed videos' random streams apart from the trimmed clips'
ACTION_SECONDS = (2.0, 6.0)  # "a few seconds": more than one trimmed clip (3 s by default)
GAP_SECONDS = (1.0, 6.0)  # background before, between and after the actions
MAX_SECONDS = 4 * 3600.0
# the shortest video that always has room for one action: the longest leading gap, the
# longest action, the shortest trailing gap
MIN_SECONDS = GAP_SECONDS[1] + ACTION_SECONDS[1] + GAP_SECONDS[0]
SUBSETS = ("validation", "test")  # THUMOS' names: fit a localiser on validation, report on test


@dataclass(frozen=True)
class UntrimmedConfig:
    classes: int = 12
    videos: int = 8
    min_seconds: float = 20.0
    max_seconds: float = 120.0
    fps: int = 15
    size: int = 112
    seed: int = 0
    # share of the videos in the test subset, the rest in validation (THUMOS' split names)
    test_fraction: float = 0.5

    def trimmed(self) -> SynthConfig:
        """The trimmed set whose classes (and drawing) these videos share."""
        return SynthConfig(classes=self.classes, fps=self.fps, size=self.size, seed=self.seed)

    def validate(self) -> None:
        self.trimmed().validate()  # --classes, --fps, --size, as the trimmed set checks them
        if not 1 <= self.videos <= 100_000:
            raise ConfigError(f"--videos must be in [1, 100000] (got {self.videos})")
        if not MIN_SECONDS <= self.min_seconds <= self.max_seconds <= MAX_SECONDS:
            raise ConfigError(
                f"--min-seconds and --max-seconds need {MIN_SECONDS:g} <= --min-seconds <= "
                f"--max-seconds <= {MAX_SECONDS:g} (got {self.min_seconds:g} and "
                f"{self.max_seconds:g}); {MIN_SECONDS:g} s always leave room for one action"
            )
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"--test-fraction must be in [0, 1) (got {self.test_fraction})")

    def test_videos(self) -> int:
        return int(round(self.videos * self.test_fraction))


@dataclass(frozen=True)
class Action:
    """One action of a video: ``klass`` drawn on frames ``start`` … ``end - 1``."""

    start: int
    end: int
    klass: SynthClass

    def segment(self, fps: float) -> list[float]:
        """``[start, end]`` in seconds: the first frame's start, the last frame's end."""
        return [self.start / fps, self.end / fps]


@dataclass(frozen=True)
class VideoPlan:
    number: int
    video_id: str
    subset: str
    num_frames: int
    actions: tuple[Action, ...]

    @property
    def path(self) -> str:
        return f"videos/{self.video_id}.mp4"


def _streams(cfg: UntrimmedConfig, number: int) -> list[np.random.Generator]:
    """The layout, scene, pixel-noise, noise-floor and action-sound streams of video
    ``number``."""
    seq = np.random.SeedSequence([cfg.seed, STREAM, number])
    return [np.random.default_rng(s) for s in seq.spawn(5)]


def plan_video(cfg: UntrimmedConfig, design: list[SynthClass], number: int) -> VideoPlan:
    """Length, actions and subset of video ``number``. Classes are dealt from shuffled decks,
    so within a video they are as balanced as its number of actions allows."""
    rng = _streams(cfg, number)[0]
    fps = cfg.fps
    frames = int(round(rng.uniform(cfg.min_seconds, cfg.max_seconds) * fps))

    def span(bounds: tuple[float, float]) -> int:
        return max(1, int(round(rng.uniform(*bounds) * fps)))

    min_gap = int(math.ceil(GAP_SECONDS[0] * fps))
    actions: list[Action] = []
    deck: list[int] = []
    t = span(GAP_SECONDS)
    while True:
        length = span(ACTION_SECONDS)
        if t + length + min_gap > frames:
            break
        deck = deck or rng.permutation(len(design)).tolist()
        actions.append(Action(t, t + length, design[deck.pop()]))
        t += length + max(min_gap, span(GAP_SECONDS))
    subset = "test" if number >= cfg.videos - cfg.test_videos() else "validation"
    return VideoPlan(number, f"video_{number:05d}", subset, frames, tuple(actions))


def _jitter(rng: np.random.Generator, frames: int, pad: int) -> np.ndarray:
    """Camera jitter (frames, 2) in px: a mean-reverting walk (a trimmed clip's plain random
    walk would drift to the clip edges over minutes), about as large as a clip's."""
    steps = rng.normal(0, 0.6, size=(frames, 2))
    out = np.empty_like(steps)
    j = np.zeros(2)
    for f in range(frames):
        j = 0.97 * j + steps[f]
        out[f] = j
    return np.clip(np.round(out), -pad + 1, pad - 1).astype(np.int64)


def render_frames(
    plan: VideoPlan, cfg: UntrimmedConfig, scene: np.random.Generator, noise: np.random.Generator
) -> Iterator[np.ndarray]:
    """The frames (S, S, 3) uint8 of ``plan``, one at a time: the scene throughout, the actor
    of an action on that action's frames only."""
    S = cfg.size
    pad = max(4, S // 16)  # room for camera jitter, as in a trimmed clip
    bg = _background(scene, S + 2 * pad, S + 2 * pad)
    sigma = np.float32(scene.uniform(2.0, 6.0))
    distractor = draw_distractor(S, scene)
    jitter = _jitter(scene, plan.num_frames, pad)
    actors: list[Actor] = [draw_actor(a.klass, S, cfg.fps, scene) for a in plan.actions]
    k = 0
    for f in range(plan.num_frames):
        while k < len(plan.actions) and f >= plan.actions[k].end:
            k += 1
        on = k < len(plan.actions) and plan.actions[k].start <= f
        actor = actors[k] if on else None
        shift = int(jitter[f, 0]), int(jitter[f, 1])
        pixel_noise = noise.standard_normal((S, S, 3), dtype=np.float32) * sigma
        start = plan.actions[k].start if on else f
        yield compose_frame(bg, shift, distractor, f, actor, f - start, pixel_noise)


def render_soundtrack(
    plan: VideoPlan,
    fps: int,
    floor: np.random.Generator,
    sounds: np.random.Generator,
    chunk_seconds: float = 10.0,
) -> Iterator[np.ndarray]:
    """The track at AUDIO_RATE in float32 chunks of ``chunk_seconds`` (an hour-long track need
    not be held whole): a quiet noise floor (from ``floor``), and each action's sound (from
    ``sounds``, drawn in action order) on exactly its frames' samples."""
    n = int(round(plan.num_frames * AUDIO_RATE / fps))
    sigma = np.float32(floor.uniform(0.002, 0.006))
    bounds = [[int(round(x * AUDIO_RATE / fps)) for x in (a.start, a.end)] for a in plan.actions]
    step = int(chunk_seconds * AUDIO_RATE)
    k, sound = 0, None  # the next action to reach, and its sound once rendered
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        chunk = floor.standard_normal(c1 - c0, dtype=np.float32) * sigma
        while k < len(bounds) and bounds[k][0] < c1:
            s0, s1 = bounds[k]
            if sound is None:
                sound = render_sound(plan.actions[k].klass.sound, (s1 - s0) / AUDIO_RATE, sounds)
            lo, hi = max(s0, c0), min(s1, c1)
            chunk[lo - c0 : hi - c0] += sound[lo - s0 : hi - s0]
            if s1 > c1:  # it goes on in the next chunk
                break
            k, sound = k + 1, None
        yield chunk


def annotation_entry(plan: VideoPlan, fps: int) -> dict:
    """The video's record in ``annotations.json`` (ActivityNet / THUMOS form)."""
    return {
        "subset": plan.subset,
        "duration": plan.num_frames / fps,
        "fps": float(fps),
        "num_frames": plan.num_frames,
        "annotations": [
            {
                "segment": a.segment(fps),
                "segment_frames": [a.start, a.end],
                "label": a.klass.name,
                "label_id": a.klass.index,
            }
            for a in plan.actions
        ],
    }


@dataclass
class UntrimmedReport:
    out: Path
    videos: int
    subsets: dict[str, int]
    actions: int
    video_seconds: float  # the length of all videos together
    seconds: float  # wall time of the generation

    def summary(self) -> str:
        split = ", ".join(f"{n} {s}" for s, n in self.subsets.items() if n)
        rate = self.video_seconds / max(self.seconds, 1e-9)
        return (
            f"synth --untrimmed: {self.videos} videos ({split}), {self.video_seconds / 60:.1f} min "
            f"of video with {self.actions} actions in {self.seconds:.1f}s ({rate:.0f}x real time) "
            f"-> {self.out} (see {self.out / 'README.txt'})"
        )


def generate_untrimmed(
    out: str | Path, cfg: UntrimmedConfig, progress: bool = True
) -> UntrimmedReport:
    """Write the dataset under ``out``: videos/, annotations.json, all.csv (every video:
    path,video_id,split), validation.csv / test.csv, classes.txt, synth.json, README.txt.
    Rerunning with the same options rewrites identical files."""
    from tqdm import tqdm

    cfg.validate()
    t0 = time.perf_counter()
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    design = class_design(cfg.classes)
    plans = [plan_video(cfg, design, v) for v in range(cfg.videos)]
    total = sum(p.num_frames for p in plans)
    with tqdm(total=total, desc="synth untrimmed", unit="frame", disable=not progress) as bar:
        for plan in plans:
            _, scene, noise, floor, sounds = _streams(cfg, plan.number)
            audio = render_soundtrack(plan, cfg.fps, floor, sounds)
            frames = render_frames(plan, cfg, scene, noise)
            write_mp4_stream(
                out / plan.path, _counted(frames, bar), (cfg.size, cfg.size), cfg.fps, audio,
                bframes=0,
            )  # fmt: skip
    database = {p.video_id: annotation_entry(p, cfg.fps) for p in plans}
    classes = [k.name for k in design]
    annotations = {"version": "vidfeat synth --untrimmed", "classes": classes, "database": database}
    (out / "annotations.json").write_text(json.dumps(annotations, indent=1) + "\n")
    _write_lists(out, plans)
    (out / "classes.txt").write_text("".join(c + "\n" for c in classes))
    meta = {
        "config": asdict(cfg),
        "classes": [asdict(k) for k in design],
        "action_seconds": ACTION_SECONDS,
        "gap_seconds": GAP_SECONDS,
        "videos": len(plans),
        "actions": sum(len(p.actions) for p in plans),
        "seconds": total / cfg.fps,
        "action_share": sum(a.end - a.start for p in plans for a in p.actions) / total,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.txt").write_text(_readme(cfg, design, meta))
    return UntrimmedReport(
        out,
        len(plans),
        {s: sum(p.subset == s for p in plans) for s in SUBSETS},
        meta["actions"],
        total / cfg.fps,
        time.perf_counter() - t0,
    )


def _counted(frames: Iterator[np.ndarray], bar) -> Iterator[np.ndarray]:
    for f in frames:
        yield f
        bar.update(1)


def _write_lists(out: Path, plans: list[VideoPlan]) -> None:
    """all.csv and one list per non-empty subset; no label column (an untrimmed video has
    none: its actions are in annotations.json)."""
    for name in ("all", *SUBSETS):
        rows = [p for p in plans if name in ("all", p.subset)]
        if not rows:
            continue
        with open(out / f"{name}.csv", "w", newline="") as fh:
            w = csvsafe.writer(fh)
            w.writerow(["path", "video_id", "split"])
            w.writerows([p.path, p.video_id, p.subset] for p in rows)


def _readme(cfg: UntrimmedConfig, design: list[SynthClass], meta: dict) -> str:
    n_test = cfg.test_videos()
    lines = [
        "vidfeat synthetic untrimmed action dataset",
        "==========================================",
        "",
        f"{cfg.videos} videos of {cfg.min_seconds:g}-{cfg.max_seconds:g} s "
        f"({meta['seconds'] / 60:.1f} min in all) at {cfg.fps} fps, {cfg.size}x{cfg.size} px, "
        f"H.264 video + AAC audio ({AUDIO_RATE} Hz mono), seed {cfg.seed}.",
        f"{meta['actions']} actions of {ACTION_SECONDS[0]:g}-{ACTION_SECONDS[1]:g} s, one at a "
        f"time, with {GAP_SECONDS[0]:g}-{GAP_SECONDS[1]:g} s of background before, between and "
        f"after them ({100 * meta['action_share']:.0f}% of the frames are inside an action).",
        "",
        "During an action the object of its class moves as in the trimmed dataset of the same",
        f"--classes {cfg.classes} --size {cfg.size} --fps {cfg.fps} (`vidfeat data synth`), and",
        "its sound plays; outside the actions the scene (background texture, camera jitter, a",
        "grey distractor blob, pixel noise) has no object and the track only a quiet noise floor.",
        "A network trained on that trimmed set recognises these classes.",
        "",
        "annotations.json (ActivityNet / THUMOS form, read by ActionFormer's loaders):",
        '  {"database": {id: {"subset", "duration", "fps", "num_frames",',
        '                     "annotations": [{"segment": [start, end], "segment_frames": [a, b],',
        '                                      "label", "label_id"}]}}}',
        "Frame k spans [k/fps, (k+1)/fps): an action on frames a..b-1 has segment [a/fps, b/fps].",
        "label_id is the line of the class in classes.txt (the trimmed set's class index).",
        f"Subsets (THUMOS' names): {cfg.videos - n_test} validation (fit a localiser), "
        f"{n_test} test (report). ActionFormer: train_split ['validation'], val_split ['test'],",
        f"default_fps null (each video's fps is in the file), num_classes {cfg.classes} (every",
        "class must occur in the file for its label dictionary).",
        "",
        "all.csv lists every video (path,video_id,split; no label column): extract with it.",
        "validation.csv / test.csv list the subsets. synth.json holds the configuration.",
        "",
        "Classes (index, name: colour / motion / sound):",
    ]
    lines += [f"  {k.index:2d}  {k.name}: {k.colour} / {k.motion} / {k.sound}" for k in design]
    return "\n".join(lines + [""])
