"""Module 02 exercises (lesson 02, forward): `batch_statistics` and `batchnorm_forward` in NumPy
for `(N, C, *spatial)` (lesson 02 shows the `(N, C)` case), `batchnorm_forward_axis` with the
channels on any axis (channels last), and `forward_questions`, predictions whose answers the
grader computes from the inputs it sends.

Checks run on small seeded inputs; expected values come from the trusted functions here and
`bncourse.reference`. The drivers (what runs in the learner's process) are in
`bncourse.grading.drivers.l02_forward`.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, array_mismatch, fmt
from bncourse.grading.drivers.l02_forward import (run_batch_statistics, run_batchnorm_forward,
                                                  run_batchnorm_forward_axis, run_questions)
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN

__all__ = ["EXERCISES", "question_exercise", "reference_batchnorm_forward",
           "reference_forward_questions"]

MODULE = "02"
NOTEBOOK = "02_forward_exercises.ipynb"
REQUIRED = True  # for the certificate


def _axes(ndim, axis=1):
    axis = axis % ndim
    return tuple(a for a in range(ndim) if a != axis)


def _shape(ndim, axis=1):
    """(C,) -> the shape that broadcasts along `axis` of an ndim-array."""
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return tuple(shape)


def _M(x, axis=1):
    return x.size // x.shape[axis]


# --- batch_statistics --------------------------------------------------------------------

def reference_batch_statistics(x, axis=1):
    axes = _axes(x.ndim, axis)
    return x.mean(axis=axes), x.var(axis=axes)


def _stat_shape_hints(x, axis):
    C = x.shape[axis]
    return (
        (f"one value per channel: reduce over every axis except axis={axis}, leaving shape "
         f"({C},)", lambda shape: shape != (C,)),
    )


def _compare_batch_statistics(got, expected, inputs):
    x, axis = inputs["x"], inputs["axis"]
    tol = dict(rtol=1e-4, atol=1e-6) if x.dtype == np.float32 else dict(rtol=1e-7, atol=1e-10)
    message = array_mismatch(
        got["mean"], expected["mean"], "mean", **tol, shape_hints=_stat_shape_hints(x, axis),
        hints=(("average over every axis except the channel axis, not over axis 0 alone",
                lambda: x.mean(axis=0)),))
    if message:
        return message
    M = _M(x, axis)
    message = array_mismatch(
        got["var"], expected["var"], "var", **tol, shape_hints=_stat_shape_hints(x, axis),
        hints=(("did you use the biased variance (divide by M, not M−1)?",
                lambda: expected["var"] * M / (M - 1)),
               ("var is the variance, not the standard deviation",
                lambda: np.sqrt(expected["var"]))))
    if message:
        return message
    if not got["x_unchanged"]:
        return "batch_statistics changed its input x in place; compute new arrays instead"
    return None


def _x_inputs(shape, dtype=np.float64, axis=1):
    def make(rng):
        C, nd = shape[axis], len(shape)
        loc = rng.normal(0, 3, C).reshape(_shape(nd, axis))
        scale = rng.uniform(0.5, 3, C).reshape(_shape(nd, axis))
        return {"x": (loc + scale * rng.standard_normal(shape)).astype(dtype), "axis": axis}
    return make


BATCH_STATISTICS = Exercise(
    module="02", name="batch_statistics", implements_bn=True, kind="function",
    run=run_batch_statistics, reference=lambda: reference_batch_statistics,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("(N, C) float64", _x_inputs((8, 4)), _compare_batch_statistics),
        Check("(N, C, L) float64", _x_inputs((5, 3, 7)), _compare_batch_statistics),
        Check("(N, C, H, W) float32", _x_inputs((4, 3, 5, 5), np.float32),
              _compare_batch_statistics),
    ),
)


# --- batchnorm_forward --------------------------------------------------------------------

def reference_batchnorm_forward(x, gamma, beta, eps=1e-5, axis=1):
    axes, shape = _axes(x.ndim, axis), _shape(x.ndim, axis)
    mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    out = gamma.reshape(shape) * (x - mu) / np.sqrt(var + eps) + beta.reshape(shape)
    return out.astype(x.dtype), None


def reference_batchnorm_forward_axis(x, gamma, beta, eps=1e-5, axis=-1):
    return reference_batchnorm_forward(x, gamma, beta, eps, axis)


def _compare_batchnorm_forward(got, expected, inputs):
    x, gamma, beta, eps, axis = (inputs[k] for k in ("x", "gamma", "beta", "eps", "axis"))
    nd = x.ndim
    axes, shape = _axes(nd, axis), _shape(nd, axis)
    mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    M = _M(x, axis)
    g, b = gamma.reshape(shape), beta.reshape(shape)
    tol = dict(rtol=1e-4, atol=1e-5) if x.dtype == np.float32 else dict(rtol=1e-7, atol=1e-9)
    hints = (
        ("did you use the biased variance (divide by M, not M−1)?",
         lambda: g * (x - mu) / np.sqrt(var * M / (M - 1) + eps) + b),
        ("eps goes inside the square root: (x − mean) / sqrt(var + eps)",
         lambda: g * (x - mu) / (np.sqrt(var) + eps) + b),
        ("the statistics are per channel, over every axis except the channel axis: not over "
         "axis 0 alone", lambda: g * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + b),
        ("scale by gamma and shift by beta: out = gamma * x_hat + beta",
         lambda: (x - mu) / np.sqrt(var + eps)),
        ("out = gamma * x_hat + beta (did you swap gamma and beta?)",
         lambda: b * (x - mu) / np.sqrt(var + eps) + g),
    )
    message = array_mismatch(got["out"], expected["out"], "out", **tol, dtype=x.dtype,
                             hints=hints)
    if message:
        return message
    if not got["x_unchanged"]:
        return "batchnorm_forward changed its input x in place; compute a new array instead"
    return None


def _forward_inputs(shape, dtype=np.float64, affine=True, eps=1e-5, axis=1):
    make_x = _x_inputs(shape, dtype, axis)

    def make(rng):
        C = shape[axis]
        inputs = make_x(rng)
        if affine:
            inputs["gamma"] = rng.uniform(0.5, 2.0, C).astype(dtype)
            inputs["beta"] = rng.normal(0, 1, C).astype(dtype)
        else:
            inputs["gamma"] = np.ones(C, dtype)
            inputs["beta"] = np.zeros(C, dtype)
        if eps != 1e-5:  # a small spread, so that eps visibly matters
            inputs["x"] = (inputs["x"] * 0.3).astype(dtype)
        inputs["eps"] = eps
        return inputs
    return make


BATCHNORM_FORWARD = Exercise(
    module="02", name="batchnorm_forward", implements_bn=True, kind="function",
    run=run_batchnorm_forward, reference=lambda: reference_batchnorm_forward,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("(N, C) float64, gamma=1, beta=0", _forward_inputs((8, 4), affine=False),
              _compare_batchnorm_forward),
        Check("(N, C, L) float64 with gamma and beta", _forward_inputs((5, 3, 6)),
              _compare_batchnorm_forward),
        Check("(N, C, H, W) float64", _forward_inputs((4, 3, 5, 5)), _compare_batchnorm_forward),
        Check("(N, C, H, W) float32 keeps float32", _forward_inputs((4, 3, 5, 5), np.float32),
              _compare_batchnorm_forward),
        Check("(N, C, D, H, W) with eps=0.1, inside the square root",
              _forward_inputs((3, 2, 3, 4, 2), eps=0.1), _compare_batchnorm_forward),
    ),
)

BATCHNORM_FORWARD_AXIS = Exercise(
    module="02", name="batchnorm_forward_axis", implements_bn=True, kind="function",
    run=run_batchnorm_forward_axis, reference=lambda: reference_batchnorm_forward_axis,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("channels last (N, H, W, C), axis=-1 (the default)",
              _forward_inputs((4, 5, 5, 3), axis=-1), _compare_batchnorm_forward),
        Check("channels last, float32 keeps float32",
              _forward_inputs((3, 4, 6, 2), np.float32, axis=3), _compare_batchnorm_forward),
        Check("(N, L, C), axis=2", _forward_inputs((5, 7, 3), axis=2),
              _compare_batchnorm_forward),
        Check("(N, C, H, W), axis=1 works too", _forward_inputs((3, 4, 2, 5), axis=1),
              _compare_batchnorm_forward),
        Check("eps=0.1 is used, inside the square root, axis=-1",
              _forward_inputs((6, 2, 3), eps=0.1, axis=-1), _compare_batchnorm_forward),
    ),
)


# --- questions (shared by modules 02-05) ---------------------------------------------------

def question_exercise(module, name, questions, forbidden=(), run=run_questions):
    """An exercise `name(question, data) -> value` with one check per question.

    questions: {key: (title, make_data(rng) -> dict, answer(data) -> value,
    ((hint, mistaken_answer(data)), ...), rtol)}. Each answer is computed from the data the
    grader sends, so it differs from learner to learner and is stored nowhere as text.
    run: the module's driver (each module has its own copy in `drivers/`).
    """
    def reference():
        def answer(question, data):
            return questions[question][2](data)
        return answer

    def make_check(key):
        title, make_data, _answer, hints, rtol = questions[key]

        def make(rng):
            return {"question": key, "data": make_data(rng)}

        def compare(got, expected, inputs):
            value, want = np.asarray(got["value"]), np.asarray(expected["value"])
            data = inputs["data"]
            if value.shape != want.shape:
                what = "a number" if want.ndim == 0 else f"an array of shape {want.shape}"
                return f"{key}: give {what}, got shape {value.shape}"
            if np.allclose(value, want, rtol=rtol, atol=1e-9):
                return None
            shown = fmt(value.flat[0], want.flat[0]) if value.ndim == 0 or value.size == 1 \
                else np.array2string(value, precision=4, max_line_width=60)
            message = f"{key}: {shown} is not right"
            for text, mistaken in hints:
                try:
                    alternative = np.asarray(mistaken(data), dtype=np.float64)
                    if alternative.shape == value.shape and np.allclose(value, alternative,
                                                                        rtol=rtol, atol=1e-9):
                        return f"{message}. Hint: {text}"
                except Exception:
                    continue
            return message

        return Check(f"{key}: {title}", make, compare)

    # Answered by hand, so sealed like the exercises that implement BN: torch's BN is not there
    # to look an answer up (and the module needs one child, not two, when all else is sealed).
    return Exercise(module=module, name=name, kind="function", run=run, implements_bn=True,
                    reference=reference, forbidden=tuple(forbidden),
                    checks=tuple(make_check(key) for key in questions))


def _var_data(rng):
    C = int(rng.integers(3, 6))
    return {"var": rng.uniform(1e-5, 4e-5, C) * rng.choice([1, 1e4], C), "eps": 1e-5}


def _std_data(rng):
    C = int(rng.integers(3, 6))
    return {"var": rng.uniform(0.5, 4, C), "gamma": rng.uniform(0.5, 2, C) * rng.choice([-1, 1], C),
            "beta": rng.normal(0, 1, C), "eps": float(rng.choice([1e-5, 0.1, 0.5]))}


def _const_data(rng):
    return {"value": float(rng.normal(0, 5)), "gamma": float(rng.uniform(0.5, 2)),
            "beta": float(rng.normal(0, 1)), "eps": 1e-5}


FORWARD_QUESTIONS = {
    "x_hat_var": (
        "variance of x_hat per channel, for batch variances var and eps", _var_data,
        lambda d: d["var"] / (d["var"] + d["eps"]),
        (("x_hat's variance is not exactly 1: the batch variance is var, the divisor var + eps",
          lambda d: np.ones_like(d["var"])),), 1e-6),
    "out_std": (
        "standard deviation of each channel of out = gamma * x_hat + beta", _std_data,
        lambda d: np.abs(d["gamma"]) * np.sqrt(d["var"] / (d["var"] + d["eps"])),
        (("a standard deviation is never negative: what does a negative gamma do?",
          lambda d: d["gamma"] * np.sqrt(d["var"] / (d["var"] + d["eps"]))),
         ("beta shifts, it does not change the spread; and eps enters through var / (var + eps)",
          lambda d: np.abs(d["gamma"])),
         ("that is the variance; the question asks for the standard deviation",
          lambda d: d["gamma"]**2 * d["var"] / (d["var"] + d["eps"]))),
        1e-6),
    "unbiased_ratio": (
        "x_hat normalised with the unbiased variance, divided by the correct x_hat (eps=0)",
        lambda rng: {"M": int(rng.integers(2, 40))},
        lambda d: np.sqrt((d["M"] - 1) / d["M"]),
        (("dividing by a larger variance makes x_hat smaller, not larger",
          lambda d: np.sqrt(d["M"] / (d["M"] - 1))),
         ("x_hat divides by the standard deviation: take the square root of the variance ratio",
          lambda d: (d["M"] - 1) / d["M"])),
        1e-6),
    "constant_channel": (
        "out for a channel whose M values all equal `value`", _const_data,
        lambda d: d["beta"],
        (("x − mean is 0 for a constant channel; eps keeps the division finite",
          lambda d: d["gamma"] * d["value"] + d["beta"]),
         ("x − mean is 0: gamma multiplies 0", lambda d: d["gamma"] + d["beta"])),
        1e-6),
}

FORWARD_QUESTIONS_EXERCISE = question_exercise("02", "forward_questions", FORWARD_QUESTIONS,
                                               IMPLEMENT_BN_FORBIDDEN)


def reference_forward_questions():
    return FORWARD_QUESTIONS_EXERCISE.reference()


EXERCISES = (BATCH_STATISTICS, BATCHNORM_FORWARD, BATCHNORM_FORWARD_AXIS,
             FORWARD_QUESTIONS_EXERCISE)
