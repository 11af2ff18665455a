"""lnorm.diagnose.check(fn, norm="rms"): every RMSNorm finding kind on an implementation with
exactly that bug, in torch and NumPy, and no finding on correct implementations.

The hand-written implementations below are one RMSNorm, written once against a few array
operations (``Ops`` of tests/diagnose_helpers.py) so that each bug exists in both frameworks in
the same words; the modules LLaMA, T5 and Gemma ship come from tests/norm_ports.py.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lnorm.numpy
import lnorm.torch
from lnorm import diagnose

from diagnose_helpers import Ops, reduction_axes, run_cli
from norm_ports import GemmaRMSNorm, LlamaRMSNorm, T5LayerNorm

FLOAT32_EPS = 2.0**-23


def hand_written_rms(bug: str = "none", framework: str = "torch") -> Callable:
    """A plain RMSNorm computed in float32, with the one mistake named by ``bug``."""
    ops = Ops(framework)

    def rms_norm(x, normalized_shape, weight=None, eps=None):
        dims = reduction_axes(bug, x, normalized_shape)
        if bug == "only_2d" and x.ndim != 2:
            raise ValueError("expected a 2-d input")
        if eps is None and bug != "none_crashes":  # torch's default
            eps = {"default_1e-6": 1e-6, "dtype_eps": ops.machine_eps(x)}.get(bug, FLOAT32_EPS)
        if bug == "hard_coded_1e-6":
            eps = 1e-6
        work = x if bug == "sixteen_bit" else ops.float32(x)
        if bug == "batch_scale":  # "scale the batch by a power of two against overflow"
            largest = ops.largest_magnitude(work)
            if not math.isfinite(largest):  # a NaN or inf anywhere: NaN everywhere
                scale = math.nan
            else:
                scale = 2.0 ** -math.ceil(math.log2(largest)) if largest > 0 else 1.0
            work, eps = work * scale, eps * scale * scale  # exact: RMSNorm is scale-invariant
        if bug == "weight_first" and weight is not None:
            work = work * ops.float32(weight)
        if bug == "centres":  # a LayerNorm
            work = work - ops.mean(work, dims)
        mean_square = ops.mean(work * work, dims)
        if bug == "eps_outside":
            y = work / (ops.sqrt(mean_square) + eps)
        elif bug == "no_eps":
            y = work * ops.rsqrt(mean_square)
        else:
            y = work * ops.rsqrt(mean_square + eps)
        if bug == "scaled":
            y = y * 0.999
        if weight is not None and bug not in ("weight_ignored", "weight_first"):
            if bug == "cast_first":  # LLaMA's order: round x_hat to 16 bits, then multiply
                y = ops.cast(y, x) * weight
            elif bug == "one_plus_weight":
                y = y * (1.0 + ops.float32(weight))
            else:
                y = y * (weight if bug == "sixteen_bit" else ops.float32(weight))
        if bug == "mutates":
            ops.zero_(x)
        return y if bug == "float32_out" else ops.cast(y, x)

    rms_norm.__name__ = f"{framework}_{bug}"
    return rms_norm


class HandWrittenRMSModule(torch.nn.Module):
    """A reader's RMSNorm module: torch.nn.RMSNorm's attributes, the hand-written formula."""

    def __init__(self, n: int, bug: str = "none", eps: float | None = None):
        super().__init__()
        self.normalized_shape = (n,)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.formula = hand_written_rms(bug, "torch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.formula(x, self.normalized_shape, self.weight, self.eps)


CORRECT = {
    "F.rms_norm": (F.rms_norm, "torch"),
    "nn.RMSNorm(64)": (torch.nn.RMSNorm(64), "torch"),
    "nn.RMSNorm(64, eps=1e-6)": (torch.nn.RMSNorm(64, eps=1e-6), "torch"),
    "nn.RMSNorm((4, 24))": (torch.nn.RMSNorm((4, 24)), "torch"),
    "nn.RMSNorm(32), no affine": (torch.nn.RMSNorm(32, elementwise_affine=False), "torch"),
    "nn.RMSNorm(48).half()": (torch.nn.RMSNorm(48).half(), "torch"),
    "lnorm.torch": (lnorm.torch.rms_norm, "torch"),
    "lnorm.numpy": (lnorm.numpy.rms_norm, "numpy"),
    "hand-written, torch": (hand_written_rms("none", "torch"), "torch"),
    "hand-written, numpy": (hand_written_rms("none", "numpy"), "numpy"),
    "hand-written module": (HandWrittenRMSModule(96), "torch"),
    "hand-written module, eps=1e-6": (HandWrittenRMSModule(96, eps=1e-6), "torch"),
}
if importlib.util.find_spec("triton") is not None:  # Linux only; conftest.py set its interpreter
    import lnorm.triton

    CORRECT["lnorm.triton"] = (lnorm.triton.rms_norm, "torch")


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_implementations_have_no_finding(name: str) -> None:
    fn, framework = CORRECT[name]
    report = diagnose.check(fn, framework, norm="rms")
    assert report.ok, str(report)
    rtol, atol = report.tolerance
    assert rtol == 0 and 1e-6 < atol < 1e-4
    text = " ".join(str(report).split())
    assert "no findings: on every probe it behaves as RMSNorm" in text
    assert "valid for outputs |y| <= 5 at any mean" in text  # the tolerance's scope


@pytest.mark.parametrize("seed", range(1, 6))
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_no_false_alarm_on_other_inputs(seed: int, framework: str) -> None:
    """Other seeds draw other probes: a correct float32 RMSNorm is never flagged."""
    assert diagnose.check(hand_written_rms("none", framework), framework, norm="rms", seed=seed).ok
    if framework == "torch":
        for fn in (F.rms_norm, lnorm.torch.rms_norm, torch.nn.RMSNorm(64)):
            report = diagnose.check(fn, norm="rms", seed=seed)
            assert report.ok, str(report)
    else:
        assert diagnose.check(lnorm.numpy.rms_norm, "numpy", norm="rms", seed=seed).ok


#: Each bug and the one kind it must be reported as.
SINGLE_BUGS = {
    "hard_coded_1e-6": "eps_mismatch",
    "default_1e-6": "eps_default_mismatch",
    "dtype_eps": "eps_default_mismatch",
    "eps_outside": "eps_outside_sqrt",
    "no_eps": "eps_ignored",
    "channels_axis": "wrong_axis",
    "batch_axis": "wrong_axis",
    "last_axis_only": "wrong_axis",
    "weight_ignored": "affine_wrong",
    "one_plus_weight": "affine_wrong",
    "weight_first": "affine_wrong",
    "sixteen_bit": "low_precision_accumulation",
    "cast_first": "cast_order",
    "centres": "centres_rows",
    "mutates": "mutates_input",
    "float32_out": "dtype_changed",
    "batch_scale": "nan_spreads",
    "only_2d": "raises",
    "none_crashes": "raises",
    "scaled": "wrong_output",
}


@pytest.mark.parametrize("framework", ["torch", "numpy"])
@pytest.mark.parametrize("bug", sorted(SINGLE_BUGS))
def test_a_single_bug_is_reported_as_its_kind_alone(bug: str, framework: str) -> None:
    report = diagnose.check(hand_written_rms(bug, framework), framework, norm="rms")
    kind = SINGLE_BUGS[bug]
    is_note = kind in diagnose.ROUNDING_ORDER_KINDS
    # An order of roundings is a note, not a finding: the report stays ok (issue 21, item 4).
    assert report.kinds == ([] if is_note else [kind]), str(report)
    assert [f.kind for f in report.note_findings] == ([kind] if is_note else [])
    assert report.ok == is_note
    # A cast order leaves float32 outputs alone, and 16-bit statistics the float32 path: a
    # float32 tolerance stands.
    half_only = kind == "low_precision_accumulation"
    assert (report.tolerance is None) == (not is_note and not half_only)
    assert (f"note: {kind}:" if is_note else f"[{kind}]") in str(report)


@pytest.mark.parametrize(
    "module, kind",
    [
        (LlamaRMSNorm(64), "cast_order"),
        (T5LayerNorm(64), "cast_order"),
        (GemmaRMSNorm(64), "affine_wrong"),
        (HandWrittenRMSModule(96, "default_1e-6"), "eps_default_mismatch"),
        (HandWrittenRMSModule(96, "sixteen_bit"), "low_precision_accumulation"),
        (HandWrittenRMSModule(96, "centres"), "centres_rows"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_a_module_with_a_bug(module: torch.nn.Module, kind: str) -> None:
    report = diagnose.check(module, norm="rms")
    if kind in diagnose.ROUNDING_ORDER_KINDS:  # a note
        assert report.kinds == [] and [f.kind for f in report.note_findings] == [kind]
    else:
        assert report.kinds == [kind]


def test_llama_module_reads_variance_epsilon() -> None:
    """LLaMA's 1e-6 is its own eps, not a mismatch: only the cast order is reported."""
    report = diagnose.check(LlamaRMSNorm(64, eps=1e-6), norm="rms")
    assert report.kinds == [] and [f.kind for f in report.note_findings] == ["cast_order"]
    evidence = report.note_findings[0].evidence["by dtype"]["bfloat16"]
    # chapter 10: a quarter of the outputs differ, each by one ulp; they match cast-first
    assert 0.15 < evidence["outputs differing from multiply-first"] < 0.40
    assert evidence["largest ulps"] == 1
    assert evidence["outputs differing from cast-first"] <= diagnose.CAST_FIRST_MATCH


