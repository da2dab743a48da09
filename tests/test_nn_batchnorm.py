"""bncourse.nn.BatchNorm1d/2d/3d against their torch.nn namesakes (lesson 04).

One table of configurations (class, input shape, constructor options, dtype) feeds generic
tests of training steps, eval, gradients, buffers, state_dict, repr and resets.
"""
import copy
import itertools

import pytest
import torch
from torch.testing import assert_close

import bncourse.nn as bnn

# (class name, input shape): every rank each class accepts, including a batch of 2.
SHAPES = [
    ("BatchNorm1d", (2, 3)),
    ("BatchNorm1d", (16, 3)),
    ("BatchNorm1d", (2, 3, 5)),
    ("BatchNorm1d", (4, 3, 1)),
    ("BatchNorm2d", (2, 3, 4, 5)),
    ("BatchNorm2d", (5, 3, 3, 2)),
    ("BatchNorm3d", (2, 3, 2, 3, 4)),
]
# Constructor keyword arguments, each the same for torch.nn and bncourse.nn.
OPTIONS = [
    {},
    {"affine": False},
    {"bias": False},
    {"track_running_stats": False},
    {"affine": False, "track_running_stats": False},
    {"momentum": None},
    {"momentum": 0.3},
    {"eps": 1e-3},
    {"momentum": None, "eps": 1e-3, "bias": False},
]
DTYPES = [torch.float32, torch.float64]
# float64 is the tight check: round-off only. float32 is looser because a batch of 2 with two
# close values is ill-conditioned (dx comes from eps alone) and the two implementations round
# differently; float32 accuracy against float64 truth has its own test in test_nn_functional.py.
TOL = {torch.float32: dict(rtol=1e-3, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-11)}

CASES = [
    pytest.param(cls, shape, opts, dtype,
                 id=f"{cls}-{'x'.join(map(str, shape))}-{opts or 'default'}-{str(dtype)[6:]}")
    for (cls, shape), opts, dtype in itertools.product(SHAPES, OPTIONS, DTYPES)
]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def make_pair(cls: str, opts: dict, dtype, seed: int = 0):
    """A torch.nn module and a bncourse.nn one with the same (non-trivial) parameters."""
    C = 3
    ref = getattr(torch.nn, cls)(C, dtype=dtype, **opts)
    ours = getattr(bnn, cls)(C, dtype=dtype, **opts)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(ref, name) is not None:
                getattr(ref, name).copy_(torch.randn(C, generator=g, dtype=dtype) * 0.5 + 1.0)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def make_batch(shape, dtype, seed: int):
    """Input with a different offset and scale per channel, and a dense upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    view = (1, C) + (1,) * (len(shape) - 2)
    offset = torch.randn(C, generator=g, dtype=dtype).view(view) * 3
    scale = torch.rand(C, generator=g, dtype=dtype).view(view) * 2 + 0.5
    x = torch.randn(shape, generator=g, dtype=dtype) * scale + offset
    dy = torch.randn(shape, generator=g, dtype=dtype)
    return x, dy


def forward_backward(module, x, dy):
    """Output and input gradient of one forward and backward with upstream gradient `dy`."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    return y.detach(), x.grad


def assert_same_state(ours, ref, tol):
    """Parameter gradients and every buffer agree (None where torch has None)."""
    for name in ("weight", "bias"):
        p_ref, p_ours = getattr(ref, name), getattr(ours, name)
        assert (p_ours is None) == (p_ref is None), name
        if p_ref is not None:
            assert_close(p_ours.grad, p_ref.grad, **tol, msg=lambda m: f"{name}.grad: {m}")
    for name in BUFFERS:
        b_ref, b_ours = getattr(ref, name), getattr(ours, name)
        assert (b_ours is None) == (b_ref is None), name
        if name == "num_batches_tracked" and b_ref is not None:
            assert b_ours.dtype == torch.long and torch.equal(b_ours, b_ref), name
        elif b_ref is not None:
            assert_close(b_ours, b_ref, **tol, msg=lambda m: f"{name}: {m}")


# --- parity over the whole table ----------------------------------------------------------


@pytest.mark.parametrize("cls, shape, opts, dtype", CASES)
def test_training_steps_then_eval_match_torch(cls, shape, opts, dtype):
    ours, ref = make_pair(cls, opts, dtype)
    tol = TOL[dtype]
    for step, mode in enumerate(["train", "train", "train", "eval", "train", "eval"]):
        ours.train(mode == "train")
        ref.train(mode == "train")
        for module in (ours, ref):
            module.zero_grad(set_to_none=True)
        x, dy = make_batch(shape, dtype, seed=step)
        y_ours, dx_ours = forward_backward(ours, x, dy)
        y_ref, dx_ref = forward_backward(ref, x, dy)
        where = f"step {step} ({mode})"
        assert y_ours.dtype == dtype and y_ours.shape == x.shape
        assert_close(y_ours, y_ref, **tol, msg=lambda m: f"{where} output: {m}")
        assert_close(dx_ours, dx_ref, **tol, msg=lambda m: f"{where} input grad: {m}")
        assert_same_state(ours, ref, tol)


