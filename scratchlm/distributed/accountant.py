r"""The privacy accountant of DP-SGD: Rényi differential privacy (Mironov, 2017) of the sampled
Gaussian mechanism (Mironov, Talwar & Zhang, 2019), composed over the steps and converted to
:math:`(\varepsilon, \delta)`.

One DP-SGD step releases a sum of clipped per-example gradients plus Gaussian noise of standard
deviation :math:`\sigma C`, over a batch in which each example is present with probability
:math:`q` (Poisson sampling). Its RDP of order :math:`\alpha` is :math:`\log A_\alpha /
(\alpha - 1)` with

.. math::

    A_\alpha = \mathbb{E}_{z \sim \mu_0}\Big[\big(\mu(z)/\mu_0(z)\big)^\alpha\Big], \quad
    \mu_0 = \mathcal{N}(0, \sigma^2), \quad \mu = (1 - q)\,\mu_0 + q\,\mathcal{N}(1, \sigma^2).

For an integer :math:`\alpha` the binomial expansion is exact:
:math:`A_\alpha = \sum_{i=0}^{\alpha} \binom{\alpha}{i} q^i (1-q)^{\alpha-i}
e^{(i^2 - i)/(2\sigma^2)}`. For a fractional :math:`\alpha` the integral is split at
:math:`z_0 = \sigma^2 \log(1/q - 1) + 1/2` and each half expanded as a series whose terms carry
:math:`\operatorname{erfc}` factors (Section 3.3 of the 2019 paper); it is summed until the terms
fall below :math:`e^{-30}`. RDP composes by addition over steps. The conversion to
:math:`(\varepsilon, \delta)` is Balle et al. (2020), Theorem 21:

.. math::

    \varepsilon = \min_\alpha \; \mathrm{RDP}(\alpha)
        - \frac{\log \delta + \log \alpha}{\alpha - 1} + \log \frac{\alpha - 1}{\alpha}.

The orders searched are Opacus's (1.1 to 10.9 by 0.1, then 12 to 63), so :func:`epsilon` is
what ``opacus.accountants.RDPAccountant`` reports for the same history (a test compares them).
Everything is in the log domain with the standard library's ``math``.
"""

from __future__ import annotations

import math

__all__ = ["ORDERS", "rdp_sampled_gaussian", "epsilon", "RDPAccountant"]

#: the RDP orders searched for the best conversion (Opacus's defaults)
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def _log_add(a: float, b: float) -> float:
    """log(e^a + e^b)."""
    lo, hi = min(a, b), max(a, b)
    if lo == -math.inf:
        return hi
    return math.log1p(math.exp(lo - hi)) + hi


def _log_sub(a: float, b: float) -> float:
    """log(e^a - e^b), a >= b."""
    if b == -math.inf:
        return a
    if a <= b:
        return -math.inf
    try:
        return math.log(math.expm1(a - b)) + b
    except OverflowError:
        return a


def _log_erfc(x: float) -> float:
    """log(erfc(x)), accurate far into the tail (erfc underflows near x = 27)."""
    if x < 25.0:
        return math.log(math.erfc(x))
    # erfc(x) = e^{-x^2} / (x sqrt(pi)) * (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6) + ...)
    inv = 1.0 / (2.0 * x * x)
    series = 1.0 - inv + 3.0 * inv * inv - 15.0 * inv ** 3 + 105.0 * inv ** 4
    return -x * x - math.log(x) - 0.5 * math.log(math.pi) + math.log(series)


def _binom(alpha: float, i: int) -> float:
    """The generalised binomial coefficient C(alpha, i) = prod_{k<i} (alpha - k) / (k + 1)."""
    c = 1.0
    for k in range(i):
        c *= (alpha - k) / (k + 1)
    return c


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    for i in range(alpha + 1):
        term = (math.log(math.comb(alpha, i)) + i * math.log(q) + (alpha - i) * math.log(1 - q)
                + (i * i - i) / (2 * sigma ** 2))
        log_a = _log_add(log_a, term)
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    below, above = -math.inf, -math.inf          # the integrals over (-inf, z0] and [z0, inf)
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    i = 0
    while True:
        coef = _binom(alpha, i)
        log_coef = math.log(abs(coef))
        j = alpha - i
        t0 = log_coef + i * math.log(q) + j * math.log(1 - q)
        t1 = log_coef + j * math.log(q) + i * math.log(1 - q)
        e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        s0 = t0 + (i * i - i) / (2 * sigma ** 2) + e0
        s1 = t1 + (j * j - j) / (2 * sigma ** 2) + e1
        if coef > 0:
            below, above = _log_add(below, s0), _log_add(above, s1)
        else:
            below, above = _log_sub(below, s0), _log_sub(above, s1)
        i += 1
        if max(s0, s1) < -30:
            return _log_add(below, above)


def rdp_sampled_gaussian(q: float, sigma: float, alpha: float) -> float:
    """The RDP of order ``alpha`` of one step with sampling rate ``q`` and noise multiplier
    ``sigma`` (``math.inf``: no privacy)."""
    if not 0 <= q <= 1:
        raise ValueError(f"q (the sampling rate) must be in [0, 1], got {q}")
    if sigma < 0:
        raise ValueError(f"sigma (the noise multiplier) must be >= 0, got {sigma}")
    if q == 0:
        return 0.0
    if sigma == 0 or math.isinf(alpha):
        return math.inf
    if q == 1:
        return alpha / (2 * sigma ** 2)
    log_a = (_log_a_int(q, sigma, int(alpha)) if float(alpha).is_integer()
             else _log_a_frac(q, sigma, alpha))
    return log_a / (alpha - 1)


def epsilon(history, delta: float, orders=ORDERS) -> tuple:
    """``(epsilon, best order)`` after the steps of ``history``, a list of ``(q, sigma,
    steps)``, for ``delta`` in (0, 1)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    best = (math.inf, math.nan)
    for alpha in orders:
        rdp = sum(n * rdp_sampled_gaussian(q, s, alpha) for q, s, n in history)
        if math.isinf(rdp):
            continue
        eps = (rdp - (math.log(delta) + math.log(alpha)) / (alpha - 1)
               + math.log((alpha - 1) / alpha))
        if eps < best[0]:
            best = (eps, alpha)
    return best


class RDPAccountant:
    """Counts DP-SGD's steps (``step(q, sigma)``) and reports :meth:`epsilon`; its state is
    the history, for checkpoints."""

    def __init__(self, history=None):
        self.history = [list(h) for h in (history or [])]

    def step(self, q: float, sigma: float, steps: int = 1) -> None:
        if self.history and self.history[-1][:2] == [q, sigma]:
            self.history[-1][2] += steps
        else:
            self.history.append([q, sigma, steps])

    def epsilon(self, delta: float) -> float:
        return epsilon(self.history, delta)[0]

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history]}
