"""Module 10 exercises (lesson 10, normalisation variants and small batches):
`group_norm_channels_last` (GroupNorm's forward for `(N, *, C)` input, a layout the lesson does
not show: its code reshapes channels-first input), `batch_renorm_train` (Batch Renorm's r, d and
x_hat, with the stop gradient checked through the backward pass) and `small_batch_predictions`.

The drivers (what runs in the learner's process) are in
`bncourse.grading.drivers.l10_variants_small_batch`; references call the package.
"""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, array_mismatch
from bncourse.grading.drivers.l10_variants_small_batch import (run_answers, run_group_norm,
                                                               run_renorm)
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN, prediction_checks

__all__ = ["EXERCISES", "reference_group_norm_channels_last", "reference_batch_renorm_train",
           "reference_small_batch_predictions", "QUESTIONS"]

MODULE = "10"
NOTEBOOK = "10_variants_small_batch_exercises.ipynb"
REQUIRED = True  # for the certificate

# Calls that would skip writing the normalisation: torch's and the course's kernels and modules.
GROUP_NORM_FORBIDDEN = IMPLEMENT_BN_FORBIDDEN + (
    "torch.nn.functional.group_norm", "torch.group_norm", "torch.native_group_norm",
    "torch.nn.GroupNorm.forward", "torch.nn.functional.layer_norm", "torch.layer_norm",
    "torch.native_layer_norm", "torch.nn.LayerNorm.forward", "torch.nn.functional.instance_norm",
    "torch.instance_norm", "bncourse.nn.group_norm", "bncourse.nn.groupnorm.group_norm",
    "bncourse.nn.GroupNorm.forward",
)
RENORM_FORBIDDEN = IMPLEMENT_BN_FORBIDDEN + (
    "bncourse.nn.renorm_factors", "bncourse.nn.renorm.renorm_factors",
    "bncourse.nn.renorm._BatchRenorm.forward", "bncourse.nn.BatchRenorm1d.forward",
    "bncourse.nn.BatchRenorm2d.forward",
)

# --- group_norm_channels_last ---------------------------------------------------------------


def reference_group_norm_channels_last(x, num_groups, weight, bias, eps=1e-5):
    """GroupNorm of channels-last `(N, *, C)` input: the package's `group_norm` on the
    channels-first view, moved back."""
    from bncourse.nn.groupnorm import group_norm

    return group_norm(x.movedim(-1, 1), num_groups, weight, bias, eps).movedim(1, -1)


