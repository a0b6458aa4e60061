"""The benchmark runner: ``python -m benchmarks`` or ``python benchmarks/run.py``.

Only the standard library is imported at module level: ``--threads`` has to reach the environment
before NumPy, Numba or torch is loaded.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):                       # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from benchmarks._threads import THREAD_ENV_VARS, apply_runtime_threads, apply_thread_env, default_threads  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results"
PEAK_REPEATS = 5                  # repeats for the sgemm peak when --only leaves sgemm out
MEMPROBE_TIMEOUT_S = 600
MALLOC_MMAP_THRESHOLD = 65536     # see benchmarks/memprobe.py


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time scratchlm (Numba and NumPy kernel routes) against torch, interleaved, "
                    "and write a markdown table and raw JSON.")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these workloads")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every implementation (default: os.cpu_count())")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per implementation (default 10; 5 with --quick)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per implementation first (min 2)")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats, for development")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 10
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    args.warmup = max(2, args.warmup)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


# -- timing ------------------------------------------------------------------------------------------
def time_workload(workload, repeats: int, warmup: int, log) -> list[dict]:
    """Set up every impl, warm each up, then time them interleaved. One row per impl."""
    from benchmarks.workloads import Unavailable

    rows, steps = [], {}
    for impl in workload.impls:
        row = {"workload": workload.name, "impl": impl, "status": "ok", "times_s": []}
        rows.append(row)
        try:
            step = workload.setup(impl)
            for _ in range(warmup):
                step()
            steps[impl] = step
        except Unavailable as exc:
            row.update(status="n/a", error=str(exc))
        except Exception as exc:  # noqa: BLE001 -- a broken impl is reported, not fatal
            row.update(status="error", error=f"{type(exc).__name__}: {exc}")
        if row["status"] != "ok":
            log(f"  {impl}: {row['status']} ({row['error']})")

    live = [r for r in rows if r["status"] == "ok"]
    gc.collect()
    gc.disable()
    try:
        for rep in range(repeats):
            k = rep % len(live) if live else 0
            for row in live[k:] + live[:k]:     # interleaved; order rotated each repeat
                if row["status"] != "ok":
                    continue
                step = steps[row["impl"]]
                try:
                    t0 = time.perf_counter()
                    step()
                    t1 = time.perf_counter()
                except Exception as exc:  # noqa: BLE001
                    row.update(status="error", error=f"{type(exc).__name__}: {exc}")
                    log(f"  {row['impl']}: error ({row['error']})")
                    continue
                row["times_s"].append(t1 - t0)
    finally:
        gc.enable()
    del steps
    gc.collect()

    # the ratio compares time per item (per step when a workload does not count items), so
    # implementations run at different sizes (NLTK cannot fit 10M tokens) stay comparable
    by_impl = {r["impl"]: r for r in rows}
    ref_row = by_impl.get(workload.reference)
    ref_per_item = None
    if ref_row is not None and ref_row["status"] == "ok" and ref_row["times_s"]:
        ref_per_item = statistics.median(ref_row["times_s"]) / workload.items(workload.reference)
    for r in rows:
        t = r["times_s"]
        r["median_s"] = statistics.median(t) if t and r["status"] == "ok" else None
        r["min_s"] = min(t) if t and r["status"] == "ok" else None
        items = workload.items(r["impl"])
        r["reference"] = workload.reference
        r["items"] = items if workload.unit else None
        r["throughput"] = (items / r["median_s"]) if (workload.unit and r["median_s"]) else None
        r["ratio_vs_reference"] = ((r["median_s"] / items) / ref_per_item
                                   if (r["median_s"] and ref_per_item) else None)
        r["gflops"] = (workload.flops / r["median_s"] / 1e9) if (workload.flops and r["median_s"]) else None
        r["pct_peak"] = None
        r["peak_mib"] = None
        r["memory"] = None
    return rows


# -- memory ------------------------------------------------------------------------------------------
def probe_memory(name: str, impl: str, threads: int, quick: bool) -> dict:
    """Run benchmarks.memprobe in a fresh interpreter; never raises."""
    cmd = [sys.executable, "-m", "benchmarks.memprobe", name, impl, "--threads", str(threads)]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["MALLOC_MMAP_THRESHOLD_"] = str(MALLOC_MMAP_THRESHOLD)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=MEMPROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return {"status": "error", "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": "error", "error": "no JSON from memprobe: " + proc.stdout[-200:]}
    result["status"] = "ok"
    return result


# -- machine info ------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _numpy_blas(np) -> str | None:
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}".strip()
    except Exception:  # noqa: BLE001 -- older numpy, or a different layout
        return None


def _torch_blas(torch) -> str | None:
    try:
        import re

        m = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
        parts = [m.group(1)] if m else []
        parts.append(f"mkl={'yes' if torch.backends.mkl.is_available() else 'no'}")
        parts.append(f"mkldnn={'yes' if torch.backends.mkldnn.is_available() else 'no'}")
        return " ".join(parts)
    except Exception:  # noqa: BLE001
        return None


def _git_rev() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(threads: int, runtime_threads: dict) -> dict:
    import numba
    import numpy as np

    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "runtime_threads": runtime_threads,
        "thread_env": {k: os.environ.get(k) for k in
                       THREAD_ENV_VARS + ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_CORETYPE",
                                           "GOMP_SPINCOUNT")},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": _numpy_blas(np),
        "numba": numba.__version__,
        "torch": None,
        "torch_blas": None,
        "scratchlm": None,
        "git": _git_rev(),
    }
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:                # no parallel kernel has run yet
        info["numba_threading_layer"] = None
    try:
        import scratchlm

        info["scratchlm"] = scratchlm.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_blas"] = _torch_blas(torch)
    except Exception:  # noqa: BLE001
        pass
    return info


def machine_line(m: dict) -> str:
    parts = [f"{m['cpu']}, {m['cores']} cores, threads={m['threads']}",
             f"numpy {m['numpy']}" + (f" ({m['numpy_blas']})" if m.get("numpy_blas") else ""),
             f"numba {m['numba']}" + (f" ({m['numba_threading_layer']})" if m.get("numba_threading_layer") else ""),
             f"torch {m['torch']}" if m.get("torch") else "torch n/a",
             f"python {m['python']}", m["date"]]
    if m.get("git"):
        parts.append(f"git {m['git']}")
    return " | ".join(parts)


# -- report ------------------------------------------------------------------------------------------
def _fmt_ms(s):
    if s is None:
        return "n/a"
    ms = s * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def _fmt_rate(x, unit):
    if x is None or not unit:
        return "n/a"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.2f}{prefix} {unit}/s"
    return f"{x:.1f} {unit}/s"


def _fmt(x, spec, suffix=""):
    return "n/a" if x is None else format(x, spec) + suffix


def render_markdown(meta: dict, peak: dict, rows: list[dict], workloads: dict) -> str:
    lines = ["# scratchlm benchmarks", "",
             f"Machine: {machine_line(meta['machine'])}", "",
             f"Command: `{meta['command']}` (repeats={meta['repeats']}, warmup={meta['warmup']}, "
             f"quick={meta['quick']}, OPENBLAS_THREAD_TIMEOUT="
             f"{meta['machine']['thread_env'].get('OPENBLAS_THREAD_TIMEOUT')})", ""]
    if peak.get("gflops"):
        src = "" if peak["in_table"] else f", measured separately with {peak['repeats']} repeats"
        lines += [f"sgemm peak: {peak['gflops']:.1f} GFLOP/s ({peak['impl']}, N={peak['N']}{src}).", ""]
    else:
        lines += ["sgemm peak: n/a (sgemm could not be measured).", ""]
    lines += ["| workload | impl | median ms | min ms | ratio vs ref | throughput | GFLOP/s | "
              "% of sgemm peak | peak MiB |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['workload']} | {r['impl']} | {r['status']} | | | | | | |")
            continue
        unit = workloads.get(r["workload"], {}).get("unit")
        lines.append("| " + " | ".join([
            r["workload"], r["impl"], _fmt_ms(r["median_s"]), _fmt_ms(r["min_s"]),
            _fmt(r.get("ratio_vs_reference"), ".2f", "x"), _fmt_rate(r.get("throughput"), unit),
            _fmt(r["gflops"], ".1f"), _fmt(r["pct_peak"], ".0f", "%"), _fmt(r["peak_mib"], ".1f"),
        ]) + " |")
    lines += ["", "Ratio: time per item of the impl / that of the workload's reference impl (below 1 "
              "is faster than the reference; items are steps unless a throughput unit is given). "
              "GFLOP/s: flops per step / median. Peak MiB: resident memory one step needs beyond "
              "what is live between steps (fresh process, `python -m benchmarks.memprobe`).", "",
              "Workloads:", ""]
    for name, w in workloads.items():
        lines.append(f"- `{name}` (reference: {w.get('reference', 'torch')}): {w['description']}")
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "Not run:", ""] + [f"- {r['workload']} / {r['impl']}: {r['error']}" for r in errors]
    mem_errors = [r for r in rows if r.get("memory") and r["memory"].get("status") != "ok"]
    if mem_errors:
        lines += ["", "Peak memory n/a:", ""] + [
            f"- {r['workload']} / {r['impl']}: {r['memory'].get('error')}" for r in mem_errors]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or default_threads()
    late = apply_thread_env(threads)               # before numpy / numba / torch are imported

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if late:
        log(f"warning: {', '.join(late)} already imported; thread variables may come too late")

    from benchmarks.workloads import PEAK_WORKLOAD, WORKLOADS, get_workload, names

    if args.list:
        for cls in WORKLOADS:
            w = cls(quick=args.quick)
            print(f"{w.name:22s} impls: {', '.join(w.impls)}\n{'':22s} {w.description}")
        return 0
    selected = args.only or names()
    unknown = [n for n in selected if n not in names()]
    if unknown:
        log(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(names())}")
        return 2
    selected = [n for n in names() if n in selected]    # registry order, no duplicates

    runtime_threads = apply_runtime_threads(threads)
    log(f"threads={threads} (numba {runtime_threads['numba']}, torch {runtime_threads['torch']}); "
        f"repeats={args.repeats}, warmup={args.warmup}, quick={args.quick}")

    # sgemm first: its best GFLOP/s is the peak
    peak_wl = get_workload(PEAK_WORKLOAD, quick=args.quick)
    in_table = PEAK_WORKLOAD in selected
    peak_repeats = args.repeats if in_table else min(args.repeats, PEAK_REPEATS)
    log(f"{PEAK_WORKLOAD}{'' if in_table else ' (for the peak only)'} ...")
    peak_rows = time_workload(peak_wl, peak_repeats, args.warmup, log)
    best = max((r for r in peak_rows if r["gflops"]), key=lambda r: r["gflops"], default=None)
    peak = {"gflops": best["gflops"] if best else None, "impl": best["impl"] if best else None,
            "N": peak_wl.params["N"], "repeats": peak_repeats, "in_table": in_table,
            "rows": None if in_table else peak_rows}

    rows = list(peak_rows) if in_table else []
    workloads = {}
    if in_table:
        workloads[peak_wl.name] = {"description": peak_wl.description, "flops": peak_wl.flops,
                                   "params": peak_wl.params, "impls": list(peak_wl.impls)}
    for name in selected:
        if name == PEAK_WORKLOAD:
            continue
        log(f"{name} ...")
        wl = get_workload(name, quick=args.quick)
        workloads[name] = {"description": wl.description, "flops": wl.flops, "params": wl.params,
                           "impls": list(wl.impls), "reference": wl.reference, "unit": wl.unit}
        repeats = min(args.repeats, wl.max_repeats) if wl.max_repeats else args.repeats
        warmup = min(args.warmup, wl.max_warmup) if wl.max_warmup is not None else args.warmup
        rows += time_workload(wl, repeats, warmup, log)
        del wl
        gc.collect()

    for r in rows:
        if r["gflops"] and peak["gflops"]:
            r["pct_peak"] = 100.0 * r["gflops"] / peak["gflops"]

    if not args.no_memory:
        for r in rows:
            if r["status"] != "ok":
                continue
            log(f"memory {r['workload']} / {r['impl']} ...")
            mem = probe_memory(r["workload"], r["impl"], threads, args.quick)
            r["memory"] = mem
            r["peak_mib"] = mem.get("peak_mib") if mem["status"] == "ok" else None
            if mem["status"] != "ok":
                log(f"  memory n/a: {mem['error']}")

    meta = {
        "command": " ".join(["python -m benchmarks"] + (sys.argv[1:] if argv is None else list(argv))),
        "repeats": args.repeats, "warmup": args.warmup, "quick": args.quick,
        "memory": not args.no_memory, "malloc_mmap_threshold": MALLOC_MMAP_THRESHOLD,
        "timing": "time.perf_counter per call; impls interleaved, order rotated each repeat; gc off",
        "machine": machine_info(threads, runtime_threads),
    }
    md = render_markdown(meta, peak, rows, workloads)
    print(md, end="")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(md)
    payload = {"meta": meta, "peak": peak, "workloads": workloads, "results": rows}
    (args.out / "latest.json").write_text(json.dumps(payload, indent=1) + "\n")
    log(f"wrote {args.out / 'latest.md'} and {args.out / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
