"""Module 02 exercises (lesson 02, forward): `batch_statistics` and `batchnorm_forward` in NumPy.

Checks run on small seeded inputs; the expected values come from `bncourse.reference`.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, array_mismatch, as_array, unpack
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN, _axes, _per_channel
from bncourse.grading.drivers.l02_forward import (_run_batch_statistics, _run_batchnorm_forward)  # noqa: F401

__all__ = ["EXERCISES"]

MODULE = "02"
NOTEBOOK = "02_forward_exercises.ipynb"
REQUIRED = True  # for the certificate

def _normalize(x, var, eps, eps_inside=True):
    """(x - mean) / sqrt(var + eps) with a given per-channel variance (for hints)."""
    mu = x.mean(axis=_axes(x.ndim), keepdims=True)
    var = _per_channel(var, x.ndim)
    if eps_inside:
        return (x - mu) / np.sqrt(var + eps)
    return (x - mu) / (np.sqrt(var) + eps)


def _M(x):
    return x.size // x.shape[1]


# --- batch_statistics --------------------------------------------------------------------

def _reference_batch_statistics():
    def batch_statistics(x):
        axes = _axes(x.ndim)
        return x.mean(axis=axes), x.var(axis=axes)

    return batch_statistics


def _stat_shape_hints(x):
    C = x.shape[1]
    return (
        (f"one value per channel: reduce over every axis but 1, leaving shape ({C},)",
         lambda shape: shape != (C,)),
    )


def _compare_batch_statistics(got, expected, inputs):
    x = inputs["x"]
    tol = dict(rtol=1e-4, atol=1e-6) if x.dtype == np.float32 else dict(rtol=1e-7, atol=1e-10)
    message = array_mismatch(
        got["mean"], expected["mean"], "mean", **tol, shape_hints=_stat_shape_hints(x),
        hints=(("average over axis 0 and the spatial axes (every axis but the channel axis 1)",
                lambda: x.mean(axis=0)),))
    if message:
        return message
    M = _M(x)
    message = array_mismatch(
        got["var"], expected["var"], "var", **tol, shape_hints=_stat_shape_hints(x),
        hints=(("did you use the biased variance (divide by M, not M−1)?",
                lambda: expected["var"] * M / (M - 1)),
               ("var is the variance, not the standard deviation",
                lambda: np.sqrt(expected["var"]))))
    if message:
        return message
    if not got["x_unchanged"]:
        return "batch_statistics changed its input x in place; compute new arrays instead"
    return None


def _x_inputs(shape, dtype=np.float64):
    def make(rng):
        C = shape[1]
        loc = _per_channel(rng.normal(0, 3, C), len(shape))
        scale = _per_channel(rng.uniform(0.5, 3, C), len(shape))
        return {"x": (loc + scale * rng.standard_normal(shape)).astype(dtype)}
    return make


BATCH_STATISTICS = Exercise(
    module="02", name="batch_statistics", implements_bn=True, kind="function",
    run=_run_batch_statistics, reference=_reference_batch_statistics,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("(N, C) float64", _x_inputs((8, 4)), _compare_batch_statistics),
        Check("(N, C, L) float64", _x_inputs((5, 3, 7)), _compare_batch_statistics),
        Check("(N, C, H, W) float32", _x_inputs((4, 3, 5, 5), np.float32),
              _compare_batch_statistics),
    ),
)


# --- batchnorm_forward --------------------------------------------------------------------

def _reference_batchnorm_forward():
    from bncourse.reference import batchnorm_forward

    return batchnorm_forward


def _compare_batchnorm_forward(got, expected, inputs):
    x, gamma, beta, eps = inputs["x"], inputs["gamma"], inputs["beta"], inputs["eps"]
    nd = x.ndim
    var = x.var(axis=_axes(nd))
    M = _M(x)
    g, b = _per_channel(gamma, nd), _per_channel(beta, nd)
    tol = dict(rtol=1e-4, atol=1e-5) if x.dtype == np.float32 else dict(rtol=1e-7, atol=1e-9)
    hints = (
        ("did you use the biased variance (divide by M, not M−1)?",
         lambda: g * _normalize(x, var * M / (M - 1), eps) + b),
        ("eps goes inside the square root: (x − mean) / sqrt(var + eps)",
         lambda: g * _normalize(x, var, eps, eps_inside=False) + b),
        ("the statistics are per channel, over axis 0 and the spatial axes: not over axis 0 alone",
         lambda: g * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + b),
        ("scale by gamma and shift by beta: out = gamma * x_hat + beta",
         lambda: _normalize(x, var, eps)),
        ("out = gamma * x_hat + beta (did you swap gamma and beta?)",
         lambda: b * _normalize(x, var, eps) + g),
    )
    message = array_mismatch(got["out"], expected["out"], "out", **tol, dtype=x.dtype,
                             hints=hints)
    if message:
        return message
    if not got["x_unchanged"]:
        return "batchnorm_forward changed its input x in place; compute a new array instead"
    return None


def _forward_inputs(shape, dtype=np.float64, affine=True, eps=1e-5):
    make_x = _x_inputs(shape, dtype)

    def make(rng):
        C = shape[1]
        inputs = make_x(rng)
        if affine:
            inputs["gamma"] = rng.uniform(0.5, 2.0, C).astype(dtype)
            inputs["beta"] = rng.normal(0, 1, C).astype(dtype)
        else:
            inputs["gamma"] = np.ones(C, dtype)
            inputs["beta"] = np.zeros(C, dtype)
        if eps != 1e-5:  # a small spread, so that eps visibly matters
            inputs["x"] = (inputs["x"] * 0.3).astype(dtype)
        inputs["eps"] = eps
        return inputs
    return make


BATCHNORM_FORWARD = Exercise(
    module="02", name="batchnorm_forward", implements_bn=True, kind="function",
    run=_run_batchnorm_forward, reference=_reference_batchnorm_forward,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("(N, C) float64, gamma=1, beta=0", _forward_inputs((8, 4), affine=False),
              _compare_batchnorm_forward),
        Check("(N, C) float64 with gamma and beta", _forward_inputs((8, 4)),
              _compare_batchnorm_forward),
        Check("(N, C, H, W) float64", _forward_inputs((4, 3, 5, 5)), _compare_batchnorm_forward),
        Check("(N, C, H, W) float32 keeps float32", _forward_inputs((4, 3, 5, 5), np.float32),
              _compare_batchnorm_forward),
        Check("eps=0.1 is used, inside the square root", _forward_inputs((6, 3), eps=0.1),
              _compare_batchnorm_forward),
    ),
)

EXERCISES = (BATCH_STATISTICS, BATCHNORM_FORWARD)
