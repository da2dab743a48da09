"""Case study 06: Ioffe & Szegedy 2015 in miniature (Figure 1 and the Inception table).

    PercentileTracker   the 15/50/85th percentiles of one unit's input over training (Fig. 1b, c)
    fig1_runs           the 3x100 sigmoid MLP, batch 60, with and without BN, over seeds
    table1_runs         the Inception-style CNN as Baseline, BN-Baseline, BN-x5, BN-x30, BN-x5-Sigmoid
    summarise           steps to a target accuracy and best accuracy per variant, mean and spread
    placement_runs      BN before vs after the nonlinearity; bias_runs: the bias before BN

Every run is `bncourse.train.train_classifier` with the course's own `bncourse.nn` BN layers;
`progress=True` shows a tqdm bar per run (tag such cells `nbval-ignore-output`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.data import Dataset
from bncourse.models import inception_cnn, mlp
from bncourse.train import History, train_classifier

__all__ = ["PAPER", "ACTIVATIONS", "PercentileTracker", "last_activation", "Run", "fig1_runs", "TABLE1_VARIANTS",
           "table1_runs", "summarise", "ratio", "placement_runs", "bias_runs"]

# Ioffe & Szegedy 2015: section 4.2.2 and the table of its Figure 3 (single network, ImageNet
# validation, top-1), section 4.2.3 for the ensemble. Only figures we can point at.
PAPER = {
    "Inception": "72.2% max accuracy, reached in 31.0M steps",
    "BN-x5": "reaches 72.2% in 2.1M steps (about 14x fewer than Inception)",
    "BN-x30": "reaches 74.8% max accuracy",
    "ensemble": "4.9% top-5 validation error (4.8% test)",
}

ACTIVATIONS = (nn.Sigmoid, nn.ReLU, nn.Tanh)


class PercentileTracker:
    """Record the 15/50/85th percentiles of one unit's input to a nonlinearity during training.

    `module` is the nonlinearity (e.g. the last hidden `nn.Sigmoid`); its input column `unit`
    is recorded on `probe` (a fixed `(M, D)` batch, e.g. the test inputs) every `every` steps,
    in eval mode, so the probe does not touch BN's running statistics. Use it as
    `train_classifier(..., callback=tracker)`; `tracker.record(0, model)` gives the start.
    steps: `(T,)`; values: `(T, len(percentiles))`.
    """

    def __init__(self, module: nn.Module, probe: torch.Tensor, unit: int = 0, every: int = 10,
                 percentiles: tuple[float, ...] = (15, 50, 85)) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module (the nonlinearity), got {module!r}")
        if not isinstance(probe, torch.Tensor) or probe.ndim < 2 or len(probe) < 2:
            raise ValueError("probe must be a tensor of at least 2 examples, shape (M, D, ...), "
                             f"got {getattr(probe, 'shape', type(probe).__name__)}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.module, self.probe, self.unit, self.every = module, probe, unit, every
        self.percentiles = tuple(percentiles)
        self.steps: list[int] = []
        self._values: list[np.ndarray] = []

    @property
    def values(self) -> np.ndarray:
        return np.array(self._values).reshape(-1, len(self.percentiles))

    @torch.no_grad()
    def record(self, step: int, model: nn.Module) -> None:
        seen = []
        hook = self.module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        was_training = model.training
        model.eval()
        try:
            model(self.probe)
        finally:
            hook.remove()
            model.train(was_training)
        if not seen:
            raise ValueError("module never ran on the probe: pass a module of this model")
        z = seen[0].reshape(len(self.probe), seen[0].shape[1], -1)[:, self.unit].flatten()
        self.steps.append(step)
        self._values.append(np.percentile(z.double().numpy(), self.percentiles))

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every == 0:
            self.record(step, model)

    def median_range(self) -> float:
        """max - min of the median over the recorded steps: how far the median drifted."""
        median = self.values[:, list(self.percentiles).index(50)]
        return float(median.max() - median.min())


def last_activation(model: nn.Module) -> nn.Module:
    """The last nonlinearity module (Sigmoid, ReLU or Tanh) of `model`."""
    found = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    if not found:
        raise ValueError("model has no Sigmoid/ReLU/Tanh module to track")
    return found[-1]


@dataclass
class Run:
    """One training run: its variant name, seed, History and (optionally) percentile tracker."""

    name: str
    seed: int
    history: History
    tracker: PercentileTracker | None = None
    extra: dict = field(default_factory=dict)


def _check_seeds(seeds) -> list[int]:
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    return seeds


def fig1_runs(data: Dataset, seeds=(0, 1, 2), steps: int = 3000, lr: float = 0.5,
              batch_size: int = 60, eval_every: int = 25, track_every: int = 20,
              hidden: tuple[int, ...] = (100, 100, 100),
              progress: bool = False) -> dict[str, list[Run]]:
    """Figure 1: the sigmoid MLP `[D, *hidden, C]` without ("Without BN") and with ("With BN")
    `bncourse.nn.BatchNorm1d`, the same seed, lr and batch per pair; each run tracks the
    input of unit 0 of the last hidden sigmoid on the test inputs. Plain SGD, as in the paper.
    """
    seeds = _check_seeds(seeds)
    if data.x_train.ndim != 2:
        raise ValueError(f"data must have flat inputs (N, D) for the MLP, got "
                         f"{tuple(data.x_train.shape)}")
    sizes = [data.x_train.shape[1], *hidden, data.num_classes]
    runs: dict[str, list[Run]] = {"Without BN": [], "With BN": []}
    for name, norm in (("Without BN", None), ("With BN", bnn.BatchNorm1d)):
        for seed in seeds:
            torch.manual_seed(seed)
            model = mlp(sizes, activation=nn.Sigmoid, norm=norm)
            tracker = PercentileTracker(last_activation(model), data.x_test, every=track_every)
            tracker.record(0, model)
            history = train_classifier(model, data, steps=steps, batch_size=batch_size, lr=lr,
                                       eval_every=eval_every, seed=seed, callback=tracker,
                                       progress=progress)
            runs[name].append(Run(name, seed, history, tracker))
    return runs


# name -> (BN?, nonlinearity, learning-rate multiple): Ioffe & Szegedy 2015, section 4.2.1.
TABLE1_VARIANTS = {
    "Baseline": (False, nn.ReLU, 1),
    "BN-Baseline": (True, nn.ReLU, 1),
    "BN-x5": (True, nn.ReLU, 5),
    "BN-x30": (True, nn.ReLU, 30),
    "BN-x5-Sigmoid": (True, nn.Sigmoid, 5),
}


def table1_runs(data: Dataset, variants=None, seeds=(0, 1, 2), steps: int = 400,
                base_lr: float = 0.05, momentum: float = 0.9, batch_size: int = 60,
                eval_every: int = 25, stem: int = 8,
                widths=((4, 4, 4, 4), (8, 8, 8, 8)),
                progress: bool = False) -> dict[str, list[Run]]:
    """The Inception table in miniature: `inception_cnn` trained as each variant of `variants`
    (names of `TABLE1_VARIANTS`, or a dict in its format) with lr `base_lr * multiple`, SGD with
    momentum as the paper trained Inception. Each run's `extra["diverged"]` says whether its
    training loss became NaN/inf or ended at chance level (above 2.0 for 10 classes).
    """
    seeds = _check_seeds(seeds)
    if variants is None:
        variants = TABLE1_VARIANTS
    elif not isinstance(variants, dict):
        unknown = [v for v in variants if v not in TABLE1_VARIANTS]
        if unknown:
            raise ValueError(f"variants: unknown {unknown}; known: {list(TABLE1_VARIANTS)}")
        variants = {v: TABLE1_VARIANTS[v] for v in variants}
    if data.x_train.ndim != 4:
        raise ValueError(f"data must be images (N, C, H, W), e.g. load_digits_images(), got "
                         f"{tuple(data.x_train.shape)}")
    runs: dict[str, list[Run]] = {}
    for name, (use_bn, activation, multiple) in variants.items():
        runs[name] = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = inception_cnn(data.x_train.shape[1], data.num_classes, stem=stem,
                                  widths=widths, norm=bnn.BatchNorm2d if use_bn else None,
                                  activation=activation)
            history = train_classifier(model, data, steps=steps, batch_size=batch_size,
                                       lr=base_lr * multiple, momentum=momentum,
                                       eval_every=eval_every, seed=seed, progress=progress)
            last = history.train_loss[-1]
            diverged = not np.isfinite(last) or last > 2.0
            runs[name].append(Run(name, seed, history, extra={"diverged": diverged,
                                                               "lr": base_lr * multiple}))
    return runs


def _mean_std(values) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: dict[str, list[Run]], target: float) -> list[dict]:
    """One row per variant: steps to `target` test accuracy (mean and std over the seeds that
    reached it, with how many did) and best test accuracy (mean, std)."""
    rows = []
    for name, variant_runs in runs.items():
        reached = [r.history.steps_to(target) for r in variant_runs]
        hit = [s for s in reached if s is not None]
        best_mean, best_std = _mean_std(r.history.best_accuracy for r in variant_runs)
        steps_mean, steps_std = _mean_std(hit) if hit else (float("nan"), float("nan"))
        rows.append({"name": name, "steps_mean": steps_mean, "steps_std": steps_std,
                     "reached": len(hit), "runs": len(variant_runs), "steps": reached,
                     "best_mean": best_mean, "best_std": best_std})
    return rows


def ratio(slow: list[Run], fast: list[Run], target: float) -> list[float]:
    """Per seed, steps to `target` of `slow` / steps of `fast` (inf when only `fast` gets there)."""
    out = []
    for a, b in zip(slow, fast):
        sa, sb = a.history.steps_to(target), b.history.steps_to(target)
        if sb is None:
            raise ValueError(f"the fast run (seed {b.seed}) never reached {target}: lower target")
        out.append(float("inf") if sa is None else sa / sb)
    return out


def placement_runs(data: Dataset, seeds=(0, 1, 2), steps: int = 600, lr: float = 0.5,
                   activation: type[nn.Module] = nn.Sigmoid, eval_every: int = 25,
                   hidden: tuple[int, ...] = (100, 100, 100)) -> dict[str, list[Run]]:
    """Where BN goes: the MLP with BN before the nonlinearity (on Wu, as the paper) and after it
    (Linear -> activation -> BN), same seeds and lr."""
    seeds = _check_seeds(seeds)
    sizes = [data.x_train.shape[1], *hidden, data.num_classes]
    runs: dict[str, list[Run]] = {}
    for name, position in (("BN before the nonlinearity", "before"),
                           ("BN after the nonlinearity", "after")):
        runs[name] = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = mlp(sizes, activation=activation, norm=bnn.BatchNorm1d,
                        norm_position=position)
            history = train_classifier(model, data, steps=steps, lr=lr, eval_every=eval_every,
                                       seed=seed)
            runs[name].append(Run(name, seed, history))
    return runs


def bias_runs(data: Dataset, seed: int = 0, steps: int = 300, lr: float = 0.5,
              eval_every: int = 25) -> dict:
    """The bias before BN is redundant: the same BN MLP with and without the Linear biases
    before BN, the shared weights copied, trained on the same batches. Returns both Histories,
    the largest test-accuracy difference, the largest change of any pre-BN bias, and the
    number of parameters saved."""
    sizes = [data.x_train.shape[1], 100, 100, 100, data.num_classes]
    torch.manual_seed(seed)
    without = mlp(sizes, norm=bnn.BatchNorm1d)
    torch.manual_seed(seed)
    with_bias = mlp(sizes, norm=bnn.BatchNorm1d, bias_before_norm=True)
    # The same weights in both (the bias=True layers drew extra random numbers).
    with_bias.load_state_dict(without.state_dict(), strict=False)
    biases = {name: p.detach().clone() for name, p in with_bias.named_parameters()
              if name.endswith("bias") and isinstance(with_bias[int(name.split(".")[0])],
                                                      nn.Linear)
              and int(name.split(".")[0]) < len(with_bias) - 1}
    h_without = train_classifier(without, data, steps=steps, lr=lr, eval_every=eval_every,
                                 seed=seed)
    h_with = train_classifier(with_bias, data, steps=steps, lr=lr, eval_every=eval_every,
                              seed=seed)
    params = dict(with_bias.named_parameters())
    bias_change = max(float((params[n].detach() - b).abs().max()) for n, b in biases.items())
    accuracy_gap = max(abs(a - b) for a, b in zip(h_without.test_accuracy, h_with.test_accuracy))
    saved = sum(b.numel() for b in biases.values())
    return {"without": h_without, "with": h_with, "accuracy_gap": accuracy_gap,
            "bias_change": bias_change, "parameters_saved": saved}
