"""bncourse.nn.batch_norm against torch.nn.functional.batch_norm (lesson 04).

Every argument combination, in-place running statistics, gradcheck/gradgradcheck, a proof
that torch's batch-norm kernels are never called, property tests on random shapes, float32
accuracy, and the exceptions and messages for bad input.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

import bncourse.nn as bnn
from bncourse.nn import batch_norm

SHAPES = [(2, 3), (7, 3), (4, 3, 5), (2, 3, 3, 4), (2, 3, 2, 2, 3)]
TOL = {torch.float32: dict(rtol=1e-3, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-11)}


def inputs(shape, dtype, seed=0):
    """x (offset and scale per channel), weight, bias, running stats and a dense dy."""
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    view = (1, C) + (1,) * (len(shape) - 2)

    def randn(*size):
        return torch.randn(*size, generator=g, dtype=dtype)

    scale = torch.rand(C, generator=g, dtype=dtype).view(view) + 0.5
    x = randn(*shape) * scale + randn(C).view(view)
    return dict(
        x=x, weight=randn(C) * 0.5 + 1, bias=randn(C), running_mean=randn(C),
        running_var=torch.rand(C, generator=g, dtype=dtype) + 0.5, dy=randn(*shape),
    )


def run(fn, data, *, stats, weight, bias, training, momentum=0.1, eps=1e-5):
    """One forward and backward through `fn`; returns outputs, grads and the stat tensors."""
    x = data["x"].clone().requires_grad_(True)
    w = data["weight"].clone().requires_grad_(True) if weight else None
    b = data["bias"].clone().requires_grad_(True) if bias else None
    rm = data["running_mean"].clone() if stats else None
    rv = data["running_var"].clone() if stats else None
    y = fn(x, rm, rv, w, b, training, momentum, eps)
    y.backward(data["dy"])
    return dict(y=y.detach(), dx=x.grad, dw=None if w is None else w.grad,
                db=None if b is None else b.grad, running_mean=rm, running_var=rv)


def assert_results_close(ours, ref, tol):
    for key, expected in ref.items():
        if expected is None:
            assert ours[key] is None, key
        else:
            assert ours[key].dtype == expected.dtype, key
            assert_close(ours[key], expected, **tol, msg=lambda m: f"{key}: {m}")


# Eval mode without running statistics is an error (tested below), so it is not in the grid.
COMBOS = [
    pytest.param(stats, weight, bias, training,
                 id=f"stats={stats}-weight={weight}-bias={bias}-training={training}")
    for stats, weight, bias, training in itertools.product([True, False], repeat=4)
    if training or stats
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stats, weight, bias, training", COMBOS)
def test_every_argument_combination_matches_torch(stats, weight, bias, training, shape, dtype):
    data = inputs(shape, dtype)
    kwargs = dict(stats=stats, weight=weight, bias=bias, training=training)
    assert_results_close(run(batch_norm, data, **kwargs), run(F.batch_norm, data, **kwargs),
                         TOL[dtype])


@pytest.mark.parametrize("momentum, eps", [(0.1, 1e-5), (0.3, 1e-3), (1.0, 1e-5), (0.0, 1e-5)])
def test_momentum_and_eps_match_torch(momentum, eps):
    data = inputs((6, 3, 4), torch.float64, seed=1)
    for training in (True, False):
        kwargs = dict(stats=True, weight=True, bias=True, training=training, momentum=momentum,
                      eps=eps)
        assert_results_close(run(batch_norm, data, **kwargs), run(F.batch_norm, data, **kwargs),
                             TOL[torch.float64])


def test_running_stats_are_updated_in_place_and_only_in_training():
    data = inputs((8, 3, 2), torch.float64)
    rm, rv = data["running_mean"].clone(), data["running_var"].clone()
    ptrs, before = (rm.data_ptr(), rv.data_ptr()), (rm.clone(), rv.clone())
    batch_norm(data["x"], rm, rv, training=True, momentum=0.25)
    assert (rm.data_ptr(), rv.data_ptr()) == ptrs  # same storage: updated in place
    x = data["x"]
    assert_close(rm, 0.75 * before[0] + 0.25 * x.mean((0, 2)), rtol=1e-12, atol=1e-12)
    assert_close(rv, 0.75 * before[1] + 0.25 * x.var((0, 2), correction=1), rtol=1e-12, atol=1e-12)
    after_training = (rm.clone(), rv.clone())
    batch_norm(x, rm, rv, training=False, momentum=0.25)
    assert torch.equal(rm, after_training[0]) and torch.equal(rv, after_training[1])


def test_running_stats_do_not_join_the_autograd_graph():
    data = inputs((8, 3), torch.float64)
    x = data["x"].clone().requires_grad_(True)
    rm, rv = data["running_mean"].clone(), data["running_var"].clone()
    batch_norm(x, rm, rv, training=True)
    assert not rm.requires_grad and rm.grad_fn is None and rv.grad_fn is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_dtype_and_shape_follow_the_input(dtype):
    x = torch.randn(5, 3, 2).to(dtype)
    for training in (True, False):
        y = batch_norm(x, torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype),
                       training=training)
        assert y.dtype == dtype and y.shape == x.shape
    assert_close(batch_norm(x, None, None, training=True).float(),
                 F.batch_norm(x, None, None, training=True).float(), rtol=2e-2, atol=2e-2)


# --- gradients: gradcheck and gradgradcheck in float64 --------------------------------------


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 3)], ids=["NC", "NCL"])
@pytest.mark.parametrize("weight, bias", [(True, True), (False, False), (True, False),
                                          (False, True)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_and_gradgradcheck(shape, weight, bias, training):
    data = inputs(shape, torch.float64, seed=2)
    args = [data["x"].clone().requires_grad_(True)]
    if weight:
        args.append(data["weight"].clone().requires_grad_(True))
    if bias:
        args.append(data["bias"].clone().requires_grad_(True))
    rm, rv = data["running_mean"], data["running_var"]

    def fn(x, *params):
        params = list(params)
        w = params.pop(0) if weight else None
        b = params.pop(0) if bias else None
        # Running statistics are passed in eval only: in training they would be updated on
        # every one of gradcheck's many calls (harmless, but not what is being checked).
        return batch_norm(x, rm if not training else None, rv if not training else None,
                          w, b, training, 0.1, 1e-5)

    assert torch.autograd.gradcheck(fn, tuple(args))
    assert torch.autograd.gradgradcheck(fn, tuple(args))


# --- bncourse.nn never calls torch's batch-norm kernels -------------------------------------


class OpRecorder(TorchDispatchMode):
    """Records the name of every aten operator that runs, forward and backward."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


