"""The benchmark harness measures as the README says: each implementation alone in a fresh
process, rounds alternating the order, the environment untouched, the ratio the median of
per-round ratios; and it writes a complete table, JSON and PNG.

Speed is never asserted here: the numbers live in ``benchmarks/results``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _threads  # noqa: E402
from benchmarks.run import summarise  # noqa: E402


def _run(tmp_path, *args):
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--no-memory", "--rounds", "2",
           "--steps", "1", "--warmup", "1", "--out", str(tmp_path), *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "latest.json").read_text()), done.stderr


def test_ratio_is_the_median_of_per_round_ratios():
    def rounds(*medians):
        return [{"median_s": m, "items": 1.0, "times_s": [m]} for m in medians]
    info = {"reference": "ref", "unit": None, "flops": None, "targets": {"ours": 1.0}}
    ref = {"impl": "ref", "status": "ok", "rounds": rounds(1.0, 4.0, 2.0)}
    ours = {"impl": "ours", "status": "ok", "rounds": rounds(1.5, 2.0, 1.0)}
    summarise(ours, ref, info)
    # per round 1.5, 0.5, 0.5: the median is 0.5, not median(ours) / median(ref) = 1.5 / 2
    assert ours["ratio"] == 0.5 and ours["ratio_range"] == [0.5, 1.5]
    assert ours["median_s"] == 1.5 and ours["min_s"] == 1.0
    assert ours["target"] == 1.0 and ours["met"] is True


def test_thread_counts_are_set_only_through_run_time_calls(monkeypatch):
    for var in _threads.THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    if _threads.have_threadpoolctl():
        assert _threads.before_imports(_threads.default_threads() + 1) == []
    assert _threads.before_imports(_threads.default_threads()) == []
    assert not any(os.environ.get(v) for v in _threads.THREAD_ENV_VARS)


@pytest.mark.torch
def test_each_implementation_runs_alone_in_a_fresh_process(tmp_path):
    pytest.importorskip("torch")                     # the reference of both workloads
    result, log = _run(tmp_path, "--only", "sgemm", "conv2d_fwd_bwd", "--impls", "scratchlm-numba",
                       "scratchlm-numpy", "numpy-blas", "scratchlm-gemm")
    rows = {(r["workload"], r["impl"]): r for r in result["results"]}
    pids = []
    for (name, impl), row in rows.items():
        if row["status"] == "n/a":                      # torch missing: reported, not fatal
            continue
        assert row["status"] == "ok", row
        assert len(row["rounds"]) == 2
        for rd in row["rounds"]:
            pids.append(rd["pid"])
            assert rd["impl"] == impl and rd["times_s"] and rd["median_s"] > 0
            assert rd["perf_env"] == _threads.perf_env()        # nothing added to the environment
            assert rd["threads"]["scratchlm"] == result["meta"]["machine"]["threads"]
        assert row["median_s"] > 0
    assert len(pids) == len(set(pids))                          # never the same process twice
    # the order rotates between rounds: conv2d_fwd_bwd's three implementations start in turn
    sequences, current = {}, None
    for line in log.splitlines():
        if line.endswith(" ...") and not line.startswith(" "):
            current = line[:-4]
        elif line.startswith("  round") and current == "conv2d_fwd_bwd":
            sequences.setdefault(line.split()[1], []).append(line.split()[2].rstrip(":"))
    assert len(sequences) == 2 and sequences["1"] != sequences["2"]
    assert sorted(sequences["1"]) == sorted(sequences["2"])
    machine = result["meta"]["machine"]
    assert machine["cpu"] and isinstance(machine["isa"], list) and machine["threads"] >= 1
    assert result["meta"]["rounds"] == 2
    table = (tmp_path / "latest.md").read_text()
    assert "W5 conv2d_fwd_bwd" in table and "≤ 1.20x" in table
    assert (tmp_path / "latest.png").stat().st_size > 1000


def test_worker_reports_unknown_impls_as_errors():
    done = subprocess.run([sys.executable, "-m", "benchmarks.worker", "sgemm", "no-such-impl",
                           "--quick", "--steps", "1", "--warmup", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert res["status"] == "error" and "no-such-impl" in res["error"]
