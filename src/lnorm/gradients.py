"""The gradient of LayerNorm, written once for NumPy arrays and torch tensors.

Per row of length N, the forward pass computes

    x_hat = (x - mean) * rstd,    rstd = 1 / sqrt(var + eps),    y = x_hat * weight + bias.

Given ``dy`` (the gradient of the loss with respect to ``y``) and ``g = dy * weight``:

    dbias   = sum over rows of dy
    dweight = sum over rows of dy * x_hat
    dx      = rstd * (g - mean(g) - x_hat * mean(g * x_hat))

The formula for ``dx`` is the *centred* form: it uses ``x_hat``, which the
forward pass computed accurately, and never ``x`` and the mean separately, so a
large mean offset cannot cause cancellation. (Expanding it into
``a * x + b * dy + c`` per row, as some kernels do, reintroduces the mean's
rounding error; chapter 6 measures the difference.)
"""

from __future__ import annotations

from typing import TypeVar

from lnorm.moments import pairwise_column_sum

Array = TypeVar("Array")  # a numpy.ndarray or a torch.Tensor


def layer_norm_backward_rows(
    dy: Array,
    x_hat: Array,
    rstd: Array,
    weight: Array | None,
    needs: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Array | None, Array | None, Array | None]:
    """``(dx, dweight, dbias)`` for rows of shape (M, N), with ``rstd`` of shape (M, 1).

    ``dweight`` and ``dbias`` are pairwise sums over the M rows
    (:func:`lnorm.moments.pairwise_column_sum`): each term passes through at most
    ``ceil(log2 M)`` additions, so their relative error is at most
    ``ceil(log2 M) u sum|terms| / |sum|`` to first order, not ``M u``. ``needs``
    says which of the three to compute (autograd's ``needs_input_grad``); the
    others are None.
    """
    needs_dx, needs_dweight, needs_dbias = needs
    dx = dweight = dbias = None
    if needs_dx:
        g = dy if weight is None else dy * weight
        mean_g = g.mean(axis=-1, keepdims=True)
        mean_g_x_hat = (g * x_hat).mean(axis=-1, keepdims=True)
        dx = (g - mean_g - x_hat * mean_g_x_hat) * rstd
    if needs_dweight:
        dweight = pairwise_column_sum(dy * x_hat)
    if needs_dbias:
        dbias = pairwise_column_sum(dy)
    return dx, dweight, dbias


def rms_norm_backward_rows(
    dy: Array, x_hat: Array, rstd: Array, weight: Array | None
) -> tuple[Array, Array]:
    """``(dx, dweight)`` of RMSNorm: x has shape (M, N), ``rstd`` shape (M, 1).

    The forward pass is ``x_hat = x * rstd``, ``rstd = 1 / sqrt(mean(x²) + eps)``,
    ``y = x_hat * weight``. Since ``d rstd / d x_j = -rstd³ x_j / N``, with
    ``g = dy * weight``:

        dweight = sum over rows of dy * x_hat
        dx      = rstd * (g - x_hat * mean(g * x_hat))

    LayerNorm's formula without its ``- mean(g)`` term (no mean was subtracted
    in the forward pass, so none comes back in the backward). ``dweight`` is a
    pairwise sum over the M rows: relative error at most
    ``ceil(log2 M) u sum|terms| / |sum|`` to first order, not ``M u``.
    """
    g = dy if weight is None else dy * weight
    mean_g_x_hat = (g * x_hat).mean(axis=-1, keepdims=True)
    dx = (g - x_hat * mean_g_x_hat) * rstd
    dweight = pairwise_column_sum(dy * x_hat)
    return dx, dweight
