"""Plot helpers of lesson 06: each returns a Figure whose axes are labelled; bad input raises."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from bncourse import plots
from bncourse.train import History


def _history(accs):
    return History(steps=[10, 20, 30], train_loss=[1.0, 0.5, 0.2], test_accuracy=accs)


def test_accuracy_spread_draws_mean_and_band():
    fig = plots.plot_accuracy_spread({"plain": [_history([0.1, 0.2, 0.3]), _history([0.3, 0.4, 0.5])],
                                      "BN": [_history([0.8, 0.9, 0.9])]})
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.2, 0.3, 0.4])
    assert len(ax.collections) == 2 and len(ax.get_legend().get_texts()) == 2
    plt.close(fig)


def test_percentiles_on_given_axes():
    fig, ax = plt.subplots()
    out = plots.plot_percentiles([0, 10, 20], np.arange(9.0).reshape(3, 3), ax=ax)
    assert out is fig and len(ax.lines) == 3 and ax.get_ylabel() == "input to the sigmoid"
    plt.close(fig)


@pytest.mark.parametrize("make, match", [
    (lambda: plots.plot_accuracy_spread({}), "curves"),
    (lambda: plots.plot_percentiles([0, 1], np.zeros((3, 3))), "values must have shape"),
    (lambda: plots.plot_percentiles([0, 1], np.zeros(2)), "values must have shape"),
])
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()
