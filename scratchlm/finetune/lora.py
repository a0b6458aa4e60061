r"""LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), with its
backward written out, and adapters in PEFT's layout.

A frozen ``Linear`` with weight :math:`W` (out, in) gets a trainable low-rank update:

.. math::  y = x W^\top + b + s\,\big(\mathrm{dropout}(x) A^\top\big) B^\top,\qquad
           s = \alpha / r,\quad A\ (r, \text{in}),\quad B\ (\text{out}, r)

:math:`A` is drawn as PEFT draws it (Kaiming-uniform with :math:`a=\sqrt5`, i.e.
:math:`U(-1/\sqrt{\text{in}}, 1/\sqrt{\text{in}})`, ``nn.Linear``'s default) and :math:`B` is
zero, so training starts from the pretrained function. The backward, with
:math:`\tilde x = \mathrm{dropout}(x)`, :math:`h = \tilde x A^\top`:

.. math::  dB = s\,dy^\top h,\quad dh = s\,dy\,B,\quad dA = dh^\top \tilde x,\quad
           dx = dy\,W + \mathrm{dropout}'(dh\,A)

and no :math:`dW` (frozen). :func:`merge_lora` folds :math:`sBA` into :math:`W` (the same outputs,
no extra cost at inference); :func:`unmerge_lora` takes it out again.

Module paths and file layout are PEFT's: the wrapped layer keeps the original as
``base_layer`` and holds ``lora_A`` / ``lora_B`` (``Linear`` without bias), so an adapter saved by
:func:`save_adapter` is ``adapter_model.safetensors`` with keys
``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` and an
``adapter_config.json`` -- what ``peft``'s ``PeftModel.from_pretrained`` loads onto the matching
``transformers`` model, and what :func:`load_adapter` reads back from either.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from .. import nn
from .._checks import make_rng, positive_int, probability, scalar

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "unmerge_lora", "lora_layers",
           "save_adapter", "load_adapter", "ADAPTER_WEIGHTS", "ADAPTER_CONFIG"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """A frozen ``Linear`` (``base_layer``) plus the trainable low-rank path
    ``lora_B(lora_A(lora_dropout(x))) * alpha / r``."""

    def __init__(self, base_layer: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 rng=None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRA wraps an nn.Linear, got {type(base_layer).__name__}")
        self.r = positive_int(r, "r")
        self.alpha = scalar(alpha, "alpha")
        self.scaling = self.alpha / self.r
        rng = make_rng(rng)
        dt = base_layer.weight.dtype
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad = False
        self.lora_dropout = nn.Dropout(probability(dropout, "dropout", allow_one=False), rng=rng)
        self.lora_A = nn.Linear(base_layer.in_features, self.r, bias=False, dtype=dt, rng=rng)
        self.lora_B = nn.Linear(self.r, base_layer.out_features, bias=False, dtype=dt, rng=rng)
        self.lora_B.weight.data[...] = 0.0
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x):
        y = self.base_layer(x)                                              # (..., out)
        if self.merged:
            return y
        h = self.lora_A(self.lora_dropout(x))                               # (..., r)
        return y + self.scaling * self.lora_B(h)                            # (..., out)

    def inference(self, x):
        """The forward without keeping a cache (a KV-cache generation step)."""
        y = self.base_layer.inference(x)
        if self.merged:
            return y
        return y + self.scaling * self.lora_B.inference(self.lora_A.inference(x))  # no dropout

    def backward(self, dy):
        dx = self.base_layer.backward(dy)                    # dy W (W frozen: no dW formed)
        if self.merged:
            return dx
        # from y += s * lora_B(h): the upstream of lora_B is s dy
        dh = self.lora_B.backward(self.scaling * dy)         # dB += s dy^T h; dh = s dy B
        return dx + self.lora_dropout.backward(self.lora_A.backward(dh))   # dA += dh^T x~

    def delta(self) -> np.ndarray:
        """:math:`s B A` ``(out, in)``: what merging adds to the base weight."""
        return self.scaling * (self.lora_B.weight.data @ self.lora_A.weight.data)

    def extra_repr(self):
        return f"r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


def _matches(name: str, targets) -> bool:
    """PEFT's rule: a string is a regular expression the whole module name must match; a list
    names modules by their last component(s): ``name == t`` or ``name.endswith('.' + t)``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _check_targets(target_modules):
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as exc:
            raise ValueError(f"target_modules {target_modules!r} is not a regular expression: "
                             f"{exc}") from None
        return target_modules
    try:
        targets = tuple(target_modules)
    except TypeError:
        raise TypeError(f"target_modules must be a str or a sequence of str, got "
                        f"{type(target_modules).__name__}") from None
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target_modules must be non-empty strings, got {target_modules!r}")
    return targets


def _linear_names(model) -> list:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and not n.endswith((".lora_A", ".lora_B"))]


