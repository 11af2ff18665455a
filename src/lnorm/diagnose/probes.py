"""The probes: seeded inputs, each built to expose one mistake."""

from __future__ import annotations

import numpy as np

from lnorm.diagnose.kinds import eps_probe_name
from lnorm.diagnose.subject import Probe, Subject, _rounded


# ----------------------------------------------------------------------------------------------
# The probes: seeded inputs, each built to expose one mistake
# ----------------------------------------------------------------------------------------------

#: Offsets of the mean, in standard deviations, for the one-pass detector.
OFFSETS = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0)
#: The offsets whose errors are fitted (from 16 on, linear growth is well above the rounding
#: floor).
FITTED_OFFSETS = (16.0, 64.0, 256.0, 1024.0)
#: Rows per offset: the largest error of 32 rows is close to the largest the rounding can make.
ROWS_PER_OFFSET = 32
#: Standard deviations of the eps probe's rows: 2**-24 ... 64, so that for any eps from 1e-14 to
#: 1 some rows have eps changing sqrt(var + eps) by a resolvable fraction, and the rows with
#: standard deviation 1, 8 and 64 (eps at most 1e-3 of the variance) show Bessel's factor alone.
EPS_PROBE_STDS = tuple(2.0**k for k in range(-24, 7))
#: The eps probe's rows that the Bessel detector reads.
BESSEL_STDS = (1.0, 8.0, 64.0)
#: Mean offset (in standard deviations) of the 16-bit accuracy probe.
HALF_OFFSET = 128.0
#: Row lengths of the long-row probes: a kernel's path for long rows (several tiles, a masked
#: last one) runs only there.
LONG_ROWS = (4096, 4097)


def _standard_rows(rng: np.random.Generator, rows: int, row_shape: tuple[int, ...]) -> np.ndarray:
    """Rows with mean exactly 0 and biased standard deviation exactly 1 (in float64)."""
    z = rng.standard_normal((rows, int(np.prod(row_shape))))
    z -= z.mean(axis=1, keepdims=True)
    z /= np.sqrt((z * z).mean(axis=1, keepdims=True))
    return z.reshape((rows, *row_shape))


def _scaled(z: np.ndarray, scales: np.ndarray, offsets: np.ndarray | float = 0.0) -> np.ndarray:
    """Row k of ``z`` times ``scales[k]`` plus ``offsets[k]``."""
    shape = (-1,) + (1,) * (z.ndim - 1)
    return z * np.reshape(scales, shape) + np.reshape(offsets, shape)


def _axis_test_input(
    rng: np.random.Generator, batch_shape: tuple[int, ...], row_shape: tuple[int, ...]
) -> np.ndarray:
    """An input whose every axis carries its own offsets and spreads.

    Each leading index has its own offset and spread, and each trailing
    position an offset of its own: normalizing over any wrong set of axes leaves
    group means of order one and group variances that differ from one.
    """
    shape = (*batch_shape, *row_shape)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (*batch_shape,) + (1,) * len(row_shape))
    for axis, size in enumerate(shape):
        offsets_shape = [1] * len(shape)
        offsets_shape[axis] = size
        x = x + rng.uniform(-2.0, 2.0, offsets_shape)
    return x


