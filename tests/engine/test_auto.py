"""strategy="auto" (diagnostics/engine/auto.py): it runs every model some strategy can, exactly, says what it
chose and why, falls back from vmap by itself, and remembers its choice per model and shapes."""

import time

import pytest
import torch
from cases import CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD, assert_unchanged
from torch import nn

from diagnostics import UnsupportedModelError, jacobian, reference_gram, reference_jacobian
from diagnostics.engine import Measurement, auto
from diagnostics.engine.auto import CHOICES, PROBE_MIN_ROWS
from diagnostics.engine.choice import PLANS, Choice, Plan

F64 = torch.float64
pytestmark = [ONE_THREAD, NO_VMAP_FALLBACK_WARNING]


class GRUHead(nn.Module):
    """A GRU classifier: vmap over samples cannot run nn.GRU (a raw broadcast error inside torch)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _gru(n):
    torch.manual_seed(0)
    return GRUHead().double(), torch.randn(n, 4, 3, dtype=F64)


def test_a_model_vmap_cannot_run_is_refused_per_sample_with_a_clear_error():
    model, x = _gru(5)
    for strategy in ("jacrev", "structured"):
        with pytest.raises(UnsupportedModelError, match=r"vmap over samples failed in module 'rnn' \(GRU\).*"
                                                        r"strategy='vjp'.*'auto' falls back"):
            jacobian(model, x, strategy=strategy)


def test_auto_falls_back_without_vmap_exactly_and_remembers_it_whatever_n():
    model, x = _gru(5)
    J_ref = reference_jacobian(model, x)
    J = assert_unchanged(model, lambda: jacobian(model, x))
    torch.testing.assert_close(J, J_ref, rtol=0, atol=1e-10)
    with Measurement(model, x) as job:
        K = job.gram()
        assert job.strategy == "vjp" and "vmap cannot run the model over samples" in job.choice.reason
    torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=1e-10)
    with Measurement(model, x[:3]) as job:  # another n: the fact is known, nothing is tried per sample
        assert job.strategy == "vjp" and "vmap cannot run" in job.choice.reason


def test_the_probe_on_a_large_problem_chooses_a_plan_that_is_exact_and_cached():
    model, x = _gru(PROBE_MIN_ROWS // 2 + 3)  # n·m ≥ PROBE_MIN_ROWS: timed
    with Measurement(model, x) as job:
        assert "timed probe" in job.choice.reason and job.choice.predicted
        assert job.choice.plan.label in job.choice.predicted and "jacrev" not in job.strategy
        K = job.gram()
    J_ref = reference_jacobian(model, x)
    torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=1e-10)
    with Measurement(model, x) as job:
        assert "cached for this model and shapes" in job.choice.reason


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_vjp_by_chunks_is_exact(chunk):
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(7)
    J_ref = reference_jacobian(model, x)
    for strategy in ("structured", "vjp"):
        with Measurement(model, x, strategy="vjp") as job:
            job.choice = Choice(Plan(strategy, "vjp", chunk), "test")
            torch.testing.assert_close(job.gram(), J_ref @ J_ref.T, rtol=0, atol=1e-10)
            torch.testing.assert_close(job.jacobian_columns(job.fm.names), J_ref, rtol=0, atol=1e-10)


def test_small_problems_take_the_structured_path_without_timing():
    case = CASES["cnn"]
    model, x = case.model(), case.data(4)
    with Measurement(model, x) as job:
        assert job.strategy == "structured" and "without timing" in job.choice.reason
    assert CHOICES.get(model, ("nothing",)) is None


def test_a_small_problem_that_was_not_quick_times_the_plans_once_and_the_next_call_takes_the_fastest(monkeypatch):
    case = CASES["cnn"]
    model, x = case.model(), case.data(4)
    seconds = {"structured": 0.03, "jacrev": 0.01, "vjp": 0.02}  # what each plan "takes" on the whole problem
    monkeypatch.setattr(auto, "SETTLE_MIN_SECONDS", 0.0)
    monkeypatch.setattr(auto, "_timed_slice", lambda job, plan, count, keep=False: (seconds[plan.label], 0.0))
    K_ref = reference_gram(model, x, dtype=F64)
    with Measurement(model, x, dtype=F64) as job:
        torch.testing.assert_close(job.gram(), K_ref, rtol=0, atol=1e-10)
        assert job.strategy == "structured" and not job.choice.provisional  # this call keeps its plan
    with Measurement(model, x, dtype=F64) as job:
        assert job.strategy == "jacrev" and "the fastest of the plans timed on the whole problem" in job.choice.reason
        assert job.choice.predicted == seconds and "cached" in job.choice.reason
        torch.testing.assert_close(job.gram(), K_ref, rtol=0, atol=1e-10)


def test_a_quick_small_problem_keeps_its_untimed_plan(monkeypatch):
    case = CASES["cnn"]
    model, x = case.model(), case.data(4)
    monkeypatch.setattr(auto, "SETTLE_MIN_SECONDS", float("inf"))
    monkeypatch.setattr(auto, "_timed_slice", lambda *a, **k: pytest.fail("a quick problem timed the plans"))
    with Measurement(model, x, dtype=F64) as job:
        job.gram()
    with Measurement(model, x, dtype=F64) as job:
        assert job.strategy == "structured" and not job.choice.predicted and "without timing" in job.choice.reason


@pytest.mark.parametrize(("runner_up_seconds", "kept"), [(0.1, "jacrev"), (0.9, "structured")])
def test_a_close_runner_up_is_timed_once_on_the_whole_problem_and_the_faster_kept(monkeypatch, runner_up_seconds,
                                                                                   kept):
    case = CASES["cnn"]
    model, x = case.model(), case.data(4)
    monkeypatch.setattr(auto, "_timed_slice", lambda job, plan, count, keep=False: (runner_up_seconds, 0.0))
    with Measurement(model, x, dtype=F64, strategy="structured") as job:
        job.choice = Choice(PLANS["structured"], "auto: structured, by the probe", runner_up=PLANS["jacrev"])
        auto.settle(job, time.perf_counter() - 0.5)  # the measurement "took" 0.5 s
        assert job.strategy == "structured" and job.choice.runner_up is None
    with Measurement(model, x, dtype=F64) as job:
        assert job.strategy == kept and "on the whole problem" in job.choice.reason


def test_a_runner_up_is_not_timed_after_a_long_measurement(monkeypatch):
    case = CASES["cnn"]
    model, x = case.model(), case.data(4)
    monkeypatch.setattr(auto, "_timed_slice", lambda *a, **k: pytest.fail("the runner-up was timed"))
    with Measurement(model, x, dtype=F64, strategy="structured") as job:
        job.choice = Choice(PLANS["structured"], "auto: structured, by the probe", runner_up=PLANS["jacrev"])
        auto.settle(job, time.perf_counter() - 2 * auto.SETTLE_MAX_SECONDS)
    with Measurement(model, x, dtype=F64) as job:
        assert job.strategy == "structured" and "by the probe" in job.choice.reason


def test_contractions_with_the_gram_equal_those_alone_and_the_jacobian_applied():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(5)
    J = reference_jacobian(model, x)
    with Measurement(model, x) as job:
        theta = job.fm.params
        K, V = job.gram_and_contractions(theta)
        alone = job.contractions(theta)
    start, expected = 0, []
    for p in theta.values():
        expected.append(J[:, start : start + p.numel()] @ p.reshape(-1))
        start += p.numel()
    torch.testing.assert_close(V, torch.stack(expected, 1), rtol=0, atol=1e-10)
    torch.testing.assert_close(alone, V, rtol=0, atol=1e-12)
    torch.testing.assert_close(K, J @ J.T, rtol=0, atol=1e-10)
