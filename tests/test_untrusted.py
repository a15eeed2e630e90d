"""Untrusted files (issue 24): weights from the internet, and stores and run folders written by
someone else, can neither run code, read outside what the user asked for, nor crash vidfeat.

Each section builds its hostile files by hand and checks one clean refusal: exit code 1 or 2,
an error line naming the file, no traceback, no signal, nothing written, within the memory limit
and the timeout below.

Sections:

- the harness: the command line in a child process under ``RLIMIT_AS`` and a timeout;
- ``.pdparams``: the PaddlePaddle parameter reader (:mod:`vidfeat.nets.paddle`);
- ``.pt`` / ``.pth``: state dicts read with ``torch.load(weights_only=True)``
  (:func:`vidfeat.nets.backbones.read_state_dict`);
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
    "fifo": Payload("is a FIFO", lambda p: os.mkfifo(p)),
    "directory": Payload("is a directory", lambda p: p.mkdir()),
    "symlink-to-dev-zero": Payload("is a character device", lambda p: p.symlink_to("/dev/zero")),
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
