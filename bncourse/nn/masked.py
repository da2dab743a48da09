"""Batch normalization of a padded batch of variable-length sequences (lesson 12, the capstone).

A batch of sequences of different lengths is stored padded to the longest, `x` of shape
`(N, C, L)`, with a mask `(N, L)` that is True at real positions. Plain BN counts the padding in
its statistics (torch's `BatchNorm1d` has no mask argument: pytorch issue #70529), so the
statistics, and every output, change with how much padding a batch happens to carry. Masked BN
takes the statistics over the real positions only,

    M = sum(mask),  mu = sum(mask * x) / M,  var = sum(mask * (x - mu)^2) / M   (per channel),

normalises every real position with them, outputs 0 at padded positions, and sends no gradient
into them. `running_var` stores the unbiased `var * M / (M - 1)`, as `BatchNorm1d` does.

This is the grader's reference for the capstone; the lesson shows the problem, not this code.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bncourse.nn.batchnorm import _BatchNorm

__all__ = ["MaskedBatchNorm1d", "masked_batch_norm"]


def _check_mask(input: Tensor, mask: Tensor) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor of shape (N, L), got {type(mask).__name__}")
    if input.dim() != 3:
        raise ValueError(f"expected a padded batch of shape (N, C, L), got input of shape "
                         f"{tuple(input.shape)}")
    n, _, length = input.shape
    if tuple(mask.shape) != (n, length):
        raise ValueError(f"mask must have shape (N, L) = {(n, length)} for input of shape "
                         f"{tuple(input.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True at real positions), got {mask.dtype}")
    return mask


def masked_batch_norm(input: Tensor, mask: Tensor, running_mean: Tensor | None,
                      running_var: Tensor | None, weight: Tensor | None = None,
                      bias: Tensor | None = None, training: bool = False,
                      momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """BN over the real positions of a padded batch; padded positions give 0.

    input: (N, C, L); mask: (N, L) bool, True at real positions; running_mean, running_var,
    weight, bias: (C,) or None. In training (or without running statistics) normalises with the
    masked batch statistics and, when given, updates the running ones in place:
    r <- (1 - momentum) r + momentum * batch statistic (unbiased variance). Returns (N, C, L).
    Differentiable by autograd; the gradient at padded positions is exactly 0.
    """
    _check_mask(input, mask)
    m = mask.unsqueeze(1).to(input.dtype)  # (N, 1, L)
    use_batch_stats = training or running_mean is None or running_var is None
    if use_batch_stats:
        count = int(mask.sum())  # a Python number: an integer tensor would divide in float32
        if count <= 1:
            raise ValueError(f"Expected more than 1 real (unmasked) value per channel when "
                             f"training, got {count} in input of size {tuple(input.shape)}")
        mean = (input * m).sum(dim=(0, 2)) / count  # (C,)
        centred = (input - mean[None, :, None]) * m
        var = (centred * centred).sum(dim=(0, 2)) / count  # biased
        if training and running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = var.detach() * (count / (count - 1))
                running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    else:
        mean, var = running_mean, running_var
        centred = (input - mean[None, :, None]) * m
    out = centred * torch.rsqrt(var + eps)[None, :, None]
    if weight is not None:
        out = out * weight[None, :, None]
    if bias is not None:
        out = out + bias[None, :, None]
    return out * m  # padded positions: 0, and no gradient flows back through them


class MaskedBatchNorm1d(_BatchNorm):
    """`BatchNorm1d` for padded sequences: `forward(input, mask)` with input (N, C, L) and mask
    (N, L) bool. Same constructor, parameters, buffers and `state_dict` keys as
    `torch.nn.BatchNorm1d`, so a checkpoint of either loads into the other; `mask=None` means
    every position is real (then it equals `BatchNorm1d` on (N, C, L))."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 3:
            raise ValueError(f"expected 3D input (N, C, L), got {input.dim()}D input")

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise RuntimeError(f"{type(self).__name__}({self.num_features}) expects "
                               f"{self.num_features} channels in dim 1 of its input, got input "
                               f"of shape {tuple(input.shape)}")
        if mask is None:
            mask = torch.ones(input.shape[0], input.shape[2], dtype=torch.bool,
                              device=input.device)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats and self.running_mean is not None
        return masked_batch_norm(input, mask, self.running_mean if track else None,
                                 self.running_var if track else None, self.weight, self.bias,
                                 self.training, momentum, self.eps)
