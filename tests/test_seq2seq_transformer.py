"""Seq2SeqTransformer and scratchlm.decoding: greedy and beam search against hand-made and
brute-force references, gradient checks, equality with torch.nn.Transformer (norm_first) in
float64, and training on the synthetic reverse task."""

import math
import time

import numpy as np
import pytest

from conftest import assert_close
from scratchlm import nn
from scratchlm.data import TranslationTask
from scratchlm.decoding import beam_search, default_reorder, greedy_decode, length_penalty_gnmt
from scratchlm.gradcheck import check_module
from scratchlm.models import CharVocab, Seq2SeqTransformer, exact_match
from scratchlm.training import fit_translation


# ------------------------------------------------------------------------------------------------
# decoding: toy language models
# ------------------------------------------------------------------------------------------------
def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def random_lm(V, eos, seed=0, eos_bias=0.0, calls=None):
    """A step function whose next-token law is a fixed random function of (source, prefix); the
    state is the source id of each row. It refuses to extend a finished row."""
    def step(tokens, state):
        assert tokens.shape[0] == state.shape[0]
        assert not np.any(tokens[:, 1:] == eos), "a finished hypothesis was extended"
        if calls is not None:
            calls.append(tokens.shape)
        rows = []
        for src, row in zip(state, tokens):
            z = np.random.default_rng([seed, int(src), *map(int, row)]).normal(size=V) * 2.0
            z[eos] += eos_bias
            rows.append(log_softmax(z))
        return np.array(rows), state
    return step


def brute_force(step, src, V, bos, eos, max_len, alpha):
    """Every hypothesis (EOS-terminated, or cut at max_len) with its score, best first."""
    out = []

    def rec(prefix, logp):
        if len(prefix) == max_len:
            out.append((logp / length_penalty_gnmt(max_len, alpha), prefix))
            return
        lp, _ = step(np.array([[bos] + prefix]), np.array([src]))
        for v in range(V):
            if v == eos:
                out.append(((logp + lp[0, v]) / length_penalty_gnmt(len(prefix) + 1, alpha), prefix))
            else:
                rec(prefix + [v], logp + lp[0, v])

    rec([], 0.0)
    return sorted(out, key=lambda h: -h[0])


@pytest.mark.parametrize("seed", range(4))
def test_beam_size_one_is_greedy(seed):
    V, eos, bos = 6, 0, 5
    step = random_lm(V, eos, seed=seed, eos_bias=1.0)
    state = np.arange(5)
    g_seqs, g_scores = greedy_decode(step, state, bos, eos, max_len=7)
    b_seqs, b_scores = beam_search(step, state, bos, eos, beam_size=1, max_len=7, length_penalty=0.0)
    for a, b in zip(g_seqs, b_seqs):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(g_scores, b_scores, rtol=1e-12)


def test_beam_finds_the_sequence_greedy_misses():
    # P(a)=0.6, P(b)=0.4 first; after a: EOS 0.5 (a EOS: 0.30); after b: EOS 0.99 (b EOS: 0.396)
    EOS, A, B, BOS = 0, 1, 2, 3
    table = {(): [0.0, 0.6, 0.4], (A,): [0.5, 0.25, 0.25], (B,): [0.99, 0.005, 0.005]}

    def step(tokens, state):
        rows = [table.get(tuple(r[1:]), [0.9, 0.05, 0.05]) for r in tokens.tolist()]
        with np.errstate(divide="ignore"):
            return np.log(np.array(rows)), state

    state = np.zeros(1)
    greedy, g_score = greedy_decode(step, state, BOS, EOS, max_len=5)
    beam, b_score = beam_search(step, state, BOS, EOS, beam_size=2, max_len=5, length_penalty=0.0)
    assert greedy[0].tolist() == [A] and g_score[0] == pytest.approx(math.log(0.3))
    assert beam[0].tolist() == [B] and b_score[0] == pytest.approx(math.log(0.396))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
