"""Peak extra memory of one step, measured in a fresh process.

    python -m benchmarks.memprobe WORKLOAD IMPL --threads N [--quick]

Sets up the workload, runs one warm-up step (Numba compiles, caches fill), resets the kernel's
resident-set high-water mark (``echo 5 > /proc/self/clear_refs``), records ``VmRSS``, runs two
steps and prints one JSON line whose ``peak_mib`` is ``VmHWM - VmRSS_before``: the resident memory
a step needs beyond what is live between steps. Where the reset is not allowed, a thread samples
``VmRSS`` every ~0.2 ms during the two steps instead (``method: "sampled"``, a lower bound).

The runner starts this with ``MALLOC_MMAP_THRESHOLD_`` set, so that glibc hands large freed
blocks straight back to the kernel for every implementation alike; otherwise memory freed by the
warm-up step stays resident and hides what the measured steps allocate.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _threads  # noqa: E402  -- standard library only

_KIB = 1024.0


def read_status() -> dict:
    """``Vm*`` lines of /proc/self/status in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Vm"):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class _Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, read_status().get("VmRSS", 0))
            time.sleep(0.0002)


def probe(name: str, impl: str, threads: int, quick: bool) -> dict:
    from benchmarks.worker import uses_torch
    from benchmarks.workloads import get_workload

    workload = get_workload(name, quick=quick)
    _threads.set_threads(threads, torch_too=uses_torch(impl))
    step = workload.setup(impl)
    step()                                   # warm-up
    gc.collect()
    gc.disable()
    sampler = None
    reset = reset_hwm()
    before = read_status()
    if reset:
        for _ in range(2):
            step()
        after = read_status()
        peak_kib = after["VmHWM"]
        method = "clear_refs"
    else:
        sampler = _Sampler()
        sampler.peak = before["VmRSS"]
        sampler.start()
        for _ in range(2):
            step()
        sampler.stop.set()
        sampler.join()
        after = read_status()
        peak_kib = max(sampler.peak, after["VmRSS"])
        method = "sampled"
    gc.enable()
    return {
        "workload": name, "impl": impl, "threads": threads, "quick": quick, "method": method,
        "rss_before_mib": before["VmRSS"] / _KIB, "hwm_mib": peak_kib / _KIB,
        "rss_after_mib": after["VmRSS"] / _KIB,
        "peak_mib": max(0, peak_kib - before["VmRSS"]) / _KIB,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memprobe", description=__doc__.split("\n\n")[0])
    p.add_argument("workload")
    p.add_argument("impl")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    threads = args.threads or _threads.default_threads()
    _threads.before_imports(threads)         # before numpy / numba / torch are imported
    result = probe(args.workload, args.impl, threads, args.quick)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
