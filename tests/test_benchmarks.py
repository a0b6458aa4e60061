"""The benchmark harness runs end to end (quick sizes) and reports every implementation.

Speed is never asserted here: the numbers live in ``benchmarks/results``. This only proves that
``python -m benchmarks`` works as the README says and writes a complete table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *names):
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--no-memory", "--repeats", "1",
           "--warmup", "2", "--out", str(tmp_path), "--only", *names]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "latest.json").read_text())


@pytest.mark.torch
def test_conv_workloads_run_with_their_blas_floor(tmp_path):
    pytest.importorskip("torch")
    result = _run(tmp_path, "conv2d_fwd_bwd", "convlm_train_step")
    rows = {(r["workload"], r["impl"]): r for r in result["results"]}
    for name in ("conv2d_fwd_bwd", "convlm_train_step"):
        for impl in ("scratchlm-numba", "scratchlm-numpy", "torch", "blas-matmuls-only"):
            row = rows[(name, impl)]
            assert row["status"] == "ok", row
            assert row["median_s"] > 0 and row["ratio_vs_reference"] > 0
        # the matmuls alone cannot take longer than the whole step that contains them... by much
        # (timings are noisy: only a gross inversion would mean the floor measures the wrong thing)
        assert rows[(name, "blas-matmuls-only")]["median_s"] < 3 * rows[(name, "scratchlm-numba")]["median_s"]
    table = (tmp_path / "latest.md").read_text()
    assert "| conv2d_fwd_bwd | blas-matmuls-only |" in table
