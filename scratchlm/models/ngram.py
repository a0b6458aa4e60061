r"""An n-gram language model over token ids: counting, smoothing, perplexity, sampling, ARPA.

Sentences are padded as KenLM pads them: ``<s> w_1 ... w_m </s>``. The model predicts every
:math:`w_i` and the one ``</s>`` (counted in perplexity); ``<s>`` is context only. Ids never seen
in training map to ``<unk>``, which every smoothed model gives a finite probability.

Smoothing (``smoothing=``):

``'kneser_ney'`` -- interpolated *modified* Kneser-Ney (Chen & Goodman, 1998, "An Empirical
Study of Smoothing Techniques for Language Modeling", eqs. 17-19 and 26), as KenLM's ``lmplz``
estimates it (Heafield et al., 2013). With :math:`a(\cdot)` the raw counts at the highest order
and the *continuation* counts :math:`a(hw) = |\{v : c(vhw) > 0\}|` at lower orders (raw counts
for n-grams that begin with ``<s>``, which have no left context):

.. math::

    P(w \mid h) &= \frac{\max(a(hw) - D(a(hw)),\, 0)}{\sum_{w'} a(hw')}
                  + \gamma(h)\, P(w \mid h') \\
    \gamma(h) &= \frac{D_1 N_1(h\bullet) + D_2 N_2(h\bullet) + D_{3+} N_{3+}(h\bullet)}
                      {\sum_{w'} a(hw')}

where :math:`h'` drops the oldest word of :math:`h`, :math:`N_r(h\bullet)` counts the words with
:math:`a(hw) = r` (:math:`\ge 3` for :math:`N_{3+}`), and the unigram level interpolates with
the uniform distribution over the vocabulary (``</s>`` and ``<unk>`` included, ``<s>`` not).
The three discounts of each order come from its count-of-counts :math:`n_r`:

.. math::  Y = \frac{n_1}{n_1 + 2 n_2},\quad D_1 = 1 - 2Y\frac{n_2}{n_1},\quad
           D_2 = 2 - 3Y\frac{n_3}{n_2},\quad D_{3+} = 3 - 4Y\frac{n_4}{n_3}

When they cannot be estimated (a zero count-of-count, or a discount outside :math:`(0, r]` -- the
case where KenLM stops with ``BadDiscountException``) the order falls back to the fixed discounts
``(0.5, 1.0, 1.5)`` with a warning.

``'witten_bell'`` -- interpolated Witten-Bell (Witten & Bell, 1991): with :math:`T(h)` the
number of distinct words seen after :math:`h`,
:math:`P(w|h) = \frac{c(hw) + T(h)\,P(w|h')}{c(h) + T(h)}`.

``'add_k'`` -- Lidstone / Laplace (``k=1``):
:math:`P(w|h) = \frac{c(hw) + k}{c(h) + k|V|}` for the longest context :math:`h` (up to
``order - 1`` words) seen in training, uniform for a context never seen.

``'mle'`` -- maximum likelihood :math:`c(hw)/c(h)` for the longest seen context, with no
smoothing: unseen events get probability 0 and the perplexity is infinite (it says so).

Storage: n-grams of order :math:`k` are a sorted ``int64`` key array, the key of
:math:`(w_1..w_k)` being ``id(w_1..w_{k-1}) * B + w_k`` with ``id`` the position of the prefix in
the order-:math:`(k-1)` array -- memory grows with the number of distinct n-grams, never with
``vocab ** order``. Lookups probe a hash table built on first use (the Numba route, as KenLM's
probing model) or bisect the sorted keys (the NumPy twin). Apart from add-k, every smoothing is
stored in *backoff form*, as an ARPA file is: a log probability per seen n-gram and a log backoff
weight per context, queried as

.. math::  P(w \mid h) = \begin{cases} p(hw) & hw \text{ seen} \\
           b(h)\, P(w \mid h') & \text{otherwise} \end{cases}

(for the interpolated models :math:`p(hw)` is the full interpolated probability and
:math:`b(h) = \gamma(h)`). Logs are natural here and base 10 in ARPA files.
"""

from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np

from .._checks import (NonFiniteError, as_int64, choice, float_errors_checked, index_array,
                       int_sequence_array, make_rng, nonnegative, positive_int)
from ..decoding import check_temperature
from .._files import read_bytes
from ..kernels import get_backend
from ..kernels import ngram as K

__all__ = ["NGramLM"]

SMOOTHINGS = ("kneser_ney", "witten_bell", "add_k", "mle")
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
ARPA_LOG_ZERO = -99.0  # how ARPA files spell log10(0) (KenLM writes <s>'s probability so)
#: the largest ARPA file :meth:`NGramLM.from_arpa` reads by default (1 GiB; parsing holds every
#: line as Python objects, several times the file's size): ``max_bytes=`` raises it
MAX_ARPA_BYTES = 1 << 30


