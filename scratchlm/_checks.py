"""Argument checks shared by every layer: bad input gets a clear error, never garbage.

Each check names the argument, what was expected and what arrived. Kernels do no bounds checking,
so every index and shape is validated here, in Python, before a kernel is entered.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from .kernels.checks import all_finite


class _Trust(threading.local):
    depth = 0


_trust = _Trust()


def trusted(method):
    """Decorator for a model's ``forward``/``backward``: the layers inside skip the O(n) NaN/inf
    scans of the arrays they pass each other (shapes and dtypes are still checked).

    The model itself checks what enters from outside -- token ids, upstream gradients -- before
    calling into its layers, so the scans would only re-read activations the model has just
    computed from finite inputs and weights (about 8% of a GPT training step). A non-finite loss
    is caught by the training loop. A layer called on its own, outside a model, scans as always.
    """
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        _trust.depth += 1
        try:
            return method(*args, **kwargs)
        finally:
            _trust.depth -= 1
    return wrapper


def float_errors_checked(function):
    """Decorator for generation and evaluation: the function checks what it produces (logits,
    log-probabilities, a loss) for NaN/inf itself and raises :class:`NonFiniteError`, so NumPy's
    floating-point warnings on the way there (a diverged model's ``inf - inf``) are silenced --
    the error says it once, clearly."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return function(*args, **kwargs)
    return wrapper


def _scan(x) -> bool:
    """Whether ``x`` must be scanned for NaN/inf here (not inside a ``@trusted`` model)."""
    return x.size and not _trust.depth

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_INT64_MAX = np.iinfo(np.int64).max


class NonFiniteError(ValueError, FloatingPointError):
    """A model produced NaN or infinite numbers where a choice or a score was to be made -- its
    parameters or activations are not finite (a diverged model, a corrupt checkpoint). A
    ``ValueError`` (the model is a bad argument) and a ``FloatingPointError`` (what the training
    loop raises for a diverged run), so either ``except`` catches it."""


def as_int64(ids: np.ndarray, name: str) -> np.ndarray:
    """Cast an integer array to int64 without wrapping: an unsigned id above 2**63 - 1 would become
    a negative number, so it is refused naming the value the caller gave, not the cast's."""
    if ids.dtype == np.int64:
        return ids
    if ids.dtype.kind == "u" and ids.dtype.itemsize == 8 and ids.size and ids.max() > _INT64_MAX:
        where = tuple(int(i) for i in np.argwhere(ids > _INT64_MAX)[0])
        raise ValueError(f"{name} must hold values below 2**63 (they become int64), got "
                         f"{int(ids[where])} at index {where}")
    return ids.astype(np.int64)


def int_sequence_array(values, name: str, want: str = "must hold int64 values") -> np.ndarray:
    """``np.asarray`` of a Python sequence, except that integers beyond int64 -- which NumPy
    silently turns into float64 (or object) -- are refused naming the integer given, not
    reported as a float array."""
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind in "fO":
        leaves = np.asarray(values, dtype=object).ravel()
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in leaves):
            big = next(int(v) for v in leaves if not -2**63 <= v < 2**63)
            raise ValueError(f"{name} {want}, got {big}")
    return arr


def shape_tuple(value, name: str) -> tuple:
    """A shape as torch takes one (an int, or a non-empty tuple/list of ints, e.g. LayerNorm's
    ``normalized_shape``) -> a tuple of positive ints, or raise naming ``name``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"{name} must be an int or a non-empty tuple of ints, got {value!r}")
    return tuple(positive_int(v, name) for v in value)


def dim_index(dim, ndim: int, name: str = "dim") -> int:
    """torch's dimension argument: an int in ``[-ndim, ndim)``, negative counting from the end ->
    the non-negative axis, or raise naming ``name`` and the input's rank."""
    dim = integer(dim, name)
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim}) for a {ndim}-D input, got {dim}")
    return dim % ndim


