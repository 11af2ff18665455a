"""The RMSNorm detectors, in the order they run."""

from __future__ import annotations

import itertools
import numpy as np
import torch

from lnorm import errors
from lnorm.diagnose.detectors_common import (
    AFFINE_MATCH,
    _affine_distances,
    _axis_probe_outputs,
    _eps_fits,
    _non_finite_constant_rows,
    _wrong_axis_finding,
)
from lnorm.diagnose.measure import Context, fitted_denominator
from lnorm.diagnose.report import Finding
from lnorm.diagnose.subject import _TORCH_DTYPES, CAST_ORDERS, _rounded


#: Groups whose mean squares are all within this range of their median were scaled alike.
UNIT_MEAN_SQUARE = (0.8, 1.25)


def rms_normalization_axes(y: np.ndarray, trailing: tuple[int, ...]) -> tuple[bool, tuple | None]:
    """Whether the output is scaled alike over exactly ``trailing`` and no smaller set.

    A set of axes is *scaled alike* when the mean squares of all its groups lie
    in [0.8, 1.25] times their median: 1 for RMSNorm, or any common factor (a
    module's weight filled with ones is its identity only if the module
    multiplies by the weight; Gemma's multiplies by 1 + weight, 2). Returns
    ``(right, smallest)``: ``right`` when ``trailing`` is scaled alike and no
    non-empty strict subset of it is; ``smallest`` the first smallest set that
    is (None if there is none).
    """
    subsets = [s for r in range(1, y.ndim + 1) for s in itertools.combinations(range(y.ndim), r)]

    def unit(axes: tuple[int, ...]) -> bool:
        ms = (y * y).mean(axis=axes)
        ms = ms / (np.median(ms) or 1.0)
        return bool(np.all((ms >= UNIT_MEAN_SQUARE[0]) & (ms <= UNIT_MEAN_SQUARE[1])))

    units = [a for a in subsets if unit(a)]
    smallest = next((a for a in units if not any(set(b) < set(a) for b in units)), None)
    right = trailing in units and not any(set(a) < set(trailing) for a in units)
    return right, smallest


def detect_rms_wrong_axis(ctx: Context) -> Finding | None:
    """``wrong_axis`` (RMSNorm): the mean of squares runs over other axes than the trailing ones.

    Input: plain 2-d rows (``rows_axes``), a 3-d input (``batch_axes``) and, for
    a function, a 3-d input with a two-dimensional ``normalized_shape``
    (``two_axes``); along every axis the positions are scaled alternately by
    1/2 and 2 (:func:`_rms_axis_test_input`). Measurement: the sets of axes
    over which every group of the output has the same mean square
    (:func:`rms_normalization_axes`); the trailing dimensions must be one, and
    no smaller set. Threshold: every group's mean square within [0.8, 1.25]
    times their median. A correct output has ``ms/(ms + eps)`` over the
    trailing axes, within 1e-3 of 1 for the probes' rows (mean square at least
    0.02) and any eps up to 1e-5, plus float32 rounding; a wrong set leaves
    groups near 0.12 of the others (a factor of 16 between the 1/2- and
    2-scaled positions). When the plain 2-d rows are normalized over wrong
    axes, the detectors on rows stand down.
    """
    wrong, largest = {}, 0.0
    for probe, y, shape, trailing in _axis_probe_outputs(ctx):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            ms = (y * y).mean(axis=trailing)
            largest = max(largest, float(np.max(np.abs(ms / np.median(ms) - 1.0))))
            right, smallest = rms_normalization_axes(y, trailing)
        if not right:
            what = f"scaled over axes {smallest}" if smallest else "scaled over no set of axes"
            wrong[probe] = (y.shape, shape, trailing, what)
    ctx.measure(
        "wrong_axis",
        "largest |mean(y^2) over the trailing axes / their median - 1|",
        largest,
        1 - UNIT_MEAN_SQUARE[0],
    )
    return _wrong_axis_finding(ctx, wrong)


