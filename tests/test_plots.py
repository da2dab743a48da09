"""bncourse.plots.plot_histories (the plot helpers other lessons add have their own tests)."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from bncourse.plots import plot_histories
from bncourse.train import History


@pytest.fixture
def histories():
    return {
        "no BN": History(steps=[50, 100, 150], train_loss=[2, 1.5, 1],
                         test_accuracy=[0.3, 0.5, 0.6]),
        "BN": History(steps=[50, 100, 150], train_loss=[1, 0.5, 0.2],
                      test_accuracy=[0.8, 0.9, 0.95]),
    }


def test_plot_histories_returns_a_labelled_figure(histories):
    fig = plot_histories(histories)
    try:
        assert isinstance(fig, Figure)
        (ax,) = fig.axes
        assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "test accuracy"
        assert ax.get_title() == "Test accuracy during training"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["no BN", "BN"]
        for line, history in zip(ax.get_lines(), histories.values()):
            np.testing.assert_allclose(line.get_xdata(), history.steps)
            np.testing.assert_allclose(line.get_ydata(), history.test_accuracy)
    finally:
        plt.close(fig)


def test_plot_histories_title_and_ylabel(histories):
    fig = plot_histories(histories, title="MNIST-1D", ylabel="accuracy")
    try:
        ax = fig.axes[0]
        assert (ax.get_title(), ax.get_ylabel()) == ("MNIST-1D", "accuracy")
    finally:
        plt.close(fig)
