"""Checkpoints and safetensors: nothing lost, nothing unpickled.

A checkpoint is one ``.npz`` (or ``.safetensors``) file holding

* ``model/<dotted name>``: every array of ``module.state_dict()``;
* ``optim/...``: every array of ``optimizer.state_dict()`` (its numbers and hyperparameters go in
  the JSON below);
* ``__meta__``: one JSON document: format version, the caller's ``**meta`` (step, config, ...),
  the optimizer's non-array state, and the state of every ``np.random.Generator`` the module holds
  (dropout), so a resumed run continues bit-identically.

Files are read with ``allow_pickle=False`` and written to a temporary file in the same folder that
is ``os.replace``-d over the target only once complete, so a crash mid-save keeps the old file. The
folder is created when it does not exist, and a failed write names the target, not the
temporary file.

``save_safetensors`` / ``load_safetensors`` read and write the safetensors format (an 8-byte
little-endian header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``, then the
raw little-endian bytes) with NumPy alone; ``bfloat16`` tensors load as float32.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import tempfile
import zipfile

import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "save_safetensors",
           "load_safetensors", "atomic_write"]

FORMAT = "scratchlm-checkpoint"
VERSION = 1


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------
def atomic_write(path, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then ``os.replace`` it over
    ``path``. The folder is created if it does not exist yet. On any error the temporary file is
    removed and ``path`` is left as it was; an ``OSError`` names ``path``, never the hidden
    temporary file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        try:
            os.makedirs(folder, exist_ok=True)
        except FileExistsError as exc:          # a file stands where a folder should be
            raise NotADirectoryError(errno.ENOTDIR, f"Not a directory, so {path} cannot be "
                                     f"written", exc.filename) from None
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
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
        prefix = os.path.join(folder, "." + os.path.basename(path) + ".")
        names = [n for n in (exc.filename, exc.filename2) if n is not None]
        names_tmp = any(isinstance(n, str) and n.startswith(prefix) for n in names)
        if exc.errno is not None and (names_tmp or not names):
            raise _renamed(exc, path) from exc     # it named the temp file, or nothing at all
        raise              # it names something else (the folder), or is not a system error
    except BaseException:
        _discard(tmp)
        raise


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


def _join(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__tuple__" in obj:
            return tuple(_join(v, arrays) for v in obj["__tuple__"])
        return {k: _join(v, arrays) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
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
    if os.fspath(path).endswith(".safetensors"):
        save_safetensors(path, arrays, {"__meta__": text})
    else:
        arrays["__meta__"] = np.array(text)
        atomic_write(path, lambda f: np.savez(f, **arrays))


def read_checkpoint(path):
    """Read a checkpoint without a module: ``(arrays, doc)`` with ``arrays`` the flat name ->
    array mapping and ``doc`` the JSON document. Raises ``ValueError`` for a truncated, corrupt,
    pickle-bearing or foreign file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:1] == b"\x80":
        raise ValueError(f"{path} is a pickle file; refusing to load it "
                         f"(checkpoints are .npz or .safetensors, read without unpickling)")
    if magic.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path} is a bare .npy array, not a scratchlm checkpoint")
    if magic.startswith(b"PK"):
        arrays = _read_npz(path)
        if "__meta__" not in arrays:
            raise ValueError(f"{path} is an .npz file but not a scratchlm checkpoint (no __meta__)")
        text = str(arrays.pop("__meta__"))
    else:
        arrays, header_meta = load_safetensors(path)
        if "__meta__" not in header_meta:
            raise ValueError(f"{path} is not a scratchlm checkpoint (no __meta__ in its metadata)")
        text = header_meta["__meta__"]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: checkpoint metadata is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scratchlm checkpoint (format {doc.get('format')!r})")
    if doc.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {doc['version']}; this scratchlm reads <= {VERSION}")
    return arrays, doc


def load_checkpoint(path, module, optimizer=None) -> dict:
    """Load ``path`` into ``module`` (strictly: missing, unexpected or mis-shaped keys raise) and
    ``optimizer``; restore the module's random generators; return the saved ``meta``.

    Everything that can be checked is checked before anything is modified."""
    arrays, doc = read_checkpoint(path)
    if optimizer is not None:
        saved = doc.get("optimizer")
        if saved is None:
            raise ValueError(f"{path} holds no optimizer state")
        if saved["type"] != type(optimizer).__name__:
            raise ValueError(f"{path} holds {saved['type']} state, not {type(optimizer).__name__}")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    module.load_state_dict(model_state, strict=True)
    gens = dict(module.generators())
    for name, state in (doc.get("rng") or {}).items():
        if name in gens:
            gens[name].bit_generator.state = state
    if optimizer is not None:
        optimizer.load_state_dict(_join(doc["optimizer"]["state"], arrays))
    return doc["meta"]


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise ValueError(f"{path} contains pickled objects; refusing to load it "
                             f"(checkpoints are read with allow_pickle=False)") from exc
        raise ValueError(f"{path} is not a readable checkpoint: {exc}") from exc
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"{path} is truncated or corrupt: {exc}") from exc


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


def save_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``{name: array}`` (and string ``metadata``) as a safetensors file, atomically."""
    header, chunks, offset = {}, [], 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    for name, arr in tensors.items():
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
    """Read a safetensors file -> ``(tensors, metadata)``; validates the header and every
    offset, and raises ``ValueError`` naming what is wrong with a corrupt file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path} is too short to be a safetensors file ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError(f"{path} is truncated or not a safetensors file: its header length says "
                         f"{n} bytes, the file has {len(blob) - 8}")
    if blob[8:9] != b"{":
        raise ValueError(f"{path} is neither an .npz nor a safetensors file")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} has a corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data = memoryview(blob)[8 + n:]
    tensors = {}
    for name, info in header.items():
        try:
            code, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed entry for tensor {name!r}: {info!r}") from exc
        if not 0 <= begin <= end <= len(data):
            raise ValueError(f"{path} is truncated or corrupt: tensor {name!r} spans bytes "
                             f"{begin}..{end} of a {len(data)}-byte buffer")
        count = int(np.prod(shape, dtype=np.int64))
        if code == "BF16":
            if end - begin != 2 * count:
                raise ValueError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape} BF16")
            bits = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            tensors[name] = bits.view(np.float32).reshape(shape)
            continue
        if code not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {code!r}")
        dt = _ST_DTYPES[code]
        if end - begin != count * dt.itemsize:
            raise ValueError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape} {code}")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
    return tensors, metadata
