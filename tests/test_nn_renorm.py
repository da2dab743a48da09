"""bncourse.nn.BatchRenorm1d/2d (Ioffe 2017): the BN limit, r and d, stop gradient, the warm-up
schedule, running statistics, state_dict, train/eval, gradcheck and bad input (lesson 10)."""
import itertools

import pytest
import torch
from torch.testing import assert_close

import bncourse.nn as bnn

SHAPES = [("1d", (2, 3)), ("1d", (8, 3)), ("1d", (4, 3, 5)), ("2d", (2, 3, 4, 4)),
          ("2d", (5, 3, 2, 3))]
OPTIONS = [{}, {"affine": False}, {"bias": False}, {"momentum": None}, {"momentum": 0.3},
           {"eps": 1e-3}]
DTYPES = [torch.float32, torch.float64]
# float32 as loose as test_nn_batchnorm.py: a batch of 2 is ill-conditioned, and the two
# implementations round differently.
TOL = {torch.float32: dict(rtol=1e-3, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-11)}
CASES = [pytest.param(kind, shape, opts, dtype,
                      id=f"{kind}-{'x'.join(map(str, shape))}-{opts or 'default'}-"
                         f"{str(dtype)[6:]}")
         for (kind, shape), opts, dtype in itertools.product(SHAPES, OPTIONS, DTYPES)]
RENORM = {"1d": bnn.BatchRenorm1d, "2d": bnn.BatchRenorm2d}
BN = {"1d": torch.nn.BatchNorm1d, "2d": torch.nn.BatchNorm2d}
BN_OPTIONS = {"momentum", "eps", "affine", "bias"}


def batches(shape, dtype, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    view = (1, shape[1]) + (1,) * (len(shape) - 2)
    offset = torch.randn(shape[1], generator=g, dtype=dtype).view(view) * 2
    return [(torch.randn(shape, generator=g, dtype=dtype) + offset,
             torch.randn(shape, generator=g, dtype=dtype)) for _ in range(n)]


def step(module, x, dy):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    return y.detach(), x.grad


@pytest.mark.parametrize("kind, shape, opts, dtype", CASES)
def test_r_max_1_d_max_0_is_batchnorm(kind, shape, opts, dtype):
    """The limit case: r = 1 and d = 0, so every step, buffer and gradient is torch's BN."""
    ours = RENORM[kind](3, r_max=1.0, d_max=0.0, dtype=dtype,
                        **{"momentum": 0.1, **opts})
    ref = BN[kind](3, dtype=dtype, **{"momentum": 0.1, **opts})
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.uniform_(0.5, 1.5)
            q.copy_(p)
    for x, dy in batches(shape, dtype, 3):
        for m in (ours, ref):
            m.zero_grad(set_to_none=True)
        y, dx = step(ours, x, dy)
        y_ref, dx_ref = step(ref, x, dy)
        assert_close(y, y_ref, **TOL[dtype])
        assert_close(dx, dx_ref, **TOL[dtype])
        for p, q in zip(ours.parameters(), ref.parameters()):
            assert_close(p.grad, q.grad, **TOL[dtype])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(ours, name), getattr(ref, name), **TOL[dtype])
    ours.eval(), ref.eval()
    x = batches(shape, dtype, 1, seed=5)[0][0]
    assert_close(ours(x), ref(x), **TOL[dtype])


