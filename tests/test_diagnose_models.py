"""lnorm.diagnose on normalization code as model repositories write it (issue 21).

The modules come from tests/norm_ports.py, ports of module kinds that widely used model code
ships: BERT's TF-style LayerNorm (eps as ``variance_epsilon``), the Annotated Transformer's
(``a_2``, ``b_2``, ``std + eps``), a float32-parameter LayerNorm fed 16-bit activations, T5's,
LLaMA's and Gemma's RMSNorms with their cast orders, ConvNeXt's channels-first LayerNorm. The
classes and functions below add modules with other parameter names or a hard-coded eps, and
kernels whose long-row path or backward is wrong. Correct ones must get no finding over several
seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lnorm import diagnose, errors

from diagnose_helpers import run_cli
from norm_ports import (
    AnnotatedLayerNorm,
    BertLayerNorm,
    ConvNeXtLayerNorm,
    Fp32LayerNorm,
    GemmaRMSNorm,
    LlamaRMSNorm,
    T5LayerNorm,
)

SEEDS = (0, 1, 2)


class GammaBetaLayerNorm(torch.nn.Module):
    """A correct LayerNorm whose parameters are ``gamma``/``beta`` and whose eps is ``epsilon``."""

    def __init__(self, n: int, epsilon: float = 1e-6):
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.ones(n))
        self.beta = torch.nn.Parameter(torch.zeros(n))
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.gamma.shape, self.gamma, self.beta, self.epsilon)


class OddNamesLayerNorm(GammaBetaLayerNorm):
    """The same, with parameters whose names say nothing: the affine step cannot be checked."""

    def __init__(self, n: int):
        super().__init__(n)
        self.p, self.q = self.gamma, self.beta
        del self.gamma, self.beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.p.shape, self.p, self.q, self.epsilon)


class HardCodedEpsLayerNorm(torch.nn.Module):
    """A LayerNorm without an eps attribute that uses 1e-6."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.bias = torch.nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-6)


def blocked_layer_norm(block: int = 1024, drop_tail: bool = False):
    """A LayerNorm that sums each row block by block, as a kernel does; with ``drop_tail`` the
    masked last block of an odd length is left out of the sums (a long-row bug)."""

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        shape = x.shape
        n = int(torch.tensor(normalized_shape).prod()) if normalized_shape else 1
        x32 = x.float().reshape(-1, n)
        stop = n - n % block if drop_tail and n > block and n % block else n
        count = stop
        mean = sum(x32[..., i : min(i + block, stop)].sum(-1, keepdim=True)
                   for i in range(0, stop, block)) / count
        c = x32 - mean
        var = sum((c[..., i : min(i + block, stop)] ** 2).sum(-1, keepdim=True)
                  for i in range(0, stop, block)) / count
        y = (c * torch.rsqrt(var + eps)).reshape(shape)
        y = y * weight if weight is not None else y
        y = y + bias if bias is not None else y
        return y.to(x.dtype)

    return layer_norm


def detached_layer_norm(what: str):
    """A LayerNorm whose forward is right and whose backward misses a term: the mean or rstd
    detached from the graph."""

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        x32 = x.float()
        dims = tuple(range(-len(normalized_shape), 0))
        mean = x32.mean(dims, keepdim=True)
        rstd = torch.rsqrt((x32 - mean).pow(2).mean(dims, keepdim=True) + eps)
        mean = mean.detach() if what == "mean" else mean
        rstd = rstd.detach() if what == "rstd" else rstd
        y = (x32 - mean) * rstd
        y = y * weight if weight is not None else y
        y = y + bias if bias is not None else y
        return y.to(x.dtype)

    return layer_norm


