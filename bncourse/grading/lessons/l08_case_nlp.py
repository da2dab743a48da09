"""Module 08 exercises (case study 08, BN in recurrent nets): per-time-step batch statistics
(`PerStepBatchNorm`, compared with `bncourse.nn.StepwiseBatchNorm`), the BN-LSTM step
(`bn_lstm_step`, compared with `bncourse.nn.BNLSTMCell`), and three predictions.

The lesson shows the equations and the package's cells; it never shows the per-step statistics
in code, which is what the first exercise asks for.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, SubmissionError, array_mismatch, as_array
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN, tensor_attribute
from bncourse.grading.lessons._l08_cell import PREDICTIONS, STEP
from bncourse.grading.drivers.l08_case_nlp import (_buffers, _call, _make_norm, _run_norm)  # noqa: F401

__all__ = ["EXERCISES"]

MODULE = "08"
NOTEBOOK = "08_case_nlp_exercises.ipynb"
USES_COURSE_LAYERS = True  # may import bncourse.nn, models (sandbox: not sealed)
REQUIRED = True  # for the certificate

TOL = dict(rtol=1e-4, atol=2e-5)
_PACKAGE_NORM = ("bncourse.nn.stepwise.StepwiseBatchNorm.forward",
                 "bncourse.nn.stepwise.StepwiseBatchNorm.forward_sequence")


# --- 08.PerStepBatchNorm ------------------------------------------------------------------

def _reference_norm():
    from bncourse.nn.stepwise import StepwiseBatchNorm

    return StepwiseBatchNorm


def _simulate(inputs, rows="clamp", unbiased=True, momentum=None):
    """The running statistics a per-step BN with a given mistake would end with."""
    L, C = inputs["max_length"], inputs["C"]
    momentum = inputs.get("momentum", 0.1) if momentum is None else momentum
    mean, var = np.zeros((L, C)), np.ones((L, C))
    for t, x in enumerate(inputs["x"]):
        x = x.astype(np.float64)
        if rows == "skip" and t >= L:
            continue
        if rows == "shared":
            index = slice(None)
        elif rows == "wrap":
            index = t % L
        else:
            index = min(t, L - 1)
        mean[index] = (1 - momentum) * mean[index] + momentum * x.mean(0)
        var[index] = (1 - momentum) * var[index] + momentum * x.var(0, ddof=1 if unbiased else 0)
    return mean, var


def _compare_init(got, expected, inputs):
    for key, what, hint in (
            ("parameters", "parameters", " (weight and bias are torch.nn.Parameter)"),
            ("buffers", "buffers", " (register running_mean and running_var with "
             "self.register_buffer, one row per time step)")):
        if list(got[key]) != list(expected[key]):
            return f"{what}: got {list(got[key])}, expected {list(expected[key])}{hint}"
    if got["running_mean"].ndim == 1:
        return (f"running_mean has shape {got['running_mean'].shape}: statistics must be kept "
                f"per time step, shape (max_length, num_features)")
    for name in ("weight", "bias", "running_mean", "running_var"):
        message = array_mismatch(got[name], expected[name], f"initial {name}", **TOL)
        if message:
            return message
    if not got["no_bias_is_none"] or list(got["no_bias_parameters"]) != list(
            expected["no_bias_parameters"]):
        return ("with bias=False the module must have no shift: set self.bias = None "
                "(parameters: only weight)")
    return None


def _compare_train(got, expected, inputs):
    w, b = inputs["weight"].astype(np.float64), inputs["bias"].astype(np.float64)
    for t in range(len(inputs["x"])):
        x = inputs["x"][t].astype(np.float64)
        mu = x.mean(0)
        hints = (("normalise with the biased batch variance (divide by N, not N−1)",
                  lambda: w * (x - mu) / np.sqrt(x.var(0, ddof=1) + 1e-5) + b),
                 ("eps goes inside the square root",
                  lambda: w * (x - mu) / (x.std(0) + 1e-5) + b),
                 ("in training mode normalise with the batch statistics of step t, not the "
                  "running ones", lambda: w * x / np.sqrt(1 + 1e-5) + b))
        message = array_mismatch(got[f"train_{t}"], expected[f"train_{t}"],
                                 f"training output at step {t}", **TOL, hints=hints)
        if message:
            return message
        message = array_mismatch(got[f"grad_{t}"], expected[f"grad_{t}"],
                                 f"gradient of the input at step {t}", rtol=1e-3, atol=1e-4)
        if message:
            return message + (" (the gradient must flow through the batch mean and variance: "
                              "do not detach them)")
    return None


def _compare_running(got, expected, inputs):
    if got["running_mean_requires_grad"] or got["running_var_requires_grad"]:
        return ("the running statistics require grad: update them under torch.no_grad() "
                "(or from detached batch statistics)")
    L = inputs["max_length"]
    for name, k in (("running_mean", 0), ("running_var", 1)):
        hints = (
            ("statistics shared across steps: keep one row per time step and update only "
             "the row of step t", lambda: _simulate(inputs, "shared")[k]),
            (f"beyond max_length ({L}) update the last row (reuse rule: row min(t, max_length−1)), "
             "not row t % max_length", lambda: _simulate(inputs, "wrap")[k]),
            (f"steps t >= max_length ({L}) still update the statistics, of the last row",
             lambda: _simulate(inputs, "skip")[k]),
            ("running_var stores the unbiased variance (divide by N−1) while the "
             "normalisation uses the biased one", lambda: _simulate(inputs, unbiased=False)[k]),
            ("momentum weighs the new batch: running = (1 − momentum) * running + "
             "momentum * batch", lambda: _simulate(inputs, momentum=1 - inputs["momentum"])[k]))
        message = array_mismatch(got[name], expected[name], name, **TOL, hints=hints,
                                 shape_hints=(("statistics are kept per time step: shape "
                                               "(max_length, num_features)",
                                               lambda shape: len(shape) == 1),))
        if message:
            return message
    return None


def _compare_eval(got, expected, inputs):
    L, w, b = inputs["max_length"], inputs["weight"], inputs["bias"]
    mean, var = _simulate(inputs)
    for name in ("running_mean", "running_var"):
        if not np.array_equal(got["after_eval_" + name], got[name]):
            return (f"{name} changed in eval mode: update the running statistics only in "
                    "training mode (self.training)")
    for t, x in enumerate(inputs["x_eval"]):
        x = x.astype(np.float64)
        hints = (("in eval mode use the running statistics of step t, not the batch's",
                  lambda: w * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + b),
                 ("each step has its own running statistics: use row min(t, max_length−1)",
                  lambda: w * (x - mean[0]) / np.sqrt(var[0] + 1e-5) + b),
                 (f"beyond max_length ({L}) reuse the statistics of the last step, not of "
                  "step t % max_length",
                  lambda: w * (x - mean[t % L]) / np.sqrt(var[t % L] + 1e-5) + b))
        message = array_mismatch(got[f"eval_{t}"], expected[f"eval_{t}"],
                                 f"eval output at step {t} (max_length={L})", **TOL, hints=hints)
        if message:
            return message
    return array_mismatch(got["eval_one"], expected["eval_one"],
                          "eval output for a batch of one", **TOL)


def _norm_inputs(part, custom=False):
    def make(rng):
        C, N, L = 3, 6, 4
        T = L + 3  # the sequence is longer than max_length: the reuse rule is tested
        loc = rng.normal(0, 2, (T + 2, C))  # every step its own distribution
        scale = rng.uniform(0.5, 2, (T + 2, C))
        inputs = {
            "part": part, "C": C, "max_length": L, "momentum": 0.1, "eps": 1e-5,
            "weight": rng.uniform(0.5, 2, C).astype(np.float32),
            "bias": rng.normal(0, 1, C).astype(np.float32),
            "x": [(loc[t] + scale[t] * rng.standard_normal((N, C))).astype(np.float32)
                  for t in range(T)],
            "dy": [rng.standard_normal((N, C)).astype(np.float32) for _ in range(T)],
            "x_eval": [(loc[t] + scale[t] * rng.standard_normal((5, C))).astype(np.float32)
                       for t in range(T + 2)],
        }
        if custom:
            inputs["momentum"] = 0.3
        return inputs
    return make


PER_STEP = Exercise(
    uses_course_layers=True, module="08", name="PerStepBatchNorm", kind="class",
    run=_run_norm, reference=_reference_norm,
    forbidden=IMPLEMENT_BN_FORBIDDEN + _PACKAGE_NORM,
    checks=(
        Check("parameters, per-step buffers and their initial values", _norm_inputs("init"),
              _compare_init),
        Check("training output and gradient at each step", _norm_inputs("run"), _compare_train,
              points=2),
        Check("running statistics per step, reuse rule beyond max_length",
              _norm_inputs("run"), _compare_running, points=2),
        Check("running statistics with momentum=0.3", _norm_inputs("run", custom=True),
              _compare_running),
        Check("eval mode: statistics of step t, last step's beyond max_length, no update",
              _norm_inputs("run"), _compare_eval, points=2),
    ),
)

EXERCISES = (PER_STEP, STEP, PREDICTIONS)
