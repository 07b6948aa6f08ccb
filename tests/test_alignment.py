"""check_alignment against exact answers (``theory/alignment.md``, ``theory/results.md``), its verdicts, and its
matrix-free path against the dense one."""

import math

import numpy as np
import pytest
import torch
from cases import CASES
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diagnostics import AlignmentReport, DiagnosticsError, check_alignment, check_cms, jacobian
from diagnostics.engine.matrix_free import preconditioned

F64 = torch.float64


def _digits(n=120):
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data[:n], dtype=F64) / 16
    y = torch.tensor(d.target[:n])
    return X, y


def test_linear_model_residual_matches_least_squares(device):
    # rank J = m(d_x+1) < nm: the residual is the least-squares residual of Y on [X, 1].
    n, d_x, m = 30, 4, 2
    model = nn.Linear(d_x, m).double().to(device)
    X = torch.randn(n, d_x, dtype=F64)
    Y = torch.randn(n, m, dtype=F64)
    report = check_alignment(model, (X, Y), probe_size=None)  # the data on the CPU, the model on the device
    A = np.hstack([X.numpy(), np.ones((n, 1))])
    coef, *_ = np.linalg.lstsq(A, Y.numpy(), rcond=None)
    expected = np.linalg.norm(Y.numpy() - A @ coef) / np.linalg.norm(Y.numpy())
    assert report.rank == m * (d_x + 1)
    assert report.residual == pytest.approx(expected, rel=1e-10)
    assert not report.aligned and report.verdict.status == "refuted"
    assert str(report).startswith("Alignment condition D1 (Q ∈ Col J): refuted")
    i3 = next(v for v in report.verdicts if v.statement == "I3")
    assert i3.status == "not applicable" and "D1" in str(i3)  # a bound whose premise fails asserts nothing
    # (I2) is exact for a linear model, and the loss lower bound is the least-squares loss
    assert abs(report.decomposition_gap) < 1e-12
    assert report.loss_lower_bound == pytest.approx(np.sum((Y.numpy() - A @ coef) ** 2) / (2 * n), rel=1e-10)
    assert report.loss >= report.loss_lower_bound


def test_targets_in_the_column_space_are_aligned_and_bound_holds(device):
    n, d_x, m = 30, 4, 2
    model = nn.Linear(d_x, m).double().to(device)
    X = torch.randn(n, d_x, dtype=F64, device=device)
    W = torch.randn(m, d_x, dtype=F64, device=device)
    Y = X @ W.T + 0.5  # realisable by the model: Y ∈ Col(J)
    report = check_alignment(model, (X, Y), probe_size=None)  # the model and the data on the device
    assert report.aligned and report.residual < 1e-12 and report.verdict.status == "holds"
    assert report.manifest.device.startswith(device.type)
    assert 0 < report.bound_ratio <= 1
    # B = ‖J⁺ r‖ equals the distance from θ to the solution set {θ': J θ' = Y} for a linear model
    J = jacobian(model, X)
    r = (model(X) - Y).detach().reshape(-1)
    assert report.certificate == pytest.approx(torch.linalg.lstsq(J, r).solution.norm().item(), rel=1e-8)
    # ‖∇L‖ = ‖Jᵀ r‖ / n
    assert report.grad_norm == pytest.approx((J.T @ r).norm().item() / n, rel=1e-10)


@pytest.mark.parametrize("cid", ["mlp", "resnet-bn"])
def test_loss_decomposition_I2_in_float64(cid):
    case = CASES[cid]
    model, x = case.model(), case.data(12)
    Y = torch.randn(12, 3, dtype=F64)
    report = check_alignment(model, (x, Y), probe_size=None)
    assert abs(report.decomposition_gap) < 1e-10
    assert report.loss >= report.loss_lower_bound - 1e-12
    if report.aligned:
        assert report.bound_ratio <= 1 + 1e-10


