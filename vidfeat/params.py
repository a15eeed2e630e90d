"""Configuration fields declared once: a dataclass field that carries its own option.

A field made with :func:`param` holds, in its ``metadata``, how a user sets it: the help text,
the command-line flags, the type, the allowed values. ``vidfeat.cli.options`` generates one
click option per such field, so a configuration dataclass (``RunOptions``, ``TrainConfig``,
``FuseConfig``) and its options cannot drift apart. The flow methods' parameter fields
(``vidfeat.flow``) use the same ``help`` / ``type`` / ``choices`` / ``default_text`` keys.

Plain data only: nothing here imports click, and a dataclass that uses it stays a library type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

PATH_KINDS = ("file", "dir", "any")


def param(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - mirrors click's argument name
    *,
    flags: tuple[str, ...] = (),
    kind: type | None = None,
    choices: tuple[str, ...] | None = None,
    registry: str | None = None,
    null: str | None = None,
    default_text: str | None = None,
    unset: bool = False,
    path: str | None = None,
    exists: bool = False,
    min: float | None = None,  # noqa: A002 - the option's lower bound
    multiple: bool = False,
    metavar: str | None = None,
    group: str | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that is also a command-line option.

    ``flags``: click's declarations (``("--videos", "train_list")``: the flag, and the name the
    command reads it under); default ``--field-name``. A ``bool`` field whose default is True is
    a flag that turns it off (``--no-flip`` sets ``flip`` False). ``kind``: the value type when
    the default does not tell (None); ``choices``: the allowed strings; ``registry``: the
    allowed strings are ``module:NAME``'s ``names()``, read when first needed; ``null``: the
    choice that stands for None. ``default_text``: how the help names the default;
    ``unset``: the option has no default of its own (left out, the field's default applies, and
    a command can tell it was not given). ``path``: a ``file``, ``dir`` or ``any`` path
    (``exists``: it must exist); ``min``: the lower bound of a number; ``multiple`` /
    ``metavar``: a repeatable option. ``group``: the commands that take it, when a dataclass
    serves several (``TrainConfig``: ``train`` for every train command, ``net`` for the
    segment-network ones). A field without a default is a required option."""
    if path is not None and path not in PATH_KINDS:
        raise ValueError(f"path must be one of {PATH_KINDS} (got {path!r})")
    meta: dict[str, Any] = {"help": help, "flags": tuple(flags)}
    extra = {
        "type": kind,
        "choices": tuple(choices) if choices is not None else None,
        "registry": registry,
        "null": null,
        "default_text": default_text,
        "path": path,
        "min": min,
        "metavar": metavar,
        "group": group,
    }
    meta.update({k: v for k, v in extra.items() if v is not None})
    meta.update(
        {k: True for k, v in (("unset", unset), ("exists", exists), ("multiple", multiple)) if v}
    )
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def default_flag(field_name: str) -> str:
    """The option of a field that declares no flag: ``lambda_`` → ``--lambda``,
    ``inner_iterations`` → ``--inner-iterations``."""
    return "--" + field_name.rstrip("_").replace("_", "-")


def option_flag(fld: dataclasses.Field) -> str:
    """The flag a user sets field ``fld`` with (its first declared flag, else its default)."""
    flags = [f for f in fld.metadata.get("flags", ()) if f.startswith("-")]
    return flags[0] if flags else default_flag(fld.name)


def option_fields(cls: type, group: str | None = None) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` that are options (of ``group``, when given), in order."""
    return [
        f
        for f in dataclasses.fields(cls)
        if "help" in f.metadata and (group is None or f.metadata.get("group") == group)
    ]
