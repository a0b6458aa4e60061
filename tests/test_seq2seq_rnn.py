"""Seq2Seq (RNN encoder-decoder, optional dot / additive attention): gradient checks of the whole
model, equality with a PyTorch reference (packed sequences) in float64, padding invariance,
decoding through scratchlm.decoding, bad input, and training on the synthetic reverse task."""

import time

import numpy as np
import pytest

from conftest import assert_close
from scratchlm.data import TranslationTask
from scratchlm.gradcheck import check_module
from scratchlm.models.seq2seq_rnn import GlobalAttention, Seq2Seq
from scratchlm.models import CharVocab, exact_match
from scratchlm.training import fit_translation
from test_seq2seq_transformer import RealTargets, log_softmax

ATTENTIONS = [None, "dot", "additive"]


def tiny(cell="lstm", attention="dot", num_layers=1, dropout=0.0, dtype=np.float64, rng=0, **kw):
    return Seq2Seq(9, 10, embed_dim=4, hidden_size=5, cell=cell, num_layers=num_layers,
                   attention=attention, dropout=dropout, max_len=12, dtype=dtype, rng=rng, **kw)


def batch():
    """Three sources of lengths 3, 5, 1 (right-padded) and targets of lengths 4, 2, 3."""
    src = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 3, 4], [5, 0, 0, 0, 0]])
    tgt_in = np.array([[1, 5, 6, 7], [1, 9, 0, 0], [1, 4, 3, 0]])
    tgt_out = np.array([[5, 6, 7, 2], [9, 2, 0, 0], [4, 3, 2, 0]])
    return src, tgt_in, tgt_out


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell,num_layers", [("lstm", 2), ("gru", 1)])
def test_gradcheck_whole_model(cell, num_layers, attention):
    """Every parameter, through the loss and the logits of real target positions, with padded
    sources and targets and dropout (embeddings, between layers, before the generator). Without
    attention the encoder is reached only through the decoder's initial state (``dhx``)."""
    m = tiny(cell, attention, num_layers=num_layers, dropout=0.1)
    report = check_module(RealTargets(m), *batch(), max_entries=6)
    assert report.ok, str(report)


def test_gradcheck_elman_cell_and_attention_size():
    m = tiny("rnn", "additive", attention_size=3)
    assert m.attention.v.shape == (3,) and m.attention.query.weight.shape == (3, 5)
    report = check_module(RealTargets(m), *batch(), max_entries=6)
    assert report.ok, str(report)


def test_pad_rows_cannot_move_the_loss():
    """The pad rows get no gradient (padding_idx), so the check's sample must not be what proves
    them right: moving them leaves the loss and every real position's logits unchanged."""
    m = tiny("lstm", "additive")
    src, tgt_in, tgt_out = batch()
    wrapped = RealTargets(m)
    logits, loss = wrapped(src, tgt_in, tgt_out)
    m.zero_grad()
    wrapped.backward(np.ones_like(logits), 1.0)
    for emb in (m.src_embed, m.tgt_embed):
        assert np.all(emb.weight.grad[m.pad_id] == 0)
        emb.weight.data[m.pad_id] += 0.5
    logits2, loss2 = wrapped(src, tgt_in, tgt_out)
    np.testing.assert_allclose(logits2, logits, rtol=1e-13, atol=1e-13)
    assert loss2 == pytest.approx(loss, rel=1e-13)


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_gradcheck_global_attention(score):
    """The attention alone, both outputs (context and weights), with a masked position and a
    query row whose memory is all padding (zero context, zero gradients)."""
    rng = np.random.default_rng(0)
    attn = GlobalAttention(4, score, attention_size=3 if score == "additive" else None,
                           dtype=np.float64, rng=1)
    keep = np.array([[True, True, False], [False, False, False]])
    report = check_module(attn, rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 3, 4)), keep)
    assert report.ok, str(report)
    context, weights = attn(rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 3, 4)), keep)
    np.testing.assert_allclose(weights[0].sum(-1), 1.0, rtol=1e-12)
    assert np.all(weights[0, :, 2] == 0) and np.all(weights[1] == 0) and np.all(context[1] == 0)


