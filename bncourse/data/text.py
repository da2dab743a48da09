"""Character-level text that ships with Python: `pydoc_data.topics` (case study 08).

`pydoc_data.topics.topics` maps help topics to their English text (the reference manual behind
`help()`): about 465,000 characters in CPython 3.11, offline and identical on every install of
the same Python version. `load_corpus` joins the values in sorted-key order, builds the
vocabulary (sorted characters), and splits *by position*: the first `1 - valid_fraction` of the
text trains, the rest validates (no window straddles the two, so no held-out text is seen).

Batches are `(T, N)` int64 tensors, time first, as `bncourse.nn.run_cell` expects; targets are
the inputs shifted by one character.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CharCorpus", "load_text", "load_corpus", "random_batch", "sequential_batches"]


def load_text() -> str:
    """The English of `pydoc_data.topics`, values joined in sorted-key order."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


@dataclass(frozen=True)
class CharCorpus:
    """A character corpus: vocabulary and the two splits as int64 ids.

    chars: the vocabulary, sorted; train, valid: `(L_train,)` and `(L_valid,)` int64 ids.
    """

    chars: str
    train: torch.Tensor
    valid: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Text -> `(len(text),)` int64 ids; a character outside the vocabulary is a ValueError."""
        index = {ch: i for i, ch in enumerate(self.chars)}
        try:
            return torch.tensor([index[ch] for ch in text], dtype=torch.int64)
        except KeyError as exc:
            raise ValueError(f"text contains {exc.args[0]!r}, which is not in the vocabulary "
                             f"of {self.vocab_size} characters") from None

    def decode(self, ids) -> str:
        """ids (a tensor or a list of ints) -> text."""
        return "".join(self.chars[int(i)] for i in ids)

    def __repr__(self) -> str:
        return (f"CharCorpus({self.vocab_size} characters, train {len(self.train):,}, "
                f"valid {len(self.valid):,})")


def load_corpus(valid_fraction: float = 0.1, text: str | None = None) -> CharCorpus:
    """The corpus of `load_text()` (or of `text`), split by position."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    text = load_text() if text is None else text
    chars = "".join(sorted(set(text)))
    corpus = CharCorpus(chars, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64))
    ids = corpus.encode(text)
    n_train = int(round(len(ids) * (1.0 - valid_fraction)))
    if n_train < 2 or len(ids) - n_train < 2:
        raise ValueError(f"text of {len(ids)} characters is too short to split with "
                         f"valid_fraction={valid_fraction}")
    return CharCorpus(chars, ids[:n_train], ids[n_train:])


def _check_window(ids: torch.Tensor, length: int, batch_size: int) -> None:
    for name, value in (("length", length), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if len(ids) < length + 1:
        raise ValueError(f"length={length} needs at least {length + 1} characters, the text "
                         f"has {len(ids)}")


def random_batch(ids: torch.Tensor, batch_size: int, length: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` windows at random offsets: inputs and targets, each `(length, batch_size)`.

    Deterministic given the state of `generator` (seed it with `torch.Generator().manual_seed`).
    """
    _check_window(ids, length, batch_size)
    starts = torch.randint(0, len(ids) - length, (batch_size,), generator=generator)
    windows = torch.stack([ids[s:s + length + 1] for s in starts.tolist()], dim=1)  # (T+1, N)
    return windows[:-1], windows[1:]


def sequential_batches(ids: torch.Tensor, batch_size: int, length: int,
                       max_batches: int | None = None):
    """Non-overlapping windows of held-out text, in order: a list of `(inputs, targets)` pairs,
    each `(length, batch_size)`; batch b holds windows b*batch_size ... (b+1)*batch_size - 1.

    Every character of the first `n_batches * batch_size * length` is predicted once.
    """
    _check_window(ids, length, batch_size)
    n_windows = (len(ids) - 1) // length
    n_batches = n_windows // batch_size
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    if n_batches < 1:
        raise ValueError(f"the text ({len(ids)} characters) is too short for one batch of "
                         f"{batch_size} windows of length {length}")
    used = n_batches * batch_size * length
    x = ids[:used].view(n_batches, batch_size, length).transpose(1, 2)  # (B, T, N)
    y = ids[1:used + 1].view(n_batches, batch_size, length).transpose(1, 2)
    return [(x[b], y[b]) for b in range(n_batches)]
