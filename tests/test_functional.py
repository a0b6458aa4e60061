"""Every functional pair returns all it computes and mutates nothing: its cache is a named tuple
defined beside it, the backward leaves its inputs (the upstream gradient, the cache and what the
cache holds) untouched, and float32 stays float32."""

import inspect

import numpy as np
import pytest

import scratchlm
from scratchlm import functional as F

R = np.random.default_rng(0)


def _x(*shape):
    return R.standard_normal(shape).astype(np.float32)


def _cases():
    """(name, forward thunk, backward(dout, cache)) for every pair in scratchlm.functional."""
    x, w, b = _x(4, 3), _x(5, 3), _x(5)
    img, k2 = _x(2, 2, 6, 6), _x(4, 1, 3, 3)
    seq, ids = _x(2, 3, 5), np.array([[0, 2, 2], [1, 0, 3]])
    t = np.array([0, 2, 1, 4])
    mu, lv, eps = _x(4, 3), _x(4, 3), _x(4, 3)
    T, B, I, H = 5, 2, 3, 4
    rnn = []
    for mode, G in (("rnn_tanh", 1), ("lstm", 4), ("gru", 3)):
        args = (_x(T, B, I), _x(B, H), _x(B, H) if mode == "lstm" else None, _x(G * H, I),
                _x(G * H, H), _x(G * H), _x(G * H), mode)
        rnn.append((f"recurrent[{mode}]", args))
    cases = [
        ("relu", lambda: F.relu_forward(x), F.relu_backward),
        ("add_relu", lambda: F.add_relu_forward(_x(4, 3), x), F.add_relu_backward),
        ("tanh", lambda: F.tanh_forward(x), F.tanh_backward),
        ("sigmoid", lambda: F.sigmoid_forward(x), F.sigmoid_backward),
        ("gelu", lambda: F.gelu_forward(x, "tanh"), F.gelu_backward),
        ("softmax", lambda: F.softmax_forward(seq, 1), F.softmax_backward),
        ("log_softmax", lambda: F.log_softmax_forward(seq, 1), F.log_softmax_backward),
        ("linear", lambda: F.linear_forward(x, w, b), F.linear_backward),
        ("layer_norm", lambda: F.layer_norm_forward(seq, 5, _x(5), _x(5)), F.layer_norm_backward),
        ("rms_norm", lambda: F.rms_norm_forward(seq, 5, _x(5), 1e-6), F.rms_norm_backward),
        ("silu", lambda: F.silu_forward(x), F.silu_backward),
        ("swiglu", lambda: F.swiglu_forward(x, _x(4, 3)), F.swiglu_backward),
        ("rope", lambda: F.rope_forward(_x(2, 3, 4), *F.rope_cos_sin(np.arange(3), F.rope_inv_freq(
            4, 10.0), np.float32)), F.rope_backward),
        ("grouped_query_attention", lambda: F.grouped_query_attention_forward(
            _x(2, 4, 3, 2), _x(2, 2, 3, 2), _x(2, 2, 3, 2), is_causal=True),
         F.grouped_query_attention_backward),
        ("dropout", lambda: F.dropout_forward(x, 0.5, True, np.random.default_rng(1)),
         F.dropout_backward),
        ("embedding", lambda: F.embedding_forward(ids, _x(4, 5), padding_idx=2),
         F.embedding_backward),
        ("attention", lambda: F.attention_forward(seq, seq, seq, is_causal=True, dropout_p=0.2,
                                                  rng=np.random.default_rng(1)),
         F.attention_backward),
        ("conv1d", lambda: F.conv1d_forward(seq, _x(4, 3, 2), _x(4), padding=1), F.conv1d_backward),
        ("conv2d[im2col]", lambda: F.conv2d_forward(img, k2, _x(4), padding=1, groups=2,
                                                    method="im2col"), F.conv2d_backward),
        ("conv2d[direct]", lambda: F.conv2d_forward(img, k2, None, padding=1, groups=2,
                                                    method="direct"), F.conv2d_backward),
        ("max_pool1d", lambda: F.max_pool1d_forward(seq, 2), F.max_pool1d_backward),
        ("max_pool2d", lambda: F.max_pool2d_forward(img, 2, 1, 1), F.max_pool2d_backward),
        ("avg_pool1d", lambda: F.avg_pool1d_forward(seq, 3, 2, 1), F.avg_pool1d_backward),
        ("avg_pool2d", lambda: F.avg_pool2d_forward(img, 3, 2, 1, count_include_pad=False),
         F.avg_pool2d_backward),
        ("cross_entropy", lambda: F.cross_entropy_forward(_x(4, 5), t, label_smoothing=0.1),
         F.cross_entropy_backward),
        ("nll", lambda: F.nll_forward(_x(4, 5), t), F.nll_backward),
        ("bce_with_logits", lambda: F.bce_with_logits_forward(x, np.abs(_x(4, 3)) % 1),
         F.bce_with_logits_backward),
        ("mse", lambda: F.mse_forward(x, _x(4, 3), "none"), F.mse_backward),
        ("gaussian_kl", lambda: F.gaussian_kl_forward(mu, lv), F.gaussian_kl_backward),
        ("reparameterize", lambda: F.reparameterize_forward(mu, lv, eps), F.reparameterize_backward),
        ("free_bits_kl", lambda: F.free_bits_kl_forward(mu, lv, 0.3), F.free_bits_kl_backward),
        ("word2vec", lambda: F.word2vec_forward(_x(6, 3), _x(5, 3), np.array([[0, 2], [5, 1]]),
                                                np.array([[1, 4, 0], [2, 3, 3]]),
                                                np.array([[1, 0, 0], [1, 0, 0]]),
                                                np.array([[True, True], [True, False]])),
         F.word2vec_backward),
        ("glove", lambda: F.glove_forward(_x(4, 3), _x(4, 3), _x(4), _x(4), np.array([0, 1, 3]),
                                          np.array([2, 1, 0]), np.array([0.5, 3.0, 200.0])),
         F.glove_backward),
    ]
    for name, args in rnn:
        def forward(args=args):
            out, h, c, cache = F.recurrent_forward(*args)
            return (out, h, c), cache
        cases.append((name, forward,
                      lambda d, cache: F.recurrent_backward(d[0], d[1], d[2], cache)))
    return cases


