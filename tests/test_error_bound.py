"""The derived forward error bound of lnorm's algorithm, tested on adversarial rows.

For one row, with ``u`` the unit roundoff and ``s`` the summation growth factor of the
library's sums (a computed sum of n terms is within ``s u sum|terms|`` of the exact one), the
corrected two-pass algorithm of :func:`lnorm.moments.standardize` satisfies, to first order in u,

    max_i |y_computed_i - y_i| <= (5 s + 25) / 4 * eps * max|y|        (eps = 2u)

against the exact output for LayerNorm's parameter as given (the library rounds it to float32,
``u`` relative at most, which the bound covers, chapter 4), plus a second-order term that grows
with the row's condition number kappa: ``u |e1| rstd``
(at most ``(s + 1) u**2 * mean|x| / sqrt(var + eps)``) when every element lies in Sterbenz's
range of the first mean and the sum for ``m2`` is exact, and otherwise at most
``(s + 1)(s + 3) u kappa`` units with kappa at most about 2N (``lnorm.bounds.layer_norm_forward``
with ``n``). Any summation order has
``s <= n - 1``; NumPy's blocked pairwise sum along a contiguous axis has
``s <= ceil(log2(n / 128)) + 25`` (chapter 4). The derivation is in the docstring of
``lnorm.moments.standardize`` and in chapter 4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lnorm.numpy
import lnorm.torch
from lnorm import bounds, errors, moments

U32 = 2.0**-24


numpy_growth = bounds.numpy_sum_growth


def any_order_growth(n: int) -> int:
    """Any order of n - 1 additions (torch's reductions, whatever their vector width
    or threads)."""
    return max(n - 1, 0)


def bound_in_eps_units(row: np.ndarray, s: int, eps: float) -> float:
    """The derived bound, first order plus the explicit second-order term, in eps x max|y|."""
    x = row.astype(np.float64)
    y = errors.reference_layer_norm(x[None, :], x.size, eps=eps)[0]
    scale = np.abs(y).max()
    first_order = bounds.layer_norm_forward(s)
    if scale == 0.0:
        return first_order
    second_order = (s + 1) * U32**2 * np.abs(x).mean() / math.sqrt(x.var() + eps)
    # Outside Sterbenz's range kappa <= about 2N, and e1 rounds (s + 3) times more.
    kappa = math.sqrt(1 + x.mean() ** 2 / x.var()) if x.var() > 0 else 1.0
    general = bounds.layer_norm_forward(s, kappa, n=x.size) - bounds.layer_norm_forward(
        s, kappa
    )
    return first_order + 2 * second_order / (2 * U32 * scale) + general


@st.composite
def adversarial_rows(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.sampled_from([1, 2, 3, 7, 8, 100, 129, 768, 1000, 4096]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(
        st.sampled_from(
            ["normal", "two values", "one outlier", "near eps", "binades", "integers"]
        )
    )
    spread = 10.0 ** draw(st.integers(-3, 3))
    if kind == "normal":
        row = rng.normal(0.0, spread, n)
    elif kind == "two values":
        row = rng.choice([-spread, spread], n)
    elif kind == "one outlier":
        row = rng.normal(0.0, spread * 1e-3, n)
        row[rng.integers(n)] = spread * 1e3
    elif kind == "near eps":  # a spread around sqrt(eps), where eps and the variance compete
        row = rng.normal(0.0, 10.0 ** rng.uniform(-4, -1.5), n)
    elif kind == "binades":  # magnitudes over many powers of two, random signs
        row = rng.choice([-1.0, 1.0], n) * 2.0 ** rng.uniform(-20, 20, n)
    else:
        row = rng.integers(-3, 4, n).astype(np.float64) * spread
    offset = draw(st.sampled_from([0.0, 1.0, -1e2, 1e4, -1e6]))
    return (row + offset).astype(np.float32)


@settings(max_examples=300, deadline=None)
@given(row=adversarial_rows(), eps=st.sampled_from([1e-5, 1e-12, 1e-3]))
def test_numpy_backend_within_the_derived_bound(row: np.ndarray, eps: float) -> None:
    reference = errors.reference_layer_norm(row[None, :], row.size, eps=eps)
    y = lnorm.numpy.layer_norm(row[None, :], row.size, eps=eps)
    assert errors.eps_units(y, reference) <= bound_in_eps_units(row, numpy_growth(row.size), eps)


@settings(max_examples=200, deadline=None)
@given(row=adversarial_rows(), eps=st.sampled_from([1e-5, 1e-12, 1e-3]))
def test_torch_backend_within_the_derived_bound(row: np.ndarray, eps: float) -> None:
    reference = errors.reference_layer_norm(row[None, :], row.size, eps=eps)
    y = lnorm.torch.layer_norm(torch.from_numpy(row[None, :]), row.size, eps=eps)
    assert errors.eps_units(y, reference) <= bound_in_eps_units(
        row, any_order_growth(row.size), eps
    )


def test_the_bound_is_far_above_what_random_rows_reach() -> None:
    # The bound is a worst case: on ordinary rows the error is a small share of it.
    row = np.random.default_rng(0).normal(1e4, 1.0, 4096).astype(np.float32)
    reference = errors.reference_layer_norm(row[None, :], 4096)
    measured = errors.eps_units(lnorm.numpy.layer_norm(row[None, :], 4096), reference)
    assert measured <= 0.1 * bound_in_eps_units(row, numpy_growth(4096), 1e-5)


def test_numpy_sum_growth_covers_numpy_s_summation_tree() -> None:
    # The most additions any element sees in NumPy's pairwise sum (chapter 4) stay within s.
    for n in list(range(1, 2049)) + [4095, 4096, 4097, 65536, 100_003]:
        additions, halvings = bounds.numpy_sum_depth(n)
        assert additions <= bounds.numpy_sum_growth(n)
        assert n <= 128 or halvings <= math.ceil(math.log2(n / 128)) + 1


def numpy_order_sum(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's sum in the order :func:`lnorm.bounds.numpy_sum_depth` models, one rounding per
    float32 operation; and how many additions each element passes through."""
    n = rows.shape[1]
    depth = np.zeros(n, dtype=int)
    if n < 8:  # one after the other
        total = np.zeros(rows.shape[0], np.float32)
        for i in range(n):
            total = total + rows[:, i]
            depth[:i] += 1  # the first element enters a sum of zero, exactly
            depth[i] += i > 0
        return total, depth
    if n <= 128:  # eight accumulators, a tree of three levels, then the leftovers
        accumulators = [rows[:, j].copy() for j in range(8)]
        whole = n - n % 8
        for i in range(8, whole, 8):
            for j in range(8):
                accumulators[j] = accumulators[j] + rows[:, i + j]
            depth[: i + 8] += 1
        a = accumulators
        total = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
        depth[:whole] += 3
        for i in range(whole, n):
            total = total + rows[:, i]
            depth[: i + 1] += 1
        return total, depth
    half = n // 2 - (n // 2) % 8  # the split point, rounded down to a multiple of 8
    (sum_a, depth_a), (sum_b, depth_b) = numpy_order_sum(rows[:, :half]), numpy_order_sum(
        rows[:, half:]
    )
    return sum_a + sum_b, np.concatenate([depth_a, depth_b]) + 1


