"""16-bit rounding and autocast: what the functional layers need from mixed precision, with no
dependency on the rest of the package (``scratchlm.compress.precision`` documents and re-exports
it, beside the :class:`~scratchlm.compress.precision.GradScaler`)."""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from ._checks import make_rng

#: the training loop's ``precision`` values
PRECISIONS = ("fp32", "fp16", "bf16")
_state = threading.local()


def _float32(x, name):
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be a float32 array, got {x.dtype}")
    return x


def round_fp16(x) -> np.ndarray:
    """``x`` (float32) rounded to the nearest float16, ties to even (overflow to +-inf,
    underflow through the subnormals to zero), as float32."""
    x = _float32(x, "x")
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(np.float32)


def round_bf16(x, stochastic: bool = False, rng=None) -> np.ndarray:
    """``x`` (float32) rounded to bfloat16, as float32: to the nearest, ties to even; or, with
    ``stochastic``, up or down with probabilities given by the distance to each neighbour
    (``rng`` seeds the draw). NaN stays NaN and +-inf stays +-inf; a finite value may round to
    +-inf when it is within half a step of float32's largest value."""
    x = _float32(x, "x")
    # uint32 arithmetic: only a NaN's bits can carry past the top (it wraps), and NaNs are put
    # back below; a finite value carries at most into the exponent (the next binade, or inf)
    bits = np.ascontiguousarray(x).view(np.uint32)
    if stochastic:                     # add a uniform 16-bit draw below the kept bits, truncate
        noise = make_rng(rng).integers(0, 1 << 16, size=bits.shape, dtype=np.uint32)
        rounded = (bits + noise) & np.uint32(0xFFFF0000)
    else:                              # ties to even: add 0x7FFF plus the lowest kept bit
        rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) \
            & np.uint32(0xFFFF0000)
    out = rounded.view(np.float32).reshape(x.shape)
    nan = np.isnan(x)
    if nan.any():                      # the carry must not turn a NaN's payload into inf
        out = np.where(nan, np.float32(np.nan), out)
    return out


# ------------------------------------------------------------------------------------------------
# autocast: the 16-bit products of Linear and attention
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def autocast(precision: str = "fp16", loss_scale: float = 1.0):
    """Run the body's Linear and attention products in ``precision`` (``"fp16"``, ``"bf16"``;
    ``"fp32"`` turns autocast off), thread-local, nesting. ``loss_scale`` multiplies the
    cross-entropy's upstream gradient in the backward (a :class:`GradScaler`'s scale)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float)) or \
            not np.isfinite(loss_scale) or loss_scale <= 0:
        raise ValueError(f"loss_scale must be a finite number > 0, got {loss_scale!r}")
    previous = getattr(_state, "mode", None)
    _state.mode = None if precision == "fp32" else (precision, float(loss_scale))
    _state.scaled = 0
    try:
        yield
    finally:
        _state.mode = previous


def active() -> str | None:
    """The precision autocast runs now (``"fp16"``/``"bf16"``), or None."""
    mode = getattr(_state, "mode", None)
    return None if mode is None else mode[0]


def loss_scale() -> float:
    """The loss scale of the autocast in force (1.0 outside one); the cross-entropy's backward
    reads it and counts the read, so the loop can tell the scale reached the gradients."""
    mode = getattr(_state, "mode", None)
    if mode is None:
        return 1.0
    _state.scaled = getattr(_state, "scaled", 0) + 1
    return mode[1]


def scaled_backwards() -> int:
    """How many cross-entropy backwards read the loss scale in the current autocast."""
    return getattr(_state, "scaled", 0)


def to16(x, precision: str) -> np.ndarray:
    """``x`` rounded to ``precision``'s 16-bit format (float32 out; float64 in is refused: mixed
    precision is a float32 model's)."""
    if x.dtype != np.float32:
        raise TypeError(f"{precision} autocast needs float32 arrays, got {x.dtype} (call "
                        f"model.float() first)")
    return round_fp16(x) if precision == "fp16" else round_bf16(x)


def pack16(x16, precision: str) -> np.ndarray:
    """A float32 array already on the 16-bit grid, stored in 2 bytes an entry: float16, or
    bfloat16's bits as uint16 (the top half of the float32)."""
    if precision == "fp16":
        return x16.astype(np.float16)
    return (np.ascontiguousarray(x16).view(np.uint32) >> 16).astype(np.uint16)


def unpack16(a, precision: str) -> np.ndarray:
    """The float32 values of :func:`pack16`'s array."""
    if precision == "fp16":
        return a.astype(np.float32)
    return (a.astype(np.uint32) << 16).view(np.float32)
