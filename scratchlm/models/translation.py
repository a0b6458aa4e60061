"""What the two encoder-decoders share: the character vocabulary of the synthetic translation
tasks, the base class with the decoding entry points, the training loop (with checkpoints that
resume bit-identically) and exact-match evaluation.

``Seq2SeqTransformer`` (``seq2seq_transformer.py``) and the RNN ``Seq2Seq`` (``seq2seq_rnn.py``)
each implement ``forward(src, tgt_in, tgt_out=None)``, ``_backward(g)`` (g: the gradient of the
logits), ``init_state(src, ...)`` and ``decode_step(tokens, state)``; everything here works on
either.
"""

from __future__ import annotations

import contextlib

from .. import nn
from .._checks import choice, float_array, positive_int, upstream
from ..decoding import beam_search, greedy_decode


class CharVocab:
    """Characters to ids for :class:`~scratchlm.data.TranslationTask`: 0 ``<pad>``, 1 ``<bos>``,
    2 ``<eos>``, then one id per character of ``chars`` (e.g. ``task.chars``), in order."""

    pad_id, bos_id, eos_id = 0, 1, 2
    SPECIALS = ("<pad>", "<bos>", "<eos>")

    def __init__(self, chars):
        if not isinstance(chars, str):
            raise TypeError(f"chars must be a str, got {type(chars).__name__}")
        if not chars or len(set(chars)) != len(chars):
            raise ValueError(f"chars must be a non-empty string of distinct characters, got {chars!r}")
        self.chars = chars
        self.stoi = {c: i + 3 for i, c in enumerate(chars)}

    @property
    def size(self) -> int:
        return len(self.chars) + 3

    def encode(self, text) -> list:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} of {text!r} is not in the vocabulary "
                             f"{self.chars!r}") from None

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 3 <= i < self.size:
                raise ValueError(f"id {i} is not a character id (3..{self.size - 1})")
            out.append(self.chars[i - 3])
        return "".join(out)


def batch_pairs(vocab, pairs):
    """(src, tgt_in, tgt_out) padded with pad_id; tgt_in = BOS + tgt, tgt_out = tgt + EOS."""
    from ..data import pad_batch
    src = [vocab.encode(s) for s, _ in pairs]
    tgt = [vocab.encode(t) for _, t in pairs]
    src_ids, _ = pad_batch(src, vocab.pad_id)
    tgt_in, _ = pad_batch([[vocab.bos_id] + t for t in tgt], vocab.pad_id)
    tgt_out, _ = pad_batch([t + [vocab.eos_id] for t in tgt], vocab.pad_id)
    return src_ids, tgt_in, tgt_out


class EncoderDecoder(nn.Module):
    """Base of the encoder-decoders: ``backward``'s two upstream forms, eval-mode inference and
    the greedy / beam entry points (:mod:`scratchlm.decoding`)."""

    def _set_special_ids(self, pad_id, bos_id, eos_id):
        """Check and set ``pad_id``, ``bos_id``, ``eos_id``: distinct target ids (``pad_id`` a
        source id too). Needs ``src_vocab_size`` and ``tgt_vocab_size`` set first."""
        ids = {}
        for name, value in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            value = positive_int(value, name, minimum=0)
            if value >= self.tgt_vocab_size:
                raise ValueError(f"{name} must be < tgt_vocab_size ({self.tgt_vocab_size}), got {value}")
            ids[name] = value
        if len(set(ids.values())) != 3:
            raise ValueError(f"pad_id, bos_id and eos_id must differ, got {ids}")
        if ids["pad_id"] >= self.src_vocab_size:
            raise ValueError(f"pad_id must be < src_vocab_size ({self.src_vocab_size}), got {pad_id}")
        self.pad_id, self.bos_id, self.eos_id = ids["pad_id"], ids["bos_id"], ids["eos_id"]

    def backward(self, dlogits=None, dloss=None):
        """Backpropagate an upstream gradient on the logits (``dlogits``) and/or on the loss
        (``dloss``; the default ``1.0`` after a call with ``tgt_out``). Returns None; every
        ``param.grad`` is accumulated."""
        shape = self._saved()[0]
        if dlogits is None and dloss is None:
            if not self._has_loss:
                raise RuntimeError("backward() without dlogits needs a forward call with tgt_out")
            dloss = 1.0
        g = None
        if dlogits is not None:
            g = upstream(float_array(dlogits, "dlogits", ndim=3), shape, self.generator.weight.dtype,
                         name="dlogits")
        if dloss is not None:
            if not self._has_loss:
                raise RuntimeError("dloss needs a forward call with tgt_out")
            gl = self.loss_fn.backward(dloss).reshape(shape)
            g = gl if g is None else g + gl
        self._backward(g)                                        # dlogits were checked above

    @contextlib.contextmanager
    def _evaluating(self):
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    def _max_decode_len(self, max_len):
        return self.max_len if max_len is None else positive_int(max_len, "max_len")

    def greedy(self, src, max_len=None, **state_options):
        """Greedy decoding of ``src`` (B, S): a list of B int64 arrays, the tokens after BOS and
        before EOS (at most ``max_len``, default the model's ``max_len``). ``state_options`` go to
        ``init_state`` (the Transformer's ``use_cache``)."""
        max_len = self._max_decode_len(max_len)
        state = self.init_state(src, **state_options)
        return greedy_decode(self.decode_step, state, self.bos_id, self.eos_id, max_len)[0]

    def beam(self, src, beam_size=4, max_len=None, length_penalty=0.6, n_best=None,
             **state_options):
        """Beam search (:func:`scratchlm.decoding.beam_search`; GNMT length penalty
        ``length_penalty``): the best sequence per source as :meth:`greedy`, or lists of the
        ``n_best`` best."""
        max_len = self._max_decode_len(max_len)
        state = self.init_state(src, **state_options)
        return beam_search(self.decode_step, state, self.bos_id, self.eos_id, beam_size, max_len,
                           length_penalty, n_best=n_best)[0]