@pytest.mark.parametrize("src", [0, 1, 2])
def test_beam_search_is_exact_when_wide_enough(alpha, src):
    V, eos, bos, L = 3, 0, 7, 4
    step = random_lm(V, eos, seed=11)
    ranked = brute_force(step, src, V, bos, eos, L, alpha)
    K = 3 * 2 ** (L - 1)                                       # every prefix keeps a beam
    seqs, scores = beam_search(step, np.array([src]), bos, eos, K, L, alpha, n_best=3)
    assert [s.tolist() for s in seqs[0]] == [h[1] for h in ranked[:3]]
    np.testing.assert_allclose(scores[0], [h[0] for h in ranked[:3]], rtol=1e-12)
    best, best_score = beam_search(step, np.array([src]), bos, eos, K, L, alpha)
    assert best[0].tolist() == ranked[0][1] and best_score[0] == pytest.approx(ranked[0][0], rel=1e-12)
    narrow, narrow_score = beam_search(step, np.array([src]), bos, eos, 2, L, alpha)
    assert narrow_score[0] <= ranked[0][0] + 1e-12


def test_finished_hypotheses_and_batching():
    """Sources that finish early leave the batch; finished beams are never extended (the step
    function asserts it); a batch decodes exactly as its sources one at a time."""
    V, eos, bos = 5, 0, 5                                      # BOS is input only here
    calls = []
    step = random_lm(V, eos, seed=3, eos_bias=0.5, calls=calls)
    state = np.arange(6)
    seqs, scores = beam_search(step, state, bos, eos, beam_size=3, max_len=9)
    rows = [c[0] for c in calls]
    assert rows[0] == 18 and rows[-1] < 18 and rows == sorted(rows, reverse=True)
    for b in range(6):
        one, one_score = beam_search(step, state[b:b + 1], bos, eos, beam_size=3, max_len=9)
        np.testing.assert_array_equal(seqs[b], one[0])
        assert scores[b] == one_score[0]
        assert eos not in seqs[b].tolist() and bos not in seqs[b].tolist()
    g_seqs, _ = greedy_decode(step, state, bos, eos, max_len=9)
    for b in range(6):
        one, _ = greedy_decode(step, state[b:b + 1], bos, eos, max_len=9)
        np.testing.assert_array_equal(g_seqs[b], one[0])


def test_cut_at_max_len_and_custom_reorder():
    V, eos, bos = 4, 0, 3
    never_eos = lambda t, s: (np.log(np.tile([1e-12, 0.5, 0.3, 0.2 - 1e-12], (len(t), 1))), s)  # noqa: E731
    seqs, scores = greedy_decode(never_eos, {"x": np.zeros((2, 3))}, bos, eos, max_len=4)
    assert [s.tolist() for s in seqs] == [[1, 1, 1, 1]] * 2
    np.testing.assert_allclose(scores, 4 * math.log(0.5))
    seqs, scores = beam_search(never_eos, None, bos, eos, beam_size=2, max_len=3, length_penalty=0.0,
                               batch_size=2, reorder=lambda s, i: s)
    assert [s.tolist() for s in seqs] == [[1, 1, 1]] * 2
    assert default_reorder({"a": [np.arange(3), None], "b": (np.eye(3), 1.5)}, np.array([2, 0]))["b"][0].tolist() \
        == [[0, 0, 1], [1, 0, 0]]


