"""The counting and lookup loops of the count-based models.

* ``count_transitions`` -- a first-order chain: ``counts[a, b] = #{t : s_t = a, s_{t+1} = b}``;
* ``pad_stream``, ``window_keys``, ``link_level``, ``unique_pairs`` -- the passes of
  ``NGramLM.fit`` (pad sentences, key every in-sentence window, sort/count distinct keys, link each
  n-gram to its suffix and first word);
* ``build_key_table`` / ``find_keys`` -- n-gram lookup by hashing (the NumPy twin bisects).
"""

import numpy as np
from numba import njit

from . import dispatch


def count_transitions_numpy(seq, n_states):
    """seq: (L,) int64 states in [0, n_states) -> counts: (n_states, n_states) int64."""
    pairs = seq[:-1] * n_states + seq[1:]                       # (L-1,) flat index of (a, b)
    return np.bincount(pairs, minlength=n_states * n_states).reshape(n_states, n_states).astype(np.int64)


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, inline="always")
def _slot(key, shift):
    return (np.uint64(key) * _GOLDEN) >> shift


def build_key_table_numpy(keys):
    """The NumPy route bisects the sorted keys directly: it needs no table."""
    return np.zeros(0, np.int64)


@njit(cache=True, nogil=True)
def build_key_table_numba(keys):
    # keys: (n,) sorted distinct int64 -> table: (2^bits,) position of each key, -1 empty;
    # open addressing with linear probing at load factor <= 1/2
    n = keys.shape[0]
    bits = 1
    while (1 << bits) < 2 * n:
        bits += 1
    size = 1 << bits
    shift = np.uint64(64 - bits)
    table = np.full(size, -1, np.int64)
    for i in range(n):
        h = _slot(keys[i], shift)
        while table[h] != -1:
            h = (h + np.uint64(1)) & np.uint64(size - 1)
        table[h] = i
    return table


def find_keys_numpy(keys, table, queries):
    """keys: (n,) sorted, queries: (m,) -> (m,) position of each query in keys, -1 if absent."""
    if keys.size == 0:
        return np.full(queries.shape, -1, np.int64)
    pos = np.searchsorted(keys, queries)
    pos_c = np.minimum(pos, keys.size - 1)
    return np.where(keys[pos_c] == queries, pos_c, -1)


@njit(cache=True, nogil=True)
def find_keys_numba(keys, table, queries):
    # keys: (n,), table: (2^bits,) from build_key_table_numba, queries: (m,) -> (m,)
    out = np.full(queries.shape[0], -1, np.int64)
    size = table.shape[0]
    if keys.shape[0] == 0:
        return out
    bits = 0
    while (1 << bits) < size:
        bits += 1
    shift = np.uint64(64 - bits)
    for j in range(queries.shape[0]):
        q = queries[j]
        if q < 0:
            continue
        h = _slot(q, shift)
        while True:
            i = table[h]
            if i == -1:
                break
            if keys[i] == q:
                out[j] = i
                break
            h = (h + np.uint64(1)) & np.uint64(size - 1)
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


#: bits per radix-sort digit: 2^16 buckets, a 512 KB count array that stays in L2
_DIGIT = 16


@njit(cache=True, nogil=True)
def unique_pairs_numba(key, n_prefix, base):
    # key: (m,) in [0, n_prefix*base) -> keys (u,), inverse (m,), counts (u,): an LSD radix sort
    # by 16-bit digits (two passes for keys below 2^32), each pass a stable counting sort that
    # carries the keys and their positions along, so every pass reads sequentially
    m = key.shape[0]
    k, at = key.copy(), np.arange(m)
    k2, at2 = np.empty(m, np.int64), np.empty(m, np.int64)
    n_buckets = 1 << _DIGIT
    shift = 0
    while shift < 63 and (n_prefix * base - 1) >> shift > 0:
        start = np.zeros(n_buckets + 1, np.int64)          # where each digit's run begins
        for i in range(m):
            start[((k[i] >> shift) & (n_buckets - 1)) + 1] += 1
        for d in range(n_buckets):
            start[d + 1] += start[d]
        for i in range(m):
            d = (k[i] >> shift) & (n_buckets - 1)
            j = start[d]
            k2[j], at2[j] = k[i], at[i]
            start[d] = j + 1
        k, k2, at, at2 = k2, k, at2, at
        shift += _DIGIT
    keys = np.empty(m, np.int64)                         # walk the sorted keys
    counts = np.empty(m, np.int64)
    inverse = np.empty(m, np.int64)
    u = -1
    for j in range(m):
        if u < 0 or k[j] != keys[u]:
            u += 1
            keys[u] = k[j]
            counts[u] = 0
        counts[u] += 1
        inverse[at[j]] = u
    return keys[:u + 1].copy(), inverse, counts[:u + 1].copy()


unique_pairs = dispatch(unique_pairs_numba, unique_pairs_numpy)