def detect_rms_eps_ignored(ctx: Context) -> Finding | None:
    """``eps_ignored`` (RMSNorm): a row of zeros gives NaN or inf.

    Input: two rows of zeros among two ordinary rows. Measurement: whether the
    zero rows' outputs are finite. RMSNorm gives 0 * rsqrt(0 + eps) = 0; only a
    denominator without eps gives 0/0. No rounding involved.
    """
    bad = _non_finite_constant_rows(ctx, 2)
    if bad is None or not bad.any():
        return None
    return Finding(
        "eps_ignored",
        f"{int(bad.sum())} of 2 rows of zeros came out as NaN or inf: their mean square is 0, "
        "so eps is missing from the denominator",
        {"rows of zeros with non-finite output": int(bad.sum())},
        "rms",
    )


#: Row mean of the output / row mean of RMSNorm's, at most this: the rows were centred.
CENTRED_FRACTION = 0.1


def detect_centres_rows(ctx: Context) -> Finding | None:
    """``centres_rows``: the function subtracts each row's mean (a LayerNorm).

    Input: rows of standard deviation 1 whose means are 1 to 2 of either sign
    (``offset_rows``, no weight). Measurement: the largest ratio, over the
    rows, of the output row's mean to the exact RMSNorm's, which is
    ``mean/sqrt(mean^2 + 1) >= 0.7`` in magnitude. Threshold: 0.1. RMSNorm,
    with any eps up to 1e-3 and 16-bit rounding, gives a ratio within 1e-2 of
    1; a function that centres gives its rounding, below 1e-6.
    """
    y = ctx.output("offset_rows")
    if y is None or ctx.rows_unreliable:
        return None
    call = ctx.calls["offset_rows"]
    rows = y.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = y.reshape(rows, -1).mean(axis=1) / call.reference.reshape(rows, -1).mean(axis=1)
    largest = float(np.max(np.abs(ratio))) if np.all(np.isfinite(ratio)) else float("inf")
    if not ctx.measure(
        "centres_rows", "largest row mean(y) / row mean(RMSNorm)", largest, CENTRED_FRACTION, False
    ).flagged:
        return None
    return Finding(
        "centres_rows",
        f"on rows whose means are 1 to 2 standard deviations from zero, its output rows have "
        f"means at most {largest:.2g} of RMSNorm's (which are at least 0.7): it subtracts the "
        "mean",
        {"largest output row mean / RMSNorm row mean": largest},
        "rms",
    )


#: 16-bit eps=None estimates above this are a 16-bit format's own eps (2**-10, 2**-7).
HALF_EPS_THRESHOLD = 2.0**-13


def _half_eps_estimates(ctx: Context) -> dict[str, float]:
    """The eps each 16-bit eps=None probe's rows show: median of ``d**2 - mean(x^2)``."""
    estimates = {}
    for dtype in ctx.subject.half_dtypes:
        call = ctx.calls.get(f"{dtype} eps=None:{dtype}")
        if call is None or call.output is None:
            continue
        rms, d = fitted_denominator(call.probe.x, call.output, centre=False)
        with np.errstate(invalid="ignore"):
            estimates[dtype] = float(np.median(d**2 - rms**2))
    return estimates


