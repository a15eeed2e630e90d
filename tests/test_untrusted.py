"""Untrusted files (issue 24): weights from the internet, and stores and run folders written by
someone else, can neither run code, read outside what the user asked for, nor crash vidfeat.

Each section builds its hostile files by hand and checks one clean refusal: exit code 1 or 2,
an error line naming the file, no traceback, no signal, nothing written, within the memory limit
and the timeout below.

Sections:

- the harness: the command line in a child process under ``RLIMIT_AS`` and a timeout;
- ``.pdparams``: the PaddlePaddle parameter reader (:mod:`vidfeat.nets.paddle`);
- ``.pt`` / ``.pth``: every torch file vidfeat reads, through
  :func:`vidfeat.nets.torchfile.load_torch_file` (zip and legacy payloads by hand; each reader
  and the command lines that reach it);
- the current folder: the processes vidfeat starts import nothing from it
  (:mod:`vidfeat.children`).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vidfeat import load_model
from vidfeat.errors import ConfigError
from vidfeat.models import import_paddle
from vidfeat.nets import paddle
from vidfeat.nets.paddle import METADATA_KEYS, describe_params, load_pdparams

REPO = Path(__file__).resolve().parents[1]

# =========================================================================== the harness

# Address space of a child. Note: torch cannot even be imported under it on a typical Linux box
# (libtorch maps more), so a file refused under this limit was refused before torch was needed.
MEMORY_LIMIT = 1_500_000_000
TIMEOUT = 60  # seconds; a FIFO read would block forever


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_vidfeat(*args: object, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``python -m vidfeat ARGS`` from the repository, under the memory limit and timeout."""
    return subprocess.run(
        [sys.executable, "-m", "vidfeat", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
    )


def assert_refused(proc: subprocess.CompletedProcess, path: Path, says: str, out: Path) -> None:
    """One clean refusal: exit 1 or 2 (not a signal), no traceback, one error line naming the
    file and saying ``says``, and ``out`` not created (or left empty)."""
    text = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), f"exit {proc.returncode} (< 0: a signal)\n{text}"
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and str(path) in errors[0], text
    assert re.search(says, errors[0]), f"{says!r} not in: {errors[0]}"
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


# =========================================================================== .pdparams
#
# Payloads are written opcode by opcode (no paddle, no network): what numpy's and Python's
# picklers write for a Fluid save, and the ways a file can lie about it.

LISTING = Path(__file__).parent / "data" / "stnet_paddle_params.txt"
META = METADATA_KEYS[0]  # "StructuredToParameterName@@"


def listing() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the authors' StNet-R50 program, in creation order."""
    rows = []
    for line in LISTING.read_text().splitlines():
        m = re.match(r"^(\S+)\s+\[([\d, ]*)\]", line)
        if m:
            rows.append((m.group(1), tuple(int(d) for d in m.group(2).split(","))))
    return rows


def tsn_listing(k: int = 5) -> list[tuple[str, tuple[int, ...]]]:
    """The authors' TSN-R50: the explicit ResNet names, a 3-channel conv1 and fc_0 [2048, K]."""
    rows = [(n, s) for n, s in listing() if not n.startswith(("xception_", "conv3d_", "batch_"))]
    rows = [(n, s) for n, s in rows if not n.startswith("fc_")]
    rows[0] = ("conv1_weights", (64, 3, 7, 7))
    return rows + [("fc_0.w_0", (2048, k)), ("fc_0.b_0", (k,))]


# ------------------------------------------------------------------- opcodes


def s_(text: str) -> bytes:  # BINUNICODE
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def b_(data: bytes) -> bytes:  # BINBYTES
    return pickle.BINBYTES + struct.pack("<I", len(data)) + data


def i_(n: int) -> bytes:  # BININT
    return pickle.BININT + struct.pack("<i", n)


def g_(module: str, name: str) -> bytes:  # GLOBAL
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def t_(*items: bytes) -> bytes:  # MARK ... TUPLE
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def call(fn: bytes, *args: bytes) -> bytes:  # fn(*args) by REDUCE
    return fn + t_(*args) + pickle.REDUCE


N, F, T = pickle.NONE, pickle.NEWFALSE, pickle.NEWTRUE
RECONSTRUCT = g_("numpy.core.multiarray", "_reconstruct")


def dtype_state(order: str = "<", flags: int = 0) -> bytes:
    return t_(i_(3), s_(order), N, N, N, i_(-1), i_(-1), i_(flags))


def dtype_(code: str, state: bytes | None = None) -> bytes:
    """numpy.dtype(code, False, True) and its BUILD, as numpy writes it."""
    order = "|" if code in ("b1", "i1", "u1", "|O", "O", "object") else "<"
    return call(g_("numpy", "dtype"), s_(code), F, T) + (state or dtype_state(order)) + b"b"


def array_(shape: tuple[int, ...], dtype: bytes, data: bytes, fortran: bool = False) -> bytes:
    """_reconstruct(ndarray, (0,), b'b') and BUILD (1, shape, dtype, fortran, data)."""
    head = call(RECONSTRUCT, g_("numpy", "ndarray"), t_(i_(0)), b_(b"b"))
    state = t_(i_(1), t_(*map(i_, shape)), dtype, T if fortran else F, data)
    return head + state + pickle.BUILD


def f4_(shape: tuple[int, ...], data: bytes | None = None) -> bytes:
    n = int(np.prod(shape))
    return array_(shape, dtype_("f4"), b_(data if data is not None else bytes(4 * n)))


def strided_(shape: tuple[int, ...]) -> bytes:
    """numpy.ndarray(shape, f4, 4 bytes, 0, zero strides): one value repeated over ``shape``."""
    zeros = t_(*(i_(0) for _ in shape))
    return call(
        g_("numpy", "ndarray"), t_(*map(i_, shape)), dtype_("f4"), b_(bytes(4)), i_(0), zeros
    )


def pdparams(entries: list[tuple[bytes | str, bytes]], proto: int = 2) -> bytes:
    """A pickled dict of ``entries`` (key opcodes or a str, value opcodes)."""
    items = b"".join((s_(k) if isinstance(k, str) else k) + v for k, v in entries)
    return pickle.PROTO + bytes([proto]) + pickle.EMPTY_DICT + pickle.MARK + items + b"u."


def fluid_save(params: dict, proto: int = 2) -> bytes:
    return pickle.dumps(params, protocol=proto)  # what fluid.save / paddle.save write


def small_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv1_weights": rng.standard_normal((64, 3, 7, 7)).astype(np.float32),
        "bn_conv1_scale": rng.standard_normal(64).astype(np.float32),
        "fc_0.w_0": rng.standard_normal((2048, 3)).astype(np.float32),
        "fc_0.b_0": np.zeros(3, np.float32),
    }


# ------------------------------------------------------------------- payloads

POINTER = struct.pack("<Q", 0x4141414141414141)  # where Py_DECREF would write
OBJECT_FLAGS_BUT_LIST_PICKLE = 0x3F & ~0x02  # the dtype BUILD that clears NPY_LIST_PICKLE


def _object_list(*items: bytes) -> bytes:  # [items] for an object array's state
    return pickle.EMPTY_LIST + pickle.MARK + b"".join(items) + pickle.APPENDS


