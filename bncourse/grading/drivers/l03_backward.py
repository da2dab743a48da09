"""Drivers of module 03 (backward pass): they run in the learner's process (stdlib, NumPy,
`_contract` only)."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, unpack
from bncourse.grading.drivers._questions import run_questions  # noqa: F401 (re-exported)

__all__ = ["STAGES", "test_function", "run_numerical_gradient", "run_batchnorm_backward",
           "run_questions"]

# The nodes of lesson 03's graph whose gradients batchnorm_backward returns in `stages`.
STAGES = ("x_hat", "inv_std", "var", "mu")


def test_function(a, b, c):
    """f(x) = a x^3 + b sin(x) + tanh(sum(c x)) x, elementwise plus a term that couples every
    element (so a loop that perturbs a whole row at once shows)."""
    def f(x):
        return a * x**3 + b * np.sin(x) + np.tanh(np.sum(c * x)) * x
    return f


def run_numerical_gradient(fn, inputs):
    f = test_function(inputs["a"], inputs["b"], inputs["c"])
    x, dout = inputs["x"].copy(), inputs["dout"].copy()
    args = (f, x, dout) if inputs["h"] is None else (f, x, dout, inputs["h"])
    grad = as_array(fn(*args), "the gradient")
    return {"grad": grad, "x_after": x}


def _call_backward(fn, inputs, x):
    kwargs = {"eps": inputs["eps"]} if inputs["eps"] != 1e-5 else {}
    dx, dgamma, dbeta, stages = unpack(
        fn(inputs["dout"].astype(x.dtype), x, inputs["gamma"].astype(x.dtype), **kwargs),
        ("dx", "dgamma", "dbeta", "stages"), "batchnorm_backward")
    result = {"dx": as_array(dx, "dx"), "dgamma": as_array(dgamma, "dgamma"),
              "dbeta": as_array(dbeta, "dbeta")}
    if not isinstance(stages, dict):
        raise SubmissionError(f"stages must be a dict with keys {list(STAGES)}, got "
                              f"{type(stages).__name__}")
    missing = [k for k in STAGES if k not in stages]
    if missing:
        raise SubmissionError(f"stages has no key {missing[0]!r} (expected keys "
                              f"{list(STAGES)})")
    result["stages"] = {k: as_array(stages[k], f"stages[{k!r}]") for k in STAGES}
    return result


def run_batchnorm_backward(fn, inputs):
    x = inputs["x"].copy()
    result = _call_backward(fn, inputs, x)
    if x.dtype == np.float32:  # the same batch in float64: is only the precision wrong?
        result["float64"] = _call_backward(fn, inputs, inputs["x"].astype(np.float64))
    return result