class _WrongDweight(torch.autograd.Function):
    """F.layer_norm forward, a hand-written backward whose dweight sums dy * x, not dy * x_hat."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return F.layer_norm(x, weight.shape, weight, bias, eps)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            y = F.layer_norm(x_, weight.shape, weight.detach(), None, ctx.eps)
            (dx,) = torch.autograd.grad(y, x_, dy)
        dweight = (dy * x).reshape(-1, weight.numel()).sum(0).reshape(weight.shape)
        dbias = dy.reshape(-1, weight.numel()).sum(0).reshape(weight.shape)
        return dx, dweight, dbias, None


def wrong_dweight_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    if weight is None or bias is None:
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    return _WrongDweight.apply(x, weight, bias, eps)


# -- item 1: modules as they are --------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_bert_variance_epsilon_is_its_own_eps(seed: int) -> None:
    # BERT computes in the input's dtype: meant for float32 (autocast runs it in float32).
    report = diagnose.check(BertLayerNorm(96), seed=seed, half=False)
    assert report.ok and report.kinds == [], str(report)
    assert not any("no eps attribute" in note for note in report.notes)


def test_eps_passed_overrides_the_attribute() -> None:
    report = diagnose.check(BertLayerNorm(96), eps=1e-5, half=False)
    assert report.kinds == ["eps_mismatch"], str(report)
    assert "passed as eps=" in report.findings[0].message


def test_a_module_without_eps_attribute_says_what_it_was_judged_against() -> None:
    report = diagnose.check(HardCodedEpsLayerNorm(64))
    assert report.kinds == ["eps_mismatch"], str(report)
    assert "no eps attribute: judged against 1e-5; pass eps=" in str(report)
    assert diagnose.check(HardCodedEpsLayerNorm(64), eps=1e-6).ok


@pytest.mark.parametrize("seed", SEEDS)
def test_parameters_under_other_names_are_recognised(seed: int) -> None:
    report = diagnose.check(GammaBetaLayerNorm(80), seed=seed)
    assert report.ok, str(report)
    assert "affine parameters: gamma multiplies and beta adds" in report.notes


def test_annotated_transformer_is_reported_with_its_two_mistakes() -> None:
    report = diagnose.check(AnnotatedLayerNorm(64), half=False)
    assert report.kinds == ["bessel_correction", "eps_outside_sqrt"], str(report)
    assert "a_2 multiplies and b_2 adds" in str(report)


def test_parameters_it_cannot_place_are_said_unchecked() -> None:
    report = diagnose.check(OddNamesLayerNorm(64))
    assert report.ok, str(report)
    assert any(note.startswith("affine not checked") for note in report.notes)


# -- item 2: mixed precision ------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_a_float32_parameter_module_fed_16_bit_input(seed: int) -> None:
    report = diagnose.check(Fp32LayerNorm(96), seed=seed)
    assert report.ok, str(report)
    assert any("checked with float32 parameters" in note for note in report.notes)


def test_a_converted_module_says_so() -> None:
    report = diagnose.check(torch.nn.LayerNorm(64))
    assert any("checked as module.to(dtype)" in note for note in report.notes)


# -- item 3: an RMSNorm checked as a LayerNorm ------------------------------------------------


@pytest.mark.parametrize("module", [torch.nn.RMSNorm(64), T5LayerNorm(64), LlamaRMSNorm(64)])
def test_an_rmsnorm_checked_as_layernorm_is_does_not_centre(module) -> None:
    report = diagnose.check(module)
    assert report.kinds == ["does_not_centre"], str(report)
    assert "norm='rms'" in str(report)


def test_rms_norm_function_checked_as_layernorm() -> None:
    def rms_as_layer(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        y = F.rms_norm(x, normalized_shape, weight, eps)
        return y if bias is None else y + bias

    assert diagnose.check(rms_as_layer).kinds == ["does_not_centre"]


# -- item 4: the reader's cast order ----------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "module, cast",
    [(LlamaRMSNorm(64), "llama"), (T5LayerNorm(64), "t5"), (GemmaRMSNorm(64), "gemma"),
     (torch.nn.RMSNorm(64, eps=1e-6), "torch")],
)
def test_each_model_checked_with_its_cast_order_has_no_finding(module, cast, seed) -> None:
    report = diagnose.check(module, norm="rms", cast=cast, seed=seed)
    assert report.ok and report.kinds == [], str(report)


def test_another_order_than_the_named_one_is_a_note_with_both_errors() -> None:
    report = diagnose.check(LlamaRMSNorm(64), norm="rms")  # cast="torch" by default
    assert report.ok and report.kinds == [] and not report.findings, str(report)
    assert [f.kind for f in report.note_findings] == ["cast_order"]
    assert report.tolerance is not None
    assert "note: cast_order:" in str(report) and "pass cast='llama'" in str(report)
    assert "no findings" in report.verdict()
    evidence = report.note_findings[0].evidence["by dtype"]["bfloat16"]
    assert evidence["outputs differing from multiply-first"] > 0.1
    assert evidence["outputs differing from cast-first"] <= 0.02
    torch_named_llama = diagnose.check(torch.nn.RMSNorm(64), norm="rms", cast="llama")
    assert torch_named_llama.ok and torch_named_llama.kinds == []
    assert [f.kind for f in torch_named_llama.note_findings] == ["cast_order"]


def test_gemma_without_its_cast_is_affine_wrong_with_the_hint() -> None:
    report = diagnose.check(GemmaRMSNorm(64), norm="rms")
    assert report.kinds == ["affine_wrong"], str(report)
    assert "cast='gemma'" in str(report)


def test_eps_default_mismatch_names_the_torch_change() -> None:
    def finfo_default(x, normalized_shape, weight=None, eps=None):
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        return F.rms_norm(x, normalized_shape, weight, eps)

    report = diagnose.check(finfo_default, norm="rms")
    assert report.kinds == ["eps_default_mismatch"], str(report)
    assert "pytorch#142848" in report.findings[0].message


# -- items 5 and 6: scope and layouts ---------------------------------------------------------


def test_normalized_shape_is_honoured_for_functions() -> None:
    report = diagnose.check(F.layer_norm, normalized_shape=768, half=False)
    assert report.ok, str(report)
    # a 1-d normalized_shape: no two-axis probe (5 x 16 = 80) beside the rows asked for
    assert "rows of 768, 4096, 4097" in str(report)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_blocked_kernel_is_right_on_long_rows(seed: int) -> None:
    assert diagnose.check(blocked_layer_norm(), seed=seed).ok


def test_a_long_row_bug_is_found() -> None:
    report = diagnose.check(blocked_layer_norm(drop_tail=True))
    assert report.kinds == ["wrong_long_rows"], str(report)
    assert "rows of 4097" in report.findings[0].message
    assert "rows of 4096" not in report.findings[0].message


@pytest.mark.parametrize(
    "what, matches",
    [("mean", "the mean treated as a constant"), ("rstd", "rstd treated as a constant")],
)
def test_a_detached_statistic_is_wrong_gradient(what: str, matches: str) -> None:
    report = diagnose.check(detached_layer_norm(what))
    assert report.kinds == ["wrong_gradient"], str(report)
    assert matches in report.findings[0].message


def test_dweight_of_x_not_x_hat_is_wrong_gradient() -> None:
    report = diagnose.check(wrong_dweight_layer_norm)
    assert report.kinds == ["wrong_gradient"], str(report)
    assert "dweight sums dy * x" in report.findings[0].message


def test_the_backward_is_checked_and_said_so() -> None:
    assert "backward: checked" in str(diagnose.check(F.layer_norm))
    assert "backward: checked" in str(diagnose.check(torch.nn.RMSNorm(64), norm="rms"))
    numpy = diagnose.check(lambda x, s, w=None, b=None, eps=1e-5: x, "numpy")
    assert "backward: not checked (NumPy has no autograd)" in numpy.notes


def test_rms_backward_with_rstd_detached() -> None:
    def rms(x, normalized_shape, weight=None, eps=None):
        x32 = x.float()
        eps = torch.finfo(torch.float32).eps if eps is None else eps
        dims = tuple(range(-len(normalized_shape), 0))
        rstd = torch.rsqrt(x32.pow(2).mean(dims, keepdim=True) + eps).detach()
        y = x32 * rstd
        return (y * weight if weight is not None else y).to(x.dtype)

    report = diagnose.check(rms, norm="rms")
    assert report.kinds == ["wrong_gradient"], str(report)


def test_channels_first_is_found_and_the_adapter_checks_it() -> None:
    report = diagnose.check(ConvNeXtLayerNorm(96))
    assert report.kinds == ["channels_first"], str(report)
    assert "diagnose.channels_last(module)" in str(report)
    # ConvNeXt computes in the input's dtype: meant for float32.
    assert diagnose.check(diagnose.channels_last(ConvNeXtLayerNorm(96)), half=False).ok


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_cuda() -> None:
    report = diagnose.check(F.layer_norm, device="cuda")
    assert report.ok, str(report)
    assert "on cuda" in str(report)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_a_device_torch_cannot_use_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="cannot run on device 'cuda'"):
        diagnose.check(F.layer_norm, device="cuda")


# -- items 7 and 8: the report and the command line -------------------------------------------


def test_the_clean_report_is_short() -> None:
    text = str(diagnose.check(F.layer_norm))
    lines = text.splitlines()
    # The verdict: on the name's line, or (a long name) its rest on the next.
    assert "no findings: on every probe it behaves as LayerNorm." in " ".join(text.split())
    assert lines[0].endswith("no findings:") or lines[0].endswith("LayerNorm.")
    code = "torch.testing.assert_close(mine, ref, rtol=0, atol="
    atol32 = float(f"{errors.one_rule_atol(5.0, math.sqrt(257)):.2g}")  # 3.3e-05
    assert f"tolerance (float32): {code}{atol32:.2g})" in lines
    assert f"tolerance (bfloat16): {code}0.039)" in lines
    assert f"tolerance (float16): {code}0.0049)" in lines
    # The tolerance lines carry their scope, and where to turn for other data.
    scope = " ".join(text.split("tolerance (float16)")[1].split("details:")[0].split())
    assert "valid for rows with |mean| <= 16 std, |y| <= 5, |weight| <= 1" in scope
    assert "layer_norm_atol(x, expected, weight, bias)" in scope
    assert len(lines) <= 10 and "measured in chapters 3 and 4" not in text
    assert max(len(line) for line in lines) <= 88
    details = " ".join(diagnose.check(F.layer_norm).details().split())
    assert "limits measured in chapters 3 and 4" in details
    assert "(2 + kappa) max|y| + 3 kappa max|w| = 138.2" in details


def test_cli_usage_errors_exit_2_in_one_line(tmp_path: Path) -> None:
    source = """
        import torch
        class Identity(torch.nn.Module):
            def forward(self, x):
                return x
        module = Identity()
    """
    for flags in (("module",), ("missing",), ("module", "--cast", "nope"),
                  ("module", "--eps", "many")):
        run = run_cli(tmp_path, source, *flags)
        assert run.returncode == 2, (flags, run.stdout, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_cli_flags(tmp_path: Path) -> None:
    source = """
        import torch
        class LlamaRMSNorm(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.ones(n))
            def forward(self, x):
                v = x.float().pow(2).mean(-1, keepdim=True)
                return self.weight * (x.float() * torch.rsqrt(v + 1e-6)).to(x.dtype)
        module = LlamaRMSNorm(64)
    """
    run = run_cli(tmp_path, source, "module", "--rms", "--eps", "1e-6", "--cast", "llama")
    assert run.returncode == 0 and "[" not in run.stdout.splitlines()[1], run.stdout
    noted = run_cli(tmp_path, source, "module", "--rms", "--eps", "1e-6")
    assert noted.returncode == 0 and "note: cast_order:" in noted.stdout, noted.stdout
    verbose = run_cli(tmp_path, "from torch.nn.functional import layer_norm\n", "layer_norm",
                   "--normalized-shape", "128", "--verbose", "--no-half")
    assert verbose.returncode == 0 and "measurements" in verbose.stdout, verbose.stdout
    assert "rows of 128, 4096, 4097" in verbose.stdout
