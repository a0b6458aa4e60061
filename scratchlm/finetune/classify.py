"""Sequence classification on ``(text, label)`` examples through the one training loop: a
built-in synthetic task, a CSV reader for the user's own data, training and accuracy.

The model is a classifier over right-padded token ids (:class:`~scratchlm.models.
LlamaForSequenceClassification`: ``logits, loss = model(idx, labels)``, ``model.backward()``),
with or without LoRA.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from .._checks import make_rng, positive_int

__all__ = ["classification_examples", "read_labelled_csv", "classification_batch",
           "fit_text_classifier", "accuracy"]

#: the largest CSV :func:`read_labelled_csv` reads
MAX_CSV_BYTES = 64 << 20


def classification_examples(n_train: int = 2000, n_test: int = 200, seed: int = 0,
                            alphabet: str = "abcdefghij", min_len: int = 3,
                            max_len: int = 8) -> dict:
    """A balanced built-in task: is the string's letters in sorted order? ``{'train', 'test',
    'labels'}`` with ``(text, label)`` pairs, label 1 for sorted, 0 for not (half each)."""
    rng = make_rng(seed)
    n = positive_int(n_train, "n_train") + positive_int(n_test, "n_test", minimum=0)
    chars = np.array(list(alphabet))
    out = []
    for i in range(n):
        L = int(rng.integers(min_len, max_len + 1))
        s = "".join(chars[rng.integers(0, len(chars), L)])
        label = i % 2
        if label:
            s = "".join(sorted(s))
        elif s == "".join(sorted(s)):
            s = s[::-1] if s[::-1] != s else s + chars[0]     # make it unsorted
        out.append((s, label))
    order = rng.permutation(n)
    out = [out[i] for i in order]
    return {"train": out[:n_train], "test": out[n_train:], "labels": ["unsorted", "sorted"]}


def read_labelled_csv(path) -> tuple[list, list]:
    """``(examples, label_names)`` from a UTF-8 CSV file with a header holding ``text`` and
    ``label`` columns: labels are any strings, numbered in sorted order. The file is read whole
    (at most :data:`MAX_CSV_BYTES`) and checked: every row has both fields, ``text`` is not
    empty, and there are at least two labels."""
    from .._files import read_bytes
    raw = read_bytes(path, "CSV file", limit=MAX_CSV_BYTES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 (invalid byte at offset {exc.start})") from None
    rows = csv.DictReader(io.StringIO(text, newline=""))
    if rows.fieldnames is None or not {"text", "label"} <= set(rows.fieldnames):
        raise ValueError(f"{path} must start with a header naming the columns 'text' and "
                         f"'label', got {rows.fieldnames}")
    pairs = []
    for k, row in enumerate(rows, start=2):
        t, lab = row.get("text"), row.get("label")
        if not t or lab is None or lab == "" or None in row:
            raise ValueError(f"{path} line {k}: each row needs a non-empty text and a label "
                             f"(and no extra fields)")
        pairs.append((t, lab.strip()))
    names = sorted({lab for _, lab in pairs})
    if len(names) < 2:
        raise ValueError(f"{path} has {len(names)} distinct label(s); classification needs two "
                         f"or more")
    index = {name: i for i, name in enumerate(names)}
    return [(t, index[lab]) for t, lab in pairs], names


def classification_batch(encoded, pad_id: int, max_len: int):
    """``(idx, labels)``: right-padded ids ``(B, T)`` and labels ``(B,)`` from ``[(ids, label)]``."""
    T = max(ids.size for ids, _ in encoded)
    if T > max_len:
        raise ValueError(f"a text has {T} tokens, more than the model's context {max_len}")
    idx = np.full((len(encoded), T), pad_id, np.int64)
    for b, (ids, _) in enumerate(encoded):
        idx[b, :ids.size] = ids
    return idx, np.array([lab for _, lab in encoded], np.int64)


def _encode_all(tokenizer, examples, pad_id):
    out = []
    for text, label in examples:
        ids = np.asarray(tokenizer.encode(text), np.int64)
        if ids.size == 0:
            raise ValueError(f"the text {text[:40]!r} encodes to no tokens")
        if (ids == pad_id).any():
            raise ValueError(f"the text {text[:40]!r} contains the padding token {pad_id}: the "
                             f"classifier could not find its last token")
        out.append((ids, int(label)))
    return out


def fit_text_classifier(model, examples, tokenizer, config, *, batch_size: int = 16,
                        seed: int = 0, checkpoint=None, meta=None, resume=False, progress=None,
                        log=print, clock=None):
    """Train ``model`` on ``examples`` ``[(text, label)]`` (mean cross-entropy of the label at
    each text's last token) with the one loop and ``config``. Returns the history."""
    import time
    from ..data.sources import ShuffledEpochs
    from ..training.loop import train as run_loop
    batch_size = positive_int(batch_size, "batch_size")
    pad = model.pad_token_id
    encoded = _encode_all(tokenizer, examples, pad)
    context = model.config.block_size
    for _, label in encoded:
        if not 0 <= label < model.num_labels:
            raise ValueError(f"label {label} is outside the model's {model.num_labels} labels")
    source = ShuffledEpochs(len(encoded), batch_size, seed, noun="examples")

    def forward(idx, step):
        return model(*classification_batch([encoded[i] for i in idx], pad, context))[1]

    return run_loop(model, source, forward, config, checkpoint=checkpoint, meta=meta,
                    resume=resume, progress=progress, log=log, clock=clock or time.perf_counter)


def accuracy(model, tokenizer, examples, batch_size: int = 64) -> float:
    """The fraction of ``examples`` whose most likely label is the given one."""
    encoded = _encode_all(tokenizer, examples, model.pad_token_id)
    was = model.training
    model.eval()
    try:
        hits = 0
        for i in range(0, len(encoded), batch_size):
            idx, labels = classification_batch(encoded[i:i + batch_size], model.pad_token_id,
                                               model.config.block_size)
            hits += int((model(idx).argmax(axis=1) == labels).sum())
        return hits / len(encoded)
    finally:
        model.train(was)
