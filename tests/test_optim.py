"""scratchlm.optim against torch.optim: SGD, Adam, AdamW, clipping, penalties, schedulers.

Every torch comparison feeds both sides the same deterministic pseudo-gradient, a function of the
current parameter and the step (so the whole trajectory matters), and compares after every step.
"""

import copy
import math

import numpy as np
import pytest

from scratchlm.kernels import use_backend
from scratchlm.nn import Linear, Parameter
from scratchlm.optim import (
    SGD, Adam, AdamW, L1Penalty, L2Penalty, LambdaLR, LRScheduler, Optimizer, StepLR,
    WarmupCosineLR, clip_grad_norm_, clip_grad_value_, cosine_with_warmup,
)

SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 20


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def make_params(dtype=np.float64, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def pseudo_grad(data, step):
    """Deterministic gradient depending on the current parameter and the step."""
    g = np.sin(3.0 * data) * (1.0 + 0.1 * step) + 0.3 * np.cos(data * step) - 0.05 * step
    return g.astype(data.dtype)


def set_grads(params, step, torch_params=None):
    grads = []
    for i, p in enumerate(params):
        g = pseudo_grad(p.data, step)
        p.grad[...] = g
        grads.append(g)
        if torch_params is not None:
            import torch
            torch_params[i].grad = torch.from_numpy(g.copy())
    return grads


def torch_copy(torch, params):
    return [torch.tensor(p.data.copy(), requires_grad=True) for p in params]


def run_both(torch, ours_cls, theirs_cls, kwargs, dtype, check, steps=STEPS):
    ours = make_params(dtype)
    theirs = torch_copy(torch, ours)
    opt = ours_cls(ours, **kwargs)
    topt = theirs_cls(theirs, **kwargs)
    for t in range(1, steps + 1):
        grads = set_grads(ours, t, theirs)
        opt.step()
        topt.step()
        for p, q, g in zip(ours, theirs, grads):
            assert p.data.dtype == dtype
            check(p.data, q.detach().numpy(), t)
            assert np.array_equal(p.grad, g), "step() must not modify param.grad"
    return ours, opt, theirs, topt


def check_f64(ours, theirs, t):
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=0, err_msg=f"step {t}")


def check_f32(ours, theirs, t):
    import torch
    torch.testing.assert_close(torch.from_numpy(ours.copy()), torch.from_numpy(theirs.copy()),
                               msg=lambda m: f"step {t}: {m}")


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.5, weight_decay=0.05),
    dict(lr=0.05, weight_decay=0.1, nesterov=True, momentum=0.8),
    dict(lr=0.1, momentum=0.9, maximize=True),
]
ADAM_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, amsgrad=True),
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, amsgrad=True, maximize=True),
]
ADAMW_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, weight_decay=0.1, amsgrad=True),
    dict(lr=0.02, betas=(0.5, 0.9), maximize=True),
]


# -- trajectories against torch --------------------------------------------------------------
@pytest.mark.parametrize("kwargs", SGD_CASES, ids=lambda k: ",".join(map(str, k)))
def test_sgd_matches_torch_float64(torch, kwargs):
    run_both(torch, SGD, torch.optim.SGD, kwargs, np.float64, check_f64)


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=lambda k: ",".join(map(str, k)))
def test_adam_matches_torch_float64(torch, kwargs):
    _, opt, _, topt = run_both(torch, Adam, torch.optim.Adam, kwargs, np.float64, check_f64)
    # state after the run: same names, same step count, same moments
    for i, p in enumerate(opt.param_groups[0]["params"]):
        ours, theirs = opt.state[p], topt.state_dict()["state"][i]
        assert set(ours) == set(theirs)
        assert ours["step"] == STEPS and isinstance(ours["step"], int)
        for k in ours:
            if k != "step":
                np.testing.assert_allclose(ours[k], theirs[k].numpy(), rtol=1e-10)


