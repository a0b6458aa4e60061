"""Shared fixtures: hypothesis profiles and the PyTorch reference helpers.

Hypothesis profiles (select with HYPOTHESIS_PROFILE): ``default`` -- few examples, derandomised,
fast enough for CI on two cores; ``thorough`` -- many examples, for a local soak.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=8, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def to_torch(torch, a, grad=False):
    t = torch.from_numpy(np.array(a, order="C", copy=True))
    return t.requires_grad_(True) if grad else t


def assert_close(ours, theirs, dtype=None):
    """float64: 1e-10 relative (plus a tiny absolute floor); float32: torch.testing.assert_close's
    defaults (rtol 1.3e-6, atol 1e-5)."""
    import torch
    ours = np.asarray(ours)
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    dtype = dtype or ours.dtype
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    if np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    else:
        torch.testing.assert_close(torch.from_numpy(np.ascontiguousarray(ours)),
                                   torch.from_numpy(np.ascontiguousarray(theirs)))


def same_state(a, b) -> bool:
    """Equal nested structures (dicts, lists, tuples, numbers), arrays compared bit for bit with
    their dtype and shape: what "all or nothing" and "bit-identical" tests assert."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_state, a, b))
    return a == b


def copy_weights_to_torch(torch, ours, theirs):
    """Load our state_dict into a torch module: names and shapes must coincide exactly."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v).copy()) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=True)
    return theirs


#: the reference implementations the parity tests compare against, and what installs them
REFERENCES = ("torch", "kenlm", "transformers", "tokenizers", "safetensors", "peft",
              "gensim")                                                  # .ci/run installs these


def train_tiny(tmp_path, model="transformer", steps=3, text=None, width=16, extra=()):
    """A small checkpoint trained from the command line on ``text`` (default: a short repeated
    sentence): ``(checkpoint path, corpus path)``. The compression and fine-tuning commands'
    tests start from one."""
    from scratchlm.cli import main
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(text or "the cat sat on the mat\n" * 100, encoding="utf-8")
    ck = tmp_path / f"{model}.npz"
    size = (["--n-layer", "1", "--n-head", "2", "--n-embd", str(width)] if model == "transformer"
            else ["--num-hidden-layers", "1", "--num-attention-heads", "2",
                  "--num-key-value-heads", "1", "--hidden-size", str(width),
                  "--intermediate-size", str(width + 8)])
    assert main(["train", model, "--steps", str(steps), "--corpus", str(corpus), "--out",
                 str(ck), "--sample-length", "0", *size, "--block-size", "16", *extra]) == 0
    return ck, corpus


def pytest_terminal_summary(terminalreporter):
    """Say in one line which parity tests were skipped because a reference is not installed, and
    how to run them (``bash .ci/run`` installs the references), instead of leaving a newcomer
    with an unexplained count of skips."""
    missing = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        for name in REFERENCES:
            if f"could not import '{name}" in reason:
                missing[name] = missing.get(name, 0) + 1
    if missing:
        parts = ", ".join(f"{n} ({k})" for n, k in sorted(missing.items()))
        terminalreporter.write_line(
            f"parity tests skipped because a reference is not installed: {parts}; "
            f"`bash .ci/run` installs them (torch==2.13.0, kenlm, transformers) and runs everything")