def _res_names(conv1: bytes) -> list[tuple[bytes | str, bytes]]:
    """conv1 and one tiny tensor per ResNet-50 block name: enough for describe_params."""
    names = [n for n, _ in listing() if re.match(r"^res[2-5][a-z]\d*_branch2a_weights$", n)]
    return [("conv1_weights", conv1)] + [(n, f4_((1,))) for n in names]


def _nested_key(depth: int) -> bytes:
    return pickle.PROTO + b"\x02}" + s_("a") + pickle.TUPLE1 * depth + f4_((1,)) + b"s."


def _zero_strided_listing() -> bytes:
    return pdparams([(n, strided_(s)) for n, s in listing()])


def _shared_buffer() -> bytes:
    """301 tensors of the listing's BN shapes whose data is one memoized buffer (BINGET)."""
    names = [(n, s) for n, s in listing() if len(s) == 1][:301]
    big = max(s[0] for _, s in names)
    first = b_(bytes(4 * big)) + pickle.BINPUT + b"\x00"
    entries = []
    for i, (n, _) in enumerate(names):
        data = first if i == 0 else pickle.BINGET + b"\x00"
        entries.append((n, array_((big,), dtype_("f4"), data)))
    return pdparams(entries)


def _truncated() -> bytes:
    whole = fluid_save(small_params())
    return whole[: len(whole) // 2]


def _object_array_in_metadata() -> bytes:
    meta = {"conv1.weight": np.array([1, "a"], dtype=object)}
    return fluid_save({**small_params(), META: meta})


def _object_code_in_metadata() -> bytes:  # dtype 'object' passed the old first-letter check
    obj = array_((2,), dtype_("object"), _object_list(i_(1), s_("a")))
    meta = pickle.EMPTY_DICT + s_("conv1.weight") + obj + pickle.SETITEM
    return pdparams([("conv1_weights", f4_((64, 3, 7, 7))), (META, meta)])


class Payload:
    """A hostile ``.pdparams``: how to make it, and what the refusal must say."""

    def __init__(self, says: str, make: Callable[[Path], None]) -> None:
        self.says, self.make = says, make


def _bytes(data: Callable[[], bytes], says: str) -> Payload:
    return Payload(says, lambda p: p.write_bytes(data()))


def _pointer_array(dtype: bytes) -> bytes:
    """{"x": a one-element array of ``dtype`` whose 8 data bytes are a pointer}."""
    return pdparams([("x", array_((1,), dtype, b_(POINTER)))])


SEGFAULT_DTYPE = dtype_("|O", dtype_state("|", OBJECT_FLAGS_BUT_LIST_PICKLE))
STRUCTURED_STATE = t_(i_(3), s_("|"), t_(s_("a")), pickle.EMPTY_DICT, i_(8), i_(1), i_(16))

PAYLOADS: dict[str, Payload] = {
    # an object dtype past the old first-letter check; BUILD clears its list-pickle flag and
    # the raw bytes become a PyObject pointer: the 160-byte segfault
    "segfault-|O": _bytes(lambda: _pointer_array(SEGFAULT_DTYPE), r"numpy dtype '\|O'"),
    "dtype-O": _bytes(lambda: _pointer_array(dtype_("O")), "numpy dtype 'O'"),
    "dtype-object": _bytes(lambda: _pointer_array(dtype_("object")), "numpy dtype 'object'"),
    "numpy-object-array": _bytes(
        lambda: fluid_save({"x": np.array([1, "a"], dtype=object)}), "numpy dtype 'O8'"
    ),
    # the dtype BUILD trick on a numeric code: object flags, or fields, on float64
    "dtype-build-f8-flags": _bytes(
        lambda: _pointer_array(dtype_("f8", dtype_state("<", 1))), "dtype f8 with the state"
    ),
    "dtype-build-f8-structured": _bytes(
        lambda: _pointer_array(dtype_("f8", STRUCTURED_STATE)), "dtype f8 with the state"
    ),
    "metadata-object-array": _bytes(_object_array_in_metadata, "numpy dtype 'O8'"),
    "metadata-object-code": _bytes(_object_code_in_metadata, "numpy dtype 'object'"),
    "memo-bomb": _bytes(
        lambda: pickle.PROTO + b"\x02N" + pickle.LONG_BINPUT + struct.pack("<I", 0x08000000) + b".",
        "memo index 134,217,728",
    ),
    "ndarray-zero-strides-conv1-3e4": _bytes(
        lambda: pdparams([("conv1_weights", strided_((64, 3 * 10**4, 7, 7)))]), "called directly"
    ),
    "ndarray-zero-strides-conv1-3e6": _bytes(
        lambda: pdparams([("conv1_weights", strided_((64, 3 * 10**6, 7, 7)))]), "called directly"
    ),
    "ndarray-zero-strides-301-tensors": _bytes(_zero_strided_listing, "called directly"),
    "shared-buffer-301-tensors": _bytes(_shared_buffer, "more than the file's"),
    "conv1-declared-3e4": _bytes(
        lambda: pdparams([("conv1_weights", f4_((64, 3 * 10**4, 7, 7), bytes(4)))]),
        r"conv1_weights has shape \[64, 30000, 7, 7\].*N ≤ 64",
    ),
    "conv1-declared-3e6": _bytes(
        lambda: pdparams([("conv1_weights", f4_((64, 3 * 10**6, 7, 7), bytes(4)))]),
        r"conv1_weights has shape \[64, 3000000, 7, 7\]",
    ),
    "keys-nested-30k": _bytes(lambda: _nested_key(30_000), "nested more than 4 deep"),
    "keys-nested-3M": _bytes(lambda: _nested_key(3_000_000), "nested more than 4 deep"),
    "conv1-1d": _bytes(lambda: pdparams(_res_names(f4_((64,)))), r"conv1_weights has shape \[64\]"),
    "truncated": _bytes(_truncated, "truncated"),
    "code-os.system": _bytes(
        lambda: fluid_save({"x": OsSystem()}), re.escape(f"{os.system.__module__}.system")
    ),
    "fifo": Payload(r"not a regular file \(a FIFO\)", lambda p: os.mkfifo(p)),
    "directory": Payload("is a directory", lambda p: p.mkdir()),  # click's --weights check
    "symlink-to-dev-zero": Payload(
        r"not a regular file \(a character device\)", lambda p: p.symlink_to("/dev/zero")
    ),
}


class OsSystem:
    def __reduce__(self):
        return os.system, ("touch pwned",)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, tuple[Path, Path, subprocess.CompletedProcess, float]]:
    """Every payload through ``vidfeat models import paddle-stnet FILE --out OUT`` in its own
    child (two at a time): {name: (file, out, result, seconds)}."""
    root = tmp_path_factory.mktemp("pdparams")

    def run(name: str):
        path, out = root / f"{name}.pdparams", root / f"{name}.run"
        PAYLOADS[name].make(path)
        t0 = time.monotonic()
        arch = "paddle-tsn" if name.startswith(("fifo", "memo")) else "paddle-stnet"
        proc = run_vidfeat("models", "import", arch, path, "--out", out)
        return name, (path, out, proc, time.monotonic() - t0)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, PAYLOADS))


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_cli_refuses_each_pdparams_payload(name: str, refusals) -> None:
    path, out, proc, seconds = refusals[name]
    assert_refused(proc, path, PAYLOADS[name].says, out)
    assert seconds < TIMEOUT
    assert not (REPO / "pwned").exists()


