r"""VAE: the variational autoencoder (Kingma & Welling, 2014; Rezende, Mohamed & Wierstra, 2014),
laid out as PyTorch's classic ``examples/vae``, with every backward written out; the
importance-weighted bound (Burda, Grosse & Salakhutdinov, 2016); KL warm-up (Bowman et al.,
2016) and free bits (Kingma et al., 2016). The document VAE (NVDM) that shares this machinery is
in ``nvdm.py``; :func:`scratchlm.training.fit_vae` trains either.

    x (B, D) -> fc1 -> ReLU -> h (B, H) -> fc21 -> mu (B, L)
                                        -> fc22 -> clamp[-30, 20] -> logvar (B, L)
    z = mu + exp(logvar / 2) * eps,   eps ~ N(0, I)                                (B, L)
    z -> fc3 -> ReLU -> fc4 -> logits (Bernoulli) or mean (Gaussian)              (B, D)

**The model.** Prior :math:`p(z) = \mathcal N(0, I_L)`; encoder
:math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\, e^{\lambda_\phi(x)})`
(:math:`\lambda` the log-variance); decoder :math:`p_\theta(x \mid z)`:

* ``likelihood='bernoulli'`` (binary or [0, 1] pixels), from logits :math:`\ell = f_\theta(z)`:
  :math:`-\log p_\theta(x \mid z) = \sum_d \max(\ell_d, 0) - \ell_d x_d + \log(1 + e^{-|\ell_d|})`
  (``BCEWithLogits`` summed over pixels: finite for every finite logit);
* ``likelihood='gaussian'``, fixed unit variance, from the mean :math:`m = f_\theta(z)`:
  :math:`-\log p_\theta(x \mid z) = \tfrac12 \lVert x - m\rVert^2 + \tfrac D2 \log 2\pi`.
  The constant :math:`\tfrac D2\log 2\pi` is **included** (it is
  ``torch.nn.GaussianNLLLoss(full=True)`` with ``var=1``), so the ELBO is a true bound on
  :math:`\log p(x)` as a density.

**The loss** (per example, averaged over the batch of :math:`B`) is the negative evidence lower
bound

.. math::

    -\mathcal L(x) = -\mathbb E_{q(z\mid x)}[\log p_\theta(x \mid z)]
                     + \mathrm{KL}\big(q_\phi(z \mid x)\,\|\,p(z)\big),\qquad
    \mathrm{KL} = -\tfrac12 \sum_{j=1}^{L} \big(1 + \lambda_j - \mu_j^2 - e^{\lambda_j}\big)

with the expectation estimated by one reparameterised sample
:math:`z = \mu + e^{\lambda/2} \odot \epsilon`, :math:`\epsilon \sim \mathcal N(0, I)`, and the
KL analytic (Kingma & Welling, appendix B). Two options change the KL term of the *training*
objective (the reported ELBO is always the true one):

* ``kl_weight`` :math:`\beta` multiplies it. Training from :math:`\beta = 0` up to 1 over the
  first steps ("KL annealing", Bowman et al., 2016) keeps the posterior from collapsing onto
  the prior early on; :func:`scratchlm.training.fit_vae` does that with ``kl_warmup_steps``, passing
  :math:`\beta_t` to :meth:`VAE.loss`.
* ``free_bits`` :math:`\lambda_{fb}` (nats per latent dimension; Kingma et al., 2016, "Improved
  variational inference with inverse autoregressive flow"): the KL of each latent
  dimension, averaged over the minibatch, is floored,
  :math:`\sum_j \max\big(\lambda_{fb},\ \tfrac1B\sum_b \mathrm{KL}_{bj}\big)`, so a dimension
  whose KL is already below the floor gets no pressure towards the prior. The floor's
  gradient is exactly zero below it and the identity at or above it (``torch.clamp``'s rule).

Training loss: :math:`\frac1B \sum_b -\log p(x_b \mid z_b) + \beta\,\mathcal K_{\lambda_{fb}}`
(with :math:`\beta = 1`, :math:`\lambda_{fb} = 0` exactly the average negative ELBO).

**Explicit backward** (upstream :math:`g` of the loss, :math:`\delta` the decoder's output
gradient :math:`\partial/\partial\ell = \sigma(\ell) - x` or :math:`m - x`, each divided by
:math:`B`): decoder ``fc4 <- ReLU <- fc3`` gives :math:`\partial/\partial z`; the
reparameterisation with :math:`\epsilon` held fixed gives

.. math:: \frac{\partial}{\partial\mu} = \frac{\partial}{\partial z},\qquad
          \frac{\partial}{\partial\lambda} = \frac{\partial}{\partial z}\odot\epsilon\odot
          \tfrac12 e^{\lambda/2}

(both ops, the reparameterisation and the free-bits KL, are forward/backward pairs in
:mod:`scratchlm.functional.latent`), to which the KL adds :math:`\beta\mu/B` and
:math:`\beta(e^\lambda - 1)/(2B)` (times the free-bits mask); the clamp passes the
log-variance gradient where :math:`-30 \le \lambda_{\text{pre}} \le 20` and stops it outside
(the bounds count as inside, as ``torch.clamp``); the encoder ``fc21``/``fc22 <- ReLU <-
fc1`` does the rest. The clamp keeps :math:`e^{\lambda}` :math:`\le e^{20} \approx 4.9\cdot
10^8` and :math:`e^{\lambda/2} \ge e^{-15}`, so nothing overflows in float32.

**Input.** ``x`` is ``(B, input_dim)``: flattened images with values in [0, 1] (binary for a
proper Bernoulli likelihood: :func:`scratchlm.data.binarize`), or any reals for the Gaussian.
An array ``(B, ...)`` with ``input_dim`` values per example, such as ``(B, 1, 28, 28)`` images,
is accepted and flattened; outputs are always ``(B, input_dim)``. The model checks ``x`` (shape,
dtype, NaN/inf, the likelihood's support) and ``eps``, then runs its layers ``@trusted``.

**Input gradient.** ``x`` is data: it is both the encoder's input and the reconstruction target.
``backward`` returns ``None`` and skips the encoder's input gradient (as torch does for an input
without ``requires_grad``): ``fc1`` gets only its weight and bias gradients, one
``(B, input_dim)`` gemm fewer per step; ``differentiable_inputs = ()``.

**Evaluation.** :meth:`VAE.elbo` (analytic KL, the reconstruction term averaged over
``n_samples`` draws) and :meth:`VAE.iwae_bound`, the importance-weighted bound with :math:`k`
samples (Burda et al., 2016)

.. math:: \mathcal L_k(x) = \mathbb E\Big[\log \frac1k \sum_{i=1}^{k} w_i\Big],\quad
          \log w_i = \log p_\theta(x \mid z_i) + \log p(z_i) - \log q_\phi(z_i \mid x)
          = \log p_\theta(x \mid z_i) - \tfrac12 \lVert z_i\rVert^2
            + \tfrac12 \sum_j (\epsilon_{ij}^2 + \lambda_j),

evaluated per example with a log-sum-exp and averaged. :math:`\mathcal L_1` is the ELBO (with a
sampled KL), :math:`\mathcal L_k \le \mathcal L_{k+1} \le \log p(x)` in expectation, and
:math:`\mathcal L_k \to \log p(x)` as :math:`k \to \infty`. Also :meth:`VAE.sample` (from the
prior), :meth:`VAE.reconstruct` (decode the posterior mean) and :meth:`VAE.interpolate`
(decode points on the segment between two posterior means).

**Randomness.** ``eps`` comes from the model's own ``np.random.Generator`` (``model.rng``, seeded
by ``rng=``) unless passed in; checkpoints carry its state, so a resumed run is bit-identical.
Passing ``eps`` makes the forward deterministic (gradient checks, PyTorch parity).

Parameter names are those of the PyTorch example (``fc1``, ``fc21``, ``fc22``, ``fc3``, ``fc4``,
weights ``(out, in)``), so a state dict moves across unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from .. import nn
from ..functional.latent import (free_bits_kl_backward, free_bits_kl_forward,
                                 reparameterize_backward, reparameterize_forward)
from .._checks import (NonFiniteError, choice, float_array, float_errors_checked, make_rng,
                       nonnegative, positive_int, resolve_dtype, same_dtype, scalar, trusted,
                       upstream)
from ..kernels.gemm import matmul
from ..nn.module import NO_CACHE

__all__ = ["VAE", "VAEConfig", "elbo", "iwae_bound"]

LOGVAR_RANGE = (-30.0, 20.0)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------------
# the shared latent-Gaussian machinery (encoder, reparameterisation, KL, bounds)
# ------------------------------------------------------------------------------------------------
def _check_options(kl_weight, free_bits, logvar_min, logvar_max):
    kl_weight = nonnegative(kl_weight, "kl_weight")
    free_bits = nonnegative(free_bits, "free_bits")
    lo, hi = scalar(logvar_min, "logvar_min"), scalar(logvar_max, "logvar_max")
    if not lo < hi:
        raise ValueError(f"logvar_min must be < logvar_max, got {lo} and {hi}")
    if hi > 80.0:
        raise ValueError(f"logvar_max must be <= 80 (exp(logvar) must stay finite in float32), "
                         f"got {hi}")
    return kl_weight, free_bits, lo, hi


class GaussianLatentModel(nn.Module):
    """Base of :class:`VAE` and :class:`~scratchlm.models.nvdm.DocumentVAE`: an MLP encoder
    ``fc1 -> ReLU -> (fc21, fc22)`` to a diagonal Gaussian posterior, the reparameterisation,
    the (free-bits, weighted) KL, the backward, and the bounds. A subclass supplies the decoder
    (``_decode`` / ``_decode_backward``), the reconstruction term (``_nll_forward`` /
    ``_nll_backward`` / ``_log_likelihood``), the check of what ``x`` may hold
    (``_check_support``) and the output's mean (``_output_mean``)."""

    differentiable_inputs = ()            # x is data: the encoder's input and the target
    model_name = "GaussianLatentModel"

    def _init_encoder(self, input_dim, hidden_dim, latent_dim, rng):
        self.fc1 = nn.Linear(input_dim, hidden_dim, dtype=self.dtype, rng=rng)
        self.relu1 = nn.ReLU()
        self.fc21 = nn.Linear(hidden_dim, latent_dim, dtype=self.dtype, rng=rng)
        self.fc22 = nn.Linear(hidden_dim, latent_dim, dtype=self.dtype, rng=rng)

    # -- options, kept in the config so that a checkpoint rebuilds them ----------------------
    @property
    def kl_weight(self) -> float:
        """:math:`\\beta`, the weight of the KL term in :meth:`loss` (default 1)."""
        return self.config.kl_weight

    @kl_weight.setter
    def kl_weight(self, value):
        self.config.kl_weight = nonnegative(value, "kl_weight")

    @property
    def free_bits(self) -> float:
        """:math:`\\lambda_{fb}`, the per-dimension KL floor in nats (default 0: none)."""
        return self.config.free_bits

    @free_bits.setter
    def free_bits(self, value):
        self.config.free_bits = nonnegative(value, "free_bits")

    @property
    def input_dim(self) -> int:
        return self.fc1.in_features

    @property
    def latent_dim(self) -> int:
        return self.fc21.out_features

    def config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def from_config(cls, config, dtype=np.float32, rng=None):
        """Rebuild from a config dataclass or its :meth:`config_dict` (e.g. a checkpoint's)."""
        fields = asdict(config) if not isinstance(config, dict) else dict(config)
        return cls(**fields, dtype=dtype, rng=rng)

    # -- input checks (outside @trusted: NaN/inf scanned here) -------------------------------
    def _check_input(self, x, name="x"):
        """x ``(B, input_dim)`` -- or ``(B, ...)`` with ``input_dim`` values per example (images
        ``(B, 1, 28, 28)``), flattened -- of the model's dtype, finite, in the likelihood's
        support. Returns the ``(B, input_dim)`` view."""
        D = self.input_dim
        x = float_array(x, name)
        if x.ndim < 2 or math.prod(x.shape[1:]) != D:
            raise ValueError(f"{name} must have shape (B, {D}) (B, input_dim), or (B, ...) with "
                             f"{D} values per example, got {x.shape}")
        same_dtype(x, name, self.dtype, type(self).__name__)
        x = x.reshape(len(x), D)
        self._check_support(x, name)
        return x

    def _check_eps(self, eps, B, rng=None):
        L = self.latent_dim
        if eps is None:
            gen = make_rng(self.rng if rng is None else rng)
            return gen.standard_normal((B, L), dtype=self.dtype)
        eps = float_array(eps, "eps", ndim=2)
        if eps.shape != (B, L):
            raise ValueError(f"eps must have shape (B, latent_dim) = ({B}, {L}), got {eps.shape}")
        same_dtype(eps, "eps", self.dtype, type(self).__name__)
        return eps

    def _check_support(self, x, name):
        pass

    # -- forward / loss / backward ---------------------------------------------------------------
    def forward(self, x, eps=None):
        """``(out, mu, logvar)``: the decoder's output ``(B, input_dim)`` (logits or mean),
        and the posterior's mean and clamped log-variance ``(B, latent_dim)``. ``eps``
        ``(B, latent_dim)``: the noise (default: drawn from ``self.rng``)."""
        x = self._check_input(x)
        return self._forward(x, self._check_eps(eps, len(x)))

    @trusted                     # x and eps are checked; the layers skip their NaN scans
    def _forward(self, x, eps):
        mu, logvar = self._encode(x)
        z, rep = reparameterize_forward(mu, logvar, eps)
        out = self._decode(z)
        self._cache = (rep, out.shape, mu.shape)
        self._loss_cache = None
        return out, mu, logvar

    def loss(self, x, eps=None, kl_weight=None) -> float:
        """The training loss for the batch ``x`` (a float): the average over the batch of
        :math:`-\\log p(x \\mid z) + \\beta\\,\\mathrm{KL}` with free bits (see the module
        docstring); with ``kl_weight=1``, ``free_bits=0`` the negative ELBO per example.
        ``kl_weight`` overrides :attr:`kl_weight` for this call (KL warm-up). ``backward()``
        then backpropagates it.

        The loss's parts have no place in the return value (torch's modules return the loss
        alone), so every call sets ``self.last_stats`` (``None`` before the first), a dict of
        this batch's: ``recon`` (float, the average :math:`-\\log p(x\\mid z)`), ``kl`` (float,
        the true KL averaged over the batch, without ``kl_weight`` or free bits), ``elbo``
        (float, ``-(recon + kl)``) and ``kl_per_dim`` (a list of ``latent_dim`` floats, the
        batch-mean KL of each latent dimension)."""
        beta = self.kl_weight if kl_weight is None else nonnegative(kl_weight, "kl_weight")
        x = self._check_input(x)
        return self._loss(x, self._check_eps(eps, len(x)), beta)

    @trusted
    def _loss(self, x, eps, beta):
        out, mu, logvar = self._forward(x, eps)
        rec, rec_cache = self._nll_forward(out, x)
        kl_fb, kl_cache = free_bits_kl_forward(mu, logvar, self.free_bits)
        kl = float(kl_cache.kl_per_dim.sum())
        self._loss_cache = (rec_cache, kl_cache, beta)
        self.last_stats = {"recon": rec, "kl": kl, "elbo": -(rec + kl),
                           "kl_per_dim": kl_cache.kl_per_dim.tolist()}
        return rec + beta * kl_fb

    def backward(self, dout=None, dmu=None, dlogvar=None, dloss=None):
        """Backpropagate; parameter gradients are added to ``.grad``; returns ``None`` (``x`` is
        data).

        ``backward()`` after :meth:`loss` backpropagates the loss; ``backward(dout, dmu,
        dlogvar)`` after ``model(x)`` takes one upstream gradient per output (any may be
        ``None``); ``dloss`` adds the loss's path (the gradient of ``<dout, out> + <dmu, mu> +
        <dlogvar, logvar> + dloss * loss``)."""
        rep, out_shape, lat_shape = self._saved()
        if dout is None and dmu is None and dlogvar is None and dloss is None:
            if self._loss_cache is None:
                raise RuntimeError("backward() without upstream gradients needs a loss() call "
                                   "first")
            dloss = 1.0
        if dloss is not None:
            if self._loss_cache is None:
                raise RuntimeError("backward(dloss=...) needs a loss() call first")
            dloss = scalar(dloss, "dloss")
        dout = None if dout is None else upstream(dout, out_shape, self.dtype, "dout")
        dmu = None if dmu is None else upstream(dmu, lat_shape, self.dtype, "dmu")
        dlogvar = None if dlogvar is None else upstream(dlogvar, lat_shape, self.dtype, "dlogvar")
        self._backward(dout, dmu, dlogvar, dloss)
        return None

    @trusted
    def _backward(self, dout, dmu, dlogvar, dloss):
        rep, out_shape, lat_shape = self._cache
        if dloss is not None:
            rec_cache, kl_cache, beta = self._loss_cache
            g = self._nll_backward(dloss, rec_cache)
            dout = g if dout is None else dout + g
            if beta != 0.0:
                gmu, glv = free_bits_kl_backward(dloss * beta, kl_cache)
                dmu = gmu if dmu is None else dmu + gmu
                dlogvar = glv if dlogvar is None else dlogvar + glv
        if dout is not None:
            dz = self._decode_backward(dout)
            rmu, rlv, _ = reparameterize_backward(dz, rep)
            dmu = rmu if dmu is None else dmu + rmu
            dlogvar = rlv if dlogvar is None else dlogvar + rlv
        zeros = np.zeros(lat_shape, self.dtype)
        self._encode_backward(zeros if dmu is None else dmu,
                              zeros if dlogvar is None else dlogvar)

    # -- the encoder ---------------------------------------------------------------------------
    def _encode(self, x):
        h = self.relu1(self.fc1(x))                                              # (B, H)
        mu = self.fc21(h)                                                         # (B, L)
        pre = self.fc22(h)                                                        # (B, L)
        lo, hi = self.config.logvar_min, self.config.logvar_max
        logvar = np.clip(pre, lo, hi)
        self._clamp_mask = (pre >= lo) & (pre <= hi)          # torch.clamp: bounds pass
        return mu, logvar

    def _encode_backward(self, dmu, dlogvar):
        dpre = dlogvar * self._clamp_mask                  # the clamp stops it outside the range
        dh = self.fc21.backward(dmu) + self.fc22.backward(dpre)
        dh = self.relu1.backward(dh)
        # fc1's input is data: only its weight and bias gradients are needed (one gemm saved)
        x = self.fc1._saved().x                                                   # (B, D)
        if self.fc1.weight.requires_grad:
            matmul(dh.T, x, self.fc1.weight.grad, True)             # grad (H, D) += (H, B) @ (B, D)
        if self.fc1.bias.requires_grad:
            self.fc1.bias.grad += dh.sum(axis=0)

    # -- evaluation -----------------------------------------------------------------------------
    def _forget(self):
        for m in self.modules():
            object.__setattr__(m, "_cache", NO_CACHE)
        self._loss_cache = None

    def _chunks(self, x, batch_size):
        batch_size = positive_int(batch_size, "batch_size")
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size]

    @trusted
    @float_errors_checked          # it checks its results; no NumPy warnings
    def _bounds(self, x, n, rng, batch_size, kind):
        """Per-example ELBO (``kind='elbo'``, ``n`` samples of the reconstruction term, analytic
        KL) or IWAE bound (``'iwae'``, ``k = n``), float64 ``(B,)``."""
        rng = make_rng(self.rng if rng is None else rng)
        out = []
        try:
            for xb in self._chunks(x, batch_size):
                mu, logvar = self._encode(xb)
                b = len(xb)
                logw = np.empty((n, b))
                for i in range(n):
                    eps = rng.standard_normal((b, self.latent_dim), dtype=self.dtype)
                    z, _ = reparameterize_forward(mu, logvar, eps)
                    logw[i] = self._log_likelihood(self._decode(z), xb)
                    if kind == "iwae":        # + log p(z) - log q(z|x); the 2 pi terms cancel
                        logw[i] += 0.5 * (eps * eps + logvar - z * z).sum(axis=1, dtype=np.float64)
                if kind == "elbo":
                    kl, _ = F.gaussian_kl_forward(mu, logvar, "none")
                    out.append(logw.mean(axis=0) - kl.astype(np.float64))
                else:
                    top = logw.max(axis=0)
                    out.append(top + np.log(np.exp(logw - top).sum(axis=0)) - math.log(n))
        finally:
            self._forget()
        out = np.concatenate(out)
        if not np.isfinite(out).all():         # one check per evaluation: never a NaN reported
            b = int(np.flatnonzero(~np.isfinite(out))[0])
            raise NonFiniteError(f"the {'ELBO' if kind == 'elbo' else 'IWAE bound'} of example "
                                 f"{b} is {out[b]}: the model's parameters or activations are not "
                                 f"finite (a diverged model or a corrupt checkpoint?)")
        return out

    def elbo(self, x, n_samples=1, rng=None, batch_size=512, reduction="mean"):
        """The evidence lower bound :math:`\\mathbb E_q[\\log p(x\\mid z)] - \\mathrm{KL}` in nats
        per example: analytic KL, the expectation averaged over ``n_samples`` draws of ``eps``
        from ``rng`` (default: the model's generator; an int seed makes it repeatable).
        ``reduction='mean'`` (a float, the batch average) or ``'none'`` (float64 ``(B,)``).
        Independent of ``kl_weight`` and ``free_bits``. Leaves no cache behind."""
        x = self._check_input(x)
        n = positive_int(n_samples, "n_samples")
        choice(reduction, "reduction", ("mean", "none"))
        per = self._bounds(x, n, rng, batch_size, "elbo")
        return float(per.mean()) if reduction == "mean" else per

    def iwae_bound(self, x, k=50, rng=None, batch_size=512, reduction="mean"):
        """The importance-weighted bound :math:`\\mathcal L_k` (Burda et al., 2016) in nats per
        example: :math:`\\log \\frac1k\\sum_i w_i` by log-sum-exp, per example; ``'mean'``
        averages over the batch. ``k=1`` is a one-sample ELBO with a sampled KL.
        Arguments as :meth:`elbo`."""
        x = self._check_input(x)
        k = positive_int(k, "k")
        choice(reduction, "reduction", ("mean", "none"))
        per = self._bounds(x, k, rng, batch_size, "iwae")
        return float(per.mean()) if reduction == "mean" else per

    def encode(self, x):
        """The posterior's ``(mu, logvar)`` for ``x``, ``(B, latent_dim)`` each. No cache left."""
        return self._encode_only(self._check_input(x))

    @trusted
    def _encode_only(self, x):
        try:
            return self._encode(x)
        finally:
            self._forget()

    def decode(self, z):
        """The decoder's mean for latent codes ``z`` ``(N, latent_dim)`` (see :meth:`sample`)."""
        z = float_array(z, "z", ndim=2)
        if z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (N, {self.latent_dim}) (N, latent_dim), got "
                             f"{z.shape}")
        same_dtype(z, "z", self.dtype, type(self).__name__)
        return self._decode_mean(z)

    @trusted
    @float_errors_checked          # it checks its results; no NumPy warnings
    def _decode_mean(self, z):
        try:
            mean = self._output_mean(self._decode(z))
        finally:
            self._forget()
        if not np.isfinite(mean).all():          # samples, reconstructions: never NaN pictures
            raise NonFiniteError(f"the decoder of {type(self).__name__} gives non-finite outputs: "
                                 f"its parameters or activations are not finite (a diverged model "
                                 f"or a corrupt checkpoint?)")
        return mean

    def sample(self, n, rng=None):
        """``n`` draws from the model: :math:`z \\sim \\mathcal N(0, I)` (from ``rng``, default
        the model's generator), decoded to the likelihood's mean, ``(n, input_dim)``."""
        n = positive_int(n, "n")
        z = make_rng(self.rng if rng is None else rng).standard_normal((n, self.latent_dim),
                                                                      dtype=self.dtype)
        return self._decode_mean(z)

    def reconstruct(self, x):
        """The decoder's mean at the posterior mean :math:`z = \\mu(x)`, ``(B, input_dim)``
        (deterministic)."""
        mu, _ = self.encode(x)
        return self._decode_mean(mu)

    def interpolate(self, x1, x2, steps=8):
        """Decode ``steps`` points evenly spaced on the segment between the posterior means of
        two single examples ``x1`` and ``x2`` (each ``(input_dim,)``, ``(1, input_dim)`` or an
        image ``(1, 28, 28)``...): :math:`z_t = (1-t)\\mu(x_1) + t\\,\\mu(x_2)`,
        :math:`t = 0, \\dots, 1`. Returns ``(steps, input_dim)``; the first row is
        ``reconstruct(x1)``, the last ``reconstruct(x2)``."""
        steps = positive_int(steps, "steps", minimum=2)
        mus = []
        for name, xi in (("x1", x1), ("x2", x2)):
            xi = float_array(xi, name)
            if xi.size != self.input_dim:
                raise ValueError(f"{name} must be one example with {self.input_dim} values "
                                 f"(input_dim), got shape {xi.shape}")
            mus.append(self.encode(xi.reshape(1, self.input_dim))[0])
        t = np.linspace(0.0, 1.0, steps).astype(self.dtype)[:, None]
        return self._decode_mean((1 - t) * mus[0] + t * mus[1])


