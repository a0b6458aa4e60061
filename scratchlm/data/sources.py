r"""Batch sources: what the one training loop (:func:`scratchlm.training.train`) draws a batch
from at each step. Each source is an iterator with a resumable state:

* ``next(source)`` -> the next batch (advances the source);
* ``source.peek()`` -> a batch of the same shape, without advancing anything (the loop warms the
  kernels with it before its clock starts);
* ``source.state_dict()`` / ``source.load_state_dict(state)`` -> JSON-able state, saved in every
  checkpoint so that a resumed run draws exactly the batches the uninterrupted run would have.

Three kinds cover every model here:

* :class:`RandomWindows` -- ``batch_size`` random windows of ``block_size`` tokens and their
  next-token targets, drawn independently each step (:func:`~scratchlm.data.random_windows`):
  GPT and ConvLM training;
* :class:`StreamChunks` -- consecutive chunks of ``batch_size`` parallel streams, so that the
  hidden state a recurrent model reaches at the end of one chunk is the right initial state for
  the next (truncated BPTT, :func:`~scratchlm.data.sequential_batches`' layout); the batch is
  ``(x, y, restarted)``, ``restarted`` True when the chunk starts the streams over;
* :class:`ShuffledEpochs` -- the indices of ``batch_size`` examples out of ``n``, reshuffled each
  epoch (an epoch's leftover shorter than a batch is skipped): image, document and translation
  models.
"""

from __future__ import annotations

import numpy as np

from .._checks import make_rng, positive_int
from .batching import _ids, random_windows

__all__ = ["RandomWindows", "PoissonWindows", "StreamChunks", "ShuffledEpochs"]


def _generator_state(rng) -> dict:
    return rng.bit_generator.state


def _restore_generator(rng, state, owner):
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{owner}: the saved random state does not fit this source "
                         f"({exc})") from exc


def _state(state, owner, keys) -> dict:
    if not isinstance(state, dict):
        raise ValueError(f"{owner}: state must be a dict, got {type(state).__name__}")
    if state.get("kind") != owner:
        raise ValueError(f"{owner}: the saved state is a {state.get('kind')!r} source's")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{owner}: state lacks {missing}")
    return state


class RandomWindows:
    """``(x, y)``: ``batch_size`` random windows of ``block_size`` tokens of ``ids`` and their
    targets shifted one token ahead, both int64 ``(batch_size, block_size)``; ``seed`` seeds the
    window starts."""

    def __init__(self, ids, batch_size, block_size, seed=0):
        self.ids = _ids(ids)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.block_size = positive_int(block_size, "block_size")
        if self.ids.size < self.block_size + 1:
            raise ValueError(f"the training text has {self.ids.size} tokens, too few for "
                             f"block_size {self.block_size} (one window and its target need "
                             f"{self.block_size + 1})")
        self.rng = make_rng(seed)

    def __iter__(self):
        return self

    def __next__(self):
        return random_windows(self.ids, self.batch_size, self.block_size, self.rng)

    def peek(self):
        return random_windows(self.ids, self.batch_size, self.block_size, np.random.default_rng(0))

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.block_size

    def state_dict(self) -> dict:
        return {"kind": type(self).__name__, "rng": _generator_state(self.rng)}

    def load_state_dict(self, state) -> None:
        kind = type(self).__name__
        state = _state(state, kind, ("rng",))
        _restore_generator(self.rng, state["rng"], kind)


