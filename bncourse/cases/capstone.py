"""The capstone's experiment: a small 1-D CNN on padded variable-length sequences (lesson 12).

`SequenceClassifier(norm)` is Conv1d -> norm -> ReLU -> Conv1d -> norm -> ReLU -> masked mean
over time -> Linear, re-masking after every layer so padded positions stay 0. `norm(C)` makes
a module called as `norm(h, mask)` with h (N, C, L) and mask (N, L): the learner's masked BN,
`Unmasked(BatchNorm1d)` (plain BN, which counts the padding: the bug the capstone is about) or
`NoNorm`. `train_sequence_classifier` trains one with SGD on random mini-batches, each padded to
its own longest sequence, and returns a `History`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from bncourse.data.sequences import PaddedSequences
from bncourse.train import History

__all__ = ["NoNorm", "Unmasked", "SequenceClassifier", "sequence_accuracy",
           "train_sequence_classifier", "recalibrate_sequence_model", "NORMS"]


class NoNorm(nn.Module):
    """The identity, called like a masked norm: `NoNorm(C)(h, mask) == h`."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return h


class Unmasked(nn.Module):
    """A plain norm that ignores the mask, so padded positions enter its statistics."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.norm(h)


class SequenceClassifier(nn.Module):
    """(N, 3, L) padded sequences and their (N, L) mask -> (N, classes) logits."""

    def __init__(self, norm: Callable[[int], nn.Module], channels: int = 16,
                 classes: int = 4, kernel_size: int = 5) -> None:
        super().__init__()
        if not callable(norm):
            raise TypeError(f"norm must be a callable num_features -> module, got "
                            f"{type(norm).__name__}")
        pad = kernel_size // 2
        # No bias before a norm (it would cancel); NoNorm gets one, as a plain CNN would.
        bias = norm is NoNorm
        self.conv1 = nn.Conv1d(3, channels, kernel_size, padding=pad, bias=bias)
        self.norm1 = norm(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad, bias=bias)
        self.norm2 = norm(channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(1).to(x.dtype)  # (N, 1, L)
        h = torch.relu(self.norm1(self.conv1(x) * m, mask)) * m
        h = torch.relu(self.norm2(self.conv2(h) * m, mask)) * m
        pooled = h.sum(-1) / m.sum(-1).clamp(min=1)  # mean over the real positions
        return self.head(pooled)


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "no normalisation": NoNorm,
    "plain BN (counts the padding)": lambda c: Unmasked(nn.BatchNorm1d(c)),
}


@torch.no_grad()
def sequence_accuracy(model: nn.Module, data: PaddedSequences, batch_size: int = 200) -> float:
    """Eval-mode accuracy, in batches each padded to its own longest sequence."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        batch = data[start:start + batch_size]
        correct += (model(batch.x, batch.mask).argmax(1) == batch.y).sum().item()
    model.train(was_training)
    return correct / len(data)


def train_sequence_classifier(norm: Callable[[int], nn.Module], train: PaddedSequences,
                              test: PaddedSequences, steps: int = 300, batch_size: int = 32,
                              lr: float = 0.01, seed: int = 0,
                              eval_every: int = 50) -> History:
    """Train `SequenceClassifier(norm)` with SGD (momentum 0.9); eval-mode test accuracy every
    `eval_every` steps. Each mini-batch is padded to its own longest sequence. The trained
    model is `history.model`."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive int, got {eval_every!r}")
    torch.manual_seed(seed)
    model = SequenceClassifier(norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    history, losses = History(), []
    for step in range(1, steps + 1):
        batch = train[torch.randint(len(train), (batch_size,), generator=generator)]
        loss = nn.functional.cross_entropy(model(batch.x, batch.mask), batch.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            history.steps.append(step)
            history.train_loss.append(sum(losses) / len(losses))
            history.test_accuracy.append(sequence_accuracy(model, test))
            losses = []
    history.model = model
    return history


@torch.no_grad()
def recalibrate_sequence_model(model: nn.Module, data: PaddedSequences,
                               batch_size: int = 100, pad_to: int | None = None) -> nn.Module:
    """Lesson 05's recalibration for a model whose norms take a mask: reset every BN's running
    statistics, then average them (momentum=None) over `data` in batches, only the BN layers in
    training mode, through each norm's own forward, so a masked BN counts only the real
    positions. Each batch counts once, whatever its number of real positions. Batches are padded
    to their own longest sequence, or to `pad_to` positions (a pipeline with a fixed length). In
    place; returns `model` in eval mode."""
    from bncourse.nn import is_batchnorm

    norms = [m for m in model.modules() if is_batchnorm(m) and m.track_running_stats]
    if not norms:
        raise ValueError("model has no BN layer with running statistics to recalibrate")
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, len(data), batch_size):
        batch = data[start:start + batch_size]
        if pad_to is not None:
            batch = batch.pad_to(pad_to)
        model(batch.x, batch.mask)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