def float_array(x, name: str, *, ndim=None, min_ndim=None, finite: bool = True,
                allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a float32/float64 ndarray, or raise naming ``name``.

    Python lists and scalars are accepted and become float64; integer, bool, complex and
    float16 arrays are refused (``TypeError``), as are wrong ranks, empty arrays and NaN/inf
    (``ValueError``).
    """
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple, int, float, np.number)) and not isinstance(x, bool):
            x = np.asarray(x, dtype=np.float64 if np.asarray(x).dtype.kind in "iuf" else None)
        else:
            raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got shape {x.shape} ({x.ndim}-D)")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {x.shape}")
    if x.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    if finite and _scan(x) and not all_finite(np.ascontiguousarray(x).reshape(-1)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(
            f"{name} must be finite, got {x[tuple(bad)]} at index {tuple(int(i) for i in bad)}"
        )
    return x


def index_array(ids, name: str, num: int, *, ndim=None, allow_empty: bool = False,
                ignore_index=None) -> np.ndarray:
    """Return ``ids`` as an int64 ndarray with every entry in ``[0, num)``, or raise.

    Float and bool ids are refused with ``TypeError`` (a float id is almost always a bug);
    out-of-range or negative ids raise ``ValueError`` naming the first offender.
    Entries equal to ``ignore_index`` are allowed whatever their value.
    """
    if not isinstance(ids, np.ndarray):
        if isinstance(ids, (list, tuple, int, np.integer)) and not isinstance(ids, bool):
            ids = int_sequence_array(ids, name, f"must lie in [0, {num})")
            if ids.size == 0:
                ids = ids.astype(np.int64)
        else:
            raise TypeError(f"{name} must be an integer numpy array, got {type(ids).__name__}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {ids.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if ids.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got shape {ids.shape} ({ids.ndim}-D)")
    if ids.size == 0:
        if not allow_empty:
            raise ValueError(f"{name} must not be empty, got shape {ids.shape}")
        return ids.astype(np.int64, copy=False)
    valid = ids if ignore_index is None else ids[ids != ignore_index]
    if valid.size:
        lo, hi = int(valid.min()), int(valid.max())
        if lo < 0 or hi >= num:
            bad = lo if lo < 0 else hi
            where = tuple(int(i) for i in np.argwhere(ids == bad)[0])
            extra = "" if ignore_index is None else f" (or {ignore_index}, the ignore_index)"
            raise ValueError(
                f"{name} must lie in [0, {num}){extra}, got {bad} at index {where}"
            )
    return as_int64(ids, name)


def same_dtype(x: np.ndarray, name: str, dtype, owner: str) -> None:
    """Refuse to mix precisions: float32 in must mean float32 out, with no silent promotion."""
    if x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but {owner} holds {np.dtype(dtype)} parameters; "
            f"cast the input or call .to({np.dtype(dtype)})"
        )


def upstream(dy, shape, dtype, name: str = "dy") -> np.ndarray:
    """Check an upstream gradient against the forward output it belongs to: same shape
    (``ValueError``), same dtype (``TypeError``: no silent promotion in backward either), finite.
    Every backward calls this before touching a kernel."""
    if not isinstance(dy, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(dy).__name__}")
    if dy.dtype != np.dtype(dtype):
        raise TypeError(f"{name} has dtype {dy.dtype} but the forward output has dtype "
                        f"{np.dtype(dtype)}")
    if dy.shape != tuple(shape):
        raise ValueError(f"{name} must have the forward output's shape {tuple(shape)}, got {dy.shape}")
    if _scan(dy) and not all_finite(np.ascontiguousarray(dy).reshape(-1)):
        raise ValueError(f"{name} must be finite (it contains NaN or inf)")
    return dy


def scalar(value, name: str) -> float:
    """A finite real number (Python number, NumPy scalar or 0-d array), or raise naming ``name``."""
    if isinstance(value, np.ndarray) and value.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}")
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from exc
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def same_shape_and_dtype(y: np.ndarray, name_y: str, x: np.ndarray, name_x: str) -> None:
    """``y`` must match ``x`` exactly in shape (ValueError) and dtype (TypeError)."""
    if y.shape != x.shape:
        raise ValueError(f"{name_y} must have the shape of {name_x} {x.shape}, got {y.shape}")
    if y.dtype != x.dtype:
        raise TypeError(f"{name_y} has dtype {y.dtype} but {name_x} has dtype {x.dtype}")


def last_dim(x: np.ndarray, name: str, size: int, what: str) -> None:
    if x.shape[-1] != size:
        raise ValueError(
            f"{name} must have last dimension {size} ({what}), got shape {x.shape}"
        )


def positive_int(value, name: str, *, minimum: int = 1) -> int:
    value = integer(value, name)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def probability(value, name: str, *, allow_one: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (0.0 <= value and upper_ok):
        bound = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return value


def boolean(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def nonnegative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0 or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def positive_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value > 0 or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def choice(value, name: str, options) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def resolve_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def make_rng(rng) -> np.random.Generator:
    """``rng`` may be a Generator (used as is), an int seed, or None (fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")