@pytest.mark.parametrize("name", [n for n in PAYLOADS if n not in ("directory",)])
def test_load_pdparams_and_load_model_refuse_each_payload(name: str, tmp_path: Path) -> None:
    """The same files through the library: one ConfigError naming the file (in this process:
    the reader runs nothing and allocates within the file's size)."""
    path = tmp_path / f"{name}.pdparams"
    PAYLOADS[name].make(path)
    with pytest.raises(ConfigError, match=PAYLOADS[name].says) as err:
        load_pdparams(path)
    assert str(path) in str(err.value)
    if name in ("memo-bomb", "conv1-1d", "segfault-|O", "shared-buffer-301-tensors"):
        with pytest.raises(ConfigError, match=re.escape(str(path))):
            load_model(path)


# ------------------------------------------------------------------- more refusals, in process


def _meta_entry(value: bytes) -> tuple[str, bytes]:
    return META, pickle.EMPTY_DICT + s_("conv1.weight") + value + pickle.SETITEM


CONV1 = ("conv1_weights", f4_((64, 3, 7, 7)))
REFUSED: dict[str, tuple[bytes, str]] = {
    "empty file": (b"", "truncated"),
    "no protocol header": (b"}.", "no protocol header"),
    "protocol 1": (pickle.dumps({}, protocol=1), "no protocol header"),
    "protocol 6": (b"\x80\x06}.", "pickle protocol 6"),
    "trailing bytes": (fluid_save(small_params()) + b"x", "bytes after"),
    "two pickles": (fluid_save({}) + fluid_save({}), "bytes after"),
    "top is a tuple": (b"\x80\x02" + t_(i_(1)) + b".", "holds a tuple"),
    "top is an array": (b"\x80\x02" + f4_((1,)) + b".", "holds an array"),
    "top is names only": (pdparams([("a", s_("b"))]), "dict of names"),
    "values left": (b"\x80\x02}N.", "2 values on the stack"),
    "list": (b"\x80\x02}" + s_("a") + b"]s.", "opcode EMPTY_LIST"),
    "newobj": (
        pickle.dumps({"x": OrderedDict()}, protocol=2).replace(b"R", b"\x81"),
        "opcode NEWOBJ",
    ),
    "persistent id": (b"\x80\x02}" + s_("a") + s_("id") + b"Qs.", "opcode BINPERSID"),
    "binfloat": (b"\x80\x02}" + s_("a") + b"G" + bytes(8) + b"s.", "opcode BINFLOAT"),
    "builtins.eval": (b"\x80\x02" + g_("__builtin__", "eval") + b".", r"builtins\.eval"),
    "stack global": (
        b"\x80\x04" + s_("os") + s_("system") + b"\x93.",
        r"asks for os\.system",
    ),
    "long global": (b"\x80\x02c" + b"a" * 10_000, "longer than 256"),
    "huge global names": (
        b"\x80\x04" + s_("m" * 100_000) + s_("n") + b"\x93.",
        r"the global 'mmm",
    ),
    "string past the end": (b"\x80\x02X" + struct.pack("<I", 2**31) + b"abc", "truncated"),
    "bytes8 past the end": (b"\x80\x04\x8e" + struct.pack("<Q", 2**62), "truncated"),
    "frame past the end": (b"\x80\x04\x95" + struct.pack("<Q", 2**40), "a FRAME of"),
    "get of nothing": (b"\x80\x02h\x05.", "never stored"),
    "stack flood": (b"\x80\x02" + b"N" * 20_000 + b".", "more than 10,000 values"),
    "mark flood": (b"\x80\x02" + b"(" * 100_000 + b".", "more than 8 open MARKs"),
    "wide tuple": (b"\x80\x02" + t_(*[N] * 100) + b".", "a tuple of 100 items"),
    "long key": (pdparams([("k" * 100_000, f4_((1,)))]), "at most 256 characters"),
    "control character key": (pdparams([("a\x1b[2J", f4_((1,)))]), "printable"),
    "int key": (b"\x80\x02}" + i_(1) + f4_((1,)) + b"s.", "a key is an int"),
    "tuple key": (b"\x80\x02}" + t_(s_("a")) + f4_((1,)) + b"s.", "a key is a tuple"),
    "duplicate name": (pdparams([("a", f4_((1,))), ("a", f4_((1,)))]), "'a' twice"),
    "int value": (pdparams([("a", i_(1))]), "entry 'a' is an int"),
    "bytes value": (pdparams([("a", b_(b"xx"))]), "entry 'a' is raw bytes"),
    "unfilled array": (
        pdparams([("a", call(RECONSTRUCT, g_("numpy", "ndarray"), t_(i_(0)), b_(b"b")))]),
        "never filled",
    ),
    "build twice": (pdparams([("a", f4_((1,)) + t_(i_(1)) + b"b")]), "BUILD on an array"),
    "build on a dict": (b"\x80\x02}" + t_() + b"b.", "BUILD on a dict"),
    "reduce of a str": (b"\x80\x02" + s_("os.system") + t_() + b"R.", "a call of a str"),
    "reconstruct of another subtype": (
        pdparams([("a", call(RECONSTRUCT, g_("numpy", "dtype"), t_(i_(0)), b_(b"b")))]),
        "numpy writes \\(ndarray",
    ),
    "dict of dicts": (pdparams([("a", pickle.EMPTY_DICT)]), "only StructuredToParameterName@@"),
    "metadata holding an array": (pdparams([CONV1, _meta_entry(f4_((1,)))]), "holds arrays"),
    "metadata holding an int": (pdparams([CONV1, _meta_entry(i_(1))]), "is an int"),
    "metadata holding a dict": (
        pdparams([CONV1, _meta_entry(pickle.EMPTY_DICT)]),
        "'conv1.weight' is a dict",
    ),
    "metadata filled after": (
        b"\x80\x02}(" + s_(META) + b"}q\x01u" + b"h\x01" + s_("x") + f4_((1,)) + b"s0.",
        "of the metadata dict is not a name",
    ),
    "short data": (pdparams([("a", f4_((2,), bytes(4)))]), "4 bytes of data for 8"),
    "long data": (
        pdparams([("a", f4_((1,), bytes(8)))]),
        "brings the arrays|8 bytes of data for 4",
    ),
    "data as an int": (pdparams([("a", array_((1,), dtype_("f4"), i_(7)))]), "data that is an int"),
    "negative dim": (
        pdparams([("a", array_((-1,), dtype_("f4"), b_(b"")))]),
        "not a tuple of sizes",
    ),
    "six dims": (pdparams([("a", f4_((1,) * 6))]), "more than 5 dimensions"),
    "too wide": (
        pdparams([("res2a_branch2a_weights", f4_((4096, 1, 1, 1), b""))]),
        "wider than 2048",
    ),
    "too many classes": (pdparams([("fc_0.b_0", f4_((200_000,), b""))]), "exceeds 100,000"),
    "classifier of 3 dims": (pdparams([("fc_0.w_0", f4_((2, 2, 2)))]), "the classifier is"),
    "huge generic tensor": (pdparams([("x", f4_((100_000, 100_000), b""))]), "elements"),
    "conv1 of 5 channels": (pdparams([("conv1_weights", f4_((64, 5, 7, 7)))]), "3N"),
    "conv1 of 3x3": (pdparams([("conv1_weights", f4_((64, 3, 3, 3)))]), "3N"),
    "arrays larger than the file": (
        pdparams([("x", f4_((2048, 2048), b""))]),
        "more than the file's",
    ),
}
for _code in ("V8", "S4", "U4", "M8", "m8", "c8", "c16", "f16", "i4,i4", "O8", "<f4", "float32"):
    REFUSED[f"dtype {_code}"] = (
        pdparams([("a", array_((1,), dtype_(_code), b_(bytes(4))))]),
        "numpy dtype",
    )
