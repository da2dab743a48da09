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

import contextlib

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


# --- the fused training path that `batch_norm` takes (issue 24) -----------------------------
#
# The same maths as `BatchNormFunction` (corrected two-pass statistics, the compact backward),
# written with as few tensor operations as possible. On the small tensors of the case studies
# (an MLP layer of 100 units, batch 60) each operation costs 1-3 us of Python binding and
# dispatch, far more than its arithmetic, so the count of operations is the cost
# (benchmarks/README.md measures each choice). What differs from `BatchNormFunction`:
#
# - The running statistics are updated inside `forward` (which autograd runs without
#   recording), so the Function returns y alone: no extra outputs to mark and wrap.
# - Per-channel sums of `(R, C)` rows are matrix-vector products (`torch.mv`, BLAS) with a
#   cached vector of 1/M, 1/(M-1) or 1: no `torch.full` per call; `(N, C, L)` inputs are summed
#   with one `sum((0, 2))`, the fastest reduction measured there.
# - Python scalars that would be wrapped into tensors per call are folded into the `alpha`
#   and `value` arguments of `add`, `addcmul` and `lerp_`; the running variance comes straight
#   from a product with 1/(M-1) (the unbiased variance), the normalising one from it.
# - The backward's coefficients are formed from `scale = weight * inv_std`, saved by the
#   forward: four small operations.
# - Channels-last inputs (`(N, C, H, W)` stored as `(N, H, W, C)`) are viewed as `(N*H*W, C)`
#   rows without a copy and give channels-last outputs and gradients, as torch's kernel does.

_VECTORS: dict = {}


def _filled(n: int, value: float, like: Tensor) -> Tensor:
    """A cached `(n,)` tensor filled with `value` (dtype and device of `like`); never modified."""
    key = (n, value, like.dtype, like.device)
    vector = _VECTORS.get(key)
    if vector is None:
        if len(_VECTORS) >= 512:  # a bound: a training run uses a handful of shapes
            _VECTORS.clear()
        vector = _VECTORS[key] = torch.full((n,), value, dtype=like.dtype, device=like.device)
    return vector


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
_ROWS, _WIDE, _NCL = 0, 1, 2  # the three layouts of `_views`
_MV_MAX = 1 << 16  # (R, C) inputs this large are reduced with sum(0), smaller ones with mv
_WIDE_MAX = 1 << 16  # largest C * C * L for the wide layout (its (C, C*L) matrix, 256 KB)


def _views(x: Tensor, out: Tensor):
    """`(layout, x_view, out_view)` for a contiguous or channels-last `x` and `out` like it.

    - `_ROWS`: `(R, C)` with C contiguous: 2-D input, `(N, C, 1, ...)`, or channels-last
      (`(N, *spatial, C)` in memory, no copy).
    - `_WIDE`: `(N, C*L)` for a small `(N, C, L)`: elementwise work then broadcasts a `(C*L,)`
      vector along rows, the fast case of torch's elementwise loops; `(N, C, L)` broadcasting
      of a `(C, 1)` vector runs one short inner loop per (n, c) and measured 2-3x slower.
    - `_NCL`: `(N, C, L)` for large inputs, reduced with `sum((0, 2))`.
    """
    if x.dim() == 2:
        return _ROWS, x, out
    N, C = x.shape[0], x.shape[1]
    if x.is_contiguous():
        L = x.numel() // (N * C)
        if L == 1:  # (N, C, 1, 1): a fully connected layer in disguise
            return _ROWS, x.view(N, C), out.view(N, C)
        if C * C * L <= _WIDE_MAX:
            return _WIDE, x.view(N, C * L), out.view(N, C * L)
        return _NCL, x.view(N, C, L), out.view(N, C, L)
    order = (0,) + tuple(range(2, x.dim())) + (1,)  # (N, *spatial, C): contiguous
    return _ROWS, x.permute(order).view(-1, C), out.permute(order).view(-1, C)


def _expander(C: int, L: int, like: Tensor) -> Tensor:
    """The cached `(C, C*L)` 0/1 matrix E with ``E[c, c*L:(c+1)*L] = 1``: ``E @ v`` sums a
    `(C*L,)` vector over each channel's L positions, ``E.T @ w`` repeats `(C,)` w L times."""
    key = ("E", C, L, like.dtype, like.device)
    E = _VECTORS.get(key)
    if E is None:
        E = torch.eye(C, dtype=like.dtype, device=like.device).repeat_interleave(L, dim=1)
        _VECTORS[key] = E
    return E


