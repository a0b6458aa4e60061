"""Input checks that run on every forward: whether an array holds only finite numbers.

``np.isfinite(x).all()`` allocates a boolean array as large as ``x``; the Numba twin walks the
array once and stops at the first NaN/inf, allocating nothing.
"""

import numpy as np
from numba import njit

from . import dispatch


def all_finite_numpy(x):
    """x: (n,) flat float array -> True when no entry is NaN or +-inf."""
    return bool(np.isfinite(x).all())


@njit(cache=True, nogil=True)
def all_finite_numba(x):
    # x: (n,) flat float array
    for i in range(x.shape[0]):
        v = x[i]
        if not (v - v == 0.0):  # NaN - NaN and inf - inf are NaN
            return False
    return True


all_finite = dispatch(all_finite_numba, all_finite_numpy)
