"""The fused training path of bncourse.nn.batch_norm (issue 24), layout by layout, against torch.

`_FusedBatchNorm` picks one of four reductions by layout and size: `(R, C)` rows reduced with
`mv` (small) or `sum(0)` (large), small `(N, C, L)` viewed as wide `(N, C*L)` rows, large
`(N, C, L)` with `sum((0, 2))`; channels-last inputs are rows. The thresholds are patched here
so that every path runs on small tensors. Each path is compared with torch.nn.functional.
batch_norm (outputs, the three gradients, running statistics, memory format), at 1 and 2
threads, in float32 and float64, plus the edge cases of the issue: an empty batch,
track_running_stats=False, momentum=None, double backward.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.testing import assert_close

import bncourse.nn as bnn
from bncourse.nn import batch_norm
from bncourse.nn import functional as bf

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-11)}

# path -> (shape, channels_last, thresholds (_MV_MAX, _WIDE_MAX) that force the path)
PATHS = {
    "rows-mv": ((7, 3), False, (1 << 16, 1 << 16)),
    "rows-sum": ((7, 3), False, (1, 1 << 16)),
    "rows-NC11": ((6, 4, 1, 1), False, (1 << 16, 1 << 16)),
    "wide": ((4, 3, 5), False, (1 << 16, 1 << 16)),
    "wide-4d": ((3, 2, 3, 4), False, (1 << 16, 1 << 16)),
    "NCL": ((4, 3, 5), False, (1 << 16, 1)),
    "NCL-5d": ((2, 3, 2, 2, 3), False, (1 << 16, 1)),
    "channels-last": ((3, 4, 2, 5), True, (1 << 16, 1 << 16)),
    "channels-last-sum": ((3, 4, 2, 5), True, (1, 1 << 16)),
    "channels-last-3d": ((2, 3, 2, 2, 3), True, (1 << 16, 1 << 16)),
}


@pytest.fixture(params=[(name, fast) for fast in (False, True) for name in PATHS],
                ids=[f"{name}-{'fast' if fast else 'exact'}" for fast in (False, True)
                     for name in PATHS])
def path(request, monkeypatch):
    """Each layout, with the default arithmetic (bit for bit BatchNormFunction's, "exact")
    and with the fewer-operations one (`_FAST_NUMERICS`, "fast")."""
    name, fast = request.param
    shape, channels_last, (mv_max, wide_max) = PATHS[name]
    monkeypatch.setattr(bf, "_MV_MAX", mv_max)
    monkeypatch.setattr(bf, "_WIDE_MAX", wide_max)
    monkeypatch.setattr(bf, "_FAST_NUMERICS", fast)
    return name, shape, channels_last


def _layout_of(shape, channels_last):
    """The layout `_views` picks under the patched thresholds (checks the fixture works)."""
    x = torch.empty(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if len(shape) == 4
                         else torch.channels_last_3d)
    return bf._views(x, torch.empty_like(x))[0]


EXPECTED_LAYOUT = {"rows-mv": bf._ROWS, "rows-sum": bf._ROWS, "rows-NC11": bf._ROWS,
                   "wide": bf._WIDE, "wide-4d": bf._WIDE, "NCL": bf._NCL, "NCL-5d": bf._NCL,
                   "channels-last": bf._ROWS, "channels-last-sum": bf._ROWS,
                   "channels-last-3d": bf._ROWS}


def test_each_path_is_the_one_named(path):
    name, shape, channels_last = path
    assert _layout_of(shape, channels_last) == EXPECTED_LAYOUT[name]


def make(shape, dtype, channels_last, seed=0, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    view = (1, C) + (1,) * (len(shape) - 2)
    x = torch.randn(shape, generator=g, dtype=dtype) * (torch.rand(C, generator=g, dtype=dtype)
                                                         + 0.5).view(view) + offset
    dy = torch.randn(shape, generator=g, dtype=dtype)
    if channels_last:
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x, dy = x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)
    return dict(x=x, dy=dy, weight=torch.randn(C, generator=g, dtype=dtype) * 0.5 + 1,
                bias=torch.randn(C, generator=g, dtype=dtype),
                running_mean=torch.randn(C, generator=g, dtype=dtype),
                running_var=torch.rand(C, generator=g, dtype=dtype) + 0.5)


def run(fn, data, *, weight=True, bias=True, stats=True, momentum=0.1, eps=1e-5, dy=None):
    x = data["x"].clone(memory_format=torch.preserve_format).requires_grad_(True)
    w = data["weight"].clone().requires_grad_(True) if weight else None
    b = data["bias"].clone().requires_grad_(True) if bias else None
    rm = data["running_mean"].clone() if stats else None
    rv = data["running_var"].clone() if stats else None
    y = fn(x, rm, rv, w, b, True, momentum, eps)
    y.backward(data["dy"] if dy is None else dy)
    return dict(y=y.detach(), dx=x.grad, dw=None if w is None else w.grad,
                db=None if b is None else b.grad, rm=rm, rv=rv)


def assert_same(ours, ref, tol):
    for key, expected in ref.items():
        if expected is None:
            assert ours[key] is None, key
            continue
        assert ours[key].dtype == expected.dtype, key
        assert_close(ours[key], expected, **tol, msg=lambda m: f"{key}: {m}")
    # torch keeps the memory format of x in y and dx; so must we.
    for key in ("y", "dx"):
        assert ours[key].stride() == ref[key].stride(), (key, ours[key].stride(),
                                                         ref[key].stride())


AFFINE = [(True, True), (False, False), (True, False), (False, True)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("weight, bias", AFFINE, ids=[f"w{w:d}b{b:d}" for w, b in AFFINE])
def test_every_path_matches_torch(path, dtype, weight, bias, threads):
    _, shape, channels_last = path
    data = make(shape, dtype, channels_last)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kwargs = dict(weight=weight, bias=bias)
        assert_same(run(batch_norm, data, **kwargs), run(F.batch_norm, data, **kwargs),
                    TOL[dtype])
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.5, 1.0])
def test_without_running_stats_and_any_momentum(path, momentum):
    _, shape, channels_last = path
    data = make(shape, torch.float64, channels_last)
    for stats in (True, False):
        assert_same(run(batch_norm, data, stats=stats, momentum=momentum),
                    run(F.batch_norm, data, stats=stats, momentum=momentum),
                    TOL[torch.float64])


def test_gradient_of_another_layout_and_of_a_sum(path):
    """dy channels-last for a contiguous x (or the reverse), and the stride-0 dy of y.sum()."""
    _, shape, channels_last = path
    data = make(shape, torch.float64, channels_last)
    if len(shape) in (4, 5):
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        other = (data["dy"].contiguous() if channels_last
                 else data["dy"].contiguous(memory_format=fmt))
        assert_same(run(batch_norm, data, dy=other), run(F.batch_norm, data, dy=other),
                    TOL[torch.float64])
    ones = torch.ones(()).expand(shape)  # what y.sum().backward() sends: stride 0
    ref = run(F.batch_norm, data, dy=ones)
    ours = run(batch_norm, data, dy=ones)
    for key in ("y", "dx", "dw", "db", "rm", "rv"):
        assert_close(ours[key], ref[key], **TOL[torch.float64], msg=lambda m: f"{key}: {m}")


def test_gradcheck_and_double_backward(path):
    _, shape, channels_last = path
    data = make(shape, torch.float64, channels_last, offset=0.0)
    x = data["x"].clone(memory_format=torch.preserve_format).requires_grad_(True)
    w = data["weight"].clone().requires_grad_(True)
    b = data["bias"].clone().requires_grad_(True)

    def fn(x, w, b):
        return batch_norm(x, None, None, w, b, training=True)

    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (0, 3, 2, 2)], ids=["NC", "NCL", "NCHW"])
@pytest.mark.parametrize("weight, bias", AFFINE, ids=[f"w{w:d}b{b:d}" for w, b in AFFINE])
def test_empty_batch_gives_zero_gradients_as_torch(shape, weight, bias):
    data = make(shape, torch.float32, False)
    ours, ref = run(batch_norm, data, weight=weight, bias=bias), run(F.batch_norm, data,
                                                                     weight=weight, bias=bias)
    for key in ("y", "dx", "dw", "db", "rm", "rv"):
        if ref[key] is None:
            assert ours[key] is None, key
        else:
            assert ours[key].shape == ref[key].shape, key
            assert torch.equal(ours[key], ref[key]), (key, ours[key], ref[key])
    if weight:
        assert torch.equal(ours["dw"], torch.zeros(3))  # zero, not missing
    assert torch.equal(ours["rm"], data["running_mean"])  # left alone
    assert torch.equal(ours["rv"], data["running_var"])


MODULES = [(bnn.BatchNorm1d, torch.nn.BatchNorm1d, (8, 3)),
           (bnn.BatchNorm1d, torch.nn.BatchNorm1d, (8, 3, 5)),
           (bnn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 3, 3)),
           (bnn.BatchNorm3d, torch.nn.BatchNorm3d, (2, 3, 2, 3, 2))]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("ours_cls, torch_cls, shape", MODULES,
                         ids=["1d-NC", "1d-NCL", "2d", "3d"])
@pytest.mark.parametrize("kwargs", [dict(momentum=None), dict(track_running_stats=False),
                                    dict(momentum=0.3, affine=False)],
                         ids=["momentum=None", "no-running-stats", "no-affine"])
def test_modules_match_torch_over_steps(ours_cls, torch_cls, shape, kwargs, channels_last):
    if channels_last and len(shape) < 4:
        pytest.skip("channels-last is a 4-D/5-D layout")
    ours, ref = ours_cls(3, **kwargs).double(), torch_cls(3, **kwargs).double()
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + step
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last if len(shape) == 4
                             else torch.channels_last_3d)
        dy = torch.randn(shape, generator=g, dtype=torch.float64)
        outs = []
        for module in (ours, ref):
            xi = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
            y = module(xi)
            y.backward(dy)
            outs.append((y.detach(), xi.grad))
        for a, b in zip(*outs):
            assert_close(a, b, **TOL[torch.float64])
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert_close(a, b, **TOL[torch.float64], msg=lambda m: f"{name}: {m}")
    ours.eval(), ref.eval()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    assert_close(ours(x), ref(x), **TOL[torch.float64])


def test_large_mean_float32_keeps_its_digits():
    """The corrected two-pass statistics: |mean| = 1e4 x std loses nothing visible in float32."""
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 5), (8, 5, 6), (4, 5, 40, 40)]:
        x64 = torch.randn(shape, generator=g, dtype=torch.float64) + 1e4
        x = x64.float()
        y = batch_norm(x, None, None, training=True)
        dims = (0,) + tuple(range(2, x.dim()))
        exact = x.double()  # the float32 values, statistics in float64
        mean = exact.mean(dims, keepdim=True)
        var = exact.var(dims, unbiased=False, keepdim=True)
        assert_close(y.double(), (exact - mean) / torch.sqrt(var + 1e-5), rtol=0, atol=2e-3)


def test_inputs_are_not_modified_and_buffers_count_their_update():
    data = make((6, 4, 3), torch.float32, False)
    x, w, b = (data[k].clone().requires_grad_() for k in ("x", "weight", "bias"))
    rm, rv = data["running_mean"].clone(), data["running_var"].clone()
    versions = rm._version, rv._version
    y = batch_norm(x, rm, rv, w, b, training=True)
    y.backward(data["dy"])
    for t, key in ((x, "x"), (w, "weight"), (b, "bias")):
        assert torch.equal(t.detach(), data[key]), key
    assert rm._version > versions[0] and rv._version > versions[1]


def test_non_contiguous_input_is_handled():
    data = make((5, 6), torch.float64, False)
    x = data["x"].t().contiguous().t()  # (5, 6) with column-major strides
    assert not x.is_contiguous()
    ours = batch_norm(x, None, None, training=True)
    assert_close(ours, F.batch_norm(x, None, None, training=True), **TOL[torch.float64])


def test_small_shapes_take_the_fused_function():
    x = torch.randn(6, 4, requires_grad=True)
    y = batch_norm(x, None, None, torch.ones(4), None, training=True)
    assert type(y.grad_fn).__name__ == "_FusedBatchNormBackward"
    half = batch_norm(x.detach().bfloat16().requires_grad_(), None, None, training=True)
    assert half.dtype == torch.bfloat16  # other dtypes keep the general path


def test_reduction_vectors_are_cached_and_bounded(monkeypatch):
    monkeypatch.setattr(bf, "_VECTORS", {})
    x = torch.randn(5, 3)
    a = bf._filled(5, 0.2, x)
    assert a is bf._filled(5, 0.2, x)
    assert torch.equal(a, torch.full((5,), 0.2))
    for n in range(600):
        bf._filled(n + 1, 1.0, x)
    assert len(bf._VECTORS) <= 512
    E = bf._expander(3, 2, x)
    assert torch.equal(E, torch.tensor([[1., 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                                        [0, 0, 0, 0, 1, 1]]))


@pytest.mark.parametrize("shape", [(3, 4, 2, 5), (2, 3, 2, 2, 3)], ids=["2d", "3d"])
def test_eval_keeps_channels_last_and_matches_torch(shape):
    data = make(shape, torch.float64, True)
    x = data["x"].clone(memory_format=torch.preserve_format).requires_grad_(True)
    args = (data["running_mean"], data["running_var"], data["weight"], data["bias"], False)
    ours, ref = batch_norm(x, *args), F.batch_norm(x, *args)
    assert_close(ours, ref, **TOL[torch.float64])
    assert ours.stride() == ref.stride()
    ours.backward(data["dy"])
    assert_close(x.grad, torch.autograd.grad(F.batch_norm(x, *args), x, data["dy"])[0],
                 **TOL[torch.float64])


@pytest.mark.parametrize("shape", [(60, 100), (7, 3), (60, 8, 8, 8), (4, 3, 5), (6, 4, 1, 1),
                                   (2, 3, 2, 2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_default_path_is_bit_for_bit_batch_norm_function(shape, dtype):
    """The case studies' trained figures depend on the last bit: the default fused path must
    give exactly what BatchNormFunction + update_running_stats gave before issue 24."""
    data = make(shape, dtype, False)

    def unfused(x, rm, rv, w, b, training, momentum, eps):
        y, mean, var = bnn.BatchNormFunction.apply(x, w, b, eps)
        bf.update_running_stats(rm, rv, mean, var, momentum, x.numel() // x.shape[1])
        return y

    assert not bf._FAST_NUMERICS
    ours, ref = run(batch_norm, data), run(unfused, data)
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key
