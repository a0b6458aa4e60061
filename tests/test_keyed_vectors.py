"""KeyedVectors: similarity, neighbours and analogies against a NumPy computation and against
gensim 4 on the same vectors; evaluation on word-pair and analogy files against gensim; the
word2vec text and binary files (round trips, gensim reads ours and we read gensim's, hostile
files); ``vectors_for``; ``Embedding.from_pretrained`` against torch; the PCA picture."""

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scratchlm import nn
from scratchlm.models import KeyedVectors
from scratchlm.models.keyed_vectors import MAX_KEY_BYTES, _average_ranks, _pearson

F32, F64 = np.float32, np.float64


def random_kv(V=120, D=12, dtype=F32, seed=0, keys=None):
    rng = np.random.default_rng(seed)
    keys = keys or [f"w{i}" for i in range(V)]
    return KeyedVectors(keys, rng.standard_normal((len(keys), D)).astype(dtype))


@pytest.fixture(scope="module")
def gensim_kv():
    """``gensim_kv(ours)``: gensim's KeyedVectors holding the same keys and float32 vectors."""
    gensim = pytest.importorskip("gensim")

    def make(kv):
        g = gensim.models.KeyedVectors(kv.vector_size)
        g.add_vectors(list(kv.index_to_key), np.asarray(kv.vectors, F32))
        return g
    return make


@pytest.fixture(scope="module")
def GKV():
    return pytest.importorskip("gensim").models.KeyedVectors


def unit(x):
    x = np.asarray(x, F64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n == 0, 1, n)


def same_results(ours, theirs, rtol=1e-5, atol=1e-6):
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------
# the object
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F64])
def test_lookups_and_dtype(dtype):
    rng = np.random.default_rng(1)
    vec = rng.standard_normal((4, 3)).astype(dtype)
    kv = KeyedVectors(["a", "b", "café", "日本"], vec, counts=[9, 5, 2, 1])
    assert len(kv) == 4 and kv.vector_size == 3 and kv.vectors.dtype == dtype
    assert "café" in kv and "x" not in kv and 0 not in kv
    assert kv.index_to_key == ["a", "b", "café", "日本"] and kv.key_to_index["日本"] == 3
    np.testing.assert_array_equal(kv["b"], vec[1])
    np.testing.assert_array_equal(kv[["b", "a"]], vec[[1, 0]])
    assert kv.get_index("café") == 2 and kv.get_index(3) == 3 and kv.get_index("zz", -1) == -1
    np.testing.assert_allclose(kv.get_vector("a", norm=True), unit(vec[0]), rtol=1e-6)
    assert kv.get_normed_vectors().dtype == dtype and kv.counts.dtype == np.int64
    with pytest.raises(KeyError, match="'zz'"):
        kv["zz"]
    with pytest.raises(KeyError, match="'zz'"):
        kv.similarity("a", "zz")
    assert "4 keys" in repr(kv)


def test_vectors_are_a_read_only_copy_and_assignment_refreshes_the_cache():
    vec = np.eye(3, dtype=F32) * 2
    kv = KeyedVectors(["a", "b", "c"], vec)
    vec[0, 0] = 100                                     # the caller's array is not ours
    assert kv.vectors[0, 0] == 2
    with pytest.raises(ValueError, match="read-only"):
        kv.vectors[0, 0] = 5
    np.testing.assert_array_equal(kv.get_normed_vectors(), np.eye(3))
    kv.vectors = np.array([[1, 1], [0, 3], [4, 0]], F64)     # a new D is allowed, dtype follows
    assert kv.vector_size == 2 and kv.vectors.dtype == F64
    np.testing.assert_allclose(kv.get_normed_vectors(), unit(kv.vectors))
    with pytest.raises(ValueError, match="one row per key"):
        kv.vectors = np.zeros((2, 2), F32)


@pytest.mark.parametrize("keys, vectors, match, exc", [
    (["a", "b c"], np.zeros((2, 2), F32), r"keys\[1\] must not contain whitespace", ValueError),
    (["a", "b\n"], np.zeros((2, 2), F32), "whitespace", ValueError),
    (["a", "b\u00a0c"], np.zeros((2, 2), F32), "whitespace", ValueError),
    (["a", ""], np.zeros((2, 2), F32), r"keys\[1\] must not be empty", ValueError),
    (["a", "a"], np.zeros((2, 2), F32), r"distinct: 'a' is keys\[0\] and keys\[1\]", ValueError),
    (["a", 3], np.zeros((2, 2), F32), r"keys\[1\] must be a str", TypeError),
    (["a", "\ud800"], np.zeros((2, 2), F32), "UTF-8", ValueError),
    (["a" * (MAX_KEY_BYTES + 1)], np.zeros((1, 2), F32), "at most 4096 bytes", ValueError),
    ([], np.zeros((0, 2), F32), "keys must not be empty", ValueError),
    ("ab", np.zeros((2, 2), F32), "list of str", TypeError),
    (["a", "b"], np.zeros((3, 2), F32), r"one row per key: 2 keys, got shape \(3, 2\)", ValueError),
    (["a", "b"], np.zeros((2, 2), np.int64), "float32 or float64", TypeError),
    (["a", "b"], np.zeros(2, F32), "2-D", ValueError),
    (["a", "b"], np.zeros((2, 0), F32), "empty", ValueError),
    (["a", "b"], np.array([[0, 1], [np.nan, 0]], F32), "finite: row 1 holds nan at column 0", ValueError),
    (["a", "b"], [[0.0, 1.0], [1.0, 0.0]], "numpy array", TypeError),
])
def test_bad_construction(keys, vectors, match, exc):
    with pytest.raises(exc, match=match):
        KeyedVectors(keys, vectors)