def _run_module(lib, training, create_graph=False):
    bn = lib.BatchNorm2d(3).train(training)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    with OpRecorder() as recorder:
        y = bn(x)
        (dx,) = torch.autograd.grad(y, x, torch.randn_like(y), create_graph=create_graph)
        if create_graph:
            dx.sum().backward()
    return recorder.ops, y


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_no_aten_batch_norm_operator_runs(training):
    ops, _ = _run_module(bnn, training, create_graph=True)
    assert "aten::addcmul" in ops or "aten::mul.Tensor" in ops  # the recorder did record
    assert not [op for op in ops if "batch_norm" in op], sorted(set(ops))
    # Positive control: the recorder does see torch's own kernels.
    torch_ops, _ = _run_module(torch.nn, training)
    assert [op for op in torch_ops if "batch_norm" in op]


def test_training_graph_is_the_bncourse_function():
    _, y = _run_module(bnn, training=True)
    names, stack, seen = set(), [y.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    # batch_norm's fused training path (float32/float64), a Function of bncourse.nn.functional.
    ours = "_FusedBatchNormBackward"
    assert ours in names, names
    assert not [n for n in names if "BatchNorm" in n and n != ours], names


def test_works_when_torch_batch_norm_entry_points_raise(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch's batch-norm kernel was called")

    for owner, name in [(torch, "batch_norm"), (torch, "native_batch_norm"),
                        (torch, "_native_batch_norm_legit"), (torch, "cudnn_batch_norm"),
                        (F, "batch_norm"), (torch.nn.functional, "batch_norm")]:
        if hasattr(owner, name):
            monkeypatch.setattr(owner, name, forbidden)
    with pytest.raises(AssertionError, match="kernel was called"):
        torch.nn.BatchNorm1d(3)(torch.randn(4, 3))  # the patch is in force
    for training in (True, False):
        bn = bnn.BatchNorm1d(3).train(training)
        x = torch.randn(4, 3, requires_grad=True)
        bn(x).backward(torch.randn(4, 3))
        assert x.grad is not None


# --- property tests: random shapes against torch --------------------------------------------


@st.composite
def bn_problems(draw):
    ndim = draw(st.integers(2, 5))
    shape = [draw(st.integers(1, 6)), draw(st.integers(1, 4))]
    shape += [draw(st.integers(1, 4)) for _ in range(ndim - 2)]
    if shape[0] * int(torch.tensor(shape[2:]).prod()) < 2:
        shape[0] = 2  # training needs more than one value per channel
    return dict(
        shape=tuple(shape), seed=draw(st.integers(0, 2**31 - 1)),
        scale=draw(st.sampled_from([1e-2, 1.0, 1e2])),
        offset=draw(st.sampled_from([0.0, 10.0, -1e3])),
        training=draw(st.booleans()), stats=draw(st.booleans()),
        affine=draw(st.booleans()), momentum=draw(st.sampled_from([0.1, 0.5, 1.0])),
    )


@settings(max_examples=50, deadline=None)
@given(problem=bn_problems())
def test_random_shapes_match_torch(problem):
    data = inputs(problem["shape"], torch.float64, seed=problem["seed"])
    data["x"] = data["x"] * problem["scale"] + problem["offset"]
    kwargs = dict(stats=problem["stats"] or not problem["training"], weight=problem["affine"],
                  bias=problem["affine"], training=problem["training"],
                  momentum=problem["momentum"])
    # x_hat carries relative error ~ eps64 * |offset| / std; dx is up to 1/std times dy.
    assert_results_close(run(batch_norm, data, **kwargs), run(F.batch_norm, data, **kwargs),
                         dict(rtol=1e-7, atol=1e-8))


# --- float32 accuracy, against float64 truth ------------------------------------------------


@pytest.mark.parametrize("shape, offset, std", [
    ((64, 3), 0.0, 1.0), ((64, 3), 1e2, 1.0), ((64, 3), 1e4, 1.0), ((8, 3, 4, 4), 1e3, 1.0),
    ((2, 3), 5.0, 0.05),
], ids=["offset0", "offset1e2", "offset1e4", "conv-offset1e3", "batch2-close-values"])
def test_float32_accuracy_is_close_to_torchs(shape, offset, std):
    """A drop-in must not be much less accurate than the kernel it replaces.

    Both float32 implementations are measured against float64 on the same float32 inputs, in
    the same process (torch's own error depends on the thread count); ours may be up to 4x
    further off than torch's, plus a floor of 1e-6 of the scale. Large offsets relative to the
    spread are where float32 loses digits (a variance computed as E[x**2] - E[x]**2 fails this
    by orders of magnitude).
    """
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(shape, generator=g) * std + offset
    dy32 = torch.randn(shape, generator=g)
    w32 = torch.rand(3, generator=g) + 0.5

    def grads(fn, dtype):
        x = x32.to(dtype).clone().requires_grad_(True)
        y = fn(x, None, None, w32.to(dtype), None, True, 0.1, 1e-5)
        y.backward(dy32.to(dtype))
        return {"y": y.detach().double(), "dx": x.grad.double()}

    truth = grads(F.batch_norm, torch.float64)
    errors = {}
    for name, fn in [("torch", F.batch_norm), ("bncourse", batch_norm)]:
        result = grads(fn, torch.float32)
        errors[name] = {k: (result[k] - truth[k]).abs().max().item() for k in truth}
    for key in truth:
        floor = 1e-6 * truth[key].abs().max().item()
        assert errors["bncourse"][key] <= 4 * errors["torch"][key] + floor, (
            f"{key}: bncourse float32 error {errors['bncourse'][key]:.2e}, "
            f"torch's {errors['torch'][key]:.2e}")


# --- bad input: exception types as torch, messages that say what was expected ----------------

X = torch.randn(4, 3)
# (id, call(batch_norm function) raising, exception, regex for our message, same type in torch?)
BAD_INPUT = [
    ("eval-without-running-stats", lambda f: f(X, None, None, training=False),
     RuntimeError, r"running_mean must be defined in evaluation mode", True),
    ("eval-without-running-var", lambda f: f(X, torch.zeros(3), None, training=False),
     RuntimeError, r"running_var must be defined in evaluation mode", True),
    ("only-running-mean-in-training", lambda f: f(X, torch.zeros(3), None, training=True),
     ValueError, r"running_mean and running_var", True),
    ("running-mean-wrong-size", lambda f: f(X, torch.zeros(4), torch.ones(4), training=True),
     RuntimeError, r"running_mean should contain 3 elements.* not 4", True),
    ("weight-wrong-size", lambda f: f(X, None, None, torch.ones(2), training=True),
     RuntimeError, r"weight should contain 3 elements.* not 2", True),
    ("bias-wrong-size", lambda f: f(X, None, None, torch.ones(3), torch.ones(5), training=True),
     RuntimeError, r"bias should contain 3 elements.* not 5", True),
    ("one-value-per-channel", lambda f: f(torch.randn(1, 3), None, None, training=True),
     ValueError, r"more than 1 value per channel when training", True),
    ("eps-zero-training", lambda f: f(X, None, None, training=True, eps=0.0),
     ValueError, r"eps must be positive during training, but got 0", True),
    ("eps-negative-eval", lambda f: f(X, torch.zeros(3), torch.ones(3), eps=-1.0),
     ValueError, r"eps must be non-negative, but got -1", True),
    # torch raises a RuntimeError about running_mean's size for a 1-D input; we say what we
    # expected (the library rule: bad shapes are ValueError).
    ("1D-input", lambda f: f(torch.randn(5), None, None, training=True),
     ValueError, r"\(N, C\) or \(N, C, \*spatial\).*\(5,\)", False),
    # torch raises NotImplementedError for integer input; a TypeError names the dtype.
    ("integer-input", lambda f: f(torch.ones(4, 3, dtype=torch.long), None, None, training=True),
     TypeError, r"floating-point.*int64", False),
    ("not-a-tensor", lambda f: f([[1.0, 2.0], [3.0, 4.0]], None, None, training=True),
     TypeError, r"'input' must be Tensor, not list", False),
]


@pytest.mark.parametrize("call, exception, message, same_in_torch",
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT])
def test_bad_input_raises_with_a_helpful_message(call, exception, message, same_in_torch):
    if same_in_torch:
        with pytest.raises(exception):
            call(F.batch_norm)
    with pytest.raises(exception, match=message):
        call(batch_norm)


def test_a_batch_of_one_is_fine_in_eval_and_with_spatial_positions():
    y = batch_norm(torch.randn(1, 3), torch.zeros(3), torch.ones(3), training=False)
    assert y.shape == (1, 3)
    x = torch.randn(1, 3, 4, dtype=torch.float64)  # 4 values per channel: fine in training
    assert_close(batch_norm(x, None, None, training=True),
                 F.batch_norm(x, None, None, training=True), rtol=1e-10, atol=1e-11)


def test_public_names():
    assert set(bnn.__all__) >= {"batch_norm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"}
