"""word2vec and GloVe: the losses gradient-checked, the kernels against the losses and against
their NumPy twins (bit for bit, over the whole floating-point range), the sampling distributions
against their formulas, the vectors learning a planted structure, files and the command line."""

import math

import numpy as np
import pytest

from scratchlm import functional as F
from scratchlm.cli import main
from scratchlm.data import Vocab, word_sentences
from scratchlm.gradcheck import check_function
from scratchlm.kernels import glove as KG
from scratchlm.kernels import use_backend
from scratchlm.kernels import word2vec as K
from scratchlm.models import GloVe, GloVeConfig, KeyedVectors, Word2Vec, Word2VecConfig
from scratchlm.models.word2vec import huffman_tree

from conftest import same_state


LETTERS = "abcdefghij"
TOPICS = {t: {t + x for x in LETTERS} for t in "ab"}


def _planted(n_sentences=600, seed=0):
    """Sentences drawn from two topics with their own words (aa..aj, ba..bj) and shared
    function words: a word's neighbours should be its own topic's words."""
    rng = np.random.default_rng(seed)
    common = ["the", "of", "and", "to"]
    out = []
    for _ in range(n_sentences):
        topic = "ab"[rng.integers(2)]
        words = [topic + LETTERS[rng.integers(10)] if rng.random() < 0.7 else common[rng.integers(4)]
                 for _ in range(rng.integers(8, 20))]
        out.append(words)
    return out


SENTS = _planted()


# ------------------------------------------------------------------------------------------------
# the losses: gradient checks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("C,K_,masked", [(1, 4, False), (4, 3, True)])
def test_word2vec_loss_gradient_check(C, K_, masked):
    rng = np.random.default_rng(1)
    B, V, Vo, D = 5, 9, 7, 6
    syn0, syn1 = rng.standard_normal((V, D)), rng.standard_normal((Vo, D))
    context, targets = rng.integers(0, V, (B, C)), rng.integers(0, Vo, (B, K_))
    labels = rng.integers(0, 2, (B, K_))
    cm = tm = None
    if masked:
        cm = rng.random((B, C)) < 0.6
        cm[:, 0] = True
        tm = rng.random((B, K_)) < 0.7

    def forward(a, b):
        return F.word2vec_forward(a, b, context, targets, labels, cm, tm)

    def backward(d, cache):
        return F.word2vec_backward(d, cache)[:2]

    report = check_function(forward, backward, syn0, syn1)
    assert report.ok, report


def test_word2vec_loss_equals_its_definition():
    rng = np.random.default_rng(2)
    syn0, syn1 = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    context, targets = np.array([[1, 2], [3, 3]]), np.array([[0, 5, 4], [2, 1, 1]])
    labels = np.array([[1, 0, 0], [1, 0, 0]])
    loss, _ = F.word2vec_forward(syn0, syn1, context, targets, labels)
    sig = lambda x: 1 / (1 + math.exp(-x))
    want = 0.0
    for b in range(2):
        h = syn0[context[b]].mean(axis=0)
        for k in range(3):
            s = h @ syn1[targets[b, k]]
            want -= math.log(sig(s) if labels[b, k] else sig(-s))
    assert loss == pytest.approx(want, rel=1e-12)


