r"""DocumentVAE: the Neural Variational Document Model (NVDM; Miao, Yu & Blunsom, "Neural
Variational Inference for Text Processing", ICML 2016) -- a VAE over bags of words.

    counts n (B, V) -> fc1 -> ReLU -> (fc21 -> mu, fc22 -> clamp -> logvar)   (B, L)
    z = mu + exp(logvar / 2) * eps                                           (B, L)
    z -> decoder (Linear L -> V) -> logits -> log_softmax                     (B, V)

A document :math:`d` is its word counts :math:`n_{d,w}` over a fixed vocabulary of :math:`V`
words (:func:`scratchlm.data.load_documents_dataset` builds them from the built-in corpus), with
length :math:`N_d = \sum_w n_{d,w}`. The encoder is the :class:`~scratchlm.models.vae.VAE`'s
(an MLP on the raw counts to a diagonal Gaussian); the decoder is NVDM's softmax over the
vocabulary, and the words are independent given :math:`z` (a multinomial likelihood, order
ignored, no multinomial coefficient -- the convention of topic-model perplexities):

.. math:: \log p_\theta(d \mid z) = \sum_{w=1}^{V} n_{d,w}\,\log\mathrm{softmax}(R z + b)_w

Its gradient with respect to the logits :math:`\ell = Rz + b` is
:math:`n_{d,w} - N_d\,\mathrm{softmax}(\ell)_w` (computed by the log-softmax pair of
:mod:`scratchlm.functional` with upstream :math:`-n`). The KL, the reparameterisation, the clamp,
KL warm-up and free bits, the bounds and their backward are the VAE's (see ``vae.py``).

**Perplexity** (Miao et al., section 4.1) is reported with a bound in place of
:math:`\log p(d)`, so it is an upper bound on the model's true perplexity:

.. math:: \mathrm{PPL} = \exp\Big(-\frac{\sum_d \mathcal L(d)}{\sum_d N_d}\Big)

over the documents (``per_document=True`` gives the paper's variant
:math:`\exp(-\frac1D \sum_d \mathcal L(d)/N_d)`), where :math:`\mathcal L(d)` is the ELBO or, with
``k``, the tighter importance-weighted bound :math:`\mathcal L_k` (Burda et al., 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .. import nn
from .._checks import boolean, make_rng, positive_int, resolve_dtype
from .vae import LOGVAR_RANGE, GaussianLatentModel, _check_options, _dense

__all__ = ["DocumentVAE", "DocumentVAEConfig"]


@dataclass
class DocumentVAEConfig:
    vocab_size: int = 2000
    hidden_dim: int = 256
    latent_dim: int = 32
    kl_weight: float = 1.0
    free_bits: float = 0.0
    logvar_min: float = LOGVAR_RANGE[0]
    logvar_max: float = LOGVAR_RANGE[1]

    def __post_init__(self):
        for name in ("vocab_size", "hidden_dim", "latent_dim"):
            positive_int(getattr(self, name), name)
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        self.kl_weight, self.free_bits, self.logvar_min, self.logvar_max = _check_options(
            self.kl_weight, self.free_bits, self.logvar_min, self.logvar_max)


class DocumentVAE(GaussianLatentModel):
    """``DocumentVAE(vocab_size, hidden_dim=256, latent_dim=32, kl_weight=1.0, free_bits=0.0,
    logvar_min=-30, logvar_max=20, dtype=np.float32, rng=None)`` -- NVDM.

    * ``logits, mu, logvar = model(counts, eps=None)`` -- ``counts`` ``(B, vocab_size)``
      non-negative, finite, of the model's dtype (bag-of-words rows; ``CSRMatrix`` rows via
      ``X[i:j].toarray()``); ``logits`` ``(B, vocab_size)`` (the word distribution is their
      softmax);
    * ``loss = model.loss(counts)`` -- the negative ELBO per document, averaged over the batch
      (``kl_weight``, ``free_bits`` applied); ``model.backward()``;
    * :meth:`perplexity`, ``elbo``, ``iwae_bound``, ``encode``, ``reconstruct`` /
      ``sample`` / ``interpolate`` / ``decode`` (word distributions ``(N, vocab_size)``),
      :meth:`topics` (the top words of each latent dimension).

    Parameters: ``fc1``, ``fc21``, ``fc22`` (the encoder, as the VAE's) and ``decoder``
    (``weight`` ``(vocab_size, latent_dim)``: NVDM's :math:`R`).
    """

    model_name = "DocumentVAE"

    def __init__(self, vocab_size=2000, hidden_dim=256, latent_dim=32, kl_weight=1.0,
                 free_bits=0.0, logvar_min=LOGVAR_RANGE[0], logvar_max=LOGVAR_RANGE[1],
                 dtype=np.float32, rng=None):
        super().__init__()
        self.config = DocumentVAEConfig(vocab_size, hidden_dim, latent_dim, kl_weight, free_bits,
                                        logvar_min, logvar_max)
        self.dtype = resolve_dtype(dtype)
        self.rng = make_rng(rng)
        c = self.config
        self._init_encoder(c.vocab_size, c.hidden_dim, c.latent_dim, self.rng)
        self.decoder = nn.Linear(c.latent_dim, c.vocab_size, dtype=self.dtype, rng=self.rng)
        self._loss_cache = None
        self.last_stats = None

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _check_support(self, x, name):
        lo = float(x.min())
        if lo < 0.0:
            raise ValueError(f"{name} must hold word counts (>= 0), got {lo}")

    def _decode(self, z):
        return self.decoder(z)                                                     # (B, V)

    def _decode_backward(self, dout):
        return self.decoder.backward(dout)                                         # (B, L)

    def _nll_forward(self, logits, n):
        """Average over the batch of :math:`-\\sum_w n_w \\log \\mathrm{softmax}(\\ell)_w`."""
        logp, cache = F.log_softmax_forward(logits)                               # (B, V)
        total = float(np.einsum("bv,bv->", n, logp, dtype=np.float64))
        return -total / len(n), (cache, n)

    def _nll_backward(self, dloss, cache):
        cache, n = cache
        return F.log_softmax_backward(n * n.dtype.type(-dloss / len(n)), cache)

    def _log_likelihood(self, logits, n):
        logp, _ = F.log_softmax_forward(logits)
        return np.einsum("bv,bv->b", n, logp, dtype=np.float64)

    def _output_mean(self, logits):
        return F.softmax_forward(logits)[0]                       # word probabilities

    def sample(self, n, rng=None):
        """``n`` word distributions ``(n, vocab_size)`` at draws :math:`z \\sim \\mathcal N(0, I)`
        from the prior (from ``rng``, default the model's generator)."""
        return super().sample(n, rng)

    def perplexity(self, counts, k=None, n_samples=1, rng=None, batch_size=512,
                   per_document=False) -> float:
        """Perplexity of documents ``counts`` (``(D, vocab_size)`` array or ``CSRMatrix``):
        :math:`\\exp(-\\sum_d \\mathcal L(d) / \\sum_d N_d)`, with :math:`\\mathcal L` the ELBO
        (``k=None``; ``n_samples`` draws of the reconstruction term) or the IWAE bound with ``k``
        samples. An upper bound on the true perplexity. ``per_document=True``: NVDM's
        :math:`\\exp(-\\frac1D\\sum_d \\mathcal L(d)/N_d)` (every document needs a word)."""
        x = self._check_input(_dense(counts, self))
        per_document = boolean(per_document, "per_document")
        if k is None:
            bound = self.elbo(x, n_samples, rng, batch_size, reduction="none")
        else:
            bound = self.iwae_bound(x, k, rng, batch_size, reduction="none")
        lengths = x.sum(axis=1, dtype=np.float64)
        if per_document:
            if np.any(lengths == 0):
                raise ValueError("per_document=True needs every document to hold a word; "
                                 f"document {int(np.argmax(lengths == 0))} is empty")
            return float(np.exp(-np.mean(bound / lengths)))
        if lengths.sum() == 0:
            raise ValueError("counts hold no words: the perplexity is undefined")
        return float(np.exp(-bound.sum() / lengths.sum()))

    def topics(self, vocab, top=10) -> list:
        """For each latent dimension :math:`j`, the ``top`` words with the largest weight
        :math:`R_{wj}` in the decoder (the words that dimension switches on):
        a list of ``latent_dim`` lists of words. ``vocab``: the ``vocab_size`` words, in id
        order."""
        vocab = list(vocab)
        if len(vocab) != self.vocab_size:
            raise ValueError(f"vocab must list vocab_size={self.vocab_size} words, got "
                             f"{len(vocab)}")
        top = positive_int(top, "top")
        W = self.decoder.weight.data                                              # (V, L)
        order = np.argsort(-W, axis=0, kind="stable")[:top]                        # (top, L)
        return [[vocab[i] for i in order[:, j]] for j in range(W.shape[1])]

    def extra_repr(self):
        c = self.config
        return (f"vocab_size={c.vocab_size}, hidden_dim={c.hidden_dim}, latent_dim={c.latent_dim}, "
                f"kl_weight={c.kl_weight}, free_bits={c.free_bits}")