class NGramLM:
    """``NGramLM(order, smoothing='kneser_ney', k=1.0, discounts=None)``.

    Args:
        order: n, from 1 (unigram) up (8 and beyond work; memory follows the distinct n-grams).
        smoothing: one of ``'kneser_ney'``, ``'witten_bell'``, ``'add_k'``, ``'mle'``.
        k: the pseudo-count of ``'add_k'``.
        discounts: modified Kneser-Ney only: fixed ``(D1, D2, D3+)`` for every order instead of
            the estimates.

    After :meth:`fit`: ``vocab`` (sorted int64 array of the token ids seen in training); outcome
    index ``i < len(vocab)`` is token ``vocab[i]``, then come ``</s>`` (``eos_index``) and
    ``<unk>`` (``unk_index``) -- the layout of :meth:`next_token_probs`.
    """

    EOS = -1  # the marker for a sentence end in generate()'s output

    def __init__(self, order: int, smoothing: str = "kneser_ney", k: float = 1.0, discounts=None):
        self.order = positive_int(order, "order")
        self.smoothing = choice(smoothing, "smoothing", SMOOTHINGS)   # 'arpa' is set by from_arpa
        self.k = nonnegative(k, "k")
        if self.smoothing == "add_k" and self.k == 0:
            raise ValueError("k must be > 0 for add_k smoothing (k=0 is 'mle')")
        self.fixed_discounts = None if discounts is None else _check_discounts(discounts)
        self.vocab = None
        self.discounts = {}         # order -> (D1, D2, D3+) used (Kneser-Ney)
        self._levels = []           # per order k: dict(keys, counts, logp, logb)

    # ------------------------------------------------------------------------------------------
    # vocabulary and padding
    # ------------------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.vocab is not None

    @property
    def eos_index(self) -> int:
        return len(self.vocab)

    @property
    def unk_index(self) -> int:
        return len(self.vocab) + 1

    @property
    def _bos_index(self) -> int:
        return len(self.vocab) + 2

    @property
    def _base(self) -> int:
        return len(self.vocab) + 3      # B: keys are prefix_id * B + index

    @property
    def num_outcomes(self) -> int:
        """|V|: the tokens seen, ``</s>`` and ``<unk>``."""
        return len(self.vocab) + 2

    def _require_fit(self):
        if not self.fitted:
            raise RuntimeError("NGramLM is not fitted: call fit(sequences) or from_arpa(path) first")

    def _index_table(self, ids):
        """A direct id -> index table (last entry: <unk> for ids beyond it) when the vocabulary is
        dense enough for one to beat bisection, else None."""
        top = int(self.vocab[-1]) if self.vocab.size else -1
        if ids.size > 1000 and top < 4 * ids.size + (1 << 20):
            table = np.full(top + 2, self.unk_index, np.int64)
            table[self.vocab] = np.arange(self.vocab.size)
            return table
        return None

    def _to_index(self, ids) -> np.ndarray:
        """Token ids -> outcome indices; ids not in the vocabulary become <unk>."""
        ids = np.asarray(ids, np.int64)
        if self.vocab.size == 0:                          # fitted on empty sentences only
            return np.full(ids.shape, self.unk_index, np.int64)
        table = self._index_table(ids)
        if table is not None:
            return table[np.minimum(ids, table.size - 1)]
        pos = np.searchsorted(self.vocab, ids)
        pos_c = np.minimum(pos, len(self.vocab) - 1)
        known = (pos < len(self.vocab)) & (self.vocab[pos_c] == ids)
        return np.where(known, pos, self.unk_index).astype(np.int64)

    def _pad(self, sequences, bos=True, eos=True, concatenated=None):
        """Checked sequences -> one stream ``<s> w.. </s> <s> w.. </s> ...`` of outcome indices,
        the sentence number of every position, and the mask of predicted positions (not <s>).
        ``concatenated``: their ``(flat, lengths)`` when the caller has them already."""
        flat, lengths = concatenated if concatenated is not None else _concat(sequences)
        if lengths.size >= 2**31:
            raise ValueError(f"at most 2**31 - 1 sequences at a time, got {lengths.size}")
        table = self._index_table(flat)
        if table is None:                                   # ids too sparse for a table: bisect
            flat, table = self._to_index(flat), np.append(np.arange(self._base), self.unk_index)
        stream, sid = K.pad_stream(flat, table, lengths, self._bos_index, self.eos_index,
                                   bool(bos), bool(eos))
        pred = np.ones(stream.size, bool)
        if bos and lengths.size:
            pred[np.concatenate([[0], np.cumsum(lengths + 1 + int(eos))[:-1]])] = False
        return stream, sid, pred

    @staticmethod
    def _check_sequences(sequences, name="sequences"):
        """-> list of 1-D int64 arrays; errors name the offending sequence."""
        return NGramLM._checked(sequences, name)[0]

    @staticmethod
    def _checked(sequences, name="sequences"):
        """:meth:`_check_sequences`, and the sequences' concatenation and lengths (made for the
        check; ``fit`` reuses them)."""
        if isinstance(sequences, np.ndarray) and sequences.ndim == 1:
            raise TypeError(f"{name} must be an iterable of token-id sequences (a list of lists or "
                            f"arrays); wrap a single sequence in a list")
        if isinstance(sequences, (str, bytes)):
            raise TypeError(f"{name} must hold token ids, got text; encode it with a tokenizer first")
        out = list(sequences)
        if all(type(q) is np.ndarray and q.dtype == np.int64 and q.ndim == 1 for q in out):
            flat, lengths = _concat(out)                # the common case: nothing to convert
            return _no_negative(out, flat, name), flat, lengths
        for i, q in enumerate(out):                     # converted in place: each raw list is
            arr = q if isinstance(q, np.ndarray) else int_sequence_array(       # freed as it goes
                q, f"{name}[{i}]", "must hold token ids below 2**63")
            if arr.size == 0:
                out[i] = np.zeros(0, np.int64)
                continue
            if arr.ndim != 1:
                raise ValueError(f"{name}[{i}] must be 1-D, got shape {arr.shape}")
            if arr.dtype.kind not in "iu":
                raise TypeError(f"{name}[{i}] must hold integer token ids, got dtype {arr.dtype}")
            out[i] = as_int64(arr, f"{name}[{i}]")      # a uint64 id >= 2**63 is refused as given
        flat, lengths = _concat(out)
        return _no_negative(out, flat, name), flat, lengths
    # ------------------------------------------------------------------------------------------
    # counting
    # ------------------------------------------------------------------------------------------
    def _lookup(self, level, keys):
        """Positions of ``keys`` in order ``level``'s sorted key array; -1 where absent. The
        Numba route probes a hash table built on first use (as KenLM's probing model does); the
        NumPy route bisects the sorted keys."""
        lv = self._levels[level - 1]
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        route = get_backend()
        if lv.get("table_route") != route:
            lv["table"], lv["table_route"] = K.build_key_table(lv["keys"]), route
        return K.find_keys(lv["keys"], lv["table"], keys)

    def fit(self, sequences, progress=None):
        """Count every n-gram of order 1..n in ``sequences`` (an iterable of token-id sequences;
        an empty one is an empty sentence) and estimate the model. Returns self.

        ``progress``: an optional callable ``progress(stage: str)`` (the CLI passes a tqdm
        updater). Counting runs as Numba kernels (``kernels/ngram.py``) with NumPy twins.
        """
        seqs, flat, lengths = self._checked(sequences)
        if not seqs:
            raise ValueError("sequences is empty: an n-gram model needs at least one sequence")
        self.vocab = _unique_ids(flat)
        tell = progress or (lambda stage: None)
        stream, sid, _ = self._pad(seqs, concatenated=(flat, lengths))
        del seqs, flat, lengths
        base = self._base
        if (stream.size + 3) * base >= 2**63:
            raise ValueError(f"vocabulary ({base}) x n-grams ({stream.size}) overflows int64 keys")

        # order 1: every index present, plus <unk> (count 0) so it always has a probability
        all_counts = np.bincount(stream, minlength=base)                 # indices are < B
        present = all_counts > 0
        present[self.unk_index] = True
        keys1 = np.flatnonzero(present)
        self._levels = [dict(keys=keys1, counts=all_counts[keys1].astype(np.int64), first=keys1)]
        pos_ids = (np.cumsum(present) - 1)[stream]        # pos_ids[i]: id of the k-gram starting at i
        tell("count order 1")
        for k in range(2, self.order + 1):
            starts, key = K.window_keys(pos_ids, stream, sid, k, base)   # windows inside a sentence
            keys, inverse, counts = _unique_inverse_counts(key, self._levels[-1]["keys"].size, base)
            del key
            suffix, first, pos_ids = K.link_level(inverse, starts, pos_ids, stream, keys.size,
                                                  max(stream.size - k + 1, 0))
            self._levels.append(dict(keys=keys, counts=counts.astype(np.int64), suffix=suffix,
                                     first=first))
            del starts, inverse
            tell(f"count order {k}")
        del pos_ids, stream, sid
        self._estimate()
        for lv in self._levels:                                         # keep only what queries use
            for name in ("suffix", "first", "used"):
                lv.pop(name, None)
        tell("smooth")
        return self
    # ------------------------------------------------------------------------------------------
    # estimation
    # ------------------------------------------------------------------------------------------
    def _estimate(self):
        N = len(self._levels)
        bos = self._bos_index
        V = self.num_outcomes
        lv1 = self._levels[0]
        predicted1 = lv1["keys"] != bos                                   # <s> is never predicted
        # the counts each order smooths: raw, or Kneser-Ney's continuation counts
        for k in range(1, N + 1):
            lv = self._levels[k - 1]
            if self.smoothing == "kneser_ney" and k < N and self._levels[k]["keys"].size:
                cont = np.bincount(self._levels[k]["suffix"], minlength=lv["keys"].size)
                lv["used"] = np.where(lv["first"] == bos, lv["counts"], cont).astype(np.int64)
            else:
                lv["used"] = lv["counts"].copy()
        for lv in self._levels:
            lv["logb"] = np.zeros(lv["keys"].size)   # b = 1 unless a context sets it below
        if self.smoothing == "add_k":
            for lv in self._levels:          # add-k is evaluated from counts at query time
                lv["logp"] = np.zeros(lv["keys"].size)
            return

        # order 1: interpolate with the uniform distribution over the V outcomes
        a = np.where(predicted1, lv1["used"], 0).astype(np.float64)
        total = a.sum()
        if self.smoothing == "kneser_ney":
            D = self._discounts_for(1, lv1["used"][predicted1 & (lv1["used"] > 0)])
            disc = _discount_of(a, D)
            gamma0 = _discount_mass(a[a > 0], D) / total
            p1 = np.maximum(a - disc, 0) / total + gamma0 / V
        elif self.smoothing == "witten_bell":
            T = float((a > 0).sum())
            p1 = (a + T / V) / (total + T)
        else:  # mle
            p1 = a / total
        with np.errstate(divide="ignore"):
            lv1["logp"] = np.where(predicted1, np.log(p1), -np.inf)

        for k in range(2, N + 1):
            lv, below = self._levels[k - 1], self._levels[k - 2]
            n_ctx = below["keys"].size
            if lv["keys"].size == 0:
                lv["logp"] = np.zeros(0)
                continue
            lower = np.exp(below["logp"][lv["suffix"]])                      # P_{k-1}(w | h')
            if self.smoothing == "kneser_ney":
                # p = max(a - D(a), 0) / sum_w a(hw) + gamma(h) lower: kernels/ngram.py's
                # kn_level (a fused Numba kernel; its NumPy twin is these lines in NumPy)
                D = self._discounts_for(k, lv["used"])
                p, gamma, denom = K.kn_level(lv["keys"], lv["used"], lower, self._base, n_ctx, D)
                with np.errstate(divide="ignore"):
                    lv["logp"] = np.log(p)
                    below["logb"] = np.where(denom > 0, np.log(gamma), 0.0)
                continue
            a = lv["used"].astype(np.float64)
            pre = lv["keys"] // self._base                                   # context id
            denom = np.bincount(pre, weights=a, minlength=n_ctx)             # sum_w a(hw)
            if self.smoothing == "witten_bell":
                T = np.bincount(pre, minlength=n_ctx).astype(np.float64)
                gamma = np.divide(T, denom + T, out=np.zeros(n_ctx), where=denom > 0)
                p = a / (denom[pre] + T[pre]) + gamma[pre] * lower
            else:  # mle: relative frequency, and nothing left for unseen words
                gamma = np.where(denom > 0, 0.0, 1.0)
                p = a / denom[pre]
            with np.errstate(divide="ignore"):
                lv["logp"] = np.log(p)
                below["logb"] = np.where(denom > 0, np.log(gamma), 0.0)

    def _discounts_for(self, k, used):
        """Modified Kneser-Ney discounts of order k from its count-of-counts n_1..n_4."""
        if self.fixed_discounts is not None:
            self.discounts[k] = self.fixed_discounts
            return self.fixed_discounts
        n = [int(np.count_nonzero(used == r)) for r in (1, 2, 3, 4)]
        D = None
        if min(n) > 0:
            Y = n[0] / (n[0] + 2 * n[1])
            D = (1 - 2 * Y * n[1] / n[0], 2 - 3 * Y * n[2] / n[1], 3 - 4 * Y * n[3] / n[2])
            if not all(0 < d <= r for r, d in zip((1, 2, 3), D)):
                D = None
        if D is None:
            warnings.warn(
                f"NGramLM: modified Kneser-Ney discounts of order {k} cannot be estimated from "
                f"count-of-counts n1..n4 = {n} (too little or too regular data); using the fixed "
                f"discounts {FALLBACK_DISCOUNTS}", RuntimeWarning, stacklevel=3)
            D = FALLBACK_DISCOUNTS
        self.discounts[k] = tuple(float(d) for d in D)
        return self.discounts[k]

    # ------------------------------------------------------------------------------------------
    # querying
    # ------------------------------------------------------------------------------------------
    def _log_probs_stream(self, stream, sid, pred):
        """Natural-log P(token | up to order-1 previous tokens) at every predicted position: the
        back-off recursion of ``kernels/ngram.py: backoff_logp`` (hash probes on the Numba
        route, bisection on the NumPy route)."""
        levels = self._levels
        if self.smoothing == "add_k":
            return self._add_k_logp(stream, sid, levels)[pred]
        route = get_backend()
        for lv in levels:
            if lv.get("table_route") != route:
                lv["table"], lv["table_route"] = K.build_key_table(lv["keys"]), route
        return K.backoff_logp(stream, sid, [lv["keys"] for lv in levels],
                              [lv["table"] for lv in levels], [lv["logp"] for lv in levels],
                              [lv["logb"] for lv in levels], self._base)[pred]

    def _end_ids(self, stream, sid, levels):
        """end_ids[j-1][i]: the id of the j-gram ending at i (-1 if unknown or crossing a
        sentence start), chained as in ``backoff_logp``."""
        L = stream.size
        same = np.zeros(L, bool)
        same[1:] = sid[1:] == sid[:-1]
        out = [self._lookup(1, stream)]
        for k in range(2, len(levels) + 1):
            prefix = np.full(L, -1, np.int64)
            prefix[1:] = out[-1][:-1]
            ok = (prefix >= 0) & same
            cur = np.full(L, -1, np.int64)
            if ok.any():
                cur[ok] = self._lookup(k, prefix[ok] * self._base + stream[ok])
            out.append(cur)
        return out

    def _add_k_logp(self, stream, sid, levels):
        end_ids = self._end_ids(stream, sid, levels)
        N, L, V = len(self._levels), stream.size, self.num_outcomes
        totals = self._context_totals()
        logp = np.full(L, np.nan)
        done = np.zeros(L, bool)
        for j in range(N, 1, -1):                                           # context of j-1 words
            ctx = np.full(L, -1, np.int64)
            ctx[1:] = end_ids[j - 2][:-1]
            tot = np.where(ctx >= 0, totals[j - 2][np.maximum(ctx, 0)], 0)
            use = ~done & (tot > 0)
            c = np.where(end_ids[j - 1] >= 0, self._levels[j - 1]["counts"][np.maximum(end_ids[j - 1], 0)], 0)
            logp[use] = np.log((c[use] + self.k) / (tot[use] + self.k * V))
            done |= use
        lv1 = self._levels[0]
        c1 = np.where(end_ids[0] >= 0, lv1["counts"][np.maximum(end_ids[0], 0)], 0)
        total = float(lv1["counts"][lv1["keys"] != self._bos_index].sum())
        rest = ~done
        logp[rest] = np.log((c1[rest] + self.k) / (total + self.k * V))
        return logp

    def _context_totals(self):
        """totals[k-1][g] = sum_w c(g w): how often the k-gram g was followed by a word
        (computed once per fitted model)."""
        if getattr(self, "_totals_for", None) is self._levels:
            return self._totals
        out = []
        for k in range(1, len(self._levels)):
            nxt = self._levels[k]
            out.append(np.bincount(nxt["keys"] // self._base, weights=nxt["counts"],
                                   minlength=self._levels[k - 1]["keys"].size) if nxt["keys"].size
                       else np.zeros(self._levels[k - 1]["keys"].size))
        self._totals, self._totals_for = out, self._levels
        return out

    def _context_index(self, context, bos):
        ctx = self._check_sequences([context], "context")[0]
        idx = self._to_index(ctx)
        if bos:
            idx = np.concatenate([[self._bos_index], idx])
        return idx[max(0, idx.size - (self.order - 1)):] if self.order > 1 else idx[:0]

    def next_token_probs(self, context=(), bos=False) -> np.ndarray:
        """The full next-token distribution after ``context`` (token ids; with ``bos=True`` it
        starts a sentence): shape ``(len(vocab) + 2,)`` -- tokens in ``vocab`` order, then
        ``</s>``, then ``<unk>`` -- summing to 1."""
        self._require_fit()
        idx = self._context_index(context, bos)
        V = self.num_outcomes
        if self.smoothing == "add_k":
            return self._add_k_dist(idx)
        lv1 = self._levels[0]
        probs = np.zeros(V)
        keep = lv1["keys"] < V                                              # drop <s>
        probs[lv1["keys"][keep]] = np.exp(lv1["logp"][keep])
        # walk the context from its last word back: suffix contexts of length 1, 2, ...
        for j in range(1, idx.size + 1):
            ctx_id = self._context_id(idx[idx.size - j:])
            if ctx_id < 0:
                break
            lv = self._levels[j]
            below = self._levels[j - 1]
            probs = probs * np.exp(below["logb"][ctx_id])
            lo = np.searchsorted(lv["keys"], ctx_id * self._base)
            hi = np.searchsorted(lv["keys"], (ctx_id + 1) * self._base)
            probs[lv["keys"][lo:hi] % self._base] = np.exp(lv["logp"][lo:hi])
        return probs

    def _context_id(self, idx):
        """Id of the n-gram ``idx`` (indices) in its order's table, or -1."""
        cur = self._lookup(1, np.array([idx[0]]))[0]
        for k in range(2, idx.size + 1):
            if cur < 0:
                return -1
            cur = self._lookup(k, np.array([cur * self._base + idx[k - 1]]))[0]
        return int(cur)

    def _add_k_dist(self, idx):
        V = self.num_outcomes
        totals = self._context_totals()
        for j in range(idx.size, 0, -1):
            ctx_id = self._context_id(idx[idx.size - j:])
            if ctx_id >= 0 and totals[j - 1][ctx_id] > 0:
                lv = self._levels[j]
                counts = np.zeros(V)
                lo = np.searchsorted(lv["keys"], ctx_id * self._base)
                hi = np.searchsorted(lv["keys"], (ctx_id + 1) * self._base)
                counts[lv["keys"][lo:hi] % self._base] = lv["counts"][lo:hi]
                return (counts + self.k) / (totals[j - 1][ctx_id] + self.k * V)
        lv1 = self._levels[0]
        counts = np.zeros(V)
        keep = lv1["keys"] < V
        counts[lv1["keys"][keep]] = lv1["counts"][keep]
        return (counts + self.k) / (counts.sum() + self.k * V)

    def logprob(self, token, context=(), bos=False) -> float:
        """Natural-log probability of ``token`` (a token id, or ``NGramLM.EOS`` for ``</s>``)
        after ``context``. Ids outside the vocabulary are scored as ``<unk>``."""
        self._require_fit()
        probs = self.next_token_probs(context, bos=bos)
        if token == self.EOS:
            i = self.eos_index
        else:
            i = int(self._to_index(index_array(np.array([token]), "token", np.iinfo(np.int64).max))[0])
        with np.errstate(divide="ignore"):
            return float(np.log(probs[i]))

    def score(self, sequence, bos=True, eos=True) -> float:
        """Total natural-log probability of one sequence, ``<s>`` ... ``</s>`` by default (as
        KenLM's ``score(sentence, bos=True, eos=True)``, which reports log10)."""
        self._require_fit()
        return float(self._sentence_logps([sequence], bos, eos)[0].sum())

    def _sentence_logps(self, sequences, bos=True, eos=True):
        seqs, flat, lengths = self._checked(sequences)
        stream, sid, pred = self._pad(seqs, bos, eos, concatenated=(flat, lengths))
        lp = self._log_probs_stream(stream, sid, pred)
        return lp, sid[pred]

    def perplexity(self, sequences) -> float:
        r"""``exp(-(1/N) sum log P)`` over every token and every ``</s>`` (N of them), as KenLM
        counts. Infinite -- with a warning saying how many tokens got probability 0 -- when a
        model without smoothing (``'mle'``) meets an unseen event."""
        self._require_fit()
        lp, _ = self._sentence_logps(sequences)
        if lp.size == 0:
            raise ValueError("sequences is empty: nothing to score")
        zero = int(np.isneginf(lp).sum())
        if zero:
            warnings.warn(f"NGramLM({self.smoothing!r}): {zero} of {lp.size} tokens have probability "
                          f"0 under this unsmoothed model, so the perplexity is infinite",
                          RuntimeWarning, stacklevel=2)
            return math.inf
        return float(np.exp(-lp.mean()))

    def cross_entropy(self, sequences, base: float = 2.0) -> float:
        """Mean negative log-probability per predicted token (bits by default)."""
        return math.log(self.perplexity(sequences)) / math.log(base)

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    @float_errors_checked          # it checks its results; no NumPy warnings
    def generate(self, n: int, temperature: float = 1.0, top_k=None, seed=None, context=()):
        """Sample ``n`` outcomes, starting a sentence after ``context``. A sampled ``</s>``
        appears as ``NGramLM.EOS`` (-1) and starts a new sentence; ``<unk>`` is never sampled.

        ``temperature`` rescales log-probabilities (``p ** (1/T)``); ``top_k`` keeps the k most
        likely outcomes; ``seed``: int or Generator.
        """
        self._require_fit()
        n = positive_int(n, "n")
        temperature = check_temperature(temperature)
        if top_k is not None:
            top_k = positive_int(top_k, "top_k")
        rng = make_rng(seed)
        history = list(self._check_sequences([context], "context")[0])
        out = np.empty(n, np.int64)
        for t in range(n):
            p = self.next_token_probs(history, bos=True)
            p[self.unk_index] = 0.0
            if temperature != 1.0:
                with np.errstate(divide="ignore"):
                    logits = np.log(p) / temperature
                p = np.exp(logits - logits.max())
            if top_k is not None and top_k < p.size:
                keep = np.zeros(p.size, bool)
                keep[np.argsort(-p, kind="stable")[:top_k]] = True   # exactly k; ties: lower index
                p = np.where(keep, p, 0.0)
            total = p.sum()
            if not (np.isfinite(total) and total > 0) or p.min() < 0:
                raise NonFiniteError(
                    f"NGramLM.generate: the next-token distribution after {history} is not a "
                    f"distribution (sum {total}, min {p.min()}): the model's probabilities are not "
                    f"finite or negative (a corrupt model file?) -- nothing can be sampled")
            p = p / total
            i = int(rng.choice(p.size, p=p))
            if i == self.eos_index:
                out[t] = self.EOS
                history = []
            else:
                out[t] = self.vocab[i]
                history.append(out[t])
                history = history[-(self.order - 1):] if self.order > 1 else []
        return out

    # ------------------------------------------------------------------------------------------
    # saving: the checkpoint format of scratchlm.io, and ARPA
    # ------------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"order": self.order, "smoothing": self.smoothing, "k": self.k,
                "discounts": None if self.fixed_discounts is None else list(self.fixed_discounts)}

    def state_dict(self) -> dict:
        self._require_fit()
        out = {"vocab": self.vocab}
        for k, lv in enumerate(self._levels, start=1):
            for name in ("keys", "counts", "logp", "logb"):
                out[f"order{k}.{name}"] = lv[name]
        return out

    def generators(self):
        return iter(())                      # sampling takes its seed per call

    def save(self, path, **meta) -> None:
        """Save as a scratchlm checkpoint (``.npz`` or ``.safetensors``) with ``meta``."""
        from ..io import save_checkpoint
        save_checkpoint(path, self, config=self.config(),
                        discounts={str(k): v for k, v in self.discounts.items()}, **meta)

    @classmethod
    def load(cls, path):
        """Load a model saved by :meth:`save`; returns ``(model, meta)``.

        The file is hostile until checked: the configuration (types and ranges), the set of
        arrays (exactly the vocabulary and four tables per order, nothing missing or extra), the
        vocabulary (sorted distinct non-negative int64 ids) and every table (see
        :func:`_check_tables`) are validated before the model is built; each failure is a
        ``ValueError`` naming the file and the element."""
        from ..io import read_checkpoint
        arrays, doc = read_checkpoint(path)
        path = os.fspath(path)
        if doc.get("module") != cls.__name__:
            raise ValueError(f"{path} holds a {doc.get('module')!r}, not an {cls.__name__}")
        meta = _meta_field(doc, "meta", dict, "an object", path, "the checkpoint")
        cfg = _meta_field(meta, "config", dict, "an object", path, "meta")
        smoothing = _meta_field(cfg, "smoothing", str, "a str", path, "meta.config")
        if smoothing not in SMOOTHINGS + ("arpa",):
            raise ValueError(f"{path}: meta.config.smoothing must be one of "
                             f"{SMOOTHINGS + ('arpa',)}, got {smoothing!r}")
        order = _meta_field(cfg, "order", int, "an int >= 1", path, "meta.config")
        model_keys = [name for name in arrays if name.startswith("model/")]
        if not 1 <= order or 4 * order + 1 != len(model_keys):
            raise ValueError(f"{path}: meta.config.order is {order}, which needs {4 * max(order, 0) + 1} "
                             f"model arrays (the vocabulary and 4 tables per order); the file "
                             f"holds {len(model_keys)}")
        k = cfg.get("k")
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k >= 0 or math.isinf(k):
            raise ValueError(f"{path}: meta.config.k must be a finite number >= 0, got {k!r}")
        if smoothing == "add_k" and k == 0:
            raise ValueError(f"{path}: meta.config.k must be > 0 for add_k smoothing, got 0")
        discounts = cfg.get("discounts")
        if discounts is not None:
            discounts = _meta_discounts(discounts, path, "meta.config.discounts")
        expected = ["model/vocab"] + [f"model/order{j}.{name}" for j in range(1, order + 1)
                                      for name in ("keys", "counts", "logp", "logb")]
        missing = [name for name in expected if name not in arrays]
        if missing:
            raise ValueError(f"{path} lacks the array(s) {', '.join(missing[:4])} of an order-{order} "
                             f"NGramLM (the file holds {', '.join(sorted(model_keys)[:4])}...)")
        vocab = arrays["model/vocab"]
        if (vocab.dtype != np.int64 or vocab.ndim != 1 or (vocab.size and vocab[0] < 0)
                or (vocab.size > 1 and not (np.diff(vocab) > 0).all())):
            raise ValueError(f"{path}: model/vocab must be a sorted vector of distinct non-negative "
                             f"int64 token ids, got dtype {vocab.dtype} shape {vocab.shape}")
        saved_discounts = meta.get("discounts", {})
        if not isinstance(saved_discounts, dict):
            raise ValueError(f"{path}: meta.discounts must be an object (order -> [D1, D2, D3+]), "
                             f"got {type(saved_discounts).__name__}")
        estimated = {}
        for key, value in saved_discounts.items():
            if not re.fullmatch(r"[1-9]\d{0,8}", key) or int(key) > order:
                raise ValueError(f"{path}: meta.discounts has the key {key[:40]!r}; keys are the "
                                 f"orders 1..{order}")
            estimated[int(key)] = _meta_discounts(value, path, f"meta.discounts[{key!r}]",
                                                  fixed=False)
        model = cls(order, "kneser_ney", k=k or 1.0, discounts=discounts)
        model.smoothing = smoothing
        model.vocab = vocab
        levels = [{name: arrays[f"model/order{j}.{name}"] for name in ("keys", "counts", "logp", "logb")}
                  for j in range(1, order + 1)]
        _check_tables(levels, model._base, path, model.unk_index)
        model._levels = levels
        model.discounts = estimated
        return model, meta

    def _word(self, index, words):
        if index == self.eos_index:
            return "</s>"
        if index == self.unk_index:
            return "<unk>"
        if index == self._bos_index:
            return "<s>"
        token = int(self.vocab[index])
        return str(token) if words is None else words[token]

    def to_arpa(self, path, words=None) -> None:
        """Write the model in the ARPA back-off format that KenLM and SRILM read: log10
        probabilities, log10 back-off weights (KenLM itself loads orders >= 2 only). Tokens are spelled as their decimal ids, or as
        ``words[id]`` (strings without whitespace). ``add_k`` has no back-off form: refused."""
        self._require_fit()
        if self.smoothing == "add_k":
            raise ValueError("add_k smoothing has no ARPA (back-off) form; use kneser_ney, "
                             "witten_bell or mle")
        if words is not None:
            missing = [int(t) for t in self.vocab if int(t) not in words]
            if missing:
                raise ValueError(f"words has no spelling for token ids {missing[:5]}")
            spelled = [words[int(t)] for t in self.vocab]
            bad = [w for w in spelled if not isinstance(w, str) or not w or re.search(r"\s", w)
                   or w in ("<s>", "</s>", "<unk>")]
            if bad:
                raise ValueError(f"ARPA words must be non-empty, free of whitespace and not <s>, </s> "
                                 f"or <unk>, got {bad[:3]!r}")
            if len(set(spelled)) != len(spelled):
                raise ValueError("words spells two token ids the same way")
        ln10 = math.log(10)
        N = len(self._levels)
        seqs = [self._ngram_indices(k) for k in range(1, N + 1)]
        lines = ["", "\\data\\"] + [f"ngram {k}={self._levels[k - 1]['keys'].size}" for k in range(1, N + 1)]
        for k in range(1, N + 1):
            lv = self._levels[k - 1]
            lines += ["", f"\\{k}-grams:"]
            for row, lp, lb in zip(seqs[k - 1], lv["logp"], lv["logb"]):
                p10 = ARPA_LOG_ZERO if not np.isfinite(lp) else lp / ln10
                text = " ".join(self._word(int(i), words) for i in row)
                entry = f"{p10:.9g}\t{text}"
                if k < N:
                    b10 = ARPA_LOG_ZERO if not np.isfinite(lb) else lb / ln10
                    if b10 != 0:
                        entry += f"\t{b10:.9g}"
                lines.append(entry)
        lines += ["", "\\end\\", ""]
        from ..io import atomic_write
        atomic_write(path, lambda f: f.write("\n".join(lines).encode("utf-8")))

    def _ngram_indices(self, k):
        """(count, k) array of the outcome indices spelling each k-gram, in table order."""
        lv = self._levels[k - 1]
        if k == 1:
            return lv["keys"][:, None]
        return np.concatenate([self._ngram_indices(k - 1)[lv["keys"] // self._base],
                               (lv["keys"] % self._base)[:, None]], axis=1)

    @classmethod
    def from_arpa(cls, path, word_to_id=None, *, max_bytes=MAX_ARPA_BYTES):
        """Read an ARPA file. Words must be decimal token ids below 2**63 (as :meth:`to_arpa`
        writes them) or be mapped by ``word_to_id`` (word -> int id in ``[0, 2**63)``). The model
        scores and samples; its counts are unknown.

        The file is hostile until checked: it must be a regular file of at most ``max_bytes``
        bytes (:data:`MAX_ARPA_BYTES`, 1 GiB, by default) and UTF-8; the counts its ``\\data\\``
        section announces must fit in its size (every n-gram line of order k takes at least
        2k + 1 bytes) and match the lines it holds. Every failure is a ``ValueError`` naming the
        file and, where there is one, the line."""
        data = read_bytes(path, "ARPA file", limit=max_bytes)
        path = os.fspath(path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path} is not UTF-8 text: invalid byte 0x{data[exc.start]:02x} at "
                             f"byte offset {exc.start}") from None
        size = len(data)
        del data
        sections, order_counts = _parse_arpa(text, path, size)
        del text
        N = len(order_counts)
        special = ("<s>", "</s>", "<unk>")
        tokens, spelled = [], []
        for line_no, _, (w,), _ in sections[1]:
            if w in special:
                continue
            if word_to_id is not None:
                if w not in word_to_id:
                    raise ValueError(f"{path}:{line_no}: word {_excerpt(w)} is not in word_to_id")
                tok = word_to_id[w]
                if (isinstance(tok, bool) or not isinstance(tok, (int, np.integer))
                        or not 0 <= tok < 2**63):
                    raise ValueError(f"word_to_id[{_excerpt(w)}] must be an int in [0, 2**63), got "
                                     f"{_excerpt(tok)}")
                tokens.append(int(tok))
            elif re.fullmatch(r"[0-9]+", w):
                if len(w) > 19 or int(w) >= 2**63:
                    raise ValueError(f"{path}:{line_no}: token id {_excerpt(w)} does not fit in int64 "
                                     f"(ids must be < 2**63)")
                tokens.append(int(w))
            else:
                raise ValueError(f"{path}:{line_no}: word {_excerpt(w)} is not a decimal token id; "
                                 f"pass word_to_id")
            spelled.append((w, line_no))
        model = cls(N)
        model.smoothing = "arpa"
        model.vocab = np.unique(np.array(tokens, np.int64))
        if model.vocab.size != len(tokens):
            first = {}
            for (w, line_no), tok in zip(spelled, tokens):
                if tok in first:
                    raise ValueError(f"{path}:{line_no}: the unigram {_excerpt(w)} is token id {tok}, "
                                     f"as is the unigram on line {first[tok]}")
                first[tok] = line_no
        # word -> outcome index (the unigrams' words and the three markers)
        index = {"</s>": model.eos_index, "<unk>": model.unk_index, "<s>": model._bos_index}
        positions = np.searchsorted(model.vocab, np.array(tokens, np.int64))
        index.update((w, int(i)) for (w, _), i in zip(spelled, positions))
        del tokens, spelled, positions

        ln10 = math.log(10)
        model._levels = []
        for k in range(1, N + 1):
            rows = sections.pop(k, [])
            idx = np.empty((len(rows), k), np.int64)
            for r, (line_no, _, words, _) in enumerate(rows):
                for j, w in enumerate(words):
                    i = index.get(w)
                    if i is None:
                        raise ValueError(f"{path}:{line_no}: the word {_excerpt(w)} appears in a "
                                         f"{k}-gram but not among the unigrams")
                    idx[r, j] = i
            logp = np.array([row[1] for row in rows], np.float64).reshape(len(rows)) * ln10
            logb = np.array([row[3] for row in rows], np.float64).reshape(len(rows)) * ln10
            logp[logp <= ARPA_LOG_ZERO * ln10] = -np.inf
            logb[logb <= ARPA_LOG_ZERO * ln10] = -np.inf
            if k == 1:
                keys = idx[:, 0]
            else:
                prefix = model._lookup(1, idx[:, 0])                         # chain the prefix ids
                for m in range(2, k):
                    prefix = np.where(prefix >= 0, model._lookup(m, np.maximum(prefix, 0) * model._base
                                                                 + idx[:, m - 1]), -1)
                if (prefix < 0).any():
                    line_no, _, bad, _ = rows[int(np.argmax(prefix < 0))]
                    raise ValueError(f"{path}:{line_no}: the context of the {k}-gram "
                                     f"{_excerpt(' '.join(bad))} is not among the {k - 1}-grams")
                keys = prefix * model._base + idx[:, -1]
            order = np.argsort(keys, kind="stable")
            if keys.size > 1 and (np.diff(keys[order]) == 0).any():
                at = int(np.argmax(np.diff(keys[order]) == 0))
                first, second = rows[int(order[at])], rows[int(order[at + 1])]
                raise ValueError(f"{path}:{second[0]}: the {k}-gram {_excerpt(' '.join(second[2]))} "
                                 f"appears twice (first on line {first[0]})")
            model._levels.append(dict(keys=keys[order], counts=np.zeros(len(rows), np.int64),
                                      logp=logp[order], logb=logb[order]))
            del rows, idx
        if model.unk_index not in model._levels[0]["keys"]:
            raise ValueError(f"{path}: the unigrams lack <unk>")
        return model


