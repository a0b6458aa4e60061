"""Batching: random windows, truncated-BPTT sequential batches, padding."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchlm.data.batching import pad_batch, random_windows, sequential_batches


# ------------------------------------------------------------------ random_windows
def test_random_windows_shape_shift_contiguity():
    ids = np.arange(100, 200, dtype=np.int32)
    x, y = random_windows(ids, batch_size=8, block_size=16, rng=0)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)                     # y is x shifted by one
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)        # contiguous windows
    assert x.min() >= 100 and y.max() <= 199


def test_random_windows_determinism():
    ids = np.random.default_rng(0).integers(0, 50, size=1000)
    a = random_windows(ids, 4, 8, rng=3)
    b = random_windows(ids, 4, 8, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    g = np.random.default_rng(3)
    first, second = random_windows(ids, 4, 8, g), random_windows(ids, 4, 8, g)
    np.testing.assert_array_equal(first[0], a[0])
    assert not np.array_equal(first[0], second[0])               # generator advanced


def test_random_windows_covers_every_valid_start():
    ids = np.arange(12)
    x, y = random_windows(ids, 2000, 8, rng=1)                  # valid starts 0..3
    starts = x[:, 0]
    assert set(starts.tolist()) == {0, 1, 2, 3}
    counts = np.bincount(starts)
    assert np.all(np.abs(counts / 2000 - 0.25) < 0.05)
    x, y = random_windows(np.arange(9), 3, 8, rng=0)            # exactly block_size + 1
    np.testing.assert_array_equal(x, np.tile(np.arange(8), (3, 1)))
    np.testing.assert_array_equal(y, np.tile(np.arange(1, 9), (3, 1)))
    x, _ = random_windows([5, 6, 7], 1, 2, rng=0)               # lists are accepted
    np.testing.assert_array_equal(x, [[5, 6]])


@pytest.mark.parametrize("args,exc,match", [
    ((np.arange(8), 2, 8, 0), ValueError, "block_size \\+ 1"),
    ((np.arange(8.0), 2, 4, 0), TypeError, "integer dtype"),
    ((np.arange(8).reshape(2, 4), 2, 2, 0), ValueError, "1-D"),
    ((np.array([1, -2, 3, 4]), 1, 2, 0), ValueError, "non-negative"),
    ((np.arange(8), 0, 4, 0), ValueError, "batch_size"),
    ((np.arange(8), 2, 0, 0), ValueError, "block_size"),
    ((np.arange(8), 2, 2.0, 0), TypeError, "block_size"),
    ((np.arange(8), 2, 4, "seed"), TypeError, "rng"),
    (("abc", 1, 1, 0), TypeError, "ids"),
    ((np.array([], dtype=np.int64), 1, 1, 0), ValueError, "empty"),
])
def test_random_windows_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        random_windows(*args)


# ------------------------------------------------------------------ sequential_batches
def test_sequential_batches_layout():
    ids = np.arange(23)                       # B=2 -> two streams of 11, one id dropped
    batches = list(sequential_batches(ids, batch_size=2, block_size=4))
    shapes = [x.shape for x, _ in batches]
    assert shapes == [(2, 4), (2, 4), (2, 2)]  # 10 input positions per row: 4 + 4 + 2
    x0, y0 = batches[0]
    np.testing.assert_array_equal(x0, [[0, 1, 2, 3], [11, 12, 13, 14]])
    np.testing.assert_array_equal(y0, [[1, 2, 3, 4], [12, 13, 14, 15]])
    x2, y2 = batches[2]
    np.testing.assert_array_equal(x2, [[8, 9], [19, 20]])
    np.testing.assert_array_equal(y2, [[9, 10], [20, 21]])
    for x, y in batches:
        assert x.dtype == y.dtype == np.int64


def test_sequential_batches_continuity_for_carried_state():
    ids = np.random.default_rng(0).integers(0, 1000, size=1003)
    B, T = 4, 7
    L = ids.size // B
    streams = ids[:B * L].reshape(B, L)
    batches = list(sequential_batches(ids, B, T))
    for (_, y0), (x1, _) in zip(batches, batches[1:]):
        # each row continues where the same row of the previous batch stopped
        np.testing.assert_array_equal(x1[:, 0], y0[:, -1])
    xs = np.concatenate([x for x, _ in batches], axis=1)
    ys = np.concatenate([y for _, y in batches], axis=1)
    np.testing.assert_array_equal(xs, streams[:, :-1])          # every input once, in order
    np.testing.assert_array_equal(ys, streams[:, 1:])


@given(st.integers(2, 200), st.integers(1, 6), st.integers(1, 9))
def test_sequential_batches_properties(n, B, T):
    ids = np.arange(n)
    if n < 2 * B:
        with pytest.raises(ValueError, match="2 \\* batch_size"):
            sequential_batches(ids, B, T)
        return
    L = n // B
    batches = list(sequential_batches(ids, B, T))
    assert len(batches) == -(-(L - 1) // T)
    for i, (x, y) in enumerate(batches):
        assert x.shape == y.shape and x.shape[0] == B and 1 <= x.shape[1] <= T
        np.testing.assert_array_equal(y, x + 1)
        np.testing.assert_array_equal(x[:, 0], np.arange(B) * L + i * T)
    assert all(x.shape[1] == T for x, _ in batches[:-1])


def test_sequential_batches_errors_are_eager():
    with pytest.raises(ValueError, match="2 \\* batch_size"):
        sequential_batches(np.arange(7), 4, 3)           # no next() needed
    with pytest.raises(TypeError, match="integer dtype"):
        sequential_batches(np.ones(10), 2, 2)
    with pytest.raises(ValueError, match="block_size"):
        sequential_batches(np.arange(10), 2, 0)


# ------------------------------------------------------------------ pad_batch
def test_pad_batch():
    padded, lengths = pad_batch([[1, 2, 3], np.array([4], dtype=np.int16), [], [5, 6]], pad_id=0)
    np.testing.assert_array_equal(padded, [[1, 2, 3], [4, 0, 0], [0, 0, 0], [5, 6, 0]])
    np.testing.assert_array_equal(lengths, [3, 1, 0, 2])
    assert padded.dtype == lengths.dtype == np.int64
    mask = np.arange(padded.shape[1]) < lengths[:, None]
    assert mask.sum() == 6
    padded, _ = pad_batch([[7], [8, 9]], pad_id=-100)
    np.testing.assert_array_equal(padded, [[7, -100], [8, 9]])


@pytest.mark.parametrize("args,exc,match", [
    (([], 0), ValueError, "must not be empty"),
    (([[], []], 0), ValueError, "all be empty"),
    (([[1, 2], [1.5]], 0), TypeError, "sequences\\[1\\]"),
    (([[1, 2], [[1]]], 0), ValueError, "sequences\\[1\\] must be 1-D"),
    (([[1, -2]], 0), ValueError, "non-negative"),
    (([[1, 2]], 0.0), TypeError, "pad_id"),
    ((np.array([[1, 2]]), 0), TypeError, "list"),
    (("ab", 0), TypeError, "list"),
])
def test_pad_batch_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        pad_batch(*args)
