"""The minibatch loop shared by :func:`~scratchlm.models.fit_translation`,
:func:`~scratchlm.models.fit_classifier` and :func:`~scratchlm.models.fit_vae`.

:func:`check_loop_options` validates the options every such loop takes (``save_every``,
``resume``, ``callback``, ``meta``). :class:`EpochLoop` owns what the loops have in common:
the seeded reshuffling of the example indices each epoch (an epoch's leftover shorter than a
batch is skipped), the optimizer and schedule steps, periodic evaluation, the checkpoint written
every ``save_every`` steps and at the end, resuming from it bit-identically, and
``callback(step, loss)`` after each step's checkpoint; :func:`check_finite_loss` stops a
diverged run with a clear message. Each ``fit_*`` keeps only its model's forward/backward, its
history fields and its evaluation, passed in as functions.

A checkpoint's meta holds :data:`LOOP_KEYS` -- ``step``, ``total_steps``, ``history``,
``schedule`` (None without one), ``shuffle_rng`` (the shuffling generator's state), ``order``
(the epoch's permutation), ``pos`` (the next index into it) -- then the caller's own keys.
"""

from __future__ import annotations

import numpy as np

from .._checks import boolean, positive_int

LOOP_KEYS = ("step", "total_steps", "history", "schedule", "shuffle_rng", "order", "pos")


def check_loop_options(fn_name, *, save_every, resume, checkpoint, callback, meta, reserved):
    """Validate the loop options of ``fn_name``; returns ``(save_every, resume, meta)`` with
    ``meta`` a fresh dict. ``reserved``: the meta keys ``fn_name`` writes itself (a clash
    raises ``ValueError``)."""
    save_every = positive_int(save_every, "save_every")
    resume = boolean(resume, "resume")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the path to continue from)")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    meta = dict(meta or {})
    clash = [k for k in meta if k in reserved]
    if clash:
        raise ValueError(f"meta must not use the keys {fn_name} writes: {clash}")
    return save_every, resume, meta


def check_finite_loss(loss, step, rate):
    """Raise ``FloatingPointError`` naming the step (from 1) and the learning rate ``rate`` if
    the training ``loss`` is not finite."""
    if not np.isfinite(loss):
        raise FloatingPointError(f"the training loss became {float(loss)} at step {step + 1}; "
                                 f"lower the learning rate (now {rate:.3g}) or resume from "
                                 f"the last checkpoint")


class EpochLoop:
    """``steps`` minibatches of ``batch_size`` indices into ``n`` examples, reshuffled each
    epoch by ``rng``, training ``model`` with ``opt`` (and ``sched``, if not None).

    ``history``: the caller's dict of lists; :meth:`resume` refills it in place, so functions
    that append to it keep working. ``checkpoint`` (None: no checkpoints) is written every
    ``save_every`` steps and at the end, with ``meta`` (a dict of the caller's extra keys)
    after :data:`LOOP_KEYS`. ``callback(step, loss)`` runs after each step and its checkpoint.
    """

    def __init__(self, model, opt, sched, rng, *, n, steps, batch_size, history,
                 checkpoint=None, save_every=100, callback=None, meta=None):
        self.model, self.opt, self.sched, self.rng = model, opt, sched, rng
        self.n, self.steps, self.batch_size = n, steps, batch_size
        self.history, self.checkpoint, self.save_every = history, checkpoint, save_every
        self.callback, self.meta = callback, meta or {}
        self.order, self.pos, self.start = rng.permutation(n), 0, 0

    def resume(self, noun="examples"):
        """Load the checkpoint into the model, optimizer, schedule, shuffling state and history
        and continue after its step. Raises ``ValueError`` if it has no schedule while this
        run has one, or was trained on another number of ``noun``."""
        from ..io import load_checkpoint
        saved = load_checkpoint(self.checkpoint, self.model, self.opt)
        if self.sched is not None:
            if saved.get("schedule") is None:
                raise ValueError(f"{self.checkpoint} was trained with schedule='constant'")
            self.sched.load_state_dict(saved["schedule"])
        self.rng.bit_generator.state = saved["shuffle_rng"]
        self.order, self.pos = np.array(saved["order"], dtype=np.int64), saved["pos"]
        self.start = saved["step"]
        self.history.clear()
        self.history.update(saved["history"])
        if len(self.order) != self.n:
            raise ValueError(f"{self.checkpoint} was trained on {len(self.order)} {noun}, not "
                             f"{self.n}")

    def save(self, step):
        """Write the checkpoint (if any) as of ``step`` completed steps."""
        if self.checkpoint is not None:
            from ..io import save_checkpoint
            save_checkpoint(self.checkpoint, self.model, self.opt, step=step,
                            total_steps=self.steps, history=self.history,
                            schedule=None if self.sched is None else self.sched.state_dict(),
                            shuffle_rng=self.rng.bit_generator.state, order=self.order.tolist(),
                            pos=self.pos, **self.meta)

    def run(self, train_step, evaluate=None, eval_every=None):
        """Train from the current step to ``steps``; returns the history.

        Each step: ``loss = train_step(step, idx)`` (zero the gradients, forward, backward,
        clip, append the step's history; ``idx`` the batch's example indices), then the
        optimizer and schedule steps, ``evaluate(step + 1)`` every ``eval_every`` steps, the
        checkpoint every ``save_every`` steps (but the last), and the callback. At the end:
        ``evaluate(steps)`` and the final checkpoint.
        """
        self.model.train()
        for step in range(self.start, self.steps):
            if self.pos + self.batch_size > len(self.order):
                self.order, self.pos = self.rng.permutation(self.n), 0
            idx = self.order[self.pos:self.pos + self.batch_size]
            self.pos += self.batch_size
            loss = float(train_step(step, idx))
            self.opt.step()
            if self.sched is not None:
                self.sched.step()
            if evaluate is not None and eval_every is not None and (step + 1) % eval_every == 0:
                evaluate(step + 1)
            if (step + 1) % self.save_every == 0 and step + 1 < self.steps:
                self.save(step + 1)
            if self.callback is not None:   # after the checkpoint: an interrupt here loses nothing
                self.callback(step, loss)
        if evaluate is not None:
            evaluate(self.steps)
        self.save(self.steps)
        return self.history
