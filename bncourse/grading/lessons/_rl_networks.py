"""The hidden networks of the module 09 checks (BN in RL): plain torch MLPs with the course's
`BatchNorm1d`, built from grader-made weights and deliberately stale running statistics, so that
every train/eval mistake changes the result."""
from __future__ import annotations

import numpy as np

__all__ = ["net_inputs", "build_net", "norms", "stats", "tensors"]


def net_inputs(rng, sizes, input_norm=False):
    """Weights and (deliberately stale) running statistics for `build_net`."""
    out = {"sizes": list(sizes), "input_norm": input_norm}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        out[f"W{i}"] = rng.normal(0, 1 / np.sqrt(fan_in), (fan_out, fan_in)).astype(np.float32)
        out[f"b{i}"] = rng.normal(0, 0.1, fan_out).astype(np.float32)
    norm_sizes = ([sizes[0]] if input_norm else []) + list(sizes[1:-1])
    for k, width in enumerate(norm_sizes):
        out[f"rm{k}"] = rng.normal(0, 1.5, width).astype(np.float32)
        out[f"rv{k}"] = rng.uniform(0.2, 4, width).astype(np.float32)
        out[f"g{k}"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
        out[f"be{k}"] = rng.normal(0, 0.5, width).astype(np.float32)
    return out


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
