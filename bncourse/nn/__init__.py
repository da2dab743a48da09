"""Batch normalization in torch, built by the course (lesson 04 onwards).

`batch_norm` has the signature of `torch.nn.functional.batch_norm`; `BatchNorm1d/2d/3d` are
drop-in replacements for their `torch.nn` namesakes.
"""
from bncourse.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bncourse.nn.functional import BatchNormFunction, batch_norm
from bncourse.nn.fold import fold_batchnorm, recalibrate_batchnorm

__all__ = ["batch_norm", "BatchNormFunction", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "fold_batchnorm", "recalibrate_batchnorm"]
