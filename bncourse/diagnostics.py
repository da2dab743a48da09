"""Per-layer diagnostics for deep nets: what lesson 01 measures, and later lessons reuse.

Four measurements, each per layer, in the order the layers run:

- activation statistics and histograms, recorded by forward hooks (`ActivationRecorder`);
- saturation: the fraction of sigmoid outputs below 0.05 or above 0.95, where the sigmoid's
  slope s(1 - s) is under 0.0475, a fifth of its value 0.25 at 0 (`saturation_fraction`);
- gradient norms ||dL/dW||_F of each weight matrix (`gradient_norms`), and the
  gradient-to-data ratio ||dL/dW|| / ||W|| (`gradient_to_data_ratios`);
- the update-to-data ratio ||lr * dL/dW|| / ||W||: how far one plain SGD step moves each weight
  matrix, relative to its size (`update_to_data_ratios`). Karpathy's makemore lectures plot its
  log10 during training; around -3 is a common rule of thumb.

`probe_layers` takes all of them on one batch without touching the model, and `TrainingMonitor`
is a `bncourse.train.train_classifier` callback that records them during training.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = [
    "ActivationRecorder",
    "saturation_fraction",
    "ActivationStatistics",
    "activation_statistics",
    "gradient_norms",
    "gradient_to_data_ratios",
    "update_to_data_ratios",
    "LayerProbe",
    "probe_layers",
    "TrainingMonitor",
]


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_module_type(module_type, argument: str) -> None:
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"{argument} must be a torch.nn.Module subclass such as nn.Sigmoid or nn.Linear, "
            f"got {module_type!r}"
        )


def _modules_of_type(model: nn.Module, module_type: type, argument: str) -> dict[str, nn.Module]:
    """The model's submodules of `module_type`, by qualified name, in registration order."""
    _check_model(model)
    _check_module_type(module_type, argument)
    found = {name: m for name, m in model.named_modules() if isinstance(m, module_type)}
    if not found:
        raise ValueError(f"model has no {module_type.__name__} modules (the {argument} given)")
    return found


class ActivationRecorder:
    """Record the output of every `module_type` module of `model` on each forward call.

    A context manager: hooks are registered on entry and removed on exit.

        with ActivationRecorder(model, nn.Sigmoid) as recorder:
            model(x)
        recorder.activations  # {module name: (N, F) tensor}, detached, in layer order

    Only the most recent forward call is kept. Lesson 01.
    """

    def __init__(self, model: nn.Module, module_type: type = nn.Sigmoid) -> None:
        self.modules = _modules_of_type(model, module_type, "module_type")
        self.activations: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.activations[name] = output.detach()

        return hook

    def __enter__(self) -> "ActivationRecorder":
        if self._handles:
            raise RuntimeError("this ActivationRecorder is already recording")
        self.activations = {}
        self._handles = [m.register_forward_hook(self._hook(name))
                         for name, m in self.modules.items()]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        # Layer order, whatever order the hooks fired in.
        self.activations = {name: self.activations[name] for name in self.modules
                            if name in self.activations}


def _as_tensor(activations, argument: str = "activations") -> torch.Tensor:
    if isinstance(activations, np.ndarray):
        activations = torch.from_numpy(activations)
    if not isinstance(activations, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor or numpy.ndarray, "
                        f"got {type(activations).__name__}")
    if activations.numel() == 0:
        raise ValueError(f"{argument} is empty (shape {tuple(activations.shape)})")
    if not activations.is_floating_point():
        raise TypeError(f"{argument} must hold floating-point values, got {activations.dtype}")
    return activations


def saturation_fraction(activations, low: float = 0.05, high: float = 0.95) -> float:
    """Fraction of entries with `a < low` or `a > high`: the saturated sigmoid outputs.

    activations: any shape, e.g. `(N, F)` sigmoid outputs of one layer for a batch.
    Below 0.05 or above 0.95 the sigmoid's slope s(1 - s) is under 0.0475, less than a fifth of
    its maximum 0.25, so little gradient flows back through the unit. Lesson 01.
    """
    a = _as_tensor(activations)
    if not low < high:
        raise ValueError(f"low must be smaller than high, got low={low}, high={high}")
    return ((a < low) | (a > high)).double().mean().item()


