"""NGramLM: proper distributions, modified Kneser-Ney against an independent implementation of
Chen & Goodman's formulas and a hand-worked example, KenLM parity, ARPA round trips, known-source
convergence, sampling, saving and bad input."""

import math
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, strategies as st

from scratchlm.data import MarkovSource
from scratchlm.models import MarkovChain, NGramLM

SMOOTHINGS = ["kneser_ney", "witten_bell", "add_k", "mle"]


def corpus(seed, n=200, vocab=12, max_len=25):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, rng.integers(0, max_len)).tolist() for _ in range(n)]


def fit(order, smoothing, seqs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # fallback discounts on tiny data
        return NGramLM(order, smoothing, **kw).fit(seqs)


# ------------------------------------------------------------------------------------------------
# every distribution is a distribution
# ------------------------------------------------------------------------------------------------
@given(seed=st.integers(0, 10_000), order=st.integers(1, 5), smoothing=st.sampled_from(SMOOTHINGS),
       context=st.lists(st.integers(0, 15), max_size=6), bos=st.booleans())
def test_next_token_distribution_sums_to_one(seed, order, smoothing, context, bos):
    m = fit(order, smoothing, corpus(seed, n=40))
    p = m.next_token_probs(context, bos=bos)
    assert p.shape == (len(m.vocab) + 2,)
    assert not np.isnan(p).any() and (p >= 0).all()
    assert abs(p.sum() - 1) < 1e-12
    if smoothing != "mle":
        assert (p > 0).all()                               # smoothed: nothing impossible, <unk> included


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_vectorised_scoring_equals_the_chain_rule(smoothing, order):
    m = fit(order, smoothing, corpus(1))
    for seq in corpus(2, n=5, vocab=14):                    # ids 12, 13 unseen -> <unk>
        steps, history = 0.0, []
        for t in seq + [NGramLM.EOS]:
            steps += m.logprob(t, history, bos=True)
            history.append(t)
        assert m.score(seq) == pytest.approx(steps, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# modified Kneser-Ney, by hand and by an independent implementation
# ------------------------------------------------------------------------------------------------
def test_kneser_ney_hand_worked_bigram_example():
    """Sentences 'a b', 'a c', 'b' (a=0, b=1, c=2), order 2, discounts (0.5, 1, 1.5).

    Padded: <s> a b </s> | <s> a c </s> | <s> b </s>.  Continuation counts of the unigrams
    (distinct left neighbours): a 1, b 2 (a, <s>), c 1, </s> 2 (b, c), <unk> 0; total 6.
    Unigram discount mass 0.5 + 1 + 0.5 + 1 = 3 -> gamma 1/2; |V| = 5 (a b c </s> <unk>):
        P(a) = 0.5/6 + 0.5/5 = 0.18333..,  P(b) = 1/6 + 0.1 = 0.26666..,  P(<unk>) = 0.1
    Bigram context a: followers b (1), c (1); gamma(a) = (0.5 + 0.5)/2 = 0.5
        P(b | a) = 0.5/2 + 0.5 * P(b) = 0.38333..,  P(</s> | a) = 0.5 * P(</s>) = 0.13333..
    Context <s>: a (2), b (1): gamma = (1 + 0.5)/3 = 0.5;  P(a | <s>) = 1/3 + 0.5 * P(a) = 0.425
    Context b: </s> (2): gamma = 1/2;  P(</s> | b) = 1/2 + 0.5 * P(</s>) = 0.63333..
    P('a b') = 0.425 * 0.38333.. * 0.63333.. = 0.1031805..
    """
    m = NGramLM(2, discounts=(0.5, 1.0, 1.5)).fit([[0, 1], [0, 2], [1]])
    uni = m.next_token_probs([])
    np.testing.assert_allclose(uni, [0.5 / 6 + 0.1, 1 / 6 + 0.1, 0.5 / 6 + 0.1, 1 / 6 + 0.1, 0.1], rtol=1e-14)
    assert math.exp(m.logprob(1, [0])) == pytest.approx(0.25 + 0.5 * (1 / 6 + 0.1), rel=1e-14)
    assert math.exp(m.logprob(NGramLM.EOS, [0])) == pytest.approx(0.5 * (1 / 6 + 0.1), rel=1e-14)
    assert math.exp(m.logprob(0, [], bos=True)) == pytest.approx(0.425, rel=1e-14)
    expected = 0.425 * (0.25 + 0.5 * (1 / 6 + 0.1)) * (0.5 + 0.5 * (1 / 6 + 0.1))
    assert math.exp(m.score([0, 1])) == pytest.approx(expected, rel=1e-14)


def test_discounts_follow_chen_goodman():
    """n1..n4 = 10, 5, 3, 2 -> Y = 1/2, D1 = 1/2, D2 = 1.1, D3+ = 5/3."""
    m = NGramLM(2)
    used = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [7])
    np.testing.assert_allclose(m._discounts_for(2, used), (0.5, 1.1, 5 / 3), rtol=1e-14)


def test_unestimable_discounts_fall_back_with_a_warning():
    with pytest.warns(RuntimeWarning, match="cannot be estimated.*fixed discounts"):
        m = NGramLM(3).fit([[1, 2, 3]])
    assert m.discounts[3] == (0.5, 1.0, 1.5)
    assert np.isfinite(m.perplexity([[1, 2, 3], [4]]))


def reference_kneser_ney(sentences, N, discounts=None):
    """Interpolated modified Kneser-Ney straight from Chen & Goodman (1998), with dicts."""
    BOS, EOS, UNK = "<s>", "</s>", "<unk>"
    padded = [[BOS] + list(s) + [EOS] for s in sentences]
    counts = {k: Counter() for k in range(1, N + 1)}
    for s in padded:
        for k in range(1, N + 1):
            for i in range(len(s) - k + 1):
                counts[k][tuple(s[i:i + k])] += 1
    adjusted = {N: dict(counts[N])}
    for k in range(N - 1, 0, -1):                  # distinct left extensions, raw for <s>-initial
        left = {}
        for g in counts[k + 1]:
            left.setdefault(g[1:], set()).add(g[0])
        adjusted[k] = {g: (c if g[0] == BOS else len(left.get(g, ()))) for g, c in counts[k].items()}
    words = sorted({w for s in sentences for w in s}) + [EOS, UNK]

    def disc(k):
        if discounts is not None:
            return discounts
        vals = [v for g, v in adjusted[k].items() if not (k == 1 and g[0] == BOS)]
        n = [sum(1 for v in vals if v == r) for r in (1, 2, 3, 4)]
        if min(n) == 0:
            return (0.5, 1.0, 1.5)                     # the documented fallback
        y = n[0] / (n[0] + 2 * n[1])
        d = (1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2])
        return d if all(0 < x <= r for r, x in zip((1, 2, 3), d)) else (0.5, 1.0, 1.5)

    def d_of(c, d):
        return 0.0 if c == 0 else d[min(c, 3) - 1]

    def prob(w, h):
        k = len(h) + 1
        d = disc(k)
        if k == 1:
            table = {g[0]: v for g, v in adjusted[1].items() if g[0] != BOS}
            tot = sum(table.values())
            gamma = sum(d_of(v, d) for v in table.values()) / tot
            c = table.get(w, 0)
            return max(c - d_of(c, d), 0) / tot + gamma / len(words)
        followers = {g[-1]: v for g, v in adjusted[k].items() if g[:-1] == h}
        if not followers:
            return prob(w, h[1:])
        tot = sum(followers.values())
        gamma = sum(d_of(v, d) for v in followers.values()) / tot
        c = followers.get(w, 0)
        return max(c - d_of(c, d), 0) / tot + gamma * prob(w, h[1:])

    return prob, words, disc


