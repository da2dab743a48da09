"""bncourse.nn.SyncBatchNorm across 2 and 3 gloo processes against torch.nn BN on the whole batch.

Every rank holds part of one float64 batch (uneven parts, an empty one, a rank with one sample);
outputs, input gradients, summed parameter gradients, running statistics (two steps) and eval
outputs must equal those of one process holding all of it. Two launches cover every case (each
process start-up costs seconds); a rank that raises makes the launch fail within seconds.
"""
import time
import zlib

import numpy as np
import pytest
import torch

from bncourse.cases.distributed import launch
from bncourse.nn import BatchNorm1d, BatchNorm2d, SyncBatchNorm, convert_sync_batchnorm
from bncourse.nn import StepwiseBatchNorm, sync_batch_norm

TOL64 = dict(rtol=1e-10, atol=1e-11)
TOL32 = dict(rtol=1e-4, atol=1e-5)
C = 3

# id, per-rank sizes, spatial dims, affine, track_running_stats, momentum, dtype
CASES = {
    2: [("even (N, C)", [6, 6], (), True, True, 0.1, "float64"),
        ("uneven (N, C, L)", [3, 9], (5,), True, True, 0.1, "float64"),
        ("uneven (N, C, H, W), momentum None", [2, 5], (2, 3), True, True, None, "float64"),
        ("no affine, no running stats", [4, 7], (), False, False, 0.1, "float64"),
        ("float32", [5, 8], (4,), True, True, 0.1, "float32")],
    3: [("an empty rank", [4, 0, 7], (), True, True, 0.1, "float64"),
        ("a rank with one sample", [1, 5, 2], (3,), True, True, 0.3, "float64"),
        ("uneven (N, C, H, W)", [2, 1, 3], (2, 2), True, True, 0.1, "float64")],
}


def batch(case, step):
    """The whole batch x, upstream gradient dy, gamma, beta for one step of a case."""
    name, sizes, spatial, *_, dtype = case
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + step)
    shape = (sum(sizes), C) + spatial
    x = 5.0 + 3.0 * torch.randn(*shape, generator=g, dtype=torch.float64)
    x = x + torch.linspace(0, 4, shape[0], dtype=torch.float64).view((-1,) + (1,) * (len(shape) - 1))
    dy = torch.randn(*shape, generator=g, dtype=torch.float64)
    gamma = 1 + 0.3 * torch.randn(C, generator=g, dtype=torch.float64)
    beta = torch.randn(C, generator=g, dtype=torch.float64)
    dt = getattr(torch, dtype)
    return x.to(dt), dy.to(dt), gamma.to(dt), beta.to(dt)


def run_case(bn, case, part_of):
    """Two training steps, then eval on step 0's batch; returns arrays per step."""
    _, _, _, affine, *_ = case
    x0, _, gamma, beta = batch(case, 0)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(gamma)
            bn.bias.copy_(beta)
    out = {}
    for step in range(2):
        x, dy, _, _ = batch(case, step)
        x = part_of(x).clone().requires_grad_(True)
        bn.zero_grad()
        y = bn(x)
        y.backward(part_of(dy))
        out[f"y{step}"], out[f"dx{step}"] = y.detach().numpy(), x.grad.numpy()
        if affine:
            out[f"dweight{step}"] = bn.weight.grad.numpy().copy()
            out[f"dbias{step}"] = bn.bias.grad.numpy().copy()
    if bn.track_running_stats:
        out["running_mean"] = bn.running_mean.numpy().copy()
        out["running_var"] = bn.running_var.numpy().copy()
        out["num_batches_tracked"] = int(bn.num_batches_tracked)
    bn.eval()
    with torch.no_grad():
        out["eval"] = bn(part_of(x0)).numpy()
    return out


def sync_worker(rank, world_size, cases):
    results = []
    for case in cases:
        _, sizes, _, affine, track, momentum, dtype = case
        start = sum(sizes[:rank])
        bn = SyncBatchNorm(C, momentum=momentum, affine=affine, track_running_stats=track,
                           dtype=getattr(torch, dtype))
        results.append(run_case(bn, case, lambda t: t[start:start + sizes[rank]]))
    return results


def reference(case):
    _, _, spatial, affine, track, momentum, dtype = case
    cls = {0: torch.nn.BatchNorm1d, 1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d}[len(spatial)]
    bn = cls(C, momentum=momentum, affine=affine, track_running_stats=track,
             dtype=getattr(torch, dtype))
    return run_case(bn, case, lambda t: t)