def _below_autograd():
    """A guard that dispatches tensor operations straight to their CPU kernels, past the
    autograd and view/in-place bookkeeping layers (what torch's own custom operators do
    inside their autograd formula). Inside `Function.forward`/`backward` nothing is recorded
    anyway; measured about 20% off the fused path's small-tensor time. Only tensors created
    here are modified inside it. A plain no-op guard if this torch lacks the private API."""
    guard = getattr(torch._C, "_AutoDispatchBelowADInplaceOrView", None)
    return guard() if guard is not None else contextlib.nullcontext()


def _fused_layout_ok(x: Tensor) -> bool:
    """Contiguous, or channels-last (4-D/5-D): the layouts `_FusedBatchNorm` reads in place."""
    if x.is_contiguous():
        return True
    memory_format = _CHANNELS_LAST.get(x.dim())
    return memory_format is not None and x.is_contiguous(memory_format=memory_format)


class _FusedBatchNorm(torch.autograd.Function):
    """Training-mode BN in few tensor operations, running statistics updated in place.

    forward(x, weight, bias, eps, running_mean, running_var, momentum) -> y. `x` float32 or
    float64, non-empty with more than one value per channel, contiguous or channels-last;
    weight, bias, running_mean, running_var `(C,)` of x's dtype, or None (the running
    statistics both or neither).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, running_mean, running_var, momentum):
        if not _FAST_NUMERICS:
            with _below_autograd():
                y, mean, var, inv_std, M = _compat_forward(x, weight, bias, eps)
            if running_mean is not None:  # outside the guard: version counters count this
                update_running_stats(running_mean, running_var, mean, var, momentum, M)
        else:
            with _below_autograd():
                y, mean, var_u, inv_std = _fused_forward(x, weight, bias, eps)
            if running_mean is not None:  # outside the guard: version counters count this
                # running += momentum * (batch - running), torch's (1 - m) * running + m * batch.
                running_mean.lerp_(mean, momentum)
                running_var.lerp_(var_u, momentum)
        # Like the native kernel, keep x, mean and inv_std: 2C new numbers (scale is recomputed).
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.eps = eps
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, inv_std = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiable, out of place
            return _backward_differentiable(ctx, dy, x, weight) + (None, None, None)
        needs = ctx.needs_input_grad
        with _below_autograd():
            if not _FAST_NUMERICS:
                dx, dweight, sum_dy = _compat_backward(dy, x, weight, mean, inv_std, needs[0])
            else:
                scale = inv_std if weight is None else weight * inv_std
                dx, dweight, sum_dy = _fused_backward(dy, x, mean, inv_std, scale, needs[0])
        dweight = dweight if weight is not None and needs[1] else None
        dbias = sum_dy if ctx.has_bias and needs[2] else None
        return dx, dweight, dbias, None, None, None, None


# Which arithmetic `_FusedBatchNorm` uses. False (the default): `_compat_forward/_backward`,
# the same operations in the same order as `BatchNormFunction` + `update_running_stats`, so
# results are bit for bit those of the unfused code and the case studies' trained figures
# (chaotic in the last bit: lessons 06 and 09 assert seed-level outcomes) do not move. True:
# `_fused_forward/_backward`, fewer operations (unbiased variance folded into one product,
# `lerp_`, a wide layout for small (N, C, L), sum(0) for large rows) but different rounding;
# measured in benchmarks/README.md.
_FAST_NUMERICS = False


def _compat_forward(x, weight, bias, eps):
    """`BatchNormFunction.forward`'s arithmetic exactly, with fewer Python layers and cached
    vectors: returns (y, mean, biased var, inv_std, M)."""
    y = torch.empty_like(x)
    if x.dim() == 2:
        x_v, y_v = x, y
    elif x.is_contiguous():
        x_v, y_v = _as_rows(x), _as_rows(y)  # (N, C, L) views
    else:  # channels-last: (N*H*W, C) rows, no copy
        order = (0,) + tuple(range(2, x.dim())) + (1,)
        C = x.shape[1]
        x_v, y_v = x.permute(order).view(-1, C), y.permute(order).view(-1, C)
    C = x.shape[1]
    M = x.numel() // C
    ncl = x_v.dim() == 3
    inv_M = _filled(x_v.shape[0], 1.0 / M, x)
    mean = inv_M @ (x_v.sum(2) if ncl else x_v)  # channel_sum: the contiguous dimension first
    torch.sub(x_v, mean.unsqueeze(1) if ncl else mean, out=y_v)
    correction = inv_M @ (y_v.sum(2) if ncl else y_v)
    y_v.square_()
    var = inv_M @ (y_v.sum(2) if ncl else y_v) - correction * correction
    var.clamp_(min=0.0)
    mean = mean + correction
    var = (var * M) / _count(M, x)  # M2 / count, as batch_norm_stats + BatchNormFunction
    inv_std = torch.rsqrt(var + eps)
    scale = inv_std if weight is None else weight * inv_std
    shift = -mean * scale if bias is None else torch.addcmul(bias, mean, scale, value=-1)
    if ncl:
        torch.mul(x_v, scale.unsqueeze(1), out=y_v).add_(shift.unsqueeze(1))
    else:
        torch.addcmul(shift, x_v, scale, out=y_v)
    return y, mean, var, inv_std, M


def _count(M: int, like: Tensor) -> Tensor:
    """A cached 0-d tensor holding float(M) (the `count` of `channel_moments`)."""
    key = ("count", M, like.dtype, like.device)
    count = _VECTORS.get(key)
    if count is None:
        count = _VECTORS[key] = torch.tensor(float(M), dtype=like.dtype, device=like.device)
    return count


def _compat_backward(dy, x, weight, mean, inv_std, needs_dx):
    """`BatchNormFunction.backward`'s arithmetic exactly: returns (dx, sum(dy*x_hat), sum(dy))."""
    dx = torch.empty_like(x)
    C = x.shape[1]
    if x.dim() == 2:
        x_v, dx_v, dy_v = x, dx, dy
    elif x.is_contiguous():
        x_v, dx_v, dy_v = _as_rows(x), _as_rows(dx), _as_rows(dy)
    else:
        order = (0,) + tuple(range(2, x.dim())) + (1,)
        x_v, dx_v = x.permute(order).view(-1, C), dx.permute(order).view(-1, C)
        dy_v = dy.permute(order).reshape(-1, C)
    M = x.numel() // C
    ncl = x_v.dim() == 3
    ones = _filled(x_v.shape[0], 1.0, x)
    sum_dy = ones @ (dy_v.sum(2) if ncl else dy_v)
    torch.sub(x_v, mean.unsqueeze(1) if ncl else mean, out=dx_v)
    dx_v.mul_(dy_v)
    sum_dy_x_hat = (ones @ (dx_v.sum(2) if ncl else dx_v)) * inv_std
    if not needs_dx:
        return None, sum_dy_x_hat, sum_dy
    a = inv_std if weight is None else weight * inv_std
    minus_a_over_M = a * (-1.0 / M)
    b = minus_a_over_M * inv_std * sum_dy_x_hat
    c = minus_a_over_M * sum_dy
    shift = torch.addcmul(c, b, mean, value=-1)
    if ncl:
        torch.mul(x_v, b.unsqueeze(1), out=dx_v).add_(shift.unsqueeze(1))
        dx_v.addcmul_(dy_v, a.unsqueeze(1))
    else:
        torch.addcmul(shift, x_v, b, out=dx_v).addcmul_(dy_v, a)
    return dx, sum_dy_x_hat, sum_dy


