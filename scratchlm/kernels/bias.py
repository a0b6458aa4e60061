"""A linear layer's bias: added to each row of its output, and its gradient, the column sums of
the upstream gradient. Two passes over a (rows, out_features) array that NumPy runs on one
thread; here the caller splits them over the threads -- the addition by rows, the sums by columns,
so that each column is still summed over its rows in order and the result does not depend on
the number of threads (the same bits as NumPy's ``sum(axis=0)``, which adds row after row)."""

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


def column_sums_numpy(x, out):
    """x: (n, m), out: (m,) -> out = x.sum(axis=0) in x's dtype."""
    np.sum(x, axis=0, out=out)
    return out


@njit(cache=True, error_model="numpy", nogil=True)
def column_sums_numba(x, out):
    # x: (n, m) a block of columns, out: (m,); row after row, as NumPy's sum over axis 0
    out[:] = 0.0
    for i in range(x.shape[0]):
        row = x[i]
        for j in range(x.shape[1]):
            out[j] += row[j]
    return out


add_bias = dispatch(add_bias_numba, add_bias_numpy)
column_sums = dispatch(column_sums_numba, column_sums_numpy)