@pytest.mark.parametrize(
    "n", [2, 5, 7, 8, 9, 15, 16, 17, 100, 127, 128, 129, 255, 257, 768, 1024, 4097, 100_003]
)
def test_numpy_sum_depth_is_numpy_s_order(n: int) -> None:
    # Magnitudes over 24 binades make almost every addition round, so another order (say,
    # one after the other) gives other bits: bit equality pins the order down.
    rng = np.random.default_rng(n)
    rows = (rng.uniform(0, 1, (4, n)) * 2.0 ** rng.integers(-12, 12, (4, n))).astype(np.float32)
    modelled, depth = numpy_order_sum(rows)
    assert np.array_equal(rows.sum(axis=-1), modelled)
    assert np.array_equal(rows.mean(axis=-1), modelled / np.float32(n))  # the mean: one division
    assert all(np.array_equal(np.sum(row), total) for row, total in zip(rows, modelled))
    assert depth.max() == bounds.numpy_sum_depth(n)[0]
    if n >= 8:  # the test can tell orders apart
        assert not np.array_equal(np.cumsum(rows, axis=-1)[:, -1], modelled)


def test_rms_norm_forward_bound_holds_at_large_offsets() -> None:
    # No cancellation: the bound does not depend on the mean (chapter 10).
    rng = np.random.default_rng(0)
    for offset in (0.0, 1e3, 1e6):
        x = rng.normal(offset, 1.0, size=(16, 4096)).astype(np.float32)
        units = errors.eps_units(
            lnorm.numpy.rms_norm(x, 4096), errors.reference_rms_norm(x, 4096)
        )
        assert units <= bounds.rms_norm_forward(bounds.numpy_sum_growth(4096))


