"""Data parallelism and ZeRO-1 on MPI: ``mpiexec -n 2`` runs of tests/mpi/worker.py against the
same training in one process. Skipped when mpi4py or mpiexec is missing (``pip install -e
".[distributed]"`` brings both)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from scratchlm.training.loop import TrainConfig

WORKER = os.path.join(os.path.dirname(__file__), "mpi", "worker.py")


def _have_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpiexec") is not None


needs_mpi = pytest.mark.skipif(not _have_mpi(), reason="mpi4py and mpiexec are not installed "
                               "(pip install -e '.[distributed]')")


def run(args, n=None, timeout=240, check=True):
    cmd = ([sys.executable, WORKER] if n is None else
           ["mpiexec", "-n", str(n), sys.executable, WORKER]) + list(args)
    if n is not None:
        cmd.insert(cmd.index(WORKER), "-m")              # python -m mpi4py: an exception on one
        cmd.insert(cmd.index(WORKER), "mpi4py")          # rank aborts the job (no hang)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def params(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k.startswith("p/")}, f["loss"], \
            (int(f["bytes"]), int(f["grad_bytes"])), int(f["buckets"])


def rel(a, b):
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-300)) for k in a)


def same_run(a_path, b_path, rtol=1e-12):
    """The two runs' parameters and loss histories agree to ``rtol`` (relative)."""
    a, loss_a, _, _ = params(a_path)
    b, loss_b, _, _ = params(b_path)
    assert rel(a, b) < rtol
    np.testing.assert_allclose(loss_b, loss_a, rtol=rtol)


@needs_mpi
@pytest.mark.parametrize("kind", ["gpt", "lstm", "cnn"])
def test_two_ranks_equal_one_process(kind, tmp_path):
    """The same global batch on 2 ranks and in 1 process: the same parameters after 20 steps
    (float64, 1e-12 relative), the same loss history; several buckets were sent during the
    backward, none before its gradients were final (the worker runs with verify on); ZeRO-1
    gives plain data parallelism's parameters."""
    run([kind, "--out", str(tmp_path / "one.npz")])
    run([kind, "--distributed", "--out", str(tmp_path / "two.npz")], n=2)
    run([kind, "--distributed", "--zero", "1", "--out", str(tmp_path / "zero.npz")], n=2)
    one, loss1, _, _ = params(tmp_path / "one.npz")
    two, loss2, (sent, grad_bytes), buckets = params(tmp_path / "two.npz")
    zero, _, _, _ = params(tmp_path / "zero.npz")
    assert rel(one, two) < 1e-12
    np.testing.assert_allclose(loss2, loss1, rtol=1e-12)
    assert rel(two, zero) < 1e-12
    assert buckets > 1
    assert grad_bytes <= sent <= grad_bytes + 64     # the gradients, the step's loss (and its
    #                                                  numbers): what this rank hands to MPI


@needs_mpi
def test_float32_differs_by_round_off(tmp_path):
    """float32: the ranks each sum half the batch, one process sums it whole, so the parameters
    differ by round-off -- stated as: no more than float32 itself differs from float64 on the
    same run (the distance of the one-process float32 run from the float64 one)."""
    run(["gpt", "--dtype", "float32", "--out", str(tmp_path / "one.npz")])
    run(["gpt", "--dtype", "float64", "--out", str(tmp_path / "wide.npz")])
    run(["gpt", "--dtype", "float32", "--distributed", "--out", str(tmp_path / "two.npz")], n=2)
    one, loss1, _, _ = params(tmp_path / "one.npz")
    wide, _, _, _ = params(tmp_path / "wide.npz")
    two, loss2, _, _ = params(tmp_path / "two.npz")
    assert all(v.dtype == np.float32 for v in two.values())
    dist = {k: float(np.abs(two[k] - one[k]).max()) for k in one}
    round_off = {k: float(np.abs(one[k] - wide[k]).max()) for k in one}
    assert all(dist[k] <= 2 * round_off[k] + 1e-7 for k in one), (dist, round_off)
    np.testing.assert_allclose(loss2, loss1, rtol=1e-5)


@needs_mpi
@pytest.mark.parametrize("first,second", [(2, None), (None, 2)])
def test_resume_across_rank_counts(first, second, tmp_path):
    """10 steps on one rank count, resumed to 20 on another (a checkpoint holds the whole run:
    full optimizer state and every stream's carried state): the parameters of the same resume
    done in one process. ZeRO-1 on the 2-rank side."""
    ref_ck, ck = str(tmp_path / "ref_ck.npz"), str(tmp_path / "ck.npz")
    run(["lstm", "--steps", "10", "--checkpoint", ref_ck, "--out", str(tmp_path / "r.npz")])
    run(["lstm", "--steps", "20", "--checkpoint", ref_ck, "--resume",     # (the schedule of a
         "--out", str(tmp_path / "ref.npz")])                             # 10-step run, then on)
    d1 = ["--distributed", "--zero", "1"] if first else []
    d2 = ["--distributed", "--zero", "1"] if second else []
    run(["lstm", "--steps", "10", "--checkpoint", ck, "--out", str(tmp_path / "a.npz")] + d1,
        n=first)
    run(["lstm", "--steps", "20", "--checkpoint", ck, "--resume",
         "--out", str(tmp_path / "b.npz")] + d2, n=second)
    same_run(tmp_path / "ref.npz", tmp_path / "b.npz")