for _state, _why in (
    (dtype_state("|"), "order | for f4"),
    (dtype_state("="), "native order"),
    (t_(i_(4), s_("<"), N, N, N, i_(-1), i_(-1), i_(0), pickle.EMPTY_DICT), "version 4 metadata"),
    (t_(i_(3), s_("<"), N, N, N, i_(4), i_(4), i_(0)), "element size"),
    (t_(i_(3), s_("<"), N, N, N, i_(-1), i_(-1), T), "flags as bool"),
):
    REFUSED[f"dtype state: {_why}"] = (
        pdparams([("a", array_((1,), dtype_("f4", _state), b_(bytes(4))))]),
        "dtype f4 with the state",
    )


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_in_process(name: str, tmp_path: Path) -> None:
    data, says = REFUSED[name]
    path = tmp_path / "x.pdparams"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=says) as err:
        load_pdparams(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_every_cut_of_a_fluid_save_is_refused(tmp_path: Path) -> None:
    """A file cut at any byte is refused (it never loads, and never raises anything else)."""
    whole = fluid_save({"a": np.arange(3, dtype=np.float32), META: {"a": "fc_0.w_0"}})
    path = tmp_path / "cut.pdparams"
    for n in range(len(whole)):
        path.write_bytes(whole[:n])
        with pytest.raises(ConfigError, match=str(path)):
            load_pdparams(path)


def test_every_changed_byte_loads_or_is_refused(tmp_path: Path) -> None:
    """Each byte of a small Fluid save set to a few values: the file loads (a harmless change,
    e.g. in the data) or is refused with a ConfigError; nothing else escapes."""
    whole = bytearray(fluid_save({"a": np.arange(3, dtype=np.float32)}, proto=4))
    path = tmp_path / "flip.pdparams"
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(len(whole)):
        for v in (0x00, 0x7F, 0xFF, whole[i] ^ 0x01):
            changed = bytearray(whole)
            changed[i] = v
            path.write_bytes(changed)
            try:
                got = load_pdparams(path)
            except ConfigError:
                outcomes["refused"] += 1
            else:
                outcomes["loaded"] += 1
                assert all(
                    isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in got.values()
                )
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0


def test_describe_params_refuses_a_conv1_of_another_rank() -> None:
    """The check also holds for a dict not read by load_pdparams (was: IndexError)."""
    params = {n: np.zeros(1, np.float32) for n, _ in listing()}
    params["conv1_weights"] = np.zeros(64, np.float32)
    with pytest.raises(ConfigError, match=r"conv1_weights has shape \[64\]"):
        describe_params(params, "mine.pdparams")


def test_limits_are_those_of_the_network() -> None:
    """The shape rule accepts every tensor of the authors' StNet and TSN (and flow or 64-frame
    conv1s, 100k classes) and refuses what no such network has."""
    for name, shape in listing() + tsn_listing():
        assert paddle.shape_problem(name, shape) is None, name
    ok = [(64, 3 * 64, 7, 7), (64, 2 * 64, 7, 7), (64, 2, 7, 7)]
    assert all(paddle.shape_problem("conv1_weights", s) is None for s in ok)
    assert paddle.shape_problem("fc_0.w_0", (2048, 100_000)) is None
    bad = [(64, 3 * 65, 7, 7), (64, 2 * 65 + 1, 7, 7), (64, 7, 7, 7), (64, 3, 7), (32, 3, 7, 7)]
    assert all(paddle.shape_problem("conv1_weights", s) for s in bad)
    assert paddle.shape_problem("fc_0.w_0", (2048, 100_001))
    assert paddle.shape_problem("res5a_branch2c_weights", (2049, 512, 1, 1))


# ------------------------------------------------------------------- Fluid saves still load


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING), as Python 2
    ``fluid.save`` did, so they load as latin1 text."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING
        self.write(head + (b"" if n < 256 else struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _py2_save(params: dict) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(params)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _every_dtype() -> dict[str, np.ndarray]:
    out = {}
    for code in paddle.NUMERIC_DTYPES:
        a = np.arange(6).reshape(2, 3).astype(code)
        out[f"c_{code}"] = a
        out[f"f_{code}"] = np.asfortranarray(a)
        if a.dtype.itemsize > 1:
            out[f"be_{code}"] = a.astype(a.dtype.newbyteorder(">"))
    out["empty"] = np.zeros((0, 3), np.float32)
    out["zero_d"] = np.array(2.5, np.float32)
    out["scalar"] = np.float32(1.5)[()]
    out["fc_0.w_0"] = np.ones((2048, 2), np.float32)
    return out


@pytest.mark.parametrize("proto", [2, 4, 5])
@pytest.mark.parametrize("meta", [False, True], ids=["plain", "metadata"])
@pytest.mark.parametrize("ordered", [False, True], ids=["dict", "OrderedDict"])
def test_fluid_saves_load(proto: int, meta: bool, ordered: bool, tmp_path: Path) -> None:
    params = _every_dtype()
    saved: dict = (OrderedDict if ordered else dict)(params)
    if meta:
        saved[META] = {f"layer.{k}": k for k in params}
    path = tmp_path / "ok.pdparams"
    path.write_bytes(fluid_save(saved, proto))
    got = load_pdparams(path)
    assert list(got) == list(params)
    for k, a in params.items():
        assert got[k].dtype == np.asarray(a).dtype and np.array_equal(got[k], a), k
        assert got[k].flags.writeable, k


def test_python2_fluid_saves_load(tmp_path: Path) -> None:
    params = _every_dtype()
    saved = {**params, META: {"x": "y"}}
    path = tmp_path / "py2.pdparams"
    path.write_bytes(_py2_save(saved))
    assert b"_codecs" not in path.read_bytes()
    got = load_pdparams(path)
    assert all(np.array_equal(got[k], a) and got[k].dtype == a.dtype for k, a in params.items())


def test_a_protocol4_save_with_metadata_imports(tmp_path: Path) -> None:
    """A whole TSN-R50 as ``paddle.save`` writes it (protocol 4, the metadata dict) imports."""
    rng = np.random.default_rng(1)
    params = {n: rng.standard_normal(s, dtype=np.float32) for n, s in tsn_listing(k=5)}
    saved = {**params, META: {f"m.{n}": n for n in params}}
    path = tmp_path / "TSN.pdparams"
    path.write_bytes(fluid_save(saved, 4))
    rep = import_paddle(path, tmp_path / "run", arch="tsn", num_classes=5)
    assert rep.tensors == len(params) and (tmp_path / "run" / "model.json").is_file()


# =========================================================================== .pt / .pth
#
# Every .pt / .pth file vidfeat reads goes through vidfeat.nets.torchfile.load_torch_file. The
# payloads are zip archives laid out as torch.save writes them (archive/data.pkl, byteorder,
# data/<key>, version; members stored) and legacy (torch < 1.6) files, their pickles written
# opcode by opcode with the helpers above.


def zip_(members: dict[str, bytes | Deflated], comment: bytes = b"") -> bytes:
    """A zip archive of ``members`` (stored, or a :class:`Deflated` stream), local headers,
    central directory and end record, written byte by byte."""
    out, central = bytearray(), bytearray()
    for name, data in members.items():
        raw = name.encode()
        if isinstance(data, Deflated):
            method, body, size, crc = 8, data.stream, data.size, data.crc
        else:
            method, body, size, crc = 0, data, len(data), zlib.crc32(data)
        fields = (0x800, method, 0, 0, crc, len(body), size, len(raw))
        central += struct.pack("<4sHH", b"PK\x01\x02", 20, 20)
        central += struct.pack("<HHHHIIIHHHHHII", *fields, 0, 0, 0, 0, 0, len(out)) + raw
        out += struct.pack("<4sH", b"PK\x03\x04", 20)
        out += struct.pack("<HHHHIIIHH", *fields, 0) + raw + body
    n = len(members)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(central), len(out), len(comment))
    return bytes(out + central + end + comment)


class Deflated:
    """A deflate stream of ``MiB`` MiB of zeros (1 KB per MiB): a zip bomb member."""

    def __init__(self, mib: int) -> None:
        chunk = bytes(1 << 20)
        co = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
        self.stream, self.size, self.crc = block * mib + co.flush(), mib << 20, 0
        for _ in range(mib):
            self.crc = zlib.crc32(chunk, self.crc)


def pid_(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    """The persistent id of a storage (torch.save's zip format), and BINPERSID."""
    return t_(s_("storage"), g_("torch", storage), s_(key), s_("cpu"), i_(numel)) + b"Q"


def tensor_(pid: bytes, shape: tuple[int, ...], strides: tuple[int, ...]) -> bytes:
    """_rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict())."""
    hooks = call(g_("collections", "OrderedDict"))
    shape_, strides_ = t_(*map(i_, shape)), t_(*map(i_, strides))
    return call(g_("torch._utils", "_rebuild_tensor_v2"), pid, i_(0), shape_, strides_, F, hooks)


def state_pkl(entries: list[tuple[bytes | str, bytes]]) -> bytes:
    """A pickled dict of ``entries`` as torch.save writes it (protocol 2)."""
    return pdparams(entries)


def pt_(pkl: bytes, data: dict[str, bytes | Deflated] | None = None, **members) -> bytes:
    """``pkl`` as the data.pkl of a torch.save zip archive, with its storages ``data``."""
    files: dict[str, bytes | Deflated] = {"archive/data.pkl": pkl, "archive/byteorder": b"little"}
    files.update({f"archive/data/{k}": v for k, v in (data or {}).items()})
    files.update({"archive/version": b"3\n", **members})
    return zip_(files)


def small_pt() -> bytes:
    """{"w": arange(6).reshape(2, 3)} as torch.save writes it."""
    pkl = state_pkl([("w", tensor_(pid_("0", 6), (2, 3), (3, 1)))])
    return pt_(pkl, {"0": np.arange(6, dtype="<f4").tobytes()})


def legacy_(main: bytes, keys: list[str], storages: bytes = b"") -> bytes:
    """A legacy torch file: magic number, protocol, system info, ``main``, the storage keys,
    then ``storages`` (each: its element count as int64, then its bytes)."""
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    proto = pickle.dumps(1001, protocol=2)
    info = pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    return magic + proto + info + main + pickle.dumps(keys, protocol=2) + storages


def int_(n: int) -> bytes:  # BININT, or LONG1 beyond 32 bits
    if -(2**31) <= n < 2**31:
        return i_(n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def legacy_pid(key: str, numel: int) -> bytes:
    """The persistent id of a storage in a legacy file (no view), and BINPERSID."""
    fields = (s_("storage"), g_("torch", "FloatStorage"), s_(key), s_("cpu"), int_(numel), N)
    return t_(*fields) + b"Q"


def legacy_small() -> bytes:
    """{"w": arange(6).reshape(2, 3)} as torch.save(_use_new_zipfile_serialization=False)."""
    main = state_pkl([("w", tensor_(legacy_pid("0", 6), (2, 3), (3, 1)))])
    return legacy_(main, ["0"], struct.pack("<q", 6) + np.arange(6, dtype="<f4").tobytes())


def deep_key(depth: int) -> bytes:
    """{(((1,),),...): 2}: a key of tuples nested ``depth`` deep (TUPLE1 ``depth`` times)."""
    return pickle.PROTO + b"\x02}" + b"K\x01" + b"\x85" * depth + b"K\x02s."


BYTEARRAY = call(g_("__builtin__", "bytearray"), int_(10**10))  # bytearray(10**10)
QTENSOR = g_("torch._utils", "_rebuild_qtensor") + t_() + pickle.REDUCE


def _grown_after_nesting() -> bytes:
    """A list put inside a tuple, then grown: the tuple's depth would be stale."""
    grow = b"]q\x00" + b"\x85" + b"h\x00" + b"]" + b"a"  # ([],), then [].append([])
    return pickle.PROTO + b"\x02}(" + s_("k") + grow + s_("v") + b"u."


PT_PAYLOADS: dict[str, Payload] = {
    # torch.load itself segfaults on 3M (hashing the key recurses in C); 30k loads
    "keys-nested-3M": _bytes(lambda: pt_(deep_key(3_000_000)), "nested more than 100 deep"),
    "keys-nested-30k": _bytes(lambda: pt_(deep_key(30_000)), "nested more than 100 deep"),
    "legacy-keys-nested-3M": _bytes(
        lambda: legacy_(deep_key(3_000_000), []), "nested more than 100 deep"
    ),
    # 1 GiB of zeros deflated into 1 MB: torch.load allocates and inflates what it claims
    "deflated-storage-1GiB": _bytes(
        lambda: pt_(
            state_pkl([("w", tensor_(pid_("0", 1 << 28), (1 << 28,), (1,)))]), {"0": Deflated(1024)}
        ),
        "'archive/data/0' is compressed",
    ),
    "deflated-data.pkl": _bytes(
        lambda: zip_({"archive/data.pkl": Deflated(1), "archive/version": b"3\n"}),
        "'archive/data.pkl' is compressed",
    ),
    # torch's own allow-list has bytearray: 10 GB of zeros from 60 bytes
    "bytearray-10GB": _bytes(
        lambda: pt_(state_pkl([("a", BYTEARRAY)])), "global builtins.bytearray"
    ),
    "legacy-bytearray-10GB": _bytes(
        lambda: legacy_(state_pkl([("a", BYTEARRAY)]), []), "global builtins.bytearray"
    ),
    "quantized-tensor": _bytes(lambda: pt_(state_pkl([("a", QTENSOR)])), "_rebuild_qtensor"),
    "code-os.system": _bytes(
        lambda: pt_(state_pkl([("a", call(g_("os", "system"), s_("touch pwned")))])),
        "global os.system",
    ),
    "memo-bomb": _bytes(
        lambda: pt_(
            pickle.PROTO + b"\x02N" + pickle.LONG_BINPUT + struct.pack("<I", 1 << 27) + b"."
        ),
        "memo index 134,217,728",
    ),
    "storage-beyond-its-record": _bytes(
        lambda: pt_(
            state_pkl([("w", tensor_(pid_("0", 10**9), (10**9,), (1,)))]), {"0": bytes(24)}
        ),
        "storage '0' claims 4,000,000,000 bytes, its record holds 24",
    ),
    "storage-without-record": _bytes(
        lambda: pt_(state_pkl([("w", tensor_(pid_("7", 6), (6,), (1,)))]), {"0": bytes(24)}),
        "storage '7' has no record",
    ),
    "legacy-storage-10GB": _bytes(
        lambda: legacy_(
            state_pkl([("w", tensor_(legacy_pid("0", 25 * 10**8), (6,), (1,)))]), ["0"]
        ),
        "storages claim 10,000,000,000 bytes",
    ),
    "pid-not-a-storage": _bytes(
        lambda: pt_(state_pkl([("w", s_("0") + b"Q")])), "persistent id that is not a storage"
    ),
    "list-grown-after-nesting": _bytes(_grown_after_nesting, "grows deeper after it was put"),
    "list-holding-itself": _bytes(
        lambda: pt_(pickle.PROTO + b"\x02]q\x00h\x00a."), "grows deeper after it was put"
    ),
    "names-differing-in-case": _bytes(
        lambda: zip_({"archive/data.pkl": deep_key(1), "archive/DATA.PKL": deep_key(200)}),
        "named twice",
    ),
    "member-outside-the-folder": _bytes(
        lambda: pt_(deep_key(1), **{"other/data.pkl": deep_key(200)}), "outside archive/"
    ),
    "a-comment-after-the-end-record": _bytes(
        lambda: zip_({"archive/data.pkl": deep_key(1)}, comment=b"PK\x05\x06" + bytes(18)),
        "central directory does not end where",
    ),
    "torchscript": _bytes(
        lambda: pt_(deep_key(1), **{"archive/constants.pkl": b""}), "TorchScript"
    ),
    "truncated": _bytes(lambda: small_pt()[:300], "no end record"),
    "legacy-truncated": _bytes(lambda: legacy_small()[:-20], "storage '0' cut off"),
    "legacy-string-of-4GiB": _bytes(
        lambda: legacy_(pickle.PROTO + b"\x02X\xff\xff\xff\xff", []),
        "wants 4,294,967,295 bytes",
    ),
    "empty": _bytes(lambda: b"", "neither a zip archive nor a legacy torch file"),
    "fifo": Payload(r"not a regular file \(a FIFO\)", lambda p: os.mkfifo(p)),
    "directory": Payload(r"not a regular file \(a directory\)", lambda p: p.mkdir()),
    "symlink-to-dev-zero": Payload(
        r"not a regular file \(a character device\)", lambda p: p.symlink_to("/dev/zero")
    ),
    "missing": Payload("file not found", lambda p: None),
}

# load_torch_file alone, in a child: refused before torch is imported (under MEMORY_LIMIT,
# which torch cannot even be imported under), as the CLI prints errors
TORCHFILE_CHILD = """
import sys
from vidfeat.errors import ConfigError
from vidfeat.nets.torchfile import load_torch_file
try:
    load_torch_file(sys.argv[1], "--weights")
except ConfigError as exc:
    sys.exit(f"Error: {exc}" + (" [torch imported]" if "torch" in sys.modules else ""))
print("loaded")
"""


@pytest.fixture(scope="module")
def pt_refusals(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess, float]]:
    """Every payload through load_torch_file in its own child (two at a time), under the memory
    limit and the timeout: {name: (file, result, seconds)}."""
    root = tmp_path_factory.mktemp("pt")

    def run(name: str):
        path = root / f"{name}.pt"
        PT_PAYLOADS[name].make(path)
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", TORCHFILE_CHILD, str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            preexec_fn=_limit_memory,
        )
        return name, (path, proc, time.monotonic() - t0)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, PT_PAYLOADS))


