"""Checkpoints and safetensors: nothing lost, nothing unpickled, nothing half-loaded.

A checkpoint is one ``.npz`` (or ``.safetensors``) file holding

* ``model/<dotted name>``: every array of ``module.state_dict()``;
* ``optim/...``: every array of ``optimizer.state_dict()`` (its numbers and hyperparameters go in
  the JSON below);
* ``__meta__``: one JSON document: format version, the caller's ``**meta`` (step, config, ...),
  the optimizer's non-array state, and the state of every ``np.random.Generator`` the module holds
  (dropout), so a resumed run continues bit-identically.

**Reading** treats the file as hostile (``docs/security.md``): it must be a regular file (not a
FIFO, a device or a link to one); nothing is ever unpickled; every size, count and offset the file
declares (zip members, ``.npy`` headers, safetensors offsets) is checked against the file's real
size before any array is allocated, so memory stays within a small multiple of the file's size;
the JSON is parsed with bounded nesting and checked field by field (a reference to an array the
file does not hold is a named error). Every failure is a ``ValueError`` naming the file, the
element and what is wrong (``FileNotFoundError`` for a missing file).

**Loading** is all-or-nothing: :func:`load_checkpoint` checks the model's arrays, the optimizer's
state and the random generators' states, and only then writes any of them.

**Writing** goes to a temporary file ``.<name>.<host>.<pid>.<random>.tmp`` in the same folder that
is ``os.replace``-d over the target only once complete, so a crash mid-save keeps the old file. A
failed write removes its temporary file; one left by a process that was killed (SIGKILL, power
loss) is removed by the next save of the same target on the same host, once that process no
longer runs. The folder is created when it does not exist, and a failed write names the target,
not the temporary file.

``save_safetensors`` / ``load_safetensors`` read and write the safetensors format (an 8-byte
little-endian header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``, then the
raw little-endian bytes, every byte belonging to exactly one tensor) with NumPy alone;
``bfloat16`` tensors load as float32.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import json
import math
import os
import re
import socket
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from ._files import loads_json, open_regular

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "save_safetensors",
           "load_safetensors", "atomic_write"]

FORMAT = "scratchlm-checkpoint"
VERSION = 1

_CHUNK = 1 << 20                  # bytes read at a time into an allocated array
_MAX_DIMS = 32                    # NumPy 1.x's limit (2.x allows 64); no tensor here needs more
_MAX_ELEMENTS = 1 << 62           # any larger and NumPy cannot index it
_MAX_ST_HEADER = 100 << 20        # the safetensors reference implementation's limit
_MAX_NPY_HEADER = 10_000          # NumPy's own limit (max_header_size)
_DEFLATE_MAX_RATIO = 1032         # deflate cannot expand further than this
_NPY_KINDS = "biufcU"             # bool, ints, floats, complex, and str (the JSON document)


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:63] or "host"


def atomic_write(path, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then ``os.replace`` it over
    ``path``. The folder is created if it does not exist yet. On any error the temporary file is
    removed and ``path`` is left as it was; an ``OSError`` names ``path``, never the hidden
    temporary file. Temporary files of ``path`` left by killed processes of this host are removed
    first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    tmp = None
    try:
        try:
            os.makedirs(folder, exist_ok=True)
        except FileExistsError as exc:          # a file stands where a folder should be
            raise NotADirectoryError(errno.ENOTDIR, f"Not a directory, so {path} cannot be "
                                     f"written", exc.filename) from None
        _remove_stale_temps(folder, base)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.{_HOST}.{os.getpid()}.",
                                   suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(folder)
    except OSError as exc:
        _discard(tmp)
        prefix = os.path.join(folder, "." + base + ".")
        names = [n for n in (exc.filename, exc.filename2) if n is not None]
        names_tmp = any(isinstance(n, str) and n.startswith(prefix) for n in names)
        if exc.errno is not None and (names_tmp or not names):
            raise _renamed(exc, path) from exc     # it named the temp file, or nothing at all
        raise              # it names something else (the folder), or is not a system error
    except BaseException:
        _discard(tmp)
        raise


def _temp_pattern(base):
    """The names of the temporary files :func:`atomic_write` makes for ``base`` on this host;
    group 1 is the writer's pid."""
    return re.compile(re.escape(f".{base}.{_HOST}.") + r"(\d{1,10})\.[A-Za-z0-9_]+\.tmp\Z")


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid() or os.name != "posix":
        return True                      # not ours to judge (on Windows os.kill terminates)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):     # PermissionError: alive, another user's
        return True
    return True


