"""The counting and lookup loops of the count-based models.

* ``count_transitions`` -- a first-order chain: ``counts[a, b] = #{t : s_t = a, s_{t+1} = b}``;
* ``pad_stream``, ``window_keys``, ``link_level``, ``unique_pairs`` -- the passes of
  ``NGramLM.fit`` (pad sentences, key every in-sentence window, sort/count distinct keys, link each
  n-gram to its suffix and first word);
* ``build_key_table`` / ``find_keys`` -- n-gram lookup by hashing (the NumPy twin bisects);
* ``backoff_logp`` -- scoring: the back-off recursion at every position of a stream, one pass.
"""

import operator

import numpy as np
from numba import njit

from . import dispatch


def count_transitions_numpy(seq, n_states):
    """seq: (L,) int64 states in [0, n_states) -> counts: (n_states, n_states) int64."""
    pairs = seq[:-1] * n_states + seq[1:]                       # (L-1,) flat index of (a, b)
    return np.bincount(pairs, minlength=n_states * n_states).reshape(n_states, n_states).astype(np.int64)


@njit(cache=True, error_model="numpy", nogil=True)
def count_transitions_numba(seq, n_states):
    # seq: (L,) -> counts: (n_states, n_states)
    counts = np.zeros((n_states, n_states), dtype=np.int64)
    for t in range(seq.shape[0] - 1):
        counts[seq[t], seq[t + 1]] += 1
    return counts


count_transitions = dispatch(count_transitions_numba, count_transitions_numpy)