@pytest.mark.parametrize("order", [2, 3, 4])
def test_kneser_ney_matches_the_reference_implementation(order):
    rng = np.random.default_rng(2)
    src = MarkovSource(30, order=1, concentration=0.3, seed=2)
    sents = [src.sample(int(rng.integers(1, 40)), rng=rng).tolist() for _ in range(300)]
    m = fit(order, "kneser_ney", sents)           # higher orders estimable; unigrams fall back
    ref, words, disc = reference_kneser_ney(sents, order)
    assert any(m.discounts[k] != (0.5, 1.0, 1.5) for k in m.discounts)   # estimates were exercised
    for k in range(1, order + 1):
        np.testing.assert_allclose(m.discounts[k], disc(k), rtol=1e-12)
    contexts = [(), (3,), ("<s>",), ("<s>", 2), (1, 4), (5, 5, 0), ("<s>", 0, 1), (99,), (7, 99)]
    for h in contexts:
        h = tuple(h[-(order - 1):]) if order > 1 else ()
        bos = bool(h) and h[0] == "<s>"
        ctx = [t for t in h if t != "<s>"]
        ours = m.next_token_probs(ctx, bos=bos)
        href = tuple("<unk>" if (t != "<s>" and t not in words) else t for t in h)
        theirs = np.array([ref(w, href) for w in words])
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, err_msg=f"context {h}")


