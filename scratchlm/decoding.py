r"""Decoding for encoder-decoder models: greedy search and beam search over a batch.

Both searches are model-agnostic. A model supplies one function,

.. code-block:: text

    step_fn(tokens, state) -> (log_probs, new_state)
        tokens     (R, t) int64: each row is BOS followed by the t - 1 tokens chosen so far
        state      whatever the model carries (encoder memory, KV caches, RNN hidden state ...)
        log_probs  (R, V) float: log P(next token | tokens, source) for each of the R rows

and a ``reorder(state, indices)`` callable that returns the state of rows ``indices`` (in that
order, repeats allowed). The default, :func:`default_reorder`, indexes axis 0 of every array in a
state built from arrays, tuples, lists, dicts and ``None``; pass your own for anything else. The
searches use it to copy a source's state into its beams, to follow the beams a step keeps, and to
drop rows (and their compute) once a sequence has finished.

Sequences are counted without BOS: a hypothesis :math:`y = (y_1, \dots, y_n)` has length
:math:`|y| = n`, its last token being EOS when it finished, and its log-probability is
:math:`\log P(y) = \sum_{i=1}^{n} \log P(y_i \mid y_{<i}, x)` (EOS's term included). The
returned sequences hold the tokens after BOS and before EOS. A search stops at EOS or after
``max_len`` tokens; a sequence cut at ``max_len`` is returned as it stands (no EOS).

**Greedy search** takes :math:`y_i = \arg\max_v \log P(v \mid y_{<i}, x)` (ties: the lowest id)
until EOS.

**Beam search** keeps, for every source, the ``beam_size`` = :math:`K` best unfinished prefixes.
Each step extends each of them by every token and ranks the :math:`KV` candidates by
log-probability; walking the best :math:`2K` in order,

* a candidate ending in EOS whose rank is below :math:`K` (it would have taken a beam) becomes a
  *finished hypothesis*, scored :math:`s(y) = \log P(y) / \mathrm{lp}(|y|)`; it is never
  extended again;
* the first :math:`K` candidates not ending in EOS become the next beams (taking the best
  :math:`2K` guarantees :math:`K` of them even if :math:`K` candidates end in EOS).

Finished hypotheses are ranked with the length penalty of Wu et al. (2016, "Google's Neural
Machine Translation System", eq. 14),

.. math:: \mathrm{lp}(n) = \left(\frac{5 + n}{6}\right)^{\alpha},

``length_penalty`` = :math:`\alpha`: :math:`\alpha = 0` ranks by the plain sum
:math:`\log P(y)` (which favours short outputs); GNMT used :math:`\alpha \in [0.6, 0.7]`.
Beams themselves are always ranked by :math:`\log P`.

A source is done when it has ``n_best`` finished hypotheses and no beam can still beat the
``n_best``-th of them. Because a log-probability can only fall as a prefix grows, a beam with
:math:`\log P = c \le 0` now ends with score at most :math:`\max(c / \mathrm{lp}(t+1),\ c /
\mathrm{lp}(\mathrm{max\_len}))` (:math:`\mathrm{lp}` is monotone in :math:`n`); once every
beam's bound is at most the ``n_best``-th finished score, stopping cannot change the answer. At
``max_len`` the surviving beams join the finished hypotheses as cut sequences. The search is
therefore exact whenever the beam is wide enough never to drop a prefix (tested against brute
force), and with :math:`K = 1` and :math:`\alpha = 0` it returns exactly the greedy sequence.

``step_fn`` must return log-probabilities (:math:`\le 0`; values up to 1e-4 above zero, float32
round-off of a log-softmax, are clipped to 0), not logits: the stopping bound relies on it.
"""

from __future__ import annotations

import numpy as np

from ._checks import (NonFiniteError, boolean, float_errors_checked, integer, make_rng,
                      positive_int)

__all__ = ["greedy_decode", "beam_search", "default_reorder", "length_penalty_gnmt"]


def default_reorder(state, indices):
    """The rows ``indices`` of ``state``: axis 0 of every array indexed, through nested tuples,
    lists and dicts; ``None`` and Python scalars (shared by all rows) pass through."""
    if state is None or isinstance(state, (bool, int, float, str, np.generic)):
        return state
    if isinstance(state, np.ndarray):
        return state[indices]
    if isinstance(state, tuple):
        return tuple(default_reorder(s, indices) for s in state)
    if isinstance(state, list):
        return [default_reorder(s, indices) for s in state]
    if isinstance(state, dict):
        return {k: default_reorder(v, indices) for k, v in state.items()}
    raise TypeError(f"default_reorder handles arrays, tuples, lists, dicts and None; got "
                    f"{type(state).__name__} -- pass reorder= for this state")