def _fused_forward(x, weight, bias, eps):
    y = torch.empty_like(x)  # the one full-size allocation: holds (x - mean)**2, then y
    layout, x_v, y_v = _views(x, y)
    C = x.shape[1]
    M = x.numel() // C
    if layout == _ROWS and x.numel() >= _MV_MAX:
        # Large (R, C): sum(0) is as fast as BLAS on one thread and, unlike MKL's
        # matrix-vector product at these sizes, uses a second one (measured (1024, 256):
        # 9 us vs 17 us at 2 threads).
        mean = x_v.sum(0).mul_(1.0 / M)
        torch.sub(x_v, mean, out=y_v)
        correction = y_v.sum(0).mul_(1.0 / M)
        var_u = y_v.square_().sum(0).mul_(1.0 / (M - 1))
    elif layout != _NCL:  # sums over the strided dimension by BLAS matrix-vector products
        R = x_v.shape[0]
        inv_M = _filled(R, 1.0 / M, x)
        if layout == _ROWS:
            mean = torch.mv(x_v.T, inv_M)  # first estimate of the mean
            torch.sub(x_v, mean, out=y_v)
            y_t = y_v.T
            correction = torch.mv(y_t, inv_M)  # its rounding error
            y_v.square_()
            var_u = torch.mv(y_t, _filled(R, 1.0 / (M - 1), x))
        else:
            E = _expander(C, x_v.shape[1] // C, x)
            mean = torch.mv(E, torch.mv(x_v.T, inv_M))
            torch.sub(x_v, torch.mv(E.T, mean), out=y_v)
            y_t = y_v.T
            correction = torch.mv(E, torch.mv(y_t, inv_M))
            y_v.square_()
            var_u = torch.mv(E, torch.mv(y_t, _filled(R, 1.0 / (M - 1), x)))
    else:  # (N, C, L)
        dims = (0, 2)
        mean = x_v.sum(dims).mul_(1.0 / M)
        torch.sub(x_v, mean.unsqueeze(1), out=y_v)
        correction = y_v.sum(dims).mul_(1.0 / M)
        var_u = y_v.square_().sum(dims).mul_(1.0 / (M - 1))
    # The corrected two-pass algorithm (Chan, Golub & LeVeque 1983): mean += mean(x - mean),
    # var = mean((x - mean)**2) - mean(x - mean)**2; here unbiased: x M / (M - 1).
    mean.add_(correction)
    var_u.addcmul_(correction, correction, value=-M / (M - 1)).clamp_(min=0.0)
    # inv_std = rsqrt(biased var + eps), biased = unbiased * (M - 1) / M.
    inv_std = torch.add(_filled(C, eps, x), var_u, alpha=(M - 1) / M).rsqrt_()
    scale = inv_std if weight is None else weight * inv_std
    if bias is None:
        shift = torch.addcmul(_filled(C, 0.0, x), mean, scale, value=-1)
    else:
        shift = torch.addcmul(bias, mean, scale, value=-1)
    if layout == _ROWS:
        torch.addcmul(shift, x_v, scale, out=y_v)  # y = x * scale + shift
    elif layout == _WIDE:
        scale_shift = torch.mm(torch.stack((scale, shift)), E)  # (2, C*L)
        torch.addcmul(scale_shift[1], x_v, scale_shift[0], out=y_v)
    else:
        # addcmul is slower when its factor broadcasts along the contiguous dimension.
        torch.mul(x_v, scale.unsqueeze(1), out=y_v).add_(shift.unsqueeze(1))
    return y, mean, var_u, inv_std


def _fused_backward(dy, x, mean, inv_std, scale, needs_dx):
    dx = torch.empty_like(x)  # the one full-size allocation: dy * (x - mean), then dx
    layout, x_v, dx_v = _views(x, dx)
    if dy.stride() != x.stride():
        dy = dy.contiguous(memory_format=_memory_format(x))
    dy_v = _views(x, dy)[2]
    C = x.shape[1]
    M = x.numel() // C
    if layout == _ROWS and x.numel() >= _MV_MAX:
        sum_dy = dy_v.sum(0)
        torch.sub(x_v, mean, out=dx_v)
        dweight = dx_v.mul_(dy_v).sum(0).mul_(inv_std)
    elif layout == _ROWS:
        ones = _filled(M, 1.0, x)
        sum_dy = torch.mv(dy_v.T, ones)
        torch.sub(x_v, mean, out=dx_v)
        dweight = torch.mv(dx_v.mul_(dy_v).T, ones).mul_(inv_std)  # sum(dy * x_hat)
    elif layout == _WIDE:
        ones = _filled(x_v.shape[0], 1.0, x)
        E = _expander(C, x_v.shape[1] // C, x)
        sum_dy = torch.mv(E, torch.mv(dy_v.T, ones))
        torch.sub(x_v, torch.mv(E.T, mean), out=dx_v)
        dweight = torch.mv(E, torch.mv(dx_v.mul_(dy_v).T, ones)).mul_(inv_std)
    else:
        dims = (0, 2)
        sum_dy = dy_v.sum(dims)
        torch.sub(x_v, mean.unsqueeze(1), out=dx_v)
        dweight = dx_v.mul_(dy_v).sum(dims).mul_(inv_std)
    if needs_dx:
        # Lesson 03's compact form: dx = scale * dy + b * x + shift with
        # b = -g / M, g = scale * inv_std * sum(dy * x_hat), and
        # shift = -scale * sum(dy) / M - b * mean.
        g = torch.mul(scale, inv_std).mul_(dweight)
        shift = torch.addcmul(_filled(C, 0.0, x), scale, sum_dy, value=-1.0 / M)
        shift.addcmul_(g, mean, value=1.0 / M)
        if layout == _ROWS:
            torch.addcmul(shift, x_v, g, value=-1.0 / M, out=dx_v).addcmul_(dy_v, scale)
        elif layout == _WIDE:
            g_shift_scale = torch.mm(torch.stack((g, shift, scale)), E)  # (3, C*L)
            torch.addcmul(g_shift_scale[1], x_v, g_shift_scale[0], value=-1.0 / M,
                          out=dx_v).addcmul_(dy_v, g_shift_scale[2])
        else:
            b = g.mul_(-1.0 / M).unsqueeze(1)
            torch.mul(x_v, b, out=dx_v).add_(shift.unsqueeze(1))
            dx_v.addcmul_(dy_v, scale.unsqueeze(1))
    else:
        dx = None
    return dx, dweight, sum_dy


def _memory_format(x: Tensor):
    """torch.contiguous_format, or the channels-last format that `x` is stored in."""
    if x.is_contiguous():
        return torch.contiguous_format
    return _CHANNELS_LAST[x.dim()]


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
    # One cheap test for the common case (every per-channel tensor given and right): this
    # function runs once per BN layer per step, so its Python cost counts (issue 24).
    if (running_mean is None or running_mean.numel() != C or running_var is None
            or running_var.numel() != C or weight is None or weight.numel() != C
            or bias is None or bias.numel() != C):
        for name, t in (("running_mean", running_mean), ("running_var", running_var),
                        ("weight", weight), ("bias", bias)):
            _check_channel_tensor(t, name, C)
    if training:
        numel = input.numel()
        size = numel // C if C else 0
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

    if numel == 0:
        # An empty batch: like torch, an empty output, zero gradients for weight and bias (sums
        # over nothing) and the running statistics left alone.
        return _empty_batch(input, weight, bias)
    dtype = input.dtype
    if (dtype in _FUSED_DTYPES and (weight is None or weight.dtype == dtype)
            and (bias is None or bias.dtype == dtype)
            and (running_mean is None or running_mean.dtype == dtype)
            and (running_var is None or running_var.dtype == dtype)):
        x = input if input.is_contiguous() or _fused_layout_ok(input) else input.contiguous()
        return _FusedBatchNorm.apply(x, weight, bias, eps, running_mean, running_var, momentum)
    # float16/bfloat16 inputs are normalised in float32, as torch's CPU kernel accumulates.
    compute_dtype = torch.promote_types(input.dtype, torch.float32)
    x, w, b = (_cast(t, compute_dtype) for t in (input, weight, bias))
    y, mean, var = BatchNormFunction.apply(x, w, b, eps)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean, var, momentum, x.numel() // C)
    return _cast(y, input.dtype)


_FUSED_DTYPES = (torch.float32, torch.float64)


def _empty_batch(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """The (empty) output for an empty batch, in differentiable ops so that weight and bias
    get zero gradients as with torch's kernel, and the input an empty one."""
    y = input.clone()
    if weight is not None:
        y = y * _per_channel(weight, input.dim())
    if bias is not None:
        y = y + _per_channel(bias, input.dim())
    return y


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
    if not x.is_contiguous() and _fused_layout_ok(x):
        # Channels-last: broadcast (1, C, 1, ...) against x as it is stored; the result keeps
        # x's memory format, as torch's kernel does (and the training path).
        ndim = x.dim()
        y = torch.addcmul(_per_channel(shift, ndim), x.to(compute_dtype),
                          _per_channel(scale, ndim))
        return y.to(x.dtype)
    y = _scale_shift(_as_rows(x.to(compute_dtype)), scale, shift)
    return y.view(x.shape).to(x.dtype)
