"""The one training loop: the deadline (with an injected clock), the schedule, and every
registered model resuming bit-identically through it."""

import numpy as np
import pytest

from scratchlm import registry
from scratchlm.data import RandomWindows, ShuffledEpochs, StreamChunks
from scratchlm.io import read_checkpoint
from scratchlm.models import GPT, GPTConfig
from scratchlm.training import TrainConfig, train, train_model
from scratchlm.training.loop import Deadline, scheduled_lr

pytestmark = pytest.mark.filterwarnings("ignore:NGramLM.*discounts:RuntimeWarning")

TEXT = "\n".join(["the cat sat on the mat", "the dog sat on the log", "a cat and a dog",
                  "abcabcabc defdefdef ghighighi"] * 40) + "\n"


class FakeClock:
    """Seconds that pass only when the model computes: ``per_step`` for each training forward
    (``slow_after`` steps in, ``slowdown`` times slower: a machine that gets busy), ``per_eval``
    for each evaluation."""

    def __init__(self, per_step=0.1, per_eval=0.5, slow_after=None, slowdown=3.0):
        self.t, self.per_step, self.per_eval = 100.0, per_step, per_eval
        self.slow_after, self.slowdown, self.steps = slow_after, slowdown, 0

    def __call__(self):
        return self.t

    def step(self):
        self.steps += 1
        slow = self.slow_after is not None and self.steps > self.slow_after
        self.t += self.per_step * (self.slowdown if slow else 1.0)


def _tiny_gpt():
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), rng=0)


def _run_with_deadline(clock, seconds, eval_interval=20):
    model = _tiny_gpt()
    ids = np.random.default_rng(0).integers(0, 11, 2000)
    source = RandomWindows(ids, 4, 8, seed=0)

    def forward(batch, step):
        clock.step()
        return model(*batch)[1]

    def evaluate():
        clock.t += clock.per_eval
        return {"val_loss": 1.0}

    config = TrainConfig(time_limit=seconds, lr=1e-3, min_lr=1e-5, warmup=5,
                         eval_interval=eval_interval)
    start = []

    def progress(step, total, info):
        start.append(info["elapsed"])
    hist = train(model, source, forward, config, evaluate=evaluate, progress=progress,
                 log=lambda m: None, clock=clock)
    return hist


@pytest.mark.parametrize("slow_after", [None, 40])
def test_deadline_ends_within_ten_percent_and_the_schedule_ends_there(slow_after):
    clock = FakeClock(slow_after=slow_after)
    t_before = clock.t
    hist = _run_with_deadline(clock, seconds=20.0)
    warm = 2 * 0.1 + 0.5                          # warm-up: two forwards and one evaluation
    used = clock.t - t_before - warm               # training, evaluations and the final ones
    assert 18.0 <= used <= 22.0, used
    steps = hist["step"][-1]
    if slow_after is None:
        assert 150 <= steps <= 180                 # ~0.1 s per step, plus evaluations
    assert hist["lr"][-1] < 1e-4 + 1e-12          # the cosine reached its floor at the deadline
    assert hist["lr"][5] == pytest.approx(1e-3, rel=0.05)
    assert hist["eval_step"][-1] == steps          # the final evaluation fits in the budget


def test_deadline_planner_arithmetic():
    d = Deadline(10.0, step_time=0.5, eval_time=1.0, save_time=0.0, interval=4)
    assert d.fits(0, 100.0)                        # the first step always runs
    assert d.fits(1, 8.4) and not d.fits(1, 8.6)   # 8.5 + 0.5 step + 1.0 final eval > 10
    assert not d.fits(3, 7.6)                      # step 4 would also trigger an evaluation
    assert d.total(0, 0.0) == int(9.0 / (0.5 + 1.0 / 4))
    d.observe("step", 1.0)                         # the first measurement replaces the estimate
    assert d.step_time == 1.0
    d.observe("step", 2.0)
    assert d.step_time == pytest.approx(1.3)