def _remove_stale_temps(folder, base) -> None:
    """Remove the temporary files of ``folder/base`` whose writer (a process of this host) no
    longer runs: what a process killed mid-save leaves."""
    pattern = _temp_pattern(base)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _renamed(exc: OSError, path: str) -> OSError:
    """``exc`` again, naming ``path`` as its file: ``[Errno 13] Permission denied: 'run/a.npz'``."""
    try:
        return type(exc)(exc.errno, exc.strerror, path)
    except TypeError:                  # a subclass with its own constructor
        return OSError(exc.errno, exc.strerror, path)


def _discard(tmp) -> None:
    if tmp is None:
        return
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _fsync_dir(folder) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# reading a hostile file: open it only if it is a regular file (_files.open_regular), never read
# past its size
# ------------------------------------------------------------------------------------------------
class _Bounded:
    """A read-only view of an open file that never reads (so never allocates) past ``size``:
    what :mod:`zipfile` is given, so that no size it finds in the file can make it allocate
    more than the file holds."""

    def __init__(self, f, size):
        self._f, self._size = f, size

    def read(self, n=-1):
        left = max(self._size - self._f.tell(), 0)
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def seekable(self):
        return True

    def readable(self):
        return True


class _Counting:
    """Counts the bytes read through it (the length of a ``.npy`` header)."""

    def __init__(self, f):
        self._f, self.count = f, 0

    def read(self, n=-1):
        data = self._f.read(n)
        self.count += len(data)
        return data


def _read_exact(f, n, path, what):
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path} is truncated or changed while being read: {what} should have "
                         f"{n:,} bytes, got {len(data):,}")
    return data


def _fill(arr, read, path, where):
    """Fill the contiguous array ``arr`` with bytes from ``read(n)``, at most ``_CHUNK`` at a
    time (so the only large allocation is ``arr`` itself)."""
    if arr.nbytes == 0:
        return
    view = memoryview(arr.reshape(-1).view(np.uint8))
    pos = 0
    while pos < arr.nbytes:
        chunk = read(min(_CHUNK, arr.nbytes - pos))
        if not chunk:
            raise ValueError(f"{path} is truncated: {where} ends after {pos:,} of its "
                             f"{arr.nbytes:,} bytes")
        view[pos:pos + len(chunk)] = chunk
        pos += len(chunk)


def _check_shape(shape, itemsize, where):
    """``shape`` (a sequence of ints >= 0) -> ``(tuple, number of bytes)``; absurd shapes are
    refused before anything is allocated."""
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"{where}: shape must be a list of at most {_MAX_DIMS} integers >= 0, "
                         f"got {_short(shape)}")
    if math.prod(max(d, 1) for d in shape) * max(itemsize, 1) >= _MAX_ELEMENTS:
        raise ValueError(f"{where}: shape {_short(shape)} is absurdly large")
    return tuple(shape), math.prod(shape) * itemsize


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_bool_bytes(arr, path, where):
    if arr.dtype == np.bool_ and arr.size and arr.reshape(-1).view(np.uint8).max() > 1:
        raise ValueError(f"{path}: {where} is a bool array holding bytes other than 0 and 1")


