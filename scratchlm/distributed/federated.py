r"""Federated averaging (McMahan et al., 2017) on MPI: every rank is a **client** that holds a
disjoint shard of the training data and never shows it to anyone.

A round: each client trains ``local_steps`` steps (E) on batches of its own shard, with its own
optimizer; then the server (rank 0) averages the clients' weights, weighted by how much data
each holds,

.. math::

    w \leftarrow \sum_k \frac{n_k}{n} w_k ,

and sends the average back. Only parameters cross process boundaries (and, for the history,
each client's loss and data size: numbers, never tokens). With E = 1 step of plain SGD on equal
shards this is data-parallel SGD on the union of the clients' batches (the textbook identity:
:math:`\sum_k \frac{1}{K}(w - \eta g_k) = w - \eta \frac{1}{K}\sum_k g_k`), which the tests
check.

The shards (:func:`client_shard`): the training ids cut into pieces of ``piece`` tokens, dealt
to the clients -- ``"iid"`` shuffles the pieces first (every client sees the whole corpus's mix),
``"contiguous"`` gives client k the k-th stretch of the corpus (non-IID: the built-in corpus's
topics change along it).

A client's optimizer keeps its own state across rounds (AdamW's moments are not averaged; plain
SGD has none).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FederatedAveraging", "client_shard", "SPLITS"]

SPLITS = ("iid", "contiguous")


def client_shard(ids, rank: int, size: int, split: str = "iid", piece: int = 256,
                 seed: int = 0, min_tokens: int = 1) -> np.ndarray:
    """Client ``rank`` of ``size``'s token ids: pieces of ``piece`` consecutive ids of ``ids``
    (the last piece may be shorter), dealt round-robin after a shuffle seeded with ``seed``
    (``"iid"``) or in order, one contiguous stretch per client (``"contiguous"``). Every
    client's shard is checked (on every rank alike) to hold ``min_tokens``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    ids = np.asarray(ids)
    n = -(-ids.size // piece)
    if n < size:
        raise ValueError(f"the training text has {ids.size} tokens: {n} pieces of {piece} for "
                         f"{size} clients; every client needs at least one")
    if split == "iid":
        order = np.random.default_rng(seed).permutation(n)
        deal = [np.sort(order[r::size]) for r in range(size)]
    else:
        deal = [np.arange(n * r // size, n * (r + 1) // size) for r in range(size)]
    sizes = [sum(min(piece, ids.size - i * piece) for i in d) for d in deal]
    if min(sizes) < min_tokens:
        raise ValueError(f"the training text has {ids.size} tokens: client {int(np.argmin(sizes))} "
                         f"of {size} would get {min(sizes)}, fewer than the {min_tokens} it "
                         f"needs; use fewer clients or more text")
    return np.concatenate([ids[i * piece:(i + 1) * piece] for i in deal[rank]])


class FederatedAveraging:
    """The server side of FedAvg over ``comm``: :meth:`average` replaces every client's
    parameters by the data-weighted average (rank 0 averages, then broadcasts); ``size`` is this
    client's data size (its tokens or examples)."""

    def __init__(self, model, comm, size: int, local_steps: int):
        self.model, self.comm = model, comm
        self.rank, self.clients = comm.rank, comm.size
        self.local_steps = int(local_steps)
        seen, self.params = set(), []
        for p in model.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                self.params.append(p)
        sizes = np.zeros(self.clients, np.float64)
        sizes[self.rank] = float(size)
        comm.Allreduce(sizes)                      # every client's data size (numbers only)
        self.sizes = sizes
        self.weight = float(size) / float(sizes.sum())
        for p in self.params:                      # every client starts from the server's model
            comm.Bcast(p.data)

    def average(self):
        """One round's end: ``w = sum_k (n_k / n) w_k`` at rank 0, then on every client."""
        flat = np.concatenate([p.data.reshape(-1).astype(np.float64) for p in self.params])
        flat *= self.weight
        self.comm.Reduce(flat, root=0)
        self.comm.Bcast(flat, root=0)
        o = 0
        for p in self.params:
            p.data.reshape(-1)[...] = flat[o:o + p.data.size]
            o += p.data.size

    def mean(self, values):
        """This step's numbers (the loss ...) averaged over the clients by data size."""
        buf = np.array([self.weight * float(v) for v in values], np.float64)
        self.comm.Allreduce(buf)
        return [float(v) for v in buf]