@pytest.mark.parametrize("kwargs", ADAMW_CASES, ids=lambda k: ",".join(map(str, k)))
def test_adamw_matches_torch_float64(torch, kwargs):
    run_both(torch, AdamW, torch.optim.AdamW, kwargs, np.float64, check_f64)


def test_adamw_default_weight_decay(torch):
    params = make_params()
    assert AdamW(params).param_groups[0]["weight_decay"] == 1e-2
    assert Adam(params).param_groups[0]["weight_decay"] == 0
    run_both(torch, AdamW, torch.optim.AdamW, dict(lr=0.05), np.float64, check_f64, steps=5)


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.05, weight_decay=0.1)),
])
def test_float32_matches_torch_and_stays_float32(torch, name, kwargs):
    ours_cls = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name]
    _, opt, _, _ = run_both(torch, ours_cls, getattr(torch.optim, name), kwargs, np.float32,
                            check_f32)
    for p, state in opt.state.items():
        for k, v in state.items():
            if k != "step":
                assert v.dtype == np.float32 and v.shape == p.data.shape, k


def test_param_groups_with_different_hyperparameters(torch):
    ours = make_params()
    theirs = torch_copy(torch, ours)
    opt = SGD([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.01, "momentum": 0.5}],
              lr=0.1, momentum=0.9)
    topt = torch.optim.SGD([{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.01,
                                                      "momentum": 0.5}], lr=0.1, momentum=0.9)
    aours = make_params(seed=1)
    atheirs = torch_copy(torch, aours)
    aopt = Adam([{"params": aours[0], "lr": 0.1, "betas": (0.5, 0.9)}, {"params": aours[1:]}],
                lr=0.01, amsgrad=True)
    atopt = torch.optim.Adam([{"params": atheirs[0], "lr": 0.1, "betas": (0.5, 0.9)},
                              {"params": atheirs[1:]}], lr=0.01, amsgrad=True)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.5]
    for t in range(1, STEPS + 1):
        set_grads(ours, t, theirs)
        set_grads(aours, t, atheirs)
        opt.step()
        topt.step()
        aopt.step()
        atopt.step()
        for p, q in zip(ours + aours, theirs + atheirs):
            check_f64(p.data, q.detach().numpy(), t)


# -- state_dict --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs", [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (Adam, dict(lr=0.05, amsgrad=True, weight_decay=0.1)),
    (AdamW, dict(lr=0.05)),
])
def test_state_dict_resume_is_bit_identical(cls, kwargs):
    def groups(ps):
        return [{"params": ps[:1], "lr": 0.02}, {"params": ps[1:]}]

    full = make_params()
    opt_full = cls(groups(full), **kwargs)
    for t in range(1, 8):
        set_grads(full, t)
        opt_full.step()
    sd = copy.deepcopy(opt_full.state_dict())

    resumed = [Parameter(p.data.copy()) for p in full]
    opt_res = cls(groups(resumed), **{**kwargs, "lr": 123.0})  # hyperparameters come from sd
    opt_res.load_state_dict(sd)
    assert [g["lr"] for g in opt_res.param_groups] == [g["lr"] for g in opt_full.param_groups]
    assert all(a is b for a, b in zip(opt_res.param_groups[1]["params"], resumed[1:]))
    # the checkpoint is copied, not aliased
    for s in sd["state"].values():
        for v in s.values():
            if isinstance(v, np.ndarray):
                v[...] = np.nan

    for t in range(8, 16):
        set_grads(full, t)
        set_grads(resumed, t)
        opt_full.step()
        opt_res.step()
    for a, b in zip(full, resumed):
        assert np.array_equal(a.data, b.data)
    for a, b in zip(full, resumed):
        for k, v in opt_full.state[a].items():
            assert np.array_equal(v, opt_res.state[b][k])