def _list_of(values, name, what) -> list:
    """``values`` as a list -- never a bare string, which would iterate as one-letter items."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a list of {what}, got a single {type(values).__name__} "
                        f"{values[:40]!r}; wrap it in a list: [{values[:40]!r}]")
    try:
        return list(values)
    except TypeError:
        raise TypeError(f"{name} must be a list of {what}, got {type(values).__name__}") from None


def _strings(texts, name) -> list:
    """A list of strings."""
    texts = _list_of(texts, name, "strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__} {t!r:.40}")
    return texts


def translate(model, texts, vocab=None, decode="greedy", *, beam_size=4, length_penalty=0.6,
              max_len=None, batch_size=256) -> list:
    """Decode each string of ``texts`` (a list of strings) with ``model`` (greedy or beam);
    returns strings. ``max_len`` caps the generated length (default: ``2 * longest source + 10``
    within the model's ``max_len``). A model whose parameters are not finite raises
    :class:`~scratchlm._checks.NonFiniteError` instead of decoding garbage."""
    decode = choice(decode, "decode", ("greedy", "beam"))
    texts = _strings(texts, "texts")
    batch_size = positive_int(batch_size, "batch_size")
    if max_len is not None:
        max_len = positive_int(max_len, "max_len")
    vocab = getattr(model, "vocab", None) if vocab is None else vocab
    if isinstance(vocab, str):
        vocab = CharVocab(vocab)
    if not isinstance(vocab, CharVocab):
        raise ValueError("translate needs vocab= (a CharVocab or its characters) unless the "
                         "model was trained by fit_translation")
    if not texts:
        raise ValueError("texts must not be empty")
    out = []
    for i in range(0, len(texts), batch_size):
        src, _, _ = batch_pairs(vocab, [(t, "") for t in texts[i:i + batch_size]])
        cap = max_len if max_len is not None else min(model.max_len, 2 * src.shape[1] + 10)
        if decode == "greedy":
            ids = model.greedy(src, max_len=cap)
        else:
            ids = model.beam(src, beam_size=beam_size, max_len=cap, length_penalty=length_penalty)
        out += [vocab.decode(o) for o in ids]
    return out


def exact_match(model, pairs, decode="greedy", *, vocab=None, beam_size=4, length_penalty=0.6,
                max_len=None, batch_size=256) -> float:
    """Fraction of ``pairs`` ``(src, tgt)`` whose decoded output equals ``tgt`` exactly.

    ``decode``: ``'greedy'`` or ``'beam'`` (``beam_size``, ``length_penalty``). ``vocab``: a
    :class:`CharVocab` or its characters (default: ``model.vocab``, set by
    :func:`fit_translation`). ``max_len`` caps the generated length (default: ``2 * longest
    source + 10``, within the model's ``max_len``).
    """
    pairs = _list_of(pairs, "pairs", "(source, target) string pairs")
    if not pairs:
        raise ValueError("pairs must not be empty")
    for i, pair in enumerate(pairs):
        if (isinstance(pair, (str, bytes)) or not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(t, str) for t in pair)):
            raise TypeError(f"pairs[{i}] must be a (source, target) pair of strings, got {pair!r:.60}")
    predictions = translate(model, [s for s, _ in pairs], vocab, decode, beam_size=beam_size,
                            length_penalty=length_penalty, max_len=max_len, batch_size=batch_size)
    from ..data import TranslationTask
    return TranslationTask.exact_match(predictions, [t for _, t in pairs])
