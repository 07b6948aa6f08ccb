"""AlignmentTracker mechanics: records, non-mutation, crash safety and resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cases import CASES
from helpers import ROOT, assert_unchanged
from torch import nn

from diagnostics import check_alignment
from diagnostics.data import load_dataset
from diagnostics.errors import DiagnosticsError
from diagnostics.tracking import AlignmentTracker, load_history, summarize
from diagnostics.tracking.history import read_history
from diagnostics.tracking.tracker import COLUMNS, TRAILING
from diagnostics.tracking.verification import data_alignment_verdicts

pytestmark = pytest.mark.usefixtures("one_thread")


def _regression(n: int = 24, d_in: int = 5, m: int = 2):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    return X, torch.randn(n, m, generator=gen, dtype=torch.float64)


def _mlp(d_in: int = 5, width: int = 12, m: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, m)).double()


def _gd_step(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, lr: float = 0.1) -> None:
    loss = ((model(X) - Y) ** 2).sum() / (2 * X.shape[0])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p -= lr * g


# -- records -----------------------------------------------------------------------------------------


def test_records_have_the_documented_columns_and_follow_every(device):
    X, Y = (t.to(device) for t in _regression())
    model = _mlp().to(device)
    tracker = AlignmentTracker(model, (X, Y), every=3, representation=["1"], probe_size=None)
    returned = []
    for _ in range(7):
        returned.append(tracker.step())
        _gd_step(model, X, Y)
    assert [r is not None for r in returned] == [True, False, False, True, False, False, True]
    h = tracker.history
    assert list(h.columns) == [*COLUMNS, "cka_1", *TRAILING]
    assert h.step.tolist() == [0, 3, 6]
    first = h.iloc[0]
    # θ has not moved: K equals K_0 to rounding (auto may settle on another exact plan after its first call)
    assert first.kernel_movement_init <= 1e-14 and first.param_movement == 0
    assert first.cka_1 == pytest.approx(1, abs=1e-14)
    assert math.isnan(first.kernel_movement_prev)
    assert (h.kernel_movement_init.iloc[1:] > 0).all() and (h.param_movement.iloc[1:] > 0).all()
    assert (h.kernel_movement_prev.iloc[1:] > 0).all() and (h.cka_1.iloc[1:] < 1).all()
    assert (h.n_samples == 24).all() and (h.n_outputs == 48).all() and (h.measure_seconds > 0).all()
    assert tracker.last_step == 6
    with pytest.raises(DiagnosticsError, match="not after"):
        tracker.measure(6)
    assert tracker.step(6) is None  # replaying a recorded step records nothing


def test_movements_and_parameter_subset_match_direct_computation():
    X, Y = _regression()
    model = _mlp()
    theta0 = torch.cat([p.detach().reshape(-1).clone() for p in model[2].parameters()])
    from diagnostics import ntk_gram

    K0 = ntk_gram(model, X, params=["2"])
    tracker = AlignmentTracker(model, (X, Y), params=["2"], probe_size=None)
    for _ in range(3):
        _gd_step(model, X, Y, lr=0.3)
    record = tracker.measure(3)
    theta = torch.cat([p.detach().reshape(-1) for p in model[2].parameters()])
    K = ntk_gram(model, X, params=["2"])
    assert record["n_params"] == theta.numel()
    movement = float((theta - theta0).norm() / theta0.norm())
    assert record["param_movement"] == pytest.approx(movement, rel=1e-12)
    assert record["kernel_movement_init"] == pytest.approx(float((K - K0).norm() / K0.norm()), rel=1e-10)
    q = Y.double().reshape(-1)  # the squared loss's alignment target Q = Y, stacked sample-major as K's rows
    alignment = float(q @ K @ q) / (float(K.norm()) * float(q @ q))
    assert record["kernel_target_alignment"] == pytest.approx(alignment, rel=1e-10)
    # the Gram and spectrum of the last record: K and its float64 eigendecomposition, the record's rank
    torch.testing.assert_close(tracker.gram, K, rtol=0, atol=1e-10)
    U, lam = tracker.spectrum.eigenvectors, torch.as_tensor(tracker.spectrum.eigenvalues)
    torch.testing.assert_close(U @ torch.diag(lam) @ U.T, K, rtol=0, atol=1e-10)
    assert tracker.spectrum.rank == record["rank"]


def test_the_horizon_follows_the_optimiser_and_the_steps_left():
    from diagnostics import check_alignment

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    X, Y = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = check_alignment(model, (X, Y), probe_size=None, horizon=(0.05, 10))
    tracker = AlignmentTracker(model, (X, Y), every=5, probe_size=None, horizon=(opt, 10))
    for step in range(11):
        tracker.step(step)
        opt.zero_grad()
        (((model(X) - Y) ** 2).sum() / 24).backward()
        opt.step()
    h = tracker.history
    assert h.horizon_residual.iloc[0] == pytest.approx(start.horizon_residual, rel=1e-10)
    assert h.horizon_loss_floor.iloc[0] == pytest.approx(start.horizon_loss_floor, rel=1e-10)
    assert np.isfinite(h.horizon_residual.iloc[1]) and math.isnan(h.horizon_residual.iloc[2])  # no step left
    assert set(h.d1_status) <= {"holds", "refuted", "not established"}
    with pytest.raises(DiagnosticsError, match="horizon"):
        AlignmentTracker(model, (X, Y), probe_size=None, horizon=(opt, 0))


def test_a_horizon_beyond_the_stable_step_records_its_floor_and_its_unstable_part():
    from diagnostics import check_alignment

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    X, Y = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    lam_max = float(check_alignment(model, (X, Y), probe_size=None).eigenvalues[0])
    lr = 10 * 2 * 12 / lam_max  # ten times the stable step: the top direction grows by 19 per step
    record = AlignmentTracker(model, (X, Y), probe_size=None,
                              horizon=(torch.optim.SGD(model.parameters(), lr=lr), 100)).step(0)
    assert math.isfinite(record["horizon_loss_floor"]) and math.isfinite(record["horizon_residual"])
    note = record["horizon_note"]
    assert note.startswith("unstable part:") and "by 19 per step" in note and "not fitted" in note


@pytest.mark.parametrize(("make", "why"), [
    (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), "momentum"),
    (lambda p: torch.optim.Adam(p, lr=0.05), "Adam is not plain gradient descent"),
    (lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=1e-3), "weight decay"),
])
def test_the_horizon_is_not_applicable_to_an_optimiser_other_than_plain_gradient_descent(make, why):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    X, Y = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05)
    plain = AlignmentTracker(model, (X, Y), probe_size=None, horizon=(sgd, 200))
    record = plain.step(0)
    assert math.isfinite(record["horizon_loss_floor"])
    assert record["horizon_note"].startswith("assumed: full batch")  # the tracker does not see the batches
    other = AlignmentTracker(model, (X, Y), probe_size=None, horizon=(make(model.parameters()), 200))
    record = other.step(0)  # the same lr, kernel and steps: only the optimiser differs
    assert math.isnan(record["horizon_loss_floor"]) and math.isnan(record["horizon_residual"])
    assert record["horizon_note"].startswith("not applicable") and why in record["horizon_note"]
    assert why in " ".join(str(other.last_report).split())  # long lines are wrapped


def test_progress_bar_and_summary(capsys):
    X, Y = _regression()
    model = _mlp()
    with AlignmentTracker(model, (X, Y), every=2, progress=True, probe_size=None) as tracker:
        for _ in range(5):
            tracker.step()
            _gd_step(model, X, Y)
    assert "AlignmentTracker" in capsys.readouterr().err
    text = tracker.summary()
    for needle in ("3 records", "alignment residual", "kernel movement", "I2 ", "I3 ", "S1 "):
        assert needle in text


# -- the model and the random stream are never changed -----------------------------------------------


class NoisyMLP(nn.Module):
    """Draws random numbers in forward (multiplied by zero): measuring must not shift the RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.body(x)) + 0 * torch.rand_like(x[:, :1])
        return self.head(h)