@dataclass(frozen=True)
class ActivationStatistics:
    """Mean, standard deviation and saturation fraction of one layer's activations."""

    mean: float
    std: float
    saturation: float


def activation_statistics(activations, low: float = 0.05,
                          high: float = 0.95) -> ActivationStatistics:
    """Mean and standard deviation over all entries, and `saturation_fraction(low, high)`.

    activations: any shape with at least two entries, e.g. `(N, F)`. Lesson 01.
    """
    a = _as_tensor(activations)
    if a.numel() < 2:
        raise ValueError("activations needs at least two entries for a standard deviation")
    a = a.double()
    return ActivationStatistics(mean=a.mean().item(), std=a.std().item(),
                                saturation=saturation_fraction(a, low, high))


def _weights_with_grad(model: nn.Module, module_type: type) -> dict[str, nn.Parameter]:
    weights = {}
    for name, m in _modules_of_type(model, module_type, "module_type").items():
        weight = getattr(m, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"module {name!r} ({type(m).__name__}) has no weight tensor")
        if weight.grad is None:
            raise ValueError(f"the weight of module {name!r} has no gradient: "
                             f"call loss.backward() before measuring gradients")
        weights[name] = weight
    return weights


def gradient_norms(model: nn.Module, module_type: type = nn.Linear) -> dict[str, float]:
    """||dL/dW||_F for the weight W of every `module_type` module, after `loss.backward()`.

    Returns `{module name: norm}` in layer order. Lesson 01 (vanishing gradients).
    """
    return {name: w.grad.detach().double().norm().item()
            for name, w in _weights_with_grad(model, module_type).items()}


def gradient_to_data_ratios(model: nn.Module, module_type: type = nn.Linear) -> dict[str, float]:
    """||dL/dW||_F / ||W||_F for every `module_type` module's weight, after `loss.backward()`.

    Independent of the learning rate; `update_to_data_ratios` is `lr` times it. Lesson 01.
    """
    ratios = {}
    for name, w in _weights_with_grad(model, module_type).items():
        ratios[name] = (w.grad.detach().double().norm() / w.detach().double().norm()).item()
    return ratios


