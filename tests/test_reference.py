"""bncourse.reference, the NumPy maths (lessons 02 and 03), against torch and against itself.

Forward and backward against torch autograd in float64; a centred finite-difference check of the
compact backward; the projection properties of dx; inference against torch's eval mode; property
tests with hypothesis; and the errors for bad input.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bncourse.reference import (
    BatchNormCache,
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_inference,
    reduction_axes,
)

SHAPES = [(2, 3), (16, 4), (5, 3, 7), (2, 3, 4, 5), (2, 2, 3, 2, 3)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]


def problem(shape, dtype=np.float64, seed=0):
    """x with a per-channel offset and scale, gamma, beta and a dense upstream gradient."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    view = (1, C) + (1,) * (len(shape) - 2)
    scale, offset = rng.uniform(0.5, 3, C).reshape(view), rng.normal(0, 5, C).reshape(view)
    x = rng.normal(size=shape) * scale + offset
    gamma = rng.normal(1, 0.5, C)
    beta = rng.normal(0, 1, C)
    dout = rng.normal(size=shape)
    return [a.astype(dtype) for a in (x, gamma, beta, dout)]


def rel_error(a, b):
    """Relative error of two arrays as a whole: ||a - b|| / (||a|| + ||b||)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


# --- against torch, float64 ----------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_and_backward_match_torch_autograd(shape, eps):
    x, gamma, beta, dout = problem(shape)
    out, cache = batchnorm_forward(x, gamma, beta, eps)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)

    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    yt.backward(torch.tensor(dout))
    for name, ours, ref in [("out", out, yt), ("dx", dx, xt.grad), ("dgamma", dgamma, gt.grad),
                            ("dbeta", dbeta, bt.grad)]:
        assert ours.shape == tuple(ref.shape), name
        np.testing.assert_allclose(ours, ref.detach().numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matches_the_textbook_formula_under_autograd(shape):
    """The same result as the naive graph (mean, biased variance, x_hat) differentiated by torch."""
    x, gamma, beta, dout = problem(shape, seed=1)
    out, cache = batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)

    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    axes = reduction_axes(x.ndim)
    view = (1, -1) + (1,) * (x.ndim - 2)
    mu = xt.mean(axes, keepdim=True)
    var = ((xt - mu) ** 2).mean(axes, keepdim=True)
    yt = gt.view(view) * (xt - mu) / torch.sqrt(var + 1e-5) + bt.view(view)
    yt.backward(torch.tensor(dout))
    for name, ours, ref in [("out", out, yt), ("dx", dx, xt.grad), ("dgamma", dgamma, gt.grad),
                            ("dbeta", dbeta, bt.grad)]:
        np.testing.assert_allclose(ours, ref.detach().numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 2, 2)], ids=["NC", "NCHW"])
def test_dtype_is_preserved(shape, dtype):
    x, gamma, beta, dout = problem(shape, dtype)
    out, cache = batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    running = (np.zeros(shape[1], dtype), np.ones(shape[1], dtype))
    inference = batchnorm_inference(x, gamma, beta, *running)
    for name, a in [("out", out), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta),
                    ("inference", inference)]:
        assert a.dtype == dtype, f"{name} is {a.dtype}, input was {np.dtype(dtype)}"
    if dtype == np.float32:  # and float32 is still accurate to float32 precision
        ref, _ = batchnorm_forward(x.astype(np.float64), gamma.astype(np.float64),
                                   beta.astype(np.float64))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# --- the compact backward: finite differences and its projection properties ----------------


def _numerical_gradient(f, a, h=1e-5):
    """Centred differences of the scalar f() with respect to every element of `a` (in place)."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        plus = f()
        a[i] = old - h
        minus = f()
        a[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 4), (2, 2, 2, 3)], ids=["NC", "NCL", "NCHW"])
def test_backward_agrees_with_centred_finite_differences(shape):
    x, gamma, beta, dout = problem(shape, seed=2)

    def loss():  # <out, dout>: its gradient is what backward returns for upstream dout
        return float(np.sum(batchnorm_forward(x, gamma, beta)[0] * dout))

    dx, dgamma, dbeta = batchnorm_backward(dout, batchnorm_forward(x, gamma, beta)[1])
    for name, analytic, wrt in [("dx", dx, x), ("dgamma", dgamma, gamma), ("dbeta", dbeta, beta)]:
        numeric = _numerical_gradient(loss, wrt)
        assert rel_error(analytic, numeric) < 1e-7, f"{name}: {rel_error(analytic, numeric):.1e}"


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_dx_sums_to_zero_and_is_orthogonal_to_x_hat(shape):
    """dx is dy * gamma * inv_std projected away from 1 and from x_hat, per channel.

    The orthogonality is exact when eps = 0 (sum(x_hat**2) = M); with eps > 0 it is off by a
    factor eps / (var + eps), so this check uses a tiny eps.
    """
    x, gamma, beta, dout = problem(shape, seed=3)
    _, cache = batchnorm_forward(x, gamma, beta, eps=1e-12)
    dx, _, _ = batchnorm_backward(dout, cache)
    axes = reduction_axes(x.ndim)
    # The size of the terms that cancel: dx can itself be ~0 (a batch of 2 maps to +-1).
    scale = np.abs(gamma) * cache.inv_std * np.abs(dout).sum(axis=axes)
    np.testing.assert_allclose(dx.sum(axis=axes) / scale, 0, atol=1e-12)
    x_hat_max = np.abs(cache.x_hat).max(axis=axes)
    np.testing.assert_allclose((dx * cache.x_hat).sum(axis=axes) / (scale * x_hat_max), 0,
                               atol=1e-10)


