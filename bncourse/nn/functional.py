"""`batch_norm`: torch.nn.functional.batch_norm rebuilt from tensor operations (lesson 04).

No call to torch's batch-norm kernels: the forward is a few reductions and elementwise passes,
the backward is the compact closed form of lesson 03 in a `torch.autograd.Function`.

Compact backward (lesson 03), per channel, with ``M`` values per channel::

    dx = gamma * inv_std / M * (M * dy - sum(dy) - x_hat * sum(dy * x_hat))

Writing ``x_hat = (x - mean) * inv_std`` turns it into ``dx = a * dy + b * (x - mean) + c``
with per-channel ``a, b, c``: a few elementwise passes instead of the many of plain autograd.

What makes it fast on a CPU (measured in benchmarks/README.md):

- Per-channel sums, not `torch.var_mean`: torch's Welford reduction over strided dimensions
  measured 30-70x slower than `sum` on the benchmark shapes. A `(N, C, *spatial)` input is viewed as `(N, C, L)` and summed over
  the contiguous last dimension first, then over N.
- Variance by the (corrected) two-pass formula, ``mean((x - mean)**2)``: it costs extra passes,
  but ``E[x**2] - E[x]**2`` cancels catastrophically when the mean is large compared with the
  spread (lesson 05). The backward likewise uses ``sum(dy * (x - mean))``, not
  ``sum(dy * x) - mean * sum(dy)``, which loses digits in the same situation.
- One full-size allocation in the forward and one in the backward, reused in place: every new large tensor costs
  page faults. The forward's output first holds ``(x - mean)**2``; the backward's ``dx`` first
  holds ``dy * (x - mean)``. Only tensors created here are modified in place, never the input,
  ``dy`` or anything autograd saved. The output and ``dx`` are returned as they are, not as
  views, so autograd can hand ``dx`` to ``x.grad`` without a copy.
- Per-channel coefficients are combined into ``x * scale + shift`` (forward, as the native
  kernel does) and ``x * b + (c - b * mean) + a * dy`` (backward), so each needs two passes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bncourse.nn._moments import Moments, channel_moments
from bncourse.nn._moments import as_rows as _as_rows
from bncourse.nn._moments import channel_sum as _channel_sum
from bncourse.nn._moments import per_channel as _per_channel

__all__ = ["batch_norm", "BatchNormFunction", "batch_norm_stats", "batch_norm_elemt",
           "batch_norm_backward_reduce", "batch_norm_backward_elemt", "update_running_stats"]


def _empty_like_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """A new contiguous tensor shaped like `x`, and its `_as_rows` view to compute into.

    Returning the tensor itself (not a view of it) lets autograd hand it to `.grad` as it is,
    where a view would be copied.
    """
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return out, _as_rows(out)


def _scale_shift(x: Tensor, scale: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """``x * scale + shift`` with `(C,)` scale and shift, for `(N, C)` or `(N, C, L)` x."""
    scale, shift = _per_channel(scale, x.dim()), _per_channel(shift, x.dim())
    if x.dim() == 2:
        return torch.addcmul(shift, x, scale, out=out)  # one fused pass
    # addcmul is several times slower when its factor broadcasts along the contiguous last
    # dimension (measured: 1.9 ms vs 1.0 ms on (64, 64, 1024)): multiply, then add in place.
    return torch.mul(x, scale, out=out).add_(shift)


def _batch_statistics(x: Tensor, eps: float):
    """Biased per-channel mean and inverse standard deviation, both `(C,)`, differentiable."""
    dims = (0,) + tuple(range(2, x.dim()))
    mean = x.mean(dims)
    var = ((x - _per_channel(mean, x.dim())) ** 2).mean(dims)  # two-pass, biased
    return mean, torch.rsqrt(var + eps)


# --- the four named pieces (SyncBN, lesson 11, puts a collective between them) --------------

def batch_norm_stats(input: Tensor, workspace: Tensor | None = None) -> Moments:
    """Per-channel ``(count, mean, M2)`` of a training batch `(N, C, *)` (N may be 0).

    The biased variance is ``M2 / count``. `workspace`: optional `(N, C)` / `(N, C, L)` buffer
    for ``(x - mean)**2`` (see `bncourse.nn._moments.channel_moments`).
    """
    return channel_moments(input, workspace)


def batch_norm_elemt(input: Tensor, mean: Tensor, inv_std: Tensor, weight: Tensor | None,
                     bias: Tensor | None, out: Tensor | None = None) -> Tensor:
    """``y = weight * (x - mean) * inv_std + bias``, computed as ``x * scale + shift``.

    input `(N, C)` or `(N, C, L)` (`_as_rows` view); mean, inv_std, weight, bias `(C,)`
    (weight/bias None: 1/0). `out`: where to write (a tensor like `input`).
    """
    scale = inv_std if weight is None else weight * inv_std
    shift = -mean * scale if bias is None else torch.addcmul(bias, mean, scale, value=-1)
    return _scale_shift(input, scale, shift, out=out)


def batch_norm_backward_reduce(grad_output: Tensor, input: Tensor, mean: Tensor,
                               inv_std: Tensor, workspace: Tensor | None = None):
    """The backward's two per-channel sums, ``(sum(dy), sum(dy * x_hat))``, both `(C,)`.

    They are also dbias and dweight. grad_output and input `(N, C)` or `(N, C, L)`.
    `workspace` (like `input`) holds ``dy * (x - mean)``; centring before the product avoids
    the cancellation of ``sum(dy * x) - mean * sum(dy)``.
    """
    if workspace is None:
        workspace = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    sum_dy = _channel_sum(grad_output)
    torch.sub(input, _per_channel(mean, input.dim()), out=workspace)
    sum_dy_x_hat = _channel_sum(workspace.mul_(grad_output)) * inv_std
    return sum_dy, sum_dy_x_hat


def batch_norm_backward_elemt(grad_output: Tensor, input: Tensor, mean: Tensor,
                              inv_std: Tensor, weight: Tensor | None, sum_dy: Tensor,
                              sum_dy_x_hat: Tensor, count, out: Tensor | None = None) -> Tensor:
    """``dx = weight * inv_std / M * (M * dy - sum(dy) - x_hat * sum(dy * x_hat))``.

    `count` is M, the number of values per channel the statistics came from: the whole
    (global) batch, which under SyncBN is larger than this input. Computed as
    ``dx = a * dy + b * (x - mean) + c`` = ``(x * b + (c - b * mean)) + a * dy``: two passes.
    """
    a = inv_std if weight is None else weight * inv_std
    minus_a_over_M = a * (-1.0 / count)
    b = minus_a_over_M * inv_std * sum_dy_x_hat
    c = minus_a_over_M * sum_dy
    dx = _scale_shift(input, b, torch.addcmul(c, b, mean, value=-1), out=out)
    return dx.addcmul_(grad_output, _per_channel(a, input.dim()))


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch normalization with the compact closed-form backward.

    forward(x, weight, bias, eps) -> (y, mean, var), where `x` is `(N, C, *)`, `weight` and `bias`
    are `(C,)` or None, and `mean`/`var` are the biased batch statistics (`(C,)`, no gradient)
    that `batch_norm` uses to update running statistics.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        # The one full-size allocation, y: it holds (x - mean)**2, then y.
        y, y_rows = _empty_like_rows(x)
        count, mean, m2 = batch_norm_stats(x, workspace=y_rows)
        var = m2 / count  # biased
        inv_std = torch.rsqrt(var + eps)
        batch_norm_elemt(_as_rows(x), mean, inv_std, weight, bias, out=y_rows)
        # Like the native kernel, keep x, mean and inv_std (not x_hat): C numbers, not N*C.
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.eps = eps
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(mean, var)
        # Pass None, not zero-filled tensors, for the gradients of mean and var (saves time).
        ctx.set_materialize_grads(False)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: Tensor, _dmean, _dvar):
        if dy is None:  # y did not reach the loss
            return None, None, None, None
        x, weight, mean, inv_std = ctx.saved_tensors
        if torch.is_grad_enabled():
            # Double backward (create_graph=True): autograd must record how the result depends
            # on x, weight and dy, so recompute the statistics differentiably and avoid in-place.
            return _backward_differentiable(ctx, dy, x, weight)
        x_rows, dy_rows = _as_rows(x), _as_rows(dy)  # (N, C) or (N, C, L)
        M = x_rows.numel() // x_rows.shape[1]
        # The one full-size allocation, dx: it holds dy * (x - mean), then dx.
        dx, dx_rows = _empty_like_rows(x)
        sum_dy, sum_dy_x_hat = batch_norm_backward_reduce(dy_rows, x_rows, mean, inv_std,
                                                          workspace=dx_rows)
        if ctx.needs_input_grad[0]:
            batch_norm_backward_elemt(dy_rows, x_rows, mean, inv_std, weight, sum_dy,
                                      sum_dy_x_hat, M, out=dx_rows)
        else:
            dx = None
        dweight = sum_dy_x_hat if weight is not None and ctx.needs_input_grad[1] else None
        dbias = sum_dy if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None


def _backward_differentiable(ctx, dy, x, weight):
    """The same closed form as `BatchNormFunction.backward`, out of place, for double backward."""
    mean, inv_std = _batch_statistics(x, ctx.eps)
    ndim = x.dim()
    dims = (0,) + tuple(range(2, ndim))
    M = x.numel() // x.shape[1]
    x_mu = x - _per_channel(mean, ndim)
    sum_dy = dy.sum(dims)
    sum_dy_x_mu = (dy * x_mu).sum(dims)
    dx = dweight = dbias = None
    if ctx.needs_input_grad[0]:
        a = inv_std if weight is None else weight * inv_std
        b = -a * inv_std * inv_std * sum_dy_x_mu / M
        c = -a * sum_dy / M
        dx = (_per_channel(a, ndim) * dy + _per_channel(b, ndim) * x_mu
              + _per_channel(c, ndim))
    if weight is not None and ctx.needs_input_grad[1]:
        dweight = sum_dy_x_mu * inv_std
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
        if (running_mean is None) != (running_var is None):
            raise ValueError(
                "running_mean and running_var must either both be None or neither be None, got "
                f"running_mean={'None' if running_mean is None else 'a tensor'} and "
                f"running_var={'None' if running_var is None else 'a tensor'}"
            )
    elif eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")

    if not training:
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is None:
                raise RuntimeError(
                    f"{name} must be defined in evaluation mode "
                    f"(pass training=True to normalise with batch statistics)"
                )
        return _batch_norm_eval(input, running_mean, running_var, weight, bias, eps)

    if input.numel() == 0:
        # An empty batch: like torch, return an empty output and leave the running stats alone.
        return input.clone()
    # float16/bfloat16 inputs are normalised in float32, as torch's CPU kernel accumulates.
    compute_dtype = torch.promote_types(input.dtype, torch.float32)
    x, w, b = (_cast(t, compute_dtype) for t in (input, weight, bias))
    y, mean, var = BatchNormFunction.apply(x, w, b, eps)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean, var, momentum, x.numel() // C)
    return _cast(y, input.dtype)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """`t.to(dtype)`, skipping the call (a few microseconds) when nothing changes."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


@torch.no_grad()
def update_running_stats(running_mean, running_var, mean, var, momentum, M):
    """In place: ``running = (1 - momentum) * running + momentum * batch``, for the mean and
    for the variance stored unbiased (``var * M / (M - 1)``; `var` is the biased one).

    running_mean/running_var `(C,)` or None; M the values per channel behind `mean`/`var`.
    """
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    if running_var is not None:
        unbiased = var * (M / (M - 1))
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _batch_norm_eval(x, running_mean, running_var, weight, bias, eps):
    """y = (x - running_mean) / sqrt(running_var + eps) * weight + bias = x * scale + shift.

    Plain autograd is enough here: the statistics are constants.
    """
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    inv_std = torch.rsqrt(running_var.to(compute_dtype) + eps)
    scale = inv_std if weight is None else weight.to(compute_dtype) * inv_std
    shift = -running_mean.to(compute_dtype) * scale
    if bias is not None:
        shift = shift + bias.to(compute_dtype)
    y = _scale_shift(_as_rows(x.to(compute_dtype)), scale, shift)
    return y.view(x.shape).to(x.dtype)