def test_state_dict_layout_matches_torch(torch):
    ours = make_params()
    theirs = torch_copy(torch, ours)
    opt = Adam([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.01}], lr=0.05, amsgrad=True)
    topt = torch.optim.Adam([{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.01}],
                            lr=0.05, amsgrad=True)
    for t in (1, 2):
        set_grads(ours, t, theirs)
        opt.step()
        topt.step()
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert list(sd["state"]) == list(tsd["state"]) == [0, 1, 2]
    for i in sd["state"]:
        assert set(sd["state"][i]) == set(tsd["state"][i])
        assert sd["state"][i]["step"] == int(tsd["state"][i]["step"]) == 2
    for g, tg in zip(sd["param_groups"], tsd["param_groups"]):
        assert g["params"] == tg["params"]
        for k in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert g[k] == tg[k], k


def test_load_state_dict_mismatches_raise():
    params = make_params()
    sd = SGD(params, lr=0.1, momentum=0.9).state_dict()
    two_groups = SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    with pytest.raises(ValueError, match="1 parameter groups, but this SGD has 2"):
        two_groups.load_state_dict(sd)
    with pytest.raises(ValueError, match="has 3 parameters.*group has 2"):
        SGD(params[:2], lr=0.1).load_state_dict(sd)

    opt = Adam(params)
    set_grads(params, 1)
    opt.step()
    other = make_params(shapes=[(3, 4), (6,), (2, 3, 2)])
    with pytest.raises(ValueError, match=r"'exp_avg'.*shape \(5,\).*shape \(6,\)"):
        Adam(other).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        Adam(params).load_state_dict({"state": {}})


# -- both kernel routes ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs", [
    (Adam, dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    (AdamW, dict(lr=0.05, weight_decay=0.1)),
])
def test_numpy_and_numba_routes_agree(cls, kwargs):
    results = {}
    for backend in ("numpy", "numba"):
        params = make_params()
        opt = cls(params, **kwargs)
        with use_backend(backend):
            for t in range(1, STEPS + 1):
                set_grads(params, t)
                opt.step()
        results[backend] = (params, opt)
    for a, b in zip(results["numpy"][0], results["numba"][0]):
        np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1e-12)
        sa, sb = results["numpy"][1].state[a], results["numba"][1].state[b]
        for k in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(sa[k], sb[k], rtol=0, atol=1e-12)


def test_adam_non_contiguous_parameter():
    a, b = make_params(), make_params()
    b[0].data = np.asfortranarray(b[0].data)
    b[0].grad = np.asfortranarray(b[0].grad)
    opt_a, opt_b = Adam(a, lr=0.05), Adam(b, lr=0.05)
    for t in range(1, 5):
        set_grads(a, t)
        set_grads(b, t)
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.data, y.data)


# -- clipping -----------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 1.0, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(torch, norm_type, max_norm):
    ours = make_params()
    theirs = torch_copy(torch, ours)
    set_grads(ours, 3, theirs)
    total = clip_grad_norm_(ours, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(float(ttotal), rel=1e-12)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-12, atol=0)
    if max_norm < total:
        flat = np.concatenate([p.grad.ravel() for p in ours])
        assert np.linalg.norm(flat, norm_type) == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_float32_and_module(torch):
    ours = make_params(np.float32)
    theirs = torch_copy(torch, ours)
    set_grads(ours, 2, theirs)
    total = clip_grad_norm_(ours, 1.0)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert total == pytest.approx(float(ttotal), rel=1e-6)
    for p, q in zip(ours, theirs):
        assert p.grad.dtype == np.float32
        torch.testing.assert_close(torch.from_numpy(p.grad), q.grad)
    layer = Linear(4, 3)
    layer.weight.grad[...] = 10.0
    assert clip_grad_norm_(layer, 1.0) == pytest.approx(10.0 * math.sqrt(12), rel=1e-6)
    assert clip_grad_norm_([], 1.0) == 0.0


