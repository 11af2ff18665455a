"""Measuring error: distances between a computed result and a reference.

Every chapter reports error the same way, through :func:`compare`. The
*reference* should be far more accurate than the result it judges:

- :func:`reference_layer_norm` computes in float64. For float32 or
  half-precision inputs that is enough: its own error, a few float64 units
  (2**-53 ≈ 1.1e-16) relative to the output, is about 1e-9 of a float32 unit,
  and the corrected two-pass algorithm keeps it there at any mean offset.
- :func:`exact_layer_norm` computes in mpmath with many more digits and rounds
  once at the end. Use it to judge float64 results, and to check the float64
  reference itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np

import lnorm.numpy

_INT_OF_FLOAT = {
    np.dtype(np.float16): np.int16,
    np.dtype(np.float32): np.int32,
    np.dtype(np.float64): np.int64,
}


def as_numpy(a: object) -> np.ndarray:
    """A NumPy view or copy of an array or (CPU or GPU, bfloat16 too) torch tensor."""
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu()
        # NumPy has no bfloat16: widen it, exactly, to float32
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        return a.numpy()
    return np.asarray(a)


def machine_epsilon(a: object) -> float:
    """Machine epsilon of the array's dtype: the gap between 1 and the next float, 2u."""
    dtype = str(a.dtype).removeprefix("torch.")
    return {"bfloat16": 2.0**-7}.get(dtype) or float(np.finfo(np.dtype(dtype)).eps)


def max_abs_error(actual: object, expected: object) -> float:
    """max |actual - expected|, computed in float64."""
    return float(
        np.max(
            np.abs(as_numpy(actual).astype(np.float64) - as_numpy(expected).astype(np.float64)),
            initial=0.0,
        )
    )


def max_rel_error(actual: object, expected: object) -> float:
    """max |actual - expected| / |expected| over the elements where expected is not zero."""
    a, e = as_numpy(actual).astype(np.float64), as_numpy(expected).astype(np.float64)
    nonzero = e != 0
    return float(np.max(np.abs(a[nonzero] - e[nonzero]) / np.abs(e[nonzero]), initial=0.0))


def eps_units(actual: object, expected: object) -> float:
    """max |actual - expected| in units of eps(actual's dtype) × max |expected|.

    A normwise measure: 1 means an error the size of one rounding of the
    largest output. It stays meaningful for outputs near zero, where a
    relative error does not.
    """
    scale = float(np.max(np.abs(as_numpy(expected).astype(np.float64)), initial=0.0))
    if scale == 0.0:
        return 0.0 if max_abs_error(actual, expected) == 0.0 else float("inf")
    return max_abs_error(actual, expected) / (machine_epsilon(actual) * scale)


def ulp_distance(
    actual: np.ndarray, expected: np.ndarray, dtype: str | None = None
) -> np.ndarray:
    """How many numbers of a dtype lie between actual and expected, both rounded to it.

    0 means equal after rounding, 1 means neighbours. The dtype is actual's (float16, float32 or
    float64) unless ``dtype`` names one: "float16", "float32", "float64", or "bfloat16", which
    NumPy lacks: a bfloat16 number is the top half of a float32, so its neighbours are float32
    numbers 2**16 apart in the ordered integers below.
    """
    if dtype == "bfloat16":
        return ulp_distance(_to_bfloat16(actual), _to_bfloat16(expected)) // 2**16
    actual = np.asarray(actual) if dtype is None else np.asarray(actual).astype(dtype)
    dtype = actual.dtype
    if dtype not in _INT_OF_FLOAT:
        raise TypeError(f"ulp_distance needs float16, float32 or float64 arrays, got {dtype}")
    ints = _INT_OF_FLOAT[dtype]

    def ordered(a: np.ndarray) -> np.ndarray:
        # Reinterpret the bits as integers that count floats in order: for negative
        # floats the sign-magnitude bit pattern runs backwards, so reflect it.
        bits = np.ascontiguousarray(a, dtype=dtype).view(ints).astype(np.int64)
        return np.where(bits < 0, np.iinfo(ints).min - bits, bits)

    return np.abs(ordered(actual) - ordered(np.asarray(expected).astype(dtype)))