def test_rms_norm_16_bit_bound_holds_at_large_offsets() -> None:
    # One rounding of the float32 result: half a unit plus float32's share (chapter 10).
    rng = np.random.default_rng(1)
    s = bounds.numpy_sum_growth(4096)
    for offset in (0.0, 1e2, 1e4):
        x = rng.normal(offset, 1.0, size=(16, 4096)).astype(np.float16)
        weight = rng.normal(1.0, 0.5, size=4096).astype(np.float16)
        units = errors.eps_units(
            lnorm.numpy.rms_norm(x, 4096, weight), errors.reference_rms_norm(x, 4096, weight)
        )
        assert units <= bounds.rms_norm_forward_rounded(s, float(np.finfo(np.float16).eps))
    # The arithmetic chapter 10 quotes: 0.5 (1 + d) + d / eps16, d = (s + 11)/4 eps32.
    d = 41 / 4 * 2.0**-23
    assert bounds.rms_norm_forward_rounded(30, 2.0**-10) == 0.5 * (1 + d) + d * 2**10
    assert 0.5 + 2**-10 < bounds.rms_norm_forward_rounded(30, 2.0**-10) < 0.5 + 2**-9


def _backward_dx(backend: str, dy: np.ndarray, row: np.ndarray, weight, eps: float) -> np.ndarray:
    n = row.size
    if backend == "numpy":
        return lnorm.numpy.layer_norm_backward(dy, row[None, :], n, weight, eps=eps)[0]
    leaf = torch.from_numpy(row[None, :]).requires_grad_(True)
    w = None if weight is None else torch.from_numpy(weight)
    lnorm.torch.layer_norm(leaf, n, w, eps=eps).backward(torch.from_numpy(dy))
    return leaf.grad.numpy()


