"""Module 11 exercises (lesson 11, synchronised BN): `sync_moments` (the per-channel
(count, mean, M2) of a batch split over K ranks, merged with an all-reduce) and `sync_backward`
(the backward's two global sums and each rank's input gradient). The ranks are a list of tensors
and the all-reduce is the grader's function (`bncourse.grading.drivers.l11_distributed_bn`):
no process group inside the grader's sandbox. Hidden partitions are uneven and include an empty
rank and a mean of 1e6."""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, array_mismatch, fmt
from bncourse.grading.drivers.l11_distributed_bn import run_sync_backward, run_sync_moments
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN

__all__ = ["EXERCISES", "reference_sync_moments", "reference_sync_backward"]

MODULE = "11"
NOTEBOOK = "11_distributed_bn_exercises.ipynb"
REQUIRED = True  # for the certificate

MOMENTS_FORBIDDEN = (
    "bncourse.nn._moments.channel_moments", "bncourse.nn._moments.merge_moments",
    "bncourse.nn._moments.merge_stacked", "bncourse.nn.functional.batch_norm_stats",
    "bncourse.nn.sync.sync_batch_norm",
) + IMPLEMENT_BN_FORBIDDEN
BACKWARD_FORBIDDEN = (
    "bncourse.nn.functional.batch_norm_backward_reduce",
    "bncourse.nn.functional.batch_norm_backward_elemt", "bncourse.nn.sync.sync_batch_norm",
) + IMPLEMENT_BN_FORBIDDEN


def _axes(ndim):
    return (0,) + tuple(range(2, ndim))


def _per_channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


# --- sync_moments ---------------------------------------------------------------------------

def reference_sync_moments(xs, all_reduce):
    """Each rank's (count, mean, M2), made an all-gather by an all-reduce of one-hot rows,
    then Chan et al.'s merge (`bncourse.nn._moments`)."""
    import torch

    from bncourse.nn._moments import channel_moments, merge_stacked

    K = len(xs)
    rows = []
    for rank, x in enumerate(xs):
        count, mean, m2 = channel_moments(x)
        table = torch.zeros(K, 1 + 2 * mean.numel(), dtype=x.dtype)
        table[rank] = torch.cat([count.view(1), mean, m2])  # only my row: the sum gathers
        rows.append(table)
    table = all_reduce(rows)[0]
    C = (table.shape[1] - 1) // 2
    return merge_stacked(table[:, 0], table[:, 1:C + 1], table[:, C + 1:])


def _parts(inputs):
    return [np.asarray(x, dtype=np.float64) for x in inputs["xs"]]


