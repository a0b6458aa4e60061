"""W5-W7: convolution. W5 one Conv2d forward + backward; W6 a training step of the CNN
(SGD + momentum); W7 a training step of the causal dilated ConvLM (Adam). float32, against
PyTorch CPU (which runs its convolutions through oneDNN) with the same shapes and weights."""

from __future__ import annotations

import numpy as np

from .base import BLAS_ONLY, DEFAULT_IMPLS, TORCH, Workload


def blas_only_im2col(rng, samples, out_channels, rows, cols, extra=()):
    """The matmuls of scratchlm's im2col convolution, forward + backward, with nothing else: for
    each of ``samples`` (sample, layer) pairs, ``y = W @ cols``, ``dW = dy @ cols.T`` and
    ``dcols = W.T @ dy`` with ``W`` ``(out_channels, rows)`` and ``cols`` ``(rows, cols)``, on
    ready-made float32 operands written into preallocated outputs; then each ``(a, b)`` pair of
    ``extra`` as ``a @ b``. No im2col, col2im, copies, checks or elementwise work: the floor that
    this BLAS puts under the step. The shapes are scratchlm's at the full sizes, where each
    im2col chunk holds one sample (with ``--quick`` it batches several samples per product)."""
    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    w, c, dy = f32(out_channels, rows), f32(rows, cols), f32(out_channels, cols)
    y, dw, dc = np.empty_like(dy), np.empty_like(w), np.empty_like(c)
    extra = [(f32(*a), f32(*b)) for a, b in extra]

    def step():
        for _ in range(samples):
            np.matmul(w, c, out=y)
            np.matmul(dy, c.T, out=dw)
            np.matmul(w.T, dy, out=dc)
        for a, b in extra:
            a @ b
    return step


