"""What an ML engineer trying the checker cold ran into: the tolerance per dtype, notes apart
from findings, a 1-d normalized_shape, 16-bit-only findings, and the command line's usage
errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lnorm.torch
from lnorm import diagnose, errors
from lnorm.diagnose import tolerance as tolerance_module

from diagnose_helpers import run_cli
from norm_ports import LlamaRMSNorm


# -- 1. the tolerance, per dtype ---------------------------------------------------------------


def test_the_tolerance_is_given_per_probed_dtype() -> None:
    report = diagnose.check(F.layer_norm)
    assert set(report.tolerances) == {"float32", "float16", "bfloat16"}
    atol32 = report.tolerances["float32"][1]
    assert report.tolerance == report.tolerances["float32"]
    for dtype in ("float16", "bfloat16"):
        # float32's tolerance plus one 16-bit eps x max|y| (|y| <= 5)
        expected = atol32 + torch.finfo(getattr(torch, dtype)).eps * 5
        assert report.tolerances[dtype][1] == pytest.approx(expected, rel=0.05)
    text = str(report)
    assert "tolerance (float32): torch.testing.assert_close" in text
    assert "tolerance (bfloat16): torch.testing.assert_close" in text
    float32_only = diagnose.check(F.layer_norm, half=False)
    assert list(float32_only.tolerances) == ["float32"]


def test_the_float32_tolerance_is_chapter_3s_limit_from_lnorm_errors() -> None:
    """The scope's kappa = sqrt(257), max|y| = 5, |weight| <= 1: torch's class gets the one rule
    (twice torch's limit, errors.one_rule_atol); lnorm's class its 2.5 max|y| (lnorm.torch's
    measured limit, chapter 3) plus torch's limit; both in float32 eps, absolute, rounded to two
    digits. torch's limit is (2 + kappa) max|y| + 3 kappa max|w| = 138.2 eps here."""
    kappa, max_y = math.sqrt(257), 5.0
    eps32 = float(np.finfo(np.float32).eps)
    torch_limit = errors.torch_limit(max_y, kappa)
    assert tolerance_module.torch_class_limit(tolerance_module.TOLERANCE_KAPPA) == torch_limit
    grows = float(f"{errors.one_rule_atol(max_y, kappa):.2g}")
    assert abs(torch_limit - ((2 + 16.03) * 5 + 3 * 16.03)) < 0.02
    assert tolerance_module.FLAT_CLASS_UNITS == 2.5
    flat = float(f"{(2.5 * max_y + torch_limit) * eps32:.2g}")
    assert diagnose.check(F.layer_norm, half=False).tolerance == (0.0, grows)
    assert diagnose.check(lnorm.torch.layer_norm, half=False).tolerance == (0.0, flat)
    assert (grows, flat) == (3.3e-05, 1.8e-05)


def test_the_float32_tolerance_holds_on_two_valued_rows() -> None:
    """Rows mean +- 1 (max|y| = 1), the rows that broke the old limit 2 + kappa units, with
    means 2^k * {1.0001, 1.3, 1.9} inside the scope (kappa <= 16.03): torch's kernel stays
    within the tolerance of lnorm's and of a textbook two-pass."""
    means = [2.0**k * f for k in range(4) for f in (1.0001, 1.3, 1.9)]
    signs = np.where(np.arange(256) % 2 == 0, 1.0, -1.0)
    x = torch.tensor(np.array([m + signs for m in means]), dtype=torch.float32)
    torch_y = F.layer_norm(x, (256,))
    mean = x.mean(-1, keepdim=True)
    two_pass = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + 1e-5)
    grows = diagnose.check(F.layer_norm, half=False).tolerance[1]
    flat = diagnose.check(lnorm.torch.layer_norm, half=False).tolerance[1]
    torch.testing.assert_close(torch_y, two_pass, rtol=0, atol=grows)
    torch.testing.assert_close(torch_y, lnorm.torch.layer_norm(x, (256,)), rtol=0, atol=flat)


def test_the_bfloat16_tolerance_passes_a_llama_rmsnorm_against_torchs() -> None:
    """The user's case: LLaMA's RMSNorm in bfloat16 against F.rms_norm failed atol=3e-6."""
    report = diagnose.check(LlamaRMSNorm(4096), norm="rms", cast="llama")
    assert report.ok and report.kinds == [], str(report)
    rtol, atol = report.tolerances["bfloat16"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4096, generator=gen).to(torch.bfloat16)
    module = LlamaRMSNorm(4096).to(torch.bfloat16)
    with torch.no_grad():
        module.weight.copy_(torch.empty(4096).uniform_(0.5, 1.2, generator=gen))
        mine = module(x)
        ref = F.rms_norm(x, (4096,), module.weight, 1e-6)
    assert (mine != ref).float().mean() > 0.05  # the two orders differ in many outputs ...
    torch.testing.assert_close(mine, ref, rtol=rtol, atol=atol)  # ... within the tolerance
    with pytest.raises(AssertionError):
        torch.testing.assert_close(mine, ref, rtol=0, atol=report.tolerances["float32"][1])


