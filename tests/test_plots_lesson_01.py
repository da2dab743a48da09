"""Plot helpers of lesson 01: each returns a labelled Figure and draws what it was given."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from bncourse import plots

H = np.array([[2.0, 0.5], [0.5, 1.0]])
W_STAR = np.array([1.0, -1.0])
PATH = np.array([[0.0, 0.0], [0.5, -0.4], [0.9, -0.9]])
ACTIVATIONS = {"1": torch.rand(50, 4), "3": torch.rand(50, 4), "5": torch.rand(50, 4)}

CASES = [
    # name, make, lines drawn (not counting contours)
    ("quadratic_descent", lambda ax: plots.plot_quadratic_descent(H, W_STAR, PATH, ax=ax), 2),
    ("quadratic_descent_window", lambda ax: plots.plot_quadratic_descent(
        H, W_STAR, PATH, ax=ax, window=(-0.5, 1.5, -1.5, 0.5)), 2),
    ("activation_histograms", lambda ax: plots.plot_activation_histograms(ACTIVATIONS, ax=ax), 3),
    ("per_layer", lambda ax: plots.plot_per_layer(
        {"no BN": {"0": 1e-5, "2": 1e-3}, "BN": {"0": 0.3, "2": 0.4}}, ylabel="norm",
        title="t", ax=ax), 2),
    ("update_ratios", lambda ax: plots.plot_update_ratios(
        [1, 2, 3], {"0": [1e-3, 2e-3, 1e-3], "2": [1e-5, 1e-5, 2e-5]}, ax=ax), 3),
]


@pytest.mark.parametrize("use_own_axes", [False, True])
@pytest.mark.parametrize("name, make, lines", CASES, ids=[c[0] for c in CASES])
def test_plot_returns_labelled_figure(name, make, lines, use_own_axes):
    ax = plt.subplots()[1] if use_own_axes else None
    fig = make(ax)
    try:
        assert isinstance(fig, Figure)
        drawn_on = fig.axes[0]
        if use_own_axes:
            assert drawn_on is ax
        assert drawn_on.get_xlabel() and drawn_on.get_ylabel() and drawn_on.get_title()
        assert len(drawn_on.get_lines()) == lines
    finally:
        plt.close(fig)


def test_quadratic_descent_window_sets_the_limits():
    fig = plots.plot_quadratic_descent(H, W_STAR, PATH, window=(-0.5, 1.5, -1.5, 0.5))
    try:
        np.testing.assert_allclose(fig.axes[0].get_xlim(), (-0.5, 1.5))
        np.testing.assert_allclose(fig.axes[0].get_ylim(), (-1.5, 0.5))
    finally:
        plt.close(fig)


def test_update_ratios_plots_log10():
    fig = plots.plot_update_ratios([1, 2], {"0": [1e-3, 1e-2]})
    try:
        np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [-3.0, -2.0])
    finally:
        plt.close(fig)
