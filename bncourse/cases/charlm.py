"""Case study 08: character language models, LSTM vs BN-LSTM vs LN-LSTM.

`CharLM` = embedding -> one LSTM cell run over time (`bncourse.nn.run_cell`) -> linear read-out.
`train_charlm` trains one with Adam and gradient clipping (Cooijmans et al. 2017 on character
Penn Treebank: Adam 0.002, clip 1.0) and records bits per character on held-out text against
step. `sample` generates text, deterministic under a seed. The measurements of where batch
statistics hurt live in `bncourse.cases.charlm_failures`.

Bits per character = cross-entropy in nats / ln 2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bncourse.data.text import CharCorpus, random_batch, sequential_batches
from bncourse.nn.recurrent import BNLSTMCell, LNLSTMCell, LSTMCell, run_cell

__all__ = ["KINDS", "CharLM", "CharLMHistory", "make_charlm", "train_charlm", "evaluate_bpc",
           "sample", "valid_batches", "plot_bpc", "train_many"]

KINDS = ("lstm", "bn", "ln")
LABELS = {"lstm": "LSTM", "bn": "BN-LSTM", "ln": "LN-LSTM"}


class CharLM(nn.Module):
    """A character language model: `forward(x, hx=None, pad_mask=None) -> (logits, hx)`.

    x: `(T, N)` int64 ids; logits: `(T, N, vocab_size)`. `pad_mask` `(T, N)` (1 real, 0 padding)
    zeroes the embedding of padded positions, as a padded variable-length batch would.
    """

    def __init__(self, vocab_size: int, cell: nn.Module, embed_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.cell = cell
        self.head = nn.Linear(cell.hidden_size, vocab_size)

    def forward(self, x: Tensor, hx=None, pad_mask: Tensor | None = None):
        e = self.embed(x)  # (T, N, E)
        if pad_mask is not None:
            e = e * pad_mask.unsqueeze(-1).to(e.dtype)
        out, hx = run_cell(self.cell, e, hx)  # (T, N, H)
        return self.head(out), hx


def make_charlm(kind: str, vocab_size: int, *, hidden_size: int = 128, embed_size: int = 32,
                max_length: int = 50, gamma_init: float = 0.1, seed: int = 0) -> CharLM:
    """A `CharLM` with a plain (`"lstm"`), BN (`"bn"`) or LN (`"ln"`) cell, seeded.

    The embedding and the two weight matrices are drawn in the same order for every kind, so
    one seed gives the three models the same initial weights where they share them.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    torch.manual_seed(seed)
    embed = nn.Embedding(vocab_size, embed_size)
    if kind == "lstm":
        cell = LSTMCell(embed_size, hidden_size)
    elif kind == "bn":
        cell = BNLSTMCell(embed_size, hidden_size, max_length=max_length, gamma_init=gamma_init)
    else:
        cell = LNLSTMCell(embed_size, hidden_size)
    model = CharLM(vocab_size, cell, embed_size)
    model.embed = embed
    return model


@dataclass
class CharLMHistory:
    """steps: evaluated steps; train_bpc: mean training bpc since the previous evaluation;
    valid_bpc: bits per character on the held-out batches at each evaluated step."""

    steps: list[int] = field(default_factory=list)
    train_bpc: list[float] = field(default_factory=list)
    valid_bpc: list[float] = field(default_factory=list)

    @property
    def final_bpc(self) -> float:
        return self.valid_bpc[-1]

    def steps_to(self, bpc: float) -> int | None:
        """First evaluated step with held-out bpc <= `bpc`, or None if never reached."""
        return next((s for s, b in zip(self.steps, self.valid_bpc) if b <= bpc), None)


def valid_batches(corpus: CharCorpus, batch_size: int = 32, length: int = 50,
                  max_batches: int = 4):
    """The fixed held-out batches every evaluation uses (the start of the validation split)."""
    return sequential_batches(corpus.valid, batch_size, length, max_batches)


def _bpc(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction=reduction)
    return nats / math.log(2)


@torch.no_grad()
def evaluate_bpc(model: CharLM, batches, train_mode: bool = False) -> float:
    """Mean bits per character of `model` on `batches` (pairs of `(T, N)` inputs, targets).

    Eval mode by default (running statistics); `train_mode=True` normalises with each batch's
    own statistics, on a copy so the running statistics of `model` stay untouched.
    """
    was_training = model.training
    if train_mode:
        import copy

        model = copy.deepcopy(model)
    model.train(train_mode)
    total, count = 0.0, 0
    for x, y in batches:
        logits, _ = model(x)
        total += _bpc(logits, y, "sum").item()
        count += y.numel()
    if not train_mode:
        model.train(was_training)
    return total / count


