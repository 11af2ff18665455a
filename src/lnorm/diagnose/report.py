"""Findings, measurements and the report a check returns."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field

from lnorm.diagnose.kinds import NORM_NAMES, ROUNDING_ORDER_KINDS, kind_info

#: The report's line width: it fits a terminal and the book's code boxes (84 characters).
WIDTH = 84


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

    @property
    def is_note(self) -> bool:
        """An order of roundings (a note), not a mistake."""
        return self.kind in ROUNDING_ORDER_KINDS

    def line(self) -> str:
        """The finding in one (wrapped) line: its kind, what was seen, and the fix."""
        if self.is_note:  # its message says what to pass
            return _wrap(f"note [{self.kind}] {self.message}", "  ")
        return _wrap(f"[{self.kind}] {self.message}. Fix: {kind_info(self.kind, self.norm).fix}",
                     "  ")


@dataclass(frozen=True)
class Measurement:
    """A detector's deciding quantity and the threshold it is held against."""

    quantity: str
    value: float
    threshold: float
    #: True: a finding when value > threshold; False: a finding when value <= threshold.
    flags_above: bool = True
    #: True for a note's measurement (an order of roundings): above its threshold it is noted.
    is_note: bool = False

    @property
    def flagged(self) -> bool:
        return self.value > self.threshold if self.flags_above else self.value <= self.threshold

    def __str__(self) -> str:
        rule = ">" if self.flags_above else "<="
        what = "noted" if self.is_note else "a finding"
        return f"{self.quantity}: {self.value:.3g} ({what} when {rule} {self.threshold:g})"


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

    #: What the checker assumed, what it checked or could not check, and the orders of
    #: roundings it saw (``cast_order``: not a mistake), one line each.
    notes: tuple[str, ...] = ()
    #: ``{dtype: (rtol, atol)}`` for each dtype the implementation was probed in: float32's is
    #: :attr:`tolerance`; a 16-bit output may differ from torch's by one more ulp of its own,
    #: ``atol_16 = atol_32 + eps_16 * max|y|`` (chapter 3's rule for 16-bit outputs).
    tolerances: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: The kinds of the findings seen only in 16-bit probes (the float32 path is right).
    half_only: frozenset[str] = frozenset()
    #: The orders of roundings seen (``cast_order``) with their evidence: not mistakes; their
    #: messages are among :attr:`notes`.
    note_findings: tuple[Finding, ...] = ()
    #: The data the tolerance holds for, and what to use for other data, in words (None with
    #: the tolerance); the report prints it under the tolerance lines, which carry it.
    tolerance_scope: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was found (notes on an order of roundings are not findings)."""
        return not self.findings

    @property
    def kinds(self) -> list[str]:
        """The kinds found, in the order the detectors run (notes are in :attr:`notes`)."""
        return [finding.kind for finding in self.findings]

    def tolerance_code(self, dtype: str = "float32") -> str | None:
        """The tolerance for outputs of ``dtype`` as a line of code to paste, or None."""
        rtol_atol = self.tolerances.get(dtype, self.tolerance if dtype == "float32" else None)
        if rtol_atol is None:
            return None
        rtol, atol = rtol_atol
        return f"torch.testing.assert_close(mine, ref, rtol={rtol:g}, atol={atol:.2g})"

    def tolerance_lines(self) -> list[str]:
        """One line per probed dtype, ``tolerance (float32): torch.testing...``, then the data
        these tolerances hold for (:attr:`tolerance_scope`), indented."""
        dtypes = list(self.tolerances) or (["float32"] if self.tolerance is not None else [])
        lines = [f"tolerance ({dtype}): {self.tolerance_code(dtype)}" for dtype in dtypes]
        if lines and self.tolerance_scope:
            lines.append(_wrap(self.tolerance_scope, "  "))
        return lines

    def verdict(self) -> str:
        """One line: the name, and whether it behaves as the norm."""
        head = f"{self.name} ({self.framework}):"
        norm = NORM_NAMES[self.norm]
        count = len(self.findings)
        plural = "s" if count > 1 else ""
        if not count:
            first, rest = "no findings:", f"on every probe it behaves as {norm}."
        elif set(self.kinds) <= self.half_only:
            first = f"correct in float32; in float16/bfloat16: {count} finding{plural}"
            rest = "(a unit is the 16-bit eps x max|y|)."
        else:
            first, rest = f"{count} finding{plural}: not {norm} yet.", ""
        # One line where it fits in WIDTH columns; else as much as fits, the rest on the next line.
        joined = f"{head} {first} {rest}".rstrip()
        if len(joined) <= WIDTH:
            return joined
        if len(f"{head} {first}") <= WIDTH:
            return f"{head} {first}" + (f"\n  {rest}" if rest else "")
        return f"{head}\n  {first}" + (f"\n  {rest}" if rest else "")

    def __str__(self) -> str:
        """The report to read in five seconds: the verdict, one line per finding and note, and
        the tolerance per dtype as a line of code; :meth:`details` has the evidence and the
        derivations."""
        lines = [self.verdict()]
        lines += [finding.line() for finding in self.findings]
        lines += [_wrap(f"note: {note}", "  ") for note in self.notes]
        lines += self.tolerance_lines() or [
            "tolerance: none until the findings are fixed (they are not rounding error)"
        ]
        lines.append("details: report.details() (python -m lnorm.diagnose ... --verbose)")
        return "\n".join(lines)

    def details(self) -> str:
        """Everything: each finding with its evidence, fix and chapter; the notes; the
        tolerance and how it was derived; every detector's deciding measurement."""
        lines = [self.verdict()]
        lines += [str(finding) for finding in self.findings]
        lines += [_wrap(f"note: {note}", "") for note in self.notes]
        lines += [
            _wrap(f"evidence of the note {f.kind}: " + "; ".join(
                f"{k} = {_fmt(v)}" for k, v in f.evidence.items()), "")
            for f in self.note_findings
        ]
        tolerance_lines = self.tolerance_lines()
        if tolerance_lines:
            lines += tolerance_lines
            lines.append(_wrap(f"because {self.tolerance_reason}.", "  "))
        else:
            lines.append("tolerance: none until the findings are fixed")
        lines.append("measurements (each detector's deciding quantity):")
        lines += [_wrap(f"{kind}: {m}", "  ") for kind, m in self.measurements.items()]
        return "\n".join(lines)


def _wrap(text: str, indent: str) -> str:
    """``text`` wrapped to WIDTH columns, its first line indented by ``indent``, the rest by 4
    more."""
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "    ",
                         break_on_hyphens=False)


def _fmt(value: object) -> str:
    """Evidence for printing: floats to 3 significant digits, containers element by element."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
