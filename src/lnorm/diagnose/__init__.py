"""Is my LayerNorm (or RMSNorm) right? A checker for a reader's own implementation.

    report = lnorm.diagnose.check(fn)          # fn(x, normalized_shape, weight, bias, eps)
    report = lnorm.diagnose.check(fn, "numpy") # the same on NumPy arrays
    report = lnorm.diagnose.check(module)      # an nn.Module (normalized_shape, weight, bias, eps)
    report = lnorm.diagnose.check(fn, norm="rms")  # fn(x, normalized_shape, weight, eps=None)
    report.ok, report.kinds, report.findings, report.notes, report.measurements
    report.tolerances   # {dtype: (rtol, atol)} for each dtype probed; report.tolerance: float32's
    print(report)

or ``python -m lnorm.diagnose path/to/file.py:name [--numpy] [--rms [--cast llama]]``, where
``name`` is a function or an ``nn.Module`` instance (not a class, nor a function that builds one).

The checker calls ``fn`` on seeded inputs of its own (the *probes* below), each
built to expose one mistake, and judges every output against
:func:`lnorm.errors.reference_layer_norm` (or ``reference_rms_norm``: float64
on the exact input values, far more accurate than any float32 result). Each
mistake has a *detector*: a small function whose docstring says which
input exposes the bug, what measurement decides it, the threshold, and
why rounding error cannot reach that threshold. The detectors run in the
order of :data:`LAYER_NORM_DETECTORS`;
later ones use what earlier ones learned (a function with Bessel's correction
divides by ``sqrt(N/(N-1) var + eps)``, and the eps detectors measure against
that), so that one mistake is reported once, under its own kind.

Most detectors read the *denominator* the function divided each row by,
recovered from its output: for a row with exact centred values ``c = x - mean``
and output ``y``, the least-squares fit ``d = sum(c*c) / sum(c*y)``. Because
``sum(c) = 0``, an error ``delta`` in the function's mean, which shifts every
``y`` by the same ``delta/d``, drops out of the fit exactly; ``d`` carries only
the function's variance and eps, measured to a few float32 roundings.

The finding kinds (:data:`KINDS`) are stable strings that tests and readers
rely on. ``norm="rms"`` checks an RMSNorm with the same machinery (probes,
calls, the denominator fit, now ``d = sum(x*x) / sum(x*y)`` on the values
themselves, the report) and a list of detectors of its own,
:data:`RMS_NORM_DETECTORS`: the LayerNorm kinds that apply (same names where the
meaning is the same, explained in RMSNorm's words by :data:`RMS_KINDS`), and
``eps_default_mismatch`` and ``centres_rows``; ``cast_order`` is a note (an order of
roundings, not a mistake), in ``report.notes`` and ``report.note_findings``, never in
``report.kinds``.

The package, in the order a check runs:

- :mod:`~lnorm.diagnose.kinds`: what each finding kind means and how to fix it;
- :mod:`~lnorm.diagnose.modules`: reading a module as it is (eps, affine names, layout);
- :mod:`~lnorm.diagnose.subject`: calling the reader's function or module on a probe;
- :mod:`~lnorm.diagnose.probes`: the seeded inputs, each built to expose one mistake;
- :mod:`~lnorm.diagnose.measure`: the measurements the detectors share (the denominator fit);
- :mod:`~lnorm.diagnose.detectors_common`, :mod:`~lnorm.diagnose.detectors_layer`,
  :mod:`~lnorm.diagnose.detectors_rms`, :mod:`~lnorm.diagnose.detectors_scope` (layout, long
  rows), :mod:`~lnorm.diagnose.backward`: the detectors, one function per mistake;
- :mod:`~lnorm.diagnose.tolerance`: the tolerance a clean report gives;
- :mod:`~lnorm.diagnose.report`: findings and the report;
- :mod:`~lnorm.diagnose.checker`: :func:`check`, which runs them all;
- :mod:`~lnorm.diagnose.cli` and ``__main__``: ``python -m lnorm.diagnose``.
"""

from lnorm.diagnose.checker import LAYER_NORM_DETECTORS, RMS_NORM_DETECTORS, check
from lnorm.diagnose.cli import load, main
from lnorm.diagnose.detectors_rms import CAST_FIRST_MATCH
from lnorm.diagnose.kinds import KINDS, RMS_KINDS, ROUNDING_ORDER_KINDS, Kind, kind_info
from lnorm.diagnose.modules import ChannelsLast, channels_last
from lnorm.diagnose.measure import Context, fitted_denominator, growth_exponent, row_statistics
from lnorm.diagnose.probes import OFFSETS, layer_norm_probes, rms_norm_probes
from lnorm.diagnose.report import Finding, Measurement, Report
from lnorm.diagnose.subject import Call, Probe, Subject
from lnorm.diagnose.tolerance import RMS_TOLERANCE_BOUND

__all__ = [
    "CAST_FIRST_MATCH",
    "KINDS",
    "LAYER_NORM_DETECTORS",
    "OFFSETS",
    "RMS_KINDS",
    "RMS_NORM_DETECTORS",
    "RMS_TOLERANCE_BOUND",
    "ROUNDING_ORDER_KINDS",
    "Call",
    "ChannelsLast",
    "Context",
    "Finding",
    "Kind",
    "Measurement",
    "Probe",
    "Report",
    "Subject",
    "channels_last",
    "check",
    "fitted_denominator",
    "growth_exponent",
    "kind_info",
    "layer_norm_probes",
    "load",
    "main",
    "rms_norm_probes",
    "row_statistics",
]
