r"""The one training loop. Every ``scratchlm train <model>`` command and every ``fit_*`` function is
a configuration of :func:`train`:

    source --next()--> batch --forward(batch, step)--> loss --finite check--> model.backward()
           --> clip --> optimizer step at the scheduled rate --> history
            --> every eval_interval: evaluate() --> every save_interval: checkpoint --> progress

What :func:`train` owns, so no model repeats it:

* **the optimizer** (:class:`TrainConfig` ``optimizer``): ``'adamw'`` with nanoGPT's grouping
  (weight decay on every matrix, none on biases and norms), or ``'adam'``/``'sgd'`` with torch's
  L2 ``weight_decay`` on every parameter;
* **the schedule**: linear warm-up for ``warmup`` steps then cosine decay to ``min_lr``
  (:func:`scratchlm.optim.cosine_with_warmup`) over the run's length, or a constant rate. With
  ``steps`` the length is fixed; with a deadline (``time_limit``) it is re-estimated at every step
  from the measured time per step, so the rate reaches ``min_lr`` at the deadline;
* **clipping** of the global gradient norm (``grad_clip``; None: none) and the check that the
  loss is finite (a diverged run stops with ``FloatingPointError`` naming the step and the rate);
* **evaluation** every ``eval_interval`` steps and at the end (``evaluate()`` returns a dict of
  numbers, appended to the history);
* **checkpoints** every ``save_interval`` steps and at the end: the model, the optimizer and,
  under the meta key ``"loop"``, the step, the run's length, the training seconds used, the
  history, the batch source's state and the step function's own state (a recurrent model's
  carried hidden state), next to the caller's ``meta`` (config, tokenizer, data) -- one layout for
  every model. ``resume=True`` continues from it bit-identically (a ``steps`` run);
* **the backward**: ``forward(batch, step)`` computes the loss (the model's forward with its
  targets); the loop checks it is finite and calls ``model.backward()``;
* **the precision** (``precision``): ``"fp16"``/``"bf16"`` run the forward and the backward
  under :func:`~scratchlm.compress.precision.autocast` (Linear and attention products in 16
  bits, float32 master weights and optimizer); ``"fp16"`` adds a
  :class:`~scratchlm.compress.precision.GradScaler` (the cross-entropy's gradient scaled, a
  step with an inf/NaN gradient skipped, its state in the checkpoint). Evaluation stays float32;
* **the stop condition**: ``steps`` steps, or the deadline: training, evaluations and saves end
  within ``time_limit`` seconds of the first step. Compilation is not training: before the clock
  starts, :func:`warm_up` runs one step's forward and backward, the optimizer update and one
  evaluation on throw-away state (saying "compiling kernels (first run only)..." when that takes
  over a second and Numba's cache lacks a kernel), and measures them to plan the run;
* **progress**: ``progress(step, total, info)`` after every step and its checkpoint (so an
  interrupt there loses nothing), and once more at the end with ``info["done"]`` True;
  ``total`` is the (estimated) run length, ``info`` holds ``loss`` (nats), ``lr``, ``elapsed``
  (seconds since the first step: compiling and warming up are not counted) and the last
  evaluation's numbers.

The history (also what the checkpoint carries): ``step`` (1, 2, ...), ``loss``, ``lr``,
``grad_norm`` per step, any extra numbers the step function returns (per step), and
``eval_step`` with one list per number ``evaluate()`` returns.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .._autocast import PRECISIONS, autocast, scaled_backwards
from .._checks import choice, nonnegative, positive_int

__all__ = ["TrainConfig", "train", "warm_up", "make_optimizer", "scheduled_lr", "Deadline",
           "kernels_compiling"]

LOOP_META = ("train", "loop")          # the meta keys the loop writes itself


@dataclass
class TrainConfig:
    """How to train (the model's config and the data are separate).

    Exactly one of ``steps`` (a reproducible run length) and ``time_limit`` (seconds: a deadline
    the schedule ends at) must be set. ``min_lr`` None means ``lr / 10``. ``save_interval`` None
    means ``eval_interval`` (or 100 without one).
    """
    steps: int | None = None
    time_limit: float | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float | None = None
    warmup: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    momentum: float = 0.0
    grad_clip: float | None = 1.0
    eval_interval: int | None = None
    save_interval: int | None = None
    precision: str = "fp32"
    distributed: bool = False
    zero: int = 0
    federated: str | None = None
    local_steps: int = 1
    dp_clip: float | None = None
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
    dp_seed: int | None = None

    def __post_init__(self):
        if (self.steps is None) == (self.time_limit is None):
            raise ValueError("give exactly one of steps (a fixed run length) and time_limit "
                             f"(seconds), got steps={self.steps!r}, time_limit={self.time_limit!r}")
        if self.steps is not None:
            self.steps = positive_int(self.steps, "steps")
        if self.time_limit is not None:
            self.time_limit = nonnegative(self.time_limit, "time_limit")
            if self.time_limit == 0:
                raise ValueError("time_limit must be > 0 seconds, got 0")
        self.optimizer = choice(self.optimizer, "optimizer", ("adamw", "adam", "sgd"))
        self.schedule = choice(self.schedule, "schedule", ("cosine", "constant"))
        self.lr = nonnegative(self.lr, "lr")
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        if self.min_lr is not None:
            self.min_lr = nonnegative(self.min_lr, "min_lr")
            if self.min_lr > self.lr:
                raise ValueError(f"min_lr ({self.min_lr}) must be <= lr ({self.lr})")
        self.warmup = positive_int(self.warmup, "warmup", minimum=0)
        self.weight_decay = nonnegative(self.weight_decay, "weight_decay")
        self.momentum = nonnegative(self.momentum, "momentum")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = tuple(float(b) for b in betas)
        if self.grad_clip is not None:
            self.grad_clip = nonnegative(self.grad_clip, "grad_clip")
        for name in ("eval_interval", "save_interval"):
            if getattr(self, name) is not None:
                setattr(self, name, positive_int(getattr(self, name), name))
        self.precision = choice(self.precision, "precision", PRECISIONS)
        if not isinstance(self.distributed, bool):
            raise TypeError(f"distributed must be True or False, got {self.distributed!r}")
        if self.zero not in (0, 1) or isinstance(self.zero, bool):
            raise ValueError(f"zero must be 0 or 1 (ZeRO stage 1), got {self.zero!r}")
        if self.zero and not self.distributed:
            raise ValueError("zero=1 shards the optimizer over MPI ranks: it needs "
                             "distributed=True (--distributed, under mpiexec)")
        if self.federated is not None:
            self.federated = choice(self.federated, "federated", ("fedavg",))
            if self.distributed:
                raise ValueError("federated runs its clients on MPI ranks by itself: give "
                                 "federated='fedavg' or distributed=True, not both")
        self.local_steps = positive_int(self.local_steps, "local_steps")
        if self.local_steps > 1 and self.federated is None:
            raise ValueError("local_steps is FedAvg's steps between averagings: it needs "
                             "federated='fedavg'")
        self.dp_noise = nonnegative(self.dp_noise, "dp_noise")
        if self.dp_clip is not None:
            self.dp_clip = nonnegative(self.dp_clip, "dp_clip")
            if self.dp_clip == 0:
                raise ValueError("dp_clip must be > 0 (the per-example clipping norm C), got 0")
            if not 0 < self.dp_delta < 1:
                raise ValueError(f"dp_delta must be in (0, 1), got {self.dp_delta}")
            if self.zero or self.federated or self.precision != "fp32":
                raise ValueError("DP-SGD (dp_clip) runs in one process or plain data parallel, "
                                 "in fp32: not with zero=1, federated or 16-bit precision")
        elif self.dp_noise:
            raise ValueError("dp_noise needs dp_clip: DP-SGD's noise is scaled to the "
                             "per-example clipping norm (noise without clipping bounds nothing)")
        if self.dp_seed is not None:
            self.dp_seed = positive_int(self.dp_seed, "dp_seed", minimum=0)
        if self.federated:
            for name in ("eval_interval", "save_interval"):
                every = getattr(self, name)
                if every is not None and every % self.local_steps:
                    raise ValueError(f"{name} ({every}) must be a multiple of local_steps "
                                     f"({self.local_steps}): FedAvg evaluates and saves the "
                                     f"averaged model, at the end of a round")
        if self.zero and self.precision == "fp16":
            raise ValueError("zero=1 with precision 'fp16' is not supported (the loss scaler "
                             "reads every gradient; ZeRO-1 leaves each rank its share): use "
                             "'bf16' or plain data parallelism")

    @property
    def floor_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def checkpoint_interval(self) -> int:
        return self.save_interval or self.eval_interval or 100

    def to_dict(self) -> dict:
        return asdict(self) | {"betas": list(self.betas)}


# ------------------------------------------------------------------------------------------------
# the optimizer and the schedule
# ------------------------------------------------------------------------------------------------
def make_optimizer(params, config: TrainConfig):
    """The optimizer :class:`TrainConfig` names over ``params`` (a list of ``(name, Parameter)``);
    frozen parameters (``requires_grad`` False) are left out."""
    from ..optim import SGD, Adam, AdamW
    named = [(n, p) for n, p in params if getattr(p, "requires_grad", True)]
    c = config
    if c.optimizer == "adamw":          # nanoGPT: decay every matrix, not biases or norms
        groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": c.weight_decay},
                  {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
        return AdamW([g for g in groups if g["params"]], lr=c.lr, betas=c.betas)
    plain = [p for _, p in named]
    if c.optimizer == "adam":
        return Adam(plain, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
    return SGD(plain, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


def scheduled_lr(config: TrainConfig, step: int, total: int) -> float:
    """The rate of step ``step`` (from 0) of a run of ``total`` steps: constant, or
    :func:`~scratchlm.optim.cosine_with_warmup` (warm-up shortened to ``total - 1`` steps when
    the run is shorter than it)."""
    from ..optim import cosine_with_warmup
    if config.schedule == "constant":
        return config.lr
    total = max(int(total), 1)
    return cosine_with_warmup(step, config.lr, min(config.warmup, total - 1), total,
                              config.floor_lr)


# ------------------------------------------------------------------------------------------------
# the deadline
# ------------------------------------------------------------------------------------------------
@dataclass
class Deadline:
    r"""Plans a run that must end within ``seconds`` of its first step.

    It keeps running estimates (an exponential moving average) of the time of one step, one
    evaluation and one checkpoint. Before a step it answers whether the step, the evaluation and
    save that step would trigger, and the final evaluation and save still fit; and it estimates
    the run's total length :math:`S = s + \lfloor R / (t_{step} + (t_{eval} + t_{save}) / k)
    \rfloor` (:math:`R` the seconds left after the final evaluation and save, :math:`k` the
    evaluation interval, and likewise for checkpoints), which the schedule uses so that the rate
    reaches its floor at the deadline.
    """
    seconds: float
    step_time: float
    eval_time: float = 0.0
    save_time: float = 0.0
    interval: int | None = None           # evaluations every `interval` steps (None: at the end)
    save_interval: int | None = None      # checkpoints every `save_interval` steps (None: none)
    smoothing: float = 0.3
    _seen: dict = field(default_factory=dict)

    def observe(self, what, seconds):
        """Fold a measured duration of ``what`` ('step', 'eval', 'save') into its estimate."""
        attr = f"{what}_time"
        a = self.smoothing if self._seen.get(what) else 1.0   # the first measurement replaces
        setattr(self, attr, (1 - a) * getattr(self, attr) + a * seconds)
        self._seen[what] = True

    @staticmethod
    def _due(step, every):
        return every is not None and (step + 1) % every == 0

    def _periodic(self, step):
        return (self.eval_time * self._due(step, self.interval)
                + self.save_time * self._due(step, self.save_interval))

    def fits(self, step, elapsed) -> bool:
        """Whether step ``step`` (from 0) may start at ``elapsed`` seconds: the step, anything it
        triggers, and the final evaluation and save all end by the deadline. Step 0 always may."""
        final = self.eval_time + self.save_time
        return step == 0 or elapsed + self.step_time + self._periodic(step) + final <= self.seconds

    def total(self, step, elapsed) -> int:
        """The estimated number of steps the run will have made at the deadline."""
        left = self.seconds - elapsed - self.eval_time - self.save_time
        per = (self.step_time + (self.eval_time / self.interval if self.interval else 0.0)
               + (self.save_time / self.save_interval if self.save_interval else 0.0))
        return step + max(1, int(left / max(per, 1e-9)))


# ------------------------------------------------------------------------------------------------
# warming the kernels before the clock starts
# ------------------------------------------------------------------------------------------------
def _dispatchers():
    """Every Numba dispatcher of the package's kernel modules (helpers too)."""
    import sys
    for name, mod in list(sys.modules.items()):
        if name.startswith("scratchlm.kernels") and mod is not None:
            for obj in list(vars(mod).values()):
                if hasattr(obj, "_cache_misses"):
                    yield obj


def kernels_compiling() -> bool:
    """True when a kernel of the package has missed Numba's on-disk cache in this process, i.e.
    it is being (or was) compiled rather than loaded: the first run after installing, or after a
    change of Numba or of the CPU."""
    return any(d._cache_misses for d in _dispatchers())


def _clone_parameters(model):
    from ..nn.module import Parameter
    out = []
    for name, p in model.named_parameters():
        if not getattr(p, "requires_grad", True):
            continue
        q = Parameter(np.zeros_like(p.data))
        q.grad = np.zeros_like(p.data)
        out.append((name, q))
    return out


def warm_up(model, source, forward, evaluate, config, clock=time.perf_counter, log=print,
            make=None):
    """Compile and time everything a step and an evaluation run, changing nothing: one batch
    from ``source.peek()`` through ``forward`` and ``model.backward()`` twice (the first
    compiles, the second is timed), the optimizer update and clipping on zeroed copies of the
    parameters (``make(named_params)`` builds that optimizer, default :func:`make_optimizer`),
    and ``evaluate()`` twice (the second timed). The model's random generators, its mode and
    the forward's state are restored, and its gradients zeroed, afterwards. Returns
    ``(step seconds, evaluation seconds)``."""
    import threading

    from ..optim import clip_grad_norm_
    # Numba compiles lazily, at a kernel's first call: say so when the warm-up takes long because
    # a kernel missed the on-disk cache (a cached kernel loads in milliseconds).
    notice = threading.Timer(1.0, lambda: kernels_compiling() and
                             log("compiling kernels (first run only)..."))
    notice.daemon = True
    notice.start()
    gens = {name: g.bit_generator.state for name, g in model.generators()}
    step_state = forward.state_dict() if hasattr(forward, "state_dict") else None
    was = model.training
    try:
        batch = source.peek()
        model.train()
        forward(batch, 0)
        model.backward()
        t0 = clock()
        forward(batch, 0)
        model.backward()
        step_time = clock() - t0
        clones = _clone_parameters(model)
        if clones:
            opt = (make or (lambda named: make_optimizer(named, config)))(clones)
            t0 = clock()
            if config.grad_clip is not None:
                clip_grad_norm_([p for _, p in clones], config.grad_clip)
            opt.step()
            step_time += clock() - t0
        eval_time = 0.0
        if evaluate is not None:
            evaluate()                   # the first call compiles what only evaluation runs
            t0 = clock()
            evaluate()
            eval_time = clock() - t0
    finally:
        notice.cancel()
        model.zero_grad()
        model.train(was)
        for name, g in model.generators():
            if name in gens:
                g.bit_generator.state = gens[name]
        if step_state is not None:
            forward.load_state_dict(step_state)
    return step_time, eval_time


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
def _save_estimate(model, opt) -> float:
    """Seconds a checkpoint of ``model`` and ``opt`` should take before one was timed: its
    arrays at 200 MB/s (a slow disk) plus 20 ms."""
    nbytes = sum(p.data.nbytes for p in model.parameters())
    return 0.02 + 3 * nbytes / 200e6             # the parameters and (at most) two moments


def check_finite_loss(loss, step, rate):
    """Raise ``FloatingPointError`` naming the step (from 1) and the rate if ``loss`` is not
    finite (the layers skip NaN scans for speed: the loop stops a diverged run here, clearly)."""
    if not np.isfinite(loss):
        raise FloatingPointError(f"the training loss became {float(loss)} at step {step + 1}; "
                                 f"lower the learning rate (now {rate:.3g}) or resume from the "
                                 f"last checkpoint")


def _step_result(out):
    """``forward`` returns the loss, or ``(loss, {name: number})`` to log more per step."""
    if isinstance(out, tuple):
        loss, extra = out
        return float(loss), dict(extra)
    return float(out), {}


def _restore_loop_state(saved, checkpoint, source, forward):
    """Check the training loop's state in a checkpoint's ``meta`` and load the batch source's and
    the step function's state from it: ``(step, elapsed, history, loop state)``. Either all of
    it fits, or ``ValueError`` and neither ``source`` nor ``forward`` has changed (``train`` runs
    this before the checkpoint writes anything into the model)."""
    loop = saved.get("loop")
    if not isinstance(loop, dict):
        raise ValueError(f"{checkpoint} was not written by the training loop (no 'loop' "
                         f"state in its metadata)")
    step, used, history = loop.get("step"), loop.get("elapsed", 0.0), loop.get("history")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{checkpoint}: the saved step must be an integer >= 0, got {step!r}")
    if isinstance(used, bool) or not isinstance(used, (int, float)) or not 0 <= used < float("inf"):
        raise ValueError(f"{checkpoint}: the saved training seconds must be a number >= 0, got "
                         f"{used!r}")
    if not (isinstance(history, dict) and {"step", "loss", "lr", "grad_norm", "eval_step"} <= set(history)
            and all(isinstance(v, list) for v in history.values())):
        raise ValueError(f"{checkpoint}: the saved history must map step, loss, lr, grad_norm and "
                         f"eval_step (and any other numbers) to lists")
    if "source" not in loop:
        raise ValueError(f"{checkpoint}: the training loop's state lacks the batch source's")
    source_before = source.state_dict()
    has_step_state = hasattr(forward, "state_dict") and hasattr(forward, "load_state_dict")
    step_before = forward.state_dict() if has_step_state else None
    try:
        source.load_state_dict(loop["source"])
        if loop.get("step_state") is not None and has_step_state:
            forward.load_state_dict(loop["step_state"])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        source.load_state_dict(source_before)
        if has_step_state:
            forward.load_state_dict(step_before)
        raise ValueError(f"{checkpoint}: the saved training state does not fit this run "
                         f"({type(exc).__name__}: {exc})") from exc
    return step, float(used), {k: list(v) for k, v in history.items()}, loop


def _record(history, step, loss, rate, norm, extra):
    history["step"].append(step)
    history["loss"].append(loss)
    history["lr"].append(rate)
    history["grad_norm"].append(float(norm))
    for k, v in extra.items():
        history.setdefault(k, []).append(float(v))


def _private_step(model, batch, forward, opt, par, private, config, step, rate):
    """One DP-SGD step (:mod:`scratchlm.distributed.dp`): per-example gradients of this rank's
    rows of the Poisson batch, clipped, summed (over the ranks too), the noise, the mean over
    the expected batch; the accountant counts it. ``(loss, extra, gradient norm)``."""
    from .._per_example import per_example_gradients
    from ..distributed.data_parallel import _batch_rows
    from ..distributed.dp import private_gradients
    from ..optim import grad_norm
    rows = _batch_rows(batch)
    if par is not None:                              # (sets par.weight: this rank's share)
        batch, _ = par.shard(batch, allow_empty=True)
    k = _batch_rows(batch)
    opt.zero_grad()
    loss, extra = 0.0, {}
    if k:
        with per_example_gradients():
            loss, extra = _step_result(forward(batch, step))
            if par is None:
                check_finite_loss(loss, step, rate)
            model.backward()
    if par is not None:                              # the Poisson batch's mean loss (a rank
        (loss,) = par.mean([loss])                   # may have no rows: the step's other
        #                                              numbers are not averaged)
        extra = {}
        if rows:
            check_finite_loss(loss, step, rate)      # every rank sees the same mean
    source_q = private["q"]
    stats = private_gradients(model, k, config.dp_clip, config.dp_noise, private["rng"],
                              source_q * private["n"],
                              sum_ranks=None if par is None else lambda _: par.sum_gradients())
    private["accountant"].step(source_q, config.dp_noise)
    extra.update(batch=float(rows), clipped=stats["clipped"],
                 epsilon=private["accountant"].epsilon(config.dp_delta))
    params = [p for g in opt.param_groups for p in g["params"]]
    norm = grad_norm(params)
    opt.step()
    return loss, extra, norm


def train(model, source, forward, config: TrainConfig, *, evaluate=None, checkpoint=None,
          meta=None, resume=False, progress=None, log=print, clock=time.perf_counter,
          optimizer=None, comm=None, data_size=None):
    """Train ``model`` and return the history (see the module docstring for what each part does).

    Args:
        model: a :class:`scratchlm.nn.Module`.
        source: a batch source (:mod:`scratchlm.data.sources`): ``next(source)``, ``peek()``,
            ``state_dict()``, ``load_state_dict()``.
        forward: ``forward(batch, step) -> loss`` (or ``(loss, {name: number})``): the model's
            forward with the batch's targets, computing the loss that ``model.backward()``
            then backpropagates (``step`` counts from 0). May have ``state_dict()`` /
            ``load_state_dict()`` for state carried between steps.
        config: :class:`TrainConfig`.
        evaluate: ``evaluate() -> {name: number}``, every ``eval_interval`` steps and at the end.
        checkpoint: the path written every ``save_interval`` steps and at the end (None: none).
        meta: the caller's JSON-able extras for the checkpoint (config, tokenizer, data, ...).
        resume: continue from ``checkpoint``.
        progress: ``progress(step, total, info)`` after every step.
        log: where one-line messages go.
        clock: the time source (tests inject one).
        optimizer: an optimizer to use instead of the one ``config`` names.
        comm: with ``config.distributed`` or ``config.federated``, the
            :class:`~scratchlm.distributed.mpi.Comm` to train over (default every process of
            the MPI job).
        data_size: FedAvg: how much data this client's ``source`` draws from (its weight in
            the average; None: all clients weigh the same).
    """
    from ..io import load_checkpoint, read_checkpoint, save_checkpoint
    from ..optim import clip_grad_norm_, grad_norm
    from ..distributed.data_parallel import clip_own

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the path to continue from)")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {type(progress).__name__}")
    meta = dict(meta or {})
    clash = [k for k in meta if k in LOOP_META]
    if clash:
        raise ValueError(f"meta must not use the keys the training loop writes: {clash}")
    if "config" not in meta and hasattr(model, "config_dict"):
        meta["config"] = model.config_dict()          # what rebuilds the model from the file
    par = None
    if config.distributed:                         # data parallel over MPI (distributed/)
        from ..distributed import DataParallel, ZeroRedundancyOptimizer, world
        par = DataParallel(model, comm or world(), zero=config.zero)
        if par.rank != 0:                          # one voice: rank 0 logs and reports
            log, progress = (lambda *a, **k: None), None
        if optimizer is not None and config.zero:
            raise ValueError("zero=1 builds its own sharded optimizer: do not pass optimizer=")
    fed = None
    if config.federated:                           # FedAvg: every rank is a client
        from ..distributed import world
        from ..distributed.federated import FederatedAveraging
        if resume:
            raise ValueError("resuming a federated run is not supported: its clients' sources "
                             "and optimizers are not in one checkpoint")
        fed = FederatedAveraging(model, comm or world(), 1 if data_size is None else data_size,
                                 config.local_steps)
        if fed.rank != 0:
            log, progress = (lambda *a, **k: None), None
    private = None
    if config.dp_clip is not None:                 # DP-SGD: Poisson batches, an accountant
        from ..distributed.accountant import RDPAccountant
        if getattr(source, "sample_rate", None) is None:
            raise ValueError(f"DP-SGD needs Poisson-sampled batches (a source with a "
                             f"sample_rate, as PoissonWindows); got {type(source).__name__}")
        seed = config.dp_seed
        if seed is None:                           # secret: fresh entropy, one for all ranks
            seed = np.random.SeedSequence().entropy
            group = par or fed
            if group is not None:
                seed = group.comm.bcast_object(seed)
        private = {"accountant": RDPAccountant(), "q": source.sample_rate,
                   "n": source.population,
                   "rng": np.random.default_rng([seed, 0x5EED])}     # the same on every rank
    if par is not None and par.zero:
        opt = ZeroRedundancyOptimizer(par, lambda named: make_optimizer(named, config))
    else:
        opt = optimizer or make_optimizer(list(model.named_parameters()), config)
    history = {"step": [], "loss": [], "lr": [], "grad_norm": [], "eval_step": []}
    step, total, used = 0, config.steps, 0.0          # used: training seconds before this process
    if resume:
        _, doc = read_checkpoint(checkpoint)
        if doc.get("module") != type(model).__name__:            # before anything is loaded
            raise ValueError(f"{checkpoint} holds a {doc.get('module')}, not a "
                             f"{type(model).__name__}")
        resumed = []                    # the loop's state, checked before the model is touched

        def restore_loop_state(saved):
            resumed.extend(_restore_loop_state(saved, checkpoint, source, forward))
        load_checkpoint(checkpoint, model, opt.full if par is not None and par.zero else opt,
                        validate=restore_loop_state)
        step, used, history, loop = resumed
        if private is not None:
            if not isinstance(loop.get("dp"), dict):
                raise ValueError(f"{checkpoint} was not trained with DP-SGD: the privacy its "
                                 f"training spent is unknown, so DP-SGD cannot continue it")
            from ..distributed.accountant import RDPAccountant
            private["accountant"] = RDPAccountant(loop["dp"].get("history"))
            private["rng"].bit_generator.state = loop["dp"]["rng"]
        if par is not None:                        # the file holds the whole run's state:
            par.localize_step_state(forward)       # keep this rank's rows of it
            if par.zero:
                opt.keep_own_state()
        if config.steps is not None and loop.get("total_steps") not in (None, config.steps):
            log(f"resuming {checkpoint} (a {loop['total_steps']}-step run) to {config.steps} steps")
        log(f"resumed from {checkpoint} at step {step}")
    scaler = None
    if config.precision != "fp32":
        wide = [n for n, p in model.named_parameters() if p.requires_grad
                and p.data.dtype != np.float32]
        if wide:
            raise ValueError(f"precision {config.precision!r} trains a float32 model (float32 "
                             f"master weights); {wide[0]} is {model.state_dict()[wide[0]].dtype}")
        if config.precision == "fp16":
            from ..compress.precision import GradScaler
            scaler = GradScaler()
            if resume and isinstance(loop.get("scaler"), dict):
                try:
                    scaler.load_state_dict(loop["scaler"])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{checkpoint}: the saved loss scaler does not fit: "
                                     f"{exc}") from None
    if checkpoint is not None:
        os.makedirs(os.path.dirname(os.path.abspath(checkpoint)) or ".", exist_ok=True)
    interval = config.checkpoint_interval
    deadline = None
    if config.time_limit is not None and used >= config.time_limit:
        log(f"the time budget is spent ({used:.1f} of {config.time_limit:g} s): nothing to train; "
            f"give a larger time limit to continue")
    elif config.time_limit is not None:
        make = None if optimizer is None else (lambda named: type(opt)([p for _, p in named]))
        step_time, eval_time = warm_up(model, source, forward, evaluate, config, clock, log, make)
        deadline = Deadline(config.time_limit, step_time, eval_time,
                            save_time=_save_estimate(model, opt) if checkpoint else 0.0,
                            interval=config.eval_interval,
                            save_interval=interval if checkpoint else None)
        if not deadline.fits(step, used):
            log(f"the time budget is spent ({used:.1f} of {config.time_limit:g} s, not enough "
                f"for another step): give a larger time limit to continue")

    t0 = clock() - used
    last_eval = {}
    saved_at = [(step, len(history["eval_step"])) if resume else None]   # what the file holds

    def save():
        if checkpoint is None or saved_at[0] == (step, len(history["eval_step"])):
            return                     # nothing new since the last save
        saved_at[0] = (step, len(history["eval_step"]))
        s0 = clock()
        step_state = forward.state_dict() if hasattr(forward, "state_dict") else None
        to_save = opt
        if par is not None:                             # every rank takes part; rank 0 writes
            step_state = par.gather_step_state(forward, step_state)
            if par.zero:
                to_save = opt.gathered()
            if par.rank != 0:
                return
        if fed is not None and fed.rank != 0:           # FedAvg: the server's model
            return
        loop_state = {"step": step, "total_steps": total, "elapsed": clock() - t0,
                      "history": history, "source": source.state_dict(),
                      "step_state": step_state,
                      "scaler": None if scaler is None else scaler.state_dict(),
                      "dp": None if private is None else {
                          "history": private["accountant"].history,
                          "rng": private["rng"].bit_generator.state}}
        try:
            save_checkpoint(checkpoint, model, to_save, train=config.to_dict(), loop=loop_state,
                            **meta)
        finally:
            if to_save is not opt:
                opt.release_gathered()
        if deadline is not None:
            deadline.observe("save", clock() - s0)

    def run_eval():
        nonlocal last_eval
        if evaluate is None or (history["eval_step"] and history["eval_step"][-1] == step):
            return
        e0 = clock()
        result = evaluate()
        if deadline is not None:
            deadline.observe("eval", clock() - e0)
        history["eval_step"].append(step)
        for k, v in result.items():
            history.setdefault(k, []).append(float(v))
        last_eval = dict(result)

    model.train()
    while True:
        elapsed = clock() - t0
        if config.time_limit is not None and deadline is None:
            break                                                   # the budget was spent
        group = par or fed
        if deadline is not None:
            go = deadline.fits(step, elapsed)
            total = max(deadline.total(step, elapsed), step + 1)
            if group is not None:                       # one clock decides for every rank:
                go, total = group.comm.bcast_object((go, total))    # rank 0's
            if not go:
                break
        elif step >= total:
            break
        rate = scheduled_lr(config, step, total)
        for g in opt.param_groups:
            g["lr"] = rate
        batch = next(source)
        s0 = clock()
        if private is not None:                         # DP-SGD: its own step
            loss, extra, norm = _private_step(model, batch, forward, opt, par, private,
                                              config, step, rate)
        else:
            if par is not None:                             # this rank's rows of the global batch
                batch, _ = par.shard(batch)
                par.start()
            opt.zero_grad()
            with autocast(config.precision, loss_scale=1.0 if scaler is None else scaler.scale):
                loss, extra = _step_result(forward(batch, step))
                if par is not None or fed is not None:      # the global batch's (clients') numbers
                    loss, *values = (par or fed).mean([loss, *extra.values()])
                    extra = dict(zip(extra, values))
                check_finite_loss(loss, step, rate)
                model.backward()
                if par is not None:
                    par.finish()                            # gradients summed over the ranks
                scaled = scaled_backwards()
            params = [p for g in opt.param_groups for p in g["params"]]
            if par is not None and par.zero:            # ZeRO-1: clip by the shards' joint norm
                norm = par.shard_norm()
                if config.grad_clip is not None:
                    clip_own(par.owned(), config.grad_clip, norm)
                opt.step()                                  # own shard, then all-gather
            elif scaler is not None:                        # fp16: unscale, skip on inf/NaN, adapt
                if not scaled:
                    raise ValueError("precision 'fp16' scales the cross-entropy's gradient; this "
                                     "model's backward used no CrossEntropyLoss: use 'bf16' (no "
                                     "scaling needed) or 'fp32'")
                extra["loss_scale"] = scaler.scale
                if scaler.unscale_(opt):
                    norm = float("inf")                     # this step's update is skipped
                else:
                    norm = (grad_norm(params) if config.grad_clip is None
                            else clip_grad_norm_(params, config.grad_clip))
                scaler.step(opt)
                scaler.update()
            else:
                norm = (grad_norm(params) if config.grad_clip is None
                        else clip_grad_norm_(params, config.grad_clip))
                opt.step()
        step += 1
        round_end = fed is None or step % config.local_steps == 0
        if fed is not None and round_end:
            fed.average()                               # the server averages the clients
        if deadline is not None:
            deadline.observe("step", clock() - s0)
        _record(history, step, loss, rate, norm, extra)
        if config.eval_interval and step % config.eval_interval == 0 and round_end:
            run_eval()                                  # (FedAvg: on the averaged model)
        if step % interval == 0 and (deadline is not None or step < total) and round_end:
            save()
        if progress is not None:        # after the checkpoint: an interrupt here loses nothing
            progress(step, total, {"loss": loss, "lr": rate, "elapsed": clock() - t0, **last_eval})
    total = step
    if fed is not None and step % config.local_steps:
        fed.average()                                   # the last, shorter round
    run_eval()
    save()
    if progress is not None:           # once more at the end: the run's whole time, "done"
        progress(step, total, {"loss": history["loss"][-1] if history["loss"] else float("nan"),
                               "lr": history["lr"][-1] if history["lr"] else config.lr,
                               "elapsed": clock() - t0, "done": True, **last_eval})
    return history
