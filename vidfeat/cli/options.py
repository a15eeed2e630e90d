"""Options shared by the command groups, and options generated from dataclass fields.

- ``VIDEO_ROOT``, ``DEVICE``, ``SEED``, ``QUIET``: declared once, so the same flag means the
  same thing, with the same help, in every command;
- :class:`RegistryChoice`: ``click.Choice`` over a registry's names, read when first needed;
- :func:`dataclass_options` / :func:`config_values`: one option per field of a configuration
  dataclass (``RunOptions``, ``TrainConfig``, ``FuseConfig``), from the field's metadata (see
  :func:`vidfeat.params.param`), and the field values back from the parsed options;
- :func:`flow_method_options` / :func:`flow_params`: one option per flow-method parameter;
- the small checks every group uses: :func:`given`, :func:`video_root_applies`,
  :func:`progress_enabled`, :func:`parse_key_values`.

Nothing here imports torch: ``vidfeat --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from vidfeat.params import default_flag, option_fields

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

VIDEO_ROOT = click.option(
    "--video-root",
    type=click.Path(file_okay=False),
    help="Folder of the videos of a Kinetics CSV (ids resolve to class/id files below it).",
)
DEVICE = click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."
)


def _precision_option() -> Any:
    from vidfeat.precision import PRECISION_HELP, PRECISIONS

    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="auto",
        show_default=True,
        help=PRECISION_HELP,
    )


PRECISION = _precision_option()
SEED = click.option(
    "--seed", default=0, show_default=True, help="Random seed (same seed, same run)."
)
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")


def apply(f: F, options: Sequence[Decorator]) -> F:
    """Decorate ``f`` with ``options``; ``--help`` lists them in the order given."""
    for o in reversed(options):
        f = o(f)
    return f


# --------------------------------------------------------------------------- small checks


def given(name: str) -> bool:
    """True when option ``name`` was given (command line or environment), not defaulted."""
    src = click.get_current_context().get_parameter_source(name)
    return src not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def on_command_line(name: str) -> bool:
    """True when option ``name`` was given on the command line (not by its environment
    variable, nor defaulted)."""
    return click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE


def not_applicable(name: str, why: str) -> None:
    """Option ``name`` does not apply to this run: refused when given on the command line; from
    its ``VIDFEAT_...`` variable, which configures every run of the command, it is left out
    with a note on stderr saying so."""
    ctx = click.get_current_context()
    param = next(p for p in ctx.command.params if p.name == name)
    flag = max(param.opts, key=len)
    if on_command_line(name):
        raise click.UsageError(f"{flag} {why}")
    var = param.envvar or f"{ctx.auto_envvar_prefix}_{name.upper()}"
    click.echo(f"note: {var} ({flag}) left out: it {why}", err=True)


def progress_enabled(quiet: bool) -> bool:
    """A progress bar unless --quiet, and only where someone watches it (stderr a terminal)."""
    return not quiet and sys.stderr.isatty()


def video_root_applies(video_root: str | Path | None, *lists: str | Path | None) -> None:
    """--video-root resolves the ids of a Kinetics CSV to files below it; with lists that name
    their files (paths relative to the list) it would change nothing, so it is refused."""
    if video_root is None:
        return
    from vidfeat.videolist import list_format

    formats = {str(p): list_format(p) for p in lists if p is not None}
    if not formats:
        raise click.UsageError("--video-root applies only with --videos (it resolves that list)")
    if not any(f in ("kinetics", None) for f in formats.values()):  # None: the loader says why
        raise click.UsageError(
            f"--video-root applies to a Kinetics CSV (its ids resolve to files below the root); "
            f"{', '.join(formats)} names its files (relative to the list's folder): leave "
            "--video-root out"
        )


def parse_key_values(pairs: Iterable[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` options (``--net-opt``, ``--head-opt``) → a dict; values read as YAML
    (numbers, booleans, lists), keys with ``-`` as ``_``."""
    import yaml

    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint=flag)
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


# --------------------------------------------------------------------------- registries


class RegistryChoice(click.Choice):
    """``click.Choice`` over a registry's names, read when first needed: ``vidfeat --help``
    stays instant while the choices stay the registry's own (a new entry needs no CLI edit)."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names
        self._cached: tuple[str, ...] | None = None
        super().__init__([], case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._cached is None:
            self._cached = tuple(self._names())
        return self._cached

    @choices.setter
    def choices(self, value: Any) -> None:  # click's __init__ assigns the (empty) list
        pass


def registry_names(spec: str) -> Callable[[], list[str]]:
    """``"module:NAME"`` → a function returning that registry's names (imported when called)."""
    module, _, name = spec.partition(":")

    def names() -> list[str]:
        return list(getattr(importlib.import_module(module), name).names())

    return names


def flow_method_names() -> list[str]:
    return registry_names("vidfeat.flow:FLOW_METHODS")()


# --------------------------------------------------------------------------- dataclass options


def _has_default(fld: dataclasses.Field) -> bool:
    return fld.default is not dataclasses.MISSING or fld.default_factory is not dataclasses.MISSING


def _is_off_flag(fld: dataclasses.Field) -> bool:
    """A bool field that defaults to True: its option is a flag that turns it off."""
    return fld.default is True


