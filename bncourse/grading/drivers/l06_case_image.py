"""Module 06 drivers (lesson 06, a case study in vision): build the learner's Inception-style
block, read its structure, train it briefly, read the answers.

Runs in the learner's process: imports NumPy, torch, `_contract` and the course's library
(lessons 06 on may use it), never the grading references."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import SubmissionError

__all__ = ['TRAIN', '_run_structure', '_run_train', '_run_block', '_run_answers']


# The grader's training run: SGD with momentum 0.9 at 4x the lesson's base rate 0.05, 100
# steps (about 1.6 s on one core; in-notebook feedback must stay under 2 s). Over 20 grader
# seeds (splits and initialisations) the reference reached 0.962-0.987 test accuracy at 100
# steps (0.976-0.99 at 150); at lr 0.5 it varied from 0.91 to 0.99, too close to any
# threshold. At lr 0.2 a block without BN also trains (0.94-0.98 over 8 seeds): this check
# tests that the block works end to end and keeps running statistics for eval mode; the
# structure checks test where BN sits. A 2x2 average pool before the classifier keeps enough
# of the 8x8 layout (global average pooling left the reference near 0.6).
TRAIN = dict(steps=100, batch_size=60, lr=0.2, momentum=0.9, threshold=0.93)


def _build(fn, in_channels, widths, norm):
    import torch

    block = fn(in_channels, tuple(widths), norm=norm)
    if not isinstance(block, torch.nn.Module):
        raise SubmissionError(f"inception_block must return a torch.nn.Module, got "
                              f"{type(block).__name__}")
    return block


def _expected_shape(inputs):
    n1, r3, n3, rd, nd, npool = inputs["widths"]
    N, _, H, W = inputs["x"].shape
    return [N, n1 + n3 + nd + npool, H, W]


def _run_structure(fn, inputs):
    import torch

    import bncourse.nn as bnn

    norm = bnn.BatchNorm2d if inputs["norm"] else None
    torch.manual_seed(0)
    block = _build(fn, inputs["C"], inputs["widths"], norm)
    seen = []
    hooks = [m.register_forward_hook(
        lambda m, args, out: seen.append((int(args[0].shape[1]), float(args[0].min()))))
        for m in block.modules() if isinstance(m, bnn.BatchNorm2d)]
    block.train()
    with torch.no_grad():
        y = block(torch.from_numpy(inputs["x"]))
    for hook in hooks:
        hook.remove()
    if not isinstance(y, torch.Tensor):
        raise SubmissionError(f"the block's forward must return a tensor, got {type(y).__name__}")
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in block.modules() if "norm" in type(m).__name__.lower()]
    return {"shape": list(y.shape), "bn_channels": sorted(c for c, _ in seen),
            "bn_input_min": min((v for _, v in seen), default=0.0),
            "num_norms": len(norms), "num_convs": len(convs),
            "conv_biases": sum(m.bias is not None for m in convs)}


def _run_train(fn, inputs):
    import torch
    from torch import nn

    import bncourse.nn as bnn
    from bncourse.data import load_digits_images
    from bncourse.train import accuracy, train_classifier

    data = load_digits_images(seed=inputs["split_seed"])
    torch.manual_seed(inputs["init_seed"])
    stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), bnn.BatchNorm2d(8), nn.ReLU())
    block = _build(fn, 8, inputs["widths"], bnn.BatchNorm2d)
    width = _expected_shape({"widths": inputs["widths"], "x": np.zeros((1, 1, 8, 8))})[1]
    model = nn.Sequential(stem, block, nn.AvgPool2d(2), nn.Flatten(), nn.Linear(width * 16, 10))
    history = train_classifier(model, data, steps=TRAIN["steps"], batch_size=TRAIN["batch_size"],
                               lr=TRAIN["lr"], momentum=TRAIN["momentum"],
                               eval_every=TRAIN["steps"], seed=inputs["init_seed"])
    loss = history.train_loss[-1]
    model.train()
    with torch.no_grad():  # train-mode accuracy on a copy of the test set (statistics restored)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        train_mode = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
        model.load_state_dict(state)
    return {"loss": float(loss) if np.isfinite(loss) else float("nan"),
            "eval_accuracy": accuracy(model, data.x_test, data.y_test),
            "train_mode_accuracy": train_mode}


def _run_block(fn, inputs):
    if inputs.get("part") == "train":
        return _run_train(fn, inputs)
    return _run_structure(fn, inputs)


def _run_answers(fn, inputs):
    answers = fn()
    if not isinstance(answers, dict):
        raise SubmissionError(f"answers() must return a dict, got {type(answers).__name__}")
    key = inputs["key"]
    if key not in answers:
        raise SubmissionError(f"answers() has no key {key!r}")
    value = answers[key]
    if not isinstance(value, (str, bool)):
        raise SubmissionError(f"answers()[{key!r}] must be a string or a bool, got "
                              f"{type(value).__name__}")
    return {"value": value}

