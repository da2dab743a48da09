"""Module 03 exercises (lesson 03, backward): `numerical_gradient` of an array-valued function
against an upstream gradient (lesson 03 shows the scalar case), the staged
`batchnorm_backward` for any (N, C, *spatial) input with the gradient at every node of the
graph (lesson 03 shows (N, C)), and `backward_questions`, predictions computed from the inputs.

Drivers (what runs in the learner's process): `bncourse.grading.drivers.l03_backward`.
"""
from __future__ import annotations

import itertools

import numpy as np

from bncourse.grading.checks import Check, Exercise, array_mismatch
from bncourse.grading.drivers.l03_backward import (STAGES, run_batchnorm_backward,
                                                   run_numerical_gradient, run_questions,
                                                   test_function)
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN, _axes, _per_channel
from bncourse.grading.lessons.l02_forward import question_exercise

__all__ = ["EXERCISES", "test_function", "reference_numerical_gradient",
           "reference_batchnorm_backward"]

MODULE = "03"
NOTEBOOK = "03_backward_exercises.ipynb"
REQUIRED = True  # for the certificate

# --- numerical_gradient -------------------------------------------------------------------


def _loss(f, dout):
    return lambda x: float(np.sum(dout * f(x)))


def _centred(L, x, h):
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = L(x)
        x[i] = old - h
        minus = L(x)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def _forward(L, x, h):
    x = np.array(x, dtype=np.float64)
    grad, L0 = np.zeros_like(x), L(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        grad[i] = (L(x) - L0) / h
        x[i] = old
    return grad


def _rows(L, x, h):
    """The slip of a loop over axis 0 only: x[i] += h moves a whole row at once."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in range(x.shape[0]):
        old = x[i].copy()
        x[i] = old + h
        plus = L(x)
        x[i] = old - h
        minus = L(x)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def reference_numerical_gradient(f, x, dout, h=1e-5):
    return _centred(_loss(f, dout), x, h)


def _compare_numerical_gradient(got, expected, inputs):
    f = test_function(inputs["a"], inputs["b"], inputs["c"])
    x, dout = inputs["x"], inputs["dout"]
    h = 1e-5 if inputs["h"] is None else inputs["h"]
    L = _loss(f, dout)
    message = array_mismatch(
        got["grad"], expected["grad"], "gradient", rtol=1e-6, atol=1e-8,
        shape_hints=((f"return one partial derivative of sum(dout * f(x)) per element of x: "
                      f"shape {x.shape}", lambda shape: True),),
        hints=(("use centred differences: (L(x + h e_i) − L(x − h e_i)) / (2h)",
                lambda: _forward(L, x, h)),
               ("divide by 2h, the distance between x − h and x + h",
                lambda: 2 * expected["grad"]),
               ("use the step h passed as an argument", lambda: _centred(L, x, 1e-5)),
               ("your loop moves a whole row x[i] at once: perturb one element at a time, over "
                "every axis (np.ndindex(x.shape) walks them all)", lambda: _rows(L, x, h)),
               ("f returns an array: differentiate the scalar L(x) = sum(dout * f(x)), weighting "
                "by dout", lambda: _centred(_loss(f, np.ones_like(dout)), x, h))))
    if message:
        return message
    if not np.allclose(got["x_after"], x, rtol=1e-12, atol=1e-12):
        return ("x was changed: restore each element after perturbing it "
                "(old = x[i]; ...; x[i] = old)")
    return None


def _gradient_inputs(shape, h):
    def make(rng):
        return {"x": rng.uniform(-1.5, 1.5, shape), "a": rng.uniform(0.5, 2, shape),
                "b": rng.uniform(-2, 2, shape), "c": rng.uniform(-0.5, 0.5, shape),
                "dout": rng.normal(0, 1, shape), "h": h}
    return make


# Sealed too (nothing in it needs torch's BN): module 03 then runs in one child, not two.
NUMERICAL_GRADIENT = Exercise(
    module="03", name="numerical_gradient", kind="function", implements_bn=True,
    run=run_numerical_gradient, reference=lambda: reference_numerical_gradient,
    forbidden=("bncourse.gradcheck.numerical_gradient",),
    checks=(
        Check("1-D x, default h", _gradient_inputs((5,), None), _compare_numerical_gradient),
        Check("2-D x: every element, not only every row", _gradient_inputs((3, 4), None),
              _compare_numerical_gradient),
        Check("weighted by dout", _gradient_inputs((4, 2), None), _compare_numerical_gradient),
        Check("uses the given h (h=1e-2)", _gradient_inputs((4,), 1e-2),
              _compare_numerical_gradient),
        Check("3-D x, x unchanged afterwards", _gradient_inputs((2, 3, 2), 1e-4),
              _compare_numerical_gradient),
    ),
)


# --- batchnorm_backward -------------------------------------------------------------------

def _backward(dout, x, gamma, eps=1e-5, *, ddof=0, slip=None):
    """Lesson 03's staged backward for (N, C, *spatial) in float64, with an optional slip."""
    x, dout = x.astype(np.float64), dout.astype(np.float64)
    axes, nd = _axes(x.ndim), x.ndim
    M = x.size // x.shape[1]
    g = _per_channel(gamma.astype(np.float64), nd)
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = (xc**2).sum(axis=axes, keepdims=True) / (M - ddof)
    s = (var + eps) ** -0.5
    x_hat = xc * s
    dbeta, dgamma = dout.sum(axis=axes), (dout * x_hat).sum(axis=axes)
    dx_hat = g * dout
    ds = (dx_hat * xc).sum(axis=axes, keepdims=True)
    dvar = -0.5 * s**3 * ds
    dxc = dx_hat * s + (2 * xc * dvar if slip == "var_M" else 2 * xc / (M - ddof) * dvar)
    dmu = -dxc.sum(axis=axes, keepdims=True)
    dx = dxc + (dmu if slip == "mu_M" else dmu / M)
    if slip == "sign":
        dx = s / M * (M * dx_hat - dx_hat.sum(axis=axes, keepdims=True)
                      + x_hat * (dx_hat * x_hat).sum(axis=axes, keepdims=True))
    stages = {"x_hat": dx_hat, "inv_std": ds.reshape(-1), "var": dvar.reshape(-1),
              "mu": dmu.reshape(-1)}
    return dx, dgamma, dbeta, stages


def reference_batchnorm_backward(dout, x, gamma, eps=1e-5):
    dx, dgamma, dbeta, stages = _backward(dout, x, gamma, eps)
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype), stages


