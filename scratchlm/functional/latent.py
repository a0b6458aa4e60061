r"""The two ops of a Gaussian latent-variable model (the VAEs of ``scratchlm.models.vae`` and
``scratchlm.models.nvdm``) that are not layers: the reparameterisation trick (Kingma & Welling,
2014, section 2.4) and the KL term with free bits (Kingma et al., 2016, "Improved variational
inference with inverse autoregressive flow").
"""

from typing import NamedTuple

import numpy as np

from .._checks import float_array, nonnegative, same_shape_and_dtype, scalar, upstream
from .loss import GaussianKLCache, gaussian_kl_backward, gaussian_kl_forward


class ReparameterizeCache(NamedTuple):
    std: np.ndarray              # (..., L) exp(logvar / 2)
    eps: np.ndarray              # (..., L) the noise


def reparameterize_forward(mu, logvar, eps):
    r"""The reparameterisation trick (Kingma & Welling, 2014, section 2.4):
    :math:`z = \mu + e^{\lambda/2} \odot \epsilon`.

    mu, logvar, eps: ``(..., L)``, same shape and dtype -> z ``(..., L)`` and a
    :class:`ReparameterizeCache`.
    """
    mu = float_array(mu, "mu", min_ndim=1)
    logvar = float_array(logvar, "logvar", min_ndim=1)
    eps = float_array(eps, "eps", min_ndim=1)
    same_shape_and_dtype(logvar, "logvar", mu, "mu")
    same_shape_and_dtype(eps, "eps", mu, "mu")
    std = np.exp(0.5 * logvar)                                                 # (..., L)
    return mu + std * eps, ReparameterizeCache(std, eps)


def reparameterize_backward(dz, cache: ReparameterizeCache):
    r"""From :math:`z = \mu + e^{\lambda/2}\epsilon`: :math:`\partial z/\partial\mu = 1`,
    :math:`\partial z/\partial\lambda = \tfrac12 e^{\lambda/2}\epsilon`,
    :math:`\partial z/\partial\epsilon = e^{\lambda/2}`. Returns ``(dmu, dlogvar, deps)``
    (the VAE holds ``eps`` fixed and ignores ``deps``)."""
    std, eps = cache.std, cache.eps
    upstream(dz, std.shape, std.dtype, "dz")
    dstd = dz * std                                  # from z = mu + std * eps, per unit of eps
    return dz, 0.5 * dstd * eps, dstd                # d std / d logvar = std / 2


class FreeBitsKLCache(NamedTuple):
    kl: GaussianKLCache          # the elementwise KL's cache, on (B, L, 1) arrays
    kl_per_dim: np.ndarray       # (L,) float64 batch-mean KL of each latent dimension
    active: np.ndarray           # (L,) bool: kl_per_dim >= free_bits (its gradient passes)
    shape: tuple                 # (B, L) of mu
    dtype: np.dtype              # mu's dtype


def free_bits_kl_forward(mu, logvar, free_bits=0.0):
    r"""The KL term of the training loss, with free bits (Kingma et al., 2016):

    .. math:: \mathcal K_{\lambda_{fb}} = \sum_{j=1}^{L} \max\Big(\lambda_{fb},\
              \frac1B \sum_{b=1}^{B} \mathrm{KL}_{bj}\Big),\qquad
              \mathrm{KL}_{bj} = -\tfrac12\big(1 + \lambda_{bj} - \mu_{bj}^2 - e^{\lambda_{bj}}\big)

    With ``free_bits=0`` it is the KL summed over the latent axis and averaged over the batch
    (``GaussianKLLoss``'s mean). The per-element KL is :func:`scratchlm.functional
    .gaussian_kl_forward` applied to one latent dimension at a time.

    mu, logvar: ``(B, L)`` -> ``(value: float, cache)``, a :class:`FreeBitsKLCache` whose
    ``kl_per_dim`` holds the per-dimension batch-mean KL ``(L,)`` (float64), i.e. the true KL
    of each dimension.
    """
    mu = float_array(mu, "mu", ndim=2)
    logvar = float_array(logvar, "logvar", ndim=2)
    same_shape_and_dtype(logvar, "logvar", mu, "mu")
    lam = nonnegative(free_bits, "free_bits")
    per, kl_cache = gaussian_kl_forward(mu[..., None], logvar[..., None], "none")        # (B, L)
    kl_dim = per.mean(axis=0, dtype=np.float64)                                         # (L,)
    active = kl_dim >= lam                               # torch.clamp(min=lam): ties pass
    value = float(np.where(active, kl_dim, lam).sum())
    return value, FreeBitsKLCache(kl_cache, kl_dim, active, mu.shape, mu.dtype)


def free_bits_kl_backward(dloss, cache: FreeBitsKLCache):
    r"""From the forward: :math:`\partial\mathcal K/\partial\mu_{bj} = \mu_{bj}/B` and
    :math:`\partial\mathcal K/\partial\lambda_{bj} = (e^{\lambda_{bj}} - 1)/(2B)` for an active
    dimension :math:`j` (batch-mean KL :math:`\ge \lambda_{fb}`), 0 for one below the floor.
    Returns ``(dmu, dlogvar)``."""
    shape, dtype = cache.shape, cache.dtype
    g = scalar(dloss, "dloss") / shape[0]                # from kl_dim = per.mean(axis=0)
    gl = np.broadcast_to((g * cache.active).astype(dtype), shape)                      # (B, L)
    dmu, dlogvar = gaussian_kl_backward(gl, cache.kl)                                  # (B, L, 1)
    return dmu[..., 0], dlogvar[..., 0]
