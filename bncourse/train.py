"""Small reusable training loops that return a `History` (lessons 01 onwards).

Helpers stay quiet: nothing prints unless `progress=True` (a tqdm bar, which notebooks tag
`nbval-ignore-output`); the notebook prints rounded results and asserts them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bncourse.data import Dataset, iterate_minibatches
from bncourse.models import mlp  # re-exported: lessons 01, 04 and 05 import it from here

__all__ = ["History", "Step", "accuracy", "train_classifier", "mlp"]


@dataclass
class History:
    """What a training run measured.

    steps: the step numbers at which the test set was evaluated.
    train_loss: mean training loss over the steps since the previous evaluation.
    test_accuracy: fraction of the test set classified correctly at each evaluated step.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1]

    @property
    def best_accuracy(self) -> float:
        return max(self.test_accuracy)

    def steps_to(self, accuracy: float) -> int | None:
        """First evaluated step with test accuracy >= `accuracy`, or None if never reached."""
        for step, acc in zip(self.steps, self.test_accuracy):
            if acc >= accuracy:
                return step
        return None


@dataclass
class Step:
    """The training loop's state after an optimisation step, passed to `step_callback`.

    step: the step number (1-based); model; loss: that step's training loss (a float);
    optimizer; batch: the `(x, y)` mini-batch the step used (lesson 07 probes it).
    """

    step: int
    model: nn.Module
    loss: float
    optimizer: torch.optim.Optimizer
    batch: tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of `x` that `model` classifies as `y`, in eval mode (restores the mode after)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        correct += (logits.argmax(dim=1) == y[start:start + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(x)


def train_classifier(model: nn.Module, data: Dataset, *, steps: int, batch_size: int = 60,
                     lr: float = 0.1, optimizer: str = "sgd", momentum: float = 0.0,
                     weight_decay: float = 0.0, eval_every: int = 50, seed: int = 0,
                     progress: bool = False, callback=None, step_callback=None) -> History:
    """Train `model` with cross-entropy on `data` for `steps` mini-batches; return a History.

    Batches are drawn in epochs of shuffled data (`drop_last=True`), from a generator seeded
    with `seed`. `callback(step, model)` runs after each optimisation step when given
    (lesson 06 uses it to record activation percentiles); `step_callback(Step(...))` runs
    after it with the step number, model, loss, optimizer and batch (lesson 07's probes).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be at least 1, got {eval_every}")
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")

    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    history = History()
    running, count, step = 0.0, 0, 0
    bar = _progress_bar(steps, progress)
    model.train()
    while step < steps:
        for xb, yb in iterate_minibatches(data.x_train, data.y_train, batch_size, generator=generator):
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_value = loss.item()
            running += loss_value
            count += 1
            if callback is not None:
                callback(step, model)
            if step_callback is not None:
                step_callback(Step(step, model, loss_value, opt, (xb, yb)))
            if bar is not None:
                bar.update(1)
            if step % eval_every == 0 or step == steps:
                history.steps.append(step)
                history.train_loss.append(running / count)
                history.test_accuracy.append(accuracy(model, data.x_test, data.y_test))
                running, count = 0.0, 0
            if step == steps:
                break
    if bar is not None:
        bar.close()
    return history


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", leave=False)