def _float_tol(expected, dtype):
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 1.0
    if dtype == np.float32:
        return dict(rtol=2e-3, atol=2e-3 * scale)
    return dict(rtol=1e-6, atol=1e-9 * max(scale, 1.0))


def _mismatch_parts(got, expected, inputs, dtype):
    x, dout, gamma, eps = inputs["x"], inputs["dout"], inputs["gamma"], inputs["eps"]
    nd, C = x.ndim, x.shape[1]
    axes = _axes(nd)
    s = 1 / np.sqrt(x.astype(np.float64).var(axis=axes, keepdims=True) + eps)
    g = _per_channel(gamma.astype(np.float64), nd)
    dout64 = dout.astype(np.float64)
    slip = lambda **kw: _backward(dout, x, gamma, eps, **kw)
    one_over_m = ("a factor 1/M is missing: the mean and the variance average over M values, "
                  "so each path through them carries a 1/M")
    unbiased = "did you use the unbiased variance (divide by M, not M−1)? BN's forward uses M"
    hints = {
        "dx": (("dx must include the paths through the batch mean and variance, not only "
                "dout * gamma / sqrt(var + eps)", lambda: dout64 * g * s),
               ("dx_hat = dout * gamma: did you forget gamma?", lambda: expected["dx"] / g),
               (unbiased, lambda: slip(ddof=1)[0]),
               (one_over_m, lambda: expected["dx"] * (x.size // C)),
               (one_over_m, lambda: slip(slip="mu_M")[0]),
               (one_over_m, lambda: slip(slip="var_M")[0]),
               ("check the sign of the x_hat term: the path through the variance is "
                "subtracted, − x_hat * sum(dx_hat * x_hat)", lambda: slip(slip="sign")[0])),
        "dgamma": (("dgamma = sum(dout * x_hat), dbeta = sum(dout): swapped?",
                    lambda: expected["dbeta"]),
                   (unbiased, lambda: slip(ddof=1)[1])),
        "dbeta": (("dgamma = sum(dout * x_hat), dbeta = sum(dout): swapped?",
                   lambda: expected["dgamma"]),),
        "x_hat": (("dL/dx_hat = gamma * dout: did you forget gamma?", lambda: dout64),),
        "inv_std": (("s multiplies x̃ = x − μ in x_hat = x̃ · s: dL/ds sums dx_hat · x̃, not "
                     "dx_hat · x_hat", lambda: expected["stages"]["inv_std"] * s.reshape(-1)),
                    (unbiased, lambda: slip(ddof=1)[3]["inv_std"])),
        "var": (("s = (var + eps)^(−1/2), so ds/dvar = −(1/2) s³: check the sign and the "
                 "power", lambda: -expected["stages"]["var"]),
                ("s = (var + eps)^(−1/2), so ds/dvar = −(1/2) s³: check the sign and the "
                 "power", lambda: expected["stages"]["var"] / s.reshape(-1) ** 2),
                (unbiased, lambda: slip(ddof=1)[3]["var"])),
        "mu": (("x̃ = x − μ: the gradient reaching μ is minus the sum of dL/dx̃",
                lambda: -expected["stages"]["mu"]),
               (one_over_m, lambda: slip(slip="var_M")[3]["mu"]),
               (unbiased, lambda: slip(ddof=1)[3]["mu"])),
    }
    per_channel = ((f"one value per channel: sum over every axis but 1, shape ({C},)",
                    lambda shape: True),)

    def mismatch(part):
        g_part = got["stages"][part] if part in STAGES else got[part]
        e_part = expected["stages"][part] if part in STAGES else expected[part]
        what = f"stages[{part!r}] (dL/d{part})" if part in STAGES else part
        return array_mismatch(g_part, e_part, what, **_float_tol(e_part, dtype),
                              hints=hints[part],
                              shape_hints=() if part in ("dx", "x_hat") else per_channel)

    for part in ("dbeta", "dgamma", "x_hat"):
        message = mismatch(part)
        if message:
            return message
    message = mismatch("dx")
    # A wrong dx without a hint of its own: the first node of the graph whose gradient has a
    # recognised slip says more (the stages in order from the loss back to x).
    stage_messages = [m for m in (mismatch(p) for p in STAGES[1:]) if m]
    if message and "Hint:" not in message:
        for stage_message in stage_messages:
            if "Hint:" in stage_message:
                return stage_message
    return message or (stage_messages[0] if stage_messages else None)


def _compare_backward(got, expected, inputs):
    x = inputs["x"]
    parts = ("dx", "dgamma", "dbeta")
    shapes = {k: np.shape(got[k]) for k in parts}
    if shapes["dx"] != x.shape:
        for order in itertools.permutations(parts):
            if order != parts and all(np.shape(got[k]) == np.shape(expected[e])
                                      and np.allclose(got[k], expected[e], rtol=1e-3, atol=1e-4)
                                      for k, e in zip(parts, order)):
                return (f"dx has shape {shapes['dx']}, expected {x.shape}. Hint: return the "
                        "gradients in the order (dx, dgamma, dbeta, stages)")
    if x.dtype == np.float32:
        in64 = dict(inputs, x=x.astype(np.float64))
        exp64 = dict(zip(("dx", "dgamma", "dbeta", "stages"), _backward(
            inputs["dout"], x, inputs["gamma"], inputs["eps"])))
        message = _mismatch_parts(got, expected, inputs, np.float32)
        if message and _mismatch_parts(got["float64"], exp64, in64, np.float64) is None:
            return (f"{message}. Hint: correct in float64 but not in float32: you lose "
                    "precision. Compute the variance from x − mean (not as mean(x²) − mean²), "
                    "or accumulate the sums in float64")
        return message
    return _mismatch_parts(got, expected, inputs, np.float64)


def _backward_inputs(shape, dtype=np.float64, eps=1e-5, loc_scale=2.0, spread=(0.5, 2)):
    def make(rng):
        C = shape[1]
        loc = _per_channel(rng.normal(0, loc_scale, C), len(shape))
        scale = _per_channel(rng.uniform(*spread, C), len(shape))
        x = loc + scale * rng.standard_normal(shape)
        if eps != 1e-5:
            x = 0.3 * x
        return {"x": x.astype(dtype), "dout": rng.standard_normal(shape).astype(dtype),
                "gamma": rng.uniform(0.5, 2, C).astype(dtype), "eps": eps}
    return make


BATCHNORM_BACKWARD = Exercise(
    module="03", name="batchnorm_backward", implements_bn=True, kind="function",
    run=run_batchnorm_backward, reference=lambda: reference_batchnorm_backward,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("(N, C) float64: dx, dgamma, dbeta and the stages", _backward_inputs((8, 4)),
              _compare_backward),
        Check("(N, C, L) float64", _backward_inputs((4, 3, 6)), _compare_backward),
        Check("(N, C, H, W) float64", _backward_inputs((3, 2, 4, 4)), _compare_backward),
        Check("a small batch, (N, C) = (3, 5)", _backward_inputs((3, 5)), _compare_backward),
        Check("eps=0.1 is used", _backward_inputs((6, 3), eps=0.1), _compare_backward),
        Check("(N, C, H, W) float32, mean 1000 times the spread",
              _backward_inputs((32, 3, 4, 4), np.float32, loc_scale=1000.0, spread=(0.8, 1.2)),
              _compare_backward),
    ),
)


# --- backward_questions --------------------------------------------------------------------

def _batch(rng, eps=1e-5):
    N, C = int(rng.integers(6, 12)), int(rng.integers(2, 5))
    return {"x": rng.normal(0, 1, (N, C)) * rng.uniform(0.5, 2, C) + rng.normal(0, 2, C),
            "dout": rng.normal(0, 1, (N, C)), "gamma": rng.uniform(0.5, 2, C), "eps": eps}


def _xhat(d, eps=None):
    eps = d["eps"] if eps is None else eps
    return (d["x"] - d["x"].mean(0)) / np.sqrt(d["x"].var(0) + eps)


def _dgamma_data(rng):
    d = _batch(rng, eps=float(rng.choice([0.1, 0.5])))
    d.pop("dout")
    d["k"] = rng.uniform(0.5, 2, d["x"].shape[1])
    return d


def _affine_data(rng):
    d = _batch(rng, eps=0.0)
    C = d["x"].shape[1]
    d.pop("dout")
    d.update(p=rng.normal(0, 1, C), q=rng.normal(0, 1, C))
    return d


BACKWARD_QUESTIONS = {
    "dx_sum": (
        "per-channel sum of dx over the batch", _batch,
        lambda d: np.zeros(d["x"].shape[1]),
        (("adding a constant to a channel leaves BN's output unchanged: what does that say "
          "about sum(dx)? (lesson 03, section 4)",
          lambda d: (d["dout"] * d["gamma"] / np.sqrt(d["x"].var(0) + d["eps"])).sum(0)),), 1e-6),
    "dgamma_for_scaled_x_hat": (
        "dgamma when dout = k * x_hat (k per channel)", _dgamma_data,
        lambda d: d["k"] * len(d["x"]) * d["x"].var(0) / (d["x"].var(0) + d["eps"]),
        (("sum(x_hat²) over the M values is M var / (var + eps), not M",
          lambda d: d["k"] * len(d["x"])),
         ("dgamma sums over the M values of the batch", lambda d: d["k"])), 1e-6),
    "dx_for_affine_dout": (
        "dx (shaped like x) for dout = p + q * x_hat, with eps = 0", _affine_data,
        lambda d: np.zeros_like(d["x"]),
        (("dx is gamma * s * P dout, and P removes exactly the directions 1 and x_hat",
          lambda d: d["gamma"] * (d["p"] + d["q"] * _xhat(d)) / np.sqrt(d["x"].var(0))),), 1e-6),
    "dx_factor_when_x_scaled": (
        "x is replaced by a * x (a > 0, eps -> 0), dout unchanged: dx is multiplied by?",
        lambda rng: {"a": float(rng.uniform(2, 10))},
        lambda d: 1 / d["a"],
        (("BN's output does not change when x is scaled, so y(a x) = y(x): differentiate "
          "with respect to x", lambda d: d["a"]),
         ("the output is unchanged, but its derivative with respect to x is not",
          lambda d: 1.0)), 1e-6),
}

BACKWARD_QUESTIONS_EXERCISE = question_exercise("03", "backward_questions", BACKWARD_QUESTIONS,
                                                IMPLEMENT_BN_FORBIDDEN, run_questions)

EXERCISES = (NUMERICAL_GRADIENT, BATCHNORM_BACKWARD, BACKWARD_QUESTIONS_EXERCISE)