def test_steps_schedule_is_cosine_with_warmup():
    c = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup=10)
    assert scheduled_lr(c, 0, 100) == pytest.approx(1 / 11)
    assert scheduled_lr(c, 10, 100) == pytest.approx(1.0)
    assert scheduled_lr(c, 100, 100) == pytest.approx(0.1)
    assert scheduled_lr(TrainConfig(steps=5, schedule="constant"), 3, 5) == 1e-3


@pytest.mark.parametrize("kw,match", [
    (dict(), "exactly one of steps"), (dict(steps=3, time_limit=4), "exactly one of steps"),
    (dict(steps=0), "steps must be >= 1"), (dict(time_limit=0), "time_limit must be > 0"),
    (dict(steps=2, optimizer="rmsprop"), "optimizer must be one of"),
    (dict(steps=2, lr=1e-3, min_lr=1), r"min_lr \(1.0\) must be <= lr"),
    (dict(steps=2, eval_interval=0), "eval_interval must be >= 1"),
    (dict(steps=2, betas=(0.9, 1.0)), "betas must be two numbers"),
])
def test_train_config_refuses_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_sources_resume_and_refuse_foreign_state():
    ids = np.arange(500) % 7
    a = RandomWindows(ids, 3, 5, seed=1)
    next(a)
    b = RandomWindows(ids, 3, 5, seed=9)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(next(a)[0], next(b)[0])
    s = StreamChunks(ids, 4, 10)
    first = [next(s) for _ in range(s.n_chunks + 1)]
    assert first[0][2] and not first[1][2] and first[-1][2]         # restarts after the last
    e = ShuffledEpochs(10, 3, seed=0)
    seen = [next(e) for _ in range(3)]
    assert len(set(np.concatenate(seen).tolist())) == 9             # one epoch: no repeats
    with pytest.raises(ValueError, match="a 'StreamChunks' source's"):
        e.load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="trained on 10 examples, not 12"):
        ShuffledEpochs(12, 3).load_state_dict(e.state_dict())
    with pytest.raises(ValueError, match="batch_size .4. must be <= the number of training "
                                         "images .3."):
        ShuffledEpochs(3, 4, noun="images")


def _options(entry, corpus):
    opts = dict(entry.tiny)
    if any(o.name == "corpus" for o in entry.options):
        opts["corpus"] = str(corpus)
    if entry.name not in ("markov",) and "sample_length" in entry.defaults():
        opts["sample_length"] = 5
    return opts


LOOP_MODELS = [e.name for e in registry.REGISTRY.values() if e.batch_source]


@pytest.mark.parametrize("name", LOOP_MODELS)
def test_every_registered_model_resumes_bit_identically(tmp_path, name):
    entry = registry.get(name)
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    opts = _options(entry, corpus)
    quiet = dict(log=lambda m: None)
    straight = train_model(name, opts, out=tmp_path / "a.npz", **quiet)

    class Stop(Exception):
        pass

    def interrupt(step, total, info):
        if step == 4:
            raise Stop
    with pytest.raises(Stop):
        train_model(name, opts, out=tmp_path / "b.npz", progress=interrupt, **quiet)
    _, doc = read_checkpoint(tmp_path / "b.npz")
    assert doc["meta"]["loop"]["step"] < 4 and doc["meta"]["model"] == name
    resumed = train_model(name, None, out=tmp_path / "b.npz", resume=True, **quiet)
    assert resumed.history == straight.history
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_the_registry_builds_every_model_from_its_checkpoint(tmp_path):
    from scratchlm.training import load_model
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    for name, entry in registry.REGISTRY.items():
        out = tmp_path / f"{name}.npz"
        run = train_model(name, _options(entry, corpus), out=out, log=lambda m: None)
        model, tok, meta, found = load_model(out)
        assert found.name == name and type(model) is type(run.model)
        for k, v in run.model.state_dict().items():
            np.testing.assert_array_equal(model.state_dict()[k], v)


