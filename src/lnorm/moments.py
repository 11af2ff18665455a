"""Mean and variance of the rows of an array, by the classic algorithms.

Rows are the last axis. Every function here works on NumPy arrays and torch
tensors alike (it uses only ``.mean(axis=-1, keepdims=True)``, slicing and
arithmetic), keeps the row axis with length 1 so that the statistics broadcast
back against the rows, and computes in the input's own dtype, so that its
rounding errors can be studied in float32.

The error bounds in the docstrings are first-order bounds on the relative error
of the variance for rows of length ``N`` in a precision with unit roundoff
``u`` (float32: 2**-24), in terms of the condition number

    kappa = sqrt(1 + mean**2 / var),

which is about ``|mean| / std`` for rows far from zero mean (Chan, Golub &
LeVeque 1983; Higham 2002, §1.9 and problem 1.10), written for sums whose
error grows like ``N u``. The mean-based functions (``one_pass``,
``two_pass``, ``centre``, ``corrected_two_pass``, ``standardize``) use the
libraries' own sums: NumPy's blocked pairwise sum, whose growth factor is
``s = ceil(log2(N/128)) + 25`` for N > 128 (:func:`lnorm.bounds.numpy_sum_growth`),
and torch's, whose order the book does not model (``s = N - 1`` covers any
order). ``welford`` and ``pairwise`` do their own additions, in Python.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

Array = TypeVar("Array")  # a numpy.ndarray or a torch.Tensor


def _mean(rows: Array) -> Array:
    return rows.mean(axis=-1, keepdims=True)


def _sqrt(values: Array) -> Array:
    """The correctly rounded square root of a NumPy array or a torch tensor."""
    return values.sqrt() if hasattr(values, "sqrt") else np.sqrt(values)


def one_pass(rows: Array) -> tuple[Array, Array]:
    """The textbook formula var = E[x²] - E[x]², in one pass over the data.

    Error bound (first order): ``N u kappa**2``. Both terms are close to
    ``mean**2`` and their difference can lose every digit, even come out
    negative: never use it for rows far from zero mean.
    """
    mean = _mean(rows)
    return mean, _mean(rows * rows) - mean * mean


def two_pass(rows: Array) -> tuple[Array, Array]:
    """Mean first, then the mean of squared deviations: var = E[(x - E[x])²].

    Error bound (first order): ``N u + (N u kappa)**2``. Far better than
    :func:`one_pass`, but the rounding error of the mean still enters every
    deviation, which matters once ``N u kappa`` is not small.
    """
    mean = _mean(rows)
    centred = rows - mean
    return mean, _mean(centred * centred)


def welford(rows: Array) -> tuple[Array, Array]:
    """Welford's updating algorithm: one sequential pass, one element at a time.

    For each new element ``x_k``: ``delta = x_k - mean``,
    ``mean += delta / k``, ``M2 += delta * (x_k - mean)``; var = M2 / N.
    Error bound (first order): ``N u kappa``. It needs only one pass over the data,
    which is why GPU and CPU kernels use it, but it is sequential (a Python
    loop over the row here: slow, and meant for study).
    """
    mean = rows[..., :1] * 0
    m2 = rows[..., :1] * 0
    for k in range(rows.shape[-1]):
        value = rows[..., k : k + 1]
        delta = value - mean
        mean = mean + delta / (k + 1)
        m2 = m2 + delta * (value - mean)
    return mean, m2 / rows.shape[-1]


def _merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Chan, Golub & LeVeque's formula for the statistics of two groups joined."""
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / count)
    return count, mean, m2


def pairwise(rows: Array) -> tuple[Array, Array]:
    """Pairwise (tree) merging of (count, mean, M2) with Chan et al.'s formula.

    Every element starts as a group of one; neighbouring groups merge level by
    level until one group is left, so each element takes part in
    ``log2(N)`` merges when N is a power of 2 (an odd group out joins a
    neighbour: a few more otherwise). Error bound (first order):
    ``log2(N) u kappa``. This is how
    parallel kernels combine the partial statistics of their threads.
    """
    count, mean, m2 = rows * 0 + 1, rows, rows * 0
    while mean.shape[-1] > 1:
        width = mean.shape[-1]
        even = width - width % 2
        left = [t[..., 0:even:2] for t in (count, mean, m2)]
        right = [t[..., 1:even:2] for t in (count, mean, m2)]
        merged = _merge(*left, *right)
        if width % 2:  # the odd group out joins the last merged group
            last = [t[..., -1:] for t in merged]
            odd = [t[..., -1:] for t in (count, mean, m2)]
            for target, value in zip(merged, _merge(*last, *odd)):
                target[..., -1:] = value
        count, mean, m2 = merged
    return mean, m2 / count