def test_clip_grad_norm_nonfinite(torch):
    params = make_params()
    set_grads(params, 1)
    params[1].grad[2] = np.nan
    before = [p.grad.copy() for p in params]
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.grad, b)
    tparams = torch_copy(torch, params)
    for p, q in zip(params, tparams):
        q.grad = torch.from_numpy(p.grad.copy())
    assert math.isnan(clip_grad_norm_(params, 1.0))
    assert math.isnan(float(torch.nn.utils.clip_grad_norm_(tparams, 1.0)))
    assert all(np.isnan(p.grad).all() for p in params)


def test_clip_grad_value_matches_torch(torch):
    ours = make_params()
    theirs = torch_copy(torch, ours)
    set_grads(ours, 4, theirs)
    assert clip_grad_value_(ours, 0.25) is None
    torch.nn.utils.clip_grad_value_(theirs, 0.25)
    for p, q in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad, q.grad.numpy())
        assert np.abs(p.grad).max() <= 0.25


# -- penalties ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [L1Penalty, L2Penalty])
def test_penalty_value_and_gradient(cls):
    coeff = 0.3
    params = make_params()
    for p in params:  # keep L1 away from its kink at 0 for the finite differences
        p.data[np.abs(p.data) < 0.05] += 0.2
    pen = cls(coeff)
    value = pen(params)
    flat = np.concatenate([p.data.ravel() for p in params])
    expected = coeff * np.abs(flat).sum() if cls is L1Penalty else 0.5 * coeff * (flat ** 2).sum()
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-14)

    start = [np.full_like(p.data, 0.7) for p in params]
    for p, s in zip(params, start):
        p.grad[...] = s
    assert pen.backward() is None
    h = 1e-6
    for p, s in zip(params, start):
        fd = np.empty_like(p.data)
        for i in np.ndindex(p.data.shape):
            old = p.data[i]
            p.data[i] = old + h
            up = cls(coeff)(params)
            p.data[i] = old - h
            down = cls(coeff)(params)
            p.data[i] = old
            fd[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(p.grad - s, fd, rtol=1e-6, atol=1e-8)  # accumulated
    pen.backward(2.0)  # accumulates again, scaled by the upstream gradient
    for p, s in zip(params, start):
        d = coeff * (np.sign(p.data) if cls is L1Penalty else p.data)
        np.testing.assert_allclose(p.grad, s + 3.0 * d, rtol=1e-14)


def test_l2_penalty_equals_sgd_weight_decay():
    a, b = make_params(), make_params()
    opt_a = SGD(a, lr=0.1, momentum=0.9, weight_decay=0.05)
    opt_b = SGD(b, lr=0.1, momentum=0.9)
    pen = L2Penalty(0.05)
    for t in range(1, 8):
        set_grads(a, t)
        set_grads(b, t)
        pen(b)
        pen.backward()
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b):
        assert np.array_equal(x.data, y.data)


def test_penalty_errors():
    with pytest.raises(RuntimeError, match="before forward"):
        L2Penalty(0.1).backward()
    with pytest.raises(ValueError, match="coeff must be >= 0, got -1.0"):
        L1Penalty(-1.0)
    with pytest.raises(TypeError, match="entry 0 is a ndarray"):
        L1Penalty(0.1)([np.zeros(3)])
    assert L2Penalty(0.5)(Linear(2, 2)) >= 0.0


# -- schedulers ----------------------------------------------------------------------------------
def two_group_pair(torch):
    ours = make_params()
    theirs = torch_copy(torch, ours)
    opt = SGD([{"params": ours[:1]}, {"params": ours[1:], "lr": 0.01}], lr=0.1)
    topt = torch.optim.SGD([{"params": theirs[:1]}, {"params": theirs[1:], "lr": 0.01}], lr=0.1)
    return opt, topt


def assert_same_schedule(opt, topt, sched, tsched, steps=50):
    seq, tseq = [sched.get_last_lr()], [tsched.get_last_lr()]
    for _ in range(steps):
        opt.step()
        topt.step()  # no grads: nothing moves, but torch sees optimizer.step() before its own
        sched.step()
        tsched.step()
        seq.append(sched.get_last_lr())
        tseq.append(tsched.get_last_lr())
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
    assert seq == tseq
    return seq


