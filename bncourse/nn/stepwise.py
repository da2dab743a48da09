"""`StepwiseBatchNorm`: batch normalization with statistics kept per time step (case study 08).

Cooijmans et al. (2017, "Recurrent Batch Normalization", ICLR; arXiv 2016) normalise each term
of an LSTM with statistics that are *separate for every time step* t, while gamma and beta are
shared across time. Training normalises with the batch statistics of step t; eval with the
running (population) statistics of step t. They keep population statistics for
t = 0 ... max_length - 1 and, beyond, reuse those of the last step::

    x_hat_t = (x_t - mu_t) / sqrt(var_t + eps),     y_t = gamma * x_hat_t + beta
    mu_t, var_t = batch statistics of step t (training) or running_mean[s], running_var[s]
                  with s = min(t, max_length - 1) (eval)

The running statistics follow torch's conventions (lesson 04): an exponential moving average
with weight `momentum` on the new batch and the *unbiased* batch variance stored. (The paper's
reference code uses an average weight of 0.05 and the biased variance; the difference is
invisible after a few hundred steps.) During training, a step t >= max_length updates the last
row, so it averages the steps beyond the maximum: the statistics eval will reuse there.

The arithmetic is `bncourse.nn.batch_norm` applied to the row `running_mean[s]` (a view, which
it updates in place).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from bncourse.nn.functional import batch_norm

__all__ = ["StepwiseBatchNorm"]


class StepwiseBatchNorm(Module):
    """BN of a `(N, C)` input at time step `t`, statistics per step up to `max_length`.

    Args:
        num_features: C.
        max_length: number of time steps with their own running statistics (T_max).
        eps, momentum: as in `torch.nn.BatchNorm1d` (momentum weighs the new batch).
        weight_init: initial gamma (Cooijmans et al.: 0.1 in the LSTM).
        bias: learn a shift beta (Cooijmans et al. fix it at 0 on the two gate terms, whose sum
            gets one shared LSTM bias instead).
        reuse_last: beyond `max_length`, reuse the last step's statistics (the paper's rule);
            if False, a step t >= max_length raises ValueError.

    Parameters `weight` (C,) and `bias` (C,) or None; buffers `running_mean` and `running_var`,
    both `(max_length, C)`.
    """

    _is_batchnorm = True  # for bncourse.nn.is_batchnorm

    def __init__(self, num_features: int, max_length: int, eps: float = 1e-5,
                 momentum: float = 0.1, weight_init: float = 1.0, bias: bool = True,
                 reuse_last: bool = True) -> None:
        super().__init__()
        for name, value in (("num_features", num_features), ("max_length", max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.num_features = num_features
        self.max_length = max_length
        self.eps = eps
        self.momentum = momentum
        self.weight_init = weight_init
        self.reuse_last = reuse_last
        self.weight = Parameter(torch.empty(num_features))
        self.bias = Parameter(torch.empty(num_features)) if bias else None
        self.register_buffer("running_mean", torch.zeros(max_length, num_features))
        self.register_buffer("running_var", torch.ones(max_length, num_features))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        with torch.no_grad():
            self.weight.fill_(self.weight_init)
            if self.bias is not None:
                self.bias.zero_()

    def step_index(self, t: int) -> int:
        """The row of the running statistics that step `t` uses: min(t, max_length - 1)."""
        if t < 0:
            raise ValueError(f"time_step must be non-negative, got {t}")
        if t >= self.max_length:
            if not self.reuse_last:
                raise ValueError(
                    f"time_step {t} is beyond max_length={self.max_length} and reuse_last=False: "
                    f"build the module with a larger max_length, or reuse_last=True to reuse "
                    f"the statistics of the last step")
            return self.max_length - 1
        return t

    def forward(self, input: Tensor, t: int) -> Tensor:
        """Normalise `input` `(N, C)` at time step `t` (an int, 0-based); returns `(N, C)`."""
        if input.dim() != 2 or input.shape[1] != self.num_features:
            raise ValueError(f"input must have shape (N, {self.num_features}), "
                             f"got {tuple(input.shape)}")
        if self.training and input.shape[0] < 2:
            raise ValueError(f"input has batch size {input.shape[0]}: batch statistics need "
                             f"at least 2 rows in training mode (call .eval() to use the "
                             f"running statistics)")
        s = self.step_index(t)
        return batch_norm(input, self.running_mean[s], self.running_var[s], self.weight,
                          self.bias, training=self.training, momentum=self.momentum,
                          eps=self.eps)

    def forward_sequence(self, input: Tensor) -> Tensor:
        """Normalise a whole sequence `(T, N, C)`, step t with the statistics of step t.

        The same result as calling `forward(input[t], t)` for each t, but the first
        `max_length` steps are one call: viewed as `(N, T * C)`, per-step statistics are
        per-channel statistics of T * C channels, and rows 0..T-1 of the running buffers are
        the matching `(T * C,)` view (used for the input term of the LSTM, known in advance).
        """
        if input.dim() != 3 or input.shape[2] != self.num_features:
            raise ValueError(f"input must have shape (T, N, {self.num_features}), "
                             f"got {tuple(input.shape)}")
        T, N, C = input.shape
        if self.training and N < 2:
            raise ValueError(f"input has batch size {N}: batch statistics need at least 2 rows "
                             f"in training mode (call .eval() to use the running statistics)")
        if T > self.max_length:
            self.step_index(T - 1)  # raises when reuse_last is False
        head = min(T, self.max_length)
        rows = input[:head].transpose(0, 1).reshape(N, head * C)  # (N, head * C)
        bias = None if self.bias is None else self.bias.repeat(head)
        out = batch_norm(rows, self.running_mean[:head].view(-1), self.running_var[:head].view(-1),
                         self.weight.repeat(head), bias, training=self.training,
                         momentum=self.momentum, eps=self.eps)
        outputs = [out.view(N, head, C).transpose(0, 1)]
        outputs += [self(input[t], t)[None] for t in range(head, T)]
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def extra_repr(self) -> str:
        return (f"{self.num_features}, max_length={self.max_length}, eps={self.eps}, "
                f"momentum={self.momentum}, bias={self.bias is not None}, "
                f"reuse_last={self.reuse_last}")