def torch_convlm(torch, ours):
    """The ConvLM in torch.nn: the same parameter names, explicit left padding."""
    tnn, tF = torch.nn, torch.nn.functional
    c = ours.config

    class Ref(tnn.Module):
        def __init__(self):
            super().__init__()
            self.embed = tnn.Embedding(c.vocab_size, c.channels)
            self.blocks = tnn.ModuleList([tnn.ModuleDict({"conv": tnn.Conv1d(c.channels, c.channels,
                                                                              c.kernel_size, dilation=d)})
                                          for d in c.dilations])
            self.head = tnn.Linear(c.channels, c.vocab_size)

        def forward(self, idx):
            x = self.embed(idx).transpose(1, 2)
            for b, d in zip(self.blocks, c.dilations):
                x = x + torch.relu(b["conv"](tF.pad(x, ((c.kernel_size - 1) * d, 0))))
            return self.head(x.transpose(1, 2))

    ref = Ref().to(torch.float64 if ours.dtype == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    return ref


def torch_cnn(torch, ours):
    """The CNN in torch.nn (same parameter names: ``features.0.weight`` ... ``fc.bias``), in the
    model's dtype, with its weights."""
    c = ours.config
    layers, cin = [], c.in_channels
    for cout in c.channels:
        layers += [torch.nn.Conv2d(cin, cout, c.kernel_size, padding=c.kernel_size // 2),
                   torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        cin = cout

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(*layers)
            self.flatten = torch.nn.Flatten()
            self.fc = torch.nn.Linear(c.fc_features, c.num_classes)

        def forward(self, x):
            return self.fc(self.flatten(self.features(x)))

    net = Net().to(torch.float64 if ours.dtype == np.float64 else torch.float32)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    return net


class Conv2dStep(Workload):
    """W5."""

    name = "conv2d_fwd_bwd"
    label = "W5"
    targets = {"scratchlm-numba": 1.2}
    impls = DEFAULT_IMPLS + (BLAS_ONLY,)

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.N, self.C, self.H, self.O, self.k = (32, 16, 32, 32, 3) if not quick else (4, 4, 16, 8, 3)
        N, C, H, O, k = self.N, self.C, self.H, self.O, self.k
        self.flops = 3 * 2 * N * O * H * H * C * k * k            # forward, dx, dW: one conv each
        self.params = {"input": [N, C, H, H], "out_channels": O, "kernel": k, "padding": 1}
        self.description = (
            f"Conv2d({C}, {O}, {k}, padding=1) on input ({N}, {C}, {H}, {H}): forward, then backward of "
            f"a fixed upstream gradient (input, weight and bias grads); scratchlm's default method "
            f"('auto'); torch: nn.Conv2d (oneDNN), autograd; {BLAS_ONLY}: the im2col method's "
            f"three matmuls per sample ((O, C*k*k) @ (C*k*k, H*W) and its two gradients) alone.")

    def setup(self, impl):
        self.check_impl(impl)
        from scratchlm import nn
        rng = np.random.default_rng(0)
        if impl == BLAS_ONLY:
            return blas_only_im2col(rng, self.N, self.O, self.C * self.k * self.k, self.H * self.H)
        x = rng.standard_normal((self.N, self.C, self.H, self.H)).astype(np.float32)
        ours = nn.Conv2d(self.C, self.O, self.k, padding=1, rng=0)
        dy = rng.standard_normal((self.N, self.O, self.H, self.H)).astype(np.float32)
        if impl == TORCH:
            torch = self.require_torch()
            conv = torch.nn.Conv2d(self.C, self.O, self.k, padding=1)
            conv.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
            tx = torch.from_numpy(x).requires_grad_(True)
            tdy = torch.from_numpy(dy)

            def step():
                conv.zero_grad(set_to_none=True)
                tx.grad = None
                conv(tx).backward(tdy)
            return step

        def fn():
            ours.zero_grad()
            ours(x)
            ours.backward(dy)
        return self.scratchlm_step(impl, fn)


class CNNTrainStep(Workload):
    """W6."""

    name = "cnn_train_step"
    label = "W6"
    targets = {"scratchlm-numba": 1.2}

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.N, self.S = (64, 28) if not quick else (8, 12)
        self.channels = (16, 32)
        N, S = self.N, self.S
        # conv1 (1 -> 16) at S x S, conv2 (16 -> 32) at S/2 x S/2, 3x3; forward, dx (not for the
        # input layer), dW; plus the fc layer
        f1 = 2 * N * 16 * S * S * 9
        f2 = 2 * N * 32 * (S // 2) ** 2 * 16 * 9
        ffc = 2 * N * 32 * (S // 4) ** 2 * 10
        self.flops = 2 * f1 + 3 * f2 + 3 * ffc
        self.params = {"batch": N, "image": [1, S, S], "channels": list(self.channels), "classes": 10}
        self.description = (
            f"one training step (forward, backward, SGD with momentum 0.9) of the CNN conv(1->16, 3x3, "
            f"pad 1) -> ReLU -> maxpool 2 -> conv(16->32) -> ReLU -> maxpool 2 -> Linear(->10) -> "
            f"cross-entropy on ({N}, 1, {S}, {S}) images, float32; torch: the same nn modules and "
            f"weights (oneDNN convolutions), torch.optim.SGD.")

    def setup(self, impl):
        self.check_impl(impl)
        from scratchlm import registry
        from scratchlm.models import CNNConfig
        rng = np.random.default_rng(0)
        x = rng.random((self.N, 1, self.S, self.S), dtype=np.float32)
        y = rng.integers(0, 10, self.N)
        ours = registry.get("cnn").build(CNNConfig(channels=self.channels, image_size=self.S), rng=0)
        if impl == TORCH:
            torch = self.require_torch()
            model = torch_cnn(torch, ours)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            return self.torch_train_step(opt, lambda: torch.nn.functional.cross_entropy(model(tx), ty))
        from scratchlm.optim import SGD
        opt = SGD(ours.parameters(), lr=0.01, momentum=0.9)
        return self.train_step(impl, opt, lambda: ours(x, y), ours.backward)


class ConvLMTrainStep(Workload):
    """W7."""

    name = "convlm_train_step"
    label = "W7"
    targets = {"scratchlm-numba": 1.0}
    impls = DEFAULT_IMPLS + (BLAS_ONLY,)

    def __init__(self, quick: bool = False):
        super().__init__(quick)
        self.B, self.T, self.C, self.k, self.V = (16, 256, 128, 5, 256) if not quick else (4, 64, 32, 5, 64)
        self.dilations = (1, 2, 4, 8)
        B, T, C, k, V = self.B, self.T, self.C, self.k, self.V
        self.flops = 3 * 2 * B * T * (len(self.dilations) * C * C * k + C * V)
        self.params = {"batch": B, "steps": T, "channels": C, "kernel": k, "dilations": list(self.dilations),
                       "vocab": V}
        self.description = (
            f"one training step (forward, backward, Adam) of ConvLM(vocab {V}, {C} channels, kernel {k}, "
            f"dilations {list(self.dilations)}) on batch {B} x {T} tokens, float32; torch: the same "
            f"embedding -> 4 residual ReLU(causal Conv1d) blocks (left padding (k-1)d) -> Linear, same "
            f"weights, torch.optim.Adam; {BLAS_ONLY}: the step's matmuls alone (per sample and "
            f"layer ({C}, {C * k}) @ ({C * k}, {T}) and its two gradients; the head's three).")

    def setup(self, impl):
        self.check_impl(impl)
        from scratchlm import registry
        from scratchlm.models import ConvLMConfig
        rng = np.random.default_rng(0)
        if impl == BLAS_ONLY:
            BT, C, V = self.B * self.T, self.C, self.V
            head = [((BT, C), (C, V)), ((V, BT), (BT, C)), ((BT, V), (V, C))]  # y, dW, dx
            return blas_only_im2col(rng, self.B * len(self.dilations), C, C * self.k, self.T, head)
        x = rng.integers(0, self.V, (self.B, self.T))
        y = rng.integers(0, self.V, (self.B, self.T))
        ours = registry.get("convlm").build(ConvLMConfig(self.V, self.C, self.k, list(self.dilations)),
                                            rng=0)
        if impl == TORCH:
            torch = self.require_torch()
            model = torch_convlm(torch, ours)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            return self.torch_train_step(opt, lambda: torch.nn.functional.cross_entropy(
                model(tx).reshape(-1, self.V), ty.reshape(-1)))
        from scratchlm.optim import Adam
        opt = Adam(ours.parameters(), lr=1e-4)
        return self.train_step(impl, opt, lambda: ours(x, y), ours.backward)
