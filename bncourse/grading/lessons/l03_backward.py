"""Module 03 exercises (lesson 03, backward): `numerical_gradient` and `batchnorm_backward`.

`numerical_gradient(f, x, h)` is compared with the grader's own centred difference of the same
function; `batchnorm_backward(dout, x, gamma, eps)` with `bncourse.reference`'s forward+backward.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, array_mismatch, as_array, unpack
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN, _axes, _per_channel
from bncourse.grading.drivers.l03_backward import (test_function, _run_numerical_gradient, _run_batchnorm_backward)  # noqa: F401

__all__ = ["EXERCISES", "test_function"]

MODULE = "03"
NOTEBOOK = "03_backward_exercises.ipynb"
REQUIRED = True  # for the certificate


# --- numerical_gradient -------------------------------------------------------------------

def _centred_difference(f, x, h=1e-5):
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        f_plus = f(x)
        x[i] = old - h
        f_minus = f(x)
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def _forward_difference(f, x, h=1e-5):
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    f0 = f(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        grad[i] = (f(x) - f0) / h
        x[i] = old
    return grad


def _reference_numerical_gradient():
    return _centred_difference


def _compare_numerical_gradient(got, expected, inputs):
    f = test_function(inputs["a"], inputs["b"])
    x = inputs["x"]
    h = 1e-5 if inputs["h"] is None else inputs["h"]
    message = array_mismatch(
        got["grad"], expected["grad"], "gradient", rtol=1e-6, atol=1e-8,
        shape_hints=((f"return one partial derivative per element of x: shape {x.shape}",
                      lambda shape: True),),
        hints=(("use centred differences: (f(x + h) − f(x − h)) / (2h)",
                lambda: _forward_difference(f, x, h)),
               ("divide by 2h, the distance between x − h and x + h",
                lambda: 2 * expected["grad"]),
               ("use the step h passed as an argument",
                lambda: _centred_difference(f, x, 1e-5))))
    if message:
        return message
    if not np.allclose(got["x_after"], x, rtol=1e-12, atol=1e-12):
        return ("x was changed: restore each element after perturbing it "
                "(old = x[i]; ...; x[i] = old)")
    return None


def _gradient_inputs(shape, h):
    def make(rng):
        return {"x": rng.uniform(-1.5, 1.5, shape), "a": rng.uniform(0.5, 2, shape),
                "b": rng.uniform(-2, 2, shape), "h": h}
    return make


NUMERICAL_GRADIENT = Exercise(
    module="03", name="numerical_gradient", kind="function",
    run=_run_numerical_gradient, reference=_reference_numerical_gradient,
    checks=(
        Check("1-D x, default h", _gradient_inputs((5,), None), _compare_numerical_gradient),
        Check("2-D x keeps its shape", _gradient_inputs((3, 4), None),
              _compare_numerical_gradient),
        Check("uses the given h (h=1e-2)", _gradient_inputs((4,), 1e-2),
              _compare_numerical_gradient),
        Check("3-D x, x unchanged afterwards", _gradient_inputs((2, 3, 2), 1e-4),
              _compare_numerical_gradient),
    ),
)


# --- batchnorm_backward -------------------------------------------------------------------

def _reference_batchnorm_backward():
    from bncourse.reference import batchnorm_backward, batchnorm_forward

    def backward(dout, x, gamma, eps=1e-5):
        _, cache = batchnorm_forward(x, gamma, np.zeros_like(gamma), eps)
        return batchnorm_backward(dout, cache)

    return backward


def _compare_backward(parts):
    def compare(got, expected, inputs):
        x, dout, gamma, eps = inputs["x"], inputs["dout"], inputs["gamma"], inputs["eps"]
        nd, C = x.ndim, x.shape[1]
        axes = _axes(nd)
        inv_std = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
        tol = dict(rtol=1e-3, atol=1e-4) if x.dtype == np.float32 else dict(rtol=1e-6,
                                                                            atol=1e-9)
        per_channel = ((f"one value per channel: sum over every axis but 1, shape ({C},)",
                        lambda shape: True),)
        hints = {
            "dx": (("dx must include the paths through the batch mean and variance, not "
                    "only dout * gamma / sqrt(var + eps)",
                    lambda: dout * _per_channel(gamma, nd) * inv_std),
                   ("dx_hat = dout * gamma: did you forget gamma?",
                    lambda: expected["dx"] / _per_channel(gamma, nd))),
            "dgamma": (("dgamma = sum(dout * x_hat), dbeta = sum(dout): swapped?",
                        lambda: expected["dbeta"]),),
            "dbeta": (("dgamma = sum(dout * x_hat), dbeta = sum(dout): swapped?",
                       lambda: expected["dgamma"]),),
        }
        for part in parts:
            message = array_mismatch(
                got[part], expected[part], part, **tol, hints=hints[part],
                shape_hints=per_channel if part != "dx" else ())
            if message:
                return message
        return None
    return compare


def _backward_inputs(shape, dtype=np.float64, eps=1e-5):
    def make(rng):
        C = shape[1]
        loc = _per_channel(rng.normal(0, 2, C), len(shape))
        scale = _per_channel(rng.uniform(0.5, 2, C), len(shape))
        x = loc + scale * rng.standard_normal(shape)
        if eps != 1e-5:
            x = 0.3 * x
        return {"x": x.astype(dtype), "dout": rng.standard_normal(shape).astype(dtype),
                "gamma": rng.uniform(0.5, 2, C).astype(dtype), "eps": eps}
    return make


ALL = ("dx", "dgamma", "dbeta")
BATCHNORM_BACKWARD = Exercise(
    module="03", name="batchnorm_backward", implements_bn=True, kind="function",
    run=_run_batchnorm_backward, reference=_reference_batchnorm_backward,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("(N, C) float64: dx", _backward_inputs((8, 4)), _compare_backward(("dx",))),
        Check("(N, C) float64: dgamma and dbeta", _backward_inputs((8, 4)),
              _compare_backward(("dgamma", "dbeta"))),
        Check("(N, C, H, W) float64: dx, dgamma, dbeta", _backward_inputs((3, 2, 4, 4)),
              _compare_backward(ALL)),
        Check("(N, C) float32", _backward_inputs((16, 3), np.float32), _compare_backward(ALL)),
        Check("eps=0.1 is used", _backward_inputs((6, 3), eps=0.1), _compare_backward(ALL)),
    ),
)

EXERCISES = (NUMERICAL_GRADIENT, BATCHNORM_BACKWARD)
