"""strategy="auto" (diagnostics/engine/auto.py): it runs every model some strategy can, exactly; on the first call it
takes a plan untimed and judges others only as far as a budget allows; later calls take the fastest plan timed, in
this process or an earlier one (the on-disk cache); what it chose never changes a result."""

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from cases import CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD, ROOT, assert_unchanged
from torch import nn

from diagnostics import UnsupportedModelError, jacobian, ntk_gram, reference_gram, reference_jacobian
from diagnostics.engine import Measurement, auto, choice_store
from diagnostics.engine.choice import NO_VMAP, PLANS, Choice, Plan
from diagnostics.engine.gram import GramTiles

F64 = torch.float64
ATOL = 1e-10
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


def _measure(model, x, **kwargs):
    """One auto measurement: its Gram, its choice, and what auto knows afterwards."""
    with Measurement(model, x, **kwargs) as job:
        K = job.gram()
    return K, job.choice, auto.knowledge(job)


class FakeClock:
    """Stands in for auto's ``time``: judging "takes" the seconds the fake timings say, so budgets are exact."""

    def __init__(self, seconds_per_plan: dict[str, float]) -> None:
        self.now, self.per_plan, self.timed = 0.0, seconds_per_plan, []

    def perf_counter(self) -> float:
        return self.now

    def timed_slice(self, job, plan, count, keep=False):
        """A plan's time on ``count`` samples: its whole-problem time, pro rata."""
        self.timed.append((plan.label, count))
        seconds = self.per_plan[plan.label] * count / job.n
        self.now += seconds
        return seconds, 0.0

    def install(self, monkeypatch):
        monkeypatch.setattr(auto, "time", SimpleNamespace(perf_counter=self.perf_counter))
        monkeypatch.setattr(auto, "_timed_slice", self.timed_slice)
        monkeypatch.setattr(auto, "_startup", lambda job, plan: 0.0)


# -- plans that fail: vmap over samples ------------------------------------------------------------


def test_a_model_vmap_cannot_run_is_refused_per_sample_with_a_clear_error():
    model, x = _gru(5)
    for strategy in ("jacrev", "structured"):
        with pytest.raises(UnsupportedModelError, match=r"vmap over samples failed in module 'rnn' \(GRU\).*"
                                                        r"strategy='vjp'.*'auto' falls back"):
            jacobian(model, x, strategy=strategy)


def test_auto_falls_back_without_vmap_exactly_and_remembers_it():
    model, x = _gru(5)
    J_ref = reference_jacobian(model, x)
    J = assert_unchanged(model, lambda: jacobian(model, x))
    torch.testing.assert_close(J, J_ref, rtol=0, atol=ATOL)
    K, choice, know = _measure(model, x)
    assert choice.plan == PLANS["vjp"] and "vmap cannot run the model over samples" in choice.reason
    assert "vmap" in know.no_vmap and {"structured", "jacrev"} <= set(know.ruled_out)
    torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=ATOL)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_vjp_by_chunks_is_exact(chunk):
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(7)
    J_ref = reference_jacobian(model, x)
    for strategy in ("structured", "vjp"):
        with Measurement(model, x, strategy="vjp") as job:
            job.choice = Choice(Plan(strategy, "vjp", chunk), "test")
            torch.testing.assert_close(job.gram(), J_ref @ J_ref.T, rtol=0, atol=ATOL)
            torch.testing.assert_close(job.jacobian_columns(job.fm.names), J_ref, rtol=0, atol=ATOL)


# -- the first call: a plan untimed, judging within the budget -------------------------------------------


def test_the_first_call_takes_the_structured_path_untimed_and_times_nothing_it_cannot_afford(monkeypatch):
    case = CASES["cnn"]
    model, x = case.model(), case.data(20)
    monkeypatch.setattr(auto, "_startup", lambda job, plan: 0.0 if plan.strategy == "structured" else 5.0)
    monkeypatch.setattr(auto, "_timed_slice", lambda *a, **k: pytest.fail("a plan was timed on the first call"))
    K, choice, know = _measure(model, x, dtype=F64)
    assert choice.plan == PLANS["structured"] and "untimed" in choice.reason and not choice.settled
    assert list(know.timed) == ["structured"] and not know.predicted  # bounds at most: nothing was run
    torch.testing.assert_close(K, reference_gram(model, x, dtype=F64), rtol=0, atol=ATOL)


