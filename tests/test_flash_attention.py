"""Tiled attention (``kernels/flash_attention.py``, ``F.attention_forward(method="tiled")``):
equal to the dense path on both kernel routes, gradient-checked, O(T d) cache, the ``auto`` rule
and the callers that need the weights."""

import itertools

import numpy as np
import pytest

import scratchlm.functional.attention as A
from scratchlm import functional as F, nn
from scratchlm._checks import trusted
from scratchlm.gradcheck import check_function
from scratchlm.kernels import flash_attention as FK
from scratchlm.kernels import set_num_threads, get_num_threads, use_backend

ROUTES = ("numba", "numpy")
REL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 4 queries x 3 keys on both routes: every test shape spans several tiles, with
    partial ones at the ends."""
    monkeypatch.setitem(A.TILES, "numba", (4, 3))
    monkeypatch.setitem(A.TILES, "numpy", (4, 3))
    monkeypatch.setattr(A, "SHORT_TILES", {})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_short_sequences_take_their_own_tiles(dtype, monkeypatch):
    """Up to SHORT_T queries the Numba route's forward and backward take the short tiles (the
    backward's kept in the cache); they give the 128 x 128 tiles' result to rounding."""
    rng = np.random.default_rng(24)
    q, k, v = _inputs(rng, dtype, (2, 2), 150, 150, d=8, dv=8)      # 150: partial tiles
    dy = rng.standard_normal(q.shape).astype(dtype)
    with use_backend("numba"):
        y, c = F.attention_forward(q, k, v, is_causal=True, method="tiled")
        grads = F.attention_backward(dy, c)[:3]
        assert c.tiles == A.SHORT_TILES["numba"][1]
        monkeypatch.setattr(A, "SHORT_TILES", {})
        y2, c2 = F.attention_forward(q, k, v, is_causal=True, method="tiled")
        assert c2.tiles == A.TILES["numba"]
        grads2 = F.attention_backward(dy, c2)[:3]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip((y, *grads), (y2, *grads2)):
        assert_rel(a, b, tol)


def assert_rel(ours, ref, rel, what=""):
    """Every entry within ``rel`` of the reference's largest magnitude (zeros compared too)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (what, ours.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-300)
    err = float(np.abs(ours.astype(np.float64) - ref).max()) / scale
    assert err <= rel, f"{what}: relative error {err:.2e} > {rel:.0e}"


def _inputs(rng, dtype, lead, Tq, Tk, d=4, dv=5):
    q = rng.standard_normal(lead + (Tq, d)).astype(dtype)
    k = rng.standard_normal(lead + (Tk, d)).astype(dtype)
    v = rng.standard_normal(lead + (Tk, dv)).astype(dtype)
    return q, k, v


def _mask(rng, kind, B, Tq, Tk):
    if kind is None:
        return None
    if kind == "keys":                                      # key padding: (B, 1, 1, Tk)
        m = rng.random((B, 1, 1, Tk)) > 0.3
        m[:, ..., 0] = True
        return m
    m = rng.random((Tq, Tk)) > 0.3                          # one (Tq, Tk) mask for every head
    m[:, 0] = True
    return m


def _both(q, k, v, dy, **kw):
    """(y, dq, dk, dv) on the tiled path and on the dense one, on the active route."""
    y, c = F.attention_forward(q, k, v, method="tiled", **kw)
    assert isinstance(c, F.TiledAttentionCache)
    yd, cd = F.attention_forward(q, k, v, method="dense", **kw)
    assert isinstance(cd, F.AttentionCache)
    return (y, *F.attention_backward(dy, c)[:3]), (yd, *F.attention_backward(dy, cd)[:3])


# ------------------------------------------------------------------------------------------------
# equal to the dense path
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("causal,mask", [(False, None), (True, None), (False, "keys"),
                                         (True, "keys"), (False, "full"), (True, "full")])