def test_glove_loss_gradient_check_and_definition():
    rng = np.random.default_rng(3)
    V, D = 7, 4
    W, C = rng.standard_normal((V, D)), rng.standard_normal((V, D))
    b, c = rng.standard_normal(V), rng.standard_normal(V)
    rows, cols = rng.integers(0, V, 12), rng.integers(0, V, 12)
    x = rng.random(12) * 300 + 0.1                    # both sides of x_max = 100

    def forward(*p):
        return F.glove_forward(*p, rows, cols, x, 100.0, 0.75)

    def backward(d, cache):
        return F.glove_backward(d, cache)[:4]

    report = check_function(forward, backward, W, C, b, c)
    assert report.ok, report
    f = np.minimum(1.0, (x / 100.0) ** 0.75)
    diff = np.sum(W[rows] * C[cols], axis=1) + b[rows] + c[cols] - np.log(x)
    assert forward(W, C, b, c)[0] == pytest.approx(0.5 * np.sum(f * diff ** 2), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# the kernel is SGD on that loss
# ------------------------------------------------------------------------------------------------
class _Replay:
    """The kernel's random stream replayed (no subsampling): a reach per centre word, then the
    noise words of each prediction."""

    def __init__(self, seed, prob, alias):
        self.rand, self.prob, self.alias = K._Stream(seed), prob, alias

    def reach(self, window):
        return window - (self.rand.next() >> 33) % window

    def noise(self, negative):
        out = []
        for _ in range(negative):
            x = self.rand.uniform() * self.prob.size
            i = int(x)
            out.append(i if x - i < self.prob[i] else int(self.alias[i]))
        return out


@pytest.mark.parametrize("sg", [True, False])
def test_the_kernel_takes_sgd_steps_on_the_loss(sg):
    """A three-word sentence, window 1: the kernel's tables equal SGD steps on
    word2vec_forward's gradients, one prediction after another (CBOW's context words take the
    whole input error: |C| times the mean's gradient, as word2vec.c)."""
    rng = np.random.default_rng(4)
    V, D, neg, alpha = 40, 6, 3, 0.05
    counts = np.arange(V, 0, -1) * 10
    prob, alias = K.alias_table(counts ** 0.75)
    words = np.array([5, 17, 9], np.int32)
    seed = 7
    syn0, syn1 = rng.standard_normal((V, D)) * 0.3, rng.standard_normal((V, D)) * 0.3
    a0, a1 = syn0.copy(), syn1.copy()
    K.train_job(a0, a1, np.zeros((1, D)), words, np.array([0, 3]), np.ones(V), prob, alias,
                np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int8), np.zeros(1, np.int32),
                sg, 1, neg, False, alpha, np.uint64(seed), False)
    replay = _Replay(seed, prob, alias)
    for i in range(3):
        assert replay.reach(1) == 1
        w = int(words[i])
        ctx = [int(words[j]) for j in (i - 1, i + 1) if 0 <= j < 3]
        for group in ([[c] for c in ctx] if sg else [ctx]):
            noise = replay.noise(neg)
            assert len(set(noise)) == neg          # a repeated target would break the identity
            targets = [w] + [t for t in noise if t != w]
            labels = [[1] + [0] * (len(targets) - 1)]
            _, cache = F.word2vec_forward(syn0, syn1, [group], [targets], labels)
            d0, d1, *_ = F.word2vec_backward(1.0, cache)
            syn0 = syn0 - alpha * d0 * len(group)
            syn1 = syn1 - alpha * d1
    np.testing.assert_allclose(a0, syn0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(a1, syn1, rtol=0, atol=1e-13)


# ------------------------------------------------------------------------------------------------
# Numba against the NumPy twin: the same tables, bit for bit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sg,hs,negative", [(True, False, 5), (False, False, 5), (True, True, 0),
                                            (False, True, 2)])
def test_word2vec_numba_equals_numpy(dtype, sg, hs, negative):
    cfg = Word2VecConfig(vector_size=11, window=3, min_count=2, sg=sg, hs=hs, negative=negative,
                         epochs=2, sample=0.01, batch_words=300)
    sents = SENTS[:60]
    a, b = (Word2Vec.build(sents, cfg, dtype=dtype) for _ in range(2))
    ha = a.train(sents, workers=1)
    with use_backend("numpy"):
        hb = b.train(sents)
    assert same_state(a.state_dict(), b.state_dict())
    assert ha["loss"] == hb["loss"] and ha["trained"] == hb["trained"]
    assert a.vectors.data.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_glove_numba_equals_numpy(dtype):
    sents = SENTS[:60]
    cfg = GloVeConfig(vector_size=9, window=4, min_count=2, epochs=2, batch_entries=200)
    a, b = (GloVe.build(sents, cfg, dtype=dtype) for _ in range(2))
    ha = a.train(sents, workers=1)
    with use_backend("numpy"):
        hb = b.train(sents)
    assert same_state(a.state_dict(), b.state_dict()) and ha["cost"] == hb["cost"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e20, 3e38])