# ------------------------------------------------------------------------------------------------
# ARPA: KenLM reads ours; we read ours back
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", ["kneser_ney", "witten_bell"])
@pytest.mark.parametrize("order", [2, 3, 6])
def test_kenlm_reads_our_arpa_and_agrees(tmp_path, smoothing, order):
    kenlm = pytest.importorskip("kenlm")
    m = fit(order, smoothing, corpus(3, n=400, vocab=30))
    path = tmp_path / "model.arpa"
    m.to_arpa(path)
    k = kenlm.Model(str(path))
    test = corpus(4, n=50, vocab=35)                       # ids 30..34: <unk> for both
    ours = [m.score(s) / math.log(10) for s in test]
    theirs = [k.score(" ".join(map(str, s)), bos=True, eos=True) for s in test]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-4)   # KenLM stores float32
    n_tokens = sum(len(s) + 1 for s in test)
    ours_ppl = m.perplexity(test)
    theirs_ppl = 10 ** (-sum(theirs) / n_tokens)
    assert ours_ppl == pytest.approx(theirs_ppl, rel=1e-5)


@pytest.mark.parametrize("smoothing", ["kneser_ney", "witten_bell", "mle"])
@pytest.mark.parametrize("order", [1, 3, 8])
def test_arpa_roundtrip(tmp_path, smoothing, order):
    m = fit(order, smoothing, corpus(5))
    path = tmp_path / "m.arpa"
    m.to_arpa(path)
    back = NGramLM.from_arpa(path)
    for s in corpus(6, n=20, vocab=14):
        assert back.score(s) == pytest.approx(m.score(s), rel=1e-7, abs=1e-7)
    for ctx in ([], [1], [1, 2, 3]):
        np.testing.assert_allclose(back.next_token_probs(ctx), m.next_token_probs(ctx), rtol=1e-7, atol=1e-12)


def test_arpa_with_word_spellings(tmp_path):
    m = fit(3, "kneser_ney", [[0, 1, 2], [2, 1, 0], [1, 1]])
    words = {0: "zero", 1: "one", 2: "two"}
    path = tmp_path / "w.arpa"
    m.to_arpa(path, words=words)
    assert "one two" in path.read_text()
    back = NGramLM.from_arpa(path, word_to_id={v: k for k, v in words.items()})
    assert back.score([0, 1, 2]) == pytest.approx(m.score([0, 1, 2]), rel=1e-7)
    with pytest.raises(ValueError, match="whitespace"):
        m.to_arpa(path, words={0: "a b", 1: "c", 2: "d"})
    with pytest.raises(ValueError, match="add_k smoothing has no ARPA"):
        fit(2, "add_k", [[0, 1]]).to_arpa(path)


