"""Run by tests/test_distributed.py under ``mpiexec -n N`` (and alone, as the one-process
reference): train a tiny registry-style model with the one training loop and write the final
parameters (and the loss history, the bytes sent, the optimizer's bytes) to ``--out``.

    python tests/mpi/worker.py gpt --dtype float64 --steps 20 [--distributed] [--zero 1]
        [--checkpoint PATH [--resume]] [--die-at STEP] [--bucket-bytes N] --out OUT.npz
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from scratchlm.distributed import DataParallel  # noqa: E402
from scratchlm.training.fit import fit_classifier, fit_lm  # noqa: E402
from scratchlm.training.loop import TrainConfig  # noqa: E402


def build(kind, dtype):
    from scratchlm import models
    if kind == "gpt":
        return models.GPT(models.GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2,
                                           n_embd=32), dtype=dtype, rng=0)
    if kind == "lstm":
        return models.RNNLM.from_config(models.RNNLMConfig(
            vocab_size=32, embed_dim=16, hidden_size=24, num_layers=2, cell="lstm"),
            dtype=dtype, rng=0)
    if kind == "cnn":
        return models.CNN.from_config(models.CNNConfig(in_channels=1, image_size=8,
                                                       channels=(4, 8), num_classes=10),
                                      dtype=dtype, rng=0)
    raise SystemExit(f"unknown model {kind}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--distributed", action="store_true")
    ap.add_argument("--zero", type=int, default=0)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--checkpoint")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--die-at", type=int)
    ap.add_argument("--bucket-bytes", type=int, default=2048)
    ap.add_argument("--federated", action="store_true", help="FedAvg, E=--local-steps")
    ap.add_argument("--local-steps", type=int, default=1)
    ap.add_argument("--halves", action="store_true", help="FedAvg clients train on their rows "
                    "of the global batch (the identity with data parallelism)")
    ap.add_argument("--clip", type=float, default=1.0, help="0: no clipping")
    ap.add_argument("--dp", action="store_true", help="DP-SGD: dp_clip 1, dp_noise 1")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    DataParallel.BUCKET_BYTES = a.bucket_bytes     # several buckets, even for a tiny model
    DataParallel.VERIFY = True                     # and check none was sent too early
    dtype = np.dtype(a.dtype)
    model = build(a.kind, dtype)
    cfg = TrainConfig(steps=a.steps, lr=3e-3 if a.optimizer != "sgd" else 0.3,
                      grad_clip=None if a.dp else a.clip or None, optimizer=a.optimizer, save_interval=5,
                      distributed=a.distributed, zero=a.zero,
                      federated="fedavg" if a.federated else None, local_steps=a.local_steps,
                      dp_clip=1.0 if a.dp else None, dp_noise=1.0 if a.dp else 0.0,
                      dp_seed=0 if a.dp else None)
    rank, comm = 0, None
    if a.distributed or a.federated:
        from scratchlm.distributed import world
        comm = world()
        rank = comm.rank
        comm.log = []                              # what this rank hands to MPI

    common = dict(checkpoint=a.checkpoint, resume=a.resume, log=lambda *x: None)
    seen = {}
    import scratchlm.distributed.data_parallel as D
    finish, start = D.DataParallel.finish, D.DataParallel.start

    def dying_start(self):                         # rank 1 dies as step die_at + 1 begins
        seen["steps"] = seen.get("steps", 0) + 1
        if a.die_at is not None and seen["steps"] == a.die_at + 1 and self.rank == 1:
            os._exit(17)
        start(self)
    D.DataParallel.start = dying_start

    def spy(self):
        finish(self)
        seen["bytes"] = self.bytes_per_step
        seen["buckets"] = len(self.buckets)
    D.DataParallel.finish = spy
    if a.kind == "cnn":
        rng = np.random.default_rng(0)
        x = rng.standard_normal((60, 1, 8, 8)).astype(dtype)
        y = rng.integers(0, 10, 60)
        cfg = TrainConfig(steps=a.steps, lr=0.05, grad_clip=None, optimizer="sgd", momentum=0.9,
                          save_interval=5, distributed=a.distributed, zero=a.zero)
        from scratchlm.training.loop import train
        from scratchlm.data.sources import ShuffledEpochs

        def forward(idx, step):
            return model(x[idx], y[idx])[1]
        history = train(model, ShuffledEpochs(60, a.batch_size, 0), forward, cfg, **common)
    elif a.halves:
        from scratchlm.data.sources import RandomWindows
        from scratchlm.distributed import shard_rows
        from scratchlm.training.loop import train
        ids = np.random.default_rng(0).integers(0, 32, 4000)
        glob = RandomWindows(ids[:3000], a.batch_size, 16, 0)

        class Rows:                                # this client's rows of the global batch
            def __init__(self):
                self.lo, self.hi = shard_rows(a.batch_size, rank, comm.size)

            def __next__(self):
                x, y = next(glob)
                return x[self.lo:self.hi], y[self.lo:self.hi]

            def peek(self):
                x, y = glob.peek()
                return x[self.lo:self.hi], y[self.lo:self.hi]

            def state_dict(self):
                return glob.state_dict()
        src = Rows() if a.federated else glob
        history = train(model, src, lambda b, step: model(*b)[1], cfg, data_size=1, **common)
    else:
        ids = np.random.default_rng(0).integers(0, 32, 4000)
        history = fit_lm(model, ids[:3000], ids[3000:], cfg, batch_size=a.batch_size,
                         block_size=16, **common)
    if rank == 0:
        unique = {id(p): p.data.nbytes for p in model.parameters() if p.requires_grad}
        sent = [] if comm is None else [f"{op} {dt} {'x'.join(map(str, shape))}"
                                        for op, dt, shape in comm.log]
        np.savez(a.out, loss=np.array(history["loss"]), bytes=seen.get("bytes", 0),
                 grad_bytes=sum(unique.values()), sent=np.array(sent, dtype=str),
                 n_params=sum(p.data.size for p in {id(p): p for p in model.parameters()
                                                    if p.requires_grad}.values()),
                 buckets=seen.get("buckets", 0),
                 **{f"p/{k}": v for k, v in model.state_dict().items()})


if __name__ == "__main__":
    main()
