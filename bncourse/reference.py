"""Batch normalization in NumPy: the reference maths (lessons 02 and 03).

Layout as in torch: `x` is `(N, C)` or `(N, C, *spatial)`; statistics are taken per channel
(axis 1) over every other axis, so each channel sees ``M = N * prod(spatial)`` values.

Training-mode forward, per channel::

    mu    = mean(x)                       over the M values
    var   = mean((x - mu)**2)             biased: divide by M, not M - 1
    x_hat = (x - mu) / sqrt(var + eps)
    out   = gamma * x_hat + beta

Backward, the compact closed form (derived in lesson 03)::

    dx_hat = dout * gamma
    dx     = inv_std / M * (M * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "BatchNormCache",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_inference",
    "reduction_axes",
]


class BatchNormCache(NamedTuple):
    """What the compact backward needs, nothing more.

    x_hat: normalized input, same shape as `x`.
    inv_std: `1 / sqrt(var + eps)`, shape `(C,)`.
    gamma: scale, shape `(C,)`.
    """

    x_hat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray


def reduction_axes(ndim: int) -> tuple[int, ...]:
    """Axes BN averages over for an input of `ndim` dimensions: all but the channel axis 1."""
    return (0,) + tuple(range(2, ndim))


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a `(C,)` vector so it broadcasts against `(N, C, *spatial)`."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _check_input(x, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, C) or (N, C, *spatial), got shape {x.shape}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def _check_channel_vector(v, name: str, num_channels: int, x_shape) -> np.ndarray:
    v = np.asarray(v)
    if v.shape != (num_channels,):
        raise ValueError(
            f"{name} must have shape ({num_channels},), one value per channel of x "
            f"with shape {tuple(x_shape)}, got shape {v.shape}"
        )
    return v


def _check_eps(eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")


def batchnorm_forward(x, gamma, beta, eps: float = 1e-5):
    """Training-mode batch normalization.

    Args:
        x: input, `(N, C)` or `(N, C, *spatial)`, float32 or float64.
        gamma: scale, `(C,)`.
        beta: shift, `(C,)`.
        eps: added to the variance inside the square root.

    Returns:
        `(out, cache)`: `out` has the shape and dtype of `x`; `cache` is a `BatchNormCache`
        for `batchnorm_backward`.
    """
    x = _check_input(x)
    C = x.shape[1]
    gamma = _check_channel_vector(gamma, "gamma", C, x.shape)
    beta = _check_channel_vector(beta, "beta", C, x.shape)
    _check_eps(eps)
    axes = reduction_axes(x.ndim)
    if x.size // C < 2:
        raise ValueError(
            f"batchnorm_forward needs more than 1 value per channel in training mode, "
            f"got x with shape {x.shape}"
        )

    mu = x.mean(axis=axes, keepdims=True)
    x_centered = x - mu
    var = (x_centered**2).mean(axis=axes, keepdims=True)  # biased: divide by M
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = x_centered * inv_std
    out = _per_channel(gamma, x.ndim) * x_hat + _per_channel(beta, x.ndim)
    cache = BatchNormCache(x_hat=x_hat, inv_std=inv_std.reshape(C), gamma=gamma)
    return out.astype(x.dtype, copy=False), cache


def batchnorm_backward(dout, cache: BatchNormCache):
    """Gradients of training-mode batch normalization, compact closed form.

    Args:
        dout: upstream gradient, same shape as the forward input.
        cache: the `BatchNormCache` returned by `batchnorm_forward`.

    Returns:
        `(dx, dgamma, dbeta)` with the shapes of `x`, `gamma` and `beta`.
    """
    if not isinstance(cache, BatchNormCache):
        raise TypeError(
            f"cache must be the BatchNormCache returned by batchnorm_forward, "
            f"got {type(cache).__name__}"
        )
    x_hat, inv_std, gamma = cache
    dout = np.asarray(dout)
    if dout.shape != x_hat.shape:
        raise ValueError(
            f"dout must have the shape of the forward input {x_hat.shape}, got {dout.shape}"
        )
    axes = reduction_axes(x_hat.ndim)
    M = x_hat.size // x_hat.shape[1]

    dbeta = dout.sum(axis=axes)
    dgamma = (dout * x_hat).sum(axis=axes)
    # With dx_hat = dout * gamma, the two sums are gamma * dbeta and gamma * dgamma.
    sum_dx_hat = _per_channel(gamma * dbeta, x_hat.ndim)
    sum_dx_hat_x_hat = _per_channel(gamma * dgamma, x_hat.ndim)
    dx_hat = dout * _per_channel(gamma, x_hat.ndim)
    dx = _per_channel(inv_std / M, x_hat.ndim) * (
        M * dx_hat - sum_dx_hat - x_hat * sum_dx_hat_x_hat
    )
    return dx.astype(dout.dtype, copy=False), dgamma, dbeta


def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps: float = 1e-5):
    """Eval-mode batch normalization with fixed (running) statistics.

    ``out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``, per channel.

    Args:
        x: input, `(N, C)` or `(N, C, *spatial)`.
        gamma, beta, running_mean, running_var: `(C,)` each.
        eps: added to the variance inside the square root.

    Returns:
        `out` with the shape and dtype of `x`. Any batch size works, including 1.
    """
    x = _check_input(x)
    C = x.shape[1]
    gamma = _check_channel_vector(gamma, "gamma", C, x.shape)
    beta = _check_channel_vector(beta, "beta", C, x.shape)
    running_mean = _check_channel_vector(running_mean, "running_mean", C, x.shape)
    running_var = _check_channel_vector(running_var, "running_var", C, x.shape)
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    if np.any(running_var < 0):
        raise ValueError("running_var must be non-negative (it is a variance)")

    scale = gamma / np.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    out = x * _per_channel(scale, x.ndim) + _per_channel(shift, x.ndim)
    return out.astype(x.dtype, copy=False)
