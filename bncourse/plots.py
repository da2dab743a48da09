"""Plot helpers: each returns a matplotlib Figure with labelled axes (lessons 01 onwards).

End the notebook cell with `plt.show()`; the PNG is not compared by nbval, the text is.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from bncourse.train import History

__all__ = ["plot_histories"]


def plot_histories(histories: dict[str, History], title: str = "Test accuracy during training",
                   ylabel: str = "test accuracy"):
    """Test accuracy against training step, one line per labelled History."""
    fig, ax = plt.subplots()
    for label, history in histories.items():
        ax.plot(history.steps, history.test_accuracy, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return fig
