"""Lesson 10: normalisation variants at small batch sizes (the experiment code).

    NORMS             name -> layer factory: none, BN, GN, LN, BRN (and GBN with a virtual size)
    norm_mlp          Linear -> norm -> ReLU blocks for any of them (models.mlp takes classes only)
    train_one         one run at a batch size and a number of epochs; the model and its History
    batch_size_sweep  test accuracy for each norm x batch size x seed at equal epochs
    mode_disagreement how often train mode (batch statistics) and eval mode (running statistics)
                      predict different classes on the same examples
    renorm_clip_fraction  how often Batch Renorm's r or d sits at its clip limit
    ghost_runs        BN at a large batch against Ghost BN with smaller virtual batches

Equal epochs means a batch of 2 takes 64x as many steps as a batch of 128. The learning rate
follows the linear scaling rule (Goyal et al. 2017), `lr = base_lr * batch_size / 32` capped at
`max_lr`, so that small batches do not simply take more, equally large steps. Every run is
`bncourse.train.train_classifier` on the course's own layers.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.data import Dataset, iterate_minibatches
from bncourse.train import History, train_classifier

__all__ = ["NORMS", "make_norm", "norm_mlp", "scaled_lr", "train_one", "Sweep",
           "batch_size_sweep", "mode_disagreement", "renorm_clip_fraction", "GhostResult", "ghost_runs"]

# Batch Renorm's warm-up in steps for this scale (Ioffe 2017 uses 5k / 40k / 25k on ImageNet:
# a run shorter than the warm-up would be plain BN throughout).
RENORM_SCHEDULE = dict(warmup_steps=100, r_ramp_steps=400, d_ramp_steps=250)


def _group_norm(num_features: int, group_size: int = 8) -> nn.Module:
    """GroupNorm with groups of `group_size` features (Wu & He 2018 use 32 groups of conv
    channels; a 64-wide layer has 8 groups of 8)."""
    return bnn.GroupNorm(max(1, num_features // group_size), num_features)


NORMS = {
    "none": None,
    "BN": bnn.BatchNorm1d,
    "GN": _group_norm,
    "LN": partial(bnn.GroupNorm, 1),  # one group: LayerNorm over the features
    "BRN": partial(bnn.BatchRenorm1d, momentum=0.1, **RENORM_SCHEDULE),
}


def make_norm(name: str, num_features: int, virtual_batch_size: int | None = None):
    """The layer `name` (a key of NORMS, or "GBN" with `virtual_batch_size`) for `num_features`;
    None for "none"."""
    if name == "GBN":
        if virtual_batch_size is None:
            raise ValueError("make_norm('GBN', ...) needs virtual_batch_size")
        return bnn.GhostBatchNorm1d(num_features, virtual_batch_size=virtual_batch_size)
    if name not in NORMS:
        raise ValueError(f"name must be one of {sorted(NORMS) + ['GBN']}, got {name!r}")
    factory = NORMS[name]
    return None if factory is None else factory(num_features)


def norm_mlp(norm: str, sizes=(64, 64, 64, 10), virtual_batch_size: int | None = None
             ) -> nn.Sequential:
    """`(N, sizes[0]) -> (N, sizes[-1])`: [Linear -> norm -> ReLU] per hidden layer, Linear out.

    The Linear before a norm has no bias (the norm's beta replaces it), as in `models.mlp`.
    """
    if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
        raise ValueError(f"sizes must list at least inputs and outputs, got {sizes!r}")
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layer = make_norm(norm, fan_out, virtual_batch_size)
        layers.append(nn.Linear(fan_in, fan_out, bias=layer is None))
        layers.extend([layer, nn.ReLU()] if layer is not None else [nn.ReLU()])
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def scaled_lr(batch_size: int, base_lr: float = 0.05, max_lr: float = 0.2) -> float:
    """The linear scaling rule: `base_lr * batch_size / 32`, at most `max_lr`."""
    return min(base_lr * batch_size / 32, max_lr)


def train_one(norm: str, data: Dataset, batch_size: int, seed: int = 0, epochs: int = 3,
              base_lr: float = 0.05, max_lr: float = 0.2, momentum: float = 0.9,
              virtual_batch_size: int | None = None) -> tuple[nn.Module, History]:
    """Train `norm_mlp(norm)` for `epochs` epochs of `batch_size` (SGD with momentum and the
    scaled learning rate); the model is initialised from `seed`. Returns (model, History)."""
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (BN needs two samples), "
                         f"got {batch_size!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    torch.manual_seed(seed)
    model = norm_mlp(norm, (data.x_train.shape[1], 64, 64, data.num_classes),
                     virtual_batch_size)
    steps = epochs * (len(data.x_train) // batch_size)
    history = train_classifier(model, data, steps=steps, batch_size=batch_size,
                               lr=scaled_lr(batch_size, base_lr, max_lr), momentum=momentum,
                               eval_every=steps, seed=seed)
    return model, history


@dataclass
class Sweep:
    """accuracy[norm][batch_size] is the list of final test accuracies, one per seed."""

    norms: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    accuracy: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    models: dict[tuple[str, int, int], nn.Module] = field(default_factory=dict, repr=False)

    def mean(self, norm: str, batch_size: int) -> float:
        return statistics.fmean(self.accuracy[norm][batch_size])

    def spread(self, norm: str, batch_size: int) -> tuple[float, float]:
        """(min, max) over seeds."""
        values = self.accuracy[norm][batch_size]
        return min(values), max(values)

    def table(self) -> str:
        """Mean test accuracy (min-max over seeds), one row a norm, one column a batch size."""
        head = f"{'norm':>5} | " + " | ".join(f"B={b:<15}" for b in self.batch_sizes)
        rows = [head, "-" * len(head)]
        for norm in self.norms:
            cells = []
            for b in self.batch_sizes:
                lo, hi = self.spread(norm, b)
                cells.append(f"{self.mean(norm, b):.3f} ({lo:.2f}-{hi:.2f})")
            rows.append(f"{norm:>5} | " + " | ".join(f"{c:<17}" for c in cells))
        return "\n".join(rows)


def batch_size_sweep(data: Dataset, norms=tuple(NORMS), batch_sizes=(2, 4, 8, 32, 128),
                     seeds=(0, 1, 2), epochs: int = 3, keep_models=(), **train_kwargs) -> Sweep:
    """Final test accuracy of `norm_mlp(norm)` for every norm, batch size and seed, at equal
    epochs. `keep_models`: (norm, batch_size) pairs whose trained models are kept in
    `Sweep.models[(norm, batch_size, seed)]` (for `mode_disagreement`)."""
    for norm in norms:
        if norm not in NORMS:
            raise ValueError(f"norms must be keys of NORMS {sorted(NORMS)}, got {norm!r}")
    sweep = Sweep(tuple(norms), tuple(batch_sizes), tuple(seeds))
    keep = set(keep_models)
    for norm in norms:
        sweep.accuracy[norm] = {}
        for b in batch_sizes:
            sweep.accuracy[norm][b] = []
            for seed in seeds:
                model, history = train_one(norm, data, b, seed, epochs, **train_kwargs)
                sweep.accuracy[norm][b].append(history.final_accuracy)
                if (norm, b) in keep:
                    sweep.models[(norm, b, seed)] = model
    return sweep


@torch.no_grad()
def mode_disagreement(model: nn.Module, x: torch.Tensor, batch_size: int,
                      seed: int = 0) -> float:
    """Fraction of the rows of `x` whose predicted class differs between train mode (batch
    statistics of shuffled batches of `batch_size`, as training saw them) and eval mode
    (running statistics). The model and its buffers are left unchanged (a copy runs)."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a (N, ...) tensor, got {type(x).__name__}")
    probe = copy.deepcopy(model)
    probe.eval()
    eval_pred = probe(x).argmax(1)
    probe.train()
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(len(x))
    differ = 0
    seen = 0
    for xb, ib in iterate_minibatches(x, index, batch_size, generator=generator):
        differ += (probe(xb).argmax(1) != eval_pred[ib]).sum().item()
        seen += len(ib)
    return differ / seen