# ------------------------------------------------------------------------------------------------
# the image VAE
# ------------------------------------------------------------------------------------------------
@dataclass
class VAEConfig:
    input_dim: int = 784
    hidden_dim: int = 400
    latent_dim: int = 20
    likelihood: str = "bernoulli"
    kl_weight: float = 1.0
    free_bits: float = 0.0
    logvar_min: float = LOGVAR_RANGE[0]
    logvar_max: float = LOGVAR_RANGE[1]

    def __post_init__(self):
        for name in ("input_dim", "hidden_dim", "latent_dim"):
            positive_int(getattr(self, name), name)
        choice(self.likelihood, "likelihood", ("bernoulli", "gaussian"))
        self.kl_weight, self.free_bits, self.logvar_min, self.logvar_max = _check_options(
            self.kl_weight, self.free_bits, self.logvar_min, self.logvar_max)


class VAE(GaussianLatentModel):
    """``VAE(input_dim=784, hidden_dim=400, latent_dim=20, likelihood='bernoulli'|'gaussian',
    kl_weight=1.0, free_bits=0.0, logvar_min=-30, logvar_max=20, dtype=np.float32, rng=None)``.

    * ``out, mu, logvar = model(x, eps=None)`` -- ``x`` ``(B, input_dim)`` (or ``(B, ...)``
      with ``input_dim`` values per example, e.g. ``(B, 1, 28, 28)`` images, flattened) of the
      model's dtype, finite, in [0, 1] for the Bernoulli likelihood; ``out`` the decoder's
      logits (Bernoulli) or mean (Gaussian) ``(B, input_dim)``; ``mu``, ``logvar`` ``(B,
      latent_dim)``;
    * ``loss = model.loss(x, eps=None, kl_weight=None)`` -- the negative ELBO per example,
      averaged over the batch (with ``kl_weight`` and ``free_bits`` applied to the KL);
      ``model.backward()`` backpropagates it; ``backward(dout, dmu, dlogvar)`` after a forward;
    * ``elbo``, ``iwae_bound``, ``sample``, ``reconstruct``, ``interpolate``, ``encode``,
      ``decode`` -- see :class:`GaussianLatentModel`.

    ``model.rng`` is the generator of ``eps`` (and of the initialisation). The equations, the
    backward and the references are in the module docstring.
    """

    model_name = "VAE"

    def __init__(self, input_dim=784, hidden_dim=400, latent_dim=20, likelihood="bernoulli",
                 kl_weight=1.0, free_bits=0.0, logvar_min=LOGVAR_RANGE[0],
                 logvar_max=LOGVAR_RANGE[1], dtype=np.float32, rng=None):
        super().__init__()
        self.config = VAEConfig(input_dim, hidden_dim, latent_dim, likelihood, kl_weight,
                                free_bits, logvar_min, logvar_max)
        self.dtype = resolve_dtype(dtype)
        self.rng = make_rng(rng)
        c = self.config
        self._init_encoder(c.input_dim, c.hidden_dim, c.latent_dim, self.rng)
        self.fc3 = nn.Linear(c.latent_dim, c.hidden_dim, dtype=self.dtype, rng=self.rng)
        self.relu3 = nn.ReLU()
        self.fc4 = nn.Linear(c.hidden_dim, c.input_dim, dtype=self.dtype, rng=self.rng)
        self._loss_cache = None
        self.last_stats = None

    @property
    def likelihood(self) -> str:
        return self.config.likelihood

    def _check_support(self, x, name):
        if self.config.likelihood == "bernoulli":
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"{name} must lie in [0, 1] for likelihood='bernoulli' (binary "
                                 f"pixels, e.g. binarize(images)), got values in [{lo}, {hi}]")

    def _decode(self, z):
        return self.fc4(self.relu3(self.fc3(z)))                                 # (B, D)

    def _decode_backward(self, dout):
        return self.fc3.backward(self.relu3.backward(self.fc4.backward(dout)))   # (B, L)

    def _nll_forward(self, out, x):
        """Average over the batch of :math:`-\\log p(x_b \\mid z_b)` -> (float, cache)."""
        B = len(x)
        if self.config.likelihood == "bernoulli":
            total, cache = F.bce_with_logits_forward(out, x, "sum")
            return total / B, (cache, B)
        total, cache = F.mse_forward(out, x, "sum")                  # sum (m - x)^2
        return 0.5 * total / B + self.input_dim * _HALF_LOG_2PI, (cache, B)

    def _nll_backward(self, dloss, cache):
        cache, B = cache
        if self.config.likelihood == "bernoulli":
            return F.bce_with_logits_backward(dloss / B, cache)[0]
        return F.mse_backward(0.5 * dloss / B, cache)[0]

    def _log_likelihood(self, out, x):
        """:math:`\\log p(x_b \\mid z_b)` per example, float64 ``(B,)``."""
        if self.config.likelihood == "bernoulli":
            per, _ = F.bce_with_logits_forward(out, x, "none")
            return -per.sum(axis=1, dtype=np.float64)
        per, _ = F.mse_forward(out, x, "none")
        return -0.5 * per.sum(axis=1, dtype=np.float64) - self.input_dim * _HALF_LOG_2PI

    def _output_mean(self, out):
        if self.config.likelihood == "bernoulli":
            return F.sigmoid_forward(out)[0]                        # pixel probabilities
        return out

    def extra_repr(self):
        c = self.config
        return (f"input_dim={c.input_dim}, hidden_dim={c.hidden_dim}, latent_dim={c.latent_dim}, "
                f"likelihood={c.likelihood!r}, kl_weight={c.kl_weight}, free_bits={c.free_bits}")