@pytest.mark.parametrize("call,exc,match", [
    (lambda: greedy_decode(lambda t, s: (np.zeros((len(t), 3)) + 1.0, s), np.zeros(2), 1, 0, 3),
     ValueError, "log-probabilities"),
    (lambda: greedy_decode(lambda t, s: (np.zeros((5, 3)), s), np.zeros(2), 1, 0, 3), ValueError, r"shape \(2, V\)"),
    (lambda: greedy_decode(lambda t, s: (np.full((len(t), 3), np.nan), s), np.zeros(2), 1, 0, 3), ValueError, "NaN"),
    (lambda: greedy_decode(lambda t, s: (np.zeros((len(t), 3)), s), np.zeros(2), 1, 7, 3), ValueError, "eos_id 7"),
    (lambda: greedy_decode(lambda t, s: (None, s), None, 1, 0, 3), ValueError, "batch_size"),
    (lambda: beam_search(lambda t, s: (None, s), object(), 1, 0, 2, 3, batch_size=1), TypeError, "default_reorder"),
    (lambda: beam_search(lambda t, s: (None, s), np.zeros(2), 1, 0, 2, 3, n_best=3), ValueError, "n_best"),
    (lambda: beam_search(lambda t, s: (None, s), np.zeros(2), 1, 0, 0, 3), ValueError, "beam_size"),
    (lambda: greedy_decode(lambda t, s: (None, s), np.zeros(2), 1, 0, 0), ValueError, "max_len"),
])
def test_decoding_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# the model: gradients, PyTorch parity, dtype, bad input
# ------------------------------------------------------------------------------------------------
def padded_batch(rng, B, S, T, src_vocab, tgt_vocab):
    src = rng.integers(3, src_vocab, (B, S))
    src[0, S - 2:] = 0                                              # padding in src ...
    tgt_in = rng.integers(3, tgt_vocab, (B, T))
    tgt_in[:, 0] = 1
    tgt_in[1, T - 2:] = 0                                           # ... and in tgt
    tgt_out = rng.integers(3, tgt_vocab, (B, T))
    tgt_out[1, T - 3:] = 0
    return src, tgt_in, tgt_out


class RealTargets(nn.Module):
    """The model with the logits of padded target positions zeroed (no loss reads them).

    The pad row of ``tgt_embed`` gets no gradient by definition (``padding_idx``, as torch), yet
    it does move the logits *at* padded positions; finite differences would see that. Masking
    those logits keeps the check to what training uses: the loss, and the logits of real
    positions, which the pad row cannot reach (right padding + causal attention)."""

    differentiable_inputs = ()

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, src, tgt_in, tgt_out):
        logits, loss = self.model(src, tgt_in, tgt_out)
        self._cache = (tgt_in != self.model.pad_id)[..., None]
        return logits * self._cache, loss

    def backward(self, dlogits, dloss):
        return self.model.backward(dlogits * self._saved(), dloss)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_gradcheck_tiny_model_with_padding_and_dropout(positional):
    m = Seq2SeqTransformer(9, 10, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=16, dropout=0.1, max_len=8, activation="gelu",
                           positional=positional, dtype=np.float64, rng=0)
    rng = np.random.default_rng(1)
    for name, p in m.named_parameters():                            # LayerNorm off ones/zeros
        if ".norm" in name:
            p.data += 0.3 * rng.standard_normal(p.shape)
    src, tgt_in, tgt_out = padded_batch(rng, 2, 5, 4, 9, 10)
    report = check_module(RealTargets(m), src, tgt_in, tgt_out, max_entries=6)
    assert report.ok, str(report)
    # the pad rows, whose zero gradient a sample may miss: they cannot move the loss or the
    # logits of real positions at all
    m.eval()
    logits, loss = RealTargets(m)(src, tgt_in, tgt_out)
    for emb in (m.src_embed, m.tgt_embed):
        emb.weight.data[m.pad_id] += 0.5
    logits2, loss2 = RealTargets(m)(src, tgt_in, tgt_out)
    np.testing.assert_allclose(logits2, logits, rtol=1e-13, atol=1e-13)
    assert loss2 == pytest.approx(loss, rel=1e-13)
    m.train()
    report = check_module(m, src, tgt_in[:, :2], max_entries=3, properties=False)  # logits only, unpadded
    assert report.ok, str(report)


