"""Tolerances for the parameter gradients of lnorm.triton, from the bounds of their sums.

``dweight = sum over rows of dy * x_hat`` and ``dbias = sum of dy`` are computed in the compute
dtype (float32 for 16-bit inputs, float64 for float64) and rounded once to the parameter's
dtype. Their error, per column, is at most

    u_out |exact| + u (GROWTH sum|dy x_hat| + X_HAT_ERROR sum|dy|)

(first order): ``u_out`` the unit roundoff of the output dtype (the final rounding), ``u`` that
of the compute dtype; GROWTH bounds the summation's growth factor: a program's pairwise tree over
a tile's rows (log2 16), its Kahan sum over tiles (2) or, for blocks too large for the carries,
its plain sum of at most MAX_TILES_WITHOUT_CARRY tiles (31), the column sum's trees over chunks
of 64 partials (6) and Kahan's sum of the chunks (2), and the product dy x_hat (1): 31 + 4 + 6 +
2 + 1 = 44 < GROWTH. X_HAT_ERROR bounds the error of the recomputed x_hat in units of u, which
the forward's analysis puts at a few units times kappa (chapter 4): the inputs here have
kappa < 4. The exact sums are formed in float64 from the same (rounded) inputs.
"""

from __future__ import annotations

import torch

GROWTH = 64
X_HAT_ERROR = 64


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def parameter_gradient_errors(
    actual: torch.Tensor, dy: torch.Tensor, terms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(|actual - exact|, tolerance) per column, for a parameter gradient ``actual`` whose exact
    value is ``terms.sum(0)`` (terms = dy x_hat for dweight, dy for dbias; float64, all rows)."""
    dy, terms = (
        dy.double().reshape(-1, terms.shape[-1]),
        terms.double().reshape(-1, terms.shape[-1]),
    )
    exact = terms.sum(0)
    compute = torch.float64 if actual.dtype == torch.float64 else torch.float32
    u = unit_roundoff(compute)
    tolerance = unit_roundoff(actual.dtype) * exact.abs() + u * (
        GROWTH * terms.abs().sum(0) + X_HAT_ERROR * dy.abs().sum(0)
    )
    return (actual.double().reshape(-1) - exact).abs(), tolerance


def within_bounds(actual: torch.Tensor, dy: torch.Tensor, terms: torch.Tensor) -> bool:
    errors, tolerance = parameter_gradient_errors(actual, dy, terms)
    return bool((errors <= tolerance).all())
