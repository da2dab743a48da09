"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017): GhostBatchNorm1d/2d (lesson 10).

In training, a batch of N samples is split into virtual ("ghost") batches and each is
normalised with its own statistics, as if the large batch were several small ones::

    x.chunk(N // virtual_batch_size)  ->  BN on each chunk  ->  concatenated

The split is the one of the paper's reference code (`eladhoffer/bigBatch`, `main_gbn.py`:
`input.chunk(B // ghost)`), and each chunk updates the running statistics in turn, as the
chunks' BN forwards there do, so `num_batches_tracked` counts chunks. One virtual batch is
plain BN (tested). Eval is BN's: the running statistics.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bncourse.nn.batchnorm import _BatchNorm
from bncourse.nn.functional import batch_norm

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d"]


class _GhostBatchNorm(_BatchNorm):
    """The shared forward of GhostBatchNorm1d/2d; subclasses say which ranks they take."""

    # BatchNorm's positional arguments, so it swaps in for BatchNorm1d/2d; the virtual batch
    # size is keyword-only.
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 *, bias: bool = True, virtual_batch_size: int = 32) -> None:
        if (isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, int)
                or virtual_batch_size < 2):
            # A virtual batch of one sample has nothing to normalise over.
            raise ValueError(f"virtual_batch_size must be an int >= 2, got "
                             f"{virtual_batch_size!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.virtual_batch_size = virtual_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        self._check_input_channels(input)
        N = input.shape[0]
        if N < self.virtual_batch_size:
            raise ValueError(
                f"virtual_batch_size ({self.virtual_batch_size}) is larger than the batch "
                f"(input of shape {tuple(input.shape)}): use a batch of at least "
                f"{self.virtual_batch_size} samples in training, or a smaller virtual batch"
            )
        chunks = input.chunk(N // self.virtual_batch_size)  # as the reference code splits
        keep = self.track_running_stats
        outputs = [
            batch_norm(chunk, self.running_mean if keep else None,
                       self.running_var if keep else None, self.weight, self.bias, True,
                       self._momentum_for_update(), self.eps)
            for chunk in chunks
        ]
        return torch.cat(outputs, 0)


class GhostBatchNorm1d(_GhostBatchNorm):
    """Ghost BN over `(N, C)` or `(N, C, L)` input (Hoffer et al. 2017)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input): "
                             f"GhostBatchNorm1d takes (N, C) or (N, C, L)")


class GhostBatchNorm2d(_GhostBatchNorm):
    """Ghost BN over `(N, C, H, W)` input (Hoffer et al. 2017)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input): GhostBatchNorm2d "
                             f"takes (N, C, H, W)")