# ------------------------------------------------------------------------------------------------
# nested state <-> (flat arrays, JSON)
# ------------------------------------------------------------------------------------------------
def _split(obj, prefix, arrays):
    """Replace every ndarray in a nested dict/list by ``{"__array__": key}``, collecting arrays."""
    if isinstance(obj, np.ndarray):
        arrays[prefix] = obj
        return {"__array__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _split(v, f"{prefix}/{k}", arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _key(k):
    if isinstance(k, (bool, int, float, str)) or k is None:
        return k
    if isinstance(k, np.integer):
        return int(k)
    raise TypeError(f"cannot store a dict key of type {type(k).__name__} in a checkpoint")


def _join(obj, arrays, where, used):
    """The inverse of :func:`_split`; a malformed structure or a reference to an array the file
    does not hold is a ``ValueError`` naming ``where``. The names of the arrays referred to are
    added to ``used``."""
    if isinstance(obj, dict):
        kind = next(iter(obj), None) if len(obj) == 1 else None
        value = obj.get(kind)
        if kind == "__array__":
            if not isinstance(value, str) or value not in arrays:
                raise ValueError(f"{where} refers to array {_short(value)}, which the file does "
                                 f"not hold")
            used.add(value)
            return arrays[value]
        if kind == "__tuple__" and isinstance(value, list):
            return tuple(_join(v, arrays, where, used) for v in value)
        if kind == "__dict__" and isinstance(value, list):
            out = {}
            for item in value:
                if not (isinstance(item, list) and len(item) == 2
                        and (item[0] is None or isinstance(item[0], (bool, int, float, str)))):
                    raise ValueError(f"{where}: a dict entry must be a [key, value] pair with a "
                                     f"scalar key, got {_short(item)}")
                if item[0] in out:
                    raise ValueError(f"{where}: key {item[0]!r} appears twice")
                out[item[0]] = _join(item[1], arrays, where, used)
            return out
        raise ValueError(f"{where}: malformed entry {_short(obj)} (expected __array__, __tuple__ "
                         f"or __dict__)")
    if isinstance(obj, list):
        return [_join(v, arrays, where, used) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def save_checkpoint(path, module, optimizer=None, **meta) -> None:
    """Save ``module`` (and ``optimizer``) with ``meta`` (JSON-able: step, config, ...) to ``path``.

    The container follows the suffix: ``.safetensors`` writes safetensors, anything else ``.npz``
    (the name is used as given; no suffix is appended).
    """
    arrays = {f"model/{k}": np.ascontiguousarray(v) for k, v in module.state_dict().items()}
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "module": type(module).__name__,
        "meta": meta,
        "rng": {name: g.bit_generator.state for name, g in module.generators()},
        "optimizer": None,
    }
    if optimizer is not None:
        doc["optimizer"] = {"type": type(optimizer).__name__,
                            "state": _split(optimizer.state_dict(), "optim", arrays)}
    try:
        text = json.dumps(doc)
    except TypeError as exc:
        raise TypeError(f"checkpoint meta must be JSON-serialisable: {exc}") from exc
    except ValueError as exc:            # a circular reference
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {exc}") from exc
    if os.fspath(path).endswith(".safetensors"):
        save_safetensors(path, arrays, {"__meta__": text})
    else:
        arrays["__meta__"] = np.array(text)
        atomic_write(path, lambda f: np.savez(f, **arrays))


def read_checkpoint(path):
    """Read a checkpoint without a module: ``(arrays, doc)`` with ``arrays`` the flat name ->
    array mapping and ``doc`` the JSON document (every field checked). Raises ``ValueError`` for
    anything but a regular file, and for a truncated, corrupt, pickle-bearing, foreign or
    inconsistent one; ``FileNotFoundError`` when there is none."""
    with open_regular(path, "checkpoint") as (f, size):
        path = os.fspath(path)
        magic = f.read(9)
        # a pickle starts with PROTO (0x80) and its version (2-5); a safetensors file with its
        # header length (any 8 bytes) and then the header's "{": only the "{" tells them apart
        if magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") \
                and magic[8:9] != b"{":
            raise ValueError(f"{path} is a pickle file; refusing to load it "
                             f"(checkpoints are .npz or .safetensors, read without unpickling)")
        if magic.startswith(b"\x93NUMPY"):
            raise ValueError(f"{path} is a bare .npy array, not a scratchlm checkpoint")
        if magic.startswith(b"PK"):
            arrays = _read_npz(f, size, path)
            meta = arrays.pop("__meta__", None)
            if meta is None:
                raise ValueError(f"{path} is an .npz file but not a scratchlm checkpoint "
                                 f"(no __meta__)")
            if meta.dtype.kind != "U" or meta.ndim != 0:
                raise ValueError(f"{path}: __meta__ must be a string, got a {meta.dtype} array "
                                 f"of shape {meta.shape}")
            text = str(meta[()])
        else:
            arrays, header_meta = _read_safetensors(f, size, path)
            if "__meta__" not in header_meta:
                raise ValueError(f"{path} is not a scratchlm checkpoint (no __meta__ in its "
                                 f"metadata)")
            text = header_meta["__meta__"]
    doc = loads_json(text, f"{path}: checkpoint metadata (__meta__)")
    _check_doc(doc, arrays, path)
    return arrays, doc


def _check_doc(doc, arrays, path) -> None:
    """Every field of a checkpoint's JSON document has its type, and every array it refers to is
    in the file (and every array of the file is referred to)."""
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scratchlm checkpoint (format {_short(doc.get('format'))})")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: checkpoint version must be an integer >= 1, got {_short(version)}")
    if version > VERSION:
        raise ValueError(f"{path} has checkpoint version {version}; this scratchlm reads <= {VERSION}")
    kinds = {"module": (str, "a string"), "meta": (dict, "an object"), "rng": (dict, "an object")}
    for key, (kind, noun) in kinds.items():
        if not isinstance(doc.get(key), kind):
            raise ValueError(f"{path}: checkpoint metadata field {key!r} must be {noun}, got "
                             f"{type(doc.get(key)).__name__}")
    for name, state in doc["rng"].items():
        if not isinstance(state, dict):
            raise ValueError(f"{path}: the saved state of generator {name!r} must be an object, "
                             f"got {type(state).__name__}")
    used = set()
    opt = doc.get("optimizer")
    if opt is not None:
        if not (isinstance(opt, dict) and isinstance(opt.get("type"), str) and "state" in opt):
            raise ValueError(f"{path}: checkpoint metadata field 'optimizer' must be null or an "
                             f"object with 'type' (a string) and 'state', got {_short(opt)}")
        _join(opt["state"], arrays, f"{path}: optimizer state", used)
    stray = [k for k in arrays if not (k.startswith("model/") and len(k) > 6) and k not in used]
    if stray:
        raise ValueError(f"{path} holds arrays nothing in it refers to: {_short(stray)}")


def load_checkpoint(path, module, optimizer=None, *, validate=None) -> dict:
    """Load ``path`` into ``module`` (strictly: missing, unexpected, mis-shaped or mis-typed keys
    raise) and ``optimizer``; restore the module's random generators; return the saved ``meta``.

    All or nothing: the file, the module's arrays, the optimizer's state and every generator's
    state are checked before anything is written, so an error leaves ``module`` and
    ``optimizer`` exactly as they were. ``validate(meta)``, if given, runs last, after every
    check and before any write: what it raises also leaves them untouched (the training loop
    checks its own state there). Every error is a ``ValueError`` naming the file.
    """
    arrays, doc = read_checkpoint(path)
    path = os.fspath(path)
    if not callable(getattr(module, "_check_state_dict", None)):
        raise TypeError(f"module must be a scratchlm.nn.Module, got {type(module).__name__}")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    try:
        model_writes, _, _ = module._check_state_dict(model_state, strict=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    opt_plan = None
    if optimizer is not None:
        saved = doc.get("optimizer")
        if saved is None:
            raise ValueError(f"{path} holds no optimizer state")
        if saved["type"] != type(optimizer).__name__:
            raise ValueError(f"{path} holds {saved['type']} state, not {type(optimizer).__name__}")
        if not callable(getattr(optimizer, "_check_state_dict", None)):
            raise TypeError(f"optimizer must be a scratchlm Optimizer, got "
                            f"{type(optimizer).__name__}")
        state = _join(saved["state"], arrays, f"{path}: optimizer state", set())
        try:
            opt_plan = optimizer._check_state_dict(state)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
    gens = dict(module.generators())
    rng = doc["rng"]
    unknown, missing = sorted(set(rng) - set(gens)), sorted(set(gens) - set(rng))
    if unknown or missing:
        raise ValueError(f"{path}: the saved random generators do not fit this "
                         f"{type(module).__name__}: " + "; ".join(
                             p for p in (unknown and f"saved but not in the module: {unknown}",
                                         missing and f"in the module but not saved: {missing}") if p))
    for name, state in rng.items():
        trial = type(gens[name].bit_generator)()
        try:
            trial.state = state
        except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as exc:
            raise ValueError(f"{path}: the saved state of generator {name!r} does not fit its "
                             f"{type(trial).__name__} ({type(exc).__name__}: {exc})") from None
    meta = doc["meta"]
    if validate is not None:
        validate(meta)
    # every check passed: nothing below can fail
    module._apply_state_dict(model_writes)
    for name, state in rng.items():
        gens[name].bit_generator.state = state
    if optimizer is not None:
        optimizer._apply_state_dict(opt_plan)
    return meta


def _read_npz(f, size, path):
    """``{name: array}`` of the ``.npz`` open as ``f`` (``size`` bytes): the zip directory and
    every member's ``.npy`` header are checked against the file before any array is allocated."""
    try:
        zf = zipfile.ZipFile(_Bounded(f, size))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError,
            IndexError, TypeError, OverflowError, RuntimeError, NotImplementedError,
            struct.error) as exc:
        raise ValueError(f"{path} is truncated or corrupt: not a readable zip archive "
                         f"({type(exc).__name__}: {exc})") from None
    with zf:
        infos = zf.infolist()
        names, declared = set(), 0
        for info in infos:                       # 1. what the zip directory declares
            where = f"{path}: member {info.filename!r}"
            if info.filename in names:
                raise ValueError(f"{where} appears twice in the archive")
            names.add(info.filename)
            if not info.filename.endswith(".npy") or len(info.filename) == 4:
                raise ValueError(f"{where} is not a .npy array; a checkpoint holds nothing else")
            if info.flag_bits & 0x1:
                raise ValueError(f"{where} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError(f"{where} uses compression method {info.compress_type}; only "
                                 f"stored and deflated members are read")
            end = info.header_offset + 30 + len(info.filename.encode("utf-8", "replace")) \
                + info.compress_size
            if info.header_offset < 0 or end > size:
                raise ValueError(f"{path} is truncated or corrupt: member {info.filename!r} "
                                 f"declares {info.compress_size:,} bytes at offset "
                                 f"{info.header_offset:,}, past the end of the {size:,}-byte file")
            limit = (info.compress_size if info.compress_type == zipfile.ZIP_STORED
                     else info.compress_size * _DEFLATE_MAX_RATIO + 1024)
            if info.file_size > limit or (info.compress_type == zipfile.ZIP_STORED
                                          and info.file_size != info.compress_size):
                raise ValueError(f"{where} declares {info.file_size:,} bytes uncompressed from "
                                 f"{info.compress_size:,} stored: inconsistent")
            declared += info.compress_size
        if declared > size:
            raise ValueError(f"{path} is corrupt: its members declare {declared:,} bytes in a "
                             f"{size:,}-byte file (overlapping members)")
        plans = []
        for info in infos:                       # 2. every .npy header, against its member
            where = f"{path}: member {info.filename!r}"
            with _member(zf, info, where) as member:
                counter = _Counting(member)
                shape, fortran, dtype = _guard(lambda: _npy_header(counter, where), where)
                held = info.file_size - counter.count
                shape, nbytes = _check_shape(list(shape), dtype.itemsize, where)
                if nbytes != held:
                    raise ValueError(f"{where} declares a {dtype} array of shape {shape} "
                                     f"({nbytes:,} bytes) but holds {held:,} bytes")
            plans.append((info, counter.count, shape, fortran, dtype, where))
        arrays = {}
        for info, skip, shape, fortran, dtype, where in plans:   # 3. the data
            with _member(zf, info, where) as member:
                _guard(lambda: member.read(skip), where)
                arr = np.empty(shape[::-1] if fortran else shape, dtype)
                _guard(lambda: _fill(arr, member.read, path, where.split(": ", 1)[1]), where)
                if member.read(1):
                    raise ValueError(f"{where} holds more bytes than it declares")
            if fortran:
                arr = arr.T
            if not dtype.isnative and dtype.kind != "b":
                arr = arr.astype(dtype.newbyteorder("="))
            _check_bool_bytes(arr, path, f"member {info.filename!r}")
            arrays[info.filename[:-4]] = arr
        return arrays


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
               RuntimeError, NotImplementedError, struct.error, KeyError, IndexError,
               OverflowError, TypeError, UnicodeDecodeError)


