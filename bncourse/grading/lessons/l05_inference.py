"""Module 05 exercises (lesson 05, inference and deployment): `batchnorm_eval` (NumPy),
`fold_linear_bn` (fold an eval-mode BatchNorm1d into the preceding Linear) and `recalibrate_bn`
(recompute running statistics as a cumulative average over given batches)."""
from __future__ import annotations

import numpy as np

from bncourse.grading.checks import Check, Exercise, SubmissionError, array_mismatch, as_array
from bncourse.grading.lessons._common import IMPLEMENT_BN_FORBIDDEN, _per_channel
from bncourse.grading.drivers.l05_inference import (_run_batchnorm_eval, _build_linear_bn, _snapshot, _same, _run_fold, _build_model, _run_recalibrate)  # noqa: F401

__all__ = ["EXERCISES", "reference_fold_linear_bn", "reference_recalibrate_bn"]

MODULE = "05"
NOTEBOOK = "05_inference_exercises.ipynb"
REQUIRED = True  # for the certificate

FOLD_FORBIDDEN = (
    "torch.nn.utils.fusion.fuse_linear_bn_eval",
    "torch.nn.utils.fusion.fuse_linear_bn_weights",
    "torch.nn.utils.fuse_linear_bn_eval",
    "torch.nn.utils.fuse_linear_bn_weights",
    "bncourse.nn.fold_batchnorm",
    "bncourse.nn.fold.fold_batchnorm",
)
RECALIBRATE_FORBIDDEN = ("bncourse.nn.recalibrate_batchnorm",
                         "bncourse.nn.fold.recalibrate_batchnorm")

# --- batchnorm_eval -----------------------------------------------------------------------


def _reference_batchnorm_eval():
    from bncourse.reference import batchnorm_inference

    return batchnorm_inference


def _compare_batchnorm_eval(got, expected, inputs):
    x, eps = inputs["x"], inputs["eps"]
    nd = x.ndim
    g, b, rm, rv = (_per_channel(inputs[k], nd) for k in ("gamma", "beta", "running_mean",
                                                          "running_var"))
    axes = (0,) + tuple(range(2, nd))
    tol = dict(rtol=1e-4, atol=1e-5) if x.dtype == np.float32 else dict(rtol=1e-7, atol=1e-9)
    hints = (
        ("in eval mode use running_mean and running_var, not the batch's statistics",
         lambda: g * (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True)
                                                                  + eps) + b),
        ("eps goes inside the square root: (x − running_mean) / sqrt(running_var + eps)",
         lambda: g * (x - rm) / (np.sqrt(rv) + eps) + b),
        ("divide by the standard deviation sqrt(running_var + eps), not by the variance",
         lambda: g * (x - rm) / (rv + eps) + b),
    )
    return array_mismatch(got["out"], expected["out"], "out", **tol, dtype=x.dtype, hints=hints,
                          shape_hints=((f"the output has the shape of x, {x.shape}: reshape "
                                        "the (C,) vectors to (1, C, 1, ...) to broadcast",
                                        lambda shape: True),))


def _eval_inputs(shape, dtype=np.float64, eps=1e-5):
    def make(rng):
        C = shape[1]
        x = rng.normal(0, 2, shape)
        return {"x": x.astype(dtype), "gamma": rng.uniform(0.5, 2, C).astype(dtype),
                "beta": rng.normal(0, 1, C).astype(dtype),
                "running_mean": rng.normal(0, 1, C).astype(dtype),
                "running_var": rng.uniform(0.05, 0.5 if eps != 1e-5 else 3, C).astype(dtype),
                "eps": eps}
    return make


BATCHNORM_EVAL = Exercise(
    module="05", name="batchnorm_eval", implements_bn=True, kind="function",
    run=_run_batchnorm_eval, reference=_reference_batchnorm_eval,
    forbidden=IMPLEMENT_BN_FORBIDDEN,
    checks=(
        Check("(N, C) float64", _eval_inputs((8, 4)), _compare_batchnorm_eval),
        Check("(N, C, H, W) float64", _eval_inputs((3, 4, 2, 5)), _compare_batchnorm_eval),
        Check("a batch of one, (1, C)", _eval_inputs((1, 6)), _compare_batchnorm_eval),
        Check("float32 keeps float32", _eval_inputs((5, 3), np.float32),
              _compare_batchnorm_eval),
        Check("eps=0.1 is used, inside the square root", _eval_inputs((6, 3), eps=0.1),
              _compare_batchnorm_eval),
    ),
)

