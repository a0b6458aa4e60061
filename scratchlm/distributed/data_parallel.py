r"""Data parallelism on MPI, with DDP's design (Li et al., 2020), and ZeRO stage 1
(Rajbhandari et al., 2020).

Every rank holds the whole model and draws the **same global batch** that one process would
draw at that step; rank :math:`r` of :math:`N` computes rows :math:`[\lfloor rB/N \rfloor,
\lfloor (r+1)B/N \rfloor)` of it. Its loss is the mean over its rows, so the global loss and
gradient are the row-weighted sums

.. math::

    L = \sum_r w_r L_r, \qquad \nabla L = \sum_r w_r \nabla L_r, \qquad w_r = B_r / B,

exact for every model whose rows carry equally many loss terms (language-model windows,
images); with padded targets the ranks' means are weighted by rows, as DDP weights them. The
results then do not depend on :math:`N` (up to the summation order of floating point).

**Buckets, during the backward.** The trainable parameters are grouped, in reverse order of
registration (roughly the order the backward finishes them), into buckets of about
``bucket_bytes``. A parameter's gradient is final when every module that holds it has run its
backward as often as its forward in this step; a bucket is final when all of its parameters
are. The backward is watched through each holding module's ``forward``/``backward`` (wrapped on
the instance), and a final bucket's weighted gradients are copied into one flat buffer and
summed over the ranks with a **non-blocking** ``MPI_Iallreduce`` at once, while the backward
goes on below it. Buckets start in index order on every rank (MPI needs one order). What is not
final when the backward returns (a parameter used outside any module's forward, a tied
embedding) goes then. :meth:`DataParallel.finish` waits for all and writes the sums back into
``p.grad``: every rank then holds the same gradient and applies the same update.

**ZeRO-1** (``zero=1``). The optimizer's state is sharded: each parameter belongs to one rank
(assigned whole, largest first, to the least-loaded rank, as ``torch.distributed.optim.
ZeroRedundancyOptimizer`` does). After the backward the gradients are **reduce-scattered** (each
rank receives the sums of its own parameters only), each rank updates its own parameters with
its own optimizer (Adam's moments for its share only), and the parameters are
**all-gathered**. The joint gradient norm for clipping is the sum of the ranks' squared shard
norms. The parameters equal plain data parallelism's.

Communication per step: an allreduce of the gradients (ring: each rank sends
:math:`2(N-1)/N` times their bytes); ZeRO-1's reduce-scatter and all-gather send the same.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

__all__ = ["DataParallel", "ZeroRedundancyOptimizer", "shard_rows", "partition"]


def shard_rows(n: int, rank: int, size: int) -> tuple:
    """``(lo, hi)``: rank ``rank``'s contiguous share of ``n`` rows."""
    return n * rank // size, n * (rank + 1) // size


def partition(sizes, size: int) -> list:
    """The owner rank of each item of ``sizes`` (bytes): largest first, each to the rank with
    the least so far (ties: the lower rank)."""
    owner, load = [0] * len(sizes), [0] * size
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += sizes[i]
    return owner


def _batch_rows(batch):
    """The number of rows of a batch: an index array, or a tuple whose arrays share axis 0."""
    arrays = [batch] if isinstance(batch, np.ndarray) else \
        [a for a in batch if isinstance(a, np.ndarray) and a.ndim >= 1]
    if not arrays:
        raise TypeError(f"a distributed batch must hold arrays with one row per example, got "
                        f"{type(batch).__name__}")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"the batch's arrays must share their first dimension (rows), got "
                         f"{[a.shape for a in arrays]}")
    return n


