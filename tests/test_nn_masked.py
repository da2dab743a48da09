"""bncourse.nn.MaskedBatchNorm1d: BN over the real positions of a padded batch (lesson 12).

The oracle: torch's BatchNorm1d applied to the real positions only, gathered into an (M, C) batch.
"""
import pytest
import torch
from torch import nn

from bncourse.nn import MaskedBatchNorm1d, is_batchnorm, masked_batch_norm


def _batch(lengths, channels=3, seed=0, dtype=torch.float64, offset=4.0):
    g = torch.Generator().manual_seed(seed)
    length = max(lengths)
    x = offset + 2 * torch.randn(len(lengths), channels, length, generator=g, dtype=dtype)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    x = x.masked_fill(~mask[:, None, :], 0.0)  # zero padding, as a collate function would
    return x, mask


def _gather(x, mask):
    """The real positions as an (M, C) batch."""
    return x.permute(0, 2, 1)[mask]


CASES = [
    ("equal lengths", [5, 5, 5, 5]),
    ("variable lengths", [7, 3, 5, 1]),
    ("an all-padded sequence", [6, 0, 4, 2]),
    ("sequences of length one", [1, 1, 1]),
]


@pytest.mark.parametrize("name, lengths", CASES, ids=[c[0] for c in CASES])
def test_training_forward_and_running_stats_equal_bn_on_the_real_positions(name, lengths):
    x, mask = _batch(lengths)
    ours = MaskedBatchNorm1d(3, dtype=torch.float64)
    torch_bn = nn.BatchNorm1d(3, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        ours.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    torch_bn.load_state_dict(ours.state_dict())
    for _ in range(3):  # running statistics after several steps
        out = ours(x, mask)
        expected = torch_bn(_gather(x, mask))
    torch.testing.assert_close(_gather(out, mask), expected, rtol=1e-12, atol=1e-12)
    assert (out.permute(0, 2, 1)[~mask] == 0).all()
    torch.testing.assert_close(ours.running_mean, torch_bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, torch_bn.running_var, rtol=1e-12, atol=1e-12)
    assert int(ours.num_batches_tracked) == 3


def test_eval_uses_running_statistics_and_zeroes_padding():
    x, mask = _batch([6, 2, 4])
    ours = MaskedBatchNorm1d(3, dtype=torch.float64)
    ours(x, mask)
    torch_bn = nn.BatchNorm1d(3, dtype=torch.float64)
    torch_bn.load_state_dict(ours.state_dict())
    ours.eval(), torch_bn.eval()
    out = ours(x, mask)
    torch.testing.assert_close(_gather(out, mask), torch_bn(_gather(x, mask)))
    assert (out.permute(0, 2, 1)[~mask] == 0).all()


def test_more_padding_changes_nothing():
    x, mask = _batch([7, 3, 5])
    longer = nn.functional.pad(x, (0, 13))  # the same sequences, padded to 20
    longer_mask = nn.functional.pad(mask, (0, 13))
    a, b = MaskedBatchNorm1d(3, dtype=torch.float64), MaskedBatchNorm1d(3, dtype=torch.float64)
    torch.testing.assert_close(a(x, mask), b(longer, longer_mask)[..., :7])
    torch.testing.assert_close(a.running_var, b.running_var)
    # ... while plain BN's statistics move with the padding: the bug lesson 12 is about
    plain = nn.BatchNorm1d(3, dtype=torch.float64)
    assert (plain(x)[..., :7] - plain(longer)[..., :7]).abs().max() > 0.1


def test_no_gradient_reaches_padded_positions_and_gradcheck_passes():
    x, mask = _batch([4, 2, 3], channels=2)
    x.requires_grad_(True)
    bn = MaskedBatchNorm1d(2, dtype=torch.float64)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (bn(x, mask) * dy).sum().backward()
    assert (x.grad.permute(0, 2, 1)[~mask] == 0).all()
    # the real positions' gradient equals BN's on the gathered batch
    flat = _gather(x.detach(), mask).requires_grad_(True)
    torch_bn = nn.BatchNorm1d(2, dtype=torch.float64)
    (torch_bn(flat) * _gather(dy, mask)).sum().backward()
    torch.testing.assert_close(_gather(x.grad, mask), flat.grad)
    torch.testing.assert_close(bn.weight.grad, torch_bn.weight.grad)
    torch.testing.assert_close(bn.bias.grad, torch_bn.bias.grad)
    weight = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: masked_batch_norm(x, mask, None, None, w, b, training=True),
        (x.detach().requires_grad_(True), weight, bias))


def test_no_mask_equals_batchnorm1d_and_momentum_none_is_a_cumulative_average():
    x, _ = _batch([5, 5, 5])
    ours = MaskedBatchNorm1d(3, momentum=None, dtype=torch.float64)
    torch_bn = nn.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    for shift in (0.0, 1.0, 3.0):
        torch.testing.assert_close(ours(x + shift), torch_bn(x + shift))
    torch.testing.assert_close(ours.running_mean, torch_bn.running_mean)
    torch.testing.assert_close(ours.running_var, torch_bn.running_var)


def test_state_dict_matches_batchnorm1d_both_ways():
    ours, theirs = MaskedBatchNorm1d(4), nn.BatchNorm1d(4)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.running_mean.fill_(2.0)
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.running_mean, theirs.running_mean)
    assert is_batchnorm(ours) and "MaskedBatchNorm1d(4, eps=1e-05" in repr(ours)


def test_without_running_statistics_eval_uses_the_batch():
    x, mask = _batch([3, 4])
    bn = MaskedBatchNorm1d(3, track_running_stats=False, dtype=torch.float64).eval()
    torch.testing.assert_close(_gather(bn(x, mask), mask),
                               nn.functional.batch_norm(_gather(x, mask), None, None,
                                                        training=True))


@pytest.mark.parametrize("call, error, match", [
    (lambda bn, x, m: bn(x, m[:, :2]), ValueError, r"mask must have shape \(N, L\) = \(2, 3\)"),
    (lambda bn, x, m: bn(x, m.int()), TypeError, "mask must be a bool tensor"),
    (lambda bn, x, m: bn(x, m.tolist()), TypeError, "mask must be a torch.Tensor"),
    (lambda bn, x, m: bn(x[:, :, 0], None), ValueError, "expected 3D input"),
    (lambda bn, x, m: bn(x[:, :2], m), RuntimeError, "expects 3 channels"),
    (lambda bn, x, m: bn(x, torch.zeros_like(m)), ValueError, "more than 1 real"),
])
def test_bad_input_gets_a_clear_error(call, error, match):
    x, mask = _batch([3, 2])
    with pytest.raises(error, match=match):
        call(MaskedBatchNorm1d(3, dtype=torch.float64), x, mask)