@pytest.mark.parametrize("cls, shape, opts, dtype", CASES[::4])
def test_state_dict_has_torch_keys_and_loads_both_ways(cls, shape, opts, dtype):
    ours, ref = make_pair(cls, opts, dtype)
    x, _ = make_batch(shape, dtype, seed=1)
    ref(x)  # move the running statistics away from their initial values
    sd_ref = ref.state_dict()
    assert list(ours.state_dict().keys()) == list(sd_ref.keys())
    assert ours.state_dict()._metadata[""]["version"] == sd_ref._metadata[""]["version"] == 2

    fresh_ours = getattr(bnn, cls)(3, dtype=dtype, **opts)
    fresh_ours.load_state_dict(sd_ref, strict=True)  # torch.nn -> bncourse
    ours(make_batch(shape, dtype, seed=2)[0])  # change ours so the reverse load matters
    fresh_ref = getattr(torch.nn, cls)(3, dtype=dtype, **opts)
    fresh_ref.load_state_dict(ours.state_dict(), strict=True)  # bncourse -> torch.nn
    for a, b in [(fresh_ours, ref), (fresh_ref, ours)]:
        sd_a, sd_b = a.state_dict(), b.state_dict()
        for key in sd_b:
            assert_close(sd_a[key], sd_b[key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")
    fresh_ours.eval()
    ref.eval()
    x_eval = make_batch(shape, dtype, seed=3)[0]
    assert_close(fresh_ours(x_eval), ref(x_eval), **TOL[dtype])


@pytest.mark.parametrize("cls, shape, opts, dtype", CASES[::2])
def test_repr_equals_torch(cls, shape, opts, dtype):
    ours, ref = make_pair(cls, opts, dtype)
    assert repr(ours) == repr(ref)
    assert ours.extra_repr() == ref.extra_repr()


@pytest.mark.parametrize("cls, shape, opts, dtype", CASES[::3])
def test_reset_running_stats_and_reset_parameters(cls, shape, opts, dtype):
    ours, ref = make_pair(cls, opts, dtype)
    for step in range(2):
        x, _ = make_batch(shape, dtype, seed=step)
        ours(x)
        ref(x)
    ours.reset_running_stats()
    ref.reset_running_stats()
    assert_same_state(ours, ref, TOL[dtype])
    if ours.track_running_stats:
        assert_close(ours.running_mean, torch.zeros(3, dtype=dtype), rtol=0, atol=0)
        assert_close(ours.running_var, torch.ones(3, dtype=dtype), rtol=0, atol=0)
        assert ours.num_batches_tracked.item() == 0
    if ours.weight is not None:  # reset_running_stats leaves the parameters alone
        assert_close(ours.weight.detach(), ref.weight.detach(), rtol=0, atol=0)
    ours(make_batch(shape, dtype, seed=5)[0])
    ours.reset_parameters()
    fresh = getattr(bnn, cls)(3, dtype=dtype, **opts)
    for key, value in fresh.state_dict().items():
        assert_close(ours.state_dict()[key], value, rtol=0, atol=0, msg=lambda m: f"{key}: {m}")


# --- checkpoints --------------------------------------------------------------------------


def _version1_checkpoint(module_or_state):
    """A state_dict as saved before torch added num_batches_tracked (version 1)."""
    sd = copy.copy(module_or_state.state_dict())
    sd._metadata = copy.deepcopy(sd._metadata)
    for key in [k for k in sd if k.endswith("num_batches_tracked")]:
        del sd[key]
    for meta in sd._metadata.values():
        if "version" in meta:
            meta["version"] = 1
    return sd


@pytest.mark.parametrize("source", [torch.nn, bnn], ids=["from-torch", "from-bncourse"])
@pytest.mark.parametrize("batches_before_load", [0, 5])
def test_loads_version1_checkpoint_without_num_batches_tracked(source, batches_before_load):
    trained = torch.nn.Sequential(torch.nn.Linear(4, 3), source.BatchNorm1d(3))
    trained(torch.randn(8, 4))
    sd = _version1_checkpoint(trained)
    assert not any(k.endswith("num_batches_tracked") for k in sd)

    results = []
    for target in (torch.nn, bnn):
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), target.BatchNorm1d(3))
        model[1].num_batches_tracked.fill_(batches_before_load)
        model.load_state_dict(sd, strict=True)  # the missing key is filled in, not an error
        assert_close(model[1].running_mean, trained[1].running_mean, rtol=0, atol=0)
        results.append(model[1].num_batches_tracked.item())
    assert results[1] == results[0], f"torch.nn keeps {results[0]}, bncourse gives {results[1]}"