def test_cache_holds_x_hat_inv_std_and_gamma_only():
    x, gamma, beta, _ = problem((6, 3, 2))
    _, cache = batchnorm_forward(x, gamma, beta, eps=1e-5)
    assert isinstance(cache, BatchNormCache)
    assert cache._fields == ("x_hat", "inv_std", "gamma")
    var = x.var(axis=(0, 2))
    np.testing.assert_allclose(cache.inv_std, 1 / np.sqrt(var + 1e-5), rtol=1e-12)
    mu = x.mean(axis=(0, 2), keepdims=True)
    np.testing.assert_allclose(cache.x_hat, (x - mu) * cache.inv_std.reshape(1, 3, 1), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(cache.gamma, gamma, rtol=0, atol=0)
    assert cache.x_hat.shape == x.shape and cache.inv_std.shape == (3,)


# --- inference ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES + [(1, 3), (1, 3, 4)], ids=SHAPE_IDS + ["1x3", "1x3x4"])
def test_inference_matches_torch_eval_mode(shape):
    x, gamma, beta, _ = problem(shape, seed=4)
    rng = np.random.default_rng(5)
    running_mean = rng.normal(size=shape[1])
    running_var = rng.uniform(0.1, 3, shape[1])
    out = batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-3)
    ref = F.batch_norm(*(torch.tensor(a) for a in (x, running_mean, running_var, gamma, beta)),
                       training=False, eps=1e-3)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-10, atol=1e-12)


def test_inference_with_the_batch_statistics_equals_training_mode():
    x, gamma, beta, _ = problem((8, 3, 5), seed=6)
    out, _ = batchnorm_forward(x, gamma, beta)
    same = batchnorm_inference(x, gamma, beta, x.mean(axis=(0, 2)), x.var(axis=(0, 2)))
    np.testing.assert_allclose(same, out, rtol=1e-10, atol=1e-12)


def test_gamma_sigma_and_beta_mu_recover_the_input():
    """Lesson 02: BN can represent the identity (up to eps)."""
    x, _, _, _ = problem((32, 4), seed=7)
    mu, sigma = x.mean(axis=0), np.sqrt(x.var(axis=0) + 1e-5)
    out, _ = batchnorm_forward(x, sigma, mu)
    np.testing.assert_allclose(out, x, rtol=1e-10, atol=1e-10)


# --- property tests --------------------------------------------------------------------------


@st.composite
def bn_inputs(draw):
    """Random shapes and values, some channels shifted by 1e4, scaled, or made constant."""
    ndim = draw(st.integers(2, 4))
    shape = [draw(st.integers(2, 8)), draw(st.integers(1, 5))]
    shape += [draw(st.integers(1, 3)) for _ in range(ndim - 2)]
    C = shape[1]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    view = (1, C) + (1,) * (ndim - 2)
    def per_channel(elements):
        return np.array(draw(st.lists(elements, min_size=C, max_size=C)))

    offset = per_channel(st.sampled_from([0.0, 3.0, 1e4, -1e4]))
    scale = per_channel(st.sampled_from([1e-2, 1.0, 50.0]))
    constant = per_channel(st.booleans())
    x = rng.normal(size=shape) * scale.reshape(view) + offset.reshape(view)
    # Constant channels; 0.1 is not exact in binary, so their mean carries round-off.
    x = np.where(constant.reshape(view), offset.reshape(view) + 0.1, x)
    gamma = rng.normal(1, 0.5, C)
    beta = rng.normal(0, 1, C)
    return x, gamma, beta, constant