def test_judging_keeps_to_its_budget_and_the_calls_after_take_the_fastest_plan_timed(monkeypatch):
    case = CASES["cnn"]
    model, x = case.model(), case.data(32)  # ≥ SLICE_MIN_SAMPLES: slices before the whole problem
    clock = FakeClock({"structured": 1.0, "jacrev": 0.5, "vjp": 3.0})
    clock.install(monkeypatch)
    monkeypatch.setattr(auto, "_rate", lambda job: float("inf"))  # products cost nothing: no plan bounded out
    learn = auto.learn  # each measurement "takes" its plan's time
    monkeypatch.setattr(auto, "learn", lambda job, seconds: learn(job, clock.per_plan[job.plan.label]))
    K_ref = reference_gram(model, x, dtype=F64)
    plans = []
    for _ in range(10):
        with Measurement(model, x, dtype=F64) as job:
            plans.append(job.strategy)
            torch.testing.assert_close(job.gram(), K_ref, rtol=0, atol=ATOL)  # whatever the plan, the same K
            know = auto.knowledge(job)
        assert know.spent <= auto.JUDGING_SHARE * know.measured  # the fake timings are exact: no overshoot
        if len(plans) == 1:  # the first call: jacrev's slices fit the budget, its whole run does not
            assert ("jacrev", 2) in clock.timed and "jacrev" not in know.timed
    assert plans[0] == "structured" and plans[-1] == "jacrev" and job.choice.settled
    assert know.timed == {"structured": 1.0, "jacrev": 0.5} and "chunks of 2 samples" in know.ruled_out["vjp"]
    assert "the fastest of the plans timed on the whole problem" in job.choice.reason
    assert "jacrev 500 ms" in job.choice.describe()


def test_a_plan_whose_gram_products_alone_are_too_slow_is_ruled_out_without_running_it(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 400), nn.Tanh(), nn.Linear(400, 10)).double()
    x = torch.randn(30, 5, dtype=F64)
    monkeypatch.setattr(auto, "JUDGING_SHARE", 1e6)
    monkeypatch.setattr(auto, "_rate", lambda job: 1e6)  # 1 MFLOP/s: jacrev's and vjp's products take hours
    monkeypatch.setattr(auto, "_timed_slice", lambda *a, **k: pytest.fail("a plan ruled out by its bound ran"))
    _, choice, know = _measure(model, x)
    assert choice.plan == PLANS["structured"]
    vjp = [label for label in know.ruled_out if label.startswith("vjp")]  # by chunks, or the whole batch
    assert len(vjp) == 1
    for label in ("jacrev", *vjp):
        assert "its Gram products alone would take" in know.ruled_out[label]
        products = GramTiles.upper_fraction(300, 10) * 2 * 300**2 * (5 * 400 + 400 + 400 * 10 + 10)  # the upper tiles
        assert know.bounds[label] == pytest.approx(products / 1e6)
    with Measurement(model, x) as job:
        assert job.choice.settled is True or auto._next_step(job, know) is None


def test_every_plan_auto_takes_gives_the_reference_gram(monkeypatch):
    monkeypatch.setattr(auto, "JUDGING_SHARE", 1e6)  # every plan judged on the first call, for real
    for cid in ("resnet-bn", "cnn"):
        model, x = CASES[cid].model(), CASES[cid].data(17)
        K_ref = reference_gram(model, x, dtype=F64)
        K, choice, know = _measure(model, x, dtype=F64)
        assert choice.settled and set(know.timed) >= {"structured"}
        torch.testing.assert_close(K, K_ref, rtol=0, atol=ATOL)
        for label in know.timed:  # each plan auto may take
            with Measurement(model, x, dtype=F64) as job:
                job.choice = Choice(know.plans[label], "test")
                torch.testing.assert_close(job.gram(), K_ref, rtol=0, atol=ATOL, msg=label)
        torch.testing.assert_close(ntk_gram(model, x, dtype=F64), K_ref, rtol=0, atol=ATOL)


