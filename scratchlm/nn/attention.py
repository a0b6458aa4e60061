"""``MultiheadAttention`` (torch.nn.MultiheadAttention's interface) and positional encodings."""

import math

import numpy as np

from .. import functional as F
from .._checks import boolean, float_array, make_rng, positive_int, probability, resolve_dtype, same_dtype
from .._per_example import accumulate_sample, linear_samples, per_example_active
from .linear import Linear
from .module import Module, Parameter


class MultiheadAttention(Module):
    r"""Multi-head attention (Vaswani et al., 2017, §3.2.2):
    :math:`\mathrm{MHA}(Q,K,V) = [\mathrm{head}_1; \dots; \mathrm{head}_h] W^O` with
    :math:`\mathrm{head}_i = \mathrm{Attention}(Q W^Q_i, K W^K_i, V W^V_i)`.

    torch's names, shapes and initialisation: ``in_proj_weight`` ``(3E, E)`` (q, k, v stacked;
    Xavier-uniform), ``in_proj_bias`` ``(3E,)`` (zeros), ``out_proj.weight``/``bias``
    (``Linear(E, E)``, bias zeros).

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False) -> (attn_output, attn_weights)`` with torch's
    conventions: inputs ``(L, N, E)`` (``(N, L, E)`` with ``batch_first=True``);
    ``key_padding_mask`` ``(N, S)`` bool, True = padding (ignored), or float added to the
    scores; ``attn_mask`` ``(L, S)`` or ``(N*num_heads, L, S)``, bool True = *not* allowed, or
    float added to the scores (integer masks are refused, as torch does);
    ``attn_weights`` ``(N, L, S)`` averaged over heads (``(N, H, L, S)`` otherwise) or None.

    ``backward(d_output, d_weights=None)`` returns ``(dquery, dkey, dvalue)``; for
    self-attention (one tensor passed three times) add them.

    The constructor takes torch's arguments in torch's order, so a positional call means what it
    means in torch: ``add_bias_kv``, ``add_zero_attn`` (only ``False``) and ``kdim``, ``vdim``
    (only ``None`` or ``embed_dim``: keys and values of the query's width) are not implemented
    and refused otherwise; then ``dtype`` and ``rng``.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False,
                 dtype=np.float32, rng=None):
        super().__init__()
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.head_dim = self.embed_dim // self.num_heads
        for name, value in (("add_bias_kv", add_bias_kv), ("add_zero_attn", add_zero_attn)):
            if boolean(value, name):
                raise ValueError(f"{name}=True is not implemented (only False), got {value}")
        for name, value in (("kdim", kdim), ("vdim", vdim)):
            if value is not None and positive_int(value, name) != self.embed_dim:
                raise ValueError(f"{name} must be None or embed_dim ({self.embed_dim}): keys and "
                                 f"values of another width are not implemented, got {value}")
        self.dropout = probability(dropout, "dropout", allow_one=False)
        self.batch_first = boolean(batch_first, "batch_first")
        self.dtype = resolve_dtype(dtype)
        self.rng = make_rng(rng)
        E = self.embed_dim
        bound = math.sqrt(6.0 / (E + 3 * E))                         # xavier_uniform on (3E, E)
        self.in_proj_weight = Parameter(self.rng.uniform(-bound, bound, (3 * E, E)).astype(self.dtype))
        self.in_proj_bias = Parameter(np.zeros(3 * E, self.dtype)) if boolean(bias, "bias") else None
        self.out_proj = Linear(E, E, bias=bias, dtype=self.dtype, rng=self.rng)
        if bias:
            self.out_proj.bias.data[...] = 0

    def _mask(self, attn_mask, key_padding_mask, N, L, S):
        """torch's two masks -> one additive float mask (N, H, L, S), or None."""
        H = self.num_heads
        add = None
        if attn_mask is not None:
            m = _bool_or_float_mask(attn_mask, "attn_mask")
            if m.shape not in ((L, S), (N * H, L, S)):
                raise ValueError(f"attn_mask must have shape ({L}, {S}) or ({N * H}, {L}, {S}), got {m.shape}")
            m = np.where(m, -np.inf, 0.0) if m.dtype == bool else m.astype(np.float64)
            add = m.reshape(N, H, L, S) if m.ndim == 3 else np.broadcast_to(m, (N, H, L, S))
        if key_padding_mask is not None:
            kp = _bool_or_float_mask(key_padding_mask, "key_padding_mask")
            if kp.shape != (N, S):
                raise ValueError(f"key_padding_mask must have shape ({N}, {S}) (batch, source "
                                 f"length), got {kp.shape}")
            kp = np.where(kp, -np.inf, 0.0) if kp.dtype == bool else kp.astype(np.float64)
            pad = kp[:, None, None, :]                                        # (N, 1, 1, S)
            add = pad if add is None else add + pad
        return None if add is None else np.broadcast_to(add, (N, H, L, S)).astype(self.dtype)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        need_weights = boolean(need_weights, "need_weights")
        average_attn_weights = boolean(average_attn_weights, "average_attn_weights")
        is_causal = boolean(is_causal, "is_causal")
        q_in = float_array(query, "query", ndim=3)
        k_in = float_array(key, "key", ndim=3)
        v_in = float_array(value, "value", ndim=3)
        for name, t in (("query", q_in), ("key", k_in), ("value", v_in)):
            same_dtype(t, name, self.dtype, "MultiheadAttention")
            if t.shape[-1] != self.embed_dim:
                raise ValueError(f"{name} must have last dimension {self.embed_dim} (embed_dim), got {t.shape}")
        if not self.batch_first:                                               # (L, N, E) -> (N, L, E)
            q_in, k_in, v_in = (np.swapaxes(t, 0, 1) for t in (q_in, k_in, v_in))
        N, L, E = q_in.shape
        S = k_in.shape[1]
        if k_in.shape[0] != N or v_in.shape[:2] != (N, S):
            raise ValueError(f"key and value must be ({S}, {N}, {E}) like each other and share the "
                             f"batch of query, got key {key.shape}, value {value.shape}")
        H, Dh = self.num_heads, self.head_dim
        W = self.in_proj_weight.data
        b = [None] * 3 if self.in_proj_bias is None else np.split(self.in_proj_bias.data, 3)
        projected, lin_caches = [], []
        for i, t in enumerate((q_in, k_in, v_in)):
            y, c = F.linear_forward(t, W[i * E:(i + 1) * E], b[i])               # (N, T, E)
            projected.append(y.reshape(N, -1, H, Dh).transpose(0, 2, 1, 3))     # (N, H, T, Dh)
            lin_caches.append(c)
        mask = self._mask(attn_mask, key_padding_mask, N, L, S)
        ctx, att = F.attention_forward(*projected, attn_mask=mask, is_causal=is_causal,
                                       dropout_p=self.dropout, training=self.training, rng=self.rng,
                                       method="dense" if need_weights else "auto")  # the weights
        merged = ctx.transpose(0, 2, 1, 3).reshape(N, L, E)                     # (N, L, E)
        out = self.out_proj(merged)
        self._cache = (lin_caches, att, need_weights, average_attn_weights)
        if not self.batch_first:
            out = np.swapaxes(out, 0, 1)                                        # (L, N, E)
        if not need_weights:
            return out, None
        w = att.weights                                                         # (N, H, L, S)
        return out, (w.mean(axis=1) if average_attn_weights else w)

    def backward(self, d_output, d_weights=None):
        lin_caches, att, need_weights, average = self._saved()
        dout = d_output if self.batch_first else np.swapaxes(d_output, 0, 1)    # (N, L, E)
        N, H = att.q.shape[:2]
        dmerged = self.out_proj.backward(np.ascontiguousarray(dout))             # (N, L, E)
        L, E, Dh = dmerged.shape[1], self.embed_dim, self.head_dim
        dctx = dmerged.reshape(N, L, H, Dh).transpose(0, 2, 1, 3)               # (N, H, L, Dh)
        dw = None
        if d_weights is not None and need_weights:
            dw = np.broadcast_to(d_weights[:, None] / H, att.weights.shape) if average else d_weights
            dw = np.ascontiguousarray(dw, dtype=att.weights.dtype)
        grads = F.attention_backward(np.ascontiguousarray(dctx), att, dweights=dw)[:3]
        dinputs, dW, db, samples = [], [], [], []
        for g, c in zip(grads, lin_caches):
            dy = np.ascontiguousarray(g.transpose(0, 2, 1, 3).reshape(N, -1, E))   # (N, T, E)
            dx, dwi, dbi = F.linear_backward(dy, c)
            dinputs.append(dx if self.batch_first else np.swapaxes(dx, 0, 1))
            dW.append(dwi)
            db.append(dbi)
            if per_example_active():                   # DP-SGD: each example's q/k/v rows
                samples.append(linear_samples(c.x, dy))
        if self.in_proj_weight.requires_grad:
            self.in_proj_weight.grad += np.concatenate(dW)
        if self.in_proj_bias is not None and self.in_proj_bias.requires_grad:
            self.in_proj_bias.grad += np.concatenate(db)
        if samples:                                    # (N, 3E, E) and (N, 3E): q, k, v stacked
            accumulate_sample(self.in_proj_weight, np.concatenate([w for w, _ in samples], 1))
            if self.in_proj_bias is not None:
                accumulate_sample(self.in_proj_bias, np.concatenate([b for _, b in samples], 1))
        return tuple(dinputs)

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


