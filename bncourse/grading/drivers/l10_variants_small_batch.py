"""Drivers of module 10's exercises (they run in the learner's process).

Each calls the learner's function on the grader's inputs and returns plain data; imports only
NumPy, torch, the standard library and `_contract` (see `drivers/__init__.py`).
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, unpack

__all__ = ["run_group_norm", "run_renorm", "run_answers"]


def _tensor(value, what):
    import torch

    if not isinstance(value, torch.Tensor):
        raise SubmissionError(f"{what} must be a torch.Tensor, got {type(value).__name__}")
    return value


def run_group_norm(fn, inputs):
    """group_norm_channels_last(x, num_groups, weight, bias, eps) on (N, *, C) input."""
    import torch

    x = torch.from_numpy(inputs["x"].copy())
    weight = torch.from_numpy(inputs["weight"].copy())
    bias = torch.from_numpy(inputs["bias"].copy())
    out = _tensor(fn(x, inputs["num_groups"], weight, bias, inputs["eps"]),
                  "group_norm_channels_last(...)")
    return {"out": as_array(out, "group_norm_channels_last(...)"),
            "unchanged": bool(np.array_equal(x.numpy(), inputs["x"]))}


def run_renorm(fn, inputs):
    """batch_renorm_train(x, running_mean, running_var, r_max, d_max, eps) -> (x_hat, r, d);
    then x_hat.backward(dy), so the gradient shows whether r and d were held constant."""
    import torch

    x = torch.from_numpy(inputs["x"].copy()).requires_grad_(True)
    running_mean = torch.from_numpy(inputs["running_mean"].copy())
    running_var = torch.from_numpy(inputs["running_var"].copy())
    x_hat, r, d = unpack(fn(x, running_mean, running_var, inputs["r_max"], inputs["d_max"],
                            inputs["eps"]), ("x_hat", "r", "d"), "batch_renorm_train")
    x_hat = _tensor(x_hat, "x_hat")
    if x_hat.shape != x.shape:
        raise SubmissionError(f"x_hat has shape {tuple(x_hat.shape)}, expected the shape of x "
                              f"{tuple(x.shape)}")
    if not x_hat.requires_grad:
        raise SubmissionError("x_hat carries no gradient back to x: compute it with torch "
                              "operations on x (no .detach(), .numpy() or torch.no_grad())")
    x_hat.backward(torch.from_numpy(inputs["dy"].copy()))
    if x.grad is None:
        raise SubmissionError("x_hat does not depend on x")
    return {"x_hat": as_array(x_hat, "x_hat"), "r": as_array(r, "r").reshape(-1),
            "d": as_array(d, "d").reshape(-1), "dx": as_array(x.grad, "the gradient of x"),
            "unchanged": bool(np.array_equal(running_mean.numpy(), inputs["running_mean"])
                              and np.array_equal(running_var.numpy(), inputs["running_var"]))}


def run_answers(fn, inputs):
    """small_batch_predictions() -> dict; the value under inputs["key"]."""
    answers = fn()
    if not isinstance(answers, dict):
        raise SubmissionError(f"small_batch_predictions() must return a dict, got {type(answers).__name__}")
    key = inputs["key"]
    if key not in answers:
        raise SubmissionError(f"small_batch_predictions() has no key {key!r}")
    value = answers[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SubmissionError(f"small_batch_predictions()[{key!r}] must be a number or a string, got "
                              f"{type(value).__name__}")
    return {"value": value}