class StreamChunks:
    r"""``(x, y, restarted)``: chunk :math:`i` of the ``batch_size`` parallel streams that
    ``ids`` is cut into (row :math:`b` holds ``ids[b L : (b+1) L]``, :math:`L = \lfloor N/B
    \rfloor`), at most ``block_size`` steps long; after the last chunk the streams start over,
    and that chunk has ``restarted = True`` (so the first one does too): a recurrent model resets
    its carried state there."""

    def __init__(self, ids, batch_size, block_size):
        ids = _ids(ids)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.block_size = positive_int(block_size, "block_size")
        L = ids.size // self.batch_size
        if L < 2:
            raise ValueError(f"the training text has {ids.size} tokens, too few for "
                             f"{self.batch_size} streams (each needs an input and a target)")
        self.streams = ids[:self.batch_size * L].reshape(self.batch_size, L)   # (B, L)
        self.n_chunks = -(-(L - 1) // self.block_size)
        self.index = 0

    def __iter__(self):
        return self

    def _chunk(self, i):
        j = i % self.n_chunks
        s = j * self.block_size
        e = min(s + self.block_size, self.streams.shape[1] - 1)
        return self.streams[:, s:e], self.streams[:, s + 1:e + 1], j == 0  # (B, t), (B, t), bool

    def __next__(self):
        batch = self._chunk(self.index)
        self.index += 1
        return batch

    def peek(self):
        return self._chunk(0)

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.block_size

    def state_dict(self) -> dict:
        return {"kind": "StreamChunks", "index": self.index, "n_chunks": self.n_chunks}

    def load_state_dict(self, state) -> None:
        state = _state(state, "StreamChunks", ("index", "n_chunks"))
        if state["n_chunks"] != self.n_chunks:
            raise ValueError(f"StreamChunks: the checkpoint's streams had {state['n_chunks']} "
                             f"chunks, these have {self.n_chunks} (another text or batch size)")
        self.index = int(state["index"])


class PoissonWindows(RandomWindows):
    r"""``(x, y)`` as :class:`RandomWindows`, drawn by **Poisson sampling** (DP-SGD's, whose
    privacy analysis needs it): each of the :math:`n` windows of ``ids`` (every start
    ``0 .. ids.size - block_size - 1``) is in a batch independently with probability
    :math:`q = ` ``batch_size`` / :math:`n`, so a batch holds ``batch_size`` windows on average
    (any number, 0 included): the count is Binomial(:math:`n, q`), the windows a uniform choice
    of that many distinct starts. ``sample_rate`` is :math:`q`, ``population`` :math:`n`."""

    def __init__(self, ids, batch_size, block_size, seed=0):
        super().__init__(ids, batch_size, block_size, seed)
        self.population = self.ids.size - self.block_size
        if self.population < self.batch_size:
            raise ValueError(f"the training text has {self.ids.size} tokens: "
                             f"{self.population} windows of {self.block_size}, fewer than the "
                             f"expected batch of {self.batch_size}")
        self.sample_rate = self.batch_size / self.population

    def __next__(self):
        k = self.rng.binomial(self.population, self.sample_rate)
        starts = np.sort(self.rng.choice(self.population, size=k, replace=False))
        pos = starts[:, None] + np.arange(self.block_size)                 # (k, T)
        return self.ids[pos], self.ids[pos + 1]


class ShuffledEpochs:
    """``idx``: the int64 indices ``(batch_size,)`` of the next ``batch_size`` of ``n`` examples,
    in an order reshuffled by ``seed``'s generator each epoch; an epoch's leftover shorter than a
    batch is skipped. ``noun`` names the examples in errors ("images", "pairs", ...)."""

    def __init__(self, n, batch_size, seed=0, noun="examples"):
        self.n = positive_int(n, f"the number of {noun}")
        self.batch_size = positive_int(batch_size, "batch_size")
        self.noun = noun
        if self.batch_size > self.n:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= the number of training "
                             f"{noun} ({self.n})")
        self.rng = make_rng(seed)
        self.order = self.rng.permutation(self.n)
        self.pos = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos + self.batch_size > len(self.order):
            self.order, self.pos = self.rng.permutation(self.n), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def peek(self):
        return np.arange(self.batch_size)

    def state_dict(self) -> dict:
        return {"kind": "ShuffledEpochs", "rng": _generator_state(self.rng),
                "order": self.order.tolist(), "pos": self.pos}

    def load_state_dict(self, state) -> None:
        state = _state(state, "ShuffledEpochs", ("rng", "order", "pos"))
        order = np.asarray(state["order"], dtype=np.int64)
        if order.shape != (self.n,):
            raise ValueError(f"the checkpoint was trained on {order.size} {self.noun}, not "
                             f"{self.n}")
        _restore_generator(self.rng, state["rng"], "ShuffledEpochs")
        self.order, self.pos = order, int(state["pos"])