def _lora_plan(model, target_modules) -> list:
    """The names of the ``Linear`` layers ``target_modules`` selects, after every check that
    :func:`apply_lora` makes, so that nothing is changed before an error."""
    targets = _check_targets(target_modules)
    names = _linear_names(model)
    chosen = [n for n in names if _matches(n, targets)]
    for t in ([targets] if isinstance(targets, str) else targets):
        if not any(_matches(n, t if isinstance(targets, str) else (t,)) for n in names):
            raise ValueError(f"target_modules pattern {t!r} matches no Linear of "
                             f"{type(model).__name__}; its Linear layers: "
                             f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA layers: merge_lora or reload it first")
    holders = {}                                    # parameter -> how many modules hold it
    for _, mod in model.named_modules():
        for p in mod._parameters.values():
            holders[id(p)] = holders.get(id(p), 0) + 1
    modules = dict(model.named_modules())
    for name in chosen:
        if holders.get(id(modules[name].weight), 0) > 1:
            raise ValueError(f"{name}'s weight is tied to another parameter; LoRA on a tied "
                             f"layer is not supported (PEFT refuses it too)")
        if hasattr(modules[name], "weight_mask"):
            raise ValueError(f"{name} is pruned (a MaskedLinear): LoRA's dense update would "
                             f"fill its pruned entries; prune after merging instead")
    return chosen


def apply_lora(model, target_modules=("q_proj", "v_proj"), r: int = 8, alpha: float = 16,
               dropout: float = 0.0, rng=None) -> list:
    """Freeze every parameter of ``model`` and wrap each ``Linear`` whose name matches
    ``target_modules`` (PEFT's rule, :func:`_matches`) in a :class:`LoRALinear`. Returns the
    wrapped module names. A pattern that matches no ``Linear`` is an error naming it and listing
    the model's Linear layers. A tied ``Linear`` (GPT's ``lm_head``) and a pruned one are
    refused. Every check runs before the model changes."""
    chosen = _lora_plan(model, target_modules)
    positive_int(r, "r"), scalar(alpha, "alpha")                      # (LoRALinear's checks,
    probability(dropout, "dropout", allow_one=False)                  # before anything changes)
    rng = make_rng(rng)
    model.requires_grad_(False)
    for name in chosen:
        parent, child = _parent(model, name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout, rng))
    return chosen


def _parent(model, name):
    parts = name.split(".")
    mod = model
    for part in parts[:-1]:
        mod = getattr(mod, part) if not part.isdigit() else mod[int(part)]
    return mod, parts[-1]


def lora_layers(model) -> dict:
    """``{module name: LoRALinear}`` of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model) -> None:
    """Fold :math:`sBA` into every LoRA layer's base weight (outputs unchanged)."""
    for m in lora_layers(model).values():
        if not m.merged:
            m.base_layer.weight.data += m.delta().astype(m.base_layer.weight.dtype)
            m.merged = True


def unmerge_lora(model) -> None:
    """Take :math:`sBA` out of the base weights again (undoes :func:`merge_lora`)."""
    for m in lora_layers(model).values():
        if m.merged:
            m.base_layer.weight.data -= m.delta().astype(m.base_layer.weight.dtype)
            m.merged = False


# ------------------------------------------------------------------------------------------------
# PEFT's files
# ------------------------------------------------------------------------------------------------
def _saved_modules(model) -> dict:
    """``{parameter name: Parameter}`` trained in full beside the adapters (PEFT's
    ``modules_to_save``, e.g. a classifier's ``score``): the trainable parameters outside every
    LoRA layer."""
    layers = lora_layers(model)
    return {n: p for n, p in model.named_parameters() if p.requires_grad and not any(
        n.startswith(name + ".") for name in layers)}


def adapter_config(model) -> dict:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers (apply_lora first)")
    first = next(iter(layers.values()))
    if any((m.r, m.alpha, m.lora_dropout.p) != (first.r, first.alpha, first.lora_dropout.p)
           for m in layers.values()):
        raise ValueError("PEFT's adapter_config holds one r, alpha and dropout; these LoRA layers "
                         "differ")
    targets = sorted({n.rsplit(".", 1)[-1] for n in layers})
    saved = sorted({n.rsplit(".", 1)[0] for n in _saved_modules(model)})
    return {"peft_type": "LORA",
            "task_type": "SEQ_CLS" if hasattr(model, "num_labels") else "CAUSAL_LM",
            "r": first.r, "lora_alpha": first.alpha, "lora_dropout": first.lora_dropout.p,
            "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": saved or None,
            "use_rslora": False, "use_dora": False, "layers_to_transform": None,
            "base_model_name_or_path": None, "revision": None}


