"""The precision policy (THEORY §7): float64 end to end on float32 models that are never cast, TF32 off
while measuring, and every report stating the policy and its tolerances."""

import copy

import torch
from cases import CASES, IO_CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD

from diagnostics import check_alignment, check_cms, jacobian, reference_jacobian
from diagnostics.engine import FunctionalModel

F64 = torch.float64
ATOL = 1e-10


def test_float64_end_to_end_on_a_float32_model():
    case = CASES["mlp"]
    model, x = case.model(torch.float32), case.data(5, torch.float32)
    J = jacobian(model, x, dtype=F64)
    assert J.dtype == F64
    assert next(model.parameters()).dtype == torch.float32  # the model is never cast
    J_ref = reference_jacobian(case.model(F64), x.double())
    torch.testing.assert_close(J, J_ref, rtol=0, atol=1e-6)


@ONE_THREAD
@NO_VMAP_FALLBACK_WARNING
def test_float64_end_to_end_on_a_float32_transformer():
    case = IO_CASES["transformer-dict"]
    model, batch = case.model(torch.float32), case.data(3)
    J = jacobian(model, batch, output="logits", dtype=F64, strategy="jacrev")
    assert J.dtype == F64
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model is never cast
    J_ref = reference_jacobian(copy.deepcopy(model).double(), batch, output="logits")
    torch.testing.assert_close(J, J_ref, rtol=0, atol=ATOL)
    report = check_alignment(model, (batch, torch.tensor([0, 1, 2])), loss="ce", output="logits", dtype=F64)
    assert report.dtype == "float64" and report.rank_rule == "λ_max · nm · eps(float64)"
    man = report.manifest
    assert (man.model_dtype, man.compute_dtype) == ("float32", "float64")
    assert "computed in float64 (the model itself is not cast)" in str(report)


@ONE_THREAD
@NO_VMAP_FALLBACK_WARNING
def test_tf32_is_off_while_measuring_and_the_users_switches_come_back():
    model = CASES["mlp"].model()
    fm = FunctionalModel(model)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        with fm.measuring():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        report = check_alignment(model, (CASES["mlp"].data(6), torch.randn(6, 3, dtype=F64)))
        assert "the user's switches (matmul=True, cudnn=True) restored" in report.manifest.tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@ONE_THREAD
@NO_VMAP_FALLBACK_WARNING
def test_every_report_states_the_precision_policy_and_tolerance():
    case = CASES["mlp"]
    model, x = case.model(torch.float32), case.data(8, torch.float32)
    report = check_alignment(model, (x, torch.randint(0, 3, (8,))), loss="ce", dtype=torch.float32)
    assert report.dtype == "float32" and not report.precision_note  # float32 decides it here: no re-measurement
    text = str(report)
    for phrase in ("TF32 off while measuring", "decomposed in float64", "λ_max · nm · eps(float32)",
                   "λ_min", "RuntimeWarning when λ_min < −rank_tol", "computed in float32"):
        assert phrase in text, phrase
    assert report.to_dict()["manifest"]["precision"] == list(report.manifest.precision)
    cms_text = str(check_cms(model, x))
    assert "Measurement manifest" in cms_text and "TF32 off while measuring" in cms_text
    # without dtype=, the checks compute in float64 on the CPU (the model itself is never cast)
    default = check_alignment(model, (x, torch.randint(0, 3, (8,))), loss="ce")
    assert default.dtype == "float64" and "computed in float64 (the model itself is not cast)" in str(default)
    assert next(model.parameters()).dtype == torch.float32
