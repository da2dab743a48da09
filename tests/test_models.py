"""bncourse.models: mlp, small_cnn, InceptionBlock, inception_cnn (lessons 01, 04-06)."""
import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse import train
from bncourse.models import InceptionBlock, inception_cnn, mlp, small_cnn


def _kinds(model):
    return [type(m).__name__ for m in model]


def test_train_reexports_mlp():
    assert train.mlp is mlp


def test_mlp_same_parameters_as_before_the_move():
    # Lessons 01, 04, 05 build their nets with this call: the same seed gives the same weights.
    torch.manual_seed(0)
    model = mlp([64, 100, 100, 10], activation=nn.ReLU, norm=bnn.BatchNorm1d)
    torch.manual_seed(0)
    expected = nn.Linear(64, 100, bias=False).weight
    torch.testing.assert_close(model[0].weight, expected)


@pytest.mark.parametrize("position, kinds, biases", [
    ("before", ["Linear", "BatchNorm1d", "Sigmoid", "Linear", "BatchNorm1d", "Sigmoid", "Linear"],
     [False, False, True]),
    ("after", ["Linear", "Sigmoid", "BatchNorm1d", "Linear", "Sigmoid", "BatchNorm1d", "Linear"],
     [True, True, True]),
])
def test_mlp_norm_position(position, kinds, biases):
    model = mlp([8, 6, 5, 3], norm=bnn.BatchNorm1d, norm_position=position)
    assert _kinds(model) == kinds
    assert [m.bias is not None for m in model if isinstance(m, nn.Linear)] == biases
    assert model(torch.randn(4, 8)).shape == (4, 3)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sizes=[5]), ValueError, "sizes"),
    (dict(sizes=[5, 0, 3]), ValueError, r"sizes\[1\]"),
    (dict(sizes=[5, 3], norm="batch"), TypeError, "norm"),
    (dict(sizes=[5, 3], norm=bnn.BatchNorm1d(3)), TypeError, "norm"),
    (dict(sizes=[5, 3], activation=nn.ReLU()), TypeError, "activation"),
    (dict(sizes=[5, 4, 3], norm=bnn.BatchNorm1d, norm_position="middle"), ValueError,
     "norm_position"),
])
def test_mlp_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        mlp(**kwargs)


@pytest.mark.parametrize("norm", [None, bnn.BatchNorm2d])
def test_small_cnn_shapes(norm):
    model = small_cnn(channels=(4, 6), image_size=8, norm=norm)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.bias is None for c in convs] == [norm is not None] * 2
    assert sum(isinstance(m, bnn.BatchNorm2d) for m in model.modules()) == (2 if norm else 0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(image_size=6, channels=(4, 4)), ValueError, "image_size"),
    (dict(channels=()), ValueError, "channels"),
    (dict(channels=(4, -1)), ValueError, r"channels\[1\]"),
    (dict(norm=nn.BatchNorm2d(4)), TypeError, "norm"),
    (dict(in_channels=0), ValueError, "in_channels"),
])
def test_small_cnn_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        small_cnn(**kwargs)


@pytest.mark.parametrize("reductions, pool, convs", [(None, "max", 5), ((2, 3), "avg", 7)])
def test_inception_block_structure(reductions, pool, convs):
    block = InceptionBlock(6, (3, 4, 5, 2), norm=bnn.BatchNorm2d, reductions=reductions, pool=pool)
    y = block(torch.randn(2, 6, 5, 7))
    assert y.shape == (2, 14, 5, 7) and block.out_channels == 14
    assert sum(isinstance(m, nn.Conv2d) for m in block.modules()) == convs
    norms = [m.num_features for m in block.modules() if isinstance(m, bnn.BatchNorm2d)]
    expected = [3, 4, 5, 5, 2] if reductions is None else [3, 2, 4, 3, 5, 5, 2]
    assert norms == expected  # one BN per convolution, inside each branch
    pools = [m for m in block.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    assert type(pools[0]) is (nn.MaxPool2d if pool == "max" else nn.AvgPool2d)


def test_inception_block_concatenates_branch_outputs():
    torch.manual_seed(0)
    block = InceptionBlock(3, (2, 2, 2, 2)).eval()
    x = torch.randn(2, 3, 4, 4)
    parts = [block.branch_1x1(x), block.branch_3x3(x), block.branch_double_3x3(x),
             block.branch_pool(x)]
    torch.testing.assert_close(block(x), torch.cat(parts, dim=1))


def test_inception_block_norm_after():
    block = InceptionBlock(3, (2, 2, 2, 2), norm=bnn.BatchNorm2d, norm_position="after")
    assert _kinds(block.branch_1x1) == ["Conv2d", "ReLU", "BatchNorm2d"]
    assert block.branch_1x1[0].bias is not None


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(widths=(1, 2, 3)), ValueError, "widths"),
    (dict(widths=(1, 2, 0, 3)), ValueError, r"widths\[double_3x3\]"),
    (dict(norm="bn"), TypeError, "norm"),
    (dict(norm_position="inside"), ValueError, "norm_position"),
    (dict(reductions=(2,)), ValueError, "reductions"),
    (dict(reductions=(2, 0)), ValueError, r"reductions\[double_3x3\]"),
    (dict(pool="min"), ValueError, "pool"),
])
def test_inception_block_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        InceptionBlock(3, **kwargs)


def test_inception_block_bad_input_shape():
    block = InceptionBlock(3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        block(torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="InceptionBlock expects"):
        block(torch.randn(2, 3, 8))


@pytest.mark.parametrize("norm, activation", [(None, nn.ReLU), (bnn.BatchNorm2d, nn.Sigmoid)])
def test_inception_cnn(norm, activation):
    model = inception_cnn(stem=4, widths=((2, 2, 2, 2), (3, 3, 3, 3)), norm=norm,
                          activation=activation)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    blocks = [m for m in model if isinstance(m, InceptionBlock)]
    assert [b.out_channels for b in blocks] == [8, 12]
    assert any(isinstance(m, activation) for m in model.modules())
    model(torch.randn(5, 1, 8, 8)).sum().backward()  # gradients flow
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(widths=()), ValueError, "widths"),
    (dict(stem=0), ValueError, "stem"),
    (dict(num_classes=0), ValueError, "num_classes"),
    (dict(norm=3), TypeError, "norm"),
    (dict(widths=((1, 2),)), ValueError, "widths"),
])
def test_inception_cnn_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        inception_cnn(**kwargs)
