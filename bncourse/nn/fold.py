"""Batch normalization at inference: folding and recalibration (lesson 05).

In eval mode BN is a fixed per-channel affine map,

    y = gamma * (z - mu) / sqrt(var + eps) + beta = s * z + (beta - s * mu),
    s = gamma / sqrt(var + eps),

so after a `Linear`/`Conv` layer ``z = W x + b`` it can be folded into that layer:

    W' = s * W   (row / output channel k scaled by s_k),   b' = s * (b - mu) + beta.

`fold_batchnorm` does that for every BN that directly follows such a layer in a `Sequential`.
`recalibrate_batchnorm` recomputes the running statistics as exact population statistics over
a set of batches (PreciseBN; Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from bncourse.nn import batchnorm as _bn
from bncourse.nn.batchnorm import is_batchnorm

__all__ = ["fold_batchnorm", "recalibrate_batchnorm"]

# Which BN may follow which layer: BN1d sees Linear's (N, C) or Conv1d's (N, C, L) output.
_FOLDABLE = {
    nn.Linear: (nn.BatchNorm1d, _bn.BatchNorm1d),
    nn.Conv1d: (nn.BatchNorm1d, _bn.BatchNorm1d),
    nn.Conv2d: (nn.BatchNorm2d, _bn.BatchNorm2d),
    nn.Conv3d: (nn.BatchNorm3d, _bn.BatchNorm3d),
}


# The BNs bound to one input rank; any other BN (torch's and the course's SyncBatchNorm, the
# variants of lesson 10) accepts whatever the layer before it produced.
_RANKED = tuple(t for types in _FOLDABLE.values() for t in types)


def _is_bn(module: nn.Module) -> bool:
    # The one predicate (torch's BNs, the course's and its variants); in eval mode each is an
    # affine map with its running statistics, so each folds.
    return is_batchnorm(module)


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _check_foldable(layer: nn.Module | None, bn: nn.Module, where: str) -> None:
    """Raise ValueError unless `bn` can be folded into the `layer` just before it."""
    bn_name = type(bn).__name__
    layer_type = next((t for t in _FOLDABLE if type(layer) is t), None)
    if layer_type is None:
        before = "nothing" if layer is None else type(layer).__name__
        raise ValueError(
            f"cannot fold {bn_name} at {where}: it must directly follow a Linear, Conv1d, "
            f"Conv2d or Conv3d in the same Sequential, but follows {before}"
        )
    if isinstance(bn, _RANKED) and not isinstance(bn, _FOLDABLE[layer_type]):
        raise ValueError(
            f"cannot fold {bn_name} at {where}: a {layer_type.__name__} is followed by "
            f"{' or '.join(sorted({t.__name__ for t in _FOLDABLE[layer_type]}))}"
        )
    if bn.num_features != _out_channels(layer):
        raise ValueError(
            f"cannot fold {bn_name}({bn.num_features}) at {where}: the preceding "
            f"{layer_type.__name__} has {_out_channels(layer)} output channels"
        )
    running_mean = getattr(bn, "running_mean", None)
    if (not getattr(bn, "track_running_stats", True) or running_mean is None
            or getattr(bn, "running_var", None) is None):
        raise ValueError(
            f"cannot fold {bn_name} at {where}: it has no running statistics "
            f"(track_running_stats=False normalises with batch statistics even in eval mode)"
        )
    if tuple(running_mean.shape) != (bn.num_features,):
        raise ValueError(
            f"cannot fold {bn_name} at {where}: its running statistics have shape "
            f"{tuple(running_mean.shape)}, not one value per channel ({bn.num_features},) "
            f"(a BN with per-time-step statistics is not one affine map)"
        )


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """W' = s * W, b' = s * (b - mu) + beta, s = gamma / sqrt(var + eps); in place on `layer`."""
    weight = layer.weight
    dtype = torch.float64  # fold in double, round once when writing back
    mu = bn.running_mean.to(dtype)
    s = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight.to(dtype)
    b = torch.zeros_like(mu) if layer.bias is None else layer.bias.to(dtype)
    new_bias = s * (b - mu)
    if bn.bias is not None:
        new_bias = new_bias + bn.bias.to(dtype)
    # s has one entry per output channel: dim 0 of a Linear's (out, in) or a Conv's (out, in, *k).
    s = s.view((-1,) + (1,) * (weight.dim() - 1))
    weight.copy_((weight.to(dtype) * s).to(weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.to(dtype=weight.dtype, device=weight.device))
    else:
        layer.bias.copy_(new_bias.to(layer.bias.dtype))


def _fold_sequential(seq: nn.Sequential, path: str) -> None:
    """Fold every BN of `seq` (and of Sequentials nested in it) into the layer before it."""
    names = list(seq._modules)
    to_remove = []
    previous = None
    for index, name in enumerate(names):
        module = seq._modules[name]
        where = f"{path}[{index}]"
        if _is_bn(module):
            _check_foldable(previous, module, where)
            _fold_into(previous, module)
            to_remove.append(name)
            previous = module  # a second BN in a row has no Linear/Conv left to fold into
            continue
        if isinstance(module, nn.Sequential):
            _fold_sequential(module, where)
        elif any(_is_bn(m) for m in module.modules()):
            bn = next(m for m in module.modules() if _is_bn(m))
            raise ValueError(
                f"cannot fold {type(bn).__name__} inside {type(module).__name__} at {where}: "
                f"only BN layers placed directly in (nested) Sequentials are folded"
            )
        previous = module
    # Removing (rather than replacing by Identity) keeps the other modules' names, so their
    # state_dict keys are unchanged; Sequential indexes by position, so seq[i] still works.
    for name in to_remove:
        del seq._modules[name]


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """Return a copy of `model` with every BN folded into the Linear/Conv just before it.

    For each `Linear`/`Conv1d/2d/3d` followed directly by a `BatchNorm1d/2d/3d` (torch.nn's or
    bncourse.nn's) in a `Sequential`, nested Sequentials included:
    ``W' = W * gamma / sqrt(running_var + eps)`` per output channel and
    ``b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta``; the layer gains a bias
    if it had none (gamma = 1, beta = 0 when the BN has no affine parameters), and the BN is
    removed. The folded model computes the eval-mode output of `model` with fewer modules.
    `model` itself is not modified (it is deep-copied). A Linear is assumed to see `(N, C)`
    input, where BN1d's channels are its output features.

    Args:
        model: an `nn.Sequential` in eval mode.

    Returns:
        A new `nn.Sequential` without the folded BN modules.

    Raises:
        TypeError: `model` is not an `nn.Sequential`.
        ValueError: `model` (or one of its BN layers) is in training mode, or a BN cannot be
            folded (not directly after a Linear/Conv, channel or dimension mismatch, no running
            statistics, or inside a module that is not a Sequential); the message names its
            index, e.g. ``model[2][1]``, and class.

    Lesson 05 derives the equations.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    if model.training or any(_is_bn(m) and m.training for m in model.modules()):
        raise ValueError(
            "model is in training mode: call model.eval() first: folding uses running statistics"
        )
    folded = copy.deepcopy(model)
    _fold_sequential(folded, "model")
    return folded


def _batch_input(batch) -> Tensor:
    """The model input of one batch: the tensor itself or the first element of `(x, y)`."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        f"batches must yield tensors or (x, y) tuples whose first element is a tensor, "
        f"got {type(batch).__name__}"
    )


class _PopulationStatistics:
    """Per-channel count, mean and sum of squared deviations (M2) of every value seen so far.

    Batches are merged with Chan et al.'s parallel update (no E[x^2] - E[x]^2 cancellation):
    ``delta = mean_b - mean``, ``mean += delta * m / (n + m)``,
    ``M2 += M2_b + delta^2 * n * m / (n + m)``. Kept in float64.
    """

    def __init__(self, count: float, mean: Tensor, m2: Tensor) -> None:
        self.count, self.mean, self.m2 = count, mean, m2

    def __call__(self, module: nn.Module, inputs: tuple) -> None:  # a forward pre-hook
        x = inputs[0].detach().to(torch.float64)
        dims = (0,) + tuple(range(2, x.dim()))
        m = x.numel() // x.shape[1]  # values per channel: batch and spatial positions
        var_b, mean_b = torch.var_mean(x, dim=dims, correction=0)
        n = self.count
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (m / (n + m))
        self.m2 = self.m2 + var_b * m + delta.square() * (n * m / (n + m))
        self.count = n + m


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, *, reset: bool = True) -> nn.Module:
    """Recompute every BN's running statistics as population statistics over `batches`.

    PreciseBN (Wu & Johnson 2021, Sec. 3 and appendix; FAIR's fvcore `update_bn_stats`): the
    model runs over `batches` with only its BN layers in training mode (so dropout and the like
    stay in eval mode), no gradients, weights fixed. Each BN layer's statistics are those of all
    the values it saw, not an exponential moving average:

        running_mean = (1 / M) * sum_i z_i
        running_var = (1 / (M - 1)) * sum_i (z_i - running_mean)^2

    over the M values per channel of every batch (torch's unbiased convention for
    `running_var`). With equal batch sizes the mean is the average of the batch means. Batches are
    merged with a numerically stable parallel update in float64. Each BN's `momentum` is
    temporarily `None` (cumulative averaging) and restored afterwards, as are the training flags of
    every module; `num_batches_tracked` counts the batches.

    Args:
        model: a module containing BN layers with running statistics.
        batches: an iterable of input tensors `(N, ...)` or of `(x, y)` tuples (y is ignored),
            e.g. a DataLoader over unlabelled data from the deployment distribution.
        reset: if True (default) forget the current statistics. If False, the current ones count
            as `num_batches_tracked` earlier batches of the same average size and are merged with
            the new ones (so recalibrating on A, then on B with reset=False, equals recalibrating
            on A and B together when all batches have one size).

    Returns:
        `model`, recalibrated in place.

    Raises:
        ValueError: no BN layer with running statistics; `batches` is empty; a BN layer saw no
            input. The model is left unchanged when an error is raised.
        TypeError: a batch is neither a tensor nor a tuple starting with one.

    Lesson 05 shows stale statistics after a distribution shift repaired this way.
    """
    bns = [m for m in model.modules() if _is_bn(m) and m.track_running_stats
           and m.running_mean is not None]
    if not bns:
        raise ValueError(
            "model has no BatchNorm module with running statistics to recalibrate"
        )
    training_flags = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    saved = {bn: (bn.running_mean.clone(), bn.running_var.clone(),
                  bn.num_batches_tracked.clone()) for bn in bns}
    stats = {bn: _PopulationStatistics(0.0, torch.zeros_like(bn.running_mean, dtype=torch.float64),
                                       torch.zeros_like(bn.running_var, dtype=torch.float64))
             for bn in bns}
    hooks = [bn.register_forward_pre_hook(stats[bn]) for bn in bns]
    num_batches = 0
    try:
        model.eval()
        for bn in bns:
            bn.train()
            bn.momentum = None
            if reset:
                bn.reset_running_stats()
        for batch in batches:
            model(_batch_input(batch))
            num_batches += 1
        if num_batches == 0:
            raise ValueError("batches is empty: recalibration needs at least one batch")
        for bn in bns:
            s = stats[bn]
            if s.count == 0:
                raise ValueError(f"{type(bn).__name__} saw no input during recalibration")
            if not reset:
                _merge_previous(s, saved[bn], num_batches)
            bn.running_mean.copy_(s.mean.to(bn.running_mean.dtype))
            # Unbiased, as torch stores running_var; a single value per channel has no spread.
            bn.running_var.copy_((s.m2 / max(s.count - 1, 1)).to(bn.running_var.dtype))
    except BaseException:
        for bn, (mean, var, tracked) in saved.items():
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(tracked)
        raise
    finally:
        for hook in hooks:
            hook.remove()
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for module, flag in training_flags.items():
            module.training = flag
    return model


def _merge_previous(s: _PopulationStatistics, previous: tuple, num_batches: int) -> None:
    """Merge the statistics held before recalibration into `s` (reset=False)."""
    mean, var, tracked = previous
    n_old = float(tracked) * s.count / num_batches  # earlier batches, of the new average size
    if n_old == 0:
        return
    m_old = mean.to(torch.float64)
    m2_old = var.to(torch.float64) * max(n_old - 1, 1)
    n = s.count
    delta = s.mean - m_old
    s.mean = m_old + delta * (n / (n + n_old))
    s.m2 = m2_old + s.m2 + delta.square() * (n * n_old / (n + n_old))
    s.count = n + n_old