def _compare_moments(got, expected, inputs):
    if not got["unchanged"]:
        return "sync_moments changed a rank's x in place: leave the inputs alone"
    if got["calls"] == 0:
        return ("all_reduce was never called: each rank sees only its own x, so the ranks' "
                "partial statistics must be combined with all_reduce")
    parts = _parts(inputs)
    nd = parts[0].ndim
    n_k = np.array([x.size // x.shape[1] for x in parts], dtype=np.float64)
    n = n_k.sum()
    if not np.isclose(got["count"][0], n, rtol=0, atol=0.5):
        hint = " (a count per rank, not summed?)" if got["count"][0] in n_k else ""
        return f"count is {fmt(got['count'][0])}, expected {fmt(n)}: values per channel{hint}"
    if got["mean"].shape == expected["mean"].shape and np.isnan(got["mean"]).any():
        return ("the mean contains NaN: an empty rank's mean is 0/0; give it count 0, mean 0 "
                "and M2 0 so it weighs nothing in the merge")
    present = [x for x in parts if x.shape[0] > 0]
    means = np.stack([x.mean(axis=_axes(nd)) for x in present])
    mean_hints = (("weigh each rank's mean by its count (sum n_k mean_k / n), not equally: "
                   "the ranks hold different numbers of samples", lambda: means.mean(0)),)
    tol_mean = dict(rtol=1e-10, atol=1e-9 * max(1.0, float(np.abs(expected["mean"]).max())))
    message = array_mismatch(got["mean"], expected["mean"], "the mean", **tol_mean,
                             hints=mean_hints)
    if message:
        return message
    m2_within = sum(((x - _per_channel(x.mean(axis=_axes(nd)), nd)) ** 2).sum(axis=_axes(nd))
                    for x in present)
    m2 = expected["m2"]
    m2_hints = (
        ("M2 = sum_k M2_k + sum_k n_k (mean_k - mean)^2: the ranks' means differ, and that "
         "spread is part of the variance", lambda: m2_within),
        ("return M2, the sum of squared deviations, not the biased variance M2 / n",
         lambda: m2 / n),
        ("return M2, the sum of squared deviations, not the unbiased variance M2 / (n - 1)",
         lambda: m2 / (n - 1)),
    )
    rtol = 1e-7 if inputs.get("offset", 0) > 1e3 else 1e-9
    message = array_mismatch(got["m2"], m2, "M2", rtol=rtol, atol=1e-9, hints=m2_hints)
    if message and got["m2"].shape == m2.shape and np.allclose(got["m2"], m2, rtol=1e-2):
        message += (". Hint: close but not exact: with |mean| = 1e6, sum(x^2) - n mean^2 "
                    "cancels (lesson 05); merge (count, mean, M2) instead of sums of squares")
    return message


def _moments_inputs(sizes, tail=(), offset=0.0, channels=3):
    def make(rng):
        xs = []
        for rank, size in enumerate(sizes):
            loc = offset + rng.normal(0, 2, channels) + 1.5 * rank  # ranks see shifted data
            x = rng.normal(0, 1, (size, channels) + tail) * rng.uniform(0.5, 2)
            xs.append(x + _per_channel(loc, 2 + len(tail)))
        return {"xs": xs, "offset": offset}
    return make


SYNC_MOMENTS = Exercise(
    module="11", name="sync_moments", implements_bn=True, kind="function",
    run=run_sync_moments, reference=lambda: reference_sync_moments, forbidden=MOMENTS_FORBIDDEN,
    checks=(
        Check("2 ranks, (8, C) each", _moments_inputs((8, 8)), _compare_moments),
        Check("3 uneven ranks (2, 9, 5), (N, C, L)", _moments_inputs((2, 9, 5), (4,)),
              _compare_moments),
        Check("4 ranks, one empty (5, 0, 3, 7)", _moments_inputs((5, 0, 3, 7)),
              _compare_moments),
        Check("mean 1e6, std 1: no cancellation", _moments_inputs((6, 11, 4), offset=1e6),
              _compare_moments),
    ),
)

# --- sync_backward --------------------------------------------------------------------------


def reference_sync_backward(dys, xs, mean, inv_std, weight, all_reduce):
    """Local sums (`batch_norm_backward_reduce`), one all-reduce of [sum dy, sum dy x_hat,
    count], then `batch_norm_backward_elemt` with the global count on each rank."""
    import torch

    from bncourse.nn._moments import as_rows
    from bncourse.nn.functional import batch_norm_backward_elemt, batch_norm_backward_reduce

    local = []
    for dy, x in zip(dys, xs):
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype)
        if x.shape[0] > 0:
            sums = batch_norm_backward_reduce(as_rows(dy), as_rows(x), mean, inv_std)
        else:
            sums = (torch.zeros_like(mean), torch.zeros_like(mean))
        local.append(torch.cat([*sums, count]))
    total = all_reduce(local)[0]
    C = mean.numel()
    sum_dy, sum_dy_x_hat, count = total[:C], total[C:2 * C], float(total[2 * C])
    dxs = []
    for dy, x in zip(dys, xs):
        dx = torch.empty_like(x)
        if x.shape[0] > 0:
            batch_norm_backward_elemt(as_rows(dy), as_rows(x), mean, inv_std, weight, sum_dy,
                                      sum_dy_x_hat, count, out=as_rows(dx))
        dxs.append(dx)
    return dxs, sum_dy, sum_dy_x_hat


def _dx_alternatives(inputs, local_count=False, local_sums=False, no_weight=False):
    xs, dys = _parts(inputs), [np.asarray(d, dtype=np.float64) for d in inputs["dys"]]
    mean, inv_std, w = (np.asarray(inputs[k]) for k in ("mean", "inv_std", "weight"))
    nd = xs[0].ndim
    ax = _axes(nd)
    x_hats = [(x - _per_channel(mean, nd)) * _per_channel(inv_std, nd) for x in xs]
    sums = [(dy.sum(axis=ax), (dy * xh).sum(axis=ax)) for dy, xh in zip(dys, x_hats)]
    total = (sum(s[0] for s in sums), sum(s[1] for s in sums))
    n = sum(x.size // x.shape[1] for x in xs)
    out = []
    for x, dy, xh, s in zip(xs, dys, x_hats, sums):
        M = (x.size // x.shape[1]) if local_count else n
        s_dy, s_dyxh = s if local_sums else total
        a = _per_channel((1.0 if no_weight else w) * inv_std / max(M, 1), nd)
        out.append(a * (M * dy - _per_channel(s_dy, nd) - xh * _per_channel(s_dyxh, nd)))
    return out


def _compare_backward(got, expected, inputs):
    if got["calls"] == 0:
        return ("all_reduce was never called: sum(dy) and sum(dy * x_hat) are sums over the "
                "whole batch, so each rank's partial sums must be all-reduced")
    xs = _parts(inputs)
    sum_dy_x_mu = expected["sum_dy_x_hat"] / np.asarray(inputs["inv_std"])
    for key, what, hints in (
            ("sum_dy", "sum(dy)", ()),
            ("sum_dy_x_hat", "sum(dy * x_hat)",
             (("x_hat = (x - mean) * inv_std: multiply sum(dy * (x - mean)) by inv_std",
               lambda: sum_dy_x_mu),))):
        message = array_mismatch(got[key], expected[key], what, rtol=1e-9, atol=1e-9,
                                 hints=hints)
        if message:
            return message
    for rank, (dx, want) in enumerate(zip(got["dxs"], expected["dxs"])):
        hints = (("divide by the global count n (all ranks' values per channel), not this "
                  "rank's", lambda r=rank: _dx_alternatives(inputs, local_count=True)[r]),
                 ("use the all-reduced sums in dx, not this rank's own",
                  lambda r=rank: _dx_alternatives(inputs, local_sums=True)[r]),
                 ("dx is scaled by weight (gamma) * inv_std / n",
                  lambda r=rank: _dx_alternatives(inputs, no_weight=True)[r]))
        message = array_mismatch(dx, want, f"dxs[{rank}]", rtol=1e-8, atol=1e-10, hints=hints,
                                 shape_hints=((f"dxs[{rank}] is shaped like rank {rank}'s x "
                                               f"{xs[rank].shape}", lambda shape: True),))
        if message:
            return message
    return None


def _backward_inputs(sizes, tail=(), channels=3):
    def make(rng):
        moments = _moments_inputs(sizes, tail, channels=channels)(rng)
        xs = moments["xs"]
        whole = np.concatenate(xs)
        ax = _axes(whole.ndim)
        mean, var = whole.mean(axis=ax), whole.var(axis=ax)
        return {"xs": xs, "dys": [rng.normal(0, 1, x.shape) for x in xs], "mean": mean,
                "inv_std": 1 / np.sqrt(var + 1e-5), "weight": rng.uniform(0.5, 2, channels)}
    return make


SYNC_BACKWARD = Exercise(
    module="11", name="sync_backward", implements_bn=True, kind="function",
    run=run_sync_backward, reference=lambda: reference_sync_backward,
    forbidden=BACKWARD_FORBIDDEN,
    checks=(
        Check("2 ranks, (6, C) each", _backward_inputs((6, 6)), _compare_backward),
        Check("3 uneven ranks (3, 10, 2), (N, C, L)", _backward_inputs((3, 10, 2), (5,)),
              _compare_backward),
        Check("4 ranks, one empty (4, 7, 0, 5)", _backward_inputs((4, 7, 0, 5)),
              _compare_backward),
    ),
)

EXERCISES = (SYNC_MOMENTS, SYNC_BACKWARD)