CASES = _cases()


def test_every_pair_is_covered():
    pairs = {n[:-len("_forward")] for n in F.__all__ if n.endswith("_forward")}
    covered = {name.split("[")[0] for name, _, _ in CASES}
    assert pairs <= covered, pairs - covered


def _arrays(value):
    """Every ndarray inside a (nested) tuple."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, tuple):
        for v in value:
            yield from _arrays(v)


def _upstream(out):
    if isinstance(out, tuple):
        return tuple(None if o is None else _upstream(o) for o in out)
    if isinstance(out, float):
        return 0.7
    return R.standard_normal(np.shape(out)).astype(np.asarray(out).dtype)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("name, forward, backward", CASES, ids=[c[0] for c in CASES])
def test_named_cache_and_no_mutation(name, forward, backward, backend):
    with scratchlm.use_backend(backend):
        out, cache = forward()
        # the cache: a NamedTuple subclass from scratchlm.functional, exported there
        assert isinstance(cache, tuple) and hasattr(type(cache), "_fields"), type(cache)
        assert type(cache)._fields == tuple(type(cache).__annotations__)   # typing.NamedTuple
        assert type(cache).__module__.startswith("scratchlm.functional."), type(cache)
        assert getattr(F, type(cache).__name__) is type(cache)
        assert type(cache).__name__ in F.__all__
        # float32 in, float32 out
        for a in _arrays(out):
            assert a.dtype == np.float32, name
        dout = _upstream(out)
        held = [(a, a.copy()) for a in _arrays((dout, cache))]
        grads = backward(dout, cache)
        for a, before in held:
            np.testing.assert_array_equal(a, before, err_msg=f"{name}: backward mutated an input")
        for g in _arrays(grads if isinstance(grads, tuple) else (grads,)):
            if name.startswith("recurrent") and g is grads[-1]:
                assert g.dtype == np.float64                       # step norms
            else:
                assert g.dtype == np.float32, name


def test_recurrent_backward_returns_its_step_norms():
    T, B, I, H = 6, 2, 3, 4
    args = (_x(T, B, I), _x(B, H), None, _x(H, I), _x(H, H), None, None, "rnn_tanh")
    sig = inspect.signature(F.recurrent_backward)
    assert "step_norms" not in sig.parameters
    for reverse in (False, True):
        out, _, _, cache = F.recurrent_forward(*args, reverse=reverse)
        dout = _x(T, B, H)
        *grads, norms = F.recurrent_backward(dout, None, None, cache)
        assert len(grads) == 7 and norms.shape == (T,) and norms.dtype == np.float64
        last = T - 1 if not reverse else 0                  # the first step the backward visits
        assert norms[last] == pytest.approx(np.linalg.norm(dout[last]), rel=1e-6)


def test_embedding_accumulates_only_into_the_explicit_target():
    w = _x(4, 5)
    y, cache = F.embedding_forward(np.array([0, 1, 1]), w)
    dy = _x(3, 5)
    _, fresh = F.embedding_backward(dy, cache)
    target = np.ones_like(w)
    _, same = F.embedding_backward(dy, cache, dweight_out=target)
    assert same is target
    np.testing.assert_allclose(target, 1 + fresh, rtol=1e-6)
