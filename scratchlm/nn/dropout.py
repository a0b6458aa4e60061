"""``Dropout`` and ``Flatten``: the shape- and mask-only layers."""


from .. import functional as F
from .._checks import dim_index, float_array, integer, make_rng, probability, upstream
from .module import Module


class Dropout(Module):
    r"""Inverted dropout: in training, zero each element with probability ``p`` and scale the
    survivors by :math:`1/(1-p)`; identity in ``eval()`` mode.

    The mask comes from this layer's own ``np.random.Generator`` (``rng``: a Generator or int
    seed), so a seeded model is reproducible and a checkpoint can carry the state.
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        self.p = probability(p, "p")
        self.rng = make_rng(rng)

    def forward(self, x):
        y, self._cache = F.dropout_forward(x, self.p, self.training, self.rng)
        return y

    def backward(self, dy):
        return F.dropout_backward(dy, self._saved())

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    """Flatten axes ``start_dim`` .. ``end_dim`` into one (torch.nn.Flatten; default keeps the batch
    axis): ``(N, C, H, W) -> (N, C*H*W)``."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = integer(start_dim, "start_dim"), integer(end_dim, "end_dim")

    def forward(self, x):
        x = float_array(x, "x")
        nd = x.ndim
        s = dim_index(self.start_dim, nd, "start_dim")           # negative from the end, as torch
        e = dim_index(self.end_dim, nd, "end_dim")
        if s > e:
            raise ValueError(f"cannot flatten dims {self.start_dim}..{self.end_dim} of shape "
                             f"{x.shape}: start_dim comes after end_dim")
        y = x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])    # (..., a, b, ...) -> (..., a*b, ...)
        self._cache = (x.shape, y.shape, x.dtype)
        return y

    def backward(self, dy):
        x_shape, y_shape, dtype = self._saved()
        return upstream(dy, y_shape, dtype).reshape(x_shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