def detect_eps_default_mismatch(ctx: Context) -> Finding | None:
    """``eps_default_mismatch``: called with eps=None, it does not use float32's machine epsilon.

    Inputs: the float32 eps probe called with eps=None (rows of root mean
    square 2**-24 ... 64), and for 16-bit inputs rows of root mean square
    2**-5, 2**-6 and 2**-7 in float16 (and bfloat16) called with eps=None.
    Measurements: in float32, :func:`eps_fit` against ``sqrt(mean(x^2) + 2**-23)``
    (rows deviate by more than 1e-3 and ``d**2 - mean(x^2)`` agrees to 5% across
    the rows that resolve eps: that is the eps used); in 16 bits, the median of
    ``d**2 - mean(x^2)``. Threshold for 16 bits: 2**-13. The 16-bit output
    rounds ``d`` by at most 2**-8 (bfloat16), so the estimate is off by at most
    2**-7 of ``mean(x^2) + eps``: 2**-17 for the rows of mean square up to 2**-10
    when eps is 2**-23, 16 times below the threshold, which in turn is 8 times
    below float16's 2**-10 and 64 times below bfloat16's 2**-7 (the eps of a
    function that resolves None by ``torch.finfo(x.dtype)``). Reported only
    when an eps passed explicitly is used: a hard-coded eps is ``eps_mismatch``,
    with the eps=None case in its evidence.
    """
    if ctx.found("eps_mismatch") or ctx.found("eps_outside_sqrt") or ctx.rows_unreliable:
        return None
    seen = {}
    fit = _eps_fits(ctx).get(None)
    if fit is not None and fit["verdict"] in ("inside", "zero") and not ctx.found("eps_ignored"):
        seen["float32"] = fit["estimated eps"]
    estimates = _half_eps_estimates(ctx)
    if estimates:
        ctx.measure(
            "eps_default_mismatch",
            "eps estimated for 16-bit inputs called with eps=None",
            max(estimates.values()),
            HALF_EPS_THRESHOLD,
        )
    seen.update({k: v for k, v in estimates.items() if v > HALF_EPS_THRESHOLD})
    if not seen:
        return None
    used = "; ".join(f"{v:.3g} for {k} inputs" for k, v in seen.items())
    called = "called with eps=None"
    if ctx.subject.is_module:
        called = "with eps=None (its eps attribute, or torch's default where it has none)"
    return Finding(
        "eps_default_mismatch",
        f"{called} it uses {used}; torch.nn.functional.rms_norm uses "
        f"{2.0**-23:.3g} (float32's machine epsilon) for float16, bfloat16 and float32 inputs "
        "in recent torch versions (older ones, before pytorch#142848 of January 2025, used "
        "torch.finfo(x.dtype).eps)",
        {"eps used with eps=None, by input dtype": seen, "torch's": 2.0**-23},
        "rms",
    )


#: More than this fraction of 16-bit outputs differing from the float32 path's rounded: a finding.
HALF_DIFFER_FRACTION = 0.05


def _ulps(count: int) -> str:
    return f"{count} ulp" if count == 1 else f"{count} ulps"


def _differ(a: np.ndarray, b: np.ndarray, dtype: str) -> tuple[float, int]:
    """Fraction of elements of ``a`` and ``b`` that differ once rounded to ``dtype``, and the
    largest distance in units in the last place (a non-finite mismatch counts as different)."""
    ra, rb = _rounded(a, dtype), _rounded(b, dtype)
    finite = np.isfinite(ra) & np.isfinite(rb)
    mismatch = ~finite & ~((ra == rb) | (np.isnan(ra) & np.isnan(rb)))
    distance = errors.ulp_distance(np.where(finite, ra, 0.0), np.where(finite, rb, 0.0), dtype)
    different = (distance > 0) | mismatch
    return float(different.mean()) if different.size else 0.0, int(distance.max(initial=0))


#: The RMSNorm 16-bit probes: name -> (storage dtype, what their rows are).
RMS_HALF_PROBES = {
    "float16": ("float16", "rms about 1"),
    "bfloat16": ("bfloat16", "rms about 1"),
    "float16 overflow": ("float16", "rms 300: squares above 65504"),
}


