"""The benchmark runner: ``python -m benchmarks`` or ``python benchmarks/run.py``.

Every timing comes from a fresh process (``benchmarks/worker.py``), one per (workload,
implementation, round); this process only orchestrates and writes the results, so it imports
nothing heavy. See ``benchmarks/__init__.py`` for the protocol.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):                       # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from benchmarks import _threads  # noqa: E402  -- standard library only

DEFAULT_OUT = ROOT / "benchmarks" / "results"
WORKER_TIMEOUT_S = 1800
MALLOC_MMAP_THRESHOLD = 65536     # the memory probe only; see benchmarks/memprobe.py
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time scratchlm (Numba and NumPy kernel routes) against torch and the other "
                    "references, each implementation in its own fresh process, and write a "
                    "markdown table, raw JSON and a PNG.")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these workloads")
    p.add_argument("--impls", nargs="+", metavar="IMPL",
                   help="run only these implementations (the reference is always added)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every implementation (default: the machine's cores)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds; each starts every implementation once, in rotated order (default 3)")
    p.add_argument("--steps", type=int, default=7, help="timed steps per process (default 7)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per process first (default 3)")
    p.add_argument("--quick", action="store_true", help="small sizes, for development")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    for name in ("threads", "rounds", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    if args.warmup < 0:
        p.error(f"--warmup must be at least 0, got {args.warmup}")
    return args


# -- one process ---------------------------------------------------------------------------------
def _python_module(module: str, *args: str, env=None, timeout=WORKER_TIMEOUT_S,
                   launcher=()) -> dict:
    """Run ``python -m module args`` from the repository root (behind ``launcher``, e.g.
    ``mpiexec -n 2``); its last stdout line as JSON. Never raises: a failure comes back as
    ``{"status": "error", "error": ...}``."""
    cmd = [*launcher, sys.executable, "-m", module, *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return {"status": "error", "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": "error", "error": "no JSON line: " + proc.stdout[-200:]}


def run_worker(name, impl, threads, warmup, steps, quick, ranks=1) -> dict:
    """One timed process, in the environment this runner was started in (nothing added) -- or,
    for an implementation that runs on ``ranks`` MPI processes, one ``mpiexec -n ranks`` job
    whose ranks share the threads (rank 0 reports)."""
    per = max(1, threads // ranks)
    args = [name, impl, "--threads", str(per), "--warmup", str(warmup), "--steps", str(steps)]
    launcher = ("mpiexec", "-n", str(ranks)) if ranks > 1 else ()
    if ranks > 1 and shutil.which("mpiexec") is None:
        return {"status": "n/a", "error": "mpiexec is not installed (pip install -e "
                                          "'.[distributed]')"}
    res = _python_module("benchmarks.worker", *args + (["--quick"] if quick else []),
                         launcher=launcher)
    if ranks > 1 and res.get("status") == "ok":
        res["ranks"] = ranks
    return res


def probe_memory(name, impl, threads, quick) -> dict:
    """Peak extra memory of a step (``benchmarks/memprobe.py``) in its own process."""
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(MALLOC_MMAP_THRESHOLD)
    args = [name, impl, "--threads", str(threads)] + (["--quick"] if quick else [])
    result = _python_module("benchmarks.memprobe", *args, env=env)
    result.setdefault("status", "ok")
    return result


# -- one workload ----------------------------------------------------------------------------------
def measure_workload(info: dict, impls: list, args, threads: int, log) -> list[dict]:
    """``args.rounds`` rounds; in round r every live implementation runs once in its own process,
    the order rotated by r. Ratios are formed within a round (impl / reference, per item) and the
    reported ratio is their median: drift between rounds hits numerator and denominator alike."""
    rows = {impl: {"workload": info["name"], "impl": impl, "status": "ok", "rounds": []}
            for impl in impls}
    for r in range(args.rounds):
        live = [i for i in impls if rows[i]["status"] == "ok"]
        k = r % len(live) if live else 0
        for impl in live[k:] + live[:k]:
            res = run_worker(info["name"], impl, threads, args.warmup, args.steps, args.quick,
                             ranks=info.get("ranks", {}).get(impl, 1))
            if res.get("status") != "ok":
                rows[impl].update(status=res.get("status", "error"), error=res.get("error"))
                log(f"  {impl}: {rows[impl]['status']} ({rows[impl]['error']})")
                continue
            rows[impl]["rounds"].append(res)
            log(f"  round {r + 1} {impl}: median {res['median_s'] * 1e3:.2f} ms")
    ref = info["reference"]
    for row in rows.values():
        summarise(row, rows.get(ref), info)
    return list(rows.values())


def summarise(row: dict, ref: dict | None, info: dict) -> None:
    """Medians over rounds; the ratio to the reference formed per round, then its median."""
    rounds = row["rounds"]
    row.update(reference=info["reference"], median_s=None, min_s=None, ratio=None,
               ratio_range=None, throughput=None, gflops=None, pct_peak=None, peak_mib=None,
               memory=None, target=info["targets"].get(row["impl"]), met=None)
    if row["status"] != "ok" or not rounds:
        return
    medians = [r["median_s"] for r in rounds]
    row["median_s"] = statistics.median(medians)
    row["min_s"] = min(min(r["times_s"]) for r in rounds)
    items = rounds[0]["items"]
    if info["unit"]:
        row["throughput"] = items / row["median_s"]
    if info["flops"]:
        row["gflops"] = info["flops"] / row["median_s"] / 1e9
    if ref is not None and ref["status"] == "ok" and ref["rounds"]:
        ratios = [(a["median_s"] / a["items"]) / (b["median_s"] / b["items"])
                  for a, b in zip(rounds, ref["rounds"])]
        row["ratio"] = statistics.median(ratios)
        row["ratio_range"] = [min(ratios), max(ratios)]
    if row["target"] is not None and row["ratio"] is not None:
        row["met"] = row["ratio"] <= row["target"]


# -- machine ---------------------------------------------------------------------------------------
def _cpuinfo() -> dict:
    out = {"cpu": platform.processor() or platform.machine() or "unknown", "isa": []}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    out["cpu"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    out["isa"] = [f for f in ISA_FLAGS if f in flags]
                    break
    except OSError:
        pass
    return out


def _cpu_model() -> str:
    return _cpuinfo()["cpu"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_rev() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(threads: int, env_set: list) -> dict:
    cpu = _cpuinfo()
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu["cpu"], "isa": cpu["isa"],
        "cores": os.cpu_count(), "cores_available": _threads.default_threads(),
        "threads": threads, "thread_env_set": env_set,
        "perf_env": _threads.perf_env(),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("numpy", "numba", "torch", "threadpoolctl", "nltk",
                                              "kenlm", "scratchlm")},
        "git": _git_rev(),
    }


def blas_line(machine: dict) -> str:
    """The BLAS as the scratchlm workers' threadpoolctl saw it, and torch's CPU capability."""
    blas = machine.get("blas")
    parts = []
    if blas:
        for p in blas:
            if p.get("user_api") == "blas":
                parts.append(f"NumPy's BLAS: {p.get('internal_api')} {p.get('version')}, kernel "
                             f"{p.get('architecture')}, {p.get('threading_layer')} threading, "
                             f"{p.get('num_threads')} threads")
    else:
        parts.append("NumPy's BLAS: n/a (install threadpoolctl)")
    if machine.get("torch_cpu_capability"):
        parts.append(f"torch CPU capability {machine['torch_cpu_capability']}")
    return "; ".join(parts)


def machine_line(m: dict) -> str:
    v = m["versions"]
    return " | ".join([
        f"{m['cpu']} ({', '.join(m['isa']) or 'ISA n/a'})",
        f"{m['cores_available']} cores, {m['threads']} threads per implementation",
        blas_line(m),
        ", ".join(f"{k} {v[k]}" for k in ("numpy", "numba", "torch") if v.get(k)),
        f"Python {m['python']}", m["date"]] + ([f"git {m['git']}"] if m.get("git") else []))


# -- report ----------------------------------------------------------------------------------------
def _fmt_ms(s):
    if s is None:
        return "n/a"
    ms = s * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def _fmt_rate(x, unit):
    if x is None or not unit:
        return ""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.2f}{prefix} {unit}/s"
    return f"{x:.1f} {unit}/s"


def _fmt_ratio(x):
    return "" if x is None else (f"{x:.3f}x" if x < 0.1 else f"{x:.2f}x")


def render_markdown(meta: dict, rows: list[dict], workloads: dict) -> str:
    m = meta["machine"]
    changed = sorted({c for r in rows for rd in r.get("rounds", []) for c in rd["threads"]["changed"]})
    lines = ["# scratchlm benchmarks", "", f"Machine: {machine_line(m)}", "",
             f"Command: `{meta['command']}`. Each implementation ran alone in a fresh process, "
             f"{meta['rounds']} rounds alternating the order, {meta['warmup']} warm-up and "
             f"{meta['steps']} timed steps per process (fewer for the slow workloads, see the JSON); "
             f"the time is the median over rounds of each process's median, the ratio the median "
             f"over rounds of the per-round ratio to the reference. float32 throughout.", "",
             f"Thread counts changed at run time: {', '.join(changed) or 'none (all at their defaults)'}; "
             f"thread variables set: {', '.join(m['thread_env_set']) or 'none'}; performance "
             f"variables in the environment: "
             f"{', '.join(f'{k}={v}' for k, v in m['perf_env'].items()) or 'none'}.", ""]
    if meta.get("peak"):
        pk = meta["peak"]
        lines += [f"sgemm peak: {pk['gflops']:.1f} GFLOP/s ({pk['impl']}, N={pk['N']}).", ""]
    lines += ["| workload | impl | median ms | min ms | ratio vs ref | ratio over rounds | target | "
              "throughput | GFLOP/s | % of peak | peak MiB |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        w = workloads[r["workload"]]
        label = f"{w['label']} {r['workload']}" if w.get("label") else r["workload"]
        if r["status"] != "ok":
            lines.append(f"| {label} | {r['impl']} | {r['status']} | | | | | | | | |")
            continue
        rng = r["ratio_range"]
        target = "" if r["target"] is None else (
            f"≤ {r['target']:.2f}x " + ("✓" if r["met"] else "✗") if r["met"] is not None else "")
        lines.append("| " + " | ".join([
            label, r["impl"], _fmt_ms(r["median_s"]), _fmt_ms(r["min_s"]), _fmt_ratio(r["ratio"]),
            "" if rng is None else f"{_fmt_ratio(rng[0])}–{_fmt_ratio(rng[1])}", target,
            _fmt_rate(r["throughput"], w.get("unit")),
            "" if r["gflops"] is None else f"{r['gflops']:.1f}",
            "" if r["pct_peak"] is None else f"{r['pct_peak']:.0f}%",
            "" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}",
        ]) + " |")
    lines += ["", "Ratio: time per item of the implementation over that of the workload's reference "
              "in the same round (below 1 is faster; items are steps unless a throughput unit is "
              "given). GFLOP/s: flops per step / median time; % of peak: of the sgemm peak above. "
              "Peak MiB: resident memory one step needs beyond what is live between steps (its own "
              "process, `python -m benchmarks.memprobe`).", "", "Workloads:", ""]
    for name, w in workloads.items():
        lines.append(f"- `{name}` (reference: {w['reference']}): {w['description']}")
    bad = [r for r in rows if r.get("error")]
    if bad:
        lines += ["", "Not run:", ""] + [f"- {r['workload']} / {r['impl']}: {r['error']}" for r in bad]
    mem_bad = [r for r in rows if r.get("memory") and r["memory"].get("status") != "ok"]
    if mem_bad:
        lines += ["", "Peak memory n/a:", ""] + [
            f"- {r['workload']} / {r['impl']}: {r['memory'].get('error')}" for r in mem_bad]
    return "\n".join(lines) + "\n"


def workload_info(quick: bool) -> dict:
    """name -> the description, sizes, impls, reference, targets of every workload. Building a
    workload's description needs scratchlm (NumPy, Numba) but runs no step; the runner does it in
    a child process so that it stays free of the heavy imports."""
    code = ("import json, sys; from benchmarks.workloads import WORKLOADS\n"
            "out = {}\n"
            "for cls in WORKLOADS:\n"
            f"    w = cls(quick={bool(quick)})\n"
            "    out[w.name] = dict(name=w.name, label=w.label, description=w.description, "
            "flops=w.flops, params=w.params, impls=list(w.impls), reference=w.reference, "
            "unit=w.unit, targets=dict(w.targets), in_default=w.in_default, "
            "ranks=dict(w.ranks))\n"
            "print(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"could not list the workloads: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- main --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or _threads.default_threads()
    env_set = _threads.before_imports(threads)       # inherited by every worker

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    infos = workload_info(args.quick)
    if args.list:
        for name, w in infos.items():
            label = (f" ({w['label']})" if w["label"] else "") + ("" if w["in_default"] else
                                                                  " (only with --only)")
            print(f"{name}{label}  impls: {', '.join(w['impls'])}; reference {w['reference']}\n"
                  f"    {w['description']}")
        return 0
    selected = args.only or [n for n, w in infos.items() if w["in_default"]]
    unknown = [n for n in selected if n not in infos]
    if unknown:
        log(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(infos)}")
        return 2
    selected = [n for n in infos if n in selected]            # registry order, no duplicates
    log(f"threads={threads}, rounds={args.rounds}, warmup={args.warmup}, steps={args.steps}, "
        f"quick={args.quick}; one fresh process per implementation and round")

    rows, workloads = [], {}
    for name in selected:
        info = infos[name]
        impls = info["impls"]
        if args.impls:
            impls = [i for i in impls if i in args.impls or i == info["reference"]]
        log(f"{name} ...")
        workloads[name] = info
        rows += measure_workload(info, impls, args, threads, log)

    machine = machine_info(threads, env_set)
    for r in rows:                                 # what the workers saw: the BLAS, torch's ISA
        for rd in r.get("rounds", []):
            if rd.get("blas") and "blas" not in machine and not r["impl"].startswith("torch"):
                machine["blas"] = rd["blas"]
            if rd.get("torch_cpu_capability"):
                machine["torch_cpu_capability"] = rd["torch_cpu_capability"]
    sgemm = [r for r in rows if r["workload"] == "sgemm" and r["gflops"]]
    peak = None
    if sgemm:
        best = max(sgemm, key=lambda r: r["gflops"])
        peak = {"gflops": best["gflops"], "impl": best["impl"], "N": workloads["sgemm"]["params"]["N"]}
        for r in rows:
            if r["gflops"]:
                r["pct_peak"] = 100.0 * r["gflops"] / peak["gflops"]

    if not args.no_memory:
        for r in rows:
            if r["status"] != "ok" or r["workload"] == "sgemm":
                continue
            if infos[r["workload"]].get("ranks", {}).get(r["impl"], 1) > 1:
                r["memory"] = {"status": "n/a", "error": "an MPI job (the probe runs one "
                                                          "process)"}
                r["peak_mib"] = None
                continue
            log(f"memory {r['workload']} / {r['impl']} ...")
            mem = probe_memory(r["workload"], r["impl"], threads, args.quick)
            r["memory"] = mem
            r["peak_mib"] = mem.get("peak_mib") if mem["status"] == "ok" else None

    meta = {
        "command": " ".join(["python -m benchmarks"] + (sys.argv[1:] if argv is None else list(argv))),
        "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "quick": args.quick,
        "memory": not args.no_memory, "malloc_mmap_threshold": MALLOC_MMAP_THRESHOLD, "peak": peak,
        "timing": "one fresh process per (workload, impl, round); time.perf_counter per step, gc off; "
                  "ratio = median over rounds of (impl / reference) per item",
        "machine": machine,
    }
    md = render_markdown(meta, rows, workloads)
    print(md, end="")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(md)
    (args.out / "latest.json").write_text(
        json.dumps({"meta": meta, "workloads": workloads, "results": rows}, indent=1) + "\n")
    log(f"wrote {args.out / 'latest.md'} and {args.out / 'latest.json'}")
    try:
        from benchmarks.plot import plot_results

        png = plot_results(args.out / "latest.json", args.out / "latest.png")
        log(f"wrote {png}")
    except ImportError as exc:                      # matplotlib is optional
        log(f"no PNG: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
