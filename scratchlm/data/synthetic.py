r"""Synthetic data with known answers: Markov sources with an exact entropy rate, and small
string-to-string translation tasks with an exact target function.

A model trained on a :class:`MarkovSource` sample can be scored against the source's exact
entropy rate: no model can have a lower expected per-symbol cross-entropy on fresh samples, so
``model_loss - source.entropy_rate(base=math.e)`` is the model's excess loss in nats.
:class:`TranslationTask` gives reverse / sort / date-normalisation pairs whose correct output is
computable (:meth:`TranslationTask.target`), for testing encoder-decoder models by exact match.
"""

from __future__ import annotations

import datetime
from bisect import bisect_right
import math
import re

import numpy as np

from .._checks import index_array, integer, make_rng, positive_int

__all__ = ["MarkovSource", "TranslationTask"]

MAX_CONTEXTS = 1_000_000          # vocab_size ** order
MAX_TRANSITION_ENTRIES = 10_000_000   # vocab_size ** (order + 1), i.e. 80 MB of float64
_DENSE_SOLVE_MAX = 2048           # contexts up to which the stationary law is a dense solve


def _base(base) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating)):
        raise TypeError(f"base must be a number, got {type(base).__name__}")
    base = float(base)
    if not (base > 0 and np.isfinite(base)) or base == 1.0:
        raise ValueError(f"base must be a finite number > 0 and != 1, got {base}")
    return base