def test_eps_evidence_estimates_the_eps_used() -> None:
    default = diagnose.check(hand_written_rms("default_1e-6"), norm="rms").findings[0]
    assert default.evidence["eps used with eps=None, by input dtype"]["float32"] == pytest.approx(
        1e-6, rel=1e-2
    )
    own = diagnose.check(hand_written_rms("dtype_eps"), norm="rms").findings[0]
    used = own.evidence["eps used with eps=None, by input dtype"]
    assert "float32" not in used  # float32's own eps is torch's
    assert used["float16"] == pytest.approx(2.0**-10, rel=1e-2)
    assert used["bfloat16"] == pytest.approx(2.0**-7, rel=1e-2)
    hard = diagnose.check(hand_written_rms("hard_coded_1e-6"), norm="rms").findings[0]
    assert hard.evidence["eps passed -> eps used"] == pytest.approx(
        {"1e-05": 1e-6, "0.001": 1e-6, "None": 1e-6}, rel=1e-2
    )


def test_affine_wrong_says_which() -> None:
    one_plus = diagnose.check(hand_written_rms("one_plus_weight"), norm="rms").findings[0]
    assert "(1 + weight)" in one_plus.message
    ignored = diagnose.check(hand_written_rms("weight_ignored"), norm="rms").findings[0]
    assert "weight ignored" in ignored.message