@pytest.fixture(scope="module")
def launched():
    """{world size: (per-rank results, seconds)}: one launch per world size."""
    out = {}
    for world_size, cases in CASES.items():
        start = time.monotonic()
        results = launch(sync_worker, world_size, cases, timeout=40)
        out[world_size] = results, time.monotonic() - start
    return out


def test_launches_are_quick(launched):
    for world_size, (_, seconds) in launched.items():
        assert seconds < 25, f"{world_size} processes took {seconds:.1f} s"


PAIRS = [(k, i) for k in CASES for i in range(len(CASES[k]))]


@pytest.mark.parametrize("world_size, index", PAIRS,
                         ids=[f"{k} processes, {CASES[k][i][0]}" for k, i in PAIRS])
def test_sync_bn_equals_full_batch_bn(launched, world_size, index):
    results, _ = launched[world_size]
    case = CASES[world_size][index]
    tol = TOL32 if case[-1] == "float32" else TOL64
    ref = reference(case)
    per_rank = [r[index] for r in results]
    for key, expected in ref.items():
        if key.startswith(("y", "dx", "eval")):  # each rank holds its slice
            got = np.concatenate([r[key] for r in per_rank])
        elif key.startswith(("dweight", "dbias")):  # local sums, added up as DDP would
            got = sum(r[key] for r in per_rank)
        else:  # running statistics: identical on every rank
            for r in per_rank:
                np.testing.assert_array_equal(r[key], per_rank[0][key], err_msg=key)
            got = per_rank[0][key]
        if key == "num_batches_tracked":
            assert got == expected
        else:
            np.testing.assert_allclose(got, expected, **tol, err_msg=f"{case[0]}: {key}")


def failing_worker(rank, world_size):
    bn = SyncBatchNorm(C, dtype=torch.float64)
    channels = C + 1 if rank == 1 else C  # rank 1 raises; rank 0 waits in the all_gather
    return bn(torch.randn(4, channels, dtype=torch.float64)).sum().item()


def test_a_rank_that_raises_fails_the_launch_quickly():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 failed:\nRuntimeError: "
                                           r"SyncBatchNorm\(3\) expects 3 channels"):
        launch(failing_worker, 2, timeout=40)
    assert time.monotonic() - start < 20


# --- one process: no process group --------------------------------------------------------

def test_without_a_process_group_it_is_plain_bn():
    x = torch.randn(6, C, 4, dtype=torch.float64)
    sync, plain = SyncBatchNorm(C, dtype=torch.float64), BatchNorm1d(C, dtype=torch.float64)
    torch.testing.assert_close(sync(x), plain(x), **TOL64)
    torch.testing.assert_close(sync.running_var, plain.running_var, **TOL64)
    sync.eval(), plain.eval()
    torch.testing.assert_close(sync(x), plain(x), **TOL64)


def test_state_dict_and_repr_match_torchs_sync_batchnorm():
    ours, torchs = SyncBatchNorm(C, momentum=0.2), torch.nn.SyncBatchNorm(C, momentum=0.2)
    assert list(ours.state_dict()) == list(torchs.state_dict())
    assert repr(ours) == repr(torchs)
    torchs.running_mean.fill_(2.0)
    ours.load_state_dict(torchs.state_dict())
    assert torch.equal(ours.running_mean, torch.full((C,), 2.0))


ERRORS = [
    (lambda: SyncBatchNorm(C)(torch.ones(3)), ValueError, "expected at least 2D input"),
    (lambda: SyncBatchNorm(C)(torch.ones(4, C + 1)), RuntimeError, "expects 3 channels"),
    (lambda: sync_batch_norm([1.0], None, None), TypeError, "argument 'input' must be Tensor"),
    (lambda: sync_batch_norm(torch.ones(4, dtype=torch.float64), None, None), ValueError,
     "floating-point \\(N, C, \\*\\) tensor"),
    (lambda: sync_batch_norm(torch.ones(4, C), None, None, eps=0.0), ValueError,
     "eps must be positive"),
    (lambda: sync_batch_norm(torch.ones(4, C), torch.zeros(C), None), ValueError,
     "both be None or neither"),
    (lambda: convert_sync_batchnorm("model"), TypeError, "must be a torch.nn.Module"),
]


