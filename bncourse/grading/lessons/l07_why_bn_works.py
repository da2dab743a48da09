"""Module 07 exercises (lesson 07, why BN works): `santurkar_noise` (the noisy-BN noise, drawn
from a generator the grader passes in), `angular_update` (how far an SGD step turned each row
of a scale-invariant weight), `equilibrium` (weight decay's equilibrium norm and the effective
learning rate there) and `understanding` (predictions, checked)."""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import (Check, Exercise, SubmissionError, array_mismatch, as_array,
                                     fmt, unpack)
from bncourse.grading.drivers.l07_why_bn_works import (_run_noise, _run_angular, _run_equilibrium, _run_answers)  # noqa: F401
from bncourse.grading.lessons._common import prediction_checks

__all__ = ["EXERCISES", "reference_santurkar_noise", "reference_angular_update",
           "reference_equilibrium", "reference_understanding"]

MODULE = "07"
NOTEBOOK = "07_why_bn_works_exercises.ipynb"
USES_COURSE_LAYERS = True  # may import bncourse.nn, models (sandbox: not sealed)
REQUIRED = True  # for the certificate

NOISE_FORBIDDEN = ("bncourse.cases.smoothness.NoisyBatchNorm1d.draw",
                   "bncourse.cases.smoothness.NoisyBatchNorm1d.forward")
EQUILIBRIUM_FORBIDDEN = ("bncourse.cases.bn_scale.equilibrium_norm",)

# --- santurkar_noise ----------------------------------------------------------------------


def reference_santurkar_noise(a, generator):
    """s * a + m with Santurkar et al.'s draws, in the order the exercise states."""
    from bncourse.cases.smoothness import NoisyBatchNorm1d

    layer = NoisyBatchNorm1d(a.shape[1], generator=generator)
    s, m = layer.draw(a.shape[0])
    return s.to(a.dtype) * a + m.to(a.dtype)


def _raw_draws(seed, n, c):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [t.double().numpy() for t in (torch.rand(c, generator=g), torch.rand(c, generator=g),
                                         torch.rand(n, c, generator=g),
                                         torch.randn(n, c, generator=g))]


def _compare_noise(got, expected, inputs):
    if not got["unchanged"]:
        return "santurkar_noise changed its input a in place: return a new tensor"
    a = inputs["a"].astype(np.float64)
    n, c = a.shape
    u_mu, u_sig, u_m, z = _raw_draws(inputs["seed"], n, c)
    mu, sigma = (2 * u_mu - 1) * 0.5, 1 + 0.25 * u_sig
    m, s = mu + (2 * u_m - 1) * 0.1, sigma + 0.1 * z
    hints = (
        ("scale first, then shift: a <- s * a + m, not s * (a + m)", lambda: s * (a + m)),
        ("sigma ~ U(1, 1.25): 1 + 0.25 * rand, not 1.25 * rand",
         lambda: (1.25 * u_sig + 0.1 * z) * a + m),
        ("m_ij ~ U(mu_j - 0.1, mu_j + 0.1) is centred on the step's mu_j",
         lambda: s * a + (2 * u_m - 1) * 0.1),
        ("mu ~ U(-0.5, 0.5): (2 * rand - 1) * 0.5, not 0.5 * rand",
         lambda: s * a + 0.5 * u_mu + (2 * u_m - 1) * 0.1),
        ("s ~ N(sigma, 0.1): 0.1 is the standard deviation (multiply randn by 0.1)",
         lambda: (sigma + np.sqrt(0.1) * z) * a + m),
        ("draw in the stated order: mu (C,), sigma (C,), then m (N, C), then s (N, C)",
         lambda: (sigma + 0.1 * (2 * u_m - 1)) * a + mu + 0.1 * (2 * z - 1)),
    )
    tol = dict(rtol=1e-5, atol=1e-6) if inputs["a"].dtype == np.float32 else dict(rtol=1e-9,
                                                                                   atol=1e-12)
    return array_mismatch(got["out"], expected["out"], "the noisy activations", **tol,
                          dtype=inputs["a"].dtype, hints=hints,
                          shape_hints=((f"return s * a + m, shaped like a {a.shape}",
                                        lambda shape: True),))


