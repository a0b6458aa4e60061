r"""Batches for language-model training and padded batches for encoder-decoder models.

* :func:`random_windows` -- ``B`` random contiguous windows of a token stream with their
  next-token targets (GPT-style training);
* :func:`sequential_batches` -- the whole stream once, in order, laid out for truncated
  back-propagation through time (RNN-style training with carried hidden state);
* :func:`pad_batch` -- variable-length sequences right-padded into one array plus their lengths.

Every batch pair satisfies :math:`y_{b,t} = x_{b,t+1}` in stream terms: ``y`` is ``x`` shifted
one step ahead, so ``loss(model(x), y)`` trains next-token prediction.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .._checks import as_int64, int_sequence_array, integer, make_rng, positive_int

__all__ = ["random_windows", "sequential_batches", "pad_batch"]


def _ids(ids, name: str = "ids", *, ndim: int = 1, allow_empty: bool = False) -> np.ndarray:
    """A 1-D array of non-negative integer token ids as int64 (lists accepted)."""
    if not isinstance(ids, np.ndarray):
        if isinstance(ids, (list, tuple, range)):
            arr = int_sequence_array(ids, name, "must be non-negative token ids below 2**63")
            ids = arr.astype(np.int64) if arr.size == 0 else arr
        else:
            raise TypeError(f"{name} must be an integer numpy array, got {type(ids).__name__}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {ids.dtype}")
    if ids.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {ids.shape} ({ids.ndim}-D)")
    if ids.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {ids.shape}")
    if ids.size and ids.min() < 0:
        where = int(np.argmax(ids < 0))
        raise ValueError(f"{name} must be non-negative token ids, got {int(ids[where])} at "
                         f"index {where}")
    return as_int64(ids, name)              # refuses a uint64 id >= 2**63 (it would wrap negative)


def random_windows(ids, batch_size: int, block_size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    r"""``batch_size`` random windows of ``block_size`` tokens and their next-token targets.

    Start positions :math:`s_b` are drawn independently and uniformly from the
    :math:`N - T` valid starts :math:`\{0, \dots, N - T - 1\}` (:math:`N` = ``len(ids)``,
    :math:`T` = ``block_size``), and

    .. math:: x_{b,t} = \text{ids}[s_b + t], \qquad y_{b,t} = \text{ids}[s_b + t + 1],
              \qquad 0 \le t < T.

    ids: 1-D non-negative integer array -> ``(x, y)``, both int64 of shape ``(B, T)``.
    ``rng`` is a ``np.random.Generator`` (advanced in place) or an int seed; the same seed gives
    the same batch. Raises ``ValueError`` when ``len(ids) < block_size + 1``.
    """
    ids = _ids(ids)
    B = positive_int(batch_size, "batch_size")
    T = positive_int(block_size, "block_size")
    gen = make_rng(rng)
    if ids.size < T + 1:
        raise ValueError(f"ids must hold at least block_size + 1 = {T + 1} tokens for one "
                         f"window and its target, got {ids.size}")
    starts = gen.integers(0, ids.size - T, size=B)              # (B,)
    pos = starts[:, None] + np.arange(T)                         # (B, T)
    return ids[pos], ids[pos + 1]


def sequential_batches(ids, batch_size: int, block_size: int
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    r"""The stream in order, as ``(x, y)`` batches for truncated BPTT.

    The :math:`N` ids are cut into ``batch_size`` = :math:`B` equal contiguous streams of
    :math:`L = \lfloor N / B \rfloor` tokens (the last :math:`N - BL` ids are dropped), row
    :math:`b` holding ``ids[b L : (b+1) L]``. Batch :math:`i` is the chunk

    .. math:: x^{(i)}_{b,t} = \text{ids}[bL + iT + t], \qquad
              y^{(i)}_{b,t} = \text{ids}[bL + iT + t + 1],

    :math:`0 \le t < T_i`, with :math:`T_i = T` (``block_size``) except for the last chunk, which
    holds the :math:`1 \le T_i \le T` steps left (the :math:`L - 1` input positions of a row
    are covered exactly once).

    Because row :math:`b` of batch :math:`i+1` starts exactly where row :math:`b` of batch
    :math:`i` stopped, the hidden state an RNN/LSTM reaches at the end of batch :math:`i` is the
    correct initial state for batch :math:`i+1`: carry it across consecutive batches (detached,
    i.e. without back-propagating into the previous batch) and reset it only when the stream
    restarts. Randomly drawn windows (:func:`random_windows`) do not have this property.

    Arguments are checked when this is called, not at the first ``next()``. Raises
    ``ValueError`` when ``len(ids) < 2 * batch_size`` (each stream needs an input and a target).
    Returns a generator of int64 pairs of shape ``(B, T_i)``.
    """
    ids = _ids(ids)
    B = positive_int(batch_size, "batch_size")
    T = positive_int(block_size, "block_size")
    L = ids.size // B
    if L < 2:
        raise ValueError(f"ids must hold at least 2 * batch_size = {2 * B} tokens (each of the "
                         f"{B} streams needs an input and a target), got {ids.size}")
    streams = ids[:B * L].reshape(B, L)                           # (B, L)

    def chunks():
        for s in range(0, L - 1, T):
            t = min(T, L - 1 - s)
            yield streams[:, s:s + t].copy(), streams[:, s + 1:s + 1 + t].copy()

    return chunks()


def pad_batch(sequences, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Right-pad variable-length id sequences into one array.

    sequences: a non-empty list of 1-D integer sequences (lists or arrays; individual ones may
    be empty, not all) -> ``(padded, lengths)``: ``padded`` int64 ``(B, L_max)`` with
    ``padded[b, :lengths[b]] = sequences[b]`` and ``pad_id`` after, ``lengths`` int64 ``(B,)``.
    ``pad_id`` is any int (e.g. a ``<pad>`` token id, or -100 to match an ``ignore_index``).
    A mask of real tokens is ``np.arange(L_max) < lengths[:, None]``.
    """
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, (list, tuple)):
        raise TypeError(f"sequences must be a list of 1-D integer sequences, got "
                        f"{type(sequences).__name__}")
    if len(sequences) == 0:
        raise ValueError("sequences must not be empty")
    pad_id = integer(pad_id, "pad_id")
    arrs = [_ids(s, f"sequences[{i}]", allow_empty=True) for i, s in enumerate(sequences)]
    lengths = np.array([a.size for a in arrs], dtype=np.int64)
    L = int(lengths.max())
    if L == 0:
        raise ValueError("sequences must not all be empty")
    out = np.full((len(arrs), L), pad_id, dtype=np.int64)
    for b, a in enumerate(arrs):
        out[b, :a.size] = a
    return out, lengths