def length_penalty_gnmt(n, alpha: float):
    r""":math:`\mathrm{lp}(n) = ((5 + n) / 6)^\alpha` (Wu et al., 2016); 1 when alpha = 0."""
    return ((5.0 + np.asarray(n, dtype=np.float64)) / 6.0) ** alpha


def _batch_size(state, batch_size) -> int:
    if batch_size is not None:
        return positive_int(batch_size, "batch_size")

    def first(s):
        if isinstance(s, np.ndarray):
            return s
        items = s.values() if isinstance(s, dict) else s if isinstance(s, (tuple, list)) else ()
        for item in items:
            found = first(item)
            if found is not None:
                return found
        return None

    leaf = first(state)
    if leaf is None or leaf.ndim == 0 or leaf.shape[0] == 0:
        raise ValueError("cannot infer the batch size from state (no array with a batch axis "
                         "0 in it): pass batch_size=")
    return int(leaf.shape[0])


def _token_id(value, name):
    value = integer(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _log_probs(out, rows: int, eos_id: int, step: int) -> np.ndarray:
    """Check step_fn's log-probabilities; return them as float64 (R, V).

    Every row must be a distribution: no NaN, no +inf, and at least one token with a finite
    log-probability (an all ``-inf`` row has no token to choose; its argmax would silently be
    token 0). One maximum per row finds all three -- NaN propagates through it."""
    if not isinstance(out, np.ndarray) or out.dtype.kind != "f":
        raise TypeError(f"step_fn must return log_probs as a float numpy array, got "
                        f"{getattr(out, 'dtype', type(out).__name__)} at step {step}")
    if out.ndim != 2 or out.shape[0] != rows:
        raise ValueError(f"step_fn must return log_probs of shape ({rows}, V) -- one row per "
                         f"row of tokens -- got {out.shape} at step {step}")
    if out.shape[1] <= eos_id:
        raise ValueError(f"step_fn returned {out.shape[1]} log-probabilities per row, so eos_id "
                         f"{eos_id} is out of range")
    lp = out.astype(np.float64)
    top = lp.max(axis=1)                                                      # (R,)
    bad = ~np.isfinite(top)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        what = ("NaN" if np.isnan(top[r]) else "+inf" if top[r] > 0
                else "-inf for every token (no token has a probability)")
        raise NonFiniteError(
            f"step_fn returned {what} log-probabilities in row {r} at step {step}: the model's "
            f"parameters or activations are not finite (a diverged model or a corrupt "
            f"checkpoint?) -- nothing can be decoded from them")
    if top.max() > 1e-4:
        raise ValueError(f"step_fn must return log-probabilities (<= 0), got a maximum of "
                         f"{top.max():.4g} at step {step}: apply a log-softmax to the logits")
    return np.minimum(lp, 0.0)


@float_errors_checked          # it checks its results; no NumPy warnings
def greedy_decode(step_fn, state, bos_id, eos_id, max_len, *, batch_size=None,
                  reorder=default_reorder):
    """Greedy search for a batch of sources.

    Args:
        step_fn: ``step_fn(tokens (R, t), state) -> (log_probs (R, V), new_state)`` (see the
            module docstring).
        state: the state of the ``B`` sources, one row each.
        bos_id, eos_id: token ids; every row starts as ``[bos_id]`` and stops at ``eos_id``.
        max_len: at most this many tokens are generated per source (EOS included).
        batch_size: ``B``; by default the leading size of the first array in ``state``.
        reorder: ``reorder(state, indices)``; rows that finish are dropped with it.

    Returns:
        ``(sequences, scores)``: a list of ``B`` int64 arrays (the tokens after BOS, EOS
        excluded) and float64 ``(B,)`` log-probabilities of the generated tokens (EOS's
        included when it was generated).
    """
    bos_id, eos_id = _token_id(bos_id, "bos_id"), _token_id(eos_id, "eos_id")
    max_len = positive_int(max_len, "max_len")
    B = _batch_size(state, batch_size)
    tokens = np.full((B, 1), bos_id, dtype=np.int64)
    rows = np.arange(B)                         # the source each current row belongs to
    sequences = [None] * B
    scores = np.zeros(B)
    for step in range(max_len):
        log_probs, state = step_fn(tokens, state)
        log_probs = _log_probs(log_probs, len(rows), eos_id, step)
        nxt = log_probs.argmax(axis=1)                                         # (R,)
        scores[rows] += log_probs[np.arange(len(rows)), nxt]
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)               # (R, t + 1)
        done = nxt == eos_id
        if step == max_len - 1:
            done[:] = True
        if done.any():
            for r in np.flatnonzero(done):
                seq = tokens[r, 1:]
                sequences[rows[r]] = (seq[:-1] if nxt[r] == eos_id else seq).copy()
            keep = np.flatnonzero(~done)
            if keep.size == 0:
                break
            rows, tokens, state = rows[keep], tokens[keep], reorder(state, keep)
    return sequences, scores