def torch_reference(torch, m):
    """The same network from torch.nn.Transformer{Encoder,Decoder}Layer(norm_first=True), with
    our parameter names, so our state_dict loads strictly."""
    tnn = torch.nn
    d = m.d_model

    class Pos(tnn.Module):
        def __init__(self):
            super().__init__()
            if m.positional == "sinusoidal":
                self.register_buffer("pe", torch.zeros(m.max_len, d, dtype=torch.float64))
            else:
                self.weight = tnn.Parameter(torch.zeros(m.max_len, d, dtype=torch.float64))

        def forward(self, x):
            table = self.pe if m.positional == "sinusoidal" else self.weight
            return x + table[:x.shape[1]]

    class Reference(tnn.Module):
        def __init__(self):
            super().__init__()
            self.src_embed = tnn.Embedding(m.src_vocab_size, d, padding_idx=m.pad_id)
            self.tgt_embed = tnn.Embedding(m.tgt_vocab_size, d, padding_idx=m.pad_id)
            self.src_pos, self.tgt_pos = Pos(), Pos()
            kw = dict(dim_feedforward=m.encoder.layers[0].linear1.out_features, dropout=0.0,
                      activation=m.activation, batch_first=True, norm_first=True)
            self.encoder = tnn.TransformerEncoder(tnn.TransformerEncoderLayer(d, m.nhead, **kw),
                                                  len(m.encoder.layers), norm=tnn.LayerNorm(d),
                                                  enable_nested_tensor=False)
            self.decoder = tnn.TransformerDecoder(tnn.TransformerDecoderLayer(d, m.nhead, **kw),
                                                  len(m.decoder.layers), norm=tnn.LayerNorm(d))
            self.generator = tnn.Linear(d, m.tgt_vocab_size)

        def forward(self, src, tgt_in, tgt_out):
            scale = math.sqrt(d)
            src_pad, tgt_pad = src == m.pad_id, tgt_in == m.pad_id
            memory = self.encoder(self.src_pos(self.src_embed(src) * scale),
                                  src_key_padding_mask=src_pad)
            T = tgt_in.shape[1]
            causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
            y = self.decoder(self.tgt_pos(self.tgt_embed(tgt_in) * scale), memory, tgt_mask=causal,
                             tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
            logits = self.generator(y)
            loss = tnn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                tgt_out.reshape(-1), ignore_index=m.pad_id)
            return logits, loss

    ref = Reference().double()
    ref.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v).copy())
                         for k, v in m.state_dict().items()}, strict=True)
    return ref


@pytest.mark.parametrize("positional,activation", [("sinusoidal", "relu"), ("learned", "gelu")])
def test_matches_torch_transformer(torch, positional, activation):
    m = Seq2SeqTransformer(11, 13, d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                           dim_feedforward=24, max_len=10, positional=positional,
                           activation=activation, dtype=np.float64, rng=0)
    ref = torch_reference(torch, m)
    src, tgt_in, tgt_out = padded_batch(np.random.default_rng(2), 3, 7, 6, 11, 13)
    src[2, 5:] = 0
    logits, loss = m(src, tgt_in, tgt_out)
    m.zero_grad()
    assert m.backward() is None
    tlogits, tloss = ref(*(torch.from_numpy(a) for a in (src, tgt_in, tgt_out)))
    tloss.backward()
    assert_close(logits, tlogits)
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    theirs = dict(ref.named_parameters())
    ours = dict(m.named_parameters())
    assert set(ours) == set(theirs)
    for name, p in ours.items():
        assert_close(p.grad, theirs[name].grad)
    assert np.all(m.src_embed.weight.grad[0] == 0)                 # the pad row learns nothing


