"""The LayerNorm detectors, in the order they run."""

from __future__ import annotations

import itertools
import math
import numpy as np

from lnorm.diagnose.detectors_common import (
    AFFINE_MATCH,
    _affine_distances,
    _axis_probe_outputs,
    _non_finite_constant_rows,
    _wrong_axis_finding,
)
from lnorm.diagnose.kinds import eps_probe_name
from lnorm.diagnose.measure import Context, fitted_denominator, growth_exponent
from lnorm.diagnose.probes import BESSEL_STDS, EPS_PROBE_STDS, FITTED_OFFSETS, OFFSETS
from lnorm.diagnose.report import Finding
from lnorm.diagnose.subject import Call, _rounded


#: |mean of a group| / rms(output) below this means the group was centred.
ZERO_MEAN = 1e-3
#: A group's variance within this range means the group was scaled to unit variance.
UNIT_VARIANCE = (0.8, 1.25)


def normalization_axes(
    y: np.ndarray, trailing: tuple[int, ...]
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """The axes ``y`` was centred over, and the axes it was scaled over, as far as they show.

    A LayerNorm over axes A leaves every A-group of its output with mean 0 and
    (biased) variance ``var/(var + eps)``, close to 1; so does every superset
    of A, and no other set does when the input has offsets and spreads along
    every axis. Returns the smallest set with mean 0 (None if there is none,
    or if it is not unique), and, when that set is ``trailing``, the smallest
    set containing it with variance 1 (None if there is none).
    """
    subsets = [s for r in range(1, y.ndim + 1) for s in itertools.combinations(range(y.ndim), r)]
    scale = math.sqrt(float(np.mean(y * y))) or 1.0

    def centred(axes: tuple[int, ...]) -> bool:
        return bool(np.all(np.abs(y.mean(axis=axes, keepdims=True)) <= ZERO_MEAN * scale))

    def unit(axes: tuple[int, ...]) -> bool:
        var = ((y - y.mean(axis=axes, keepdims=True)) ** 2).mean(axis=axes)
        return bool(np.all((var >= UNIT_VARIANCE[0]) & (var <= UNIT_VARIANCE[1])))

    zero_mean = [a for a in subsets if centred(a)]
    minimal = [a for a in zero_mean if not any(set(b) < set(a) for b in zero_mean)]
    centred_over = minimal[0] if len(minimal) == 1 else None
    if centred_over != trailing:
        return centred_over, None
    scaled = [a for a in subsets if set(trailing) <= set(a) and unit(a)]
    return centred_over, (scaled[0] if scaled else None)


def detect_wrong_axis(ctx: Context) -> Finding | None:
    """``wrong_axis``: the statistics run over other axes than the trailing ``normalized_shape``.

    Input: plain 2-d rows (``rows_axes``), a 3-d input (``batch_axes``) and, for
    a function, a 3-d input with a two-dimensional ``normalized_shape``
    (``two_axes``); every axis of each carries its own offsets and spreads.
    Measurement: the smallest set of axes over which the output has mean 0;
    when that is the trailing dimensions, the smallest set containing them
    over which it has variance 1 (:func:`normalization_axes`). Both must be
    exactly the trailing dimensions. Thresholds: |group mean| <= 1e-3 rms(y),
    and group variance in [0.8, 1.25]. Rounding leaves means of at most
    (N + 2) u kappa to first order, below 1e-5 on the probes' rows (chapter 9),
    and a wrong axis leaves means of
    order one; Bessel's correction (variance (N-1)/N >= 0.94 for the probes'
    N >= 16), a wrong eps (the probes' rows have var >= 0.25) or rounding move
    the variance by far less than 20%. When the plain 2-d rows are normalized
    over wrong axes, every later measurement on rows is meaningless and those
    detectors stand down (a NaN spreading across rows through batch
    statistics is then this finding, not ``nan_spreads``).
    """
    wrong, largest_mean = {}, 0.0
    for probe, y, shape, trailing in _axis_probe_outputs(ctx):
        scale = math.sqrt(float(np.mean(y * y))) or 1.0
        largest_mean = max(largest_mean, float(np.max(np.abs(y.mean(axis=trailing)))) / scale)
        centred_over, scaled_over = normalization_axes(y, trailing)
        if centred_over is not None and centred_over != trailing:
            wrong[probe] = (y.shape, shape, trailing, f"centred over axes {centred_over}")
        elif centred_over == trailing and scaled_over not in (None, trailing):
            wrong[probe] = (y.shape, shape, trailing, f"scaled over axes {scaled_over}")
    ctx.measure(
        "wrong_axis", "largest |mean over the trailing axes| / rms(y)", largest_mean, ZERO_MEAN
    )
    return _wrong_axis_finding(ctx, wrong)


def detect_eps_ignored(ctx: Context) -> Finding | None:
    """``eps_ignored``: a constant row gives NaN or inf.

    Input: constant rows (0, 1, -2.5, 1024: their sums and sums of squares are
    exact in float32, so every algorithm, one-pass included, gets variance 0
    exactly) among ordinary rows. Measurement: whether those rows' outputs are
    finite. LayerNorm gives 0/sqrt(0 + eps) = 0 there; only a denominator
    without eps gives 0/0. No rounding involved.
    """
    bad = _non_finite_constant_rows(ctx, 4)
    if bad is None or not bad.any():
        return None
    return Finding(
        "eps_ignored",
        f"{int(bad.sum())} of 4 constant rows came out as NaN or inf: the denominator is 0 "
        "for them, "
        "so eps is missing from it",
        {"constant rows": [0.0, 1.0, -2.5, 1024.0], "finite output": [bool(not b) for b in bad]},
    )


BESSEL_TOLERANCE = 0.1


def detect_bessel_correction(ctx: Context) -> Finding | None:
    """``bessel_correction``: the variance divides by N - 1.

    Input: the eps probe's rows with mean 0 and standard deviation 1, 8 and
    64 (eps is then at most 1e-3 of the variance). Measurement: the fitted
    denominator ``d`` of each row (:func:`fitted_denominator`) against the
    correct ``sqrt(var + eps)``: with Bessel's correction
    ``d**2/(var + eps) - 1`` is ``1/(N - 1)`` at every standard deviation.
    Threshold: that quantity times N - 1 within 10% of 1 in all three rows. A
    wrong eps changes it in proportion to 1/var, by a factor of 4096 across
    the three rows, so it cannot match all three; rounding changes ``d**2``
    by at most (N + 8) u to first order on these rows (mean 0), under 10% of
    1/(N - 1) for rows of up to 1,000 elements summed in order; pairwise
    sums (growth factor s = log2 N) give (s + 8) u, which covers rows of up to
    65,536 elements. Measured on 64-element rows: about 1e-7 (chapter 9).
    """
    probe = eps_probe_name(ctx.eps)
    y = ctx.output(probe)
    if y is None or ctx.rows_unreliable:
        return None
    rows = [EPS_PROBE_STDS.index(s) for s in BESSEL_STDS]
    std, d = fitted_denominator(ctx.calls[probe].probe.x[rows], y[rows])
    if not np.all(np.isfinite(d)):
        return None
    n = ctx.n
    excess = (d**2 / (std**2 + ctx.eps) - 1.0) * (n - 1)
    measured = ctx.measure(
        "bessel_correction",
        "largest |(d^2/(var + eps) - 1)(N - 1) - 1|",
        float(np.max(np.abs(excess - 1.0))),
        BESSEL_TOLERANCE,
        False,
    )
    if not measured.flagged:
        return None
    factor = float(np.median(np.sqrt(std**2 + ctx.eps) / d))
    return Finding(
        "bessel_correction",
        f"every row's output is too small by the factor {factor:.5f} = sqrt((N-1)/N) with N = {n}",
        {"N": n, "measured factor": factor, "sqrt((N-1)/N)": math.sqrt((n - 1) / n)},
    )


ONE_PASS_EXPONENT = 1.5


def detect_one_pass_variance(ctx: Context) -> Finding | None:
    """``one_pass_variance``: the variance's error grows with the square of the mean.

    Input: rows with standard deviation 1 and mean 1, 4, 16, 64, 256, 1024
    (plain float32, weight and bias absent). Measurement: for each mean, the largest
    relative error of the fitted denominator ``d`` (:func:`fitted_denominator`,
    which the mean's own rounding error does not reach) against what the
    function is known to divide by (Bessel, eps as measured), and the growth
    exponent of that error against the mean, fitted over the means 16 to
    1024. Threshold: exponent above 1.5. The relative error of E[x²] - E[x]² is
    at least u·kappa² (rounding E[x²]) and at most N·u·kappa² to first order
    (exponent 2, chapter 4); a two-pass variance has an error that does not
    grow (exponent 0) and Welford's or a pairwise merge one that grows
    linearly (exponent 1). The exponent is the least-squares slope over four
    means a factor of 4 apart, so rounding noise at the floor fakes a slope of
    1.5 only if its values spread at least 4**3.75 = 181-fold (the two lower
    at the floor's least, the two upper at its largest); chapter 9 measures
    the floor's spread of correct implementations (below 20-fold, asserted).
    The decision is the exponent, not a level:
    a correct float32 LayerNorm's output error does grow linearly with the
    mean (chapter 4); that is rounding, and it is not flagged. A row whose
    output is no longer finite counts as an infinite error at that mean.
    """
    y = ctx.output("offsets")
    if y is None or ctx.rows_unreliable:
        return None
    call = ctx.calls["offsets"]
    std, d = fitted_denominator(call.probe.x, y)
    relative = np.abs(d / ctx.denominator(ctx.eps)(std) - 1.0)
    relative[~np.isfinite(relative)] = np.inf
    per_offset = relative.reshape(len(OFFSETS), -1).max(axis=1)
    fitted = [per_offset[OFFSETS.index(o)] for o in FITTED_OFFSETS]
    exponent = growth_exponent(FITTED_OFFSETS, fitted)
    ctx.measure(
        "one_pass_variance", "growth exponent of d's error", exponent, ONE_PASS_EXPONENT
    )
    if not (exponent > ONE_PASS_EXPONENT or (np.isnan(exponent) and np.isinf(fitted[-1]))):
        return None
    first, last = int(FITTED_OFFSETS[0]), int(FITTED_OFFSETS[-1])
    return Finding(
        "one_pass_variance",
        f"the relative error of its denominator d = sqrt(var + eps) grows like "
        f"mean^{exponent:.1f}, from "
        f"{fitted[0]:.1e} at mean {first} to {fitted[-1]:.1e} at mean {last} (std 1): "
        "cancellation in E[x^2] - E[x]^2",
        {
            "mean offsets": [int(o) for o in OFFSETS],
            "relative error of d": [float(v) for v in per_offset],
            "output error, eps32 x max|y|": _output_errors(call),
            f"growth exponent (means {first}-{last})": exponent,
        },
    )


def _output_errors(call: Call) -> list[float]:
    """The output error of the offsets probe at each mean, in float32 eps times max|y|."""
    y = call.output.reshape(len(OFFSETS), -1)
    reference = call.reference.reshape(len(OFFSETS), -1)
    eps32 = float(np.finfo(np.float32).eps)
    result = []
    for mine, exact in zip(y, reference):
        error = np.max(np.abs(mine - exact)) if np.all(np.isfinite(mine)) else np.inf
        result.append(float(error / (eps32 * np.max(np.abs(exact)))))
    return result


#: 16-bit outputs more than this many 16-bit eps (times max|y|) from the float32 path's are
#: flagged.
HALF_UNITS = 4.0


#: The 16-bit probes: name -> (storage dtype, what their rows are).
HALF_PROBES = {
    "float16": ("float16", "means 102 to 160, std 1"),
    "bfloat16": ("bfloat16", "means 102 to 160, std 1"),
    "float16 overflow": ("float16", "std 300: squared deviations above 65504"),
}


def detect_low_precision_accumulation(ctx: Context) -> Finding | None:
    """``low_precision_accumulation``: for 16-bit inputs the statistics are computed in 16 bits.

    Input: float16 (and, in torch, bfloat16) rows with standard deviation 1
    and means between 102 and 160, and float16 rows with standard deviation
    300 (every row has an element at least 300 from its mean), no weight or
    bias, each called once as they are and once converted to float32 (the
    same values). Measurement: the largest distance between the 16-bit
    output and the float32 output rounded to 16 bits, in units of the 16-bit
    eps times max|y|, and whether the 16-bit output is finite where the
    float32 one is. Threshold: 4 units, or any overflow. Computing in float32
    and rounding once gives at most 1 unit: both outputs round float32 results
    that differ by float32 rounding, 2**-13 of a float16 unit, so they differ
    by at most one 16-bit spacing. Rounding the mean to 16 bits alone moves
    it by up to half a 16-bit spacing at the mean, the same in every output
    of the row, and by an amount spread evenly over that range: in 16-bit eps
    times max|y|, up to 64/max|y| units for means of 128 and above and
    32/max|y| below. A standardized row of 64 has max|y| <= sqrt(63) < 8, so
    a row with mean >= 128 exceeds 4 units with probability above 1/2. The
    means are uniform on [102, 160], 5/9 of them >= 128: each row exceeds 4
    units with probability above 5/18, and all 32 rows stay below with
    probability under (13/18)**32 < 1e-4 (chapter 9). Squares of deviations beyond 256
    overflow float16 (65504). Comparing the function with itself makes the
    measurement blind to every other mistake, which both paths share.
    """
    seen, largest, measured = {}, 0.0, False
    for name, (storage, rows) in HALF_PROBES.items():
        low, high = ctx.calls.get(f"{name}:{storage}"), ctx.calls.get(f"{name}:float32")
        if low is None or high is None or low.output is None or high.output is None:
            continue
        rounded = _rounded(high.output, storage)
        finite = np.isfinite(rounded)
        if not finite.any():
            continue
        eps16 = 2.0**-7 if storage == "bfloat16" else 2.0**-10
        with np.errstate(invalid="ignore"):
            gap = np.abs(low.output[finite] - rounded[finite])
        units = float(np.max(gap)) / (eps16 * float(np.max(np.abs(rounded[finite])) or 1.0))
        largest, measured = max(largest, units), True
        if not np.all(np.isfinite(gap)):
            seen[f"{name} ({rows})"] = "inf or NaN where float32 is finite"
        elif units > HALF_UNITS:
            seen[f"{name} ({rows})"] = units
    if not seen:
        if measured:
            ctx.measure(
                "low_precision_accumulation",
                "16-bit output vs float32 output rounded, 16-bit eps x max|y|",
                largest,
                HALF_UNITS,
            )
        return None
    return Finding(
        "low_precision_accumulation",
        "its 16-bit outputs differ from its own float32 computation, rounded to 16 bits, by "
        + "; ".join(
            f"{v if isinstance(v, str) else f'{v:.0f} units'} on {k} rows" for k, v in seen.items()
        )
        + ". Rounding alone makes at most 1 unit of 16-bit eps x max|y|",
        {"16-bit eps x max|y|, by input": seen},
    )


def detect_affine_wrong(ctx: Context) -> Finding | None:
    """``affine_wrong``: weight and bias are not applied as ``x_hat * weight + bias``.

    Input: the same rows with weight (entries of either sign, 0.5 <= |w| <= 2)
    and bias (|b| <= 1), without them, and without them on ``x*weight + bias``.
    Measurement: the output with weight and bias against candidates built
    from the function's own plain output ``p``: ``p*w + b`` (correct), ``p``,
    ``p*w``, ``p + b``, ``p*b + w`` (swapped), ``(p + b)*w``, and the plain
    output for ``x*w + b`` (applied before normalizing). Threshold: a candidate
    matches within 1e-4 max|y|. Candidates differ by order one, rounding by a
    few u max|y| (at most 4u = 2.4e-7 with |w| <= 2, chapter 9); using the
    function's own plain output makes the test blind to every mistake in the
    normalization itself.
    """
    mine, plain = ctx.output("basic"), ctx.output("plain")
    call = ctx.calls["basic"]
    if mine is None or plain is None or (call.probe.weight is None and call.probe.bias is None):
        return None
    w = call.probe.weight if call.probe.weight is not None else np.ones(ctx.subject.row_shape)
    b = call.probe.bias if call.probe.bias is not None else np.zeros(ctx.subject.row_shape)
    candidates = {
        "correct": plain * w + b,
        "weight and bias ignored": plain,
        "bias ignored": plain * w,
        "weight ignored": plain + b,
        "weight and bias swapped": plain * b + w,
        "bias added before the weight multiplies": (plain + b) * w,
    }
    if ctx.output("affine_first") is not None:
        candidates["weight and bias applied before normalizing"] = ctx.output("affine_first")
    distance = _affine_distances(mine, candidates)
    measured = ctx.measure(
        "affine_wrong", "distance to x_hat*w + b / max|y|", distance["correct"], AFFINE_MATCH
    )
    if not measured.flagged:
        return None
    matches = [k for k, v in distance.items() if v <= AFFINE_MATCH]
    what = matches[0] if matches else "applied in some other way"
    return Finding(
        "affine_wrong",
        f"weight and bias: {what}",
        {
            "distance to x_hat*w + b, fraction of max|y|": distance["correct"],
            "matches": matches[0] if matches else None,
        },
    )


#: |row mean of the output| / rms of the output row above this: the row was not centred.
NOT_CENTRED_FRACTION = 0.1


def detect_does_not_centre(ctx: Context) -> Finding | None:
    """``does_not_centre``: the output rows keep the input rows' mean (an RMSNorm, say).

    Input: rows of standard deviation 1 whose means are 1 to 2 of either sign
    (``offset_rows``, no weight or bias). Measurement: the largest |mean(y)| / rms(y) over
    the rows. Threshold: 0.1. LayerNorm's output rows have mean 0 up to rounding (below 1e-5
    of rms(y) for these rows, see ``wrong_axis``); a function that does not subtract the mean
    keeps ``mean / sqrt(mean^2 + var) >= 0.7`` of it. The mirror of RMSNorm's
    ``centres_rows``. Runs before the eps detectors, which assume a centred row, and makes
    them stand down: the mistake is the formula, and the eps would be misread.
    """
    y = ctx.output("offset_rows")
    if y is None or ctx.rows_unreliable:
        return None
    flat = y.reshape(y.shape[0], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.abs(flat.mean(axis=1)) / np.sqrt((flat * flat).mean(axis=1))
    largest = float(np.max(ratio)) if np.all(np.isfinite(ratio)) else float("inf")
    if not ctx.measure(
        "does_not_centre", "largest |row mean(y)| / rms(y)", largest, NOT_CENTRED_FRACTION
    ).flagged:
        return None
    ctx.rows_unreliable = True
    return Finding(
        "does_not_centre",
        f"on rows whose means are 1 to 2 standard deviations from zero, its output rows keep "
        f"means up to {largest:.2g} of their rms (LayerNorm's are 0): this is an RMSNorm "
        "(T5's \"LayerNorm\" is one)? Check it with norm='rms'",
        {"largest |row mean(y)| / rms(y)": largest},
    )