@pytest.mark.parametrize("counts, match, exc", [
    ([1, 2, 3], r"shape \(2,\)", ValueError), ([1, -1], ">= 0", ValueError),
    (np.array([1.0, 2.0]), "integer", TypeError)])
def test_bad_counts(counts, match, exc):
    with pytest.raises(exc, match=match):
        KeyedVectors(["a", "b"], np.ones((2, 2), F32), counts=counts)


# ------------------------------------------------------------------------------------------------
# similarity, neighbours, analogies: against NumPy
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F64])
def test_most_similar_against_numpy(dtype):
    kv = random_kv(dtype=dtype, seed=3)
    u = unit(kv.vectors)
    tol = 1e-6 if dtype == F32 else 1e-12
    for pos, neg, restrict in [(["w1"], [], None), (["w1", "w2"], ["w3"], None),
                               (["w4"], ["w5", "w6"], 50), ([], ["w7"], None)]:
        idx = [kv.get_index(k) for k in pos + neg]
        q = unit((u[[kv.get_index(k) for k in pos]].sum(0) - u[[kv.get_index(k) for k in neg]].sum(0))
                 / len(idx))
        R = restrict or len(kv)
        scores = u[:R] @ q
        order = [i for i in np.argsort(-scores, kind="stable") if i not in idx][:7]
        got = kv.most_similar(positive=pos, negative=neg, topn=7, restrict_vocab=restrict)
        assert [k for k, _ in got] == [f"w{i}" for i in order]
        np.testing.assert_allclose([s for _, s in got], scores[order], rtol=tol, atol=tol)
        assert all(type(s) is float for _, s in got)
        all_scores = kv.most_similar(positive=pos, negative=neg, topn=None, restrict_vocab=restrict)
        assert all_scores.shape == (R,) and all_scores.dtype == dtype
        np.testing.assert_allclose(all_scores, scores, rtol=tol, atol=tol)
    assert kv.most_similar("w1", topn=0) == []
    assert kv.most_similar("w1") == kv.most_similar(["w1"])      # a single key, and topn=10
    assert len(kv.most_similar("w1")) == 10


def test_most_similar_cosmul_against_numpy():
    kv = random_kv(seed=4)
    u = unit(kv.vectors)
    a, b, c = (kv.get_index(k) for k in ("w1", "w2", "w3"))
    s = lambda i: (1 + u @ u[i]) / 2                              # noqa: E731
    scores = s(b) * s(c) / (s(a) + 1e-6)
    order = [i for i in np.argsort(-scores) if i not in (a, b, c)][:5]
    got = kv.most_similar_cosmul(positive=["w2", "w3"], negative=["w1"], topn=5)
    assert [k for k, _ in got] == [f"w{i}" for i in order]
    np.testing.assert_allclose([v for _, v in got], scores[order], rtol=1e-5)
    # with one positive key it ranks as most_similar
    assert [k for k, _ in kv.most_similar_cosmul("w9", topn=8)] == \
           [k for k, _ in kv.most_similar("w9", topn=8)]
    restricted = kv.most_similar_cosmul(["w2", "w3"], ["w1"], topn=None, restrict_vocab=30)
    assert restricted.shape == (30,)
    np.testing.assert_allclose(restricted, scores[:30], rtol=1e-5)
    with pytest.raises(ValueError, match="at least one positive"):
        kv.most_similar_cosmul(negative=["w1"])


def test_vectors_weights_and_bad_queries():
    kv = random_kv(seed=5)
    direction = kv["w3"] * 7.0
    assert kv.most_similar(positive=[direction], topn=3)[0][0] == "w3"    # a vector is not excluded
    assert kv.most_similar([("w1", 2.0), "w2"], topn=4) == kv.most_similar(["w1", "w1", "w2"], topn=4)
    with pytest.raises(ValueError, match="at least one"):
        kv.most_similar()
    with pytest.raises(KeyError, match="'nope'"):
        kv.most_similar(["w1"], ["nope"])
    with pytest.raises(ValueError, match="vector_size"):
        kv.most_similar([np.ones(3, F32)])
    with pytest.raises(ValueError, match="finite number"):
        kv.most_similar([("w1", float("nan"))])
    with pytest.raises(TypeError, match="topn must be an int"):
        kv.most_similar("w1", topn=2.5)
    with pytest.raises(ValueError, match="restrict_vocab must be >= 1"):
        kv.most_similar("w1", restrict_vocab=0)


def test_zero_vectors_score_zero_not_nan():
    vec = np.array([[1, 0], [0, 0], [0, 2], [-1, -1]], F32)
    kv = KeyedVectors(["a", "zero", "b", "c"], vec)
    assert kv.similarity("a", "zero") == 0.0 and kv.similarity("zero", "zero") == 0.0
    np.testing.assert_array_equal(kv.get_vector("zero", norm=True), [0, 0])
    got = kv.most_similar("a", topn=3)
    assert not any(np.isnan(s) for _, s in got) and dict(got)["zero"] == 0.0
    # a query whose mean is zero scores every key 0; ties keep vocabulary order
    assert kv.most_similar(positive=["zero"], topn=3) == [("a", 0.0), ("b", 0.0), ("c", 0.0)]
    assert np.isfinite(kv.most_similar_cosmul(["a"], ["zero"], topn=None)).all()