@float_errors_checked          # it checks its results; no NumPy warnings
def beam_search(step_fn, state, bos_id, eos_id, beam_size, max_len, length_penalty=0.6, *,
                n_best=None, batch_size=None, reorder=default_reorder):
    r"""Beam search for a batch of sources (algorithm in the module docstring).

    Args:
        step_fn, state, bos_id, eos_id, max_len, batch_size, reorder: as :func:`greedy_decode`.
            ``state`` holds one row per source; it is expanded to ``beam_size`` rows per source
            with ``reorder``.
        beam_size: :math:`K`, the number of prefixes kept per source.
        length_penalty: :math:`\alpha` of GNMT's :math:`\mathrm{lp}(n) = ((5+n)/6)^\alpha`;
            0 ranks finished hypotheses by their plain log-probability.
        n_best: ``None`` (default) returns the best hypothesis per source; an int
            ``<= beam_size`` returns up to that many, best first.

    Returns:
        ``(sequences, scores)``: with ``n_best=None`` a list of ``B`` int64 arrays (tokens
        after BOS, EOS excluded) and float64 ``(B,)`` scores :math:`\log P(y)/\mathrm{lp}(|y|)`;
        with ``n_best=k`` a list of ``B`` lists of arrays and a list of ``B`` float64 arrays.
    """
    bos_id, eos_id = _token_id(bos_id, "bos_id"), _token_id(eos_id, "eos_id")
    K = positive_int(beam_size, "beam_size")
    max_len = positive_int(max_len, "max_len")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float, np.number)):
        raise TypeError(f"length_penalty must be a number, got {type(length_penalty).__name__}")
    if not np.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be finite, got {length_penalty}")
    alpha = float(length_penalty)
    need = 1 if n_best is None else positive_int(n_best, "n_best")
    if need > K:
        raise ValueError(f"n_best must be <= beam_size ({K}), got {need}")
    B = _batch_size(state, batch_size)

    def lp(n):
        return float(length_penalty_gnmt(n, alpha))

    state = reorder(state, np.repeat(np.arange(B), K))                        # B rows -> B*K
    active = np.arange(B)                            # sources still searching, K rows each
    tokens = np.full((B * K, 1), bos_id, dtype=np.int64)
    cum = np.full((B, K), -np.inf)                   # log P of each beam
    cum[:, 0] = 0.0                                  # one live beam at first: no duplicates
    finished = [[] for _ in range(B)]                # (score, tokens before EOS) per source
    for step in range(max_len):
        log_probs, state = step_fn(tokens, state)
        nb = len(active)
        log_probs = _log_probs(log_probs, nb * K, eos_id, step)
        V = log_probs.shape[1]
        cand = (cum[:, :, None] + log_probs.reshape(nb, K, V)).reshape(nb, K * V)
        top = np.argsort(-cand, axis=1, kind="stable")[:, :min(2 * K, K * V)]
        length = step + 1                            # tokens in a candidate, EOS included
        src = np.zeros((nb, K), dtype=np.int64)      # the beam each new beam extends
        tok = np.full((nb, K), bos_id, dtype=np.int64)   # filler for dead beams: a valid id
        new_cum = np.full((nb, K), -np.inf)
        for i in range(nb):
            n = 0
            for rank, j in enumerate(top[i]):
                s = cand[i, j]
                if s == -np.inf:                     # sorted: the rest are impossible too
                    break
                k, v = divmod(int(j), V)
                if v == eos_id:
                    if rank < K:
                        finished[active[i]].append((s / lp(length), tokens[i * K + k, 1:].copy()))
                    continue
                src[i, n], tok[i, n], new_cum[i, n] = k, v, s
                n += 1
                if n == K:
                    break
        picked = np.arange(nb)[:, None] * K + src                             # (nb, K) rows
        tokens = np.concatenate([tokens[picked.reshape(-1)], tok.reshape(-1, 1)], axis=1)
        cum = new_cum
        done = np.zeros(nb, dtype=bool)
        for i in range(nb):
            b, alive = active[i], cum[i][np.isfinite(cum[i])]
            if step == max_len - 1:                  # cut: the surviving beams are hypotheses
                for k in np.flatnonzero(np.isfinite(cum[i])):
                    finished[b].append((cum[i, k] / lp(max_len), tokens[i * K + k, 1:].copy()))
                done[i] = True
            elif len(finished[b]) >= need:
                kth = sorted((h[0] for h in finished[b]), reverse=True)[need - 1]
                bound = max((max(c / lp(length + 1), c / lp(max_len)) for c in alive),
                            default=-np.inf)
                done[i] = bound <= kth
        keep = np.flatnonzero(~done)
        if keep.size == 0:
            break
        state = reorder(state, picked[keep].reshape(-1))
        rows = (keep[:, None] * K + np.arange(K)).reshape(-1)
        tokens, cum, active = tokens[rows], cum[keep], active[keep]

    sequences, scores = [], []
    for b in range(B):
        hyps = sorted(finished[b], key=lambda h: -h[0])[:need]               # stable: first found wins ties
        if not hyps:                                 # step_fn gave every token probability 0
            hyps = [(-np.inf, np.zeros(0, dtype=np.int64))]
        seqs = [h[1] for h in hyps]
        if n_best is None:
            sequences.append(seqs[0])
            scores.append(hyps[0][0])
        else:
            sequences.append(seqs)
            scores.append(np.array([h[0] for h in hyps]))
    return sequences, (np.array(scores, dtype=np.float64) if n_best is None else scores)


