"""`SyncBatchNorm`: batch statistics over every process of a `torch.distributed` group (lesson 11).

With data parallelism each of K processes holds N_k samples of a batch of N = sum_k N_k. Plain BN
normalises each process's part with its own statistics ("per-replica" BN). SyncBN computes the
statistics of the whole batch, so its outputs and gradients are those of one process holding
all N samples. torch's `nn.SyncBatchNorm` refuses CPU tensors (torch 2.13: `aten::batch_norm_stats`
has no CPU kernel, and PR pytorch#78081 to add one was closed); this one runs on CPU with gloo.

The algorithm follows torch's (`torch/nn/modules/_functions.py`), built from the named pieces of
`bncourse.nn.functional`:

- forward: local ``(count, mean, M2)`` (`batch_norm_stats`); one **all_gather** of the packed
  ``[count, mean, M2]`` (2C + 1 numbers: counts may differ across processes, so an all_reduce of
  means would weigh them wrongly); every process merges the K triples in the same order
  (Chan et al.: ``mean = sum n_k mean_k / n``, ``M2 = sum M2_k + n_k (mean_k - mean)**2``), so
  running statistics are bit-identical everywhere; then `batch_norm_elemt`.
- backward: local ``(sum dy, sum dy * x_hat)`` (`batch_norm_backward_reduce`); one
  **all_reduce(SUM)** of the two; `batch_norm_backward_elemt` with the *global* count.
- The parameter gradients returned are the local sums, as torch's: data-parallel training
  (DDP, or an all-reduce of the gradients) adds or averages them across processes.
- A process with an empty batch still joins both collectives. In eval mode, or without an
  initialised process group (or with one process), it is plain BN.

We gather (count, mean, M2) rather than all-reducing ``[sum x, sum x**2, n]``: that would be
one collective too, but ``E[x**2] - E[x]**2`` cancels when |mean| >> std (lesson 05).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import Module

from bncourse.nn._moments import as_rows, merge_stacked
from bncourse.nn.batchnorm import _BatchNorm, is_batchnorm
from bncourse.nn.functional import (batch_norm, batch_norm_backward_elemt,
                                    batch_norm_backward_reduce, batch_norm_elemt,
                                    batch_norm_stats, update_running_stats)

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "sync_batch_norm"]


def _world_size(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _SyncBatchNormFunction(torch.autograd.Function):
    """forward(x, weight, bias, running_mean, running_var, eps, momentum, group) -> y."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        C = x.shape[1]
        local = batch_norm_stats(x)  # (count, mean, M2); zeros for an empty batch
        packed = torch.cat([local.count.view(1), local.mean, local.m2])  # (2C + 1,)
        gathered = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, packed, group=group)
        stacked = torch.stack(gathered)  # (K, 2C + 1), in rank order on every process
        count, mean, m2 = merge_stacked(stacked[:, 0], stacked[:, 1:C + 1], stacked[:, C + 1:])
        M = int(round(float(count)))
        if M == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got a "
                             f"global batch of 1 value per channel (local input size "
                             f"{tuple(x.shape)})")
        var = m2 / max(M, 1)  # biased, for normalising
        inv_std = torch.rsqrt(var + eps)
        if running_mean is not None and M > 0:
            update_running_stats(running_mean, running_var, mean, var, momentum, M)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if x.numel() > 0:
            batch_norm_elemt(as_rows(x), mean, inv_std, weight, bias, out=as_rows(y))
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.count, ctx.group, ctx.has_bias = M, group, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, mean, inv_std = ctx.saved_tensors
        x_rows, dy_rows = as_rows(x), as_rows(dy.contiguous())
        if x.numel() > 0:
            sum_dy, sum_dy_x_hat = batch_norm_backward_reduce(dy_rows, x_rows, mean, inv_std)
        else:  # an empty batch still joins the all_reduce
            sum_dy, sum_dy_x_hat = torch.zeros_like(mean), torch.zeros_like(mean)
        # torch returns these local sums as the parameter gradients (DDP reduces them).
        dweight = sum_dy_x_hat.clone() if weight is not None and ctx.needs_input_grad[1] else None
        dbias = sum_dy.clone() if ctx.has_bias and ctx.needs_input_grad[2] else None
        # Every process joins the collective, whatever it needs: one that skipped it would
        # leave the others waiting (torch's does the same).
        sums = torch.cat([sum_dy, sum_dy_x_hat])  # (2C,): one collective for both sums
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
        global_dy, global_dy_x_hat = sums.chunk(2)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            if x.numel() > 0:
                batch_norm_backward_elemt(dy_rows, x_rows, mean, inv_std, weight, global_dy,
                                          global_dy_x_hat, ctx.count, out=as_rows(dx))
        return dx, dweight, dbias, None, None, None, None, None


