"""One error hierarchy for vidfeat.

Every error a user can cause derives from :class:`VidfeatError`, a plain ``Exception`` with a
message (which says what to do) and an exit code. The library raises them and never prints or
exits; the command line turns them into click errors in one place (``vidfeat.cli.base``), so it
prints the message and exits with the code, without a traceback. Library callers can catch the
narrower classes. Nothing here imports click: the library does not depend on the command line.
"""

from __future__ import annotations

from pathlib import Path


class VidfeatError(Exception):
    """Base class: a problem the user can fix; the message says how."""

    exit_code = 2  # what the command line exits with

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def format_message(self) -> str:
        """The message as the command line prints it (after ``Error:``)."""
        return self.message


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


class VidfeatWarning(UserWarning):
    """Something needs the user's attention, and the work goes on. The command line prints it
    as one ``warning: <message>`` line."""


class StoreWarning(VidfeatWarning):
    """Something in the store needs attention but reading can go on (e.g. a corrupt shard)."""


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
