"""W2-W4: one training step of a recurrent LM, embedding -> LSTM | GRU | tanh RNN -> linear ->
cross-entropy, forward + backward + Adam, float32, against ``torch.nn.LSTM`` / ``GRU`` / ``RNN``.

scratchlm runs :class:`scratchlm.models.RNNLM` (the same layers, PyTorch's names); torch the same
architecture from ``torch.nn`` with the same weights.
"""

from __future__ import annotations

import numpy as np

from .base import TORCH, Workload


class _RecurrentTrainStep(Workload):
    cell = "lstm"
    gates = 4

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.B, self.T, self.E, self.H, self.V = (32, 64, 128, 512, 256) if not quick else (8, 16, 32, 64, 64)
        B, T, E, H, V, G = self.B, self.T, self.E, self.H, self.V, self.gates
        # matmul flops: forward x W_ih^T + h W_hh^T per step + the decoder; backward twice that
        self.flops = 3 * 2 * B * T * (G * H * (E + H) + H * V)
        self.params = {"batch": B, "steps": T, "embed": E, "hidden": H, "vocab": V, "cell": self.cell}
        self.description = (
            f"one training step (forward, backward, Adam) of embedding({V}, {E}) -> {self.cell.upper()}"
            f"({E}, {H}) -> Linear({H}, {V}) -> cross-entropy on batch {B} x {T} steps, float32; "
            f"torch: the same nn modules and weights, torch.nn.{ {'lstm': 'LSTM', 'gru': 'GRU', 'rnn': 'RNN'}[self.cell]}, "
            f"torch.optim.Adam; flops: the matmuls (3x the forward's).")

    def setup(self, impl):
        self.check_impl(impl)
        from scratchlm import registry
        from scratchlm.models import RNNLMConfig
        rng = np.random.default_rng(0)
        x = rng.integers(0, self.V, (self.B, self.T))
        y = rng.integers(0, self.V, (self.B, self.T))
        ours = registry.get(self.cell).build(RNNLMConfig(self.V, self.E, self.H, self.cell), rng=0)
        if impl == TORCH:
            torch = self.require_torch()
            tnn = torch.nn

            class Ref(tnn.Module):
                def __init__(self, cell):
                    super().__init__()
                    self.encoder = tnn.Embedding(ours.config.vocab_size, ours.config.embed_dim)
                    self.rnn = {"lstm": tnn.LSTM, "gru": tnn.GRU, "rnn": tnn.RNN}[cell](
                        ours.config.embed_dim, ours.config.hidden_size, batch_first=True)
                    self.decoder = tnn.Linear(ours.config.hidden_size, ours.config.vocab_size)

                def forward(self, idx):
                    return self.decoder(self.rnn(self.encoder(idx))[0])

            model = Ref(self.cell)
            model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            return self.torch_train_step(opt, lambda: torch.nn.functional.cross_entropy(
                model(tx).reshape(-1, self.V), ty.reshape(-1)))
        from scratchlm.optim import Adam
        opt = Adam(ours.parameters(), lr=1e-4)
        return self.train_step(impl, opt, lambda: ours(x, y), ours.backward)


class LSTMTrainStep(_RecurrentTrainStep):
    """W2."""
    name = "lstm_train_step"
    label = "W2"
    targets = {"scratchlm-numba": 1.0}
    cell, gates = "lstm", 4


class GRUTrainStep(_RecurrentTrainStep):
    """W3."""
    name = "gru_train_step"
    label = "W3"
    targets = {"scratchlm-numba": 0.9}
    cell, gates = "gru", 3


class RNNTrainStep(_RecurrentTrainStep):
    """W4."""
    name = "rnn_train_step"
    label = "W4"
    targets = {"scratchlm-numba": 0.9}
    cell, gates = "rnn", 1
