"""Batch normalization in torch, built by the course (lesson 04 onwards).

`batch_norm` has the signature of `torch.nn.functional.batch_norm`; `BatchNorm1d/2d/3d` are
drop-in replacements for their `torch.nn` namesakes. `LSTMCell`, `BNLSTMCell` (per-step
statistics, `StepwiseBatchNorm`) and `LNLSTMCell` are the cells of case study 08.
`GroupNorm` (LayerNorm and InstanceNorm as its limits), `BatchRenorm1d/2d` and
`GhostBatchNorm1d/2d` are the variants of lesson 10. `SyncBatchNorm`, `sync_batch_norm` and
`convert_sync_batchnorm` (lesson 11) take statistics over every process of `torch.distributed`.
`MaskedBatchNorm1d` (padded sequences) is the capstone's reference (lesson 12).
"""
from bncourse.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, is_batchnorm
from bncourse.nn.functional import BatchNormFunction, batch_norm
from bncourse.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d
from bncourse.nn.groupnorm import GroupNorm, group_norm
from bncourse.nn.renorm import BatchRenorm1d, BatchRenorm2d, renorm_factors, renorm_limits
from bncourse.nn.fold import fold_batchnorm, recalibrate_batchnorm
from bncourse.nn.masked import MaskedBatchNorm1d, masked_batch_norm
from bncourse.nn.recurrent import BNLSTMCell, LNLSTMCell, LSTMCell, run_cell
from bncourse.nn.stepwise import StepwiseBatchNorm
from bncourse.nn.sync import SyncBatchNorm, convert_sync_batchnorm, sync_batch_norm

__all__ = ["batch_norm", "BatchNormFunction", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "is_batchnorm", "fold_batchnorm", "recalibrate_batchnorm",
           "StepwiseBatchNorm", "LSTMCell", "BNLSTMCell", "LNLSTMCell", "run_cell",
           "GroupNorm", "group_norm", "BatchRenorm1d", "BatchRenorm2d", "renorm_limits",
           "renorm_factors", "GhostBatchNorm1d", "GhostBatchNorm2d",
           "SyncBatchNorm", "convert_sync_batchnorm", "sync_batch_norm",
           "MaskedBatchNorm1d", "masked_batch_norm"]