@pytest.mark.parametrize("call, exception, message", ERRORS, ids=[m for *_, m in ERRORS])
def test_bad_input_raises_with_a_helpful_message(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


# --- convert_sync_batchnorm ------------------------------------------------------------------

@pytest.mark.parametrize("bn_cls", [torch.nn.BatchNorm1d, BatchNorm1d, torch.nn.SyncBatchNorm],
                         ids=["torch", "bncourse", "torch SyncBatchNorm"])
def test_convert_replaces_bn_and_keeps_its_state(bn_cls):
    bn = bn_cls(C, momentum=0.3, eps=1e-3)
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.running_mean.fill_(0.5)
    bn.bias.requires_grad_(False)
    bn.num_batches_tracked.fill_(7)
    model = torch.nn.Sequential(torch.nn.Linear(4, C), torch.nn.Sequential(bn, torch.nn.ReLU()))
    model.eval()
    converted = convert_sync_batchnorm(model)
    assert converted is model and isinstance(model[0], torch.nn.Linear)
    sync = model[1][0]
    assert type(sync) is SyncBatchNorm and not sync.training
    assert (sync.momentum, sync.eps) == (0.3, 1e-3)
    assert sync.weight is bn.weight and not sync.bias.requires_grad
    assert torch.equal(sync.running_mean, torch.full((C,), 0.5))
    assert int(sync.num_batches_tracked) == 7


def test_convert_a_bn_itself_and_leave_variants_and_sync_alone():
    bn = BatchNorm2d(C, affine=False, track_running_stats=False)
    sync = convert_sync_batchnorm(bn)
    assert type(sync) is SyncBatchNorm and sync.weight is None and sync.running_mean is None
    assert SyncBatchNorm.convert_sync_batchnorm(sync) is sync
    stepwise = StepwiseBatchNorm(C, max_length=4)
    assert convert_sync_batchnorm(stepwise) is stepwise


# --- the named pieces of bncourse.nn.functional SyncBN is built from -------------------------

@pytest.mark.parametrize("shape", [(7, C), (4, C, 5), (2, C, 3, 2)], ids=str)
def test_the_four_pieces_compose_to_torchs_batch_norm(shape):
    from bncourse.nn._moments import as_rows
    from bncourse.nn.functional import (batch_norm_backward_elemt, batch_norm_backward_reduce,
                                        batch_norm_elemt, batch_norm_stats)

    g = torch.Generator().manual_seed(1)
    x = 2 + torch.randn(*shape, generator=g, dtype=torch.float64)
    dy = torch.randn(*shape, generator=g, dtype=torch.float64)
    w, b = torch.rand(C, generator=g, dtype=torch.float64) + 0.5, torch.randn(C, generator=g,
                                                                             dtype=torch.float64)
    count, mean, m2 = batch_norm_stats(x)
    inv_std = torch.rsqrt(m2 / count + 1e-5)
    y = batch_norm_elemt(as_rows(x), mean, inv_std, w, b).view(shape)
    sum_dy, sum_dy_x_hat = batch_norm_backward_reduce(as_rows(dy), as_rows(x), mean, inv_std)
    dx = batch_norm_backward_elemt(as_rows(dy), as_rows(x), mean, inv_std, w, sum_dy,
                                   sum_dy_x_hat, float(count)).view(shape)
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    yr = torch.nn.functional.batch_norm(xr, None, None, wr, br, True, 0.1, 1e-5)
    yr.backward(dy)
    for got, want in ((y, yr.detach()), (dx, xr.grad), (sum_dy_x_hat, wr.grad), (sum_dy, br.grad)):
        torch.testing.assert_close(got, want, **TOL64)
    ones = batch_norm_elemt(as_rows(x), mean, inv_std, None, None)
    torch.testing.assert_close(ones.view(shape), (x - mean.view((1, C) + (1,) * (len(shape) - 2)))
                               * inv_std.view((1, C) + (1,) * (len(shape) - 2)), **TOL64)


def test_update_running_stats_stores_the_unbiased_variance_in_place():
    from bncourse.nn.functional import update_running_stats

    rm, rv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    ids = (id(rm), id(rv))
    update_running_stats(rm, rv, torch.full((C,), 2.0, dtype=torch.float64),
                         torch.full((C,), 3.0, dtype=torch.float64), 0.5, 4)
    assert (id(rm), id(rv)) == ids
    torch.testing.assert_close(rm, torch.full((C,), 1.0, dtype=torch.float64))
    torch.testing.assert_close(rv, torch.full((C,), 0.5 + 0.5 * 3.0 * 4 / 3, dtype=torch.float64))