@pytest.mark.parametrize("mutate,match", [
    (lambda t: t.replace("\\data\\", "\\dat\\"), "no \\\\data\\\\ header"),
    (lambda t: t.replace("\\end\\", ""), "truncated"),
    (lambda t: t.replace("ngram 2=", "ngram 2=9"), "announces"),
    (lambda t: t.replace("\t1 2", "\tx 2", 1), "not among the unigrams"),
    (lambda t: "\n".join(line for line in t.splitlines() if "<unk>" not in line), "announces|<unk>"),
    (lambda t: t.replace("ngram 1=", "ngram 1=x"), "malformed"),
])
def test_corrupt_arpa_files_are_refused(tmp_path, mutate, match):
    m = fit(2, "kneser_ney", corpus(7, n=30, vocab=5))
    path = tmp_path / "m.arpa"
    m.to_arpa(path)
    path.write_text(mutate(path.read_text()))
    with pytest.raises(ValueError, match=match):
        NGramLM.from_arpa(path)


# ------------------------------------------------------------------------------------------------
# learning known sources
# ------------------------------------------------------------------------------------------------
def test_markov_chain_recovers_the_transition_matrix_and_routes_agree():
    from scratchlm.kernels.ngram import count_transitions
    src = MarkovSource(5, order=1, concentration=1.0, seed=0)
    seq = src.sample(200_000, rng=1)
    chain = MarkovChain(5).train(seq)
    np.testing.assert_allclose(chain.transition_matrix, src.transition, atol=0.01)
    np.testing.assert_array_equal(count_transitions.numba(seq, 5), count_transitions.numpy(seq, 5))
    assert chain.entropy_rate() == pytest.approx(src.entropy_rate(), rel=0.01)
    # the bigram MLE of NGramLM is the same estimate
    ng = NGramLM(2, "mle").fit([seq])
    for a in range(5):
        p = ng.next_token_probs([a])[:5]
        np.testing.assert_allclose(p / p.sum(), chain.transition_matrix[a], atol=1e-4)


def test_markov_chain_unseen_state_has_a_defined_row_and_samples():
    chain = MarkovChain(4).train([0, 1, 0, 1, 2])
    assert np.allclose(chain.transition_matrix[3], 0.25)              # never a source: uniform
    assert np.allclose(chain.transition_matrix.sum(axis=1), 1)
    smooth = MarkovChain(4, smoothing=1.0).train([0, 1, 0, 1, 2])
    assert smooth.transition_matrix[0, 1] == pytest.approx(3 / 6)
    a = chain.generate(0, 50, rng=3)
    assert a[0] == 0 and len(a) == 50 and np.array_equal(a, chain.generate(0, 50, rng=3))
    assert set(np.diff(a[a != 3][:2])) <= {1, -1, 0, 2, -2}
    assert chain.log_likelihood([0, 1, 0]) == pytest.approx(math.log(1.0) + math.log(0.5))
    with pytest.raises(ValueError, match="sequence must lie in"):
        chain.train([0, 4])
    with pytest.raises(ValueError, match="at least 2 states"):
        chain.train([1])


@pytest.mark.parametrize("order", [1, 2])
def test_cross_entropy_approaches_the_entropy_rate(order):
    src = MarkovSource(6, order=order, concentration=0.5, seed=order)
    train = src.sample(400_000, rng=10)
    held = src.sample(100_000, rng=11)
    sents = lambda x: np.split(x, np.arange(2000, x.size, 2000))   # noqa: E731
    m = fit(order + 1, "kneser_ney", sents(train))     # 6 symbols: unigram discounts fall back
    h_true = src.entropy_rate(base=2)
    h_model = m.cross_entropy(sents(held), base=2)
    assert h_true <= h_model + 0.01                                 # no model beats the source ...
    assert h_model - h_true < 0.02 * h_true + 0.01                  # ... and this one comes close


# ------------------------------------------------------------------------------------------------
# MLE, sampling, saving
# ------------------------------------------------------------------------------------------------
def test_mle_says_plainly_when_perplexity_is_infinite():
    m = NGramLM(2, "mle").fit([[0, 1, 2]])
    assert np.isfinite(m.perplexity([[0, 1, 2]]))
    with pytest.warns(RuntimeWarning, match="probability 0.*infinite"):
        assert m.perplexity([[0, 2]]) == math.inf
    for smoothing in ("kneser_ney", "witten_bell", "add_k"):
        assert np.isfinite(fit(2, smoothing, [[0, 1, 2]]).perplexity([[0, 2, 99]]))


