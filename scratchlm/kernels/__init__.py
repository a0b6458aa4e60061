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

import concurrent.futures
import contextlib
import os
import threading

BACKENDS = ("numba", "numpy")

#: ``fastmath`` flags for kernels with row sums: ``reassoc`` lets LLVM reorder a sum so it can be
#: vectorised (the result differs from the sequential sum in the last bits, as NumPy's pairwise
#: sums do) and ``contract`` lets it fuse multiply-adds. Never ``nnan``/``ninf``: NaN and inf keep
#: their IEEE meaning, so masks (``-inf``) and NaN propagation behave as in the NumPy twins.
#: Numba passes a caller's ``fastmath`` to every jitted function it calls that does not set its
#: own (and caches that compilation): helpers whose rounding order matters -- the rescaled rows
#: that handle overflow, ``vmath``'s exp -- set ``fastmath`` explicitly (``False``, or only
#: ``contract``), since ``reassoc`` may regroup ``(p s) k`` as ``p (s k) = 0 * inf``.
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

    def kernel(*args, **kwargs):
        if get_backend() == "numba":
            return numba_fn(*args, **kwargs)
        return numpy_fn(*args, **kwargs)

    kernel.__name__ = numpy_fn.__name__.removesuffix("_numpy")
    kernel.__doc__ = numpy_fn.__doc__
    kernel.numba = numba_fn
    kernel.numpy = numpy_fn
    return kernel


# ------------------------------------------------------------------------------------------------
# threads
# ------------------------------------------------------------------------------------------------
def _threads_from_env() -> int:
    value = os.environ.get("SCRATCHLM_NUM_THREADS", "").strip()
    if not value:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(cpus or 1, 8))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"SCRATCHLM_NUM_THREADS must be a positive integer, got {value!r}")
    return int(value)


_num_threads = _threads_from_env()
_pool = None                  # the worker threads (the caller's thread runs one part itself)
_pool_workers = 0
_pool_lock = threading.Lock()


def get_num_threads() -> int:
    """How many threads a splittable kernel call uses (``SCRATCHLM_NUM_THREADS``, default: the
    CPU count, at most 8)."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Set the thread count for splittable work (1: everything runs in the calling thread)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _num_threads = n


def split_run(fn, n: int, grain: int = 1) -> list:
    """Run ``fn(lo, hi)`` over contiguous parts of ``range(n)``, one per thread, and return the
    results in order. Each part gets at least ``grain`` items (below ``2 * grain`` everything
    runs in the calling thread: a hand-off costs about 20 microseconds). On the ``numba`` route with more than one thread the parts run
    concurrently: ``fn`` must spend its time in ``nogil`` Numba kernels and touch only its own
    part of any shared output. On the ``numpy`` route (or with one thread) ``fn(0, n)`` runs
    alone: NumPy's BLAS already uses every core.

    These are plain Python threads (a ``concurrent.futures`` pool), not Numba's parallel
    runtime, whose OpenMP/TBB pool fights torch's in one process (see the README).
    """
    parts = min(_num_threads, n // max(1, grain)) if get_backend() == "numba" else 1
    if getattr(_local, "in_split", False):
        parts = 1                     # already one part of a split: the cores are all busy
    if parts <= 1:
        return [fn(0, n)]
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < parts - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=parts - 1,
                                                          thread_name_prefix="scratchlm")
            _pool_workers = parts - 1
        pool = _pool
    bounds = [n * i // parts for i in range(parts + 1)]

    def in_worker(lo, hi):                    # the route is thread-local: carry it over
        _local.in_split = True
        try:
            with use_backend("numba"):
                return fn(lo, hi)
        finally:
            _local.in_split = False

    futures = [pool.submit(in_worker, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    _local.in_split = True
    try:
        first = fn(bounds[0], bounds[1])
    finally:                          # never return (or raise) while a worker still writes
        _local.in_split = False
        concurrent.futures.wait(futures)
    return [first] + [f.result() for f in futures]


def _forget_pool_after_fork():
    """A forked child inherits the pool object but not its threads: start afresh."""
    global _pool, _pool_workers, _pool_lock
    _pool, _pool_workers, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)
