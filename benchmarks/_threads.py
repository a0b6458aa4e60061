"""Thread counts for a benchmark process, set the way a user sets them.

The rule: the environment is left as the machine comes. No performance variable (spin timeouts,
OpenMP wait policies, BLAS core types) is set by the harness. The thread count each
implementation runs on is set through the libraries' own run-time calls, the ones a user makes in
a script: ``threadpoolctl.threadpool_limits`` for the BLAS, ``torch.set_num_threads`` and
``scratchlm.kernels.set_num_threads``. Where those are already at the count (the default on this
machine: 2 threads on 2 cores), nothing is changed at all.

Without threadpoolctl (an optional dependency of the benchmarks, ``pip install -e ".[bench]"``),
the BLAS can only be told its thread count before NumPy loads: then, and only when the count is
not the machine's core count, ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` are
set -- the variables a user would export -- and the results say so.

Standard library only at import: this module runs before NumPy, Numba or torch is loaded.
"""

from __future__ import annotations

import os
import sys

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_HEAVY = ("numpy", "numba", "torch")
_limits = []          # threadpoolctl's limiter objects stay alive for the process's lifetime


def default_threads() -> int:
    """The machine's usable cores (the affinity mask, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def have_threadpoolctl() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


PERF_PREFIXES = ("OPENBLAS", "OMP_", "GOMP", "KMP", "MKL", "NUMBA", "SCRATCHLM", "MALLOC")


def perf_env() -> dict:
    """The variables in this environment that steer threads or kernels (reported, never set)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(PERF_PREFIXES)}


def before_imports(n: int) -> list[str]:
    """Call before NumPy is imported. Sets the thread-count variables only where no run-time call
    can do it later (threadpoolctl missing) and ``n`` differs from the core count. Returns the
    variables set."""
    if n < 1:
        raise ValueError(f"--threads must be at least 1, got {n}")
    if have_threadpoolctl() or n == default_threads():
        return []
    if any(sys.modules.get(m) is not None for m in _HEAVY):
        raise RuntimeError("thread variables must be set before numpy/numba/torch are imported")
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    return list(THREAD_ENV_VARS)


def blas_info() -> list[dict] | None:
    """threadpoolctl's description of every thread pool loaded in this process (BLAS library,
    version, the kernel architecture it picked, its threads), or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keep = ("user_api", "internal_api", "version", "architecture", "threading_layer", "num_threads",
            "prefix")
    return [{k: p.get(k) for k in keep} for p in threadpool_info()]


def set_threads(n: int, torch_too: bool) -> dict:
    """After the imports: bring the BLAS, scratchlm's pool and (when asked) torch to ``n`` threads
    through their run-time calls, changing only what differs. Returns the counts in effect."""
    out = {"requested": n, "changed": []}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        pass
    else:
        import numpy  # noqa: F401  -- load NumPy's BLAS so that threadpoolctl sees it

        if any(p.get("user_api") == "blas" and p.get("num_threads") != n for p in threadpool_info()):
            _limits.append(threadpool_limits(limits=n, user_api="blas"))
            out["changed"].append("blas (threadpool_limits)")
        out["blas"] = sorted({p.get("num_threads") for p in threadpool_info()
                              if p.get("user_api") == "blas"})
    import scratchlm.kernels as K

    if K.get_num_threads() != n:
        K.set_num_threads(n)
        out["changed"].append("scratchlm (kernels.set_num_threads)")
    out["scratchlm"] = K.get_num_threads()
    if torch_too:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
            out["changed"].append("torch (set_num_threads)")
        out["torch"] = torch.get_num_threads()
    return out