@needs_mpi
def test_a_rank_that_dies_stops_the_run_and_the_checkpoint_survives(tmp_path):
    from scratchlm.io import read_checkpoint
    ck = str(tmp_path / "ck.npz")
    out = run(["gpt", "--distributed", "--checkpoint", ck, "--die-at", "7",
               "--out", str(tmp_path / "x.npz")], n=2, check=False, timeout=120)
    assert out.returncode != 0                                # stopped, not hung (timeout)
    _, doc = read_checkpoint(ck)                              # intact: the step-5 save
    assert doc["meta"]["loop"]["step"] == 5
    # and it resumes (here in one process) to the end
    run(["gpt", "--steps", "10", "--checkpoint", ck, "--resume", "--out", str(tmp_path / "r.npz")])


@needs_mpi
def test_too_few_rows_for_the_ranks(tmp_path):
    out = run(["gpt", "--distributed", "--batch-size", "1", "--out", str(tmp_path / "x.npz")],
              n=2, check=False, timeout=120)
    assert out.returncode != 0
    assert "fewer than the 2 ranks" in out.stderr


def test_config_errors():
    with pytest.raises(ValueError, match="needs distributed=True"):
        TrainConfig(steps=1, zero=1)
    with pytest.raises(ValueError, match="zero must be 0 or 1"):
        TrainConfig(steps=1, zero=2, distributed=True)
    with pytest.raises(TypeError, match="distributed must be True or False"):
        TrainConfig(steps=1, distributed=1)


def test_missing_mpi_says_what_to_install(monkeypatch):
    import builtins

    from scratchlm.distributed import MPIUnavailable, require_mpi
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MPIUnavailable, match=r"\.\[distributed\]"):
        require_mpi()


def test_partition_and_shards():
    from scratchlm.distributed import partition, shard_rows
    assert partition([10, 40, 30, 20], 2) == [0, 0, 1, 1]          # 40+10 | 30+20
    assert [shard_rows(7, r, 3) for r in range(3)] == [(0, 2), (2, 4), (4, 7)]


def _cli(args, n=None, timeout=300):
    cmd = ([] if n is None else ["mpiexec", "-n", str(n)]) + [sys.executable, "-m", "scratchlm",
                                                             *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


TINY = ["--steps", "6", "--batch-size", "4", "--block-size", "16", "--n-layer", "1",
        "--n-head", "2", "--n-embd", "16", "--eval-interval", "3", "--sample-length", "5"]


@needs_mpi
def test_cli_distributed_train_and_resume_on_another_rank_count(tmp_path):
    """mpiexec -n 2 ... train transformer --distributed --zero 1, then --resume in one process
    (how a run ran is not part of it): rank 0 alone reports; the result equals a one-process
    run of the same length."""
    ck, ref = str(tmp_path / "gpt.npz"), str(tmp_path / "ref.npz")
    out = _cli(["train", "transformer", *TINY, "--distributed", "--zero", "1", "--out", ck], n=2)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("trained transformer") == 1
    out = _cli(["train", "transformer", "--steps", "9", "--resume", "--out", ck])
    assert out.returncode == 0, out.stderr[-2000:]
    assert _cli(["train", "transformer", *TINY, "--out", ref]).returncode == 0
    assert _cli(["train", "transformer", "--steps", "9", "--resume", "--out", ref]).returncode == 0
    from scratchlm.io import read_checkpoint
    a, _ = read_checkpoint(ck)
    b, _ = read_checkpoint(ref)
    for k in b:
        if k.startswith("model/"):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-6)   # float32 round-off


def test_cli_zero_needs_distributed(tmp_path):
    out = _cli(["train", "transformer", *TINY, "--zero", "1", "--out", str(tmp_path / "x.npz")])
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith(
        "--zero 1 splits the training state over MPI ranks: add --distributed (and start the run "
        "with mpiexec -n N)")


@needs_mpi
def test_cli_too_few_rows_for_the_ranks(tmp_path):
    out = _cli(["train", "transformer", *TINY, "--batch-size", "1", "--distributed",
                "--out", str(tmp_path / "x.npz")], n=2, timeout=120)
    assert out.returncode != 0
    assert "--batch-size 1 is smaller than the 2 ranks" in out.stderr


@needs_mpi
def test_fedavg_one_sgd_step_equals_data_parallel_sgd(tmp_path):
    """FedAvg with E = 1 local step of plain SGD, no clipping, equal shards (each client's
    batch is its rows of the global batch) is data-parallel SGD at the same rate:
    sum_k (w - lr g_k) / 2 = w - lr (g_0 + g_1) / 2."""
    common = ["gpt", "--optimizer", "sgd", "--clip", "0", "--halves"]
    run(common + ["--distributed", "--out", str(tmp_path / "dp.npz")], n=2)
    run(common + ["--federated", "--out", str(tmp_path / "fed.npz")], n=2)
    same_run(tmp_path / "dp.npz", tmp_path / "fed.npz")


