"""Numerics over the whole floating-point range, on both kernel routes (issue 15 section 1).

Every elementwise and row-wise kernel is fed values drawn from the WHOLE finite range of its dtype
-- subnormals, values near the max, +-1e13, +-3e38, +-1e308 -- not only |x| <= 10, and must

* give the same answer on both routes (Numba and its NumPy twin), to a few ulps;
* be finite wherever the mathematical result is representable, and ``inf`` only where it is not;
* reach the known limits exactly (gelu(-huge) = -0, gelu'(-huge) = 0, sigmoid saturating with
  gradient 0, a softmax row with a huge spread one-hot, ...);
* agree with the exact value (mpmath, 40 digits) up to a few ulps plus the function's own
  sensitivity to a few-ulp change of its input (a backward-stability criterion: float32 GELU at
  x = -10 inherits ~|6u| ulps from the rounding of x^3 that no implementation can avoid);
* agree with torch where torch is right (where torch's value passes the same exactness test).

Inputs come from three sources: a fixed grid of extreme values, seeded random bit patterns
(log-uniform magnitudes over the whole range) and hypothesis strategies with bounded examples.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from scratchlm import functional as F
from scratchlm.kernels import (attention as A, conv as CV, gelu as G, layernorm as L, rnn as R,
                               softmax as S, use_backend, vmath as V)

DTYPES = (np.float32, np.float64)
# the profile (tests/conftest.py) bounds the examples: 8 by default, 200 with HYPOTHESIS_PROFILE=thorough
BOUNDED = settings(deadline=None, suppress_health_check=list(HealthCheck))


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def extremes(dtype):
    """+-max, +-tiny (smallest normal), +-smallest subnormal, +-1e13, +-3e38 (and +-1e308,
    +-1e154 for float64), a few thresholds (exp's over/underflow, tanh's saturation), 0 and -0."""
    fi = np.finfo(dtype)
    v = [float(fi.max), float(fi.tiny), float(fi.smallest_subnormal), 1e13, 3e38, 1e19, 1e20,
         1e-30, 1.0, 0.5, 10.0, 20.0, 88.7, 89.0, 104.0, 1e4]
    if dtype == np.float64:
        v += [1e308, 1e154, 1e200, 710.0, 745.0, 3e-300]
    v = np.array([a for a in v if a <= fi.max], dtype=np.float64).astype(dtype)
    return np.concatenate([v, -v, np.array([0.0, -0.0], dtype)])


def full_range(n, dtype, rng):
    """n finite values with log-uniform magnitudes over the whole range, subnormals included:
    random sign, exponent field and mantissa (the exponent field never all ones)."""
    if dtype == np.float32:
        sign = rng.integers(0, 2, n).astype(np.uint32) << np.uint32(31)
        expo = rng.integers(0, 255, n).astype(np.uint32) << np.uint32(23)
        mant = rng.integers(0, 1 << 23, n).astype(np.uint32)
        return (sign | expo | mant).view(np.float32)
    sign = rng.integers(0, 2, n).astype(np.uint64) << np.uint64(63)
    expo = rng.integers(0, 2047, n).astype(np.uint64) << np.uint64(52)
    mant = rng.integers(0, 1 << 52, n, dtype=np.uint64)
    return (sign | expo | mant).view(np.float64)


def sample(dtype, seed=0, n=300):
    """Extremes, n full-range values and a moderate band (where the functions bend)."""
    rng = np.random.default_rng(seed)
    moderate = (rng.standard_normal(60) * 6).astype(dtype)
    return np.concatenate([extremes(dtype), full_range(n, dtype, rng), moderate]).astype(dtype)


def elements(dtype):
    w = 32 if dtype == np.float32 else 64
    return st.one_of(st.floats(width=w, allow_nan=False, allow_infinity=False),
                     st.sampled_from([float(v) for v in extremes(dtype)]))


def arrays(dtype, shape):
    return hnp.arrays(dtype, shape, elements=elements(dtype))


def rows_of(dtype, seed, R=24, C=7):
    """(R, C) rows mixing extremes, full-range values, moderate values, huge spreads and ties."""
    rng = np.random.default_rng(seed)
    pool = np.concatenate([extremes(dtype), full_range(200, dtype, rng),
                           (rng.standard_normal(100) * 5).astype(dtype)])
    x = rng.choice(pool, size=(R, C))
    big = float(np.finfo(dtype).max)
    special = [[big, -big, 0, 1, big, -1, 3],               # a tie at the max, the full spread
               [-big] * 7,                                  # all equal, at -max
               list(rng.standard_normal(7) * 3),            # an ordinary row
               [3e38, -3e38, 1e-30, 0, -1e13, 1e13, 2.5e38]]
    for r, row in enumerate(special[:R]):
        x[r] = np.resize(np.array(row), C)
    return np.ascontiguousarray(x.astype(dtype))


# ------------------------------------------------------------------------------------------------
# comparisons
# ------------------------------------------------------------------------------------------------
def spacing(a, dtype):
    """The dtype's spacing at |a| (the smallest subnormal near 0)."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    a = np.minimum(np.nan_to_num(a, posinf=np.finfo(dtype).max), np.finfo(dtype).max)
    return np.spacing(a.astype(dtype)).astype(np.float64)


def assert_close(ours, ref, dtype, ulps=4, atol=0.0, what="", inputs=None):
    """|ours - ref| <= ulps * spacing + atol elementwise (atol may be an array); inf and NaN
    must sit at the same places with the same signs."""
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    o, r = ours.astype(np.float64), ref.astype(np.float64)
    same_nan = np.isnan(o) == np.isnan(r)
    same_inf = (np.isinf(o) == np.isinf(r)) & np.where(np.isinf(o), np.sign(o) == np.sign(r), True)
    bad = ~(same_nan & same_inf)
    fin = np.isfinite(o) & np.isfinite(r)
    with np.errstate(over="ignore", invalid="ignore"):
        allowed = ulps * np.maximum(spacing(o, dtype), spacing(r, dtype)) + atol
        diff = np.abs(o - r)
    bad |= fin & ~(diff <= allowed)
    if bad.any():
        i = np.flatnonzero(bad)[:6]
        src = "" if inputs is None else f" inputs {np.asarray(inputs).reshape(-1)[i] if np.size(inputs) == ours.size else ''}"
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} differ: ours {o.reshape(-1)[i]} "
                             f"ref {r.reshape(-1)[i]}{src}")


def both(kernel, *args):
    """Run a kernel on both routes (copies of the array arguments); outputs as tuples."""
    a = kernel.numba(*[x.copy() if isinstance(x, np.ndarray) else x for x in args])
    b = kernel.numpy(*[x.copy() if isinstance(x, np.ndarray) else x for x in args])
    return (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))


def routes(fn):
    """fn() on each route: (numba result, numpy result)."""
    with use_backend("numba"):
        a = fn()
    with use_backend("numpy"):
        b = fn()
    return a, b


@pytest.fixture(scope="module")
def mp():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    return mpmath


def to_dtype(values, dtype):
    """Exact (mpmath) values -> the dtype, correctly rounded (inf past the max)."""
    with np.errstate(over="ignore"):
        return np.array([float(v) for v in values], dtype=np.float64).astype(dtype)