# ------------------------------------------------------------------------------------------------
# n-gram counting: the three passes of NGramLM.fit (see scratchlm/models/ngram.py)
# ------------------------------------------------------------------------------------------------
def pad_stream_numpy(ids, table, lengths, bos_index, eos_index, bos, eos):
    """ids: (T,) concatenated sentences of token ids, table: (top+2,) id -> outcome index (last
    entry for ids beyond the table), lengths: (S,) -> stream: (T + S*(bos+eos),) of indices with
    each sentence wrapped in <s> ... </s>, sid: (same,) int32 sentence number of every position."""
    idx = table[np.minimum(ids, table.size - 1)]
    out_len = lengths + int(bos) + int(eos)                                 # (S,)
    starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(out_len)[:-1]])
    stream = np.empty(int(out_len.sum()), np.int64)
    within = np.arange(idx.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    stream[np.repeat(starts + int(bos), lengths) + within] = idx
    if bos:
        stream[starts] = bos_index
    if eos:
        stream[starts + out_len - 1] = eos_index
    sid = np.repeat(np.arange(lengths.size, dtype=np.int32), out_len)
    return stream, sid


@njit(cache=True, error_model="numpy", nogil=True)
def pad_stream_numba(ids, table, lengths, bos_index, eos_index, bos, eos):
    # ids: (T,), table: (top+2,), lengths: (S,) -> stream (int64), sid (int32): (T + S*(bos+eos),)
    S = lengths.shape[0]
    n = ids.shape[0] + S * (int(bos) + int(eos))
    last = table.shape[0] - 1
    stream = np.empty(n, np.int64)
    sid = np.empty(n, np.int32)
    p = 0
    q = 0
    for s in range(S):
        if bos:
            stream[p] = bos_index
            sid[p] = s
            p += 1
        for _ in range(lengths[s]):
            stream[p] = table[min(ids[q], last)]
            sid[p] = s
            p += 1
            q += 1
        if eos:
            stream[p] = eos_index
            sid[p] = s
            p += 1
    return stream, sid


def window_keys_numpy(pos_ids, stream, sid, k, base):
    """The k-grams starting inside one sentence: starts (m,) and keys (m,) = id of the
    (k-1)-gram at the start * base + the k-th token. pos_ids: (n+1,) ids of the (k-1)-grams."""
    n = stream.shape[0] - k + 1
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(sid[:n] == sid[k - 1:])
    return starts, pos_ids[starts] * base + stream[starts + k - 1]


@njit(cache=True, error_model="numpy", nogil=True)
def window_keys_numba(pos_ids, stream, sid, k, base):
    # pos_ids: (n+1,), stream/sid: (L,) -> starts (m,), keys (m,)
    n = stream.shape[0] - k + 1
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.empty(n, np.int64)
    keys = np.empty(n, np.int64)
    m = 0
    for i in range(n):          # branch-free compaction: always write, keep it if in-sentence
        starts[m] = i
        keys[m] = pos_ids[i] * base + stream[i + k - 1]
        m += sid[i] == sid[i + k - 1]
    return starts[:m], keys[:m]             # views: all but the (k-1) per sentence are kept


def link_level_numpy(inverse, starts, pos_ids, stream, n_keys, n_positions):
    """For the k-grams just counted (inverse: (m,) their ids at starts (m,)): suffix (n_keys,) the
    id of the (k-1)-gram starting one later, first (n_keys,) their first token, and the id of the
    k-gram starting at every position (n_positions,), -1 where none."""
    suffix = np.empty(n_keys, np.int64)
    suffix[inverse] = pos_ids[starts + 1]
    first = np.empty(n_keys, np.int64)
    first[inverse] = stream[starts]
    new_ids = np.full(n_positions, -1, np.int64)
    new_ids[starts] = inverse
    return suffix, first, new_ids


@njit(cache=True, error_model="numpy", nogil=True)
def link_level_numba(inverse, starts, pos_ids, stream, n_keys, n_positions):
    # inverse/starts: (m,) -> suffix (n_keys,), first (n_keys,), new_ids (n_positions,)
    suffix = np.empty(n_keys, np.int64)
    first = np.empty(n_keys, np.int64)
    new_ids = np.full(n_positions, -1, np.int64)
    for j in range(inverse.shape[0]):
        g = inverse[j]
        i = starts[j]
        suffix[g] = pos_ids[i + 1]
        first[g] = stream[i]
        new_ids[i] = g
    return suffix, first, new_ids


pad_stream = dispatch(pad_stream_numba, pad_stream_numpy)
window_keys = dispatch(window_keys_numba, window_keys_numpy)
link_level = dispatch(link_level_numba, link_level_numpy)


# ------------------------------------------------------------------------------------------------
# n-gram lookup: id of each query key in a sorted key array, or -1
# ------------------------------------------------------------------------------------------------
# Fibonacci hashing: multiply by 2^64 / golden ratio, keep the top `bits` bits.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, error_model="numpy", inline="always")
def _slot(key, shift):
    return (np.uint64(key) * _GOLDEN) >> shift


def build_key_table_numpy(keys):
    """The NumPy route bisects the sorted keys directly: it needs no table."""
    return np.zeros(0, np.int64)


@njit(cache=True, error_model="numpy", nogil=True)
def build_key_table_numba(keys):
    # keys: (n,) sorted distinct int64 -> table: (2 * 2^bits,): slot h holds (key, position) at
    # [2h, 2h+1], position -1 when empty; open addressing with linear probing at load factor
    # <= 1/2. Key and position share a cache line: a probe costs one memory access, not two.
    n = keys.shape[0]
    bits = 1
    while (1 << bits) < 2 * n:
        bits += 1
    size = 1 << bits
    shift = np.uint64(64 - bits)
    table = np.full(2 * size, -1, np.int64)
    for i in range(n):
        h = _slot(keys[i], shift)
        while table[2 * h + 1] != -1:
            h = (h + np.uint64(1)) & np.uint64(size - 1)
        table[2 * h] = keys[i]
        table[2 * h + 1] = i
    return table


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _table_shift(table):
    bits = 0
    while (2 << bits) < table.shape[0]:
        bits += 1
    return np.uint64(64 - bits)


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _find_one(table, shift, q):
    # the position of key q in the table of build_key_table_numba, or -1
    mask = np.uint64(table.shape[0] // 2 - 1)
    h = _slot(q, shift)
    while True:
        i = table[2 * h + 1]
        if i == -1 or table[2 * h] == q:
            return i
        h = (h + np.uint64(1)) & mask


def find_keys_numpy(keys, table, queries):
    """keys: (n,) sorted, queries: (m,) -> (m,) position of each query in keys, -1 if absent."""
    if keys.size == 0:
        return np.full(queries.shape, -1, np.int64)
    pos = np.searchsorted(keys, queries)
    pos_c = np.minimum(pos, keys.size - 1)
    return np.where(keys[pos_c] == queries, pos_c, -1)


@njit(cache=True, error_model="numpy", nogil=True)
def find_keys_numba(keys, table, queries):
    # keys: (n,), table: (2 * 2^bits,) from build_key_table_numba, queries: (m,) -> (m,)
    out = np.full(queries.shape[0], -1, np.int64)
    if keys.shape[0] == 0:
        return out
    shift = _table_shift(table)
    for j in range(queries.shape[0]):
        if queries[j] >= 0:
            out[j] = _find_one(table, shift, queries[j])
    return out


build_key_table = dispatch(build_key_table_numba, build_key_table_numpy)
find_keys = dispatch(find_keys_numba, find_keys_numpy)


# ------------------------------------------------------------------------------------------------
# unique keys with inverse and counts, for keys = prefix * base + token
# ------------------------------------------------------------------------------------------------
def unique_pairs_numpy(key, n_prefix, base):
    """key: (m,) with key = prefix * base + token, prefix < n_prefix, token < base ->
    sorted distinct keys (u,), inverse (m,) (key[i] == keys[inverse[i]]), counts (u,)."""
    keys, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return keys, inverse.reshape(-1), counts.astype(np.int64)


#: bits per radix-sort digit: 2^12 buckets, a 32 KB count array that stays in L1 and 4096 write
#: streams the caches can follow. 16-bit digits (a 512 KB array, 65536 streams) took 1.8x as long
#: on the order-3 fit's 200k trigram keys (2 passes either way) and no less on 24- to 40-bit keys
#: of 0.5-1M (more passes, each cheaper)
_DIGIT = 12


@njit(cache=True, error_model="numpy", nogil=True)
def unique_pairs_numba(key, n_prefix, base):
    # key: (m,) in [0, n_prefix*base) -> keys (u,), inverse (m,), counts (u,): an LSD radix sort
    # by 12-bit digits (two passes for keys below 2^24), each pass a stable counting sort that
    # carries the keys and their positions along, so every pass reads sequentially. The first
    # pass reads ``key`` itself (positions are its indices); later passes go back and forth
    # between two buffers. Memory touched is memory paid for (page faults on fresh arrays): no
    # copy of ``key``, no index array, and outputs of exactly u entries.
    m = key.shape[0]
    n_buckets = 1 << _DIGIT
    src_k, src_at = key, np.empty(0, np.int64)          # pass 1: position i is i itself
    a_k, a_at = np.empty(m, np.int64), np.empty(m, np.int64)
    b_k, b_at = np.empty(0, np.int64), np.empty(0, np.int64)   # made when a third pass needs it
    shift, passes = 0, 0
    while shift < 63 and (n_prefix * base - 1) >> shift > 0:
        if passes == 0:
            dst_k, dst_at = a_k, a_at
        elif passes % 2 == 1:
            if b_k.shape[0] != m:
                b_k, b_at = np.empty(m, np.int64), np.empty(m, np.int64)
            dst_k, dst_at = b_k, b_at
        else:
            dst_k, dst_at = a_k, a_at
        start = np.zeros(n_buckets + 1, np.int64)          # where each digit's run begins
        for i in range(m):
            start[((src_k[i] >> shift) & (n_buckets - 1)) + 1] += 1
        for d in range(n_buckets):
            start[d + 1] += start[d]
        for i in range(m):
            d = (src_k[i] >> shift) & (n_buckets - 1)
            j = start[d]
            dst_k[j] = src_k[i]
            dst_at[j] = i if passes == 0 else src_at[i]
            start[d] = j + 1
        src_k, src_at = dst_k, dst_at
        shift += _DIGIT
        passes += 1
    if passes == 0:                                      # a single possible key: no digit
        src_k, src_at = key, np.arange(m)
    u = 0                                                # walk the sorted keys: count, then fill
    for j in range(m):
        if j == 0 or src_k[j] != src_k[j - 1]:
            u += 1
    keys = np.empty(u, np.int64)
    counts = np.zeros(u, np.int64)
    inverse = np.empty(m, np.int64)
    u = -1
    for j in range(m):
        if j == 0 or src_k[j] != src_k[j - 1]:
            u += 1
            keys[u] = src_k[j]
        counts[u] += 1
        inverse[src_at[j]] = u
    return keys, inverse, counts


unique_pairs = dispatch(unique_pairs_numba, unique_pairs_numpy)


# ------------------------------------------------------------------------------------------------
# one order of interpolated modified Kneser-Ney: the sums per context and the probabilities
# ------------------------------------------------------------------------------------------------
def kn_level_numpy(keys, used, lower, base, n_ctx, D):
    r"""keys (n,) sorted ``context id * base + token``, ``used`` (n,) int64 counts a(hw) (raw or
    continuation), ``lower`` (n,) float64 P_{k-1}(w | h'), ``D`` = (D1, D2, D3+) ->
    ``p`` (n,), ``gamma`` (n_ctx,), ``denom`` (n_ctx,):

    .. math:: p(w \mid h) = \frac{\max(a(hw) - D(a(hw)), 0)}{\sum_v a(hv)}
              + \gamma(h)\, P_{k-1}(w \mid h'),\qquad
              \gamma(h) = \frac{\sum_v D(a(hv))}{\sum_v a(hv)}

    (gamma 0 where the context has no count). Every sum runs in key order, as ``np.bincount``
    adds, so the Numba kernel gives the same bits."""
    pre = keys // base                                                  # (n,) context id
    a = used.astype(np.float64)
    disc = np.array([0.0, D[0], D[1], D[2]])[np.minimum(used, 3)]       # D(a(hw))
    denom = np.bincount(pre, weights=a, minlength=n_ctx)                # sum_w a(hw)
    mass = np.bincount(pre, weights=disc, minlength=n_ctx)              # sum_w D(a(hw))
    gamma = np.divide(mass, denom, out=np.zeros(n_ctx), where=denom > 0)
    p = np.maximum(a - disc, 0) / denom[pre] + gamma[pre] * lower
    return p, gamma, denom


@njit(cache=True, nogil=True, error_model="numpy")     # x / 0 as NumPy: inf or NaN, no raise
def kn_level_numba(keys, used, lower, base, n_ctx, D):
    # the twin's arithmetic, fused: one pass for the sums, one for p (no (n,) temporaries)
    n = keys.shape[0]
    table = np.array([0.0, D[0], D[1], D[2]])
    denom = np.zeros(n_ctx)
    mass = np.zeros(n_ctx)
    for i in range(n):
        h = keys[i] // base
        denom[h] += np.float64(used[i])
        mass[h] += table[min(used[i], 3)]
    gamma = np.zeros(n_ctx)
    for h in range(n_ctx):
        if denom[h] > 0:
            gamma[h] = mass[h] / denom[h]
    p = np.empty(n)
    for i in range(n):
        h = keys[i] // base
        a = np.float64(used[i])
        d = table[min(used[i], 3)]
        p[i] = max(a - d, 0.0) / denom[h] + gamma[h] * lower[i]
    return p, gamma, denom


def kn_level(keys, used, lower, base, n_ctx, D):
    """Checked here, before the kernel indexes without bounds checks: every context id
    ``keys // base`` in ``[0, n_ctx)`` (by the keys' minimum and maximum, sorted or not) and
    every count >= 0."""
    base, n_ctx = operator.index(base), operator.index(n_ctx)
    n = keys.shape[0] if keys.ndim == 1 else -1
    if n < 0 or used.shape != (n,) or lower.shape != (n,) or keys.dtype != np.int64 or \
            used.dtype != np.int64 or lower.dtype != np.float64 or len(D) != 3:
        raise ValueError(f"kn_level: keys, used, lower must be (n,) int64, int64, float64 and D "
                         f"three discounts, got {keys.shape} {keys.dtype}, {used.shape} "
                         f"{used.dtype}, {lower.shape} {lower.dtype}, {len(D)}")
    if base < 1 or n_ctx < 0:
        raise ValueError(f"kn_level: base must be >= 1 and n_ctx >= 0, got {base} and {n_ctx}")
    if n and (keys.min() < 0 or keys.max() // base >= n_ctx or used.min() < 0):
        raise ValueError(f"kn_level: context ids must lie in [0, {n_ctx}) and counts be >= 0")
    return _kn_level(keys, used, lower, base, n_ctx, (float(D[0]), float(D[1]), float(D[2])))


_kn_level = dispatch(kn_level_numba, kn_level_numpy)
kn_level.numba, kn_level.numpy = kn_level_numba, kn_level_numpy


# ------------------------------------------------------------------------------------------------
# scoring: log P(token | the longest known context), with back-off weights, at every position
# ------------------------------------------------------------------------------------------------
def backoff_logp_numpy(stream, sid, keys, tables, logp, logb, base):
    """The back-off recursion of an n-gram model, at every position of a padded stream.

    stream, sid: (L,) outcome indices and sentence numbers. Per order k = 1..N (lists of N):
    ``keys[k-1]`` (n_k,) sorted keys (prefix id * base + index), ``tables[k-1]`` the hash table
    of ``build_key_table`` (unused on this route), ``logp[k-1]`` / ``logb[k-1]`` (n_k,) float64
    log-probability and back-off weight of each k-gram. Returns (L,) float64:

        E_1(i) = id of stream[i];   E_k(i) = id of E_{k-1}(i-1) * base + stream[i]
                 (-1 if unknown, or if i-1 is in another sentence)
        log P(i) = logp_j[E_j(i)] + sum_{k=j}^{N-1} logb_k[E_k(i-1)]   for the largest j with
                   E_j(i) known (the context's back-off weights, where the context is known)

    NaN where not even the unigram is known.
    """
    N, L = len(keys), stream.size
    same = np.zeros(L, bool)                                     # i - 1 is in i's sentence
    same[1:] = sid[1:] == sid[:-1]
    E = np.full((N, L), -1, np.int64)                            # E[k-1, i]: the k-gram ending at i
    E[0] = find_keys_numpy(keys[0], tables[0], stream)
    for k in range(2, N + 1):
        prefix = np.full(L, -1, np.int64)
        prefix[1:] = E[k - 2, :-1]                               # E_{k-1}(i-1)
        ok = (prefix >= 0) & same
        E[k - 1, ok] = find_keys_numpy(keys[k - 1], tables[k - 1], prefix[ok] * base + stream[ok])
    out = np.full(L, np.nan)
    found = np.zeros(L, bool)
    backoff = np.zeros(L)
    for j in range(N, 0, -1):                                    # longest match first
        hit = (E[j - 1] >= 0) & ~found
        out[hit] = logp[j - 1][E[j - 1, hit]] + backoff[hit]
        found |= hit
        if j >= 2:                                               # backing off from order j
            ctx = np.full(L, -1, np.int64)
            ctx[1:] = E[j - 2, :-1]                              # the (j-1)-gram ending at i-1
            use = ~found & (ctx >= 0) & same
            backoff[use] += logb[j - 2][ctx[use]]
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def _backoff_logp(stream, sid, keys, tables, logp, logb, base, out):
    # one pass over the stream: cur[k] = E_{k+1}(i), prev[k] = E_{k+1}(i-1); out: (L,)
    N, L = len(keys), stream.shape[0]
    shifts = np.empty(N, np.uint64)
    for k in range(N):
        shifts[k] = _table_shift(tables[k])
    prev = np.full(N, -1, np.int64)
    cur = np.full(N, -1, np.int64)
    for i in range(L):
        out[i] = np.nan
        same = i > 0 and sid[i] == sid[i - 1]
        cur[0] = _find_one(tables[0], shifts[0], stream[i])
        for k in range(1, N):
            cur[k] = -1
            if same and prev[k - 1] >= 0:
                cur[k] = _find_one(tables[k], shifts[k], prev[k - 1] * base + stream[i])
        backoff = 0.0
        for j in range(N - 1, -1, -1):                          # order j + 1, longest first
            if cur[j] >= 0:
                out[i] = logp[j][cur[j]] + backoff
                break
            if j >= 1 and same and prev[j - 1] >= 0:
                backoff += logb[j - 1][prev[j - 1]]
        for k in range(N):
            prev[k] = cur[k]


#: below this many positions the stream is scored in the calling thread
SPLIT_MIN_POSITIONS = 1 << 15


def backoff_logp_numba(stream, sid, keys, tables, logp, logb, base):
    """The Numba route of :func:`backoff_logp_numpy` (same arguments; ``tables`` from
    ``build_key_table_numba``): one pass, a hash probe per order per position. Long streams are
    cut at sentence starts (where no context carries over) into one part per thread."""
    from . import get_num_threads, split_run

    # tuples, not typed Lists: a List hands out its arrays with a reference count each time,
    # which in this loop cost 10x the probes themselves (one compilation per order N)
    keys, tables, logp, logb = tuple(keys), tuple(tables), tuple(logp), tuple(logb)
    L = stream.shape[0]
    out = np.empty(L)
    parts = min(get_num_threads(), max(1, L // SPLIT_MIN_POSITIONS))
    cuts = [0]
    if parts > 1:
        starts = np.flatnonzero(sid[1:] != sid[:-1]) + 1          # where a sentence begins
        for p in range(1, parts):                 # the first sentence start at or after p L/parts
            j = int(np.searchsorted(starts, L * p // parts))
            if j < starts.size and starts[j] > cuts[-1]:
                cuts.append(int(starts[j]))
    cuts.append(L)

    def run(lo, hi):
        for c in range(lo, hi):
            a, b = cuts[c], cuts[c + 1]
            _backoff_logp(stream[a:b], sid[a:b], keys, tables, logp, logb, base, out[a:b])
    split_run(run, len(cuts) - 1)
    return out


backoff_logp = dispatch(backoff_logp_numba, backoff_logp_numpy)