def test_step_lr_matches_torch(torch):
    opt, topt = two_group_pair(torch)
    for p in (p for g in opt.param_groups for p in g["params"]):
        p.grad = None  # the SGD steps inside the loop must not move anything here
    sched = StepLR(opt, step_size=7, gamma=0.5)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=7, gamma=0.5)
    assert sched.base_lrs == tsched.base_lrs == [0.1, 0.01]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.01]
    seq = assert_same_schedule(opt, topt, sched, tsched)
    assert seq[14][0] == pytest.approx(0.1 * 0.25)


def test_lambda_lr_matches_torch(torch):
    opt, topt = two_group_pair(torch)
    lambdas = [lambda t: 0.95 ** t, lambda t: 1.0 / (1 + t)]
    sched = LambdaLR(opt, lambdas)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambdas)
    assert_same_schedule(opt, topt, sched, tsched)


def test_warmup_cosine_matches_torch_lambda_lr(torch):
    opt, topt = two_group_pair(torch)
    W, T, floor = 5, 40, 1e-3
    sched = WarmupCosineLR(opt, warmup_steps=W, total_steps=T, min_lr=floor)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, sched.lr_lambdas)
    seq = assert_same_schedule(opt, topt, sched, tsched)  # 50 steps: past T too
    for t, lrs in enumerate(seq):
        for lr, base in zip(lrs, (0.1, 0.01)):
            assert lr == pytest.approx(cosine_with_warmup(t, base, W, T, floor), rel=1e-12)
    assert seq[0][0] == pytest.approx(0.1 / (W + 1))
    assert seq[W][0] == pytest.approx(0.1)
    assert seq[T][0] == pytest.approx(floor) and seq[T + 5][1] == pytest.approx(floor)
    assert all(a[0] > b[0] for a, b in zip(seq[W:T], seq[W + 1:T + 1]))  # decays monotonically


def test_cosine_with_warmup_formula():
    assert cosine_with_warmup(0, 1.0, 0, 10) == 1.0
    assert cosine_with_warmup(5, 2.0, 0, 10, 0.0) == pytest.approx(1.0)
    assert cosine_with_warmup(1, 3.0, 2, 10) == pytest.approx(2.0)
    assert cosine_with_warmup(11, 3.0, 2, 10, 0.5) == 0.5
    with pytest.raises(ValueError, match="total_steps must be > warmup_steps"):
        cosine_with_warmup(0, 1.0, 10, 10)


def test_scheduler_drives_adamw_like_torch(torch):
    ours = make_params()
    theirs = torch_copy(torch, ours)
    opt = AdamW(ours, lr=0.05, weight_decay=0.1)
    topt = torch.optim.AdamW(theirs, lr=0.05, weight_decay=0.1)
    sched = WarmupCosineLR(opt, 3, 15, min_lr=0.005)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, sched.lr_lambdas)
    for t in range(1, STEPS + 1):
        set_grads(ours, t, theirs)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        for p, q in zip(ours, theirs):
            check_f64(p.data, q.detach().numpy(), t)