def test_registry_lookups_are_clear():
    with pytest.raises(ValueError, match="no model called 'transformr' .did you mean 'transformer'"):
        registry.get("transformr")
    with pytest.raises(ValueError, match="has no option 'n_layr' .did you mean 'n_layer'"):
        registry.get("transformer").resolve({"n_layr": 2})
    with pytest.raises(ValueError, match=r"--steps must be an integer >= 1, got 0"):
        registry.get("lstm").resolve({"steps": 0})
    with pytest.raises(ValueError, match="holds a 'Foo', which no registered model is"):
        registry.entry_for_checkpoint({"module": "Foo", "meta": {}})
    assert registry.entry_for_checkpoint({"module": "RNNLM", "meta": {"config": {"cell": "gru"}}}
                                         ).name == "gru"


def test_a_slow_first_evaluation_does_not_cut_the_run_short():
    """The warm-up times the second evaluation: a first call that compiles must not be held
    back as the final evaluation's reserve."""
    clock = FakeClock()
    calls = []
    model = _tiny_gpt()
    ids = np.random.default_rng(0).integers(0, 11, 2000)

    def forward(batch, step):
        clock.step()
        return model(*batch)[1]

    def evaluate():
        clock.t += 10.0 if not calls else 0.5           # the first call "compiles"
        calls.append(1)
        return {"val_loss": 1.0}
    t_before = clock.t
    train(model, RandomWindows(ids, 4, 8), forward, TrainConfig(time_limit=60.0),
          evaluate=evaluate, log=lambda m: None, clock=clock)
    used = clock.t - t_before - (10.0 + 0.5 + 2 * 0.1)    # minus the warm-up
    assert 57.0 <= used <= 61.0, used


def test_resuming_a_spent_time_budget_trains_nothing_and_says_so(tmp_path):
    clock = FakeClock()
    model = _tiny_gpt()
    ids = np.random.default_rng(0).integers(0, 11, 2000)

    def forward(batch, step):
        clock.step()
        return model(*batch)[1]
    ck = tmp_path / "t.npz"
    h1 = train(model, RandomWindows(ids, 4, 8), forward, TrainConfig(time_limit=3.0),
               checkpoint=ck, log=lambda m: None, clock=clock)
    before = ck.stat().st_mtime_ns
    said = []
    h2 = train(model, RandomWindows(ids, 4, 8), forward, TrainConfig(time_limit=3.0),
               checkpoint=ck, resume=True, log=said.append, clock=clock)
    assert h2["step"] == h1["step"] and any("time budget is spent" in m for m in said)
    assert ck.stat().st_mtime_ns == before                  # nothing new: not rewritten
    h3 = train(model, RandomWindows(ids, 4, 8), forward, TrainConfig(time_limit=6.0),
               checkpoint=ck, resume=True, log=lambda m: None, clock=clock)
    assert h3["step"][-1] > h1["step"][-1] + 10             # a larger budget continues


def test_the_compile_notice_follows_numbas_cache_misses(monkeypatch):
    import scratchlm.training.loop as loop
    said = []
    monkeypatch.setattr(loop, "kernels_compiling", lambda: True)
    clock = FakeClock()
    model = _tiny_gpt()

    def slow_forward(batch, step):
        import time
        time.sleep(0.7)                                  # two calls: past the notice's 1 s
        return model(*batch)[1]
    ids = np.random.default_rng(0).integers(0, 11, 500)
    loop.warm_up(model, RandomWindows(ids, 2, 8), slow_forward, None,
                 TrainConfig(time_limit=5.0), clock, said.append)
    assert said == ["compiling kernels (first run only)..."]
    monkeypatch.setattr(loop, "kernels_compiling", lambda: False)
    said.clear()
    loop.warm_up(model, RandomWindows(ids, 2, 8), slow_forward, None,
                 TrainConfig(time_limit=5.0), clock, said.append)
    assert said == []
