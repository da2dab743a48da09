"""Plot helpers of lesson 05: each returns a Figure whose axes are labelled."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from bncourse import plots

CASES = [
    ("estimate_errors", lambda: plots.plot_estimate_errors(
        {"EMA": np.geomspace(1, 0.01, 20), "cumulative": np.geomspace(0.1, 0.01, 20)},
        predicted={"predicted EMA bias": np.geomspace(1, 0.02, 20)}, ylabel="|error|",
        ylim=(1e-3, 2)), 3),
    ("accuracy_bars", lambda: plots.plot_accuracy_bars(
        {"eval": 0.97, "train mode, batch 8": 0.9, "sorted": 0.15}), 3),
]


@pytest.mark.parametrize("name, make, items", CASES, ids=[c[0] for c in CASES])
def test_plot_returns_labelled_figure(name, make, items):
    fig = make()
    try:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_xlabel() or ax.get_xticklabels()
        assert ax.get_ylabel() and ax.get_title()
        drawn = ax.get_lines() if name == "estimate_errors" else ax.patches
        assert len(drawn) == items
    finally:
        plt.close(fig)


def test_accuracy_bars_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        plots.plot_accuracy_bars({})
