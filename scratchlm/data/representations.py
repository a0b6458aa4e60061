r"""Classical text representations: one-hot vectors, bags of words and TF-IDF, on a minimal
compressed-sparse-row matrix (:class:`CSRMatrix`, no SciPy needed).

A document is a sequence of token ids in ``[0, V)``. Its bag of words is the count vector
:math:`\text{tf}_{d,t} = |\{i : d_i = t\}|`; a corpus of :math:`n` documents is an
:math:`n \times V` matrix with few non-zeros per row, hence CSR.

References: Salton & Buckley, "Term-weighting approaches in automatic text retrieval",
*Information Processing & Management* 24(5), 1988; Manning, Raghavan & Schütze, *Introduction
to Information Retrieval* (2008), ch. 6; scikit-learn's ``TfidfTransformer`` (whose definitions
:class:`TfidfTransformer` reproduces exactly).
"""

from __future__ import annotations

import numpy as np

from .._checks import as_int64, boolean, index_array, positive_int

__all__ = ["CSRMatrix", "one_hot", "bag_of_words", "TfidfTransformer"]


def _numeric_dtype(dtype, name: str = "dtype") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be a numeric numpy dtype, got {dtype!r}") from exc
    if dt.kind not in "biuf":
        raise TypeError(f"{name} must be a bool, integer or float dtype, got {dt}")
    return dt


