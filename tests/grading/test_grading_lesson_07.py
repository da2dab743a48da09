"""Module 07 checks: the solutions pass, stubs score 0, and each typical mistake gets its hint."""
import numpy as np
import pytest

import bncourse
from grading_helpers import check_messages, solution_cells, solution_objects

NOTEBOOK = "07_why_bn_works_exercises.ipynb"


@pytest.fixture(scope="module")
def solution_source():
    cells = [c for c in solution_cells(NOTEBOOK) if "for step in range(3000)" not in c]
    return "\n\n".join(cells)


NOISE_MISTAKES = [
    ("shift before scale", {"return s.to(a.dtype) * a + m.to(a.dtype)":
                            "return s.to(a.dtype) * (a + m.to(a.dtype))"}, "scale first"),
    ("sigma from U(0, 1.25)", {"sigma = 1 + 0.25 * torch.rand(c, generator=generator)":
                               "sigma = 1.25 * torch.rand(c, generator=generator)"}, "U(1, 1.25)"),
    ("m not centred on mu", {"m = mu + (torch.rand(n, c": "m = 0 * mu + (torch.rand(n, c"},
     "centred on the step's mu_j"),
    ("mu from U(0, 0.5)", {"mu = (torch.rand(c, generator=generator) * 2 - 1) * 0.5":
                           "mu = torch.rand(c, generator=generator) * 0.5"}, "mu ~ U(-0.5, 0.5)"),
    ("0.1 as a variance", {"s = sigma + 0.1 * torch.randn": "s = sigma + 0.1 ** 0.5 * torch.randn"},
     "standard deviation"),
    ("m and s drawn in the wrong order",
     {"    m = mu + (torch.rand(n, c, generator=generator) * 2 - 1) * 0.1\n"
      "    s = sigma + 0.1 * torch.randn(n, c, generator=generator)":
      "    s = sigma + 0.1 * (torch.rand(n, c, generator=generator) * 2 - 1)\n"
      "    m = mu + 0.1 * (torch.randn(n, c, generator=generator) * 2 - 1)"},
     "draw in the stated order"),
    ("float64 lost", {"return s.to(a.dtype) * a + m.to(a.dtype)": "return (s * a.float() + m)"},
     "dtype"),
    ("in place", {"return s.to(a.dtype) * a + m.to(a.dtype)":
                  "a.mul_(s.to(a.dtype)).add_(m.to(a.dtype)); return a"}, "in place"),
]


@pytest.mark.parametrize("what, replacements, hint", NOISE_MISTAKES,
                         ids=[m[0] for m in NOISE_MISTAKES])
def test_noise_mistakes_get_hints(solution_source, what, replacements, hint):
    report, messages = check_messages("07.santurkar_noise",
                                 solution_objects(solution_source, NOTEBOOK, **replacements)["santurkar_noise"])
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_the_lesson_layer_is_flagged():
    def santurkar_noise(a, generator):
        from bncourse.cases.smoothness import NoisyBatchNorm1d

        s, m = NoisyBatchNorm1d(a.shape[1], generator=generator).draw(a.shape[0])
        return s.to(a.dtype) * a + m.to(a.dtype)

    report, messages = check_messages("07.santurkar_noise", santurkar_noise)
    assert report.score == 0 and all("flagged" in m for m in messages), messages