def test_a_plan_that_needs_torch_funcs_start_up_waits_until_judging_can_pay_for_it(monkeypatch):
    case = CASES["cnn"]
    model, x = case.model(), case.data(4)
    paid = []
    monkeypatch.setattr(auto, "_startup", lambda job, plan: 0.0 if paid or plan.strategy == "structured" else 10.0)
    monkeypatch.setattr(auto, "_pay_startup", lambda job: paid.append(1) or 10.0)
    with Measurement(model, x, dtype=F64) as job:
        know = auto.knowledge(job)
    know.time(PLANS["structured"], 1.0)
    know.time(PLANS["jacrev"], 0.5)
    know.measured = 20.0  # budget 0.4 · 20 = 8 s < 10 s
    with Measurement(model, x, dtype=F64) as job:
        assert job.plan == PLANS["structured"]
        assert "jacrev waits for torch.func's one-time start-up" in job.choice.reason
    know.measured = 30.0  # budget 12 s
    with Measurement(model, x, dtype=F64) as job:
        assert job.plan == PLANS["jacrev"] and paid == [1] and know.spent == 10.0


# -- the on-disk cache: across processes, stale or corrupt files, a changed model -----------------------------

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.append({tests!r})
    from cases import CASES
    from diagnostics import ntk_gram, reference_gram
    from diagnostics.engine import Measurement, auto
    if sys.argv[1] == "remember":  # what an earlier process learnt must spare this one any timing
        auto._timed_slice = lambda *a, **k: sys.exit("a plan was timed")
        auto.matmul_rate = lambda *a, **k: sys.exit("the rate was timed")
    elif sys.argv[1] == "judge":
        auto.JUDGING_SHARE = 1e6  # judge every plan now
    model, x = CASES["resnet-bn"].model(), CASES["resnet-bn"].data(20)
    with Measurement(model, x, dtype=torch.float64) as job:
        K = job.gram()
    error = float((K - reference_gram(model, x, dtype=torch.float64)).abs().max())
    print(json.dumps({{"plan": job.strategy, "reason": job.choice.reason, "error": error,
                       "dynamo": "torch._dynamo" in sys.modules}}))
