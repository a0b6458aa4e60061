"""Known-source tests for MarkovSource (exact entropy rate, convergence of long samples) and the
TranslationTask pairs."""

import datetime
import math

import numpy as np
import pytest

from scratchlm.data import synthetic
from scratchlm.data.synthetic import MarkovSource, TranslationTask


def h2(p):
    """Binary entropy in bits."""
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


# ------------------------------------------------------------------ exact values
def test_entropy_rate_two_state_closed_form():
    p, q = 0.1, 0.3                       # P(0->1) = p, P(1->0) = q
    src = MarkovSource.from_transition([[1 - p, p], [q, 1 - q]])
    pi = np.array([q, p]) / (p + q)       # closed-form stationary law (0.75, 0.25)
    np.testing.assert_allclose(src.stationary_distribution(), pi, rtol=0, atol=1e-14)
    want = 0.75 * h2(0.1) + 0.25 * h2(0.3)        # = 0.5720694 bits
    assert src.entropy_rate() == pytest.approx(want, rel=1e-13)
    assert src.entropy_rate(base=math.e) == pytest.approx(want * math.log(2), rel=1e-13)
    assert src.entropy_rate(base=2) == pytest.approx(0.5720694, abs=1e-6)


def test_entropy_rate_random_two_state_source():
    src = MarkovSource(2, order=1, concentration=1.0, seed=3)
    P = src.transition
    p, q = P[0, 1], P[1, 0]
    pi = np.array([q, p]) / (p + q)
    np.testing.assert_allclose(src.stationary_distribution(), pi, atol=1e-14)
    assert src.entropy_rate() == pytest.approx(pi[0] * h2(p) + pi[1] * h2(q), rel=1e-12)


def test_transition_rows_and_shapes():
    for n, k in [(5, 1), (3, 2), (4, 0), (2, 3)]:
        src = MarkovSource(n, order=k, seed=0)
        assert src.transition.shape == (n ** k, n)
        assert src.transition.dtype == np.float64
        np.testing.assert_allclose(src.transition.sum(axis=1), 1.0, atol=1e-12)
        assert np.all(src.transition >= 0)
        pi = src.stationary_distribution()
        assert pi.shape == (n ** k,) and np.all(pi >= 0)
        assert pi.sum() == pytest.approx(1.0, abs=1e-12)
        if k:
            T = src.context_transition_matrix()
            np.testing.assert_allclose(pi @ T, pi, atol=1e-12)
            np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-12)


def test_order2_context_chain_structure():
    src = MarkovSource(3, order=2, seed=1)
    T = src.context_transition_matrix()
    # (a1, a2) -> (a2, b) with probability P[(a1, a2), b]
    for a1 in range(3):
        for a2 in range(3):
            for b in range(3):
                assert T[a1 * 3 + a2, a2 * 3 + b] == src.transition[a1 * 3 + a2, b]
    assert np.count_nonzero(T) == 27


def test_stationary_power_iteration_matches_dense_solve(monkeypatch):
    dense = MarkovSource(3, order=3, seed=7).stationary_distribution()
    monkeypatch.setattr(synthetic, "_DENSE_SOLVE_MAX", 4)
    iterative = MarkovSource(3, order=3, seed=7).stationary_distribution()
    np.testing.assert_allclose(iterative, dense, atol=1e-12)


def test_stationary_law_periodic_and_reducible():
    flip = MarkovSource.from_transition([[0.0, 1.0], [1.0, 0.0]], seed=0)
    np.testing.assert_allclose(flip.stationary_distribution(), [0.5, 0.5])
    assert flip.entropy_rate() == 0.0
    x = flip.sample(10)
    assert np.all(np.diff(x) != 0)                        # alternates
    stuck = MarkovSource.from_transition(np.eye(2))
    with pytest.raises(ValueError, match="stationary"):
        stuck.stationary_distribution()


def test_order0_is_iid():
    src = MarkovSource(4, order=0, seed=2)
    P = src.transition[0]
    assert src.entropy_rate(base=math.e) == pytest.approx(-(P * np.log(P)).sum(), rel=1e-12)
    x = src.sample(100_000)
    np.testing.assert_allclose(np.bincount(x, minlength=4) / x.size, P,
                               atol=5 * np.sqrt(0.25 / x.size))


# ------------------------------------------------------------------ long samples
def _empirical_transitions(src, x):
    ctx = src.context_ids(x)
    counts = np.zeros_like(src.transition)
    np.add.at(counts, (ctx, x[src.order:]), 1)
    return counts


@pytest.mark.parametrize("n,k,seed", [(4, 1, 0), (3, 2, 1)])
def test_empirical_transitions_converge(n, k, seed):
    src = MarkovSource(n, order=k, concentration=1.0, seed=seed)
    x = src.sample(200_000)
    assert x.dtype == np.int64 and x.shape == (200_000,)
    assert x.min() >= 0 and x.max() < n
    counts = _empirical_transitions(src, x)
    N = counts.sum(axis=1, keepdims=True)
    assert np.all(N > 1000)
    P = src.transition
    freq = counts / N
    se = np.sqrt(P * (1 - P) / N)
    assert np.all(np.abs(freq - P) <= 5 * se + 1e-9), np.max(np.abs(freq - P) / (se + 1e-12))
    # contexts visited in proportion to the stationary law (loose: the samples are dependent)
    np.testing.assert_allclose(N[:, 0] / N.sum(), src.stationary_distribution(), atol=0.01)


