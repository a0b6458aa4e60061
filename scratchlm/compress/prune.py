r"""Pruning: zero a fraction of each ``Linear``'s weights and keep them zero while the model
trains on.

Which weights go is decided by a score and a comparison group:

* **magnitude**: :math:`S_{ij} = |W_{ij}|`;
* **Wanda** (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language
  Models"): :math:`S_{ij} = |W_{ij}|\,\lVert X_j \rVert_2`, where :math:`\lVert X_j\rVert_2` is
  the norm of input feature :math:`j` over calibration tokens -- a small weight on a large
  activation matters as much as a large weight on a small one;

and the lowest scores are removed within each **row** (one output's inputs: Wanda's group),
each **layer**, or **globally** across all the layers pruned. The **2:4** pattern (NVIDIA's
semi-structured sparsity) keeps the 2 best of every 4 consecutive inputs of a row: exactly 50%.

A pruned layer is a :class:`MaskedLinear`: a ``Linear`` with a ``weight_mask`` buffer (1 kept,
0 pruned). Its forward multiplies by the mask and its backward masks the weight's gradient,

.. math::  y = x (W \odot M)^\top + b,\qquad dW = (dy^\top x) \odot M,\qquad
           dx = dy\,(W \odot M),

so the pruned entries get no gradient and no update (AdamW's decay of a zero is zero): the
model fine-tunes with the one training loop and stays pruned. ``state_dict()`` holds ``weight``
(zeros where pruned) and ``weight_mask``, as torch's pruning does (torch also keeps the
unpruned ``weight_orig``; here the pruned values are gone).
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import nn
from .._checks import same_dtype
from ..nn.module import Module

__all__ = ["MaskedLinear", "prune", "pruned_layers", "input_norms", "sparsity_of",
           "CRITERIA", "PATTERNS", "SCOPES", "prune_structured", "shrink", "structure_of"]

CRITERIA = ("magnitude", "wanda")
PATTERNS = ("unstructured", "2:4")
SCOPES = ("row", "layer", "global")


class MaskedLinear(nn.Linear):
    """A pruned ``Linear``: the same ``weight`` and ``bias`` parameters (shared with the layer
    it was made from) and a ``weight_mask`` buffer ``(out, in)`` in the weight's dtype."""

    def __init__(self, layer: nn.Linear, mask):
        Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.dtype = layer.weight.dtype
        self.weight, self.bias = layer.weight, layer.bias
        mask = np.asarray(mask)
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask must have the weight's shape {self.weight.shape}, got "
                             f"{mask.shape}")
        self.register_buffer("weight_mask", (mask != 0).astype(self.dtype))
        self.weight.data *= self.weight_mask

    def _masked(self):
        return self.weight.data * self.weight_mask                            # (out, in)

    def forward(self, x):
        x = np.asarray(x) if isinstance(x, list) else x
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            same_dtype(x, "x", self.weight.dtype, "MaskedLinear")
        y, self._cache = F.linear_forward(x, self._masked(),
                                          None if self.bias is None else self.bias.data)
        return y

    def inference(self, x):
        return F.linear_forward(x, self._masked(),
                                None if self.bias is None else self.bias.data)[0]

    def backward(self, dy):
        w, b = self.weight, self.bias
        dx, dw, db = F.linear_backward(dy, self._saved(), needs_input_grad=(
            True, w.requires_grad, b is not None and b.requires_grad))
        if w.requires_grad:
            w.grad += dw * self.weight_mask        # from y = x (W * M)^T: pruned entries get 0
        if b is not None and b.requires_grad:
            b.grad += db
        return dx

    def sparsity(self) -> float:
        """The fraction of the weight that is pruned."""
        return 1.0 - float(self.weight_mask.mean())


def pruned_layers(model) -> dict:
    """``{module name: MaskedLinear}`` of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear)}


def sparsity_of(model) -> float:
    """The fraction of the weights of ``model``'s pruned layers that are zero by their masks."""
    layers = pruned_layers(model).values()
    total = sum(m.weight_mask.size for m in layers)
    return 0.0 if not total else 1.0 - sum(float(m.weight_mask.sum()) for m in layers) / total


def _candidates(model, skip):
    holders = {}
    for _, mod in model.named_modules():
        for p in mod._parameters.values():
            holders[id(p)] = holders.get(id(p), 0) + 1
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and holders.get(id(m.weight), 0) == 1
            and not any(n == s or n.endswith("." + s) for s in skip)}