def test_both_routes_agree_over_the_whole_float_range(dtype, scale):
    """Huge tables overflow the dot products to inf and then NaN; tiny ones underflow into the
    subnormals: both routes must still produce the same bits (NaN where NaN)."""
    big = np.finfo(dtype).max
    scale = min(scale, float(big))
    rng = np.random.default_rng(5)
    V, D = 12, 10
    tables = [(np.clip(rng.standard_normal((V, D)), -1, 1) * scale).astype(dtype)
              for _ in range(2)]
    words = rng.integers(0, V, 40).astype(np.int32)
    starts = np.array([0, 15, 40])
    prob, alias = K.alias_table(np.arange(1, V + 1) ** 0.75)
    points, codes, lens = huffman_tree(np.arange(V, 0, -1))
    results = []
    for fn in (K.train_job.numba, K.train_job.numpy):
        s0, s1 = tables[0].copy(), tables[1].copy()
        s2 = tables[1][:V - 1].copy()
        with np.errstate(all="ignore"):
            r = fn(s0, s1, s2, words, starts, np.full(V, 0.8), prob, alias, points, codes, lens,
                   True, 3, 2, True, 0.025, np.uint64(3), True)
        results.append((r, s0, s1, s2))
    (ra, *ta), (rb, *tb) = results
    assert ra[:2] == rb[:2] and (ra[2] == rb[2] or (math.isnan(ra[2]) and math.isnan(rb[2])))
    for x, y in zip(ta, tb):
        np.testing.assert_array_equal(x, y)
    W, C = (tables[0].copy(), tables[1].copy())
    order = rng.permutation(V)
    out = []
    for fn in (KG.glove_epoch.numba, KG.glove_epoch.numpy):
        t = [W.copy(), C.copy(), W[:, 0].copy(), C[:, 1].copy(), np.ones_like(W), np.ones_like(C),
             np.ones(V, dtype), np.ones(V, dtype)]
        with np.errstate(all="ignore"):
            cost = fn(*t, np.arange(V, dtype=np.int32), np.arange(V, dtype=np.int32)[::-1].copy(),
                      np.log(np.arange(1.0, V + 1)), np.full(V, 0.5), order, 0.05,
                      100.0)
        out.append((cost, t))
    assert out[0][0] == out[1][0] or (math.isnan(out[0][0]) and math.isnan(out[1][0]))
    for x, y in zip(out[0][1], out[1][1]):
        np.testing.assert_array_equal(x, y)


def test_the_dot_products_sum_in_one_order_in_both_routes():
    rng = np.random.default_rng(6)
    for dtype in (np.float32, np.float64):
        for n in (1, 5, 8, 13, 16, 100):
            for _ in range(50):
                a = (rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20)).astype(dtype)
                b = rng.standard_normal(n).astype(dtype)
                assert dtype(K.dot_numba(a, b)) == K.dot_numpy(a, b)


def test_cooccurrence_numba_equals_numpy_and_a_direct_count():
    ids = np.array([0, 1, 2, 1, 0, 3, 3, 2, 1], np.int32)
    starts = np.array([0, 5, 9])
    for sym in (True, False):
        ka, va = KG.cooccur.numba(ids, starts, 4, 3, sym)
        kb, vb = KG.cooccur.numpy(ids, starts, 4, 3, sym)
        assert np.array_equal(ka, kb) and np.array_equal(va, vb)
        X = np.zeros((4, 4))
        for s, e in zip(starts[:-1], starts[1:]):
            for p in range(s, e):
                for d in range(1, 4):
                    if p - d >= s:
                        X[ids[p - d], ids[p]] += 1 / d
                        if sym:
                            X[ids[p], ids[p - d]] += 1 / d
        got = np.zeros((4, 4))
        got[ka // 4, ka % 4] = va / KG.units(3)
        np.testing.assert_allclose(got, X, rtol=1e-15)


def test_cooccurrence_table_grows_past_its_first_size():
    rng = np.random.default_rng(7)
    V = 3000
    ids = rng.integers(0, V, 40000).astype(np.int32)
    starts = np.arange(0, 40001, 500)
    ka, va = KG.cooccur.numba(ids, starts, V, 10, True)
    kb, vb = KG.cooccur.numpy(ids, starts, V, 10, True)
    assert ka.size > 1 << 19 and np.array_equal(ka, kb) and np.array_equal(va, vb)


# ------------------------------------------------------------------------------------------------
# the distributions, against their formulas
# ------------------------------------------------------------------------------------------------
def test_noise_words_follow_the_unigram_distribution_to_the_three_quarters():
    counts = np.array([1000, 300, 100, 30, 10, 3, 1, 1])
    model = Word2Vec(Word2VecConfig(vector_size=2), Vocab([f"w{i}" for i in range(8)], counts))
    p = model.noise_distribution()
    np.testing.assert_allclose(p, counts ** 0.75 / np.sum(counts ** 0.75))
    prob, alias = K.alias_table(p)
    u = np.random.default_rng(8).random(400_000) * prob.size
    i = u.astype(np.int64)
    draws = np.where(u - i < prob[i], i, alias[i])
    freq = np.bincount(draws, minlength=8) / draws.size
    sd = np.sqrt(p * (1 - p) / draws.size)
    assert np.all(np.abs(freq - p) < 5 * sd + 1e-12)


def test_subsampling_keeps_words_with_word2vec_cs_probability():
    counts = np.array([5000, 1000, 200, 20])
    vocab = Vocab(["a", "b", "c", "d"], counts)
    model = Word2Vec(Word2VecConfig(vector_size=2, sample=1e-2), vocab)
    f = counts / counts.sum()
    want = np.minimum(1, (np.sqrt(f / 1e-2) + 1) * 1e-2 / f)
    np.testing.assert_allclose(model.keep_probabilities(), want)
    ids = np.repeat(np.arange(4, dtype=np.int32), counts)
    np.random.default_rng(9).shuffle(ids)
    starts = np.arange(0, ids.size + 1, 100)
    kept = 0
    for seed in range(5):
        kept += K.train_job.numba(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((1, 2)), ids,
                                  starts, want, *K.alias_table(np.ones(4)),
                                  np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int8),
                                  np.zeros(1, np.int32), True, 1, 1, False, 0.0,
                                  np.uint64(seed), False)[0]
    expect = 5 * np.sum(counts * want)
    sd = np.sqrt(5 * np.sum(counts * want * (1 - want)))
    assert abs(kept - expect) < 5 * sd


