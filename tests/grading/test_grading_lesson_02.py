"""Module 02 checks: the solutions pass, stubs score 0, each typical mistake gets its hint, and
a learner who pastes lesson 02's code does not pass the module."""
import numpy as np
import pytest

import bncourse
from bncourse.grading import registry
from grading_helpers import EXERCISES, check_messages, solution_cells, solution_objects
from lesson_copy_helpers import lesson_namespace, module_score

NOTEBOOK = "02_forward_exercises.ipynb"
NAMES = ["batch_statistics", "batchnorm_forward", "batchnorm_forward_axis", "forward_questions"]


@pytest.fixture(scope="module")
def source():
    return "\n\n".join(solution_cells(NOTEBOOK))


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes(source, name):
    report, messages = check_messages(f"02.{name}", solution_objects(source, NOTEBOOK)[name])
    assert report.score == 1.0, messages


def test_module_has_the_stated_points():
    points = {e.name: e.max_points for e in registry.module_exercises("02")}
    assert points == {"batch_statistics": 3, "batchnorm_forward": 5, "batchnorm_forward_axis": 5,
                      "forward_questions": 4}


def test_stubs_score_zero_and_the_stub_notebook_has_no_solutions():
    def stub(*args, **kwargs):
        raise NotImplementedError

    for name in NAMES:
        report = bncourse.check(f"02.{name}", stub, quiet=True)
        assert report.score == 0 and report.not_implemented
    text = (EXERCISES / NOTEBOOK).read_text()
    assert "BEGIN SOLUTION" not in text and "NotImplementedError" in text
    assert "Hint:" in text  # the introduction's example of a failing check


AXIS = "    axis = axis % x.ndim  # -1 -> the last axis\n"
MISTAKES = [
    ("batch_statistics", "unbiased", {"x.var(axis=axes)  # ddof=0": "x.var(axis=axes, ddof=1)  #"},
     "biased variance"),
    ("batch_statistics", "axis 0 only", {"x.mean(axis=axes), x.var(axis=axes)":
                                         "x.mean(axis=0), x.var(axis=0)"},
     "one value per channel"),
    ("batch_statistics", "standard deviation", {"x.var(axis=axes)  # ddof=0": "x.std(axis=axes)  #"},
     "not the standard deviation"),
    ("batchnorm_forward", "eps outside",
     {"np.sqrt(var.reshape(shape) + eps)": "(np.sqrt(var.reshape(shape)) + eps)"},
     "eps goes inside the square root"),
    ("batchnorm_forward", "gamma and beta swapped",
     {"out = gamma.reshape(shape) * x_hat + beta.reshape(shape)":
      "out = beta.reshape(shape) * x_hat + gamma.reshape(shape)"}, "swap gamma and beta"),
    ("batchnorm_forward", "float64 out", {"return out.astype(x.dtype, copy=False), (x_hat, var, gamma)":
                                          "return out.astype(np.float64), None"}, "keep the dtype"),
    ("batchnorm_forward_axis", "unbiased", {"var = x.var(axis=axes, keepdims=True)":
                                            "var = x.var(axis=axes, keepdims=True, ddof=1)"},
     "biased variance"),
    ("batchnorm_forward_axis", "no gamma", {"out = gamma.reshape(shape) * x_hat + beta.reshape(shape)\n"
                                            "    return out.astype(x.dtype, copy=False), (x_hat, var, gamma, axis)":
                                            "out = x_hat\n    return out.astype(x.dtype), None"},
     "scale by gamma and shift by beta"),
    ("forward_questions", "x_hat variance 1", {'return data["var"] / (data["var"] + data["eps"])':
                                               'return np.ones_like(data["var"])'},
     "not exactly 1"),
    ("forward_questions", "negative gamma", {'return np.abs(data["gamma"]) * np.sqrt':
                                             'return data["gamma"] * np.sqrt'}, "never negative"),
    ("forward_questions", "ratio inverted", {'return np.sqrt((data["M"] - 1) / data["M"])':
                                             'return np.sqrt(data["M"] / (data["M"] - 1))'},
     "makes x_hat smaller"),
    ("forward_questions", "constant channel", {'return data["beta"]':
                                               'return data["gamma"] * data["value"] + data["beta"]'},
     "x − mean is 0"),
]


@pytest.mark.parametrize("name, what, replacements, hint", MISTAKES,
                         ids=[f"{m[0]}-{m[1]}" for m in MISTAKES])
def test_mistakes_get_hints(source, name, what, replacements, hint):
    obj = solution_objects(source, NOTEBOOK, **replacements)[name]
    report, messages = check_messages(f"02.{name}", obj)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_a_forward_for_axis_1_only_fails_channels_last(source):
    obj = solution_objects(source, NOTEBOOK)["batchnorm_forward"]
    report, messages = check_messages("02.batchnorm_forward_axis",
                                      lambda x, g, b, eps=1e-5, axis=-1: obj(x, g, b, eps))
    assert report.score <= 0.2, messages


def test_answers_are_computed_from_the_learners_inputs():
    from bncourse.grading.lessons.l02_forward import FORWARD_QUESTIONS_EXERCISE as exercise

    answers = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        inputs = exercise.checks[2].make_inputs(rng)  # unbiased_ratio
        answers.append(float(exercise.reference()(inputs["question"], inputs["data"])))
    assert answers[0] != answers[1]


def test_pasting_the_lesson_does_not_pass():
    lesson = lesson_namespace("02_forward.ipynb", [3])
    forward = lesson["batchnorm_forward"]  # the lesson's (N, C) forward

    def batch_statistics(x):  # what the lesson's forward computes, as statistics
        return x.mean(axis=0), x.var(axis=0)

    objects = {"batch_statistics": batch_statistics,
               "batchnorm_forward": lambda x, g, b, eps=1e-5: (forward(x, g, b, eps), None),
               "batchnorm_forward_axis": lambda x, g, b, eps=1e-5, axis=-1: (forward(x, g, b, eps),
                                                                             None)}
    score = module_score("02", objects)
    assert score < 0.5, score