@pytest.mark.parametrize("n,k,seed", [(5, 1, 3), (4, 2, 4)])
def test_sample_cross_entropy_tends_to_entropy_rate(n, k, seed):
    src = MarkovSource(n, order=k, concentration=0.5, seed=seed)
    x = src.sample(200_000)
    # per-symbol code length under the TRUE law, computed here without the class's helper
    L = x.size
    ctx = np.zeros(L - k, dtype=np.int64)
    for i in range(k):
        ctx = ctx * n + x[i:L - k + i]
    nll_bits = -np.log2(src.transition[ctx, x[k:]])
    se = nll_bits.std() / np.sqrt(nll_bits.size)
    H = src.entropy_rate()
    assert abs(nll_bits.mean() - H) < max(6 * se, 1e-3), (nll_bits.mean(), H, se)
    assert src.cross_entropy(x) == pytest.approx(nll_bits.mean(), rel=1e-12)
    assert src.cross_entropy(x, base=math.e) == pytest.approx(nll_bits.mean() * math.log(2),
                                                              rel=1e-12)


def test_sample_starts_from_stationary_law():
    src = MarkovSource.from_transition([[0.9, 0.1], [0.3, 0.7]], seed=0)    # pi = (.75, .25)
    rng = np.random.default_rng(1)
    first = np.array([src.sample(1, rng=rng)[0] for _ in range(4000)])
    assert abs((first == 0).mean() - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 4000)


def test_context_ids_and_sample_head():
    src = MarkovSource(3, order=2, seed=0)
    x = np.array([2, 1, 0, 2, 2])
    np.testing.assert_array_equal(src.context_ids(x), [2 * 3 + 1, 1 * 3 + 0, 0 * 3 + 2])
    assert src.sample(0).shape == (0,)
    assert src.sample(1).shape == (1,)
    assert src.sample(2).shape == (2,)


# ------------------------------------------------------------------ determinism
def test_seeded_determinism():
    a, b = MarkovSource(6, order=2, seed=11), MarkovSource(6, order=2, seed=11)
    np.testing.assert_array_equal(a.transition, b.transition)
    np.testing.assert_array_equal(a.sample(500), b.sample(500))
    np.testing.assert_array_equal(a.sample(100, rng=5), b.sample(100, rng=5))
    np.testing.assert_array_equal(a.sample(100, rng=np.random.default_rng(9)),
                                  b.sample(100, rng=np.random.default_rng(9)))
    assert not np.array_equal(a.sample(100), a.sample(100))    # the own generator advances
    c = MarkovSource(6, order=2, seed=12)
    assert not np.array_equal(a.transition, c.transition)
    g1, g2 = np.random.default_rng(4), np.random.default_rng(4)
    np.testing.assert_array_equal(MarkovSource(3, seed=g1).transition,
                                  MarkovSource(3, seed=g2).transition)


def test_transition_is_read_only():
    src = MarkovSource(3, seed=0)
    with pytest.raises(ValueError):
        src.transition[0, 0] = 1.0


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(vocab_size=0), ValueError, "vocab_size"),
    (dict(vocab_size=2.0), TypeError, "vocab_size"),
    (dict(vocab_size=3, order=-1), ValueError, "order"),
    (dict(vocab_size=3, concentration=0.0), ValueError, "concentration"),
    (dict(vocab_size=3, concentration=float("nan")), ValueError, "concentration"),
    (dict(vocab_size=3, concentration="1"), TypeError, "concentration"),
    (dict(vocab_size=1001, order=2), ValueError, "vocab_size\\*\\*order"),
    (dict(vocab_size=1000, order=2), ValueError, "transition matrix size"),
    (dict(vocab_size=3, seed="x"), TypeError, "rng"),
])
def test_markov_source_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MarkovSource(**kwargs)


