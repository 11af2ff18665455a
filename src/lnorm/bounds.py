"""The error bounds the book derives, as functions, so that every chapter and test uses one copy.

Units: a sum's growth factor ``s`` bounds a computed sum of terms ``t_i`` by
``|computed - exact| <= s u sum|t_i|`` to first order, with ``u`` the unit
roundoff (2**-24 in float32). Output bounds are in the book's units, the
dtype's machine epsilon ``eps = 2u`` times the row's largest output ``max|y|``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

#: float32's unit roundoff, half its machine epsilon.
U32 = 2.0**-24


@functools.lru_cache(maxsize=None)
def numpy_sum_depth(n: int) -> tuple[int, int]:
    """(most additions, most halvings) an element passes through in NumPy's sum of ``n``.

    A model of NumPy's pairwise sum along a contiguous row: below 8 terms one
    after the other; up to 128 terms eight interleaved accumulators, a tree of
    3 levels and ``n % 8`` leftovers added one by one; longer rows halved at a
    split point rounded down to a multiple of 8.
    """
    if n < 8:
        return max(n - 1, 0), 0
    if n <= 128:
        return (n // 8 - 1) + 3 + n % 8, 0
    half = n // 2 - (n // 2) % 8
    (additions_a, halvings_a), (additions_b, halvings_b) = (
        numpy_sum_depth(half),
        numpy_sum_depth(n - half),
    )
    return 1 + max(additions_a, additions_b), 1 + max(halvings_a, halvings_b)


def numpy_sum_growth(n: int) -> int:
    """Growth factor ``s`` of NumPy's float sum of ``n`` terms along a row (chapter 4).

    Below 8 terms NumPy adds one after the other (``n - 1``). Otherwise it sums
    blocks of up to 128 with eight accumulators (at most 24 additions per
    element) and splits longer rows in halves (at most ``ceil(log2(n/128)) + 1``
    times): ``s = ceil(log2(n/128)) + 25`` covers both
    (:func:`numpy_sum_depth` counts them).
    """
    return n - 1 if n < 8 else max(0, math.ceil(math.log2(n / 128))) + 25


def layer_norm_forward(
    s: int, kappa: float = 0.0, u: float = U32, n: int | None = None
) -> float:
    """Bound on ``lnorm``'s LayerNorm forward error, in eps x max|y|, for sums of growth ``s``.

    ``(5s + 25)/4`` to first order in ``u`` (chapter 4, "A bound, derived"),
    plus a second-order term that carries the row's condition number
    ``kappa``. It holds against the exact LayerNorm parameter ``eps`` (1e-5 is not
    a float): rounded to the working precision it is off by at most ``u eps``, which
    with the variance's ``(3s + 10) u sigma**2`` stays within
    ``(3s + 10) u (sigma**2 + eps)``, the variance's own share, so it adds nothing.
    Two cases (``m1`` the computed mean, ``e1`` its error,
    ``d_i = fl(x_i - m1)``):

    - ``sum|d_i| < |m1|/2`` (a row far from zero mean): every ``x_i`` lies in
      ``[m1/2, 2 m1]``, so ``x_i - m1`` is exact (Sterbenz), the ``d_i`` and
      their partial sums are multiples of one ulp below ``2**24`` of them, so
      the sum for ``m2`` is exact in any order and only the division by N
      rounds: the term is ``u |e1| rstd``, at most ``(s + 1) u kappa / 2``
      units;
    - otherwise the general term, with ``e1`` rounded in the subtraction, the
      sum and the division, is at most ``(s + 1)(s + 3) u kappa`` units, and
      ``kappa`` is at most :func:`second_order_kappa_cap` (about ``2N + 1``):
      0.11 units at N = 1024, 0.51 at N = 4096, 13.9 at N = 65536 (NumPy's ``s``).

    Without ``n`` the function adds the first case's term only (the values
    chapters 3-10 quote); with the row length ``n`` it adds both terms, the
    second with ``kappa`` capped as above, which covers either case.
    """
    first_case = (s + 1) * u * kappa / 2
    if n is None:
        return (5 * s + 25) / 4 + first_case
    cap = second_order_kappa_cap(s, n, u)
    return (5 * s + 25) / 4 + first_case + (s + 1) * (s + 3) * u * min(kappa, cap)


def layer_norm_affine_forward(s: int, kappa: float = 0.0, n: int | None = None) -> float:
    """Bound on ``x_hat * weight + bias`` formed in the working precision, for sums of growth
    ``s``: ``(5s + 29)/4`` in eps x ``A``, with ``A = max|weight| max|x_hat| + max|bias|``.

    :func:`layer_norm_forward` puts each computed ``x_hat_i`` within ``(5s + 25)/4 eps
    max|x_hat|`` (weight 1, bias 0); the weight multiplies that by at most ``max|weight|``,
    and the product and the sum round by at most ``u |weight_i x_hat_i|`` and ``u |y_i|``,
    each at most ``u A`` (a fused multiply-add rounds once, less). To first order in ``u``
    (chapter 7). The unit is ``A``, not ``max|y|``: a bias can make ``max|y|`` much smaller,
    and the mean's error, a shift common to every ``x_hat_i``, is multiplied by a large weight
    even where ``x_hat_i`` is near zero. With ``kappa`` (and ``n``) it adds the second-order
    term of :func:`layer_norm_forward`, which ``x_hat`` carries into ``A`` the same way.
    """
    second_order = layer_norm_forward(s, kappa, n=n) - layer_norm_forward(s)
    return (5 * s + 29) / 4 + second_order


def second_order_kappa_cap(s: int, n: int, u: float = U32) -> float:
    """The largest ``kappa`` of a row of ``n`` that is not far from zero mean: the second case.

    There ``sum|x_i - m1| >= |m1|/2`` with ``sum|x_i - m1| <= n (sigma + |e1|)``, so
    ``|mu| <= 2n sigma + (2n + 1)|e1|``; with ``|e1| <= (s + 1) u sigma kappa`` and
    ``kappa <= 1 + |mu|/sigma``::

        kappa <= (2n + 1) / (1 - (2n + 1)(s + 1) u)      if (2n + 1)(s + 1) u < 1,

    about ``2n + 1`` for short rows and NumPy's ``s`` (the factor is 1.38 at
    n = 65536), and no cap (``inf``) when the condition fails: with ``s = n - 1``
    beyond ``n`` of about 2900 (chapter 4, the dropdown on the second-order term).
    """
    shrink = 1 - (2 * n + 1) * (s + 1) * u
    return (2 * n + 1) / shrink if shrink > 0 else math.inf


def largest_kappa(rows: object) -> float:
    """The largest condition number ``kappa = sqrt(1 + mu**2 / sigma**2)`` among the rows
    (last axis) of ``rows``, a NumPy array or a torch tensor, computed in float64 from the
    values as stored: the ``kappa`` that :func:`layer_norm_forward` takes for a batch."""
    x = rows.double().cpu().numpy() if hasattr(rows, "double") else np.asarray(rows, np.float64)
    mean = x.mean(axis=-1)
    var = ((x - mean[..., None]) ** 2).mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant row: kappa is inf
        return float(np.sqrt(1 + mean**2 / var).max())


def layer_norm_backward_dx(
    s: int, max_abs_x_hat: float, forward: float | None = None
) -> float:
    """Bound on the compact form's ``dx`` error, in eps x rstd x max|g| (``g = dy * weight``).

    ``dx = rstd (g - mean(g) - x_hat mean(g x_hat))`` computed in the working precision
    from ``x_hat`` and ``rstd`` of the forward pass (chapter 6, "The backward's own
    conditioning"). With ``X = max|x_hat|`` and ``F`` the forward bound (``x_hat`` within
    ``F eps X``, ``rstd`` within ``F eps`` relative; :func:`layer_norm_forward`, the
    default), to first order in ``u``::

        ((s + 5) + (s + 4) X) / 2  +  F X (1 + X)  +  (2 + X)(1 + F)

    The first term is the backward's own roundings, the second ``x_hat``'s error
    through ``mean(g x_hat)``, the third the last two roundings and ``rstd``'s error on
    ``|dx| <= rstd max|g| (2 + X)``. The unit is ``rstd max|g|``, not ``max|dx|``: when
    ``g`` lies near span{1, x_hat} the exact ``dx`` is small and the error relative to it
    grows like ``rstd max|g| / max|dx|``, the backward's own condition number.
    """
    f = layer_norm_forward(s) if forward is None else forward
    x = max_abs_x_hat
    return ((s + 5) + (s + 4) * x) / 2 + f * x * (1 + x) + (2 + x) * (1 + f)


def rms_norm_forward(s: int) -> float:
    """Bound on an RMSNorm forward error, in eps x max|y|, for sums of growth ``s``:
    ``(s + 11)/4``.

    The mean of squares has relative error at most ``(s + 2) u`` (no
    cancellation), ``x_hat`` at most ``(s + 9) u / 2`` and the product with the
    weight one rounding more (chapter 10), whatever the row's mean. The parameter
    ``eps`` rounded to the working precision adds nothing: its ``u eps`` and the
    statistic's ``(s + 2) u mean(x**2)`` stay within ``(s + 2) u (mean(x**2) + eps)``.
    """
    return (s + 11) / 4


def rms_norm_forward_rounded(s: int, output_eps: float) -> float:
    """Bound on an RMSNorm computed in float32 and rounded once to a narrower dtype, in that
    dtype's machine epsilon ``output_eps`` x max|y|: ``1/2 (1 + d) + d / output_eps``.

    ``d = (s + 11)/4 eps32`` is float32's relative error at the largest output
    (:func:`rms_norm_forward`); the final rounding costs half a unit of the float32 result,
    which is at most ``(1 + d) max|y|`` (chapter 10).
    """
    d = rms_norm_forward(s) * 2 * U32
    return 0.5 * (1 + d) + d / output_eps
