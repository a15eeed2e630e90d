"""The root of the command line: the ``vidfeat`` group, ``--version``, and the one place where
a library error becomes a click error.

The library raises :class:`vidfeat.errors.VidfeatError` (a message that says what to do, and
an exit code) and never prints or exits. :meth:`Root.invoke` runs every command of the tree, so
it alone turns such an error into a ``click.ClickException``: click prints ``Error: <message>``
and exits with the error's code, without a traceback. :class:`Command` and :class:`Group` are
the classes every command and group of the tree is made of.
"""

from __future__ import annotations

import signal
import threading
import warnings
from typing import Any

import click

from vidfeat import __version__
from vidfeat.cli.options import DataclassOptions
from vidfeat.errors import VidfeatError, VidfeatWarning

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Command(click.Command):
    """A command whose dataclass options (:func:`~vidfeat.cli.options.dataclass_options`) are
    generated when its parameters are first read: to parse its arguments or show its --help.
    ``vidfeat --help`` and a group's --help list commands without reading their parameters,
    so a dataclass's module loads only for the command run (none of them imports torch
    today, but a command's --help must not pay for another's)."""

    @property
    def params(self) -> list[click.Parameter]:  # type: ignore[override]
        if any(isinstance(p, DataclassOptions) for p in self._params):
            self._params = [
                o
                for p in self._params
                for o in (p.options() if isinstance(p, DataclassOptions) else [p])
            ]
        return self._params

    @params.setter
    def params(self, value: list[Any]) -> None:
        self._params = list(value)


class Group(click.Group):
    """A command group of the tree: its commands are :class:`Command`, its groups ``Group``."""

    command_class = Command
    group_class = type  # a subgroup is of its parent's class


class Root(Group):
    """The ``vidfeat`` group: every command runs inside :meth:`invoke`."""

    group_class = Group

    def invoke(self, ctx: click.Context) -> Any:
        _writes_past_the_size_limit_fail()
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except VidfeatError as exc:
                raise click_error(exc) from exc


def _writes_past_the_size_limit_fail() -> None:
    """Ignore SIGXFSZ, so that a write past the file-size limit (``ulimit -f``,
    RLIMIT_FSIZE) fails with EFBIG, which the commands report as one line naming their --out
    and the cause, instead of the signal killing the process (its default action: terminate
    with a core dump) with a half-written temporary left behind and no message.

    CPython's own startup already ignores SIGXFSZ (Python/pylifecycle.c, with SIGPIPE), so
    under ``vidfeat`` and ``python -m vidfeat`` this restates it; it matters where that did not
    happen: an interpreter embedded without its signal handlers, or a caller that restored the
    default before calling :data:`main` (as ``subprocess`` does for the programs it starts).
    Only the main thread may set a handler; elsewhere the process's disposition stands."""
    sigxfsz = getattr(signal, "SIGXFSZ", None)  # POSIX only
    if sigxfsz is not None and threading.current_thread() is threading.main_thread():
        signal.signal(sigxfsz, signal.SIG_IGN)


_python_showwarning = warnings.showwarning


def _show_warning(message: Any, category: type[Warning], *args: Any, **kw: Any) -> None:
    """vidfeat's warnings as one ``warning: <message>`` line on stderr; others as Python
    shows them (file, line and source)."""
    if issubclass(category, VidfeatWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, *args, **kw)


def click_error(exc: VidfeatError) -> click.ClickException:
    """A library error as click shows it: its message after ``Error:``, its exit code."""
    err = click.ClickException(exc.format_message())
    err.exit_code = exc.exit_code
    return err


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """The first lines of a bug report: vidfeat's version, the libraries that compute the
    features, and whether this torch sees a GPU."""
    if not value:
        return
    from vidfeat.provenance import environment_report

    click.echo(f"vidfeat {__version__}")
    for name, version in environment_report().items():
        click.echo(f"  {name:<8} {version}")
    ctx.exit()


@click.group(cls=Root, context_settings={**CONTEXT, "auto_envvar_prefix": "VIDFEAT"})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show vidfeat's version and those of torch, timm, OpenCV, PyAV; whether CUDA works.",
)
def main() -> None:
    """Per-segment multi-modal video features (RGB, optical flow, audio) and fusion models.

    Start with `vidfeat data synth OUT` for a dataset that needs no download. Every option can
    also come from the environment as VIDFEAT_<COMMAND>_<OPTION>, e.g.
    VIDFEAT_TRAIN_RGB_EPOCHS=5 (an option on the command line wins).
    """
