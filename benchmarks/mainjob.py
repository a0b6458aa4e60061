"""The main job as a user runs it: tokens per second and peak resident memory, both kernel routes.

    python -m benchmarks.mainjob [--time 60] [--rounds 3]

Runs the README's main job, ``python -m scratchlm train transformer --time T`` (its defaults:
batch 16 x block 128), each run in its own fresh process, alternating the routes over rounds:
the Numba route as installed, and the NumPy twins (``SCRATCHLM_BACKEND=numpy``, the library's own
switch). Reports the training tokens per second (steps x batch x block over the run's own training
seconds, compilation excluded as the loop excludes it) and the peak resident set of the whole
process (``ru_maxrss`` of that child: weights, optimizer, activations, the corpus and Python).
Results go to ``benchmarks/results/mainjob.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH, BLOCK = 16, 128               # the transformer entry's defaults (scratchlm/registry.py)

_CHILD = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(done.stderr[-2000:])
print(done.stdout)
print("MAXRSS_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""


def run_once(route: str, seconds: float) -> dict:
    """One main job in a fresh process; its steps, training seconds and peak RSS."""
    env = dict(os.environ)
    if route == "numpy":
        env["SCRATCHLM_BACKEND"] = "numpy"
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", _CHILD, sys.executable, "-m", "scratchlm", "train",
               "transformer", "--time", str(seconds), "--sample-length", "0",
               "--out", os.path.join(out, "gpt.npz")]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{route}: exit {done.returncode}: {done.stderr[-500:]}")
    m = re.search(r"(\d+) steps in ([\d.]+) s", done.stdout)
    rss = int(re.search(r"MAXRSS_KIB (\d+)", done.stdout).group(1))
    steps, secs = int(m.group(1)), float(m.group(2))
    return {"route": route, "steps": steps, "seconds": secs,
            "tokens_per_s": steps * BATCH * BLOCK / secs, "peak_rss_mib": rss / 1024}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mainjob", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time", type=float, default=60.0, help="the main job's --time (default 60)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of both routes (default 3)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mainjob.json")
    args = p.parse_args(argv)
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    from benchmarks.run import machine_info

    runs = []
    for r in range(args.rounds):
        for route in (("numba", "numpy") if r % 2 == 0 else ("numpy", "numba")):
            res = run_once(route, args.time)
            runs.append(res)
            print(f"round {r + 1} {route}: {res['steps']} steps in {res['seconds']:.1f} s, "
                  f"{res['tokens_per_s']:,.0f} tokens/s, peak RSS {res['peak_rss_mib']:.0f} MiB",
                  flush=True)
    summary = {}
    for route in ("numba", "numpy"):
        mine = [x for x in runs if x["route"] == route]
        summary[route] = {"tokens_per_s": statistics.median(x["tokens_per_s"] for x in mine),
                          "peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in mine)}
        print(f"{route}: median {summary[route]['tokens_per_s']:,.0f} tokens/s, peak RSS "
              f"{summary[route]['peak_rss_mib']:.0f} MiB")
    machine = machine_info(None, [])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"time": args.time, "batch": BATCH, "block": BLOCK,
                                    "machine": machine, "runs": runs, "summary": summary},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