def _real(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_temperature(temperature) -> float:
    """A sampling temperature: a finite number > 0 (``inf`` would silently sample uniformly)."""
    t = _real(temperature, "temperature")
    if not (t > 0 and np.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return t


def check_sampling(temperature, top_k, top_p):
    """Validate ``generate``'s sampling arguments; returns ``(temperature, top_k, top_p)``."""
    temperature = check_temperature(temperature)
    if top_k is not None:
        top_k = positive_int(top_k, "top_k")
    if top_p is not None:
        top_p = _real(top_p, "top_p")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return temperature, top_k, top_p


def check_logits(logits: np.ndarray, what: str = "token") -> None:
    """Refuse logits from which no token can honestly be chosen: NaN or +inf anywhere in a row,
    or a row that is ``-inf`` everywhere. NaN compares false with everything, so without this
    check the argmax and the inverse-CDF draw both return token 0, forever. One maximum per row
    (cheap next to the forward that produced the logits) catches all three."""
    top = logits.max(axis=-1)                                                 # (B,)
    bad = ~np.isfinite(top)
    if bad.any():
        b = int(np.flatnonzero(bad)[0])
        bad_value = ("NaN" if np.isnan(top[b]) else "+inf" if top[b] > 0
                     else f"-inf for every {what}")
        raise NonFiniteError(
            f"the logits of batch row {b} are {bad_value}: the model's parameters or activations "
            f"are not finite (a diverged model or a corrupt checkpoint?) -- no {what} can be "
            f"chosen")


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, greedy=False, rng=None):
    """The next token of a language model: logits ``(B, V)`` -> ids ``(B,)``.

    Samples from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens
    and/or the smallest set whose probability reaches ``top_p`` (nucleus sampling, Holtzman et
    al., 2020); ``greedy=True`` takes the argmax. Computed in float64 whatever the logits' dtype.
    Shared by every model's ``generate`` (GPT, RNNLM, ConvLM); the sampling arguments are
    checked there (:func:`check_sampling`). Logits with NaN or +inf, or a row with no finite
    logit, raise :class:`~scratchlm._checks.NonFiniteError` (see :func:`check_logits`).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must be (B, V) with V >= 1, got shape {logits.shape}")
    check_logits(logits)
    if boolean(greedy, "greedy"):
        return logits.argmax(axis=-1)
    rng = make_rng(rng)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]                 # as torch.topk + mask
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        keep_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p < top_p      # reach top_p, incl. crossing one
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    u = rng.random(p.shape[0])[:, None]
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)
