"""Module 03 checks: the solutions pass, stubs score 0, each typical backward mistake gets its
hint (unbiased variance, a missing 1/M, a sign error in the x_hat term, the wrong return order,
a numerical gradient looping over axis 0 only, float32 accumulation), scores do not depend on
the seed, and a learner who pastes lesson 03's code does not pass the module."""
import numpy as np
import pytest

import bncourse
from bncourse.grading import registry
from grading_helpers import EXERCISES, check_messages, solution_cells, solution_objects
from lesson_copy_helpers import lesson_namespace, module_score

NOTEBOOK = "03_backward_exercises.ipynb"
NAMES = ["numerical_gradient", "batchnorm_backward", "backward_questions"]


@pytest.fixture(scope="module")
def source():
    return "\n\n".join(solution_cells(NOTEBOOK))


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes(source, name):
    report, messages = check_messages(f"03.{name}", solution_objects(source, NOTEBOOK)[name])
    assert report.score == 1.0, messages


def test_module_has_the_stated_points():
    points = {e.name: e.max_points for e in registry.module_exercises("03")}
    assert points == {"numerical_gradient": 5, "batchnorm_backward": 6, "backward_questions": 4}


def test_stubs_score_zero_and_the_stub_notebook_has_no_solutions():
    def stub(*args, **kwargs):
        raise NotImplementedError

    for name in NAMES:
        report = bncourse.check(f"03.{name}", stub, quiet=True)
        assert report.score == 0 and report.not_implemented
    text = (EXERCISES / NOTEBOOK).read_text()
    assert "BEGIN SOLUTION" not in text and "NotImplementedError" in text and "Hint:" in text


NG_LOOP = ("    for i in np.ndindex(x.shape):  # every index of every axis\n"
           "        old = x[i]\n")
NG_MISTAKES = [
    ("forward difference", {"x[i] = old - h\n        loss_minus = np.sum(dout * f(x))":
                            "x[i] = old\n        loss_minus = np.sum(dout * f(x))",
                            "(loss_plus - loss_minus) / (2 * h)": "(loss_plus - loss_minus) / h"},
     "use centred differences"),
    ("divides by h", {"(loss_plus - loss_minus) / (2 * h)": "(loss_plus - loss_minus) / h"},
     "divide by 2h"),
    ("ignores h", {"def numerical_gradient(f, x, dout, h=1e-5):":
                   "def numerical_gradient(f, x, dout, h=1e-5):\n    h = 1e-5"},
     "use the step h passed"),
    ("loops over axis 0 only", {NG_LOOP: "    for i in range(x.shape[0]):\n        old = x[i].copy()\n"},
     "moves a whole row x[i] at once"),
    ("ignores dout", {"np.sum(dout * f(x))": "np.sum(f(x))"}, "weighting by dout"),
    ("changes x", {"    return grad\n": "    x *= 1.5\n    return grad\n"}, "x was changed"),
]


@pytest.mark.parametrize("what, replacements, hint", NG_MISTAKES, ids=[m[0] for m in NG_MISTAKES])
def test_numerical_gradient_mistakes_get_hints(source, what, replacements, hint):
    obj = solution_objects(source, NOTEBOOK, **replacements)["numerical_gradient"]
    report, messages = check_messages("03.numerical_gradient", obj)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_calling_the_packaged_gradient_is_flagged():
    def numerical_gradient(f, x, dout, h=1e-5):
        from bncourse.gradcheck import numerical_gradient as packaged

        return packaged(lambda v: np.sum(dout * f(v)), x, h)

    report, messages = check_messages("03.numerical_gradient", numerical_gradient)
    assert report.score == 0 and all("flagged" in m for m in messages), messages