def layer_norm_probes(subject: Subject, half: bool, seed: int = 0) -> dict[str, Probe]:
    """Every probe the LayerNorm detectors read, by name (seeded: the same inputs on every run).

    Each detector's docstring says which probes it reads and why they expose its mistake.
    """
    rng = np.random.default_rng(seed)
    rows = subject.row_shape
    n = int(np.prod(rows))
    eps = subject.eps_values[0]
    probes: list[Probe] = []

    def add(name: str, x: np.ndarray, dtype: str = "float32", **arguments) -> None:
        shape = arguments.pop("normalized_shape", rows)
        arguments.setdefault("eps", eps)
        probes.append(Probe(name, _rounded(x, dtype), shape, dtype, **arguments))

    # Ordinary rows: means within 2 of zero, standard deviations 0.5 to 2 (|mean| <= 4 std),
    # with a weight of either sign and a bias.
    basic = _rounded(
        _scaled(_standard_rows(rng, 16, rows), rng.uniform(0.5, 2, 16), rng.uniform(-2, 2, 16)),
        "float32",
    )
    weight = _rounded(rng.uniform(0.5, 2.0, rows) * rng.choice([-1.0, 1.0], rows), "float32")
    bias = _rounded(rng.uniform(-1.0, 1.0, rows), "float32")
    w = weight if subject.has_weight else None
    b = bias if subject.has_bias else None
    add("basic", basic, weight=w, bias=b)
    add("plain", basic)
    if w is not None or b is not None:
        add("affine_first", basic * (1.0 if w is None else w) + (0.0 if b is None else b))

    add("rows_axes", _axis_test_input(rng, (12,), rows))
    add("batch_axes", _axis_test_input(rng, (3, 5), rows))
    if not subject.is_module and subject.probe_two_axes:  # a normalized_shape of two dims
        add("two_axes", _axis_test_input(rng, (3,), (5, 16)), normalized_shape=(5, 16))

    # Constant rows whose sums and sums of squares are exact in float32 (any algorithm gets
    # variance 0 exactly), and two ordinary rows.
    constants = np.array([0.0, 1.0, -2.5, 1024.0]).reshape(4, *(1,) * len(rows))
    add(
        "constant",
        np.concatenate([constants * np.ones((4, *rows)), _standard_rows(rng, 2, rows)]),
    )

    nan = _standard_rows(rng, 6, (n,))
    nan[1, 3], nan[4, 0] = np.nan, np.inf
    add("nan", nan.reshape(6, *rows))

    eps_rows = _scaled(_standard_rows(rng, len(EPS_PROBE_STDS), rows), np.array(EPS_PROBE_STDS))
    for value in subject.eps_values:
        add(eps_probe_name(value), eps_rows, eps=value)

    # Each row's mean is its nominal offset times a random factor in [0.8, 1.25]: not a round
    # number, so that a computed mean carries a rounding error.
    count = ROWS_PER_OFFSET * len(OFFSETS)
    means = np.repeat(OFFSETS, ROWS_PER_OFFSET) * rng.uniform(0.8, 1.25, count)
    add("offsets", _scaled(_standard_rows(rng, count, rows), np.ones(count), means))

    add("empty", np.zeros((0, *rows)))

    if half:
        # The same 16-bit values, computed as they are and converted to float32. No weight or
        # bias: the affine step may round in 16 bits, which is not what is measured here.
        for dtype in subject.half_dtypes:
            means = HALF_OFFSET * rng.uniform(0.8, 1.25, 32)
            x16 = _rounded(_scaled(_standard_rows(rng, 32, rows), np.ones(32), means), dtype)
            for work in (dtype, "float32"):
                add(f"{dtype}:{work}", x16, work)
        # Standard deviation 300: every row has an element at least 300 from its mean, whose
        # square overflows float16 (65504); harmless in float32.
        x_big = _rounded(
            _scaled(_standard_rows(rng, 8, rows), np.full(8, 300.0), 100.0), "float16"
        )
        for work in ("float16", "float32"):
            add(f"float16 overflow:{work}", x_big, work)
    _add_scope_probes(subject, np.random.default_rng([seed, 1]), add)
    return {probe.name: probe for probe in probes}


# ----------------------------------------------------------------------------------------------
# RMSNorm: its probes and detectors
# ----------------------------------------------------------------------------------------------

#: Root mean squares of the 16-bit eps=None probe's rows: 16-bit eps (2**-10, 2**-7) is at
#: least the rows' mean square, float32's 2**-23 at most 2**-13 of it.
RMS_HALF_EPS_RMS = (2.0**-5, 2.0**-6, 2.0**-7)