def torch_reference(torch, m):
    """The same network in torch, with our parameter names: nn.LSTM/GRU/RNN over a packed source
    (so the final state is each sequence's own), the decoder started from it, Luong attention."""
    tnn = torch.nn
    rnn = {"lstm": tnn.LSTM, "gru": tnn.GRU, "rnn": tnn.RNN}[m.cell]
    H = m.hidden_size

    class Attention(tnn.Module):
        def __init__(self):
            super().__init__()
            if m.attention_type == "additive":
                A = m.attention.v.shape[0]
                self.query = tnn.Linear(H, A, bias=False)
                self.key = tnn.Linear(H, A, bias=False)
                self.v = tnn.Parameter(torch.zeros(A))

        def forward(self, s, memory, keep):
            if m.attention_type == "dot":
                e = s @ memory.transpose(1, 2)
            else:
                e = torch.tanh(self.query(s)[:, :, None] + self.key(memory)[:, None]) @ self.v
            a = torch.softmax(e.masked_fill(~keep[:, None, :], float("-inf")), dim=-1)
            return a @ memory

    class Reference(tnn.Module):
        def __init__(self):
            super().__init__()
            self.src_embed = tnn.Embedding(m.src_vocab_size, m.embed_dim, padding_idx=m.pad_id)
            self.tgt_embed = tnn.Embedding(m.tgt_vocab_size, m.embed_dim, padding_idx=m.pad_id)
            self.encoder = rnn(m.embed_dim, H, m.num_layers, batch_first=True)
            self.decoder = rnn(m.embed_dim, H, m.num_layers, batch_first=True)
            if m.attention_type is not None:
                self.attention = Attention()
                self.combine = tnn.Linear(2 * H, H, bias=False)
            self.generator = tnn.Linear(H, m.tgt_vocab_size)

        def forward(self, src, tgt_in, tgt_out):
            keep = src != m.pad_id
            packed = tnn.utils.rnn.pack_padded_sequence(self.src_embed(src), keep.sum(1), batch_first=True,
                                                        enforce_sorted=False)
            out, state = self.encoder(packed)
            memory, _ = tnn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
            s, _ = self.decoder(self.tgt_embed(tgt_in), state)
            if m.attention_type is not None:
                s = torch.tanh(self.combine(torch.cat([self.attention(s, memory, keep), s], dim=-1)))
            logits = self.generator(s)
            loss = tnn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1),
                                                ignore_index=m.pad_id)
            return logits, loss

    ref = Reference().double()
    ref.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v).copy())
                         for k, v in m.state_dict().items()}, strict=True)
    return ref


@pytest.mark.parametrize("cell,attention,num_layers", [("lstm", None, 2), ("gru", "dot", 1),
                                                       ("lstm", "additive", 1), ("rnn", "dot", 2)])
def test_matches_torch(torch, cell, attention, num_layers):
    m = Seq2Seq(11, 13, embed_dim=6, hidden_size=7, cell=cell, num_layers=num_layers,
                attention=attention, dtype=np.float64, rng=0)
    ref = torch_reference(torch, m)
    src, tgt_in, tgt_out = batch()
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