@needs_mpi
@pytest.mark.parametrize("split", ["iid", "contiguous"])
def test_fedavg_sends_parameters_never_tokens(split, tmp_path):
    """What a client hands to MPI, every call logged: the parameters (one float vector of all
    of them, to be averaged) and a few float numbers (data sizes, the step's loss) -- no
    integer array, nothing the size of a batch of tokens."""
    out = tmp_path / "fed.npz"
    run(["gpt", "--federated", "--local-steps", "5", "--out", str(out)], n=2)
    with np.load(out) as f:
        sent, n = [str(s) for s in f["sent"]], int(f["n_params"])
        shapes = {f[k].shape for k in f.files if k.startswith("p/")}
    assert sent, "nothing was sent"
    for line in sent:
        op, dtype, shape = line.split(" ")
        shape = tuple(int(d) for d in shape.split("x")) if shape else ()
        assert dtype[1] == "f", line                           # floats only
        assert (shape in shapes and op == "bcast"              # the server's initial weights,
                or shape == (n,)                               # all parameters (averaging),
                or shape in ((1,), (2,))), line                # or numbers
    assert sum(line.startswith("reduce") for line in sent) == 4      # 20 steps / E = 5


def test_client_shards_are_disjoint_and_cover_the_corpus():
    from scratchlm.distributed.federated import client_shard
    ids = np.arange(1000)
    for split in ("iid", "contiguous"):
        parts = [client_shard(ids, r, 3, split, piece=64, seed=1) for r in range(3)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    contiguous = client_shard(ids, 1, 3, "contiguous", piece=64)
    assert np.all(np.diff(contiguous) == 1)                    # one stretch of the corpus
    with pytest.raises(ValueError, match="split must be one of iid, contiguous"):
        client_shard(ids, 0, 2, "random")
    with pytest.raises(ValueError, match="every client needs at least one"):
        client_shard(ids[:100], 0, 3, piece=64)


def test_federated_config_errors():
    with pytest.raises(ValueError, match="needs federated='fedavg'"):
        TrainConfig(steps=1, local_steps=5)
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(steps=1, federated="fedavg", distributed=True)
    with pytest.raises(ValueError, match="federated must be one of"):
        TrainConfig(steps=1, federated="fedprox")


def test_cli_local_steps_need_fedavg(tmp_path):
    out = _cli(["train", "transformer", *TINY, "--local-steps", "4", "--out", str(tmp_path / "x")])
    assert out.returncode == 2
    assert "--local-steps counts FedAvg's local updates between averagings: add --federated " \
        "fedavg" in out.stderr


@needs_mpi
def test_dp_sgd_on_two_ranks_equals_one_process(tmp_path):
    """DP-SGD data parallel: each rank clips and sums its rows of the Poisson batch, the sums
    are added over the ranks, every rank adds the same noise: one process's parameters."""
    run(["gpt", "--dp", "--out", str(tmp_path / "one.npz")])
    run(["gpt", "--dp", "--distributed", "--out", str(tmp_path / "two.npz")], n=2)
    same_run(tmp_path / "one.npz", tmp_path / "two.npz")


@needs_mpi
def test_a_time_limited_run_stops_at_one_step_on_every_rank(tmp_path):
    """--time with ranks: rank 0's clock decides when the run ends, for every rank (each rank's
    own estimate would differ, and a rank stopping alone would leave the others waiting)."""
    ck = str(tmp_path / "t.npz")
    out = _cli(["train", "transformer", *TINY[2:], "--time", "3", "--distributed", "--out", ck],
               n=2, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    from scratchlm.io import read_checkpoint
    _, doc = read_checkpoint(ck)
    assert doc["meta"]["loop"]["step"] > 0


def test_cli_dp_refuses_models_without_per_example_gradients(tmp_path):
    out = _cli(["train", "convlm", "--steps", "2", "--dp-clip", "1", "--out", str(tmp_path / "x")])
    assert out.returncode == 2
    assert "DP-SGD needs per-example gradients" in out.stderr


def test_federated_intervals_must_fit_the_rounds():
    with pytest.raises(ValueError, match="must be a multiple of local_steps"):
        TrainConfig(steps=10, federated="fedavg", local_steps=3, eval_interval=10)


@needs_mpi
@pytest.mark.parametrize("model", ["cnn", "vae", "seq2seq"])
def test_cli_every_loop_model_runs_distributed(model, tmp_path):
    """Every registry model with a training loop takes --distributed (and --zero 1)."""
    out = _cli(["train", model, "--steps", "2", "--distributed", "--zero", "1",
                "--out", str(tmp_path / f"{model}.npz")], n=2)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count(f"trained {model}") == 1