def _rms_axis_test_input(
    rng: np.random.Generator, batch_shape: tuple[int, ...], row_shape: tuple[int, ...]
) -> np.ndarray:
    """An input whose every axis scales its positions alternately by 1/2 and 2.

    RMSNorm over axes A leaves every A-group of its output with mean square
    ``ms/(ms + eps)``, close to 1, and so does every superset of A. Over any
    other set, some group holds only positions scaled by 1/2 along an axis
    that the set does not reduce, against 2 for others: its mean square is
    near (1/4)/2.125 = 0.12 of the average, far from 1 whatever the draw.
    """
    shape = (*batch_shape, *row_shape)
    x = rng.standard_normal(shape)
    for axis, size in enumerate(shape):
        scales_shape = [1] * len(shape)
        scales_shape[axis] = size
        x = x * np.where(np.arange(size) % 2 == 0, 0.5, 2.0).reshape(scales_shape)
    return x


def rms_norm_probes(subject: Subject, half: bool, seed: int = 0) -> dict[str, Probe]:
    """Every probe the RMSNorm detectors read, by name (seeded: the same inputs on every run).

    Each detector's docstring says which probes it reads and why they expose its mistake.
    """
    rng = np.random.default_rng(seed)
    rows = subject.row_shape
    eps = subject.eps_values[0]
    probes: list[Probe] = []

    def add(name: str, x: np.ndarray, dtype: str = "float32", **arguments) -> None:
        shape = arguments.pop("normalized_shape", rows)
        arguments.setdefault("eps", eps)
        probes.append(Probe(name, _rounded(x, dtype), shape, dtype, norm="rms", **arguments))

    # Ordinary rows: means within 2 of zero, standard deviations 0.5 to 2 (|mean| <= 4 std),
    # with a weight of either sign.
    basic = _rounded(
        _scaled(_standard_rows(rng, 16, rows), rng.uniform(0.5, 2, 16), rng.uniform(-2, 2, 16)),
        "float32",
    )
    weight = rng.uniform(0.5, 2.0, rows) * rng.choice([-1.0, 1.0], rows)
    weight = _stored(weight, "float32", subject)
    w = weight if subject.has_weight else None
    add("basic", basic, weight=w)
    add("plain", basic)
    if w is not None:
        add("affine_first", basic * w)

    add("rows_axes", _rms_axis_test_input(rng, (12,), rows))
    add("batch_axes", _rms_axis_test_input(rng, (3, 5), rows))
    if not subject.is_module and subject.probe_two_axes:  # a normalized_shape of two dims
        add("two_axes", _rms_axis_test_input(rng, (3,), (5, 16)), normalized_shape=(5, 16))

    # Two rows of zeros (mean square exactly 0 by any algorithm) and two ordinary rows.
    add("constant", np.concatenate([np.zeros((2, *rows)), _standard_rows(rng, 2, rows)]))

    nan = _standard_rows(rng, 6, (int(np.prod(rows)),))
    nan[1, 3], nan[4, 0] = np.nan, np.inf
    add("nan", nan.reshape(6, *rows))

    # Rows of mean 0 and root mean square 2**-24 ... 64 (see EPS_PROBE_STDS).
    eps_rows = _scaled(_standard_rows(rng, len(EPS_PROBE_STDS), rows), np.array(EPS_PROBE_STDS))
    for value in subject.eps_values:
        add(eps_probe_name(value), eps_rows, eps=value)

    # Rows whose mean is 1 to 2 standard deviations from zero, of either sign.
    means = rng.uniform(1.0, 2.0, 16) * rng.choice([-1.0, 1.0], 16)
    add("offset_rows", _scaled(_standard_rows(rng, 16, rows), np.ones(16), means))

    add("empty", np.zeros((0, *rows)))

    if half:
        for dtype in subject.half_dtypes:
            # The same 16-bit values computed as they are and converted to float32, without
            # weight; then with a weight in the same 16-bit dtype, as a model.to(dtype) has.
            z = _standard_rows(rng, 32, rows)
            x16 = _rounded(_scaled(z, rng.uniform(0.5, 2, 32), rng.uniform(-1, 1, 32)), dtype)
            for work in (dtype, "float32"):
                add(f"{dtype}:{work}", x16, work)
            w16 = rng.uniform(0.5, 2.0, rows) * rng.choice([-1.0, 1.0], rows)
            w16 = _stored(w16, dtype, subject)
            add(f"{dtype} weight:{dtype}", x16, dtype, weight=w16 if subject.has_weight else None)
            if None in subject.eps_values:
                small = np.repeat(RMS_HALF_EPS_RMS, 4)
                x_small = _scaled(_standard_rows(rng, len(small), rows), small)
                add(f"{dtype} eps=None:{dtype}", x_small, dtype, eps=None)
        # Root mean square 300: every row has an element at least 300 in magnitude, whose square
        # overflows float16 (65504); harmless in float32.
        x_big = _rounded(_scaled(_standard_rows(rng, 8, rows), np.full(8, 300.0)), "float16")
        for work in ("float16", "float32"):
            add(f"float16 overflow:{work}", x_big, work)
    _add_scope_probes(subject, np.random.default_rng([seed, 1]), add)
    return {probe.name: probe for probe in probes}


