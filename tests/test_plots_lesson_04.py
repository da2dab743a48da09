"""Plot helpers of lesson 04: each returns a Figure whose axes are labelled."""
from collections import namedtuple

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from bncourse import plots

Row = namedtuple("Row", "shape implementation ratio_to_native memory_ratio_to_primitives")

ROWS = [
    Row((256, 1024), "native", 1.0, 0.4),
    Row((256, 1024), "bncourse", 1.3, 0.5),
    Row((256, 1024), "primitives", 2.5, 1.0),
    Row((32, 64, 16, 16), "native", 1.0, 0.3),
    Row((32, 64, 16, 16), "bncourse", 1.2, None),  # a missing ratio draws no bar
    Row((32, 64, 16, 16), "primitives", 2.0, float("nan")),
]

CASES = [
    ("running_estimates", lambda: plots.plot_running_estimates(
        np.arange(5.0), {"torch 0.1": np.ones(5), "Keras 0.9": np.ones(5)},
        ylabel="running mean"), 1),
    ("running_var_bias", lambda: plots.plot_running_var_bias(
        [2, 4, 8], [1.0, 1 / 3, 1 / 7]), 1),
    ("benchmark_ratios", lambda: plots.plot_benchmark_ratios(ROWS), 2),
]


@pytest.mark.parametrize("name, make, n_axes", CASES, ids=[c[0] for c in CASES])
def test_returns_labelled_figure(name, make, n_axes):
    fig = make()
    try:
        assert isinstance(fig, Figure)
        assert len(fig.axes) == n_axes
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel()
            assert ax.get_legend() is not None
    finally:
        plt.close(fig)


def test_benchmark_ratios_draws_one_bar_per_row():
    fig = plots.plot_benchmark_ratios(ROWS)
    try:
        time_ax, memory_ax = fig.axes
        heights = [p.get_height() for p in time_ax.patches]
        np.testing.assert_allclose(sorted(heights), sorted(r.ratio_to_native for r in ROWS))
        memory = [p.get_height() for p in memory_ax.patches]
        assert len(memory) == len(ROWS) and np.isnan(memory).sum() == 2  # None, NaN
    finally:
        plt.close(fig)


def test_running_var_bias_reference_curve():
    fig = plots.plot_running_var_bias([2, 4, 8], [1.0, 1 / 3, 1 / 7])
    try:
        reference = fig.axes[0].lines[0]
        np.testing.assert_allclose(reference.get_ydata(), [1.0, 1 / 3, 1 / 7])
    finally:
        plt.close(fig)


def test_benchmark_ratios_skips_unmeasured_implementation_in_memory_panel():
    rows = ROWS + [Row((256, 1024), "numpy", 2.0, None), Row((32, 64, 16, 16), "numpy", 1.5, None)]
    fig = plots.plot_benchmark_ratios(rows)
    try:
        time_ax, memory_ax = fig.axes
        assert [t.get_text() for t in time_ax.get_legend().get_texts()][-1] == "numpy"
        assert "numpy" not in [t.get_text() for t in memory_ax.get_legend().get_texts()]
    finally:
        plt.close(fig)
