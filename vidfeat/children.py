"""The Python processes vidfeat starts never import a module from the user's current folder.

``python -c CODE`` (and multiprocessing's spawn, which is one) puts the current folder first on
the import path, so a ``pickle.py`` in the folder where someone runs ``vidfeat store verify``
or ``vidfeat extract`` would run in every worker. Python's safe path (``-P``,
``PYTHONSAFEPATH=1``, 3.11+) leaves it out:

- :func:`python_command`: the interpreter with ``-P``, for a worker started by hand;
- :func:`safe_path_children`: ``PYTHONSAFEPATH=1`` in the environment while children start
  (multiprocessing's spawn, a local Ray instance), restored afterwards;
- :func:`outside_the_current_folder`: Ray adds the driver's current folder to its workers'
  import path; the driver joins from an empty folder of its own instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_ENV_LOCK = threading.Lock()


def python_command() -> list[str]:
    """The interpreter, with the safe path: ``[sys.executable, "-P"]``."""
    return [sys.executable, "-P"]


@contextmanager
def safe_path_children() -> Iterator[None]:
    """``PYTHONSAFEPATH=1`` for the children started inside the block (they copy the
    environment when they start); the variable is restored after it."""
    with _ENV_LOCK:
        before = os.environ.get("PYTHONSAFEPATH")
        os.environ["PYTHONSAFEPATH"] = "1"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("PYTHONSAFEPATH", None)
            else:
                os.environ["PYTHONSAFEPATH"] = before


_EMPTY: list[str] = []  # this process's empty folder, made on first use


def _empty_folder() -> str:
    if not _EMPTY:
        import atexit
        import shutil

        _EMPTY.append(tempfile.mkdtemp(prefix="vidfeat-cwd-"))  # mode 0700, empty
        atexit.register(shutil.rmtree, _EMPTY[0], True)
    return _EMPTY[0]


@contextmanager
def outside_the_current_folder() -> Iterator[str]:
    """Run the block with an empty private folder as the current folder (then back): for a
    library that reads the current folder to set up processes of its own (Ray, whose local
    instance's workers also start there). The folder lives as long as this process; paths
    the block uses must be absolute."""
    here = os.getcwd()
    empty = _empty_folder()
    os.chdir(empty)
    try:
        yield empty
    finally:
        os.chdir(here)