def _bool_or_float_mask(mask, name):
    """torch's mask types: bool or float (integer masks are refused, as torch refuses them --
    an integer 0/1 mask added to the scores would mask nothing)."""
    if not isinstance(mask, (np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a bool or float numpy array, got {type(mask).__name__}")
    m = np.asarray(mask)
    if m.dtype != bool and m.dtype.kind != "f":
        raise TypeError(f"{name} must be bool (True = masked out) or float (added to the "
                        f"scores), got {m.dtype}: integer masks are refused, as torch does")
    if m.dtype.kind == "f" and np.isnan(m).any():
        raise ValueError(f"{name} must not contain NaN")
    return m


def sinusoidal_table(max_len, d_model, dtype=np.float32):
    r"""Vaswani et al. (2017, §3.5): :math:`PE_{p, 2i} = \sin(p / 10000^{2i/d})`,
    :math:`PE_{p, 2i+1} = \cos(p / 10000^{2i/d})` -> ``(max_len, d_model)``."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]                        # (P, 1)
    inv = 10000.0 ** (-np.arange(0, d_model, 2, dtype=np.float64) / d_model)   # (ceil(d/2),)
    table = np.zeros((max_len, d_model))
    table[:, 0::2] = np.sin(pos * inv)
    table[:, 1::2] = np.cos(pos * inv[: d_model // 2])
    return table.astype(dtype)


class SinusoidalPositionalEncoding(Module):
    r"""Adds the fixed sinusoidal table to ``x`` ``(N, T, d_model)``: ``y = x + PE[:T]``
    (a buffer, not trained). ``backward`` passes the gradient through unchanged."""

    def __init__(self, d_model, max_len=5000, dtype=np.float32):
        super().__init__()
        self.d_model = positive_int(d_model, "d_model")
        self.max_len = positive_int(max_len, "max_len")
        self.register_buffer("pe", sinusoidal_table(self.max_len, self.d_model, resolve_dtype(dtype)))

    def forward(self, x, offset=0):
        x = float_array(x, "x", min_ndim=2)
        offset = positive_int(offset, "offset", minimum=0)
        T = x.shape[-2]
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must have last dimension {self.d_model} (d_model), got {x.shape}")
        if offset + T > self.max_len:
            raise ValueError(f"sequence length {offset + T} exceeds max_len {self.max_len}")
        same_dtype(x, "x", self.pe.dtype, "SinusoidalPositionalEncoding")
        self._cache = (x.shape, x.dtype)
        return x + self.pe[offset:offset + T]

    def backward(self, dy):
        from .._checks import upstream
        shape, dtype = self._saved()
        return upstream(dy, shape, dtype)
