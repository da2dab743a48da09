"""Drivers of module 02 (forward pass): they run in the learner's process (stdlib, NumPy,
`_contract` only)."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, unpack
from bncourse.grading.drivers._questions import run_questions  # noqa: F401 (re-exported)

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

