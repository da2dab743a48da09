"""Several seeds' networks as one batched computation (case study 09).

A member axis S leads every tensor: inputs are (S, N, features) and each member has its own
weights, stored stacked as (S, fan_in, fan_out) and applied with one batched matmul
(`torch.baddbmm`). Batch normalization keeps exactly per-member, per-unit statistics by putting the
members' features side by side: an (S, N, H) activation becomes an (N, S*H) tensor for the course's
own `bncourse.nn.BatchNorm1d(S * H)`, whose S*H channels are the S members' H units. So training
S seeds costs about as much Python overhead as training one, and every member's BN is still the
layer of lessons 02-05.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bncourse.nn import BatchNorm1d

__all__ = ["EnsembleLinear", "EnsembleBatchNorm", "ensemble_mlp", "member_generators"]


def member_generators(seeds) -> list[torch.Generator]:
    """One torch.Generator per member, seeded with that member's seed."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


class EnsembleLinear(nn.Module):
    """S independent Linear layers: y[s] = x[s] @ W[s] + b[s] for x of shape (S, N, fan_in).

    Member s is initialised like `torch.nn.Linear` (uniform in ±1/sqrt(fan_in)) from
    `generators[s]`, so a member's weights do not depend on the other members.
    """

    def __init__(self, fan_in: int, fan_out: int, generators, bias: bool = True) -> None:
        super().__init__()
        members = len(generators)
        bound = 1.0 / math.sqrt(fan_in)
        weight = torch.stack([(torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound
                              for g in generators])
        self.weight = nn.Parameter(weight)  # (S, fan_in, fan_out)
        if bias:
            b = torch.stack([(torch.rand(1, fan_out, generator=g) * 2 - 1) * bound
                             for g in generators])
            self.bias = nn.Parameter(b)  # (S, 1, fan_out)
        else:
            self.register_parameter("bias", None)
        self.members, self.fan_in, self.fan_out = members, fan_in, fan_out

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[0] != self.members or x.shape[2] != self.fan_in:
            raise ValueError(f"x must have shape (S={self.members}, N, {self.fan_in}), "
                             f"got {tuple(x.shape)}")
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"members={self.members}, {self.fan_in} -> {self.fan_out}"


class EnsembleBatchNorm(nn.Module):
    """Per-member batch normalization of (S, N, H) with `bncourse.nn.BatchNorm1d(S * H)`.

    (S, N, H) -> (N, S*H): column s*H + j is member s's unit j, so its batch mean, variance,
    running statistics, gamma and beta belong to that member alone. Train/eval mode is the
    wrapped layer's, as for any module.
    """

    def __init__(self, members: int, features: int, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.members, self.features = members, features
        self.bn = BatchNorm1d(members * features, momentum=momentum, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        S, N, H = x.shape  # members, batch, features
        if S != self.members or H != self.features:
            raise ValueError(f"x must have shape (S={self.members}, N, {self.features}), "
                             f"got {tuple(x.shape)}")
        flat = x.transpose(0, 1).reshape(N, S * H)
        return self.bn(flat).reshape(N, S, H).transpose(0, 1)

    def running_mean(self) -> Tensor:
        """(S, H) running means, one row per member."""
        return self.bn.running_mean.reshape(self.members, self.features)

    def running_var(self) -> Tensor:
        """(S, H) running variances, one row per member."""
        return self.bn.running_var.reshape(self.members, self.features)


def ensemble_mlp(sizes, generators, *, norm: bool = False, input_norm: bool = False,
                 momentum: float = 0.1, eps: float = 1e-5) -> nn.Sequential:
    """S members' MLPs `sizes = [inputs, hidden..., outputs]`, applied to (S, N, inputs).

    norm: BN after each hidden ReLU (CrossQ's layout: [Linear -> ReLU -> BN] per hidden layer);
    input_norm: BN on the input as well (CrossQ's critic and actor do both).
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least inputs and outputs, got {list(sizes)}")
    S = len(generators)
    layers: list[nn.Module] = []
    if input_norm:
        layers.append(EnsembleBatchNorm(S, sizes[0], momentum, eps))
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [EnsembleLinear(fan_in, fan_out, generators), nn.ReLU()]
        if norm:
            layers.append(EnsembleBatchNorm(S, fan_out, momentum, eps))
    layers.append(EnsembleLinear(sizes[-2], sizes[-1], generators))
    return nn.Sequential(*layers)