def test_low_precision_evidence() -> None:
    evidence = diagnose.check(hand_written_rms("sixteen_bit"), norm="rms").findings[0].evidence
    overflow = evidence["by input"]["float16 overflow (rms 300: squares above 65504)"]
    assert overflow["outputs differing"] == 1.0


def test_check_is_fast() -> None:
    """Under 2 s per implementation on one core; a few hundredths of a second in fact."""
    import time

    for fn, framework in (
        (F.rms_norm, "torch"),
        (hand_written_rms("sixteen_bit"), "torch"),
        (hand_written_rms("none", "numpy"), "numpy"),
    ):
        start = time.perf_counter()
        diagnose.check(fn, framework, norm="rms")
        assert time.perf_counter() - start < 2.0


def test_cli_rms(tmp_path: Path) -> None:
    correct = run_cli(
        tmp_path,
        """
        import numpy as np

        def rms_norm(x, normalized_shape, weight=None, eps=None):
            axes = tuple(range(-len(normalized_shape), 0))
            eps = np.finfo(np.float32).eps if eps is None else eps
            x32 = x.astype(np.float32)
            y = x32 / np.sqrt((x32 * x32).mean(axis=axes, keepdims=True) + eps)
            if weight is not None:
                y = y * weight.astype(np.float32)
            return y.astype(x.dtype)
        """,
        "rms_norm",
        "--rms",
        "--numpy",
    )
    assert correct.returncode == 0, correct.stdout + correct.stderr
    assert "no findings: on every probe it behaves as RMSNorm" in " ".join(correct.stdout.split())

    model_code = run_cli(
        tmp_path,
        """
        import torch

        def rms_norm(x, normalized_shape, weight=None, eps=None):
            x32 = x.float()
            x_hat = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)
            return x_hat.to(x.dtype) if weight is None else weight * x_hat.to(x.dtype)
        """,
        "rms_norm",
        "--rms",
    )
    assert model_code.returncode == 1, model_code.stdout + model_code.stderr
    assert "[eps_mismatch]" in model_code.stdout and "note: cast_order:" in model_code.stdout