def test_the_window_reach_is_uniform():
    rand = K._Stream(11)
    reach = np.array([5 - (rand.next() >> 33) % 5 for _ in range(50_000)])
    freq = np.bincount(reach, minlength=6)[1:] / reach.size
    assert np.all(np.abs(freq - 0.2) < 0.01)


def test_huffman_tree_is_a_prefix_code_of_optimal_length():
    counts = np.array([45, 13, 12, 16, 9, 5])
    points, codes, lens = huffman_tree(counts)
    words = ["".join(map(str, codes[w, :lens[w]])) for w in range(6)]
    assert len(set(words)) == 6
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert np.all(points[np.arange(6)[:, None], 0] == 4)          # every path starts at the root
    assert int(np.sum(counts * lens)) == 224                     # CLRS's example: 224 bits


# ------------------------------------------------------------------------------------------------
# the vectors learn what is there
# ------------------------------------------------------------------------------------------------
def _topic_purity(kv):
    good = 0
    for t, words in TOPICS.items():
        for word in words:
            good += sum(w in words for w, _ in kv.most_similar(word, topn=5))
    return good / 100


@pytest.mark.parametrize("kw", [dict(sg=True), dict(sg=False), dict(sg=True, hs=True, negative=0),
                                dict(sg=False, hs=True)])
def test_word2vec_learns_the_planted_topics(kw):
    model = Word2Vec.build(SENTS, vector_size=16, window=4, min_count=1, epochs=10, sample=0,
                           **kw)
    history = model.train(SENTS, workers=1)
    assert history["loss"][-1] < history["loss"][0]
    assert _topic_purity(model.wv) > 0.9


def test_glove_learns_the_planted_topics():
    model = GloVe.build(SENTS, vector_size=16, window=5, min_count=1, epochs=30, x_max=10.0)
    history = model.train(SENTS, workers=1)
    assert history["cost"][-1] < 0.5 * history["cost"][0]
    assert _topic_purity(model.wv) > 0.9


def test_hogwild_threads_train_as_well():
    model = Word2Vec.build(SENTS, vector_size=16, window=4, min_count=1, epochs=5, sg=True,
                           batch_words=500)
    model.train(SENTS, workers=2)
    assert _topic_purity(model.wv) > 0.9


def test_one_worker_runs_are_reproducible():
    a, b = (Word2Vec.build(SENTS[:100], vector_size=8, min_count=1, epochs=1) for _ in range(2))
    a.train(SENTS[:100], workers=1)
    b.train(SENTS[:100], workers=1)
    assert same_state(a.state_dict(), b.state_dict())


def test_a_trained_model_round_trips_through_its_checkpoint(tmp_path):
    from scratchlm.io import save_checkpoint
    from scratchlm.training import load_model
    model = Word2Vec.build(SENTS[:80], vector_size=8, min_count=2, epochs=1, hs=True)
    model.train(SENTS[:80], workers=1)
    path = tmp_path / "w.npz"
    save_checkpoint(path, model, config=model.config_dict(), model="word2vec")
    loaded, _, _, entry = load_model(path)
    assert entry.name == "word2vec" and same_state(loaded.state_dict(), model.state_dict())
    assert loaded.vocab.words == model.vocab.words