def test_norms_do_not_overflow():
    kv = KeyedVectors(["big", "small", "mid"], np.array([[3e38, 3e38], [1e-45, 1e-45], [1, 0]], F32))
    np.testing.assert_allclose(kv.get_normed_vectors(), [[0.70710677] * 2, [0.70710677] * 2, [1, 0]],
                               rtol=1e-6)
    assert kv.similarity("big", "small") == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# against gensim, same vectors
# ------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Call to deprecated:DeprecationWarning")  # gensim's own
def test_similarity_and_neighbours_match_gensim(gensim_kv):
    kv = random_kv(V=300, D=16, seed=7)
    g = gensim_kv(kv)
    for w1, w2 in [("w1", "w2"), ("w10", "w200"), ("w5", "w5")]:
        assert kv.similarity(w1, w2) == pytest.approx(float(g.similarity(w1, w2)), abs=1e-6)
    for args in [dict(positive=["w1"]), dict(positive="w1", topn=25),
                 dict(positive=["w1", "w2"], negative=["w3"]),
                 dict(positive=["w4"], negative=["w5", "w6"], restrict_vocab=100),
                 dict(negative=["w8"], topn=5), dict(positive=["w9", "w11", "w12"], topn=3)]:
        same_results(kv.most_similar(**args), g.most_similar(**args))
    np.testing.assert_allclose(kv.most_similar("w1", topn=None), g.most_similar("w1", topn=None),
                               rtol=1e-5, atol=1e-6)
    for args in [dict(positive=["w1", "w2"], negative=["w3"]), dict(positive="w7", topn=20),
                 dict(positive=["w1", "w2", "w20"], negative=["w3", "w30"], topn=4)]:
        same_results(kv.most_similar_cosmul(**args), g.most_similar_cosmul(**args))


# ------------------------------------------------------------------------------------------------
# evaluation files
# ------------------------------------------------------------------------------------------------
def analogy_world(seed=0, noise=0.35, D=24):
    """Keys with structure: capitals = country + r1, female = male + r2, plural = singular + r3,
    each with noise (so that 3CosAdd gets some but not all right), a few other spellings of keys
    (case-insensitive lookups), and unrelated filler words."""
    rng = np.random.default_rng(seed)
    rel = rng.standard_normal((3, D))
    keys, vecs = [], []
    for stem, r in (("country", 0), ("male", 1), ("thing", 2)):
        for i in range(12):
            base = rng.standard_normal(D)
            other = {"country": "capital", "male": "female", "thing": "things"}[stem]
            keys += [f"{stem}{i}", f"{other}{i}"]
            vecs += [base, base + rel[r] + noise * rng.standard_normal(D)]
    keys += [f"filler{i}" for i in range(40)]
    vecs += list(rng.standard_normal((40, D)))
    keys += ["Capital1", "COUNTRY2", "Female3", "capital0x"]          # second spellings, later rows
    vecs += list(rng.standard_normal((4, D)))
    return KeyedVectors(keys, np.array(vecs, F32))


ANALOGIES = """\
: capital-common-countries
country0 capital0 country1 capital1
country1 capital1 country2 capital2
COUNTRY3 Capital3 country4 capital4
country5 capital5 country6 capital6
country7 capital7 unknownland unknowncapital
country8 capital8 country9 capital9
country10 capital10 country11 capital11
country11 capital11 country0 capital0

: family
male0 female0 male1 female1
male2 female2 male3 female3
male4 female4 male5 female5
Male6 FEMALE6 male7 female7
male8 female8 male9 nobody
male10 female10 male11 female11
: empty-section
: plural-nouns
thing0 things0 thing1 things1
thing2 things2 thing3 things3
thing4 things4 thing5 things5
thing6 things6 thing7 things7
thing8 things8 thing9 things9
thing10 things10 thing11 things11
thing1 things1 country1 capital1
"""

PAIRS = """\
# a comment
# Word 1\tWord 2\tHuman (mean)
country0\tcapital0\t8.5
country1\tcapital1\t8.5
country0\tcountry1\t3.0
male0\tfemale0\t7.25
male0\tthing0\t1.0
thing0\tthings0\t9.0
filler0\tfiller1\t0.5
Country2\tCAPITAL2\t8.0
unknown\tcountry0\t5.0
filler3\tnothing\t2.0
thing3\tthings3\t9.0
male4\tfemale5\t3.0
filler5\tcapital7\t0.25
"""


def test_evaluate_word_pairs_matches_gensim(tmp_path, gensim_kv):
    kv = analogy_world()
    g = gensim_kv(kv)
    path = tmp_path / "pairs.tsv"
    path.write_text(PAIRS, encoding="utf-8")
    for restrict in (300000, 60):
        for ci in (True, False):
            for dummy in (False, True):
                ours = kv.evaluate_word_pairs(path, restrict_vocab=restrict, case_insensitive=ci,
                                              dummy4unknown=dummy)
                pearson, spearman, ratio = g.evaluate_word_pairs(
                    str(path), restrict_vocab=restrict, case_insensitive=ci, dummy4unknown=dummy)
                assert ours.spearman == pytest.approx(spearman[0], abs=1e-6)
                assert ours.pearson == pytest.approx(pearson[0], abs=1e-6)
                assert ours.oov_ratio == pytest.approx(ratio)
    r = kv.evaluate_word_pairs(path)
    assert (r.pairs, r.oov) == (11, 2)                  # 'unknown' and 'nothing'
    assert kv.evaluate_word_pairs(path, case_insensitive=False).oov == 3    # and 'Country2'