@pytest.mark.parametrize("name", list(PT_PAYLOADS))
def test_load_torch_file_refuses_each_payload_before_torch(name: str, pt_refusals) -> None:
    path, proc, seconds = pt_refusals[name]
    assert_refused(proc, path, PT_PAYLOADS[name].says, path.with_suffix(".none"))
    assert "[torch imported]" not in proc.stderr
    assert seconds < TIMEOUT


# ------------------------------------------------------------------- through the command line
#
# Each reader, reached from its command line. The children import torch (and timm), which
# MEMORY_LIMIT (RLIMIT_AS) does not allow, so their memory is measured another way: their peak
# resident size, read by a parent that waits for them (ru_maxrss of RUSAGE_CHILDREN), must stay
# under MEMORY_LIMIT. Refused, they stay near what importing torch and timm takes (~0.9 GB);
# torch.load inflating the bomb would take 1 GiB more, and 3M nested keys are a segfault.

MAXRSS_PARENT = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[2:], timeout=float(sys.argv[1]))
print(f"maxrss {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}", file=sys.stderr)
sys.exit(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode)
"""


def run_measured(
    *args: object, timeout: float = TIMEOUT
) -> tuple[subprocess.CompletedProcess, int]:
    """``python -m vidfeat ARGS`` from the repository under the timeout: (result, the child's
    peak resident bytes)."""
    argv = [sys.executable, "-c", MAXRSS_PARENT, str(timeout), sys.executable, "-m", "vidfeat"]
    proc = subprocess.run(
        [*argv, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout + 10
    )
    rss = re.search(r"maxrss (\d+)", proc.stderr)
    return proc, int(rss.group(1)) if rss else -1


def _run_folder(root: Path, best: str) -> Path:
    """A run folder (config, classes) whose best.pt is the payload ``best``."""
    run = root / f"run-{best}"
    run.mkdir()
    (run / "config.yaml").write_text(
        "modality: rgb\ntrain: x.csv\nval: null\nbackbone: resnet10t\n"
    )
    (run / "classes.txt").write_text("a\nb\n")
    PT_PAYLOADS[best].make(run / "best.pt")
    return run


@pytest.fixture(scope="module")
def trained_run(tiny_synth: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    """A 1-epoch TSN run on the tiny dataset, and the train options that resume it."""
    from click.testing import CliRunner

    from vidfeat.cli import main

    run = tmp_path_factory.mktemp("trained") / "run"
    args = ["train", "rgb", "--videos", str(tiny_synth / "train.csv"), "--out", str(run)]
    args += ["--arch", "tsn", "--backbone", "resnet10t", "--segments", "1", "--size", "32"]
    args += ["--short-side", "36", "--batch-size", "16", "--workers", "0", "--quiet"]
    res = CliRunner().invoke(main, [*args, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    return run, [*args, "--epochs", "2", "--resume"]


@pytest.fixture(scope="module")
def cli_refusals(tmp_path_factory, trained_run) -> dict[str, tuple]:
    """The command lines below, two at a time: {name: (file, out, result, peak bytes)}."""
    root = tmp_path_factory.mktemp("pt-cli")
    listing = root / "list.csv"
    listing.write_text(f"path\n{root / 'v.mp4'}\n")  # refused before any video is opened
    run, resume = trained_run
    jobs: dict[str, tuple[Path, Path, list]] = {}
    for name in ("keys-nested-3M", "deflated-storage-1GiB"):
        f, out = root / f"{name}.pth", root / f"{name}.out"
        PT_PAYLOADS[name].make(f)
        jobs[f"import-{name}"] = (
            f,
            out,
            ["models", "import", "timm", "resnet10t", "--weights", f, "--out", out],
        )
    fifo_run, deep_run = _run_folder(root, "fifo"), _run_folder(root, "keys-nested-3M")
    store = root / "store"
    jobs["models-info-fifo"] = (fifo_run / "best.pt", store, ["models", "info", fifo_run])
    jobs["extract-rgb-deep"] = (
        deep_run / "best.pt", store,
        ["extract", "rgb", "--checkpoint", deep_run, "--videos", listing, "--store", store],
    )  # fmt: skip
    (run / "last.pt").unlink()
    PT_PAYLOADS["keys-nested-3M"].make(run / "last.pt")
    jobs["train-resume-deep"] = (run / "last.pt", store, resume)
    fifo = root / "weights.fifo"
    os.mkfifo(fifo)
    for what, args in [
        ("raft", ["extract", "flow", "--method", "raft", "--flow-weights", fifo]),
        ("audio", ["extract", "audio", "--checkpoint", fifo]),
    ]:
        jobs[f"{what}-fifo"] = (fifo, store, [*args, "--videos", listing, "--store", store])

    def one(name: str):
        path, out, args = jobs[name]
        return name, (path, out, *run_measured(*args))

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, jobs))


CLI_SAYS = {
    "import-keys-nested-3M": "--weights .*: refused, .*nested more than 100 deep",
    "import-deflated-storage-1GiB": "--weights .*'archive/data/0' is compressed",
    "models-info-fifo": r"checkpoint .*best.pt: not a regular file \(a FIFO\)",
    "extract-rgb-deep": "checkpoint .*best.pt: refused, .*nested more than 100 deep",
    "train-resume-deep": "--resume .*last.pt: refused, .*nested more than 100 deep",
    "raft-fifo": r"--flow-weights .*: not a regular file \(a FIFO\)",
    "audio-fifo": r"not a regular file \(a FIFO\)",
}


@pytest.mark.parametrize("name", list(CLI_SAYS))
def test_cli_refuses_each_torch_file(name: str, cli_refusals) -> None:
    """One clean refusal (no signal, no traceback, one error line naming the file), within the
    timeout and 1.5 GB of resident memory."""
    path, out, proc, rss = cli_refusals[name]
    assert_refused(proc, path, CLI_SAYS[name], out)
    assert 0 < rss < MEMORY_LIMIT, f"{rss:,} bytes"


# ------------------------------------------------------------------- in process


def test_plain_torch_files_load(tmp_path: Path) -> None:
    """What torch.save writes, zip or legacy (also from a GPU), state dict or training
    checkpoint, and the hand-made files the payloads start from, loads as torch.load loads
    it."""
    import torch

    from vidfeat.nets.torchfile import load_torch_file

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    objs = {
        "state.pt": net.state_dict(),
        "checkpoint.pt": {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3},
        "parameters.pt": dict(net.named_parameters()),
        "new-dtypes.pt": {"a": torch.ones(3, dtype=torch.uint16), "b": torch.zeros(2).half()},
    }
    for name, obj in objs.items():
        torch.save(obj, tmp_path / name)
        if name != "new-dtypes.pt":  # torch.load cannot read those back from a legacy file
            torch.save(obj, tmp_path / f"legacy-{name}", _use_new_zipfile_serialization=False)
    gpu = (tmp_path / "legacy-state.pt").read_bytes()  # as a legacy save from a GPU names it
    gpu = gpu.replace(g_("torch", "FloatStorage"), g_("torch.cuda", "FloatStorage"))
    (tmp_path / "legacy-gpu.pt").write_bytes(gpu.replace(s_("cpu"), s_("cuda:0")))
    (tmp_path / "hand-made.pt").write_bytes(small_pt())
    (tmp_path / "hand-made-legacy.pt").write_bytes(legacy_small())
    for f in sorted(tmp_path.iterdir()):
        want = torch.load(f, map_location="cpu", weights_only=True)
        got = load_torch_file(f)
        assert _same(got, want), f.name
    assert load_torch_file(tmp_path / "hand-made.pt")["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


def _same(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_cuts_and_changed_bytes_of_a_torch_save_load_or_are_refused(
    legacy: bool, tmp_path: Path
) -> None:
    """Cuts and changed bytes (0, 255, one bit) of a real torch.save at 150 places each: each
    loads, or is refused in one ConfigError; no other exception, no crash."""
    import torch

    from vidfeat.nets.torchfile import load_torch_file

    src = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), src, _use_new_zipfile_serialization=not legacy)
    whole = src.read_bytes()
    step = len(whole) // 150 + 1  # 150 places (1.7 KB zip, 0.6 KB legacy)
    cases = [whole[:i] for i in range(0, len(whole), step)]
    for i in range(1, len(whole), step):
        cases += [whole[:i] + bytes([v]) + whole[i + 1 :] for v in (0, 0xFF, whole[i] ^ 1)]
    f = tmp_path / "case.pt"
    outcomes = {"loaded": 0, "refused": 0}
    for data in cases:
        f.write_bytes(data)
        try:
            load_torch_file(f)
            outcomes["loaded"] += 1
        except ConfigError:
            outcomes["refused"] += 1
    assert outcomes["loaded"] and outcomes["refused"], outcomes


def test_the_bomb_is_a_zip_member_zipfile_inflates(tmp_path: Path) -> None:
    """The deflated member of the payloads is a valid one: zipfile inflates it to its size."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(zip_({"archive/data/0": Deflated(4)}))) as zf:
        assert zf.read("archive/data/0") == bytes(4 << 20)