@pytest.mark.parametrize("mode", ["eval", "batch"])
def test_measuring_never_mutates_the_model(mode, device):
    model = CASES["resnet-bn"].model().train().to(device)
    x = CASES["resnet-bn"].data(10).to(device)
    y = torch.arange(10) % 3
    model.stem.weight.requires_grad_(False)
    model(x).sum().backward()  # .grad populated, as between backward() and optimizer.step()
    model.bn1.eval()  # a mixed train/eval state must survive
    tracker = assert_unchanged(model, lambda: AlignmentTracker(model, (x, y), loss="ce", mode=mode,
                                                                representation=["bn0"]))
    assert_unchanged(model, lambda: tracker.measure(0))


def test_random_stream_is_restored_for_models_that_draw_random_numbers():
    torch.manual_seed(0)
    model = NoisyMLP().double()
    X, Y = _regression()
    assert_unchanged(
        model, lambda: AlignmentTracker(model, (X, Y), representation=["body"], probe_size=None).measure(0)
    )


# -- history file, crash safety and resume -----------------------------------------------------------


def test_resume_refuses_other_settings_and_a_missing_reference(tmp_path):
    X, Y = _regression()
    path = tmp_path / "run.jsonl"
    tracker = AlignmentTracker(_mlp(), (X, Y), path=path, probe_size=None)
    tracker.step()
    with pytest.raises(DiagnosticsError, match="different settings.*probe_sha256"):
        AlignmentTracker(_mlp(), (X, Y + 1), path=path, probe_size=None)
    with pytest.raises(DiagnosticsError, match="loss"):
        AlignmentTracker(_mlp(), (X, Y.argmax(1)), path=path, loss="ce", probe_size=None)
    Path(f"{path}.ref.pt").unlink()
    with pytest.raises(DiagnosticsError, match="reference file"):
        AlignmentTracker(_mlp(), (X, Y), path=path, probe_size=None)
    restarted = AlignmentTracker(_mlp(), (X, Y), path=path, probe_size=None, resume=False)
    assert restarted.last_step is None and restarted.history.empty