@pytest.mark.parametrize("make", [
    lambda opt: StepLR(opt, 4, gamma=0.3),
    lambda opt: WarmupCosineLR(opt, 3, 20, min_lr=1e-4),
    lambda opt: LambdaLR(opt, lambda t: 0.9 ** t),
])
def test_scheduler_state_dict_resume(make):
    opt = Adam(make_params(), lr=0.1)
    sched = make(opt)
    for _ in range(9):
        sched.step()
    opt2 = Adam(make_params(), lr=0.1)
    sched2 = make(opt2)
    sched2.load_state_dict(copy.deepcopy(sched.state_dict()))
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert sched2.get_last_lr() == sched.get_last_lr()
    for _ in range(15):
        sched.step()
        sched2.step()
        assert sched2.get_last_lr() == sched.get_last_lr()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_scheduler_errors():
    opt = SGD(make_params(), lr=0.1)
    with pytest.raises(KeyError, match="initial_lr"):
        StepLR(opt, 3, last_epoch=5)
    with pytest.raises(TypeError, match="Optimizer"):
        StepLR(object(), 3)
    with pytest.raises(ValueError, match="step_size must be >= 1, got 0"):
        StepLR(opt, 0)
    with pytest.raises(ValueError, match="min_lr must be <= the initial lr"):
        WarmupCosineLR(opt, 2, 10, min_lr=1.0)
    with pytest.raises(ValueError, match="Expected 1 lr_lambdas"):
        LambdaLR(opt, [lambda t: 1.0, lambda t: 1.0])
    with pytest.raises(NotImplementedError):
        LRScheduler(opt)


# -- construction and validation ----------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs,name,value", [
    (SGD, dict(lr=-0.1), "lr", "-0.1"),
    (SGD, dict(momentum=-0.5), "momentum", "-0.5"),
    (SGD, dict(weight_decay=-1e-4), "weight_decay", "-0.0001"),
    (SGD, dict(nesterov=True), "momentum > 0", "momentum=0"),
    (SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "dampening == 0", "dampening=0.1"),
    (Adam, dict(lr=-1), "lr", "-1.0"),
    (Adam, dict(betas=(1.0, 0.999)), "betas[0]", "1.0"),
    (Adam, dict(betas=(0.9, -0.1)), "betas[1]", "-0.1"),
    (Adam, dict(eps=-1e-8), "eps", "-1e-08"),
    (Adam, dict(weight_decay=-0.1), "weight_decay", "-0.1"),
    (AdamW, dict(betas=(0.9, 1.5)), "betas[1]", "1.5"),
    (AdamW, dict(lr=float("nan")), "lr", "nan"),
])
def test_bad_hyperparameters_raise(cls, kwargs, name, value):
    with pytest.raises(ValueError) as info:
        cls(make_params(), **kwargs)
    message = str(info.value)
    assert name in message and value in message and cls.__name__ in message


def test_bad_group_hyperparameter_names_group():
    params = make_params()
    with pytest.raises(ValueError, match=r"param group 1\).*lr must be >= 0, got -0.5"):
        SGD([{"params": params[:1]}, {"params": params[1:], "lr": -0.5}], lr=0.1)
    with pytest.raises(ValueError, match="betas must be a pair"):
        Adam(params, betas=(0.9,))
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        SGD(params, momentum=0.9, nesterov="yes")


def test_bad_params_raise():
    params = make_params()
    with pytest.raises(TypeError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="entry 1 of param group 0 is a ndarray"):
        SGD([params[0], np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="not a set"):
        SGD(set(params), lr=0.1)
    with pytest.raises(TypeError, match="must be a dict"):
        SGD([{"params": params[:1]}, params[1]], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": params[:2]}, {"params": params[1:]}], lr=0.1)
    opt = SGD(params[:1], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": params[:2]})
    opt.add_param_group({"params": params[1:], "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["momentum"] == 0
    params[0].grad = np.zeros(7)
    with pytest.raises(ValueError, match="gradient of shape"):
        opt.step()


def test_zero_grad_step_closure_and_single_parameter():
    layer = Linear(3, 2)
    opt = Adam(layer.parameters(), lr=0.1)
    assert isinstance(opt, Optimizer)
    grads = [p.grad for p in layer.parameters()]
    for g in grads:
        g[...] = 1.0
    assert opt.step(lambda: 1.25) == 1.25
    opt.zero_grad()
    for p, g in zip(layer.parameters(), grads):
        assert p.grad is g and not g.any()
    single = Parameter(np.ones(3))
    single.grad[...] = 2.0
    SGD(single, lr=0.5).step()
    np.testing.assert_array_equal(single.data, np.zeros(3))
    assert "Parameter Group 0" in repr(opt)
