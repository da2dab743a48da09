"""Finite-difference gradient checks: one home for lessons 03-04, the tests and the graders.

`numerical_gradient(f, x, h)` is the centred difference of a scalar function, one element at a
time; `rel_error(a, b)` the relative error used to compare it with an analytic gradient
(CS231n's convention, Karpathy 2016: below about 1e-7 in float64 is a pass).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["numerical_gradient", "rel_error"]


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray,
                       h: float = 1e-5) -> np.ndarray:
    """Centred differences of the scalar function `f` at `x`: grad[i] = (f(x + h e_i) -
    f(x - h e_i)) / (2h), for every index i of `x` (any shape).

    `x` is perturbed in place in its own dtype (so a float32 `x` shows float32's rounding) and
    restored afterwards; the differences are taken and returned in float64.
    """
    if not callable(f):
        raise TypeError(f"f must be a callable returning a number, got {type(f).__name__}")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    if isinstance(h, bool) or not isinstance(h, (int, float, np.floating)) or not h > 0:
        raise ValueError(f"h must be a positive number, got {h!r}")
    grad = np.zeros(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        try:
            x[i] = old + h
            f_plus = float(f(x))
            x[i] = old - h
            f_minus = float(f(x))
        finally:
            x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def rel_error(a, b) -> float:
    """||a - b|| / (||a|| + ||b||) over all elements (0.0 when both are zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    denominator = np.linalg.norm(a) + np.linalg.norm(b)
    if denominator == 0:
        return 0.0
    return float(np.linalg.norm(a - b) / denominator)
