"""Text representations: CSRMatrix, one-hot, bag of words, TF-IDF (scikit-learn's definitions)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratchlm.data.representations import CSRMatrix, TfidfTransformer, bag_of_words, one_hot


# ------------------------------------------------------------------ CSRMatrix
def example():
    dense = np.array([[1.0, 0, 2, 0], [0, 0, 0, 0], [0, 3, 0, 4], [5, 0, 0, 0]])
    return dense, CSRMatrix([1.0, 2, 3, 4, 5], [0, 2, 1, 3, 0], [0, 2, 2, 4, 5], (4, 4))


def test_csr_basics():
    dense, A = example()
    assert A.shape == (4, 4) and A.nnz == 5 and A.dtype == np.float64 and len(A) == 4
    np.testing.assert_array_equal(A.toarray(), dense)
    B = CSRMatrix.from_dense(dense)
    np.testing.assert_array_equal(B.data, A.data)
    np.testing.assert_array_equal(B.indices, A.indices)
    np.testing.assert_array_equal(B.indptr, A.indptr)
    assert "nnz=5" in repr(A)


def test_csr_dot():
    dense, A = example()
    v = np.array([1.0, -2.0, 0.5, 3.0])
    np.testing.assert_allclose(A.dot(v), dense @ v)
    M = np.arange(12.0).reshape(4, 3)
    np.testing.assert_allclose(A.dot(M), dense @ M)
    np.testing.assert_allclose(A @ M, dense @ M)
    assert A.dot(M.astype(np.float32)).dtype == np.float64
    A32 = CSRMatrix.from_dense(dense.astype(np.float32))
    assert A32.dot(M.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        A.dot(np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        A.dot(np.ones((4, 2, 2)))


def test_csr_row_slicing():
    dense, A = example()
    for key in (slice(1, 3), slice(None), slice(2, None), slice(-2, None), slice(3, 1),
                slice(0, 0)):
        S = A[key]
        assert isinstance(S, CSRMatrix)
        np.testing.assert_array_equal(S.toarray(), dense[key])
    np.testing.assert_array_equal(A[2].toarray(), dense[2:3])
    np.testing.assert_array_equal(A[-1].toarray(), dense[3:4])
    with pytest.raises(IndexError):
        A[4]
    with pytest.raises(ValueError, match="step"):
        A[::2]
    with pytest.raises(TypeError):
        A[1, 2]


def test_csr_duplicates_are_summed():
    A = CSRMatrix([1, 2, 3], [1, 1, 0], [0, 2, 3], (2, 2))
    np.testing.assert_array_equal(A.toarray(), [[0, 3], [3, 0]])
    np.testing.assert_array_equal(A.dot(np.array([1, 10])), [30, 3])


@pytest.mark.parametrize("args,exc,match", [
    (([1.0], [0], [0, 1], (1,)), ValueError, "shape"),
    (([1.0], [0], [0, 1], (1, -1)), ValueError, "shape\\[1\\]"),
    (([1.0], [0, 1], [0, 1], (1, 2)), ValueError, "length of data"),
    (([1.0], [0], [0, 1, 1], (1, 2)), ValueError, "n_rows \\+ 1"),
    (([1.0], [0], [1, 1], (1, 2)), ValueError, "start at 0"),
    (([1.0, 2.0], [0, 1], [0, 2, 1, 2], (3, 2)), ValueError, "non-decreasing"),
    (([1.0], [2], [0, 1], (1, 2)), ValueError, "indices must lie in \\[0, 2\\)"),
    (([1.0], [-1], [0, 1], (1, 2)), ValueError, "indices must lie"),
    (([1.0], [0.0], [0, 1], (1, 2)), TypeError, "indices"),
    ((["a"], [0], [0, 1], (1, 2)), TypeError, "data"),
    (([[1.0]], [0], [0, 1], (1, 2)), ValueError, "data must be 1-D"),
])
def test_csr_validation(args, exc, match):
    with pytest.raises(exc, match=match):
        CSRMatrix(*args)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                  elements=st.sampled_from([0.0, 0.0, 1.0, -2.5, 3.0])))
def test_csr_roundtrip_property(dense):
    A = CSRMatrix.from_dense(dense)
    np.testing.assert_array_equal(A.toarray(), dense)
    assert A.nnz == np.count_nonzero(dense)
    v = np.arange(dense.shape[1], dtype=np.float64)
    np.testing.assert_allclose(A.dot(v), dense @ v)
    np.testing.assert_array_equal(A[1:].toarray(), dense[1:])


# ------------------------------------------------------------------ one_hot
def test_one_hot():
    out = one_hot(np.array([[0, 2], [1, 2]]), 3)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(-1), [[0, 2], [1, 2]])
    np.testing.assert_array_equal(out.sum(-1), 1)
    np.testing.assert_array_equal(one_hot([1, 0], 2, dtype=np.int64), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(one_hot(2, 4), [0, 0, 1, 0])
    assert one_hot(np.zeros(0, dtype=np.int64), 5).shape == (0, 5)
    np.testing.assert_array_equal(one_hot(np.arange(4), 4, dtype=bool), np.eye(4, dtype=bool))


@pytest.mark.parametrize("args,kwargs,exc,match", [
    (([0, 3], 3), {}, ValueError, "ids must lie in \\[0, 3\\), got 3"),
    (([-1], 3), {}, ValueError, "ids must lie"),
    ((np.array([0.0, 1.0]), 3), {}, TypeError, "integer dtype"),
    (([0], 0), {}, ValueError, "num_classes"),
    (([0], 2), {"dtype": "U3"}, TypeError, "dtype"),
])
def test_one_hot_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        one_hot(*args, **kwargs)


# ------------------------------------------------------------------ bag_of_words
def test_bag_of_words_counts():
    docs = [[0, 1, 1, 4], [], np.array([3, 3, 3], dtype=np.int32), [2]]
    X = bag_of_words(docs, 5)
    assert X.shape == (4, 5) and X.dtype == np.float32
    want = np.array([[1, 2, 0, 0, 1], [0] * 5, [0, 0, 0, 3, 0], [0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(X.toarray(), want)
    np.testing.assert_array_equal(bag_of_words(docs, 5, binary=True).toarray(), want > 0)
    assert bag_of_words(docs, 5, dtype=np.int64).dtype == np.int64
    X2 = bag_of_words(np.array([[0, 1, 1], [2, 2, 0]]), 3)          # one document per row
    np.testing.assert_array_equal(X2.toarray(), [[1, 2, 0], [1, 0, 2]])
    assert bag_of_words([], 3).shape == (0, 3)


def test_bag_of_words_errors():
    with pytest.raises(ValueError, match=r"docs\[1\] must lie in \[0, 3\)"):
        bag_of_words([[0], [3]], 3)
    with pytest.raises(TypeError, match=r"docs\[0\]"):
        bag_of_words([[0.5]], 3)
    with pytest.raises(TypeError, match="not one document"):
        bag_of_words([0, 1, 2], 3)
    with pytest.raises(TypeError, match="docs"):
        bag_of_words("abc", 3)
    with pytest.raises(ValueError, match="2-D"):
        bag_of_words(np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="vocab_size"):
        bag_of_words([[0]], 0)
    with pytest.raises(TypeError, match="binary"):
        bag_of_words([[0]], 2, binary=1)


# ------------------------------------------------------------------ TF-IDF
# scikit-learn's documented example (feature_extraction user guide, "Tf–idf term weighting")
COUNTS = np.array([[3, 0, 1], [2, 0, 0], [3, 0, 0], [4, 0, 0], [3, 2, 0], [3, 0, 2]])
SKLEARN_NO_SMOOTH = np.array([[0.81940995, 0., 0.57320793],
                              [1., 0., 0.],
                              [1., 0., 0.],
                              [1., 0., 0.],
                              [0.47330339, 0.88089948, 0.],
                              [0.58149261, 0., 0.81355169]])


def hand_tfidf(counts, smooth, sublinear, norm):
    """Straight from the definitions, in loops."""
    n, V = counts.shape
    idf = []
    for t in range(V):
        df = sum(1 for d in range(n) if counts[d, t] > 0)
        idf.append(math.log((1 + n) / (1 + df)) + 1 if smooth
                   else (math.log(n / df) + 1 if df else math.inf))
    out = np.zeros((n, V))
    for d in range(n):
        for t in range(V):
            c = counts[d, t]
            if c > 0:
                out[d, t] = (1 + math.log(c) if sublinear else c) * idf[t]
        if norm == "l2":
            s = math.sqrt(sum(v * v for v in out[d]))
        elif norm == "l1":
            s = sum(abs(v) for v in out[d])
        else:
            s = 1.0
        if s > 0:
            out[d] /= s
    return np.array(idf), out


def test_tfidf_matches_documented_values():
    tf = TfidfTransformer(smooth_idf=False)
    W = tf.fit_transform(CSRMatrix.from_dense(COUNTS.astype(np.float64)))
    np.testing.assert_allclose(W.toarray(), SKLEARN_NO_SMOOTH, atol=1e-8)
    np.testing.assert_allclose(tf.idf_, [1.0, math.log(6) + 1, math.log(3) + 1], rtol=1e-14)
    smooth = TfidfTransformer().fit(COUNTS)                     # dense int input works too
    np.testing.assert_allclose(smooth.idf_, [1.0, math.log(7 / 2) + 1, math.log(7 / 3) + 1],
                               rtol=1e-14)
    np.testing.assert_allclose(smooth.transform(COUNTS).toarray()[0],
                               [0.85151335, 0., 0.52433293], atol=1e-8)


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("sublinear", [True, False])
@pytest.mark.parametrize("norm", ["l2", "l1", None])
def test_tfidf_matches_hand_computation(smooth, sublinear, norm):
    docs = [[0, 0, 1, 2], [1, 1, 1, 3], [0, 2, 2, 2, 2], [4], []]
    X = bag_of_words(docs, 5, dtype=np.float64)
    tf = TfidfTransformer(smooth_idf=smooth, sublinear_tf=sublinear, norm=norm)
    W = tf.fit_transform(X)
    idf, want = hand_tfidf(X.toarray(), smooth, sublinear, norm)
    np.testing.assert_allclose(tf.idf_, idf, rtol=1e-14)
    assert isinstance(W, CSRMatrix) and W.shape == X.shape and W.dtype == np.float64
    np.testing.assert_allclose(W.toarray(), want, rtol=1e-13, atol=1e-15)


def test_tfidf_dtype_and_unseen_terms():
    X32 = bag_of_words([[0, 1], [1, 2, 2]], 4)                  # float32 counts
    tf = TfidfTransformer().fit(X32)
    assert tf.idf_.dtype == np.float32
    W = tf.transform(X32)
    assert W.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(W.toarray(), axis=1), 1, rtol=1e-6)
    # term 3 never occurs: finite idf with smoothing, an error without
    assert np.isfinite(tf.transform(bag_of_words([[3]], 4)).toarray()).all()
    raw = TfidfTransformer(smooth_idf=False).fit(X32)
    assert raw.idf_[3] == np.inf
    with pytest.raises(ValueError, match="term 3"):
        raw.transform(bag_of_words([[0, 3]], 4))


def test_tfidf_errors():
    with pytest.raises(RuntimeError, match="fit"):
        TfidfTransformer().transform(COUNTS)
    with pytest.raises(ValueError, match="norm"):
        TfidfTransformer(norm="l3")
    with pytest.raises(TypeError, match="smooth_idf"):
        TfidfTransformer(smooth_idf="yes")
    tf = TfidfTransformer().fit(COUNTS)
    with pytest.raises(ValueError, match="3 columns"):
        tf.transform(np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        TfidfTransformer().fit(-np.ones((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        TfidfTransformer().fit(np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError, match="CSRMatrix"):
        TfidfTransformer().fit([[1, 2]])
    with pytest.raises(ValueError, match="at least one document"):
        TfidfTransformer().fit(np.zeros((0, 3)))


def test_tfidf_matches_sklearn():
    text = pytest.importorskip("sklearn.feature_extraction.text")
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.7, size=(12, 9)).astype(np.float64)
    counts[:, 4] = 0                                            # a term no document uses
    for smooth in (True, False):
        for sublinear in (True, False):
            for norm in ("l2", "l1", None):
                if not smooth:
                    counts_fit = counts.copy()
                    counts_fit[0, 4] = 1                        # avoid df = 0 (inf idf)
                else:
                    counts_fit = counts
                ref = text.TfidfTransformer(smooth_idf=smooth, sublinear_tf=sublinear,
                                            norm=norm).fit(counts_fit)
                ours = TfidfTransformer(smooth_idf=smooth, sublinear_tf=sublinear,
                                        norm=norm).fit(counts_fit)
                np.testing.assert_allclose(ours.idf_, ref.idf_, rtol=1e-12)
                np.testing.assert_allclose(ours.transform(counts_fit).toarray(),
                                           ref.transform(counts_fit).toarray(), rtol=1e-12,
                                           atol=1e-15)
