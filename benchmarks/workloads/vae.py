"""W8: one training step (forward, backward, Adam) of a 784-512-32 VAE on a batch of 128
binarized digit images, float32, against the same model in PyTorch CPU.

scratchlm runs :class:`scratchlm.models.VAE` (Bernoulli likelihood, BCE-with-logits summed over
pixels + analytic KL, per example averaged over the batch; ``eps`` from its own generator);
torch the PyTorch example's layout (``fc1``, ``fc21``, ``fc22``, ``fc3``, ``fc4``) with the same
weights, the same loss (``binary_cross_entropy_with_logits``, ``clamp`` of the log-variance,
``randn_like`` noise) and ``torch.optim.Adam``. :func:`torch_vae` and :func:`torch_vae_loss` are
also the reference of the parity tests.
"""

from __future__ import annotations

import math

import numpy as np

from .base import TORCH, Workload


def torch_vae(torch, ours):
    """The VAE in torch.nn with our weights (same names), in our dtype. ``forward(x, eps)``
    returns ``(out, mu, logvar)`` as ours does."""
    tnn = torch.nn
    c = ours.config

    class Ref(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = tnn.Linear(c.input_dim, c.hidden_dim)
            self.fc21 = tnn.Linear(c.hidden_dim, c.latent_dim)
            self.fc22 = tnn.Linear(c.hidden_dim, c.latent_dim)
            self.fc3 = tnn.Linear(c.latent_dim, c.hidden_dim)
            self.fc4 = tnn.Linear(c.hidden_dim, c.input_dim)

        def forward(self, x, eps=None):
            h = torch.relu(self.fc1(x))
            mu, logvar = self.fc21(h), self.fc22(h).clamp(c.logvar_min, c.logvar_max)
            eps = torch.randn_like(mu) if eps is None else eps
            z = mu + torch.exp(0.5 * logvar) * eps
            return self.fc4(torch.relu(self.fc3(z))), mu, logvar

    ref = Ref().to(torch.float64 if ours.dtype == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    return ref


def torch_vae_loss(torch, out, mu, logvar, x, likelihood="bernoulli", kl_weight=1.0, free_bits=0.0):
    """The training loss in torch: reconstruction (BCE-with-logits summed, or the unit-variance
    Gaussian NLL with its constant) + kl_weight * free-bits KL, per example averaged."""
    B = x.shape[0]
    if likelihood == "bernoulli":
        rec = torch.nn.functional.binary_cross_entropy_with_logits(out, x, reduction="sum") / B
    else:
        rec = torch.nn.functional.gaussian_nll_loss(out, x, torch.ones_like(out), full=True,
                                                    reduction="sum") / B
    kl_dim = (-0.5 * (1 + logvar - mu * mu - logvar.exp())).mean(dim=0)        # (L,)
    kl = kl_dim.clamp(min=free_bits).sum() if free_bits else kl_dim.sum()
    return rec + kl_weight * kl


class VAETrainStep(Workload):
    """W8."""

    name = "vae_train_step"
    label = "W8"
    targets = {"scratchlm-numba": 0.8}

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.B, self.D, self.H, self.L = (128, 784, 512, 32) if not quick else (16, 64, 32, 8)
        B, D, H, L = self.B, self.D, self.H, self.L
        # forward: fc1 + fc21 + fc22 + fc3 + fc4; backward: the weight gradients of all five and
        # the input gradients of all but fc1 (x is data; torch skips it too)
        fwd = 2 * B * (D * H + 2 * H * L + L * H + H * D)
        self.flops = fwd + fwd + (fwd - 2 * B * D * H)
        self.params = {"batch": B, "input": D, "hidden": H, "latent": L, "likelihood": "bernoulli"}
        self.description = (
            f"one training step (forward, backward, Adam) of VAE({D}, {H}, {L}), Bernoulli "
            f"likelihood, on {B} binarized {int(math.isqrt(D))}x{int(math.isqrt(D))} digit images, "
            f"float32; torch: the PyTorch example's layout with the same weights and loss "
            f"(BCE-with-logits + analytic KL, clamped log-variance), torch.optim.Adam.")

    def setup(self, impl):
        self.check_impl(impl)
        from scratchlm.data import binarize, digit_images
        from scratchlm.models.vae import VAE
        size = int(math.isqrt(self.D))
        x = binarize(digit_images(self.B, seed=0, size=max(size, 8)).images).reshape(self.B, -1)
        x = np.ascontiguousarray(x[:, :self.D])
        ours = VAE(self.D, self.H, self.L, rng=0)
        if impl == TORCH:
            torch = self.require_torch()
            model = torch_vae(torch, ours)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            tx = torch.from_numpy(x)
            return self.torch_train_step(opt, lambda: torch_vae_loss(torch, *model(tx), tx))
        from scratchlm.optim import Adam
        opt = Adam(ours.parameters(), lr=1e-3)
        return self.train_step(impl, opt, lambda: ours.loss(x), ours.backward)