@torch.no_grad()
def renorm_clip_fraction(model: nn.Module, x: torch.Tensor, batch_size: int,
                         seed: int = 0) -> float:
    """Fraction of (batch, channel) pairs, over every Batch Renorm layer of `model` and shuffled
    train-mode batches of `batch_size` from `x`, where r or d is at its clip limit (there
    training no longer computes the inference function). A copy runs, with momentum 0, so the
    model's running statistics are unchanged."""
    probe = copy.deepcopy(model).train()
    layers = [m for m in probe.modules() if isinstance(m, bnn.BatchRenorm1d)]
    if not layers:
        raise ValueError("model has no BatchRenorm1d layer")
    counts = [0, 0]  # clipped, total

    def hook(layer, args):
        (inp,) = args
        mean_B = inp.mean(0)
        sigma_B = torch.sqrt(inp.var(0, unbiased=False) + layer.eps)
        r_max, d_max = layer.limits(int(layer.num_batches_tracked) + 1)  # what forward will use
        r, d = bnn.renorm_factors(mean_B, sigma_B, layer.running_mean, layer.running_var,
                                  r_max, d_max, layer.eps)
        tol = 1e-6
        clipped = (r <= 1 / r_max + tol) | (r >= r_max - tol) | (d.abs() >= d_max - tol)
        counts[0] += int(clipped.sum())
        counts[1] += clipped.numel()

    for layer in layers:
        layer.momentum = 0.0  # probing must not move the running statistics
        layer.register_forward_pre_hook(hook)
    generator = torch.Generator().manual_seed(seed)
    for xb, _ in iterate_minibatches(x, torch.arange(len(x)), batch_size, generator=generator):
        probe(xb)
    return counts[0] / counts[1]


@dataclass
class GhostResult:
    """Per virtual batch size (None = plain BN on the whole batch): final test and train
    accuracies over seeds, and the seconds each run took (they vary from run to run)."""

    batch_size: int
    test: dict[int | None, list[float]] = field(default_factory=dict)
    train: dict[int | None, list[float]] = field(default_factory=dict)
    seconds: dict[int | None, list[float]] = field(default_factory=dict)

    def mean(self, virtual: int | None, which: str = "test") -> float:
        return statistics.fmean(getattr(self, which)[virtual])


def ghost_runs(data: Dataset, batch_size: int = 128, virtual_batch_sizes=(None, 32, 8),
               seeds=(0, 1, 2), epochs: int = 3, **train_kwargs) -> GhostResult:
    """BN at `batch_size` (virtual size None) against Ghost BN with each virtual batch size,
    same seeds, epochs and learning rate."""
    from bncourse.train import accuracy

    result = GhostResult(batch_size)
    for virtual in virtual_batch_sizes:
        for store in (result.test, result.train, result.seconds):
            store[virtual] = []
        for seed in seeds:
            start = time.perf_counter()
            norm = "BN" if virtual is None else "GBN"
            model, history = train_one(norm, data, batch_size, seed, epochs,
                                       virtual_batch_size=virtual, **train_kwargs)
            result.seconds[virtual].append(time.perf_counter() - start)
            result.test[virtual].append(history.final_accuracy)
            result.train[virtual].append(accuracy(model, data.x_train, data.y_train))
    return result
