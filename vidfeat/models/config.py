"""The run's config: :class:`TrainConfig`, what ``RUN/config.yaml`` holds, and the one reader
of every run's config.

``config.yaml`` is everything needed to rebuild a run's network and its input pipeline, written
by ``vidfeat train`` and ``vidfeat models import``. :func:`read_config` reads the config of any
kind of run into its dataclass (:func:`read_run_config`: a :class:`TrainConfig`; the fusion
runs read their ``FuseConfig`` through it too) and refuses, naming the file and the key, what
no vidfeat wrote: a YAML syntax error, nesting too deep, a document that is not a mapping,
missing keys, unknown keys (a newer vidfeat's), values of the wrong type.
Imports neither torch nor the training loop (the command line builds its options from here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vidfeat._version import __version__
from vidfeat.errors import ConfigError, RunError
from vidfeat.params import param
from vidfeat.precision import PRECISION_HELP, PRECISIONS

CONFIG_YAML = "config.yaml"
MODALITIES = ("rgb", "flow", "audio")
_MAX_BYTES = 1 << 20  # a run's config is about 1 KB; anything near this is not one


@dataclass
class TrainConfig:
    """A training run's configuration (saved as RUN/config.yaml). A field made with
    :func:`~vidfeat.params.param` is also an option of the `vidfeat train` commands of its
    group: ``train`` (every modality), ``net`` (segment networks: rgb, flow), ``audio``."""

    modality: str  # rgb | flow | audio
    train: str = param(
        help="Training list.", flags=("--videos", "train_list"), path="file", group="train"
    )
    val: str | None = param(
        help="Validation list (Prec@1/5 each epoch; best.pt by val Prec@1).",
        flags=("--val", "val_list"),
        path="file",
        unset=True,
        group="train",
    )
    # stnet | tsn (rgb, flow); audio: vggish
    arch: str = param(
        "stnet", "Segment network.", registry="vidfeat.nets:SEGMENT_NETS", group="net"
    )
    backbone: str = param(
        "resnet50",
        "timm backbone with ResNet-style stages (resnet18, resnet50, seresnext50_32x4d, ...).",
        group="net",
    )
    segments: int = param(  # T in training (the paper: 7)
        7,
        "Segments per clip in training (the paper: 7).",
        flags=("--segments", "-T"),
        group="train",
    )
    test_segments: int = param(  # T for validation during training
        7, "Segments for validation (default: --segments).", unset=True, group="train"
    )
    frames: int = param(  # N
        5,
        "Frames per segment (StNet super-image: 3N channels; flow: N pairs).",
        flags=("--frames", "-N"),
        group="net",
    )
    size: int = param(224, "Crop size.", group="net")
    short_side: int = 256
    epochs: int = param(30, "Passes over the training list.", group="train")
    batch_size: int = param(8, "Clips per step.", group="train")
    lr: float = param(0.01, "Learning rate (before the schedule's decay).", group="train")
    momentum: float = param(
        0.9, "SGD momentum (refused with --optimizer adamw, which has none).", group="train"
    )
    weight_decay: float = param(1e-4, "Weight decay.", group="train")
    optimizer: str = param(  # sgd | adamw
        "sgd", "SGD (the paper) or AdamW.", choices=("sgd", "adamw"), group="train"
    )
    # step: x0.1 at 1/3 and 2/3 of the steps (the paper); cosine: smooth decay to 0, kinder to
    # short runs (a step schedule spends 2/3 of a 12-epoch run at lr/10 or lower)
    schedule: str = param(
        "step",
        "step: lr x0.1 at 1/3 and 2/3 of training (the paper); cosine: smooth decay (better "
        "for short runs).",
        choices=("step", "cosine"),
        group="train",
    )
    flip: bool = param(  # horizontal flips in training (--no-flip when a mirror changes the class)
        True,
        "No horizontal flips in training (when a mirror changes the class, e.g. swiping left vs "
        "right, or the synthetic dataset's left/right motions).",
        flags=("--no-flip",),
        group="train",
    )
    pretrained: bool = param(
        False, "timm pretrained weights (from the local timm/Hugging Face cache).", group="net"
    )
    backbone_weights: str | None = param(
        None, "A local 2D state dict for the backbone.", path="file", exists=True, group="net"
    )
    net_options: dict = param(
        help="Network option, e.g. --net-opt tmb=paper.",
        flags=("--net-opt", "net_opt"),
        multiple=True,
        metavar="KEY=VALUE",
        group="net",
        default_factory=dict,
    )
    store: str | None = None  # flow: where the <method>-fields set lives
    method: str | None = None  # flow method
    fields_set: str | None = None
    workers: int = param(2, "DataLoader workers.", group="train")
    device: str = param("auto", "auto, cpu, cuda or cuda:N.", group="train")
    # as asked, until `train` resolves it on its device: config.yaml records what ran
    precision: str = param(
        "auto", PRECISION_HELP + " Weights stay fp32.", choices=PRECISIONS, group="train"
    )
    seed: int = param(0, "Random seed (same seed, same run).", group="train")
    video_root: str | None = param(
        None,
        "Folder of the videos of a Kinetics CSV (ids resolve to class/id files below it).",
        path="dir",
        group="train",
    )
    vggish_weights: str | None = param(  # audio: initialise from VGGish weights
        None,
        "Initialise from VGGish weights (vggish-10086976.pth).",
        path="file",
        exists=True,
        group="audio",
    )
    width: float = param(  # audio: VGG width multiplier
        1.0, "VGG width multiplier (1 = VGGish; smaller for CPU budgets).", group="audio"
    )
    # fine-tuning: every weight of this run's network but the classifier (kept when the class
    # lists are equal); its best.pt sha256 is recorded beside it
    init: str | None = param(
        None,
        "Fine-tune: start from every weight of this run (trained or imported, e.g. the authors' "
        "StNet) but the classifier, rebuilt for this list's classes. --arch, --backbone, -N and "
        "--net-opt default to the run's.",
        path="any",
        exists=True,
        group="net",
    )
    init_sha256: str | None = None

    # keys of older vidfeats' configs, read and translated by :meth:`upgrade`
    LEGACY_KEYS = ("amp",)

    @staticmethod
    def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """A config of an older vidfeat in today's keys: ``amp: false`` (mixed precision off)
        is ``precision: fp32``; ``amp: true`` did not record what ran (AMP on CUDA, float32
        on the CPU), so it reads as ``auto``."""
        data = dict(data)
        if "amp" in data:
            amp = data.pop("amp")
            data.setdefault("precision", "auto" if amp else "fp32")
        return data

    def validate(self) -> None:
        checks = [
            ("--epochs", self.epochs, 1),
            ("--batch-size", self.batch_size, 1),
            ("--segments", self.segments, 1),
            ("--frames", self.frames, 1),
            ("--workers", self.workers, 0),
        ]
        for name, v, lo in checks:
            if v < lo:
                raise ConfigError(f"{name} must be >= {lo} (got {v})")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0 (got {self.lr})")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"--optimizer must be sgd or adamw (got {self.optimizer})")
        if self.schedule not in ("step", "cosine"):
            raise ConfigError(f"--schedule must be step or cosine (got {self.schedule})")


def explicit_net_options(arch: str, modality: str, options: dict, legacy: bool = False) -> dict:
    """Every ``--net-opt`` of a segment network with its value, so a run folder says exactly
    which network it holds even when a default changes. ``legacy``: the options of a run
    written before StNet's TMB default became ``residual`` (it records no ``tmb``: ``paper``)."""
    if modality == "audio":
        return dict(options)
    from vidfeat.nets import SEGMENT_NETS
    from vidfeat.nets.clipnet import CLIP_NETS, is_clip_arch

    registry = CLIP_NETS if is_clip_arch(arch) else SEGMENT_NETS
    defaults = registry.get(arch).option_defaults()
    if legacy and arch == "stnet" and "tmb" not in options:
        defaults["tmb"] = "paper"
    return {**defaults, **options}