def _stored(weight: np.ndarray, dtype: str, subject: Subject) -> np.ndarray:
    """A weight whose stored form is exact in ``dtype``: Gemma's stores ``weight - 1``."""
    offset = subject.weight_offset
    return offset + _rounded(weight - offset, dtype)


def _add_scope_probes(subject: Subject, rng: np.random.Generator, add) -> None:
    """The probes of the checker's scope, drawn from their own generator (the other probes'
    inputs stay as they were): rows whose means are 1 to 2 standard deviations from zero
    (does the function centre them?), long rows of 4096 and 4097 elements for a function,
    the backward on ordinary and long rows, and a channels-first input for a module.
    """
    rows, layer = subject.row_shape, subject.norm == "layer"
    if layer:  # RMSNorm's probes have these rows already
        means = rng.uniform(1.0, 2.0, 16) * rng.choice([-1.0, 1.0], 16)
        add("offset_rows", _scaled(_standard_rows(rng, 16, rows), np.ones(16), means))

    def ordinary(count: int, shape: tuple[int, ...]) -> dict:
        x = _scaled(_standard_rows(rng, count, shape), rng.uniform(0.5, 2, count),
                    rng.uniform(-2, 2, count))
        weight = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        return {
            "x": _rounded(x, "float32"),
            "weight": _stored(weight, "float32", subject) if subject.has_weight else None,
            "bias": _rounded(rng.uniform(-1, 1, shape), "float32") if subject.has_bias else None,
            "dy": _rounded(rng.standard_normal(x.shape), "float32"),
        }

    basic = ordinary(16, rows)
    long_rows = [] if subject.is_module else [n for n in LONG_ROWS if (n,) != rows]
    long = {n: ordinary(4, (n,)) for n in long_rows}
    for n, a in long.items():
        add(f"long:{n}", a["x"], weight=a["weight"], bias=a["bias"], normalized_shape=(n,))
    if subject.framework == "torch":
        add("grad", basic["x"], weight=basic["weight"], bias=basic["bias"], dy=basic["dy"])
        for n, a in long.items():
            add(f"grad long:{n}", a["x"], weight=a["weight"], bias=a["bias"], dy=a["dy"],
                normalized_shape=(n,))
    if subject.is_module and len(rows) == 1:
        width = 7 if rows[0] != 7 else 9  # not the channels' count, so the layouts differ
        add("channels_first", _axis_test_input(rng, (2,), (rows[0], 3, width)), side=True,
            normalized_shape=rows)