# ------------------------------------------------------------------------------------------------
# evaluation helpers and the training loop (both VAEs)
# ------------------------------------------------------------------------------------------------
def _latent_model(model):
    if not isinstance(model, GaussianLatentModel):
        raise TypeError(f"model must be a VAE or a DocumentVAE, got {type(model).__name__}")
    return model


def elbo(model, x, n_samples=1, rng=None, batch_size=512):
    """:meth:`VAE.elbo`: the mean evidence lower bound per example, in nats (a float)."""
    return _latent_model(model).elbo(_dense(x, model), n_samples, rng, batch_size)


def iwae_bound(model, x, k=50, rng=None, batch_size=512):
    """:meth:`VAE.iwae_bound`: the mean importance-weighted bound with ``k`` samples (a float)."""
    return _latent_model(model).iwae_bound(_dense(x, model), k, rng, batch_size)


def _dense(x, model):
    """A CSRMatrix of counts (documents) becomes a dense array of the model's dtype; an
    ``ImageSplit`` its images; anything else goes through untouched (the model checks it)."""
    from ..data.images import ImageSplit
    from ..data.representations import CSRMatrix
    if isinstance(x, CSRMatrix):
        return _csr_rows(x, np.arange(x.shape[0]), model.dtype)
    if isinstance(x, ImageSplit):
        return x.images
    return x


def _csr_rows(X, idx, dtype):
    """Rows ``idx`` of a CSRMatrix as a dense ``(len(idx), n_cols)`` array of ``dtype``."""
    starts, stops = X.indptr[idx], X.indptr[np.asarray(idx) + 1]
    lengths = stops - starts
    out = np.zeros((len(idx), X.shape[1]), dtype=dtype)
    if lengths.sum():
        rows = np.repeat(np.arange(len(idx)), lengths)
        pos = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])
        np.add.at(out, (rows, X.indices[pos]), X.data[pos].astype(dtype))
    return out
