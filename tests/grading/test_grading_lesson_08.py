"""Module 08 checks: the solutions pass, stubs score 0, and each typical mistake gets its hint."""
import pytest

import bncourse
from grading_helpers import check_messages, solution_cells, solution_objects

NOTEBOOK = "08_case_nlp_exercises.ipynb"


@pytest.fixture(scope="module")
def solution_source():
    return "\n\n".join(solution_cells(NOTEBOOK))


@pytest.mark.parametrize("exercise, name", [
    ("08.PerStepBatchNorm", "PerStepBatchNorm"),
    ("08.bn_lstm_step", "bn_lstm_step"),
    ("08.predictions", "predictions"),
])
def test_solution_passes(solution_source, exercise, name):
    report, messages = check_messages(exercise, solution_objects(solution_source, NOTEBOOK)[name])
    assert report.score == 1.0, messages


def test_stubs_score_zero():
    class PerStepBatchNorm:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError

    def bn_lstm_step(cell, x, h, c, t):
        raise NotImplementedError

    def predictions():
        raise NotImplementedError

    for exercise, obj in (("08.PerStepBatchNorm", PerStepBatchNorm),
                          ("08.bn_lstm_step", bn_lstm_step), ("08.predictions", predictions)):
        report = bncourse.check(exercise, obj, quiet=True)
        assert report.score == 0 and report.not_implemented
        assert "not implemented yet" in report.text()


NORM_MISTAKES = [
    ("statistics shared across steps",
     {"self.running_mean[s].lerp_(mean": "self.running_mean.lerp_(mean[None].expand_as(self.running_mean)",
      "self.running_var[s].lerp_(var * n / (n - 1)":
          "self.running_var.lerp_((var * n / (n - 1))[None].expand_as(self.running_var)"},
     "shared across steps"),
    ("biased running variance", {"var * n / (n - 1), self.momentum": "var, self.momentum"},
     "unbiased"),
    ("wrap-around beyond max_length", {"s = min(t, self.max_length - 1)": "s = t % self.max_length"},
     "t % max_length"),
    ("unbiased normalisation", {"var = x.var(dim=0, correction=0)": "var = x.var(dim=0)"},
     "biased batch variance"),
    ("running statistics updated in eval mode",
     {"        else:\n            mean, var = self.running_mean[s], self.running_var[s]":
      "        else:\n            mean, var = self.running_mean[s], self.running_var[s]\n"
      "            self.running_mean[s].mul_(0.5)"},
     "changed in eval mode"),
    ("one set of statistics for every step in eval",
     {"mean, var = self.running_mean[s], self.running_var[s]":
      "mean, var = self.running_mean[0], self.running_var[0]"},
     "row min(t, max_length"),
]


@pytest.mark.parametrize("what, replacements, hint", NORM_MISTAKES, ids=[m[0] for m in NORM_MISTAKES])
def test_per_step_mistakes_get_hints(solution_source, what, replacements, hint):
    report, messages = check_messages("08.PerStepBatchNorm",
                                 solution_objects(solution_source, NOTEBOOK, **replacements)["PerStepBatchNorm"])
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_calling_the_package_is_flagged(solution_source):
    source = solution_source + '''
import bncourse.nn as _bnn
class PerStepBatchNorm(_bnn.StepwiseBatchNorm):
    pass
'''
    report, messages = check_messages("08.PerStepBatchNorm", solution_objects(source, NOTEBOOK)["PerStepBatchNorm"])
    assert report.score == 0
    assert any("flagged" in m for m in messages), messages


STEP_MISTAKES = [
    ("BN on the sum",
     {"gates = (cell.bn_hh(F.linear(h, cell.weight_hh), t) + cell.bn_ih(F.linear(x, cell.weight_ih), t)\n"
      "             + cell.bias)":
      "gates = cell.bn_hh(F.linear(h, cell.weight_hh) + F.linear(x, cell.weight_ih), t) + cell.bias"},
     "not their sum"),
    ("BN on the carried cell state",
     {"h_new = torch.sigmoid(o) * torch.tanh(cell.bn_c(c_new, t))":
      "c_new = cell.bn_c(c_new, t)\n    h_new = torch.sigmoid(o) * torch.tanh(c_new)"},
     "carried cell state stays unnormalised"),
    ("no BN on the output", {"torch.tanh(cell.bn_c(c_new, t))": "torch.tanh(c_new)"},
     "tanh(BN(c_t))"),
    ("gate order", {"i, f, g, o = gates.chunk(4, dim=1)": "i, f, o, g = gates.chunk(4, dim=1)"},
     "torch's: i, f, g, o"),
]


@pytest.mark.parametrize("what, replacements, hint", STEP_MISTAKES, ids=[m[0] for m in STEP_MISTAKES])
def test_step_mistakes_get_hints(solution_source, what, replacements, hint):
    report, messages = check_messages("08.bn_lstm_step",
                                 solution_objects(solution_source, NOTEBOOK, **replacements)["bn_lstm_step"])
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_calling_the_cell_is_flagged():
    def bn_lstm_step(cell, x, h, c, t):
        return cell(x, (h, c), time_step=t)

    report, messages = check_messages("08.bn_lstm_step", bn_lstm_step)
    assert report.score == 0 and all("flagged" in m for m in messages), messages


def test_wrong_predictions_get_hints():
    def predictions():
        return {"n_running_mean_buffers": 2, "bn_hh_running_mean_shape": (512,),
                "eval_row_for_step_54": 4}

    report, messages = check_messages("08.predictions", predictions)
    assert report.score == 0 and len(messages) == 3
    assert any("cell state" in m for m in messages)
    assert any("one row per time step" in m for m in messages)
    assert any("last step are reused" in m for m in messages)
