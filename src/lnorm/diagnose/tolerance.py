"""The tolerance a report gives: how far the function may differ from torch by rounding."""

from __future__ import annotations

import math

import numpy as np

from lnorm import errors
from lnorm.diagnose.kinds import _eps_text
from lnorm.diagnose.detectors_layer import _output_errors
from lnorm.diagnose.measure import Context, growth_exponent
from lnorm.diagnose.probes import FITTED_OFFSETS, OFFSETS


# ----------------------------------------------------------------------------------------------
# The tolerance
# ----------------------------------------------------------------------------------------------

#: The tolerance holds for rows whose mean is at most this many standard deviations from zero,
TOLERANCE_MEAN_STDS = 16.0
#: so for condition numbers kappa = sqrt(1 + mean**2/var) up to sqrt(257) = 16.03,
TOLERANCE_KAPPA = math.sqrt(1.0 + TOLERANCE_MEAN_STDS**2)
#: ... and for outputs of at most this magnitude (rows of unit-scale data, weight of order one).
TOLERANCE_MAX_OUTPUT = 5.0


def torch_class_limit(kappa: float) -> float:
    """Chapter 3's measured limit (eq-torch-limit) of a float32 LayerNorm that subtracts a rounded
    mean once, as torch's kernel does: ``2 + kappa`` float32 eps times max|y|."""
    return 2.0 + kappa


def tolerance(ctx: Context) -> tuple[tuple[float, float], str]:
    """``(rtol, atol)`` for comparing the function's float32 output with torch's, and why.

    Chapters 3 and 4 measure these envelopes (they are not derived bounds): a
    float32 LayerNorm that subtracts a rounded mean once stays within
    ``2 + kappa`` float32 eps times max|y| (torch's kernel is one); one that
    removes the mean's rounding error (lnorm) within 2. Two implementations
    may differ by the sum of their envelopes. The function's class
    is measured: its output error on the offsets probe either grows with the
    mean (growth exponent over the means 16-1024 of 0.5 or more) or does not.
    The tolerance is stated for rows with |mean| <= 16 std (kappa <= sqrt(257)
    = 16.03) and outputs up to 5 in
    magnitude: ``atol = (E_fn + E_torch) eps32 * 5``, with rtol = 0 because the
    error of LayerNorm is absolute: every element of a row carries the row's
    rounding error, small elements included. Scale atol with max|y|/5 and
    kappa for other data. If the function's measured error exceeds its class's
    envelope at some mean, its envelope is scaled up by a power of 2 to cover it.
    """
    eps32 = float(np.finfo(np.float32).eps)
    torch_bound = torch_class_limit(TOLERANCE_KAPPA)
    call = ctx.calls.get("offsets")
    if call is None or call.output is None:
        fn_bound, how = torch_bound, "its error was not measured; assumed as large as torch's"
    else:
        measured = _output_errors(call)
        fitted = [measured[OFFSETS.index(o)] for o in FITTED_OFFSETS]
        exponent = growth_exponent(FITTED_OFFSETS, fitted)
        grows = exponent >= 0.5
        bound = lambda kappa: torch_class_limit(kappa) if grows else 2.0  # noqa: E731
        # Checked where the tolerance is meant to hold; the rows' means reach 1.25 x nominal.
        excess = max(
            m / bound(1.25 * o + 1) for m, o in zip(measured, OFFSETS) if o <= TOLERANCE_MEAN_STDS
        )
        ctx.envelope_ratio = excess
        if not math.isfinite(excess):  # no bound holds; the torch-class bound, flagged in words
            excess, how_much = 1.0, " (its error at small means is not finite)"
        else:
            how_much = ""
        fn_bound = bound(TOLERANCE_KAPPA) * 2.0 ** max(0, math.ceil(math.log2(max(excess, 1e-9))))
        how = (
            "its float32 error grows with the rows' mean, like torch's"
            if grows
            else "its float32 error does not grow with the rows' mean"
        ) + how_much
    atol = (fn_bound + torch_bound) * eps32 * TOLERANCE_MAX_OUTPUT
    reason = (
        f"{how}; the envelope of that class ({fn_bound:.4g}; its error on the checker's rows "
        f"stays within it) plus torch's (2 + kappa = {torch_bound:.4g}), envelopes "
        "measured in chapters 3 and 4, in float32 eps x max|y|, for rows with "
        f"|mean| <= {TOLERANCE_MEAN_STDS:g} std (kappa <= {TOLERANCE_KAPPA:.4g}) "
        f"and |y| <= {TOLERANCE_MAX_OUTPUT:g}"
    )
    return (0.0, float(f"{atol:.2g}")), reason


#: A float32 RMSNorm's measured error envelope in float32 eps x max|y|, not a derived bound:
#: chapter 10 measures torch and lnorm within it (N = 4096, |mean| <= 1e6) and asserts so; the
#: first-order bound it derives, (s + 11)/4, is 10.25 for NumPy's sums of 4096 terms.
RMS_TOLERANCE_BOUND = 2.5


def rms_tolerance(ctx: Context) -> tuple[tuple[float, float], str]:
    """``(rtol, atol)`` for comparing the function's float32 RMSNorm output with torch's, and why.

    Chapter 10: a float32 RMSNorm has no cancellation; its measured error stays
    within 2.5 float32 eps times max|y| (torch's kernel and lnorm's, measured at
    N = 4096 and |mean| <= 1e6). Two implementations may differ by the sum of
    their envelopes; the function's envelope is 2.5 unless its measured error on
    the ordinary and offset rows is larger, then that scaled up to a power of
    two. ``atol = (E_fn + E_torch) eps32 * 5`` for outputs up to 5 in magnitude,
    ``rtol = 0`` as for LayerNorm (scale atol with max|y|/5).
    """
    eps32 = float(np.finfo(np.float32).eps)
    measured = [
        errors.eps_units(c.output.astype(np.float32), c.reference)
        for c in (ctx.calls.get("basic"), ctx.calls.get("offset_rows"))
        if c is not None and c.output is not None and np.all(np.isfinite(c.output))
    ]
    excess = max(measured, default=0.0) / RMS_TOLERANCE_BOUND
    ctx.envelope_ratio = excess
    fn_bound = RMS_TOLERANCE_BOUND * 2.0 ** max(0, math.ceil(math.log2(max(excess, 1e-9))))
    atol = (fn_bound + RMS_TOLERANCE_BOUND) * eps32 * TOLERANCE_MAX_OUTPUT
    eps = ctx.eps
    reason = (
        f"its measured float32 error is {max(measured, default=float('nan')):.2g} float32 eps x "
        f"max|y|; the measured envelope of a float32 RMSNorm ({fn_bound:g}"
        + (", scaled up to cover it" if fn_bound > RMS_TOLERANCE_BOUND else "")
        + f") plus torch's ({RMS_TOLERANCE_BOUND:g}) for outputs "
        f"|y| <= {TOLERANCE_MAX_OUTPUT:g}, at any mean (RMSNorm has no cancellation), with the "
        f"same eps on both sides (it used {_eps_text(eps)}"
        + (", torch's default" if eps is None else "")
        + ")"
    )
    return (0.0, float(f"{atol:.2g}")), reason
