"""bncourse.nn.GroupNorm against torch.nn.GroupNorm, LayerNorm and InstanceNorm (lesson 10).

One table of configurations (groups, channels, input shape, options, dtype) feeds generic tests
of forward, gradients, train/eval, state_dict and repr; then the two limits and bad input.
"""
import itertools

import pytest
import torch
from torch.testing import assert_close

import bncourse.nn as bnn

# (num_groups, num_channels, input shape): 2-D to 5-D input, G = 1, G = C and in between.
LAYOUTS = [
    (1, 4, (3, 4)),
    (2, 4, (2, 4)),
    (4, 4, (5, 4, 6)),
    (2, 6, (1, 6, 3, 3)),
    (3, 6, (4, 6, 2, 5)),
    (6, 6, (2, 6, 4, 4)),
    (2, 4, (2, 4, 2, 3, 2)),
]
OPTIONS = [{}, {"affine": False}, {"bias": False}, {"eps": 1e-3}]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
CASES = [pytest.param(g, c, shape, opts, dtype,
                      id=f"G{g}-C{c}-{'x'.join(map(str, shape))}-{opts or 'default'}-"
                         f"{str(dtype)[6:]}")
         for (g, c, shape), opts, dtype in itertools.product(LAYOUTS, OPTIONS, DTYPES)]


def make_pair(G, C, opts, dtype, seed=0):
    ref = torch.nn.GroupNorm(G, C, dtype=dtype, **opts)
    ours = bnn.GroupNorm(G, C, dtype=dtype, **opts)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5 + 1.0)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def make_batch(shape, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 3  # an offset: two-pass matters
    return x, torch.randn(shape, generator=g, dtype=dtype)


def forward_backward(module, x, dy):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    grads = [p.grad for p in module.parameters()]
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("G, C, shape, opts, dtype", CASES)
def test_forward_and_gradients_match_torch_in_train_and_eval(G, C, shape, opts, dtype):
    ours, ref = make_pair(G, C, opts, dtype)
    x, dy = make_batch(shape, dtype)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(ref, mode)()
        for module in (ours, ref):
            module.zero_grad(set_to_none=True)
        y, dx, grads = forward_backward(ours, x, dy)
        y_ref, dx_ref, grads_ref = forward_backward(ref, x, dy)
        assert y.dtype == dtype
        assert_close(y, y_ref, **TOL[dtype])
        assert_close(dx, dx_ref, **TOL[dtype])
        for got, want in zip(grads, grads_ref):
            assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("G, C, shape, opts, dtype", CASES[::8])
def test_state_dict_repr_and_parameters_match_torch(G, C, shape, opts, dtype):
    ours, ref = make_pair(G, C, opts, dtype)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours) == repr(ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert list(ours.buffers()) == []
    ref.load_state_dict(ours.state_dict())  # and back


@pytest.mark.parametrize("G, C, shape", [(2, 4, (3, 4, 5)), (3, 6, (2, 6, 2, 2)),
                                          (1, 3, (4, 3))])
def test_gradcheck_float64(G, C, shape):
    module = bnn.GroupNorm(G, C, dtype=torch.float64)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: bnn.group_norm(x, G, w, b, 1e-5), (x, module.weight, module.bias))


def test_a_sample_does_not_depend_on_the_rest_of_the_batch():
    module = bnn.GroupNorm(2, 4)
    x = torch.randn(6, 4, 3)
    assert_close(module(x)[:1], module(x[:1]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 5), (2, 4, 3, 3)])
def test_one_group_is_layernorm(shape):
    """G = 1 normalises each sample over (C, *): LayerNorm over the non-batch axes."""
    x, _ = make_batch(shape, torch.float64)
    ours = bnn.GroupNorm(1, shape[1], dtype=torch.float64)
    ref = torch.nn.LayerNorm(shape[1:], dtype=torch.float64)  # weight 1, bias 0 at init
    assert_close(ours(x), ref(x), **TOL[torch.float64])


@pytest.mark.parametrize("shape", [(2, 4, 5), (3, 4, 3, 3)])
def test_one_channel_per_group_is_instancenorm(shape):
    """G = C normalises each (sample, channel) over space: InstanceNorm."""
    x, _ = make_batch(shape, torch.float64)
    ours = bnn.GroupNorm(shape[1], shape[1], dtype=torch.float64)
    cls = torch.nn.InstanceNorm1d if len(shape) == 3 else torch.nn.InstanceNorm2d
    ref = cls(shape[1], affine=True, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
        ours.weight.copy_(ref.weight)
        ours.bias.copy_(ref.bias)
    assert_close(ours(x), ref(x), **TOL[torch.float64])


def test_empty_batch_gives_empty_output():
    assert bnn.GroupNorm(2, 4)(torch.randn(0, 4, 3)).shape == (0, 4, 3)


BAD_CONSTRUCTOR = [
    ((3, 4), ValueError, r"num_channels \(4\) must be divisible by num_groups \(3\)"),
    ((4, 6), ValueError, r"divisible by num_groups"),
]


@pytest.mark.parametrize("args, exception, message", BAD_CONSTRUCTOR)
def test_bad_constructor_raises_like_torch(args, exception, message):
    with pytest.raises(exception, match=message):
        bnn.GroupNorm(*args)
    with pytest.raises(exception):
        torch.nn.GroupNorm(*args)


@pytest.mark.parametrize("groups", [0, -2, 1.5, True])
def test_num_groups_must_be_a_positive_int(groups):
    # torch raises ZeroDivisionError for 0 (it divides); a ValueError names the argument.
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        bnn.GroupNorm(groups, 4)


BAD_INPUT = [
    (lambda m: m(torch.randn(3)), RuntimeError, "Expected at least 2 dimensions"),
    (lambda m: m(torch.randn(3, 6)), RuntimeError, "number of channels in input"),
    (lambda m: m(torch.randn(3, 2, 5)), RuntimeError, "number of channels in input"),
]


@pytest.mark.parametrize("call, exception, message", BAD_INPUT)
def test_bad_input_raises_like_torch(call, exception, message):
    with pytest.raises(exception, match=message):
        call(bnn.GroupNorm(2, 4))
    with pytest.raises(exception):
        call(torch.nn.GroupNorm(2, 4))


@pytest.mark.parametrize("call, exception, message", [
    (lambda: bnn.group_norm([1.0, 2.0], 1), TypeError, "argument 'input' must be Tensor"),
    (lambda: bnn.group_norm(torch.randn(2, 5), 2), ValueError, "divisible by num_groups"),
    (lambda: bnn.group_norm(torch.randn(2, 4), 2, torch.ones(3)), RuntimeError,
     "Expected weight"),
    (lambda: bnn.group_norm(torch.randn(2, 4), 2, None, torch.ones(5)), RuntimeError,
     "Expected bias"),
])
def test_functional_errors(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_group_norm_is_not_a_batchnorm():
    assert not bnn.is_batchnorm(bnn.GroupNorm(2, 4))
