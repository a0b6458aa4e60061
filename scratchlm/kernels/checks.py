"""Input checks that run on every forward: whether an array holds only finite numbers.

``np.isfinite(x).all()`` allocates a boolean array as large as ``x``. The Numba twin allocates
nothing: it reads the floats' raw bits and counts, a block at a time, the entries whose exponent
field is all ones (IEEE 754: exactly the infinities and NaNs), stopping after the first block that
has one. Counting over integers vectorises; a float test such as ``v - v == 0`` with an early
exit runs one element at a time (several times slower; docs/benchmarks.md has the timing).
"""

import numpy as np
from numba import njit

from . import dispatch

#: the exponent field, all ones, of float32 / float64 -- set in every inf and NaN, in no finite number
_EXPONENT = {4: (np.uint32, np.uint32(0x7F800000)), 8: (np.uint64, np.uint64(0x7FF0000000000000))}
_BLOCK = 4096


def all_finite_numpy(x):
    """x: (n,) flat float array -> True when no entry is NaN or +-inf."""
    return bool(np.isfinite(x).all())


@njit(cache=True, error_model="numpy", nogil=True)
def _no_full_exponent(bits, exponent):
    # bits: (n,) the raw bits of float32 (uint32) or float64 (uint64) entries
    for start in range(0, bits.shape[0], _BLOCK):
        block = bits[start:start + _BLOCK]
        bad = np.uint32(0)         # unsigned increments: an int64 counter of booleans did not
        for i in range(block.shape[0]):          # vectorise
            bad += np.uint32((block[i] & exponent) == exponent)
        if bad:
            return False
    return True


def all_finite_numba(x):
    """x: (n,) flat contiguous float32/float64 array -> True when no entry is NaN or +-inf."""
    utype, exponent = _EXPONENT[x.dtype.itemsize]
    return _no_full_exponent(x.view(utype), exponent)


all_finite = dispatch(all_finite_numba, all_finite_numpy)