def input_norms(model, layers: dict, calibration) -> dict:
    """``{name: (in,) float64}``: each layer's input-feature norms
    :math:`\\lVert X_j \\rVert_2` over every token of ``calibration`` (a list of ``(B, T)`` id
    batches, or one), the model in evaluation mode."""
    batches = [calibration] if isinstance(calibration, np.ndarray) else list(calibration)
    if not batches:
        raise ValueError("calibration must hold at least one batch of token ids")
    sums = {n: np.zeros(m.in_features) for n, m in layers.items()}

    def hook(name, layer):
        def forward(x):
            x2 = np.asarray(x, np.float64).reshape(-1, layer.in_features)
            sums[name] += np.einsum("ij,ij->j", x2, x2)
            return type(layer).forward(layer, x)
        return forward
    was = model.training
    model.eval()
    try:
        for name, layer in layers.items():
            layer.forward = hook(name, layer)           # (an instance attribute, removed below)
        for idx in batches:
            model(idx)
    finally:
        for layer in layers.values():
            layer.__dict__.pop("forward", None)
        model.train(was)
    return {n: np.sqrt(s) for n, s in sums.items()}


def _keep_lowest_out(scores, k, axis=None):
    """A 0/1 mask removing the ``k`` lowest scores (ties: the earlier index goes), along each
    row (``axis=1``) or over the whole array."""
    if axis is None:
        flat = scores.ravel()
        mask = np.ones(flat.size)
        mask[np.argsort(flat, kind="stable")[:k]] = 0
        return mask.reshape(scores.shape)
    order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    mask = np.ones(scores.shape)
    np.put_along_axis(mask, order, 0, axis=1)
    return mask


def prune(model, sparsity: float = 0.5, criterion: str = "magnitude",
          pattern: str = "unstructured", scope: str | None = None, calibration=None,
          skip=("lm_head",)) -> dict:
    """Prune every untied ``Linear`` of ``model`` (in place) except those named in ``skip``.

    ``criterion`` ``"magnitude"`` or ``"wanda"`` (needs ``calibration``: token-id batches
    ``(B, T)`` run through the model to measure each layer's input norms); ``pattern``
    ``"unstructured"`` (``sparsity`` of the weights, in ``[0, 1)``) or ``"2:4"`` (exactly half:
    ``sparsity`` must be 0.5, the input size a multiple of 4); ``scope`` ``"row"`` (Wanda's
    default), ``"layer"`` (magnitude's default) or ``"global"``. Pruning a pruned layer again
    keeps its old mask too. Returns ``{name: the layer's sparsity}``."""
    for value, allowed, what in ((criterion, CRITERIA, "criterion"),
                                 (pattern, PATTERNS, "pattern")):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or \
            not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if pattern == "2:4" and sparsity != 0.5:
        raise ValueError(f"the 2:4 pattern prunes exactly half: sparsity must be 0.5, got "
                         f"{sparsity}")
    scope = scope or ("row" if criterion == "wanda" else "layer")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if isinstance(skip, str):
        skip = (skip,)
    layers = _candidates(model, skip)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear layer to prune")
    if pattern == "2:4":
        for name, m in layers.items():
            if m.in_features % 4:
                raise ValueError(f"{name} has {m.in_features} input features; the 2:4 pattern "
                                 f"needs a multiple of 4")
    if criterion == "wanda":
        if calibration is None:
            raise ValueError("the wanda criterion needs calibration: token-id batches (B, T)")
        norms = input_norms(model, layers, calibration)
    scores = {}
    for name, m in layers.items():
        s = np.abs(m.weight.data.astype(np.float64))                       # (out, in)
        if criterion == "wanda":
            s = s * norms[name][None, :]
        if isinstance(m, MaskedLinear):
            s = np.where(m.weight_mask != 0, s, -1.0)          # pruned already: first to go
        scores[name] = s
    masks = {}
    if pattern == "2:4":
        for name, s in scores.items():
            groups = s.reshape(s.shape[0], -1, 4)                           # (out, in/4, 4)
            order = np.argsort(groups, axis=2, kind="stable")[..., :2]
            mask = np.ones(groups.shape)
            np.put_along_axis(mask, order, 0, axis=2)
            masks[name] = mask.reshape(s.shape)
    elif scope == "global":
        flat = np.concatenate([s.ravel() for s in scores.values()])
        k = int(sparsity * flat.size)
        cut = np.ones(flat.size)
        cut[np.argsort(flat, kind="stable")[:k]] = 0
        start = 0
        for name, s in scores.items():
            masks[name] = cut[start:start + s.size].reshape(s.shape)
            start += s.size
    else:
        for name, s in scores.items():
            if scope == "row":
                masks[name] = _keep_lowest_out(s, int(sparsity * s.shape[1]), axis=1)
            else:
                masks[name] = _keep_lowest_out(s, int(sparsity * s.size))
    from ..finetune.lora import _parent
    out = {}
    for name, m in layers.items():
        mask = masks[name]
        if isinstance(m, MaskedLinear):
            mask = mask * (m.weight_mask != 0)
            m.weight_mask[...] = mask
            m.weight.data *= m.weight_mask
            layer = m
        else:
            layer = MaskedLinear(m, mask)
            layer.train(model.training)
            parent, child = _parent(model, name)
            setattr(parent, child, layer)
        out[name] = layer.sparsity()
    return out