""")


def _process(role, cache):
    env = {**os.environ, choice_store.CACHE_ENV: str(cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests")), role], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_takes_the_plan_the_first_one_timed_without_timing_anything(tmp_path):
    first = _process("judge", tmp_path)
    assert "untimed" in first["reason"] and first["error"] < ATOL
    second = _process("remember", tmp_path)
    assert "remembered from an earlier process" in second["reason"] and second["error"] < ATOL
    timed = [f for f in (tmp_path / "auto").iterdir() if "timed" in json.loads(f.read_text())["payload"]]
    fastest = json.loads(timed[0].read_text())["payload"]["timed"]
    best = min(fastest, key=fastest.get)
    if best == "structured":  # the structured path covers this model: torch.func is never started up
        assert second["plan"] == "structured" and not second["dynamo"]
    else:  # a faster plan with torch.func waits until judging has paid for its start-up; structured serves
        assert second["plan"] == "structured" and f"{best} waits for torch.func's one-time start-up" in second["reason"]
        assert not second["dynamo"]


def test_a_first_call_on_a_model_the_structured_path_covers_never_starts_torch_func_up(tmp_path):
    first = _process("first", tmp_path)  # nothing known: the untimed default, and judging within its budget
    assert first["plan"] == "structured" and "untimed" in first["reason"] and not first["dynamo"]


@pytest.mark.parametrize("content", [b"\x00 torn {", b'{"format": 1, "digest": "x", "payload": {}}',
                                     b'{"format": 1, "digest": "DIGEST", "payload": {"plans": {"jacrev": 3}}}'])
def test_a_corrupt_or_stale_file_is_ignored_and_replaced(content):
    case = CASES["cnn"]
    model, x = case.model(), case.data(6)
    with Measurement(model, x, dtype=F64) as job:
        digest = auto._digest(job)
    auto.CHOICES.clear()
    choice_store.cache_dir().mkdir(parents=True, exist_ok=True)
    path = choice_store.cache_dir() / f"{digest}.json"
    path.write_bytes(content.replace(b"DIGEST", digest.encode()))
    K, choice, _ = _measure(model, x, dtype=F64)
    assert "untimed" in choice.reason
    torch.testing.assert_close(K, reference_gram(model, x, dtype=F64), rtol=0, atol=ATOL)
    assert "structured" in json.loads(path.read_text())["payload"]["timed"]  # rewritten whole


def test_a_changed_model_is_not_served_its_old_plan(monkeypatch):
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(8)
    monkeypatch.setattr(auto, "JUDGING_SHARE", 1e6)
    _, choice, know = _measure(model, x, dtype=F64)
    assert choice.plan.per_sample and know.timed
    for bn in (model.bn0, model.bn1, model.bn2):  # eval-mode batch norm now uses the batch's statistics
        bn.running_mean = bn.running_var = None
    K, choice, _ = _measure(model, x, dtype=F64)
    assert choice.plan == PLANS["vjp"] and "samples interact" in choice.reason  # not the per-sample plan it had
    torch.testing.assert_close(K, reference_gram(model, x, dtype=F64), rtol=0, atol=ATOL)
    model.head = nn.Linear(model.head.in_features, 5).double()  # another head: another problem, judged afresh
    for bn in (model.bn0, model.bn1, model.bn2):
        bn.running_mean, bn.running_var = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
    K, choice, _ = _measure(model, x, dtype=F64)
    assert "untimed" in choice.reason
    torch.testing.assert_close(K, reference_gram(model, x, dtype=F64), rtol=0, atol=ATOL)


# -- the rest of the engine through auto -----------------------------------------------------------------------


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
    torch.testing.assert_close(V, torch.stack(expected, 1), rtol=0, atol=ATOL)
    torch.testing.assert_close(alone, V, rtol=0, atol=1e-12)
    torch.testing.assert_close(K, J @ J.T, rtol=0, atol=ATOL)


@pytest.mark.parametrize("optimum", [2, 32])
def test_the_chunk_search_goes_down_when_smaller_chunks_are_faster_and_up_when_larger_are(monkeypatch, optimum):
    # a chunk of c samples costs o + b·c² (a fixed cost, and c·m rows whose backward runs through all c samples):
    # the whole batch by chunks of c costs n(o/c + b·c), least at c = sqrt(o/b)
    model, x = _gru(128)
    _, _, know = _measure(model, x)
    fixed, per_row = 1e-3 * optimum**2, 1e-3
    sizes = []

    def timed_slice(job, plan, count, keep=False):
        sizes.append(count)
        return fixed + per_row * count**2, 0.0

    monkeypatch.setattr(auto, "_timed_slice", timed_slice)
    monkeypatch.setattr(auto, "_rate", lambda job: float("inf"))
    with Measurement(model, x, dtype=F64) as job:
        auto._chunk_search(job, know, NO_VMAP[1], allowance=1e9)
    assert know.chunks["vjp"] == optimum
    assert sizes == ([8, 16, 4, 2, 1] if optimum == 2 else [8, 16, 32, 64])  # from n/16: up, else down


@pytest.mark.parametrize("n", [40, 80])
def test_the_no_vmap_default_is_vjp_by_chunks_of_about_chunk_rows_beyond_whole_rows(n):
    model, x = _gru(n)  # m = 2: 80 rows are one chunk, 160 are chunks of CHUNK_ROWS rows
    K, choice, know = _measure(model, x)
    if 2 * n <= auto.WHOLE_ROWS:
        assert choice.plan == NO_VMAP[1] and "vjp" in know.timed
    else:
        chunk = -(-auto.CHUNK_ROWS // 2)
        assert choice.plan == NO_VMAP[1].chunked(chunk) and f"vjp (chunks of {chunk} samples)" in know.timed
    J = reference_jacobian(model, x)
    torch.testing.assert_close(K, J @ J.T, rtol=0, atol=ATOL)