def test_unknown_ids_score_as_unk():
    m = fit(3, "kneser_ney", corpus(8))
    assert m.score([1000]) == pytest.approx(m.score([2000]))
    assert np.isfinite(m.logprob(12345, [1, 2]))
    assert m.logprob(12345, [1, 2]) == pytest.approx(math.log(m.next_token_probs([1, 2])[m.unk_index]))


def test_generate_is_seeded_and_respects_top_k():
    m = fit(3, "kneser_ney", corpus(9))
    a = m.generate(200, seed=5)
    assert np.array_equal(a, m.generate(200, seed=5))
    assert set(a.tolist()) <= set(m.vocab.tolist()) | {NGramLM.EOS}
    greedy = m.generate(30, top_k=1, seed=1)
    assert np.array_equal(greedy, m.generate(30, top_k=1, seed=2))      # top-1 is deterministic
    first = greedy[0]
    p = m.next_token_probs([], bos=True)
    p[m.unk_index] = 0
    assert (first == NGramLM.EOS and p.argmax() == m.eos_index) or first == m.vocab[p.argmax()]
    cold = m.generate(300, temperature=0.3, seed=4)
    hot = m.generate(300, temperature=3.0, seed=4)
    assert len(set(cold.tolist())) <= len(set(hot.tolist()))


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_and_load(tmp_path, smoothing, suffix):
    m = fit(4, smoothing, corpus(10))
    path = tmp_path / f"ng{suffix}"
    m.save(path, note="hello")
    back, meta = NGramLM.load(path)
    assert meta["note"] == "hello" and meta["config"]["smoothing"] == smoothing
    for s in corpus(11, n=10, vocab=14):
        assert back.score(s) == m.score(s)
    np.testing.assert_array_equal(back.generate(50, seed=1), m.generate(50, seed=1))


