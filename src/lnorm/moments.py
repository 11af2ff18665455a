"""Mean and variance of the rows of an array.

The functions here work on NumPy arrays and torch tensors alike: they only use
``.mean(axis=..., keepdims=...)`` and arithmetic, which both libraries provide.
Rows are the last axis; every statistic keeps that axis (length 1) so it
broadcasts back against the rows.
"""

from __future__ import annotations

from typing import TypeVar

Array = TypeVar("Array")  # a numpy.ndarray or a torch.Tensor


def shifted_two_pass(rows: Array) -> tuple[Array, Array, Array]:
    """Mean, biased variance and centred rows by the shifted (corrected) two-pass algorithm.

    With ``m1 = mean(x)`` rounded to working precision, ``d = x - m1`` is
    computed almost exactly (exactly, by Sterbenz's lemma, when ``x`` and ``m1``
    are within a factor of two), so the rounding error of ``m1`` no longer
    matters once it is removed again: ``m2 = mean(d)`` is that small error, and

        centred = (x - m1) - m2,      var = mean(centred**2),      mean = m1 + m2.

    ``m2`` is the correction term of Chan, Golub & LeVeque's corrected two-pass
    algorithm; the variance never cancels catastrophically, unlike E[x²] - E[x]².
    """
    m1 = rows.mean(axis=-1, keepdims=True)
    centred = rows - m1  # a new array: the caller's rows are never modified
    m2 = centred.mean(axis=-1, keepdims=True)
    centred -= m2
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return m1 + m2, var, centred
