"""The ``vidfeat`` command line: thin Click commands over the library, one module per group.

Every command parses its options, calls one library function and prints its report. Heavy
imports (torch, cv2, av, h5py) happen inside command bodies, and the options generated from a
dataclass when the command is used, so ``vidfeat --help`` is instant. The library raises
``vidfeat.errors.VidfeatError``; ``base`` turns it into a click error in one place (click
prints the message and exits non-zero, without a traceback).

- ``base``: the root group ``main``, ``--version``, library error -> click error;
- ``options``: shared options, ``RegistryChoice``, options generated from dataclass fields and
  from the flow methods' parameters;
- ``data``: ``data synth``, ``data probe``;
- ``extract``: ``extract flow``, ``extract rgb``, ``extract audio``;
- ``train``: ``train rgb``, ``train flow``, ``train audio``;
- ``fuse``: ``fuse train``, ``fuse eval``, ``fuse predict``;
- ``ensemble``: ``ensemble``, ``ensemble predict``;
- ``store``: ``store info``, ``store verify``, ``store export``, and ``show``;
- ``models``: ``models import paddle-stnet|paddle-tsn|timm``, ``models info``.

This module assembles the groups under ``main`` (the console script ``vidfeat`` and
``python -m vidfeat``).
"""

from __future__ import annotations

import os
import sys

from vidfeat.cores import fixed_mmap_threshold

# OpenMP threads that wait sleep instead of spinning. The decoding workers share the cores with
# the network's threads, and a spinning thread takes a core a decoder needs (bench_precision:
# `extract rgb` end to end 0.70 -> 0.75 of the bare forward, a `train rgb` epoch 13 % faster,
# the bare forward no slower). Read when torch loads its OpenMP runtime, so only before that;
# a value the user set is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


if sys.platform.startswith("linux"):
    fixed_mmap_threshold()  # (vidfeat.cores: a long extraction's memory stays flat)

from vidfeat.cli.base import main  # noqa: E402
from vidfeat.cli.data import data
from vidfeat.cli.ensemble import ensemble
from vidfeat.cli.extract import extract
from vidfeat.cli.fuse import fuse
from vidfeat.cli.models import models
from vidfeat.cli.store import show, store
from vidfeat.cli.train import train

for _command in (data, store, show, extract, train, fuse, ensemble, models):
    main.add_command(_command)

__all__ = ["main"]