@settings(max_examples=200, deadline=None)
@given(
    row=adversarial_rows(),
    eps=st.sampled_from([1e-5, 1e-12, 1e-3]),
    kind=st.sampled_from(["random", "near one", "near x_hat"]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_backward_dx_within_the_derived_bound(
    row: np.ndarray, eps: float, kind: str, weighted: bool, seed: int
) -> None:
    # dx within layer_norm_backward_dx(s, max|x_hat|, F) eps rstd max|g| (chapter 6), also
    # when g = dy * weight lies near span{1, x_hat} and the exact dx cancels.
    n = row.size
    rng = np.random.default_rng(seed)
    x_hat, rstd = moments.standardize(row.astype(np.float64)[None, :], eps)
    noise = rng.normal(size=(1, n))
    dy = {"random": noise, "near one": 1 + 1e-4 * noise, "near x_hat": x_hat + 1e-4 * noise}[kind]
    dy = dy.astype(np.float32)
    weight = rng.uniform(0.5, 1.5, n).astype(np.float32) if weighted else None
    reference = lnorm.numpy.layer_norm_backward(
        dy.astype(np.float64), row.astype(np.float64)[None, :], n,
        None if weight is None else weight.astype(np.float64), eps=eps,
    )[0]
    g = dy.astype(np.float64) * (1.0 if weight is None else weight.astype(np.float64))
    scale = 2 * U32 * float(rstd[0, 0]) * np.abs(g).max()
    for backend, s in (("numpy", numpy_growth(n)), ("torch", any_order_growth(n))):
        dx = _backward_dx(backend, dy, row, weight, eps)
        forward = bound_in_eps_units(row, s, eps)
        units = bounds.layer_norm_backward_dx(s, float(np.abs(x_hat).max()), forward)
        assert np.abs(dx - reference).max() <= units * scale, (backend, kind)


def test_backward_dx_bound_formula() -> None:
    # ((s + 5) + (s + 4) X) / 2 + F X (1 + X) + (2 + X)(1 + F), F = (5s + 25)/4 by default
    assert bounds.layer_norm_backward_dx(0, 0.0, 0.0) == 2.5 + 2
    assert bounds.layer_norm_backward_dx(28, 4.0) == (33 + 32 * 4) / 2 + 41.25 * 20 + 6 * 42.25


def test_second_order_kappa_cap() -> None:
    """About 2n + 1 for short rows, grown by 1 / (1 - (2n + 1)(s + 1) u), none past the limit."""
    s, n = numpy_growth(768), 768
    cap = bounds.second_order_kappa_cap(s, n)
    assert cap == (2 * n + 1) / (1 - (2 * n + 1) * (s + 1) * U32)
    assert 2 * n + 1 < cap < 1.01 * (2 * n + 1)
    assert 1.3 < bounds.second_order_kappa_cap(numpy_growth(65536), 65536) / 131073 < 1.45
    assert bounds.second_order_kappa_cap(2895, 2896) < math.inf
    assert bounds.second_order_kappa_cap(4095, 4096) == math.inf
    # layer_norm_forward with n caps kappa there
    big = bounds.layer_norm_forward(s, 1e9, n=n) - bounds.layer_norm_forward(s, 0.0, n=n)
    assert big == pytest.approx((s + 1) * U32 * 1e9 / 2 + (s + 1) * (s + 3) * U32 * cap)


def test_largest_kappa() -> None:
    """sqrt(1 + mu**2 / sigma**2) of the worst row, the same for a tensor and an array."""
    rows = np.array([[1.0, 3.0], [10.0, 12.0]], dtype=np.float32)  # sigma 1, mu 2 and 11
    assert bounds.largest_kappa(rows) == pytest.approx(math.sqrt(1 + 11.0**2))
    assert bounds.largest_kappa(torch.from_numpy(rows).half()) == bounds.largest_kappa(rows)
    # the affine bound adds the same second-order term as the forward bound
    second = bounds.layer_norm_forward(767, 100.0, n=768) - bounds.layer_norm_forward(767)
    assert bounds.layer_norm_affine_forward(767, 100.0, n=768) == 966.0 + second


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4])
def test_affine_forward_bound_holds(offset: float) -> None:
    """x_hat * weight + bias within (5s + 29)/4 eps A, A = max|w| max|x_hat| + max|b|, for a
    large weight and a bias that cancels part of the output (both backends)."""
    rng = np.random.default_rng(11)
    n = 768
    x = rng.normal(offset, 1.0, size=(64, n)).astype(np.float32)
    weight = rng.uniform(-1000.0, 1000.0, n).astype(np.float32)
    bias = (-weight * rng.normal(size=n)).astype(np.float32)
    exact = errors.reference_layer_norm(x, n, weight, bias)
    x_hat = errors.reference_layer_norm(x, n)
    scale = np.abs(weight).max() * np.abs(x_hat).max() + np.abs(bias).max()
    eps32 = 2 * U32
    for name, growth, y in [
        ("numpy", numpy_growth(n), lnorm.numpy.layer_norm(x, n, weight, bias)),
        ("torch", any_order_growth(n), lnorm.torch.layer_norm(
            torch.from_numpy(x), n, torch.from_numpy(weight), torch.from_numpy(bias)).numpy()),
    ]:
        kappa = float(np.sqrt(1 + x.astype(np.float64).mean(-1) ** 2
                              / x.astype(np.float64).var(-1)).max())
        second = bounds.layer_norm_forward(growth, kappa, n=n) - bounds.layer_norm_forward(growth)
        limit = (bounds.layer_norm_affine_forward(growth) + second) * eps32 * scale
        assert np.abs(y.astype(np.float64) - exact).max() <= limit, name