class CSRMatrix:
    r"""A compressed-sparse-row matrix: row :math:`i` holds the values
    ``data[indptr[i]:indptr[i+1]]`` in the columns ``indices[indptr[i]:indptr[i+1]]``.

    Arguments: ``data`` (1-D, bool/int/float), ``indices`` (1-D integer, same length, each in
    ``[0, n_cols)``), ``indptr`` (1-D integer of length ``n_rows + 1``, starting at 0,
    non-decreasing, ending at ``len(data)``), ``shape`` ``(n_rows, n_cols)``. Every invariant is
    checked (``ValueError``/``TypeError``). Repeated columns within a row are allowed and mean
    their sum, as in SciPy. The arrays are copied.

    Supports ``nnz``, ``shape``, ``dtype``, :meth:`toarray`, :meth:`dot` (also ``A @ x``) with a
    dense vector or matrix, row slicing ``A[i]`` / ``A[i:j]`` (a CSRMatrix), and
    :meth:`from_dense`.
    """

    def __init__(self, data, indices, indptr, shape):
        if not isinstance(shape, (tuple, list)) or len(shape) != 2:
            raise ValueError(f"shape must be a tuple (n_rows, n_cols), got {shape!r}")
        n_rows = positive_int(shape[0], "shape[0]", minimum=0)
        n_cols = positive_int(shape[1], "shape[1]", minimum=0)
        data = np.array(data)
        if data.dtype.kind not in "biuf":
            raise TypeError(f"data must be numeric, got dtype {data.dtype}")
        indices, indptr = np.array(indices), np.array(indptr)
        for name, arr in (("data", data), ("indices", indices), ("indptr", indptr)):
            if arr.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if indices.size == 0:
            indices = indices.astype(np.int64)
        for name, arr in (("indices", indices), ("indptr", indptr)):
            if arr.dtype.kind not in "iu":
                raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
        # as int64 before any check: an unsigned indptr's differences cannot go negative (a
        # decrease would wrap to a huge step), and a uint64 value >= 2**63 is refused as given
        indices, indptr = as_int64(indices, "indices"), as_int64(indptr, "indptr")
        if indices.size != data.size:
            raise ValueError(f"indices must have the length of data ({data.size}), got "
                             f"{indices.size}")
        if indptr.size != n_rows + 1:
            raise ValueError(f"indptr must have length n_rows + 1 = {n_rows + 1}, got "
                             f"{indptr.size}")
        if indptr[0] != 0 or indptr[-1] != data.size:
            raise ValueError(f"indptr must start at 0 and end at nnz = {data.size}, got "
                             f"{int(indptr[0])} ... {int(indptr[-1])}")
        if np.any(np.diff(indptr) < 0):
            raise ValueError(f"indptr must be non-decreasing, got a decrease at row "
                             f"{int(np.argmax(np.diff(indptr) < 0))}")
        if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
            bad = int(indices.min()) if indices.min() < 0 else int(indices.max())
            raise ValueError(f"indices must lie in [0, {n_cols}) (n_cols), got {bad}")
        self.data = data
        self.indices = indices.astype(np.int64, copy=False)
        self.indptr = indptr.astype(np.int64, copy=False)
        self._shape = (n_rows, n_cols)

    @classmethod
    def _trusted(cls, data, indices, indptr, shape) -> "CSRMatrix":
        """Build without checks (internal use, arrays already valid)."""
        self = cls.__new__(cls)
        self.data, self.indices, self.indptr, self._shape = data, indices, indptr, shape
        return self

    @classmethod
    def from_dense(cls, array) -> "CSRMatrix":
        """The non-zeros of a 2-D array, row by row, columns ascending (dtype kept)."""
        a = np.asarray(array)
        if a.ndim != 2:
            raise ValueError(f"array must be 2-D, got shape {a.shape}")
        if a.dtype.kind not in "biuf":
            raise TypeError(f"array must be numeric, got dtype {a.dtype}")
        rows, cols = np.nonzero(a)
        indptr = np.zeros(a.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=a.shape[0]), out=indptr[1:])
        return cls._trusted(a[rows, cols].copy(), cols.astype(np.int64), indptr, a.shape)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def nnz(self) -> int:
        """Number of stored entries (explicit zeros included)."""
        return int(self.data.size)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def row_ids(self) -> np.ndarray:
        """Row index of every stored entry (int64, shape ``(nnz,)``)."""
        return np.repeat(np.arange(self._shape[0], dtype=np.int64), np.diff(self.indptr))

    def toarray(self) -> np.ndarray:
        """The dense ``(n_rows, n_cols)`` array (duplicates summed), dtype ``self.dtype``."""
        out = np.zeros(self._shape, dtype=self.data.dtype)
        np.add.at(out, (self.row_ids(), self.indices), self.data)
        return out

    def dot(self, dense) -> np.ndarray:
        r"""CSR times dense: :math:`(A x)_i = \sum_{k=p_i}^{p_{i+1}-1} \text{data}_k\,
        x_{\text{indices}_k}`. ``dense`` of shape ``(n_cols,)`` -> ``(n_rows,)``, or
        ``(n_cols, m)`` -> ``(n_rows, m)``; result dtype ``np.result_type(data, dense)``."""
        x = np.asarray(dense)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"dense must be numeric, got dtype {x.dtype}")
        if x.ndim not in (1, 2) or x.shape[0] != self._shape[1]:
            raise ValueError(f"dense must have shape ({self._shape[1]},) or "
                             f"({self._shape[1]}, m) to multiply a {self._shape} matrix, got "
                             f"{x.shape}")
        dt = np.result_type(self.data.dtype, x.dtype)
        if dt.kind == "b":
            dt = np.dtype(np.int64)              # bool @ bool counts, it does not OR
        out = np.zeros((self._shape[0],) + x.shape[1:], dtype=dt)
        contrib = (self.data.astype(dt, copy=False).reshape((-1,) + (1,) * (x.ndim - 1))
                   * x[self.indices])                                   # (nnz, [m])
        np.add.at(out, self.row_ids(), contrib)
        return out

    def __matmul__(self, dense) -> np.ndarray:
        return self.dot(dense)

    def __getitem__(self, key) -> "CSRMatrix":
        """``A[i]`` (a 1-row CSRMatrix) or ``A[i:j]`` (rows i..j-1; step must be 1)."""
        n = self._shape[0]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"row index {i} is out of range for {n} rows")
            i %= n
            start, stop = i, i + 1
        elif isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise ValueError(f"row slices must have step 1, got step {step}")
            stop = max(stop, start)
        else:
            raise TypeError(f"CSRMatrix rows are indexed by an int or a slice, got "
                            f"{type(key).__name__}")
        lo, hi = self.indptr[start], self.indptr[stop]
        return CSRMatrix._trusted(self.data[lo:hi].copy(), self.indices[lo:hi].copy(),
                                  self.indptr[start:stop + 1] - lo,
                                  (stop - start, self._shape[1]))

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"CSRMatrix(shape={self._shape}, nnz={self.nnz}, dtype={self.dtype})"


