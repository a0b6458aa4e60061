r"""The ``fit_*`` functions: each is the one training loop (:func:`scratchlm.training.train`)
configured for one kind of model -- a batch source, the model's forward with its targets, and
what evaluation reports. They validate their arguments, then hand over to the loop, which owns
the optimizer, the schedule, clipping, checkpoints, resuming and progress.

* :func:`fit_lm` -- a token-level language model (GPT, RNNLM, ConvLM): random windows, or for
  a recurrent model consecutive chunks of parallel streams with the hidden state carried
  (truncated BPTT); validation cross-entropy;
* :func:`fit_translation` -- an encoder-decoder (Seq2Seq, Seq2SeqTransformer) on a
  :class:`~scratchlm.data.TranslationTask`, teacher-forced;
* :func:`fit_classifier` -- the :class:`~scratchlm.models.CNN` on images; held-out accuracy;
* :func:`fit_vae` -- a :class:`~scratchlm.models.VAE` or
  :class:`~scratchlm.models.DocumentVAE`, with KL warm-up; held-out ELBO.
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import (NonFiniteError, float_array, float_errors_checked, nonnegative,
                       positive_int)
from ..data.sources import PoissonWindows, RandomWindows, ShuffledEpochs, StreamChunks
from .loop import TrainConfig
from .loop import train as run_loop

__all__ = ["fit_lm", "fit_translation", "fit_classifier", "fit_vae", "evaluate_lm"]


def _loop_config(steps, lr, save_every=100, eval_every=None, clip=None, warmup_steps=0,
                 **kw) -> TrainConfig:
    """The loop's config from a ``fit_*``'s arguments, each checked under its own name."""
    return TrainConfig(
        steps=positive_int(steps, "steps"), lr=lr,
        save_interval=positive_int(save_every, "save_every"),
        eval_interval=None if eval_every is None else positive_int(eval_every, "eval_every"),
        grad_clip=None if clip is None else nonnegative(clip, "clip"),
        warmup=positive_int(warmup_steps, "warmup_steps", minimum=0), **kw)


# ------------------------------------------------------------------------------------------------
# language models
# ------------------------------------------------------------------------------------------------
@float_errors_checked          # it checks its results; no NumPy warnings
def evaluate_lm(model, ids, block_size, batch_size=16, batches=20, seed=1234) -> float:
    """Mean cross-entropy (nats per token) over ``batches`` fixed random windows of ``ids``
    (the same windows at every call: evaluations are comparable)."""
    from ..data import random_windows
    rng = np.random.default_rng(seed)
    was = model.training
    model.eval()
    try:
        losses = []
        for _ in range(batches):
            x, y = random_windows(ids, batch_size, block_size, rng)
            losses.append(model(x, y)[1])
        loss = float(np.mean(losses))
        if not np.isfinite(loss):            # never logged or checkpointed as a number
            raise NonFiniteError(f"the validation loss of {type(model).__name__} is {loss}: its "
                                 f"parameters or activations are not finite (the run diverged; "
                                 f"lower the learning rate or resume from an earlier checkpoint)")
        return loss
    finally:
        model.train(was)


class CarriedState:
    """The forward of truncated BPTT: each chunk starts from the state the previous chunk ended
    in (never backpropagated into), reset where the streams restart. Its state -- the carried
    hidden state -- goes into every checkpoint, so a resumed run continues exactly."""

    def __init__(self, model):
        self.model, self.state = model, None

    def __call__(self, batch, step):
        x, y, restarted = batch
        _, loss = self.model(x, y, state=None if restarted else self.state)
        self.state = self.model.state
        return loss

    def state_dict(self) -> dict:
        if self.state is None:
            return {"carried": None}
        parts = self.state if isinstance(self.state, tuple) else (self.state,)
        return {"carried": {"tuple": isinstance(self.state, tuple), "dtype": str(parts[0].dtype),
                            "arrays": [p.tolist() for p in parts]}}    # float -> JSON -> back: exact

    def load_state_dict(self, state) -> None:
        doc = state.get("carried") if isinstance(state, dict) else None
        if doc is None:
            self.state = None
            return
        parts = tuple(np.array(a, dtype=doc["dtype"]) for a in doc["arrays"])
        self.state = parts if doc["tuple"] else parts[0]

    # Data parallel: each rank carries the state of its streams, axis 1 of every array
    # (num_layers, streams, hidden); a checkpoint holds every stream's.
    @staticmethod
    def join_state_dicts(parts) -> dict:
        """The ranks' :meth:`state_dict` (in rank order) -> the whole batch's."""
        if any(p["carried"] is None for p in parts):
            return {"carried": None}
        first = parts[0]["carried"]
        arrays = [np.concatenate([np.array(p["carried"]["arrays"][i], first["dtype"])
                                  for p in parts], axis=1).tolist()
                  for i in range(len(first["arrays"]))]
        return {"carried": dict(first, arrays=arrays)}

    @staticmethod
    def split_state_dict(state, rank, size) -> dict:
        """Rank ``rank`` of ``size``'s streams of a whole batch's :meth:`state_dict`."""
        from ..distributed.data_parallel import shard_rows
        doc = state.get("carried") if isinstance(state, dict) else None
        if doc is None:
            return {"carried": None}
        arrays = [np.array(a, doc["dtype"]) for a in doc["arrays"]]
        lo, hi = shard_rows(arrays[0].shape[1], rank, size)
        return {"carried": dict(doc, arrays=[a[:, lo:hi].tolist() for a in arrays])}


def fit_lm(model, train_ids, val_ids, config: TrainConfig, *, batch_size=16, block_size=None,
           seed=0, eval_batches=20, checkpoint=None, meta=None, resume=False, progress=None,
           log=print, clock=None, source=None, split="iid"):
    """Train a language model (``logits, loss = model(x, y)``; ``model.backward()``) on the token
    ids ``train_ids``, evaluating the mean cross-entropy (``val_loss``, nats per token) on
    ``eval_batches`` fixed windows of ``val_ids``.

    Batches: ``batch_size`` random windows of ``block_size`` tokens (default the model's
    ``config.block_size``) drawn by a generator seeded with ``seed`` -- or, for a recurrent model
    (``model.recurrent``), consecutive chunks of ``batch_size`` parallel streams with the hidden
    state carried across chunks (truncated BPTT over ``block_size`` steps). ``source``
    (``'RandomWindows'`` or ``'StreamChunks'``, as the registry names it) overrides that choice.
    With ``config.federated``, this rank is a client that trains on its shard of ``train_ids``
    only (``split``: ``'iid'`` or ``'contiguous'``, :func:`~scratchlm.distributed.federated.
    client_shard`). Returns the history.
    """
    import time
    block = positive_int(block_size if block_size is not None else model.config.block_size,
                         "block_size")
    batch_size = positive_int(batch_size, "batch_size")
    eval_batches = positive_int(eval_batches, "eval_batches")
    for part, ids in (("training", train_ids), ("validation", val_ids)):
        if np.asarray(ids).size <= block:
            raise ValueError(f"the {part} text has {np.asarray(ids).size} tokens, too few for "
                             f"block_size {block}: use a larger corpus or a smaller block size")
    data_size = None
    if config.federated:                   # a client sees its own shard, never the others'
        from ..distributed import world
        from ..distributed.federated import client_shard
        comm = world()
        train_ids = client_shard(train_ids, comm.rank, comm.size, split, piece=4 * block,
                                 seed=seed, min_tokens=block + 1)
        data_size = train_ids.size
        seed = seed + 1000 * comm.rank     # each client draws its own windows
    recurrent = getattr(model, "recurrent", False)
    kind = source or ("StreamChunks" if recurrent else "RandomWindows")
    if kind not in ("StreamChunks", "RandomWindows"):
        raise ValueError(f"source must be 'RandomWindows' or 'StreamChunks', got {source!r}")
    if config.dp_clip is not None:        # DP-SGD: Poisson-sampled independent windows
        if kind == "StreamChunks":
            raise ValueError(f"DP-SGD samples independent windows (Poisson sampling); "
                             f"{type(model).__name__} carries its state along streams")
        kind = "PoissonWindows"
    if kind == "StreamChunks":
        if not recurrent:
            raise ValueError(f"StreamChunks carries a hidden state: {type(model).__name__} has "
                             f"none (model.recurrent is False)")
        source, forward = StreamChunks(train_ids, batch_size, block), CarriedState(model)
    else:
        source = (PoissonWindows if kind == "PoissonWindows" else RandomWindows)(
            train_ids, batch_size, block, seed)

        def forward(batch, step):
            return model(*batch)[1]

    def evaluate():
        return {"val_loss": evaluate_lm(model, val_ids, block, batch_size, eval_batches)}

    return run_loop(model, source, forward, config, evaluate=evaluate, checkpoint=checkpoint,
                    meta=meta, resume=resume, progress=progress, log=log,
                    clock=clock or time.perf_counter, data_size=data_size)


# ------------------------------------------------------------------------------------------------
# encoder-decoders on a translation task
# ------------------------------------------------------------------------------------------------
def fit_translation(model, task, steps, batch_size=64, lr=1e-3, *, warmup_steps=None,
                    min_lr=None, weight_decay=0.01, betas=(0.9, 0.98), clip=1.0, seed=0,
                    progress=None, checkpoint=None, save_every=100, resume=False, meta=None,
                    log=print, distributed=False, zero=0):
    """Train ``model`` on ``task.train`` (teacher forcing, mean cross-entropy over non-pad
    targets) for ``steps`` steps of ``batch_size`` pairs, shuffled each epoch.

    AdamW (weight decay on matrices only), linear warm-up for ``warmup_steps`` (default
    ``steps // 10``) then cosine decay to ``min_lr`` (default ``lr / 10``), gradient-norm
    clipping at ``clip``. The vocabulary is ``CharVocab(task.chars)``; it is stored as
    ``model.vocab`` for :func:`~scratchlm.models.exact_match`. ``progress(step, total, info)``
    after every step; ``checkpoint`` is written every ``save_every`` steps and at the end;
    ``resume=True`` continues from it bit-identically.

    Returns the history: ``step``, ``loss``, ``lr``, ``grad_norm`` per step.
    """
    from ..models.translation import CharVocab, EncoderDecoder, batch_pairs
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"model must be a Seq2SeqTransformer or a Seq2Seq, got {type(model).__name__}")
    vocab = CharVocab(task.chars)
    if (model.pad_id, model.bos_id, model.eos_id) != (0, 1, 2):
        raise ValueError("the model must use pad_id=0, bos_id=1, eos_id=2 (CharVocab's ids)")
    if model.src_vocab_size < vocab.size or model.tgt_vocab_size < vocab.size:
        raise ValueError(f"the task needs vocabularies of {vocab.size} ids (3 specials + "
                         f"{len(task.chars)} characters), the model has {model.src_vocab_size} "
                         f"and {model.tgt_vocab_size}")
    steps = positive_int(steps, "steps")
    config = _loop_config(steps, lr, optimizer="adamw", betas=betas, weight_decay=weight_decay,
                          warmup_steps=steps // 10 if warmup_steps is None else warmup_steps,
                          min_lr=min_lr, clip=clip, save_every=save_every,
                          distributed=distributed, zero=zero)
    pairs = list(task.train)
    source = ShuffledEpochs(len(pairs), batch_size, seed, noun="pairs")
    model.vocab = vocab

    def forward(idx, step):
        src, tgt_in, tgt_out = batch_pairs(vocab, [pairs[i] for i in idx])
        return model(src, tgt_in, tgt_out)[1]

    return run_loop(model, source, forward, config, checkpoint=checkpoint, meta=meta, resume=resume,
                    progress=progress, log=log)


# ------------------------------------------------------------------------------------------------
# the CNN on images
# ------------------------------------------------------------------------------------------------
def fit_classifier(model, train, test=None, steps=1000, batch_size=64, lr=None, optimizer="sgd",
                   momentum=0.9, *, weight_decay=0.0, schedule="cosine", warmup_steps=0,
                   min_lr=0.0, clip=None, seed=0, eval_every=None, progress=None,
                   checkpoint=None, save_every=100, resume=False, meta=None, log=print,
                   distributed=False, zero=0):
    """Train a :class:`~scratchlm.models.CNN` on ``train = (images, labels)`` (mean
    cross-entropy) for ``steps`` minibatches of ``batch_size`` images, reshuffled each epoch.

    * ``optimizer='sgd'`` (``momentum``, default lr 0.05) or ``'adam'`` (default lr 1e-3);
      ``weight_decay`` is L2 added to the gradient (torch's ``SGD``/``Adam`` semantics).
    * ``schedule='cosine'`` (warm-up for ``warmup_steps``, cosine decay to ``min_lr``) or
      ``'constant'``; ``clip``: gradient-norm clipping (None: none).
    * ``test = (images, labels)``: accuracy on it every ``eval_every`` steps and at the end.

    Images of another float dtype than the model's are cast batch by batch. Returns the history:
    ``step``, ``loss``, ``lr``, ``grad_norm``, ``acc`` (the batch's training accuracy before the
    update) per step; ``eval_step``, ``test_acc`` per evaluation.
    """
    from ..models.cnn import CNN, accuracy
    from ..models.cnn import _split as _images
    if not isinstance(model, CNN):
        raise TypeError(f"model must be a CNN, got {type(model).__name__}")
    images, labels = _images(train, "train", model)
    test = None if test is None else _images(test, "test", model)
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be one of ('sgd', 'adam'), got {optimizer!r}")
    lr = (0.05 if optimizer == "sgd" else 1e-3) if lr is None else lr
    config = _loop_config(steps, lr, optimizer=optimizer, momentum=momentum,
                          weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps,
                          min_lr=min_lr, clip=clip, eval_every=eval_every, save_every=save_every,
                          distributed=distributed, zero=zero)
    source = ShuffledEpochs(len(images), batch_size, seed, noun="images")

    def forward(idx, step):
        y = labels[idx]
        logits, loss = model(images[idx].astype(model.dtype, copy=False), y)
        return loss, {"acc": float(np.mean(np.argmax(logits, axis=1) == y))}

    evaluate = None if test is None else (lambda: {"test_acc": accuracy(model, *test)})
    return run_loop(model, source, forward, config, evaluate=evaluate, checkpoint=checkpoint,
                    meta=meta, resume=resume, progress=progress, log=log)


# ------------------------------------------------------------------------------------------------
# variational autoencoders
# ------------------------------------------------------------------------------------------------
class VAEData:
    """Training/test data for :func:`fit_vae`: an array ``(N, ...)``, an ``ImageSplit`` (its
    images) or a :class:`~scratchlm.data.CSRMatrix` of counts; batches come out dense, in the
    model's dtype, checked by the model."""

    def __init__(self, data, name, model):
        from ..data.images import ImageSplit
        from ..data.representations import CSRMatrix
        if isinstance(data, ImageSplit):
            data = data.images
        if isinstance(data, CSRMatrix):
            if data.shape[1] != model.input_dim:
                raise ValueError(f"{name} must have {model.input_dim} columns (input_dim), got "
                                 f"shape {data.shape}")
            self.csr, self.n = data, data.shape[0]
        else:
            arr = float_array(data, name, min_ndim=2)
            if math.prod(arr.shape[1:]) != model.input_dim:
                raise ValueError(f"{name} must have shape (N, {model.input_dim}) (N, input_dim) "
                                 f"or (N, ...) with {model.input_dim} values per example, got "
                                 f"{arr.shape}")
            self.csr, self.arr, self.n = None, arr.reshape(len(arr), model.input_dim), len(arr)
        if self.n == 0:
            raise ValueError(f"{name} holds no examples")
        self.dtype = model.dtype

    def rows(self, idx):
        from ..models.vae import _csr_rows
        if self.csr is not None:
            return _csr_rows(self.csr, idx, self.dtype)
        return self.arr[idx].astype(self.dtype, copy=False)

    def all(self):
        return self.rows(np.arange(self.n)) if self.csr is not None else \
            self.arr.astype(self.dtype, copy=False)


def fit_vae(model, data, steps=1000, batch_size=128, lr=1e-3, *, test=None, eval_every=None,
            eval_samples=1, kl_warmup_steps=0, schedule="constant", warmup_steps=0, min_lr=0.0,
            weight_decay=0.0, clip=None, seed=0, progress=None, checkpoint=None, save_every=100,
            resume=False, meta=None, log=print, distributed=False, zero=0):
    r"""Train a :class:`~scratchlm.models.VAE` or :class:`~scratchlm.models.DocumentVAE` with
    Adam for ``steps`` minibatches of ``batch_size`` examples, reshuffled each epoch.

    * ``data``: an array ``(N, input_dim)`` (or ``(N, ...)``), an ``ImageSplit`` (its images),
      or a ``CSRMatrix`` of word counts for the document VAE. Batches are cast to the model's
      dtype.
    * ``kl_warmup_steps`` :math:`W`: KL annealing (Bowman et al., 2016); step :math:`t` (from 0)
      uses :math:`\beta_t = \beta \min(1, (t + 1)/W)` with :math:`\beta` the model's
      ``kl_weight`` (not modified). 0: no warm-up.
    * ``schedule='constant'`` (default) or ``'cosine'``; ``weight_decay`` (Adam's L2); ``clip``.
    * ``test``: held-out data; its mean ELBO (``eval_samples`` draws, noise from a generator
      seeded with ``seed`` afresh at each evaluation) every ``eval_every`` steps and at the end;
      for a DocumentVAE also its perplexity.

    Returns the history: per step ``step``, ``loss`` (the training objective), ``elbo`` (the
    batch's true ELBO per example), ``recon``, ``kl``, ``kl_weight``, ``lr``, ``grad_norm``;
    per evaluation ``eval_step``, ``test_elbo`` (and ``test_perplexity``).
    """
    from ..models.vae import GaussianLatentModel
    if not isinstance(model, GaussianLatentModel):
        raise TypeError(f"model must be a VAE or a DocumentVAE, got {type(model).__name__}")
    train_data = VAEData(data, "data", model)
    test = None if test is None else VAEData(test, "test", model)
    eval_samples = positive_int(eval_samples, "eval_samples")
    kl_warmup_steps = positive_int(kl_warmup_steps, "kl_warmup_steps", minimum=0)
    config = _loop_config(steps, lr, optimizer="adam", weight_decay=weight_decay,
                          schedule=schedule, warmup_steps=warmup_steps, min_lr=min_lr, clip=clip,
                          eval_every=eval_every, save_every=save_every, distributed=distributed,
                          zero=zero)
    source = ShuffledEpochs(train_data.n, batch_size, seed, noun="examples")
    target_beta = model.kl_weight
    is_doc = hasattr(model, "perplexity")

    def forward(idx, step):
        beta = target_beta * min(1.0, (step + 1) / kl_warmup_steps) if kl_warmup_steps else target_beta
        with np.errstate(over="ignore", invalid="ignore"):   # a diverged model: the loop says so
            loss = model.loss(train_data.rows(idx), kl_weight=beta)
        s = model.last_stats
        return loss, {"elbo": s["elbo"], "recon": s["recon"], "kl": s["kl"], "kl_weight": beta}

    def evaluate():
        x = test.all()
        per = model.elbo(x, eval_samples, rng=np.random.default_rng(seed), reduction="none")
        out = {"test_elbo": float(per.mean())}
        if not np.isfinite(out["test_elbo"]):        # never logged or checkpointed as a number
            raise NonFiniteError(f"the test ELBO of {type(model).__name__} is {out['test_elbo']}: "
                                 f"its parameters or activations are not finite (the run "
                                 f"diverged; lower the learning rate or resume from an earlier "
                                 f"checkpoint)")
        if is_doc:
            with np.errstate(over="ignore"):
                out["test_perplexity"] = float(np.exp(-per.sum() / x.sum(dtype=np.float64)))
        return out

    return run_loop(model, source, forward, config, evaluate=None if test is None else evaluate,
                    checkpoint=checkpoint, meta=meta, resume=resume, progress=progress, log=log)