def centre(rows: Array, out: Array | None = None) -> tuple[Array, Array]:
    """Rows minus their mean, computed as ``(x - m1) - m2``; returns ``(centred, mean)``.

    ``m1 = mean(x)`` carries a rounding error ``e1`` of up to ``(s + 1) u
    mean|x|`` (``s`` the sum's growth factor, see :func:`standardize`), which
    the plain ``x - m1`` would pass on to every element. But
    ``x - m1`` rounds relative to the deviation, not to the mean (it is exact,
    by Sterbenz's lemma, when ``m1/2 <= x <= 2 m1`` for ``m1 > 0``, ``2 m1 <=
    x <= m1/2`` for ``m1 < 0``), so the mean of the result, ``m2``, equals
    ``-e1`` to within ``(s + 2) u sigma`` to first order, and
    subtracting it as well leaves deviations accurate to a few ``u`` relative
    to the row's spread rather than to its mean. ``m2`` is the
    correction term of Chan, Golub & LeVeque's corrected two-pass algorithm.

    The centred rows are written to ``out`` if given (it may have a wider dtype
    than ``rows``), else to a new array; ``rows`` is never modified.
    """
    centred, m1, m2 = centre_parts(rows, out)
    return centred, m1 + m2


def centre_parts(rows: Array, out: Array | None = None) -> tuple[Array, Array, Array]:
    """:func:`centre`, with the mean returned unevaluated: ``(centred, m1, m2)``.

    The mean is ``m1 + m2``; rounding that sum to one number would lose ``m2``.
    Keeping both lets a backward pass recompute ``(x - m1) - m2`` bit for bit
    as the forward pass did, from the input and two numbers per row.
    """
    if out is None:
        m1 = _mean(rows)
        centred = rows - m1
    else:
        centred = out
        centred[...] = rows  # widens a 16-bit row exactly: m1 is then taken in out's dtype
        m1 = _mean(centred)
        centred -= m1
    m2 = _mean(centred)
    centred -= m2
    return centred, m1, m2


def corrected_two_pass(rows: Array) -> tuple[Array, Array]:
    """The corrected two-pass algorithm of Chan, Golub & LeVeque: :func:`centre`, then the
    mean of squares.

    Error bound (first order): ``N u + N u (N u kappa)**2``: the mean offset
    no longer matters until ``N u kappa`` approaches 1 (with NumPy's sums,
    its growth factor ``s`` in place of ``N``).
    """
    centred, mean = centre(rows)
    return mean, _mean(centred * centred)


def standardize(
    rows: Array, eps: float, out: Array | None = None, scratch: Array | None = None
) -> tuple[Array, Array]:
    """LayerNorm without the affine part; returns ``(x_hat, rstd)``.

    ``x_hat = (x - mean) * rstd`` with ``rstd = 1 / sqrt(var + eps)`` per row,
    from the statistics of :func:`corrected_two_pass`. ``x_hat`` goes to ``out``
    if given, else to a new array; ``scratch``, if given, holds the squared
    deviations. Passing both (of the rows' shape) makes the call allocate
    nothing of the rows' size, which is what keeps a blocked loop fast.

    Error bound (derived in chapter 4, tested in ``tests/test_error_bound.py``).
    Let ``s`` be the growth factor of the sums (a computed sum of n terms is
    within ``s u sum|terms|``: ``s <= n - 1`` for any order, ``s <=
    ceil(log2(n/128)) + 25`` for NumPy's sum along a row). With ``d = x - mean``,
    ``sigma**2 = mean(d**2)`` and ``y = d * rstd`` exact, to first order in u:

    - the mean m1 is off by ``e1``, ``|e1| <= (s + 1) u mean|x|``;
    - ``x - m1`` rounds by at most ``u |x - m1|`` (not at all under Sterbenz's
      lemma), and the correction ``m2`` is ``-e1`` to within ``(s + 2) u sigma``;
    - so the centred values are ``d + delta`` with ``|delta_i| <= 2u|d_i| +
      (s + 2) u sigma``: the mean offset drops out to first order;
    - the variance has relative error at most ``(3s + 10) u``, and so has
      ``var + eps`` with ``eps`` rounded to the working precision (its error,
      at most ``u eps``, is a smaller share of ``eps`` than the variance's of
      the variance); rstd at most ``(3s + 15) u / 2``;
    - hence ``|x_hat_i - y_i| <= (s + 2) u max|y| + (3s + 21) / 2 u |y_i|``:

          max|x_hat - y| <= (5s + 25) / 4 * eps * max|y|,   eps = 2u,

      plus a second-order term that grows with the condition number kappa.
      The computed deviations are ``d_i - e1`` (up to rounding), so ``e1`` also
      rounds in the subtraction, in the sum for ``m2`` and in its division: in
      general that leaves ``(s + 3) u |e1|`` in each centred value and as
      much, relative to sigma, in rstd, at most ``(s + 1)(s + 3) u kappa``
      units. When ``sum|x - m1| < |m1|/2`` (every ``x_i`` in Sterbenz's range)
      the subtraction is exact and so is the sum, in any order (its terms are
      multiples of one ulp, below ``2**24`` of them): only the division rounds,
      leaving ``u |e1| <= (s + 1) u**2 mean|x|``, times rstd: at most
      ``(s + 1) u kappa / 2`` units. Otherwise kappa is at most about ``2N``
      and the general term is at most 0.50 units at N = 4096.
      :func:`lnorm.bounds.layer_norm_forward` (with ``n``) adds both.
    """
    centred, _, _ = centre_parts(rows, out)
    rstd = reciprocal_std(centred, eps, scratch)
    centred *= rstd
    return centred, rstd


