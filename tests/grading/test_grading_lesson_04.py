"""Module 04 checks: the solutions pass (BatchNorm1d also trained in the grader's CNN), stubs
score 0, typical mistakes get their hints, and a learner who pastes lesson 04's code does not
pass the module."""
import numpy as np
import pytest
import torch

import bncourse
from bncourse.grading import registry
from grading_helpers import EXERCISES, check_messages, solution_cells, solution_objects
from lesson_copy_helpers import lesson_namespace, module_score

NOTEBOOK = "04_torch_module_exercises.ipynb"
NAMES = ["BatchNorm1d", "BatchNormFunction", "module_questions"]


@pytest.fixture(scope="module")
def source():
    return "\n\n".join(solution_cells(NOTEBOOK))


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes(source, name):
    report, messages = check_messages(f"04.{name}", solution_objects(source, NOTEBOOK)[name])
    assert report.score == 1.0, messages


def test_module_has_the_stated_points():
    points = {e.name: e.max_points for e in registry.module_exercises("04")}
    assert points == {"BatchNorm1d": 9, "BatchNormFunction": 7, "module_questions": 4}


def test_stubs_score_zero_and_the_stub_notebook_has_no_solutions():
    class StubModule(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            raise NotImplementedError

    class StubFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            raise NotImplementedError

    def stub(*args):
        raise NotImplementedError

    for name, obj in zip(NAMES, (StubModule, StubFunction, stub)):
        report = bncourse.check(f"04.{name}", obj, quiet=True)
        assert report.score == 0 and report.not_implemented, name
    text = (EXERCISES / NOTEBOOK).read_text()
    assert "BEGIN SOLUTION" not in text and "NotImplementedError" in text and "Hint:" in text


MODULE_MISTAKES = [
    ("eval uses the batch statistics",
     {"            mean, var = self.running_mean, self.running_var":
      "            mean, var = x.mean(dim=0), x.var(dim=0, correction=0)"},
     ["use running_mean and running_var", "depends on the rest of the batch"]),
    ("running statistics never updated",
     {"                self.running_mean.lerp_(mean, self.momentum)\n"
      "                self.running_var.lerp_(var * n / (n - 1), self.momentum)  # unbiased\n": ""},
     ["test accuracy"]),
    ("biased running_var", {"var * n / (n - 1), self.momentum)": "var, self.momentum)"},
     ["running_var must be the unbiased variance"]),
]


@pytest.mark.parametrize("what, replacements, hints", MODULE_MISTAKES,
                         ids=[m[0] for m in MODULE_MISTAKES])
def test_module_mistakes_get_hints(source, what, replacements, hints):
    obj = solution_objects(source, NOTEBOOK, **replacements)["BatchNorm1d"]
    report, messages = check_messages("04.BatchNorm1d", obj)
    assert report.score < 1.0
    for hint in hints:
        assert any(hint in m for m in messages), (hint, messages)


FUNCTION_MISTAKES = [
    ("saves x_hat", {"ctx.save_for_backward(x, weight, mean, inv_std)":
                     "ctx.save_for_backward(x, weight, mean, inv_std, (x - mean.view(shape)) * "
                     "inv_std.view(shape))",
                     "x, weight, mean, inv_std = ctx.saved_tensors":
                     "x, weight, mean, inv_std, _ = ctx.saved_tensors"},
     "save x itself"),
    ("statistics differentiable", {"        ctx.mark_non_differentiable(mean, var)\n": ""},
     "mark_non_differentiable"),
    ("unbiased var returned", {"return y, mean, var": "return y, mean, x.var(dims, correction=1)"},
     "return the biased batch variance"),
    ("no mean path in the backward", {
        "dx = (inv_std / M).view(shape) * (M * dx_hat - dx_hat.sum(dims, keepdim=True)\n"
        "                                          - x_hat * (dx_hat * x_hat).sum(dims, keepdim=True))":
        "dx = dx_hat * inv_std.view(shape)"}, "paths through the batch mean"),
    ("dweight and dbias swapped", {"return dx, dweight, dbias, None": "return dx, dbias, dweight, None"},
     "swapped"),
    ("wrong sign in the backward", {"- x_hat * (dx_hat * x_hat)": "+ x_hat * (dx_hat * x_hat)"},
     "gradcheck fails"),
]


@pytest.mark.parametrize("what, replacements, hint", FUNCTION_MISTAKES,
                         ids=[m[0] for m in FUNCTION_MISTAKES])
def test_function_mistakes_get_hints(source, what, replacements, hint):
    obj = solution_objects(source, NOTEBOOK, **replacements)["BatchNormFunction"]
    report, messages = check_messages("04.BatchNormFunction", obj)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_autograd_on_primitives_is_not_its_own_backward():
    class BatchNormFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, eps):
            raise AssertionError("not called")

        @staticmethod
        def apply(x, weight, bias, eps):  # bypasses the Function: autograd does the backward
            dims = (0,) + tuple(range(2, x.dim()))
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean, var = x.mean(dims), x.var(dims, correction=0)
            y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * weight.view(shape)
            return y + bias.view(shape), mean.detach(), var.detach()

    report, messages = check_messages("04.BatchNormFunction", BatchNormFunction)
    assert any("not your Function's backward" in m for m in messages), messages