class MarkovSource:
    r"""A random stationary :math:`k`-th order Markov source over ``vocab_size`` symbols.

    For every context :math:`c = (a_1, \dots, a_k)` of the ``order`` = :math:`k` previous symbols
    (there are :math:`n^k` of them, :math:`n` = ``vocab_size``) the next-symbol law
    :math:`P(\cdot \mid c)` is drawn from a symmetric Dirichlet(``concentration``): small
    concentrations give peaked, low-entropy rows, large ones nearly uniform rows.

    Context :math:`(a_1, \dots, a_k)` has index :math:`\sum_i a_i n^{k-i}` (:math:`a_1` most
    significant), and ``transition[c, b]`` :math:`= P(b \mid c)`, shape ``(n**k, n)``.
    ``order=0`` is an i.i.d. source with the single (empty) context.

    **Stationary law.** The chain over contexts moves :math:`(a_1..a_k) \to (a_2..a_k, b)` with
    probability :math:`P(b \mid a_1..a_k)`; its transition matrix :math:`T` is
    :math:`n^k \times n^k` with :math:`n` non-zeros per row. The stationary law solves

    .. math:: \pi T = \pi, \qquad \textstyle\sum_c \pi(c) = 1,

    computed by a dense linear solve (one equation of :math:`(T^\top - I)\pi = 0` replaced by the
    normalisation) for up to 2048 contexts, and beyond that by power iteration with :math:`T`
    applied in :math:`O(n^{k+1})` (until the L1 change is below 1e-14, at most 10 000 steps;
    seconds for ~10^6 slowly mixing contexts). The law is computed once and cached.
    The result is checked for non-negativity and for :math:`\|\pi T - \pi\|_1 < 10^{-9}`.

    **Entropy rate** (Cover & Thomas, *Elements of Information Theory*, 2nd ed., ch. 4, Thm 4.2.4
    for a stationary Markov chain, applied to the chain over contexts):

    .. math::

        H = -\sum_c \pi(c) \sum_b P(b \mid c) \log P(b \mid c),

    with :math:`0 \log 0 = 0`. By the Shannon-McMillan-Breiman theorem the per-symbol
    cross-entropy of a long sample under the true law,
    :math:`-\frac{1}{L}\sum_t \log P(x_t \mid x_{t-k..t-1})`, converges to :math:`H`
    (:meth:`cross_entropy` computes it).

    Parameters: ``vocab_size`` >= 1, ``order`` >= 0 with ``vocab_size**order`` <= 1e6 and
    ``vocab_size**(order+1)`` <= 1e7 (``ValueError`` otherwise), ``concentration`` > 0, ``seed``
    an int, a ``np.random.Generator`` or None. The transition rows are drawn from that generator,
    which :meth:`sample` then keeps using when it is given no ``rng``.
    """

    def __init__(self, vocab_size: int, order: int = 1, concentration: float = 0.5, seed=None):
        n = positive_int(vocab_size, "vocab_size")
        k = positive_int(order, "order", minimum=0)
        if isinstance(concentration, bool) or not isinstance(
                concentration, (int, float, np.integer, np.floating)):
            raise TypeError(f"concentration must be a number, got {type(concentration).__name__}")
        concentration = float(concentration)
        if not (concentration > 0 and np.isfinite(concentration)):
            raise ValueError(f"concentration must be a finite number > 0, got {concentration}")
        self._check_size(n, k)
        rng = make_rng(seed)
        num_contexts = n ** k
        P = rng.dirichlet(np.full(n, concentration), size=num_contexts)   # (C, n)
        P /= P.sum(axis=1, keepdims=True)
        self._setup(P, k, rng)
        self.concentration = concentration

    @classmethod
    def from_transition(cls, transition, order: int = 1, seed=None) -> "MarkovSource":
        r"""A source with a given ``transition`` matrix, shape ``(n**order, n)``, rows
        non-negative and summing to 1 (within 1e-9; they are renormalised). ``seed`` seeds
        :meth:`sample` when it is called without ``rng``."""
        k = positive_int(order, "order", minimum=0)
        P = np.array(transition, dtype=np.float64)
        if P.ndim != 2 or P.shape[1] < 1:
            raise ValueError(f"transition must be a 2-D array (contexts, vocab_size), got shape "
                             f"{P.shape}")
        n = P.shape[1]
        cls._check_size(n, k)
        if P.shape[0] != n ** k:
            raise ValueError(f"transition must have vocab_size**order = {n}**{k} = {n ** k} rows "
                             f"for order={k}, got shape {P.shape}")
        if not np.all(np.isfinite(P)) or P.min() < 0:
            raise ValueError("transition must be finite and non-negative")
        sums = P.sum(axis=1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-9)
        if bad.size:
            raise ValueError(f"transition rows must sum to 1, got row {int(bad[0])} summing to "
                             f"{sums[bad[0]]!r}")
        self = cls.__new__(cls)
        self._setup(P / sums[:, None], k, make_rng(seed))
        self.concentration = None
        return self

    @staticmethod
    def _check_size(n: int, k: int) -> None:
        if n ** k > MAX_CONTEXTS:
            raise ValueError(f"vocab_size**order must be <= {MAX_CONTEXTS:.0e} contexts, got "
                             f"{n}**{k} = {n ** k}")
        if n ** (k + 1) > MAX_TRANSITION_ENTRIES:
            raise ValueError(f"vocab_size**(order+1) (the transition matrix size) must be <= "
                             f"{MAX_TRANSITION_ENTRIES:.0e}, got {n}**{k + 1} = {n ** (k + 1)}")

    def _setup(self, P: np.ndarray, k: int, rng: np.random.Generator) -> None:
        P.setflags(write=False)          # the cached stationary law depends on it
        self.transition = P
        self.vocab_size = P.shape[1]
        self.order = k
        self.num_contexts = P.shape[0]
        self._rng = rng
        self._pi = None
        self._cdf = None

    def __repr__(self) -> str:
        return (f"MarkovSource(vocab_size={self.vocab_size}, order={self.order}, "
                f"concentration={self.concentration})")

    # ------------------------------------------------------------------ stationary law
    def _step_law(self, pi: np.ndarray) -> np.ndarray:
        """pi T: the law of the next context, in O(n^(k+1)) without forming T."""
        n, k = self.vocab_size, self.order
        if k == 0:
            return pi.copy()
        M = pi[:, None] * self.transition                    # (C, n): mass of (ctx, b)
        return M.reshape(n, n ** (k - 1), n).sum(axis=0).reshape(-1)   # drop a_1, append b

    def context_transition_matrix(self) -> np.ndarray:
        r"""The dense chain over contexts, :math:`T[c, c'] = P(b \mid c)` when
        :math:`c' = (a_2..a_k, b)`, shape ``(n**k, n**k)`` (for inspection; small sources)."""
        n, k, C = self.vocab_size, self.order, self.num_contexts
        if C > _DENSE_SOLVE_MAX:
            raise ValueError(f"the dense context chain has {C}**2 entries; it is only built for "
                             f"at most {_DENSE_SOLVE_MAX} contexts")
        T = np.zeros((C, C))
        if k == 0:
            nxt = np.zeros((1, n), dtype=np.int64)                       # () -> ()
        else:                                                            # (a1..ak) -> (a2..ak, b)
            nxt = (np.arange(C) % n ** (k - 1))[:, None] * n + np.arange(n)   # (C, n)
        np.add.at(T, (np.repeat(np.arange(C), n), nxt.reshape(-1)), self.transition.reshape(-1))
        return T

    def stationary_distribution(self) -> np.ndarray:
        r"""The stationary law :math:`\pi` over the ``n**order`` contexts (float64, sums to 1).

        Raises ``ValueError`` when it is not unique (a reducible context chain, possible only
        when some transition probabilities are exactly zero)."""
        if self._pi is not None:
            return self._pi.copy()
        C = self.num_contexts
        if C == 1:
            pi = np.ones(1)
        elif C <= _DENSE_SOLVE_MAX:
            A = self.context_transition_matrix().T - np.eye(C)
            A[-1, :] = 1.0
            rhs = np.zeros(C)
            rhs[-1] = 1.0
            try:
                pi = np.linalg.solve(A, rhs)
            except np.linalg.LinAlgError:
                raise ValueError("the context chain has no unique stationary distribution (it "
                                 "is reducible); use a larger concentration") from None
        else:
            pi = np.full(C, 1.0 / C)
            for _ in range(10_000):
                new = self._step_law(pi)
                new /= new.sum()
                delta = np.abs(new - pi).sum()
                pi = new
                if delta < 1e-14:
                    break
        if not np.all(np.isfinite(pi)) or pi.min() < -1e-10:
            raise ValueError("the context chain has no unique non-negative stationary "
                             "distribution (it is reducible); use a larger concentration")
        pi = np.clip(pi, 0.0, None)
        pi /= pi.sum()
        residual = np.abs(self._step_law(pi) - pi).sum()
        if residual > 1e-9:
            raise ValueError(f"stationary distribution did not converge (|pi T - pi|_1 = "
                             f"{residual:.2e}); the context chain may be reducible or periodic")
        pi.setflags(write=False)
        self._pi = pi
        return pi.copy()

    def entropy_rate(self, base: float = 2) -> float:
        r""":math:`H = -\sum_c \pi(c) \sum_b P(b \mid c) \log_{\text{base}} P(b \mid c)`:
        bits per symbol by default, nats with ``base=math.e``."""
        base = _base(base)
        P = self.transition
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(P > 0, P * np.log(P), 0.0)
        h_rows = -plogp.sum(axis=1)                          # (C,) nats
        return float(self.stationary_distribution() @ h_rows) / math.log(base)

    # ------------------------------------------------------------------ sampling / scoring
    def sample(self, length: int, rng=None) -> np.ndarray:
        r"""A stationary sample of ``length`` symbols (int64, shape ``(length,)``).

        The first ``order`` symbols are a context drawn from :meth:`stationary_distribution`;
        each later symbol is drawn from ``transition[context]``. ``rng`` (a Generator or an int
        seed) defaults to the source's own generator, so ``MarkovSource(..., seed=s).sample(L)``
        is reproducible.
        """
        length = positive_int(length, "length", minimum=0)
        gen = self._rng if rng is None else make_rng(rng)
        n, k = self.vocab_size, self.order
        out = np.empty(length, dtype=np.int64)
        if length == 0:
            return out
        ctx = int(gen.choice(self.num_contexts, p=self.stationary_distribution())) if k else 0
        digits = [(ctx // n ** (k - 1 - i)) % n for i in range(k)]
        head = min(k, length)
        out[:head] = digits[:head]
        steps = length - head
        if steps == 0:
            return out
        u = gen.random(steps)                            # inverse-CDF sampling, u in [0, 1)
        rows = self._cdf_rows()
        if k == 0:
            out[head:] = np.searchsorted(rows[0], u, side="right")
            return out
        mod = n ** (k - 1)
        for t in range(steps):
            b = bisect_right(rows[ctx], u[t])            # first b with cdf[ctx, b] > u
            out[head + t] = b
            ctx = (ctx % mod) * n + b                    # (a1..ak) -> (a2..ak, b)
        return out

    def _cdf_rows(self):
        """Row-wise CDFs ending at exactly 1.0 (so ``bisect_right`` of u < 1 is < n and never
        lands on a zero-probability symbol); Python lists when small, for fast bisection."""
        if self._cdf is None:
            cdf = np.cumsum(self.transition, axis=1)
            cdf /= cdf[:, -1:]
            cdf[:, -1] = 1.0
            self._cdf = cdf.tolist() if cdf.size <= 1_000_000 else cdf
        return self._cdf

    def context_ids(self, sequence) -> np.ndarray:
        r"""Context index of every position ``t >= order`` of ``sequence``:
        :math:`c_t = \sum_{i=1}^{k} x_{t-i}\, n^{i-1}` (shape ``(len - order,)``)."""
        x = self._sequence(sequence)
        n, k = self.vocab_size, self.order
        m = len(x) - k
        ctx = np.zeros(max(m, 0), dtype=np.int64)
        for i in range(k):                       # x[t-k+i] has weight n^(k-1-i)
            ctx = ctx * n + x[i:i + m]
        return ctx

    def cross_entropy(self, sequence, base: float = 2) -> float:
        r"""Per-symbol cross-entropy of ``sequence`` under the true law,
        :math:`-\frac{1}{L-k} \sum_{t=k}^{L-1} \log P(x_t \mid x_{t-k..t-1})`
        (the first ``order`` symbols have no full context and are skipped). Tends to
        :meth:`entropy_rate` for long stationary samples."""
        base = _base(base)
        x = self._sequence(sequence)
        if len(x) <= self.order:
            raise ValueError(f"sequence must be longer than order={self.order}, got length "
                             f"{len(x)}")
        p = self.transition[self.context_ids(x), x[self.order:]]
        with np.errstate(divide="ignore"):
            return float(-np.log(p).mean() / math.log(base))

    def _sequence(self, sequence) -> np.ndarray:
        return index_array(sequence, "sequence", self.vocab_size, ndim=1)


# ====================================================================== translation tasks
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]          # fixed English names, never the locale's
_MONTH_NUM = {m: i + 1 for i, m in enumerate(_MONTHS)}
_DATE_START = datetime.date(1950, 1, 1)
_DATE_END = datetime.date(2049, 12, 31)
_NUM_DAYS = (_DATE_END - _DATE_START).days + 1           # 36525
_ISO_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DMY_RE = re.compile(r"(\d{1,2}) ([A-Z][a-z]+) (\d{4})")
_MDY_RE = re.compile(r"([A-Z][a-z]+) (\d{1,2}), (\d{4})")
DATE_FORMATS = ("iso", "day month year", "month day, year")


def _format_date(d: datetime.date, fmt: int) -> str:
    if fmt == 0:
        return d.isoformat()                             # 2023-04-05
    if fmt == 1:
        return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"    # 5 April 2023
    return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"       # April 5, 2023


def _parse_date(src: str) -> datetime.date:
    m = _ISO_RE.fullmatch(src)
    if m:
        y, mo, d = int(m[1]), int(m[2]), int(m[3])
    else:
        m = _DMY_RE.fullmatch(src)
        if m:
            y, mo, d = int(m[3]), _MONTH_NUM.get(m[2]), int(m[1])
        else:
            m = _MDY_RE.fullmatch(src)
            if not m:
                raise ValueError(f"src must be a date like '2023-04-05', '5 April 2023' or "
                                 f"'April 5, 2023', got {src!r}")
            y, mo, d = int(m[3]), _MONTH_NUM.get(m[1]), int(m[2])
        if mo is None:
            raise ValueError(f"src has an unknown month name (expected English, e.g. 'April'), "
                             f"got {src!r}")
    try:
        return datetime.date(y, mo, d)
    except ValueError as exc:
        raise ValueError(f"src is not a valid calendar date ({exc}), got {src!r}") from None


class TranslationTask:
    r"""Seeded string-to-string pairs with an exact target function, split into disjoint
    ``train`` / ``val`` / ``test`` lists of ``(src, tgt)``.

    ``kind``:

    * ``'reverse'``: :math:`\text{tgt} = \text{src}[::-1]`;
    * ``'sort'``: tgt is src's characters in sorted (code-point) order;
    * ``'dates'``: src is a date between 1950-01-01 and 2049-12-31 (drawn uniformly, without
      replacement) written in one of three formats chosen uniformly -- ``'2023-04-05'``,
      ``'5 April 2023'``, ``'April 5, 2023'`` -- and tgt its ISO form ``'YYYY-MM-DD'``.
      ``min_len``, ``max_len`` and ``alphabet`` are ignored.

    For ``'reverse'``/``'sort'`` a src has a length drawn uniformly from
    ``[min_len, max_len]`` and characters drawn uniformly from ``alphabet``. Every src is
    distinct, so no src appears in two splits (for ``'dates'`` no *date* appears twice either,
    whatever its format). The splits depend only on the arguments: ``seed`` fixes them.

    Attributes: ``train``, ``val``, ``test``; ``chars`` (sorted string of every character that
    can appear in a src or tgt -- the vocabulary of a character tokenizer) and ``alphabet``
    (the ``alphabet`` argument, or ``chars`` for ``'dates'``).
    """

    KINDS = ("reverse", "sort", "dates")

    def __init__(self, kind: str = "reverse", n_train: int = 5000, n_val: int = 500,
                 n_test: int = 500, min_len: int = 3, max_len: int = 10,
                 alphabet: str = "abcdefghij", seed=0):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        n_train = positive_int(n_train, "n_train")
        n_val = positive_int(n_val, "n_val", minimum=0)
        n_test = positive_int(n_test, "n_test", minimum=0)
        total = n_train + n_val + n_test
        rng = make_rng(seed)
        if kind == "dates":
            if total > _NUM_DAYS:
                raise ValueError(f"n_train + n_val + n_test must be <= {_NUM_DAYS} (the number of "
                                 f"days from 1950-01-01 to 2049-12-31), got {total}")
            days = rng.choice(_NUM_DAYS, size=total, replace=False)
            fmts = rng.integers(0, 3, size=total)
            srcs = [_format_date(_DATE_START + datetime.timedelta(days=int(d)), int(f))
                    for d, f in zip(days, fmts)]
            self.chars = "".join(sorted(set("0123456789-, ") | set("".join(_MONTHS))))
            self.alphabet = self.chars
            self.min_len = self.max_len = None
        else:
            min_len = positive_int(min_len, "min_len")
            max_len = integer(max_len, "max_len")
            if max_len < min_len:
                raise ValueError(f"max_len must be >= min_len={min_len}, got {max_len}")
            if not isinstance(alphabet, str):
                raise TypeError(f"alphabet must be a str, got {type(alphabet).__name__}")
            if not alphabet:
                raise ValueError("alphabet must not be empty")
            if len(set(alphabet)) != len(alphabet):
                dup = next(c for i, c in enumerate(alphabet) if c in alphabet[:i])
                raise ValueError(f"alphabet must not repeat characters, got {alphabet!r} "
                                 f"({dup!r} repeated)")
            A = len(alphabet)
            space = sum(A ** L for L in range(min_len, max_len + 1))
            if total > space:
                raise ValueError(f"n_train + n_val + n_test = {total} exceeds the {space} distinct "
                                 f"strings of length {min_len}..{max_len} over {A} characters")
            srcs = self._draw_strings(rng, total, min_len, max_len, alphabet, space)
            self.alphabet = alphabet
            self.chars = "".join(sorted(alphabet))
            self.min_len, self.max_len = min_len, max_len
        pairs = [(s, self.target(s)) for s in srcs]
        self.train = pairs[:n_train]
        self.val = pairs[n_train:n_train + n_val]
        self.test = pairs[n_train + n_val:]

    @staticmethod
    def _draw_strings(rng, total, min_len, max_len, alphabet, space):
        chars = np.array(list(alphabet))
        if 2 * total >= space:
            # small space: enumerate it all and take a random subset (rejection would crawl)
            import itertools
            every = ["".join(p) for L in range(min_len, max_len + 1)
                     for p in itertools.product(alphabet, repeat=L)]
            pick = rng.choice(len(every), size=total, replace=False)
            return [every[i] for i in pick]
        seen: dict[str, None] = {}
        while len(seen) < total:
            m = max(2 * (total - len(seen)), 16)
            lengths = rng.integers(min_len, max_len + 1, size=m)
            letters = chars[rng.integers(0, len(alphabet), size=(m, max_len))]
            for L, row in zip(lengths, letters):
                s = "".join(row[:L])
                if s not in seen:
                    seen[s] = None
                    if len(seen) == total:
                        break
        return list(seen)

    def target(self, src: str) -> str:
        """The correct output for any ``src`` (``ValueError`` for an unparseable date)."""
        if not isinstance(src, str):
            raise TypeError(f"src must be a str, got {type(src).__name__}")
        if self.kind == "reverse":
            return src[::-1]
        if self.kind == "sort":
            return "".join(sorted(src))
        return _parse_date(src).isoformat()

    @staticmethod
    def exact_match(predictions, targets) -> float:
        """Fraction of positions where ``predictions[i] == targets[i]`` exactly (``ValueError``
        for different lengths or empty inputs)."""
        for name, seq in (("predictions", predictions), ("targets", targets)):
            if isinstance(seq, str) or not hasattr(seq, "__len__"):
                raise TypeError(f"{name} must be a sequence of strings, got "
                                f"{type(seq).__name__}")
        if len(predictions) != len(targets):
            raise ValueError(f"predictions and targets must have the same length, got "
                             f"{len(predictions)} and {len(targets)}")
        if len(targets) == 0:
            raise ValueError("predictions and targets must not be empty")
        return sum(p == t for p, t in zip(predictions, targets)) / len(targets)

    def __repr__(self) -> str:
        return (f"TranslationTask(kind={self.kind!r}, train={len(self.train)}, "
                f"val={len(self.val)}, test={len(self.test)})")
