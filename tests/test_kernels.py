"""Both routes (Numba kernels and their NumPy twins) agree, and the switch works."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import scratchlm
from scratchlm import kernels, nn
from scratchlm.kernels import embedding as E, gelu as G, layernorm as L, optim as O, softmax as S

RNG = np.random.default_rng(0)


def both(kernel, *args):
    a = kernel.numba(*[x.copy() if isinstance(x, np.ndarray) else x for x in args])
    b = kernel.numpy(*[x.copy() if isinstance(x, np.ndarray) else x for x in args])
    return (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))


def assert_agree(kernel, *args, dtype, dtypes=None):
    """Both routes agree; every output has ``dtype`` (or the matching entry of ``dtypes``)."""
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    outs = both(kernel, *args)
    for u, v, want in zip(*outs, dtypes or [dtype] * len(outs[0])):
        assert u.dtype == v.dtype == want, (kernel.__name__, u.dtype, v.dtype)
        np.testing.assert_allclose(u, v, **tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_routes_agree(dtype):
    x = (RNG.standard_normal((9, 13)) * 4).astype(dtype)
    dy = RNG.standard_normal((9, 13)).astype(dtype)
    t = RNG.integers(0, 13, 9)
    t[3] = -100
    assert_agree(S.softmax_forward, x, dtype=dtype)
    assert_agree(S.softmax_backward, dy, S.softmax_forward(x), dtype=dtype)
    assert_agree(S.log_softmax_forward, x, dtype=dtype)
    assert_agree(S.log_softmax_backward, dy, S.log_softmax_forward(x), dtype=dtype)
    for eps in (0.0, 0.1):
        assert_agree(S.cross_entropy_forward, x, t, -100, eps, dtype=dtype,
                     dtypes=[np.float64, np.float64])     # row losses, (max, log-sum) in float64
        _, lse = S.cross_entropy_forward(x, t, -100, eps)
        assert_agree(S.cross_entropy_backward, dy[:, 0].copy(), x, t, lse, -100, eps, dtype=dtype)
    w, b = RNG.standard_normal(13).astype(dtype), RNG.standard_normal(13).astype(dtype)
    assert_agree(L.layernorm_forward, x, w, b, 1e-5, dtype=dtype,
                 dtypes=[dtype, np.float64, np.float64])   # mean and rstd in float64
    _, mean, rstd = L.layernorm_forward(x, w, b, 1e-5)
    assert_agree(L.layernorm_backward, dy, x, w, mean, rstd, dtype=dtype)
    for approx in (True, False):
        assert_agree(G.gelu_forward, x.ravel(), approx, dtype=dtype)     # y and dy/dx


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_in_place_kernels_agree(dtype):
    dw1 = np.zeros((7, 4), dtype)
    dw2 = dw1.copy()
    ids = RNG.integers(0, 7, 30)
    d = RNG.standard_normal((30, 4)).astype(dtype)
    E.scatter_add_rows.numba(dw1, ids, d)
    E.scatter_add_rows.numpy(dw2, ids, d)
    np.testing.assert_allclose(dw1, dw2, rtol=1e-6 if dtype == np.float32 else 1e-13)
    for amsgrad in (False, True):
        for decoupled in (False, True):
            arrays = [RNG.standard_normal(50).astype(dtype) for _ in range(2)] + [np.abs(RNG.standard_normal(50)).astype(dtype) for _ in range(3)]
            a = [x.copy() for x in arrays]
            b = [x.copy() for x in arrays]
            args = (1e-2, 0.9, 0.999, 1e-8, 0.1, decoupled, amsgrad, 0.19, 0.002)
            O.adam_update.numba(*a, *args)
            O.adam_update.numpy(*b, *args)
            for u, v in zip(a, b):
                np.testing.assert_allclose(u, v, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_split_run_keeps_nothing_alive():
    # a pool thread must drop its task (whose closure holds the caller's arrays) and its result
    # once the split returns, or they stay resident until the next split
    import functools
    import gc
    import weakref

    class Payload:
        pass

    threads = kernels.get_num_threads()
    kernels.set_num_threads(2)
    try:
        payload = Payload()
        ref = weakref.ref(payload)
        part = functools.partial(lambda p, lo, hi: (p, lo), payload)   # holds it strongly
        out = kernels.split_run(part, 4)
        assert [o[1] for o in out] == [0, 2]
        del payload, out, part
        gc.collect()
        assert ref() is None
    finally:
        kernels.set_num_threads(threads)


def test_adam_split_equals_one_pass():
    # a parameter over 2 * GRAIN entries is updated in parts by the threads: bit-identical
    n = 2 * O.GRAIN + 77
    for amsgrad in (False, True):
        arrays = [RNG.standard_normal(n).astype(np.float32) for _ in range(2)] + [
            np.abs(RNG.standard_normal(n)).astype(np.float32) for _ in range(3)]
        a = [x.copy() for x in arrays]
        b = [x.copy() for x in arrays]
        args = (1e-2, 0.9, 0.999, 1e-8, 0.1, True, amsgrad, 0.19, 0.002)
        threads = kernels.get_num_threads()
        kernels.set_num_threads(2)
        try:
            O.adam_update.numba(*a[:4], a[4] if amsgrad else a[3], *args)   # split (2 threads)
        finally:
            kernels.set_num_threads(threads)
        O.adam_update_numba(*b[:4], b[4] if amsgrad else b[3], *args)    # one serial pass
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_finite_check_routes_agree():
    from scratchlm.kernels.checks import all_finite
    for dtype in (np.float32, np.float64):
        x = RNG.standard_normal(9000).astype(dtype)          # > 2 blocks of the Numba scan
        x[7] = np.finfo(dtype).max                            # the largest finite: not flagged
        for bad in (None, np.nan, np.inf, -np.inf):
            for at in (0, 4095, 4096, 8191, 8999, int(RNG.integers(0, 9000))):   # block edges
                y = x.copy()
                if bad is not None:
                    y[at] = bad
                assert all_finite.numba(y) == all_finite.numpy(y) == (bad is None)
        assert all_finite.numba(x[:0]) and all_finite.numba(x[:1])


def test_whole_layers_agree_across_routes():
    x = RNG.standard_normal((6, 8))
    m = nn.Sequential(nn.Linear(8, 16, dtype=np.float64, rng=0), nn.GELU(), nn.LayerNorm(16, dtype=np.float64),
                      nn.LogSoftmax())
    dy = RNG.standard_normal((6, 16))
    outs = {}
    for route in kernels.BACKENDS:
        with kernels.use_backend(route):
            assert kernels.get_backend() == route
            m.zero_grad()
            y = m(x)
            dx = m.backward(dy)
            outs[route] = (y, dx, [p.grad.copy() for p in m.parameters()])
    (y1, dx1, g1), (y2, dx2, g2) = outs["numba"], outs["numpy"]
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-11, atol=1e-13)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_switch_api():
    assert scratchlm.get_backend() in kernels.BACKENDS
    with scratchlm.use_backend("numpy"):
        with scratchlm.use_backend("numba"):
            assert scratchlm.get_backend() == "numba"
        assert scratchlm.get_backend() == "numpy"
    with pytest.raises(ValueError, match="backend must be one of"):
        with scratchlm.use_backend("cuda"):
            pass
    old = kernels.get_backend()
    scratchlm.set_backend("numpy")
    try:
        assert kernels.get_backend() == "numpy"
    finally:
        scratchlm.set_backend(old)


def _in_subprocess(code, **env):
    """Run ``code`` in a fresh interpreter with extra environment variables set."""
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                          capture_output=True, text=True)


def test_environment_variable_selects_route():
    code = "import scratchlm; print(scratchlm.get_backend())"
    out = _in_subprocess(code, SCRATCHLM_BACKEND="numpy")
    assert out.returncode == 0 and out.stdout.strip() == "numpy"
    bad = _in_subprocess(code, SCRATCHLM_BACKEND="gpu")
    assert bad.returncode != 0 and "SCRATCHLM_BACKEND must be one of" in bad.stderr


def test_every_jitted_kernel_caches_and_has_a_twin():
    import inspect
    import scratchlm.kernels as pkg
    import importlib
    import pkgutil
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"scratchlm.kernels.{info.name}")
        src = inspect.getsource(mod)
        assert "@njit(" not in src.replace("@njit(cache=True", ""), f"{info.name}: @njit without cache=True"
        for name, obj in vars(mod).items():
            if name.endswith("_numba"):
                assert hasattr(mod, name[:-6] + "_numpy"), f"{info.name}.{name} has no NumPy twin"


def test_vectorised_exp_accuracy():
    from scratchlm.kernels.vmath import exp
    t = np.concatenate([np.linspace(-87, 88, 200001), RNG.standard_normal(10000) * 5, [0.0, -1e-30, 1e-30]])
    ours = exp.numba(t.astype(np.float32)).astype(np.float64)
    ref = np.exp(t.astype(np.float32).astype(np.float64))
    assert np.max(np.abs(ours - ref) / ref) < 1.2e-7          # within one float32 ulp
    # the whole range: 0 and inf beyond it, as np.exp; subnormals within one subnormal step
    extreme = np.array([-np.inf, -1000.0, -104.0, np.inf, 1000.0, 89.0, 88.73], np.float32)
    assert exp.numba(extreme).tolist() == [0.0, 0.0, 0.0, np.inf, np.inf, np.inf, np.inf]
    assert np.isnan(exp.numba(np.array([np.nan], np.float32))[0])
    sub = np.linspace(-103.9, -87.4, 5001).astype(np.float32)     # exp(t) subnormal in float32
    assert np.max(np.abs(exp.numba(sub) - np.exp(sub.astype(np.float64)))) <= 2.0 ** -149
    t64 = RNG.standard_normal(1000) * 20
    np.testing.assert_allclose(exp.numba(t64), np.exp(t64), rtol=4e-16, atol=0)   # float64: libm, 1 ulp


# ------------------------------------------------------------------------------------------------
# the Numba GEMM (kernels/gemm.py) and the thread split
# ------------------------------------------------------------------------------------------------
def _operand(shape, layout, dtype):
    """A (rows, cols) operand laid out C-ordered, as a transposed view ('F') or as a strided
    slice of a bigger array ('A')."""
    rows, cols = shape
    if layout == "C":
        return RNG.standard_normal(shape).astype(dtype)
    if layout == "F":
        return RNG.standard_normal((cols, rows)).astype(dtype).T
    if layout == "R":                                               # reversed: negative strides
        return RNG.standard_normal(shape).astype(dtype)[::-1, ::-1]
    return RNG.standard_normal((rows + 3, 2 * cols + 1)).astype(dtype)[1:rows + 1, 1::2]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layouts", ["CC", "CF", "FC", "AR"])
def test_matmul_routes_agree(dtype, layouts):
    from scratchlm.kernels.gemm import KC, MC, MR, NR_F32, matmul
    # edges of every blocking size: one entry, tiles that do not fill, K across two KC slabs,
    # M across two MC blocks, a single row or column
    for M, K, N in [(1, 1, 1), (MR + 1, KC + 3, 33), (2 * MR, 7, 64), (37, 2 * KC + 5, 70),
                    (2 * MC + MR + 3, KC + 1, 3 * NR_F32 + 5), (1, 40, 70), (70, 40, 1),
                    (5, 0, 4), (0, 3, 4)]:
        a, b = _operand((M, K), layouts[0], dtype), _operand((K, N), layouts[1], dtype)
        base = RNG.standard_normal((M, N)).astype(dtype)
        for accumulate in (False, True):
            ours = matmul.numba(a, b, base.copy(), accumulate)
            ref = matmul.numpy(a, b, base.copy(), accumulate)
            assert ours.dtype == dtype
            tol = 1e-12 if dtype == np.float64 else 2e-5
            np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol * max(1, K) ** 0.5)


def test_matmul_writes_only_its_out_view_and_checks_shapes():
    from scratchlm.kernels.gemm import matmul_numba
    a = RNG.standard_normal((9, 20)).astype(np.float32)
    b = RNG.standard_normal((20, 40)).astype(np.float32)
    for dtype in (np.float32, np.float64):
        a, b = a.astype(dtype), b.astype(dtype)
        big = np.zeros((9, 100), dtype)
        matmul_numba(a, b, big[:, 30:70], False)                 # out with a row stride of 100
        np.testing.assert_allclose(big[:, 30:70], a @ b, rtol=1e-5, atol=1e-5)
        matmul_numba(a, b, big[:, 30:70], True)
        np.testing.assert_allclose(big[:, 30:70], 2 * (a @ b), rtol=1e-5, atol=1e-5)
        assert not big[:, :30].any() and not big[:, 70:].any()
    a, b = a.astype(np.float32), b.astype(np.float32)
    with pytest.raises(ValueError, match="a \\(9, 20\\)"):
        matmul_numba(a, b[:19], np.zeros((9, 40), np.float32), False)
    with pytest.raises(ValueError, match="out must be a float32 array of shape \\(9, 40\\)"):
        matmul_numba(a, b, np.zeros((9, 41), np.float32), False)
    with pytest.raises(TypeError, match="one float dtype"):
        matmul_numba(a, b.astype(np.float64), np.zeros((9, 40), np.float32), False)
    out = np.zeros((40, 9), np.float32).T                         # a transposed out works too
    np.testing.assert_allclose(matmul_numba(a, b, out, False), a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matmul_batches_and_thread_splits_agree_with_numpy(dtype, threads):
    """Every product the layers issue on the Numba route: a stack of matrices (attention's
    (B, nh, T, hs) views with strided leading axes), one b shared by the stack (a weight), and
    one product large enough to be split by rows or by columns over the threads."""
    from scratchlm.kernels import get_num_threads, set_num_threads
    from scratchlm.kernels.gemm import SPLIT_MIN_MACS, matmul
    q = RNG.standard_normal((2, 19, 3, 8)).astype(dtype).transpose(0, 2, 1, 3)    # (B, nh, T, hs)
    w = RNG.standard_normal((5, 8)).astype(dtype)
    big_m = int(SPLIT_MIN_MACS ** (1 / 3)) * 2
    cases = [(q, np.swapaxes(q, -1, -2)), (q, w.T), (q[:, :, ::-1], np.swapaxes(q, -1, -2)),
             (RNG.standard_normal((3 * big_m + 5, big_m)).astype(dtype),          # rows split
              RNG.standard_normal((big_m, big_m + 7)).astype(dtype)),
             (RNG.standard_normal((big_m - 3, big_m)).astype(dtype),              # columns split
              RNG.standard_normal((big_m, 4 * big_m + 9)).astype(dtype).T.copy().T)]
    saved = get_num_threads()
    set_num_threads(threads)
    try:
        for a, b in cases:
            ref = np.matmul(a, b)
            base = RNG.standard_normal(ref.shape).astype(dtype)
            got = matmul.numba(a, b)
            acc = matmul.numba(a, b, base.copy(), True)
            assert got.dtype == dtype and got.shape == ref.shape
            tol = 1e-12 if dtype == np.float64 else 2e-5
            scale = np.abs(ref).max()
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale)
            np.testing.assert_allclose(acc, base + ref, rtol=tol, atol=tol * scale)
            np.testing.assert_allclose(matmul.numpy(a, b), ref, rtol=tol, atol=tol * scale)
    finally:
        set_num_threads(saved)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matmul_extreme_values_match_blas(dtype):
    """Overflow to inf, inf * 0 = NaN and NaN propagate on our GEMM as through the BLAS."""
    from scratchlm.kernels.gemm import matmul
    big = np.finfo(dtype).max
    a = np.array([[big, big], [1.0, 0.0], [np.nan, 1.0], [np.inf, 0.0]], dtype)
    b = np.array([[big, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype)
    with np.errstate(all="ignore"):
        ref = a @ b
        got = matmul.numba(a, b)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(got[~np.isnan(ref)], ref[~np.isnan(ref)])


def _runs_of(rng, n, run, gap):
    """n offsets in runs of ``run`` consecutive values with ``gap`` between runs (the pixels of a
    convolution: output rows of ``run`` pixels in a padded plane), from a random start."""
    q = np.arange(n)
    return (rng.integers(0, 5) + q + (q // run) * gap).astype(np.int64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_on_gathered_operands_and_scatter_add(dtype):
    """The offset GEMM on both routes against np.add.at, the plain statement of a scatter-add:
    operands whose columns run (copied run by run), whose K axis runs (packed by 8 x 8
    transposes), or neither (gathered), and an ``out`` whose rows overlap, as col2im's do."""
    from scratchlm.kernels.gemm import KC, MR, NC, NR_F32, gemm_numba, gemm_numpy
    rng = np.random.default_rng(3)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=3e-5, atol=3e-4)
    # edges of every blocking size (M, K and N not multiples of the tile; K over two KC slabs; N
    # over two NC blocks), a single entry, an empty sum (K = 0), tiles written in place (run 32)
    for M, K, N, run in [(2 * MR + 3, KC + 9, 2 * NR_F32 + 5, 28), (1, 1, 1, 1), (9, 20, 64, 14),
                         (MR, 16, NR_F32, 32), (MR + 1, 12, NC + NR_F32 + 5, 32), (5, 0, 40, 16)]:
        a = rng.standard_normal(4000).astype(dtype)
        a_rows = rng.integers(0, 50, M)                             # unsorted, repeated: gathered
        a_cols = _runs_of(rng, K, max(run // 2, 1), 3)              # the K axis runs: transposed
        b = rng.standard_normal(4000).astype(dtype)
        b_rows = np.sort(rng.choice(300, K, replace=K > 300)).astype(np.int64)
        b_cols = _runs_of(rng, N, run, 2) * 3 if run == 1 else _runs_of(rng, N, run, 2)
        A, B = a[np.add.outer(a_rows, a_cols)], b[np.add.outer(b_rows, b_cols)]
        # out rows 0..5 apart over columns that run: neighbouring rows share addresses
        out_rows, out_cols = rng.integers(0, 6, M), _runs_of(rng, N, run, 4)
        base = rng.standard_normal(8000).astype(dtype)
        others = np.ones(base.size, bool)
        others[np.add.outer(out_rows, out_cols)] = False
        base[others] = -0.0                                  # an add of 0.0 would flip its sign
        expected = base.copy()
        np.add.at(expected, np.add.outer(out_rows, out_cols), A @ B)
        for route in (gemm_numba, gemm_numpy):
            got = route(a, a_rows, a_cols, b, b_rows, b_cols, base.copy(), out_rows, out_cols, True)
            assert got.dtype == dtype
            np.testing.assert_allclose(got, expected, **tol)
            assert np.signbit(got[others]).all()                         # nothing else touched
        # overwrite: distinct entries, rows N + 7 apart; nothing else may change
        rows = np.arange(M, dtype=np.int64) * (int(out_cols.max()) + 7)
        where = np.add.outer(rows, out_cols)
        for route in (gemm_numba, gemm_numpy):
            got = route(a, a_rows, a_cols, b, b_rows, b_cols, np.full(where.max() + 3, 5.0, dtype),
                        rows, out_cols, False)
            np.testing.assert_allclose(got[where], A @ B, **tol)
            untouched = np.ones(got.size, bool)
            untouched[where] = False
            assert (got[untouched] == 5.0).all()


def test_gemm_checks_its_operands():
    from scratchlm.kernels.gemm import gemm
    f = np.zeros(10, np.float32)
    r, c = np.arange(2, dtype=np.int64), np.arange(3, dtype=np.int64)
    ok = (f, r, c, f, c, r, np.zeros(10, np.float32), r, r, False)
    gemm(*ok)
    with pytest.raises(ValueError, match="a's offsets reach \\[8, 11\\] but its buffer has 10 entries"):
        gemm(f, r + 8, c, *ok[3:])
    with pytest.raises(ValueError, match="a \\(2, 3\\), b \\(2, 2\\)"):
        gemm(*ok[:4], c[:2], *ok[5:])                          # b has 2 rows, a 3 columns
    with pytest.raises(TypeError, match="out_cols must be a contiguous 1-D int64 array, got float64"):
        gemm(*ok[:8], r.astype(float), False)
    with pytest.raises(TypeError, match="a_cols must be a contiguous"):       # the kernel reads
        gemm(f, r, np.arange(6, dtype=np.int64)[::2], *ok[3:])            # offsets unstrided
    with pytest.raises(ValueError, match="a's offsets reach"):                # no int64 wrap-around
        gemm(f, np.array([0, 2 ** 63 - 1]), np.array([0, 0, 1]), *ok[3:])
    with pytest.raises(TypeError, match="b must be a contiguous 1-D float32 array"):
        gemm(*ok[:3], f.astype(np.float64), *ok[4:])
    with pytest.raises(TypeError, match="float32 or float64"):
        gemm(*ok[:6], np.zeros(10, np.int32), *ok[7:])


def test_split_run_parts_threads_and_route():
    seen = []

    def part(lo, hi):
        seen.append((lo, hi, kernels.get_backend()))
        return hi - lo

    old = kernels.get_num_threads()
    try:
        kernels.set_num_threads(3)
        with kernels.use_backend("numba"):                  # carried into the worker threads
            assert kernels.split_run(part, 10) == [3, 3, 4]
        assert sorted(seen) == [(0, 3, "numba"), (3, 6, "numba"), (6, 10, "numba")]
        seen.clear()
        with kernels.use_backend("numpy"):                  # NumPy's BLAS has the cores: no split
            assert kernels.split_run(part, 10) == [10]
        with kernels.use_backend("numba"):
            assert kernels.split_run(part, 2) == [1, 1]        # never more parts than items
        with pytest.raises(ValueError, match="positive int"):
            kernels.set_num_threads(0)
        finished = []

        def failing(lo, hi):
            if lo == 0:
                raise RuntimeError("part 0 failed")
            time.sleep(0.05)
            finished.append(lo)
            return hi - lo

        with kernels.use_backend("numba"):
            with pytest.raises(RuntimeError, match="part 0 failed"):
                kernels.split_run(failing, 9)
        assert sorted(finished) == [3, 6]            # the error waited for the other parts
    finally:
        kernels.set_num_threads(old)


@pytest.mark.parametrize("nd", [1, 2])
def test_conv_same_result_on_one_or_two_threads(nd):
    from scratchlm import functional as F
    x = RNG.standard_normal((5, 4, 11) if nd == 1 else (5, 4, 9, 8))
    w = RNG.standard_normal((12, 2, 3) if nd == 1 else (12, 2, 3, 2))
    b = RNG.standard_normal(12)
    fwd, bwd = (F.conv1d_forward, F.conv1d_backward) if nd == 1 else (F.conv2d_forward, F.conv2d_backward)
    outs = []
    old = kernels.get_num_threads()
    try:
        for threads in (1, 2):
            kernels.set_num_threads(threads)
            with kernels.use_backend("numba"):
                y, cache = fwd(x, w, b, padding=1, dilation=2, groups=2, method="im2col")
                dy = np.cos(y)
                outs.append((y,) + tuple(bwd(dy, cache)))
    finally:
        kernels.set_num_threads(old)
    for one, two in zip(*outs):
        np.testing.assert_allclose(one, two, rtol=1e-13, atol=1e-13)   # dW: partial sums reordered


def test_thread_count_environment_variable():
    code = "import scratchlm.kernels as k; print(k.get_num_threads())"
    out = _in_subprocess(code, SCRATCHLM_NUM_THREADS="1")
    assert out.returncode == 0 and out.stdout.strip() == "1"
    bad = _in_subprocess(code, SCRATCHLM_NUM_THREADS="two")
    assert bad.returncode != 0 and "SCRATCHLM_NUM_THREADS must be a positive integer" in bad.stderr


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_twins_agree_over_the_whole_range_and_any_split(dtype, monkeypatch):
    """ReLU's kernels (and the residual sum with it, ``add_relu``): the same bits on both routes
    for every class of value (NaN stays NaN, inf * 0 = NaN in the backward, inf - inf = NaN),
    whether the array is split over threads or not."""
    import scratchlm.functional.activation as A
    from scratchlm import functional as F
    from scratchlm.kernels import get_num_threads, set_num_threads, use_backend
    fi = np.finfo(dtype)
    special = np.array([0.0, -0.0, fi.tiny, -fi.tiny, fi.smallest_subnormal, fi.max, -fi.max,
                        np.inf, -np.inf, np.nan, 1.0, -1.0], dtype)
    x = np.concatenate([special, RNG.standard_normal(3000).astype(dtype)])
    dy = np.concatenate([special[::-1], RNG.standard_normal(3000).astype(dtype)])
    saved = get_num_threads()
    monkeypatch.setattr(A, "GRAIN", 100)
    try:
        results = []
        for route, threads in (("numpy", 1), ("numba", 1), ("numba", 3)):
            set_num_threads(threads)
            with use_backend(route), np.errstate(invalid="ignore"):
                y = A._elementwise(A.KR.relu_forward, np.empty_like(x), x)
                dx = A._elementwise(A.KR.relu_backward, np.empty_like(x), dy, x)
                ry = A._elementwise(A.KR.add_relu, np.empty_like(x), dy, x)    # dy + relu(x)
            results.append((y, dx, ry))
    finally:
        set_num_threads(saved)
    with np.errstate(invalid="ignore"):
        ref_y, ref_dx = np.maximum(x, 0), dy * (x > 0)
        ref_ry = dy + np.maximum(x, 0)
    for y, dx, ry in results:
        assert y.dtype == dtype and dx.dtype == dtype and ry.dtype == dtype
        np.testing.assert_array_equal(y, ref_y)
        np.testing.assert_array_equal(dx, ref_dx)
        np.testing.assert_array_equal(ry, ref_ry)
    y, cache = F.relu_forward(x[np.isfinite(x)])                   # the layer itself
    np.testing.assert_array_equal(y, np.maximum(x[np.isfinite(x)], 0))


def test_every_kernel_compiles_with_numpys_error_model():
    """Each ``@njit`` in ``scratchlm/kernels`` passes ``error_model="numpy"``: Python's model
    tests every divisor for zero first, a branch that keeps LLVM from vectorising the loop (see
    ``scratchlm/kernels/__init__.py``), and a kernel added without it would be silently slower.
    (``@overload`` implementations are not ``@njit``: those inlined into their callers take the
    caller's flags, the others pass ``error_model`` in their ``jit_options``.)"""
    import ast
    import pathlib

    import scratchlm.kernels as KS
    missing = []
    for path in sorted(pathlib.Path(KS.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for dec in node.decorator_list:
                name = dec.func if isinstance(dec, ast.Call) else dec
                if getattr(name, "id", getattr(name, "attr", None)) != "njit":
                    continue
                model = {k.arg: getattr(k.value, "value", None)
                         for k in getattr(dec, "keywords", [])}.get("error_model")
                if model != "numpy":
                    missing.append(f"{path.name}:{node.lineno} {node.name}")
    assert not missing, missing


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bias_kernels_equal_numpy_at_any_split(dtype, monkeypatch):
    """A linear layer's bias add and its gradient's column sums, split over threads by rows and
    by columns: the same bits as ``y + b`` and NumPy's ``sum(axis=0)`` (row after row) on both
    routes and at any thread count, extremes included (inf + -inf = NaN, as IEEE)."""
    import scratchlm.functional.linear as L
    from scratchlm import functional as F
    from scratchlm.kernels import get_num_threads, set_num_threads, use_backend
    fi = np.finfo(dtype)
    x = RNG.standard_normal((37, 2, 9)).astype(dtype)
    w = RNG.standard_normal((21, 9)).astype(dtype)
    b = RNG.standard_normal(21).astype(dtype)
    b[:3] = [fi.max, -np.inf, np.nan]
    dy = (RNG.standard_normal((37, 2, 21)) * 10.0 ** RNG.uniform(-3, 3, (37, 2, 21))).astype(dtype)
    dy[0, 0, :2] = [fi.max, fi.max]                        # a column sum past the max: inf
    want_y = np.matmul(x, w.T) + b
    with np.errstate(over="ignore"):
        want_db = dy.reshape(-1, 21).sum(axis=0)
    monkeypatch.setattr(L, "GRAIN", 16)                    # split even these small arrays
    saved = get_num_threads()
    try:
        for route, threads in (("numpy", 1), ("numba", 1), ("numba", 2), ("numba", 3)):
            set_num_threads(threads)
            with use_backend(route), np.errstate(over="ignore", invalid="ignore"):
                y, cache = F.linear_forward(x, w, b)
                _, _, db = F.linear_backward(dy, cache)     # (its dx = dy W overflows: fi.max)
            np.testing.assert_allclose(y, want_y, rtol=1e-5 if dtype == np.float32 else 1e-12)
            np.testing.assert_array_equal(np.isnan(y), np.isnan(want_y))
            assert db.dtype == dtype and db.tobytes() == want_db.tobytes(), (route, threads)
    finally:
        set_num_threads(saved)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_norm_forwards_split_by_rows_give_the_same_bits(dtype, monkeypatch):
    """LayerNorm's and RMSNorm's forwards split their rows over the threads: 1, 2 or 3 threads
    give the single thread's bits, extreme rows (redone pre-scaled) included."""
    from scratchlm.kernels import get_num_threads, layernorm as L, rmsnorm as R, set_num_threads
    fi = np.finfo(dtype)
    x = RNG.standard_normal((37, 9)).astype(dtype)
    x[3] = fi.max / 2
    x[5, ::2] = -fi.max / 3                            # sums past the max: the pre-scaled path
    w, b = RNG.standard_normal(9).astype(dtype), RNG.standard_normal(9).astype(dtype)
    monkeypatch.setattr(L, "ROWS_GRAIN", 16)          # split even these small arrays
    saved, got = get_num_threads(), []
    try:
        for threads in (1, 2, 3):
            set_num_threads(threads)
            with np.errstate(over="ignore"):
                got.append(L.layernorm_forward_numba(x, w, b, 1e-5)
                           + R.rmsnorm_forward_numba(x, w, 1e-6))
    finally:
        set_num_threads(saved)
    for other in got[1:]:
        assert all(a.tobytes() == c.tobytes() for a, c in zip(got[0], other))