def _tracked_run(path: Path | None, stop: int):
    """Momentum SGD on a regression task, tracked every step; replays from scratch when restarted."""
    X, Y = _regression()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 2)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    tracker = AlignmentTracker(model, (X, Y), path=path, representation=["1"], probe_size=None)
    for step in range(stop):  # recorded steps are skipped on a resumed run
        tracker.step(step)
        opt.zero_grad()
        (((model(X) - Y) ** 2).sum() / 48).backward()
        opt.step()
    return tracker.history


def test_killed_run_keeps_every_finished_record_and_resumes_without_duplicates(tmp_path):
    path = tmp_path / "run.jsonl"
    script = (
        f"import sys; sys.path.append({str(ROOT / 'tests')!r}); "
        f"from tests.tracking.test_tracker import _tracked_run; _tracked_run({str(path)!r}, 10**6)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 6:  # header + 5 records
                break
            time.sleep(0.02)
        assert child.poll() is None, child.stderr.read().decode()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    killed = AlignmentTracker.load(path)
    assert len(killed) >= 5 and killed.step.tolist() == list(range(len(killed)))
    no_horizon = ["kernel_movement_prev", "horizon_residual", "horizon_loss_floor"]  # nan: no horizon given
    assert killed.notna().drop(columns=no_horizon).all().all()

    stop = int(killed.step.iloc[-1]) + 6
    resumed = _tracked_run(path, stop)
    assert resumed.step.tolist() == list(range(stop))  # continued after the last step, no duplicates
    assert AlignmentTracker.load(path).equals(resumed)
    assert resumed.iloc[: len(killed)].equals(killed)

    # The resumed records equal an uninterrupted run's (the reference K_0, θ_0 was read back).
    whole = _tracked_run(None, stop)
    assert math.isnan(resumed.kernel_movement_prev.iloc[len(killed)])
    for column in ("loss", "residual", "certificate", "kernel_movement_init", "param_movement", "cka_1"):
        np.testing.assert_allclose(resumed[column], whole[column], rtol=1e-7, atol=1e-12, err_msg=column)


def test_load_reads_a_history_written_by_the_tracker(tmp_path):
    X, Y = _regression()
    path = tmp_path / "run.jsonl"
    tracker = AlignmentTracker(_mlp(), (X, Y), path=path, probe_size=None)
    tracker.step()
    loaded = AlignmentTracker.load(path)
    assert loaded.equals(tracker.history)
    assert loaded.attrs["meta"]["loss"] == "mse" and path.read_text().startswith('{"meta"')


def test_a_probe_of_larger_data_names_both_scopes_in_the_header_and_the_summary(tmp_path):
    # the issue's ground truth: a probe with n·m ≤ d has full row rank (D1 holds there) while the data it was drawn
    # from, with n·m > d, cannot: the probe's "holds" is the probe's, and the data's D1 is not established
    digits = load_dataset("digits", n_train=1000, flatten=True, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).double()  # d = 4,810 < n·m = 10,000
    path = tmp_path / "run.jsonl"
    tracker = AlignmentTracker(model, (digits.X_train, digits.y_train), loss="ce", probe_size=16, path=path)
    tracker.step(0)
    meta, _ = read_history(path)
    assert meta["data_size"] == 1000 and meta["probe_size"] == 16
    assert meta["data_target_norm_sq"] == pytest.approx(1000 * 0.9)  # ‖e_y − 1/m‖² = 1 − 1/m per sample
    assert tracker.history.d1_status.tolist() == ["holds"]  # on the probe: rank J = n·m = 160
    text = " ".join(tracker.summary().split())
    assert "probe n=16 of 1,000 samples" in text and "D1 on the probe holds at 1 of 1 records" in text
    assert "D1 on all 1,000 samples the probe was drawn from: not established at every record" in text
    assert "J cannot have full row rank there" in text
    assert " ".join(summarize(load_history(path)).split()) == text  # a history read back says the same
    # the same scope as check_alignment's on the same probe
    report = check_alignment(model, (digits.X_train, digits.y_train), loss="ce", probe_size=16)
    assert report.data_verdict.status == "not established" and report.verdict.holds


def test_a_probe_that_refutes_d1_refutes_it_on_the_data_in_the_summary():
    # a linear model has rank J = m·rank [X, 1] = d, so a probe with n·m > d refutes D1 with a lower bound, which
    # rescaled by ‖Q_probe‖/‖Q‖ refutes it on the data too (theory/alignment.md#subsets)
    gen = torch.Generator().manual_seed(0)
    X, Y = torch.randn(400, 6, generator=gen, dtype=torch.float64), torch.randn(400, 3, generator=gen,
                                                                                 dtype=torch.float64)
    model = nn.Linear(6, 3).double()  # d = 21 < n·m = 60 on the probe of 20
    tracker = AlignmentTracker(model, (X, Y), probe_size=20)
    tracker.step(0)
    assert tracker.history.attrs["meta"]["data_target_norm_sq"] == pytest.approx(float((Y**2).sum()))
    text = " ".join(tracker.summary().split())
    assert "D1 on the probe refuted at 1 of 1 records" in text
    assert "D1 on all 400 samples the probe was drawn from: REFUTED at 1 of 1 records" in text
    report = check_alignment(model, (X, Y), probe_size=20)
    assert report.data_verdict.refuted
    verdict = data_alignment_verdicts(tracker.history, 400, float((Y**2).sum())).iloc[0]
    assert verdict.lhs == pytest.approx(report.data_verdict.lhs, rel=1e-9)
    whole = AlignmentTracker(model, (X, Y), probe_size=None)  # the whole data: one scope, no data line
    whole.step(0)
    assert "drawn from" not in whole.summary() and whole.history.attrs["meta"]["data_size"] == 400


def test_tags_and_the_optimiser_are_written_into_the_header(tmp_path):
    X, Y = _regression()
    model = _mlp()
    path = tmp_path / "run.jsonl"
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    AlignmentTracker(model, (X, Y), path=path, probe_size=None, tags={"width": 12, "seed": np.int64(3), "lazy": True},
                     horizon=(opt, 100))
    meta, _ = read_history(path)
    assert meta["tags"] == {"width": 12, "seed": 3, "lazy": True}
    assert meta["optimizer"] == {"name": "SGD", "lr": 0.05, "momentum": 0.9, "dampening": 0, "weight_decay": 0,
                                 "nesterov": False, "maximize": False, "differentiable": False}
    adam = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3, dtype=torch.float64))
    AlignmentTracker(model, (X, Y), path=path, resume=False, probe_size=None, optimizer=adam)
    meta, _ = read_history(path)
    assert meta["tags"] == {} and meta["optimizer"]["name"] == "AdamW" and meta["optimizer"]["lr"] == 1e-3
    assert "betas" not in meta["optimizer"] and "params" not in meta["optimizer"]
    assert AlignmentTracker(model, (X, Y), probe_size=None)._history.meta["optimizer"] is None
    for bad, message in (({"width": [1]}, "tag 'width'"), ({1: "a"}, "tag names"), ("width", "mapping"),
                         ({"lr": float("nan")}, "finite")):
        with pytest.raises(DiagnosticsError, match=message):
            AlignmentTracker(model, (X, Y), probe_size=None, tags=bad)


