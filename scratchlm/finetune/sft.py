r"""Supervised fine-tuning on ``(prompt, response)`` pairs, through the one training loop.

Each example becomes ``ids = prompt + response + [eos]``; the model reads ``x = ids[:-1]`` and
is scored on ``y = ids[1:]`` with every target that is still part of the prompt set to ``-1``
(ignored). So only the response and its end token are learned:

.. math::  \mathcal L = -\frac{1}{\sum_b |R_b| + 1}\sum_b \sum_{t \in R_b \cup \{\text{eos}\}}
           \log p(y_{b,t} \mid y_{b,<t})

over the response positions of every example of the batch (``model(x, y)``'s mean over the
targets that are not ``-1``). Batches are right-padded to their longest example with the
padding masked the same way, which a causal model never attends to from a real position.
:func:`fit_sft` hands the batches to :func:`scratchlm.training.train`, so the schedule,
clipping, checkpoints, bit-identical resume and progress are the loop's; the model may have
frozen parameters or LoRA layers (only the trainable ones are updated).

:func:`instruction_examples` writes the built-in translation tasks as instructions
(``"Reverse: abcdef\n"`` -> ``"fedcba"``, sort, dates) and :func:`exact_match` scores greedy
generations against the held-out responses.
"""

from __future__ import annotations

import numpy as np

from .._checks import positive_int

__all__ = ["instruction_examples", "sft_batch", "fit_sft", "exact_match", "eos_id_of",
           "INSTRUCTIONS"]

#: the instruction written before a task's input
INSTRUCTIONS = {"reverse": "Reverse", "sort": "Sort", "dates": "Date"}
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|im_end|>")


def instruction_examples(kind: str = "reverse", n_train: int = 2000, n_val: int = 200,
                         n_test: int = 200, seed: int = 0, **task_kw) -> dict:
    """``{'train', 'val', 'test'}`` lists of ``(prompt, response)`` from
    :class:`~scratchlm.data.TranslationTask`: ``("Reverse: abcdef\\n", "fedcba")``."""
    from ..data import TranslationTask
    if kind not in INSTRUCTIONS:
        raise ValueError(f"kind must be one of {tuple(INSTRUCTIONS)}, got {kind!r}")
    task = TranslationTask(kind, n_train, n_val, n_test, seed=seed, **task_kw)
    word = INSTRUCTIONS[kind]
    return {split: [(f"{word}: {src}\n", tgt) for src, tgt in getattr(task, split)]
            for split in ("train", "val", "test")}


def eos_id_of(tokenizer) -> int:
    """The end token's id: the first of ``</s>``, ``<|endoftext|>``, ``<|eot_id|>``,
    ``<|end_of_text|>``, ``<|im_end|>`` the tokenizer has."""
    specials = tokenizer.special_tokens
    for name in _EOS_NAMES:
        if name in specials:
            return int(specials[name])
    raise ValueError(f"{type(tokenizer).__name__} has no end token ({', '.join(_EOS_NAMES)}); "
                     f"pass eos_id")


def _encode(tokenizer, prompt, response, eos_id):
    """``(ids, n_prompt)``: the example's ids (prompt, response, eos) and the prompt's length."""
    for name, s in (("prompt", prompt), ("response", response)):
        if not isinstance(s, str):
            raise TypeError(f"each example must be (prompt, response) strings, got a "
                            f"{type(s).__name__} {name}")
    p = np.asarray(tokenizer.encode(prompt), np.int64)
    r = np.asarray(tokenizer.encode(response), np.int64)
    if p.size == 0:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
    return np.concatenate([p, r, [eos_id]]), p.size


