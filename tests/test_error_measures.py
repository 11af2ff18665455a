"""lnorm.errors: the error measures and references every chapter uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnorm import errors


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_ulp_distance_counts_representable_numbers(dtype) -> None:
    x = np.array([1.0, -1.0, 0.0, 1e-3], dtype=dtype)
    up = np.nextafter(x, np.array(np.inf, dtype=dtype))
    assert np.array_equal(errors.ulp_distance(x, x), [0, 0, 0, 0])
    assert np.array_equal(errors.ulp_distance(up, x), [1, 1, 1, 1])
    assert np.array_equal(errors.ulp_distance(np.nextafter(up, up + 1), x), [2, 2, 2, 2])
    tiny = np.finfo(dtype).smallest_subnormal
    assert errors.ulp_distance(np.array([tiny], dtype), np.array([-tiny], dtype)).item() == 2
    assert errors.ulp_distance(np.array([0.0], dtype), np.array([-0.0], dtype)).item() == 0


def test_ulp_distance_rejects_other_dtypes() -> None:
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        errors.ulp_distance(np.array([1], dtype=np.int32), np.array([1]))


def test_eps_units_and_compare() -> None:
    expected = np.array([2.0, -1.0, 0.0])
    actual = (expected + np.array([0.0, 2.0**-22, 0.0])).astype(np.float32)
    assert errors.machine_epsilon(actual) == 2.0**-23
    assert errors.eps_units(actual, expected) == pytest.approx(1.0)
    report = errors.compare(actual, expected)
    assert report.max_abs == 2.0**-22 and report.max_rel == 2.0**-22 and report.dtype == "float32"
    assert "float32: max abs error 2.38e-07" in str(report)
    assert errors.eps_units(np.zeros(3), np.zeros(3)) == 0.0


def test_torch_tensors_including_bfloat16_are_measured() -> None:
    y = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    assert errors.machine_epsilon(y) == 2.0**-7
    assert errors.max_abs_error(y, np.array([1.0, 2.0])) == 0.0


def test_float64_reference_agrees_with_mpmath_at_a_large_offset() -> None:
    # The float64 reference is good enough to judge float32 results: here, at offset 1e6,
    # it agrees with a 60-digit computation to about 1e-15 of the output scale.
    x = np.random.default_rng(0).normal(1e6, 1.0, size=(1, 64)).astype(np.float32)
    exact = errors.exact_layer_norm(x[0])
    reference = errors.reference_layer_norm(x, 64)[0]
    assert np.max(np.abs(reference - exact)) < 1e-14 * np.max(np.abs(exact))


def test_assert_close_normwise() -> None:
    expected = np.array([1.0, 0.0, -2.0])
    errors.assert_close_normwise(
        np.float32(expected + [0, 2.0**-22, 0]), expected, max_eps_units=1
    )
    with pytest.raises(AssertionError, match="exceeds the bound of 0.5"):
        errors.assert_close_normwise(
            np.float32(expected + [0, 2.0**-22, 0]), expected, max_eps_units=0.5
        )
    with pytest.raises(AssertionError):
        errors.assert_close_normwise(np.array([np.nan]), np.array([1.0]))


def _rows(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """32 rows of one kind around zero: the families the measured limit was measured on."""
    if kind == "two-valued":
        return np.where(np.arange(n) % 2 == 0, 1.0, -1.0) + 1e-3 * rng.normal(size=(32, n))
    if kind == "one outlier":
        rows = 1e-2 * rng.normal(size=(32, n))
        rows[:, 0] += 50.0
        return rows
    if kind == "student-t":
        return rng.standard_t(2, size=(32, n))
    return rng.normal(size=(32, n)) if kind == "gaussian" else rng.uniform(-1, 1, (32, n))


def _textbook(x: torch.Tensor, n: int) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    return centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + 1e-5)


@pytest.mark.parametrize(
    "kind", ["gaussian", "uniform", "student-t", "two-valued", "one outlier"])
def test_torch_limit_holds_on_rows_of_five_kinds(kind: str) -> None:
    """torch's float32 kernel and the textbook two-pass within errors.torch_limit, at means just
    above a power of two (where an ulp of the mean is largest relative to it) and between."""
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    eps32 = float(np.finfo(np.float32).eps)
    n = 256
    for mean in (2.0**4 * 1.0001, 2.0**11 * 1.0001, 2.0**14 * 1.3, 2.0**18 * 1.0001):
        x = (mean + _rows(kind, rng, n)).astype(np.float32)
        exact = errors.reference_layer_norm(x, n)
        x64 = x.astype(np.float64)
        kappa = np.sqrt(1 + x64.mean(-1) ** 2 / (x64.var(-1) + 1e-5))
        for run in (lambda t: F.layer_norm(t, (n,)), lambda t: _textbook(t, n)):
            y = run(torch.from_numpy(x)).double().numpy()
            for row in range(x.shape[0]):
                err = np.abs(y[row] - exact[row]).max() / eps32
                assert err <= errors.torch_limit(np.abs(exact[row]).max(), kappa[row])


def test_torch_limit_with_a_bias_uses_the_scale_before_the_bias() -> None:
    """A bias that cancels the largest output leaves max|y| small but the error as it was: the
    limit's scale is max|weight| max|x_hat| + max|bias|."""
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    eps32 = float(np.finfo(np.float32).eps)
    n = 768
    base = 1e-2 * rng.normal(size=(1, n))
    base[0, 0] += 50.0
    x = (2.0**12 * 1.0001 + base).astype(np.float32)
    x_hat = errors.reference_layer_norm(x, n)
    weight = np.ones(n, np.float32)
    bias = np.zeros(n, np.float32)
    bias[0] = -x_hat[0, 0]
    exact = errors.reference_layer_norm(x, n, weight, bias)
    y = F.layer_norm(torch.from_numpy(x), (n,), torch.from_numpy(weight),
                     torch.from_numpy(bias)).double().numpy()
    x64 = x.astype(np.float64)
    kappa = float(np.sqrt(1 + x64.mean() ** 2 / (x64.var() + 1e-5)))
    scale = np.abs(x_hat).max() + np.abs(bias).max()
    assert np.abs(y - exact).max() / eps32 <= errors.torch_limit(scale, kappa)


def test_one_rule_atol_is_twice_the_limit() -> None:
    eps32 = float(np.finfo(np.float32).eps)
    assert errors.one_rule_atol(4.0, 10.0) == ((4 + 2 * 10.0) * 4.0 + 6 * 10.0) * eps32
    assert errors.torch_limit_units(4.0, 10.0) == 2 + 10.0 + 3 * 10.0 / 4.0
    assert errors.one_rule_atol(4.0, 10.0, output_eps=2.0**-10) == (
        ((4 + 2 * 10.0) * 4.0 + 6 * 10.0) * eps32 + 4.0 * 2.0**-10)
