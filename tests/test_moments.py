"""The mean/variance algorithms of lnorm.moments, and their error bounds, in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lnorm import bounds, moments

U32 = 2.0**-24  # float32 unit roundoff
ALGORITHMS = ["one_pass", "two_pass", "welford", "pairwise", "corrected_two_pass"]


def exact_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of float32 data computed in float64: exact to far below float32
    rounding."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    return mean, ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 100])
def test_every_algorithm_is_exact_enough_in_float64(name: str, n: int) -> None:
    x = np.random.default_rng(n).normal(3.0, 2.0, size=(4, n))
    mean, var = getattr(moments, name)(x)
    expected_mean, expected_var = exact_moments(x)
    assert mean.shape == var.shape == (4, 1)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-13)
    np.testing.assert_allclose(var, expected_var, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_torch_tensors_work_too(name: str) -> None:
    x = np.random.default_rng(0).normal(size=(3, 17))
    mean, var = getattr(moments, name)(torch.from_numpy(x))
    expected_mean, expected_var = getattr(moments, name)(x)
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), expected_var, rtol=1e-12)


# Each bound is the docstring's first-order bound with its constants spelled out: a squared
# deviation rounds three times, a mean of N terms s + 1 times relative to the sum of their
# magnitudes (s = bounds.numpy_sum_growth(N), NumPy's growth factor, replaces the N of
# recursive summation), so the mean-based algorithms carry (s + 4) u.
def bound(name: str, n: int, kappa: np.ndarray) -> np.ndarray:
    rounding = (bounds.numpy_sum_growth(n) + 4) * U32
    return {
        "two_pass": rounding + (rounding * kappa) ** 2,
        "welford": (n + 4) * U32 * kappa,
        "pairwise": (np.ceil(np.log2(n)) + 4) * U32 * kappa,
        "corrected_two_pass": rounding + rounding * (rounding * kappa) ** 2,
    }[name]


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["two_pass", "welford", "pairwise", "corrected_two_pass"]),
    n=st.integers(2, 400),
    offset_exponent=st.floats(0, 6),
    std_exponent=st.floats(-2, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_float32_variance_error_within_bound(name, n, offset_exponent, std_exponent, seed) -> None:
    x = np.random.default_rng(seed).normal(10.0**offset_exponent, 10.0**std_exponent, size=(3, n))
    x = x.astype(np.float32)
    expected_mean, expected_var = exact_moments(x)
    _, var = getattr(moments, name)(x)
    assert var.dtype == np.float32
    constant = expected_var == 0  # rounding to float32 can make every element equal
    assert np.all(var[constant] == 0)
    expected_mean, expected_var, var = (
        expected_mean[~constant],
        expected_var[~constant],
        var[~constant],
    )
    kappa = np.sqrt(1 + expected_mean**2 / expected_var)
    relative_error = np.abs(var.astype(np.float64) - expected_var) / expected_var
    assert np.all(relative_error <= bound(name, n, kappa))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 400),
    offset_exponent=st.floats(0, 6),
    std_exponent=st.floats(-2, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_float32_one_pass_error_within_bound(n, offset_exponent, std_exponent, seed) -> None:
    # The table's N u kappa**2 with NumPy's sums: mean(x**2) (one rounding per square, s + 1
    # for the mean) and mean**2 (2(s + 1) + 1) are each within their share of sigma**2 kappa**2,
    # and the difference rounds once more: (3s + 6) u kappa**2, first order. The second-order
    # terms are below (s + 1)**2 u**2 kappa**2: 1% slack covers them for every s here.
    x = np.random.default_rng(seed).normal(10.0**offset_exponent, 10.0**std_exponent, size=(3, n))
    x = x.astype(np.float32)
    expected_mean, expected_var = exact_moments(x)
    _, var = moments.one_pass(x)
    varying = expected_var[:, 0] > 0  # rounding to float32 can make every element equal
    kappa = np.sqrt(1 + expected_mean[varying] ** 2 / expected_var[varying])
    relative_error = np.abs(var[varying] - expected_var[varying]) / expected_var[varying]
    first_order = (3 * bounds.numpy_sum_growth(n) + 6) * U32 * kappa**2
    assert np.all(relative_error <= 1.01 * first_order)


def test_one_pass_loses_every_digit_and_can_go_negative() -> None:
    # Four numbers near 1e4 with variance 1.25: their squares need 27 bits, float32 keeps 24.
    x = np.array([[10000.0, 10001.0, 10002.0, 10003.0]], dtype=np.float32)
    assert moments.one_pass(x)[1].item() == 0.0
    assert moments.corrected_two_pass(x)[1].item() == 1.25
    # Rows with variance 1e-4 around 1e4: the one-pass variance is often negative.
    x = np.random.default_rng(0).normal(1e4, 0.01, size=(1000, 16)).astype(np.float32)
    assert (moments.one_pass(x)[1] < 0).sum() > 100
    assert (moments.corrected_two_pass(x)[1] > 0).all()


def test_centre_leaves_deviations_accurate_at_a_large_offset() -> None:
    x = np.random.default_rng(0).normal(1e6, 1.0, size=(8, 1000)).astype(np.float32)
    centred, _ = moments.centre(x)
    exact = x.astype(np.float64) - x.astype(np.float64).mean(axis=-1, keepdims=True)
    assert np.max(np.abs(centred - exact)) <= 4 * U32 * np.max(np.abs(exact))


def test_standardize_returns_a_new_array_and_rstd() -> None:
    x = np.arange(12.0).reshape(3, 4)
    before = x.copy()
    y, rstd = moments.standardize(x, 1e-5)
    assert y is not x and np.array_equal(x, before)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-15)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-5))


def test_standardize_into_buffers_allocates_nothing_new() -> None:
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float16)
    out, scratch = np.empty((4, 8), np.float32), np.empty((4, 8), np.float32)
    y, _ = moments.standardize(x, 1e-5, out=out, scratch=scratch)
    assert y is out
    np.testing.assert_allclose(y, moments.standardize(x.astype(np.float32), 1e-5)[0])


@pytest.mark.parametrize("m", [0, 1, 2, 3, 7, 64, 1000])
def test_pairwise_column_sum(m: int) -> None:
    rows = np.random.default_rng(m).normal(size=(m, 5))
    np.testing.assert_allclose(moments.pairwise_column_sum(rows), rows.sum(axis=0), atol=1e-12)
    torch_sum = moments.pairwise_column_sum(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(torch_sum, rows.sum(axis=0), atol=1e-12)


def test_pairwise_column_sum_error_grows_like_log_m() -> None:
    # a million float32 rows: recursive summation drifts, the pairwise sum stays within log2(M) u
    rows = np.random.default_rng(0).uniform(0, 1, size=(1 << 20, 2)).astype(np.float32)
    exact = rows.astype(np.float64).sum(axis=0)
    pairwise = moments.pairwise_column_sum(rows).astype(np.float64)
    recursive = np.cumsum(rows, axis=0)[-1].astype(np.float64)
    assert np.all(np.abs(pairwise - exact) <= 20 * U32 * exact)
    assert np.all(np.abs(recursive - exact) > 10 * np.abs(pairwise - exact))