def test_tiled_equals_dense(small_tiles, route, dtype, causal, mask):
    rng = np.random.default_rng(0)
    # Tq < Tk: the causal offset; 7, 10, 11: partial tiles at the ends
    for Tq, Tk in ((7, 7), (5, 11), (10, 10), (1, 4)):
        q, k, v = _inputs(rng, dtype, (2, 3), Tq, Tk)
        dy = rng.standard_normal((2, 3, Tq, 5)).astype(dtype)
        m = _mask(rng, mask, 2, Tq, Tk)
        with use_backend(route):
            ours, ref = _both(q, k, v, dy, attn_mask=m, is_causal=causal)
        for name, a, b in zip(("y", "dq", "dk", "dv"), ours, ref):
            assert a.dtype == dtype
            assert_rel(a, b, REL[dtype], f"{name} Tq={Tq} Tk={Tk}")


@pytest.mark.parametrize("route", ROUTES)
def test_default_tiles_span_several_blocks(route):
    """The routes' own tile sizes, with T not a multiple of them (float64 to 1e-12)."""
    rng = np.random.default_rng(1)
    Tq, Tk = (A.TILES[route][0] + 37, 2 * A.TILES[route][1] + 21)
    q, k, v = _inputs(rng, np.float64, (1, 2), Tq, Tk, d=8, dv=8)
    dy = rng.standard_normal((1, 2, Tq, 8))
    with use_backend(route):
        ours, ref = _both(q, k, v, dy, is_causal=True)
    for a, b in zip(ours, ref):
        assert_rel(a, b, 1e-12)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rows_with_nothing_allowed(small_tiles, route, dtype):
    """A query row that may attend nothing: zero output and zero gradients, as the dense path --
    by key padding (batch 1 has no key at all) and by the causal mask (Tq > Tk: the first
    Tq - Tk queries come before every key)."""
    rng = np.random.default_rng(2)
    q, k, v = _inputs(rng, dtype, (2, 2), 9, 6)
    dy = rng.standard_normal((2, 2, 9, 5)).astype(dtype)
    keys = np.ones((2, 1, 1, 6), bool)
    keys[1] = False
    for kw in (dict(attn_mask=keys), dict(is_causal=True)):
        with use_backend(route):
            ours, ref = _both(q, k, v, dy, **kw)
            cache = F.attention_forward(q, k, v, method="tiled", **kw)[1]
        for a, b in zip(ours, ref):
            assert_rel(a, b, REL[dtype])
            assert np.isfinite(a).all()
        empty = (np.s_[1], np.s_[:, :, :3])[kw.get("is_causal", False)]
        assert np.all(ours[0][empty] == 0) and np.all(ours[1][empty] == 0)
        assert np.all(cache.lse[empty] == -np.inf)


@pytest.mark.parametrize("route", ROUTES)
def test_tiled_gradcheck(small_tiles, route):
    rng = np.random.default_rng(3)
    for causal, mask, (Tq, Tk) in ((True, None, (5, 8)), (False, "keys", (6, 6)),
                                   (True, "full", (7, 7))):
        q, k, v = _inputs(rng, np.float64, (2, 2), Tq, Tk, d=3, dv=3)
        m = _mask(rng, mask, 2, Tq, Tk)
        with use_backend(route):
            report = check_function(
                lambda q, k, v: F.attention_forward(q, k, v, attn_mask=m, is_causal=causal,
                                                    method="tiled"),
                lambda dy, c: F.attention_backward(dy, c)[:3], q, k, v)
        assert report.ok, str(report)


