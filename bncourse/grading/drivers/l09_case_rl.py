"""Module 09 drivers (lesson 09, BN in RL): the hidden networks (plain torch MLPs with the
course's BatchNorm1d) and calls of the learner's act, target, critic and mode functions.

Runs in the learner's process: imports NumPy, torch, `_contract` and the course's library
(lessons 06 on may use it), never the grading references."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError, as_array, unpack

__all__ = ['build_net', 'norms', 'stats', 'tensors', 'TRAIN_MODE_ERROR', '_run_act', '_run_target', '_run_critic', '_run_modes', '_run_prediction']


def build_net(spec, training=True):
    """[BN ->] Linear -> ReLU -> BN -> ... -> Linear, with bncourse.nn.BatchNorm1d."""
    import torch
    from torch import nn

    from bncourse.nn import BatchNorm1d

    sizes, layers, k = spec["sizes"], [], 0

    def norm(width):
        nonlocal k
        bn = BatchNorm1d(width, momentum=0.01, eps=1e-3)
        with torch.no_grad():
            for name, key in (("running_mean", "rm"), ("running_var", "rv"), ("weight", "g"),
                              ("bias", "be")):
                getattr(bn, name).copy_(torch.from_numpy(spec[f"{key}{k}"]))
            bn.num_batches_tracked.fill_(1000)
        k += 1
        return bn

    if spec["input_norm"]:
        layers.append(norm(sizes[0]))
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(spec[f"W{i}"]))
            linear.bias.copy_(torch.from_numpy(spec[f"b{i}"]))
        layers.append(linear)
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), norm(sizes[i + 1])]
    return nn.Sequential(*layers).train(training)


def norms(net):
    """The BN layers of `net`: the course's and torch's (the course's is not a torch subclass)."""
    import torch

    from bncourse.nn.batchnorm import _BatchNorm

    kinds = (torch.nn.modules.batchnorm._BatchNorm, _BatchNorm)
    return [m for m in net.modules() if isinstance(m, kinds)]


def stats(net):
    return np.concatenate([np.concatenate([m.running_mean.detach().numpy(),
                                           m.running_var.detach().numpy()]) for m in norms(net)])


def tensors(inputs, *names):
    import torch

    return [torch.from_numpy(inputs[n].copy()) for n in names]


TRAIN_MODE_ERROR = "more than 1 value per channel"


def _run_act(fn, inputs):
    net = build_net(inputs)
    before = stats(net)
    actions = []
    try:
        for state in inputs["states"]:
            action = fn(net, state.copy())
            try:
                actions.append(int(action))
            except (TypeError, ValueError, RuntimeError):
                raise SubmissionError(f"act must return an int action, got "
                                      f"{type(action).__name__}") from None
    except ValueError as exc:
        if TRAIN_MODE_ERROR in str(exc):
            return {"train_mode_error": True}
        raise
    return {"actions": actions, "train_mode_error": False, "still_training": net.training and
            all(m.training for m in net.modules()), "stats_unchanged": bool(
                np.array_equal(before, stats(net)))}


def _run_target(fn, inputs):
    net = build_net(inputs)
    before = stats(net)
    reward, terminated, next_obs = tensors(inputs, "reward", "terminated", "next_obs")
    y = fn(net, reward, terminated, next_obs, inputs["gamma"])
    requires_grad = bool(getattr(y, "requires_grad", False))
    return {"y": as_array(y, "the TD target").reshape(-1), "requires_grad": requires_grad,
            "stats_unchanged": bool(np.array_equal(before, stats(net)))}


def _run_critic(fn, inputs):
    from bncourse.grading.drivers._contract import unpack

    net = build_net(inputs, training=inputs["start_training"])
    counts = [int(m.num_batches_tracked) for m in norms(net)]
    out = unpack(fn(net, *tensors(inputs, "obs", "action", "next_obs", "next_action")),
                 ("q", "q_next"), "critic_pass")
    q, q_next = out
    return {"q": as_array(q, "q").reshape(-1), "q_next": as_array(q_next, "q_next").reshape(-1),
            "q_grad": bool(getattr(q, "requires_grad", False)),
            "q_next_grad": bool(getattr(q_next, "requires_grad", False)),
            "training": net.training,
            "updates": [int(m.num_batches_tracked) - c for m, c in zip(norms(net), counts)],
            "stats": stats(net)}


def _run_modes(fn, inputs):
    actor = build_net(inputs["actor"], inputs["start"][0])
    critic = build_net(inputs["critic"], inputs["start"][1])
    fn(actor, critic, inputs["phase"])
    return {"actor": [bool(m.training) for m in norms(actor)],
            "critic": [bool(m.training) for m in norms(critic)]}


def _run_prediction(fn, inputs):
    value = fn()
    try:
        return {"value": float(value)}
    except (TypeError, ValueError):
        raise SubmissionError(f"two_state_prediction must return a number, got "
                              f"{type(value).__name__}") from None

