"""Batch Renormalization (Ioffe 2017): BatchRenorm1d/2d (lesson 10).

In training, BN's batch statistics are corrected towards the running ones by two per-channel
factors that are treated as constants by the backward pass (stop gradient, `sg`)::

    r = sg(clip_[1/r_max, r_max](sigma_B / sigma)),   d = sg(clip_[-d_max, d_max]((mu_B - mu) / sigma))
    x_hat = (x - mu_B) / sigma_B * r + d,             y = gamma * x_hat + beta

with `sigma_B = sqrt(var_B + eps)` (biased batch variance) and `mu`, `sigma = sqrt(running_var + eps)`
the running statistics *before* this batch's update. Unclipped, `x_hat = (x - mu) / sigma`:
training computes what inference computes, so a small batch no longer makes the two disagree.
With `r_max = 1, d_max = 0` it is plain BN (tested).

The running statistics are torch's BN buffers (`running_mean`, unbiased `running_var`,
`num_batches_tracked`), so a BatchNorm checkpoint's statistics load here. `num_batches_tracked`
is the clock of the warm-up schedule of Ioffe 2017 (as independent implementations agree on it,
e.g. Chainer's AutomaticBatchRenormalization; the course notes, section 4.1): r_max = 1 and d_max = 0 for `warmup_steps`
training steps, then r_max rises linearly to `r_max` over `r_ramp_steps` and d_max to `d_max`
over `d_ramp_steps` (defaults 5000, 35000, 20000: r_max 3 at step 40 000, d_max 5 at 25 000).
The limits in use are two extra buffers, `current_r_max` and `current_d_max`, so a checkpoint
shows where the schedule was. A run shorter than the warm-up never leaves plain BN: lesson 10
shortens it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bncourse.nn.batchnorm import _BatchNorm
from bncourse.nn._moments import per_channel as _per_channel
from bncourse.nn.functional import batch_norm, update_running_stats

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "renorm_limits", "renorm_factors"]


def renorm_limits(step: int, r_max: float = 3.0, d_max: float = 5.0, warmup_steps: int = 5000,
                  r_ramp_steps: int = 35000, d_ramp_steps: int = 20000) -> tuple[float, float]:
    """(r_max, d_max) in force at training step `step` (1-based) of Ioffe 2017's schedule.

    Plain BN (1, 0) up to `warmup_steps`, then linear ramps that reach `r_max` after
    `r_ramp_steps` and `d_max` after `d_ramp_steps` more steps (a ramp of 0 steps jumps).
    """
    past = step - warmup_steps
    if past <= 0:
        return 1.0, 0.0
    r_frac = 1.0 if r_ramp_steps == 0 else min(1.0, past / r_ramp_steps)
    d_frac = 1.0 if d_ramp_steps == 0 else min(1.0, past / d_ramp_steps)
    return 1.0 + (r_max - 1.0) * r_frac, d_max * d_frac


@torch.no_grad()  # sg(.): r and d are constants for the backward pass
def renorm_factors(mean_B: Tensor, sigma_B: Tensor, running_mean: Tensor, running_var: Tensor,
                   r_max: float, d_max: float, eps: float) -> tuple[Tensor, Tensor]:
    """Ioffe 2017's corrections, all `(C,)`, without gradient:
    ``r = clip(sigma_B / sigma, 1/r_max, r_max)``, ``d = clip((mean_B - mu) / sigma, -d_max, d_max)``
    with ``sigma = sqrt(running_var + eps)``; `sigma_B` is ``sqrt(biased var_B + eps)``."""
    sigma = torch.sqrt(running_var.to(sigma_B.dtype) + eps)
    r = (sigma_B / sigma).clamp(1.0 / r_max, r_max)
    d = ((mean_B - running_mean.to(mean_B.dtype)) / sigma).clamp(-d_max, d_max)
    return r, d


def _check_number(value, name: str, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise ValueError(f"{name} must be a number >= {low}, got {value!r}")


class _BatchRenorm(_BatchNorm):
    """The shared forward of BatchRenorm1d/2d; subclasses say which ranks they take."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.01,
                 affine: bool = True, device=None, dtype=None, *, bias: bool = True,
                 r_max: float = 3.0, d_max: float = 5.0, warmup_steps: int = 5000,
                 r_ramp_steps: int = 35000, d_ramp_steps: int = 20000) -> None:
        # momentum 0.01, not BN's 0.1: the running statistics enter every training step here,
        # so they must be smooth (the Batch Renorm layers of CrossQ's code use 0.01 too).
        _check_number(r_max, "r_max", 1.0)
        _check_number(d_max, "d_max", 0.0)
        for name, steps in (("warmup_steps", warmup_steps), ("r_ramp_steps", r_ramp_steps),
                            ("d_ramp_steps", d_ramp_steps)):
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ValueError(f"{name} must be an int >= 0, got {steps!r}")
        # Always tracks running statistics: they are half of the training-mode formula.
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, bias=bias)
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.warmup_steps, self.r_ramp_steps, self.d_ramp_steps = (warmup_steps, r_ramp_steps,
                                                                   d_ramp_steps)
        self.register_buffer("current_r_max", torch.tensor(1.0, dtype=torch.float64,
                                                           device=device))
        self.register_buffer("current_d_max", torch.tensor(0.0, dtype=torch.float64,
                                                           device=device))

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "current_r_max"):  # not yet registered when __init__ resets
            self.current_r_max.fill_(1.0)
            self.current_d_max.fill_(0.0)

    def limits(self, step: int) -> tuple[float, float]:
        """(r_max, d_max) of this layer's schedule at training step `step` (1-based)."""
        return renorm_limits(step, self.r_max, self.d_max, self.warmup_steps,
                             self.r_ramp_steps, self.d_ramp_steps)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, "
                f"warmup_steps={self.warmup_steps}")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_channels(input)
        if not self.training:  # inference is BN's: y = gamma (x - mu) / sigma + beta
            return batch_norm(input, self.running_mean, self.running_var, self.weight,
                              self.bias, False, 0.0, self.eps)
        C = input.shape[1]
        M = input.numel() // C if C else 0  # values per channel
        if M == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input "
                             f"size {input.size()}")
        momentum = self._momentum_for_update()  # counts the step: the schedule's clock
        r_max, d_max = self.limits(int(self.num_batches_tracked))
        self.current_r_max.fill_(r_max)
        self.current_d_max.fill_(d_max)

        compute_dtype = torch.promote_types(input.dtype, torch.float32)
        x = input.to(compute_dtype)
        dims = (0,) + tuple(range(2, x.dim()))
        mean_B = x.mean(dims)
        x_mu = x - _per_channel(mean_B, x.dim())
        var_B = (x_mu * x_mu).mean(dims)  # biased, as BN normalises
        sigma_B = torch.sqrt(var_B + self.eps)
        r, d = renorm_factors(mean_B, sigma_B, self.running_mean, self.running_var, r_max, d_max,
                              self.eps)
        x_hat = x_mu * _per_channel(r / sigma_B, x.dim()) + _per_channel(d, x.dim())
        if self.weight is not None:
            x_hat = x_hat * _per_channel(self.weight.to(compute_dtype), x.dim())
        if self.bias is not None:
            x_hat = x_hat + _per_channel(self.bias.to(compute_dtype), x.dim())
        # The running statistics move as BN's do (unbiased variance), after r and d used them.
        update_running_stats(self.running_mean, self.running_var, mean_B.detach(),
                              var_B.detach(), momentum, M)
        return x_hat.to(input.dtype)


class BatchRenorm1d(_BatchRenorm):
    """Batch Renormalization over `(N, C)` or `(N, C, L)` input (Ioffe 2017)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input): "
                             f"BatchRenorm1d takes (N, C) or (N, C, L)")


class BatchRenorm2d(_BatchRenorm):
    """Batch Renormalization over `(N, C, H, W)` input (Ioffe 2017)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input): BatchRenorm2d "
                             f"takes (N, C, H, W)")