def test_evaluate_word_pairs_on_gensims_wordsim353(gensim_kv):
    import gensim
    path = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "wordsim353.tsv")
    if not os.path.exists(path):
        pytest.skip("gensim's test data is not installed")
    words = []
    for line in open(path, encoding="utf-8"):
        if not line.startswith("#"):
            words += [w.lower() for w in line.split("\t")[:2]]
    words = list(dict.fromkeys(words))[::3][::-1] + ["Tiger"]           # a third, mixed order
    kv = random_kv(keys=words, D=10, seed=11)
    pearson, spearman, ratio = gensim_kv(kv).evaluate_word_pairs(path)
    ours = kv.evaluate_word_pairs(path)
    assert (ours.spearman, ours.pearson, ours.oov_ratio) == pytest.approx(
        (spearman[0], pearson[0], ratio), abs=1e-6)


def test_spearman_with_ties_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, 30).astype(F64)            # many ties
        y = rng.integers(0, 4, 30) + 0.5 * rng.random(30) * (rng.random(30) < 0.5)
        assert _pearson(_average_ranks(x), _average_ranks(y)) == pytest.approx(
            stats.spearmanr(x, y)[0], abs=1e-12)
        assert _pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    np.testing.assert_array_equal(_average_ranks(np.array([3.0, 1, 3, 2, 3])), [4, 1, 4, 2, 4])
    assert np.isnan(_pearson([1.0, 1, 1], [1.0, 2, 3]))          # constant: undefined


@pytest.mark.parametrize("text, match", [
    ("a\tb\t1\nbad line\n", r"pairs.tsv:2: expected word1'\\t'word2'\\t'score"),
    ("a\tb\t1\nc\td\tnan\n", r":2: .*finite"),
    ("a\tb\t1\nc\td\n", ":2:"),
    ("w1\tw2\tx\nw1\tw3\ty\n", ":2:"),                      # only the first line may be a header
    ("# only\n\n", "0 word pair"),
    ("w1\tw2\t1\nzz\tw1\t2\n", r"1 word pair\(s\) could be scored \(1 had a word outside"),
    ("", "is empty"),
])
def test_bad_word_pairs_files(tmp_path, text, match):
    path = tmp_path / "pairs.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        random_kv().evaluate_word_pairs(path)


def test_word_pairs_header_comma_delimiter_and_constant_scores(tmp_path):
    kv = random_kv()
    path = tmp_path / "combined.csv"
    path.write_text("Word 1,Word 2,Human (mean)\nw1, w2, 7\nw3,w4,2\nw5,w1,4.5\n", encoding="utf-8")
    r = kv.evaluate_word_pairs(path, delimiter=",")
    assert r.pairs == 3 and r.oov == 0 and r.oov_ratio == 0.0 and -1 <= r.spearman <= 1
    path.write_text("w1,w2,5\nw3,w4,5\n", encoding="utf-8")
    assert np.isnan(kv.evaluate_word_pairs(path, delimiter=",").spearman)


def test_evaluate_word_analogies_matches_gensim(tmp_path, gensim_kv):
    kv = analogy_world()
    g = gensim_kv(kv)
    path = tmp_path / "questions.txt"
    path.write_text(ANALOGIES, encoding="utf-8")
    seen = set()
    for restrict in (300000, 40):
        for ci in (True, False):
            for dummy in (False, True):
                ours = kv.evaluate_word_analogies(path, restrict_vocab=restrict, case_insensitive=ci,
                                                  dummy4unknown=dummy)
                theirs = g.evaluate_word_analogies(str(path), restrict_vocab=restrict,
                                                   case_insensitive=ci, dummy4unknown=dummy)
                assert ours[0] == pytest.approx(theirs[0]) and ours[1] == theirs[1]
                seen.add(round(ours[0], 6))
    acc, sections = kv.evaluate_word_analogies(path)
    assert 0 < acc < 1                                       # the file tests something
    assert [s["section"] for s in sections] == ["capital-common-countries", "family",
                                                "empty-section", "plural-nouns", "Total accuracy"]
    assert len(sections[-1]["correct"]) + len(sections[-1]["incorrect"]) == 19   # 21 - 2 OOV
    assert len(seen) > 2


def test_evaluate_word_analogies_against_most_similar(tmp_path):
    """Without gensim: the batched answers are those of a loop over most_similar /
    most_similar_cosmul (case-sensitive, whole vocabulary)."""
    kv = analogy_world(seed=2)
    path = tmp_path / "questions.txt"
    path.write_text(ANALOGIES, encoding="utf-8")
    for method, ask in (("3cosadd", kv.most_similar), ("3cosmul", kv.most_similar_cosmul)):
        acc, sections = kv.evaluate_word_analogies(path, case_insensitive=False, method=method)
        total = sections[-1]
        for q in total["correct"] + total["incorrect"]:
            best = ask(positive=[q[1], q[2]], negative=[q[0]], topn=1)[0][0]
            assert (best == q[3]) == (q in total["correct"]), (method, q)
        assert acc == len(total["correct"]) / (len(total["correct"]) + len(total["incorrect"]))