def _noise_inputs(n, c, dtype=np.float64):
    def make(rng):
        return {"a": rng.normal(0, 1, (n, c)).astype(dtype), "seed": int(rng.integers(2**31))}
    return make


SANTURKAR_NOISE = Exercise(
    uses_course_layers=True, module="07", name="santurkar_noise", kind="function",
    run=_run_noise, reference=lambda: reference_santurkar_noise, forbidden=NOISE_FORBIDDEN,
    checks=(
        Check("(N, C) = (16, 5) float64", _noise_inputs(16, 5), _compare_noise),
        Check("(N, C) = (3, 40) float64", _noise_inputs(3, 40), _compare_noise),
        Check("float32 keeps float32", _noise_inputs(8, 6, np.float32), _compare_noise),
        Check("one sample per batch, (1, 7)", _noise_inputs(1, 7), _compare_noise),
    ),
)

# --- angular_update -----------------------------------------------------------------------


def reference_angular_update(w_before, w_after):
    """The angle (radians) between row j of `w_before` and row j of `w_after`, `(out,)`."""
    cos = (w_before * w_after).sum(1) / (np.linalg.norm(w_before, axis=1)
                                         * np.linalg.norm(w_after, axis=1))
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _compare_angular(got, expected, inputs):
    wb, wa = inputs["w_before"], inputs["w_after"]
    out = got["out"]
    if out.shape == expected["out"].shape and np.isnan(out).any():
        return ("the angle is NaN for a row that only changed length: rounding puts the cosine "
                "just above 1; clip it to [-1, 1] before arccos")
    whole = np.arccos(np.clip((wb * wa).sum() / (np.linalg.norm(wb) * np.linalg.norm(wa)),
                              -1, 1))
    cols = reference_angular_update(wb.T, wa.T)
    hints = (("radians, not degrees", lambda: np.degrees(expected["out"])),
             ("one angle per row (the weights of one BN unit), not of the whole matrix",
              lambda: np.full(wb.shape[0], whole)),
             ("return the angle (arccos of the cosine), not the cosine",
              lambda: np.cos(expected["out"])),
             ("the angle does not depend on the rows' lengths: divide by both norms",
              lambda: np.arccos(np.clip((wb * wa).sum(1) / (wb ** 2).sum(1), -1, 1))))
    shape_hints = ((f"one angle per row of w: shape ({wb.shape[0]},)", lambda shape: True),)
    if cols.shape == out.shape and wb.shape[0] == wb.shape[1]:
        hints = hints + (("rows, not columns: row j of the (out, in) weight feeds unit j",
                          lambda: cols),)
    return array_mismatch(out, expected["out"], "the angles", rtol=1e-6, atol=1e-7, hints=hints,
                          shape_hints=shape_hints)


