"""Reading a ``torch.save`` file someone else wrote: :func:`load_torch_file`, the one way
vidfeat reads a ``.pt`` / ``.pth`` file (state dicts for ``--backbone-weights`` and ``models
import --weights``, a run's ``best.pt`` / ``last.pt``, fusion checkpoints, ``--flow-weights``,
VGGish weights and PCA parameters).

``torch.load(weights_only=True)`` runs no code from the file, but on its own it still lets a
file someone else wrote hang, crash or exhaust vidfeat (issue 24):

* a FIFO blocks it forever, ``/dev/zero`` never ends;
* a dict key of tuples nested 3M deep crashes the process (a segfault: hashing the key
  recurses in C);
* a zip member compressed with deflate is inflated to the size it claims (a zip bomb: 1 GiB
  from a 1 MB file);
* its allow-list still lets a 90-byte pickle call ``bytearray(10**10)`` (10 GB of zeros).

So the file is checked first, and torch reads only what was checked:

1. **A regular file.** :func:`open_regular` looks (``stat``) before it opens, then opens
   without blocking (``O_NONBLOCK``) and looks again at the open descriptor (``fstat``):
   anything else (FIFO, device, directory, socket) is refused, never read.
2. **Its structure**, one of the two formats ``torch.save`` writes:

   * *zip* (torch >= 1.6): the end-of-central-directory record (and the zip64 one torch
     writes) at the very end, no comment, the central directory right before it; every member
     *stored* (``torch.save`` compresses nothing) under one top folder, names unique (torch
     looks them up ignoring ASCII case), its data inside the file before the central directory
     and overlapping no other member's; ``<folder>/data.pkl`` present;
   * *legacy* (torch < 1.6, e.g. the VGGish weights): the magic-number, protocol and
     system-info pickles, the object's pickle, the list of storage keys, then each storage as
     its element count and bytes, every one where the pickles say.

3. **The pickles**, opcode by opcode with a stack of placeholders (no object is made and
   nothing named is imported), within limits no state dict or training checkpoint comes near:
   the opcodes torch's weights-only unpickler knows, at most :data:`MAX_OPCODES` of them;
   globals only from :data:`GLOBALS` (a state dict's: ``OrderedDict``, the tensor and parameter
   rebuilders, storage types and dtypes), narrower than torch's allow-list, which also holds
   ``bytearray``, ``set``, ``_codecs.encode`` and the quantized, sparse and nested tensor
   rebuilders; containers nested at most :data:`MAX_DEPTH` deep (a checkpoint nests < 10) and
   never grown after they were put inside another (which could hide depth, or make a cycle);
   a memo index below the number of opcodes read; and each storage a persistent id names at
   most the bytes the file holds for it (zip: exactly its record's size).
4. **torch.load** (``weights_only=True``, ``map_location="cpu"``) from the descriptor that was
   checked, through :class:`_Snapshot`: every byte the checks read is served as the checks saw
   it, so a file rewritten in the meantime cannot swap in another pickle or directory. Any
   exception becomes one :class:`~vidfeat.errors.ConfigError`.
5. **The tensors**: none may claim more elements than its storage holds (a zero-stride view
   of 4 bytes claiming ``[64, 3·10⁶, 7, 7]``, which would take 37.6 GB once copied).

Every refusal is one ``ConfigError``: ``<what> <path>: refused, not a plain state dict
(<the problem>)``, or ``not a regular file (a FIFO)``, or ``file not found``. Imports no torch
until a file has passed the checks.

Modules, in the order a file is checked: ``files`` (the limits, a regular file, the snapshot
torch reads), ``pickles`` (the opcode scan), ``archives`` (zip and legacy containers), ``load``
(:func:`load_torch_file`, the tensors against their storages).
"""

from vidfeat.nets.torchfile.files import (
    GLOBALS,
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    MAX_DEPTH,
    MAX_OPCODES,
    check_regular,
    open_regular,
)
from vidfeat.nets.torchfile.load import beyond_storage, fit_state, load_torch_file

__all__ = [
    "GLOBALS",
    "LEGACY_MAGIC",
    "LEGACY_PROTOCOL",
    "MAX_DEPTH",
    "MAX_OPCODES",
    "beyond_storage",
    "check_regular",
    "fit_state",
    "load_torch_file",
    "open_regular",
]
