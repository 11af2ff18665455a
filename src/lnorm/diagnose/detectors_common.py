"""The detectors both norms share: crashes, dtypes, mutation, NaN, eps, and the catch-all."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from lnorm import errors
from lnorm.diagnose.kinds import NORM_NAMES, _eps_text, eps_probe_name
from lnorm.diagnose.measure import Context, Denominator, fitted_denominator
from lnorm.diagnose.report import Finding
from lnorm.validation import rms_norm_eps


# ----------------------------------------------------------------------------------------------
# The detectors, in the order they run
# ----------------------------------------------------------------------------------------------


def detect_raises(ctx: Context) -> Finding | None:
    """``raises``: the function raised on a valid input.

    Input: every probe (all are valid input for ``torch.nn.functional.layer_norm``).
    Measurement: whether the call raised. No threshold, no rounding involved.
    Every detector that needs the output of a probe that raised stands down for
    that probe, so a crash is reported once, here.
    """
    # A call that also runs the backward (the input requires grad) is the backward's to judge.
    failed = [c for c in ctx.calls.values() if c.error is not None and c.probe.dy is None]
    if not failed:
        return None
    first = failed[0]
    return Finding(
        "raises",
        f"{len(failed)} of {len(ctx.calls)} calls raised; "
        f"the first, on input {first.probe.name!r} "
        f"of shape {first.probe.x.shape} ({first.probe.dtype}), raised {first.error}",
        {
            "inputs": [f"{c.probe.name} {c.probe.x.shape} {c.probe.dtype}" for c in failed],
            "first error": first.error,
        },
    )


def detect_dtype_changed(ctx: Context) -> Finding | None:
    """``dtype_changed``: the output is not an array of the input's type, dtype and shape.

    Input: every probe, float32 and 16-bit. Measurement: type, dtype and shape of
    the output. No threshold, no rounding involved. An output of the right shape
    but another dtype is still judged by the other detectors (by its values).
    """
    wrong = [c for c in ctx.calls.values() if c.error is None and not c.same_type_dtype_shape]
    if not wrong:
        return None
    first = wrong[0]
    return Finding(
        "dtype_changed",
        f"for a {first.probe.dtype} input of shape {first.probe.x.shape} "
        f"it returned {first.returned}",
        {"inputs": sorted({f"{c.probe.dtype} -> {c.returned}" for c in wrong})},
    )


def detect_mutates_input(ctx: Context) -> Finding | None:
    """``mutates_input``: the function changed the values of an argument.

    Input: every probe; the function gets fresh copies of the checker's arrays.
    Measurement: the argument after the call against a copy taken before it,
    bit for bit (NaN equal to NaN). No threshold, no rounding involved.
    """
    changed = sorted({name for c in ctx.calls.values() for name in c.mutated})
    if not changed:
        return None
    return Finding(
        "mutates_input",
        f"after the call, {' and '.join(changed)} no longer held the values passed in",
        {"arguments changed": changed},
    )


#: The probes whose every axis carries its own statistics, so that a wrong axis shows.
AXIS_PROBES = ("rows_axes", "batch_axes", "two_axes")


def _axis_probe_outputs(
    ctx: Context,
) -> Iterator[tuple[str, np.ndarray, tuple[int, ...], tuple[int, ...]]]:
    """Each axis probe that has an output: its name, the output, its normalized_shape, and the
    trailing axes the norm must run over."""
    for probe in AXIS_PROBES:
        y = ctx.output(probe)
        if y is None:
            continue
        shape = ctx.calls[probe].probe.normalized_shape
        yield probe, y, shape, tuple(range(y.ndim - len(shape), y.ndim))


def _wrong_axis_finding(
    ctx: Context, wrong: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str]]
) -> Finding | None:
    """The ``wrong_axis`` finding, from each probe normalized over wrong axes: its output
    shape, normalized_shape, trailing axes and what was seen (None when there is none).

    When the plain 2-d rows are among them, the detectors on rows stand down.
    """
    if not wrong:
        return None
    ctx.rows_unreliable = "rows_axes" in wrong
    ctx.only_two_axes_wrong = set(wrong) == {"two_axes"}
    x_shape, shape, trailing, what = next(iter(wrong.values()))
    norm = ctx.subject.norm
    return Finding(
        "wrong_axis",
        f"for an input of shape {x_shape} with normalized_shape={shape} it is {what}; "
        f"{NORM_NAMES[norm]} normalizes over the trailing axes {trailing}",
        {name: f"{w[3]}, input shape {w[0]}" for name, w in wrong.items()},
        norm,
    )


def _non_finite_constant_rows(ctx: Context, count: int) -> np.ndarray | None:
    """For each of the first ``count`` rows of the ``constant`` probe (the rows of zero
    spread), whether its output has a NaN or inf; None when the probe has no output or the
    detectors on rows stand down."""
    y = ctx.output("constant")
    if y is None or ctx.rows_unreliable:
        return None
    return ~np.isfinite(y.reshape(y.shape[0], -1)[:count]).all(axis=1)


#: Normwise distance (fraction of max|y|) within which an affine candidate is taken to match.
AFFINE_MATCH = 1e-4


def _affine_distances(mine: np.ndarray, candidates: dict[str, np.ndarray]) -> dict[str, float]:
    """The distance of the output ``mine`` to each candidate, ``max|mine - candidate|``, as a
    fraction of ``max|mine|`` (over its finite entries)."""
    scale = float(np.max(np.abs(mine[np.isfinite(mine)]), initial=0.0)) or 1.0
    with np.errstate(invalid="ignore"):
        return {k: float(np.max(np.abs(mine - c))) / scale for k, c in candidates.items()}


def detect_nan_spreads(ctx: Context) -> Finding | None:
    """``nan_spreads``: a NaN or inf in one row makes other rows' outputs non-finite.

    Input: six ordinary rows, one holding a NaN and one an inf. Measurement:
    whether the four clean rows' outputs are finite. No rounding involved.
    Stands down when ``wrong_axis`` found batch statistics on plain rows,
    which spread NaN for the same reason.
    """
    y = ctx.output("nan")
    if y is None or ctx.rows_unreliable:
        return None
    clean = [0, 2, 3, 5]
    bad = [r for r in clean if not np.isfinite(y[r]).all()]
    if not bad:
        return None
    return Finding(
        "nan_spreads",
        f"with a NaN in row 1 and an inf in row 4, the clean rows {bad} (of {clean}) "
        "came out non-finite",
        {"clean rows with non-finite output": bad},
    )


EPS_DEVIATION = 1e-3
#: Rows where eps changes the denominator by less than this fraction cannot resolve eps.
EPS_RESOLVABLE = 1e-3


def eps_fit(ctx: Context, eps: float) -> dict | None:
    """Where and how large the function's eps is, from the ``eps=...`` probe's rows.

    With ``s`` the row's standard deviation (times sqrt(N/(N-1)) when Bessel's
    correction was found) and ``d`` the fitted denominator, eps inside the
    square root makes ``d**2 - s**2`` the same in every row, eps outside makes
    ``d - s`` the same. Among the rows where eps changes ``d`` by at least 1e-3
    (so that either difference is known to 1e-4 relative), the estimates of the
    right model agree to within 5% (rounding leaves them within 1e-4) while
    those of the wrong one spread over a factor above 20 (about 30 for eps
    inside and 1500 for eps outside on the probe's rows, whose standard
    deviations span 2**30; chapter 9 measures them). Returns the verdict:
    ``correct``, ``inside`` or ``outside`` with the estimate, ``zero`` (no row
    resolves any eps), or ``unexplained``; None when the probe has no output.
    """
    probe = eps_probe_name(eps)
    y = ctx.output(probe)
    if y is None or ctx.rows_unreliable:
        return None
    std, d = fitted_denominator(ctx.calls[probe].probe.x, y, ctx.subject.norm == "layer")
    if not np.all(np.isfinite(d) & (d > 0)):
        return {"verdict": "unexplained", "eps passed": eps}
    expected = Denominator(ctx.n, ctx.found("bessel_correction"), rms_norm_eps(eps, "float32"))
    deviation = float(np.max(np.abs(d / expected(std) - 1.0)))
    if eps == ctx.eps or eps is None:  # the eps of the other probes, and RMSNorm's default
        statistic = "var" if ctx.subject.norm == "layer" else "mean(x^2)"
        key, value = ("eps", "eps") if eps == ctx.eps else ("eps=None", "2**-23")
        ctx.measure(
            key, f"largest |d / sqrt({statistic} + {value}) - 1|", deviation, EPS_DEVIATION
        )
    if deviation <= EPS_DEVIATION:
        return {"verdict": "correct", "eps passed": eps}
    s = std * math.sqrt(ctx.n / (ctx.n - 1)) if expected.bessel else std  # what it takes as std
    resolvable = d / s - 1.0 >= EPS_RESOLVABLE
    result = {"eps passed": eps, "largest relative deviation": deviation}
    if resolvable.sum() < 3:
        return {**result, "verdict": "zero", "estimated eps": 0.0}
    inside, outside = (d**2 - s**2)[resolvable], (d - s)[resolvable]
    spread = lambda v: float(v.max() / v.min()) if v.min() > 0 else float("inf")  # noqa: E731
    if spread(inside) <= 1.05 < spread(outside):
        return {**result, "verdict": "inside", "estimated eps": float(np.median(inside))}
    if spread(outside) <= 1.05 < spread(inside):
        return {**result, "verdict": "outside", "estimated eps": float(np.median(outside))}
    return {**result, "verdict": "unexplained"}


def _eps_fits(ctx: Context) -> dict[float, dict]:
    """:func:`eps_fit` for each eps probed (computed once per check, shared by two detectors)."""
    if ctx.eps_fits is not None:
        return ctx.eps_fits
    fits = {eps: eps_fit(ctx, eps) for eps in ctx.subject.eps_values}
    for eps, fit in fits.items():  # what the function divides by, for the detectors after these
        if fit and fit["verdict"] in ("inside", "outside", "zero"):
            ctx.denominators[eps] = Denominator(
                ctx.n,
                ctx.found("bessel_correction"),
                fit["estimated eps"],
                fit["verdict"] == "outside",
            )
    ctx.eps_fits = {eps: fit for eps, fit in fits.items() if fit is not None}
    return ctx.eps_fits


def detect_eps_outside_sqrt(ctx: Context) -> Finding | None:
    """``eps_outside_sqrt``: the denominator is ``std + eps``, not ``sqrt(var + eps)``.

    Input: rows with mean 0 and standard deviations 2**-24 ... 64, called with
    each eps of :attr:`Subject.eps_values`. Measurement and threshold:
    :func:`eps_fit` (``d - std`` the same in every row that resolves eps, to
    5%, while ``d**2 - std**2`` is not). Rounding moves ``d`` by at most
    (N/2 + 4) u relative to first order (2.1e-6 for N = 64, chapter 9), so
    neither model's estimates can be made to spread, or to agree, by rounding
    in rows where eps changes ``d`` by 1e-3 or more.
    """
    outside = {eps: fit for eps, fit in _eps_fits(ctx).items() if fit["verdict"] == "outside"}
    if not outside:
        return None
    eps, fit = next(iter(outside.items()))
    spread = "std" if ctx.subject.norm == "layer" else "rms"
    return Finding(
        "eps_outside_sqrt",
        f"called with eps={_eps_text(eps)}, it divides by {spread} + {fit['estimated eps']:.3g}",
        {"eps passed": eps, f"estimated eps (added to {spread})": fit["estimated eps"]},
        ctx.subject.norm,
    )


def detect_eps_mismatch(ctx: Context) -> Finding | None:
    """``eps_mismatch``: eps is inside the square root, but not the eps passed in.

    Input: as for ``eps_outside_sqrt``; a function is called with eps = 1e-5
    and 1e-3, so that a hard-coded eps shows whatever its value (a module
    with its own eps attribute only with that). Measurement: the fitted
    denominators deviate from ``sqrt(var + eps)`` by more than 1e-3 in some
    row, and ``d**2 - var`` is the same in every row that resolves eps
    (:func:`eps_fit`): that common value is the eps it uses. Rounding moves
    ``d`` by at most (N/2 + 4) u relative (2.1e-6 for N = 64), far below 1e-3.
    A function that uses no eps at all is reported as ``eps_ignored`` when its
    constant rows give NaN, not here.
    """
    wrong = {}
    for eps, fit in _eps_fits(ctx).items():
        no_eps = fit["verdict"] == "zero" and not ctx.found("eps_ignored")
        if fit["verdict"] == "inside" or no_eps:
            wrong[eps] = fit["estimated eps"]
    # RMSNorm's eps=None is eps_default_mismatch's, unless an eps passed explicitly is ignored too
    # (a hard-coded eps): then it is evidence for this finding.
    if not any(eps is not None for eps in wrong):
        return None
    eps, used = next((e, u) for e, u in wrong.items() if e is not None)
    used_text = f"{used:.3g}" if used > 0 else "no eps at all"
    told = f"called with eps={eps:g}"
    if ctx.subject.is_module:
        told = f"its eps is {eps:g} ({ctx.subject.eps_source}), but"
    return Finding(
        "eps_mismatch",
        f"{told} it uses {used_text} inside the square root",
        {"eps passed -> eps used": {_eps_text(k): v for k, v in wrong.items()}},
        ctx.subject.norm,
    )


WRONG_OUTPUT_UNITS = 64.0


def detect_wrong_output(ctx: Context) -> Finding | None:
    """``wrong_output``: the output is wrong, and no detector above says why.

    Input: the ordinary rows with weight and bias (means within 2 of zero and
    standard deviations 0.5 to 2, so |mean| <= 4 std and condition numbers
    kappa <= sqrt(17) < 5). Measurement: the error against the float64
    reference in float32 eps times max|y|. Threshold: 64. A correct float32
    LayerNorm stays within chapter 3's measured limit ((2 + kappa) S + 3 kappa max|w|) eps, with
    S = max|w| max|x_hat| + max|b| (:func:`lnorm.errors.torch_limit`): below 10 units here.
    Runs only when nothing else was found, so that a mistake already named is
    not reported twice.
    """
    if ctx.mistakes:
        return None
    call = ctx.calls["basic"]
    if call.output is None:
        return None
    y = call.output
    units = (
        errors.eps_units(y.astype(np.float32), call.reference)
        if np.all(np.isfinite(y))
        else float("inf")
    )
    if not ctx.measure(
        "wrong_output", "error / (eps32 max|y|)", units, WRONG_OUTPUT_UNITS
    ).flagged:
        return None
    return Finding(
        "wrong_output",
        f"on ordinary rows its output is off by {units:.3g} float32 eps x max|y|; "
        "a correct float32 LayerNorm stays below chapter 3's measured limit, under 10 on "
        "these rows",
        {"error, eps32 x max|y|": units, "max abs error": errors.max_abs_error(y, call.reference)},
        ctx.subject.norm,
    )