def test_high_orders_and_int64_counts():
    seq = [list(range(5)) * 40] * 30
    m = fit(8, "kneser_ney", seq)
    assert len(m._levels) == 8 and m._levels[0]["counts"].dtype == np.int64
    assert np.isfinite(m.perplexity(seq[:2]))
    assert m.perplexity(seq[:2]) < 1.2                  # a deterministic cycle is near-certain


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,exc,match", [
    (lambda: NGramLM(0), ValueError, "order must be >= 1"),
    (lambda: NGramLM(2.5), TypeError, "order must be an int"),
    (lambda: NGramLM(2, "good_turing"), ValueError, "smoothing must be one of"),
    (lambda: NGramLM(2, "add_k", k=0), ValueError, "k must be > 0"),
    (lambda: NGramLM(2, discounts=(0.5, 3, 1)), ValueError, "discounts must be"),
    (lambda: NGramLM(2, discounts=(0, 0, 0)), ValueError, "zero discount"),
    (lambda: NGramLM(2, "arpa"), ValueError, "smoothing must be one of"),
    (lambda: NGramLM(2).fit([]), ValueError, "sequences is empty"),
    (lambda: NGramLM(2).fit([[0, -1]]), ValueError, r"sequences\[0\] holds a negative token id"),
    (lambda: NGramLM(2).fit([[0.5, 1.0]]), TypeError, "integer token ids"),
    (lambda: NGramLM(2).fit("some text"), TypeError, "encode it with a tokenizer"),
    (lambda: NGramLM(2).fit(np.array([1, 2, 3])), TypeError, "wrap a single sequence"),
    (lambda: NGramLM(2).fit([[[1, 2]]]), ValueError, "must be 1-D"),
    (lambda: NGramLM(2).perplexity([[1]]), RuntimeError, "not fitted"),
    (lambda: fit(2, "kneser_ney", [[1, 2]]).perplexity([]), ValueError, "nothing to score"),
    (lambda: fit(2, "kneser_ney", [[1, 2]]).generate(0), ValueError, "n must be >= 1"),
    (lambda: fit(2, "kneser_ney", [[1, 2]]).generate(5, temperature=0), ValueError, "temperature"),
    (lambda: fit(2, "kneser_ney", [[1, 2]]).logprob(-5), ValueError, "token must lie in"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_zero_length_sequences_are_empty_sentences():
    m = fit(2, "kneser_ney", [[], [1, 2], []])
    # an empty sentence is '<s> </s>': one prediction, P(</s> | <s>)
    assert m.score([]) == pytest.approx(m.logprob(NGramLM.EOS, [], bos=True))
    assert np.isfinite(m.perplexity([[], [1]]))


@pytest.mark.parametrize("smoothing", ["kneser_ney", "witten_bell"])
def test_numba_and_numpy_counting_build_the_same_model(smoothing):
    import scratchlm
    seqs = corpus(12, n=300, vocab=40) + [[5000, 7], []]
    with scratchlm.use_backend("numpy"):
        a = fit(4, smoothing, seqs)
    with scratchlm.use_backend("numba"):
        b = fit(4, smoothing, seqs)
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(u, v, err_msg=k)
    test = corpus(13, n=50, vocab=45)
    with scratchlm.use_backend("numpy"):                           # bisection ...
        lp_numpy = a._sentence_logps(test)[0]
    lp_numba = a._sentence_logps(test)[0]                          # ... and the hash table
    np.testing.assert_array_equal(lp_numpy, lp_numba)


def test_id_table_and_bisection_map_ids_alike():
    m = fit(3, "kneser_ney", corpus(14, n=100, vocab=30))
    few = [[1, 2, 3, 99, 29]]                                       # <= 1000 ids: bisection
    many = few + corpus(15, n=100, vocab=35)                        # > 1000 ids: the direct table
    assert sum(len(q) for q in many) > 1000
    assert m._index_table(np.zeros(10)) is None and m._index_table(np.zeros(2000)) is not None
    np.testing.assert_array_equal(m._sentence_logps(few)[0], m._sentence_logps(many)[0][:6])
    sparse = fit(2, "kneser_ney", [[0, 1, 2], [10_000_000, 1]])      # too sparse for a table
    assert sparse._index_table(np.zeros(5000)) is None
    assert np.isfinite(sparse.perplexity([[10_000_000, 5] * 600]))


@pytest.mark.parametrize("dense", [True, False])
def test_counting_kernels_match_their_twins(dense):
    from scratchlm.kernels import ngram as K
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 12, 200)
    ids = rng.integers(0, 50, int(lengths.sum()))
    table = np.append(np.arange(50), 51)
    s1, sid1 = K.pad_stream.numba(ids, table, lengths, 52, 50, True, True)
    s2, sid2 = K.pad_stream.numpy(ids, table, lengths, 52, 50, True, True)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(sid1, sid2)
    pos = rng.integers(0, 40, s1.size)
    for k in (2, 3):
        a, b = K.window_keys.numba(pos, s1, sid1, k, 53), K.window_keys.numpy(pos, s1, sid1, k, 53)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    starts, key = K.window_keys.numpy(pos, s1, sid1, 2, 53)
    n_prefix, base = (40, 53) if dense else (200_000, 53)         # range > 4M: the radix sort
    key = key if dense else rng.integers(0, n_prefix, key.size) * base + key % base
    for u, v in zip(K.unique_pairs.numba(key, n_prefix, base), K.unique_pairs.numpy(key, n_prefix, base)):
        np.testing.assert_array_equal(u, v)
    big = rng.integers(0, 10**8, 500) * 53 + rng.integers(0, 53, 500)    # past 2^32: three digits
    for u, v in zip(K.unique_pairs.numba(big, 10**8, 53), K.unique_pairs.numpy(big, 10**8, 53)):
        np.testing.assert_array_equal(u, v)
    keys, inv, _ = K.unique_pairs.numpy(key, n_prefix, base)
    for u, v in zip(K.link_level.numba(inv, starts, pos, s1, keys.size, s1.size - 1),
                    K.link_level.numpy(inv, starts, pos, s1, keys.size, s1.size - 1)):
        np.testing.assert_array_equal(u, v)
    queries = np.concatenate([keys[::3], keys[::5] + 1, [-1, 10**12]])
    tab = K.build_key_table.numba(keys)
    np.testing.assert_array_equal(K.find_keys.numba(keys, tab, queries),
                                  K.find_keys.numpy(keys, K.build_key_table.numpy(keys), queries))