def test_markov_method_errors():
    src = MarkovSource(3, order=2, seed=0)
    for base in (1, 0, -2, float("inf")):
        with pytest.raises(ValueError, match="base"):
            src.entropy_rate(base=base)
    with pytest.raises(ValueError, match="length"):
        src.sample(-1)
    with pytest.raises(TypeError, match="length"):
        src.sample(3.0)
    with pytest.raises(ValueError, match="sequence must lie in"):
        src.cross_entropy(np.array([0, 1, 3]))
    with pytest.raises(TypeError, match="sequence"):
        src.cross_entropy(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="longer than order"):
        src.cross_entropy(np.array([0, 1]))
    with pytest.raises(ValueError, match="sum to 1"):
        MarkovSource.from_transition([[0.5, 0.4], [0.5, 0.5]])
    with pytest.raises(ValueError, match="non-negative"):
        MarkovSource.from_transition([[1.5, -0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="rows"):
        MarkovSource.from_transition(np.full((3, 2), 0.5), order=1)


# ====================================================================== translation task
@pytest.mark.parametrize("kind", ["reverse", "sort", "dates"])
def test_translation_task_splits(kind):
    task = TranslationTask(kind, n_train=600, n_val=100, n_test=80, seed=1)
    assert (len(task.train), len(task.val), len(task.test)) == (600, 100, 80)
    srcs = [[s for s, _ in split] for split in (task.train, task.val, task.test)]
    assert sum(map(len, map(set, srcs))) == 780
    assert len(set().union(*map(set, srcs))) == 780               # disjoint, no duplicates
    for split in (task.train, task.val, task.test):
        for s, t in split:
            assert task.target(s) == t
            assert set(s) <= set(task.chars) and set(t) <= set(task.chars)
    assert task.chars == "".join(sorted(set(task.chars)))


def test_translation_task_targets():
    rev = TranslationTask("reverse", n_train=50, n_val=5, n_test=5, min_len=2, max_len=4,
                          alphabet="xyz", seed=0)
    assert rev.target("abc") == "cba"
    assert all(2 <= len(s) <= 4 and set(s) <= set("xyz") for s, _ in rev.train)
    assert rev.alphabet == "xyz" and rev.chars == "xyz"
    srt = TranslationTask("sort", n_train=50, n_val=5, n_test=5, seed=0)
    assert srt.target("dcbad") == "abcdd"
    dates = TranslationTask("dates", n_train=10, n_val=0, n_test=0)
    assert dates.target("2023-04-05") == "2023-04-05"
    assert dates.target("5 April 2023") == "2023-04-05"
    assert dates.target("April 5, 2023") == "2023-04-05"
    assert dates.target("29 February 2000") == "2000-02-29"
    for bad in ("31 February 2023", "Foo 5, 2023", "2023/04/05", "5 april 2023", "2023-13-01"):
        with pytest.raises(ValueError, match="src"):
            dates.target(bad)
    with pytest.raises(TypeError, match="src"):
        dates.target(20230405)


def test_dates_distribution_and_formats():
    task = TranslationTask("dates", n_train=3000, n_val=300, n_test=300, seed=2)
    pairs = task.train + task.val + task.test
    isos = [t for _, t in pairs]
    assert len(set(isos)) == len(isos)                 # each date used once across splits
    lo, hi = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)
    days = np.array([(datetime.date.fromisoformat(t) - lo).days for t in isos])
    assert days.min() >= 0 and days.max() <= (hi - lo).days
    assert abs(days.mean() / (hi - lo).days - 0.5) < 0.03     # roughly uniform
    kinds = {"iso": 0, "dmy": 0, "mdy": 0}
    for s, _ in pairs:
        kinds["iso" if s[4:5] == "-" else "mdy" if "," in s else "dmy"] += 1
    assert all(v > 900 for v in kinds.values()), kinds


def test_translation_task_determinism():
    a = TranslationTask("sort", n_train=200, n_val=20, n_test=20, seed=5)
    b = TranslationTask("sort", n_train=200, n_val=20, n_test=20, seed=5)
    c = TranslationTask("sort", n_train=200, n_val=20, n_test=20, seed=6)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    assert a.train != c.train
    d1 = TranslationTask("dates", n_train=100, n_val=10, n_test=10, seed=5)
    d2 = TranslationTask("dates", n_train=100, n_val=10, n_test=10, seed=5)
    assert d1.test == d2.test


def test_translation_task_small_space_enumerates():
    # 5 + 25 = 30 strings of length 1..2 over 'abcde': asking for all of them must work
    task = TranslationTask("reverse", n_train=20, n_val=5, n_test=5, min_len=1, max_len=2,
                           alphabet="abcde", seed=0)
    srcs = {s for s, _ in task.train + task.val + task.test}
    assert len(srcs) == 30


def test_exact_match():
    assert TranslationTask.exact_match(["ab", "c", "d"], ["ab", "x", "d"]) == pytest.approx(2 / 3)
    task = TranslationTask("reverse", n_train=20, n_val=10, n_test=0, seed=0)
    targets = [t for _, t in task.val]
    assert task.exact_match(targets, targets) == 1.0
    assert task.exact_match([task.target(s) for s, _ in task.val], targets) == 1.0
    with pytest.raises(ValueError, match="same length"):
        task.exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        task.exact_match([], [])
    with pytest.raises(TypeError, match="predictions"):
        task.exact_match("abc", ["a", "b", "c"])


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(kind="copy"), ValueError, "kind"),
    (dict(n_train=0), ValueError, "n_train"),
    (dict(n_val=-1), ValueError, "n_val"),
    (dict(min_len=0), ValueError, "min_len"),
    (dict(min_len=5, max_len=4), ValueError, "max_len"),
    (dict(alphabet=""), ValueError, "alphabet"),
    (dict(alphabet="abca"), ValueError, "repeat"),
    (dict(alphabet=["a", "b"]), TypeError, "alphabet"),
    (dict(n_train=100, min_len=1, max_len=1, alphabet="ab"), ValueError, "exceeds"),
    (dict(kind="dates", n_train=40_000), ValueError, "36525"),
])
def test_translation_task_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TranslationTask(**kwargs)
