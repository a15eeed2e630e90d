"""One error hierarchy for vidfeat.

Every error a user can cause derives from :class:`VidfeatError`, a ``click.ClickException``,
so the command line prints its message (which says what to do) and exits non-zero without a
traceback. Library callers can catch the narrower classes.
"""

from __future__ import annotations

from pathlib import Path

import click


class VidfeatError(click.ClickException):
    """Base class: a problem the user can fix; the message says how."""

    exit_code = 2


class ListError(VidfeatError):
    """A video list is malformed (the message names the file and line)."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


class ConfigError(VidfeatError):
    """Invalid options or a configuration that does not match stored data."""


class RunError(ConfigError):
    """A folder given as a run is not one, or its ``config.yaml`` is not a run's config (the
    message names the file and, where one is at fault, the key)."""

    def __init__(
        self, path: str | Path, key: str | None, message: str, *, flag: str | None = None
    ) -> None:
        super().__init__(f"{flag + ' ' if flag else ''}{path}: {message}")
        self.path = str(path)
        self.key = key


class StoreError(VidfeatError):
    """The feature store is unreadable, inconsistent or cannot be written."""


class DecodeError(VidfeatError):
    """A video or audio file cannot be decoded. Carries the path and a one-line cause."""

    cause = "cannot be decoded"

    def __init__(self, path: str | Path, detail: str | None = None) -> None:
        self.path = str(path)
        self.detail = detail
        msg = f"{path}: {self.cause}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class MissingFileError(DecodeError):
    cause = "file not found"


class NotAFileError(DecodeError):
    cause = "not a regular file"


class EmptyFileError(DecodeError):
    cause = "file is empty (0 bytes)"


class NotAVideoError(DecodeError):
    cause = "not a readable media container (wrong format or not a video)"


class NoVideoStreamError(DecodeError):
    cause = "contains no video stream"


class UnsupportedCodecError(DecodeError):
    cause = "codec not supported by this FFmpeg build"


class TruncatedVideoError(DecodeError):
    cause = "file is truncated or corrupt (fewer frames than its header declares)"


class CorruptVideoError(DecodeError):
    cause = "corrupt data; decoding failed"


class NoFrameRateError(CorruptVideoError):
    """The header and the timestamps give no plausible frame rate (e.g. a zero timescale)."""

    cause = "no usable frame rate in the header or timestamps"


class TooFewFramesError(DecodeError):
    """The video decodes but holds fewer frames than the modality needs (flow needs a pair)."""

    cause = "too few frames"