def update_to_data_ratios(model: nn.Module, lr: float,
                          module_type: type = nn.Linear) -> dict[str, float]:
    """||lr * dL/dW||_F / ||W||_F: the relative size of one plain SGD step on each weight.

    Karpathy's makemore lectures plot the log10 of this ratio (as a ratio of standard
    deviations); values far below -3 mean a layer barely learns, far above mean it thrashes.
    With momentum or Adam the real step differs; this is the plain-SGD step. Lesson 01.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"lr must be a number, got {type(lr).__name__}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return {name: lr * r for name, r in gradient_to_data_ratios(model, module_type).items()}


@dataclass
class LayerProbe:
    """What `probe_layers` measured on one batch, each a dict keyed by module name in layer order.

    activations: `(N, F)` outputs of each activation module (detached).
    statistics: `ActivationStatistics` of each of them.
    gradient_norms: ||dL/dW||_F of each weight layer; gradient_to_data: ||dL/dW|| / ||W||.
    """

    activations: dict[str, torch.Tensor]
    statistics: dict[str, ActivationStatistics]
    gradient_norms: dict[str, float]
    gradient_to_data: dict[str, float]

    @property
    def saturation(self) -> dict[str, float]:
        return {name: s.saturation for name, s in self.statistics.items()}

    def table(self) -> str:
        """One row per layer: activation mean, std, saturation % and ||dL/dW||, rounded.

        Row i pairs the i-th activation module with the i-th weight layer (in an MLP, the Linear
        that feeds it); the output layer, with no activation after it, shows dashes.
        """
        stats = list(self.statistics.values())
        norms = list(self.gradient_norms.values())
        lines = [f"{'layer':>5}  {'act mean':>8}  {'act std':>7}  {'saturated':>9}  {'|dL/dW|':>8}"]
        for i in range(max(len(stats), len(norms))):
            s = stats[i] if i < len(stats) else None
            cells = (f"{s.mean:8.3f}  {s.std:7.3f}  {100 * s.saturation:8.1f}%" if s is not None
                     else f"{'-':>8}  {'-':>7}  {'-':>9}")
            norm = f"{norms[i]:8.1e}" if i < len(norms) else f"{'-':>8}"
            lines.append(f"{i + 1:>5}  {cells}  {norm}")
        return "\n".join(lines)


def probe_layers(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 activation_type: type = nn.Sigmoid, layer_type: type = nn.Linear,
                 loss_fn=nn.functional.cross_entropy) -> LayerProbe:
    """One forward and backward pass on `(x, y)`, measuring every layer, on a copy of `model`.

    x: `(N, D)` inputs; y: `(N,)` targets for `loss_fn(model(x), y)`. The pass runs in training
    mode (BN uses the batch's statistics, as during training) on a deep copy, so the model's
    parameters, gradients and running statistics are left exactly as they were. Lesson 01.
    """
    _check_model(model)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be torch.Tensors, "
                        f"got {type(x).__name__} and {type(y).__name__}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same number of rows, got {len(x)} and {len(y)}")
    _modules_of_type(model, activation_type, "activation_type")  # errors name the argument
    _modules_of_type(model, layer_type, "layer_type")
    clone = copy.deepcopy(model)
    clone.train()
    clone.zero_grad(set_to_none=True)
    with ActivationRecorder(clone, activation_type) as recorder:
        loss = loss_fn(clone(x), y)
    loss.backward()
    return LayerProbe(
        activations=recorder.activations,
        statistics={name: activation_statistics(a) for name, a in recorder.activations.items()},
        gradient_norms=gradient_norms(clone, layer_type),
        gradient_to_data=gradient_to_data_ratios(clone, layer_type),
    )


@dataclass
class TrainingMonitor:
    """A `train_classifier` callback that records per-layer diagnostics every `every` steps.

        monitor = TrainingMonitor(x_probe, y_probe, lr=0.5, every=50)
        train_classifier(model, data, steps=..., lr=0.5, callback=monitor)
        monitor.steps, monitor.saturation["5"], monitor.update_to_data["0"], ...

    update_to_data: `update_to_data_ratios(model, lr)` from the gradients of the mini-batch the
    optimiser just used (so ||lr g_t|| / ||W_(t+1)||). activation_mean, saturation and
    gradient_norms: from `probe_layers` on the fixed probe batch `(x, y)`, which leaves the
    model untouched.
    Each dict maps a module name to a list with one value per recorded step. Lesson 01.
    """

    x: torch.Tensor
    y: torch.Tensor
    lr: float
    every: int = 50
    activation_type: type = nn.Sigmoid
    layer_type: type = nn.Linear
    steps: list[int] = field(default_factory=list)
    activation_mean: dict[str, list[float]] = field(default_factory=dict)
    saturation: dict[str, list[float]] = field(default_factory=dict)
    gradient_norms: dict[str, list[float]] = field(default_factory=dict)
    update_to_data: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int):
            raise TypeError(f"every must be an int, got {type(self.every).__name__}")
        if self.every < 1:
            raise ValueError(f"every must be at least 1, got {self.every}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)):
            raise TypeError(f"lr must be a number, got {type(self.lr).__name__}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every:
            return
        updates = update_to_data_ratios(model, self.lr, self.layer_type)
        probe = probe_layers(model, self.x, self.y, activation_type=self.activation_type,
                             layer_type=self.layer_type)
        self.steps.append(step)
        for record, values in ((self.update_to_data, updates),
                               (self.activation_mean,
                                {name: s.mean for name, s in probe.statistics.items()}),
                               (self.saturation, probe.saturation),
                               (self.gradient_norms, probe.gradient_norms)):
            for name, value in values.items():
                record.setdefault(name, []).append(value)