def test_vectors_start_a_language_model(tmp_path):
    from scratchlm import nn
    model = Word2Vec.build(SENTS, vector_size=8, min_count=1, epochs=1)
    model.train(SENTS, workers=1)
    rows, missing = model.wv.vectors_for(["<pad>", "ab", "the"], missing="zeros")
    emb = nn.Embedding.from_pretrained(rows, freeze=True)
    np.testing.assert_array_equal(emb(np.array([1, 2]))[1], model.wv["the"])
    assert missing == ["<pad>"] and not emb.weight.requires_grad


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_corpora_and_settings_are_refused_with_their_names():
    with pytest.raises(ValueError, match="empty"):
        Vocab.build([])
    with pytest.raises(ValueError, match="min_count 50 leaves no words"):
        Vocab.build([["a", "b", "a"]], min_count=50)
    with pytest.raises(TypeError, match="list of str words"):
        Vocab.build(["a text, not sentences"])
    with pytest.raises(ValueError, match="window"):
        Word2VecConfig(window=0)
    with pytest.raises(ValueError, match="negative > 0 .* or hs=True"):
        Word2VecConfig(negative=0)
    with pytest.raises(ValueError, match="window must be at most 20"):
        GloVeConfig(window=21)
    with pytest.raises(ValueError, match="alpha"):
        Word2VecConfig(alpha=0.0)
    model = Word2Vec.build([["a", "b"]], min_count=1)
    with pytest.raises(ValueError, match="no word of the vocabulary"):
        model.train([["c", "d"]])
    with pytest.raises(ValueError, match="no two vocabulary words share a sentence"):
        GloVe.build([["a"], ["b"]], min_count=1).cooccurrence([["a"], ["b"]])


@pytest.mark.parametrize("bad", [7, "", None, ["a"], b"a"])
def test_a_bad_word_is_named_before_any_training(bad):
    # the words are checked as they are looked up: a bad one, wherever it is, is a TypeError
    # naming its sentence, raised before the tables change
    sents = [["a", "b", "c"]] * 30 + [["a", bad, "b"]]
    model = Word2Vec.build([["a", "b", "c"]], min_count=1, vector_size=4, batch_words=3)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    with pytest.raises(TypeError, match=r"sentences\[30\] must hold non-empty str words"):
        model.train(sents, workers=2)
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, before[n])
    with pytest.raises(TypeError, match=r"sentences\[30\] must hold non-empty str words"):
        model.vocab.encode(sents)
    with pytest.raises(TypeError, match=r"sentences\[30\] must hold non-empty str words"):
        GloVe.build([["a", "b", "c"]], min_count=1).cooccurrence(sents)


def test_word_sentences_split_paragraphs_into_lowercase_words():
    text = "Hello, World! don't 42 stop_here\n\nSecond  paragraph.\n\n\n  \n"
    assert word_sentences(text) == [["hello", "world", "don't", "stop", "here"],
                                    ["second", "paragraph"]]


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def test_train_sample_and_eval_from_the_command_line(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(" ".join(s) for s in SENTS), encoding="utf-8")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("aa\tab\t9.0\naa\tbc\t1.0\nbb\tbe\t8.5\nthe\tzzz\t3.0\n", encoding="utf-8")
    analogies = tmp_path / "q.txt"
    analogies.write_text(": topics\naa ab ba bb\nac ad be bf\n", encoding="utf-8")
    for name in ("word2vec", "glove"):
        out = tmp_path / f"{name}.npz"
        assert main(["train", name, "--corpus", str(corpus), "--dim", "12", "--epochs", "3",
                     "--min-count", "1", "--workers", "1", "--neighbours", "aa ba",
                     "--out", str(out)]) == 0
        text = capsys.readouterr().out
        assert f"trained {name}: 3 epochs" in text and "aa: " in text
        for suffix in (".txt", ".png"):
            assert (tmp_path / f"{name}{suffix}").is_file()
        kv = KeyedVectors.load_word2vec_format(tmp_path / f"{name}.txt")
        assert "aa" in kv and kv.vector_size == 12
        assert main(["sample", "--checkpoint", str(out), "--prompt", "AA"]) == 0
        assert capsys.readouterr().out.startswith("aa: ")
        assert main(["eval", "--checkpoint", str(out), "--word-pairs", str(pairs),
                     "--analogies", str(analogies)]) == 0
        text = capsys.readouterr().out
        assert "over 3 pairs (1 with an out-of-vocabulary word" in text
        assert "accuracy" in text and "topics: " in text


