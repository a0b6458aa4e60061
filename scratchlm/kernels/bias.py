"""A linear layer's bias: added to each row of its output, and its gradient, the column sums of
the upstream gradient. The caller splits the addition over the threads by rows; the sums run in
one thread (a pass that only streams memory, which two cores here read no faster than one), each
column summed over its rows in order: the same bits as NumPy's ``sum(axis=0)``, which adds row
after row."""

import numpy as np
from numba import njit

from . import dispatch


def add_bias_numpy(y, bias):
    """y: (n, m), bias: (m,) -> y += bias, in place."""
    with np.errstate(over="ignore"):          # past the max: inf, as the Numba route
        y += bias
    return y


@njit(cache=True, error_model="numpy", nogil=True)
def add_bias_numba(y, bias):
    # y: (n, m) a part of the rows, bias: (m,)
    for i in range(y.shape[0]):
        row = y[i]
        for j in range(y.shape[1]):
            row[j] += bias[j]
    return y


def column_sums_numpy(x, lo, hi, out):
    """x: (n, m) C-contiguous, out: (hi - lo,) -> out = x[:, lo:hi].sum(axis=0) in x's dtype."""
    np.sum(x[:, lo:hi], axis=0, out=out)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def column_sums_numba(x, lo, hi, out):
    # x: (n, m) the whole array, out: (hi - lo,); row after row, as NumPy's sum over axis 0. The
    # kernel takes the whole array and the block's bounds, not the block ``x[:, lo:hi]``: a view
    # whose rows are not contiguous has an unknown stride to Numba, and its loop ran one element
    # at a time (0.55 ms for (2048, 768) on two threads, where NumPy took 0.26 on one).
    out[:] = 0.0
    for i in range(x.shape[0]):
        row = x[i, lo:hi]
        for j in range(hi - lo):
            out[j] += row[j]
    return out


add_bias = dispatch(add_bias_numba, add_bias_numpy)
column_sums = dispatch(column_sums_numba, column_sums_numpy)
