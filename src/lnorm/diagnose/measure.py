"""Measurements the detectors share: row statistics, the fitted denominator, the context."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lnorm.diagnose.kinds import ROUNDING_ORDER_KINDS
from lnorm.diagnose.report import Finding, Measurement
from lnorm.diagnose.subject import Call, Subject


# ----------------------------------------------------------------------------------------------
# Measurements shared by the detectors
# ----------------------------------------------------------------------------------------------


def row_statistics(
    x: np.ndarray, rows: int, centre: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (float64) centred values and biased standard deviation of each row of ``x``.

    With ``centre=False`` (RMSNorm): the values as they are and each row's root mean square.
    """
    flat = np.asarray(x, np.float64).reshape(rows, -1)
    centred = flat - flat.mean(axis=1, keepdims=True) if centre else flat
    return centred, np.sqrt((centred * centred).mean(axis=1))


def fitted_denominator(
    x: np.ndarray, y: np.ndarray, centre: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the exact standard deviation, and the denominator ``d`` the function divided by.

    ``d = sum(c*c) / sum(c*y)`` with the exact centred values ``c``: the
    least-squares fit of ``y = c / d``. An error in the function's mean shifts
    every ``y`` of the row by the same amount, which ``sum(c) = 0`` cancels
    exactly; ``d`` is therefore the function's ``sqrt(var + eps)``, as it
    computed it, to a few roundings of its output. With ``centre=False``
    (RMSNorm) the fit uses the values themselves, ``d = sum(x*x) / sum(x*y)``,
    and returns each row's root mean square in place of the standard deviation.
    """
    rows = x.shape[0]
    centred, std = row_statistics(x, rows, centre)
    flat_y = np.asarray(y, np.float64).reshape(rows, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (centred * centred).sum(axis=1) / (centred * flat_y).sum(axis=1)
    return std, d


@dataclass(frozen=True)
class Denominator:
    """What a function divides a row by, as learned by the detectors: the correct
    ``sqrt(var + eps)`` by default, with Bessel's factor and eps as measured."""

    n: int
    bessel: bool = False
    eps: float = 1e-5
    eps_outside: bool = False

    def __call__(self, std: np.ndarray) -> np.ndarray:
        effective = std * math.sqrt(self.n / (self.n - 1)) if self.bessel else std
        return effective + self.eps if self.eps_outside else np.sqrt(effective**2 + self.eps)


def growth_exponent(offsets: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(offset): 1 for linear growth, 2 quadratic."""
    offsets, values = np.asarray(offsets, float), np.asarray(values, float)
    keep = np.isfinite(values)
    if keep.sum() < 2:
        return float("nan")
    floor = 2.0**-40  # an error of exactly zero is at the floor, not minus infinity
    return float(np.polyfit(np.log(offsets[keep]), np.log(np.maximum(values[keep], floor)), 1)[0])


@dataclass
class Context:
    """The calls of one check, and what the detectors have found and learned so far."""

    subject: Subject
    #: The calls judged as LayerNorm's (or RMSNorm's), by probe name.
    calls: dict[str, Call]
    #: Calls on inputs of another layout (channels first), read only by detect_channels_first.
    side_calls: dict[str, Call] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    #: Set by detect_wrong_axis when plain 2-d rows are normalized over the wrong axes, and by
    #: detect_does_not_centre when rows are not centred: the row detectors' measurements would
    #: then be meaningless, and they stand down.
    rows_unreliable: bool = False
    #: Set by detect_wrong_axis when only the two-axis normalized_shape is normalized wrongly:
    #: the last-axis rows (and the backward's probes) are still right.
    only_two_axes_wrong: bool = False
    #: Set by detect_channels_first: every other detector stands down (see checker.check).
    layout_wrong: bool = False
    #: What the function divides by, per eps, as measured (see Denominator).
    denominators: dict[float, Denominator] = field(default_factory=dict)
    #: The deciding measurement of each numerical detector that ran.
    measurements: dict[str, Measurement] = field(default_factory=dict)
    #: The eps fits, once computed (see _eps_fits).
    eps_fits: dict[float, dict] | None = None
    #: Set by the tolerance: the function's measured error over its class's envelope.
    envelope_ratio: float | None = None

    def measure(self, kind: str, *args) -> Measurement:
        """Record a detector's deciding measurement (the arguments of :class:`Measurement`)."""
        self.measurements[kind] = Measurement(*args)
        return self.measurements[kind]

    def output(self, probe: str) -> np.ndarray | None:
        """The output of a probe, or None when the call raised or returned something unusable."""
        call = self.calls.get(probe)
        return None if call is None else call.output

    @property
    def mistakes(self) -> list[Finding]:
        """The findings so far that are mistakes, not notes on an order of roundings."""
        return [f for f in self.findings if f.kind not in ROUNDING_ORDER_KINDS]

    def found(self, kind: str) -> bool:
        return any(f.kind == kind for f in self.findings)

    @property
    def n(self) -> int:
        return int(np.prod(self.subject.row_shape))

    @property
    def eps(self) -> float:
        return self.subject.eps_values[0]

    def denominator(self, eps: float) -> Denominator:
        return self.denominators.get(
            eps, Denominator(self.n, self.found("bessel_correction"), eps)
        )