def _no_negative(seqs, flat, name):
    """``seqs``, or the ValueError naming the first sequence with a negative id."""
    if flat.size and flat.min() < 0:
        i = next(j for j, q in enumerate(seqs) if q.size and q.min() < 0)
        raise ValueError(f"{name}[{i}] holds a negative token id ({int(seqs[i].min())}); "
                         f"ids must be >= 0")
    return seqs


def _concat(seqs):
    """List of 1-D int64 arrays -> (concatenation, lengths)."""
    lengths = np.array([q.size for q in seqs], np.int64)
    flat = np.concatenate(seqs) if lengths.sum() else np.zeros(0, np.int64)
    return flat.astype(np.int64, copy=False), lengths


def _unique_ids(flat):
    """Sorted distinct ids, by counting when they are small."""
    if flat.size == 0:
        return np.zeros(0, np.int64)
    top = int(flat.max())
    if top < 4 * flat.size + (1 << 20):
        return np.flatnonzero(np.bincount(flat, minlength=top + 1))
    return np.unique(flat)


def _unique_inverse_counts(key, n_prefix, base):
    """``np.unique(key, return_inverse=True, return_counts=True)`` for keys
    ``prefix * base + token``: by counting (O(m + range)) when the key range is small, else by a
    radix sort (Numba) or a comparison sort (its NumPy twin)."""
    key_range = n_prefix * base
    if key_range <= max(4 * key.size, 1 << 22):
        counts = np.bincount(key, minlength=key_range)
        present = counts > 0
        rank = np.cumsum(present) - 1
        keys = np.flatnonzero(present)
        return keys, rank[key], counts[keys]
    return K.unique_pairs(key, n_prefix, base)


