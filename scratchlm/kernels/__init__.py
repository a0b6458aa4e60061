"""Hot loops: Numba kernels, each with a plain-NumPy twin beside it, and the one switch between them.

Every kernel family lives in one file (``softmax.py``, ``layernorm.py`` ...). In each file a kernel
``foo`` exists three times:

* ``foo_numpy``  -- the reference: plain vectorised NumPy, read this first;
* ``foo_numba``  -- the same computation as explicit loops,
  ``@njit(cache=True, error_model="numpy")``;
* ``foo``        -- the dispatcher the rest of the package calls; it picks a route at call time.

Kernels never validate their arguments: Numba does no bounds checking, so the callers in
``scratchlm.functional`` check every shape and index in Python before a kernel is entered.

Every kernel compiles with ``error_model="numpy"`` (a test holds each ``@njit`` to it): under
Numba's default (Python's) model every division first tests its divisor for zero, to raise
``ZeroDivisionError``, and that branch keeps LLVM from vectorising the loop -- a sigmoid's
``1 / (1 + e)`` then runs one element at a time (GELU's forward: 2.4 ns an element against 0.74
vectorised). NumPy's model gives IEEE's answer (``inf``, ``nan``), which is what the NumPy twins
give; an integer divisor is never zero, since the callers check every size first.

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


class _Worker:
    """One pool thread. It sleeps on ``start`` (a lock held while there is no work), runs the
    part it is handed, and releases ``done``. Plain locks, not ``concurrent.futures`` (whose
    queue and futures add tens of microseconds a hand-off). Around the locks both sides first
    *spin* (:mod:`scratchlm.kernels.spin`): the worker for its next task, the caller for the
    worker's result -- the counters ``posted`` and ``finished`` say when to stop -- so that
    neither core goes idle between the many hand-offs of a step (waking one costs 60-80
    microseconds on a virtual machine; docs/kernels.md, "Threads"). The locks stay the only
    synchronisation: a spin that sees its counter move still takes the lock."""

    def __init__(self, index):
        from .spin import iterations
        import numpy as np
        self.spins = iterations()
        self.start, self.done = threading.Lock(), threading.Lock()
        self.start.acquire()
        self.done.acquire()
        self.posted, self.finished = np.zeros(1, np.int64), np.zeros(1, np.int64)   # counters
        self.task = self.result = self.error = None
        threading.Thread(target=self._loop, name=f"scratchlm-{index}", daemon=True).start()

    def _loop(self):
        from .spin import spin_until
        _local.backend = "numba"      # the route is thread-local: a pool thread runs Numba parts
        _local.in_split = True        # and never splits again (the cores are all busy)
        seq = 0
        while True:
            seq += 1
            spin_until(self.posted, seq, self.spins)     # stay awake a while, without the GIL
            self.start.acquire()
            fn, lo, hi = self.task
            try:
                self.result, self.error = fn(lo, hi), None
            except BaseException as e:                                  # re-raised by the caller
                self.result, self.error = None, e
            # drop every reference to the task now: its closure holds the caller's arrays, which
            # would otherwise stay alive (and resident) until the next split
            self.task = fn = None
            self.finished[0] = seq
            self.done.release()

    def submit(self, fn, lo, hi):
        self.task = (fn, lo, hi)
        self.posted[0] += 1
        self.start.release()

    def wait(self):
        from .spin import spin_until
        spin_until(self.finished, self.posted[0], self.spins)
        self.done.acquire()
        result, error, self.result, self.error = self.result, self.error, None, None
        if error is not None:                  # (held no longer than this: results can be big)
            raise error
        return result


_workers: list = []           # the pool threads (the caller's thread runs one part itself)
_pool_lock = threading.Lock()  # held by the split that uses the workers


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
    runs in the calling thread: a hand-off costs a few microseconds, and the Python around each
    part more). On the ``numba`` route with more than one thread the parts run
    concurrently: ``fn`` must spend its time in ``nogil`` Numba kernels and touch only its own
    part of any shared output. On the ``numpy`` route (or with one thread) ``fn(0, n)`` runs
    alone: NumPy's BLAS already uses every core.

    These are plain Python threads (:class:`_Worker`, woken by lock hand-offs), not Numba's
    parallel runtime, whose OpenMP/TBB pool fights torch's in one process (see the README). One
    split uses the workers at a time: a split started while another thread's runs goes serially.
    """
    parts = min(_num_threads, n // max(1, grain)) if get_backend() == "numba" else 1
    if parts <= 1 or getattr(_local, "in_split", False):
        return [fn(0, n)]           # (in a part of a split already: the cores are all busy)
    if not _pool_lock.acquire(blocking=False):
        return [fn(0, n)]           # another thread's split holds the workers: run serially
    try:
        while len(_workers) < parts - 1:
            _workers.append(_Worker(len(_workers)))
        bounds = [n * i // parts for i in range(parts + 1)]
        for w, lo, hi in zip(_workers, bounds[1:-1], bounds[2:]):
            w.submit(fn, lo, hi)
        _local.in_split = True
        try:
            first = fn(bounds[0], bounds[1])
        finally:                      # never return (or raise) while a worker still writes
            _local.in_split = False
            results, error = [], None
            for w in _workers[:parts - 1]:
                try:
                    results.append(w.wait())
                except BaseException as e:
                    error = error or e
        if error is not None:
            raise error
        return [first] + results
    finally:
        _pool_lock.release()


def _forget_pool_after_fork():
    """A forked child inherits the pool's objects but not its threads: start afresh."""
    global _workers, _pool_lock
    _workers, _pool_lock = [], threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)
