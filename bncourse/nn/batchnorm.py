"""BatchNorm1d/2d/3d: drop-in replacements for their `torch.nn` namesakes (lesson 04).

Same constructor, parameters (`weight`, `bias`), buffers (`running_mean`, `running_var`,
`num_batches_tracked`), `state_dict` keys and version, `extra_repr`, train/eval behaviour and
exception types, so a model can swap one for the other and load the other's checkpoints.
The arithmetic is `bncourse.nn.functional.batch_norm`, built from tensor operations.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from bncourse.nn.functional import batch_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "is_batchnorm"]


class _NormBase(Module):
    """What every per-channel norm with running statistics shares: the `weight`/`bias`
    parameters, the `running_mean`/`running_var`/`num_batches_tracked` buffers (a disabled
    feature is a None parameter or buffer, as in torch), `reset_*`, `extra_repr` and the
    checkpoint upgrade. It has no forward: `_BatchNorm` and the variants of lesson 10
    (`BatchRenorm*`, `GhostBatchNorm*`) add theirs.
    """

    # Version 2 added `num_batches_tracked`, exactly as in torch, so checkpoints carry the
    # same metadata in both directions.
    _version = 2

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or isinstance(num_features, bool):
            raise TypeError(
                f"num_features must be an int (the number of channels C), "
                f"got {type(num_features).__name__}"
            )
        if num_features < 0:
            raise RuntimeError(
                f"Trying to create tensor with negative dimension {num_features}: num_features "
                f"must be the number of channels C of an (N, C, ...) input"
            )
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        # A disabled feature is a None parameter or buffer, as in torch: state_dict keys match.
        if affine:
            self.weight = Parameter(torch.empty(num_features, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(num_features, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset running statistics, then weight to 1 and bias to 0."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
        error_msgs,
    ) -> None:
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            # Checkpoints from before version 2 have no num_batches_tracked: keep the module's
            # own count, as torch does (0 for a fresh module; meta tensors hold no value).
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                own = self.num_batches_tracked
                keep = own is not None and own.device != torch.device("meta")
                state_dict[key] = own if keep else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs,
        )

    def _check_input_channels(self, input: Tensor) -> None:
        self._check_input_dim(input)
        if input.dim() >= 2 and input.shape[1] != self.num_features:
            raise RuntimeError(
                f"{type(self).__name__}({self.num_features}) expects {self.num_features} "
                f"channels in dim 1 of its input, got input of shape {tuple(input.shape)}"
            )


class _BatchNorm(_NormBase):
    """Batch normalization: `_NormBase` plus the momentum policy and the forward shared by
    BatchNorm1d/2d/3d.

    Subclasses only say which input ranks they accept (`_check_input_dim`). The momentum
    policy is two small methods a variant can reuse or override: `_momentum_for_update` counts
    a training batch and returns the weight of its statistics in the running average;
    `_use_batch_stats` says whether to normalise with batch statistics.
    """

    # Marks a batch norm for `is_batchnorm` (variants and SyncBN set it too).
    _is_batchnorm = True

    def _momentum_for_update(self) -> float:
        """Count one training batch (when running statistics are tracked) and return the
        weight of its statistics in the running average: `momentum`, or `1 / batches seen`
        for `momentum=None` (the cumulative moving average)."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average over all batches so far
                momentum = 1.0 / float(self.num_batches_tracked)
        return momentum

    def _use_batch_stats(self) -> bool:
        """Batch statistics in training, and in eval when there are no running statistics."""
        return self.training or (self.running_mean is None and self.running_var is None)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_channels(input)
        momentum = self._momentum_for_update()
        # Running statistics are passed only where they are to be read or updated.
        pass_buffers = not self.training or self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            self._use_batch_stats(),
            momentum,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization over `(N, C)` or `(N, C, L)` input; statistics per channel C.

    Drop-in for `torch.nn.BatchNorm1d`: same arguments, parameters, buffers and checkpoints.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(
                f"expected 2D or 3D input (got {input.dim()}D input): "
                f"BatchNorm1d takes (N, C) or (N, C, L)"
            )


class BatchNorm2d(_BatchNorm):
    """Batch normalization over `(N, C, H, W)` input; statistics per channel C over N, H, W.

    Drop-in for `torch.nn.BatchNorm2d`.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(
                f"expected 4D input (got {input.dim()}D input): BatchNorm2d takes (N, C, H, W)"
            )


class BatchNorm3d(_BatchNorm):
    """Batch normalization over `(N, C, D, H, W)` input; statistics per channel C.

    Drop-in for `torch.nn.BatchNorm3d`.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(
                f"expected 5D input (got {input.dim()}D input): BatchNorm3d takes (N, C, D, H, W)"
            )


def is_batchnorm(module) -> bool:
    """True for a batch-norm layer: torch.nn's BatchNorm1d/2d/3d and SyncBatchNorm (their base
    `torch.nn.modules.batchnorm._BatchNorm`), the course's own, and any module whose class sets
    `_is_batchnorm = True` (the course's variants). The one test the course uses (lessons 04, 05):
    `isinstance(m, torch.nn.modules.batchnorm._BatchNorm)` misses the course's layers.
    """
    from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm

    if not isinstance(module, Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return isinstance(module, _TorchBatchNorm) or bool(getattr(type(module), "_is_batchnorm", False))