def test_model_fitted_on_empty_sentences_scores_unk():
    m = fit(2, "kneser_ney", [[], []])
    assert m.vocab.size == 0 and np.isfinite(m.perplexity([[5], []]))


def _edit_first_unigram(text, edit):
    """Apply ``edit(fields)`` to the first unigram line that spells a token id."""
    lines = text.splitlines()
    i = lines.index("\\1-grams:") + 1
    while lines[i].split("\t")[1] in ("<s>", "</s>", "<unk>"):
        i += 1
    lines[i] = "\t".join(edit(lines[i].split("\t")))
    return "\n".join(lines)


@pytest.mark.parametrize("mutate,match", [
    (lambda t: _edit_first_unigram(t, lambda f: ["nan"] + f[1:]), "must be finite"),
    (lambda t: _edit_first_unigram(t, lambda f: ["0.5"] + f[1:]), "must be finite and <= 0"),
    (lambda t: _edit_first_unigram(t, lambda f: [f[0], "-" + f[1]] + f[2:]), "not a decimal token id"),
    (lambda t: _duplicate_first_bigram(t), "appears twice"),
])
def test_malformed_arpa_values_are_refused(tmp_path, mutate, match):
    m = fit(2, "kneser_ney", corpus(16, n=40, vocab=6))
    path = tmp_path / "m.arpa"
    m.to_arpa(path)
    path.write_text(mutate(path.read_text()))
    with pytest.raises(ValueError, match=match):
        NGramLM.from_arpa(path)


def _duplicate_first_bigram(text):
    lines = text.splitlines()
    i = lines.index("\\2-grams:") + 1
    lines.insert(i, lines[i])
    j = next(k for k, line in enumerate(lines) if line.startswith("ngram 2="))
    lines[j] = f"ngram 2={int(lines[j].split('=')[1]) + 1}"
    return "\n".join(lines)


def test_tampered_checkpoint_is_refused(tmp_path):
    from scratchlm.io import read_checkpoint, save_checkpoint
    m = fit(3, "kneser_ney", corpus(17))
    path = tmp_path / "m.npz"
    m.save(path)
    arrays, doc = read_checkpoint(path)
    keys = arrays["model/order2.keys"].copy()
    keys[[0, 1]] = keys[[1, 0]]

    class Fake:
        def state_dict(self):
            return {k[len("model/"):]: (keys if k == "model/order2.keys" else v) for k, v in arrays.items()}

        def generators(self):
            return iter(())
    Fake.__name__ = "NGramLM"
    save_checkpoint(path, Fake(), **doc["meta"])
    with pytest.raises(ValueError, match="sorted, distinct"):
        NGramLM.load(path)


def test_to_arpa_word_spellings_are_checked(tmp_path):
    m = fit(2, "kneser_ney", [[0, 1], [1, 0]])
    for words, match in [({0: "a"}, "no spelling"), ({0: "<s>", 1: "b"}, "not <s>"),
                         ({0: "a", 1: "a"}, "same way")]:
        with pytest.raises(ValueError, match=match):
            m.to_arpa(tmp_path / "x.arpa", words=words)


@pytest.mark.parametrize("bos", [True, False])
def test_scoring_kernel_twins_agree_and_never_carry_context_across_sentences(bos, monkeypatch):
    """backoff_logp: the one-pass Numba kernel (split at sentence starts over the threads) and
    the vectorised NumPy twin give the same log-probabilities, and each sentence is scored as if
    alone -- without <s>, the first token of a sentence backs off to the unigram, never to the
    end of the sentence before it."""
    import scratchlm
    from scratchlm.kernels import get_num_threads, ngram as K, set_num_threads
    m = fit(4, "kneser_ney", corpus(21, n=200, vocab=25))
    test = corpus(22, n=60, vocab=28)
    monkeypatch.setattr(K, "SPLIT_MIN_POSITIONS", 16)               # many parts, small stream
    saved = get_num_threads()
    try:
        for threads in (1, 3):
            set_num_threads(threads)
            numba_lp = m._sentence_logps(test, bos=bos)[0]
            with scratchlm.use_backend("numpy"):
                numpy_lp = m._sentence_logps(test, bos=bos)[0]
            np.testing.assert_allclose(numba_lp, numpy_lp, rtol=1e-14, atol=0)
    finally:
        set_num_threads(saved)
    alone = np.concatenate([m._sentence_logps([s], bos=bos)[0] for s in test])
    np.testing.assert_allclose(numba_lp, alone, rtol=1e-14, atol=0)
    for seq in test[:5]:
        steps, history = 0.0, []
        for t in seq + [NGramLM.EOS]:
            steps += m.logprob(t, history, bos=bos)
            history.append(t)
        assert m.score(seq, bos=bos) == pytest.approx(steps, abs=1e-12)


