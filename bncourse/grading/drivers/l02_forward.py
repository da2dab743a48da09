"""Drivers of module 02 (forward pass): they run in the learner's process (stdlib, NumPy,
`_contract` only)."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, unpack

__all__ = ["run_batch_statistics", "run_batchnorm_forward", "run_batchnorm_forward_axis",
           "run_questions"]


def run_batch_statistics(fn, inputs):
    x = inputs["x"].copy()
    mean, var = unpack(fn(x), ("mean", "var"), "batch_statistics")
    return {"mean": as_array(mean, "mean"), "var": as_array(var, "var"),
            "x_unchanged": bool(np.array_equal(x, inputs["x"]))}


def _forward(fn, inputs, kwargs, name):
    x = inputs["x"].copy()
    if inputs["eps"] != 1e-5:
        kwargs["eps"] = inputs["eps"]
    out, _cache = unpack(fn(x, inputs["gamma"].copy(), inputs["beta"].copy(), **kwargs),
                         ("out", "cache"), name)
    return {"out": as_array(out, "out"), "x_unchanged": bool(np.array_equal(x, inputs["x"]))}


def run_batchnorm_forward(fn, inputs):
    return _forward(fn, inputs, {}, "batchnorm_forward")


def run_batchnorm_forward_axis(fn, inputs):
    kwargs = {} if inputs["axis"] == -1 else {"axis": inputs["axis"]}
    return _forward(fn, inputs, kwargs, "batchnorm_forward_axis")


def run_questions(fn, inputs):
    """questions(name, data) -> a number or an array of numbers."""
    data = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs["data"].items()}
    value = fn(inputs["question"], data)
    if isinstance(value, (str, bytes)):
        raise SubmissionError(f"the answer to {inputs['question']!r} must be a number or an "
                              f"array of numbers, got the string {value!r:.40}")
    return {"value": as_array(value, f"the answer to {inputs['question']!r}").astype(np.float64)}