def stable_bound(mp, f, x, dtype, k=4):
    """max over d = +-k eps of |f(x (1 + d)) - f(x)|: what a few-ulp change of the input moves
    the exact result (f: mpf -> mpf)."""
    eps = mp.mpf(float(np.finfo(dtype).eps))
    out = []
    for v in x:
        xv = mp.mpf(float(v))
        f0 = f(xv)
        out.append(max(abs(f(xv * (1 + k * eps)) - f0), abs(f(xv * (1 - k * eps)) - f0)))
    with np.errstate(over="ignore"):
        return np.array([float(v) for v in out], dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# vmath: exp and tanh over the whole float32 range
# ------------------------------------------------------------------------------------------------
def test_vectorised_exp_whole_range():
    t = np.concatenate([sample(np.float32, 1, 3000), np.linspace(-110, 95, 20001)]).astype(np.float32)
    with np.errstate(over="ignore"):
        ref = np.exp(t.astype(np.float64)).astype(np.float32)
        np32 = np.exp(t)
    ours = V.exp.numba(t)
    assert ours.dtype == np.float32
    assert_close(ours, ref, np.float32, ulps=1.5, atol=2.0 ** -149, what="exp")
    assert np.array_equal(ours == 0, np32 == 0) and np.array_equal(np.isinf(ours), np.isinf(np32))
    edge = V.exp.numba(np.array([-np.inf, -3e38, np.nan, 3e38, np.inf], np.float32))
    assert edge[0] == 0 and edge[1] == 0 and np.isnan(edge[2]) and edge[3] == np.inf == edge[4]


def test_vectorised_tanh_whole_range():
    x = np.concatenate([sample(np.float32, 2, 3000), np.linspace(-12, 12, 20001),
                        np.logspace(-45, 1, 2000, dtype=np.float64).astype(np.float32)]).astype(np.float32)
    ours = V.tanh.numba(x)
    assert_close(ours, np.tanh(x.astype(np.float64)).astype(np.float32), np.float32, ulps=3,
                 atol=2.0 ** -149, what="tanh")
    assert np.all(np.abs(ours[np.abs(x) >= 9.02]) == 1) and np.all(np.sign(ours) == np.sign(x))
    assert np.array_equal(np.signbit(V.tanh.numba(np.array([0.0, -0.0], np.float32))), [False, True])
    x64 = np.concatenate([sample(np.float64, 2, 3000), x.astype(np.float64)])
    assert_close(V.tanh.numba(x64), np.tanh(x64), np.float64, ulps=2, atol=5e-324, what="tanh float64")


# ------------------------------------------------------------------------------------------------
# GELU, exact and tanh
# ------------------------------------------------------------------------------------------------
def _gelu_exact(mp):
    def erfc(z):                    # mpmath's erfc overflows past ~1e8: the asymptotic series
        if abs(z) < 1e6:
            return mp.erfc(z)
        tail = mp.exp(-z * z) / (abs(z) * mp.sqrt(mp.pi))
        return tail if z > 0 else 2 - tail

    def y(x):
        return x * erfc(-x / mp.sqrt(2)) / 2

    def d(x):
        return erfc(-x / mp.sqrt(2)) / 2 + x * mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi)
    return y, d


def _gelu_tanh(mp):
    k, c = mp.sqrt(2 / mp.pi), mp.mpf("0.044715")

    def s(x):
        return 1 / (1 + mp.exp(-2 * k * (x + c * x ** 3)))

    def y(x):
        return x * s(x)

    def d(x):
        sv = s(x)
        return sv + 2 * x * sv * (1 - sv) * k * (1 + 3 * c * x * x)
    return y, d