def test_cross_entropy_bound_I4_holds_on_digits():
    X, y = _digits(60)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    report = check_alignment(model, (X, y), loss="ce", probe_size=None)
    assert report.loss_name == "ce"
    assert report.loss == pytest.approx(math.log(10), abs=0.3)
    assert report.target_loss < report.loss
    assert report.loss - report.target_loss <= report.bound - report.target_loss + 1e-12
    assert report.bound_ratio <= 1


def test_small_cnn_on_digits_gives_a_readable_verdict():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10),
    )
    report = check_alignment(cnn, (X, y), loss="ce", probe_size=128)
    text = str(report)
    assert isinstance(report, AlignmentReport)
    assert report.n_outputs == 1280 and report.n_params == sum(p.numel() for p in cnn.parameters())
    for phrase in ("Alignment condition D1", "rank J =", "alignment residual", "I4 convex-loss bound",
                   "(I2) gap", "alignment curve"):
        assert phrase in text
    assert report.elapsed_s > 0
    d = report.to_dict()
    assert d["rank"] == report.rank and len(d["eigenvalues"]) == 1280


def test_data_forms_give_the_same_report():
    X, y = _digits(50)
    model = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)).double()
    a = check_alignment(model, (X, y), probe_size=20, seed=3)
    b = check_alignment(model, (X.numpy(), y.numpy()), probe_size=20, seed=3)
    c = check_alignment(model, TensorDataset(X, y), probe_size=20, seed=3)
    d = check_alignment(model, DataLoader(TensorDataset(X, y), batch_size=7), probe_size=20, seed=3)
    for other in (b, c, d):
        assert other.residual == pytest.approx(a.residual, rel=1e-12)
        assert other.loss == pytest.approx(a.loss, rel=1e-12)
    onehot = torch.nn.functional.one_hot(y, 10).double()
    e = check_alignment(model, (X, onehot), probe_size=20, seed=3)
    assert e.residual == pytest.approx(a.residual, rel=1e-12)


def test_alignment_curve_and_capture_are_consistent():
    X, y = _digits(40)
    model = nn.Sequential(nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 10)).double()
    report = check_alignment(model, (X, y), probe_size=None)
    curve = report.alignment_curve  # a(λ_k): the residual keeping the top-k directions
    assert np.all(np.diff(curve) <= 1e-12) and curve[-1] == 0.0 and curve[0] <= 1
    assert report.top_k_capture[10] == pytest.approx(1 - curve[9] ** 2, abs=1e-12)
    # the residual of the D1 verdict is the curve at the rank
    assert curve[report.rank - 1] == pytest.approx(report.residual, rel=1e-9, abs=1e-12)
    assert report.curve_at(1.0) == pytest.approx(curve[0])  # only λ_max kept
    assert 0 <= report.kernel_target_alignment <= 1


def test_horizon_residual_is_the_target_outside_the_directions_gd_can_fit():
    # a linear model: K = (X Xᵀ + 1) ⊗ I_m, so the horizon residual is computable by hand
    n, d_x, m = 40, 6, 2
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, d_x, generator=gen, dtype=F64) * torch.logspace(0, -3, d_x, dtype=F64)
    Y = torch.randn(n, m, generator=gen, dtype=F64)
    model = nn.Linear(d_x, m).double()
    lr, steps = 0.5, 200
    report = check_alignment(model, (X, Y), probe_size=None, horizon=(lr, steps))
    A = torch.cat([X, torch.ones(n, 1, dtype=F64)], 1)
    lam, U = torch.linalg.eigh(A @ A.T)  # each output's Gram; K is it on every output
    coef = U.T @ Y  # (n, m)
    slow = lam < n / (lr * steps)  # η λ T / n < 1
    expected = float((coef[slow] ** 2).sum())
    assert 0 < slow.sum() < n  # the threshold splits the spectrum
    assert report.horizon_residual == pytest.approx(math.sqrt(expected / float((Y**2).sum())), rel=1e-9)
    assert report.horizon_loss_floor == pytest.approx(expected / (2 * n), rel=1e-9)
    assert report.horizon_loss_floor >= report.loss_lower_bound  # the exact floor is the T → ∞ limit
    assert f"horizon (η={lr:g}, T={steps})" in str(report)
    longer = check_alignment(model, (X, Y), probe_size=None, horizon=(lr, 100 * steps))
    assert longer.horizon_loss_floor <= report.horizon_loss_floor
    for bad in ((0.1,), (-1.0, 10), (0.1, 0), (0.1, 2.5)):
        with pytest.raises(DiagnosticsError, match="horizon"):
            check_alignment(model, (X, Y), probe_size=None, horizon=bad)