def test_torch_reads_the_bytes_that_were_checked(tmp_path: Path, monkeypatch) -> None:
    """The file rewritten in place between the checks and torch.load (same inode, same size):
    torch still reads the checked data.pkl, not the new one."""
    import torch

    from vidfeat.nets.torchfile import load as torchfile

    path = tmp_path / "w.pt"
    path.write_bytes(small_pt())
    swapped = small_pt().replace(s_("w"), s_("x"))  # another key, same length
    check = torchfile._check

    def check_then_rewrite(snap, size):
        check(snap, size)
        with open(path, "r+b") as fh:  # the same file, changed in place
            fh.write(swapped)

    monkeypatch.setattr(torchfile, "_check", check_then_rewrite)
    got = torchfile.load_torch_file(path)
    assert list(got) == ["w"] and list(torch.load(path, weights_only=True)) == ["x"]


def test_pt_with_a_zero_stride_tensor_is_refused(tmp_path: Path) -> None:
    """torch.save keeps a view's strides: 1.6 KB claiming [64, 3·10⁶, 7, 7] (37.6 GB)."""
    import torch

    from vidfeat.nets.backbones import read_state_dict

    path = tmp_path / "expanded.pt"
    torch.save({"conv1.weight": torch.zeros(1).expand(64, 3_000_000, 7, 7)}, path)
    assert path.stat().st_size < 4096
    with pytest.raises(ConfigError, match=r"conv1.weight.*\[64, 3000000, 7, 7\].*4 bytes"):
        read_state_dict(path)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_state_dict(fifo)