@pytest.mark.parametrize("approximate", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_routes_limits_and_exact_values(mp, dtype, approximate):
    x = sample(dtype, 3, 250)
    (y1, d1), (y2, d2) = both(G.gelu_forward, x, approximate)
    assert y1.dtype == d1.dtype == y2.dtype == d2.dtype == dtype
    eps = float(np.finfo(dtype).eps)
    assert_close(y1, y2, dtype, ulps=4, atol=4 * 2.0 ** -149, what="gelu routes y", inputs=x)
    assert_close(d1, d2, dtype, ulps=4, atol=8 * eps, what="gelu routes dy/dx", inputs=x)
    for y, d in ((y1, d1), (y2, d2)):
        assert np.isfinite(y).all() and np.isfinite(d).all()
        neg, pos = x <= -1e13, x >= 1e13
        assert np.all(y[neg] == 0) and np.all(np.signbit(y[neg])), "gelu(-huge) = -0"
        assert np.all(d[neg] == 0), "gelu'(-huge) = 0"
        assert np.array_equal(y[pos], x[pos]) and np.all(d[pos] == 1)
    fy, fd = _gelu_tanh(mp) if approximate else _gelu_exact(mp)
    keep = np.isfinite(x)
    refy, refd = to_dtype([fy(mp.mpf(float(v))) for v in x], dtype), to_dtype([fd(mp.mpf(float(v))) for v in x], dtype)
    ty, td = stable_bound(mp, fy, x, dtype), stable_bound(mp, fd, x, dtype)
    for y, d in ((y1, d1), (y2, d2)):
        assert_close(y[keep], refy[keep], dtype, ulps=4, atol=ty[keep] + 4 * 2.0 ** -149,
                     what="gelu vs exact", inputs=x[keep])
        assert_close(d[keep], refd[keep], dtype, ulps=4, atol=td[keep] + 8 * eps,
                     what="gelu' vs exact", inputs=x[keep])


@BOUNDED
@given(data=st.data(), dtype=st.sampled_from(DTYPES), approximate=st.booleans())
def test_gelu_property_whole_range(data, dtype, approximate):
    x = data.draw(arrays(dtype, st.integers(1, 40)))
    (y1, d1), (y2, d2) = both(G.gelu_forward, x, approximate)
    assert np.isfinite(y1).all() and np.isfinite(d1).all() and np.isfinite(y2).all() and np.isfinite(d2).all()
    assert_close(y1, y2, dtype, ulps=4, atol=4 * 2.0 ** -149, what="gelu routes")
    assert_close(d1, d2, dtype, ulps=4, atol=8 * float(np.finfo(dtype).eps), what="gelu' routes")
    assert np.all(y1[x <= -1e13] == 0) and np.all(d1[x <= -1e13] == 0)
    # gelu(x) lies between min(x, 0) - 0.2 and max(x, 0), and its slope within [-0.2, 1.2]
    assert np.all(y1 <= np.maximum(x, 0)) and np.all(y1 >= np.minimum(x, 0) - 0.2)
    assert np.all(d1 >= -0.2) and np.all(d1 <= 1.2)


def _torch_right(ours, theirs, ref, dtype, atol):
    """Positions where torch's value passes the exactness test ours must pass."""
    with np.errstate(over="ignore", invalid="ignore"):
        t, r = theirs.astype(np.float64), ref.astype(np.float64)
        ok = (np.isfinite(t) == np.isfinite(r)) & ((t == r) | (np.abs(t - r) <= 4 * spacing(r, dtype) + atol))
    return ok


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_matches_torch_where_torch_is_right(torch, mp, dtype, approximate):
    x = sample(dtype, 4, 150)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.nn.functional.gelu(xt, approximate=approximate)
    yt.backward(torch.ones_like(yt))
    ty, td = yt.detach().numpy(), xt.grad.numpy()
    fy, fd = _gelu_tanh(mp) if approximate == "tanh" else _gelu_exact(mp)
    refy = to_dtype([fy(mp.mpf(float(v))) for v in x], dtype)
    refd = to_dtype([fd(mp.mpf(float(v))) for v in x], dtype)
    boundy, boundd = stable_bound(mp, fy, x, dtype), stable_bound(mp, fd, x, dtype)
    eps = float(np.finfo(dtype).eps)
    for route in ("numba", "numpy"):
        with use_backend(route):
            y, cache = F.gelu_forward(x, approximate)
            d = F.gelu_backward(np.ones_like(x), cache)
        oky = _torch_right(y, ty, refy, dtype, boundy + 4 * 2.0 ** -149)
        okd = _torch_right(d, td, refd, dtype, boundd + 8 * eps)
        # torch is not right everywhere: tanh-GELU's gradient is NaN past |x| ~ 1e19 (float32),
        # exact GELU is inf at x >= 3e38, and both lose relative accuracy for x in [-10, -3]
        assert oky.mean() > 0.6 and okd.mean() > 0.6, "the comparison covers most points"
        assert_close(y[oky], ty[oky], dtype, ulps=8, atol=2 * boundy[oky] + 8 * 2.0 ** -149, what="gelu vs torch")
        assert_close(d[okd], td[okd], dtype, ulps=8, atol=2 * boundd[okd] + 16 * eps, what="gelu' vs torch")
    neg = x <= -1e13
    assert np.all(ty[neg] == 0)                         # torch agrees on gelu(-huge) = -0 ...
    if approximate == "tanh":                           # ... but not on its gradient there
        assert np.isnan(td[x <= (-1e20 if dtype == np.float32 else -1e155)]).all()
        assert not np.isnan(d).any()


# ------------------------------------------------------------------------------------------------
# ReLU, tanh, sigmoid (functional, NumPy)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_tanh_sigmoid_limits_whole_range(torch, mp, dtype):
    x = sample(dtype, 5, 300)
    dy = np.ones_like(x)
    tiny, eps = 4 * float(np.finfo(dtype).smallest_subnormal), float(np.finfo(dtype).eps)
    exact = {"relu": (lambda v: max(v, 0), lambda v: mp.mpf(1) if v > 0 else mp.mpf(0)),
             "tanh": (mp.tanh, lambda v: 1 - mp.tanh(v) ** 2),
             "sigmoid": (lambda v: 1 / (1 + mp.exp(-v)), lambda v: mp.exp(-v) / (1 + mp.exp(-v)) ** 2)}
    for name, fwd, bwd in (("relu", F.relu_forward, F.relu_backward),
                           ("tanh", F.tanh_forward, F.tanh_backward),
                           ("sigmoid", F.sigmoid_forward, F.sigmoid_backward)):
        y, cache = fwd(x)
        dx = bwd(dy, cache)
        assert y.dtype == dx.dtype == dtype, name
        assert np.isfinite(y).all() and np.isfinite(dx).all(), name
        fy, fd = exact[name]
        refy = to_dtype([fy(mp.mpf(float(v))) for v in x], dtype)
        refd = to_dtype([fd(mp.mpf(float(v))) for v in x], dtype)
        assert_close(y, refy, dtype, ulps=4, atol=tiny, what=name)
        # y (1 - y) and 1 - y^2 are formed from the rounded y: near saturation, eps absolute
        assert_close(dx, refd, dtype, ulps=4, atol=4 * eps * np.abs(refy) + tiny, what=name + "'")
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        yt = getattr(torch, name)(xt)
        yt.backward(torch.ones_like(yt))
        ty, td = yt.detach().numpy(), xt.grad.numpy()
        ok = _torch_right(y, ty, refy, dtype, tiny)     # torch flushes sigmoid(-88.7) to 0
        assert ok.mean() > 0.9
        assert_close(y[ok], ty[ok], dtype, ulps=4, atol=tiny, what=name + " vs torch")
        ok = _torch_right(dx, td, refd, dtype, 4 * eps * np.abs(refy) + tiny)
        assert ok.mean() > 0.9
        assert_close(dx[ok], td[ok], dtype, ulps=4, atol=4 * eps * np.abs(refy[ok]) + tiny,
                     what=name + "' vs torch")
    y, cache = F.sigmoid_forward(x)
    dx = F.sigmoid_backward(dy, cache)
    huge = np.abs(x) >= 1e13
    assert np.all(y[huge & (x > 0)] == 1) and np.all(y[huge & (x < 0)] == 0)
    assert np.all(dx[huge] == 0) and not np.isnan(dx).any()
    assert np.all((y >= 0) & (y <= 1))
    y, _ = F.tanh_forward(x)
    assert np.all(np.abs(y[huge]) == 1)


# ------------------------------------------------------------------------------------------------
# softmax and log-softmax
# ------------------------------------------------------------------------------------------------
def _mp_rows_softmax(mp, x):
    """Exact softmax and log-softmax of each row of x (mpf lists)."""
    P, LP = [], []
    for row in x:
        v = [mp.mpf(float(a)) for a in row]
        m = max(v)
        k = sum(1 for a in v if a == m)                         # log k + log1p(rest / k): 40
        rest = mp.fsum(mp.exp(a - m) for a in v if a != m)      # digits of 1 + 1e-43 are 1
        ls = mp.log(k) + mp.log1p(rest / k)
        LP.append([(a - m) - ls for a in v])                    # never m + ls (3e38 + log 2)
        P.append([mp.exp((a - m) - ls) for a in v])
    return P, LP


def _softmax_conditioning(x, p, dtype, k=2):
    """How far rounding x - max to the dtype moves log-softmax (and softmax, relatively):
    k eps (|x_j - m| + sum_i p_i |x_i - m|), the shifts' overflow capped."""
    with np.errstate(over="ignore", invalid="ignore"):
        d = np.minimum(np.abs(x.astype(np.float64) - x.max(axis=1, keepdims=True)), 1e300)
        mix = (np.nan_to_num(p.astype(np.float64)) * d).sum(axis=1, keepdims=True)
    return k * float(np.finfo(dtype).eps) * (d + mix)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_log_softmax_whole_range(mp, dtype, seed):
    x = rows_of(dtype, seed)
    (p1,), (p2,) = both(S.softmax_forward, x)
    (l1,), (l2,) = both(S.log_softmax_forward, x)
    for a in (p1, p2, l1, l2):
        assert a.dtype == dtype
    tiny = 4 * 2.0 ** -149 if dtype == np.float32 else 4 * 5e-324
    assert_close(p1, p2, dtype, ulps=4, atol=tiny, what="softmax routes")
    assert_close(l1, l2, dtype, ulps=4, what="log_softmax routes")
    P, LP = _mp_rows_softmax(mp, x)
    refp = np.array([to_dtype(r, dtype) for r in P])
    refl = np.array([to_dtype(r, dtype) for r in LP])
    cond = _softmax_conditioning(x, refp, dtype)
    for p, lp in ((p1, l1), (p2, l2)):
        assert np.isfinite(p).all() and np.all((p >= 0) & (p <= 1))
        assert_close(p, refp, dtype, ulps=4, atol=refp * cond + tiny, what="softmax vs exact")
        assert_close(lp, refl, dtype, ulps=4, atol=cond, what="log_softmax vs exact")
        # log-softmax is finite exactly where its value is representable
        assert np.array_equal(np.isfinite(lp), np.isfinite(refl))
    np.testing.assert_array_equal(p1[0], [0.5, 0, 0, 0, 0.5, 0, 0])        # a tie at the max
    np.testing.assert_allclose(p1[1], np.full(7, 1 / 7), rtol=4 * float(np.finfo(dtype).eps))
    np.testing.assert_array_equal(p1[3], [1, 0, 0, 0, 0, 0, 0])           # huge spread: one-hot


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_backward_whole_range(mp, dtype):
    x = rows_of(dtype, 2)
    dy = rows_of(dtype, 3)[::-1].copy()                                   # gradients near the max too
    y = S.softmax_forward(x)
    lp = S.log_softmax_forward(x)
    (a1,), (a2,) = both(S.softmax_backward, dy, y)
    (b1,), (b2,) = both(S.log_softmax_backward, dy, lp)
    eps = float(np.finfo(dtype).eps)
    with np.errstate(over="ignore", invalid="ignore"):
        y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
        sdot = (y64 * dy64).sum(axis=1, keepdims=True)
        terms_a = np.abs(y64 * dy64) + np.abs(y64 * sdot)            # round-off of y dy - y <dy, y>
        sdy = dy64.sum(axis=1, keepdims=True)
        terms_b = np.abs(dy64) + np.abs(np.exp(lp.astype(np.float64)) * sdy)
    terms_a, terms_b = np.nan_to_num(terms_a, posinf=1e308), np.nan_to_num(terms_b, posinf=1e308)
    assert_close(a1, a2, dtype, ulps=4, atol=4 * eps * terms_a, what="softmax backward routes")
    assert_close(b1, b2, dtype, ulps=4, atol=4 * eps * terms_b, what="log_softmax backward routes")
    # the exact gradients, from the rounded y (what the backward is given)
    ra, rb = [], []
    for yr, lr, dr in zip(y, lp, dy):
        yv = [mp.mpf(float(v)) for v in yr]
        dv = [mp.mpf(float(v)) for v in dr]
        sv = mp.fsum(a * b for a, b in zip(yv, dv))
        ra.append([a * (b - sv) for a, b in zip(yv, dv)])
        pv = [mp.exp(mp.mpf(float(v))) for v in lr]
        sd = mp.fsum(dv)
        rb.append([b - p_ * sd for p_, b in zip(pv, dv)])
    ra = np.array([to_dtype(r, dtype) for r in ra])
    rb = np.array([to_dtype(r, dtype) for r in rb])
    for a, b in ((a1, b1), (a2, b2)):
        assert_close(a, ra, dtype, ulps=4, atol=4 * eps * terms_a, what="softmax backward vs exact")
        assert_close(b, rb, dtype, ulps=4, atol=4 * eps * terms_b, what="log_softmax backward vs exact")
        assert np.array_equal(np.isfinite(a), np.isfinite(ra)) and np.array_equal(np.isfinite(b), np.isfinite(rb))


@BOUNDED
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_softmax_family_property_whole_range(data, dtype):
    R = data.draw(st.integers(1, 4))
    C = data.draw(st.integers(1, 9))
    x = data.draw(arrays(dtype, (R, C)))
    (p1,), (p2,) = both(S.softmax_forward, x)
    (l1,), (l2,) = both(S.log_softmax_forward, x)
    tiny = 4 * float(np.finfo(dtype).smallest_subnormal)
    assert_close(p1, p2, dtype, ulps=4, atol=tiny, what="softmax routes")
    assert_close(l1, l2, dtype, ulps=4, what="log_softmax routes")
    eps = float(np.finfo(dtype).eps)
    for p, lp in ((p1, l1), (p2, l2)):
        assert np.isfinite(p).all() and np.all(np.abs(p.sum(axis=1, dtype=np.float64) - 1) <= C * eps)
        assert not np.isnan(lp).any() and np.all(lp <= 0)
        m = x.max(axis=1, keepdims=True)
        assert np.all(lp[x == m] > -np.log(C) - C * eps)          # the max's log-prob >= -log C
        with np.errstate(over="ignore"):
            gap = x.astype(np.float64) - m                            # exact for float32 rows
        if dtype == np.float32:       # finite exactly where x - max is in range (log C aside)
            assert np.array_equal(np.isfinite(lp), gap >= -float(np.finfo(dtype).max))
        assert np.all(p[gap < -800] == 0)                              # a huge spread: 0, exactly


# ------------------------------------------------------------------------------------------------
# cross-entropy (ignore_index, label smoothing) and BCE-with-logits
# ------------------------------------------------------------------------------------------------
def _mp_cross_entropy(mp, x, t, eps, ignore):
    out = []
    for row, tr in zip(x, t):
        if tr == ignore:
            out.append(mp.mpf(0))
            continue
        v = [mp.mpf(float(a)) for a in row]
        m = max(v)
        k = sum(1 for a in v if a == m)
        ls = mp.log(k) + mp.log1p(mp.fsum(mp.exp(a - m) for a in v if a != m) / k)
        mean = mp.fsum(v) / len(v)
        out.append((1 - eps) * ((m - v[tr]) + ls) + eps * ((m - mean) + ls))
    return out


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_whole_range(mp, dtype, smoothing):
    x = rows_of(dtype, 4)
    rng = np.random.default_rng(5)
    t = rng.integers(0, x.shape[1], x.shape[0])
    t[0], t[3], t[5] = 0, 1, -100                   # the tie at the max, the far-away class, ignored
    ref = _mp_cross_entropy(mp, x, t, mp.mpf(smoothing), -100)
    ref64 = np.array([float(v) for v in ref])
    keep = t != -100
    eps = float(np.finfo(dtype).eps)
    with np.errstate(over="ignore"):
        scale = np.abs(x.astype(np.float64)).max(axis=1)             # the round-off of x - max
    (r1, s1), (r2, s2) = both(S.cross_entropy_forward, x, t, -100, smoothing)
    assert r1.dtype == r2.dtype == np.float64
    p = S.softmax_forward(x)
    cond = _softmax_conditioning(x, p, dtype).max(axis=1) + 4 * eps       # the exps: dtype's ulps
    sum_err = 2 * x.shape[1] * eps * scale                  # the row mean's round-off (smoothing)
    assert_close(r1, r2, np.float64, ulps=8, atol=cond + sum_err, what="cross-entropy rows, routes")
    out = {}
    for route in ("numba", "numpy"):
        with use_backend(route):
            mean, c_mean = F.cross_entropy_forward(x, t, reduction="mean", label_smoothing=smoothing)
            total, _ = F.cross_entropy_forward(x, t, reduction="sum", label_smoothing=smoothing)
            none, _ = F.cross_entropy_forward(x, t, reduction="none", label_smoothing=smoothing)
            dx, _ = F.cross_entropy_backward(1.0, c_mean)
        out[route] = (mean, total, none, dx)
        assert none.dtype == dx.dtype == dtype
        if dtype == np.float32:
            assert math.isfinite(mean) and math.isfinite(total)     # float32 logits: always
        with np.errstate(over="ignore"):
            ref_rows = ref64.astype(dtype)                      # inf where past the dtype's max
        assert_close(none, ref_rows, dtype, ulps=4, atol=cond + sum_err, what="cross-entropy vs exact")
        assert np.array_equal(np.isfinite(none), np.isfinite(ref_rows))
        if math.isfinite(float(mp.fsum(ref))):
            exact = float(mp.fsum(ref) / keep.sum())
            assert abs(mean - exact) <= 1e-12 * abs(exact) + 4 * eps * scale[keep].max() / keep.sum()
        # the gradient: finite, 0 on ignored rows, each row summing to 0 (softmax - target)
        assert np.isfinite(dx).all() and np.all(dx[~keep] == 0)
        assert np.all(np.abs(dx.astype(np.float64).sum(axis=1)) <= 4 * x.shape[1] * eps / keep.sum())
    for u, v in zip(out["numba"][3:], out["numpy"][3:]):
        assert_close(u, v, dtype, ulps=4, atol=4 * eps / keep.sum(), what="cross-entropy grad routes")
    # the tie at +-max: each of the two classes has probability 1/2 (m + log 2 = m at 3e38)
    if smoothing == 0:
        assert abs(float(out["numba"][2][0]) - math.log(2)) <= 4 * eps
    np.testing.assert_allclose(out["numba"][3][0, [0, 4]] * keep.sum(),
                               [0.5 - smoothing / 7 - (1 - smoothing), 0.5 - smoothing / 7], rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_torch_where_torch_is_right(torch, mp, dtype):
    x = rows_of(dtype, 6)
    t = np.random.default_rng(7).integers(0, x.shape[1], x.shape[0])
    t[4] = -100
    eps = float(np.finfo(dtype).eps)
    for smoothing in (0.0, 0.1):
        ref = np.array([float(v) for v in _mp_cross_entropy(mp, x, t, mp.mpf(smoothing), -100)])
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        lt = torch.nn.functional.cross_entropy(xt, torch.from_numpy(t), reduction="none",
                                               label_smoothing=smoothing)
        theirs = lt.detach().numpy()
        with np.errstate(over="ignore"):
            scale = np.minimum(np.abs(x.astype(np.float64)).max(axis=1), np.finfo(dtype).max)
            ok = _torch_right(theirs, theirs, ref.astype(dtype), dtype, 4 * eps * scale)
        ours, _ = F.cross_entropy_forward(x, t, reduction="none", label_smoothing=smoothing)
        assert ok.sum() >= 3
        assert_close(ours[ok], theirs[ok], dtype, ulps=8, atol=8 * eps * scale[ok], what="vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_whole_range(torch, mp, dtype):
    x = sample(dtype, 8, 200)
    rng = np.random.default_rng(9)
    y = rng.choice(np.array([0.0, 1.0, 0.5, 0.25], dtype), size=x.shape).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    per, cache = F.bce_with_logits_forward(x, y, reduction="none")
    mean, cmean = F.bce_with_logits_forward(x, y, reduction="mean")
    dx, dyt = F.bce_with_logits_backward(1.0, cmean)
    assert per.dtype == dx.dtype == dyt.dtype == dtype
    assert np.isfinite(per).all() and math.isfinite(mean) and np.isfinite(dx).all()
    ref = []
    for a, b in zip(x, y):
        av, bv = mp.mpf(float(a)), mp.mpf(float(b))
        ref.append(max(av, 0) - av * bv + mp.log1p(mp.exp(-abs(av))))   # the stable formula, exact
    ref = to_dtype(ref, dtype)
    assert_close(per, ref, dtype, ulps=4, atol=4 * eps * np.abs(x.astype(np.float64)), what="bce vs exact")
    sig = to_dtype([1 / (1 + mp.exp(-mp.mpf(float(a)))) for a in x], dtype)
    assert_close(dx * x.size, sig - y, dtype, ulps=8, atol=4 * eps, what="bce grad")
    assert np.all(dx[(x >= 1e13) & (y == 1)] == 0) and np.all(dx[(x <= -1e13) & (y == 0)] == 0)
    lt = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(y),
                                                              reduction="none").numpy()
    ok = _torch_right(lt, lt, ref, dtype, 4 * eps * np.abs(x.astype(np.float64)))
    assert ok.mean() > 0.9
    assert_close(per[ok], lt[ok], dtype, ulps=8, atol=8 * eps * np.abs(x[ok].astype(np.float64)), what="bce vs torch")
    if dtype == np.float32:                       # targets outside [0, 1]: x y overflows float32
        big = np.array([3e38, -3e38], dtype)
        yy = np.array([-2.0, 2.0], dtype)
        m, _ = F.bce_with_logits_forward(big, yy, reduction="mean")
        b = float(big[0])
        assert math.isfinite(m) and abs(m - (3 * b + 2 * b) / 2) <= 1e-15 * m     # (9e38 + 6e38) / 2
        per, _ = F.bce_with_logits_forward(big, yy, reduction="none")
        assert np.isinf(per).all()                                 # past float32's max: inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_gradient_routes_agree_over_the_range(dtype):
    """The gradient kernel g (sigmoid(x) - y) on both routes, at every length around a block:
    their sigmoids within two ulps of each other (their exps differ by at most an ulp), so the
    gradients within 2 eps |g| (sigmoid(x) - y cancels where the answer is nearly right) over the
    whole range of x, targets in and outside [0, 1], upstream gradients up to the max; 0 exactly
    where a confident answer is right; inf and NaN in the same places."""
    from scratchlm.kernels import bce as KB
    rng = np.random.default_rng(12)
    x = sample(dtype, 13, 2000)
    n = x.size
    y = rng.choice(np.array([0.0, 1.0, 0.5, -2.0, 3.0], dtype), n).astype(dtype)
    g = rng.choice(np.concatenate([sample(dtype, 14, 50), np.ones(50, dtype)]), n).astype(dtype)
    for m in (1, 15, 2047, 2048, 2049, n):
        (a,), (b,) = both(KB.bce_logits_backward, x[:m], y[:m], g[:m], np.empty(m, dtype))
        eps = float(np.finfo(dtype).eps)
        assert_close(a, b, dtype, ulps=2, atol=2 * eps * np.abs(g[:m].astype(np.float64)),
                     what=f"n={m}")
    (a,), _ = both(KB.bce_logits_backward, x, y, np.ones(n, dtype), np.empty(n, dtype))
    assert np.all(a[(x >= 1e13) & (y == 1)] == 0) and np.all(a[(x <= -1e13) & (y == 0)] == 0)


# ------------------------------------------------------------------------------------------------
# LayerNorm
# ------------------------------------------------------------------------------------------------
def _mp_layernorm(mp, x, w, b, dy, eps):
    """Exact y, and dx from the exact statistics (per row)."""
    Y, DX = [], []
    for row, drow in zip(x, dy):
        v = [mp.mpf(float(a)) for a in row]
        C = len(v)
        m = mp.fsum(v) / C
        var = mp.fsum((a - m) ** 2 for a in v) / C
        rs = 1 / mp.sqrt(var + mp.mpf(eps))
        xh = [(a - m) * rs for a in v]
        Y.append([h * mp.mpf(float(wi)) + mp.mpf(float(bi)) for h, wi, bi in zip(xh, w, b)])
        g = [mp.mpf(float(d)) * mp.mpf(float(wi)) for d, wi in zip(drow, w)]
        ga = mp.fsum(g) / C
        gb = mp.fsum(gi * h for gi, h in zip(g, xh)) / C
        DX.append([rs * (gi - ga - h * gb) for gi, h in zip(g, xh)])
    return Y, DX


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_whole_range(mp, dtype):
    x = rows_of(dtype, 10, R=16, C=6)
    x[4] = 7.0                                                           # a constant row
    rng = np.random.default_rng(11)
    w = (rng.standard_normal(6) + 1).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    dy = rows_of(dtype, 12, R=16, C=6)
    dy[2] = rng.standard_normal(6)
    eps_ln = 1e-5
    (y1, m1, r1), (y2, m2, r2) = both(L.layernorm_forward, x, w, b, eps_ln)
    assert y1.dtype == y2.dtype == dtype and m1.dtype == r1.dtype == np.float64
    eps = float(np.finfo(dtype).eps)
    for y in (y1, y2):
        assert np.isfinite(y).all(), "a finite row normalises to a finite row"
    assert_close(y1, y2, dtype, ulps=4, atol=8 * eps, what="layernorm y routes")
    assert_close(m1, m2, np.float64, ulps=8, atol=0, what="layernorm mean routes")
    assert_close(r1, r2, dtype, ulps=8, atol=0, what="layernorm rstd routes")   # to x's precision
    Y, DX = _mp_layernorm(mp, x, w, b, dy, eps_ln)
    refy = np.array([to_dtype(r, dtype) for r in Y])
    # |xhat| <= sqrt(C); x - mean rounded in float64 at worst: a few eps of max|x| / std
    for y in (y1, y2):
        assert_close(y, refy, dtype, ulps=4, atol=8 * eps * (1 + np.abs(w)), what="layernorm vs exact")
    (d1, dw1, db1), (d2, dw2, db2) = both(L.layernorm_backward, dy, x, w, m1, r1)
    refdx = np.array([to_dtype(r, dtype) for r in DX])
    with np.errstate(over="ignore"):
        gscale = (np.abs(dy.astype(np.float64)) * np.abs(w)).max(axis=1, keepdims=True) * r1[:, None]
    gscale = np.nan_to_num(gscale, posinf=np.finfo(np.float64).max)
    for dx in (d1, d2):
        assert dx.dtype == dtype
        assert np.array_equal(np.isfinite(dx), np.isfinite(refdx)), "finite where representable"
        assert_close(dx, refdx, dtype, ulps=8, atol=16 * eps * gscale, what="layernorm dx vs exact")
    assert_close(d1, d2, dtype, ulps=8, atol=16 * eps * gscale, what="layernorm dx routes")
    with np.errstate(over="ignore"):
        colsum = np.minimum(np.abs(dy.astype(np.float64)).sum(axis=0), 1e300)
    assert_close(dw1, dw2, dtype, ulps=8, atol=8 * eps * colsum * 3, what="layernorm dweight routes")
    assert_close(db1, db2, dtype, ulps=8, atol=8 * eps * colsum, what="layernorm dbias routes")
    np.testing.assert_array_equal(y1[4], b)                             # constant row: y = bias


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_matches_torch_where_torch_is_right(torch, mp, dtype):
    x = rows_of(dtype, 13, R=12, C=6)
    w = np.linspace(0.5, 1.5, 6).astype(dtype)
    b = np.linspace(-1, 1, 6).astype(dtype)
    Y, _ = _mp_layernorm(mp, x, w, b, np.zeros_like(x), 1e-5)
    refy = np.array([to_dtype(r, dtype) for r in Y])
    theirs = torch.nn.functional.layer_norm(torch.from_numpy(x), (6,), torch.from_numpy(w),
                                            torch.from_numpy(b), 1e-5).numpy()
    eps = float(np.finfo(dtype).eps)
    ok = _torch_right(theirs, theirs, refy, dtype, 8 * eps * 2).all(axis=1)
    ours, _ = F.layer_norm_forward(x, 6, w, b)
    assert ok.sum() >= 2
    assert_close(ours[ok], theirs[ok], dtype, ulps=8, atol=16 * eps, what="layernorm vs torch")
    if dtype == np.float32:           # a variance past float32's max: torch gives NaN, ours the value
        assert np.isnan(theirs[0]).any() and np.isfinite(ours[0]).all()


# ------------------------------------------------------------------------------------------------
# attention: the kernel (scale, causal mask, -inf padding) and the functional pair
# ------------------------------------------------------------------------------------------------
def _mp_attention_probs(mp, scores, scale, allowed):
    """Exact softmax(scale * s) over the allowed entries of each row (0 elsewhere; zeros if none)."""
    out = np.zeros(scores.shape)
    for idx in np.ndindex(scores.shape[:-1]):
        row, ok = scores[idx], allowed[idx]
        if not ok.any():
            continue
        z = [mp.mpf(float(a)) * mp.mpf(scale) for a, k in zip(row, ok) if k]
        m = max(z)
        e = [mp.exp(a - m) for a in z]
        tot = mp.fsum(e)
        out[idx + (np.flatnonzero(ok),)] = [float(v / tot) for v in e]
    return out


@pytest.mark.parametrize("scale", [0.125, 3.0, -0.5])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_softmax_kernel_whole_range(mp, dtype, causal, scale):
    rng = np.random.default_rng(14)
    N, Tq, Tk = 3, 5, 7
    s = rows_of(dtype, 15, R=N * Tq, C=Tk).reshape(N, Tq, Tk)
    pad = rng.random((N, Tq, Tk)) < 0.2                                   # -inf padding
    pad[0, 1] = True                                                      # a fully masked row
    s = np.where(pad, -np.inf, s).astype(dtype)
    offset = Tk - Tq
    (p1,), (p2,) = both(A.attention_softmax, s, scale, causal, offset)
    assert p1.dtype == p2.dtype == dtype
    assert np.isfinite(p1).all() and np.isfinite(p2).all(), "finite scores never give NaN"
    tiny = 4 * float(np.finfo(dtype).smallest_subnormal)
    eps = float(np.finfo(dtype).eps)
    allowed = ~pad & (A._allowed_numpy(Tq, Tk, causal, offset)[None] if causal else True)
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.where(allowed, s.astype(np.float64) * scale, -np.inf)
        spread = np.nan_to_num(z.max(axis=-1, keepdims=True) - z, nan=0, posinf=1e300)
    ref = _mp_attention_probs(mp, s, scale, allowed)
    for p in (p1, p2):
        assert np.all(p[~allowed] == 0) and np.all(p[0, 1] == 0)
        sums = p.sum(axis=-1, dtype=np.float64)
        has = allowed.any(axis=-1)
        assert np.all(np.abs(sums[has] - 1) <= Tk * eps) and np.all(sums[~has] == 0)
        # exp of a rounded (s scale - max): relative error up to its size times eps
        assert_close(p, ref.astype(dtype), dtype, ulps=4, atol=ref * (spread + 1) * 4 * eps + tiny,
                     what="attention softmax vs exact")
    assert_close(p1, p2, dtype, ulps=4, atol=ref * (spread + 1) * 4 * eps + tiny, what="attention routes")
    dp = rows_of(dtype, 16, R=N * Tq, C=Tk).reshape(N, Tq, Tk)
    (g1,), (g2,) = both(A.attention_softmax_backward, dp, p1, scale, causal, offset)
    with np.errstate(over="ignore", invalid="ignore"):
        terms = np.abs(p1.astype(np.float64) * dp) + np.abs(p1 * (p1.astype(np.float64) * dp).sum(-1, keepdims=True))
    terms = np.minimum(np.nan_to_num(terms, posinf=1e300), 1e300) * abs(scale)
    assert_close(g1, g2, dtype, ulps=4, atol=4 * eps * terms, what="attention backward routes")
    assert np.all(g1[~allowed] == 0)


def test_attention_softmax_kernel_limits():
    for dtype in DTYPES:
        big = np.finfo(dtype).max
        rows = np.array([[[np.inf, 1, 2], [np.nan, 1, 2], [big, big / 2, 1], [-big, -big / 2, 1],
                          [-np.inf, -np.inf, -np.inf], [np.inf, np.inf, 0]]], dtype)
        want = {2.0: [[1, 0, 0], [np.nan] * 3, [1, 0, 0], [0, 0, 1], [0, 0, 0], [0.5, 0.5, 0]],
                -2.0: [[0, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))], [np.nan] * 3, [0, 0, 1],
                       [1, 0, 0], [0, 0, 0], [0, 0, 1]]}
        for scale, expect in want.items():
            (a,), (b,) = both(A.attention_softmax, rows, scale, False, 0)
            expect = np.array([expect], dtype)
            for p in (a, b):
                np.testing.assert_allclose(p[0, [0, 1, 2, 3, 4, 5]], expect[0], rtol=1e-6, atol=0,
                                           err_msg=f"scale {scale}")