def _linear_problem(scales: torch.Tensor, n: int = 40, m: int = 2) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, scales.shape[0], generator=gen, dtype=F64) * scales
    return nn.Linear(scales.shape[0], m).double(), X, torch.randn(n, m, generator=gen, dtype=F64)


def test_a_horizon_beyond_the_stable_step_keeps_its_floor_and_names_the_unstable_part():
    # ten times the stable step 2n/λ_max: linearised GD multiplies the top direction by 19 per step; the floor
    # speaks of the slow directions (ηλT/n < 1), which evolve on their own (theory/alignment.md#horizon-residual)
    model, X, Y = _linear_problem(torch.logspace(0, -3, 6, dtype=F64))
    n = X.shape[0]
    A = torch.cat([X, torch.ones(n, 1, dtype=F64)], 1)
    lam, U = torch.linalg.eigh(A @ A.T)  # each output's Gram; K = it ⊗ I_2
    lam_max = float(lam[-1])
    eta, steps = 10 * 2 * n / lam_max, 3000
    report = check_alignment(model, (X, Y), probe_size=None, horizon=(eta, steps))
    coef = U.T @ Y
    slow, unstable = lam < n / (eta * steps), eta * lam / n > 2
    assert 0 < slow.sum() and 0 < unstable.sum() < n  # the step splits the spectrum three ways
    assert report.horizon_applicable
    assert report.horizon_loss_floor == pytest.approx(float((coef[slow] ** 2).sum()) / (2 * n), rel=1e-9)
    part = report.horizon_unstable
    assert part.directions == 2 * int(unstable.sum()) and part.growth == pytest.approx(19.0)
    assert part.share == pytest.approx(float((coef[unstable] ** 2).sum() / (Y**2).sum()), rel=1e-9)
    text = str(report)
    assert "by 19 per step" in text and "with ηλ/n > 2" in text and "not fitted" in text
    assert "by 19 per step" in report.horizon_note  # what the tracker records
    # the ground truth: linearised gradient descent at that step grows along the top directions ...
    with torch.no_grad():
        r = (model(X) - Y).reshape(-1)
    K = torch.kron(A @ A.T, torch.eye(2, dtype=F64))
    lam_k, U_k = torch.linalg.eigh(K)
    top = U_k[:, -1]
    for _ in range(20):
        before = float(top @ r)
        r = r - eta / n * (K @ r)
    assert float(top @ r) == pytest.approx(-19 * before, rel=1e-6) and float(r.norm()) > 1e20
    # ... and (η, T) = (10·stable, 3000) reads as (η/100, 100·T) only in its floor, not in its unstable part
    same = check_alignment(model, (X, Y), probe_size=None, horizon=(eta / 100, 100 * steps))
    assert same.horizon_loss_floor == pytest.approx(report.horizon_loss_floor, rel=1e-12)
    assert same.horizon_unstable.directions == 0 and "unstable" not in same.horizon_note
    assert [p.met for p in same.horizon_premises] == [None, None, None]  # the caller's word
    assert "assumed" in str(same)