def reference_renorm(x, mu, var, eps, r_max, d_max):
    """The paper's training-mode x_hat, in float64, from the formulas (no module)."""
    dims = (0,) + tuple(range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    mu_B = x.mean(dims)
    sigma_B = (x.var(dims, unbiased=False) + eps).sqrt()
    sigma = (var + eps).sqrt()
    r = (sigma_B / sigma).clamp(1 / r_max, r_max)
    d = ((mu_B - mu) / sigma).clamp(-d_max, d_max)
    return (x - mu_B.view(view)) / sigma_B.view(view) * r.view(view) + d.view(view)


@pytest.mark.parametrize("r_max, d_max", [(3.0, 5.0), (1.5, 0.5), (1.0, 0.0), (1.1, 0.1)])
@pytest.mark.parametrize("kind, shape", [("1d", (4, 3)), ("2d", (2, 3, 3, 3))])
def test_training_output_follows_the_formulas(kind, shape, r_max, d_max):
    m = RENORM[kind](3, affine=False, r_max=r_max, d_max=d_max, warmup_steps=0, r_ramp_steps=0,
                     d_ramp_steps=0, dtype=torch.float64)
    with torch.no_grad():  # running statistics far from the batch's: r and d are clipped
        m.running_mean.copy_(torch.tensor([0.5, -1.0, 3.0], dtype=torch.float64))
        m.running_var.copy_(torch.tensor([0.2, 1.0, 9.0], dtype=torch.float64))
    x = batches(shape, torch.float64, 1)[0][0]
    want = reference_renorm(x, m.running_mean.clone(), m.running_var.clone(), m.eps, r_max, d_max)
    assert_close(m(x), want, rtol=1e-10, atol=1e-12)
    assert float(m.current_r_max) == r_max and float(m.current_d_max) == d_max


def test_unclipped_training_equals_inference():
    """With room to correct, training computes (x - mu) / sigma: what eval computes."""
    m = bnn.BatchRenorm1d(3, r_max=100.0, d_max=100.0, warmup_steps=0, r_ramp_steps=0,
                          d_ramp_steps=0, momentum=0.0, dtype=torch.float64)
    with torch.no_grad():
        m.running_mean.copy_(torch.tensor([0.5, -1.0, 3.0], dtype=torch.float64))
        m.running_var.copy_(torch.tensor([0.2, 1.0, 9.0], dtype=torch.float64))
    x = torch.randn(4, 3, dtype=torch.float64)
    y_train = m(x)
    m.eval()
    assert_close(y_train, m(x), rtol=1e-10, atol=1e-12)


def test_r_and_d_get_no_gradient():
    """With r, d constants, dx is BN's dx scaled by r per channel; with r, d differentiated it
    would not be (the missing stop gradient)."""
    m = bnn.BatchRenorm1d(3, affine=False, r_max=100.0, d_max=100.0, warmup_steps=0,
                          r_ramp_steps=0, d_ramp_steps=0, dtype=torch.float64)
    with torch.no_grad():
        m.running_var.fill_(4.0)
    x, dy = batches((6, 3), torch.float64, 1)[0]
    y, dx = step(m, x, dy)
    bn = torch.nn.BatchNorm1d(3, affine=False, dtype=torch.float64)
    _, dx_bn = step(bn, x, dy)
    r = (x.var(0, unbiased=False) + 1e-5).sqrt() / (4.0 + 1e-5) ** 0.5
    assert_close(dx, dx_bn * r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind, shape", [("1d", (5, 3)), ("1d", (3, 3, 4)), ("2d", (2, 3, 2, 2))])
def test_gradcheck_float64(kind, shape):
    m = RENORM[kind](3, r_max=2.0, d_max=1.0, warmup_steps=0, r_ramp_steps=0, d_ramp_steps=0,
                     momentum=0.0, dtype=torch.float64)
    # Finite differences see r and d move with x, the analytic gradient (stop gradient) does
    # not; where both are clipped they are constant, and the two must agree.
    with torch.no_grad():
        m.running_var.fill_(100.0)  # sigma_B / sigma << 1 / r_max
        m.running_mean.fill_(50.0)  # (mu_B - mu) / sigma << -d_max
        m.weight.uniform_(0.5, 1.5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    m.eval()
    assert torch.autograd.gradcheck(m, (x,))


SCHEDULE = [  # step, (r_max, d_max) with the defaults (Ioffe 2017's 5k/40k/25k)
    (1, (1.0, 0.0)), (5000, (1.0, 0.0)), (5001, (1 + 2 / 35000, 5 / 20000)),
    (22500, (2.0, 4.375)), (25000, (1 + 2 * 20000 / 35000, 5.0)), (40000, (3.0, 5.0)),
    (10**6, (3.0, 5.0)),
]


@pytest.mark.parametrize("t, expected", SCHEDULE)
def test_warmup_schedule(t, expected):
    assert bnn.renorm_limits(t) == pytest.approx(expected, rel=1e-12)


def test_schedule_is_configurable_and_counts_training_steps_only():
    m = bnn.BatchRenorm1d(3, warmup_steps=2, r_ramp_steps=4, d_ramp_steps=2, r_max=3.0,
                          d_max=1.0)
    seen = []
    for x, _ in batches((4, 3), torch.float32, 6):
        m(x)
        seen.append((float(m.current_r_max), float(m.current_d_max)))
    m.eval()
    m(x)  # eval does not advance the clock
    assert int(m.num_batches_tracked) == 6
    want = [(1, 0), (1, 0), (1.5, 0.5), (2, 1), (2.5, 1), (3, 1)]
    assert [v for pair in seen for v in pair] == pytest.approx([v for p in want for v in p])


def test_state_dict_has_the_extra_buffers_and_round_trips():
    m = bnn.BatchRenorm2d(3, warmup_steps=1, r_ramp_steps=10, d_ramp_steps=10)
    for x, _ in batches((4, 3, 2, 2), torch.float32, 4):
        m(x)
    state = m.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var",
                           "num_batches_tracked", "current_r_max", "current_d_max"]
    fresh = bnn.BatchRenorm2d(3, warmup_steps=1, r_ramp_steps=10, d_ramp_steps=10)
    fresh.load_state_dict(state)
    for name, value in fresh.state_dict().items():
        assert_close(value, state[name], rtol=0, atol=0)
    # A BatchNorm checkpoint's statistics load too (the extra buffers are then missing).
    missing = fresh.load_state_dict(torch.nn.BatchNorm2d(3).state_dict(), strict=False)
    assert missing.missing_keys == ["current_r_max", "current_d_max"]


def test_reset_running_stats_resets_the_schedule():
    m = bnn.BatchRenorm1d(3, warmup_steps=0, r_ramp_steps=0, d_ramp_steps=0)
    m(torch.randn(4, 3))
    m.reset_running_stats()
    assert int(m.num_batches_tracked) == 0 and float(m.current_r_max) == 1.0
    assert float(m.current_d_max) == 0.0


def test_repr_and_is_batchnorm():
    m = bnn.BatchRenorm1d(4, r_max=2.0, d_max=1.0, warmup_steps=10)
    assert repr(m) == ("BatchRenorm1d(4, eps=1e-05, momentum=0.01, affine=True, bias=True, "
                       "track_running_stats=True, r_max=2.0, d_max=1.0, warmup_steps=10)")
    assert bnn.is_batchnorm(m)


BAD = [
    (lambda: bnn.BatchRenorm1d(3, r_max=0.5), ValueError, "r_max must be a number >= 1"),
    (lambda: bnn.BatchRenorm1d(3, d_max=-1.0), ValueError, "d_max must be a number >= 0"),
    (lambda: bnn.BatchRenorm1d(3, warmup_steps=-1), ValueError, "warmup_steps must be an int"),
    (lambda: bnn.BatchRenorm1d(3, r_ramp_steps=1.5), ValueError, "r_ramp_steps must be an int"),
    (lambda: bnn.BatchRenorm1d(3.0), TypeError, "num_features must be an int"),
    (lambda: bnn.BatchRenorm1d(3)(torch.randn(2, 3, 4, 4)), ValueError, "expected 2D or 3D"),
    (lambda: bnn.BatchRenorm2d(3)(torch.randn(2, 3)), ValueError, "expected 4D input"),
    (lambda: bnn.BatchRenorm1d(3)(torch.randn(4, 5)), RuntimeError, "expects 3 channels"),
    (lambda: bnn.BatchRenorm1d(3)(torch.randn(1, 3)), ValueError,
     "Expected more than 1 value per channel"),
]


@pytest.mark.parametrize("call, exception, message", BAD)
def test_bad_arguments_and_input(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_renorm_factors_clip_and_carry_no_gradient():
    mean_B = torch.tensor([0.0, 10.0, -10.0], requires_grad=True)
    sigma_B = torch.tensor([1.0, 100.0, 0.01], requires_grad=True)
    r, d = bnn.renorm_factors(mean_B, sigma_B, torch.zeros(3), torch.ones(3) - 1e-5, 3.0, 5.0,
                              1e-5)
    assert_close(r, torch.tensor([1.0, 3.0, 1 / 3]))
    assert_close(d, torch.tensor([0.0, 5.0, -5.0]))
    assert not r.requires_grad and not d.requires_grad
