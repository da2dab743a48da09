"""Drivers of module 11 (lesson 11, synchronised BN): they run in the learner's process.

There is no process group here: K "ranks" are K tensors in a list, and the collective is the
grader's `all_reduce`, a plain function that takes one tensor per rank and returns, for every
rank, the sum over ranks (a new list of new tensors, as `dist.all_reduce(SUM)` leaves on each).
It counts its calls and refuses anything but K tensors of one shape.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, unpack

__all__ = ["make_all_reduce", "run_sync_moments", "run_sync_backward"]


def make_all_reduce(world_size: int):
    """An all_reduce(SUM) over `world_size` simulated ranks, and the list of its calls' shapes."""
    import torch

    calls: list[tuple] = []

    def all_reduce(tensors):
        if not isinstance(tensors, (list, tuple)) or len(tensors) != world_size:
            raise SubmissionError(
                f"all_reduce takes a list of {world_size} tensors, one per rank, got "
                f"{type(tensors).__name__}"
                + (f" of length {len(tensors)}" if isinstance(tensors, (list, tuple)) else ""))
        if not all(isinstance(t, torch.Tensor) for t in tensors):
            raise SubmissionError("all_reduce takes torch tensors (one per rank), got "
                                  + ", ".join(sorted({type(t).__name__ for t in tensors})))
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            raise SubmissionError(f"all_reduce needs tensors of one shape on every rank, got "
                                  f"shapes {sorted(shapes)}")
        calls.append(shapes.pop())
        total = torch.stack([t.detach().to(torch.float64) for t in tensors]).sum(0)
        return [total.to(tensors[0].dtype).clone() for _ in range(world_size)]

    return all_reduce, calls


def _tensors(arrays):
    import torch

    return [torch.from_numpy(np.array(a, copy=True)) for a in arrays]


def run_sync_moments(fn, inputs):
    """fn(xs, all_reduce) -> (count, mean, m2): the global per-channel moments."""
    xs = _tensors(inputs["xs"])
    all_reduce, calls = make_all_reduce(len(xs))
    count, mean, m2 = unpack(fn(xs, all_reduce), ("count", "mean", "m2"), "sync_moments")
    return {"count": as_array(count, "count").astype(np.float64).reshape(-1)[:1],
            "mean": as_array(mean, "mean").astype(np.float64),
            "m2": as_array(m2, "m2").astype(np.float64),
            "calls": len(calls),
            "unchanged": bool(all(np.array_equal(x.numpy(), a)
                                  for x, a in zip(xs, inputs["xs"])))}


def run_sync_backward(fn, inputs):
    """fn(dys, xs, mean, inv_std, weight, all_reduce) -> (dxs, sum_dy, sum_dy_x_hat)."""
    import torch

    xs, dys = _tensors(inputs["xs"]), _tensors(inputs["dys"])
    mean, inv_std, weight = _tensors([inputs["mean"], inputs["inv_std"], inputs["weight"]])
    all_reduce, calls = make_all_reduce(len(xs))
    dxs, sum_dy, sum_dy_x_hat = unpack(fn(dys, xs, mean, inv_std, weight, all_reduce),
                                       ("dxs", "sum_dy", "sum_dy_x_hat"), "sync_backward")
    if not isinstance(dxs, (list, tuple)) or len(dxs) != len(xs):
        raise SubmissionError(f"dxs must be a list of {len(xs)} tensors (one per rank, shaped "
                              f"like that rank's x), got {type(dxs).__name__}")
    for rank, dx in enumerate(dxs):
        if not isinstance(dx, torch.Tensor):
            raise SubmissionError(f"dxs[{rank}] must be a torch.Tensor, got {type(dx).__name__}")
    return {"dxs": [as_array(dx, f"dxs[{r}]").astype(np.float64) for r, dx in enumerate(dxs)],
            "sum_dy": as_array(sum_dy, "sum_dy").astype(np.float64),
            "sum_dy_x_hat": as_array(sum_dy_x_hat, "sum_dy_x_hat").astype(np.float64),
            "calls": len(calls)}