def test_version2_checkpoint_missing_num_batches_tracked_is_an_error_in_strict_mode():
    sd = torch.nn.BatchNorm1d(3).state_dict()
    del sd["num_batches_tracked"]
    for lib in (torch.nn, bnn):
        with pytest.raises(RuntimeError, match="num_batches_tracked"):
            lib.BatchNorm1d(3).load_state_dict(sd, strict=True)


# --- semantics the course teaches ---------------------------------------------------------


@pytest.mark.parametrize("lib", [torch.nn, bnn], ids=["torch", "bncourse"])
def test_momentum_none_is_the_cumulative_average(lib):
    bn = lib.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    means, variances = [], []
    for step in range(4):
        x, _ = make_batch((6, 3), torch.float64, seed=step)
        bn(x)
        means.append(x.mean(0))
        variances.append(x.var(0, correction=1))
    assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-12, atol=1e-12)
    assert_close(bn.running_var, torch.stack(variances).mean(0), rtol=1e-12, atol=1e-12)
    assert bn.num_batches_tracked.item() == 4


@pytest.mark.parametrize("lib", [torch.nn, bnn], ids=["torch", "bncourse"])
@pytest.mark.parametrize("shape", [(2, 3), (5, 3, 4), (2, 3, 2, 3)])
def test_running_var_is_unbiased_while_normalisation_uses_biased(lib, shape):
    cls = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d"}[len(shape)]
    bn = getattr(lib, cls)(3, momentum=1.0, affine=False, dtype=torch.float64)
    x, _ = make_batch(shape, torch.float64, seed=0)
    y = bn(x)
    dims = (0,) + tuple(range(2, len(shape)))
    assert_close(bn.running_var, x.var(dims, correction=1), rtol=1e-12, atol=1e-12)
    biased = x.var(dims, correction=0, keepdim=True)
    x_hat = (x - x.mean(dims, keepdim=True)) / torch.sqrt(biased + bn.eps)
    assert_close(y, x_hat, rtol=1e-12, atol=1e-12)


def test_eval_uses_running_stats_and_leaves_buffers_alone():
    bn = bnn.BatchNorm2d(3, dtype=torch.float64)
    for step in range(3):
        bn(make_batch((4, 3, 2, 2), torch.float64, seed=step)[0])
    bn.eval()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x, _ = make_batch((1, 3, 2, 2), torch.float64, seed=9)  # a batch of one is fine in eval
    y = bn(x)
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    view = (1, 3, 1, 1)
    expected = (x - bn.running_mean.view(view)) / torch.sqrt(bn.running_var.view(view) + bn.eps)
    assert_close(y, expected, rtol=1e-12, atol=1e-12)
    bn.train()  # switching back updates the statistics again
    bn(make_batch((4, 3, 2, 2), torch.float64, seed=10)[0])
    assert bn.num_batches_tracked.item() == 4


@pytest.mark.parametrize("lib", [torch.nn, bnn], ids=["torch", "bncourse"])
def test_eval_without_running_stats_normalises_with_batch_stats(lib):
    bn = lib.BatchNorm1d(3, track_running_stats=False, affine=False, dtype=torch.float64).eval()
    x, _ = make_batch((8, 3), torch.float64, seed=0)
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, correction=0) + bn.eps)
    assert_close(bn(x), expected, rtol=1e-12, atol=1e-12)
    assert bn.running_mean is None and bn.num_batches_tracked is None


def test_parameters_and_buffers_match_torch():
    ours, ref = bnn.BatchNorm3d(4, bias=False), torch.nn.BatchNorm3d(4, bias=False)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
    assert ours.bias is None and isinstance(ours.weight, torch.nn.Parameter)
    assert (ours.num_features, ours.eps, ours.momentum) == (ref.num_features, ref.eps, ref.momentum)


# --- a torch.nn.BatchNorm2d swapped for bncourse's in a small CNN -------------------------


def small_cnn(lib):
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), lib.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 3, padding=1, bias=False), lib.BatchNorm2d(6, momentum=None),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5) if lib is torch.nn else bnn.BatchNorm1d(5),
    )