BACKWARD_MISTAKES = [
    ("unbiased variance", {"var = (xc**2).mean(axis=axes, keepdims=True)":
                           "var = (xc**2).sum(axis=axes, keepdims=True) / (M - 1)",
                           "2 * xc / M * dvar": "2 * xc / (M - 1) * dvar"},
     "unbiased variance"),
    ("missing 1/M on the mean path", {"dx = dxc + dmu / M": "dx = dxc + dmu"}, "1/M is missing"),
    ("missing 1/M on the variance path", {"2 * xc / M * dvar": "2 * xc * dvar"},
     "1/M is missing"),
    ("sign error in the x_hat term", {
        "dx = dxc + dmu / M": "dx = s / M * (M * dx_hat - dx_hat.sum(axis=axes, keepdims=True)"
                              " + x_hat * (dx_hat * x_hat).sum(axis=axes, keepdims=True))"},
     "sign of the x_hat term"),
    ("wrong return order", {"return dx, dgamma, dbeta, stages": "return dgamma, dbeta, dx, stages"},
     "order (dx, dgamma, dbeta, stages)"),
    ("dgamma and dbeta swapped", {"return dx, dgamma, dbeta, stages": "return dx, dbeta, dgamma, stages"},
     "swapped"),
    ("forgot gamma", {"dx_hat = dout * gamma.reshape(shape)": "dx_hat = dout"}, "forget gamma"),
    ("dvar sign", {"dvar = -0.5 * s**3 * ds": "dvar = 0.5 * s**3 * ds"}, "check the sign"),
    ("ds through x_hat", {"ds = (dx_hat * xc).sum(axis=axes, keepdims=True)":
                          "ds = (dx_hat * x_hat).sum(axis=axes, keepdims=True)"},
     "not dx_hat · x_hat"),
    ("no stages", {"return dx, dgamma, dbeta, stages": "return dx, dgamma, dbeta"},
     "must return a tuple (dx, dgamma, dbeta, stages)"),
]


@pytest.mark.parametrize("what, replacements, hint", BACKWARD_MISTAKES,
                         ids=[m[0] for m in BACKWARD_MISTAKES])
def test_backward_mistakes_get_hints(source, what, replacements, hint):
    obj = solution_objects(source, NOTEBOOK, **replacements)["batchnorm_backward"]
    report, messages = check_messages("03.batchnorm_backward", obj)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


ONE_PASS = {"var = (xc**2).mean(axis=axes, keepdims=True)":
            "var = (x * x).mean(axis=axes, keepdims=True) - mu**2"}


@pytest.mark.parametrize("replacements, float32_points", [({}, 1), (ONE_PASS, 0)],
                         ids=["two-pass variance", "one-pass variance in float32"])
def test_float32_check_is_seed_independent_and_hinted(source, replacements, float32_points):
    obj = solution_objects(source, NOTEBOOK, **replacements)["batchnorm_backward"]
    for seed in range(12):
        with np.errstate(invalid="ignore"):
            report = bncourse.check("03.batchnorm_backward", obj, quiet=True, seed=seed)
        checks = report.result.checks
        assert checks[-1].points == float32_points, (seed, checks[-1].message)
        assert all(c.points == c.max_points for c in checks[:-1]), seed
        if not float32_points:
            assert "correct in float64 but not in float32" in checks[-1].message


QUESTION_MISTAKES = [
    ("dx_sum", {"return np.zeros(x.shape[1])": "return (data['dout'] * data['gamma'] / "
                                                 "np.sqrt(x.var(0) + eps)).sum(0)"},
     "adding a constant"),
    ("dgamma", {"return data[\"k\"] * len(x) * var / (var + eps)": "return data[\"k\"] * len(x)"},
     "M var / (var + eps)"),
    ("dx scale", {"return 1 / data[\"a\"]": "return data[\"a\"]"}, "y(a x) = y(x)"),
]


@pytest.mark.parametrize("what, replacements, hint", QUESTION_MISTAKES,
                         ids=[m[0] for m in QUESTION_MISTAKES])
def test_question_mistakes_get_hints(source, what, replacements, hint):
    obj = solution_objects(source, NOTEBOOK, **replacements)["backward_questions"]
    report, messages = check_messages("03.backward_questions", obj)
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_pasting_the_lesson_does_not_pass():
    lesson = lesson_namespace("03_backward.ipynb", [3, 9])

    def numerical_gradient(f, x, dout, h=1e-5):  # the lesson's scalar version, adapted
        return lesson["numerical_gradient"](lambda v: np.sum(dout * f(v)), x, h)

    def batchnorm_backward(dout, x, gamma, eps=1e-5):  # the lesson's staged (N, C) backward
        _, stages = lesson["forward_staged"](x, gamma, np.zeros_like(gamma), eps)
        dx, dgamma, dbeta = lesson["backward_staged"](dout, stages)
        return dx, dgamma, dbeta, {}

    score = module_score("03", {"numerical_gradient": numerical_gradient,
                                "batchnorm_backward": batchnorm_backward})
    assert score < 0.5, score
