"""Module 07 drivers (lesson 07, why BN works): call the learner's noise, angular-update and
equilibrium functions and read the answers.

Runs in the learner's process: imports NumPy, torch, `_contract` and the course's library
(lessons 06 on may use it), never the grading references."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, unpack

__all__ = ['_run_noise', '_run_angular', '_run_equilibrium', '_run_answers']


def _run_noise(fn, inputs):
    import torch

    a = torch.from_numpy(inputs["a"].copy())
    g = torch.Generator().manual_seed(inputs["seed"])
    out = fn(a, g)
    if not isinstance(out, torch.Tensor):
        raise SubmissionError(f"santurkar_noise must return a torch.Tensor, got "
                              f"{type(out).__name__}")
    return {"out": as_array(out, "santurkar_noise(a, generator)"),
            "unchanged": bool(np.array_equal(a.numpy(), inputs["a"]))}


def _run_angular(fn, inputs):
    out = fn(inputs["w_before"].copy(), inputs["w_after"].copy())
    return {"out": as_array(out, "angular_update(w_before, w_after)").astype(np.float64)}


def _run_equilibrium(fn, inputs):
    norm, eff = unpack(fn(inputs["lr"], inputs["wd"], inputs["G"]), ("norm", "effective_lr"),
                       "equilibrium")
    return {"norm": float(as_array(norm, "norm")), "eff": float(as_array(eff, "effective_lr"))}


def _run_answers(fn, inputs):
    answers = fn()
    if not isinstance(answers, dict):
        raise SubmissionError(f"understanding() must return a dict, got "
                              f"{type(answers).__name__}")
    key = inputs["key"]
    if key not in answers:
        raise SubmissionError(f"understanding() has no key {key!r}")
    value = answers[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SubmissionError(f"understanding()[{key!r}] must be a number or a string, got "
                              f"{type(value).__name__}")
    return {"value": value}

