"""Module 03 drivers (lesson 03, backward): `numerical_gradient` on the grader's test
function, `batchnorm_backward` on the grader's inputs.

Runs in the learner's process: imports only NumPy, torch and `_contract`."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import as_array, unpack

__all__ = ['test_function', '_run_numerical_gradient', '_run_batchnorm_backward']


def test_function(a: np.ndarray, b: np.ndarray):
    """f(x) = sum(a * x**3 + b * sin(x)): smooth, with curvature everywhere (so a forward
    difference or an ignored `h` shows)."""
    def f(x):
        return float(np.sum(a * x**3 + b * np.sin(x)))
    return f


def _run_numerical_gradient(fn, inputs):
    f = test_function(inputs["a"], inputs["b"])
    x = inputs["x"].copy()
    args = (f, x) if inputs["h"] is None else (f, x, inputs["h"])
    grad = as_array(fn(*args), "the gradient")
    return {"grad": grad, "x_after": x}


def _run_batchnorm_backward(fn, inputs):
    x, dout, gamma = inputs["x"].copy(), inputs["dout"].copy(), inputs["gamma"].copy()
    kwargs = {"eps": inputs["eps"]} if inputs["eps"] != 1e-5 else {}
    dx, dgamma, dbeta = unpack(fn(dout, x, gamma, **kwargs), ("dx", "dgamma", "dbeta"),
                               "batchnorm_backward")
    return {"dx": as_array(dx, "dx"), "dgamma": as_array(dgamma, "dgamma"),
            "dbeta": as_array(dbeta, "dbeta")}

