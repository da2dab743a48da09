"""Module 12 (capstone) checks: the solution passes, stubs score 0, each typical mistake of
masked BN gets its hint, and the training run is graded on labels the learner never sees."""
import numpy as np
import pytest

import bncourse
from grading_helpers import check_messages, solution_cells, solution_objects

NOTEBOOK = "12_capstone_exercises.ipynb"
NAMES = [("12.masked_batchnorm_forward", "masked_batchnorm_forward"),
         ("12.masked_batchnorm_backward", "masked_batchnorm_backward"),
         ("12.MaskedBatchNorm1d", "MaskedBatchNorm1d")]


@pytest.fixture(scope="module")
def solution_source():
    # Everything but the deliberately wrong example and the check calls.
    return "\n\n".join(c for c in solution_cells(NOTEBOOK) if "padding_counted_forward" not in c)


@pytest.mark.parametrize("exercise, name", NAMES)
def test_solution_passes(solution_source, exercise, name):
    report, messages = check_messages(exercise, solution_objects(solution_source, NOTEBOOK)[name])
    assert report.score == 1.0, messages


def test_the_training_run_passes_and_its_labels_stay_with_the_grader(solution_source):
    from bncourse.grading import registry

    exercise = registry.get("12.train_and_predict")
    inputs = exercise.checks[0].make_inputs(np.random.default_rng(0))
    assert "y_test" not in inputs and "y_train" in inputs
    report, messages = check_messages("12.train_and_predict",
                                      solution_objects(solution_source, NOTEBOOK)["train_and_predict"])
    assert report.score == 1.0, messages


def test_stubs_score_zero():
    import torch

    def stub(*args, **kwargs):
        raise NotImplementedError

    class StubModule(torch.nn.Module):
        def __init__(self, num_features, eps=1e-5, momentum=0.1):
            super().__init__()
            raise NotImplementedError

    for exercise, _ in NAMES + [("12.train_and_predict", None)]:
        obj = StubModule if exercise == "12.MaskedBatchNorm1d" else stub
        report = bncourse.check(exercise, obj, quiet=True)
        assert report.score == 0 and report.not_implemented, report.text()


def test_the_stub_notebook_has_no_solution():
    from grading_helpers import EXERCISES

    text = (EXERCISES / NOTEBOOK).read_text()
    assert "BEGIN SOLUTION" not in text and "NotImplementedError" in text


FORWARD = "masked_batchnorm_forward"
FORWARD_MISTAKES = [
    ("padding counted", {"    mean = (x * m).sum(axis=(0, 2)) / count\n    centred = (x - mean[None, :, None]) * m\n    var = (centred * centred).sum(axis=(0, 2)) / count\n    x_hat = centred / np.sqrt(var[None, :, None] + eps)":
                         "    mean = x.mean(axis=(0, 2))\n    centred = x - mean[None, :, None]\n    var = (centred * centred).mean(axis=(0, 2))\n    x_hat = centred / np.sqrt(var[None, :, None] + eps)"},
     "padded positions entered the statistics"),
    ("divided by N * L", {"    count = m.sum()  # real values per channel": "    count = x.shape[0] * x.shape[2]"},
     "divide by the number of real positions"),
    ("unbiased variance", {"    var = (centred * centred).sum(axis=(0, 2)) / count\n    x_hat = centred":
                           "    var = (centred * centred).sum(axis=(0, 2)) / (count - 1)\n    x_hat = centred"},
     "biased variance"),
]


@pytest.mark.parametrize("what, replacements, hint", FORWARD_MISTAKES,
                         ids=[m[0] for m in FORWARD_MISTAKES])
def test_forward_mistakes_get_hints(solution_source, what, replacements, hint):
    report, messages = check_messages("12." + FORWARD,
                                      solution_objects(solution_source, NOTEBOOK, **replacements)[FORWARD])
    assert report.score < 0.8
    assert any(hint in m for m in messages), messages


def test_an_unmasked_output_is_hinted(solution_source):
    source = solution_source.replace(
        "    return (gamma[None, :, None] * x_hat + beta[None, :, None]) * m",
        "    return gamma[None, :, None] * x_hat + beta[None, :, None]", 1)
    fn = solution_objects(source, NOTEBOOK)[FORWARD]
    report, messages = check_messages("12." + FORWARD, fn)
    assert report.score < 0.8 and any("padded positions of the output must be 0" in m
                                      for m in messages), messages


BACKWARD_MISTAKES = [
    ("dx not masked", {"    return dx * m, dgamma, dbeta": "    return dx, dgamma, dbeta"},
     "dx is not 0 at padded positions"),
    ("swapped", {"    return dx * m, dgamma, dbeta": "    return dx * m, dbeta, dgamma"}, "swapped"),
    ("1/(N L)", {"    dx = (gamma * s)[None, :, None] * (g - dbeta[None, :, None] / count\n                                      - x_hat * dgamma[None, :, None] / count)":
                 "    dx = (gamma * s)[None, :, None] * (g - dbeta[None, :, None] / x.shape[0] / x.shape[2]\n                                      - x_hat * dgamma[None, :, None] / x.shape[0] / x.shape[2])"},
     "divide by M, not by N * L"),
    ("sign", {"                                      - x_hat * dgamma[None, :, None] / count)":
              "                                      + x_hat * dgamma[None, :, None] / count)"},
     "sign of the x_hat term"),
    ("dbeta over padding", {"    dbeta = g.sum(axis=(0, 2))": "    dbeta = dout.sum(axis=(0, 2))"},
     "sum dout over the real positions only"),
]


@pytest.mark.parametrize("what, replacements, hint", BACKWARD_MISTAKES,
                         ids=[m[0] for m in BACKWARD_MISTAKES])
def test_backward_mistakes_get_hints(solution_source, what, replacements, hint):
    fn = solution_objects(solution_source, NOTEBOOK, **replacements)["masked_batchnorm_backward"]
    report, messages = check_messages("12.masked_batchnorm_backward", fn)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


MODULE_MISTAKES = [
    ("biased running_var", {"add_(w * var * count / (count - 1))": "add_(w * var)"},
     "unbiased variance"),
    ("padding in the statistics",
     {"            mean = (x * m).sum(dim=(0, 2)) / count\n            var = (((x - mean[None, :, None]) * m) ** 2).sum(dim=(0, 2)) / count":
      "            mean = x.mean(dim=(0, 2))\n            var = x.var(dim=(0, 2), unbiased=False)"},
     "padded positions entered the statistics"),
    ("eval uses batch statistics", {"        if self.training:": "        if True:"}, "eval mode"),
]


@pytest.mark.parametrize("what, replacements, hint", MODULE_MISTAKES,
                         ids=[m[0] for m in MODULE_MISTAKES])
def test_module_mistakes_get_hints(solution_source, what, replacements, hint):
    cls = solution_objects(solution_source, NOTEBOOK, **replacements)["MaskedBatchNorm1d"]
    report, messages = check_messages("12.MaskedBatchNorm1d", cls)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_torch_batch_norm_is_flagged():
    import torch

    class Wrapped(torch.nn.BatchNorm1d):
        def forward(self, x, mask):
            return super().forward(x) * mask[:, None, :]

    report, messages = check_messages("12.MaskedBatchNorm1d", Wrapped)
    assert report.score == 0 and any("torch's batch norm" in m for m in messages), messages