def _value_type(fld: dataclasses.Field) -> Any:
    """The click type of a field's values, from its metadata or its default."""
    meta = fld.metadata
    if meta.get("registry"):
        return RegistryChoice(registry_names(meta["registry"]))
    if meta.get("choices"):
        return click.Choice(meta["choices"])
    if meta.get("path"):
        kind = meta["path"]
        return click.Path(
            exists=bool(meta.get("exists")), file_okay=kind != "dir", dir_okay=kind != "file"
        )
    kind = meta.get("type") or (type(fld.default) if fld.default is not None else str)
    if meta.get("min") is not None:
        return (click.IntRange if kind is int else click.FloatRange)(min=meta["min"])
    return kind


def field_option(fld: dataclasses.Field) -> click.Option:
    """The option of a field made with :func:`vidfeat.params.param`.

    A bool field is a flag (one that defaults to True: a flag that turns it off); a field
    without a default is required; an ``unset`` field's option defaults to None (not given)."""
    meta = fld.metadata
    text = meta.get("help", "")
    if meta.get("default_text"):
        text = f"{text} [default: {meta['default_text']}]"
    attrs: dict[str, Any] = {"help": text or None}
    if isinstance(fld.default, bool):
        attrs["is_flag"] = True
    elif meta.get("multiple"):
        attrs.update(multiple=True, metavar=meta.get("metavar"))
    else:
        attrs["type"] = _value_type(fld)
        if not _has_default(fld) and not meta.get("unset"):
            attrs["required"] = True
        elif not meta.get("unset") and fld.default is not None:
            attrs["default"] = fld.default
        attrs["show_default"] = "default" in attrs and not meta.get("default_text")
    return click.Option(list(meta.get("flags") or (default_flag(fld.name),)), **attrs)


class DataclassOptions:
    """Stands in a command's parameters for the options of a dataclass's fields until the
    command is used (:class:`vidfeat.cli.base.Command` expands it): ``load`` imports the
    dataclass only then, since its module may import torch."""

    def __init__(self, load: Callable[[], type], group: str | None) -> None:
        self.load = load
        self.group = group

    def options(self) -> list[click.Option]:
        return [field_option(f) for f in option_fields(self.load(), self.group)]


def dataclass_options(load: Callable[[], type], group: str | None = None) -> Decorator:
    """Decorate a command with one option per field of the dataclass ``load()`` returns (of
    ``group``, when given), in field order, generated when the command is first used."""

    def deco(f: F) -> F:
        # click's own decorators collect a function's parameters in this attribute
        f.__dict__.setdefault("__click_params__", []).append(DataclassOptions(load, group))
        return f

    return deco


def config_values(cls: type, kw: dict[str, Any], group: str | None = None) -> dict[str, Any]:
    """The values of the fields of ``cls`` (of ``group``) from a command's parsed options
    ``kw``: an off flag negated, a ``null`` choice as None, an option left out (None) as the
    field's default. Options that need more than that (``--shard i/N``, ``KEY=VALUE`` lists)
    are the command's to convert: it overrides these values."""
    out: dict[str, Any] = {}
    for fld in option_fields(cls, group):
        value = kw[field_option(fld).name]
        if _is_off_flag(fld):
            value = not value
        elif value is not None and value == fld.metadata.get("null"):
            value = None
        elif value is None and _has_default(fld) and fld.default is not None:
            continue  # left out: the field's default
        out[fld.name] = value
    return out


# --------------------------------------------------------------------------- flow methods


def flow_method_options(f: F) -> F:
    """One option per algorithm parameter of every flow method (OpenCV's defaults), and
    --flow-weights for the methods that run a network."""
    from vidfeat.flow import (
        FLOW_METHODS,
        method_param_fields,
        option_name,
        param_choices,
        param_default_text,
        param_type,
    )

    owned: dict[str, tuple[str, Any]] = {}  # option → (method, field): the first method's
    for name in FLOW_METHODS.names():
        for fld in method_param_fields(name):
            owned.setdefault(option_name(fld.name), (name, fld))
    f = click.option(
        "--flow-weights",
        type=click.Path(exists=True, dir_okay=False),
        help="[raft] Weights of the flow network (a state dict file); default: torchvision's "
        "file in the torch hub cache (nothing is downloaded).",
    )(f)
    # click lists options in the reverse order of decoration: reversed, --help shows each
    # method's options in their declared order, the methods alphabetically
    for opt, (name, fld) in reversed(owned.items()):
        choices, kind = param_choices(fld), param_type(fld)
        f = click.option(
            opt,
            fld.name,
            type=click.Choice(choices) if choices else (click.BOOL if kind is bool else kind),
            default=None,
            help=f"[{name}] {fld.metadata.get('help', '')} (default {param_default_text(fld)})",
        )(f)
    return f


def flow_params(method: str, kw: dict[str, Any]) -> dict[str, Any]:
    """Pop every flow-algorithm option from ``kw``: the ones given, by field name. Those that
    are not ``method``'s own are refused here, before any input is read."""
    from vidfeat.flow import FLOW_METHODS, check_params, method_param_fields

    every = {fld.name for n in FLOW_METHODS.names() for fld in method_param_fields(n)}
    params = {k: v for k in list(kw) if k in every and (v := kw.pop(k)) is not None}
    check_params(method, params)
    return params