def _check_discounts(d):
    d = tuple(float(x) for x in d)
    if len(d) != 3 or not all(0 < x <= r for r, x in zip((1, 2, 3), d)):
        raise ValueError(f"discounts must be (D1, D2, D3+) with 0 < D_r <= r (a zero discount "
                         f"leaves no mass for unseen words), got {d}")
    return d


def _check_tables(levels, base, path, unk_index):
    """A loaded model's tables must be what fit() builds: sorted distinct int64 keys (unigram keys
    outcome indices in ``[0, base)``, ``<unk>`` among them), non-negative integer counts, one
    float log-probability (finite or -inf, <= 0) and log-backoff (not NaN) per key, and
    prefixes inside the order below."""
    for k, lv in enumerate(levels, start=1):
        keys = lv["keys"]
        n = keys.size
        if keys.dtype != np.int64 or keys.ndim != 1 or (n > 1 and not (np.diff(keys) > 0).all()):
            raise ValueError(f"{path}: order-{k} keys must be a sorted, distinct int64 vector")
        for name, kinds, what in (("counts", "iu", "integer"), ("logp", "f", "float"),
                                  ("logb", "f", "float")):
            if lv[name].shape != (n,):
                raise ValueError(f"{path}: order-{k} {name} has shape {lv[name].shape}, expected ({n},)")
            if lv[name].dtype.kind not in kinds:
                raise ValueError(f"{path}: order-{k} {name} must be {what}, got dtype {lv[name].dtype}")
        if n and lv["counts"].min() < 0:
            raise ValueError(f"{path}: order-{k} counts must be >= 0, got {lv['counts'].min()}")
        if np.isnan(lv["logp"]).any() or np.isnan(lv["logb"]).any() or (lv["logp"] > 1e-9).any():
            raise ValueError(f"{path}: order-{k} log-probabilities must be <= 0 and not NaN")
        if k == 1 and n and (keys[0] < 0 or keys[-1] >= base):
            raise ValueError(f"{path}: order-1 keys must be outcome indices in [0, {base}), got "
                             f"{keys[0] if keys[0] < 0 else keys[-1]}")
        if k == 1 and not (np.searchsorted(keys, unk_index) < n and keys[np.searchsorted(keys, unk_index)]
                           == unk_index):
            raise ValueError(f"{path}: the unigrams lack <unk> (outcome index {unk_index})")
        if n and k > 1 and (keys.min() < 0 or keys.max() // base >= levels[k - 2]["keys"].size):
            raise ValueError(f"{path}: order-{k} keys point outside the order-{k - 1} table")


def _meta_field(d, key, kind, what, path, where):
    """``d[key]``, which must be a ``kind`` (an int never a bool): else a ``ValueError`` naming the
    file and the element."""
    if key not in d:
        raise ValueError(f"{path}: {where} lacks the field {key!r}")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{path}: {where}.{key} must be {what}, got {type(value).__name__} "
                         f"{_excerpt(value)}")
    return value