# --- fold_linear_bn -----------------------------------------------------------------------


def reference_fold_linear_bn(linear, bn):
    """The grader's fold: W' = W * s[:, None], b' = (b − running_mean) * s + beta, with
    s = gamma / sqrt(running_var + eps)."""
    import torch

    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = linear.bias if linear.bias is not None else torch.zeros_like(bn.running_mean)
        folded = torch.nn.Linear(linear.in_features, linear.out_features)
        folded.weight.copy_(linear.weight * scale[:, None])
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return folded


def _reference_fold():
    return reference_fold_linear_bn


def _compare_fold_output(got, expected, inputs):
    if list(got["weight_shape"]) != list(expected["weight_shape"]):
        return (f"the folded weight has shape {tuple(got['weight_shape'])}, expected "
                f"{tuple(expected['weight_shape'])} (out_features, in_features)")
    if not got["has_bias"]:
        return "the folded Linear needs a bias (it carries beta − running_mean * scale)"
    x = inputs["x"].astype(np.float64)
    W, b = inputs["W"].astype(np.float64), inputs["b"]
    z = x @ W.T + (0 if b is None else b)
    gamma, beta, rm, rv = (inputs["bn_" + k].astype(np.float64)
                           for k in ("weight", "bias", "running_mean", "running_var"))
    eps = inputs["eps"]
    scale = gamma / np.sqrt(rv + eps)
    zb = 0 if b is None else b.astype(np.float64)
    hints = (("use the running statistics of the eval-mode BN, not the statistics of a batch",
              lambda: gamma * (z - z.mean(0)) / np.sqrt(z.var(0) + eps) + beta),
             ("eps goes inside the square root: scale = gamma / sqrt(running_var + eps)",
              lambda: gamma * (z - rm) / (np.sqrt(rv) + eps) + beta),
             ("the Linear's bias goes through BN too: b' = (b − running_mean) * scale + beta",
              lambda: scale * (z - zb) + zb - rm * scale + beta))
    return array_mismatch(got["y"], expected["y"], "folded(x) vs bn(linear(x))", rtol=1e-4,
                          atol=1e-5, hints=hints)


def _compare_fold_unchanged(got, expected, inputs):
    if got["same_object"] or not got["unchanged"]:
        return ("fold_linear_bn changed the given linear or bn (or returned the same object): "
                "build and return a new torch.nn.Linear")
    return _compare_fold_output(got, expected, inputs)


def _fold_inputs(bias=True, eps=1e-5):
    def make(rng):
        in_f, out_f = 5, 4
        return {"W": rng.normal(0, 0.5, (out_f, in_f)).astype(np.float32),
                "b": rng.normal(0, 1, out_f).astype(np.float32) if bias else None,
                "bn_weight": rng.uniform(0.5, 2, out_f).astype(np.float32),
                "bn_bias": rng.normal(0, 1, out_f).astype(np.float32),
                "bn_running_mean": rng.normal(0, 1, out_f).astype(np.float32),
                "bn_running_var": rng.uniform(0.05, 0.5 if eps != 1e-5 else 3,
                                              out_f).astype(np.float32),
                "eps": eps, "x": rng.normal(0, 1, (7, in_f)).astype(np.float32)}
    return make


FOLD_LINEAR_BN = Exercise(
    module="05", name="fold_linear_bn", kind="function",
    run=_run_fold, reference=_reference_fold, forbidden=FOLD_FORBIDDEN,
    checks=(
        Check("folded(x) equals bn(linear(x)) in eval mode", _fold_inputs(),
              _compare_fold_output),
        Check("a Linear without bias", _fold_inputs(bias=False), _compare_fold_output),
        Check("eps=0.1 is used", _fold_inputs(eps=0.1), _compare_fold_output),
        Check("returns a new Linear, leaves linear and bn unchanged", _fold_inputs(),
              _compare_fold_unchanged),
    ),
)

# --- recalibrate_bn -----------------------------------------------------------------------


