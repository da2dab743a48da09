"""bncourse.nn.GhostBatchNorm1d/2d (Hoffer et al. 2017): one virtual batch is BN, k virtual
batches are k BNs on the chunks, eval is BN's, gradcheck and bad input (lesson 10)."""
import itertools

import pytest
import torch
from torch.testing import assert_close

import bncourse.nn as bnn

GHOST = {"1d": bnn.GhostBatchNorm1d, "2d": bnn.GhostBatchNorm2d}
BN = {"1d": torch.nn.BatchNorm1d, "2d": torch.nn.BatchNorm2d}
SHAPES = [("1d", (4, 3)), ("1d", (6, 3, 5)), ("2d", (4, 3, 2, 3))]
OPTIONS = [{}, {"affine": False}, {"momentum": None}, {"track_running_stats": False},
           {"eps": 1e-3, "bias": False}]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-11)}
CASES = [pytest.param(kind, shape, opts, dtype,
                      id=f"{kind}-{'x'.join(map(str, shape))}-{opts or 'default'}-"
                         f"{str(dtype)[6:]}")
         for (kind, shape), opts, dtype in itertools.product(SHAPES, OPTIONS, DTYPES)]


def pair(kind, opts, dtype, virtual):
    ours = GHOST[kind](3, dtype=dtype, virtual_batch_size=virtual, **opts)
    ref = BN[kind](3, dtype=dtype, **opts)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.uniform_(0.5, 1.5)
            q.copy_(p)
    return ours, ref


def data(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * 2 + 1,
            torch.randn(shape, generator=g, dtype=dtype))


def fb(module, x, dy):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    return y.detach(), x.grad


def assert_buffers(ours, ref, tol):
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, **tol)


@pytest.mark.parametrize("kind, shape, opts, dtype", CASES)
def test_one_virtual_batch_is_batchnorm(kind, shape, opts, dtype):
    ours, ref = pair(kind, opts, dtype, virtual=shape[0])
    for seed in range(3):
        x, dy = data(shape, dtype, seed)
        y, dx = fb(ours, x, dy)
        y_ref, dx_ref = fb(ref, x, dy)
        assert_close(y, y_ref, **TOL[dtype])
        assert_close(dx, dx_ref, **TOL[dtype])
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, **TOL[dtype])
    assert_buffers(ours, ref, TOL[dtype])
    ours.eval(), ref.eval()
    x, _ = data(shape, dtype, 9)
    assert_close(ours(x), ref(x), **TOL[dtype])


@pytest.mark.parametrize("kind, shape, opts, dtype", CASES[::2])
def test_k_virtual_batches_are_k_batchnorm_steps_on_the_chunks(kind, shape, opts, dtype):
    """The reference code's split: chunk(N // virtual); each chunk a BN step, in order."""
    ours, ref = pair(kind, opts, dtype, virtual=2)
    x, dy = data(shape, dtype)
    y, dx = fb(ours, x, dy)
    chunks = x.chunk(shape[0] // 2)
    y_ref = torch.cat([ref(c) for c in chunks])
    assert_close(y, y_ref, **TOL[dtype])
    assert_buffers(ours, ref, TOL[dtype])
    if ours.track_running_stats:
        assert int(ours.num_batches_tracked) == len(chunks)


def test_a_batch_that_does_not_divide_is_split_as_the_reference_code_does():
    m = bnn.GhostBatchNorm1d(2, virtual_batch_size=4, affine=False, track_running_stats=False)
    x = torch.randn(10, 2, dtype=torch.float64)  # chunk(2): 5 + 5
    y = m(x)
    for part in y.split(5):
        assert_close(part.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind, shape", [("1d", (6, 3)), ("2d", (4, 3, 2, 2))])
def test_gradcheck_float64(kind, shape):
    m = GHOST[kind](3, virtual_batch_size=2, dtype=torch.float64)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_repr_and_is_batchnorm():
    m = bnn.GhostBatchNorm2d(4, virtual_batch_size=8)
    assert repr(m) == ("GhostBatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                       "track_running_stats=True, virtual_batch_size=8)")
    assert bnn.is_batchnorm(m)
    assert list(m.state_dict()) == list(torch.nn.BatchNorm2d(4).state_dict())


BAD = [
    (lambda: bnn.GhostBatchNorm1d(3, virtual_batch_size=1), ValueError,
     "virtual_batch_size must be an int >= 2"),
    (lambda: bnn.GhostBatchNorm1d(3, virtual_batch_size=4.0), ValueError,
     "virtual_batch_size must be an int"),
    (lambda: bnn.GhostBatchNorm1d(3, virtual_batch_size=8)(torch.randn(4, 3)), ValueError,
     r"virtual_batch_size \(8\) is larger than the batch"),
    (lambda: bnn.GhostBatchNorm2d(3)(torch.randn(4, 3)), ValueError, "expected 4D input"),
    (lambda: bnn.GhostBatchNorm1d(3, virtual_batch_size=2)(torch.randn(4, 5)), RuntimeError,
     "expects 3 channels"),
]


@pytest.mark.parametrize("call, exception, message", BAD)
def test_bad_arguments_and_input(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_eval_accepts_a_batch_smaller_than_the_virtual_batch():
    m = bnn.GhostBatchNorm1d(3, virtual_batch_size=8).eval()
    assert m(torch.randn(1, 3)).shape == (1, 3)
