r"""What compressing a language model costs, measured as llama.cpp reports it: perplexity and its
change, the mean KL divergence of the next-token distributions from the reference model's, how
often the two agree on the most likely token, and generation speed.

For next-token distributions :math:`p` (reference) and :math:`q` (compressed) at each position:

.. math::  \mathrm{KL}(p\,\|\,q) = \sum_v p_v (\log p_v - \log q_v)

averaged over the scored positions (in nats), and top-1 agreement is the fraction of positions
where :math:`\arg\max p = \arg\max q`. Both models score the same consecutive windows of
``block`` tokens, each predicting its tokens after the first (as ``eval`` does); llama.cpp's
``perplexity`` tool scores only the second half of each window, so its numbers are a little
lower for the same model.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .._checks import positive_int

__all__ = ["compare_lms", "perplexity", "generation_speed", "state_bytes"]


def _log_softmax(logits):
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _windows(ids, block, max_tokens):
    """``(x (1, t), y (t,))`` for consecutive windows of ``ids``: ``x`` predicts ``y``."""
    ids = np.asarray(ids, np.int64)
    block = positive_int(block, "block")
    if max_tokens is not None:
        ids = ids[:positive_int(max_tokens, "max_tokens") + 1]
    if ids.ndim != 1 or ids.size < 2:
        raise ValueError(f"ids must be 1-D with at least 2 tokens, got shape {ids.shape}")
    out = []
    for s in range(0, ids.size - 1, block):
        y = ids[s + 1:s + 1 + block]
        out.append((ids[s:s + block][:y.size][None, :], y))
    return out


def compare_lms(reference, candidate, ids, block: int, max_tokens: int | None = None) -> dict:
    """Score ``ids`` (1-D token ids) with both models in evaluation mode. Returns
    ``{'perplexity_reference', 'perplexity', 'change', 'kl', 'top1', 'tokens'}``: ``change`` is
    the relative change of perplexity (0.01 = +1%)."""
    windows = _windows(ids, block, max_tokens)
    was = reference.training, candidate.training
    reference.eval(), candidate.eval()
    try:
        nll_p = nll_q = kl = 0.0
        agree = count = 0
        for x, y in windows:                                                # x (1, t), y (t,)
            lp = _log_softmax(reference(x))[0]                                  # (t, V)
            lq = _log_softmax(candidate(x))[0]                                  # (t, V)
            rows = np.arange(y.size)
            nll_p -= lp[rows, y].sum()
            nll_q -= lq[rows, y].sum()
            kl += (np.exp(lp) * (lp - lq)).sum()
            agree += int((lp.argmax(axis=1) == lq.argmax(axis=1)).sum())
            count += y.size
    finally:
        reference.train(was[0]), candidate.train(was[1])
    ppl_p, ppl_q = math.exp(nll_p / count), math.exp(nll_q / count)
    return {"perplexity_reference": ppl_p, "perplexity": ppl_q, "change": ppl_q / ppl_p - 1,
            "kl": kl / count, "top1": agree / count, "tokens": count}


def perplexity(model, ids, block: int, max_tokens: int | None = None) -> float:
    """The perplexity of ``ids`` under ``model`` in the windows :func:`compare_lms` uses."""
    windows = _windows(ids, block, max_tokens)
    was = model.training
    model.eval()
    try:
        nll = count = 0
        for x, y in windows:
            nll -= _log_softmax(model(x))[0][np.arange(y.size), y].sum()
            count += y.size
    finally:
        model.train(was)
    return math.exp(nll / count)


def generation_speed(model, new_tokens: int = 128, prompt_tokens: int = 8, rounds: int = 3,
                     seed: int = 0) -> float:
    """Tokens per second of greedy generation with the KV cache at batch 1 (the median of
    ``rounds`` after one warm-up), from a random prompt of ``prompt_tokens`` ids."""
    new_tokens = positive_int(new_tokens, "new_tokens")
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, model.config.vocab_size, (1, positive_int(prompt_tokens,
                                                                        "prompt_tokens")))
    model.generate(prompt, 4, greedy=True)                                      # warm-up
    times = []
    for _ in range(positive_int(rounds, "rounds")):
        start = time.perf_counter()
        model.generate(prompt, new_tokens, greedy=True)
        times.append(time.perf_counter() - start)
    return new_tokens / float(np.median(times))


def state_bytes(model) -> int:
    """The bytes of ``model.state_dict()``'s arrays, each shared array once (a checkpoint's
    payload, before the container's few hundred bytes)."""
    seen, total = set(), 0
    for v in model.state_dict().values():
        if id(v) not in seen:
            seen.add(id(v))
            total += v.nbytes
    return total