def test_the_horizon_floor_never_falls_below_the_exact_floor():
    # one input scaled by 1e-8: its eigenvalue (≈ 4e-15) lies below the rank tolerance (≈ 2e-12) but above
    # n/(ηT) for T = 1e18, so a horizon without the rank rule would count it as fitted
    model, X, Y = _linear_problem(torch.tensor([1.0, 1.0, 1e-8], dtype=F64))
    report = check_alignment(model, (X, Y), probe_size=None, horizon=(0.5, 10**18))
    assert report.loss_lower_bound > 1e-3  # the direction carries part of Y
    assert report.horizon_loss_floor == report.loss_lower_bound  # T → ∞: the exact floor, not below it
    assert report.horizon_residual == report.residual
    for steps in (1, 10, 10**3, 10**6, 10**12):
        shorter = check_alignment(model, (X, Y), probe_size=None, horizon=(0.5, steps))
        assert shorter.horizon_loss_floor >= report.loss_lower_bound


def test_the_matrix_free_horizon_follows_the_same_rank_rule():
    model, X, Y = _linear_problem(torch.logspace(0, -3, 6, dtype=F64))
    for steps in (200, 10**18):  # a cut inside the top eigenpairs; below the rank tolerance: the exact floor
        dense = check_alignment(model, (X, Y), probe_size=None, horizon=(0.5, steps))
        free = check_alignment(model, (X, Y), probe_size=None, horizon=(0.5, steps), path="matrix-free")
        assert free.horizon_loss_floor == pytest.approx(dense.horizon_loss_floor, rel=1e-9)
        assert free.horizon_loss_floor >= free.loss_lower_bound
    assert free.horizon_loss_floor == free.loss_lower_bound


def test_the_horizon_of_a_cross_entropy_run_is_not_applicable():
    model, X, _ = _linear_problem(torch.ones(4, dtype=F64), m=3)
    y = torch.arange(X.shape[0]) % 3
    report = check_alignment(model, (X, y), loss="ce", probe_size=None, horizon=(0.1, 100))
    assert not report.horizon_applicable and "squared loss" in str(report)


def test_a_float32_verdict_that_cannot_decide_is_re_measured_in_float64():
    from diagnostics.models import CNN

    X, y = _digits(64)
    torch.manual_seed(0)
    model = CNN(in_channels=1, width=16, n_out=10, image_size=8)
    x = X.float().reshape(64, 1, 8, 8)
    report = check_alignment(model, (x, y), probe_size=None, dtype=torch.float32)
    # d = 3,130 ≥ nm = 640: full row rank in float64; float32's rank rule (640·eps ≈ 7.6e-5 of λ_max) cuts
    # directions that carry Q, so float32 alone cannot decide
    assert report.dtype == "float64" and report.verdict.status == "holds"
    assert report.precision_note.startswith("float32 could not decide D1") and "re-measured in float64" in \
        report.precision_note
    # with a budget too small for the float64 Gram the answer is not established, and says what to do
    import diagnostics.alignment as alignment

    starved = alignment.alignment_from_gram(
        torch.zeros(12, 3, dtype=F64), alignment.Targets.build(torch.arange(12) % 3, 12, 3, "mse"),
        torch.diag(torch.logspace(0, -6, 36, dtype=torch.float32)), n_params=36, source_dtype=torch.float32)
    assert starved.verdict.status == "not established" and "dtype=torch.float64" in starved.precision_note


def test_a_low_lsqr_condition_limit_is_not_established():
    # float32 at n·m = 960 rows: the matrix-free rank rule is a condition limit sqrt(1/(nm·eps)) ≈ 94 < 100
    from diagnostics.alignment import alignment_from_operator
    from diagnostics.engine import JacobianOperator

    model = nn.Sequential(nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, 3))
    x = torch.randn(320, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(320) % 3
    report = alignment_from_operator(JacobianOperator(model, x), y, loss="ce", method="lsqr")
    assert report.verdict.status == "not established"
    assert "condition limit" in report.precision_note and "dtype=torch.float64" in report.precision_note
    assert str(report).splitlines()[0].endswith("not established")


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (torch.zeros(10, 3), "do not fit"),
        (torch.full((10,), 12), r"class indices must lie in \[0, 9\]"),
        (torch.full((10, 10), float("nan")), "NaN"),
    ],
)
def test_bad_targets_are_refused(targets, match):
    model = nn.Linear(4, 10).double()
    X = torch.randn(10, 4, dtype=F64)
    with pytest.raises(DiagnosticsError, match=match):
        check_alignment(model, (X, targets))


