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
#: ... for outputs of at most this magnitude (rows of unit-scale data),
TOLERANCE_MAX_OUTPUT = 5.0
#: ... and for a weight of order one: |weight| <= 1 (none, or torch's default of ones).
TOLERANCE_MAX_WEIGHT = 1.0
#: The measured limit of a float32 LayerNorm whose error does not grow with the mean, in float32
#: eps times max|y|: chapters 3 and 4 measure lnorm.numpy within 2 and lnorm.torch within 2.5;
#: the class's limit is the larger, so that it covers both.
FLAT_CLASS_UNITS = 2.5


def torch_class_limit(kappa: float) -> float:
    """Chapter 3's measured limit (eq-torch-limit) of a float32 LayerNorm that subtracts a rounded
    mean once, as torch's kernel does, for the tolerance's scope (|y| <= 5, |weight| <= 1), in
    float32 eps, absolute: ``(2 + kappa) max|y| + 3 kappa max|weight|``
    (:func:`lnorm.errors.torch_limit`).
    """
    return errors.torch_limit(TOLERANCE_MAX_OUTPUT, kappa, TOLERANCE_MAX_WEIGHT)


def tolerance_scope(norm: str = "layer") -> str:
    """The data a report's tolerances are valid for, and what to use for other data."""
    if norm == "rms":
        return (
            f"valid for outputs |y| <= {TOLERANCE_MAX_OUTPUT:g} at any mean; for larger outputs, "
            f"scale atol by max|y|/{TOLERANCE_MAX_OUTPUT:g}"
        )
    return (
        f"valid for rows with |mean| <= {TOLERANCE_MEAN_STDS:g} std, "
        f"|y| <= {TOLERANCE_MAX_OUTPUT:g}, |weight| <= {TOLERANCE_MAX_WEIGHT:g}; other data: "
        "chapter 3's layer_norm_atol(x, expected, weight, bias)"
    )


def tolerance(ctx: Context) -> tuple[tuple[float, float], str]:
    """``(rtol, atol)`` for comparing the function's float32 output with torch's, and why.

    Chapters 3 and 4 measure these limits (they are not derived bounds): a
    float32 LayerNorm that subtracts a rounded mean once (torch's kernel is one)
    stays within ``((2 + kappa) max|y| + 3 kappa max|weight|)`` float32 eps,
    absolute: the variance's relative error (up to about kappa eps) scales every
    output, and the mean's rounding error (up to 3 ulps of the mean) shifts every
    output by the same amount, whatever max|y|; one that removes the mean's
    rounding error (lnorm) stays within ``2.5 max|y|`` float32 eps. Two
    implementations may differ by the sum of their limits. The function's class is
    measured: its output error on the offsets probe either grows with the mean
    (growth exponent over the means 16-1024 of 0.5 or more) or does not; the
    tolerance depends on the function only through its class. It is stated for
    rows with |mean| <= 16 std (kappa <= sqrt(257) = 16.03), outputs up to 5 in
    magnitude and a weight up to 1: ``atol = (E_fn + E_torch) eps32`` with
    ``E_torch = (2 + 16.03) 5 + 3*16.03 = 138.2``, and rtol = 0 because the error
    of LayerNorm is absolute: every element of a row carries the row's rounding
    error, small elements included. For other data, use chapter 3's helper
    ``layer_norm_atol`` (or :func:`lnorm.errors.one_rule_atol` with their max|y|,
    kappa and max|weight|). If the function's measured error exceeds its class's
    limit at some mean, its limit is scaled up by a power of 2 to cover it.
    """
    eps32 = float(np.finfo(np.float32).eps)
    torch_bound = torch_class_limit(TOLERANCE_KAPPA)
    flat_bound = FLAT_CLASS_UNITS * TOLERANCE_MAX_OUTPUT
    call = ctx.calls.get("offsets")
    if call is None or call.output is None:
        fn_bound, how = torch_bound, "its error was not measured; assumed as large as torch's"
    else:
        measured = _output_errors(call)  # in float32 eps times each offset's max|y|
        fitted = [measured[OFFSETS.index(o)] for o in FITTED_OFFSETS]
        exponent = growth_exponent(FITTED_OFFSETS, fitted)
        grows = exponent >= 0.5
        # The class's limit in the same units, with each offset's rows' max|y| and weight.
        max_abs_y = np.max(np.abs(call.reference.reshape(len(OFFSETS), -1)), axis=1)
        weight = call.probe.weight
        max_abs_weight = 1.0 if weight is None else float(np.max(np.abs(weight)))

        def bound(kappa: float, max_y: float) -> float:
            if not grows:
                return FLAT_CLASS_UNITS
            return errors.torch_limit_units(max_y, kappa, max_abs_weight)

        # Checked where the tolerance is meant to hold; the rows' means reach 1.25 x nominal.
        excess = max(
            m / bound(1.25 * o + 1, float(y))
            for m, o, y in zip(measured, OFFSETS, max_abs_y)
            if o <= TOLERANCE_MEAN_STDS
        )
        ctx.envelope_ratio = excess
        if not math.isfinite(excess):  # no bound holds; the torch-class bound, flagged in words
            excess, how_much = 1.0, " (its error at small means is not finite)"
        else:
            how_much = ""
        scale = 2.0 ** max(0, math.ceil(math.log2(max(excess, 1e-9))))
        fn_bound = (torch_bound if grows else flat_bound) * scale
        how = (
            "its float32 error grows with the rows' mean, like torch's"
            if grows
            else "its float32 error does not grow with the rows' mean"
        ) + how_much
    atol = (fn_bound + torch_bound) * eps32
    reason = (
        f"{how}; the limit of that class ({fn_bound:.4g}; its error on the checker's rows "
        f"stays within it) plus torch's ((2 + kappa) max|y| + 3 kappa max|w| = "
        f"{torch_bound:.4g}), "
        "limits measured in chapters 3 and 4, in float32 eps, for rows with "
        f"|mean| <= {TOLERANCE_MEAN_STDS:g} std (kappa <= {TOLERANCE_KAPPA:.4g}), "
        f"|y| <= {TOLERANCE_MAX_OUTPUT:g} and |w| <= {TOLERANCE_MAX_WEIGHT:g}"
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