def reciprocal_std(centred: Array, eps: float, scratch: Array | None = None) -> Array:
    """``1 / sqrt(mean(centred**2) + eps)`` per row, for rows already centred.

    ``scratch``, if given (of the rows' shape), holds the squares, so that
    nothing of the rows' size is allocated.
    """
    if scratch is None:
        squares = centred * centred
    else:
        squares = scratch
        squares[...] = centred
        squares *= centred
    # sqrt and division are correctly rounded on every IEEE machine; a power
    # ``** -0.5`` may go to a vendor math library that is not, and would make the
    # last bit depend on the CPU.
    return 1 / _sqrt(_mean(squares) + eps)


def pairwise_column_sum(rows: Array) -> Array:
    """Sum over the first axis of M rows by pairwise (tree) summation.

    Each term passes through at most ``ceil(log2 M)`` additions (odd row counts
    included), so the relative error is at most ``ceil(log2 M) u sum|terms| / |sum|``
    to first order.

    NumPy sums along a non-contiguous axis one row after another, whose error
    grows like ``M u``; summing halves pairwise keeps the gradient of a weight
    shared by a million rows as accurate as that of a weight shared by a few.
    """
    if rows.shape[0] == 0:
        return rows.sum(axis=0)
    while rows.shape[0] > 1:
        half = rows.shape[0] // 2
        paired = rows[:half] + rows[half : 2 * half]
        if rows.shape[0] % 2:  # the odd row out joins the last pair
            paired[-1] += rows[-1]
        rows = paired
    return rows[0]


def mean_of_squares(rows: Array, scratch: Array | None = None) -> Array:
    """``mean(x²)`` of each row: RMSNorm's only statistic.

    Every term is ≥ 0, so the sum has no cancellation: its relative error is at
    most ``(s + 2) u`` to first order, with ``s`` the sum's growth factor
    (:mod:`lnorm.bounds`: ``ceil(log2(N/128)) + 25`` for NumPy's sum of N ≥ 8
    terms, at most ``N - 1`` for any order) and one rounding for each square
    and for the division by N, *whatever* the rows' mean. ``scratch``,
    if given (the rows' shape, possibly a wider dtype), holds the squares, so
    that a blocked loop allocates nothing of the rows' size.
    """
    if scratch is None:
        squares = rows * rows
    else:
        # one pass: computed in scratch's dtype, into which a float16 row widens exactly
        squares = np.multiply(rows, rows, out=scratch, dtype=scratch.dtype)
    return _mean(squares)


def rms_normalize(
    rows: Array, eps: float, out: Array | None = None, scratch: Array | None = None
) -> tuple[Array, Array]:
    """RMSNorm without the weight; returns ``(x_hat, rstd)``.

    ``x_hat = x * rstd`` with ``rstd = 1 / sqrt(mean(x²) + eps)`` per row, from
    :func:`mean_of_squares`. Nothing is subtracted: an offset shared by the row
    passes into ``x_hat`` unchanged, and no rounding error of a mean can enter.
    To first order the relative error of each element is at most ``(s + 9) u / 2``:
    half of the statistic's ``(s + 2) u`` and of the rounding of ``+ eps`` (the
    square root halves a relative error; ``eps`` itself, rounded to the working
    precision, is within ``u eps``, a smaller share than the statistic's), plus
    one rounding each for the square root, the division and the product. ``x_hat``
    goes to ``out`` if given, else to a new array; ``rows`` is never modified.
    The sum of squares overflows for rows whose root mean square exceeds
    ``sqrt(largest float / N)`` (1.8e19 / sqrt(N) in float32), before any one
    square does: those rows come out as zeros, as torch's do.
    """
    # sqrt and division are correctly rounded on every IEEE machine; ``** -0.5``
    # may go to a vendor math library that is not (see :func:`standardize`).
    rstd = 1 / _sqrt(mean_of_squares(rows, scratch) + eps)
    if out is None:
        return rows * rstd, rstd
    return np.multiply(rows, rstd, out=out, dtype=out.dtype), rstd
