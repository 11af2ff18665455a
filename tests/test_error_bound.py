"""The derived forward error bound of lnorm's algorithm, tested on adversarial rows.

For one row, with ``u`` the unit roundoff and ``s`` the summation growth factor of the
library's sums (a computed sum of n terms is within ``s u sum|terms|`` of the exact one), the
corrected two-pass algorithm of :func:`lnorm.moments.standardize` satisfies, to first order in u,

    max_i |y_computed_i - y_i| <= (5 s + 25) / 4 * eps * max|y|        (eps = 2u)

plus a second-order term ``(s + 1) u**2 * mean|x| / sqrt(var + eps)``, which grows with the
mean offset and matters only once ``s u kappa`` approaches 1. Any summation order has
``s <= n - 1``; NumPy's blocked pairwise sum along a contiguous axis has
``s <= ceil(log2(n / 128)) + 25`` (chapter 4). The derivation is in the docstring of
``lnorm.moments.standardize`` and in chapter 4.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lnorm.numpy
import lnorm.torch
from lnorm import bounds, errors

U32 = 2.0**-24


numpy_growth = bounds.numpy_sum_growth


def any_order_growth(n: int) -> int:
    """Any order of n - 1 additions (torch's reductions, whatever their vector width or threads)."""
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
    return first_order + 2 * second_order / (2 * U32 * scale)


@st.composite
def adversarial_rows(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.sampled_from([1, 2, 3, 7, 8, 100, 129, 768, 1000, 4096]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "two values", "one outlier", "near eps", "binades", "integers"]))
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
    assert errors.eps_units(y, reference) <= bound_in_eps_units(row, any_order_growth(row.size), eps)


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