class DataParallel:
    """Data-parallel training of ``model`` over ``comm`` (a :class:`~scratchlm.distributed.mpi.
    Comm`); see the module docstring.

    At construction every rank's parameters become rank 0's (a broadcast, as DDP does). Per
    step: ``batch, w = dp.shard(batch)``; :meth:`start` before the forward; the forward and
    ``model.backward()``; :meth:`finish` (the gradients summed); :meth:`mean` for the loss.
    ``verify=True`` (tests) also checks that no gradient changed after its bucket was sent.
    """

    #: the defaults of ``bucket_bytes`` and ``verify`` (DDP's ``bucket_cap_mb`` is 25 MB; our
    #: models are smaller, so more, smaller buckets overlap more of the backward)
    BUCKET_BYTES = 1 << 20
    VERIFY = False

    def __init__(self, model, comm, bucket_bytes: int | None = None, zero: int = 0,
                 verify: bool | None = None):
        if zero not in (0, 1):
            raise ValueError(f"zero must be 0 (plain data parallelism) or 1, got {zero!r}")
        self.model, self.comm, self.zero = model, comm, zero
        self.verify = self.VERIFY if verify is None else bool(verify)
        bucket_bytes = self.BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.rank, self.size = comm.rank, comm.size
        seen, named = set(), []
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                named.append((name, p))
        self.named = named
        self.params = [p for _, p in named]
        for p in self.params:                       # every rank starts from rank 0's weights
            comm.Bcast(p.data)
        self._buckets(int(bucket_bytes))
        self._hook()
        self.active = False
        self.bytes_per_step = 0

    # -- buckets and the backward's hooks -----------------------------------------------------------
    def _buckets(self, cap):
        """Reverse registration order, one dtype per bucket, about ``cap`` bytes each."""
        buckets, cur, cur_bytes = [], [], 0
        for p in reversed(self.params):
            if cur and (cur_bytes + p.data.nbytes > cap or p.data.dtype != cur[0].data.dtype):
                buckets.append(cur)
                cur, cur_bytes = [], 0
            cur.append(p)
            cur_bytes += p.data.nbytes
        if cur:
            buckets.append(cur)
        self.buckets = buckets
        self.bucket_of = {id(p): i for i, b in enumerate(buckets) for p in b}

    def _hook(self):
        """Wrap ``forward`` and ``backward`` of every module that holds a trainable parameter
        (on the instance: the class is untouched) to count calls during a step."""
        self.holders = defaultdict(list)            # id(param) -> modules holding it
        self.wrapped = []
        for mod in self.model.modules():
            own = [p for p in mod._parameters.values()
                   if p is not None and id(p) in self.bucket_of]
            if not own:
                continue
            for p in own:
                self.holders[id(p)].append(mod)
            self.wrapped.append(mod)
            fwd, bwd = mod.forward, mod.backward

            def forward(*args, _f=fwd, _m=mod, **kw):
                if self.active:
                    self.n_fwd[id(_m)] += 1
                return _f(*args, **kw)

            def backward(*args, _b=bwd, _m=mod, _own=own, **kw):
                out = _b(*args, **kw)
                if self.active:
                    self.n_bwd[id(_m)] += 1
                    self._maybe_ready(_own)
                return out
            object.__setattr__(mod, "forward", forward)
            object.__setattr__(mod, "backward", backward)

    def close(self):
        """Remove the hooks (the model is then as it was built)."""
        for mod in self.wrapped:
            for name in ("forward", "backward"):
                mod.__dict__.pop(name, None)
        self.wrapped = []

    def _final(self, p):
        return all(self.n_bwd[id(h)] >= self.n_fwd[id(h)] > 0 for h in self.holders[id(p)])

    def _maybe_ready(self, params):
        if self.zero:                    # ZeRO-1 reduce-scatters once, after the backward
            return
        for p in params:
            if id(p) not in self.ready and self._final(p):
                self.ready.add(id(p))
                self.pending[self.bucket_of[id(p)]] -= 1
        while self.launched < len(self.buckets) and self.pending[self.launched] == 0:
            self._launch(self.launched)
        for req in self.requests:        # let MPI progress what is in flight
            req.Test()

    def _launch(self, i):
        bucket, w = self.buckets[i], self.weight
        buf = np.empty(sum(p.data.size for p in bucket), bucket[0].data.dtype)
        o = 0
        for p in bucket:
            g = p.grad if p.grad is not None else np.zeros_like(p.data)
            np.multiply(g.reshape(-1), g.dtype.type(w), out=buf[o:o + g.size])
            o += g.size
        if self.verify:
            self.sent_copy[i] = buf.copy()
        self.buffers[i] = buf
        self.requests.append(self.comm.Iallreduce(buf))
        self.launched += 1

    # -- a step ----------------------------------------------------------------------------------
    def shard(self, batch, allow_empty: bool = False):
        """``(this rank's rows of batch, w_r)``: rows of every array of the global batch.
        ``allow_empty`` (DP-SGD's Poisson batches, of any size): a rank may get no rows."""
        n = _batch_rows(batch)
        if n < self.size and not allow_empty:
            raise ValueError(f"the batch has {n} rows (examples or streams), fewer than the "
                             f"{self.size} ranks: every rank needs at least one")
        lo, hi = shard_rows(n, self.rank, self.size)
        self.weight = (hi - lo) / n if n else 0.0
        if isinstance(batch, np.ndarray):
            return batch[lo:hi], self.weight
        return type(batch)(a[lo:hi] if isinstance(a, np.ndarray) and a.ndim >= 1 else a
                           for a in batch), self.weight

    def start(self):
        """Before the step's forward: count afresh, nothing in flight."""
        self.n_fwd, self.n_bwd = defaultdict(int), defaultdict(int)
        self.ready = set()
        self.pending = [len(b) for b in self.buckets]
        self.launched, self.requests, self.buffers = 0, [], {}
        self.sent_copy = {}
        self.comm.sent = 0
        self.active = True

    def finish(self):
        """After ``model.backward()``: the gradients summed over the ranks into ``p.grad``
        (ZeRO-1: only this rank's parameters hold the sums)."""
        self.active = False
        if self.zero:
            self._reduce_scatter()
        else:
            while self.launched < len(self.buckets):
                self._launch(self.launched)
            self.comm.MPI.Request.Waitall(self.requests)
            for i, bucket in enumerate(self.buckets):
                o, buf = 0, self.buffers[i]
                for p in bucket:
                    if self.verify and i in self.sent_copy:
                        g = p.grad.reshape(-1) * p.grad.dtype.type(self.weight)
                        if not np.array_equal(g, self.sent_copy[i][o:o + p.data.size]):
                            raise RuntimeError(
                                f"a gradient changed after its bucket was sent: {self._name(p)} "
                                f"is used outside its module's forward/backward")
                    if p.grad is None:
                        p.grad = np.zeros_like(p.data)
                    p.grad.reshape(-1)[...] = buf[o:o + p.data.size]
                    o += p.data.size
        self.bytes_per_step = self.comm.sent

    def sum_gradients(self):
        """Sum every ``p.grad`` over the ranks as they are (no weighting): DP-SGD's clipped sums,
        after a backward run without :meth:`start`."""
        weight = getattr(self, "weight", 1.0)
        self.start()
        self.active, self.weight = False, 1.0
        try:
            self.finish()
        finally:
            self.weight = weight

    def _name(self, p):
        return next(n for n, q in self.named if q is p)

    def mean(self, values):
        """The weighted mean over the ranks of this rank's numbers (a list: the loss and what
        the step reports): ``sum_r w_r v_r``, the same on every rank."""
        buf = np.array([self.weight * float(v) for v in values], np.float64)
        before = self.comm.sent
        self.comm.Allreduce(buf)
        self.bytes_per_step += self.comm.sent - before
        return [float(v) for v in buf]

    # -- the step function's state (a recurrent model's carried state) -------------------------
    def gather_step_state(self, forward, local):
        """Every rank calls it: the step function's state for the whole global batch, at rank 0
        (``forward.join_state_dicts`` joins the ranks' parts in rank order), None elsewhere."""
        parts = self.comm.gather_object(local)
        if self.rank != 0 or local is None:
            return None
        join = getattr(forward, "join_state_dicts", None)
        if join is None:
            raise TypeError(f"{type(forward).__name__} carries state between steps but has no "
                            f"join_state_dicts(parts): it cannot run data parallel")
        return join(parts)

    def localize_step_state(self, forward):
        """After a checkpoint's (whole-batch) step state was loaded: keep this rank's rows."""
        if not hasattr(forward, "state_dict"):
            return
        split = getattr(forward, "split_state_dict", None)
        if split is None:
            raise TypeError(f"{type(forward).__name__} carries state between steps but has no "
                            f"split_state_dict(state, rank, size): it cannot run data parallel")
        forward.load_state_dict(split(forward.state_dict(), self.rank, self.size))

    # -- ZeRO-1 ------------------------------------------------------------------------------------
    def owners(self):
        """The rank that owns each parameter (ZeRO-1), in ``self.params`` order."""
        if not hasattr(self, "_owner"):
            self._owner = partition([p.data.nbytes for p in self.params], self.size)
        return self._owner

    def _layout(self):
        """Parameters grouped by owner rank (each rank's contiguous), the items per rank."""
        owner = self.owners()
        order = [p for r in range(self.size) for p, o in zip(self.params, owner) if o == r]
        counts = [sum(p.data.size for p, o in zip(self.params, owner) if o == r)
                  for r in range(self.size)]
        return order, counts

    def _reduce_scatter(self):
        order, counts = self._layout()
        dtype = self.params[0].data.dtype
        if any(p.data.dtype != dtype for p in self.params):
            raise ValueError("ZeRO-1 shards one flat buffer: every trainable parameter must "
                             "have one dtype")
        send = np.empty(sum(counts), dtype)
        o = 0
        for p in order:
            g = p.grad if p.grad is not None else np.zeros_like(p.data)
            np.multiply(g.reshape(-1), dtype.type(self.weight), out=send[o:o + g.size])
            o += g.size
        recv = np.empty(counts[self.rank], dtype)
        self.comm.Reduce_scatter(send, recv, counts)
        o = 0
        for p in self.owned():
            p.grad.reshape(-1)[...] = recv[o:o + p.data.size]
            o += p.data.size

    def owned(self):
        """This rank's parameters (ZeRO-1), in the flat layout's order."""
        return [p for p, o in zip(self.params, self.owners()) if o == self.rank]

    def shard_norm(self, norm_type=2.0):
        """The joint gradient 2-norm over every rank's own parameters (ZeRO-1 clipping)."""
        if float(norm_type) != 2.0:
            raise ValueError("ZeRO-1 clips by the 2-norm only")
        sq = np.array([sum(float(np.dot(p.grad.reshape(-1).astype(np.float64),
                                        p.grad.reshape(-1).astype(np.float64)))
                           for p in self.owned())], np.float64)
        self.comm.Allreduce(sq)
        return math.sqrt(sq[0])

    def gather_parameters(self):
        """After each rank updated its own parameters: everyone's, on every rank."""
        order, counts = self._layout()
        dtype = self.params[0].data.dtype
        mine = self.owned()
        send = np.concatenate([p.data.reshape(-1) for p in mine]) if mine else np.empty(0, dtype)
        recv = np.empty(sum(counts), dtype)
        self.comm.Allgatherv(send, recv, counts)
        o = 0
        for p in order:
            p.data.reshape(-1)[...] = recv[o:o + p.data.size]
            o += p.data.size