def test_bad_data_is_refused():
    model = nn.Linear(4, 2).double()
    with pytest.raises(DiagnosticsError, match="empty"):
        check_alignment(model, (torch.zeros(0, 4), torch.zeros(0, 2)))
    with pytest.raises(DiagnosticsError, match="NaN or inf"):
        check_alignment(model, (torch.full((3, 4), float("inf")), torch.zeros(3, 2)))
    with pytest.raises(DiagnosticsError, match="samples"):
        check_alignment(model, (torch.zeros(3, 4), torch.zeros(5, 2)))
    with pytest.raises(DiagnosticsError, match="no parameters"):
        check_alignment(nn.ReLU(), (torch.zeros(3, 4), torch.zeros(3, 4)))


# -- the matrix-free path against the dense one ------------------------------------------------

REPORT_FIELDS = ("residual", "nu_norm", "certificate", "grad_norm", "bound", "loss_lower_bound")


@pytest.mark.parametrize(
    ("cid", "loss"),
    [("deep-linear", "mse"), ("deep-linear", "ce"), ("mlp", "mse"), ("cnn", "ce")],
)
def test_matrix_free_alignment_matches_dense(cid, loss):
    if cid == "deep-linear":  # rank 15 < nm = 36 with an exact spectral gap: Q ∉ Col(J)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3)).double()
        x = torch.randn(12, 4, dtype=F64)
    else:
        case = CASES[cid]
        model, x = case.model(), case.data(6)
    with torch.no_grad():
        m = model.eval()(x).shape[1]
    gen = torch.Generator().manual_seed(3)
    n = x.shape[0]
    y = torch.randn(n, m, generator=gen, dtype=F64) if loss == "mse" else torch.arange(n) % m
    dense = check_alignment(model, (x, y), loss=loss, probe_size=None, path="dense")
    free = check_alignment(model, (x, y), loss=loss, probe_size=None, path="matrix-free")
    assert (dense.path, free.path) == ("dense", "matrix-free")
    assert free.aligned == dense.aligned
    for name in REPORT_FIELDS:
        torch.testing.assert_close(getattr(free, name), getattr(dense, name), rtol=1e-8, atol=1e-9, msg=name)
    np.testing.assert_allclose(free.eigenvalues, dense.eigenvalues[: free.eigenvalues.size], rtol=1e-8)
    top = free.alignment_curve.size
    np.testing.assert_allclose(free.alignment_curve, dense.alignment_curve[:top], atol=1e-7)
    assert free.rank == -1 and np.isnan(free.kernel_target_alignment)
    assert "matrix-free" in str(free)


@pytest.mark.parametrize(("method", "loss"), [("auto", "mse"), ("gram", "ce"), ("sketch", "mse"), ("lsqr", "mse")])
def test_the_whole_set_solvers_of_a_tall_j_match_dense(method, loss):
    # n·m = 120 > d = 57: Col J cannot be all of R^{nm}; the tanh MLP's J has full column rank
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(40, 5, dtype=F64)
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(40, 3, generator=gen, dtype=F64) if loss == "mse" else torch.arange(40) % 3
    dense = check_alignment(model, (x, y), loss=loss, probe_size=None, path="dense")
    free = check_alignment(model, (x, y), loss=loss, probe_size=None, path="matrix-free", solver={"method": method})
    assert free.solver == ("gram" if method == "auto" else method) and dense.solver == ""
    assert dense.verdict.status == "refuted"  # the kept rank reaches d = min(nm, d): the residual is resolved
    # LSQR's witness cannot refute; the preconditioned solvers certify the lower bound and count the rank
    assert free.verdict.status == ("not established" if method == "lsqr" else "refuted")
    fields = REPORT_FIELDS if method != "sketch" else ("residual", "grad_norm", "loss_lower_bound")
    for name in fields:  # the sketch's ν is the damped one: the residual and the gradient, not ‖ν‖, to 1e-8
        torch.testing.assert_close(getattr(free, name), getattr(dense, name), rtol=1e-8, atol=1e-9, msg=name)
    policy = " ".join(free.manifest.precision)
    assert ("preconditioned" in policy) == (method != "lsqr")


