"""Every option of every command acts or is refused with the reason (issue 14, item 3).

``AUDIT`` holds, for every (command, option) of the Click tree, checks that could fail if the
option were dropped on the floor:

* :class:`Acts`: the command, given the option, hands its work over (the function it calls is
  replaced by a recorder that stops the command there) with the value in the place the option
  names, and without the option it does not;
* :class:`Refused`: where the option does not apply (a combination that would ignore it), the
  command exits non-zero with a message saying why and what to do, before any work;
* :class:`Custom`: an effect checked end to end (an output, a library refusal).

:func:`test_every_option_is_audited` walks the Click tree: an option without an entry (or an
entry without an option) fails it. Nothing here decodes a video or trains a network.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

import vidfeat.cli.options as options_module
from vidfeat.cli import main


class Handoff(Exception):
    """Raised by a recorded call: the command handed its work over; nothing more runs."""


@dataclass
class Call:
    args: tuple
    kwargs: dict


Calls = dict[str, Call]  # recorder name ("main", or an extra target's) → its call


@dataclass
class Env:
    """What a check runs with: the world's paths and an invoker."""

    world: dict[str, str]

    def fmt(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.format(**self.world)
        if isinstance(value, (list, tuple)):
            return type(value)(self.fmt(v) for v in value)
        return value

    def invoke(
        self, argv: tuple[str, ...], targets: dict[str, tuple[str, bool]]
    ) -> tuple[Result, Calls]:
        """Run ``vidfeat argv`` with each target (``module.attr``) replaced by a recorder;
        ``stop`` recorders raise :class:`Handoff`, the others return None."""
        calls: Calls = {}
        with pytest.MonkeyPatch.context() as mp:
            for name, (target, stop) in targets.items():
                module, attr = target.rsplit(".", 1)

                def record(*a: Any, _name: str = name, _stop: bool = stop, **k: Any) -> None:
                    calls[_name] = Call(a, k)
                    if _stop:
                        raise Handoff

                mp.setattr(importlib.import_module(module), attr, record)
            # a terminal: progress bars default on, so --quiet has something to turn off
            mp.setattr(options_module, "sys", _Terminal())
            res = CliRunner().invoke(main, [str(a) for a in self.fmt(argv)])
        return res, calls


class _Terminal:
    """``sys`` as ``vidfeat.cli.options.progress_enabled`` sees it, with stderr a terminal."""

    stderr = SimpleNamespace(isatty=lambda: True)

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Cmd:
    base: tuple[str, ...]  # arguments every check adds its own to
    target: str  # the function the command hands its work to
    extra: tuple[tuple[str, str], ...] = ()  # (name, target) recorded without stopping

    def targets(self, main: str | None = None) -> dict[str, tuple[str, bool]]:
        """What to record: ``main`` (default: the command's target) stops the command there;
        the command's own target stops it too, so a run that misses ``main`` does no work."""
        out = {"main": (main or self.target, True)}
        if main and main != self.target:
            out["default"] = (self.target, True)
        return out | {n: (t, False) for n, t in self.extra}


@dataclass(frozen=True)
class Acts:
    """Given ``args``, ``get(calls) == want`` where the work is handed over; not so without."""

    args: tuple[str, ...]
    get: Callable[[Calls], Any]
    want: Any
    base: tuple[str, ...] | None = None  # instead of the command's
    target: str | None = None  # instead of the command's

    def run(self, path: tuple[str, ...], cmd: Cmd, env: Env) -> None:
        base = cmd.base if self.base is None else self.base
        targets = cmd.targets(self.target)
        res, calls = env.invoke((*path, *base, *self.args), targets)
        assert isinstance(res.exception, Handoff), (self.args, res.output, res.exception)
        want = env.fmt(self.want)
        assert self.get(calls) == want, (self.args, self.get(calls), want)
        res, calls = env.invoke((*path, *base), targets)
        try:
            without = self.get(calls) if isinstance(res.exception, Handoff) else None
        except (KeyError, AttributeError, IndexError):
            without = None
        assert without != want, f"{self.args}: the same value without the option"


@dataclass(frozen=True)
class Refused:
    """Given ``args``, the command exits non-zero, saying ``says``, before any work."""

    args: tuple[str, ...]
    says: tuple[str, ...]
    base: tuple[str, ...] | None = None
    target: str | None = None

    def run(self, path: tuple[str, ...], cmd: Cmd, env: Env) -> None:
        base = cmd.base if self.base is None else self.base
        res, calls = env.invoke((*path, *base, *self.args), cmd.targets(self.target))
        assert not calls, f"{self.args} was not refused before the work: {sorted(calls)}"
        assert res.exit_code not in (0, None), res.output
        text = " ".join(res.output.split())
        for s in env.fmt(self.says):
            assert s in text, (s, res.output)


@dataclass(frozen=True)
class Custom:
    fn: Callable[[Env], None]

    def run(self, path: tuple[str, ...], cmd: Cmd, env: Env) -> None:
        self.fn(env)


Check = Acts | Refused | Custom


def refused(*args: str, says: str | tuple[str, ...], **kw: Any) -> Refused:
    return Refused(args, (says,) if isinstance(says, str) else says, **kw)


def at(where: int | str, *path: Any, call: str = "main") -> Callable[[Calls], Any]:
    """A getter: positional ``where`` (int) or keyword ``where`` of the recorded call, then
    attributes / keys ``path``; paths as str, lists of paths as lists of str."""

    def get(calls: Calls) -> Any:
        c = calls[call]
        x = c.args[where] if isinstance(where, int) else c.kwargs[where]
        for p in path:
            x = x[p] if isinstance(x, (dict, list, tuple)) else getattr(x, p)
        return _plain(x)

    return get


def _plain(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def both(*getters: Callable[[Calls], Any]) -> Callable[[Calls], Any]:
    return lambda calls: tuple(g(calls) for g in getters)


def source_and_ids(where: int | str) -> Callable[[Calls], Any]:
    """A VideoList handed over: its file and its ids."""
    return lambda calls: (at(where, "source")(calls), at(where)(calls).ids())


# --------------------------------------------------------------------------- the world

KIN_IDS = ["aaa_000000_000010", "bbb_000000_000010"]  # ccc's file is absent: dropped
TRAIN_IDS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Lists, stores, runs and files the commands are pointed at: none is a video, since no
    check lets a command get as far as decoding."""
    import numpy as np
    import yaml

    from vidfeat.extract.fields import FlowFieldsExtractor
    from vidfeat.flow import make_method
    from vidfeat.store import FeatureStore, ShardWriter

    d = tmp_path_factory.mktemp("audit")
    (d / "train.csv").write_text("path,label\na.mp4,x\nb.mp4,y\nc.mp4,x\nd.mp4,y\n")
    (d / "val.csv").write_text("path,label\ne.mp4,x\nf.mp4,y\n")
    (d / "kin.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "x,aaa,0,10,train\ny,bbb,0,10,train\nx,ccc,0,10,train\n"
    )
    (d / "vroot").mkdir()
    for vid in KIN_IDS:
        (d / "vroot" / f"{vid}.mp4").write_bytes(b"")
    for name in ("store", "store2"):
        (d / name).mkdir()
    # a fields set whose options differ from every default: T=4, short side 64, bound 10,
    # levels 2
    fields = FlowFieldsExtractor(
        make_method("farneback", levels=2), segments=4, frames=5, short_side=64, bound=10.0
    )
    FeatureStore(d / "fstore").ensure_set("farneback-fields", fields.config())
    # a (T, D) set with one video, for the export refusals that need a real set
    fs = FeatureStore(d / "tdstore")
    fs.ensure_set("f", {"modality": "rgb", "T": 2, "feature_shape": [2, 3], "dtype": "float32"})
    with ShardWriter(fs.set_dir("f"), "fixture") as w:
        w.add("a", np.zeros((2, 3), np.float32), {"label": "x"})
    # a row set (windows grid) with row scores, and an annotation file that lists only "b"
    rs = FeatureStore(d / "rowstore")
    grid = {"mode": "windows", "stride": 4, "window": 16, "fps": None}
    rs.ensure_set("r", {"modality": "rgb", "grid": grid, "feature_shape": [-1, 3],
                        "classes": ["x", "y"]})  # fmt: skip
    times = np.array([[0.0, 1.0, 0.5], [0.25, 1.25, 0.75]])
    with ShardWriter(rs.set_dir("r"), "fixture") as w:
        extra = {"times": times, "scores": np.full((2, 2), 0.5, np.float32)}
        w.add("a", np.zeros((2, 3), np.float32), {}, extra=extra)
    (d / "annot.json").write_text(json.dumps({"database": {"b": {"annotations": []}}}))
    # a run's config.yaml as vidfeat.models reads it (every run records modality, train, val)
    run_cfg = {"modality": "rgb", "train": "train.csv", "val": None, "arch": "stnet",
               "backbone": "resnet50", "frames": 5}  # fmt: skip
    for name in ("run", "run2"):
        (d / name).mkdir()
        (d / name / "config.yaml").write_text(yaml.safe_dump({**run_cfg, "net_options": {}}))
    (d / "weights.pt").write_bytes(b"not read: the command is stopped before")
    (d / "classes.txt").write_text("x\ny\n")
    for name in ("scores", "scores2"):
        (d / f"{name}.csv").write_text("video_id,x,y\n" + "".join(f"{v},0.5,0.5\n" for v in "ab"))
    for name in ("ens", "ens2"):
        (d / name).mkdir()
        (d / name / "ensemble.json").write_text(json.dumps({"members": [str(d / "scores.csv")]}))
    dirs = ["vroot", "store", "store2", "fstore", "tdstore", "rowstore", "run", "run2", "ens",
            "ens2"]  # fmt: skip
    files = ["train.csv", "val.csv", "kin.csv", "weights.pt", "classes.txt", "scores.csv",
             "scores2.csv", "annot.json"]  # fmt: skip
    out = {n: str(d / n) for n in dirs} | {f.split(".")[0]: str(d / f) for f in files}
    out["out"] = str(d / "out")
    return out


# --------------------------------------------------------------------------- shared option sets

KIN = ("--videos", "{kin}", "--video-root", "{vroot}")
NOT_KINETICS = "--video-root applies to a Kinetics CSV"


def run_option_checks(
    get: Callable[[str], Callable[[Calls], Any]], **over: Any
) -> dict[str, list[Check]]:
    """The options every `extract` command shares (RunOptions), read through ``get``;
    ``over``: base / target of every check."""

    def acts(args: tuple[str, ...], name: str, want: Any) -> Acts:
        return Acts(args, get(name), want, **over)

    def ray(flag: str, value: str, name: str, want: Any) -> list[Check]:
        return [
            acts(("--engine", "ray", flag, value), name, want),
            refused(flag, value, says=f"{flag} apply to --engine ray", **over),
        ]

    return {
        "workers": [
            Acts(("--workers", "2"), both(get("workers"), get("ray_local_cpus")), (2, 2), **over)
        ],
        "timeout": [acts(("--timeout", "5"), "timeout", 5.0)],
        "shard": [
            acts(("--shard", "1/4"), "shard", (1, 4)),
            refused("--shard", "4/4", says="--shard i/N needs 0 <= i < N", **over),
        ],
        "limit": [acts(("--limit", "3"), "limit", 3)],
        "dry_run": [acts(("--dry-run",), "dry_run", True)],
        "retry_failed": [acts(("--retry-failed",), "retry_failed", True)],
        "overwrite": [acts(("--overwrite",), "overwrite", True)],
        "job": [acts(("--job", "j1"), "job", "j1")],
        "shard_videos": [acts(("--shard-videos", "8"), "shard_videos", 8)],
        "shard_mb": [acts(("--shard-mb", "16"), "shard_mb", 16.0)],
        "compression": [
            acts(("--compression", "gzip"), "compression", "gzip"),
            acts(("--compression", "none"), "compression", None),
        ],
        "float16": [acts(("--float16",), "float16", True)],
        "min_free_mb": [acts(("--min-free-mb", "1"), "min_free_mb", 1.0)],
        "engine": [acts(("--engine", "ray"), "engine", "ray")],
        "ray_address": ray("--ray-address", "head:6379", "ray_address", "head:6379"),
        "ray_num_cpus": ray("--ray-num-cpus", "2", "ray_num_cpus", 2.0),
        "ray_num_gpus": ray("--ray-num-gpus", "1", "ray_num_gpus", 1.0),
        "chunk_videos": ray("--chunk-videos", "4", "chunk_videos", 4),
        "quiet": [acts(("--quiet",), "progress", False)],
    }


def timeout_refused(**over: Any) -> Refused:
    return refused(
        "--timeout", "5", "--workers", "0",
        says="with --workers 0 the clips decode in this process", **over,
    )  # fmt: skip


def video_root_checks(get: Callable[[Calls], Any], want: Any, **over: Any) -> list[Check]:
    """--video-root reaches the Kinetics list it resolves; with a list of paths it is
    refused."""
    return [
        Acts(KIN, get, want, **over),
        refused("--video-root", "{vroot}", says=NOT_KINETICS, **over),
    ]


# every parameter of every flow method, with a value other than its default
FLOW_PARAM_VALUES: dict[str, Any] = {
    "preset": "medium",
    "finest_scale": 2,
    "coarsest_scale": 4,
    "patch_size": 6,
    "patch_stride": 3,
    "gradient_descent_iterations": 20,
    "variational_refinement_iterations": 3,
    "variational_refinement_alpha": 10.0,
    "variational_refinement_delta": 2.5,
    "variational_refinement_gamma": 5.0,
    "variational_refinement_epsilon": 0.02,
    "use_mean_normalization": False,
    "use_spatial_propagation": False,
    "pyr_scale": 0.25,
    "levels": 4,
    "winsize": 17,
    "iterations": 4,
    "poly_n": 7,
    "poly_sigma": 1.5,
    "flags": 256,
    "model": "small",
    "num_flow_updates": 6,
    "tau": 0.125,
    "lambda_": 0.3,
    "theta": 0.15,
    "nscales": 4,
    "warps": 4,
    "epsilon": 0.02,
    "inner_iterations": 20,
    "outer_iterations": 5,
    "scale_step": 0.5,
    "gamma": 0.5,
    "median_filtering": 3,
}


def flow_param_checks(extractor: Callable[[Calls], Any], **over: Any) -> dict[str, list[Check]]:
    """Each flow-method option reaches its method's parameters (``extractor(calls).method``)
    and is refused by a method without it."""
    from vidfeat.flow import FLOW_METHODS, method_param_fields, option_name

    owners: dict[str, str] = {}
    for m in FLOW_METHODS.names():
        for fld in method_param_fields(m):
            owners.setdefault(fld.name, m)
    out: dict[str, list[Check]] = {}
    for name, method in owners.items():
        value = FLOW_PARAM_VALUES[name]  # KeyError: a new parameter needs a value here
        flag = option_name(name)
        other = "farneback" if method != "farneback" else "dis"

        def get(calls: Calls, _name: str = name) -> Any:
            return extractor(calls).method.config()[_name]

        out[name] = [
            Acts(("--method", method, flag, str(value)), get, value, **over),
            refused(
                "--method", other, flag, str(value),
                says=f"{flag} do not apply to --method {other}", **over,
            ),
        ]  # fmt: skip
    return out


def train_checks(**over: Any) -> dict[str, list[Check]]:
    """The options every `train` command shares (TrainConfig and the run folder)."""

    def cfg(name: str, *path: Any) -> Callable[[Calls], Any]:
        return at(0, name, *path)

    def acts(args: tuple[str, ...], name: str, want: Any) -> Acts:
        return Acts(args, cfg(name), want, **over)

    return {
        "train_list": [acts(("--videos", "{val}"), "train", "{val}")],
        "val_list": [acts(("--val", "{val}"), "val", "{val}")],
        "out": [Acts(("--out", "{out}/other"), at(1), "{out}/other", **over)],
        "video_root": video_root_checks(cfg("video_root"), "{vroot}", **over),
        "segments": [
            Acts(("-T", "3"), both(cfg("segments"), cfg("test_segments")), (3, 3), **over)
        ],
        "test_segments": [
            acts(("--val", "{val}", "--test-segments", "4"), "test_segments", 4),
            refused("--test-segments", "4", says="add --val LIST", **over),
        ],
        "epochs": [acts(("--epochs", "2"), "epochs", 2)],
        "batch_size": [acts(("--batch-size", "3"), "batch_size", 3)],
        "lr": [acts(("--lr", "0.5"), "lr", 0.5)],
        "momentum": [
            acts(("--momentum", "0.5"), "momentum", 0.5),
            refused(
                "--optimizer",
                "adamw",
                "--momentum",
                "0.5",
                says="--momentum applies to --optimizer sgd",
                **over,
            ),
        ],  # fmt: skip
        "weight_decay": [acts(("--weight-decay", "0.001"), "weight_decay", 0.001)],
        "optimizer": [acts(("--optimizer", "adamw"), "optimizer", "adamw")],
        "schedule": [acts(("--schedule", "cosine"), "schedule", "cosine")],
        "no_flip": [acts(("--no-flip",), "flip", False)],
        "workers": [acts(("--workers", "1"), "workers", 1)],
        "device": [acts(("--device", "cpu"), "device", "cpu")],
        "precision": [acts(("--precision", "fp32"), "precision", "fp32")],
        "seed": [acts(("--seed", "3"), "seed", 3)],
        "resume": [Acts(("--resume",), at("resume"), True, **over)],
        "overwrite": [Acts(("--overwrite",), at("overwrite"), True, **over)],
        "quiet": [Acts(("--quiet",), at("progress"), False, **over)],
    }


def segment_net_checks(**over: Any) -> dict[str, list[Check]]:
    """The network options of `train rgb|flow`."""

    def acts(args: tuple[str, ...], name: str, want: Any) -> Acts:
        return Acts(args, at(0, name), want, **over)

    return {
        "arch": [acts(("--arch", "tsn"), "arch", "tsn")],
        "backbone": [acts(("--backbone", "resnet18"), "backbone", "resnet18")],
        "pretrained": [
            acts(("--pretrained",), "pretrained", True),
            refused(
                "--init",
                "{run}",
                "--pretrained",
                says="--pretrained and --init exclude each other",
                **over,
            ),
        ],  # fmt: skip
        "backbone_weights": [
            acts(("--backbone-weights", "{weights}"), "backbone_weights", "{weights}")
        ],
        "frames": [acts(("-N", "3"), "frames", 3)],
        "size": [acts(("--size", "112"), "size", 112)],
        "net_opt": [
            Acts(("--net-opt", "tmb=paper"), at(0, "net_options", "tmb"), "paper", **over),
            refused("--net-opt", "tmb", says="expected KEY=VALUE", **over),
        ],
        "init": [
            Acts(
                ("--init", "{run}"), both(at(0, "init"), at(0, "arch")), ("{run}", "stnet"), **over
            ),
            refused(
                "--init",
                "{run}",
                "--arch",
                "tsn",
                says="--arch tsn contradicts the --init run's arch 'stnet'",
                **over,
            ),
        ],  # fmt: skip
    }


# --------------------------------------------------------------------------- per command

CMDS: dict[tuple[str, ...], Cmd] = {
    (): Cmd((), "vidfeat.cli.main"),
    ("data", "synth"): Cmd(("{out}/ds",), "vidfeat.synth.generate"),
    ("data", "probe"): Cmd(("{train}",), "vidfeat.probe.probe_list"),
    ("store", "verify"): Cmd(("{store}",), "vidfeat.store.verify_store"),
    ("store", "export"): Cmd(
        ("{store}", "--set", "rgb", "--out", "{out}/exp"), "vidfeat.export.export_set"
    ),
    ("extract", "flow"): Cmd(
        ("--method", "farneback", "--videos", "{train}", "--store", "{store}"),
        "vidfeat.extract.run_extraction",
    ),
    ("extract", "rgb"): Cmd(
        ("--checkpoint", "{run}", "--videos", "{train}", "--store", "{store}"),
        "vidfeat.extract.network.extract_rgb_features",
    ),
    ("extract", "audio"): Cmd(
        ("--videos", "{train}", "--store", "{store}"),
        "vidfeat.extract.network.extract_audio_features",
    ),
    ("show",): Cmd(
        ("a", "--store", "{store}", "--out", "{out}/a.png"), "vidfeat.show.contact_sheet"
    ),
    ("train", "rgb"): Cmd(("--videos", "{train}", "--out", "{out}/run"), "vidfeat.train.train"),
    ("train", "flow"): Cmd(
        (
            "--method",
            "farneback",
            "--store",
            "{store}",
            "--videos",
            "{train}",
            "--out",
            "{out}/frun",
        ),
        "vidfeat.train.train",
        (("fields", "vidfeat.extract.fields.prepare_training_fields"),),
    ),  # fmt: skip
    ("train", "audio"): Cmd(("--videos", "{train}", "--out", "{out}/arun"), "vidfeat.train.train"),
    ("fuse", "train"): Cmd(
        (
            "--store",
            "{store}",
            "--features",
            "rgb",
            "--head",
            "txn",
            "--train",
            "{train}",
            "--out",
            "{out}/fuse",
        ),
        "vidfeat.fusion.trainer.train",
    ),  # fmt: skip
    ("fuse", "eval"): Cmd(
        ("--run", "{run}", "--store", "{store}", "--videos", "{train}"),
        "vidfeat.fusion.evaluate.evaluate",
    ),
    ("fuse", "predict"): Cmd(
        ("--run", "{run}", "--store", "{store}", "--videos", "{train}", "--out", "{out}/p.csv"),
        "vidfeat.fusion.evaluate.predict",
    ),
    ("ensemble",): Cmd(
        ("--members", "{scores}", "--videos", "{train}", "--out", "{out}/ens"),
        "vidfeat.fusion.ensemble.run_ensemble",
    ),
    ("ensemble", "predict"): Cmd(
        ("--ensemble", "{ens}", "--videos", "{train}", "--out", "{out}/e.csv"),
        "vidfeat.fusion.ensemble.predict_ensemble",
    ),
    ("models", "import", "paddle-stnet"): Cmd(
        ("{weights}", "--out", "{out}/imp"), "vidfeat.models.import_paddle"
    ),
    ("models", "import", "paddle-tsn"): Cmd(
        ("{weights}", "--out", "{out}/imp"), "vidfeat.models.import_paddle"
    ),
    ("models", "import", "timm"): Cmd(
        ("resnet18", "--out", "{out}/timm"), "vidfeat.models.import_timm"
    ),
    ("models", "import", "i3d"): Cmd(
        ("{weights}", "--modality", "rgb", "--out", "{out}/i3d"), "vidfeat.models.import_i3d"
    ),
    ("models", "import", "torchvision"): Cmd(
        ("r3d_18", "--weights", "{weights}", "--out", "{out}/tv"),
        "vidfeat.models.import_torchvision",
    ),
    ("models", "info"): Cmd(("{run}",), "vidfeat.models.describe_run"),
}


def _version(env: Env) -> None:
    from vidfeat import __version__

    res, _ = env.invoke(("--version",), {})
    assert res.exit_code == 0 and res.output.startswith(f"vidfeat {__version__}\n"), res.output
    assert "torch" in res.output and "CUDA" in res.output


UNTRIMMED = "vidfeat.synth_untrimmed.generate_untrimmed"
UNTRIMMED_BASE = ("{out}/ds", "--untrimmed")


def _synth() -> dict[str, list[Check]]:
    def cfg(name: str) -> Callable[[Calls], Any]:
        return at(1, name)

    def untrimmed(flag: str, value: Any) -> Acts:
        name = flag[2:].replace("-", "_")
        return Acts((flag, str(value)), cfg(name), value, base=UNTRIMMED_BASE, target=UNTRIMMED)

    values = {"classes": 5, "per_class": 3, "seconds": 1.5, "fps": 10, "size": 64, "seed": 7,
              "val_fraction": 0.5, "test_fraction": 0.2}  # fmt: skip
    out: dict[str, list[Check]] = {
        k: [Acts((f"--{k.replace('_', '-')}", str(v)), cfg(k), v)] for k, v in values.items()
    }
    out["quiet"] = [
        Acts(("--quiet",), at("progress"), False),
        Acts(("--quiet",), at("progress"), False, base=UNTRIMMED_BASE, target=UNTRIMMED),
    ]
    # options both kinds use reach the untrimmed generator too
    for k in ("classes", "fps", "size", "seed", "test_fraction"):
        out[k].append(untrimmed(f"--{k.replace('_', '-')}", values[k]))
    out["untrimmed"] = [Acts(("--untrimmed",), cfg("videos"), 8, target=UNTRIMMED)]
    for flag, value in (("--videos", 3), ("--min-seconds", 30.0), ("--max-seconds", 40.0)):
        out[flag[2:].replace("-", "_")] = [
            untrimmed(flag, value),
            refused(flag, str(value), says=f"{flag} apply to untrimmed videos: add --untrimmed"),
        ]
    for flag, value, why in (
        ("--per-class", 3, "several actions of random classes"),
        ("--seconds", 1.5, "untrimmed videos last --min-seconds to --max-seconds"),
        ("--val-fraction", 0.5, "split into validation and test by --test-fraction"),
    ):
        out[flag[2:].replace("-", "_")].append(
            refused(
                flag,
                str(value),
                base=UNTRIMMED_BASE,
                target=UNTRIMMED,
                says=(f"{flag} applies to trimmed", why),
            )
        )
    return out


def _probe() -> dict[str, list[Check]]:
    return {
        "video_root": [
            Acts(("--video-root", "{vroot}"), at("video_root"), "{vroot}", base=("{kin}",)),
            refused("--video-root", "{vroot}", says=NOT_KINETICS),
        ],
        "quiet": [Acts(("--quiet",), at("quiet"), True)],
    }


def _verify() -> dict[str, list[Check]]:
    ids = at("expect_ids")
    return {
        "videos": [Acts(("--videos", "{train}"), ids, set(TRAIN_IDS))],
        "video_root": [
            Acts(KIN, ids, set(KIN_IDS)),
            refused("--video-root", "{vroot}", says="--video-root applies only with --videos"),
            refused("--videos", "{train}", "--video-root", "{vroot}", says=NOT_KINETICS),
        ],
    }


def _export_flatten_refused(env: Env) -> None:
    """The real export: a set already (T, D) refuses --flatten (the flag would change
    nothing), naming the set."""
    argv = ("store", "export", "{tdstore}", "--set", "f", "--out", "{out}/flat")
    res, _ = env.invoke((*argv, "--flatten"), {})
    assert res.exit_code != 0 and "--flatten applies to sets of more than (T, D)" in res.output
    assert "set 'f' holds (2, 3)" in res.output, res.output
    res, _ = env.invoke(argv, {})
    assert res.exit_code == 0, res.output


LAYOUT = "vidfeat.layouts.export_layout"
EXPORT = CMDS[("store", "export")].base


def _layout(layout: str) -> dict[str, Any]:
    """The base and target of a check of `store export --layout LAYOUT`."""
    return {"base": (*EXPORT, "--layout", layout), "target": LAYOUT}


def _export() -> dict[str, list[Check]]:
    ids = at("video_ids")
    no_layout = "applies without --layout"
    return {
        "set_name": [
            Acts(("--set", "audio"), at(1), "audio"),
            Acts(("--set", "rgb,flow", "--layout", "gtad"), at(1), ["rgb", "flow"], target=LAYOUT),
            refused("--set", "rgb,flow", says="several sets are concatenated only with --layout"),
        ],
        "layout": [Acts(("--layout", "bmn"), at(3), "bmn", target=LAYOUT)],
        "fmt": [
            Acts(("--format", "csv"), at(3), "csv"),
            refused("--layout", "bmn", "--format", "csv", says=f"--format {no_layout}"),
        ],
        "out": [
            Acts(("--out", "{out}/exp2"), at(2), "{out}/exp2"),
            Acts(("--out", "{out}/exp2"), at(2), "{out}/exp2", **_layout("bmn")),
        ],
        "prefix": [
            Acts(("--prefix", "v_"), at("prefix"), "v_", **_layout("actionformer")),
            refused("--prefix", "v_", says="--prefix applies with --layout"),
            refused("--layout", "gtad", "--prefix", "a/b", says="--prefix 'a/b' cannot start"),
        ],
        "steps": [
            Acts(("--steps", "50"), at("steps"), 50, **_layout("bmn")),
            refused("--steps", "50", says="--steps applies with --layout"),
            refused("--layout", "gtad", "--steps", "50", says="--steps applies to --layout bmn"),
            refused("--layout", "bmn", "--steps", "1", says="--steps must be >= 2"),
        ],
        "split": [
            Acts(("--split", "rgb_val"), at("split"), "rgb_val", **_layout("gtad")),
            refused("--split", "rgb_val", says="--split applies with --layout"),
            refused("--layout", "bmn", "--split", "x", says="--split applies to --layout gtad"),
            refused("--layout", "gtad", "--split", ".x", says="--split '.x' is no file name"),
        ],
        "videos": [
            Acts(("--videos", "{train}"), ids, TRAIN_IDS),
            Acts(("--videos", "{train}"), ids, TRAIN_IDS, **_layout("gtad")),
        ],
        "video_root": [
            Acts(KIN, ids, KIN_IDS),
            refused("--video-root", "{vroot}", says="--video-root applies only with --videos"),
            refused("--videos", "{train}", "--video-root", "{vroot}", says=NOT_KINETICS),
        ],
        "with_scores": [
            Acts(("--with-scores",), at("with_scores"), True),
            refused("--layout", "bmn", "--with-scores", says=f"--with-scores {no_layout}"),
        ],
        "flatten": [
            Acts(("--flatten",), at("flatten"), True),
            Custom(_export_flatten_refused),
            refused("--layout", "gtad", "--flatten", says=f"--flatten {no_layout}"),
        ],
        "overwrite": [
            Acts(("--overwrite",), at("overwrite"), True),
            Acts(("--overwrite",), at("overwrite"), True, **_layout("actionformer")),
        ],
        "quiet": [
            Acts(("--quiet",), at("progress"), False),
            Acts(("--quiet",), at("progress"), False, **_layout("bmn")),
        ],
    }


FLOW_NET = "vidfeat.extract.network.extract_flow_features"
FLOW = CMDS[("extract", "flow")].base
FLOW_CK = dict(base=(*FLOW, "--checkpoint", "{run}"), target=FLOW_NET)


def _extract_flow() -> dict[str, list[Check]]:
    ex = at(1)

    def given(name: str) -> Callable[[Calls], Any]:
        return both(at(name), lambda c: c["main"].kwargs["given"].get(name))

    out = run_option_checks(lambda name: at(4, name))
    out["workers"].append(
        refused(
            "--engine", "ray", "--ray-address", "head:6379", "--workers", "2",
            says="with --ray-address the cluster runs the tasks",
        )
    )  # fmt: skip
    out["timeout"].append(timeout_refused(**FLOW_CK))
    out["float16"] = [
        Acts(("--float16",), at("opts", "float16"), True, **FLOW_CK),
        refused("--float16", says="flow fields are stored as uint8"),
    ]
    out.update(flow_param_checks(ex))
    out.update(_grid_checks("flow"))
    out.update(
        {
            "keep_fields": [
                Acts(
                    (*SNIPPETS, "--keep-fields"),
                    at("keep_fields"),
                    True,
                    base=(*FLOW, "--checkpoint", "{run}"),
                    target=ROWS.format("flow"),
                ),
                refused("--keep-fields", says="--keep-fields applies to --grid snippets|windows"),
            ],  # fmt: skip
            "method": [Acts(("--method", "dis"), at(1, "method", "name"), "dis")],
            "short_side": [
                Acts(("--short-side", "128"), at(1, "short_side"), 128),
                Acts(("--short-side", "128"), given("short_side"), (128, 128), **FLOW_CK),
            ],
            "bound": [
                Acts(("--bound", "10"), at(1, "bound"), 10.0),
                Acts(("--bound", "10"), given("bound"), (10.0, 10.0), **FLOW_CK),
            ],
            "fields_name": [
                Acts(("--fields-name", "ff"), at(3), "ff"),
                Acts(("--fields-name", "ff"), at("fields_set"), "ff", **FLOW_CK),
                refused(
                    "--name",
                    "a",
                    "--fields-name",
                    "b",
                    says="--name a and --fields-name b both name it",
                ),
            ],  # fmt: skip
            "crop_size": [
                Acts(("--crop-size", "64"), at("crop_size"), 64, **FLOW_CK),
                refused("--crop-size", "64", says="--crop-size applies with --checkpoint"),
            ],
            "video_list": [Acts(("--videos", "{val}"), at(0, "source"), "{val}")],
            "video_root": video_root_checks(source_and_ids(0), ("{kin}", KIN_IDS)),
            "store_root": [Acts(("--store", "{store2}"), at(2), "{store2}")],
            "name": [
                Acts(("--name", "mine"), at(3), "mine"),
                Acts(("--name", "mine"), at("set_name"), "mine", **FLOW_CK),
            ],
            "segments": [
                Acts(("-T", "3"), at(1, "grid", "T"), 3),
                Acts(("-T", "3"), at("segments"), 3, **FLOW_CK),
                refused(*SNIPPETS, "-T", "3", says="--segments is the segments grid's"),
            ],
            "frames": [
                Acts(("-N", "2"), at(1, "grid", "N"), 2),
                Acts(("-N", "2"), lambda c: c["main"].kwargs["given"].get("frames"), 2, **FLOW_CK),
            ],
            "checkpoint": [
                Acts(("--checkpoint", "{run2}"), at("checkpoint"), "{run2}", **FLOW_CK),
                Acts(("--checkpoint", "{run}"), at("checkpoint"), "{run}", target=FLOW_NET),
            ],
            "batch_size": [
                Acts(("--batch-size", "2"), at("batch_size"), 2, **FLOW_CK),
                Acts(
                    (*SNIPPETS, "--batch-size", "5"),
                    at("batch_size"),
                    5,
                    target=ROWS.format("flow"),
                ),  # fmt: skip
                Acts(("--method", "raft", "--batch-size", "2"), at(1, "method", "batch_size"), 2),
                refused("--batch-size", "2", says="--batch-size does not apply to --method"),
            ],
            "device": [
                Acts(
                    ("--device", "cpu"),
                    both(at("device"), at("flow_runtime", "device")),
                    ("cpu", "cpu"),
                    **FLOW_CK,
                ),
                Acts(("--method", "raft", "--device", "cpu"), at(1, "method", "device"), "cpu"),
                refused("--device", "cpu", says="--device does not apply to --method farneback"),
            ],  # fmt: skip
            "precision": [
                Acts(("--precision", "fp32"), at("precision"), "fp32", **FLOW_CK),
                Acts(
                    ("--method", "raft", "--precision", "bf16"),
                    at(1, "method", "precision"),
                    "bf16",
                ),
                Acts(
                    ("--method", "raft", "--precision", "fp32"),
                    at("flow_runtime", "precision"),
                    "fp32",
                    **FLOW_CK,
                ),
                refused(
                    "--precision",
                    "bf16",
                    says="--precision bf16 does not apply to --method farneback",
                ),
                refused(
                    "--method",
                    "tvl1-torch",
                    "--precision",
                    "bf16",
                    says="tvl1-torch keeps float32",
                ),
            ],  # fmt: skip
            "flow_weights": [
                Acts(
                    ("--method", "raft", "--flow-weights", "{weights}"),
                    at(1, "method", "weights"),
                    "{weights}",
                ),
                Acts(
                    ("--method", "raft", "--flow-weights", "{weights}"),
                    at("flow_runtime", "weights"),
                    "{weights}",
                    **FLOW_CK,
                ),
                refused(
                    "--flow-weights",
                    "{weights}",
                    says="--flow-weights does not apply to --method farneback",
                ),
            ],  # fmt: skip
        }
    )
    return out


ROWS = "vidfeat.extract.rows.extract_{}_rows"
SNIPPETS = ("--grid", "snippets", "--stride", "4")


def _segment_window(name: str, says: str) -> list[Check]:
    """--window on the segments grid: a clip network's frames per segment (rgb, flow with a
    network); refused for the flow fields alone and for audio."""
    if name == "rgb":
        return [Acts(("--window", "16"), at("window"), 16)]
    if name == "flow":
        return [
            Acts(("--window", "16"), at("window"), 16, **FLOW_CK),
            refused("--window", "16", says="--window on the segments grid is a clip network's"),
        ]
    return [refused("--window", "16", says=says)]


def _grid_checks(name: str, **kw: Any) -> dict[str, list[Check]]:
    """--grid, --stride, --window, --fps of `extract NAME`: handed to the grid of rows, refused
    on the segments grid."""
    rows = dict(target=ROWS.format(name), **kw)
    says = "apply to --grid snippets|windows"
    windows = ("--grid", "windows", "--window", "16")
    grid: list[Check] = [Acts(SNIPPETS, at("grid", "mode"), "snippets", **rows)]
    if name != "rgb":
        grid.append(refused("--grid", "reference", says="--grid reference is extract rgb's"))
    return {
        "grid": grid,
        "stride": [
            Acts((*windows, "--stride", "2"), at("grid", "stride"), 2, **rows),
            refused("--stride", "4", says=says),
        ],
        "window": [
            Acts(
                ("--grid", "windows", "--stride", "4", "--window", "8"),
                at("grid", "window"),
                8,
                **rows,
            ),
            *_segment_window(name, says),
        ],  # fmt: skip
        "fps": [
            Acts((*SNIPPETS, "--fps", "10"), at("grid", "fps"), 10.0, **rows),
            refused("--fps", "10", says=says),
        ],
    }


def _network_extract(name: str, target: str) -> dict[str, list[Check]]:
    """What `extract rgb` and `extract audio` share."""
    out = run_option_checks(lambda n: at("opts", n))
    out["timeout"].append(timeout_refused())
    out.update(
        {
            "video_list": [Acts(("--videos", "{val}"), at(0, "source"), "{val}")],
            "video_root": video_root_checks(source_and_ids(0), ("{kin}", KIN_IDS)),
            "store_root": [Acts(("--store", "{store2}"), at(1), "{store2}")],
            "name": [Acts(("--name", "mine"), at("set_name"), "mine")],
            "segments": [
                Acts(("-T", "3"), at("segments"), 3),
                refused(*SNIPPETS, "-T", "3", says="--segments is the segments grid's"),
            ],
            "frames": [refused("-N", "2", says=f"extract {name} takes no -N/--frames")],
            "batch_size": [
                Acts(("--batch-size", "2"), at("batch_size"), 2),
                Acts(
                    (*SNIPPETS, "--batch-size", "7"), at("batch_size"), 7, target=ROWS.format(name)
                ),
            ],  # fmt: skip
            "device": [Acts(("--device", "cpu"), at("device"), "cpu")],
            "precision": [Acts(("--precision", "fp32"), at("precision"), "fp32")],
        }
    )
    return out


def _extract_rgb() -> dict[str, list[Check]]:
    out = _network_extract("rgb", CMDS[("extract", "rgb")].target)
    out.update(_grid_checks("rgb"))
    out.update(
        {
            "checkpoint": [
                Acts(("--checkpoint", "{run2}"), at("checkpoint"), "{run2}"),
                refused("--name", "x", says="extract rgb needs --checkpoint RUN", base=FLOW[2:]),
            ],
            "crop_size": [Acts(("--crop-size", "64"), at("crop_size"), 64)],
            "grid": [
                Acts(("--grid", "reference"), at("grid"), "reference"),
                *out["grid"],
            ],
        }
    )
    return out


def _audio_run_embedding(env: Env) -> None:
    """A `train audio` run's embedding point is its own: --embedding asked otherwise is
    refused naming both; left out, the run's is recorded."""
    from vidfeat.extract import network

    seen: list[dict] = []

    def run_extraction(videos: Any, task: Any, *a: Any, **k: Any) -> None:
        seen.append(task.config())
        raise Handoff

    run = SimpleNamespace(model=SimpleNamespace(vggish=SimpleNamespace(embedding="post-relu")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(network.AudioNetwork, "net", lambda self: run)
        mp.setattr(network._RunTask, "config", lambda self: {"modality": "audio"})
        mp.setattr(network, "run_extraction", run_extraction)
        argv = ("extract", "audio", "--checkpoint", "{run}", "--videos", "{train}", "--store",
                "{store}")  # fmt: skip
        res, _ = env.invoke((*argv, "--embedding", "pre-relu"), {})
        text = " ".join(res.output.split())
        assert res.exit_code != 0 and not seen, res.output
        assert "--embedding pre-relu: the run" in text and "embedding post-relu" in text, text
        res, _ = env.invoke(argv, {})
        assert isinstance(res.exception, Handoff), res.output
        assert seen[-1]["embedding"] == "post-relu"
        res, _ = env.invoke((*argv, "--embedding", "post-relu"), {})
        assert isinstance(res.exception, Handoff) and seen[-1]["embedding"] == "post-relu"


def _extract_audio() -> dict[str, list[Check]]:
    out = _network_extract("audio", CMDS[("extract", "audio")].target)
    out.update(_grid_checks("audio"))
    out["frames"].append(Acts((*SNIPPETS, "-N", "3"), at("frames"), 3, target=ROWS.format("audio")))
    out.update(
        {
            "checkpoint": [Acts(("--checkpoint", "{weights}"), at("checkpoint"), "{weights}")],
            "pca": [Acts(("--pca", "{weights}"), at("pca"), "{weights}")],
            "embedding": [
                Acts(("--embedding", "post-relu"), at("embedding"), "post-relu"),
                Custom(_audio_run_embedding),
            ],
            "random_init": [Acts(("--random-init",), at("random_init"), True)],
        }
    )
    return out


def _show_annotations_refused(env: Env) -> None:
    """The real sheet: --annotations is refused where no set has a score timeline to shade,
    and for a video the file does not list; both before anything is drawn."""
    base = ("show", "a", "--annotations", "{annot}", "--out", "{out}/ann.png")
    res, _ = env.invoke((*base, "--store", "{tdstore}"), {})
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "--annotations applies to a row set's score timeline" in text
    res, _ = env.invoke((*base, "--store", "{rowstore}"), {})
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "video 'a' is not in --annotations" in text, res.output
    assert "ids present include b" in text
    assert not Path(env.fmt("{out}/ann.png")).exists()


def _show() -> dict[str, list[Check]]:
    return {
        "annotations": [
            Acts(("--annotations", "{annot}"), at("annotations"), "{annot}"),
            Custom(_show_annotations_refused),
        ],
        "store": [Acts(("--store", "{store2}"), at(0), "{store2}")],
        "videos": [Acts(("--videos", "{train}"), at(3), "{train}")],
        "video_root": [
            Acts(KIN, at("video_root"), "{vroot}"),
            refused("--video-root", "{vroot}", says="--video-root applies only with --videos"),
            refused("--videos", "{train}", "--video-root", "{vroot}", says=NOT_KINETICS),
        ],
        "out": [Acts(("--out", "{out}/b.png"), at(2), "{out}/b.png")],
    }


def _train_rgb() -> dict[str, list[Check]]:
    out = {**train_checks(), **segment_net_checks()}
    out["short_side"] = [Acts(("--short-side", "128"), at(0, "short_side"), 128)]
    return out


def _train_flow() -> dict[str, list[Check]]:
    def ex(*path: Any) -> Callable[[Calls], Any]:
        return at(3, *path, call="fields")  # the fields extractor prepare_training_fields got

    out = {**train_checks(), **segment_net_checks()}
    out.update(flow_param_checks(lambda c: c["fields"].args[3]))
    fstore = ("--store", "{fstore}")
    out["levels"].append(
        refused(*fstore, "--levels", "4", says="levels: set has 2, asked 4", base=TRAIN_FLOW)
    )
    out["frames"].append(Acts(("-N", "3"), ex("grid", "N"), 3))
    out["workers"].append(Acts(("--workers", "1"), at("workers", call="fields"), 1))
    out["quiet"].append(Acts(("--quiet",), at("progress", call="fields"), False))
    out["device"].append(
        Acts(("--method", "raft", "--device", "cpu"), ex("method", "device"), "cpu")
    )
    out.update(
        {
            "method": [Acts(("--method", "dis"), at(0, "method"), "dis")],
            "store_root": [
                Acts(
                    ("--store", "{store2}"),
                    both(at(0, "store"), at(1, call="fields")),
                    ("{store2}", "{store2}"),
                )
            ],  # fmt: skip
            "fields_name": [
                Acts(
                    ("--fields-name", "ff"),
                    both(at(0, "fields_set"), at(2, call="fields")),
                    ("ff", "ff"),
                )
            ],  # fmt: skip
            "fields_segments": [
                Acts(("--fields-segments", "3"), ex("grid", "T"), 3),
                refused(
                    *fstore,
                    "--fields-segments",
                    "3",
                    says="--fields-segments 3: set 'farneback-fields' holds fields on a T=4",
                ),
            ],  # fmt: skip
            "short_side": [
                Acts(
                    ("--short-side", "128"), both(ex("short_side"), at(0, "short_side")), (128, 128)
                ),  # fmt: skip
                refused(*fstore, "--short-side", "128", says="short_side: set has 64, asked 128"),
            ],
            "bound": [
                Acts(("--bound", "5"), ex("bound"), 5.0),
                refused(*fstore, "--bound", "5", says="bound: set has 10.0, asked 5.0"),
            ],
            "flow_weights": [
                Acts(
                    ("--method", "raft", "--flow-weights", "{weights}"),
                    ex("method", "weights"),
                    "{weights}",
                ),
                refused(
                    "--flow-weights",
                    "{weights}",
                    says="--flow-weights does not apply to --method farneback",
                ),
            ],  # fmt: skip
        }
    )
    return out


TRAIN_FLOW = CMDS[("train", "flow")].base


def _train_audio() -> dict[str, list[Check]]:
    out = train_checks()
    out["no_flip"] = [refused("--no-flip", says="train audio takes no --no-flip")]
    out.update(
        {
            "width": [
                Acts(
                    ("--width", "0.5"),
                    both(at(0, "width"), at(0, "backbone")),
                    (0.5, "vggish-x0.5"),
                )
            ],  # fmt: skip
            "vggish_weights": [
                Acts(("--vggish-weights", "{weights}"), at(0, "vggish_weights"), "{weights}")
            ],
            "embedding": [
                Acts(("--embedding", "post-relu"), at(0, "net_options", "embedding"), "post-relu")
            ],
        }
    )
    return out


def _fuse_train() -> dict[str, list[Check]]:
    def acts(args: tuple[str, ...], name: str, want: Any) -> Acts:
        return Acts(args, at(0, name), want)

    dropout = lambda c: at(0, "head_options")(c).get("dropout")  # noqa: E731
    return {
        "store": [acts(("--store", "{store2}"), "store", "{store2}")],
        "features": [acts(("--features", "rgb, audio"), "features", ["rgb", "audio"])],
        "head": [acts(("--head", "itxn"), "head", "itxn")],
        "train_list": [acts(("--train", "{val}"), "train", "{val}")],
        "val_list": [acts(("--val", "{val}"), "val", "{val}")],
        "out": [Acts(("--out", "{out}/f2"), at(1), "{out}/f2")],
        "epochs": [acts(("--epochs", "2"), "epochs", 2)],
        "batch_size": [acts(("--batch-size", "4"), "batch_size", 4)],
        "lr": [acts(("--lr", "0.1"), "lr", 0.1)],
        "weight_decay": [acts(("--weight-decay", "0.5"), "weight_decay", 0.5)],
        "optimizer": [acts(("--optimizer", "adam"), "optimizer", "adam")],
        "schedule": [acts(("--schedule", "step"), "schedule", "step")],
        "dropout": [
            Acts(("--dropout", "0.2"), dropout, 0.2),
            refused(
                "--dropout",
                "0.2",
                "--head-opt",
                "dropout=0.3",
                says="--dropout 0.2 and --head-opt dropout=0.3 set the same option",
            ),
        ],  # fmt: skip
        "head_opt": [
            Acts(("--head-opt", "width=64"), at(0, "head_options", "width"), 64),
            refused("--head-opt", "width", says="expected KEY=VALUE"),
        ],
        "early_stop": [acts(("--early-stop", "2"), "early_stop", 2)],
        "no_augment": [acts(("--no-augment",), "augment", False)],
        "no_cache": [acts(("--no-cache",), "cache", False)],
        "workers": [acts(("--workers", "1"), "workers", 1)],
        "device": [acts(("--device", "cpu"), "device", "cpu")],
        "precision": [acts(("--precision", "bf16"), "precision", "bf16")],
        "seed": [acts(("--seed", "5"), "seed", 5)],
        "video_root": [
            Acts(("--train", "{kin}", "--video-root", "{vroot}"), at(0, "video_root"), "{vroot}"),
            refused("--video-root", "{vroot}", says=NOT_KINETICS),
        ],
        "resume": [Acts(("--resume",), at("resume"), True)],
        "overwrite": [Acts(("--overwrite",), at("overwrite"), True)],
        "quiet": [Acts(("--quiet",), at("progress"), False)],
    }


def _fuse_use(predict: bool) -> dict[str, list[Check]]:
    out: dict[str, list[Check]] = {
        "run": [Acts(("--run", "{run2}"), at(0), "{run2}")],
        "store": [Acts(("--store", "{store2}"), at(1), "{store2}")],
        "videos": [Acts(("--videos", "{val}"), at(2), "{val}")],
        "device": [Acts(("--device", "cpu"), at("device"), "cpu")],
        "precision": [Acts(("--precision", "fp32"), at("precision"), "fp32")],
        "video_root": video_root_checks(at("video_root"), "{vroot}"),
    }
    if predict:
        out["out"] = [Acts(("--out", "{out}/q.csv"), at(3), "{out}/q.csv")]
    else:
        out["name"] = [Acts(("--name", "test"), at("name"), "test")]
        out["overwrite"] = [Acts(("--overwrite",), at("overwrite"), True)]
    return out


PREDICT = ("predict", "--ensemble", "{ens}", "--videos", "{train}", "--out", "{out}/e.csv")
STORE_NOT_USED = "--store serves fusion-run and set:NAME members"
DEVICE_NOT_USED = "--device runs the heads of fusion-run members"


def _ensemble() -> dict[str, list[Check]]:
    def est(name: str) -> Callable[[Calls], Any]:
        return at("est", name)

    out: dict[str, list[Check]] = {
        "members": [Acts(("--members", "{scores2}"), at(0), ["{scores}", "{scores2}"])],
        "store": [
            Acts(("--members", "set:rgb", "--store", "{store}"), at(1), "{store}"),
            refused("--store", "{store}", says=STORE_NOT_USED),
        ],
        "videos": [Acts(("--videos", "{val}"), at(2, "source"), "{val}")],
        "out": [Acts(("--out", "{out}/ens2"), at(3), "{out}/ens2")],
        "folds": [Acts(("--folds", "3"), at("folds"), 3)],
        "num_leaves": [Acts(("--num-leaves", "5"), est("num_leaves"), 5)],
        "learning_rate": [Acts(("--learning-rate", "0.1"), est("learning_rate"), 0.1)],
        "n_estimators": [Acts(("--n-estimators", "50"), est("n_estimators"), 50)],
        "min_child_samples": [Acts(("--min-child-samples", "2"), est("min_child_samples"), 2)],
        "early_stopping": [Acts(("--early-stopping", "3"), est("early_stopping"), 3)],
        "intersect": [Acts(("--intersect",), at("intersect"), True)],
        "seed": [Acts(("--seed", "4"), est("seed"), 4)],
        "device": [
            Acts(
                ("--members", "{run}", "--store", "{store}", "--device", "cpu"), at("device"), "cpu"
            ),
            refused("--device", "cpu", says=DEVICE_NOT_USED),
        ],  # fmt: skip
        "video_root": video_root_checks(source_and_ids(2), ("{kin}", KIN_IDS)),
        "overwrite": [Acts(("--overwrite",), at("overwrite"), True)],
    }
    # an option of the group given before `predict` would fit nothing: refused, named
    for checks in out.values():
        first = next(c for c in checks if isinstance(c, Acts))
        checks.append(
            refused(*first.args, *PREDICT, base=(), says=("given before `predict`", "fit an"))
        )
    return out


def _ensemble_predict() -> dict[str, list[Check]]:
    return {
        "ens": [Acts(("--ensemble", "{ens2}"), at(0), "{ens2}")],
        "members": [Acts(("--members", "{scores2}"), at(4), ["{scores2}"])],
        "store": [
            Acts(("--members", "set:rgb", "--store", "{store}"), at(1), "{store}"),
            refused("--store", "{store}", says=STORE_NOT_USED),  # the fitted members: files
        ],
        "videos": [Acts(("--videos", "{val}"), at(2, "source"), "{val}")],
        "out": [Acts(("--out", "{out}/f.csv"), at(3), "{out}/f.csv")],
        "device": [
            Acts(("--members", "{run}", "--store", "{store}", "--device", "cpu"), at(5), "cpu"),
            refused("--device", "cpu", says=DEVICE_NOT_USED),
        ],
        "video_root": video_root_checks(source_and_ids(2), ("{kin}", KIN_IDS)),
    }


def _paddle() -> dict[str, list[Check]]:
    return {
        "classes": [Acts(("--classes", "{classes}"), at("classes"), "{classes}")],
        "num_classes": [
            Acts(("--num-classes", "4"), at("num_classes"), 4),
            refused("--num-classes", "0", says="--num-classes"),
        ],
        "out": [Acts(("--out", "{out}/imp2"), at(1), "{out}/imp2")],
    }


def _models_info_json(env: Env) -> None:
    """--json prints the description as JSON; without it, the text description."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vidfeat.models.describe_run", lambda run: {"arch": "stnet", "classes": 2})
        mp.setattr("vidfeat.models.format_description", lambda info: "TEXT")
        res, _ = env.invoke(("models", "info", "{run}", "--json"), {})
        assert res.exit_code == 0 and json.loads(res.output) == {"arch": "stnet", "classes": 2}
        res, _ = env.invoke(("models", "info", "{run}"), {})
        assert res.exit_code == 0 and res.output == "TEXT\n"


TV_NO_WEIGHTS = ("r3d_18", "--out", "{out}/tv")  # `models import torchvision` without --weights

AUDIT: dict[tuple[str, ...], dict[str, list[Check]]] = {
    (): {"version": [Custom(_version)]},
    ("data", "synth"): _synth(),
    ("data", "probe"): _probe(),
    ("store", "verify"): _verify(),
    ("store", "export"): _export(),
    ("extract", "flow"): _extract_flow(),
    ("extract", "rgb"): _extract_rgb(),
    ("extract", "audio"): _extract_audio(),
    ("show",): _show(),
    ("train", "rgb"): _train_rgb(),
    ("train", "flow"): _train_flow(),
    ("train", "audio"): _train_audio(),
    ("fuse", "train"): _fuse_train(),
    ("fuse", "eval"): _fuse_use(predict=False),
    ("fuse", "predict"): _fuse_use(predict=True),
    ("ensemble",): _ensemble(),
    ("ensemble", "predict"): _ensemble_predict(),
    ("models", "import", "paddle-stnet"): _paddle(),
    ("models", "import", "paddle-tsn"): _paddle(),
    ("models", "import", "timm"): {
        "weights": [Acts(("--weights", "{weights}"), at("weights"), "{weights}")],
        "classes": [Acts(("--classes", "{classes}"), at("classes"), "{classes}")],
        "normalize": [Acts(("--normalize",), at("normalize"), True)],
        "out": [Acts(("--out", "{out}/timm2"), at(1), "{out}/timm2")],
    },
    ("models", "import", "i3d"): {
        "modality": [
            Acts(("--modality", "flow"), at("modality"), "flow"),
            refused("--modality", "audio", says="--modality"),
        ],
        "classes": [Acts(("--classes", "{classes}"), at("classes"), "{classes}")],
        "out": [Acts(("--out", "{out}/i3d2"), at(1), "{out}/i3d2")],
    },
    ("models", "import", "torchvision"): {
        "weights": [
            Acts(("--weights", "{weights}"), at("weights"), "{weights}", base=TV_NO_WEIGHTS),
            refused(says="Missing option '--weights'", base=TV_NO_WEIGHTS),
        ],
        "classes": [Acts(("--classes", "{classes}"), at("classes"), "{classes}")],
        "out": [Acts(("--out", "{out}/tv2"), at(1), "{out}/tv2")],
    },
    ("models", "info"): {"as_json": [Custom(_models_info_json)]},
}


# --------------------------------------------------------------------------- the tests


def cli_options(
    group: click.Command = main, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], list[str]]:
    """Every command of the tree (groups too) → its options but --help."""
    out = {path: [p.name for p in group.params if isinstance(p, click.Option) and p.name != "help"]}
    for name, sub in getattr(group, "commands", {}).items():
        out.update(cli_options(sub, (*path, name)))
    return {k: v for k, v in out.items() if v}


def test_every_option_is_audited() -> None:
    """A new option (or command) without a check fails here; so does a check of an option
    that is gone."""
    have = {(path, name) for path, opts in AUDIT.items() for name in opts}
    want = {(path, name) for path, opts in cli_options().items() for name in opts}
    assert not want - have, f"options without a check: {sorted(want - have)}"
    assert not have - want, f"checks of options that do not exist: {sorted(have - want)}"
    for path, opts in AUDIT.items():
        for name, checks in opts.items():
            assert checks, f"{path} {name}: no check"
    from vidfeat.flow import FLOW_METHODS, method_param_fields

    params = {fld.name for m in FLOW_METHODS.names() for fld in method_param_fields(m)}
    assert set(FLOW_PARAM_VALUES) == params, "a flow parameter without a value to check"


@pytest.mark.parametrize(
    "path, name",
    [(p, n) for p, opts in AUDIT.items() for n in opts],
    ids=lambda v: " ".join(v) or "vidfeat" if isinstance(v, tuple) else v,
)
def test_option_acts_or_is_refused(path: tuple[str, ...], name: str, world: dict[str, str]) -> None:
    env = Env(world)
    for check in AUDIT[path][name]:
        check.run(path, CMDS[path], env)
