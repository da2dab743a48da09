"""Network builders that take `norm=`: an MLP, a small CNN and an Inception-style CNN (lessons 01, 04-06).

Every builder puts the normalisation layer where Ioffe & Szegedy (2015, section 3.2) put it, on
the layer's pre-activation `Wu` and before the nonlinearity, unless `norm_position="after"`.
A weight layer directly followed by a norm has no bias unless `bias_before_norm=True`: BN
subtracts the batch mean, so a bias there is cancelled exactly (BN's beta takes its role).

`norm` is None (no normalisation) or a module class called as `norm(num_features)`, e.g.
`bncourse.nn.BatchNorm1d` for the MLP and `bncourse.nn.BatchNorm2d` for the CNNs.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

__all__ = ["NORM_POSITIONS", "mlp", "small_cnn", "InceptionBlock", "inception_cnn"]

NORM_POSITIONS = ("before", "after")  # relative to the nonlinearity


def _check_norm(norm) -> None:
    if norm is None:
        return
    if not (isinstance(norm, type) and issubclass(norm, nn.Module)):
        raise TypeError(f"norm must be None or a module class such as bncourse.nn.BatchNorm1d "
                        f"(the class, not an instance), got {norm!r}")


def _check_activation(activation) -> None:
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise TypeError(f"activation must be a module class such as torch.nn.Sigmoid "
                        f"(the class, not an instance), got {activation!r}")


def _check_position(norm_position: str) -> None:
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f"norm_position must be one of {NORM_POSITIONS} (where the norm goes "
                         f"relative to the nonlinearity), got {norm_position!r}")


def _check_width(value, name: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _norm_act(num_features: int, norm, activation, norm_position: str) -> list[nn.Module]:
    """[norm, activation] or [activation, norm]; [activation] when norm is None."""
    if norm is None:
        return [activation()]
    if norm_position == "before":
        return [norm(num_features), activation()]
    return [activation(), norm(num_features)]


def mlp(sizes: list[int], activation: type[nn.Module] = nn.Sigmoid,
        norm: type[nn.Module] | None = None, bias_before_norm: bool = False,
        norm_position: str = "before") -> nn.Sequential:
    """A fully connected net: Linear -> [norm] -> activation for each hidden layer, Linear out.

    `sizes = [inputs, hidden..., outputs]`; input `(N, sizes[0])`, output `(N, sizes[-1])`.
    With a `norm` (e.g. `bncourse.nn.BatchNorm1d`) the Linear before it has no bias unless
    `bias_before_norm` (BN's beta makes it redundant). `norm_position="after"` puts the norm
    after the activation instead (Linear -> activation -> norm), with the Linear's bias kept.
    """
    if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
        raise ValueError(f"sizes must list at least inputs and outputs, got {sizes}")
    for i, size in enumerate(sizes):
        _check_width(size, f"sizes[{i}]")
    _check_norm(norm)
    _check_activation(activation)
    _check_position(norm_position)
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        bias = norm is None or bias_before_norm or norm_position == "after"
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        layers.extend(_norm_act(fan_out, norm, activation, norm_position))
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def _conv_unit(in_channels: int, out_channels: int, kernel_size: int, norm, activation,
               norm_position: str, bias_before_norm: bool = False) -> nn.Sequential:
    """Conv2d (same padding) -> [norm] -> activation: `(N, C_in, H, W) -> (N, C_out, H, W)`."""
    bias = norm is None or bias_before_norm or norm_position == "after"
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
    return nn.Sequential(conv, *_norm_act(out_channels, norm, activation, norm_position))


def small_cnn(in_channels: int = 1, num_classes: int = 10, channels: tuple[int, ...] = (16, 32),
              image_size: int = 8, norm: type[nn.Module] | None = None,
              activation: type[nn.Module] = nn.ReLU, norm_position: str = "before") -> nn.Sequential:
    """A plain CNN: [3x3 conv -> [norm] -> activation -> 2x2 max-pool] per entry of `channels`,
    then a Linear classifier. Input `(N, in_channels, image_size, image_size)`, output
    `(N, num_classes)`; `image_size` must be divisible by `2 ** len(channels)`.
    """
    _check_width(in_channels, "in_channels")
    _check_width(num_classes, "num_classes")
    _check_width(image_size, "image_size")
    if not isinstance(channels, (list, tuple)) or not channels:
        raise ValueError(f"channels must be a non-empty tuple of ints, got {channels!r}")
    for i, width in enumerate(channels):
        _check_width(width, f"channels[{i}]")
    _check_norm(norm)
    _check_activation(activation)
    _check_position(norm_position)
    if image_size % 2 ** len(channels):
        raise ValueError(f"image_size must be divisible by 2**len(channels) = "
                         f"{2 ** len(channels)} (one 2x2 pooling per conv), got {image_size}")
    layers: list[nn.Module] = []
    fan_in = in_channels
    for width in channels:
        layers.extend([_conv_unit(fan_in, width, 3, norm, activation, norm_position),
                       nn.MaxPool2d(2)])
        fan_in = width
    side = image_size // 2 ** len(channels)
    layers.extend([nn.Flatten(), nn.Linear(fan_in * side * side, num_classes)])
    return nn.Sequential(*layers)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels (Szegedy et al. 2015; BN-Inception's
    double 3x3 in place of the 5x5, Ioffe & Szegedy 2015, appendix):

        1x1 conv | 3x3 conv | 3x3 conv -> 3x3 conv | 3x3 max-pool (stride 1) -> 1x1 conv

    each conv followed by [norm] -> activation (the norm inside each branch, on the conv's
    output). `(N, in_channels, H, W) -> (N, sum(widths), H, W)` with
    `widths = (w_1x1, w_3x3, w_double_3x3, w_pool)`. By default a simplified block without the
    1x1 reductions; `reductions=(r_3x3, r_double)` puts a 1x1 conv (with its own norm and
    activation) of that width before the 3x3 and the double-3x3 branch, as in Inception, and
    `pool="avg"` uses average instead of max pooling in the pool branch.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int] = (8, 8, 8, 8),
                 norm: type[nn.Module] | None = None, activation: type[nn.Module] = nn.ReLU,
                 norm_position: str = "before", reductions: tuple[int, int] | None = None,
                 pool: str = "max") -> None:
        super().__init__()
        _check_width(in_channels, "in_channels")
        if not isinstance(widths, (list, tuple)) or len(widths) != 4:
            raise ValueError(f"widths must be 4 ints (1x1, 3x3, double 3x3, pool branch), "
                             f"got {widths!r}")
        for name, width in zip(("1x1", "3x3", "double_3x3", "pool"), widths):
            _check_width(width, f"widths[{name}]")
        _check_norm(norm)
        _check_activation(activation)
        _check_position(norm_position)
        if reductions is not None:
            if not isinstance(reductions, (list, tuple)) or len(reductions) != 2:
                raise ValueError(f"reductions must be None or 2 ints (3x3 reduce, double 3x3 "
                                 f"reduce), got {reductions!r}")
            for name, width in zip(("3x3", "double_3x3"), reductions):
                _check_width(width, f"reductions[{name}]")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        w1, w3, wd, wp = widths
        unit = dict(norm=norm, activation=activation, norm_position=norm_position)
        self.in_channels = in_channels
        self.out_channels = sum(widths)

        def reduced(width: int, index: int) -> tuple[list[nn.Module], int]:
            if reductions is None:
                return [], in_channels
            return [_conv_unit(in_channels, reductions[index], 1, **unit)], reductions[index]

        head_3x3, fan_3x3 = reduced(w3, 0)
        head_double, fan_double = reduced(wd, 1)
        pooling = (nn.MaxPool2d(3, stride=1, padding=1) if pool == "max"
                   else nn.AvgPool2d(3, stride=1, padding=1))
        self.branch_1x1 = _conv_unit(in_channels, w1, 1, **unit)
        self.branch_3x3 = nn.Sequential(*head_3x3, _conv_unit(fan_3x3, w3, 3, **unit))
        self.branch_double_3x3 = nn.Sequential(*head_double, _conv_unit(fan_double, wd, 3, **unit),
                                               _conv_unit(wd, wd, 3, **unit))
        self.branch_pool = nn.Sequential(pooling, _conv_unit(in_channels, wp, 1, **unit))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"InceptionBlock expects input of shape (N, {self.in_channels}, H, W),"
                             f" got {tuple(x.shape)}")
        branches = (self.branch_1x1, self.branch_3x3, self.branch_double_3x3, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)  # (N, sum(widths), H, W)


def inception_cnn(in_channels: int = 1, num_classes: int = 10, stem: int = 16,
                  widths: tuple[tuple[int, int, int, int], ...] = ((8, 8, 8, 8), (16, 16, 16, 16)),
                  norm: type[nn.Module] | None = None, activation: type[nn.Module] = nn.ReLU,
                  norm_position: str = "before") -> nn.Sequential:
    """A small Inception-style CNN for small images (lesson 06, Table 1 in miniature):

        3x3 conv stem -> [norm] -> act -> InceptionBlock -> 2x2 max-pool -> InceptionBlock ...
        -> global average pool -> Linear

    one InceptionBlock per entry of `widths`, with a 2x2 max-pool between consecutive blocks.
    Input `(N, in_channels, H, W)` with H, W divisible by `2 ** (len(widths) - 1)`; output
    `(N, num_classes)`.
    """
    _check_width(in_channels, "in_channels")
    _check_width(num_classes, "num_classes")
    _check_width(stem, "stem")
    if not isinstance(widths, (list, tuple)) or not widths:
        raise ValueError(f"widths must be a non-empty tuple of 4-tuples, got {widths!r}")
    _check_norm(norm)
    _check_activation(activation)
    _check_position(norm_position)
    layers: list[nn.Module] = [_conv_unit(in_channels, stem, 3, norm, activation, norm_position)]
    fan_in = stem
    for i, block_widths in enumerate(widths):
        if i:
            layers.append(nn.MaxPool2d(2))
        block = InceptionBlock(fan_in, block_widths, norm, activation, norm_position)
        layers.append(block)
        fan_in = block.out_channels
    layers.extend([nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(fan_in, num_classes)])
    return nn.Sequential(*layers)
