"""Thread settings shared by the runner and the memory probe. Standard library only: this module
must be importable before NumPy, Numba or torch is."""

from __future__ import annotations

import os
import sys

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_HEAVY = ("numpy", "numba", "torch")

# OpenBLAS's idle worker threads spin for 2**28 cycles (~0.1 s) after every BLAS call before they
# sleep. Interleaved with torch on a few cores, that spinning steals the cores from the next
# implementation (measured: torch's mlp_block 1.7x slower right after a scratchlm step). 2**20
# cycles (~0.4 ms) keeps the workers hot between the BLAS calls of one step and idle between
# implementations. Set OPENBLAS_THREAD_TIMEOUT yourself (the exponent, 4..30) to override.
OPENBLAS_THREAD_TIMEOUT = "20"

# torch's OpenMP (GNU libgomp) workers likewise spin after each parallel region (GOMP_SPINCOUNT
# defaults to 300,000 iterations, or more with OMP_WAIT_POLICY unset on few cores). In the
# interleaved runner that spinning takes a core from whichever implementation runs right after
# torch: a 4.6 ms scratchlm VAE step became 9 ms when it followed torch (measured). 10,000
# iterations keeps torch's workers hot within its own step -- torch's time is unchanged -- and
# idle between implementations. Set GOMP_SPINCOUNT yourself to override.
GOMP_SPINCOUNT = "10000"


def default_threads() -> int:
    return os.cpu_count() or 1


def apply_thread_env(n: int) -> list[str]:
    """Write ``n`` into every thread-count variable. Returns the heavy modules that were already
    imported (for them the variables come too late; the caller should warn)."""
    if n < 1:
        raise ValueError(f"--threads must be at least 1, got {n}")
    late = [m for m in _HEAVY if sys.modules.get(m) is not None]
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    return late


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def apply_runtime_threads(n: int, torch_too: bool = True) -> dict:
    """Call ``torch.set_num_threads(n)`` (when asked and installed); returns the thread counts.

    Numba's thread pool is deliberately *not* started: scratchlm's kernels are serial (BLAS
    threads with ``OPENBLAS_NUM_THREADS``), and calling ``numba.set_num_threads`` launches
    Numba's OpenMP workers, which then compete with torch's own OpenMP pool -- measured here,
    that made a torch GPT training step 40x slower in the same process. ``NUMBA_NUM_THREADS``
    is still set in the environment for any parallel kernel a later version adds."""
    out = {"numba": "pool not started (serial kernels)", "torch": None}
    if torch_too and torch_available():
        import torch

        torch.set_num_threads(n)
        out["torch"] = torch.get_num_threads()
    return out
