"""Hot loops: Numba kernels, each with a plain-NumPy twin beside it, and the one switch between them.

Every kernel family lives in one file (``softmax.py``, ``layernorm.py`` ...). In each file a kernel
``foo`` exists three times:

* ``foo_numpy``  -- the reference: plain vectorised NumPy, read this first;
* ``foo_numba``  -- the same computation as explicit loops, ``@njit(cache=True)``;
* ``foo``        -- the dispatcher the rest of the package calls; it picks a route at call time.

Kernels never validate their arguments: Numba does no bounds checking, so the callers in
``scratchlm.functional`` check every shape and index in Python before a kernel is entered.

The route is chosen by, in order of precedence:

1. the context manager :func:`use_backend` (``with use_backend("numpy"): ...``);
2. :func:`set_backend`;
3. the environment variable ``SCRATCHLM_BACKEND`` (``numba``, the default, or ``numpy``),
   read once at import.
"""

from __future__ import annotations

import contextlib
import os
import threading

BACKENDS = ("numba", "numpy")

#: ``fastmath`` flags for kernels with row sums: ``reassoc`` lets LLVM reorder a sum so it can be
#: vectorised (the result differs from the sequential sum in the last bits, as NumPy's pairwise
#: sums do) and ``contract`` lets it fuse multiply-adds. Never ``nnan``/``ninf``: NaN and inf keep
#: their IEEE meaning, so masks (``-inf``) and NaN propagation behave as in the NumPy twins.
FAST = {"reassoc", "contract"}


def _backend_from_env() -> str:
    value = os.environ.get("SCRATCHLM_BACKEND", "numba").strip().lower() or "numba"
    if value not in BACKENDS:
        raise ValueError(
            f"SCRATCHLM_BACKEND must be one of {BACKENDS}, got {value!r}"
        )
    return value


_default_backend = _backend_from_env()
_local = threading.local()


def get_backend() -> str:
    """The route kernels take now: ``"numba"`` or ``"numpy"``."""
    return getattr(_local, "backend", None) or _default_backend


def set_backend(name: str) -> None:
    """Set the process-wide default route (``"numba"`` or ``"numpy"``)."""
    global _default_backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _default_backend = name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the body with every kernel on route ``name`` (thread-local, nests, restores on exit)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    previous = getattr(_local, "backend", None)
    _local.backend = name
    try:
        yield
    finally:
        _local.backend = previous


def dispatch(numba_fn, numpy_fn):
    """Build the dispatcher ``foo`` from its two twins: it calls whichever route is active."""

    def kernel(*args):
        if get_backend() == "numba":
            return numba_fn(*args)
        return numpy_fn(*args)

    kernel.__name__ = numpy_fn.__name__.removesuffix("_numpy")
    kernel.__doc__ = numpy_fn.__doc__
    kernel.numba = numba_fn
    kernel.numpy = numpy_fn
    return kernel
