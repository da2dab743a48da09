"""bncourse.gradcheck: centred differences (O(h^2)), x restored, argument errors, rel_error."""
import numpy as np
import pytest

from bncourse.gradcheck import numerical_gradient, rel_error

CASES = [  # (f, gradient, x shape)
    (lambda x: float(np.sum(x**3)), lambda x: 3 * x**2, (5,)),
    (lambda x: float(np.sum(np.sin(x) * x)), lambda x: np.cos(x) * x + np.sin(x), (3, 4)),
    (lambda x: float(np.sum(x) ** 2), lambda x: 2 * np.sum(x) * np.ones_like(x), (2, 3, 2)),
]


@pytest.mark.parametrize("f, grad, shape", CASES, ids=["cube", "x sin x", "coupled"])
def test_matches_the_analytic_gradient(f, grad, shape):
    x = np.random.default_rng(0).uniform(-1.5, 1.5, shape)
    before = x.copy()
    numeric = numerical_gradient(f, x)
    assert numeric.shape == shape and numeric.dtype == np.float64
    assert rel_error(numeric, grad(x)) < 1e-9
    assert np.array_equal(x, before)


def test_centred_error_is_second_order():
    f = lambda x: float(np.sum(np.exp(x)))  # third derivative exp(x): error h^2/6 exp(x)
    x = np.array([0.3])
    errors = [abs(numerical_gradient(f, x, h)[0] - np.exp(0.3)) for h in (1e-2, 1e-3)]
    assert errors[0] == pytest.approx(1e-4 / 6 * np.exp(0.3), rel=1e-3)
    assert 80 < errors[0] / errors[1] < 120  # h / 10 -> error / 100


def test_float32_input_is_perturbed_in_float32_and_restored():
    x = np.linspace(-1, 1, 6, dtype=np.float32)
    before = x.copy()
    numeric = numerical_gradient(lambda v: float(np.sum(v.astype(np.float64) ** 2)), x, 1e-2)
    assert x.dtype == np.float32 and np.array_equal(x, before)
    assert rel_error(numeric, 2 * x) < 1e-5


def test_x_restored_when_f_raises():
    x = np.ones(3)

    def f(v):
        if v[0] != 1.0:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError):
        numerical_gradient(f, x)
    assert np.array_equal(x, np.ones(3))


@pytest.mark.parametrize("args, error, match", [
    ((None, np.ones(2)), TypeError, "f must be a callable"),
    ((np.sum, [1.0, 2.0]), TypeError, "x must be a NumPy array"),
    ((np.sum, np.ones(2, dtype=int)), TypeError, "x must be a floating-point array"),
    ((np.sum, np.ones(2), 0.0), ValueError, "h must be a positive number"),
    ((np.sum, np.ones(2), -1e-5), ValueError, "h must be a positive number"),
    ((np.sum, np.ones(2), True), ValueError, "h must be a positive number"),
])
def test_argument_errors_name_the_argument(args, error, match):
    with pytest.raises(error, match=match):
        numerical_gradient(*args)


@pytest.mark.parametrize("a, b, expected", [
    (np.ones(3), np.ones(3), 0.0),
    (np.zeros(3), np.zeros(3), 0.0),
    (np.array([1.0, 0.0]), np.array([-1.0, 0.0]), 1.0),
    (np.array([3.0]), np.array([1.0]), 0.5),
])
def test_rel_error(a, b, expected):
    assert rel_error(a, b) == pytest.approx(expected, abs=1e-15)


def test_rel_error_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        rel_error(np.ones(2), np.ones(3))