# ------------------------------------------------------------------------------------------------
# padding, dtype, bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_padded_batch_equals_each_example_alone(attention):
    """Logits, parameter gradients and decoded outputs of a padded batch are those of its
    examples run one at a time without padding (2 layers, so every layer's final state must be
    taken at each source's own last token)."""
    m = tiny("lstm", attention, num_layers=2)
    m.generator.bias.data[m.eos_id] += 1.0                       # some decodes stop early
    src, tgt_in, tgt_out = batch()
    real = tgt_in != m.pad_id
    d = np.random.default_rng(0).standard_normal((3, 4, 10)) * real[..., None]
    logits = m(src, tgt_in)
    m.zero_grad()
    m.backward(d)
    batch_grads = {n: p.grad.copy() for n, p in m.named_parameters()}
    sum_grads = {n: np.zeros_like(g) for n, g in batch_grads.items()}
    for b in range(3):
        S, T = real_len(src[b]), int(real[b].sum())
        one = m(src[b:b + 1, :S], tgt_in[b:b + 1, :T])
        np.testing.assert_allclose(one[0], logits[b, :T], rtol=1e-10, atol=1e-12)
        m.zero_grad()
        m.backward(np.ascontiguousarray(d[b:b + 1, :T]))
        for n, p in m.named_parameters():
            sum_grads[n] += p.grad
    for n, g in batch_grads.items():
        np.testing.assert_allclose(g, sum_grads[n], rtol=1e-10, atol=1e-12, err_msg=n)
    greedy, beam = m.greedy(src, max_len=8), m.beam(src, beam_size=3, max_len=8)
    for b in range(3):
        alone = src[b:b + 1, :real_len(src[b])]
        assert greedy[b].tolist() == m.greedy(alone, max_len=8)[0].tolist()
        assert beam[b].tolist() == m.beam(alone, beam_size=3, max_len=8)[0].tolist()


def real_len(row, pad_id=0):
    return int((row != pad_id).sum())


def test_all_padding_source_row():
    """A source of padding only: the decoder starts from zeros and the context is zero."""
    m = tiny("gru", "dot")
    src = np.array([[3, 4, 5], [0, 0, 0]])
    memory, h = m.encode(src)
    assert np.all(memory[1] == 0) and np.all(h[:, 1] == 0)
    logits, loss = m(src, np.array([[1, 3], [1, 4]]), np.array([[3, 2], [4, 2]]))
    m.backward()
    assert np.isfinite(loss) and all(np.all(np.isfinite(p.grad)) for p in m.parameters())


def test_float32_and_shapes():
    m = Seq2Seq(9, 10, embed_dim=8, hidden_size=16, attention="additive", rng=0)
    src, tgt_in, tgt_out = batch()
    logits = m(src, tgt_in)
    assert logits.shape == (3, 4, 10) and logits.dtype == np.float32
    logits2, loss = m(src, tgt_in, tgt_out)
    np.testing.assert_array_equal(logits, logits2)
    m.zero_grad()
    m.backward()
    assert all(p.grad.dtype == np.float32 and np.all(np.isfinite(p.grad)) for p in m.parameters())
    memory, (h, c) = m.encode(src)
    assert memory.shape == (3, 5, 16) and h.shape == c.shape == (1, 3, 16) and memory.dtype == np.float32
    d = np.random.default_rng(1).standard_normal(logits.shape).astype(np.float32)
    m.zero_grad(); m.backward(d); m.backward()
    both = [p.grad.copy() for p in m.parameters()]
    m.zero_grad(); m.backward(d, 1.0)
    for a, p in zip(both, m.parameters()):
        np.testing.assert_allclose(a, p.grad, rtol=1e-5, atol=1e-6)


def ones(*shape):
    return np.ones(shape, np.int64)