@pytest.mark.parametrize(("options", "message"), [
    ({"loss": "cross_entropy"}, "loss must be one of"), ({"every": 0}, "every must be an integer ≥ 1"),
    ({"full_every": 2.5}, "full_every"), ({"mode": "train"}, "mode must be one of"),
    ({"strategy": "fast"}, "strategy must be one of"), ({"residual_tol": -1}, "residual_tol"),
    ({"dtype": torch.int64}, "floating"), ({"representation": [1]}, "module name"), ({"progress": "yes"}, "True or"),
])
def test_options_are_checked_before_anything_is_measured(options, message):
    X, Y = _regression()
    model = _mlp()
    with pytest.raises(DiagnosticsError, match=message):
        assert_unchanged(model, lambda: AlignmentTracker(model, (X, Y), probe_size=None, **options))


def test_resuming_from_an_earlier_checkpoint_forgets_the_later_records(tmp_path):
    """A run killed after its checkpoint at step 2 had recorded steps 3 and 4: resumed at step 2, they are measured
    again on the new trajectory, and the history file holds the new records, not the old ones."""
    X, Y = _regression()
    path = tmp_path / "run.jsonl"
    model = _mlp()
    tracker = AlignmentTracker(model, (X, Y), path=path, probe_size=None)
    for step in range(5):
        tracker.step(step)
        _gd_step(model, X, Y)
    crashed = tracker.history
    resumed = AlignmentTracker(model, (X, Y), path=path, probe_size=None)
    resumed.resume_at(2)
    assert resumed.history.step.tolist() == [0, 1, 2] and AlignmentTracker.load(path).step.tolist() == [0, 1, 2]
    for step in (3, 4):
        _gd_step(model, X, Y, lr=0.5)  # another trajectory after the checkpoint
        resumed.step(step)
    history = AlignmentTracker.load(path)
    assert history.step.tolist() == [0, 1, 2, 3, 4] and history.equals(resumed.history)
    assert history.iloc[:3].equals(crashed.iloc[:3]) and (history.loss.iloc[3:] != crashed.loss.iloc[3:]).all()