# --------------------------------------------------------------------------- reading

C = TypeVar("C")

# who writes a segment-network run: named when a config.yaml is not one
RUN_MADE_BY = "`vidfeat train` or `vidfeat models import`"


def read_config(
    path: str | Path,
    cls: type[C],
    *,
    kind: str = "run",
    made_by: str = RUN_MADE_BY,
    check: Callable[[dict[str, Any], Path], None] | None = None,
) -> C:
    """The ``cls`` (a config dataclass: :class:`TrainConfig`, the fusion runs' ``FuseConfig``)
    of the run config (``config.yaml``) at ``path``: the one reader of every run's config.

    Keys a run of an older vidfeat does not record take their defaults; a mapping field
    recorded as null is read as ``{}``. Raises :class:`RunError`, naming ``path`` and the key,
    for anything that is not such a config: an unreadable or huge file, a YAML syntax error,
    nesting too deep, a document that is not a mapping, missing required keys, unknown keys (a
    newer vidfeat's), values of the wrong type. ``kind``: what the refusals call such a run
    (e.g. ``"fusion run"``); ``made_by``: the commands whose ``--out`` folder the user should
    pass instead (e.g. ``"`vidfeat fuse train`"``); ``check``: what this kind of run checks
    beyond the types (raises :class:`RunError`)."""
    data = read_mapping(path)
    check_mapping(data, cls, path, kind=kind, made_by=made_by)
    if check is not None:
        check(data, Path(path))
    return from_mapping(cls, data)