@settings(max_examples=50, deadline=None)
@given(bn_inputs())
def test_output_is_finite_and_constant_channels_give_beta(args):
    x, gamma, beta, constant = args
    out, cache = batchnorm_forward(x, gamma, beta)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(cache.inv_std))
    dx, dgamma, dbeta = batchnorm_backward(np.ones_like(x), cache)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dgamma))
    for c in np.flatnonzero(constant):  # zero variance: x_hat = 0, so out = beta
        np.testing.assert_allclose(out[:, c], beta[c], rtol=0, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(bn_inputs())
def test_normalised_channels_have_mean_zero_and_variance_one(args):
    x, gamma, beta, _ = args
    _, cache = batchnorm_forward(x, gamma, beta)
    axes = reduction_axes(x.ndim)
    var = x.var(axis=axes)
    np.testing.assert_allclose(cache.x_hat.mean(axis=axes), 0, atol=1e-8)
    # Variance of x_hat is var / (var + eps): 1 up to 1e-3 once var >= 1e-2 (eps = 1e-5).
    big = var >= 1e-2
    np.testing.assert_allclose(cache.x_hat.var(axis=axes)[big], 1, atol=1e-3)
    np.testing.assert_allclose(cache.x_hat.var(axis=axes), var / (var + 1e-5), rtol=1e-6, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(bn_inputs(), st.integers(0, 2**32 - 1))
def test_invariant_to_per_channel_affine_changes_of_the_input(args, seed):
    """BN(a * x + b) = BN(x) for a > 0 per channel; exact as eps -> 0, so eps is tiny here."""
    x, gamma, beta, constant = args
    rng = np.random.default_rng(seed)
    C = x.shape[1]
    view = (1, C) + (1,) * (x.ndim - 2)
    a = rng.uniform(0.1, 10, C).reshape(view)
    b = rng.uniform(-100, 100, C).reshape(view)
    eps = 1e-10
    out, _ = batchnorm_forward(x, gamma, beta, eps)
    moved, _ = batchnorm_forward(a * x + b, gamma, beta, eps)
    varying = ~constant & (x.var(axis=reduction_axes(x.ndim)) > 1e-3)
    np.testing.assert_allclose(moved[:, varying], out[:, varying], rtol=1e-6, atol=1e-6)


# --- bad input ----------------------------------------------------------------------------

_x, _g, _b, _d = problem((4, 3))
_, _cache = batchnorm_forward(_x, _g, _b)
# (id, call, exception, regex): each message names the argument and the shapes involved.
BAD_INPUT = [
    ("gamma-wrong-shape", lambda: batchnorm_forward(_x, np.ones(4), _b),
     ValueError, r"gamma must have shape \(3,\).*\(4, 3\).*got shape \(4,\)"),
    ("beta-wrong-shape", lambda: batchnorm_forward(_x, _g, np.ones((3, 1))),
     ValueError, r"beta must have shape \(3,\).*got shape \(3, 1\)"),
    ("1D-x", lambda: batchnorm_forward(np.ones(5), _g, _b),
     ValueError, r"x must have shape \(N, C\) or \(N, C, \*spatial\), got shape \(5,\)"),
    ("integer-x", lambda: batchnorm_forward(np.ones((4, 3), dtype=int), _g, _b),
     TypeError, r"x must be a floating-point array, got dtype int"),
    ("batch-of-one", lambda: batchnorm_forward(np.ones((1, 3)), _g, _b),
     ValueError, r"more than 1 value per channel.*\(1, 3\)"),
    ("eps-zero", lambda: batchnorm_forward(_x, _g, _b, eps=0.0),
     ValueError, r"eps must be positive, got 0"),
    ("bad-cache", lambda: batchnorm_backward(_d, (_x, _g, _g)),
     TypeError, r"cache must be the BatchNormCache.*got tuple"),
    ("dout-wrong-shape", lambda: batchnorm_backward(np.ones((4, 2)), _cache),
     ValueError, r"dout must have the shape of the forward input \(4, 3\), got \(4, 2\)"),
    ("inference-running-var-shape",
     lambda: batchnorm_inference(_x, _g, _b, np.zeros(3), np.ones(2)),
     ValueError, r"running_var must have shape \(3,\).*got shape \(2,\)"),
    ("inference-negative-running-var",
     lambda: batchnorm_inference(_x, _g, _b, np.zeros(3), -np.ones(3)),
     ValueError, r"running_var must be non-negative"),
    ("inference-1D-x", lambda: batchnorm_inference(np.ones(3), _g, _b, np.zeros(3), np.ones(3)),
     ValueError, r"got shape \(3,\)"),
    ("inference-negative-eps",
     lambda: batchnorm_inference(_x, _g, _b, np.zeros(3), np.ones(3), eps=-1.0),
     ValueError, r"eps must be non-negative, got -1"),
]


@pytest.mark.parametrize("call, exception, message",
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT])
def test_bad_input_raises_with_shapes_in_the_message(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_batch_of_one_with_spatial_positions_is_fine():
    """Statistics are over N and the spatial axes: (1, C, L) has L values per channel."""
    x, gamma, beta, _ = problem((1, 3, 6))
    out, _ = batchnorm_forward(x, gamma, beta)
    assert np.all(np.isfinite(out))


def test_reduction_axes():
    assert reduction_axes(2) == (0,)
    assert reduction_axes(4) == (0, 2, 3)