def sft_batch(encoded, pad_id: int, max_len: int):
    """Right-padded ``x``, ``y`` ``(B, T)`` from ``[(ids, n_prompt)]``: ``y`` is ``ids[1:]`` with
    the prompt's targets (positions ``< n_prompt - 1``) and the padding set to ``-1``."""
    T = max(ids.size - 1 for ids, _ in encoded)
    if T > max_len:
        raise ValueError(f"an example has {T + 1} tokens, more than the model's context "
                         f"{max_len} + 1")
    x = np.full((len(encoded), T), pad_id, np.int64)
    y = np.full((len(encoded), T), -1, np.int64)
    for b, (ids, n_prompt) in enumerate(encoded):
        n = ids.size - 1
        x[b, :n] = ids[:-1]
        y[b, n_prompt - 1:n] = ids[n_prompt:]            # the response and eos, nothing before
    return x, y


def fit_sft(model, examples, tokenizer, config, *, batch_size: int = 16, seed: int = 0,
            val_examples=None, eos_id=None, pad_id=None, checkpoint=None, meta=None,
            resume=False, progress=None, log=print, clock=None):
    """Fine-tune ``model`` (a decoder: ``logits, loss = model(x, y)``, ``model.backward()``,
    ``model.context_size``) on ``examples`` ``[(prompt, response)]`` with the prompt masked out
    of the loss (module docstring), ``batch_size`` examples a step reshuffled each epoch, under
    the loop's ``config`` (:class:`~scratchlm.training.TrainConfig`). ``val_examples``: the
    masked loss on them (``val_loss``) at every evaluation. Returns the loop's history."""
    import time
    from ..data.sources import ShuffledEpochs
    from ..training.loop import train as run_loop
    batch_size = positive_int(batch_size, "batch_size")
    eos = eos_id_of(tokenizer) if eos_id is None else int(eos_id)
    pad = eos if pad_id is None else int(pad_id)
    vocab = model.config.vocab_size
    for name, v in (("eos_id", eos), ("pad_id", pad)):
        if not 0 <= v < vocab:
            raise ValueError(f"{name} {v} is outside the model's vocabulary of {vocab}")
    examples = list(examples)
    if not examples:
        raise ValueError("examples must not be empty")
    encoded = [_encode(tokenizer, p, r, eos) for p, r in examples]
    context = model.context_size
    for (ids, _), (p, _r) in zip(encoded, examples):
        if ids.size - 1 > context:
            raise ValueError(f"the example with prompt {p[:40]!r} has {ids.size} tokens, more "
                             f"than the model's context {context} + 1")
    source = ShuffledEpochs(len(encoded), batch_size, seed, noun="examples")

    def forward(idx, step):
        return model(*sft_batch([encoded[i] for i in idx], pad, context))[1]

    val = [_encode(tokenizer, p, r, eos) for p, r in val_examples or ()]

    def evaluate():
        was = model.training
        model.eval()
        try:
            total = count = 0.0
            for i in range(0, len(val), batch_size):
                x, y = sft_batch(val[i:i + batch_size], pad, context)
                n = int((y >= 0).sum())
                total += float(model(x, y)[1]) * n
                count += n
            return {"val_loss": total / count}
        finally:
            model.train(was)

    return run_loop(model, source, forward, config, evaluate=evaluate if val else None,
                    checkpoint=checkpoint,
                    meta=meta, resume=resume, progress=progress, log=log,
                    clock=clock or time.perf_counter)


def exact_match(model, tokenizer, examples, *, eos_id=None, max_new_tokens=None) -> float:
    """The fraction of ``examples`` whose greedy continuation of the prompt, up to the end
    token, decodes to exactly the response."""
    eos = eos_id_of(tokenizer) if eos_id is None else int(eos_id)
    hits = 0
    examples = list(examples)
    if not examples:
        raise ValueError("examples must not be empty")
    for prompt, response in examples:
        p = np.asarray(tokenizer.encode(prompt), np.int64)[None, :]
        limit = max_new_tokens or len(tokenizer.encode(response)) + 1
        out = model.generate(p, limit, greedy=True)[0, p.shape[1]:]
        stop = np.flatnonzero(out == eos)
        got = out[:stop[0]] if stop.size else out
        hits += tokenizer.decode(got.tolist()) == response and stop.size > 0
    return hits / len(examples)