def detect_rms_low_precision(ctx: Context) -> Finding | None:
    """``low_precision_accumulation`` (RMSNorm): for 16-bit inputs it computes in 16 bits.

    Input: float16 (and, in torch, bfloat16) rows of root mean square 1/2 to 2,
    and float16 rows of root mean square 300 (squares beyond 65504 overflow
    float16), without weight, each called as they are and converted to float32
    (the same values). Measurement: the fraction of the 16-bit outputs that
    differ from the float32 outputs rounded to 16 bits, and by how many ulps.
    Threshold: 5%. Computing in float32 and rounding once gives the same
    float32 values on both paths, so the same 16-bit outputs; a function whose
    two paths sum in different orders flips a rounding only where its float32
    values fall within a few 2**-24 of a 16-bit rounding boundary, a fraction
    of about 2**-12 of float16 outputs and 2**-15 of bfloat16 ones. A mean of
    squares rounded to 16 bits (or an rstd, or the product x * rstd) moves
    every output by a fraction of an ulp that differs from row to row: 18% to
    51% of the outputs differ, by 1 or 2 ulps, for the 16-bit RMSNorms of
    tests/test_diagnose_rms.py in torch and NumPy (eight seeds), 3.7 times the
    threshold at least; overflowed squares give zeros, 100%.
    Comparing the function with itself makes it blind to every other mistake;
    the outputs are both rounded to 16 bits, so a float32 output is not
    mistaken for a 16-bit computation (that is ``dtype_changed``).
    """
    seen, largest, measured = {}, 0.0, False
    for name, (storage, rows) in RMS_HALF_PROBES.items():
        low, high = ctx.calls.get(f"{name}:{storage}"), ctx.calls.get(f"{name}:float32")
        if low is None or high is None or low.output is None or high.output is None:
            continue
        fraction, ulps = _differ(low.output, high.output, storage)
        largest, measured = max(largest, fraction), True
        if fraction > HALF_DIFFER_FRACTION:
            seen[f"{name} ({rows})"] = {"outputs differing": fraction, "largest ulps": ulps}
    if measured:
        ctx.measure(
            "low_precision_accumulation",
            "fraction of 16-bit outputs differing from its float32 output rounded",
            largest,
            HALF_DIFFER_FRACTION,
        )
    if not seen:
        return None
    return Finding(
        "low_precision_accumulation",
        "its 16-bit outputs differ from its own float32 computation, rounded to 16 bits, in "
        + "; ".join(
            f"{v['outputs differing']:.0%} of the outputs "
            f"(by up to {_ulps(v['largest ulps'])}) on {k} rows"
            for k, v in seen.items()
        )
        + ". Computing in float32 and rounding once gives identical outputs",
        {"by input": seen},
        "rms",
    )


def detect_rms_affine_wrong(ctx: Context) -> Finding | None:
    """``affine_wrong`` (RMSNorm): the weight is not applied as ``x_hat * weight``.

    Input: the same rows with a weight (entries of either sign, 0.5 <= |w| <=
    2), without it, and without it on ``x * weight``. Measurement: the output
    with weight against candidates built from the function's own plain
    output ``p``: ``p*w`` (correct), ``p`` (weight ignored), ``p*(1 + w)``
    (Gemma's parameterization, where ``w`` stores weight - 1), and the plain
    output for ``x * w`` (applied before normalizing). Threshold: a candidate
    matches within 1e-4 max|y|. The candidates differ by order one, rounding
    by a few u max|y| (at most 4u = 2.4e-7 with |w| <= 2). A module's plain
    output is computed with its weight filled with ones, which a (1 + weight)
    module multiplies by 2: its candidate is then ``p*(1 + w)/2``.
    """
    mine, plain = ctx.output("basic"), ctx.output("plain")
    call = ctx.calls["basic"]
    if mine is None or plain is None or call.probe.weight is None:
        return None
    w = call.probe.weight
    plain_one_plus = 2.0 if ctx.subject.is_module else 1.0  # 1 + the weight of the plain probe
    candidates = {
        "correct": plain * w,
        "the weight ignored": plain,
        "the weight applied as (1 + weight)": plain * (1.0 + w) / plain_one_plus,
    }
    if ctx.output("affine_first") is not None:
        candidates["the weight applied before normalizing"] = ctx.output("affine_first")
    distance = _affine_distances(mine, candidates)
    if not ctx.measure(
        "affine_wrong", "distance to x_hat*w / max|y|", distance["correct"], AFFINE_MATCH
    ).flagged:
        return None
    matches = [k for k, v in distance.items() if v <= AFFINE_MATCH]
    what = matches[0] if matches else "the weight applied in some other way"
    note = (
        " (right only where the stored weight is w - 1, as in Gemma: then pass cast='gemma'; "
        "torch.nn.RMSNorm and LLaMA multiply by the weight itself)"
        if what == "the weight applied as (1 + weight)"
        else ""
    )
    return Finding(
        "affine_wrong",
        f"{what}{note}",
        {"distance to x_hat*w, fraction of max|y|": distance["correct"], "matches": what},
        "rms",
    )