def test_cnn_with_swapped_batchnorm_trains_identically():
    torch.manual_seed(0)
    ref = small_cnn(torch.nn).double()
    ours = small_cnn(bnn).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert sum(isinstance(m, bnn.BatchNorm2d) for m in ours.modules()) == 2
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ref, ours)]
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(6, 1, 7, 7, generator=g, dtype=torch.float64) * 2 + 1
        target = torch.randint(0, 5, (6,), generator=g)
        for model, opt in zip((ref, ours), opts):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), target).backward()
        for (name, p_ref), p_ours in zip(ref.named_parameters(), ours.parameters()):
            assert_close(p_ours.grad, p_ref.grad, rtol=1e-9, atol=1e-11,
                         msg=lambda m: f"step {step}, {name}.grad: {m}")
        for opt in opts:
            opt.step()
    sd_ours = ours.state_dict()
    for key, value in ref.state_dict().items():
        assert_close(sd_ours[key], value, rtol=1e-9, atol=1e-11, msg=lambda m: f"{key}: {m}")
    ref.eval()
    ours.eval()
    x = torch.randn(3, 1, 7, 7, generator=g, dtype=torch.float64)
    assert_close(ours(x), ref(x), rtol=1e-9, atol=1e-11)


# --- bad input: same exception type as torch.nn, messages that say what was expected -------

# (id, call(lib) raising, exception type (torch.nn raises the same), regex for our message)
BAD_INPUT = [
    ("1d-4D-input", lambda lib: lib.BatchNorm1d(3)(torch.randn(2, 3, 4, 5)),
     ValueError, r"expected 2D or 3D input \(got 4D input\)"),
    ("1d-1D-input", lambda lib: lib.BatchNorm1d(3)(torch.randn(3)),
     ValueError, r"expected 2D or 3D input \(got 1D input\)"),
    ("2d-3D-input", lambda lib: lib.BatchNorm2d(3)(torch.randn(2, 3, 4)),
     ValueError, r"expected 4D input \(got 3D input\)"),
    ("3d-4D-input", lambda lib: lib.BatchNorm3d(3)(torch.randn(2, 3, 4, 4)),
     ValueError, r"expected 5D input \(got 4D input\)"),
    ("wrong-channels-1d", lambda lib: lib.BatchNorm1d(3)(torch.randn(2, 4)),
     RuntimeError, r"3 channels.*\(2, 4\)"),
    ("wrong-channels-2d-eval", lambda lib: lib.BatchNorm2d(3).eval()(torch.randn(2, 4, 3, 3)),
     RuntimeError, r"3 channels.*\(2, 4, 3, 3\)"),
    ("one-value-per-channel", lambda lib: lib.BatchNorm1d(3)(torch.randn(1, 3)),
     ValueError, r"more than 1 value per channel when training.*\[1, 3\]"),
    ("one-value-per-channel-3d", lambda lib: lib.BatchNorm3d(2)(torch.randn(1, 2, 1, 1, 1)),
     ValueError, r"more than 1 value per channel when training"),
    ("eps-zero-training", lambda lib: lib.BatchNorm1d(3, eps=0.0)(torch.randn(4, 3)),
     ValueError, r"eps must be positive during training, but got 0"),
    ("eps-negative-training", lambda lib: lib.BatchNorm2d(3, eps=-1e-5)(torch.randn(4, 3, 2, 2)),
     ValueError, r"eps must be positive during training, but got -1e-05"),
    ("negative-num-features", lambda lib: lib.BatchNorm1d(-1),
     RuntimeError, r"negative dimension -1"),
    ("float-num-features", lambda lib: lib.BatchNorm1d(3.0),
     TypeError, r"num_features must be an int.*float"),
]


@pytest.mark.parametrize("call, exception, message",
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT])
def test_bad_input_raises_like_torch_with_a_helpful_message(call, exception, message):
    with pytest.raises(exception):
        call(torch.nn)  # the contract: torch.nn raises this type here
    with pytest.raises(exception, match=message):
        call(bnn)


def test_one_value_per_channel_is_fine_in_eval():
    for lib in (torch.nn, bnn):
        y = lib.BatchNorm1d(3).eval()(torch.randn(1, 3))
        assert y.shape == (1, 3)


@pytest.mark.parametrize("module, expected", [
    (lambda: bnn.BatchNorm1d(3), True), (lambda: bnn.BatchNorm2d(3), True),
    (lambda: torch.nn.BatchNorm1d(3), True), (lambda: torch.nn.SyncBatchNorm(3), True),
    (lambda: torch.nn.LayerNorm(3), False), (lambda: torch.nn.Linear(3, 3), False),
])
def test_is_batchnorm_recognises_torch_and_course_layers(module, expected):
    assert bnn.is_batchnorm(module()) is expected


def test_is_batchnorm_rejects_non_modules():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        bnn.is_batchnorm("BatchNorm1d")
