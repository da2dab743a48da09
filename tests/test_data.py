"""bncourse.data: offline data sets and mini-batches (lessons 01, 05, 06)."""
import numpy as np
import pytest
import torch

from bncourse.data import Dataset, iterate_minibatches, load_digits, load_mnist1d


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_shapes_dtypes_and_split(digits):
    assert isinstance(digits, Dataset) and digits.name == "digits" and digits.num_classes == 10
    assert digits.x_train.shape == (1348, 64) and digits.x_test.shape == (449, 64)  # 25% test
    assert digits.y_train.shape == (1348,) and digits.y_test.shape == (449,)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    labels = torch.cat([digits.y_train, digits.y_test])
    assert labels.min().item() == 0 and labels.max().item() == 9
    assert repr(digits) == "Dataset('digits': train (1348, 64), test (449, 64), 10 classes)"


def test_digits_are_standardised_with_training_statistics(digits):
    x = digits.x_train.double()
    std = x.std(0, correction=0)
    varying = std > 0
    torch.testing.assert_close(x.mean(0), torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(std[varying], torch.ones(int(varying.sum()), dtype=torch.float64),
                               rtol=0, atol=1e-4)
    assert (~varying).any()  # the corner pixels are constant (0) in the training set ...
    assert torch.all(x[:, ~varying] == 0)  # ... and stay 0 rather than becoming NaN
    assert torch.isfinite(digits.x_test).all()
    # The test set is scaled with the training statistics, so its mean is only near 0.
    assert digits.x_test.mean(0).abs().max() > 1e-3


def test_digits_raw_pixels_and_split_determinism(digits):
    raw = load_digits(standardize=False)
    assert raw.x_train.min().item() == 0 and raw.x_train.max().item() == 16
    torch.testing.assert_close(raw.x_train.round(), raw.x_train, rtol=0, atol=0)  # integers
    again = load_digits()
    torch.testing.assert_close(again.x_train, digits.x_train, rtol=0, atol=0)
    assert torch.equal(again.y_test, digits.y_test)
    other = load_digits(seed=1)
    assert not torch.equal(other.y_test, digits.y_test)
    half = load_digits(test_fraction=0.5)
    assert len(half.x_train) + len(half.x_test) == 1797 and abs(len(half.x_test) - 898.5) < 1


@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.1, 1.5])
def test_digits_bad_test_fraction(test_fraction):
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        load_digits(test_fraction=test_fraction)


def test_mnist1d_small_and_deterministic():
    data = load_mnist1d(num_samples=100)
    assert data.name == "mnist1d" and data.num_classes == 10
    assert data.x_train.shape == (80, 40) and data.x_test.shape == (20, 40)  # the package's 80/20
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    again = load_mnist1d(num_samples=100)
    torch.testing.assert_close(again.x_train, data.x_train, rtol=0, atol=0)
    assert not torch.equal(load_mnist1d(num_samples=100, seed=1).x_train, data.x_train)
    scaled = load_mnist1d(num_samples=100, standardize=True)
    torch.testing.assert_close(scaled.x_train.mean(0), torch.zeros(40), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="num_samples must be at least 10, got 5"):
        load_mnist1d(num_samples=5)


# --- mini-batches ---------------------------------------------------------------------------

X = torch.arange(10).float().unsqueeze(1)  # (10, 1): each row remembers its index
Y = torch.arange(10)


@pytest.mark.parametrize("batch_size, drop_last, sizes", [
    (3, True, [3, 3, 3]), (3, False, [3, 3, 3, 1]), (5, True, [5, 5]), (5, False, [5, 5]),
    (10, True, [10]), (11, True, []), (11, False, [10]), (1, True, [1] * 10),
])
def test_batch_sizes_and_drop_last(batch_size, drop_last, sizes):
    batches = list(iterate_minibatches(X, Y, batch_size, drop_last=drop_last, shuffle=False))
    assert [len(xb) for xb, _ in batches] == sizes
    for xb, yb in batches:  # x and y stay paired
        assert torch.equal(xb[:, 0].long(), yb)


def test_without_shuffle_the_order_is_kept():
    ys = [yb for _, yb in iterate_minibatches(X, Y, 4, shuffle=False, drop_last=False)]
    assert torch.equal(torch.cat(ys), Y)


def test_shuffle_is_a_permutation_repeatable_with_a_generator():
    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in iterate_minibatches(X, Y, 2, generator=g)])

    order = epoch(0)
    assert sorted(order.tolist()) == list(range(10)) and not torch.equal(order, Y)
    assert torch.equal(epoch(0), order)
    assert not torch.equal(epoch(1), order)


def test_accepts_numpy_integer_batch_size():
    assert len(list(iterate_minibatches(X, Y, np.int64(4)))) == 2


@pytest.mark.parametrize("args, exception, message", [
    ((X, Y, 0), ValueError, r"batch_size must be at least 1, got 0"),
    ((X, Y, -3), ValueError, r"batch_size must be at least 1, got -3"),
    ((X, Y, 2.5), TypeError, r"batch_size must be an int, got float"),
    ((X, Y[:9], 2), ValueError, r"x and y must have the same length, got 10 and 9"),
], ids=["zero", "negative", "float", "length-mismatch"])
def test_bad_arguments_raise_at_the_call(args, exception, message):
    with pytest.raises(exception, match=message):
        iterate_minibatches(*args)  # not only when the first batch is drawn


def test_digits_images_view_of_the_same_split(digits):
    from bncourse.data import load_digits_images

    images = load_digits_images()
    assert images.x_train.shape == (1348, 1, 8, 8) and images.x_test.shape == (449, 1, 8, 8)
    torch.testing.assert_close(images.x_train.reshape(1348, 64), digits.x_train)
    assert torch.equal(images.y_test, digits.y_test) and images.num_classes == 10
    other = load_digits_images(seed=7)
    assert not torch.equal(other.y_test, images.y_test)


def test_digits_images_bad_test_fraction():
    from bncourse.data import load_digits_images

    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_images(test_fraction=1.5)


def test_digits_read_without_sklearn_match_sklearns_loader():
    """`load_digits` reads scikit-learn's shipped file itself (no second-long sklearn import):
    the very arrays `sklearn.datasets.load_digits` returns, read-only, without importing it."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sk_load_digits

    from bncourse.data.datasets import _digits_arrays

    data, target = _digits_arrays()
    bunch = sk_load_digits()
    np.testing.assert_array_equal(data, bunch.data)
    np.testing.assert_array_equal(target, bunch.target)
    assert data.dtype == bunch.data.dtype and not data.flags.writeable
    code = ("import sys; from bncourse.data import load_digits; load_digits(); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