@pytest.mark.parametrize("argv,message", [
    (["train", "word2vec", "--window", "0"], "--window: must be an integer >= 1, got 0"),
    (["train", "word2vec", "--sg", "--cbow"], "not both"),
    (["train", "word2vec", "--negative", "0"], "hs=True"),
    (["train", "glove", "--window", "30"], "--window must be at most 20"),
    (["train", "word2vec", "--corpus", "/nonexistent/file.txt"], "does not exist"),
])
def test_command_line_errors_are_one_line(argv, message, capsys, tmp_path):
    try:
        code = main(argv + ["--out", str(tmp_path / "x.npz")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_min_count_leaving_no_words_is_a_clear_command_line_error(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("just a few words here\n", encoding="utf-8")
    try:
        code = main(["train", "word2vec", "--corpus", str(corpus), "--out", str(tmp_path / "w.npz")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "leaves no words" in capsys.readouterr().err


def test_tables_are_checked_before_the_kernels_run():
    model = Word2Vec.build(SENTS[:50], vector_size=8, min_count=1, epochs=1)
    model.syn1neg.data = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"syn1neg must be a writeable C-contiguous \(\d+, 8\)"):
        model.train(SENTS[:50])
    glove = GloVe.build(SENTS[:50], vector_size=8, min_count=1, epochs=1)
    X = glove.cooccurrence(SENTS[:50])
    from scratchlm.models import Cooccurrence
    bad = Cooccurrence(X.rows, X.cols + 1000, X.values)
    with pytest.raises(ValueError, match=r"ids in \[0, \d+\)"):
        glove.train(cooccurrence=bad)
    glove.bias.data = glove.bias.data.astype(np.float64)
    with pytest.raises(ValueError, match="bias must be"):
        glove.train(cooccurrence=X)


# ------------------------------------------------------------------------------------------------
# the losses against PyTorch's autograd (the same formulas, differentiated by torch)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_word2vec_loss_and_gradients_match_torch(torch, dtype):
    from conftest import assert_close, to_torch
    rng = np.random.default_rng(12)
    syn0, syn1 = (rng.standard_normal((9, 5)).astype(dtype) for _ in range(2))
    context, targets = rng.integers(0, 9, (4, 3)), rng.integers(0, 9, (4, 4))
    labels = rng.integers(0, 2, (4, 4))
    cm = rng.random((4, 3)) < 0.7
    cm[:, 0] = True
    tm = rng.random((4, 4)) < 0.8
    loss, cache = F.word2vec_forward(syn0, syn1, context, targets, labels, cm, tm)
    d0, d1, *_ = F.word2vec_backward(1.0, cache)
    t0, t1 = to_torch(torch, syn0, grad=True), to_torch(torch, syn1, grad=True)
    m = torch.from_numpy(cm).to(t0.dtype)
    h = (t0[torch.from_numpy(context)] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    s = torch.einsum("bd,bkd->bk", h, t1[torch.from_numpy(targets)])
    sign = torch.from_numpy(np.where(labels == 1, 1.0, -1.0)).to(t0.dtype)
    ref = -(torch.nn.functional.logsigmoid(sign * s) * torch.from_numpy(tm)).sum()
    ref.backward()
    assert_close(np.array(loss), ref)
    assert_close(d0, t0.grad)
    assert_close(d1, t1.grad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_glove_loss_and_gradients_match_torch(torch, dtype):
    from conftest import assert_close, to_torch
    rng = np.random.default_rng(13)
    V, D = 7, 4
    params = [rng.standard_normal(s).astype(dtype) for s in ((V, D), (V, D), (V,), (V,))]
    rows, cols = rng.integers(0, V, 10), rng.integers(0, V, 10)
    x = rng.random(10) * 300 + 0.1
    loss, cache = F.glove_forward(*params, rows, cols, x)
    grads = F.glove_backward(1.0, cache)[:4]
    W, C, b, c = (to_torch(torch, p, grad=True) for p in params)
    r, k = torch.from_numpy(rows), torch.from_numpy(cols)
    xt = torch.from_numpy(x)
    f = torch.clamp((xt / 100.0) ** 0.75, max=1.0).to(W.dtype)
    diff = (W[r] * C[k]).sum(1) + b[r] + c[k] - torch.log(xt).to(W.dtype)
    ref = 0.5 * (f * diff ** 2).sum()
    ref.backward()
    assert_close(np.array(loss), ref)
    for ours, t in zip(grads, (W, C, b, c)):
        assert_close(ours, t.grad)
