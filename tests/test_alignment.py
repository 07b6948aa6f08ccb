"""check_alignment against exact answers (THEORY §3, §4), and its matrix-free path against the dense one."""

import math

import numpy as np
import pytest
import torch
from cases import CASES
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diagnostics import AlignmentReport, DiagnosticsError, check_alignment, jacobian

F64 = torch.float64


def _digits(n=120):
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data[:n], dtype=F64) / 16
    y = torch.tensor(d.target[:n])
    return X, y


def test_linear_model_residual_matches_least_squares():
    # rank J = m(d_x+1) < nm: the residual is the least-squares residual of Y on [X, 1].
    n, d_x, m = 30, 4, 2
    model = nn.Linear(d_x, m).double()
    X = torch.randn(n, d_x, dtype=F64)
    Y = torch.randn(n, m, dtype=F64)
    report = check_alignment(model, (X, Y), probe_size=None)
    A = np.hstack([X.numpy(), np.ones((n, 1))])
    coef, *_ = np.linalg.lstsq(A, Y.numpy(), rcond=None)
    expected = np.linalg.norm(Y.numpy() - A @ coef) / np.linalg.norm(Y.numpy())
    assert report.rank == m * (d_x + 1)
    assert report.residual == pytest.approx(expected, rel=1e-10)
    assert not report.aligned
    # (I2) is exact for a linear model, and the loss lower bound is the least-squares loss
    assert abs(report.decomposition_gap) < 1e-12
    assert report.loss_lower_bound == pytest.approx(np.sum((Y.numpy() - A @ coef) ** 2) / (2 * n), rel=1e-10)
    assert report.loss >= report.loss_lower_bound


def test_targets_in_the_column_space_are_aligned_and_bound_holds():
    n, d_x, m = 30, 4, 2
    model = nn.Linear(d_x, m).double()
    X = torch.randn(n, d_x, dtype=F64)
    W = torch.randn(m, d_x, dtype=F64)
    Y = X @ W.T + 0.5  # realisable by the model: Y ∈ Col(J)
    report = check_alignment(model, (X, Y), probe_size=None)
    assert report.aligned and report.residual < 1e-12
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
    for phrase in ("Alignment condition D1", "rank J =", "alignment residual", "(I4)", "decomposition gap"):
        assert phrase in text
    assert report.elapsed_s < 60
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


def test_spectral_curve_and_capture_are_consistent():
    X, y = _digits(40)
    model = nn.Sequential(nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 10)).double()
    report = check_alignment(model, (X, y), probe_size=None)
    curve = report.alignment_curve
    assert np.all(np.diff(curve) >= -1e-12) and curve[-1] == pytest.approx(1.0)
    assert report.top_k_capture[10] == pytest.approx(curve[9])
    # energy inside Col(J) is the curve at the rank; the residual is the rest
    assert 1 - curve[report.rank - 1] == pytest.approx(report.residual**2, abs=1e-9)
    assert 0 <= report.kernel_target_alignment <= 1


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
    np.testing.assert_allclose(free.alignment_curve, dense.alignment_curve[:top], atol=1e-8)
    assert free.rank == -1 and np.isnan(free.kernel_target_alignment)
    assert "matrix-free" in str(free)


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