QUESTION_MISTAKES = [
    ("biased running_var", {'d["batch"]': 'd["batch"]', 'data["batch"].var(axis=0, ddof=1)':
                            'data["batch"].var(axis=0)'}, "unbiased batch variance"),
    ("momentum flipped", {'return (1 - m) * data["running_var"] + m * data["batch"]':
                          'return m * data["running_var"] + (1 - m) * data["batch"]'},
     "weighs the new batch"),
    ("EMA instead of the cumulative average",
     {'return data["batches"].mean(axis=1).mean(axis=0)':
      'r = 0\n        for b in data["batches"]:\n            r = 0.9 * r + 0.1 * b.mean(0)\n'
      '        return r'}, "cumulative average"),
    ("batch size", {"return r2 / (r2 - 1)": "return data['ratio'] / (data['ratio'] - 1)"},
     "solve for M"),
]


@pytest.mark.parametrize("what, replacements, hint", QUESTION_MISTAKES,
                         ids=[m[0] for m in QUESTION_MISTAKES])
def test_question_mistakes_get_hints(source, what, replacements, hint):
    replacements = {k: v for k, v in replacements.items() if k != v}
    obj = solution_objects(source, NOTEBOOK, **replacements)["module_questions"]
    report, messages = check_messages("04.module_questions", obj)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_cnn_check_runs_under_the_time_limit(source):
    import time

    obj = solution_objects(source, NOTEBOOK)["BatchNorm1d"]
    exercise = registry.get("04.BatchNorm1d")
    from bncourse.grading.feedback import make_inputs

    inputs = make_inputs(exercise, len(exercise.checks) - 1, 0)
    start = time.perf_counter()
    result = exercise.run(obj, inputs)
    assert time.perf_counter() - start < 10.0
    assert result["accuracy"] >= 0.95 and result["eval_batch_independent"]


def test_pasting_the_lesson_does_not_pass():
    lesson = lesson_namespace("04_torch_module.ipynb", [3])
    import bncourse.nn as bnn

    score = module_score("04", {"BatchNormFunction": lesson["BatchNormFn"],
                                "BatchNorm1d": bnn.BatchNorm1d})
    assert score < 0.5, score


def test_stale_running_statistics_fail_the_cnn_check(source):
    """The CNN check is the one that needs the running statistics to be updated: a module that
    never updates them passes the training-mode checks but not eval-mode accuracy."""
    obj = solution_objects(source, NOTEBOOK, **{
        "self.running_mean.lerp_(mean, self.momentum)": "pass",
        "self.running_var.lerp_(var * n / (n - 1), self.momentum)  # unbiased": "pass"},
    )["BatchNorm1d"]
    exercise = registry.get("04.BatchNorm1d")
    from bncourse.grading.feedback import make_inputs

    inputs = make_inputs(exercise, len(exercise.checks) - 1, 0)
    result = exercise.run(obj, inputs)
    message = exercise.checks[-1].compare(result, {"accuracy": 0.98}, inputs)
    assert result["accuracy"] < 0.95 and message and "running statistics" in message, result