# ------------------------------------------------------------------------------------------------
# structured: whole attention heads and MLP neurons, the matrices shrunk
# ------------------------------------------------------------------------------------------------
def _sliced(layer: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A new ``Linear`` holding the ``rows`` (outputs) and ``cols`` (inputs) of ``layer``."""
    w = layer.weight.data
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None, dtype=w.dtype)
    new.weight.data = np.ascontiguousarray(w)
    new.weight.grad = np.zeros_like(new.weight.data)
    if layer.bias is not None:
        b = layer.bias.data if rows is None else layer.bias.data[rows]
        new.bias.data, new.bias.grad = np.ascontiguousarray(b), np.zeros_like(b)
    new.train(layer.training)
    return new


def _blocks(units, size):
    """The row indices of the kept units (heads of ``size`` rows each)."""
    return np.concatenate([np.arange(u * size, (u + 1) * size) for u in units]) if len(units) \
        else np.zeros(0, np.int64)


def _attention_parts(model):
    """``[(name, attention module, mlp module)]`` of a GPT's or a Llama's blocks."""
    from ..models import GPT, Llama
    if isinstance(model, Llama):
        return [(f"model.layers.{i}", l.self_attn, l.mlp) for i, l in enumerate(model.model.layers)]
    if isinstance(model, GPT):
        return [(f"transformer.h.{i}", b.attn, b.mlp) for i, b in enumerate(model.transformer.h)]
    raise TypeError(f"structured pruning takes a GPT or a Llama, got {type(model).__name__}")


def shrink(model, plan: dict) -> None:
    """Apply a structured-pruning ``plan`` ``{block name: {"heads": [kept head or KV-group
    indices], "neurons": [kept MLP neuron indices]}}`` (either key optional): slice the
    matrices and set the attention modules' head counts. For a Llama, ``heads`` lists kept
    key/value heads, each with its query heads (grouped-query attention keeps its groups)."""
    parts = {name: (attn, mlp) for name, attn, mlp in _attention_parts(model)}
    for name, keep in plan.items():
        if name not in parts:
            raise ValueError(f"plan names {name!r}, which is not a block of "
                             f"{type(model).__name__}")
        attn, mlp = parts[name]
        if "heads" in keep:
            units = sorted(int(u) for u in keep["heads"])
            if hasattr(attn, "kv_heads"):                                   # Llama: KV groups
                g, d = attn.heads // attn.kv_heads, attn.head_dim
                if not units or units[-1] >= attn.kv_heads or len(set(units)) != len(units):
                    raise ValueError(f"{name}: heads must be distinct key/value head indices "
                                     f"below {attn.kv_heads}, at least one, got {units}")
                q_heads = [u * g + j for u in units for j in range(g)]
                attn.q_proj = _sliced(attn.q_proj, rows=_blocks(q_heads, d))
                attn.k_proj = _sliced(attn.k_proj, rows=_blocks(units, d))
                attn.v_proj = _sliced(attn.v_proj, rows=_blocks(units, d))
                attn.o_proj = _sliced(attn.o_proj, cols=_blocks(q_heads, d))
                attn.heads, attn.kv_heads = len(q_heads), len(units)
            else:                                                           # GPT: fused qkv
                nh, hs = attn.n_head, attn.head_size
                if not units or units[-1] >= nh or len(set(units)) != len(units):
                    raise ValueError(f"{name}: heads must be distinct head indices below {nh}, "
                                     f"at least one, got {units}")
                rows = _blocks(units, hs)
                attn.c_attn = _sliced(attn.c_attn, rows=np.concatenate(
                    [rows, rows + nh * hs, rows + 2 * nh * hs]))
                attn.c_proj = _sliced(attn.c_proj, cols=rows)
                attn.n_head = len(units)
        if "neurons" in keep:
            units = np.array(sorted(int(u) for u in keep["neurons"]), np.int64)
            up = mlp.up_proj if hasattr(mlp, "up_proj") else mlp.c_fc
            if units.size == 0 or units[-1] >= up.out_features or \
                    len(set(units.tolist())) != units.size:
                raise ValueError(f"{name}: neurons must be distinct indices below "
                                 f"{up.out_features}, at least one")
            if hasattr(mlp, "up_proj"):
                mlp.gate_proj = _sliced(mlp.gate_proj, rows=units)
                mlp.up_proj = _sliced(mlp.up_proj, rows=units)
                mlp.down_proj = _sliced(mlp.down_proj, cols=units)
            else:
                mlp.c_fc = _sliced(mlp.c_fc, rows=units)
                mlp.c_proj = _sliced(mlp.c_proj, cols=units)


def structure_of(model) -> dict:
    """``{block name: {"heads": n, "neurons": n}}``: each block's attention heads (a Llama's:
    key/value heads) and MLP neurons now -- what a checkpoint records to rebuild the shapes."""
    out = {}
    for name, attn, mlp in _attention_parts(model):
        heads = attn.kv_heads if hasattr(attn, "kv_heads") else attn.n_head
        up = mlp.up_proj if hasattr(mlp, "up_proj") else mlp.c_fc
        out[name] = {"heads": int(heads), "neurons": int(up.out_features)}
    return out


def prune_structured(model, heads: float = 0.0, neurons: float = 0.0, calibration=None) -> dict:
    """Remove the fraction ``heads`` of each block's attention heads (a Llama's: of its
    key/value groups) and ``neurons`` of its MLP neurons, the least important first, shrinking
    the matrices. Importance is what each unit adds to the residual stream: for output
    features ``f`` of the unit feeding the output projection ``W_o``,
    :math:`\\sum_f \\lVert W_o[:, f] \\rVert_2 \\, \\lVert X_f \\rVert_2` with the input norms
    measured over ``calibration`` (token-id batches; without it, 1). At least one head and one
    neuron stay. Returns the new :func:`structure_of`."""
    for name, v in (("heads", heads), ("neurons", neurons)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f"{name} must be a fraction in [0, 1), got {v!r}")
    parts = _attention_parts(model)
    outs = {}
    for name, attn, mlp in parts:
        outs[name + ".o"] = attn.o_proj if hasattr(attn, "o_proj") else attn.c_proj
        outs[name + ".down"] = mlp.down_proj if hasattr(mlp, "down_proj") else mlp.c_proj
    norms = input_norms(model, outs, calibration) if calibration is not None else \
        {k: np.ones(m.in_features) for k, m in outs.items()}
    plan = {}
    for name, attn, mlp in parts:
        o, down = outs[name + ".o"], outs[name + ".down"]
        feat = np.linalg.norm(o.weight.data.astype(np.float64), axis=0) * norms[name + ".o"]
        if hasattr(attn, "kv_heads"):
            n_units, size = attn.kv_heads, attn.head_dim * (attn.heads // attn.kv_heads)
        else:
            n_units, size = attn.n_head, attn.head_size
        head_score = feat.reshape(n_units, size).sum(axis=1)
        neuron_score = np.linalg.norm(down.weight.data.astype(np.float64), axis=0) * \
            norms[name + ".down"]
        keep = {}
        for key, score, frac in (("heads", head_score, heads), ("neurons", neuron_score, neurons)):
            if frac > 0:
                n_keep = max(1, score.size - int(round(frac * score.size)))
                keep[key] = np.sort(np.argsort(-score, kind="stable")[:n_keep])
        if keep:
            plan[name] = keep
    shrink(model, plan)
    return structure_of(model)