def sync_batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    weight: Tensor | None = None, bias: Tensor | None = None,
                    momentum: float = 0.1, eps: float = 1e-5, process_group=None) -> Tensor:
    """Training-mode BN with statistics over every process of `process_group` (default: all).

    Arguments as `bncourse.nn.batch_norm` (input `(N, C, *)`, N may differ across processes and
    be 0). Every process of the group must call it, in the same order. Without an initialised
    process group, or with one process, it is `batch_norm(..., training=True)`.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"sync_batch_norm(): argument 'input' must be Tensor, not "
                        f"{type(input).__name__}")
    if input.dim() < 2 or not input.is_floating_point():
        raise ValueError(f"sync_batch_norm(): input must be a floating-point (N, C, *) tensor, "
                         f"got {input.dim()}D {input.dtype} input")
    if eps <= 0.0:
        raise ValueError(f"sync_batch_norm(): eps must be positive during training, got {eps}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("sync_batch_norm(): running_mean and running_var must either both be "
                         "None or neither be None")
    if _world_size(process_group) == 1:
        return batch_norm(input, running_mean, running_var, weight, bias, True, momentum, eps)
    compute_dtype = torch.promote_types(input.dtype, torch.float32)
    x, w, b = (t if t is None or t.dtype == compute_dtype else t.to(compute_dtype)
               for t in (input, weight, bias))
    y = _SyncBatchNormFunction.apply(x.contiguous(), w, b, running_mean, running_var, eps,
                                     momentum, process_group)
    return y if y.dtype == input.dtype else y.to(input.dtype)


class SyncBatchNorm(_BatchNorm):
    """Batch normalization whose training statistics span every process of `process_group`.

    Drop-in for `torch.nn.SyncBatchNorm` (same constructor, parameters, buffers and
    checkpoints); accepts `(N, C, *)` input, N may differ across processes (and be 0).

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype: as
            `torch.nn.BatchNorm1d`.
        process_group: the group to synchronise over (None: the default group).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input): "
                             f"SyncBatchNorm takes (N, C, *)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise RuntimeError(
                f"SyncBatchNorm({self.num_features}) expects {self.num_features} channels in "
                f"dim 1 of its input, got input of shape {tuple(input.shape)}")
        # torch's momentum policy (as `_BatchNorm`): None means a cumulative average.
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        pass_buffers = not self.training or self.track_running_stats
        running_mean = self.running_mean if pass_buffers else None
        running_var = self.running_var if pass_buffers else None
        if not use_batch_stats:  # eval with running statistics: no communication
            return batch_norm(input, running_mean, running_var, self.weight, self.bias, False,
                              momentum, self.eps)
        return sync_batch_norm(input, running_mean, running_var, self.weight, self.bias,
                               momentum, self.eps, self.process_group)

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """See `convert_sync_batchnorm`."""
        return convert_sync_batchnorm(module, process_group)


def _convertible(module: Module) -> bool:
    """BatchNorm1d/2d/3d of torch or of the course (and torch's SyncBatchNorm), not yet ours.

    Variants that `is_batchnorm` also accepts (per-step statistics, Batch Renorm...) keep their
    own arithmetic and are left alone.
    """
    from torch.nn.modules.batchnorm import _BatchNorm as TorchBatchNorm

    return (is_batchnorm(module) and not isinstance(module, SyncBatchNorm)
            and isinstance(module, (TorchBatchNorm, _BatchNorm)))


def convert_sync_batchnorm(module: Module, process_group=None) -> Module:
    """Replace every BatchNorm1d/2d/3d in `module` (torch's or the course's) by `SyncBatchNorm`.

    Like `torch.nn.SyncBatchNorm.convert_sync_batchnorm`: parameters (with `requires_grad`),
    running statistics, `num_batches_tracked` and train/eval mode are carried over; returns the
    converted module (a new object if `module` itself is a BN, else `module`, changed in place).
    """
    if not isinstance(module, Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if _convertible(module):
        has_bias = getattr(module, "bias", None) is not None
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, process_group)
        if module.affine:  # the same Parameter objects: an optimizer holding them still works
            sync.weight = module.weight
            sync.bias = module.bias if has_bias else None
        sync.running_mean = module.running_mean
        sync.running_var = module.running_var
        sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        if hasattr(module, "qconfig"):
            sync.qconfig = module.qconfig
        return sync
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, process_group)
        if new is not child:
            module.add_module(name, new)
    return module