def _to_bfloat16(a: object) -> np.ndarray:
    """``a`` rounded to bfloat16 (to nearest, ties to even), as float32 numbers."""
    bits = np.ascontiguousarray(as_numpy(a), dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # finite values only
    return rounded.astype(np.uint32).view(np.float32)


@dataclass(frozen=True)
class Comparison:
    """The error of ``actual`` against ``expected`` in the measures above."""

    dtype: str
    max_abs: float
    max_rel: float
    eps_units: float

    def __str__(self) -> str:
        return (
            f"{self.dtype}: max abs error {self.max_abs:.2e}, max rel error {self.max_rel:.2e}, "
            f"{self.eps_units:.3g} eps x max|expected|"
        )


def compare(actual: object, expected: object) -> Comparison:
    """One report of how far ``actual`` is from ``expected``; every chapter uses it."""
    return Comparison(
        dtype=str(actual.dtype).removeprefix("torch."),
        max_abs=max_abs_error(actual, expected),
        max_rel=max_rel_error(actual, expected),
        eps_units=eps_units(actual, expected),
    )


def reference_layer_norm(
    x: object, normalized_shape, weight: object = None, bias: object = None, eps: float = 1e-5
) -> np.ndarray:
    """LayerNorm of the exact input values, computed in float64 (see the module docstring for
    when that suffices)."""

    def wide(a: object) -> np.ndarray | None:
        return None if a is None else as_numpy(a).astype(np.float64)

    return lnorm.numpy.layer_norm(wide(x), normalized_shape, wide(weight), wide(bias), eps)


def reference_rms_norm(
    x: object, normalized_shape, weight: object = None, eps: float | None = None
) -> np.ndarray:
    """RMSNorm of the exact input values, computed in float64.

    ``eps=None`` is resolved for the *input's* dtype, as ``rms_norm`` resolves it
    (float32's machine epsilon for float16, bfloat16 and float32 inputs), not for float64.
    """
    if eps is None:
        eps = 2.0**-52 if str(x.dtype).removeprefix("torch.") == "float64" else 2.0**-23

    def wide(a: object) -> np.ndarray | None:
        return None if a is None else as_numpy(a).astype(np.float64)

    return lnorm.numpy.rms_norm(wide(x), normalized_shape, wide(weight), eps)


def exact_layer_norm(row: object, eps: float = 1e-5, digits: int = 60) -> np.ndarray:
    """LayerNorm of one row, computed with ``digits`` decimal digits in mpmath and rounded once
    to float64."""
    with mpmath.workdps(digits):
        values = [mpmath.mpf(float(v)) for v in as_numpy(row).astype(np.float64).ravel()]
        n = len(values)
        mean = mpmath.fsum(values) / n
        var = mpmath.fsum((v - mean) ** 2 for v in values) / n
        rstd = 1 / mpmath.sqrt(var + mpmath.mpf(eps))
        return np.array([float((v - mean) * rstd) for v in values])


def assert_close_normwise(actual: object, expected: object, max_eps_units: float = 4.0) -> None:
    """Raise ``AssertionError`` unless
    max|actual - expected| <= max_eps_units × eps × max|expected|.

    A normwise tolerance scales with the largest output, so outputs near zero get the
    same absolute allowance as the rest. The default ``4`` is twice the envelope measured
    for float32 LayerNorm by the book's algorithm (2 eps x max|y|, chapters 3 and 4, on
    Gaussian rows; a row with a huge outlier can exceed it): a measured envelope, not a
    derived bound; the derived first-order bound,
    :func:`lnorm.bounds.layer_norm_forward`, is ``(5s + 25)/4`` for sums of growth ``s``.
    """
    measured = eps_units(actual, expected)
    if not measured <= max_eps_units:
        raise AssertionError(
            f"error {measured:.3g} eps x max|expected| exceeds the bound of {max_eps_units:g} "
            f"({compare(actual, expected)})"
        )


#: The measured limit of a float32 LayerNorm that subtracts a rounded mean once (torch's kernel,
#: the textbook two-pass with pairwise or cascaded sums), in float32 eps, has two kappa terms:
#: the mean's error, up to MEAN_ERROR_ULPS ulps of the mean (2.44 measured, rounded up), shifts
#: every output alike; the variance's relative error, up to about kappa eps (0.53 kappa eps
#: measured, on rows with one outlier), scales every output. Measurements, not derived bounds:
#: Gaussian, uniform, Student-t, two-valued and one-outlier rows, N from 16 to 65536, means up
#: to 4e6, torch's AVX-512, AVX2 and portable builds (chapter 3).
MEAN_ERROR_ULPS = 3.0


def torch_limit(scale: float, kappa: float, max_abs_weight: float = 1.0) -> float:
    """The measured limit of a float32 LayerNorm that subtracts a rounded mean once (torch's
    kernel, the textbook two-pass), in float32 eps, absolute (chapter 3, "The limit measured"):
    ``(2 + kappa) scale + 3 kappa max|weight|``.

    ``scale`` is max|y| without a bias; with one, ``max|weight| max|x_hat| + max|bias|`` (a bias
    can make max|y| small while the error stays). A mean off by ``c`` ulps of the mean, each at
    most ``eps |mean|``, shifts every ``x_hat_i`` by at most ``c eps kappa``, which the weight
    scales: the ``3 kappa max|weight|`` term. A variance off by ``kappa eps`` relative scales
    every output by half that: within the ``kappa scale`` term, with the rest of the roundings
    in ``2 scale``.
    """
    return (2.0 + kappa) * scale + MEAN_ERROR_ULPS * kappa * max_abs_weight


def torch_limit_units(scale: float, kappa: float, max_abs_weight: float = 1.0) -> float:
    """:func:`torch_limit` in units of ``eps scale``:
    ``2 + kappa + 3 kappa max|weight| / scale``."""
    return torch_limit(scale, kappa, max_abs_weight) / scale


def one_rule_atol(scale: float, kappa: float, max_abs_weight: float = 1.0,
                  output_eps: float = 0.0) -> float:
    """Chapter 3's one rule: the ``atol`` (with ``rtol=0``) for comparing two float32
    LayerNorms of this kind, twice :func:`torch_limit` in absolute terms, plus ``output_eps
    scale`` for an output rounded to a 16-bit dtype (``output_eps`` its machine epsilon)::

        atol = ((4 + 2 kappa) scale + 6 kappa max|weight|) eps32 + output_eps scale

    ``scale`` is max|y|, or with a bias ``max|weight| max|x_hat| + max|bias|``.
    """
    eps32 = float(np.finfo(np.float32).eps)
    return 2.0 * torch_limit(scale, kappa, max_abs_weight) * eps32 + output_eps * scale