#: Fraction of outputs differing from one order above which the other order is suspected ...
CAST_ORDER_FRACTION = 0.10
#: ... provided the outputs match the other order except for at most this fraction.
CAST_FIRST_MATCH = 0.02
#: The orders of roundings, in words.
ORDER_WORDS = {
    "multiply": "multiplies x_hat by the weight in float32 and rounds once (as torch does)",
    "cast": "rounds x_hat to 16 bits, then multiplies by the weight (as LLaMA, Mistral and T5 do)",
}


def detect_cast_order(ctx: Context) -> Finding | None:
    """``cast_order`` (a note): for 16-bit input and weight, it rounds in another order than
    the one ``cast=`` names.

    Input: float16 (and, in torch, bfloat16) rows of root mean square 1/2 to 2
    with a weight of the same 16-bit dtype (0.5 <= |w| <= 2, either sign), as a
    model converted with ``.to(dtype)`` has. Measurement: from the function's
    own float32 output ``p`` without weight (the same values), torch's order
    ``round16(p * w)`` (multiply in float32, round once) and the cast-first
    order ``round16(round16(p) * w)``; the fraction of the function's outputs
    that differ from each. Threshold: more than 10% differ from one order and
    at most 2% from the other: the function follows the other. The two orders
    differ in a quarter of the outputs, each by one ulp (chapter 10 predicts
    26% and measures 20% to 32%); a function that follows one order differs
    from it only where its 16-bit path's float32 values differ from its float32
    path's, a fraction below 2**-12 (see ``low_precision_accumulation``). The
    order named by ``cast=`` (torch's by default; ``"llama"``, ``"mistral"``, ``"t5"``
    cast first) is no finding; the other is a note: the float32 output is the
    same, and the 16-bit outputs differ from the named order's by one ulp.
    Stands down when the statistics are already in 16 bits (which also rounds
    before the weight) or the weight is applied wrongly.
    """
    if ctx.found("low_precision_accumulation") or ctx.found("affine_wrong"):
        return None
    expected = CAST_ORDERS[ctx.subject.cast]
    seen, largest = {}, 0.0
    for dtype in ctx.subject.half_dtypes:
        mine, plain = ctx.calls.get(f"{dtype} weight:{dtype}"), ctx.calls.get(f"{dtype}:float32")
        if mine is None or plain is None or mine.output is None or plain.output is None:
            continue
        if mine.probe.weight is None:
            continue
        p = torch.from_numpy(plain.output).float()
        w = torch.from_numpy(mine.probe.weight).float()
        half = _TORCH_DTYPES[dtype]
        orders = {
            "multiply": (p * w).to(half).double().numpy(),
            "cast": (p.to(half).float() * w).to(half).double().numpy(),
        }
        differ = {k: _differ(mine.output, v, dtype) for k, v in orders.items()}
        other = "cast" if expected == "multiply" else "multiply"
        largest = max(largest, differ[expected][0])
        if differ[expected][0] > CAST_ORDER_FRACTION and differ[other][0] <= CAST_FIRST_MATCH:
            seen[dtype] = {
                f"outputs differing from {'multiply-first' if k == 'multiply' else 'cast-first'}":
                    differ[k][0]
                for k in ("multiply", "cast")
            } | {"largest ulps": differ[expected][1], "order": other}
    ctx.measure(
        "cast_order",
        f"fraction of 16-bit outputs differing from the order of cast={ctx.subject.cast!r}",
        largest,
        CAST_ORDER_FRACTION,
        True,
        True,
    )
    if not seen:
        return None
    dtype = "bfloat16" if "bfloat16" in seen else next(iter(seen))  # a bfloat16 model's case first
    v = seen[dtype]
    other = v["order"]
    suggestion = "cast='llama'" if other == "cast" else "cast='torch'"
    return Finding(
        "cast_order",
        f"with {dtype} input and weight it {ORDER_WORDS[other]}; cast={ctx.subject.cast!r} "
        f"names the order that {ORDER_WORDS[expected]}. "
        f"{v['outputs differing from multiply-first']:.0%} of its outputs differ from "
        f"multiply-first, {v['outputs differing from cast-first']:.1%} from cast-first, by up to "
        f"{_ulps(v['largest ulps'])}: not a mistake. If your model rounds so, pass {suggestion}",
        {"by dtype": seen},
        "rms",
    )