# -- 2. notes are not findings -----------------------------------------------------------------


def test_a_cast_order_is_a_note_not_a_finding() -> None:
    report = diagnose.check(LlamaRMSNorm(64), norm="rms")  # cast="torch"
    assert report.ok and report.kinds == [] and report.findings == ()
    assert any(note.startswith("cast_order: ") for note in report.notes)
    assert "pass cast='llama'" in str(report) and "no findings" in report.verdict()
    assert "as cast='torch' says" not in str(report)
    details = report.details()
    assert "(a finding when > 0.1)" not in details
    assert "cast_order: fraction of 16-bit outputs" in details and "noted when > 0.1" in details


# -- 3. a 1-d normalized_shape; wrong_axis does not block the backward -------------------------


def _last_dim_rms_with_detached_rstd(x, normalized_shape, weight=None, eps=None):
    """An RMSNorm of the last dimension only, whose backward is wrong (rstd detached)."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    x32 = x.float()
    rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps).detach()
    y = x32 * rstd
    return (y if weight is None else y * weight.float()).to(x.dtype)


def test_a_1d_normalized_shape_skips_the_two_axis_probe() -> None:
    report = diagnose.check(_last_dim_rms_with_detached_rstd, norm="rms", normalized_shape=4096,
                            half=False)
    assert report.kinds == ["wrong_gradient"], str(report)
    assert "rows of 4096, 4097" in str(report) and "80" not in report.notes[-1]


def test_wrong_axis_alone_does_not_block_the_backward_check() -> None:
    report = diagnose.check(_last_dim_rms_with_detached_rstd, norm="rms", half=False)
    assert report.kinds == ["wrong_axis", "wrong_gradient"], str(report)
    assert not any("backward: not checked" in note for note in report.notes)
    right_forward = diagnose.check(
        lambda x, shape, weight=None, eps=None: F.rms_norm(x, shape[-1:], weight, eps),
        norm="rms", half=False,
    )
    assert right_forward.kinds == ["wrong_axis"], str(right_forward)
    assert "backward: checked (dx, dweight against float64)" in right_forward.notes


def test_the_cli_normalized_shape_skips_the_two_axis_probe(tmp_path: Path) -> None:
    run = run_cli(tmp_path, "from torch.nn.functional import rms_norm\n", "rms_norm", "--rms",
               "--normalized-shape", "4096", "--no-half")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rows of 4096, 4097" in run.stdout and " 80," not in run.stdout


# -- 4. a 16-bit-only finding ------------------------------------------------------------------


class Float16StatisticsLayerNorm(torch.nn.LayerNorm):
    """A BERT-style LayerNorm that computes its mean and variance in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight.to(x.dtype) + self.bias.to(x.dtype)


def test_a_16bit_only_finding_says_float32_is_correct() -> None:
    report = diagnose.check(Float16StatisticsLayerNorm(64))
    assert report.kinds == ["low_precision_accumulation"], str(report)
    verdict = " ".join(report.verdict().split())
    assert "correct in float32; in float16/bfloat16: 1 finding" in verdict
    assert "a unit is the 16-bit eps x max|y|" in verdict and "not LayerNorm yet" not in verdict
    assert "tolerance (float32)" in str(report) and "tolerance (float16)" not in str(report)
    assert not report.ok


# -- 5. the command line -----------------------------------------------------------------------


def test_cast_without_rms_is_a_usage_error(tmp_path: Path) -> None:
    run = run_cli(tmp_path, "from torch.nn.functional import layer_norm\n", "layer_norm",
               "--cast", "llama")
    assert run.returncode == 2 and "--cast" in run.stderr and "--rms" in run.stderr


def test_a_factory_function_is_a_usage_error(tmp_path: Path) -> None:
    source = """
        import torch
        def make_norm():
            return torch.nn.LayerNorm(64)
    """
    run = run_cli(tmp_path, source, "make_norm")
    assert run.returncode == 2, run.stdout + run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "nn.Module instance" in run.stderr
    assert "F.layer_norm's" in run.stderr and "[raises]" not in run.stdout

    def factory():
        return torch.nn.LayerNorm(64)

    with pytest.raises(TypeError, match="nn.Module instance"):
        diagnose.check(factory)


def test_the_verdict_stays_on_the_names_line_when_it_fits(tmp_path: Path) -> None:
    source = "import torch\nbert_inst = torch.nn.LayerNorm(64)\n"
    run = run_cli(tmp_path, source, "bert_inst", "--no-half")
    first = run.stdout.splitlines()[0]  # the file's name, not its whole path, heads the report
    assert run.returncode == 0 and first == (
        "mine.py:bert_inst (torch): no findings: on every probe it behaves as LayerNorm."
    ), run.stdout
    report = diagnose.check(torch.nn.LayerNorm(64), name="bert_inst", half=False)
    assert report.verdict() == (
        "bert_inst (torch): no findings: on every probe it behaves as LayerNorm."
    )