def _guard(fn, where):
    try:
        return fn()
    except _ZIP_ERRORS as exc:
        raise ValueError(f"{where} is corrupt ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def _member(zf, info, where):
    member = _guard(lambda: zf.open(info), where)
    with member:
        yield member


def _npy_header(fp, where):
    """``(shape, fortran_order, dtype)`` from a ``.npy`` header, parsed here (not by NumPy, whose
    parser lets tokenizer errors through): the magic, a header of at most ``_MAX_NPY_HEADER``
    bytes holding a Python literal dict with exactly ``descr`` (a dtype string), ``fortran_order``
    (a bool) and ``shape`` (a tuple). Object arrays (they would be unpickled) and anything but
    numbers, bools and strings are refused."""
    magic = fp.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY":
        raise ValueError(f"{where} is not a .npy array (its magic is {magic[:8]!r})")
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"{where}: .npy format version {version[0]}.{version[1]} is not supported")
    fmt = "<H" if version == (1, 0) else "<I"
    raw = fp.read(struct.calcsize(fmt))
    if len(raw) != struct.calcsize(fmt):
        raise ValueError(f"{where}: truncated .npy header")
    (n,) = struct.unpack(fmt, raw)
    if n > _MAX_NPY_HEADER:
        raise ValueError(f"{where}: .npy header of {n:,} bytes is longer than the "
                         f"{_MAX_NPY_HEADER:,} allowed")
    raw = fp.read(n)
    if len(raw) != n:
        raise ValueError(f"{where}: truncated .npy header ({len(raw)} of {n} bytes)")
    try:
        header = ast.literal_eval(raw.decode("utf-8" if version == (3, 0) else "latin1"))
    except (UnicodeDecodeError, ValueError, TypeError, SyntaxError, RecursionError,
            MemoryError) as exc:
        raise ValueError(f"{where}: the .npy header is not a Python literal ({type(exc).__name__}: "
                         f"{_short(str(exc))})") from None
    if not (isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"}):
        raise ValueError(f"{where}: the .npy header must be a dict with exactly descr, "
                         f"fortran_order and shape, got {_short(header)}")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(fortran, bool) or not isinstance(shape, tuple):
        raise ValueError(f"{where}: the .npy header's fortran_order must be a bool and its shape "
                         f"a tuple, got {_short(fortran)} and {_short(shape)}")
    if not isinstance(descr, str):
        raise ValueError(f"{where} has a structured dtype {_short(descr)}; a checkpoint holds "
                         f"numbers, bools and strings only")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # deprecated aliases: refused below anyway
            dtype = np.dtype(descr)
    except (TypeError, ValueError, OverflowError, SyntaxError, KeyError) as exc:
        raise ValueError(f"{where}: {_short(descr)} is not a dtype ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise ValueError(f"{where} holds pickled objects (dtype {dtype}); refusing to load it "
                         f"(checkpoints are read without unpickling)")
    if dtype.kind not in _NPY_KINDS or dtype.fields is not None or dtype.subdtype is not None \
            or dtype.itemsize == 0:
        raise ValueError(f"{where} has dtype {dtype}; a checkpoint holds numbers, bools and "
                         f"strings only")
    return shape, fortran, dtype


# ------------------------------------------------------------------------------------------------
# safetensors
# ------------------------------------------------------------------------------------------------
_ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_ST_ITEMSIZE = {**{k: v.itemsize for k, v in _ST_DTYPES.items()}, "BF16": 2}


def save_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``{name: array}`` (and string ``metadata``) as a safetensors file, atomically.
    ``__metadata__`` is reserved by the format and refused as a tensor name."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    header, chunks, offset = {}, [], 0
    if metadata:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    for name, arr in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"safetensors tensor names must be strings, got {type(name).__name__} "
                            f"({name!r})")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved by the safetensors format for the "
                             "metadata; it cannot name a tensor")
        arr = np.asarray(arr)
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dt not in _ST_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {arr.dtype}, which safetensors cannot hold here")
        data = np.ascontiguousarray(arr, dtype=dt).tobytes()
        header[name] = {"dtype": _ST_NAMES[dt], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad the header so the data starts 8-byte aligned

    def write(f):
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for c in chunks:
            f.write(c)
    atomic_write(path, write)


def load_safetensors(path):
    """Read a safetensors file -> ``(tensors, metadata)``. The header length, every dtype, shape
    and offset are checked against the file before anything is allocated: the tensors must tile
    the data exactly (no overlap, no gap, nothing out of range). Raises ``ValueError`` naming the
    file, the tensor and what is wrong."""
    with open_regular(path, "safetensors file") as (f, size):
        return _read_safetensors(f, size, os.fspath(path))


def _read_safetensors(f, size, path):
    f.seek(0)
    if size < 8:
        raise ValueError(f"{path} is too short to be a safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", _read_exact(f, 8, path, "the header length"))
    if n > size - 8:
        raise ValueError(f"{path} is truncated or not a safetensors file: its header length says "
                         f"{n:,} bytes, the file has {size - 8:,}")
    if n > _MAX_ST_HEADER:
        raise ValueError(f"{path}: safetensors header of {n:,} bytes is larger than the "
                         f"{_MAX_ST_HEADER:,} allowed")
    raw = _read_exact(f, n, path, "the header")
    if raw[:1] != b"{":
        raise ValueError(f"{path} is neither an .npz nor a safetensors file")
    try:
        header = loads_json(raw, f"{path}: safetensors header")
    except ValueError as exc:
        raise ValueError(f"{exc} (corrupt safetensors header)") from None
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError(f"{path}: safetensors __metadata__ must map strings to strings, got "
                         f"{_short(metadata)}")
    buffer = size - 8 - n
    entries = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            raise ValueError(f"{where}: malformed entry {_short(info)} (expected dtype, shape and "
                             f"data_offsets)")
        code, offsets = info["dtype"], info["data_offsets"]
        if not isinstance(code, str) or code not in _ST_ITEMSIZE:
            raise ValueError(f"{where} has unsupported dtype {_short(code)}")
        shape, nbytes = _check_shape(info["shape"], _ST_ITEMSIZE[code], where)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise ValueError(f"{where}: data_offsets must be two integers [begin, end], got "
                             f"{_short(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= buffer:
            raise ValueError(f"{path} is truncated or corrupt: tensor {name!r} spans bytes "
                             f"{begin}..{end} of a {buffer}-byte buffer")
        if end - begin != nbytes:
            raise ValueError(f"{where} has {end - begin:,} bytes for shape {list(shape)} {code} "
                             f"({nbytes:,} expected)")
        entries.append((begin, end, name))
    pos, last = 0, None
    for begin, end, name in sorted(entries, key=lambda e: (e[0], e[1])):
        if begin != pos:
            what = f"overlaps tensor {last!r}" if begin < pos else f"leaves {begin - pos:,} bytes unused before it"
            raise ValueError(f"{path}: tensor {name!r} (bytes {begin}..{end}) {what}; "
                             f"the tensors must tile the data")
        pos, last = end, name
    if pos != buffer:
        raise ValueError(f"{path}: {buffer - pos:,} bytes after the last tensor belong to none")
    tensors = {}
    start = 8 + n
    for name, info in header.items():
        begin = info["data_offsets"][0]
        code, shape = info["dtype"], tuple(info["shape"])
        f.seek(start + begin)
        where = f"tensor {name!r}"
        if code == "BF16":
            bits = np.empty(shape, "<u2")
            _fill(bits, f.read, path, where)
            tensors[name] = (bits.astype(np.uint32) << 16).view(np.float32)
            continue
        dt = _ST_DTYPES[code]
        arr = np.empty(shape, dt.newbyteorder("<"))
        _fill(arr, f.read, path, where)
        _check_bool_bytes(arr, path, where)
        tensors[name] = arr if arr.dtype.isnative else arr.astype(dt.newbyteorder("="))
    return tensors, metadata