@pytest.mark.parametrize("n_prefix, base", [(1, 1), (16, 200), (5000, 200), (10**8, 53),
                                            (2**40, 64)])             # 0, 1, 2, 3 and 4 passes
@pytest.mark.parametrize("m", [0, 1, 3000])
def test_the_radix_unique_agrees_with_np_unique_at_every_number_of_passes(n_prefix, base, m):
    from scratchlm.kernels import ngram as K
    rng = np.random.default_rng(m + base)
    key = rng.integers(0, n_prefix, m, dtype=np.int64) * base + rng.integers(0, base, m)
    if m > 1:
        key[m // 2:] = key[: m - m // 2]                     # repeats, so counts above 1
    for u, v in zip(K.unique_pairs.numba(key, n_prefix, base),
                    K.unique_pairs.numpy(key, n_prefix, base)):
        assert u.dtype == v.dtype == np.int64
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("scale", [1, 10**6, 2**52])          # counts small to float64's edge
def test_the_kneser_ney_level_kernel_is_its_twin_bit_for_bit(scale):
    from scratchlm.kernels import ngram as K
    rng = np.random.default_rng(scale % 97)
    n_ctx, base = 60, 37
    keys = np.unique(rng.integers(0, n_ctx * base, 900))
    used = rng.integers(0, 9, keys.size) * scale // 8          # zeros, ones, twos and beyond
    used[:5] = [0, 1, 2, 3, 4]
    first = np.flatnonzero(np.diff(keys // base, prepend=-1))   # each context's first key
    used[first] = np.maximum(used[first], 1)                    # (fit's contexts all count)
    lower = rng.random(keys.size) ** 8                          # probabilities down to ~1e-20
    D = (0.53, 1.07, 1.61)
    for u, v in zip(K.kn_level_numba(keys, used, lower, base, n_ctx, D),
                    K.kn_level_numpy(keys, used, lower, base, n_ctx, D)):
        assert u.tobytes() == v.tobytes()
    p, gamma, denom = K.kn_level(keys, used, lower, base, n_ctx, D)
    assert np.all(gamma[denom == 0] == 0) and np.all(p >= 0)
    unsorted = keys.copy()
    unsorted[[1, -1]] = unsorted[[-1, 1]]
    unsorted[1] = n_ctx * base                                  # out of range, not at the end
    middle = keys.copy()
    middle[3] = -base * 1000                                     # negative, not first
    for bad, match in ((dict(keys=keys * 2), "context ids"), (dict(used=-used - 1), "counts"),
                       (dict(keys=unsorted), "context ids"), (dict(keys=middle), "context ids"),
                       (dict(base=0), "base must be >= 1"), (dict(base=-1), "base must be"),
                       (dict(lower=lower[:-1]), "must be"), (dict(used=used.astype(float)), "int64"),
                       (dict(keys=keys[None]), "must be")):
        args = dict(keys=keys, used=used, lower=lower, base=base, n_ctx=n_ctx) | bad
        with pytest.raises(ValueError, match=match):
            K.kn_level(args["keys"], args["used"], args["lower"], args["base"], args["n_ctx"], D)
    for not_int in (2.5, 10.9):                                 # no float base or size
        with pytest.raises(TypeError):
            K.kn_level(keys, used, lower, not_int, n_ctx, D)
        with pytest.raises(TypeError):
            K.kn_level(keys, used, lower, base, not_int, D)
