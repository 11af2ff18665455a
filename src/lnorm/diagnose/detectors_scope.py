"""The detectors of the checker's scope: the layout, and rows longer than the short probes'."""

from __future__ import annotations

import numpy as np

from lnorm import errors
from lnorm.diagnose.detectors_layer import normalization_axes
from lnorm.diagnose.detectors_rms import rms_normalization_axes
from lnorm.diagnose.measure import Context
from lnorm.diagnose.report import Finding


def detect_channels_first(ctx: Context) -> Finding | None:
    """``channels_first``: a module normalizes dimension 1 of an NCHW input, not the trailing one.

    Input (modules only): an input of shape (2, C, 3, W), W not C, with offsets and spreads
    along every axis, beside the usual probes whose rows are the trailing C values. A
    channels-last norm raises on it (its trailing size is not C). Measurement: the axes the
    output is centred and scaled over (:func:`normalization_axes`, or for RMSNorm
    :func:`rms_normalization_axes`), with the thresholds of ``wrong_axis``. Exactly dimension
    1 is a finding; then every other detector stands down, because the usual probes (the
    channels last) are another layout for this module and their failures say nothing more.
    """
    call = ctx.side_calls.get("channels_first")
    if call is None or call.output is None:
        return None
    y = call.output
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if ctx.subject.norm == "layer":
            centred, scaled = normalization_axes(y, (1,))
            channels = centred == (1,) and scaled == (1,)
        else:
            channels, _ = rms_normalization_axes(y, (1,))
    if not channels:
        return None
    ctx.layout_wrong = True
    return Finding(
        "channels_first",
        f"on an input of shape {y.shape} it normalizes dimension 1 ({y.shape[1]} channels); "
        f"inputs with the {y.shape[1]} values last, as LayerNorm's rows are, fail or come out "
        "wrong",
        {"input shape": y.shape, "normalized over": "dimension 1"},
    )


#: Long-row errors above this many float32 eps x max|y| are not rounding.
LONG_ROW_UNITS = 256.0


def detect_wrong_long_rows(ctx: Context) -> Finding | None:
    """``wrong_long_rows``: long rows come out wrong where short ones are right.

    Input (functions only; a module's rows have its own length): four ordinary rows (means
    within 2 of zero, standard deviations 0.5 to 2) of 4096 and of 4097 elements, with weight
    and bias. A kernel splits such rows into blocks, and an odd length leaves a masked last
    block: code that the short probes never run. Measurement: the error against the float64
    reference in float32 eps times max|y|. Threshold: 256. Sums in a tree (cascaded, pairwise,
    a Triton reduction: s = log2 N = 12 levels) keep a correct float32 LayerNorm within about
    (s + 8)/2 = 10 of these units to first order; sequential sums of these rows err as a
    random walk, about sqrt(N)/2 = 32 units. A block left out, or read twice, moves the mean
    of a row by about 1/sqrt(N) of its spread and every output by some 1e-2 (1e4 units and
    more). Runs only when nothing else was found, so that a mistake already named on the short
    rows is not reported twice.
    """
    if ctx.mistakes:
        return None
    worst, seen = 0.0, {}
    for name, call in ctx.calls.items():
        if not name.startswith("long:") or call.output is None:
            continue
        y = call.output
        units = (
            errors.eps_units(y.astype(np.float32), call.reference)
            if np.all(np.isfinite(y))
            else float("inf")
        )
        worst = max(worst, units)
        if units > LONG_ROW_UNITS:
            seen[f"rows of {name.removeprefix('long:')}"] = units
    if not any(name.startswith("long:") for name in ctx.calls):
        return None
    ctx.measure("wrong_long_rows", "error on long rows / (eps32 max|y|)", worst, LONG_ROW_UNITS)
    if not seen:
        return None
    return Finding(
        "wrong_long_rows",
        "its output is off by "
        + "; ".join(f"{v:.3g} float32 eps x max|y| on {k}" for k, v in seen.items())
        + f", where rounding stays below {LONG_ROW_UNITS:g}",
        {"error, eps32 x max|y|": seen},
        ctx.subject.norm,
    )