@pytest.mark.parametrize("method", ["gram", "sketch"])
def test_a_rank_deficient_tall_j_is_not_refuted_by_its_large_residual(method):
    # deep linear: rank J = 15 < d = 51 (its GL(6) directions are null), Q far outside Col J: like the dense path,
    # the preconditioned solvers cannot exclude directions below the threshold that would carry the residual
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3)).double()
    x, y = torch.randn(40, 4, dtype=F64), torch.randn(40, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    dense = check_alignment(model, (x, y), probe_size=None, path="dense")
    free = check_alignment(model, (x, y), probe_size=None, path="matrix-free", solver={"method": method})
    assert dense.verdict.status == free.verdict.status == "not established"
    torch.testing.assert_close(free.residual, dense.residual, rtol=1e-8, atol=0)
    reason = free.verdict.details["reason"]
    assert ("rank" in reason) and (method == "gram" or "certifies" in reason)


@pytest.mark.parametrize("steps", [10, 1000])
def test_the_horizon_of_a_tall_j_comes_with_the_preconditioned_solvers(steps):
    # d = 147, n·m = 600: the exact Gram has every eigenpair; the sketch computes Ritz pairs down to n/(ηT)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(200, 5, dtype=F64), torch.randn(200, 3, dtype=F64)
    horizon = (0.5, steps)
    dense = check_alignment(model, (x, y), probe_size=None, path="dense", horizon=horizon)
    gram = check_alignment(model, (x, y), probe_size=None, path="matrix-free", horizon=horizon,
                           solver={"method": "gram"})
    sketch = check_alignment(model, (x, y), probe_size=None, path="matrix-free", horizon=horizon,
                             solver={"method": "sketch"})
    assert abs(gram.horizon_residual - dense.horizon_residual) <= 1e-10
    assert abs(sketch.horizon_residual - dense.horizon_residual) <= 1e-3 * dense.horizon_residual  # Ritz pairs
    assert sketch.eigenvalues[-1] < 200 / (0.5 * steps) < sketch.eigenvalues[0]  # computed down to the threshold


def test_a_checkpoint_without_the_horizons_eigenpairs_computes_them_from_its_sketch(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(200, 5, dtype=F64), torch.randn(200, 3, dtype=F64)
    horizon, saved = (0.5, 1000), {"method": "sketch", "checkpoint_dir": str(tmp_path)}
    fresh = check_alignment(model, (x, y), probe_size=None, path="matrix-free", horizon=horizon,
                            solver={"method": "sketch"})
    check_alignment(model, (x, y), probe_size=None, path="matrix-free", solver=saved)  # the top pairs only, kept
    passes = []
    monkeypatch.setattr(preconditioned, "parameter_gram", lambda *a, **k: passes.append(1))
    resumed = check_alignment(model, (x, y), probe_size=None, path="matrix-free", horizon=horizon, solver=saved)
    assert passes == []  # the checkpoint's sketch served
    assert resumed.horizon_residual == pytest.approx(fresh.horizon_residual, rel=1e-8)
    assert resumed.eigenvalues[-1] < 200 / (0.5 * 1000)


def test_a_horizon_below_the_computed_eigenpairs_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(8, 5, dtype=F64), torch.randn(8, 3, dtype=F64)  # wide: LSQR and Lanczos' top pairs
    report = check_alignment(model, (x, y), probe_size=None, path="matrix-free", horizon=(1e-3, 10**9),
                             solver={"top_k": 3})
    assert math.isnan(report.horizon_residual)
    assert "not computed: the 3 eigenpairs of K computed matrix-free reach down to" in str(report)


def test_auto_path_goes_matrix_free_when_the_dense_gram_does_not_fit():
    case = CASES["cnn"]
    model, x = case.model(), case.data(8)
    y = torch.arange(8) % 3
    small = check_alignment(model, (x, y), loss="ce", probe_size=None)
    assert small.path == "dense"
    tight = check_alignment(model, (x, y), loss="ce", probe_size=None, memory_budget=24**2 * 8)
    assert tight.path == "matrix-free"
    torch.testing.assert_close(tight.nu_norm, small.nu_norm, rtol=1e-7, atol=0)
    with pytest.raises(DiagnosticsError, match="path must be one of"):
        check_alignment(model, (x, y), probe_size=None, path="sparse")


# -- what a measured Gram decides (theory/alignment.md#resolution, #subsets) ---------------------------------


def _scaled_feature_model(scale: float = 1e-7):
    """A linear model whose first input feature is scaled by ``scale``, and a target exactly in its ``Col J``."""
    gen = torch.Generator().manual_seed(0)
    n, d_x = 100, 5
    X = torch.randn(n, d_x, dtype=F64, generator=gen)
    X[:, 0] *= scale
    model = nn.Linear(d_x, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d_x, dtype=F64, generator=gen))
    w = torch.randn(d_x, dtype=F64, generator=gen)
    w[0] = 1e3  # the scaled feature carries a component of Y of size 1e-4 relative, below the resolution
    return model, X, (X @ w + 0.5).reshape(n, 1)


def test_an_exact_target_whose_small_components_lie_below_the_resolution_is_not_refuted():
    # a tanh MLP with three hidden layers on 100 digits: Y = Jv is in Col J (residual 1e-15 by SVD), but the
    # rank rule discards directions that carry 1e-7 of it; 89 directions of Col J may be among them
    X, _ = _digits(100)
    from diagnostics.models import MLP

    torch.manual_seed(0)
    model = MLP(64, 8, 10, depth=3, activation="tanh").double()
    J = jacobian(model, X)
    Y = (J @ torch.randn(J.shape[1], dtype=F64, generator=torch.Generator().manual_seed(0))).reshape(100, 10)
    U = torch.linalg.svd(J, full_matrices=False)[0]
    assert float((Y.reshape(-1) - U @ (U.T @ Y.reshape(-1))).norm() / Y.norm()) < 1e-12
    report = check_alignment(model, (X, Y), probe_size=None)
    assert report.residual > report.residual_tol and report.rank < min(report.n_outputs, report.n_params)
    assert report.verdict.status == "not established" and report.verdict.details["lower"] == 0
    assert "may belong to Col J" in report.verdict.details["reason"] and "why:" in str(report)


def test_a_scaled_input_feature_makes_neither_d1_nor_the_data_level_premise_refuted():
    model, X, Y = _scaled_feature_model()
    report = check_alignment(model, (X, Y), probe_size=None)
    assert report.rank == 5 < report.n_params  # the scaled feature's direction is below the resolution
    assert report.residual > 10 * report.residual_tol and report.verdict.status == "not established"
    # f = Wx + b is in Col J exactly (A1 holds); its component along the scaled feature is not resolved either:
    # the premise of (I2)-(I4) is undecided, not "not met", so (I3) is judged and not declared inapplicable
    assert report.output_residual > report.residual_tol and report.data_level.status == "not established"
    i3 = next(v for v in report.verdicts if v.statement == "I3")
    assert i3.status in ("holds", "not established") and "undecided" in str(i3.premises[1])
    # A1: the witness holds, and test 2 no longer claims to refute A1 for every R
    cms = check_cms(model, X)
    assert cms.holds and "disagreement" not in cms.verdict.details and "not shown" in str(cms)


def test_the_same_target_gets_one_answer_in_float32_and_float64():
    # 1e-5 of Q's norm lies in null K of a linear model with nm > d: float64 refutes D1; float32, whose
    # resolution cannot place that residual, says not established (never holds), and check_alignment re-measures
    gen = torch.Generator().manual_seed(1)
    n, d_x, m = 60, 4, 2
    X = torch.randn(n, d_x, dtype=F64, generator=gen)
    model = nn.Linear(d_x, m).double()
    J = jacobian(model, X)
    Y = J @ torch.randn(J.shape[1], dtype=F64, generator=gen)
    U = torch.linalg.svd(J)[0][:, J.shape[1]:]
    null = U @ torch.randn(U.shape[1], dtype=F64, generator=gen)
    Q = (Y + 1e-5 * Y.norm() * null / null.norm()).reshape(n, m)
    f64 = check_alignment(model, (X, Q), probe_size=None)
    assert f64.verdict.status == "refuted" and f64.residual == pytest.approx(1e-5, rel=1e-3)
    assert f64.residual_tol == pytest.approx(math.sqrt(torch.finfo(F64).eps))
    from diagnostics import ntk_gram
    from diagnostics.alignment import Targets, alignment_from_gram

    single = nn.Linear(d_x, m).float()
    single.load_state_dict(model.state_dict())
    K32 = ntk_gram(single, X.float(), dtype=torch.float32)
    alone = alignment_from_gram(single(X.float()).detach(), Targets.build(Q, n, m, "mse"), K32, n_params=J.shape[1],
                                source_dtype=torch.float32)
    assert alone.residual_tol == f64.residual_tol  # the question does not depend on the dtype
    assert alone.verdict.status == "not established" and "dtype=torch.float64" in alone.precision_note
    again = check_alignment(single, (X.float(), Q), probe_size=None, dtype=torch.float32)
    assert again.verdict.status == "refuted" and again.precision_note.startswith("float32 could not decide D1")


def test_a_probe_names_both_scopes():
    from diagnostics.data import load_dataset
    from diagnostics.models import CNN

    digits = load_dataset("digits")
    torch.manual_seed(0)
    model = CNN(in_channels=1, width=16, n_out=10, image_size=8)
    report = check_alignment(model, (digits.X_train, digits.y_train), loss="ce", probe_size=128)
    assert report.verdict.holds and report.full_rank and report.n_data == len(digits.y_train) == 1297
    data = report.data_verdict
    assert data.status == "not established" and "12,970 > d = 3,130" in data.details["reason"]
    lines = str(report).splitlines()
    assert lines[0].startswith("Alignment condition D1 (Q ∈ Col J) on a probe of 128 of the 1,297 samples: holds")
    assert lines[1].startswith("  on all 1,297 samples given: not established") and "probe_size=None" in str(report)
    assert report.to_dict()["data_verdict"]["status"] == "not established"


def test_a_refuting_probe_refutes_d1_on_the_data_with_a_lower_bound():
    gen = torch.Generator().manual_seed(2)
    n, d_x, m = 200, 4, 2
    X, Y = torch.randn(n, d_x, dtype=F64, generator=gen), torch.randn(n, m, dtype=F64, generator=gen)
    model = nn.Linear(d_x, m).double()
    report = check_alignment(model, (X, Y), probe_size=50)
    assert report.verdict.refuted and report.data_verdict.refuted
    A = np.hstack([X.numpy(), np.ones((n, 1))])
    coef, *_ = np.linalg.lstsq(A, Y.numpy(), rcond=None)
    whole = np.linalg.norm(Y.numpy() - A @ coef) / np.linalg.norm(Y.numpy())
    assert report.residual_tol < report.data_verdict.lhs <= whole
    assert "on all 200 samples given: refuted" in str(report)
    assert check_alignment(model, (X, Y), probe_size=None).data_verdict is None  # the whole data: one scope