def test_evaluate_word_analogies_on_gensims_questions_words(gensim_kv):
    import gensim
    path = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "questions-words.txt")
    if not os.path.exists(path):
        pytest.skip("gensim's test data is not installed")
    # vectors with the file's structure: the second word of each pair is the first plus the
    # section's offset plus noise, so that 3CosAdd gets some answers right
    rng = np.random.default_rng(12)
    D, vec, offset = 16, {}, None
    for line in open(path, encoding="utf-8"):
        if line.startswith(":"):
            offset = rng.standard_normal(D)
            continue
        a, b, c, d = line.lower().split()
        for x, y in ((a, b), (c, d)):
            vec.setdefault(x, rng.standard_normal(D))
            vec.setdefault(y, vec[x] + offset + 0.8 * rng.standard_normal(D))
    keys = [k for k in vec if rng.random() < 0.8] + ["Paris", "GREECE"]   # many OOV questions
    kv = KeyedVectors(keys, np.array([vec.get(k.lower(), vec["paris"]) for k in keys], F32))
    for restrict in (300, 300000):
        ours = kv.evaluate_word_analogies(path, restrict_vocab=restrict)
        theirs = gensim_kv(kv).evaluate_word_analogies(path, restrict_vocab=restrict)
        assert ours[0] == pytest.approx(theirs[0]) and ours[1] == theirs[1]
        assert 0.1 < ours[0] < 0.9, ours[0]


@pytest.mark.parametrize("text, match", [
    ("w1 w2 w3 w4\n", r"questions.txt:1: a question before the first ': section' line"),
    (": s\nw1 w2 w3\n", r":2: a question is four words 'a b c expected', got 3"),
    (": s\nw1 w2 w3 w4\nw1 w2 w3 w4 w5\n", ":3: .*got 5"),
    ("\n\n", "is empty"),
])
def test_bad_analogy_files(tmp_path, text, match):
    path = tmp_path / "questions.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        random_kv().evaluate_word_analogies(path)


def test_evaluation_files_are_checked(tmp_path):
    kv = random_kv()
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b": s\nw1 w2 w3 w4\ncaf\xe9 w2 w3 w4\n")
    with pytest.raises(ValueError, match=r"latin1.txt:3: not UTF-8: invalid byte 0xe9"):
        kv.evaluate_word_analogies(bad)
    with pytest.raises(ValueError, match="is a directory"):
        kv.evaluate_word_pairs(tmp_path)
    big = tmp_path / "big.txt"
    big.write_text(": s\n" + "w1 w2 w3 w4\n" * 100, encoding="utf-8")
    with pytest.raises(ValueError, match="more than the 100"):
        kv.evaluate_word_analogies(big, max_bytes=100)
    with pytest.raises(FileNotFoundError):
        kv.evaluate_word_pairs(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="method must be one of"):
        kv.evaluate_word_analogies(big, method="3cosavg")
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf: s\nw1 w2 w3 w4\n")      # a BOM is dropped
    assert kv.evaluate_word_analogies(tmp_path / "bom.txt")[1][0]["section"] == "s"


# ------------------------------------------------------------------------------------------------
# word2vec files
# ------------------------------------------------------------------------------------------------
KEYS = ["the", "café", "日本", "naïve", "x"]


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_round_trip(tmp_path, binary, dtype):
    rng = np.random.default_rng(2)
    vec = (rng.standard_normal((5, 7)) * 10.0 ** rng.integers(-30, 30, (5, 7))).astype(dtype)
    vec[0, 0], vec[1, 1] = -0.0, 0.0
    kv = KeyedVectors(KEYS, vec)
    path = tmp_path / "v.bin"
    kv.save_word2vec_format(path, binary=binary)
    back = KeyedVectors.load_word2vec_format(path, binary=binary)
    assert back.index_to_key == KEYS and back.vectors.dtype == F32
    assert back.vectors.tobytes() == vec.astype(F32).tobytes()        # bit-exact (float64: rounded)
    if not binary:                                                    # text holds float64 exactly
        exact = KeyedVectors.load_word2vec_format(path, dtype=dtype)
        assert exact.vectors.dtype == dtype and exact.vectors.tobytes() == vec.tobytes()
    assert [line.split(b" ")[0] for line in path.read_bytes().split(b"\n")[:1]] == [b"5"]


def test_file_layout(tmp_path):
    kv = KeyedVectors(["a", "bé"], np.array([[1.0, 0.1], [-2.5, 1e-20]], F32))
    kv.save_word2vec_format(tmp_path / "t.txt")
    assert (tmp_path / "t.txt").read_bytes() == \
        b"2 2\na 1 0.100000001\nb\xc3\xa9 -2.5 9.99999968e-21\n"
    kv.save_word2vec_format(tmp_path / "b.bin", binary=True)
    v = kv.vectors.astype("<f4")
    assert (tmp_path / "b.bin").read_bytes() == \
        b"2 2\na " + v[0].tobytes() + b"\nb\xc3\xa9 " + v[1].tobytes() + b"\n"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]       # no temp file left