def test_numba_and_numpy_twins_agree():
    """The kernels themselves, same tiles, float64: 1e-12."""
    rng = np.random.default_rng(4)
    N, Tq, Tk, d = 4, 11, 17, 6
    q, k, v = (rng.standard_normal((N, T, d)) for T in (Tq, Tk, Tk))
    dout = rng.standard_normal((N, Tq, d))
    mask = rng.random((2, 1, Tk)) > 0.2
    rows = np.array([0, 1, 0, 1], np.int64)
    for causal, (m, r) in itertools.product((False, True), ((mask, rows),
                                                            (np.zeros((0, 1, 1), bool), rows))):
        res = {}
        for twin in (FK.flash_attention_forward_numba, FK.flash_attention_forward_numpy):
            out, lse = np.empty((N, Tq, d)), np.empty((N, Tq))
            twin(q, k, v, 0.4, causal, Tk - Tq, m, r, 4, 5, out, lse, 0, N)
            grads = tuple(np.empty_like(a) for a in (q, k, v))
            back = (FK.flash_attention_backward_numba if twin is FK.flash_attention_forward_numba
                    else FK.flash_attention_backward_numpy)
            back(q, k, v, out, dout, lse, 0.4, causal, Tk - Tq, m, r, 4, 5, *grads, 0, N)
            res[twin] = (out, lse, *grads)
        a, b = res.values()
        for x, y in zip(a, b):
            assert_rel(x, y, 1e-12)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_head_split_views_are_read_and_written_in_place(route, dtype):
    """q, k, v as a model makes them -- head splits of one (B, T, 3 H d) projection, strided
    views -- give the bits of their contiguous copies, forward and backward (dy a head split
    too), without being copied: y, dq, dk, dv come back in the projection's memory order, so
    merging the heads back is a view."""
    rng = np.random.default_rng(21)
    B, T, H, d = 2, 37, 3, 8
    qkv = rng.standard_normal((B, T, 3 * H * d)).astype(dtype)
    q, k, v = (a.reshape(B, T, H, d).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    dy = rng.standard_normal((B, T, H * d)).astype(dtype).reshape(B, T, H, d).transpose(0, 2, 1, 3)
    assert not q.flags.c_contiguous and FK.heads_ok(q)
    with use_backend(route):
        y, c = F.attention_forward(q, k, v, is_causal=True, method="tiled")
        grads = F.attention_backward(dy, c)[:3]
        want_y, cw = F.attention_forward(*map(np.ascontiguousarray, (q, k, v)), is_causal=True,
                                         method="tiled")
        want = F.attention_backward(np.ascontiguousarray(dy), cw)[:3]
    assert np.shares_memory(c.q, qkv) and np.shares_memory(c.v, qkv)        # not copied
    for got, ref in zip((y, *grads), (want_y, *want)):
        assert got.tobytes(order="C") == ref.tobytes(order="C")
        merged = got.transpose(0, 2, 1, 3).reshape(B, T, H * d)
        assert np.shares_memory(merged, got)                     # a view: the layout of qkv


@pytest.mark.parametrize("route", ROUTES)
def test_broadcast_heads_are_copied_not_aliased(route):
    """A stack with a zero stride (k and v broadcast over the heads: multi-query written with
    np.broadcast_to) is copied before the kernels see it, and the outputs are laid out apart:
    the contiguous copies' results, and the overflow scan reads only the stack's own entries."""
    rng = np.random.default_rng(23)
    q = rng.standard_normal((2, 4, 33, 8))
    k, v = (np.broadcast_to(rng.standard_normal((2, 1, 33, 8)), q.shape) for _ in range(2))
    qb = np.broadcast_to(q[:, :1], q.shape)                      # q broadcast too
    assert not FK.heads_ok(k)
    dy = rng.standard_normal(q.shape)
    for qq in (q, qb):
        with use_backend(route):
            y, c = F.attention_forward(qq, k, v, is_causal=True, method="tiled")
            grads = F.attention_backward(dy, c)[:3]
            want_y, cw = F.attention_forward(*map(np.ascontiguousarray, (qq, k, v)),
                                             is_causal=True, method="tiled")
            want = F.attention_backward(dy, cw)[:3]
        for got, ref in zip((y, *grads), (want_y, *want)):
            np.testing.assert_array_equal(got, ref)
    big = np.zeros(2000, np.float32)
    big[1024:1031] = 1e30                                        # just past the stack's entries
    s = np.broadcast_to(big[:1024].reshape(1, 64, 16)[:, None], (1, 8, 64, 16))
    assert FK.max_abs_numba(s) == FK.max_abs_numpy(s) == 0.0


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("method", ["tiled", "dense"])
def test_backward_writes_into_out(route, method):
    """``attention_backward(..., out=(dq, dk, dv))`` writes the gradients into the given arrays
    (GPT's head-split views of one buffer) and returns them: the values of a call without
    ``out``. Overlapping or ill-shaped targets are refused."""
    rng = np.random.default_rng(25)
    B, T, H, d = 2, 19, 3, 4
    q, k, v = (rng.standard_normal((B, H, T, d)) for _ in range(3))
    dy = rng.standard_normal((B, H, T, d))
    buf = np.full((B, T, 3 * H * d), np.nan)
    heads = tuple(g.reshape(B, T, H, d).transpose(0, 2, 1, 3) for g in np.split(buf, 3, -1))
    with use_backend(route):
        _, c = F.attention_forward(q, k, v, is_causal=True, method=method)
        want = F.attention_backward(dy, c)[:3]
        got = F.attention_backward(dy, c, out=heads)[:3]
        assert all(g is h for g, h in zip(got, heads))
        for g, w in zip(heads, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)
        assert not np.isnan(buf).any()                           # every entry written
        for bad in ((heads[0], heads[0], heads[2]), (heads[0][..., :2], heads[1], heads[2]),
                    (q, heads[1], heads[2]), heads[:2]):
            with pytest.raises((ValueError, TypeError), match="out"):
                F.attention_backward(dy, c, out=bad)


def test_twins_take_any_strides():
    """Both twins on stacks with a leading axis that does not merge (a head split), against the
    same stacks copied contiguous: the same numbers (1e-12) from either."""
    rng = np.random.default_rng(22)
    B, T, H, d = 2, 13, 2, 5
    proj = rng.standard_normal((B, T, 4 * H * d))
    q, k, v, g = (a.reshape(B, T, H, d).transpose(0, 2, 1, 3) for a in np.split(proj, 4, -1))
    for a in (q, k, q[:, :, ::2], proj[0, 0, :5]):          # the overflow scan, too
        assert FK.max_abs_numba(a) == FK.max_abs_numpy(a) == np.abs(a).max()
    for bad in (np.nan, -np.inf):
        p = proj.copy()
        p[1, 3, 2] = bad                                        # in q's head 0, row 3
        assert FK.max_abs_numba(p[..., :H * d].reshape(B, T, H, d).transpose(0, 2, 1, 3)) == np.inf
    mask, rows = np.zeros((0, 1, 1), bool), np.zeros(1, np.int64)
    for twin, back in ((FK.flash_attention_forward_numba, FK.flash_attention_backward_numba),
                       (FK.flash_attention_forward_numpy, FK.flash_attention_backward_numpy)):
        res = []
        for args in ((q, k, v, g), tuple(map(np.ascontiguousarray, (q, k, v, g)))):
            out = np.empty_like(args[0])
            lse = np.empty((B * H, T))
            twin(*args[:3], 0.3, True, 0, mask, rows, 4, 3, out, lse, 0, B * H)
            grads = tuple(map(np.empty_like, args[:3]))
            back(*args[:3], out, args[3], lse, 0.3, True, 0, mask, rows, 4, 3, *grads, 0, B * H)
            res.append((out, lse, *grads))
        for x, y in zip(*res):
            assert_rel(x, y, 1e-12)


def test_threads_split_the_heads():
    """Two threads give the single thread's result bit for bit (each head is one thread's)."""
    rng = np.random.default_rng(5)
    q, k, v = _inputs(rng, np.float32, (3, 2), 70, 70, d=8, dv=8)
    old = get_num_threads()
    try:
        out = {}
        for n in (1, 2):
            set_num_threads(n)
            y, c = F.attention_forward(q, k, v, is_causal=True, method="tiled")
            out[n] = (y, *F.attention_backward(np.ones_like(y), c)[:3])
    finally:
        set_num_threads(old)
    for a, b in zip(out[1], out[2]):
        assert np.array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# what is saved, dtypes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
def test_tiled_cache_is_linear_in_T(route):
    rng = np.random.default_rng(6)
    B, H, T, d = 2, 2, 96, 8
    q, k, v = _inputs(rng, np.float32, (B, H), T, T, d=d, dv=d)
    keys = rng.random((B, 1, 1, T)) > 0.1
    with use_backend(route):
        y, cache = F.attention_forward(q, k, v, attn_mask=keys, is_causal=True, method="tiled")
    arrays = [f for f in cache if isinstance(f, np.ndarray)]
    assert len(arrays) == 7                                 # q, k, v, out, lse, mask, mask_rows
    for a in arrays:
        assert a.size <= B * H * T * d, a.shape             # O(T d): never (T, T)
    assert cache.lse.dtype == np.float64 and cache.out.dtype == np.float32 and y is cache.out


@pytest.mark.parametrize("route", ROUTES)
def test_dtype_preserved(small_tiles, route):
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        q, k, v = _inputs(rng, dtype, (2,), 6, 6)
        with use_backend(route):
            y, c = F.attention_forward(q, k, v, method="tiled")
            grads = F.attention_backward(np.ones_like(y), c)[:3]
        assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
        assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]