class ZeroRedundancyOptimizer:
    """ZeRO-1's optimizer: the full optimizer's hyperparameters and layout (``full``, with no
    state), and this rank's own optimizer (``local``) over its parameters only.

    The training loop sets rates on :attr:`param_groups` (the full optimizer's); :meth:`step`
    copies them to the local optimizer, updates this rank's parameters and all-gathers the
    parameters. :meth:`gathered_state_dict` (every rank calls it; rank 0 gets the result) is the
    full optimizer's ``state_dict``, so a checkpoint resumes on any number of ranks;
    :meth:`load_state_dict` takes a full one and keeps this rank's share."""

    def __init__(self, dp: DataParallel, make):
        self.dp = dp
        self.full = make(dp.named)
        mine = {id(p) for p in dp.owned()}
        local = [(n, p) for n, p in dp.named if id(p) in mine]
        self.local = make(local) if local else None

    @property
    def param_groups(self):
        return self.full.param_groups

    def zero_grad(self):
        self.full.zero_grad()

    def step(self):
        if self.local is not None:
            rate = {id(p): g["lr"] for g in self.full.param_groups for p in g["params"]}
            for g in self.local.param_groups:
                g["lr"] = rate[id(g["params"][0])]
            self.local.step()
        self.dp.gather_parameters()

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds."""
        if self.local is None:
            return 0
        return sum(v.nbytes for s in self.local.state.values() for v in s.values()
                   if isinstance(v, np.ndarray))

    def gathered(self):
        """Every rank calls it: at rank 0, the full optimizer holding every rank's state (for a
        checkpoint; :meth:`release_gathered` drops it again), elsewhere None."""
        names = {id(p): n for n, p in self.dp.named}
        mine = {} if self.local is None else \
            {names[id(p)]: dict(s) for p, s in self.local.state.items()}
        parts = self.dp.comm.gather_object(mine)
        if self.dp.rank != 0:
            return None
        by_name = dict(self.dp.named)
        self.full.state = defaultdict(dict, {by_name[n]: s for part in parts
                                             for n, s in part.items()})
        return self.full

    def release_gathered(self):
        self.full.state = defaultdict(dict)

    def state_dict(self):
        raise RuntimeError("a ZeRO-1 optimizer's state is spread over the ranks: gathered() "
                           "(on every rank) assembles it at rank 0")

    def keep_own_state(self):
        """After a full state was loaded into :attr:`full` (a checkpoint, from any number of
        ranks): keep this rank's parameters' state and the groups' hyperparameters, drop the
        rest."""
        if self.local is not None:
            for p in self.dp.owned():
                if p in self.full.state:
                    self.local.state[p] = self.full.state[p]
            hyper = {id(p): g for g in self.full.param_groups for p in g["params"]}
            for g in self.local.param_groups:
                g.update({k: v for k, v in hyper[id(g["params"][0])].items() if k != "params"})
        self.full.state = defaultdict(dict)


def clip_own(params, max_norm, norm):
    """ZeRO-1's clipping: this rank's gradients scaled as :func:`~scratchlm.optim.
    clip_grad_norm_` would for the joint ``norm`` over every rank."""
    from ..optim.clip import scale_to_norm_
    scale_to_norm_([p.grad for p in params if p.grad is not None], max_norm, norm)