@pytest.mark.parametrize("call,exc,match", [
    (lambda m: m(np.full((2, 3), 9), ones(2, 3)), ValueError, r"src must lie in \[0, 9\)"),
    (lambda m: m(ones(2, 3), np.full((2, 3), -1)), ValueError, r"tgt_in must lie in \[0, 10\)"),
    (lambda m: m(ones(2, 3), ones(2, 3), np.full((2, 3), 10)), ValueError, r"tgt_out must lie in \[0, 10\)"),
    (lambda m: m(np.ones((2, 3)), ones(2, 3)), TypeError, "src must have an integer dtype"),
    (lambda m: m(ones(2, 3), np.ones((2, 3), np.float32)), TypeError, "tgt_in must have an integer dtype"),
    (lambda m: m(ones(3), ones(3)), ValueError, "src must be 2-D"),
    (lambda m: m(ones(2, 3), ones(2, 3, 1)), ValueError, "tgt_in must be 2-D"),
    (lambda m: m(ones(2, 3), ones(3, 3)), ValueError, "same batch size"),
    (lambda m: m(ones(2, 3), ones(2, 3), ones(2, 4)), ValueError, "tgt_out must have the shape of tgt_in"),
    (lambda m: m(np.array([[3, 0, 4]]), ones(1, 2)), ValueError, r"right-padded.*index \(0, 2\)"),
    (lambda m: m(np.zeros((1, 0), np.int64), ones(1, 2)), ValueError, "src must not be empty"),
    (lambda m: m.backward(), RuntimeError, "before forward"),
    (lambda m: (m(ones(2, 3), ones(2, 3)), m.backward()), RuntimeError, "with tgt_out"),
    (lambda m: (m(ones(2, 3), ones(2, 3)), m.backward(np.ones((2, 3, 10)))), TypeError, "dtype float64"),
    (lambda m: (m(ones(2, 3), ones(2, 3)), m.backward(np.ones((2, 3, 9), np.float32))), ValueError,
     r"dlogits must have the forward output's shape \(2, 3, 10\)"),
    (lambda m: (m(ones(2, 3), ones(2, 3)), m.backward(np.full((2, 3, 10), np.nan, np.float32))),
     ValueError, "dlogits must be finite"),
    (lambda m: m.decode_step(ones(1, 3), m.init_state(ones(1, 3))), ValueError, "has seen 0"),
    (lambda m: m.decode_step(ones(2, 1), m.init_state(ones(1, 3))), ValueError, "state holds 1"),
    (lambda m: m.decode_step(ones(1, 1), {"memory": None}), TypeError, "init_state"),
    (lambda m: m.greedy(ones(1, 3), max_len=0), ValueError, "max_len must be >= 1"),
    (lambda m: m.beam(ones(1, 3), beam_size=0), ValueError, "beam_size must be >= 1"),
    (lambda m: Seq2Seq(9, 10, cell="transformer"), ValueError, "cell must be one of"),
    (lambda m: Seq2Seq(9, 10, attention="general"), ValueError, "attention must be one of"),
    (lambda m: Seq2Seq(9, 10, hidden_size=0), ValueError, "hidden_size must be >= 1"),
    (lambda m: Seq2Seq(9, 10, embed_dim=2.0), TypeError, "embed_dim must be an int"),
    (lambda m: Seq2Seq(9, 10, dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
    (lambda m: Seq2Seq(9, 10, attention="additive", attention_size=0), ValueError,
     "attention_size must be >= 1"),
    (lambda m: Seq2Seq(9, 10, attention="dot", attention_size=4), ValueError,
     "attention_size applies to attention='additive' only"),
    (lambda m: GlobalAttention(4, attention_size=4), ValueError, "additive score only"),
    (lambda m: Seq2Seq(9, 2), ValueError, "eos_id must be < tgt_vocab_size"),
    (lambda m: Seq2Seq(9, 10, bos_id=2, eos_id=2), ValueError, "must differ"),
    (lambda m: Seq2Seq(9, 10, dtype=np.float16), TypeError, "dtype must be float32 or float64"),
    (lambda m: GlobalAttention(4)(np.ones((1, 2, 4), np.float32), np.ones((1, 3, 4), np.float32),
                                  np.ones((1, 2), bool)), ValueError, r"keep must have shape \(1, 3\)"),
    (lambda m: GlobalAttention(4)(np.ones((1, 2, 4), np.float32), np.ones((1, 3, 4), np.float32),
                                  np.ones((1, 3))), TypeError, "keep must be a bool"),
    (lambda m: GlobalAttention(4)(np.ones((1, 2, 4)), np.ones((1, 3, 4))), TypeError,
     "query has dtype float64"),
    (lambda m: GlobalAttention(4)(np.ones((1, 2, 5), np.float32), np.ones((1, 3, 4), np.float32)),
     ValueError, "query must have last dimension hidden_size=4"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(Seq2Seq(9, 10, embed_dim=4, hidden_size=6, attention="dot", rng=0))


# ------------------------------------------------------------------------------------------------
# inference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,attention", [("lstm", None), ("gru", "dot"), ("lstm", "additive")])
def test_decode_step_equals_the_teacher_forced_forward(cell, attention):
    m = tiny(cell, attention, num_layers=2, dropout=0.2)
    src = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 3, 4]])
    tokens = np.array([[1, 5, 6, 7, 3], [1, 9, 9, 4, 8]])
    state = m.init_state(src)
    m.eval()
    full = m(src, tokens).astype(np.float64)
    m.train()
    full[..., [m.pad_id, m.bos_id]] = -np.inf
    expected = log_softmax(full)
    for t in range(1, tokens.shape[1] + 1):
        lp, state = m.decode_step(tokens[:, :t], state)
        np.testing.assert_allclose(lp, expected[:, t - 1], rtol=1e-10, atol=1e-12)
    assert m.training and state["steps"] == tokens.shape[1]          # the mode is restored


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_greedy_equals_beam_size_one(attention):
    m = Seq2Seq(9, 10, embed_dim=8, hidden_size=16, attention=attention, dtype=np.float64, rng=5)
    m.generator.bias.data[m.eos_id] += 1.5             # untrained, but some outputs stop early
    src = np.random.default_rng(3).integers(3, 9, (8, 6))
    src[2, 3:] = 0
    greedy = m.greedy(src, max_len=10)
    beam1 = m.beam(src, beam_size=1, max_len=10, length_penalty=0.0)
    assert [g.tolist() for g in greedy] == [b.tolist() for b in beam1]
    lengths = [len(g) for g in greedy]
    assert min(lengths) < 10 and max(lengths) <= 10                   # some stop at EOS
    for b, seq in enumerate(greedy):
        assert not set(seq.tolist()) & {m.pad_id, m.bos_id, m.eos_id}
    beams = m.beam(src, beam_size=3, max_len=10, n_best=2)
    assert all(len(b) == 2 for b in beams)


# ------------------------------------------------------------------------------------------------
# training on the reverse task (fit_translation and exact_match, shared with Seq2SeqTransformer)
# ------------------------------------------------------------------------------------------------
def test_fit_translation_learns_a_tiny_reverse_task():
    task = TranslationTask("reverse", n_train=400, n_val=0, n_test=100, min_len=2, max_len=5,
                           alphabet="abcde", seed=1)
    v = CharVocab(task.chars)
    m = Seq2Seq(v.size, v.size, embed_dim=16, hidden_size=32, attention="dot", rng=0)
    h = fit_translation(m, task, steps=200, batch_size=32, lr=1e-2, seed=0)
    assert len(h["loss"]) == 200 and m.vocab.chars == task.chars
    assert exact_match(m, task.test, "greedy") >= 0.95
    assert exact_match(m, task.test, "beam", beam_size=3) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("kind,cell,attention,steps", [
    ("reverse", "lstm", None, 1500), ("reverse", "lstm", "dot", 500), ("reverse", "gru", "additive", 500),
    ("dates", "lstm", "additive", 1000)])
def test_translation_task_reaches_99_percent_exact_match(kind, cell, attention, steps):
    """Held-out pairs: the reverse task of the Transformer's slow test -- Sutskever-style (no
    attention: the whole source must pass through the final state) and with Luong dot / Bahdanau
    additive attention -- and the dates task (three input formats -> ISO)."""
    if kind == "reverse":
        task = TranslationTask("reverse", n_train=4000, n_val=0, n_test=500, min_len=3, max_len=8,
                               alphabet="abcdefgh", seed=0)
    else:
        task = TranslationTask("dates", n_train=5000, n_val=0, n_test=500, seed=0)
    v = CharVocab(task.chars)
    m = Seq2Seq(v.size, v.size, embed_dim=64, hidden_size=128, cell=cell, attention=attention, rng=0)
    t0 = time.perf_counter()
    history = fit_translation(m, task, steps=steps, batch_size=64, lr=3e-3, seed=0)
    greedy = exact_match(m, task.test, "greedy")
    beam = exact_match(m, task.test, "beam", beam_size=4)
    print(f"{kind}, {cell}, attention={attention}: {steps} steps in {time.perf_counter() - t0:.1f}s, "
          f"final loss {np.mean(history['loss'][-50:]):.4f}, exact match greedy {greedy:.3f}, "
          f"beam {beam:.3f}")
    assert greedy >= 0.99 and beam >= 0.99


def test_fit_translation_checkpoints_resume_bit_identically(tmp_path):
    from scratchlm.data import TranslationTask
    task = TranslationTask("reverse", n_train=200, n_test=20, min_len=3, max_len=5, alphabet="abcd", seed=0)
    vocab = CharVocab(task.chars)
    make = lambda: Seq2Seq(vocab.size, vocab.size, embed_dim=8, hidden_size=8, attention="dot",  # noqa: E731
                           dropout=0.1, rng=0)
    straight = make()
    fit_translation(straight, task, 12, batch_size=16, lr=3e-3, checkpoint=tmp_path / "a.npz", save_every=5)

    class Stop(Exception):
        pass

    def interrupt(step, total, info):
        if step == 7:                      # two steps after the checkpoint of step 5
            raise Stop
    with pytest.raises(Stop):
        fit_translation(make(), task, 12, batch_size=16, lr=3e-3, checkpoint=tmp_path / "b.npz",
                        save_every=5, progress=interrupt)
    resumed = Seq2Seq(vocab.size, vocab.size, embed_dim=8, hidden_size=8, attention="dot",
                      dropout=0.1, rng=99)
    hist = fit_translation(resumed, task, 12, batch_size=16, lr=3e-3, checkpoint=tmp_path / "b.npz",
                           save_every=5, resume=True)
    assert hist["step"] == list(range(1, 13))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_cli_train_sample_eval_seq2seq(tmp_path, capsys):
    from scratchlm.cli import main
    ck = tmp_path / "s2s.npz"
    assert main(["train", "seq2seq", "--steps", "300", "--out", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "exact match (greedy)" in out and ck.exists()
    greedy = float(out.split("exact match (greedy) ")[1].split(",")[0])
    assert greedy >= 0.95                                   # dot attention learns reversal fast
    assert main(["sample", "--checkpoint", str(ck), "--prompt", "abcdefg", "--beam", "4"]) == 0
    assert capsys.readouterr().out.strip() == "gfedcba"
    assert main(["eval", "--checkpoint", str(ck)]) == 0
    assert "reverse task, 500 held-out pairs: exact match greedy" in capsys.readouterr().out
    assert main(["train", "seq2seq", "--steps", "300", "--out", str(ck), "--resume"]) == 0   # done: no-op
    assert main(["sample", "--checkpoint", str(ck)]) == 2                                  # no prompt


def test_fit_translation_checks_its_loop_options():
    from scratchlm.data import TranslationTask
    task = TranslationTask("reverse", n_train=50, n_val=5, n_test=5, min_len=3, max_len=5, alphabet="abcd", seed=0)
    v = CharVocab(task.chars)
    model = Seq2Seq(v.size, v.size, embed_dim=4, hidden_size=4, rng=0)
    with pytest.raises(ValueError, match="save_every"):
        fit_translation(model, task, 2, batch_size=8, save_every=0)
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        fit_translation(model, task, 2, batch_size=8, lr=0)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        fit_translation(model, task, 2, batch_size=8, resume=True)
    with pytest.raises(TypeError, match="progress must be callable"):
        fit_translation(model, task, 2, batch_size=8, progress=3)
    with pytest.raises(ValueError, match=r"meta must not use the keys the training loop writes: \['loop'\]"):
        fit_translation(model, task, 2, batch_size=8, meta={"loop": 1})