def test_strided_inputs():
    """GPT's q, k, v are transposed views: copied, and the gradients come back in their shape."""
    rng = np.random.default_rng(8)
    qkv = rng.standard_normal((2, 9, 3, 2, 4))                  # (B, T, 3, nh, hs)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (B, nh, T, hs) views
    dy = rng.standard_normal((2, 2, 9, 4))
    ours, ref = _both(q, k, v, dy, is_causal=True)
    for a, b in zip(ours, ref):
        assert_rel(a, b, 1e-12)


# ------------------------------------------------------------------------------------------------
# bad input, refusals, fallbacks
# ------------------------------------------------------------------------------------------------
def test_bad_input_names_the_argument():
    rng = np.random.default_rng(9)
    q, k, v = _inputs(rng, np.float32, (1, 2), 4, 4)
    cases = [
        (dict(method="flash"), ValueError, "method"),
        (dict(method="tiled", dropout_p=0.1, rng=rng), ValueError, "dropout"),
        (dict(method="tiled", attn_mask=np.zeros((4, 4), np.float32)), ValueError, "attn_mask"),
        (dict(method="tiled", attn_mask=np.ones((3, 4), bool)), ValueError, "attn_mask"),
        (dict(method="tiled", attn_mask=np.ones((4, 4), np.int64)), TypeError, "attn_mask"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            F.attention_forward(q, k, v, **kw)
    with pytest.raises(TypeError, match="dtype"):
        F.attention_forward(q, k, v.astype(np.float64), method="tiled")
    with pytest.raises(ValueError, match="k must be"):
        F.attention_forward(q, k[..., :3], v, method="tiled")
    y, c = F.attention_forward(q, k, v, method="tiled")
    with pytest.raises(ValueError, match="dy"):
        F.attention_backward(np.ones((1, 2, 4, 3), np.float32), c)
    with pytest.raises(TypeError, match="dy"):
        F.attention_backward(np.ones(y.shape), c)
    with pytest.raises(ValueError, match="dweights"):
        F.attention_backward(np.ones_like(y), c, dweights=np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match="cache"):
        F.attention_weights((1, 2))


def test_dropout_in_eval_mode_is_no_dropout():
    rng = np.random.default_rng(10)
    q, k, v = _inputs(rng, np.float64, (1,), 5, 5)
    y, c = F.attention_forward(q, k, v, dropout_p=0.5, training=False, method="tiled")
    assert isinstance(c, F.TiledAttentionCache)


@pytest.mark.parametrize("route", ROUTES)
def test_overflowing_scores_take_the_dense_path(route):
    """q.k past float32's max: the exact (dense) probabilities, never NaN, even when asked for
    the tiled path."""
    big = np.full((1, 1, 2, 2), 1e20, np.float32)
    v = np.eye(2, dtype=np.float32)[None, None]
    with use_backend(route):
        y, cache = F.attention_forward(big, big, v, method="tiled")
        ref, _ = F.attention_forward(big, big, v, method="dense")
    assert isinstance(cache, F.AttentionCache) and np.isfinite(y).all()
    assert np.array_equal(y, ref)
    # the bound, not only actual overflow: s * q.k could pass a quarter of the max
    q = np.full((1, 1, 3, 4), 5e18, np.float32)          # d max|q|^2 = 1e38: fine, not 4x
    assert not A._scores_fit(q, q, q, 0.5)
    assert A._scores_fit(q / 1e4, q / 1e4, q, 0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_abs_twins_agree_over_the_whole_range(dtype):
    """The overflow scan's ``max_abs`` (sixteen lanes and a tail on the Numba route): both routes
    give max |x| exactly, from subnormals to the largest finite value, at every length around the
    lane count, and inf when a NaN or +-inf sits anywhere -- first, last, or in the tail."""
    rng = np.random.default_rng(3)
    info = np.finfo(dtype)
    pool = np.array([0.0, -0.0, info.tiny / 4, -info.smallest_normal, 1.0, -3.5, info.max,
                     -info.max, info.eps], dtype)
    for n in [0, 1, 7, 15, 16, 17, 31, 32, 33, 100, 1000]:
        x = rng.choice(pool, n).astype(dtype) * rng.uniform(0.5, 1, n).astype(dtype)
        want = float(np.abs(x).max()) if n else 0.0
        assert FK.max_abs_numba(x) == FK.max_abs_numpy(x) == want, n
        for bad in (np.nan, np.inf, -np.inf):
            for at in {0, n // 2, n - 1} if n else ():
                y = x.copy()
                y[at] = bad
                assert FK.max_abs_numba(y) == FK.max_abs_numpy(y) == np.inf, (n, at, bad)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_scores_under_the_bound(small_tiles, route, dtype):
    """Scores near a thirty-second of the max (one-hot rows, differences of +-1e37): the tiled
    kernels' own arithmetic, finite, the dense output and dv; dq and dk finite (saturated rows
    give them only rounding: dS = P (dP - D) with D read off the output)."""
    rng = np.random.default_rng(15)
    big = np.sqrt(np.finfo(dtype).max / 32 / 4)
    q, k = ((rng.uniform(-1, 1, (1, 2, 9, 4)) * big).astype(dtype) for _ in range(2))
    v = rng.standard_normal((1, 2, 9, 4)).astype(dtype)
    with use_backend(route):
        y, c = F.attention_forward(q, k, v, is_causal=True, method="tiled", scale=1.0)
        ref, cd = F.attention_forward(q, k, v, is_causal=True, method="dense", scale=1.0)
        grads = F.attention_backward(np.ones_like(y), c)[:3]
        dv_ref = F.attention_backward(np.ones_like(y), cd)[2]
    assert isinstance(c, F.TiledAttentionCache)
    assert np.array_equal(y, ref) and np.array_equal(grads[2], dv_ref)
    assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("route", ROUTES)
def test_nan_inputs_give_nan_outputs(route):
    """Inside a trusted model nothing scans for NaN first: a NaN in q, k or v still gives NaN
    where it reaches, via the dense path, never a silent finite number."""
    rng = np.random.default_rng(11)
    q, k, v = _inputs(rng, np.float32, (1, 2), 6, 6)
    run = trusted(lambda q, k, v: F.attention_forward(q, k, v, is_causal=True, method="tiled"))
    for which in range(3):
        args = [q.copy(), k.copy(), v.copy()]
        args[which][0, 1, 0, 0] = np.nan
        with use_backend(route):
            y, cache = run(*args)
        assert isinstance(cache, F.AttentionCache)
        assert np.isnan(y[0, 1]).any() and np.isfinite(y[0, 0]).all()


def test_auto_picks_by_length_dropout_and_mask(monkeypatch):
    rng = np.random.default_rng(12)
    for route in ROUTES:
        monkeypatch.setitem(A.TILED_FROM, route, 16)
    q, k, v = _inputs(rng, np.float32, (1, 2), 20, 20)
    short = tuple(a[..., :15, :] for a in (q, k, v))
    for route in ROUTES:
        with use_backend(route):
            assert isinstance(F.attention_forward(q, k, v)[1], F.TiledAttentionCache)
            assert isinstance(F.attention_forward(*short)[1], F.AttentionCache)
            # a few queries against many keys (generation with a KV cache): dense
            assert isinstance(F.attention_forward(q[..., -1:, :], k, v, is_causal=True)[1],
                              F.AttentionCache)
            assert isinstance(F.attention_forward(q[..., -16:, :], k, v, is_causal=True)[1],
                              F.TiledAttentionCache)
            assert isinstance(F.attention_forward(q, k, v, dropout_p=0.1, rng=rng)[1],
                              F.AttentionCache)
            assert isinstance(F.attention_forward(q, k, v, attn_mask=np.zeros((20, 20)))[1],
                              F.AttentionCache)
            assert isinstance(F.attention_forward(q, k, v, attn_mask=np.ones((20, 20), bool))[1],
                              F.TiledAttentionCache)
            assert isinstance(F.attention_forward(q, k, v, method="dense")[1], F.AttentionCache)


def test_attention_weights_from_either_cache(small_tiles):
    rng = np.random.default_rng(13)
    q, k, v = _inputs(rng, np.float64, (2, 2), 5, 9)
    keys = _mask(rng, "keys", 2, 5, 9)
    full = _mask(rng, "full", 2, 5, 9)
    for kw in (dict(is_causal=True), dict(attn_mask=keys), dict(attn_mask=full)):
        w = F.attention_weights(F.attention_forward(q, k, v, method="tiled", **kw)[1])
        ref = F.attention_weights(F.attention_forward(q, k, v, method="dense", **kw)[1])
        assert_rel(w, ref, 1e-12)


# ------------------------------------------------------------------------------------------------
# the callers
# ------------------------------------------------------------------------------------------------
def test_callers_that_need_weights_keep_them(monkeypatch):
    """With ``auto`` taking the tiled path everywhere, MultiheadAttention still returns weights
    (and takes their gradient), GPT trains on the tiled path with the dense path's gradients,
    and the attention maps are the dense ones."""
    from scratchlm.models import GPT, GPTConfig
    from scratchlm.data import CharTokenizer
    from scratchlm.training.evaluate import attention_maps

    for route in ROUTES:
        monkeypatch.setitem(A.TILED_FROM, route, 1)
    rng = np.random.default_rng(14)
    mha = nn.MultiheadAttention(8, 2, batch_first=True, rng=0, dtype=np.float64)
    x = rng.standard_normal((2, 6, 8))
    out, w = mha(x, x, x, need_weights=True)
    assert w.shape == (2, 6, 6)
    mha.backward(np.ones_like(out), np.ones_like(w))
    assert isinstance(mha._saved()[1], F.AttentionCache)
    mha(x, x, x, need_weights=False)
    assert isinstance(mha._saved()[1], F.TiledAttentionCache)

    cfg = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8)
    idx = rng.integers(0, 11, (2, 12))
    grads = {}
    for method_from in (1, 10 ** 9):                        # tiled, then dense
        for route in ROUTES:
            monkeypatch.setitem(A.TILED_FROM, route, method_from)
        model = GPT(cfg, dtype=np.float64, rng=0)
        model(idx, np.roll(idx, -1, axis=1))
        kind = type(model.transformer.h[0].attn._saved())
        assert kind is (F.TiledAttentionCache if method_from == 1 else F.AttentionCache)
        model.backward()
        grads[method_from] = {n: p.grad.copy() for n, p in model.named_parameters()}
    for name, g in grads[1].items():
        assert_rel(g, grads[10 ** 9][name], 1e-10, name)

    tok = CharTokenizer("abcdefghijk")
    maps = {}
    for method_from in (1, 10 ** 9):
        for route in ROUTES:
            monkeypatch.setitem(A.TILED_FROM, route, method_from)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2,
                              n_embd=8), dtype=np.float64, rng=0)
        maps[method_from], _ = attention_maps(model, tok, "abcab")
    assert_rel(maps[1], maps[10 ** 9], 1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tiled_matches_torch_sdpa(torch, small_tiles, route, dtype):
    """The tiled path against torch.nn.functional.scaled_dot_product_attention, forward and the
    three input gradients: causal, and with a boolean key-padding mask (every row keeps a key)."""
    from conftest import assert_close, to_torch
    rng = np.random.default_rng(7)
    q, k, v = _inputs(rng, dtype, (2, 3), 11, 11)
    dy = rng.standard_normal(q.shape[:-1] + (v.shape[-1],)).astype(dtype)
    keep = np.ones((2, 1, 1, 11), bool)
    keep[0, ..., 8:] = False                                  # the first sequence is 8 long
    for kwargs in ({"is_causal": True}, {"attn_mask": keep}):
        with use_backend(route):
            y, cache = F.attention_forward(q, k, v, method="tiled", **kwargs)
            assert isinstance(cache, F.TiledAttentionCache)
            dq, dk, dv, _ = F.attention_backward(dy, cache)
        tq, tk, tv = (to_torch(torch, a, grad=True) for a in (q, k, v))
        tkw = dict(kwargs)
        if "attn_mask" in tkw:
            tkw["attn_mask"] = torch.from_numpy(keep)
        ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, **tkw)
        ty.backward(torch.from_numpy(dy))
        for ours, theirs in ((y, ty), (dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
            assert_close(ours, theirs, dtype)
