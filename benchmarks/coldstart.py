"""First run against later runs: does compiling the kernels eat the main job's time budget?

``python -m benchmarks.coldstart [--time 40] [--rounds 3]`` runs the README's main job
(``python -m scratchlm train transformer --time T``) as a user would, each run in its own fresh
process, alternating over rounds between

* **cold**: an empty Numba cache (``NUMBA_CACHE_DIR`` pointed at a new empty folder: what a
  fresh install meets on its first run), and
* **warm**: the cache as the machine has it (run once first, so it is filled),

and reports the steps each trained and the median over rounds of cold/warm. The target (issue 14):
the cold run trains at least 90% of the steps of the warm one, because the loop compiles and
times the kernels before its clock starts. Wall times (compilation included) are reported too.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time


def run_once(seconds, cache_dir=None):
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "scratchlm", "train", "transformer", "--time",
                               str(seconds), "--sample-length", "0", "--out",
                               os.path.join(out, "gpt.npz")],
                              capture_output=True, text=True, env=env, check=True)
        wall = time.perf_counter() - t0
    m = re.search(r"(\d+) steps in ([\d.]+) s", done.stdout)
    return int(m.group(1)), float(m.group(2)), wall, "compiling kernels" in done.stderr


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.coldstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time", type=float, default=40.0, help="the main job's --time (default 40)")
    p.add_argument("--rounds", type=int, default=3, help="cold/warm pairs (default 3)")
    args = p.parse_args(argv)
    from benchmarks.run import _cpu_model
    print(f"machine: {_cpu_model()}, {len(os.sched_getaffinity(0))} CPUs usable, Python "
          f"{platform.python_version()}; the default threads (no variable set)")
    run_once(5)                                               # fill the machine's cache
    ratios = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as empty:
            cold = run_once(args.time, empty)
        warm = run_once(args.time)
        ratios.append(cold[0] / warm[0])
        for name, (steps, secs, wall, said) in (("cold", cold), ("warm", warm)):
            print(f"round {r + 1} {name}: {steps} steps in {secs:.1f} s of training, {wall:.1f} s "
                  f"wall; 'compiling kernels' shown: {said}")
    print(f"cold/warm steps, median of {len(ratios)} rounds: {statistics.median(ratios):.3f} "
          f"(target >= 0.90)")


if __name__ == "__main__":
    main()
