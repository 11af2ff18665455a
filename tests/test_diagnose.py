"""lnorm.diagnose: every finding kind on an implementation with exactly that bug, in torch and
NumPy, and no finding on correct implementations.

The hand-written implementations below are one LayerNorm, written once against a few array
operations (``Ops`` of tests/diagnose_helpers.py) so that each bug exists in both frameworks in
the same words.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lnorm.numpy
import lnorm.torch
from lnorm import diagnose

from conftest import HAVE_TRITON
from diagnose_helpers import Ops, reduction_axes, run_cli


def hand_written(bug: str = "none", framework: str = "torch") -> Callable:
    """A plain LayerNorm computed in float32, with the one mistake named by ``bug``."""
    ops = Ops(framework)

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        dims = reduction_axes(bug, x, normalized_shape)
        if bug == "only_2d" and x.ndim != 2:
            raise ValueError("expected a 2-d input")
        work = x if bug == "sixteen_bit" else ops.float32(x)
        if bug == "batch_shift":  # "subtract the batch mean first, for accuracy"
            work = work - ops.global_mean(work)
        if bug == "affine_first":
            work = work * (1.0 if weight is None else weight) + (0.0 if bias is None else bias)
        mean = ops.mean(work, dims)
        if bug == "one_pass":
            var = ops.mean(work * work, dims) - mean * mean
        else:
            var = ops.var(work, dims, unbiased=bug == "bessel")
        used_eps = {"eps_1e-12": 1e-12, "keras_eps": 1e-3, "eps_1e-5": 1e-5}.get(bug, eps)
        if bug == "eps_outside":
            y = (work - mean) / (ops.sqrt(var) + eps)
        elif bug == "no_eps":
            y = (work - mean) / ops.sqrt(var)
        else:
            y = (work - mean) / ops.sqrt(var + used_eps)
        if bug == "scaled":
            y = y * 0.999
        if bug == "swapped":
            weight, bias = bias, weight
        if bug == "no_bias":
            bias = None
        if weight is not None and bug != "affine_first":
            y = y * ops.cast(weight, y)
        if bias is not None and bug != "affine_first":
            y = y + ops.cast(bias, y)
        if bug == "mutates":
            ops.zero_(x)
        return y if bug == "float32_out" else ops.cast(y, x)

    layer_norm.__name__ = f"{framework}_{bug}"
    return layer_norm


class HandWrittenModule(torch.nn.Module):
    """A reader's LayerNorm module: torch.nn.LayerNorm's attributes, the hand-written formula."""

    def __init__(self, n: int, bug: str = "none"):
        super().__init__()
        self.normalized_shape = (n,)
        self.eps = 1e-5
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.bias = torch.nn.Parameter(torch.zeros(n))
        self.formula = hand_written(bug, "torch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.formula(x, self.normalized_shape, self.weight, self.bias, self.eps)


CORRECT = {
    "F.layer_norm": (F.layer_norm, "torch"),
    "nn.LayerNorm(64)": (torch.nn.LayerNorm(64), "torch"),
    "nn.LayerNorm((4, 24))": (torch.nn.LayerNorm((4, 24)), "torch"),
    "nn.LayerNorm(32), no affine": (torch.nn.LayerNorm(32, elementwise_affine=False), "torch"),
    "nn.LayerNorm(48).half()": (torch.nn.LayerNorm(48).half(), "torch"),
    "lnorm.torch": (lnorm.torch.layer_norm, "torch"),
    "lnorm.numpy": (lnorm.numpy.layer_norm, "numpy"),
    "hand-written, torch": (hand_written("none", "torch"), "torch"),
    "hand-written, numpy": (hand_written("none", "numpy"), "numpy"),
    "hand-written module": (HandWrittenModule(96), "torch"),
}
if HAVE_TRITON:  # Linux only; tests/conftest.py has switched Triton's interpreter on
    import lnorm.triton

    CORRECT["lnorm.triton"] = (lnorm.triton.layer_norm, "torch")


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_implementations_have_no_finding(name: str) -> None:
    fn, framework = CORRECT[name]
    report = diagnose.check(fn, framework)
    assert report.ok, str(report)
    rtol, atol = report.tolerance
    assert rtol == 0 and 1e-6 < atol < 1e-4
    assert 0 < report.envelope_ratio <= 1  # within its class's measured envelope
    assert "no findings" in str(report)


@pytest.mark.parametrize("seed", range(1, 6))
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_no_false_alarm_on_other_inputs(seed: int, framework: str) -> None:
    """Other seeds draw other probes: a correct float32 two-pass is never flagged."""
    assert diagnose.check(hand_written("none", framework), framework, seed=seed).ok
    if framework == "torch":
        assert diagnose.check(F.layer_norm, seed=seed).ok


#: Each bug and the one kind it must be reported as.
SINGLE_BUGS = {
    "bessel": "bessel_correction",
    "eps_outside": "eps_outside_sqrt",
    "eps_1e-12": "eps_mismatch",
    "keras_eps": "eps_mismatch",
    "eps_1e-5": "eps_mismatch",  # a hard-coded default ignores the eps passed
    "one_pass": "one_pass_variance",
    "channels_axis": "wrong_axis",
    "batch_axis": "wrong_axis",
    "last_axis_only": "wrong_axis",
    "swapped": "affine_wrong",
    "no_bias": "affine_wrong",
    "affine_first": "affine_wrong",
    "sixteen_bit": "low_precision_accumulation",
    "mutates": "mutates_input",
    "float32_out": "dtype_changed",
    "batch_shift": "nan_spreads",
    "no_eps": "eps_ignored",
    "only_2d": "raises",
    "scaled": "wrong_output",
}


@pytest.mark.parametrize("framework", ["torch", "numpy"])
@pytest.mark.parametrize("bug", sorted(SINGLE_BUGS))
def test_a_single_bug_is_reported_as_its_kind_alone(bug: str, framework: str) -> None:
    report = diagnose.check(hand_written(bug, framework), framework)
    assert report.kinds == [SINGLE_BUGS[bug]], str(report)
    # A 16-bit-only mistake leaves the float32 path right: its float32 tolerance is given.
    assert (report.tolerance is None) == (SINGLE_BUGS[bug] != "low_precision_accumulation")
    assert not report.ok
    assert f"[{SINGLE_BUGS[bug]}]" in str(report)


@pytest.mark.parametrize(
    "bug, kind",
    [("bessel", "bessel_correction"), ("sixteen_bit", "low_precision_accumulation")],
)
def test_a_module_with_a_bug(bug: str, kind: str) -> None:
    assert diagnose.check(HandWrittenModule(96, bug)).kinds == [kind]


def test_bessel_evidence_names_n_and_the_factor() -> None:
    finding = diagnose.check(hand_written("bessel")).findings[0]
    n = finding.evidence["N"]
    assert n == 64
    assert abs(finding.evidence["measured factor"] - math.sqrt((n - 1) / n)) < 1e-6


@pytest.mark.parametrize("bug, used", [("eps_1e-12", 1e-12), ("keras_eps", 1e-3)])
def test_eps_mismatch_estimates_the_eps_used(bug: str, used: float) -> None:
    evidence = diagnose.check(hand_written(bug)).findings[0].evidence
    estimates = evidence["eps passed -> eps used"]
    passed = "1e-05" if used != 1e-5 else "0.001"
    assert estimates[passed] == pytest.approx(used, rel=1e-2)


def test_eps_outside_estimates_the_eps_added_to_std() -> None:
    evidence = diagnose.check(hand_written("eps_outside")).findings[0].evidence
    assert evidence["estimated eps (added to std)"] == pytest.approx(
        evidence["eps passed"], rel=1e-2
    )


def test_one_pass_evidence_is_quadratic_growth() -> None:
    evidence = diagnose.check(hand_written("one_pass", "numpy"), "numpy").findings[0].evidence
    assert 1.5 < evidence["growth exponent (means 16-1024)"] < 2.5
    errors = evidence["relative error of d"]
    assert errors[-1] > 100 * errors[2]  # 64 times the mean, 4096 times the error


def test_tensorflow_style_has_both_bugs() -> None:
    """torch.std (Bessel) and eps added to it: two mistakes, two findings."""

    def tensorflow_style(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        dims = tuple(range(-len(normalized_shape), 0))
        mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)
        y = (x - mean) / (std + eps)
        return y if weight is None else y * weight + bias

    report = diagnose.check(tensorflow_style, half=False)
    assert report.kinds == ["bessel_correction", "eps_outside_sqrt"]


def test_a_function_that_always_raises_gets_one_finding() -> None:
    def broken(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        raise RuntimeError("not implemented")

    report = diagnose.check(broken)
    assert report.kinds == ["raises"]
    assert "RuntimeError: not implemented" in str(report)


@pytest.mark.parametrize(
    "norm, module_class",
    [("layer", torch.nn.LayerNorm), ("rms", torch.nn.RMSNorm)],
    ids=["LayerNorm", "RMSNorm"],
)
def test_the_checker_never_changes_the_readers_module(norm: str, module_class: type) -> None:
    module = module_class(16)
    with torch.no_grad():
        module.weight.fill_(3.0)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    assert diagnose.check(module, norm=norm).ok
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    assert module.weight.dtype == torch.float32


def test_unknown_norm_framework_and_arguments() -> None:
    with pytest.raises(NotImplementedError):
        diagnose.check(F.layer_norm, norm="batch")
    with pytest.raises(ValueError, match="framework"):
        diagnose.check(F.layer_norm, "jax")
    with pytest.raises(TypeError):
        diagnose.check(42)


def test_cli_exit_codes(tmp_path: Path) -> None:
    correct = run_cli(
        tmp_path,
        """
        import numpy as np

        def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
            axes = tuple(range(-len(normalized_shape), 0))
            x32 = x.astype(np.float32)
            mean = x32.mean(axis=axes, keepdims=True)
            y = (x32 - mean) / np.sqrt(x32.var(axis=axes, keepdims=True) + eps)
            if weight is not None:
                y = y * weight
            if bias is not None:
                y = y + bias
            return y.astype(x.dtype)
        """,
        "layer_norm",
        "--numpy",
    )
    assert correct.returncode == 0, correct.stdout + correct.stderr
    assert "no findings" in correct.stdout

    forum = run_cli(
        tmp_path,
        """
        import torch

        def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
            dims = tuple(range(-len(normalized_shape), 0))
            mean = torch.mean(x, dim=dims, keepdim=True)
            var = torch.var(x, dim=dims, keepdim=True)
            return (x - mean) / torch.sqrt(var + eps)
        """,
        "layer_norm",
        "--no-half",
    )
    assert forum.returncode == 1, forum.stdout + forum.stderr
    assert "[bessel_correction]" in forum.stdout


def test_cli_usage_errors_exit_with_2(tmp_path: Path) -> None:
    path = tmp_path / "empty.py"
    path.write_text("")
    for target in (f"{path}:missing", f"{tmp_path / 'absent.py'}:layer_norm", "no-colon"):
        with pytest.raises(SystemExit) as exited:
            diagnose.main([target])
        assert exited.value.code == 2