@pytest.mark.parametrize("binary", [False, True])
def test_limit(tmp_path, binary):
    kv = random_kv(V=20, D=3)
    kv.save_word2vec_format(tmp_path / "v", binary=binary)
    back = KeyedVectors.load_word2vec_format(tmp_path / "v", binary=binary, limit=5)
    assert back.index_to_key == kv.index_to_key[:5]
    np.testing.assert_array_equal(back.vectors, kv.vectors[:5])
    assert len(KeyedVectors.load_word2vec_format(tmp_path / "v", binary=binary, limit=50)) == 20


@pytest.mark.parametrize("binary", [False, True])
def test_gensim_reads_ours_and_we_read_gensims(tmp_path, binary, GKV, gensim_kv):
    rng = np.random.default_rng(3)
    vec = (rng.standard_normal((50, 9)) * 10.0 ** rng.integers(-8, 8, (50, 9))).astype(F32)
    keys = KEYS + [f"w{i}" for i in range(45)]
    kv = KeyedVectors(keys, vec)
    ours = tmp_path / "ours"
    kv.save_word2vec_format(ours, binary=binary)
    g = GKV.load_word2vec_format(str(ours), binary=binary)
    assert g.index_to_key == keys and g.vectors.dtype == F32
    assert g.vectors.tobytes() == vec.tobytes()
    theirs = tmp_path / "theirs"
    gensim_kv(kv).save_word2vec_format(str(theirs), binary=binary)
    back = KeyedVectors.load_word2vec_format(theirs, binary=binary)
    assert back.index_to_key == keys and back.vectors.tobytes() == vec.tobytes()
    # float64 vectors: gensim reads our text as float32, the same rounding as ours
    kv64 = KeyedVectors(keys, vec.astype(F64) * (1 + 1e-9))
    kv64.save_word2vec_format(ours, binary=binary)
    assert GKV.load_word2vec_format(str(ours), binary=binary).vectors.tobytes() == \
        KeyedVectors.load_word2vec_format(ours, binary=binary).vectors.tobytes()


def test_we_read_gensims_shipped_vectors(GKV):
    import gensim
    path = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "toy-model.vec")
    if not os.path.exists(path):
        pytest.skip("gensim's test data is not installed")
    ours, theirs = KeyedVectors.load_word2vec_format(path), GKV.load_word2vec_format(path)
    assert ours.index_to_key == theirs.index_to_key
    assert ours.vectors.tobytes() == theirs.vectors.tobytes()


def test_word2vec_c_binary_layout_and_crlf_text(tmp_path):
    """word2vec.c writes a newline after each binary vector (read), text writers may leave a
    trailing space or CRLF line ends (read)."""
    v = np.array([[1, 2], [3, 4]], "<f4")
    (tmp_path / "c.bin").write_bytes(b"2 2\nab " + v[0].tobytes() + b"cd " + v[1].tobytes())
    kv = KeyedVectors.load_word2vec_format(tmp_path / "c.bin", binary=True)    # gensim's: no \n
    assert kv.index_to_key == ["ab", "cd"] and kv.vectors.tolist() == [[1, 2], [3, 4]]
    (tmp_path / "c.txt").write_bytes(b"2 2\r\nab 1 2 \r\ncd 3.0 4e0\r\n\r\n")
    kv = KeyedVectors.load_word2vec_format(tmp_path / "c.txt")
    assert kv.index_to_key == ["ab", "cd"] and kv.vectors.tolist() == [[1, 2], [3, 4]]


def f4(*values):
    return np.array(values, "<f4").tobytes()


BAD_TEXT = [
    (b"", "is empty"),
    (b"3\na 1 2 3\n", r":1: expected a header of two positive integers"),
    (b"1 2 3\na 1 2\n", ":1: expected a header"),
    (b"0 2\n", ":1: expected a header"),
    (b"-1 2\na 1 2\n", ":1: expected a header"),
    (b"1 two\na 1 2\n", ":1: expected a header"),
    (b"1 2", "the header line is the whole file"),
    (b"999999999999 2\na 1 2\n", r"need at least .* bytes after it; the file has 6"),
    (b"9999999999999 2\na 1 2\n", r":1: expected a header .*at most 12 digits"),
    (b"1 100000\na 1\n", "need at least"),
    (b"2 2\na 1 2\nbbbbbbbb 1", r":3: expected a key and 2 values .*got 1 values; truncated"),
    (b"2 2\na 1 2\nb 1 2 3\n", r":3: expected a key and 2 values"),
    (b"3 2\naaaa 1 2\nbbbb 3 4\n", r":4: truncated: the file ends after 2 of the 3 rows"),
    (b"2 2\na 1 2\na 3 4\n", r":3: the key 'a' appears twice \(first in line 2\)"),
    (b"2 2\na 1 2\ncaf\xe9 3 4\n", r":3: the key .* is not UTF-8"),
    (b"2 2\na 1 2\nb\xc2\xa0c 3 4\n", ":3: the key must not contain whitespace"),
    (b"2 2\na 1 2\n\nb 3 4\n", r":3: an empty line where row 2"),
    (b"1 2\na 1 2\nb 3 4\n", r":3: trailing data after the 1 rows"),
    (b"1 2\na nan 2\n", r":2: not a decimal number: byte b'n'"),
    (b"1 2\na 1_0 2\n", r":2: not a decimal number: byte b'_'"),
    (b"1 2\na 1e99 2\n", r":2: the values of key 'a' must be finite: value 1 is inf as float32"),
    (b"1 2\na 1e999 2\n", r":2: the values of key 'a' must be finite: value 1 is inf"),
    (b"1 2\na 1..2 2\n", r":2: not a decimal number: '1..2'"),
    (b"1 2\na 1 2 \xff\n", r":2: .*got 3 values"),
]


