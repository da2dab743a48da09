"""bncourse.nn._moments: per-channel (count, mean, M2), Chan et al.'s merge, variances."""
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from bncourse.nn._moments import (Moments, biased_variance, channel_moments, merge_moments,
                                  merge_stacked, unbiased_variance)

TOL64 = dict(rtol=1e-12, atol=1e-12)
SHAPES = [(7, 3), (4, 3, 5), (2, 3, 2, 4), (2, 3, 2, 2, 3)]


def data(shape, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return offset + torch.randn(*shape, generator=g, dtype=torch.float64)


def numpy_moments(x):
    a = np.moveaxis(x.numpy(), 1, 0).reshape(x.shape[1], -1).astype(np.longdouble)
    mean = a.mean(1)
    return a.shape[1], mean.astype(np.float64), ((a - mean[:, None]) ** 2).sum(1).astype(
        np.float64)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_channel_moments_match_a_long_double_two_pass(shape, offset):
    x = data(shape, offset)
    count, mean, m2 = channel_moments(x)
    n, mean_ref, m2_ref = numpy_moments(x)
    assert count.dtype == torch.float64 and float(count) == n
    assert_close(mean, torch.from_numpy(mean_ref), rtol=1e-14, atol=0)
    # |mean| = 1e6, std 1: E[x^2] - E[x]^2 would lose about 12 of 16 digits here.
    assert_close(m2, torch.from_numpy(m2_ref), rtol=1e-9, atol=0)


def test_channel_moments_of_an_empty_batch_are_zero_not_nan():
    count, mean, m2 = channel_moments(torch.empty(0, 3, 4))
    assert float(count) == 0
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(m2, torch.zeros(3))


def test_channel_moments_use_the_workspace_and_leave_the_input_alone():
    x = data((5, 3, 4))
    before = x.clone()
    workspace = torch.empty(5, 3, 4, dtype=torch.float64)
    _, mean, _ = channel_moments(x, workspace)
    assert torch.equal(x, before)
    assert_close(workspace, (x - mean.view(1, 3, 1)) ** 2, **TOL64)


def test_channel_moments_reject_1d_input():
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, \*spatial\), got 1D"):
        channel_moments(torch.ones(4))


SPLITS = [[3, 4], [1, 6, 0], [0, 0, 5, 2], [7]]


@pytest.mark.parametrize("sizes", SPLITS, ids=str)
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_merges_equal_the_moments_of_the_whole(sizes, offset):
    x = data((sum(sizes), 3, 2), offset, seed=1)
    whole = channel_moments(x)
    parts = [channel_moments(p) for p in torch.split(x, sizes)]
    pairwise = parts[0]
    for part in parts[1:]:
        pairwise = merge_moments(pairwise, part)
    stacked = merge_stacked(torch.stack([p.count for p in parts]),
                            torch.stack([p.mean for p in parts]),
                            torch.stack([p.m2 for p in parts]))
    for merged in (pairwise, stacked):
        assert float(merged.count) == float(whole.count)
        assert_close(merged.mean, whole.mean, rtol=1e-13, atol=1e-13)
        assert_close(merged.m2, whole.m2, rtol=1e-10, atol=1e-10)


def test_merging_empty_partitions_gives_zeros_and_ignores_their_mean():
    empty = Moments(torch.tensor(0.0), torch.full((2,), float("nan")), torch.zeros(2))
    assert torch.equal(merge_moments(empty, empty).mean, torch.zeros(2))
    full = channel_moments(data((4, 2)))
    assert_close(merge_moments(empty, full).mean, full.mean)
    merged = merge_stacked(torch.tensor([0.0, 4.0]), torch.stack([empty.mean, full.mean]),
                           torch.stack([empty.m2, full.m2]))
    assert_close(merged.mean, full.mean, **TOL64)
    assert_close(merged.m2, full.m2, **TOL64)
    nothing = merge_stacked(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3))
    assert float(nothing.count) == 0 and torch.equal(nothing.mean, torch.zeros(3))


def test_merge_stacked_checks_shapes():
    with pytest.raises(ValueError, match=r"counts \(K,\), means \(K, C\) and m2s \(K, C\)"):
        merge_stacked(torch.ones(2), torch.ones(3, 4), torch.ones(3, 4))


def test_biased_and_unbiased_variance_match_torch():
    x = data((6, 3, 5))
    moments = channel_moments(x)
    dims = (0, 2)
    assert_close(biased_variance(moments), x.var(dims, unbiased=False), **TOL64)
    assert_close(unbiased_variance(moments), x.var(dims, unbiased=True), **TOL64)