def train_charlm(model: CharLM, corpus: CharCorpus, *, steps: int, seed: int = 0,
                 batch_size: int = 32, length: int = 50, lr: float = 2e-3, clip: float = 1.0,
                 eval_every: int = 25, eval_batches=None, progress: bool = False) -> CharLMHistory:
    """Train `model` on random windows of `corpus.train` for `steps` Adam steps.

    Gradients are clipped to norm `clip`. Batches come from a generator seeded with `seed`, so
    models trained with one seed see the same text. Returns a `CharLMHistory` evaluated every
    `eval_every` steps on `eval_batches` (default `valid_batches(corpus)`), in eval mode.
    """
    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be at least 1, got {steps}, {eval_every}")
    eval_batches = valid_batches(corpus) if eval_batches is None else eval_batches
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = CharLMHistory()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="training", leave=False)
    running, count = 0.0, 0
    model.train()
    for step in range(1, steps + 1):
        x, y = random_batch(corpus.train, batch_size, length, generator)
        logits, _ = model(x)
        loss = _bpc(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        running += loss.item()
        count += 1
        if bar is not None:
            bar.update(1)
        if step % eval_every == 0 or step == steps:
            history.steps.append(step)
            history.train_bpc.append(running / count)
            history.valid_bpc.append(evaluate_bpc(model, eval_batches))
            running, count = 0.0, 0
    if bar is not None:
        bar.close()
    model.eval()
    return history


def train_many(corpus: CharCorpus, kinds, seeds, *, steps: int, gamma_init: float = 0.1,
               model_kwargs=None, **train_kwargs) -> dict:
    """{kind: [(model, history) for each seed]}: every kind trained with every seed, the same
    initial weights and batches for a given seed (`make_charlm` then `train_charlm`)."""
    model_kwargs = model_kwargs or {}
    runs = {}
    for kind in kinds:
        runs[kind] = []
        for seed in seeds:
            model = make_charlm(kind, corpus.vocab_size, seed=seed, gamma_init=gamma_init,
                                **model_kwargs)
            history = train_charlm(model, corpus, steps=steps, seed=seed, **train_kwargs)
            runs[kind].append((model, history))
    return runs


@torch.no_grad()
def sample(model: CharLM, corpus: CharCorpus, prompt: str, length: int = 200, *,
           seed: int = 0, temperature: float = 0.8) -> str:
    """`prompt` followed by `length` sampled characters, in eval mode, deterministic under `seed`.

    The prompt is read step by step and generation continues the time-step count, so a BN cell
    uses the statistics of each position (beyond `max_length`, those of the last step).
    """
    if not prompt:
        raise ValueError("prompt must be a non-empty string")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = corpus.encode(prompt).tolist()
    hx, logits = None, None
    for t, i in enumerate(ids + [None] * length):
        if i is None:  # generation: draw the next character from the previous step's output
            probs = torch.softmax(logits / temperature, dim=-1)
            i = int(torch.multinomial(probs, 1, generator=generator))
            ids.append(i)
        e = model.embed(torch.tensor([i]))
        hx = model.cell(e, hx, time_step=t)
        logits = model.head(hx[0])[0]
    model.train(was_training)
    return corpus.decode(ids)


def plot_bpc(runs: dict, ax=None, title: str = "held-out bits per character"):
    """Held-out bpc against step: one line per seed (thin) and the mean (thick) per label.

    runs: {label: [CharLMHistory, ...]} (one history a seed, evaluated at the same steps).
    Returns the Figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    for k, (label, histories) in enumerate(runs.items()):
        color = f"C{k}"
        values = np.array([h.valid_bpc for h in histories])
        steps = histories[0].steps
        for row in values:
            ax.plot(steps, row, color=color, alpha=0.35, lw=0.8)
        ax.plot(steps, values.mean(0), color=color, lw=2,
                label=f"{label} (mean of {len(histories)} seeds)")
    ax.set_xlabel("training step")
    ax.set_ylabel("bits per character (held-out)")
    ax.set_title(title)
    ax.legend()
    return ax.figure
