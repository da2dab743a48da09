"""Learning curves over seeds for case study 09: mean line, min-max band, thin per-seed lines."""
from __future__ import annotations

import numpy as np

__all__ = ["plot_seed_curves"]


def plot_seed_curves(x, curves: dict, xlabel: str, ylabel: str, title: str, ax=None):
    """One colour per label; curves[label] is an (S, len(x)) array (NaN = no value there).

    Returns the Figure. The band spans the seeds' min to max, so its width is the spread.
    """
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("curves must contain at least one labelled (S, T) array")
    x = np.asarray(x)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.6))
    else:
        fig = ax.figure
    for i, (label, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[1] != len(x):
            raise ValueError(f"curves[{label!r}] must have shape (S, {len(x)}), "
                             f"got {values.shape}")
        colour = f"C{i}"
        for row in values:
            ax.plot(x, row, color=colour, lw=0.6, alpha=0.4)
        ax.fill_between(x, np.nanmin(values, 0), np.nanmax(values, 0), color=colour, alpha=0.15)
        ax.plot(x, np.nanmean(values, 0), color=colour, lw=2,
                label=f"{label} (mean of {len(values)} seeds)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
