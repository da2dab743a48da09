"""Module 11 checks: the solutions pass, stubs score 0, each typical mistake gets its hint, the
grader's all_reduce refuses misuse, and the references agree with SyncBN's package code."""
import numpy as np
import pytest
import torch

import bncourse
from bncourse.grading.drivers.l11_distributed_bn import make_all_reduce
from bncourse.grading.drivers._contract import SubmissionError
from grading_helpers import check_messages, solution_cells, solution_objects

NOTEBOOK = "11_distributed_bn_exercises.ipynb"


@pytest.fixture(scope="module")
def solution_source():
    return "\n\n".join(solution_cells(NOTEBOOK))


def test_module_11_is_required_for_the_certificate():
    from bncourse.grading import registry

    assert "11" in registry.REQUIRED_MODULES
    assert registry.NOTEBOOKS["11"] == NOTEBOOK
    assert [e.name for e in registry.module_exercises("11")] == ["sync_moments", "sync_backward"]


MOMENT_MISTAKES = [
    ("ranks weighed equally", {"    mean = sums[0][1:] / count\n":
                               "    mean = all_reduce(means)[0] / len(xs)\n"},
     "weigh each rank's mean by its count"),
    ("no between-rank term", {"m2_k + n_k * (mean_k - mean) ** 2": "m2_k + 0 * (mean_k - mean)"},
     "that spread is part of the variance"),
    ("variance, not M2", {"return count, mean, m2\n": "return count, mean, m2 / count\n"},
     "not the biased variance"),
    ("sums of squares", {"m2 = all_reduce([m2_k + n_k * (mean_k - mean) ** 2\n"
                         "                     for n_k, mean_k, m2_k in zip(counts, means, m2s)])[0]":
                         "m2 = all_reduce([(x ** 2).sum((0,) + tuple(range(2, x.dim()))) "
                         "for x in xs])[0] - count * mean ** 2"},
     "cancels"),
    ("an empty rank's mean is NaN",
     {"mean = x.mean(dims) if n else torch.zeros(x.shape[1], dtype=x.dtype)":
      "mean = x.mean(dims)"}, "empty rank's mean is 0/0"),
]


@pytest.mark.parametrize("what, replacements, hint", MOMENT_MISTAKES,
                         ids=[m[0] for m in MOMENT_MISTAKES])
def test_moment_mistakes_get_hints(solution_source, what, replacements, hint):
    fn = solution_objects(solution_source, NOTEBOOK, **replacements)["sync_moments"]
    report, messages = check_messages("11.sync_moments", fn)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


BACKWARD_MISTAKES = [
    ("local count", {"        dxs.append((weight * inv_std / n).view(shape)\n"
                     "                   * (n * dy":
                     "        n_k = x.numel() // C\n"
                     "        dxs.append((weight * inv_std / n_k).view(shape)\n"
                     "                   * (n_k * dy"},
     "divide by the global count"),
    ("local sums in dx",
     {"- sum_dy.view(shape) - x_hat * sum_dy_x_hat.view(shape)":
      "- dy.sum((0,) + tuple(range(2, x.dim()))).view(shape) - x_hat * "
      "(dy * x_hat).sum((0,) + tuple(range(2, x.dim()))).view(shape)"},
     "use the all-reduced sums"),
    ("gamma forgotten", {"(weight * inv_std / n)": "(inv_std / n)"}, "scaled by weight"),
    ("x - mean, not x_hat", {"(dy * x_hat).sum(dims)": "(dy * (x - mean.view(shape))).sum(dims)"},
     "multiply sum(dy * (x - mean)) by inv_std"),
]


@pytest.mark.parametrize("what, replacements, hint", BACKWARD_MISTAKES,
                         ids=[m[0] for m in BACKWARD_MISTAKES])
def test_backward_mistakes_get_hints(solution_source, what, replacements, hint):
    fn = solution_objects(solution_source, NOTEBOOK, **replacements)["sync_backward"]
    report, messages = check_messages("11.sync_backward", fn)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_concatenating_the_ranks_instead_of_all_reduce_loses_every_point():
    def sync_moments(xs, all_reduce):
        x = torch.cat(xs)
        return x.shape[0], x.mean(0), ((x - x.mean(0)) ** 2).sum(0)

    report, messages = check_messages("11.sync_moments", sync_moments)
    assert report.score == 0 and all("all_reduce was never called" in m for m in messages)


def test_the_package_is_flagged():
    def sync_moments(xs, all_reduce):
        from bncourse.nn._moments import channel_moments

        all_reduce([torch.zeros(1) for _ in xs])
        return channel_moments(torch.cat(xs))

    report, messages = check_messages("11.sync_moments", sync_moments)
    assert report.score == 0 and all("flagged" in m for m in messages), messages


ALL_REDUCE_MISUSE = [
    (lambda ar: ar([torch.ones(2)]), "a list of 3 tensors, one per rank, got list of length 1"),
    (lambda ar: ar(torch.ones(3, 2)), "a list of 3 tensors, one per rank, got Tensor"),
    (lambda ar: ar([torch.ones(2), torch.ones(3), torch.ones(2)]), "tensors of one shape"),
    (lambda ar: ar([1.0, 2.0, 3.0]), "takes torch tensors"),
]


@pytest.mark.parametrize("call, message", ALL_REDUCE_MISUSE, ids=[m for _, m in ALL_REDUCE_MISUSE])
def test_the_graders_all_reduce_refuses_misuse(call, message):
    all_reduce, calls = make_all_reduce(3)
    with pytest.raises(SubmissionError, match=message):
        call(all_reduce)
    assert calls == []


def test_the_graders_all_reduce_sums_into_new_tensors_for_every_rank():
    all_reduce, calls = make_all_reduce(2)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0])
    out = all_reduce([a, b])
    assert calls == [(2,)] and len(out) == 2 and out[0] is not out[1]
    for t in out:
        torch.testing.assert_close(t, torch.tensor([11.0, 22.0]), rtol=0, atol=0)
    torch.testing.assert_close(a, torch.tensor([1.0, 2.0]), rtol=0, atol=0)


def test_references_agree_with_full_batch_autograd():
    from bncourse.grading.lessons.l11_distributed_bn import (reference_sync_backward,
                                                             reference_sync_moments)

    g = torch.Generator().manual_seed(0)
    x = 2.0 + torch.randn(12, 3, 4, generator=g, dtype=torch.float64)
    dy = torch.randn(12, 3, 4, generator=g, dtype=torch.float64)
    weight = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    sizes = [5, 0, 7]
    all_reduce, _ = make_all_reduce(3)
    count, mean, m2 = reference_sync_moments(list(x.split(sizes)), all_reduce)
    assert float(count) == 48
    torch.testing.assert_close(mean, x.mean((0, 2)), rtol=1e-12, atol=1e-12)
    var = x.var((0, 2), unbiased=False)
    torch.testing.assert_close(m2 / count, var, rtol=1e-12, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    torch.nn.functional.batch_norm(xg, None, None, weight, None, True, 0.1, 1e-5).backward(dy)
    dxs, sum_dy, _ = reference_sync_backward(list(dy.split(sizes)), list(x.split(sizes)), mean,
                                             torch.rsqrt(var + 1e-5), weight, all_reduce)
    np.testing.assert_allclose(torch.cat(dxs).numpy(), xg.grad.numpy(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sum_dy, dy.sum((0, 2)), rtol=1e-12, atol=1e-12)