def test_every_reader_of_torch_files_refuses_in_one_error(tmp_path: Path) -> None:
    """The places vidfeat reads .pt / .pth files, each given a key nested 30k deep (which
    torch.load itself loads: no crash here were a check missing) and a FIFO: one ConfigError
    naming the file."""
    from vidfeat.audio import VGGish, load_vggish_weights
    from vidfeat.flow import make_method
    from vidfeat.fusion.evaluate import load_run
    from vidfeat.models import load_trained
    from vidfeat.nets.backbones import read_state_dict

    fuse = tmp_path / "fuse"
    fuse.mkdir()
    (fuse / "config.yaml").write_text("store: s\nfeatures: [rgb]\nhead: single\ntrain: t.csv\n")
    (fuse / "classes.txt").write_text("a\nb\n")
    (fuse / "feature_sets.json").write_text('{"dims": {"rgb": 8}, "sets": {}}')
    files = {}
    for kind in ("keys-nested-30k", "fifo"):
        files[kind] = tmp_path / f"{kind}.pt"
        PT_PAYLOADS[kind].make(files[kind])
        PT_PAYLOADS[kind].make(fuse / f"{kind}.pt")
        _run_folder(tmp_path, kind)
    readers = {
        "read_state_dict": lambda kind: read_state_dict(files[kind], "--weights"),
        "load_trained": lambda kind: load_trained(tmp_path / f"run-{kind}"),
        "raft": lambda kind: make_method("raft").runtime(weights=files[kind]).provenance(),
        "vggish": lambda kind: load_vggish_weights(VGGish(), files[kind]),
        "fusion": lambda kind: load_run(fuse, device="cpu", checkpoint=f"{kind}.pt"),
    }
    where = {
        "load_trained": lambda kind: tmp_path / f"run-{kind}" / "best.pt",
        "fusion": lambda kind: fuse / f"{kind}.pt",
    }
    for name, read in readers.items():
        for kind, says in [("keys-nested-30k", "nested more than 100 deep"), ("fifo", "a FIFO")]:
            with pytest.raises(ConfigError, match=says) as err:
                read(kind)
            path = where.get(name, lambda kind: files[kind])(kind)
            assert str(path) in str(err.value), (name, str(err.value))


