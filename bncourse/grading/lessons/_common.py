"""Pieces the lesson checks share: calls that would skip the exercise, reduction axes."""
from __future__ import annotations

import numpy as np

from bncourse.grading.drivers._contract import tensor_attribute  # noqa: F401 (re-exported)

__all__ = ["IMPLEMENT_BN_FORBIDDEN", "tensor_attribute"]

# Calls that would let a learner skip the exercise of writing batch norm.
IMPLEMENT_BN_FORBIDDEN = (
    "bncourse.reference.batchnorm_forward",
    "bncourse.reference.batchnorm_backward",
    "bncourse.reference.batchnorm_inference",
    "bncourse.nn.batch_norm",
    "bncourse.nn.functional.batch_norm",
    "bncourse.nn.batchnorm.batch_norm",
    "torch.nn.functional.batch_norm",
    "torch.batch_norm",
    "torch.native_batch_norm",
    "torch.nn.modules.batchnorm._BatchNorm.forward",
    "bncourse.nn.batchnorm._BatchNorm.forward",
)


def _axes(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def _per_channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))