def test_float32_and_shapes():
    m = Seq2SeqTransformer(9, 10, d_model=16, nhead=2, max_len=8, rng=0)
    src, tgt_in, tgt_out = padded_batch(np.random.default_rng(0), 3, 6, 5, 9, 10)
    logits = m(src, tgt_in)
    assert logits.shape == (3, 5, 10) and logits.dtype == np.float32
    logits2, loss = m(src, tgt_in, tgt_out)
    np.testing.assert_array_equal(logits, logits2)
    m.zero_grad()
    m.backward()
    assert all(p.grad.dtype == np.float32 and np.all(np.isfinite(p.grad)) for p in m.parameters())
    assert m.encode(src).shape == (3, 6, 16)
    # backward(dlogits) + backward() == backward(dlogits, dloss=1)
    d = np.random.default_rng(1).standard_normal(logits.shape).astype(np.float32)
    m.zero_grad(); m.backward(d); m.backward()
    both = [p.grad.copy() for p in m.parameters()]
    m.zero_grad(); m.backward(d, 1.0)
    for a, p in zip(both, m.parameters()):
        np.testing.assert_allclose(a, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call,exc,match", [
    (lambda m: m(np.full((2, 3), 9), np.ones((2, 3), np.int64)), ValueError, r"src must lie in \[0, 9\)"),
    (lambda m: m(np.ones((2, 3), np.int64), np.full((2, 3), -1)), ValueError, r"tgt_in must lie in \[0, 10\)"),
    (lambda m: m(np.ones((2, 3)), np.ones((2, 3), np.int64)), TypeError, "src must have an integer dtype"),
    (lambda m: m(np.ones((2, 9), np.int64), np.ones((2, 3), np.int64)), ValueError, "src has sequence length 9, more than max_len 8"),
    (lambda m: m(np.ones((2, 3), np.int64), np.ones((2, 9), np.int64)), ValueError, "tgt_in has sequence length 9"),
    (lambda m: m(np.ones((2, 3), np.int64), np.ones((3, 3), np.int64)), ValueError, "same batch size"),
    (lambda m: m(np.ones(3, np.int64), np.ones(3, np.int64)), ValueError, "src must be 2-D"),
    (lambda m: m(np.ones((2, 3), np.int64), np.ones((2, 3), np.int64), np.ones((2, 4), np.int64)),
     ValueError, "tgt_out must have the shape of tgt_in"),
    (lambda m: m.backward(), RuntimeError, "before forward"),
    (lambda m: (m(np.ones((2, 3), np.int64), np.ones((2, 3), np.int64)), m.backward()), RuntimeError, "with tgt_out"),
    (lambda m: (m(np.ones((2, 3), np.int64), np.ones((2, 3), np.int64)), m.backward(np.ones((2, 3, 10)))),
     TypeError, "dtype float64"),
    (lambda m: m.greedy(np.ones((1, 3), np.int64), max_len=9), ValueError, "max_len must be <= the model's max_len 8"),
    (lambda m: m.decode_step(np.ones((1, 3), np.int64), m.init_state(np.ones((1, 3), np.int64))),
     ValueError, "the cache holds 0"),
    (lambda m: Seq2SeqTransformer(9, 10, d_model=10, nhead=4), ValueError, "divisible by nhead"),
    (lambda m: Seq2SeqTransformer(9, 10, positional="rotary"), ValueError, "positional must be one of"),
    (lambda m: Seq2SeqTransformer(9, 10, activation="tanh"), ValueError, "activation must be one of"),
    (lambda m: Seq2SeqTransformer(9, 2), ValueError, "eos_id must be < tgt_vocab_size"),
    (lambda m: Seq2SeqTransformer(9, 10, bos_id=2, eos_id=2), ValueError, "must differ"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(Seq2SeqTransformer(9, 10, d_model=8, nhead=2, max_len=8, rng=0))


# ------------------------------------------------------------------------------------------------
# inference
# ------------------------------------------------------------------------------------------------
def eos_prone_model(positional="sinusoidal"):
    m = Seq2SeqTransformer(9, 10, d_model=16, nhead=2, dropout=0.1, max_len=12,
                           positional=positional, dtype=np.float64, rng=5)
    m.generator.bias.data[m.eos_id] += 2.0           # untrained, but some outputs stop early
    return m


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_decode_step_with_cache_equals_the_full_forward(positional):
    m = eos_prone_model(positional)
    src = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 3, 4]])
    tokens = np.array([[1, 5, 6, 7, 3], [1, 9, 9, 4, 8]])
    state = m.init_state(src)
    plain = m.init_state(src, use_cache=False)
    m.eval()
    full = m(src, tokens).astype(np.float64)
    m.train()
    full[..., [m.pad_id, m.bos_id]] = -np.inf
    expected = log_softmax(full)
    for t in range(1, tokens.shape[1] + 1):
        lp, state = m.decode_step(tokens[:, :t], state)
        lp_plain, plain = m.decode_step(tokens[:, :t], plain)
        np.testing.assert_allclose(lp, expected[:, t - 1], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(lp_plain, expected[:, t - 1], rtol=1e-10, atol=1e-12)
    assert m.training                                                  # the mode is restored


def test_greedy_and_beam_outputs():
    m = eos_prone_model()
    src = np.random.default_rng(3).integers(3, 9, (8, 6))
    src[2, 3:] = 0
    greedy = m.greedy(src, max_len=10)
    assert [g.tolist() for g in greedy] == [g.tolist() for g in m.greedy(src, max_len=10, use_cache=False)]
    beam1 = m.beam(src, beam_size=1, max_len=10, length_penalty=0.0)
    assert [g.tolist() for g in greedy] == [b.tolist() for b in beam1]
    lengths = [len(g) for g in greedy]
    assert min(lengths) < 10 and max(lengths) <= 10                   # some stop at EOS
    m.eval()
    for b, seq in enumerate(greedy):
        assert not set(seq.tolist()) & {m.pad_id, m.bos_id, m.eos_id}   # starts after BOS, no EOS
        tokens = np.array([[m.bos_id, *seq.tolist()]])
        logits = m(src[b:b + 1], tokens)[0]
        logits[:, [m.pad_id, m.bos_id]] = -np.inf
        assert logits[:-1].argmax(-1).tolist() == seq.tolist()          # each token the argmax ...
        if len(seq) < 10:
            assert logits[-1].argmax() == m.eos_id                      # ... until EOS
    beams = m.beam(src, beam_size=3, max_len=10, n_best=2)
    assert all(len(b) == 2 for b in beams)


# ------------------------------------------------------------------------------------------------
# training on the reverse task
# ------------------------------------------------------------------------------------------------
def test_char_vocab():
    v = CharVocab("abc")
    assert v.size == 6 and v.encode("cab") == [5, 3, 4] and v.decode([5, 3, 4]) == "cab"
    with pytest.raises(ValueError, match="'z' of 'az' is not in the vocabulary"):
        v.encode("az")
    with pytest.raises(ValueError, match="id 2 is not a character id"):
        v.decode([3, 2])
    with pytest.raises(ValueError, match="distinct"):
        CharVocab("aa")


def test_fit_translation_smoke():
    task = TranslationTask("reverse", n_train=200, n_val=0, n_test=20, min_len=3, max_len=6,
                           alphabet="abcde", seed=1)
    v = CharVocab(task.chars)
    m = Seq2SeqTransformer(v.size, v.size, d_model=32, nhead=4, num_encoder_layers=1,
                           num_decoder_layers=1, dim_feedforward=64, max_len=16, rng=0)
    h = fit_translation(m, task, steps=40, batch_size=32, lr=3e-3, warmup_steps=5)
    assert len(h["loss"]) == 40 and h["lr"][0] < h["lr"][5]
    assert np.mean(h["loss"][-5:]) < 0.75 * np.mean(h["loss"][:5])
    assert m.vocab.chars == task.chars
    acc = exact_match(m, task.test, "greedy")
    assert 0.0 <= acc <= 1.0
    with pytest.raises(ValueError, match="the task needs vocabularies of 8 ids"):
        fit_translation(Seq2SeqTransformer(5, 5, d_model=8, nhead=2), task, steps=1)


@pytest.mark.slow
def test_reverse_task_reaches_99_percent_exact_match():
    task = TranslationTask("reverse", n_train=4000, n_val=0, n_test=500, min_len=3, max_len=8,
                           alphabet="abcdefgh", seed=0)
    v = CharVocab(task.chars)
    m = Seq2SeqTransformer(v.size, v.size, d_model=64, nhead=4, num_encoder_layers=2,
                           num_decoder_layers=2, dim_feedforward=128, max_len=32, rng=0)
    t0 = time.perf_counter()
    history = fit_translation(m, task, steps=800, batch_size=64, lr=3e-3, seed=0)
    greedy = exact_match(m, task.test, "greedy")
    beam = exact_match(m, task.test, "beam", beam_size=4)
    print(f"reverse: 800 steps in {time.perf_counter() - t0:.1f}s, final loss "
          f"{np.mean(history['loss'][-50:]):.4f}, exact match greedy {greedy:.3f}, beam {beam:.3f}")
    assert greedy >= 0.99 and beam >= 0.99