def _gn_numpy(x, G, w, b, eps, ddof=0, variant="right"):
    """GroupNorm of (N, *, C) x in float64, and the typical mistakes (for hints)."""
    x = x.astype(np.float64)
    N, C = x.shape[0], x.shape[-1]
    if variant == "channels_first":  # the lesson's reshape applied to channels-last data
        xg = x.reshape(N, G, -1)
        xn = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, ddof=ddof, keepdims=True)
                                                        + eps)
        return xn.reshape(x.shape) * w + b
    if variant == "per_position":  # statistics over the group's channels at each position only
        xg = x.reshape(x.shape[:-1] + (G, C // G))
        xn = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, ddof=ddof, keepdims=True)
                                                        + eps)
        return xn.reshape(x.shape) * w + b
    if variant == "strided":  # channel c in group c % G instead of c // (C / G)
        xg = x.reshape(x.shape[:-1] + (C // G, G))
        axes = tuple(range(1, xg.ndim - 1))  # every axis but N and the (last) group axis
        mean = xg.mean(axes, keepdims=True)
        var = xg.var(axes, ddof=ddof, keepdims=True)
        return ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape) * w + b
    xg = x.reshape(x.shape[:-1] + (G, C // G))  # (N, *, G, C/G)
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)  # positions and the group's channels
    mean = xg.mean(axes, keepdims=True)
    var = xg.var(axes, ddof=ddof, keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape) * w + b


def _compare_group_norm(got, expected, inputs):
    if not got["unchanged"]:
        return "group_norm_channels_last changed its input x in place: return a new tensor"
    x, G, w, b, eps = (inputs[k] for k in ("x", "num_groups", "weight", "bias", "eps"))
    hints = (
        ("the channels are on the LAST axis here: x.reshape(N, G, -1) groups values of "
         "neighbouring positions, not channels (move C next to N first, or reshape to "
         "(N, *, G, C // G))", lambda: _gn_numpy(x, G, w, b, eps, variant="channels_first")),
        ("use the biased variance (divide by the count, unbiased=False), as GroupNorm and BN's "
         "training mode do", lambda: _gn_numpy(x, G, w, b, eps, ddof=1)),
        ("a group is C // G consecutive channels (channel c is in group c // (C // G)), not "
         "every G-th channel", lambda: _gn_numpy(x, G, w, b, eps, variant="strided")),
        ("a group's statistics are over its channels AND every spatial position of the sample",
         lambda: _gn_numpy(x, G, w, b, eps, variant="per_position")),
        ("weight and bias are per channel: y = x_hat * weight + bias along the last axis",
         lambda: _gn_numpy(x, G, np.ones_like(w), np.zeros_like(b), eps)),
    )
    tol = (dict(rtol=1e-4, atol=1e-5) if x.dtype == np.float32 else dict(rtol=1e-9, atol=1e-10))
    return array_mismatch(got["out"], expected["out"], "the normalised output", **tol,
                          dtype=x.dtype, hints=hints,
                          shape_hints=((f"return a tensor shaped like x {x.shape}",
                                        lambda shape: True),))


def _gn_inputs(shape, G, dtype=np.float64):
    def make(rng):
        C = shape[-1]
        loc = rng.uniform(-3, 3, C)
        scale = rng.uniform(0.3, 3, C)
        x = rng.normal(0, 1, shape) * scale + loc  # channels with their own offset and scale
        return {"x": x.astype(dtype), "num_groups": G,
                "weight": rng.uniform(0.5, 1.5, C).astype(dtype),
                "bias": rng.uniform(-1, 1, C).astype(dtype),
                "eps": float(rng.choice([1e-5, 1e-3]))}
    return make


GROUP_NORM = Exercise(
    module="10", name="group_norm_channels_last", implements_bn=True, kind="function",
    run=run_group_norm, reference=lambda: reference_group_norm_channels_last,
    forbidden=GROUP_NORM_FORBIDDEN,
    checks=(
        Check("images (N, H, W, C) = (4, 3, 5, 6), 3 groups", _gn_inputs((4, 3, 5, 6), 3),
              _compare_group_norm),
        Check("sequences (N, L, C) = (5, 7, 8), 4 groups", _gn_inputs((5, 7, 8), 4),
              _compare_group_norm),
        Check("features (N, C) = (6, 12), 3 groups", _gn_inputs((6, 12), 3), _compare_group_norm),
        Check("G = C (InstanceNorm), (3, 4, 4, 4)", _gn_inputs((3, 4, 4, 4), 4),
              _compare_group_norm),
        Check("G = 1 (LayerNorm), (2, 5, 6)", _gn_inputs((2, 5, 6), 1), _compare_group_norm),
        Check("float32 keeps float32, (3, 4, 4, 6)", _gn_inputs((3, 4, 4, 6), 2, np.float32),
              _compare_group_norm),
    ),
)

# --- batch_renorm_train ---------------------------------------------------------------------


def reference_batch_renorm_train(x, running_mean, running_var, r_max, d_max, eps=1e-5):
    """(x_hat, r, d) of Batch Renorm's training step without gamma/beta: the package's
    BatchRenorm1d (schedule at its final limits, running statistics left alone) and its
    `renorm_factors`."""
    import torch

    from bncourse.nn.renorm import BatchRenorm1d, renorm_factors

    C = x.shape[1]
    layer = BatchRenorm1d(C, eps=eps, momentum=0.0, affine=False, r_max=r_max, d_max=d_max,
                          warmup_steps=0, r_ramp_steps=0, d_ramp_steps=0, dtype=x.dtype)
    with torch.no_grad():
        layer.running_mean.copy_(running_mean)
        layer.running_var.copy_(running_var)
    x_hat = layer(x)
    dims = (0,) + tuple(range(2, x.dim()))
    mean_B = x.detach().mean(dims)
    sigma_B = torch.sqrt(x.detach().var(dims, unbiased=False) + eps)
    r, d = renorm_factors(mean_B, sigma_B, running_mean, running_var, r_max, d_max, eps)
    return x_hat, r, d


def _renorm_numpy(inputs, ddof=0, variant="right"):
    """(x_hat, r, d) in float64 from the formulas, and typical mistakes (for hints)."""
    x = inputs["x"].astype(np.float64)
    rm, rv = inputs["running_mean"], inputs["running_var"]
    r_max, d_max, eps = inputs["r_max"], inputs["d_max"], inputs["eps"]
    dims = (0,) + tuple(range(2, x.ndim))
    view = (1, -1) + (1,) * (x.ndim - 2)
    mu_B = x.mean(dims)
    var_B = x.var(dims, ddof=ddof)
    sigma_B, sigma = np.sqrt(var_B + eps), np.sqrt(rv + eps)
    ratio = {"variance_ratio": (var_B + eps) / (rv + eps),
             "inverted": sigma / sigma_B}.get(variant, sigma_B / sigma)
    low = -np.inf if variant == "upper_only" else 1 / r_max
    r = np.clip(ratio, low, r_max)
    shift = mu_B - rm if variant == "d_unscaled" else (mu_B - rm) / sigma
    d = np.clip(shift, -d_max, d_max)
    x_hat = (x - mu_B.reshape(view)) / sigma_B.reshape(view) * r.reshape(view) + d.reshape(view)
    return x_hat, r, d


_RENORM_MISTAKES = (
    ("r is a ratio of standard deviations, sigma_B / sigma, not of variances",
     dict(variant="variance_ratio")),
    ("r = sigma_B / sigma (batch over running), not sigma / sigma_B", dict(variant="inverted")),
    ("use the biased batch variance (unbiased=False), as BN normalises", dict(ddof=1)),
    ("d is measured in running standard deviations: (mu_B - mu) / sigma", dict(variant="d_unscaled")),
    ("clip r to [1 / r_max, r_max]: from below too", dict(variant="upper_only")),
)


def _renorm_gradient(inputs, detach_r, detach_d):
    """dx of sum(dy * x_hat) with r and/or d left in the graph (the missing stop gradient)."""
    import torch

    x = torch.from_numpy(inputs["x"].astype(np.float64)).requires_grad_(True)
    rm = torch.from_numpy(inputs["running_mean"])
    rv = torch.from_numpy(inputs["running_var"])
    eps = inputs["eps"]
    dims = (0,) + tuple(range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    mu_B = x.mean(dims)
    sigma_B = torch.sqrt(x.var(dims, unbiased=False) + eps)
    sigma = torch.sqrt(rv + eps)
    r = (sigma_B / sigma).clamp(1 / inputs["r_max"], inputs["r_max"])
    d = ((mu_B - rm) / sigma).clamp(-inputs["d_max"], inputs["d_max"])
    r = r.detach() if detach_r else r
    d = d.detach() if detach_d else d
    x_hat = (x - mu_B.view(view)) / sigma_B.view(view) * r.view(view) + d.view(view)
    x_hat.backward(torch.from_numpy(inputs["dy"].astype(np.float64)))
    return x.grad.numpy()


def _compare_renorm(got, expected, inputs):
    if not got["unchanged"]:
        return ("batch_renorm_train changed running_mean or running_var: this exercise asks "
                "for one step's output, r and d only")
    dtype = inputs["x"].dtype
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-8, atol=1e-10)

    def hints(index):
        return tuple((text, (lambda kw: lambda: _renorm_numpy(inputs, **kw)[index])(kw))
                     for text, kw in _RENORM_MISTAKES)

    C = inputs["x"].shape[1]
    for key, index, what in (("r", 1, "r"), ("d", 2, "d"), ("x_hat", 0, "x_hat")):
        shape_hints = ()
        if key != "x_hat":
            shape_hints = ((f"{key} has one value per channel: shape ({C},)",
                            lambda shape: True),)
        message = array_mismatch(got[key], expected[key], what, **tol, hints=hints(index),
                                 dtype=dtype if key == "x_hat" else None,
                                 shape_hints=shape_hints)
        if message:
            return message
    stop = ("r and d are constants in the backward pass (the stop gradient sg): compute them "
            "under torch.no_grad() or .detach() them")
    return array_mismatch(got["dx"], expected["dx"], "the gradient of x through x_hat", **tol,
                          hints=((stop, lambda: _renorm_gradient(inputs, False, False)),
                                 (stop + " (r still carries a gradient)",
                                  lambda: _renorm_gradient(inputs, False, True)),
                                 (stop + " (d still carries a gradient)",
                                  lambda: _renorm_gradient(inputs, True, False))))


def _renorm_inputs(shape, r_max, d_max, dtype=np.float64):
    def make(rng):
        C = shape[1]
        view = (1, C) + (1,) * (len(shape) - 2)
        loc, scale = rng.uniform(-2, 2, C), rng.uniform(0.5, 2, C)
        x = rng.normal(0, 1, shape) * scale.reshape(view) + loc.reshape(view)
        # Running statistics around the batch's: sigma_B / sigma in about [0.2, 4.5] and
        # (mu_B - mu) / sigma in [-8, 8], so some channels are clipped and some are not.
        running_var = scale**2 * np.exp(rng.uniform(-3, 3, C))
        running_mean = loc + rng.uniform(-8, 8, C) * np.sqrt(running_var)
        return {"x": x.astype(dtype), "running_mean": running_mean.astype(dtype),
                "running_var": running_var.astype(dtype), "r_max": r_max, "d_max": d_max,
                "eps": 1e-5, "dy": rng.normal(0, 1, shape).astype(dtype)}
    return make


RENORM = Exercise(
    module="10", name="batch_renorm_train", implements_bn=True, kind="function",
    run=run_renorm, reference=lambda: reference_batch_renorm_train,
    forbidden=RENORM_FORBIDDEN,
    checks=(
        Check("(N, C) = (16, 6), r_max 3, d_max 5: some channels clipped",
              _renorm_inputs((16, 6), 3.0, 5.0), _compare_renorm),
        Check("(N, C, L) = (4, 5, 7), r_max 2, d_max 1", _renorm_inputs((4, 5, 7), 2.0, 1.0),
              _compare_renorm),
        Check("nothing clipped (r_max 100, d_max 100)", _renorm_inputs((8, 4), 100.0, 100.0),
              _compare_renorm),
        Check("r_max 1, d_max 0: plain BN", _renorm_inputs((8, 5), 1.0, 0.0), _compare_renorm),
        Check("a batch of two, (2, 8)", _renorm_inputs((2, 8), 3.0, 5.0), _compare_renorm),
        Check("float32 keeps float32, (10, 4)", _renorm_inputs((10, 4), 3.0, 5.0, np.float32),
              _compare_renorm),
    ),
)

# --- understanding --------------------------------------------------------------------------

# key: (kind, expected, tolerance or choices, hint)
QUESTIONS = {
    "bn_batch_of_two_abs": ("number", 1.0, 0.01,
                            "section 1: mean (a + b) / 2, biased variance ((a - b) / 2)^2"),
    "layernorm_groups_c32": ("number", 1, 0,
                             "LayerNorm normalises a sample over all its channels: how many "
                             "groups is that?"),
    "instancenorm_groups_c32": ("number", 32, 0,
                                "InstanceNorm normalises each channel of each sample on its own"),
    "renorm_r1_d0_is": ("choice", "BN", ("BN", "GroupNorm", "LayerNorm", "no normalisation"),
                        "with r = 1 and d = 0, x_hat = (x - mu_B) / sigma_B"),
    "flat_across_batch_sizes": ("choice", "GroupNorm", ("BN", "Batch Renorm", "GroupNorm"),
                                "section 4: which statistics never involve other samples?"),
    "ghost_batches_tracked": ("number", 40, 0,
                              "each virtual batch updates the running statistics: 64 // 16 "
                              "per step"),
}


def reference_small_batch_predictions():
    return {key: spec[1] for key, spec in QUESTIONS.items()}



UNDERSTANDING = Exercise(
    module="10", name="small_batch_predictions", kind="function", implements_bn=True,
    run=run_answers, reference=lambda: reference_small_batch_predictions,
    checks=prediction_checks(QUESTIONS),
)

EXERCISES = (GROUP_NORM, RENORM, UNDERSTANDING)