ANGLE_SOLUTION = "    return np.arccos(np.clip(cos, -1.0, 1.0))"
ANGLE_MISTAKES = [
    ("degrees", {ANGLE_SOLUTION: "    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))"},
     "radians"),
    ("no clip", {ANGLE_SOLUTION: "    return np.arccos(cos)"}, "clip it to [-1, 1]"),
    ("cosine", {ANGLE_SOLUTION: "    return cos"}, "not the cosine"),
    ("whole matrix", {ANGLE_SOLUTION: "    c = (w_before * w_after).sum() / (np.linalg.norm(w_before)"
                      " * np.linalg.norm(w_after))\n"
                      "    return np.full(len(w_before), np.arccos(np.clip(c, -1, 1)))"},
     "one angle per row"),
    ("columns", {"(w_before * w_after).sum(axis=1) / (np.linalg.norm(w_before, axis=1)\n"
                 "                                              * np.linalg.norm(w_after, axis=1))":
                 "(w_before * w_after).sum(axis=0) / (np.linalg.norm(w_before, axis=0)"
                 " * np.linalg.norm(w_after, axis=0))"}, "rows, not columns"),
    ("one norm", {"* np.linalg.norm(w_after, axis=1))": "* np.linalg.norm(w_before, axis=1))"},
     "divide by both norms"),
]


@pytest.mark.parametrize("what, replacements, hint", ANGLE_MISTAKES,
                         ids=[m[0] for m in ANGLE_MISTAKES])
def test_angle_mistakes_get_hints(solution_source, what, replacements, hint):
    report, messages = check_messages("07.angular_update",
                                 solution_objects(solution_source, NOTEBOOK, **replacements)["angular_update"])
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


EQ_NORM = "    norm = (lr**2 * unit_grad_norm**2 / (1 - (1 - lr * weight_decay) ** 2)) ** 0.25"
EQ_MISTAKES = [
    ("approximation", {EQ_NORM: "    norm = (lr * unit_grad_norm**2 / (2 * weight_decay)) ** 0.25"},
     "small-lr*wd approximation"),
    ("norm squared", {EQ_NORM: EQ_NORM[:-8] + " ** 0.5"}, "not its square"),
    ("effective lr over the norm", {"return norm, lr / norm**2": "return norm, lr / norm"},
     "lr / ||w||^2 (squared norm)"),
]


@pytest.mark.parametrize("what, replacements, hint", EQ_MISTAKES, ids=[m[0] for m in EQ_MISTAKES])
def test_equilibrium_mistakes_get_hints(solution_source, what, replacements, hint):
    report, messages = check_messages("07.equilibrium",
                                 solution_objects(solution_source, NOTEBOOK, **replacements)["equilibrium"])
    assert report.score < 1.0
    assert any(hint in m for m in messages), messages


def test_equilibrium_calling_the_package_is_flagged():
    def equilibrium(lr, weight_decay, unit_grad_norm):
        from bncourse.cases.bn_scale import equilibrium_norm

        n = equilibrium_norm(lr, weight_decay, unit_grad_norm)
        return n, lr / n**2

    report, messages = check_messages("07.equilibrium", equilibrium)
    assert report.score == 0 and all("flagged" in m for m in messages), messages


def test_wrong_predictions_get_hints():
    def understanding():
        return {"effective_lr_factor_wd_x4": 4.0, "grad_factor_weights_x10": 10,
                "most_ics": "BN", "first_layer_gradient_deep_plain": "similar"}

    report, messages = check_messages("07.understanding", understanding)
    assert report.score == 0 and len(messages) == 4
    assert all("Hint" in m for m in messages), messages


def test_answers_type_errors():
    report, messages = check_messages("07.understanding", lambda: {"effective_lr_factor_wd_x4": "2",
                                                        "grad_factor_weights_x10": True,
                                                        "most_ics": "noisy", })
    assert report.score == 0
    assert any("give a number" in m for m in messages)
    assert any("not one of the choices" in m for m in messages)


def test_reference_matches_the_solution_numbers():
    from bncourse.grading.lessons import l07_why_bn_works as l07

    n, eff = l07.reference_equilibrium(0.1, 0.05, 1.0)
    assert eff == pytest.approx(np.sqrt(1 - 0.995**2), rel=1e-9)
    assert l07.reference_angular_update(np.eye(2), np.array([[1.0, 1.0], [0.0, 2.0]])) == \
        pytest.approx([np.pi / 4, 0.0])
