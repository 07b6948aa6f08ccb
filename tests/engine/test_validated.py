"""Validation once per model structure and inputs' layout (diagnostics/engine/measurement.py, VALIDATED): a later
call runs only its plan's forwards, yet never serves a changed model unchecked — a new structure is validated
again, and what can change without one (values, a switch the forward reads) is checked on every call."""

import pytest
import torch
from cases import CASES
from helpers import ONE_THREAD, assert_unchanged
from torch import nn

from diagnostics import DiagnosticsError, UnsupportedModelError, check_alignment, ntk_gram, reference_gram
from diagnostics.engine import Measurement, auto
from diagnostics.engine.measurement import VALIDATED

F64 = torch.float64
ATOL = 1e-10
pytestmark = ONE_THREAD


class Switched(nn.Module):
    """A linear model whose forward reads a switch held in a dict (not part of the module's structure)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.seen = torch.zeros(3)  # a plain tensor attribute
        self.switch = {"noise": False, "count": False}

    def forward(self, x):
        out = self.lin(x)
        if self.switch["count"]:
            self.seen += 1  # an in-place update of a tensor attribute
        if self.switch["noise"]:
            out = out + torch.randn_like(out)  # random numbers in eval mode
        return out


def _forwards(model: nn.Module) -> list:
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


@pytest.mark.parametrize("strategy", ["structured", "auto"])
def test_a_later_call_runs_only_its_plans_forward_and_gives_the_same_gram(strategy, monkeypatch):
    monkeypatch.setattr(auto, "JUDGING_SHARE", 0.0)  # auto judges nothing: its forwards are its plan's
    case = CASES["cnn"]
    model, x = case.model(), case.data(6)
    calls = _forwards(model)
    K = ntk_gram(model, x, dtype=F64, strategy=strategy)
    first = len(calls)  # memory check, validation (two forwards and the two halves), the structured capture
    calls.clear()
    again = ntk_gram(model, x, dtype=F64, strategy=strategy)
    assert first == 6 and len(calls) == 1  # the structured path's capture alone
    torch.testing.assert_close(again, K, rtol=0, atol=0)
    torch.testing.assert_close(K, reference_gram(model, x, dtype=F64), rtol=0, atol=ATOL)


def test_check_alignment_reuses_the_validation_forward_for_its_outputs(monkeypatch):
    monkeypatch.setattr(auto, "JUDGING_SHARE", 0.0)
    case = CASES["cnn"]
    model, x = case.model(), case.data(6)
    data = (x, torch.arange(6) % 3)
    calls = _forwards(model)
    first = check_alignment(model, data, loss="ce", probe_size=None)  # float64: an a-priori error bound, no rows
    assert len(calls) == 1 + 6  # the path's choice (one sample), then as ntk_gram: the outputs are validation's
    calls.clear()
    again = check_alignment(model, data, loss="ce", probe_size=None)
    assert len(calls) == 1 + 1 + 1  # the path's choice, the outputs, the structured capture
    assert again.residual == first.residual


def test_training_between_calls_changes_values_only_the_next_call_is_exact_without_validating_again(monkeypatch):
    monkeypatch.setattr(auto, "JUDGING_SHARE", 0.0)
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(6)
    calls = _forwards(model)
    ntk_gram(model, x)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.train()
    model(x).square().sum().backward()
    opt.step()  # parameters (and batch-norm statistics) change in place; the structure does not
    model.eval()
    calls.clear()
    K = ntk_gram(model, x)
    assert len(calls) == 1
    torch.testing.assert_close(K, reference_gram(model, x), rtol=0, atol=ATOL)


def test_a_new_structure_is_validated_again():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(6, 4, dtype=F64)
    ntk_gram(model, x)

    class Noisy(nn.Module):
        def forward(self, h):
            return nn.functional.dropout(h, 0.5, training=True)

    model[1] = Noisy()  # no parameter changed, the structure did: validated again, and refused
    with pytest.raises(UnsupportedModelError, match="random numbers in eval mode"):
        assert_unchanged(model, lambda: ntk_gram(model, x))


def test_a_forward_that_starts_drawing_random_numbers_is_refused_on_a_later_call():
    torch.manual_seed(0)
    model = Switched().double()
    x = torch.randn(6, 4, dtype=F64)
    ntk_gram(model, x, strategy="structured")
    model.switch["noise"] = True  # the structure is unchanged: the per-call check catches it
    for strategy in ("structured", "vjp"):
        with pytest.raises(UnsupportedModelError, match="random numbers in eval mode"):
            assert_unchanged(model, lambda s=strategy: ntk_gram(model, x, strategy=s))


def test_a_forward_that_starts_updating_an_attribute_in_place_is_refused_and_the_attribute_put_back():
    torch.manual_seed(0)
    model = Switched().double()
    x = torch.randn(6, 4, dtype=F64)
    ntk_gram(model, x, strategy="vjp")
    model.switch["count"] = True
    with pytest.raises(UnsupportedModelError, match=r"updates 'seen' in place"):
        ntk_gram(model, x, strategy="vjp")
    assert torch.equal(model.seen, torch.zeros(3, dtype=F64))


class Exp(nn.Module):
    def forward(self, h):
        return torch.exp(h.square())


def test_non_finite_outputs_on_a_later_call_are_named_as_such():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), Exp()).double()
    x = torch.randn(5, 3, dtype=F64)
    ntk_gram(model, x)
    x_big = x.clone()
    x_big[2] = 1e4  # finite inputs, outputs that overflow: same layout, so validation was skipped
    with pytest.raises(DiagnosticsError, match="outputs contain NaN or inf"):
        assert_unchanged(model, lambda: ntk_gram(model, x_big))
    torch.testing.assert_close(ntk_gram(model, x), reference_gram(model, x), rtol=0, atol=ATOL)


def test_a_forward_that_fails_on_a_later_call_is_explained_by_validation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 2)).double()
    ids = torch.randint(0, 5, (4, 2))
    ntk_gram(model, ids)
    with pytest.raises(DiagnosticsError, match=r"forward failed on these inputs in module '0' \(Embedding\)"):
        ntk_gram(model, ids + 5)  # token ids out of range: same layout, so validation was skipped


def test_validation_is_remembered_per_model_and_layout():
    case = CASES["cnn"]
    model, x = case.model(), case.data(6)
    with Measurement(model, x) as job:
        assert not job.validated_before
        key = job.key
    with Measurement(model, x) as job:
        assert job.validated_before and job.key == key
    with Measurement(model, x[:5]) as job:  # another number of samples
        assert not job.validated_before
    with Measurement(model, x, dtype=torch.float32) as job:  # another dtype
        assert not job.validated_before
    assert VALIDATED.get(model, key).m == 3


class DrawsButIgnores(nn.Module):
    """Draws random numbers in forward but multiplies them by zero: deterministic, so measured (and the draw undone)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) + 0 * torch.rand_like(x[:, :1])


def test_a_forward_whose_outputs_ignore_its_random_draws_is_measured_on_later_calls_as_on_the_first():
    torch.manual_seed(0)
    model = DrawsButIgnores().double()
    x = torch.randn(6, 4, dtype=F64)
    K = assert_unchanged(model, lambda: ntk_gram(model, x, strategy="vjp"))

    def again():
        with Measurement(model, x, strategy="vjp") as job:
            K = job.gram()  # the draw seen: validated again, and two forwards agree
        assert job.known.draws and VALIDATED.get(model, job.key) is job.known
        return K

    torch.testing.assert_close(assert_unchanged(model, again), K, rtol=0, atol=0)
    torch.testing.assert_close(K, reference_gram(model, x), rtol=0, atol=ATOL)