def _meta_discounts(value, path, where, fixed=True):
    """Three numbers ``(D1, D2, D3+)`` read from a checkpoint; fixed discounts must satisfy
    :func:`_check_discounts`, estimated ones be finite and >= 0."""
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
        raise ValueError(f"{path}: {where} must be a list of three numbers [D1, D2, D3+], got "
                         f"{_excerpt(value)}")
    if fixed:
        try:
            return _check_discounts(value)
        except ValueError as exc:
            raise ValueError(f"{path}: {where}: {exc}") from None
    if not all(math.isfinite(x) and x >= 0 for x in value):
        raise ValueError(f"{path}: {where} must hold finite numbers >= 0, got {value}")
    return tuple(float(x) for x in value)


def _excerpt(value, limit=60) -> str:
    """``repr(value)``, cut to about ``limit`` characters (error messages stay one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _discount_of(a, D):
    """D(a): D1 for a == 1, D2 for a == 2, D3+ for a >= 3, 0 for a == 0 (a table lookup)."""
    return np.array([0.0, *D])[np.minimum(np.asarray(a), 3).astype(np.int64, copy=False)]


def _discount_mass(a, D):
    return float(_discount_of(a, D).sum())


_ARPA_COUNT = re.compile(r"ngram\s+([0-9]{1,19})\s*=\s*([0-9]{1,19})")
_ARPA_SECTION = re.compile(r"\\([0-9]{1,19})-grams:")


def _parse_arpa(text, path, size):
    """The n-gram lines of an ARPA file and the counts its header announces:
    ``({k: [(line number, log10 p, (w1, ..., wk), log10 backoff)]}, {k: count})``.

    Checks, each a ``ValueError`` naming ``path`` and the line: a ``\\data\\`` header whose
    counts are for orders 1..K, each given once, and fit in the file's ``size`` bytes (an
    order-k line takes at least 2k + 1: a number and k words, each one character, k + 1
    separators less one, a newline) -- checked before any n-gram line is read; sections only for
    announced orders, each once; every line ``logprob w1..wk [backoff]`` with a finite log10
    probability <= 0 and a finite back-off; the ``\\end\\`` marker; as many lines per order as
    announced."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) and lines[i].strip() != "\\data\\":
        i += 1
    if i == len(lines):
        raise ValueError(f"{path} is not an ARPA file (no \\data\\ header)")
    counts = {}
    i += 1
    while i < len(lines) and lines[i].strip().startswith("ngram "):
        m = _ARPA_COUNT.fullmatch(lines[i].strip())
        if not m:
            raise ValueError(f"{path}:{i + 1}: malformed count line {_excerpt(lines[i])} (expected "
                             f"'ngram K=COUNT', numbers of at most 19 digits)")
        k, n = int(m.group(1)), int(m.group(2))
        if k in counts:
            raise ValueError(f"{path}:{i + 1}: the number of {k}-grams is announced twice")
        counts[k] = n
        i += 1
    if not counts or sorted(counts) != list(range(1, len(counts) + 1)):
        raise ValueError(f"{path}: the \\data\\ section must list ngram 1=..., 2=..., in order, got "
                         f"the orders {_excerpt(sorted(counts))}")
    need = sum(n * (2 * k + 1) for k, n in counts.items())
    if need > size:
        announced = ", ".join(f"{n:,} {k}-grams" for k, n in counts.items())
        raise ValueError(f"{path}: \\data\\ announces {announced}, which need at least {need:,} "
                         f"bytes; the file has {size:,} (truncated, or the counts are wrong)")
    sections, current = {}, None
    for j in range(i, len(lines)):
        line = lines[j].strip()
        if not line:
            continue
        if line.startswith("\\") and line.endswith("-grams:"):
            m = _ARPA_SECTION.fullmatch(line)
            current = int(m.group(1)) if m else None
            if current not in counts:
                raise ValueError(f"{path}:{j + 1}: section {_excerpt(line)} is not one of the "
                                 f"\\1-grams: .. \\{len(counts)}-grams: the header announces")
            if current in sections:
                raise ValueError(f"{path}:{j + 1}: a second \\{current}-grams: section")
            sections[current] = []
            continue
        if line == "\\end\\":
            current = "end"
            break
        if current is None:
            raise ValueError(f"{path}:{j + 1}: unexpected line {_excerpt(line)} before the first "
                             f"\\k-grams: section")
        k = current
        fields = line.split("\t") if "\t" in line else None
        if fields is None or len(fields) not in (2, 3):
            parts = line.split()
            if len(parts) not in (k + 1, k + 2):
                raise ValueError(f"{path}:{j + 1}: expected 'logprob w1..w{k} [backoff]', got "
                                 f"{_excerpt(line)}")
            fields = [parts[0], parts[1:k + 1]] + parts[k + 1:]
        else:
            fields[1] = fields[1].split()
            if len(fields[1]) != k:
                raise ValueError(f"{path}:{j + 1}: a line of the \\{k}-grams section must hold {k} "
                                 f"word(s), got {len(fields[1])}: {_excerpt(line)}")
        try:
            logp = float(fields[0])
            back = float(fields[2]) if len(fields) == 3 else 0.0
        except ValueError:
            raise ValueError(f"{path}:{j + 1}: not a number in {_excerpt(line)}") from None
        if not (math.isfinite(logp) and logp <= 1e-6 and math.isfinite(back)):   # 1e-6: rounding
            raise ValueError(f"{path}:{j + 1}: a log10 probability must be finite and <= 0 and a "
                             f"back-off finite, got {_excerpt(line)}")
        sections[k].append((j + 1, logp, tuple(fields[1]), back))
    if current != "end":
        raise ValueError(f"{path}: truncated ARPA file (no \\end\\)")
    for k, n in counts.items():
        if len(sections.get(k, [])) != n:
            raise ValueError(f"{path}: \\data\\ announces {n} {k}-grams, the file holds "
                             f"{len(sections.get(k, []))}")
    return sections, counts