def reference_recalibrate_bn(model, batches):
    """The grader's recalibration: reset, cumulative average (momentum=None) in train mode
    without gradients, restore momentum, eval mode."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def _reference_recalibrate():
    return reference_recalibrate_bn


def _alternative(inputs, recalibrate):
    """Running statistics a mistaken recalibration would leave (computed with torch here)."""
    import torch

    model = _build_model(inputs)
    recalibrate(model, [torch.from_numpy(x) for x in inputs["batches"]])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return [(m.running_mean.detach().numpy().copy(), m.running_var.detach().numpy().copy())
            for m in norms]


def _no_reset(model, batches):
    import torch

    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)


def _reset_keep_momentum(model, batches):
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    _no_reset(model, batches)


def _compare_recalibrated_stats(got, expected, inputs):
    if got["n_norms"] != expected["n_norms"]:
        return f"the returned model has {got['n_norms']} BatchNorm modules, expected 2"
    alternatives = {}

    def alt(name, i, j):
        def make():
            if name not in alternatives:
                alternatives[name] = _alternative(inputs, {"no_reset": _no_reset,
                                                           "momentum": _reset_keep_momentum}[name])
            return alternatives[name][i][j]
        return make

    for i in range(expected["n_norms"]):
        for j, stat in enumerate(("running_mean", "running_var")):
            message = array_mismatch(
                got[f"{stat}_{i}"], expected[f"{stat}_{i}"], f"{stat} of BN layer {i + 1}",
                rtol=1e-4, atol=1e-5,
                hints=(("reset the running statistics first (bn.reset_running_stats())",
                        alt("no_reset", i, j)),
                       ("for a cumulative average over the batches set bn.momentum = None "
                        "while recalibrating", alt("momentum", i, j))))
            if message:
                return message
        if got[f"num_batches_tracked_{i}"] != expected[f"num_batches_tracked_{i}"]:
            return (f"num_batches_tracked of BN layer {i + 1} is "
                    f"{got[f'num_batches_tracked_{i}']}, expected "
                    f"{expected[f'num_batches_tracked_{i}']} (one per batch after a reset)")
    return None


def _compare_momentum(got, expected, inputs):
    if [round(m, 6) for m in got["momenta"]] != [round(m, 6) for m in expected["momenta"]]:
        shown = ["None" if m == -1 else f"{m:g}" for m in got["momenta"]]
        return (f"momentum after recalibration is {shown}, expected [0.1, 0.3]: restore each "
                "BN's original momentum")
    return None


def _compare_eval_mode(got, expected, inputs):
    if any(got["training"]):
        return "the model is left in training mode: call model.eval() at the end"
    return None


def _compare_weights(got, expected, inputs):
    if not got["weights_unchanged"]:
        return "the weights changed: recalibration only recomputes running statistics"
    if not got["no_grads"]:
        return ("gradients were computed: run the batches under torch.no_grad(), nothing is "
                "being trained")
    return None


def _recalibrate_inputs(start_in_train=False):
    def make(rng):
        return {"model_seed": int(rng.integers(1000)), "start_in_train": start_in_train,
                "rm1": rng.normal(3, 1, 6).astype(np.float32),
                "rv1": rng.uniform(5, 9, 6).astype(np.float32),
                "rm4": rng.normal(-3, 1, 3).astype(np.float32),
                "rv4": rng.uniform(5, 9, 3).astype(np.float32),
                "w1": rng.uniform(0.5, 2, 6).astype(np.float32),
                "w4": rng.uniform(0.5, 2, 3).astype(np.float32),
                "batches": [rng.normal(1, 2, (8, 4)).astype(np.float32) for _ in range(5)]}
    return make


RECALIBRATE_BN = Exercise(
    module="05", name="recalibrate_bn", kind="function",
    run=_run_recalibrate, reference=_reference_recalibrate, forbidden=RECALIBRATE_FORBIDDEN,
    checks=(
        Check("running statistics: cumulative average over the batches", _recalibrate_inputs(),
              _compare_recalibrated_stats),
        Check("each BN's momentum restored", _recalibrate_inputs(True), _compare_momentum),
        Check("model left in eval mode", _recalibrate_inputs(True), _compare_eval_mode),
        Check("weights unchanged, no gradients", _recalibrate_inputs(), _compare_weights),
    ),
)

EXERCISES = (BATCHNORM_EVAL, FOLD_LINEAR_BN, RECALIBRATE_BN)