@pytest.mark.parametrize("data, match", BAD_TEXT, ids=[m for _, m in BAD_TEXT])
def test_bad_text_files(tmp_path, data, match):
    path = tmp_path / "v.txt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match) as info:
        KeyedVectors.load_word2vec_format(path)
    assert str(path) in str(info.value)


BAD_BINARY = [
    (b"2 2\na " + f4(1, 2) + b"\nb " + f4(3), r"truncated|need at least"),
    (b"2 2\naaaaaa " + f4(1, 2) + b"\nb " + f4(3, 4)[:5],
     r"truncated: row 2 at byte offset 19 \(key 'b'\) needs 8 bytes of float32, the file has 5"),
    (b"2 2\na " + f4(1, 2) + b"\na " + f4(3, 4), r"row 2 at byte offset 14: the key 'a' appears twice"),
    (b"2 2\na " + f4(1, 2) + b"\n\xff " + f4(3, 4), r"row 2 .*not UTF-8"),
    (b"2 2\na " + f4(1, 2) + b"\n\nb " + f4(3, 4), r"row 2 .*whitespace"),
    (b"1 2\na " + f4(1, np.nan),
     r"row 1 at byte offset 4: the values of key 'a' must be finite: value 2 is nan"),
    (b"1 2\na " + f4(1, 2) + b"\nb " + f4(3, 4), "at most 4106 bytes after it|trailing data"),
    (b"1 2\na " + f4(1, 2) + b"\nxy",
     r"trailing data after the 1 rows the header announces \(byte offset 14\)"),
    (b"1 2\n" + b"k" * 5000 + b" " + f4(1, 2), "at most"),
    (b"2 2\n" + b"k" * 4100 + b" " + f4(1, 2) + b"\nb " + f4(3, 4), "no space within 4096 bytes"),
    (b"1 1000\na " + f4(1, 2), "need at least 4,002 bytes"),
]


@pytest.mark.parametrize("data, match", BAD_BINARY, ids=[str(i) for i in range(len(BAD_BINARY))])
def test_bad_binary_files(tmp_path, data, match):
    path = tmp_path / "v.bin"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match) as info:
        KeyedVectors.load_word2vec_format(path, binary=True)
    assert str(path) in str(info.value)


@settings(max_examples=60)
@given(binary=st.booleans(), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255),
                                                      st.sampled_from(["set", "insert", "delete"])),
                                            min_size=1, max_size=4))
def test_fuzz_mutated_files_load_or_raise_value_error(tmp_path_factory, binary, edits):
    """A valid file with a few bytes changed, inserted or deleted either loads (then every row
    is finite and every key valid) or is a ValueError naming the file: never another exception,
    never garbage."""
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "v"
    KeyedVectors(["a", "bb", "café"], np.array([[1, -2.5], [0.125, 3e5], [-7, 1e-3]], F32)
                 ).save_word2vec_format(path, binary=binary)
    data = bytearray(path.read_bytes())
    for pos, byte, op in edits:
        pos %= len(data) + (op == "insert")
        if op == "set" and pos < len(data):
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            del data[pos]
    path.write_bytes(bytes(data))
    try:
        kv = KeyedVectors.load_word2vec_format(path, binary=binary)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert np.isfinite(kv.vectors).all() and kv.vectors.dtype == F32
    assert len(set(kv.index_to_key)) == len(kv) and all(k and not any(c.isspace() for c in k)
                                                         for k in kv.index_to_key)


