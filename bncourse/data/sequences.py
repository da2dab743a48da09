"""Padded batches of variable-length sequences, generated (lesson 12, the capstone).

Each sequence has a class `y` in 0..3 and a length drawn from `[min_length, max_length]`; its
`C = 3` channels are a class-specific wave plus noise, on a large constant offset (the raw
signal of a sensor, or an embedding far from 0):

    x[c, t] = offset + amplitude * sin(2 pi f_y t / 8 + phase_c) + noise,   t < length,

with frequencies f_y = 1, 1.5, 2, 3 cycles per 8 steps. Positions at and after `length` are
padding: 0 in `x` and False in `mask`, as a collate function that pads to the longest sequence
makes them. The offset is what makes padding dangerous for plain BN: the zeros are far from
every real value, so counting them moves the statistics a long way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PaddedSequences", "padded_sequences", "sequence_split"]

_FREQUENCIES = (1.0, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class PaddedSequences:
    """x: (N, C, L) float32, 0 at padded positions; mask: (N, L) bool, True at real positions;
    y: (N,) int64 class labels; lengths: (N,) int64."""

    x: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index) -> "PaddedSequences":
        """A subset, trimmed to its own longest sequence (as a collate function pads)."""
        lengths = self.lengths[index]
        longest = max(int(lengths.max()), 1) if len(lengths) else 1
        return PaddedSequences(self.x[index][..., :longest], self.mask[index][:, :longest],
                               self.y[index], lengths)

    def pad_to(self, length: int) -> "PaddedSequences":
        """The same sequences with more padding, to `length` positions."""
        if not isinstance(length, int) or length < self.x.shape[-1]:
            raise ValueError(f"length must be an int >= the current length {self.x.shape[-1]}, "
                             f"got {length!r}")
        extra = length - self.x.shape[-1]
        return PaddedSequences(torch.nn.functional.pad(self.x, (0, extra)),
                               torch.nn.functional.pad(self.mask, (0, extra)), self.y,
                               self.lengths)


def padded_sequences(n: int, seed: int = 0, min_length: int = 2, max_length: int = 32,
                     offset: float = 4.0, amplitude: float = 1.0,
                     noise: float = 0.5) -> PaddedSequences:
    """`n` sequences with balanced classes, lengths uniform in [min_length, max_length], padded
    to `max_length`. Deterministic for a seed (NumPy's generator, then float32 tensors)."""
    for name, value in (("n", n), ("min_length", min_length), ("max_length", max_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if min_length > max_length:
        raise ValueError(f"min_length ({min_length}) must be <= max_length ({max_length})")
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % len(_FREQUENCIES))
    lengths = rng.integers(min_length, max_length + 1, size=n)
    t = np.arange(max_length)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)) + np.array([0.0, 2.0, 4.0])[None, :, None]
    frequency = np.asarray(_FREQUENCIES)[y][:, None, None]
    x = (offset + amplitude * np.sin(2 * np.pi * frequency * t / 8 + phase)
         + noise * rng.standard_normal((n, 3, max_length)))
    mask = t[None, :] < lengths[:, None]
    x = np.where(mask[:, None, :], x, 0.0)
    return PaddedSequences(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(mask),
                           torch.from_numpy(y.astype(np.int64)),
                           torch.from_numpy(lengths.astype(np.int64)))


def sequence_split(n_train: int = 1200, n_test: int = 400, seed: int = 0,
                   **kwargs) -> tuple[PaddedSequences, PaddedSequences]:
    """A train and a test set drawn independently (seeds `seed` and `seed + 1000`)."""
    return (padded_sequences(n_train, seed=seed, **kwargs),
            padded_sequences(n_test, seed=seed + 1000, **kwargs))
