"""Findings, measurements and the report a check returns."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field

from lnorm.diagnose.kinds import NORM_NAMES, kind_info


@dataclass(frozen=True)
class Finding:
    """One mistake: its ``kind`` (a key of :data:`KINDS`), what was seen, and the measurements."""

    kind: str
    message: str
    evidence: dict = field(default_factory=dict)
    #: "layer" or "rms": which norm's explanation of the kind to print.
    norm: str = "layer"

    def __str__(self) -> str:
        info = kind_info(self.kind, self.norm)
        evidence = "; ".join(f"{k} = {_fmt(v)}" for k, v in self.evidence.items())
        parts = [
            _wrap(f"[{self.kind}] {info.title}", ""),
            _wrap(f"seen: {self.message}", "  "),
            _wrap(f"evidence: {evidence}", "  ") if evidence else "",
            _wrap(f"fix: {info.fix}", "  "),
            _wrap(f"read: {info.chapter}", "  "),
        ]
        return "\n".join(part for part in parts if part)


@dataclass(frozen=True)
class Measurement:
    """A detector's deciding quantity and the threshold it is held against."""

    quantity: str
    value: float
    threshold: float
    #: True: a finding when value > threshold; False: a finding when value <= threshold.
    flags_above: bool = True

    @property
    def flagged(self) -> bool:
        return self.value > self.threshold if self.flags_above else self.value <= self.threshold

    def __str__(self) -> str:
        rule = ">" if self.flags_above else "<="
        return f"{self.quantity}: {self.value:.3g} (a finding when {rule} {self.threshold:g})"


@dataclass(frozen=True)
class Report:
    """What :func:`check` found for one implementation."""

    name: str
    framework: str
    findings: tuple[Finding, ...]
    #: ``(rtol, atol)`` for comparing the implementation's float32 output with torch's, or None
    #: when there are findings (a wrong formula is not rounding error), unless every finding is
    #: an order of roundings that leaves float32 outputs alone (``ROUNDING_ORDER_KINDS``).
    #: See :func:`tolerance`.
    tolerance: tuple[float, float] | None
    #: How the tolerance was derived, in one sentence (None with the tolerance).
    tolerance_reason: str | None = None
    #: The deciding measurement of each numerical detector that ran, by kind.
    measurements: dict[str, Measurement] = field(default_factory=dict)
    #: "layer" (LayerNorm) or "rms" (RMSNorm): what the implementation was checked as.
    norm: str = "layer"
    #: The function's largest measured float32 error on the checker's rows, divided by the
    #: measured envelope of its class (None with the tolerance). At most 1: the tolerance uses
    #: the class's envelope as it is; above 1, the envelope is scaled up by a power of 2.
    envelope_ratio: float | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    @property
    def kinds(self) -> list[str]:
        """The kinds found, in the order the detectors run."""
        return [finding.kind for finding in self.findings]

    def __str__(self) -> str:
        head = f"{self.name} ({self.framework}): "
        if self.ok:
            lines = [head + f"no findings: on every probe it behaves as {NORM_NAMES[self.norm]}."]
        else:
            count = len(self.findings)
            lines = [head + f"{count} finding{'s' if count > 1 else ''}"]
            lines += [str(finding) for finding in self.findings]
        if self.tolerance is None:
            lines.append(
                "tolerance: none until the findings are fixed (they are not rounding error)"
            )
        else:
            rtol, atol = self.tolerance
            lines.append(
                _wrap(
                    "tolerance: compare its float32 output with torch's by "
                    f"torch.testing.assert_close(mine, theirs, rtol={rtol:g}, atol={atol:.1e}), "
                    f"tolerances by keyword: {self.tolerance_reason}.",
                    "",
                )
            )
        return "\n".join(lines)


def _wrap(text: str, indent: str) -> str:
    """``text`` wrapped to 88 columns, its first line indented by ``indent``, the rest by 4 more."""
    return textwrap.fill(
        text, 88, initial_indent=indent, subsequent_indent=indent + "    ", break_on_hyphens=False
    )


def _fmt(value: object) -> str:
    """Evidence for printing: floats to 3 significant digits, containers element by element."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