def save_adapter(model, path) -> None:
    """Write ``adapter_model.safetensors`` (the ``lora_A``/``lora_B`` weights under PEFT's keys)
    and ``adapter_config.json`` into the folder ``path`` (each file atomic). The adapters must
    be unmerged. Parameters trained in full beside the adapters (a classifier's ``score``) go
    in too, as PEFT's ``modules_to_save`` (``base_model.model.score.weight``)."""
    from ..io import atomic_write, save_safetensors
    layers = lora_layers(model)
    doc = adapter_config(model)
    if any(m.merged for m in layers.values()):
        raise ValueError("save_adapter needs unmerged LoRA layers: call unmerge_lora first")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = {}
    for name, m in layers.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.data
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.data
    for name, p in _saved_modules(model).items():
        tensors[f"{_PREFIX}{name}"] = p.data
    save_safetensors(os.path.join(path, ADAPTER_WEIGHTS), tensors, {"format": "pt"})
    text = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    atomic_write(os.path.join(path, ADAPTER_CONFIG), lambda f: f.write(text))


def load_adapter(model, path, rng=None) -> list:
    """Apply the LoRA adapter in the folder ``path`` (ours or one ``peft`` saved) to ``model``:
    the config's ``r``, ``lora_alpha``, ``lora_dropout`` and ``target_modules``, then its
    weights; the ``modules_to_save`` it lists (a classifier's ``score``; names that match no
    module, such as PEFT's default ``classifier``, are passed by) are loaded and left trainable,
    as PEFT leaves them. Every tensor is checked (names, shapes, finite) before any is written.
    Returns the wrapped module names."""
    from .._files import loads_json, read_bytes
    from ..io import load_safetensors
    path = os.fspath(path)
    cfg_path = os.path.join(path, ADAPTER_CONFIG)
    w_path = os.path.join(path, ADAPTER_WEIGHTS)
    for f in (cfg_path, w_path):
        if not os.path.exists(f):
            raise FileNotFoundError(f"an adapter folder needs {os.path.basename(f)}: {f} does "
                                    f"not exist")
    doc = loads_json(read_bytes(cfg_path, ADAPTER_CONFIG, limit=1 << 20), cfg_path)
    if doc.get("peft_type") != "LORA":
        raise ValueError(f"{cfg_path}: peft_type must be 'LORA', got {doc.get('peft_type')!r}")
    for key, want in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False),
                      ("bias", "none")):
        if doc.get(key, want) != want:
            raise ValueError(f"{cfg_path}: {key} must be {want!r} here, got {doc.get(key)!r}")
    if doc.get("layers_to_transform") is not None or doc.get("rank_pattern") or \
            doc.get("alpha_pattern"):
        raise ValueError(f"{cfg_path}: layers_to_transform and rank/alpha patterns are not "
                         f"supported")
    to_save = doc.get("modules_to_save") or []
    if not isinstance(to_save, list) or not all(isinstance(n, str) and n for n in to_save):
        raise ValueError(f"{cfg_path}: modules_to_save must be a list of module names, got "
                         f"{to_save!r}")
    saved = {n: p for n, p in model.named_parameters() if any(
        n.rsplit(".", 1)[0] == m or n.rsplit(".", 1)[0].endswith("." + m) for m in to_save)}
    r, alpha = doc.get("r"), doc.get("lora_alpha")
    targets = doc.get("target_modules")
    if isinstance(targets, list):
        targets = tuple(targets)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{cfg_path}: r must be a positive int, got {r!r}")
    chosen = _lora_plan(model, targets)                 # every check before the model changes
    modules = dict(model.named_modules())
    shapes = {f"{_PREFIX}{n}": p.shape for n, p in saved.items()}
    for name in chosen:
        m = modules[name]
        shapes[f"{_PREFIX}{name}.lora_A.weight"] = (r, m.in_features)
        shapes[f"{_PREFIX}{name}.lora_B.weight"] = (m.out_features, r)
    tensors, _ = load_safetensors(w_path)
    found = {}
    for key, value in tensors.items():
        k = key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        if k not in shapes:
            raise ValueError(f"{w_path}: tensor {key!r} is not a LoRA weight or a module to "
                             f"save of this model's {', '.join(sorted(chosen))[:200]}")
        if tuple(value.shape) != tuple(shapes[k]) or value.dtype.kind != "f" or \
                not np.isfinite(value).all():
            raise ValueError(f"{w_path}: tensor {key!r} must be a finite float array of shape "
                             f"{tuple(shapes[k])}, got {value.dtype} {tuple(value.shape)}")
        found[k] = value
    missing = [k for k in shapes if k not in found]
    if missing:
        raise ValueError(f"{w_path} lacks {len(missing)} weight(s) the adapter declares: "
                         f"{', '.join(missing[:3])}")
    apply_lora(model, targets, r=r, alpha=alpha, dropout=doc.get("lora_dropout", 0.0), rng=rng)
    layers = lora_layers(model)
    params = {f"{_PREFIX}{n}": p for n, p in saved.items()}
    for name, m in layers.items():
        params[f"{_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight
        params[f"{_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight
    for k, value in found.items():
        params[k].data[...] = value.astype(params[k].dtype)
    for p in saved.values():
        p.requires_grad = True
    return chosen
