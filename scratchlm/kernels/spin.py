"""Busy-waiting without the GIL, for the thread pool of :func:`scratchlm.kernels.split_run`.

A thread that blocks on a lock lets its core go idle, and waking an idle core takes an
interrupt: about 5 microseconds on bare metal, but 60-80 on the virtual machines where much of
this code runs (the guest's idle loop halts the virtual CPU; see docs/kernels.md, "Threads").
A training step hands work to the pool dozens of times, so the pool's threads *spin* for a
while after each hand-off -- polling a flag in a ``nogil`` loop, so the Python thread that
holds the GIL keeps running -- before they fall back to blocking. This is what OpenMP runtimes
and OpenBLAS do too (``GOMP_SPINCOUNT``, ``THREAD_TIMEOUT``); a pool spins only right after it
ran work, and only up to :data:`SPIN_SECONDS`.

(No NumPy twin: this is not a computation, and the NumPy route never splits.)
"""

import platform
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: how long a pool thread polls for its next task, and the calling thread for the workers'
#: results, before it blocks (the gaps between the products of a training step are shorter)
SPIN_SECONDS = 2e-3

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _load_acquire(typingctx, flag):
    """``flag[0]`` read with an atomic acquire load (an int64 array): a plain load could be
    hoisted out of the polling loop, reading the same stale value forever."""
    sig = types.int64(flag)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, "acquire", 8)

    return sig, codegen


@intrinsic
def _pause(typingctx):
    """The x86 ``pause`` hint in a spin loop (it frees the core's shared resources for a sibling
    hyper-thread); nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=ir.FunctionType(
                ir.VoidType(), []))
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, error_model="numpy", nogil=True)
def spin_until(flag, target, iterations):
    """Poll ``flag[0]`` (int64 array) until it is at least ``target``, for at most
    ``iterations`` polls; True if it got there."""
    for _ in range(iterations):
        if _load_acquire(flag) >= target:
            return True
        _pause()
    return False


_per_second = None


def iterations(seconds: float = None) -> int:
    """How many polls of :func:`spin_until` take about ``seconds`` (default
    :data:`SPIN_SECONDS`) on this machine (measured once)."""
    global _per_second
    if _per_second is None:
        never = np.zeros(1, np.int64)
        spin_until(never, 1, 10)                                          # compile / load
        n = 20000
        start = time.perf_counter()
        spin_until(never, 1, n)
        _per_second = n / max(time.perf_counter() - start, 1e-6)
    return max(1, int(_per_second * (SPIN_SECONDS if seconds is None else seconds)))
