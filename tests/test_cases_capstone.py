"""bncourse.data.sequences and bncourse.cases.capstone (lesson 12)."""
import pytest
import torch

from bncourse.cases.capstone import (NoNorm, SequenceClassifier, Unmasked,
                                     recalibrate_sequence_model, sequence_accuracy,
                                     train_sequence_classifier)
from bncourse.data.sequences import padded_sequences, sequence_split
from bncourse.nn import MaskedBatchNorm1d


def test_padded_sequences_shapes_padding_and_determinism():
    data = padded_sequences(40, seed=3, min_length=2, max_length=10)
    assert data.x.shape == (40, 3, 10) and data.mask.shape == (40, 10) and data.y.shape == (40,)
    assert data.mask.dtype == torch.bool and data.x.dtype == torch.float32
    assert torch.equal(data.mask.sum(1), data.lengths)
    assert (data.x.permute(0, 2, 1)[~data.mask] == 0).all()  # padding is 0
    assert sorted(data.y.bincount().tolist()) == [10, 10, 10, 10]  # balanced classes
    again = padded_sequences(40, seed=3, min_length=2, max_length=10)
    assert torch.equal(data.x, again.x) and torch.equal(data.y, again.y)


def test_subsets_are_trimmed_and_pad_to_adds_padding():
    data = padded_sequences(30, seed=0, max_length=16)
    sub = data[:5]
    assert sub.x.shape[-1] == int(data.lengths[:5].max()) and len(sub) == 5
    longer = sub.pad_to(40)
    assert longer.x.shape[-1] == 40 and torch.equal(longer.mask.sum(1), sub.lengths)
    with pytest.raises(ValueError, match="length must be an int >="):
        sub.pad_to(2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be a positive int"),
    (dict(n=5, min_length=6, max_length=4), r"min_length \(6\) must be <= max_length"),
    (dict(n=5, max_length=2.5), "max_length must be a positive int"),
])
def test_padded_sequences_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        padded_sequences(**kwargs)


def test_split_draws_train_and_test_independently():
    train, test = sequence_split(n_train=20, n_test=8, seed=1)
    assert len(train) == 20 and len(test) == 8
    assert not torch.equal(train.x[:8], test.x)


def test_classifier_ignores_padding_in_eval_mode():
    torch.manual_seed(0)
    model = SequenceClassifier(MaskedBatchNorm1d)
    data = padded_sequences(16, seed=0, max_length=12)
    model(data.x, data.mask)  # one training step's statistics
    model.eval()
    longer = data.pad_to(30)
    with torch.no_grad():
        torch.testing.assert_close(model(data.x, data.mask), model(longer.x, longer.mask))


def test_plain_bn_sees_the_padding_and_masked_bn_does_not():
    data = padded_sequences(16, seed=0, max_length=12)
    longer = data.pad_to(30)
    for norm, changes in ((lambda c: Unmasked(torch.nn.BatchNorm1d(c)), True),
                          (MaskedBatchNorm1d, False)):
        torch.manual_seed(0)
        model = SequenceClassifier(norm)  # training mode: batch statistics
        with torch.no_grad():
            diff = (model(data.x, data.mask) - model(longer.x, longer.mask)).abs().max()
        assert (diff > 1e-3) == changes


def test_training_learns_and_recalibration_resets_the_statistics():
    train, test = sequence_split(n_train=400, n_test=100, seed=0)
    history = train_sequence_classifier(MaskedBatchNorm1d, train, test, steps=60, eval_every=30)
    assert history.steps == [30, 60] and len(history.test_accuracy) == 2
    assert history.final_accuracy > 0.4  # above chance (0.25) after 60 steps
    model = recalibrate_sequence_model(history.model, train)
    assert not model.training and model.norm1.momentum == 0.1
    assert int(model.norm1.num_batches_tracked) == 4  # four batches of 100
    assert 0 <= sequence_accuracy(model, test) <= 1


def test_nonorm_and_errors():
    assert SequenceClassifier(NoNorm).conv1.bias is not None
    assert SequenceClassifier(MaskedBatchNorm1d).conv1.bias is None  # cancelled by the norm
    with pytest.raises(TypeError, match="norm must be a callable"):
        SequenceClassifier("batchnorm")
    train, test = sequence_split(n_train=10, n_test=4)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_sequence_classifier(NoNorm, train, test, steps=0)
    with pytest.raises(ValueError, match="no BN layer"):
        recalibrate_sequence_model(SequenceClassifier(NoNorm), train)
