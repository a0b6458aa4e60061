"""DP-SGD's utility against its privacy, measured: a GPT (2 layers, width 64, block 32) trained
on an order-2 Markov source whose entropy rate is known (no model can do better on fresh
samples), without privacy and with DP-SGD at several noise multipliers, the same steps, rate
and expected batch; the held-out loss against the epsilon spent (delta 1e-5, RDP accountant).

    python -m benchmarks.dp_tradeoff [--steps 600]

Prints a Markdown table (docs/distributed.md keeps the last one, dated, with the machine).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dp_tradeoff")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    from scratchlm.data import MarkovSource
    from scratchlm.models import GPT, GPTConfig
    from scratchlm.training import TrainConfig
    from scratchlm.training.fit import fit_lm
    src = MarkovSource(12, order=2, concentration=0.3, seed=0)
    train, val = src.sample(50_000, rng=1), src.sample(5_000, rng=2)
    print(f"entropy rate of the source: {src.entropy_rate(base=math.e):.4f} nats; {args.steps} steps, "
          f"batch {args.batch_size} (expected, Poisson, under DP), AdamW {args.lr:g}, clip "
          f"{args.clip:g} per example under DP\n")
    print("| training | noise multiplier | epsilon (delta 1e-5) | held-out loss (nats) | "
          "seconds |")
    print("|---|---:|---:|---:|---:|")
    for sigma in (None, 0.0, 0.6, 1.0, 2.0, 4.0):
        model = GPT(GPTConfig(vocab_size=12, block_size=32, n_layer=2, n_head=4, n_embd=64),
                    rng=0)
        cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup=20, eval_interval=args.steps,
                          grad_clip=None if sigma is not None else 1.0,
                          dp_clip=None if sigma is None else args.clip,
                          dp_noise=0.0 if sigma is None else sigma, dp_seed=0)
        t0 = time.perf_counter()
        h = fit_lm(model, train, val, cfg, batch_size=args.batch_size, log=lambda s: None)
        seconds = time.perf_counter() - t0
        eps = h["epsilon"][-1] if sigma is not None else None
        name = "non-private (clip 1 on the batch)" if sigma is None else "DP-SGD"
        print(f"| {name} | {'—' if sigma is None else f'{sigma:g}'} | "
              f"{'—' if eps is None else ('∞' if not np.isfinite(eps) else f'{eps:.2f}')} | "
              f"{h['val_loss'][-1]:.4f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