def _mp_sdpa(mp, q, k, scale, mask=None, causal=False):
    """Exact softmax(scale q.k^T (+ mask)) for q (..., Tq, d), k (..., Tk, d)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    out = np.zeros(q.shape[:-1] + (Tk,))
    for idx in np.ndindex(q.shape[:-2]):
        for i in range(Tq):
            z = []
            for j in range(Tk):
                sc = mp.fsum(mp.mpf(float(a)) * mp.mpf(float(c)) for a, c in zip(q[idx + (i,)], k[idx + (j,)]))
                sc = sc * mp.mpf(scale)
                if mask is not None:
                    mv = mask[idx + (i, j)]
                    if mask.dtype == bool:
                        sc = sc if mv else None
                    else:
                        sc = None if mv == -np.inf else sc + mp.mpf(float(mv))
                if causal and j > i + Tk - Tq:
                    sc = None
                z.append(sc)
            live = [v for v in z if v is not None]
            if not live:
                continue
            m = max(live)
            e = [mp.exp(v - m) if v is not None else mp.mpf(0) for v in z]
            tot = mp.fsum(e)
            out[idx + (i,)] = [float(v / tot) for v in e]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_scores_past_the_max(mp, dtype):
    """q.k overflows the dtype: the probabilities are those of the exact scores (both routes)."""
    rng = np.random.default_rng(17)
    big = 1e20 if dtype == np.float32 else 1e155                       # big^2 > the dtype's max
    B, H, T, d = 1, 2, 4, 3
    q = (rng.standard_normal((B, H, T, d)) * np.where(rng.random((B, H, T, 1)) < 0.5, big, 1.0)).astype(dtype)
    k = (rng.standard_normal((B, H, T, d)) * np.where(rng.random((B, H, T, 1)) < 0.5, big, 1.0)).astype(dtype)
    v = rng.standard_normal((B, H, T, d)).astype(dtype)
    q[0, 0, 0] = [big, big, 0]
    k[0, 0, :2] = [[big, big, 0], [big, big * 0.5, 0]]                   # q0.k0 > q0.k1 > the max
    pad = np.ones((B, 1, 1, T), bool)
    pad[..., -1] = False
    fmask = np.where(rng.random((T, T)) < 0.2, -np.inf, rng.standard_normal((T, T))).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    scale = 1 / math.sqrt(d)
    for mask, causal in ((None, False), (None, True), (pad, False), (pad, True), (fmask, False)):
        full = None if mask is None else np.broadcast_to(mask, (B, H, T, T))
        ref = _mp_sdpa(mp, q, k, scale, full, causal)
        res = {}
        for route in ("numba", "numpy"):
            with use_backend(route):
                y, cache = F.attention_forward(q, k, v, attn_mask=mask, is_causal=causal)
                dq, dk, dv, _ = F.attention_backward(np.ones_like(y), cache)
            res[route] = cache.probs
            assert np.isfinite(cache.probs).all() and np.isfinite(y).all()
            assert np.isfinite(dv).all() and not np.isnan(dq).any() and not np.isnan(dk).any()
            np.testing.assert_allclose(cache.probs, ref, rtol=64 * eps, atol=1e-6 if dtype == np.float32 else 1e-12,
                                       err_msg=f"mask {None if mask is None else mask.dtype}, causal {causal}")
        assert_close(res["numba"], res["numpy"], dtype, ulps=8, atol=1e-6 if dtype == np.float32 else 1e-12,
                     what="attention probs routes")
        assert res["numba"][0, 0, 0, 0] == 1 or causal                   # q0.k0 wins its row


def test_attention_matches_torch_where_scores_are_finite(torch):
    rng = np.random.default_rng(18)
    q, k, v = (rng.standard_normal((2, 2, 5, 4)).astype(np.float32) * 1e3 for _ in range(3))
    q[0, 0, 3] *= 1e35                                                  # overflowing q.k (float32)
    y, cache = F.attention_forward(q, k, v, is_causal=True)
    theirs = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), is_causal=True).numpy()
    finite = np.isfinite(theirs).all(axis=-1)
    assert not finite.all(), "torch gives NaN where a score overflows"
    np.testing.assert_allclose(y[finite], theirs[finite], rtol=1e-4, atol=1e-2)
    assert np.isfinite(y).all()


# ------------------------------------------------------------------------------------------------
# recurrent cells and average pooling
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_cells_whole_range(dtype):
    rng = np.random.default_rng(19)
    B, H = 6, 8
    pool = sample(dtype, 20, 400)

    def draw(*shape):
        return rng.choice(pool, size=shape).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    tiny = 4 * float(np.finfo(dtype).smallest_subnormal)
    pre, c_prev = draw(B, 4 * H), draw(B, H)
    (h1, c1, a1, t1), (h2, c2, a2, t2) = both(R.lstm_cell_forward, pre, c_prev)
    for u, v_ in zip((h1, c1, a1, t1), (h2, c2, a2, t2)):
        assert np.isfinite(u).all() and u.dtype == dtype
        assert_close(u, v_, dtype, ulps=4, atol=4 * eps * (1 + np.abs(c_prev).max()) if u is c1 else 4 * eps + tiny,
                     what="lstm forward routes")
    assert_close(R.rnn_cell_forward.numba(pre, False), np.tanh(pre), dtype, ulps=3, atol=tiny,
                 what="tanh cell (relative, down to subnormals)")
    dh, dc = draw(B, H), draw(B, H)
    (p1, q1), (p2, q2) = both(R.lstm_cell_backward, dh, dc, c_prev, a1, t1)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = (np.abs(dh.astype(np.float64)) + np.abs(dc)) * np.maximum(1, np.abs(c_prev.astype(np.float64)))
    scale = np.nan_to_num(scale, posinf=1e308).max(axis=1, keepdims=True)
    for u, v_ in ((p1, p2), (q1, q2)):
        assert not np.isnan(u).any(), "no inf * 0 = NaN"
        assert_close(u, v_, dtype, ulps=4, atol=4 * eps * scale, what="lstm backward routes")
    gi, gh, hp = draw(B, 3 * H), draw(B, 3 * H), draw(B, H)
    (h1, a1), (h2, a2) = both(R.gru_cell_forward, gi, gh, hp)
    assert np.isfinite(h1).all() and np.isfinite(a1).all()
    assert_close(h1, h2, dtype, ulps=4, atol=4 * eps * (1 + np.abs(hp)), what="gru forward routes")
    (x1, y1, z1), (x2, y2, z2) = both(R.gru_cell_backward, dh, hp, a1, gh)
    for u, v_ in ((x1, x2), (y1, y2), (z1, z2)):
        assert not np.isnan(u).any()
        assert_close(u, v_, dtype, ulps=4, atol=0, what="gru backward routes")   # same expressions


def test_lstm_backward_big_upstream_gradients_stay_finite():
    """dc + dh o (1 - tanh^2) may pass the max while every dpre is representable."""
    for dtype in DTYPES:
        big = np.finfo(dtype).max
        H = 1
        act = np.array([[0.5, 0.5, 0.0, 1.0]], dtype)                    # i, f, g = 0, o = 1
        tanh_c = np.array([[0.0]], dtype)
        dh = dc = np.array([[big]], dtype)
        c_prev = np.array([[1.0]], dtype)
        for route in (R.lstm_cell_backward.numba, R.lstm_cell_backward.numpy):
            dpre, dcp = route(dh, dc, c_prev, act, tanh_c)
            # with dc + dh = 2 big (past the max): di = 2big g i(1-i) = 0 (g = 0),
            # df = 2big f(1-f) c = big/2, dg = 2big i (1-g^2) = big, do = 0, dc_prev = 2big f = big
            np.testing.assert_allclose(dpre[0, :H * 4], [0, 0.5 * big, big, 0], rtol=1e-6)
            np.testing.assert_allclose(dcp[0, 0], big, rtol=1e-6)
            assert not np.isnan(dpre).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_average_pool_of_values_near_the_max(dtype):
    rng = np.random.default_rng(21)
    big = np.finfo(dtype).max
    x = (rng.choice([big, big * 0.9, -big * 0.5, 1.0], size=(2, 6, 6))).astype(dtype)
    div = np.full((3, 3), 4, dtype)
    (a,), (b,) = both(CV.avg_pool2d_forward, x, 2, 2, 2, 2, 0, 0, 3, 3, div)
    ref = x.astype(np.float64).reshape(2, 3, 2, 3, 2)
    with np.errstate(over="ignore"):
        ref = (ref / 4).sum(axis=(2, 4)).astype(dtype)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert_close(a, ref, dtype, ulps=4, what="avg pool numba")
    assert_close(b, ref, dtype, ulps=4, what="avg pool numpy")


# ------------------------------------------------------------------------------------------------
# more properties over hypothesis-drawn whole-range inputs
# ------------------------------------------------------------------------------------------------
@BOUNDED
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_layernorm_property_whole_range(data, dtype):
    R, C = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 9))
    x = data.draw(arrays(dtype, (R, C)))
    dy = data.draw(arrays(dtype, (R, C)))
    w, b = np.ones(C, dtype), np.zeros(C, dtype)
    (y1, m1, r1), (y2, m2, r2) = both(L.layernorm_forward, x, w, b, 1e-5)
    eps = float(np.finfo(dtype).eps)
    for y in (y1, y2):
        assert np.isfinite(y).all() and np.all(np.abs(y) <= math.sqrt(C) * (1 + 8 * eps))
        # a normalised row has mean 0 and, unless eps dominates, mean square ~1
        assert np.all(np.abs(y.astype(np.float64).mean(axis=1)) <= 16 * eps * math.sqrt(C) + 1e-6)
    assert_close(y1, y2, dtype, ulps=4, atol=8 * eps, what="layernorm routes")
    (d1, _, _), (d2, _, _) = both(L.layernorm_backward, dy, x, w, m1, r1)
    with np.errstate(over="ignore"):
        g = np.nan_to_num(np.abs(dy.astype(np.float64)).max(axis=1, keepdims=True) * r1[:, None],
                          posinf=1e308)
    assert not np.isnan(d1).any() and not np.isnan(d2).any()
    assert_close(d1, d2, dtype, ulps=8, atol=16 * eps * g, what="layernorm backward routes")


@BOUNDED
@given(data=st.data(), dtype=st.sampled_from(DTYPES), smoothing=st.sampled_from([0.0, 0.2]))
def test_cross_entropy_property_whole_range(data, dtype, smoothing):
    R, C = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 9))
    x = data.draw(arrays(dtype, (R, C)))
    t = np.array(data.draw(st.lists(st.sampled_from(list(range(C)) + [-100]), min_size=R, max_size=R)))
    (r1, s1), (r2, s2) = both(S.cross_entropy_forward, x, t, -100, smoothing)
    assert (r1 >= 0).all() or smoothing                  # smoothing: -log of a mixture, still >= 0
    assert not np.isnan(r1).any() and not np.isnan(r2).any()
    if dtype == np.float32:
        assert np.isfinite(r1).all() and np.isfinite(r2).all()      # float64 rows: never inf
    if (t != -100).any():
        for route in ("numba", "numpy"):
            with use_backend(route):
                loss, cache = F.cross_entropy_forward(x, t, label_smoothing=smoothing)
                dx, _ = F.cross_entropy_backward(1.0, cache)
            assert not math.isnan(loss) and (math.isfinite(loss) or dtype == np.float64)
            assert np.isfinite(dx).all() and np.all(np.abs(dx) <= 1)


@BOUNDED
@given(data=st.data(), dtype=st.sampled_from(DTYPES), causal=st.booleans(),
       scale=st.sampled_from([0.125, 1.0, 4.0, -1.0]))
def test_attention_kernel_property_whole_range(data, dtype, causal, scale):
    Tq, Tk = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    s = data.draw(arrays(dtype, (2, Tq, Tk)))
    (p1,), (p2,) = both(A.attention_softmax, s, scale, causal, Tk - Tq)
    assert np.isfinite(p1).all() and np.isfinite(p2).all()
    eps = float(np.finfo(dtype).eps)
    for p in (p1, p2):
        sums = p.sum(axis=-1, dtype=np.float64)
        assert np.all((np.abs(sums - 1) <= Tk * eps) | (sums == 0))
    with np.errstate(over="ignore", invalid="ignore"):
        z = s.astype(np.float64) * scale
        spread = np.nan_to_num(np.abs(z).max(axis=-1, keepdims=True) * 2, posinf=1e300)
    assert_close(p1, p2, dtype, ulps=4, atol=p1 * spread * 4 * eps + 4 * float(np.finfo(dtype).smallest_subnormal),
                 what="attention routes")
