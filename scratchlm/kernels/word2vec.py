r"""word2vec's training pass: skip-gram and CBOW, negative sampling and hierarchical softmax,
one *job* (a run of sentences) at a time, updating the tables in place (SGD, as word2vec.c).

``train_job(syn0, syn1neg, syn1, words, starts, keep, prob, alias, points, codes, codelens, sg,
window, negative, hs, alpha, seed, compute_loss) -> (trained, predictions, loss)``

* ``syn0`` ``(V, D)`` the input vectors (the word vectors), ``syn1neg`` ``(V, D)`` the output
  vectors of negative sampling, ``syn1`` ``(V - 1, D)`` the inner nodes of the Huffman tree
  (hierarchical softmax); all one float dtype, updated in place.
* ``words`` ``(N,)`` int32 vocabulary ids of the job's sentences, ``starts`` ``(S + 1,)`` int64
  offsets of each sentence in it.
* ``keep`` ``(V,)`` float64: the probability a word is kept (subsampling; 1 where it is never
  dropped). ``prob`` ``(V,)`` float64 and ``alias`` ``(V,)`` int32: the noise distribution
  (``count ** 0.75``, normalised) as Walker's alias table (:func:`alias_table`).
  ``points``/``codes`` ``(V, L)`` and ``codelens`` ``(V,)``: each word's path in the
  Huffman tree (inner node ids, and the branch bits).
* ``seed``: the job's generator state (a 64-bit LCG, word2vec.c's ``next_random``). ``alpha``:
  the job's learning rate. Returns the number of words trained on (after subsampling), of
  predictions made (skip-gram: one per (centre, context) pair; CBOW: one per centre word with a
  context) and, with ``compute_loss``, their summed loss (nats; else 0).

Per sentence, in order, as word2vec.c and gensim do:

1. **Subsampling.** Each word is kept with probability ``keep[w]`` (one draw for each word whose
   ``keep`` is below 1); the window then runs over the kept words.
2. **A window per centre word.** ``b`` is drawn uniformly from ``0 .. window - 1`` and the centre
   word at ``i`` is paired with the kept words at ``i - (window - b) .. i + (window - b)``.
3. **Skip-gram** (``sg``): for each context word ``c`` of centre ``w``, the input vector
   ``h = syn0[c]`` predicts ``w`` (word2vec.c's direction: the context word's vector is the one
   updated). **CBOW**: ``h`` is the mean of the context words' vectors and predicts ``w`` once;
   the input error is then added *whole* to every context word (word2vec.c and gensim's
   ``cbow_mean=1``; the exact gradient of the mean would be that divided by the window's count --
   :func:`scratchlm.functional.word2vec_forward` is the exact loss, and the tests state the
   relation).
4. **Negative sampling**: targets ``w`` (label 1) and ``negative`` words drawn from the alias table
   (label 0; a draw equal to ``w`` is skipped, not redrawn). **Hierarchical softmax**: the
   targets are the inner nodes on ``w``'s path with labels ``1 - code``. For each target ``t``
   with label ``l``: ``g = alpha (l - sigma(h . u_t))``, ``e += g u_t``, ``u_t += g h``; then the
   input side takes ``e`` (``syn0[c] += e``). This is one SGD step on
   ``-log sigma(h . u_w) - sum_k log sigma(-h . u_k)``.

The sigmoid is exact (word2vec.c and gensim read it from a 1000-entry table clipped at |x| = 6):
``1 / (1 + e^{-x})`` for ``x >= 0`` and ``e^x / (1 + e^x)`` below, so ``exp`` never overflows,
evaluated in float64 with ``math.exp`` in both routes. The dot product is one fixed order in both
routes (:func:`dot_numba`): eight running sums over the vector in strides of eight, joined as
``((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))``, then the tail added one by one -- so the compiler can keep
the eight sums in one SIMD register, and the NumPy twin reproduces the same sum. Nothing else
rounds differently, so with one thread the two routes give the same tables bit for bit.

The Numba kernel releases the GIL (``nogil``): several threads run jobs on the same tables at
once without locks (Hogwild; Recht et al. 2011), as word2vec.c and gensim do. The NumPy twin
runs the same updates in the same order, one pair at a time in Python: the reference, slow.

**Prefetching for write.** With two threads on one table, about half the rows a thread touches
were last written by the other core: each is a cache miss to the other core, then a second
request to own the lines before writing them. So the kernel asks for each row *for writing*
(``llvm.prefetch`` with rw = 1: ``prefetchw`` on x86) as soon as it knows it: the noise words
when they are drawn, the next context word's input row (skip-gram) before the current pair's
targets, a path's inner nodes (hierarchical softmax) before they are scored. The transfers then
overlap instead of stalling one by one. A prefetch is a hint: it changes no value (the twins
still agree bit for bit), and it only ever names rows inside the tables. On the 2-core VM of
benchmarks/results/word_vectors.md this took two threads' kernel from 1.2x to 1.75x one
thread's speed; one thread, it changes nothing.

The random stream (both routes): ``state = state * 25214903917 + 11 (mod 2^64)``; a uniform in
``[0, 1)`` is ``(state >> 11) / 2^53``, a window reduction ``(state >> 33) mod window``.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import dispatch
from .gemm import _ir_helpers, prefetch_write

LCG_MUL = 25214903917
LCG_ADD = 11
MASK64 = (1 << 64) - 1
LANES = 8


# ------------------------------------------------------------------------------------------------
# the shared arithmetic: the dot product's order, the sigmoid
# ------------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def dot_numba(a, b):
    # a, b: (D,) one dtype, D >= 1 -> their dot product, summed in the documented order. The
    # sums start from the first products, never from 0 (0 + -0 would lose a zero's sign, and a
    # literal 0 would make float32 sums float64)
    n = a.shape[0]
    n8 = n - n % 8
    if n8 == 0:
        r = a[0] * b[0]
        for i in range(1, n):
            r += a[i] * b[i]
        return r
    s0, s1, s2, s3 = a[0] * b[0], a[1] * b[1], a[2] * b[2], a[3] * b[3]
    s4, s5, s6, s7 = a[4] * b[4], a[5] * b[5], a[6] * b[6], a[7] * b[7]
    for i in range(8, n8, 8):
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
        s4 += a[i + 4] * b[i + 4]
        s5 += a[i + 5] * b[i + 5]
        s6 += a[i + 6] * b[i + 6]
        s7 += a[i + 7] * b[i + 7]
    r = ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))
    for i in range(n8, n):
        r += a[i] * b[i]
    return r


def dot_numpy(a, b):
    """The same sum as :func:`dot_numba`: the column sums of the ``(D // 8, 8)`` products (NumPy
    reduces a non-contiguous axis row by row, in order, from the first row), joined the same
    way, then the tail added one by one."""
    p = a * b                                                        # (D,)
    n8 = p.size - p.size % LANES
    if n8 == 0:
        r = p[0]
        for v in p[1:]:
            r += v
        return r
    s = p[:n8].reshape(-1, LANES).sum(axis=0)                        # (D // 8, 8) -> (8,)
    r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))
    for v in p[n8:]:
        r += v
    return r


@intrinsic
def _prefetch_write(typingctx, row, offset):
    """Hint that the cache line holding byte ``offset`` of the 1-D array ``row`` will be
    written soon (``llvm.prefetch``: rw = 1, high locality, data cache). No value changes; the
    caller keeps ``offset`` inside ``row``."""
    sig = types.void(row, offset)

    def codegen(context, builder, signature, args):
        _, as_i64, data = _ir_helpers(context, builder, signature, args)
        prefetch_write(builder, builder.gep(builder.bitcast(data(0), ir.IntType(8).as_pointer()),
                                            [as_i64(1)]))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _prefetch_row(row):
    # row: (D,) a contiguous table row -> each of its cache lines asked for, for writing: the
    # line of every 64th byte, and of the last byte (a row need not start on a line)
    nbytes = row.shape[0] * row.itemsize
    for at in range(0, nbytes, 64):
        _prefetch_write(row, at)
    if nbytes > 0:
        _prefetch_write(row, nbytes - 1)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _sigmoid(x):
    # float64 -> float64, stable at both ends
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _sigmoid_py(x: float) -> float:
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _log_sigmoid(x):
    # log sigma(x) = -log(1 + e^{-x}), stable: min(x, 0) - log1p(e^{-|x|})
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


def _log_sigmoid_py(x: float) -> float:
    if math.isnan(x):
        return x
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


def alias_table(weights):
    """Walker's alias method (Vose's construction) for drawing ``i`` with probability
    ``weights[i] / sum(weights)`` in O(1): ``(prob, alias)``, ``(V,)`` float64 and int32. A draw
    takes one uniform ``u``: ``i = floor(u V)``; keep ``i`` if ``u V - i < prob[i]``, else take
    ``alias[i]``. (word2vec.c fills a table of 10^8 ids; gensim bisects the cumulative sum. The
    alias method is exact, like bisection, and as fast as the table.)"""
    w = np.asarray(weights, np.float64)
    V = w.size
    p = w * (V / w.sum())                              # mean 1
    prob, alias = np.ones(V), np.arange(V, dtype=np.int32)
    small = [i for i in range(V) if p[i] < 1.0]
    large = [i for i in range(V) if p[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = p[s], g                     # column s: s w.p. p[s], else g
        p[g] = (p[g] + p[s]) - 1.0                      # g gave 1 - p[s] of its mass to s
        (small if p[g] < 1.0 else large).append(g)
    return prob, alias                                  # the rest are full columns (1.0)


# ------------------------------------------------------------------------------------------------
# the Numba kernel
# ------------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _next(state):
    return state * np.uint64(LCG_MUL) + np.uint64(LCG_ADD)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _uniform(state):
    return np.float64(state >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _draw(prob, alias, u):
    # Walker's alias method: u * V splits into a column i and a fraction; keep i or its alias
    x = u * prob.shape[0]
    i = np.int64(x)
    return i if x - i < prob[i] else np.int64(alias[i])


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _apply(h, out, t, g64, e, gbuf):
    # one target t of input h with g = alpha (label - sigma(h . out[t])) given:
    # e += g out[t]; out[t] += g h
    gbuf[0] = g64                                    # rounded once to the tables' dtype
    g = gbuf[0]
    row = out[t]
    for k in range(h.shape[0]):         # e += g u_t (the old u_t); u_t += g h -- one pass
        u = row[k]
        e[k] += g * u
        row[k] = u + g * h[k]


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _score(h, out, t, label, alpha, fbuf, gval, k):
    f = np.float64(dot_numba(h, out[t]))
    fbuf[k] = f
    gval[k] = alpha * (label - _sigmoid(f))


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _targets(h, w, syn1neg, syn1, prob, alias, points, codes, codelens, negative, hs, alpha, e,
             gbuf, tbuf, fbuf, gval, state, compute_loss):
    # every target of centre word w for the input h (unchanged here), in word2vec.c's order;
    # the input error accumulates in e. The noise words are drawn first (the same stream as
    # drawing each before its update: nothing else draws in between). A path's inner nodes are
    # distinct and h does not change here, so their scores can all be computed first and the
    # CPU overlaps them; the noise words' rows are scored just before their updates (scoring
    # them all first was faster on one thread, slower on two: another thread's writes between
    # a row's read and its write cost cache misses).
    loss = 0.0
    if hs:                                          # a path's inner nodes are distinct
        n = codelens[w]
        for d in range(n):
            _prefetch_row(syn1[points[w, d]])
        for d in range(n):
            _score(h, syn1, points[w, d], 1.0 - codes[w, d], alpha, fbuf, gval, d)
        for d in range(n):
            _apply(h, syn1, points[w, d], gval[d], e, gbuf)
            if compute_loss:
                loss -= _log_sigmoid(fbuf[d] if codes[w, d] == 0 else -fbuf[d])
    if negative > 0:
        tbuf[0] = w
        n = 1
        for _ in range(negative):
            state = _next(state)
            t = _draw(prob, alias, _uniform(state))
            if t != w:                              # a draw of the centre word is skipped
                _prefetch_row(syn1neg[t])           # its row, on its way while others update
                tbuf[n] = t
                n += 1
        for k in range(n):                          # each scored just before its update
            t = tbuf[k]
            _score(h, syn1neg, t, 1.0 if k == 0 else 0.0, alpha, fbuf, gval, k)
            _apply(h, syn1neg, t, gval[k], e, gbuf)
            if compute_loss:
                loss -= _log_sigmoid(fbuf[k] if k == 0 else -fbuf[k])
    return loss, state


@njit(cache=True, error_model="numpy", nogil=True)
def train_job_numba(syn0, syn1neg, syn1, words, starts, keep, prob, alias, points, codes,
                    codelens, sg, window, negative, hs, alpha, seed, compute_loss):
    D = syn0.shape[1]
    e = np.zeros(D, syn0.dtype)                    # (D,) the input side's error
    h = np.zeros(D, syn0.dtype)                    # (D,) CBOW: the context mean
    gbuf = np.zeros(1, syn0.dtype)
    most = max(negative + 1, points.shape[1])
    tbuf = np.zeros(most, np.int64)                # (K + 1,) a call's targets
    fbuf = np.zeros(most, np.float64)              # (K + 1,) their scores
    gval = np.zeros(most, np.float64)              # (K + 1,) alpha (label - sigma(score))
    kept = np.empty(words.shape[0], np.int32)      # (N,) a sentence's kept words
    state = np.uint64(seed)
    trained = 0
    predictions = 0
    loss = 0.0
    for s in range(starts.shape[0] - 1):
        n = 0
        for i in range(starts[s], starts[s + 1]):              # 1. subsampling
            w = words[i]
            if keep[w] < 1.0:
                state = _next(state)
                if not _uniform(state) < keep[w]:
                    continue
            kept[n] = w
            n += 1
        trained += n
        for i in range(n):
            w = kept[i]
            state = _next(state)                                # 2. the window
            reach = window - np.int64(state >> np.uint64(33)) % window
            lo, hi = max(0, i - reach), min(n, i + reach + 1)
            if sg:                                              # 3. skip-gram
                for j in range(lo, hi):
                    if j == i:
                        continue
                    row = syn0[kept[j]]
                    nxt = j + 1 if j + 1 != i else j + 2
                    if nxt < hi:
                        _prefetch_row(syn0[kept[nxt]])        # the next pair's input row
                    e[:] = 0
                    part, state = _targets(row, w, syn1neg, syn1, prob, alias, points, codes,
                                           codelens, negative, hs, alpha, e, gbuf, tbuf, fbuf,
                                           gval, state, compute_loss)
                    loss += part
                    predictions += 1
                    for k in range(D):
                        row[k] += e[k]
            else:                                               # 3. CBOW
                if hi - lo < 2:
                    continue
                h[:] = 0
                for j in range(lo, hi):
                    if j != i:
                        row = syn0[kept[j]]
                        for k in range(D):
                            h[k] += row[k]
                gbuf[0] = hi - lo - 1
                for k in range(D):
                    h[k] = h[k] / gbuf[0]
                e[:] = 0
                part, state = _targets(h, w, syn1neg, syn1, prob, alias, points, codes, codelens,
                                       negative, hs, alpha, e, gbuf, tbuf, fbuf, gval,
                                       state, compute_loss)
                loss += part
                predictions += 1
                for j in range(lo, hi):
                    if j != i:
                        row = syn0[kept[j]]
                        for k in range(D):
                            row[k] += e[k]
    return trained, predictions, loss


# ------------------------------------------------------------------------------------------------
# the NumPy twin: the same updates, in the same order, one pair at a time
# ------------------------------------------------------------------------------------------------
class _Stream:
    """word2vec.c's generator on Python integers (the kernel's ``uint64`` wraps the same way)."""

    def __init__(self, seed):
        self.state = int(seed) & MASK64

    def next(self) -> int:
        self.state = (self.state * LCG_MUL + LCG_ADD) & MASK64
        return self.state

    def uniform(self) -> float:
        return (self.next() >> 11) / 9007199254740992.0


def _pair_numpy(h, out, t, label, alpha, e, compute_loss):
    f = float(dot_numpy(h, out[t]))
    g = out.dtype.type(alpha * (label - _sigmoid_py(f)))
    e += g * out[t]                              # e += g u_t   (before u_t moves)
    out[t] += g * h                              # u_t += g h
    return -_log_sigmoid_py(f if label == 1.0 else -f) if compute_loss else 0.0


def _targets_numpy(h, w, syn1neg, syn1, prob, alias, points, codes, codelens, negative, hs,
                   alpha, e, rand, compute_loss):
    loss = 0.0
    if hs:
        for d in range(int(codelens[w])):
            loss += _pair_numpy(h, syn1, int(points[w, d]), 1.0 - float(codes[w, d]), alpha, e,
                                compute_loss)
    if negative > 0:
        loss += _pair_numpy(h, syn1neg, w, 1.0, alpha, e, compute_loss)
        for _ in range(negative):
            x = rand.uniform() * prob.size                  # the alias method
            i = int(x)
            t = i if x - i < prob[i] else int(alias[i])      # P(t) = count_t^0.75 / Z
            if t != w:
                loss += _pair_numpy(h, syn1neg, t, 0.0, alpha, e, compute_loss)
    return loss


def train_job_numpy(syn0, syn1neg, syn1, words, starts, keep, prob, alias, points, codes,
                    codelens, sg, window, negative, hs, alpha, seed, compute_loss):
    """The reference: the kernel's updates (module docstring) in plain NumPy."""
    rand = _Stream(seed)
    e = np.zeros(syn0.shape[1], syn0.dtype)
    trained, predictions, loss = 0, 0, 0.0
    for s in range(len(starts) - 1):
        kept = []
        for w in words[starts[s]:starts[s + 1]].tolist():       # 1. subsampling
            if keep[w] < 1.0 and not rand.uniform() < keep[w]:
                continue
            kept.append(w)
        trained += len(kept)
        n = len(kept)
        for i, w in enumerate(kept):
            reach = window - (rand.next() >> 33) % window        # 2. the window
            context = [kept[j] for j in range(max(0, i - reach), min(n, i + reach + 1)) if j != i]
            if sg:                                                # 3. skip-gram
                for c in context:
                    e[:] = 0
                    loss += _targets_numpy(syn0[c], w, syn1neg, syn1, prob, alias, points,
                                           codes, codelens, negative, hs, alpha, e, rand,
                                           compute_loss)
                    predictions += 1
                    syn0[c] += e
            elif context:                                         # 3. CBOW
                h = np.zeros(syn0.shape[1], syn0.dtype)
                for c in context:
                    h += syn0[c]
                h = h / syn0.dtype.type(len(context))            # the context mean
                e[:] = 0
                loss += _targets_numpy(h, w, syn1neg, syn1, prob, alias, points, codes,
                                       codelens, negative, hs, alpha, e, rand, compute_loss)
                predictions += 1
                for c in context:
                    syn0[c] += e                                  # the whole error, to each
    return trained, predictions, loss


train_job = dispatch(train_job_numba, train_job_numpy)