def one_hot(ids, num_classes: int, dtype=np.float32) -> np.ndarray:
    r"""One-hot encode integer ids: ``out[..., c] = 1`` if ``ids[...] == c`` else 0.

    ids: any shape (ints in ``[0, num_classes)``; lists and scalars accepted) ->
    ``ids.shape + (num_classes,)`` of ``dtype`` (float32 by default; bool/int/float allowed).
    """
    C = positive_int(num_classes, "num_classes")
    dt = _numeric_dtype(dtype)
    ids = index_array(ids, "ids", C, allow_empty=True)
    out = np.zeros(ids.shape + (C,), dtype=dt)
    np.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


def bag_of_words(docs, vocab_size: int, *, binary: bool = False, dtype=np.float32) -> CSRMatrix:
    r"""Count matrix of a list of documents: :math:`X_{d,t} = |\{i : \text{docs}[d][i] = t\}|`
    (or :math:`\mathbb{1}[t \in d]` with ``binary=True``).

    docs: a list of 1-D id sequences (each may be empty) or a 2-D integer array (one document
    per row) -> ``CSRMatrix`` of shape ``(len(docs), vocab_size)``, columns ascending within a
    row, ``dtype`` float32 by default.
    """
    V = positive_int(vocab_size, "vocab_size")
    binary = boolean(binary, "binary")
    dt = _numeric_dtype(dtype)
    if isinstance(docs, np.ndarray):
        if docs.ndim != 2:
            raise ValueError(f"docs must be a list of id sequences or a 2-D array, got an array "
                             f"of shape {docs.shape}")
        docs = list(docs)
    elif isinstance(docs, (str, bytes)) or not isinstance(docs, (list, tuple)):
        raise TypeError(f"docs must be a list of id sequences, got {type(docs).__name__}")
    cols, vals, counts = [], [], np.zeros(len(docs) + 1, dtype=np.int64)
    for d, doc in enumerate(docs):
        if isinstance(doc, (int, np.integer)):
            raise TypeError(f"docs[{d}] must be a sequence of ids, got an int (pass a list of "
                            f"documents, e.g. [ids], not one document)")
        ids = index_array(doc, f"docs[{d}]", V, ndim=1, allow_empty=True)
        u, c = np.unique(ids, return_counts=True)
        cols.append(u)
        vals.append(np.ones_like(c) if binary else c)
        counts[d + 1] = u.size
    data = np.concatenate(vals).astype(dt) if vals else np.zeros(0, dtype=dt)
    indices = np.concatenate(cols).astype(np.int64) if cols else np.zeros(0, dtype=np.int64)
    return CSRMatrix._trusted(data, indices, np.cumsum(counts), (len(docs), V))