# =========================================================================== the current folder
#
# A folder someone runs vidfeat in holds a ``pickle.py`` (every worker imports pickle) and an
# ``h5py.py`` that leave a mark when imported. vidfeat itself is started as a user starts it:
# the ``vidfeat`` script (whose own folder, the environment's bin/, heads its import path), or
# ``python -P -c`` for the library, so a mark can only come from a child vidfeat started.

PLANTED = """
import pathlib, os
pathlib.Path(os.environ["PLANTED_MARK"]).write_text("ran in " + str(os.getpid()))
raise ImportError("planted")
"""


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "cwd"
    folder.mkdir()
    for name in ("pickle.py", "h5py.py", "numpy.py", "vidfeat.py"):
        (folder / name).write_text(PLANTED)
    return folder, tmp_path / "mark"


def _from(folder: Path, mark: Path, *argv: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PLANTED_MARK": str(mark), "PYTHONPATH": str(REPO)}
    env.pop("PYTHONSAFEPATH", None)
    return subprocess.run(
        [*map(str, argv)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_verify_workers_import_nothing_from_the_current_folder(
    planted: tuple[Path, Path], tiny_synth: Path, tmp_path: Path
) -> None:
    folder, mark = planted
    store = tmp_path / "store"
    args = ["extract", "flow", "--method", "farneback", "--videos", tiny_synth / "train.csv"]
    args += ["--store", store, "-T", "2", "-N", "1", "--short-side", "32", "--workers", "2"]
    script = Path(sys.executable).with_name("vidfeat")
    proc = _from(folder, mark, script, *args, "--shard-videos", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not mark.exists(), mark.read_text()  # the two extraction workers
    code = "import sys; from vidfeat.store import verify_store; "
    code += f"r = verify_store({str(store)!r}, workers=2); sys.exit(0 if r.ok else 1)"
    proc = _from(folder, mark, sys.executable, "-P", "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not mark.exists(), mark.read_text()  # the two verify workers


def test_a_planted_module_would_have_left_its_mark(planted: tuple[Path, Path]) -> None:
    """The check above can fail: a child without the safe path imports the planted pickle."""
    folder, mark = planted
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import pickle'])"
    _from(folder, mark, sys.executable, "-P", "-c", code)
    assert mark.exists()


# =========================================================================== planted links
#
# An output folder someone else prepared holds symlinks to a victim file (or a dangling one to
# where the victim would be created). vidfeat refuses the folder, writes nothing through a link,
# and the victim stays as it was.


def _cli(*args: object) -> tuple[int, str]:
    from click.testing import CliRunner

    from vidfeat.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.mark.parametrize("link", ["model.json", "config.yaml", "best.pt", "classes.txt"])
def test_models_import_refuses_an_out_with_planted_links(tmp_path: Path, link: str) -> None:
    import timm
    import torch

    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), weights)
    victim, elsewhere = tmp_path / "victim.txt", tmp_path / "elsewhere.yaml"
    victim.write_text("mine\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / link).symlink_to(victim)
    (out / "notes.yaml").symlink_to(elsewhere)  # dangling: exists() is False for it
    code, text = _cli("models", "import", "timm", "resnet10t", "--weights", weights, "--out", out)
    assert code in (1, 2) and "Traceback" not in text, text
    assert str(out) in text and ("symlink" in text or "already holds a run" in text), text
    assert victim.read_text() == "mine\n" and not elsewhere.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([link, "notes.yaml"])


def test_kept_out_folders_with_links_are_refused(tmp_path: Path) -> None:
    from vidfeat.outdir import claim_out_dir

    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    out = tmp_path / "exp"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "v1.npy").symlink_to(victim)
    for kw in ({"same": True}, {"resume": True}, {}):
        with pytest.raises(ConfigError, match=r"holds symlinks \(sub/v1.npy\)"):
            claim_out_dir(out, **kw)
    aside = claim_out_dir(out, overwrite=True)  # moved aside whole: nothing is written into it
    assert aside is not None and (aside / "sub" / "v1.npy").is_symlink() and not any(out.iterdir())
    assert victim.read_text() == "mine\n"


def test_appends_never_go_through_a_link_or_block_on_a_fifo(tmp_path: Path) -> None:
    from vidfeat.errors import StoreError
    from vidfeat.extract.ray import ray_log_path
    from vidfeat.outdir import open_append

    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    log = ray_log_path(tmp_path, "job")
    log.symlink_to(victim)
    with pytest.raises(StoreError, match="a symlink"):
        open_append(log)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    for read in (False, True):
        with pytest.raises(StoreError, match="not a regular file"):
            open_append(fifo, read=read)
    assert victim.read_text() == "mine\n"
    fd = open_append(tmp_path / "new.jsonl")
    os.write(fd, b"{}\n")
    os.close(fd)
    assert (tmp_path / "new.jsonl").read_bytes() == b"{}\n"
