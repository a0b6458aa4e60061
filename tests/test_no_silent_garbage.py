"""Nothing silently wrong (issue 15, part 2): a diverged model raises instead of decoding token 0
forever or printing a NaN perplexity; arguments torch refuses are refused; a checker never passes
vacuously; error messages show the value the user gave; every layer and functional pair takes
torch's arguments with torch's meaning (compared with PyTorch where it is installed)."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import assert_close, to_torch
from scratchlm import data, functional as F, nn
from scratchlm._checks import NonFiniteError, index_array
from scratchlm.decoding import beam_search, check_sampling, greedy_decode, sample_next
from scratchlm.gradcheck import GradcheckReport, check_function, check_module
from scratchlm.models import (CNN, GPT, VAE, CharVocab, ConvLM, GPTConfig, MarkovChain, NGramLM,
                              RNNLM, Seq2Seq, Seq2SeqTransformer, exact_match, translate)

BIG = 2**64 - 1                                     # a uint64 id that an int64 cast turns into -1


def _poison(model, value=np.nan, name=None):
    """Set one parameter (the first, or ``name``) to ``value`` everywhere: a diverged model."""
    params = dict(model.named_parameters())
    p = params[name] if name else next(iter(params.values()))
    p.data[...] = value
    return model


def _gpt(V=11):
    return GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=8), rng=0)


LMS = {
    "GPT": lambda: _gpt(),
    "RNNLM": lambda: RNNLM(11, 8, 8, rng=0),
    "ConvLM": lambda: ConvLM(11, channels=8, kernel_size=2, dilations=(1, 2), rng=0),
}


# ------------------------------------------------------------------------------------------------
# a diverged model: generation and evaluation raise, never token 0 or a NaN number
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("name", sorted(LMS))
def test_generate_with_non_finite_parameters_raises(name, greedy, value):
    model = LMS[name]()
    prompt = np.array([[1, 2, 3]])
    ok = model.generate(prompt, 4, greedy=greedy, seed=0)             # healthy: it generates
    assert ok.shape == (1, 7)
    for pname, _ in model.named_parameters():                         # every parameter, one at a time
        m = LMS[name]()
        _poison(m, value, pname)
        try:
            out = m.generate(prompt, 4, greedy=greedy, seed=0)
        except NonFiniteError as exc:
            assert "not finite" in str(exc) and "diverged" in str(exc)
            continue
        # an inf that never reaches the logits (e.g. a bias of a ReLU unit that stays finite
        # downstream) may leave valid logits; a NaN parameter must never decode to silence
        assert value == np.inf or not np.all(out[0, 3:] == 0), pname


def test_non_finite_error_is_both_value_and_floating_point_error():
    err = NonFiniteError("x")
    assert isinstance(err, ValueError) and isinstance(err, FloatingPointError)


@pytest.mark.parametrize("row,words", [
    ([np.nan, 0.0, 1.0], ["NaN"]),
    ([0.0, np.inf, 1.0], ["+inf"]),
    ([-np.inf, -np.inf, -np.inf], ["-inf for every token"]),
])
@pytest.mark.parametrize("greedy", [False, True])
def test_sample_next_refuses_non_finite_logits(row, words, greedy):
    logits = np.array([[0.0, 1.0, 2.0], row])
    with pytest.raises(NonFiniteError) as info:
        sample_next(logits, greedy=greedy, rng=0)
    assert "batch row 1" in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_sample_next_allows_masked_tokens():
    logits = np.array([[-np.inf, 3.0, -np.inf], [0.0, -np.inf, -np.inf]])
    assert sample_next(logits, greedy=True).tolist() == [1, 0]
    assert sample_next(logits, rng=0, top_k=2, top_p=0.9).tolist() == [1, 0]


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(temperature=float("inf")), ValueError, ["temperature", "finite", "inf"]),
    (dict(temperature=0), ValueError, ["temperature", "> 0"]),
    (dict(temperature="hot"), TypeError, ["temperature", "str"]),
    (dict(top_p="0.5"), TypeError, ["top_p", "str"]),
    (dict(top_p=1.5), ValueError, ["top_p", "(0, 1]"]),
    (dict(top_k=0), ValueError, ["top_k", ">= 1"]),
])
def test_sampling_arguments(kwargs, exc, words):
    args = dict(temperature=1.0, top_k=None, top_p=None)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        check_sampling(**args)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("name", sorted(LMS))
def test_generate_refuses_a_non_bool_greedy(name):
    with pytest.raises(TypeError, match="greedy"):
        LMS[name]().generate(np.array([[1]]), 0, greedy="no")


@pytest.mark.parametrize("search", ["greedy", "beam"])
@pytest.mark.parametrize("row", [np.nan, -np.inf])
def test_decoding_helpers_refuse_rows_with_no_choice(search, row):
    def step(tokens, state):                       # row 1 is NaN or -inf everywhere at step 1
        lp = np.log(np.full((len(tokens), 4), 0.25))
        if tokens.shape[1] == 2:
            lp[-1] = row
        return lp, state
    with pytest.raises(NonFiniteError, match="step 1"):
        if search == "greedy":
            greedy_decode(step, np.zeros(2), 0, 3, 5)
        else:
            beam_search(step, np.zeros(2), 0, 3, 2, 5)


def _seq2seqs(vocab):
    return [Seq2Seq(vocab.size, vocab.size, embed_dim=8, hidden_size=8, rng=0),
            Seq2Seq(vocab.size, vocab.size, embed_dim=8, hidden_size=8, attention="additive", rng=0),
            Seq2SeqTransformer(vocab.size, vocab.size, d_model=8, nhead=2, dim_feedforward=16,
                               num_encoder_layers=1, num_decoder_layers=1, rng=0)]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_encoder_decoders_with_non_finite_parameters_raise(which):
    vocab = CharVocab("abc")
    model = _seq2seqs(vocab)[which]
    assert isinstance(translate(model, ["abc"], vocab), list)          # healthy: it decodes
    src = np.array([[3, 4, 5]])
    for pname in ("src_embed.weight", "tgt_embed.weight", "generator.weight"):
        m = _seq2seqs(vocab)[which]
        _poison(m, np.nan, pname if pname in dict(m.named_parameters()) else None)
        for call in (lambda: m.greedy(src), lambda: m.beam(src, beam_size=2),
                     lambda: translate(m, ["abc"], vocab),
                     lambda: translate(m, ["abc"], vocab, "beam"),
                     lambda: exact_match(m, [("abc", "cba")], vocab=vocab)):
            with pytest.raises(NonFiniteError, match="not finite"):
                call()


def test_translate_and_exact_match_refuse_a_bare_string():
    vocab = CharVocab("abc")
    m = _seq2seqs(vocab)[0]
    with pytest.raises(TypeError, match="texts must be a list of strings.*'abc'"):
        translate(m, "abc", vocab)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        translate(m, ["abc", [3, 4]], vocab)
    with pytest.raises(TypeError, match="pairs must be a list"):
        exact_match(m, "abc", vocab=vocab)
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(source, target\) pair"):
        exact_match(m, ("abc", "cba"), vocab=vocab)               # one pair, not a list of pairs
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        exact_match(m, [("abc", "cba", "x")], vocab=vocab)
    with pytest.raises(ValueError, match="max_len"):
        translate(m, ["abc"], vocab, max_len=0)                   # 0 is not "the default"
    with pytest.raises(ValueError, match="batch_size"):
        translate(m, ["abc"], vocab, batch_size=0)
    assert translate(m, ("abc", "ab"), vocab) == translate(m, ["abc", "ab"], vocab)


def _ngram():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return NGramLM(2).fit([[1, 2, 3], [2, 3, 1], [3, 1, 2]])


def test_ngram_generate_refuses_a_non_distribution(monkeypatch):
    m = _ngram()
    assert m.generate(5, seed=0).shape == (5,)
    for bad in (np.nan, np.inf, -1.0, 0.0):
        p = m.next_token_probs([], bos=True)
        monkeypatch.setattr(m, "next_token_probs", lambda *a, p=p, **k: np.full_like(p, bad))
        with pytest.raises(NonFiniteError, match="not a distribution"):
            m.generate(3, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        _ngram().generate(3, temperature=float("inf"))


def test_evaluation_never_reports_nan():
    from scratchlm.training.evaluate import evaluate_ngram, evaluate_text, sample_text
    from scratchlm.training.fit import evaluate_lm
    tok = data.build_tokenizer("char", "hello world the cat sat", 0)
    for make in (lambda: _gpt(tok.vocab_size), lambda: RNNLM(tok.vocab_size, 4, 4, rng=0)):
        healthy = evaluate_text(make(), tok, "hello world")
        assert np.isfinite(healthy["perplexity"])
        m = _poison(make())
        with pytest.raises(NonFiniteError, match="no perplexity"):
            evaluate_text(m, tok, "hello world")
        with pytest.raises(NonFiniteError):
            sample_text(m, tok, "he", 5)
        with pytest.raises(NonFiniteError, match="validation loss"):
            evaluate_lm(m, tok.encode("hello world the cat"), 4, 2, 2)
        with pytest.raises(ValueError, match="block"):
            evaluate_text(make(), tok, "hello world", block=0)
    ng = _ngram()
    ng.perplexity = lambda seqs: float("nan")
    with pytest.raises(NonFiniteError, match="perplexity"):
        evaluate_ngram(ng, None, "1 2 3\n2 3 1")


def test_other_models_refuse_non_finite_parameters():
    cnn = CNN(1, 3, (2,), image_size=8, rng=0)
    images = np.zeros((2, 1, 8, 8), np.float32)
    assert cnn.predict(images).shape == (2,)
    with pytest.raises(NonFiniteError, match="no class"):
        _poison(cnn).predict(images)
    vae = VAE(input_dim=6, hidden_dim=4, latent_dim=2, rng=0)
    x = np.random.default_rng(0).random((3, 6)).astype(np.float32)
    assert np.isfinite(vae.elbo(x))
    _poison(vae, np.nan, "fc1.weight")                                # the encoder: the bounds
    _poison(vae, np.nan, "fc4.weight")                                # the decoder: samples too
    for call in (lambda: vae.sample(2), lambda: vae.elbo(x), lambda: vae.iwae_bound(x, 3)):
        with pytest.raises(NonFiniteError):
            call()
    chain = MarkovChain(3).train(np.array([0, 1, 2, 0, 1]))
    assert chain.generate(0, 5, rng=0).shape == (5,)
    chain.transition_matrix[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="transition_matrix"):
        chain.generate(0, 5, rng=0)


# ------------------------------------------------------------------------------------------------
# arguments torch refuses are refused
# ------------------------------------------------------------------------------------------------
def test_integer_attention_masks_are_refused():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 3, 4))
    for mask in (np.ones((3, 3), np.int64), np.zeros((3, 3), np.uint8), [[1, 0, 0]] * 3):
        with pytest.raises(TypeError, match="attn_mask must be bool.*or float"):
            F.attention_forward(q, q, q, attn_mask=mask)
    mha = nn.MultiheadAttention(4, 2, rng=0)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="attn_mask must be bool.*int64"):
        mha(x, x, x, attn_mask=np.zeros((3, 3), np.int64))
    with pytest.raises(TypeError, match="key_padding_mask must be bool.*int64"):
        mha(x, x, x, key_padding_mask=np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="NaN"):
        mha(x, x, x, key_padding_mask=np.full((2, 3), np.nan, np.float32))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(is_causal=0.1), TypeError, "is_causal"),                  # torch's 5th positional is dropout_p
    (dict(is_causal="False"), TypeError, "is_causal"),
    (dict(training="no"), TypeError, "training"),
    (dict(scale="big"), TypeError, "scale"),
    (dict(scale=float("nan")), ValueError, "scale"),
    (dict(attn_mask="mask"), TypeError, "attn_mask"),
])
def test_attention_arguments(kwargs, exc, match):
    q = np.ones((1, 2, 3))
    with pytest.raises(exc, match=match):
        F.attention_forward(q, q, q, **kwargs)


def test_attention_takes_torchs_positional_order(torch):
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 2, 4, 3)) for _ in range(3))
    ours, _ = F.attention_forward(q, k, v, None, 0.0, True, scale=0.5)   # mask, dropout_p, is_causal
    theirs = torch.nn.functional.scaled_dot_product_attention(
        to_torch(torch, q), to_torch(torch, k), to_torch(torch, v), None, 0.0, True, scale=0.5)
    with pytest.raises(TypeError):
        F.attention_forward(q, k, v, None, 0.0, True, 0.5)             # scale is keyword-only, as torch
    assert_close(ours, theirs)


def test_multihead_attention_takes_torchs_positional_order(torch):
    with pytest.raises(ValueError, match="add_bias_kv"):
        nn.MultiheadAttention(8, 2, 0.0, True, True)                # torch: add_bias_kv=True
    with pytest.raises(ValueError, match="add_zero_attn"):
        nn.MultiheadAttention(8, 2, 0.0, True, False, True)
    with pytest.raises(ValueError, match="kdim"):
        nn.MultiheadAttention(8, 2, kdim=4)
    with pytest.raises(TypeError, match="need_weights"):
        nn.MultiheadAttention(8, 2)(*(np.ones((1, 1, 8), np.float32),) * 3, need_weights="yes")
    args = (8, 2, 0.0, True, False, False, 8, 8, True)              # ... kdim, vdim, batch_first
    ours = nn.MultiheadAttention(*args, dtype=np.float64, rng=0)
    theirs = torch.nn.MultiheadAttention(*args, dtype=torch.float64)
    assert ours.batch_first and theirs.batch_first
    state = {k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 8))
    kpm = rng.standard_normal((2, 5))                                # a float key_padding_mask: added
    o, w = ours(x, x, x, key_padding_mask=kpm)
    to, tw = theirs(*(to_torch(torch, x),) * 3, key_padding_mask=to_torch(torch, kpm))
    assert_close(o, to)
    assert_close(w, tw)


# ------------------------------------------------------------------------------------------------
# a checker never passes vacuously
# ------------------------------------------------------------------------------------------------
class _NoParams(nn.Module):
    differentiable_inputs = ()

    def forward(self, x):
        self._cache = x.shape
        return x * 2.0

    def backward(self, dy):
        return None


def test_gradcheck_that_checks_nothing_is_an_error():
    x = np.random.default_rng(0).standard_normal((2, 3))
    relu = (lambda x: F.relu_forward(x), F.relu_backward)
    with pytest.raises(ValueError, match="max_entries.*vacuously"):
        check_function(*relu, x + 3, max_entries=0)
    with pytest.raises(ValueError, match="max_entries.*vacuously"):
        check_module(nn.Linear(3, 2, dtype=np.float64, rng=0), x, max_entries=0)
    with pytest.raises(ValueError, match="nothing to check"):
        check_function(lambda ids: (ids * 2, None), lambda d, c: None, np.array([1, 2]))
    with pytest.raises(ValueError, match="no parameters and no differentiable"):
        check_module(_NoParams(), x)
    for bad, exc in ((dict(eps=0), ValueError), (dict(rtol=-1), ValueError),
                     (dict(max_entries=1.5), TypeError), (dict(seed="a"), TypeError)):
        with pytest.raises(exc):
            check_function(*relu, x + 3, **bad)
    assert check_function(*relu, x + 3, max_entries=1).ok          # one entry is a real check
    assert not GradcheckReport("empty", 1e-6, 1e-4).ok               # nothing checked: not PASS
    assert "no entry was checked" in str(GradcheckReport("empty", 1e-6, 1e-4))


def test_gradcheck_still_fails_a_wrong_backward():
    x = np.random.default_rng(0).standard_normal((2, 3)) + 3
    report = check_function(lambda x: F.relu_forward(x), lambda d, c: 2 * F.relu_backward(d, c),
                            x, max_entries=1)
    assert not report.ok


# ------------------------------------------------------------------------------------------------
# error messages name the value the user gave (no wrapped casts)
# ------------------------------------------------------------------------------------------------
def test_uint64_ids_are_reported_as_given():
    big = np.array([1, BIG], np.uint64)
    calls = [
        lambda: index_array(big, "ids", 5),
        lambda: index_array(big, "ids", 5, ignore_index=-1),
        lambda: nn.Embedding(4, 2)(big),
        lambda: F.cross_entropy_forward(np.zeros((2, 3)), big, ignore_index=-1),
        lambda: _ngram().perplexity([big]),
        lambda: _ngram().generate(2, context=big),
        lambda: data.random_windows(np.array([1, 2, 3, BIG, 5, 6, 7, 8], np.uint64), 2, 3,
                                    np.random.default_rng(0)),
        lambda: data.pad_batch([big], 0),
        lambda: _gpt().generate(big[None, :], 1),
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        assert str(BIG) in str(info.value) and "-1 at" not in str(info.value), str(info.value)
    for huge in (2**63, BIG, 2**70):                                 # Python ints NumPy makes float
        for call in (lambda: index_array([1, huge], "ids", 5), lambda: data.pad_batch([[1, huge]], 0),
                     lambda: _ngram().perplexity([[1, huge]])):
            with pytest.raises(ValueError, match=str(huge)):
                call()
    with pytest.raises(TypeError, match="float64"):
        index_array([1, 2.5], "ids", 5)                             # a real float is still a float
    ok = np.array([1, 2**63 - 1], np.uint64)                         # the largest int64 passes
    assert data.pad_batch([ok], 0)[0].tolist() == [[1, 2**63 - 1]]


def test_csr_refuses_a_decreasing_unsigned_indptr():
    from scratchlm.data.representations import CSRMatrix
    with pytest.raises(ValueError, match="non-decreasing"):
        CSRMatrix(np.ones(4), np.array([0, 1, 0, 1]), np.array([0, 3, 2, 4], np.uint64),
                  shape=(3, 2))


# ------------------------------------------------------------------------------------------------
# torch's arguments with torch's meaning, in modules and functional pairs alike
# ------------------------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data_=st.data())
def test_softmax_and_log_softmax_every_dim_match_torch(torch, shape, data_):
    dim = data_.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(len(shape) + dim)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    tsm = {"softmax": torch.nn.Softmax, "log_softmax": torch.nn.LogSoftmax}
    for name, Mod in (("softmax", nn.Softmax), ("log_softmax", nn.LogSoftmax)):
        mod = Mod(dim=dim)
        y = mod(x)
        dx = mod.backward(dy)
        fy, cache = getattr(F, f"{name}_forward")(x, dim)
        fdx = getattr(F, f"{name}_backward")(dy, cache)
        tx = to_torch(torch, x, grad=True)
        ty = tsm[name](dim=dim)(tx)
        ty.backward(to_torch(torch, dy))
        for ours in (y, fy):
            assert_close(ours, ty)
        for ours in (dx, fdx):
            assert_close(ours, tx.grad)


def test_softmax_dim_out_of_range_or_not_int():
    with pytest.raises(ValueError, match=r"dim must be in \[-2, 2\).*got 2"):
        F.softmax_forward(np.ones((2, 3)), 2)
    with pytest.raises(TypeError, match="dim must be an int"):
        F.log_softmax_forward(np.ones((2, 3)), 1.0)


def test_flatten_every_start_and_end_matches_torch(torch):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    for s in range(-4, 4):
        for e in range(-4, 4):
            tf = torch.nn.Flatten(s, e)
            try:
                want = tf(to_torch(torch, x)).shape
            except RuntimeError:
                with pytest.raises(ValueError, match="start_dim comes after end_dim"):
                    nn.Flatten(s, e)(x)
                continue
            layer = nn.Flatten(s, e)
            y = layer(x)
            assert y.shape == tuple(want), (s, e)
            assert layer.backward(np.ones_like(y)).shape == x.shape
    with pytest.raises(ValueError, match=r"end_dim must be in \[-4, 4\).*got 4"):
        nn.Flatten(1, 4)(x)


def test_embedding_negative_padding_idx_in_module_and_functional(torch):
    V, D = 6, 3
    rng = np.random.default_rng(0)
    w = rng.standard_normal((V, D))
    ids = np.array([[5, 1, 5], [0, 5, 2]])
    dy = rng.standard_normal(ids.shape + (D,))
    tw = to_torch(torch, w, grad=True)
    torch.nn.functional.embedding(to_torch(torch, ids), tw, padding_idx=-1).backward(to_torch(torch, dy))
    _, cache = F.embedding_forward(ids, w, padding_idx=-1)
    _, dw = F.embedding_backward(dy, cache)
    assert_close(dw, tw.grad)
    assert np.all(dw[V - 1] == 0)                                    # -1 is the last row
    layer = nn.Embedding(V, D, padding_idx=-1, dtype=np.float64, rng=0)
    assert layer.padding_idx == torch.nn.Embedding(V, D, padding_idx=-1).padding_idx == V - 1
    layer(ids)
    layer.backward(dy)
    assert np.all(layer.weight.grad[V - 1] == 0)
    for bad, exc in ((V, ValueError), (-V - 1, ValueError), (1.0, TypeError)):
        with pytest.raises(exc, match="padding_idx"):
            F.embedding_forward(ids, w, padding_idx=bad)


@pytest.mark.parametrize("args,match", [
    ((5, 3, None, 1.0), "max_norm"),                                  # torch's 4th positional
    ((5, 3, None, None, 2.0, True), "scale_grad_by_freq"),
    ((5, 3, None, None, 2.0, False, True), "sparse"),
])
def test_embedding_refuses_torch_options_it_does_not_implement(args, match):
    with pytest.raises(ValueError, match=match):
        nn.Embedding(*args)


@pytest.mark.parametrize("normalized_shape", [5, (5,), [5], (4, 5), [4, 5]])
def test_layer_norm_normalized_shape_int_tuple_or_list(torch, normalized_shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal(x.shape)
    layer = nn.LayerNorm(normalized_shape, dtype=np.float64)
    theirs = torch.nn.LayerNorm(normalized_shape, dtype=torch.float64)
    tx = to_torch(torch, x, grad=True)
    ty = theirs(tx)
    ty.backward(to_torch(torch, dy))
    assert_close(layer(x), ty)
    assert_close(layer.backward(dy), tx.grad)
    fy, _ = F.layer_norm_forward(x, normalized_shape)
    assert_close(fy, torch.nn.functional.layer_norm(to_torch(torch, x), layer.normalized_shape))
    assert layer.normalized_shape == tuple(theirs.normalized_shape)


def test_layer_norm_functional_checks_like_the_module():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="eps"):
        F.layer_norm_forward(x, 3, eps=-1.0)
    with pytest.raises(TypeError, match="normalized_shape"):
        F.layer_norm_forward(x, (3.0,))
    with pytest.raises(ValueError, match="normalized_shape"):
        F.layer_norm_forward(x, (2, 3, 1))


@pytest.mark.parametrize("ignore_index", [-100, -1, 0, 2])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_and_nll_ignore_index_match_torch(torch, ignore_index, label_smoothing):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4))
    t = np.array([0, 2, 1, 2, 3, 0])
    if ignore_index < 0:
        t[[1, 4]] = ignore_index
    ce = nn.CrossEntropyLoss(ignore_index=ignore_index, label_smoothing=label_smoothing)
    tx = to_torch(torch, x, grad=True)
    tl = torch.nn.CrossEntropyLoss(ignore_index=ignore_index, label_smoothing=label_smoothing)(
        tx, to_torch(torch, t))
    tl.backward()
    assert ce(x, t) == pytest.approx(tl.item(), rel=1e-12)
    assert_close(ce.backward(), tx.grad)
    logp = F.log_softmax_forward(x)[0]
    tn = torch.nn.NLLLoss(ignore_index=ignore_index)(to_torch(torch, logp), to_torch(torch, t))
    assert nn.NLLLoss(ignore_index=ignore_index)(logp, t) == pytest.approx(tn.item(), rel=1e-12)


def test_loss_functional_arguments():
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        F.cross_entropy_forward(x, np.array([0, 1]), ignore_index=-1.0)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        F.nll_forward(x, np.array([0, 1]), np.ones(3))            # torch's 3rd positional: weight
    with pytest.raises(TypeError, match="class probabilities"):
        F.cross_entropy_forward(x, np.full((2, 3), 1 / 3))


def test_recurrent_layers_arguments(torch):
    with pytest.warns(UserWarning, match="num_layers greater than 1") as ours:
        nn.LSTM(3, 4, dropout=0.5)
    with pytest.warns(UserWarning, match="num_layers greater than 1") as theirs:
        torch.nn.LSTM(3, 4, dropout=0.5)
    assert str(ours[0].message) == str(theirs[0].message)
    nn.LSTM(3, 4, 1, True, False, 0.0, False, 0)                      # torch's positional proj_size
    with pytest.raises(ValueError, match="proj_size"):
        nn.LSTM(3, 4, proj_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RNNLM(7, 4, 4, dropout=0.3, rng=0)                          # its one layer: no warning
    x = np.ones((2, 1, 3))
    h = np.zeros((1, 4))
    w = np.ones((4, 3))
    with pytest.raises(ValueError, match="mode"):
        F.recurrent_forward(x, h, None, w, np.ones((4, 4)), None, None, "elman")
    with pytest.raises(ValueError, match="weight_hh"):
        F.recurrent_forward(x, h, None, w, np.ones((3, 4)), None, None, "rnn_tanh")
    with pytest.raises(ValueError, match="h0"):
        F.recurrent_forward(x, np.zeros((2, 4)), None, w, np.ones((4, 4)), None, None, "rnn_tanh")
    with pytest.raises(TypeError, match="reverse"):
        F.recurrent_forward(x, h, None, w, np.ones((4, 4)), None, None, "rnn_tanh", reverse="yes")


def test_other_arguments_never_silently_ignored():
    with pytest.raises(TypeError, match="mode"):
        nn.Linear(2, 2).train("eval")                                # a str is truthy
    with pytest.raises(TypeError, match="training"):
        F.dropout_forward(np.ones(3), 0.5, "no", np.random.default_rng(0))
    with pytest.raises(ValueError, match="offset"):
        nn.SinusoidalPositionalEncoding(4, 8)(np.ones((1, 2, 4), np.float32), offset=-1)
    with pytest.raises(TypeError, match="bias has dtype float32"):
        F.linear_forward(np.ones((1, 2)), np.ones((3, 2)), np.ones(3, np.float32))