class TfidfTransformer:
    r"""TF-IDF weighting of a count matrix, with scikit-learn's exact definitions.

    With :math:`n` training documents and document frequency
    :math:`\text{df}_t = |\{d : X_{d,t} > 0\}|`,

    .. math::

        \text{idf}_t = \begin{cases}
            \ln\dfrac{1 + n}{1 + \text{df}_t} + 1 & \text{smooth\_idf=True (one extra document
            containing every term)} \\[1ex]
            \ln\dfrac{n}{\text{df}_t} + 1 & \text{smooth\_idf=False}
        \end{cases}

    .. math::

        \text{tf}_{d,t} = X_{d,t} \ \text{or, with sublinear\_tf,}\ 1 + \ln X_{d,t}
        \ (X_{d,t} > 0;\ \text{zeros stay } 0), \qquad
        w_{d,t} = \frac{\text{tf}_{d,t}\,\text{idf}_t}{\lVert \text{tf}_{d}\odot
        \text{idf}\rVert}

    where the norm is L2 (``norm='l2'``), L1 (``'l1'``, sum of absolute values) or none
    (``norm=None``); all-zero rows stay zero. The "+1" keeps terms that occur in every document
    from being ignored entirely.

    ``fit(X)`` learns ``idf_`` (shape ``(V,)``; float64, or float32 for float32 counts) from a
    :class:`CSRMatrix` or dense 2-D array of non-negative finite counts; ``transform(X)``
    returns a new CSRMatrix of the same shape (float32 counts stay float32, anything else gives
    float64). With ``smooth_idf=False`` a term absent from the fitted documents has infinite
    idf (as in scikit-learn); transforming a document that contains one raises ``ValueError``.

    References: Salton & Buckley (1988); Manning, Raghavan & Schütze, *Introduction to
    Information Retrieval*, ch. 6; scikit-learn ``sklearn.feature_extraction.text
    .TfidfTransformer``.
    """

    NORMS = ("l2", "l1", None)

    def __init__(self, smooth_idf: bool = True, sublinear_tf: bool = False, norm="l2"):
        self.smooth_idf = boolean(smooth_idf, "smooth_idf")
        self.sublinear_tf = boolean(sublinear_tf, "sublinear_tf")
        if norm not in self.NORMS:
            raise ValueError(f"norm must be one of {self.NORMS}, got {norm!r}")
        self.norm = norm
        self.idf_ = None

    @staticmethod
    def _counts(X, name: str = "X") -> CSRMatrix:
        if isinstance(X, np.ndarray):
            X = CSRMatrix.from_dense(X)
        elif not isinstance(X, CSRMatrix):
            raise TypeError(f"{name} must be a CSRMatrix or a 2-D numpy array, got "
                            f"{type(X).__name__}")
        if X.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got dtype {X.dtype}")
        if X.nnz:
            if X.dtype.kind == "f" and not np.all(np.isfinite(X.data)):
                raise ValueError(f"{name} must be finite (it contains NaN or inf)")
            if X.data.min() < 0:
                raise ValueError(f"{name} must hold non-negative counts, got {X.data.min()}")
        # canonical form: sum duplicates, drop explicit zeros
        keys = X.row_ids() * X.shape[1] + X.indices
        u, inv = np.unique(keys, return_inverse=True)
        data = np.zeros(u.size, dtype=X.dtype if X.dtype.kind != "b" else np.int64)
        np.add.at(data, inv, X.data)
        keep = data != 0
        u, data = u[keep], data[keep]
        rows, cols = np.divmod(u, max(X.shape[1], 1))
        indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=X.shape[0]), out=indptr[1:])
        return CSRMatrix._trusted(data, cols.astype(np.int64), indptr, X.shape)

    @staticmethod
    def _float_dtype(X: CSRMatrix) -> np.dtype:
        return X.dtype if X.dtype == np.float32 else np.dtype(np.float64)

    def fit(self, X) -> "TfidfTransformer":
        """Learn ``idf_`` from the count matrix ``X`` (n documents x V terms)."""
        X = self._counts(X)
        n = X.shape[0]
        if n == 0:
            raise ValueError("X must hold at least one document, got 0 rows")
        dt = self._float_dtype(X)
        df = np.bincount(X.indices, minlength=X.shape[1]).astype(dt)
        n_eff = n + int(self.smooth_idf)
        df += float(self.smooth_idf)
        with np.errstate(divide="ignore"):
            self.idf_ = (np.log(dt.type(n_eff) / df) + 1).astype(dt)
        self.n_features_ = X.shape[1]
        return self

    def transform(self, X) -> CSRMatrix:
        """TF-IDF weights of ``X`` with the fitted ``idf_`` (see the class docstring)."""
        if self.idf_ is None:
            raise RuntimeError("TfidfTransformer is not fitted yet; call fit(X) first")
        X = self._counts(X)
        if X.shape[1] != self.n_features_:
            raise ValueError(f"X must have {self.n_features_} columns (the fitted vocabulary), "
                             f"got shape {X.shape}")
        dt = self._float_dtype(X)
        tf = X.data.astype(dt)
        if self.sublinear_tf:
            tf = np.log(tf) + 1
        idf = self.idf_[X.indices]
        if not np.all(np.isfinite(idf)):
            k = int(np.argmax(~np.isfinite(idf)))
            raise ValueError(f"X contains term {int(X.indices[k])} which never occurred in the "
                             f"fitted documents, so its idf is infinite with smooth_idf=False; "
                             f"use smooth_idf=True")
        w = tf * idf
        if self.norm is not None:
            rows = X.row_ids()
            per_row = w * w if self.norm == "l2" else np.abs(w)
            norms = np.zeros(X.shape[0], dtype=dt)
            np.add.at(norms, rows, per_row)
            if self.norm == "l2":
                norms = np.sqrt(norms)
            norms[norms == 0] = 1
            w = w / norms[rows]
        return CSRMatrix._trusted(w.astype(dt, copy=False), X.indices, X.indptr, X.shape)

    def fit_transform(self, X) -> CSRMatrix:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)