def _angular_inputs(out_f, in_f, step=0.3, rescale_row=False):
    def make(rng):
        wb = rng.normal(0, 1, (out_f, in_f)) * rng.uniform(0.2, 3, (out_f, 1))
        wa = wb + step * rng.normal(0, 1, (out_f, in_f))
        if rescale_row:  # rows that only changed length, one where rounding puts cos above 1
            for j in range(out_f // 2):
                wa[j] = wb[j] * rng.uniform(0.3, 3)
            for _ in range(200):
                row = wb[0] * rng.uniform(0.3, 3)
                if (wb[0] * row).sum() / (np.linalg.norm(wb[0]) * np.linalg.norm(row)) > 1:
                    wa[0] = row
                    break
        return {"w_before": wb, "w_after": wa}
    return make


ANGULAR_UPDATE = Exercise(
    uses_course_layers=True, module="07", name="angular_update", kind="function",
    run=_run_angular, reference=lambda: reference_angular_update,
    checks=(
        Check("a (6, 10) weight", _angular_inputs(6, 10), _compare_angular),
        Check("rows of very different lengths, (5, 5)", _angular_inputs(5, 5, step=1.0),
              _compare_angular),
        Check("rows that only changed length turned by 0", _angular_inputs(6, 8, rescale_row=True),
              _compare_angular),
    ),
)

# --- equilibrium --------------------------------------------------------------------------


def reference_equilibrium(lr, weight_decay, unit_grad_norm):
    """(||w||*, lr / ||w||*^2) with ||w||*^4 = lr^2 G^2 / (1 - (1 - lr wd)^2)."""
    from bncourse.cases.bn_scale import equilibrium_norm

    norm = equilibrium_norm(lr, weight_decay, unit_grad_norm)
    return norm, lr / norm**2


def _compare_equilibrium(got, expected, inputs):
    lr, wd, G = inputs["lr"], inputs["wd"], inputs["G"]
    exact4 = lr**2 * G**2 / (1 - (1 - lr * wd) ** 2)
    approx = (lr * G**2 / (2 * wd)) ** 0.25
    for key, what in (("norm", "the equilibrium norm"), ("eff", "the effective learning rate")):
        g, e = got[key], expected[key]
        if np.isclose(g, e, rtol=1e-6):
            continue
        message = f"{what} is {fmt(g, e)}, expected {fmt(e, g)}"
        if key == "norm":
            alternatives = (
                ("lr G^2 / (2 wd) is the small-lr*wd approximation; solve the step exactly: "
                 "||w||^2 = (1 - lr wd)^2 ||w||^2 + lr^2 G^2 / ||w||^2", approx),
                ("return the norm ||w||, not its square or fourth power", exact4 ** 0.5),
                ("return the norm ||w||, not its square or fourth power", exact4),
                ("the gradient's norm is G / ||w||, so its square is G^2 / ||w||^2: the fixed "
                 "point involves ||w||^4", exact4 ** 0.5 / lr))
        else:
            n = expected["norm"]
            alternatives = (("the effective learning rate is lr / ||w||^2 (squared norm)", lr / n),
                            ("the effective learning rate is lr / ||w||^2, not lr * ||w||^2",
                             lr * n**2),
                            ("use the equilibrium norm you found", lr / approx**2))
        for text, value in alternatives:
            if np.isclose(g, value, rtol=1e-6):
                return f"{message}. Hint: {text}"
        return message
    return None


def _equilibrium_inputs(lr, wd, G):
    def make(rng):
        jitter = rng.uniform(0.9, 1.1)
        return {"lr": lr * jitter, "wd": wd, "G": G * rng.uniform(0.8, 1.2)}
    return make


EQUILIBRIUM = Exercise(
    uses_course_layers=True, module="07", name="equilibrium", kind="function",
    run=_run_equilibrium, reference=lambda: reference_equilibrium,
    forbidden=EQUILIBRIUM_FORBIDDEN,
    checks=(
        Check("lr 0.1, weight decay 5e-4", _equilibrium_inputs(0.1, 5e-4, 2.0),
              _compare_equilibrium),
        Check("a large lr * wd (1.0 * 0.3): the approximation is not enough",
              _equilibrium_inputs(1.0, 0.3, 0.5), _compare_equilibrium),
        Check("lr 0.05, weight decay 0.05", _equilibrium_inputs(0.05, 0.05, 1.3),
              _compare_equilibrium),
    ),
)

# --- understanding ------------------------------------------------------------------------------

# key: (kind, expected, tolerance or choices, hint)
QUESTIONS = {
    "effective_lr_factor_wd_x4": ("number", 2.0, 0.05,
                                  "at equilibrium lr/||w||^2 is about sqrt(2 lr wd) / G: what "
                                  "does 4x the weight decay do to a square root?"),
    "grad_factor_weights_x10": ("number", 0.1, 1e-3,
                                "L(cW) = L(W) for a layer followed by BN: differentiate both "
                                "sides with respect to W"),
    "most_ics": ("choice", "noisy BN", ("no BN", "BN", "noisy BN"),
                 "look at section 1 of the lesson: which network's gradients changed most?"),
    "first_layer_gradient_deep_plain": ("choice", "larger", ("smaller", "similar", "larger"),
                                        "section 5: a 40-layer BN MLP without skip connections"),
}


def reference_understanding():
    return {key: spec[1] for key, spec in QUESTIONS.items()}



UNDERSTANDING = Exercise(
    uses_course_layers=True, module="07", name="understanding", kind="function",
    run=_run_answers, reference=lambda: reference_understanding,
    checks=prediction_checks(QUESTIONS, number_word="a number (a factor)",
                             wrong="is not what the lesson measured"),
)

EXERCISES = (SANTURKAR_NOISE, ANGULAR_UPDATE, EQUILIBRIUM, UNDERSTANDING)
