"""Module 02 drivers (lesson 02, forward): call the learner's `batch_statistics` and
`batchnorm_forward` on the grader's inputs and return plain data.

Runs in the learner's process: imports only NumPy, torch and `_contract`."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import as_array, unpack

__all__ = ['_run_batch_statistics', '_run_batchnorm_forward']


def _run_batch_statistics(fn, inputs):
    x = inputs["x"].copy()
    mean, var = unpack(fn(x), ("mean", "var"), "batch_statistics")
    return {"mean": as_array(mean, "mean"), "var": as_array(var, "var"),
            "x_unchanged": bool(np.array_equal(x, inputs["x"]))}


def _run_batchnorm_forward(fn, inputs):
    x = inputs["x"].copy()
    kwargs = {"eps": inputs["eps"]} if inputs["eps"] != 1e-5 else {}
    out, _cache = unpack(fn(x, inputs["gamma"].copy(), inputs["beta"].copy(), **kwargs),
                         ("out", "cache"), "batchnorm_forward")
    return {"out": as_array(out, "out"), "x_unchanged": bool(np.array_equal(x, inputs["x"]))}

