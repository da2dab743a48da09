"""The hidden networks of the module 09 checks (BN in RL): plain torch MLPs with the course's
`BatchNorm1d`, built from grader-made weights and deliberately stale running statistics, so that
every train/eval mistake changes the result."""
from __future__ import annotations

import numpy as np
from bncourse.grading.drivers.l09_case_rl import (build_net, norms, stats, tensors)  # noqa: F401

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