def read_run_config(path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` of a run's ``config.yaml`` at ``path``: :func:`read_config`,
    and the modality must be one vidfeat knows. Raises :class:`RunError` (naming ``path`` and
    the key) for anything that is not a run config."""
    return read_config(path, TrainConfig, check=_check_modality)


def read_run_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of a run's ``config.yaml``, as written (no defaults filled in), checked as
    :func:`read_run_config` checks it."""
    data = read_mapping(path)
    check_run_mapping(data, path)
    return data


def config_from_mapping(data: dict, path: str | Path = CONFIG_YAML) -> TrainConfig:
    """A :class:`TrainConfig` of a mapping read from ``path`` (checked first)."""
    check_run_mapping(data, path)
    return from_mapping(TrainConfig, data)


def check_run_mapping(data: dict, path: str | Path = CONFIG_YAML) -> None:
    """Refuse a mapping that :class:`TrainConfig` cannot take (:func:`check_mapping`) or whose
    modality vidfeat does not know. Each error names ``path`` and the key."""
    check_mapping(data, TrainConfig, path)
    _check_modality(data, Path(path))


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The YAML mapping at ``path``, unchecked against any config; :class:`RunError` (naming
    ``path``) when the file is unreadable, too large, not YAML, nested too deeply or not a
    mapping."""
    import yaml

    path = Path(path)
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise RunError(
                path, None, f"{path.stat().st_size} bytes, too large to be a run's config"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(path, None, f"unreadable ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RunError(path, None, f"not valid YAML ({where}{problem})") from None
    except RecursionError:
        raise RunError(path, None, "nested too deeply to be a run's config") from None
    if not isinstance(data, dict):
        held = _KINDS.get(type(data).__name__, f"a {type(data).__name__}")
        raise RunError(path, None, f"holds {held}, not a mapping of key: value")
    return data


def check_mapping(
    data: dict, cls: type, path: str | Path, *, kind: str = "run", made_by: str = RUN_MADE_BY
) -> None:
    """Refuse a mapping that the config dataclass ``cls`` cannot take: missing required keys
    (first: a run of another kind lacks them), unknown keys, values of the wrong type. Each
    error names ``path`` and the key; ``kind`` and ``made_by`` as in :func:`read_config`.
    Fields of an annotation this module does not know are not type-checked."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [n for n, f in fields.items() if _required(f)]
    missing = [k for k in required if k not in data]
    if missing:
        raise RunError(
            path,
            missing[0],
            f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(every {kind} records {', '.join(required)}); pass the --out folder "
            f"of {made_by}",
        )
    legacy = set(getattr(cls, "LEGACY_KEYS", ()))
    unknown = [k for k in data if k not in fields and k not in legacy]
    if unknown:
        raise RunError(
            path,
            str(unknown[0]),
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"not a setting of vidfeat {__version__}'s {kind}s (written by a newer vidfeat? "
            "upgrade vidfeat to read it)",
        )
    for k, v in data.items():
        if k in legacy:
            continue
        want = _TYPES.get(_annotation(fields[k]))
        if want is not None and not _is(v, want):
            raise RunError(path, k, f"{k} must be {want[0]} (got {_short(v)})")


def from_mapping(cls: type[C], data: dict[str, Any]) -> C:
    """``cls`` of a mapping :func:`check_mapping` passed; null mapping fields become ``{}``."""
    upgrade = getattr(cls, "upgrade", None)
    data = upgrade(data) if upgrade is not None else data
    mappings = {f.name for f in dataclasses.fields(cls) if _annotation(f) == "dict"}
    return cls(**{k: ({} if k in mappings and v is None else v) for k, v in data.items()})


def _check_modality(data: dict[str, Any], path: Path) -> None:
    if data["modality"] not in MODALITIES:
        raise RunError(
            path,
            "modality",
            f"modality must be one of {', '.join(MODALITIES)} (got {_short(data['modality'])})",
        )


_KINDS = {"NoneType": "nothing", "str": "a single string", "list": "a list", "int": "a number"}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _annotation(f: dataclasses.Field) -> str:
    """A field's annotation as written: a string under ``from __future__ import annotations``,
    else the class's name (``int``) or the type's text (``str | None``)."""
    t = f.type
    return t if isinstance(t, str) else t.__name__ if isinstance(t, type) else str(t)


# the annotations of config fields and what a value read from YAML must be; a field of another
# annotation is not checked here
_TYPES: dict[str, tuple[str, tuple[type, ...]]] = {
    "str": ("a string", (str,)),
    "str | None": ("a string or null", (str, type(None))),
    "int": ("an integer", (int,)),
    "float": ("a number", (int, float)),
    "bool": ("true or false", (bool,)),
    "dict": ("a mapping", (dict, type(None))),  # null: none set (read as {})
    "list[str]": ("a list of strings", (list,)),
}


def _is(value: Any, want: tuple[str, tuple[type, ...]]) -> bool:
    types = want[1]
    if isinstance(value, bool) and bool not in types:  # YAML's true is no integer here
        return False
    if want[0] == "a list of strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, types)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
