"""One implementation of one workload, timed alone in this (fresh) process.

    python -m benchmarks.worker WORKLOAD IMPL [--threads N] [--warmup 3] [--steps 7] [--quick]

The runner (``python -m benchmarks``) starts one of these per (workload, implementation, round),
so no implementation shares a process -- or a thread pool, an allocator arena, a warm cache --
with another. The process sets its thread counts the way a user would (``benchmarks/_threads.py``)
and nothing else, builds the workload, runs ``--warmup`` untimed steps (Numba compiles or loads its
cache, allocators settle), then ``--steps`` timed ones with the garbage collector off, and prints
one JSON line: every step's time, the median, the thread counts in effect and the BLAS as
threadpoolctl sees it. Only the libraries the implementation needs are imported (a scratchlm
process never loads torch).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _threads  # noqa: E402  -- standard library only


def uses_torch(impl: str) -> bool:
    return impl.startswith("torch")


def time_steps(step, warmup: int, steps: int) -> list[float]:
    """``warmup`` untimed calls of ``step``, then ``steps`` timed ones (gc off); their times."""
    for _ in range(warmup):
        step()
    gc.collect()
    gc.disable()
    times = []
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return times


def run(name: str, impl: str, threads: int, warmup: int, steps: int, quick: bool) -> dict:
    from benchmarks.workloads import Unavailable, get_workload

    result = {"workload": name, "impl": impl, "status": "ok"}
    try:
        workload = get_workload(name, quick=quick)
        workload.check_impl(impl)
        result["threads"] = _threads.set_threads(threads, torch_too=uses_torch(impl))
        if workload.max_repeats:
            steps = min(steps, workload.max_repeats)
        if workload.max_warmup is not None:
            warmup = min(warmup, workload.max_warmup)
        step = workload.setup(impl)
        times = time_steps(step, warmup, steps)
    except Unavailable as exc:
        result.update(status="n/a", error=str(exc))
        return result
    except Exception as exc:  # noqa: BLE001 -- a broken impl is reported, not fatal
        result.update(status="error", error=f"{type(exc).__name__}: {exc}")
        return result
    result.update(times_s=times, median_s=statistics.median(times), warmup=warmup, steps=steps,
                  items=workload.items(impl), blas=_threads.blas_info())
    if uses_torch(impl):
        import torch

        result["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("workload")
    p.add_argument("impl")
    p.add_argument("--threads", type=int, default=None, help="default: the machine's cores")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    threads = args.threads or _threads.default_threads()
    env_set = _threads.before_imports(threads)       # before numpy / numba / torch
    result = run(args.workload, args.impl, threads, max(0, args.warmup), max(1, args.steps),
                 args.quick)
    result["thread_env_set"] = env_set
    result["pid"] = os.getpid()
    result["perf_env"] = _threads.perf_env()
    if _mpi_rank() == 0:                             # under mpiexec, rank 0 reports
        print(json.dumps(result))
    return 0


def _mpi_rank() -> int:
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


if __name__ == "__main__":
    sys.exit(main())
