"""Case study 08: measurements of where batch statistics in a recurrent net hurt.

- `gradient_by_step`: the norm of dL/dh_t reaching each time step t from the loss at the last
  step (Cooijmans et al. 2017's argument for gamma = 0.1: unit-variance pre-activations
  saturate tanh and the sigmoids, and the gradient vanishes back through time).
- `bpc_by_position`: bits per character at each position of sequences longer than those
  trained on (a BN cell reuses the last step's statistics beyond `max_length`).
- `bpc_streamed`: the same windows read as consecutive chunks with the state carried over, as a
  stream longer than the training windows is read at inference: chunk position 0 then meets a
  non-zero h while its statistics were estimated with h = 0.
- `bpc_by_batch_size`: held-out bpc with batch statistics (train mode) at several batch sizes.
- `padding_shift`: how much the predictions for the *full-length* sequences of a batch change
  when the other sequences are shortened and zero-padded (padding enters per-step statistics).
- `recalibrate`: population statistics recomputed as a plain average over given batches, with
  or without padding in them.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from bncourse.nn.stepwise import StepwiseBatchNorm

__all__ = ["gradient_by_step", "bpc_by_position", "bpc_streamed", "bpc_by_batch_size", "padding_shift",
           "pad_batch", "recalibrate"]


def gradient_by_step(model, x, y, train_mode: bool = True) -> torch.Tensor:
    """`(T,)` norms ||dL/dh_t|| for L the cross-entropy of the last step's prediction.

    x, y: `(T, N)` ids. The model is used in train mode by default (batch statistics, the
    situation of training) on a copy, so its running statistics are untouched.
    """
    model = copy.deepcopy(model).train(train_mode)
    cell = model.cell
    e = model.embed(x)
    hx = cell._check(e[0], None)
    terms = cell.input_terms(e)
    hs = []
    for t in range(x.shape[0]):
        hx = cell.step(terms[t], hx, t)
        hx[0].retain_grad()
        hs.append(hx[0])
    loss = F.cross_entropy(model.head(hs[-1]), y[-1])
    loss.backward()
    return torch.stack([h.grad.norm() for h in hs]).detach()


@torch.no_grad()
def bpc_by_position(model, ids: torch.Tensor, length: int, batch_size: int = 32,
                    n_batches: int = 2) -> torch.Tensor:
    """`(length,)` bits per character at each position of `length`-long held-out windows,
    in eval mode, averaged over `n_batches * batch_size` windows (the start of `ids`)."""
    from bncourse.data.text import sequential_batches

    was_training = model.training
    model.eval()
    total = torch.zeros(length)
    count = 0
    for x, y in sequential_batches(ids, batch_size, length, n_batches):
        logits, _ = model(x)
        nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                               reduction="none").view(length, -1)
        total += nats.sum(1)
        count += x.shape[1]
    model.train(was_training)
    return total / count / math.log(2)


@torch.no_grad()
def bpc_streamed(model, ids: torch.Tensor, length: int, chunk: int, batch_size: int = 32,
                 n_batches: int = 2) -> torch.Tensor:
    """`(length,)` bits per character like `bpc_by_position`, but each window is read as
    `length // chunk` chunks of `chunk` steps, carrying `(h, c)` from one to the next (time
    steps restart at 0 in every chunk). A plain or LN cell computes exactly the same thing."""
    from bncourse.data.text import sequential_batches

    if length % chunk:
        raise ValueError(f"chunk must divide length, got length={length}, chunk={chunk}")
    was_training = model.training
    model.eval()
    total = torch.zeros(length)
    count = 0
    for x, y in sequential_batches(ids, batch_size, length, n_batches):
        hx, nats = None, []
        for a in range(0, length, chunk):
            logits, hx = model(x[a:a + chunk], hx)
            nats.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                        y[a:a + chunk].reshape(-1), reduction="none"))
        total += torch.cat(nats).view(length, -1).sum(1)
        count += x.shape[1]
    model.train(was_training)
    return total / count / math.log(2)


@torch.no_grad()
def bpc_by_batch_size(model, batches, batch_sizes) -> dict:
    """{batch size: held-out bpc in train mode} (batch statistics), and {0: eval-mode bpc}.

    Each `(T, N)` batch of `batches` is split into groups of `batch_size` sequences, each
    normalised with its own statistics. Runs on a copy: running statistics stay untouched.
    """
    from bncourse.cases.charlm import evaluate_bpc

    result = {0: evaluate_bpc(model, batches)}
    for size in batch_sizes:
        if size < 2 or any(x.shape[1] % size for x, _ in batches):
            raise ValueError(f"batch_sizes must be >= 2 and divide the batch, got {size}")
        groups = [(x[:, i:i + size], y[:, i:i + size]) for x, y in batches
                  for i in range(0, x.shape[1], size)]
        result[size] = evaluate_bpc(model, groups, train_mode=True)
    return result


def pad_batch(x: torch.Tensor, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """`(T, N)` ids -> the same ids and a `(T, N)` mask, 0 at and beyond `lengths[n]`."""
    T, N = x.shape
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (N,) or (lengths < 1).any() or (lengths > T).any():
        raise ValueError(f"lengths must be N={N} values in 1..T={T}, got {lengths.tolist()}")
    mask = (torch.arange(T)[:, None] < lengths[None, :]).to(torch.float32)
    return x, mask


@torch.no_grad()
def padding_shift(model, x, y, lengths, train_mode: bool = True) -> float:
    """Mean |change| in bpc of the full-length sequences when the others are padded.

    x, y: `(T, N)`; lengths: `(N,)`, T for the sequences measured, shorter for the others,
    whose positions beyond their length are zero-padded (embedding 0). Train mode by default
    (batch statistics), on a copy. LayerNorm gives 0 up to rounding; BN does not.
    """
    model = copy.deepcopy(model).train(train_mode)
    T = x.shape[0]
    lengths = torch.as_tensor(lengths)
    full = lengths == T
    if not full.any() or full.all():
        raise ValueError("lengths must hold some full-length (T) and some shorter sequences")
    clean, _ = model(x)
    padded, _ = model(x, pad_mask=pad_batch(x, lengths)[1])

    def bpc(logits):
        return F.cross_entropy(logits[:, full].reshape(-1, logits.shape[-1]),
                               y[:, full].reshape(-1), reduction="none") / math.log(2)

    return (bpc(padded) - bpc(clean)).abs().mean().item()


@torch.no_grad()
def recalibrate(model, batches, lengths=None):
    """A copy of `model` whose per-step statistics are the plain average over `batches`.

    lengths: None, or for each batch the `(N,)` lengths to pad it to (zero embedding beyond),
    as a variable-length loader would. The copy is returned in eval mode.
    """
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, StepwiseBatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
    model.train()
    for k, (x, _) in enumerate(batches):
        for m in norms:
            m.momentum = 1.0 / (k + 1)  # a cumulative average, as torch's momentum=None
        mask = None if lengths is None else pad_batch(x, lengths[k])[1]
        model(x, pad_mask=mask)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