def test_bad_paths_and_arguments(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        KeyedVectors.load_word2vec_format(tmp_path)
    with pytest.raises(FileNotFoundError):
        KeyedVectors.load_word2vec_format(tmp_path / "missing")
    random_kv(V=50, D=4).save_word2vec_format(tmp_path / "v")
    with pytest.raises(ValueError, match=r"more than the 100 .*max_bytes"):
        KeyedVectors.load_word2vec_format(tmp_path / "v", max_bytes=100)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        KeyedVectors.load_word2vec_format(tmp_path / "v", limit=0)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        KeyedVectors.load_word2vec_format(tmp_path / "v", dtype=np.float16)
    with pytest.raises(TypeError, match="binary must be True or False"):
        random_kv().save_word2vec_format(tmp_path / "w", binary="yes")


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "v.txt"
    random_kv(V=3, D=2).save_word2vec_format(path)
    before = path.read_bytes()
    kv = random_kv(V=5, D=2, seed=1)
    monkeypatch.setattr(kv, "index_to_key", ["a", "b", "c", "d", None])   # fails mid-write
    with pytest.raises(AttributeError):
        kv.save_word2vec_format(path)
    assert path.read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# starting an embedding
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F64])
def test_vectors_for(dtype):
    kv = random_kv(V=200, D=64, dtype=dtype)
    vocab = ["w3", "<unk>", "w0", "zz", "w3"]
    rows, missing = kv.vectors_for(vocab, rng=0)
    assert rows.shape == (5, 64) and rows.dtype == dtype and missing == ["<unk>", "zz"]
    np.testing.assert_array_equal(rows[[0, 2, 4]], kv.vectors[[3, 0, 3]])
    sigma = kv.vectors.astype(F64).std()
    assert 0.7 * sigma < rows[[1, 3]].std() < 1.3 * sigma
    np.testing.assert_array_equal(kv.vectors_for(vocab, rng=0)[0], rows)       # reproducible
    zeros, _ = kv.vectors_for(vocab, missing="zeros")
    assert not zeros[[1, 3]].any()
    with pytest.raises(ValueError, match="missing must be one of"):
        kv.vectors_for(vocab, missing="mean")
    with pytest.raises(TypeError, match=r"keys\[1\] must be a str"):
        kv.vectors_for(["w1", 2])
    with pytest.raises(ValueError, match="must not be empty"):
        kv.vectors_for([])


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("freeze, padding_idx", [(True, None), (False, None), (False, 2), (True, -1)])
def test_embedding_from_pretrained_matches_torch(torch, dtype, freeze, padding_idx):
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(dtype)
    ours = nn.Embedding.from_pretrained(w, freeze=freeze, padding_idx=padding_idx)
    theirs = torch.nn.Embedding.from_pretrained(torch.from_numpy(w.copy()), freeze=freeze,
                                                padding_idx=padding_idx)
    assert ours.weight.requires_grad == theirs.weight.requires_grad == (not freeze)
    assert ours.weight.data.dtype == dtype and ours.padding_idx == theirs.padding_idx
    np.testing.assert_array_equal(ours.weight.data, w)         # the padding row is not zeroed
    ids = np.array([[0, 2, 5], [2, 2, 1]])
    y = ours(ids)
    t = theirs(torch.from_numpy(ids))
    np.testing.assert_array_equal(y, t.detach().numpy())
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    ours.backward(dy)
    if freeze:
        assert ours.weight.grad is None
    else:
        t.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-6)


def test_embedding_from_pretrained_copies_and_checks():
    w = np.ones((3, 2), F32)
    m = nn.Embedding.from_pretrained(w)
    w[0, 0] = 7
    assert m.weight.data[0, 0] == 1 and (m.num_embeddings, m.embedding_dim) == (3, 2)
    with pytest.raises(ValueError, match="embeddings must be 2-D"):
        nn.Embedding.from_pretrained(np.ones(3, F32))
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Embedding.from_pretrained(np.ones((3, 2), np.int32))
    with pytest.raises(ValueError, match="finite"):
        nn.Embedding.from_pretrained(np.full((3, 2), np.inf))
    with pytest.raises(ValueError, match="max_norm is not implemented"):
        nn.Embedding.from_pretrained(np.ones((3, 2)), max_norm=1.0)
    with pytest.raises(ValueError, match="sparse=True"):
        nn.Embedding.from_pretrained(np.ones((3, 2)), sparse=True)
    with pytest.raises(ValueError, match=r"padding_idx must be in \[-3, 3\)"):
        nn.Embedding.from_pretrained(np.ones((3, 2)), padding_idx=3)
    with pytest.raises(TypeError, match="freeze must be True or False"):
        nn.Embedding.from_pretrained(np.ones((3, 2)), freeze=1)
    kv = random_kv(V=10, D=3)
    rows, _ = kv.vectors_for(["w1", "new", "w2"], rng=0)
    emb = nn.Embedding.from_pretrained(rows, freeze=False)
    np.testing.assert_array_equal(emb(np.array([0, 2])), kv[["w1", "w2"]])


# ------------------------------------------------------------------------------------------------
# the PCA picture
# ------------------------------------------------------------------------------------------------
def test_pca_against_the_covariance_eigenvectors():
    from scratchlm.training.plots import _pca_2d
    x = np.random.default_rng(0).standard_normal((30, 5)) * [5, 3, 1, 0.5, 0.1]
    coords, frac = _pca_2d(x.astype(F32))
    xc = x - x.mean(0)
    val, vec = np.linalg.eigh(np.cov(xc.T))
    expect = xc @ vec[:, ::-1][:, :2]
    np.testing.assert_allclose(np.abs(coords), np.abs(expect), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(frac, val[::-1][:2] / val.sum(), rtol=1e-5)
    one, _ = _pca_2d(np.ones((1, 4)))
    assert one.shape == (1, 2) and not one.any()


def test_plot_word_vectors(tmp_path):
    pytest.importorskip("matplotlib")
    from scratchlm.training.plots import _word_vectors_figure, plot_word_vectors
    kv = analogy_world()
    path = tmp_path / "fig" / "words.png"
    assert plot_word_vectors(kv, ["country1", "male2", "thing3"], path, topn=4, title="demo")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = _word_vectors_figure(kv, ["country1", "male2"], topn=3)
    ax = fig.axes[0]
    assert "principal component" in ax.get_xlabel() and "principal component" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["country1 and its 3 nearest", "male2 and its 3 nearest"]
    labels = {t.get_text() for t in ax.texts}
    assert {"country1", "male2"} | {k for k, _ in kv.most_similar("male2", topn=3)} <= labels
    with pytest.raises(ValueError, match=r"not in the vocabulary .*\['nope', 'zilch'\]"):
        plot_word_vectors(kv, ["country1", "nope", "zilch"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
