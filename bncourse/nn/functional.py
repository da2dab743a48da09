"""`batch_norm`: torch.nn.functional.batch_norm rebuilt from tensor operations (lesson 04).

No call to torch's batch-norm kernels: the forward is a handful of reductions and one fused
multiply-add, the backward is the compact closed form of lesson 03 in a
`torch.autograd.Function`.

Compact backward (lesson 03), per channel, with ``M`` values per channel::

    dx = gamma * inv_std / M * (M * dy - sum(dy) - x_hat * sum(dy * x_hat))

Expanding ``x_hat = (x - mean) * inv_std`` turns it into ``dx = a * dy + b * x + c`` with
per-channel ``a, b, c``: two elementwise passes instead of six, which is what keeps this within
reach of the native kernel (see benchmarks/).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_norm", "BatchNormFunction"]


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    """Every dimension but the channel dimension 1."""
    return (0,) + tuple(range(2, x.dim()))


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """View a `(C,)` tensor as `(1, C, 1, ...)` so it broadcasts against the input."""
    return v.view((1, -1) + (1,) * (ndim - 2))


def _batch_statistics(x: Tensor, eps: float):
    """Biased per-channel mean and inverse standard deviation, both `(C,)`."""
    var, mean = torch.var_mean(x, dim=_reduce_dims(x), correction=0)
    return mean, torch.rsqrt(var + eps)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch normalization with the compact closed-form backward.

    forward(x, weight, bias, eps) -> (y, mean, var), where `x` is `(N, C, *)`, `weight` and `bias`
    are `(C,)` or None, and `mean`/`var` are the biased batch statistics (`(C,)`, no gradient)
    that `batch_norm` uses to update running statistics.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        ndim = x.dim()
        var, mean = torch.var_mean(x, dim=_reduce_dims(x), correction=0)
        inv_std = torch.rsqrt(var + eps)
        # y = weight * (x - mean) * inv_std + bias = x * scale + shift: one pass over x.
        scale = inv_std if weight is None else weight * inv_std
        shift = -mean * scale if bias is None else bias - mean * scale
        y = torch.addcmul(_per_channel(shift, ndim), x, _per_channel(scale, ndim))
        # Like the native kernel, keep x, mean and inv_std (not x_hat): C numbers, not N*C.
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.eps = eps
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: Tensor, _dmean, _dvar):
        x, weight, mean, inv_std = ctx.saved_tensors
        if torch.is_grad_enabled():
            # Double backward (create_graph=True): recompute the statistics from x with
            # differentiable operations so that autograd sees how they depend on x.
            mean, inv_std = _batch_statistics(x, ctx.eps)
        ndim = x.dim()
        dims = _reduce_dims(x)
        M = x.numel() // x.shape[1]

        sum_dy = dy.sum(dims)  # = dbias
        # sum(dy * x_hat) = inv_std * (sum(dy * x) - mean * sum(dy))  (= dweight)
        sum_dy_x_hat = inv_std * ((dy * x).sum(dims) - mean * sum_dy)

        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            a = inv_std if weight is None else weight * inv_std
            b = -a * inv_std * sum_dy_x_hat / M
            c = -a * sum_dy / M - b * mean
            dx = torch.addcmul(
                torch.addcmul(_per_channel(c, ndim), x, _per_channel(b, ndim)),
                dy,
                _per_channel(a, ndim),
            )
        if weight is not None and ctx.needs_input_grad[1]:
            dweight = sum_dy_x_hat
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = sum_dy
        return dx, dweight, dbias, None


def _check_channel_tensor(t: Tensor | None, name: str, num_channels: int) -> None:
    if t is not None and t.numel() != num_channels:
        # torch raises RuntimeError here ("running_mean should contain 3 elements not 4").
        raise RuntimeError(
            f"{name} should contain {num_channels} elements (one per channel, input.shape[1]) "
            f"not {t.numel()}"
        )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization with the signature and semantics of `torch.nn.functional.batch_norm`.

    Training: normalise with the biased batch statistics and, when given, update
    ``running_mean = (1 - momentum) * running_mean + momentum * mean`` and the same for
    ``running_var`` with the *unbiased* batch variance, in place. Eval: normalise with the
    running statistics, which must then be given.

    Args:
        input: `(N, C)` or `(N, C, *spatial)`.
        running_mean, running_var: `(C,)` buffers or None.
        weight, bias: `(C,)` or None (scale 1, shift 0).
        training: use batch statistics (and update running ones) if True.
        momentum: weight of the new batch in the running average.
        eps: added to the variance inside the square root.

    Returns:
        Tensor of the shape and dtype of `input`.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm(): argument 'input' must be Tensor, not {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm(): input must have shape (N, C) or (N, C, *spatial), "
            f"got {input.dim()}D input of shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise TypeError(f"batch_norm(): input must be a floating-point tensor, got {input.dtype}")
    C = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        _check_channel_tensor(t, name, C)
    if training:
        size = input.numel() // C if C else 0
        if size == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size "
                f"{input.size()}"
            )
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    elif eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")

    if not training:
        if running_mean is None or running_var is None:
            raise RuntimeError(
                "running_mean must be defined in evaluation mode "
                "(pass training=True to normalise with batch statistics)"
            )
        return _batch_norm_eval(input, running_mean, running_var, weight, bias, eps)

    # float16/bfloat16 inputs are normalised in float32, as torch's CPU kernel accumulates.
    compute_dtype = torch.promote_types(input.dtype, torch.float32)
    x = input.to(compute_dtype)
    w = None if weight is None else weight.to(compute_dtype)
    b = None if bias is None else bias.to(compute_dtype)
    y, mean, var = BatchNormFunction.apply(x, w, b, eps)
    if running_mean is not None or running_var is not None:
        _update_running_stats(running_mean, running_var, mean, var, momentum, x.numel() // C)
    return y.to(input.dtype)


@torch.no_grad()
def _update_running_stats(running_mean, running_var, mean, var, momentum, M):
    """In-place exponential moving average; the variance is stored unbiased (M / (M - 1))."""
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    if running_var is not None:
        unbiased = var * (M / (M - 1))
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _batch_norm_eval(x, running_mean, running_var, weight, bias, eps):
    """y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, as one multiply-add.

    Plain autograd is enough here: the statistics are constants.
    """
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    inv_std = torch.rsqrt(running_var.to(compute_dtype) + eps)
    scale = inv_std if weight is None else weight.to(compute_dtype) * inv_std
    shift = -running_mean.to(compute_dtype) * scale
    if bias is not None:
        shift = shift + bias.to(compute_dtype)
    ndim = x.dim()
    y = torch.addcmul(_per_channel(shift, ndim), x.to(compute_dtype), _per_channel(scale, ndim))
    return y.to(x.dtype)
