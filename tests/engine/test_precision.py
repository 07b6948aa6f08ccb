"""The precision policy (theory/alignment.md#setup): float64 end to end on float32 models that are never cast, TF32 off
while measuring, and every report stating the policy and its tolerances."""

import copy

import pytest
import torch
from cases import CASES, IO_CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD, restore_tf32, set_tf32, tf32_switches

from diagnostics import check_alignment, check_cms, jacobian, reference_jacobian
from diagnostics.engine import FunctionalModel
from diagnostics.engine.precision import tf32_off

F64 = torch.float64
ATOL = 1e-10
NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


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
@pytest.mark.parametrize("allowed", [True, False])
def test_tf32_is_off_while_measuring_and_the_users_switches_come_back(allowed):
    model = CASES["mlp"].model()
    fm = FunctionalModel(model)
    before = tf32_switches()
    try:
        set_tf32(allowed)
        outside = tf32_switches()
        with fm.measuring():
            if NEW_API:  # every operation's switch says IEEE float32, whatever the user had
                b = torch.backends
                assert {op.fp32_precision for op in (b.cuda.matmul, b.cudnn.conv, b.cudnn.rnn)} == {"ieee"}
            else:
                assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert tf32_switches() == outside
        report = check_alignment(model, (CASES["mlp"].data(6), torch.randn(6, 3, dtype=F64)))
        assert f"the user's switches (matmul={allowed}, cudnn={allowed}) restored" in report.manifest.tf32
        assert tf32_switches() == outside
    finally:
        restore_tf32(before)


@pytest.mark.skipif(not NEW_API, reason="fp32_precision strings exist from torch 2.9")
def test_tf32_switches_inherited_from_the_generic_setting_are_read_and_restored():
    b = torch.backends
    before = tf32_switches()
    try:
        b.fp32_precision = "tf32"  # the generic switch: every operation inherits it
        b.cuda.matmul.fp32_precision = "ieee"  # and one operation set apart
        outside = tf32_switches()
        with tf32_off() as allowed:
            assert allowed == (False, True)
            assert b.cuda.matmul.fp32_precision == b.cudnn.conv.fp32_precision == "ieee"
        assert tf32_switches() == outside
        with pytest.raises(RuntimeError, match="raised inside"), tf32_off():
            raise RuntimeError("raised inside")
        assert tf32_switches() == outside
    finally:
        restore_tf32(before)


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
