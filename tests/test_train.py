"""bncourse.train: mlp, accuracy, train_classifier and History (lessons 01 onwards)."""
import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.data import load_digits
from bncourse.train import History, accuracy, mlp, train_classifier


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _layer_kinds(model):
    return [type(layer).__name__ for layer in model]


def test_mlp_without_norm():
    model = mlp([64, 32, 16, 10])
    assert _layer_kinds(model) == ["Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [
        (64, 32), (32, 16), (16, 10)]
    assert all(m.bias is not None for m in model if isinstance(m, nn.Linear))


def test_mlp_with_batchnorm_drops_the_redundant_bias():
    model = mlp([64, 32, 16, 10], activation=nn.ReLU, norm=bnn.BatchNorm1d)
    assert _layer_kinds(model) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU",
                                   "Linear"]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.bias is None for m in linears] == [True, True, False]  # the output layer keeps it
    assert isinstance(model[1], bnn.BatchNorm1d) and model[1].num_features == 32
    with_bias = mlp([64, 32, 10], norm=bnn.BatchNorm1d, bias_before_norm=True)
    assert with_bias[0].bias is not None


def test_mlp_sizes():
    assert _layer_kinds(mlp([5, 3])) == ["Linear"]
    with pytest.raises(ValueError, match=r"sizes must list at least inputs and outputs, got \[5\]"):
        mlp([5])


class _Fixed(nn.Module):
    """Predicts class = the input's first column; remembers the mode it was called in."""

    def forward(self, x):
        self.seen_training = self.training
        return nn.functional.one_hot(x[:, 0].long(), 3).float()


@pytest.mark.parametrize("batch_size", [1, 2, 1024])
def test_accuracy_counts_and_restores_the_mode(batch_size):
    model = _Fixed().train()
    x = torch.tensor([[0.0], [1.0], [2.0], [2.0], [1.0]])
    y = torch.tensor([0, 1, 2, 0, 0])
    assert accuracy(model, x, y, batch_size=batch_size) == pytest.approx(3 / 5, abs=1e-12)
    assert model.seen_training is False  # evaluated in eval mode ...
    assert model.training is True  # ... and put back
    model.eval()
    accuracy(model, x, y)
    assert model.training is False


def _train(digits, steps, **kwargs):
    torch.manual_seed(0)
    model = mlp([64, 64, 10], activation=nn.ReLU, norm=bnn.BatchNorm1d)
    return model, train_classifier(model, digits, steps=steps, **kwargs)


def test_train_classifier_learns_the_digits(digits):
    model, history = _train(digits, steps=150, eval_every=50)
    assert history.steps == [50, 100, 150]
    assert len(history.train_loss) == len(history.test_accuracy) == 3
    assert history.final_accuracy > 0.85, history.test_accuracy
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.final_accuracy == pytest.approx(accuracy(model, digits.x_test, digits.y_test),
                                                   abs=1e-12)
    assert model[1].num_batches_tracked.item() == 150  # BN saw every step, in training mode


def test_train_classifier_is_repeatable_and_reports_the_last_step(digits):
    calls = []
    _, first = _train(digits, steps=70, eval_every=30, callback=lambda step, m: calls.append(step))
    _, second = _train(digits, steps=70, eval_every=30, optimizer="adam", lr=1e-2)
    _, again = _train(digits, steps=70, eval_every=30)
    assert first.steps == [30, 60, 70]  # the last step is evaluated even off the grid
    assert calls == list(range(1, 71))
    torch.testing.assert_close(torch.tensor(again.train_loss), torch.tensor(first.train_loss),
                               rtol=0, atol=0)
    assert second.steps == first.steps


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), r"steps must be at least 1, got 0"),
    (dict(steps=10, eval_every=0), r"eval_every must be at least 1, got 0"),
    (dict(steps=10, optimizer="rmsprop"), r"optimizer must be 'sgd' or 'adam', got 'rmsprop'"),
])
def test_train_classifier_bad_arguments(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_classifier(mlp([64, 10]), digits, **kwargs)


def test_history_steps_to_and_summaries():
    history = History(steps=[10, 20, 30], train_loss=[2.0, 1.0, 0.5],
                      test_accuracy=[0.5, 0.9, 0.8])
    assert history.steps_to(0.85) == 20
    assert history.steps_to(0.5) == 10
    assert history.steps_to(0.95) is None
    assert history.final_accuracy == pytest.approx(0.8)
    assert history.best_accuracy == pytest.approx(0.9)
    assert History().steps == [] and History().steps_to(0.1) is None


# --- step_callback and Step (lesson 07) ---------------------------------------------------

def test_step_callback_gets_the_loop_state_and_callback_still_works(digits):
    from bncourse.train import Step

    torch.manual_seed(0)
    model = mlp([64, 16, 10])
    old, new = [], []

    def record(state):
        assert isinstance(state, Step) and state.model is model
        xb, yb = state.batch
        assert xb.shape == (20, 64) and yb.shape == (20,)
        assert isinstance(state.loss, float) and isinstance(state.optimizer, torch.optim.SGD)
        new.append(state.step)

    hist = train_classifier(model, digits, steps=7, batch_size=20, eval_every=7,
                            callback=lambda step, m: old.append(step), step_callback=record)
    assert old == new == list(range(1, 8))
    assert len(hist.steps) == 1


def test_step_callback_losses_average_to_the_history(digits):
    torch.manual_seed(0)
    losses = []
    hist = train_classifier(mlp([64, 16, 10]), digits, steps=10, batch_size=30, eval_every=5,
                            step_callback=lambda s: losses.append(s.loss))
    assert hist.train_loss == pytest.approx([sum(losses[:5]) / 5, sum(losses[5:]) / 5], rel=1e-9)


def test_step_callback_does_not_change_training(digits):
    runs = []
    for cb in (None, lambda s: None):
        torch.manual_seed(0)
        runs.append(train_classifier(mlp([64, 16, 10]), digits, steps=20, batch_size=30,
                                     eval_every=10, step_callback=cb).train_loss)
    assert runs[0] == runs[1]
