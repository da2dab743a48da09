"""GroupNorm (Wu & He 2018), a drop-in for `torch.nn.GroupNorm`, built from tensor ops (lesson 10).

Each sample's C channels are split into G groups of C/G consecutive channels; every group is
normalised with its own mean and biased variance over its channels and all spatial positions::

    x: (N, C, *)  ->  (N, G, C/G * L)   mean, var over the last axis   ->  back, then gamma, beta

The statistics never mix samples, so the output of one sample does not depend on the batch:
no running statistics, identical in train and eval, fine with a batch of one. Two limits are
older norms: G = 1 is LayerNorm over (C, *) (Ba, Kiros & Hinton 2016) and G = C is
InstanceNorm (Ulyanov et al. 2016); lesson 10 and the tests check both against torch's modules.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

__all__ = ["GroupNorm", "group_norm"]


def _check_divisible(num_channels: int, num_groups: int) -> None:
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
        # torch divides by num_groups here (a ZeroDivisionError for 0); a ValueError names it.
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if num_channels % num_groups != 0:
        raise ValueError(
            f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
        )


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Group normalization with the semantics of `torch.nn.functional.group_norm`.

    ``y = (x - mean_g) / sqrt(var_g + eps) * weight_c + bias_c`` with the biased mean and
    variance of each (sample, group) over the group's channels and every spatial position.

    Args:
        input: `(N, C)` or `(N, C, *spatial)`.
        num_groups: G, which must divide C.
        weight, bias: `(C,)` or None (scale 1, shift 0).
        eps: added to the variance inside the square root.

    Returns:
        Tensor of the shape and dtype of `input`; differentiable by autograd.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"group_norm(): argument 'input' must be Tensor, not "
                        f"{type(input).__name__}")
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received "
                           f"{input.dim()}: group_norm takes (N, C) or (N, C, *spatial)")
    N, C = input.shape[:2]  # batch, channels
    _check_divisible(C, num_groups)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != C:
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {list(t.shape)} and input of shape "
                f"{list(input.shape)}"
            )
    G = num_groups
    per_group = input.numel() // (N * G) if N else 0  # C/G channels times L positions
    x = input.reshape(N, G, per_group)  # (N, G, C/G * L)
    mean = x.mean(2, keepdim=True)
    x_mu = x - mean
    var = (x_mu * x_mu).mean(2, keepdim=True)  # two-pass, biased (as torch)
    x_hat = (x_mu * torch.rsqrt(var + eps)).reshape(input.shape)
    view = (1, C) + (1,) * (input.dim() - 2)  # (C,) broadcasts over (N, C, *)
    if weight is not None:
        x_hat = x_hat * weight.view(view)
    if bias is not None:
        x_hat = x_hat + bias.view(view)
    return x_hat


class GroupNorm(Module):
    """Group normalization over `(N, C, *)` input: statistics per sample and group of C/G channels.

    Drop-in for `torch.nn.GroupNorm`: same arguments, parameters (`weight`, `bias`, per
    channel), `state_dict` keys, `extra_repr` and exception types. No buffers: nothing depends
    on the batch, so train and eval give the same output.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        _check_divisible(num_channels, num_groups)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = Parameter(torch.empty(num_channels, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(num_channels, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight 1, bias 0."""
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, bias={self.bias is not None}")
