"""Embedding backward: scatter-add rows of the upstream gradient into the table's gradient.

The forward is a gather (``weight[ids]``), which NumPy does well; the backward must add, because
one id may appear many times: ``dweight[ids[i]] += dout[i]``.
"""

import numpy as np
from numba import njit

from . import dispatch


def scatter_add_rows_numpy(dweight, ids, dout):
    """dweight: (V, D) accumulated in place; ids: (N,) int64 in [0, V); dout: (N, D)."""
    np.add.at(dweight, ids, dout)


@njit(cache=True, error_model="numpy", nogil=True)
def scatter_add_rows_numba(dweight, ids, dout):
    # dweight: (V, D) in place, ids: (N,), dout: (N, D)
    N, D = dout.shape
    for i in range(N):
        row = ids[i]
        for d in range(D):
            dweight[row, d] += dout[i, d]


scatter_add_rows = dispatch(scatter_add_rows_numba, scatter_add_rows_numpy)
