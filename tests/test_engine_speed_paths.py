"""Every fast path of the engine against the dense reference, in float64 (THEORY §7).

Strategies and both exact Gram forms of the structured path, the tiled symmetric accumulation,
the matrix-free operator and the matrix-free alignment report. No timing assertions: speed is
measured by ``python -m bench.ntk`` (docs/benchmarks.md).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cases import CASES
from torch import nn

from diagnostics import DiagnosticsError, check_alignment, jacobian, ntk_gram
from diagnostics.engine import JacobianOperator, Measurement, OperatorSpectrum, reference_jacobian
from diagnostics.engine.gram import GramTiles
from diagnostics.engine.rules import BatchNormRule
from diagnostics.engine.structured import StructuredLayers

F64 = torch.float64
ATOL = 1e-10


def _modes():
    for cid, case in CASES.items():
        yield pytest.param(cid, "eval", id=f"{cid}-eval")
        if case.has_batch_norm:
            yield pytest.param(cid, "batch", id=f"{cid}-batch")


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of a few samples, so that small Grams are accumulated over several tiles and mirrored."""
    monkeypatch.setattr(GramTiles, "MIN_TILE", 1)
    monkeypatch.setattr(GramTiles, "MAX_TILE", 8)


@pytest.mark.parametrize("strategy", ["auto", "structured", "jacrev", "vjp"])
@pytest.mark.parametrize("cid", list(CASES))
def test_every_strategy_matches_reference_over_several_tiles(cid, strategy, small_tiles):
    case = CASES[cid]
    model, x = case.model(), case.data(7)
    J_ref = reference_jacobian(model, x)
    K = ntk_gram(model, x, strategy=strategy)
    assert torch.equal(K, K.T)
    torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=ATOL)
    torch.testing.assert_close(jacobian(model, x, strategy=strategy), J_ref, rtol=0, atol=ATOL)


def _layer_columns(job, layer, J_ref):
    """Columns of ``J_ref`` that belong to ``layer``'s parameters."""
    starts, start = {}, 0
    for k in job.fm.names:
        starts[k] = (start, start + job.fm.params[k].numel())
        start = starts[k][1]
    return torch.cat([J_ref[:, slice(*starts[k])] for k in layer.names], dim=1)


@pytest.mark.parametrize("cid", list(CASES))
def test_both_gram_forms_of_every_covered_layer_match_reference(cid, small_tiles):
    case = CASES[cid]
    model, x = case.model(), case.data(7)
    J_ref = reference_jacobian(model, x)
    with Measurement(model, x, strategy="structured") as job:
        layers = StructuredLayers(job, job.fm.names)
        assert layers.layers or cid in ("reused-module", "extra-weight-use")
        for layer in layers.layers.values():
            J_l = _layer_columns(job, layer, J_ref)
            expected = J_l @ J_l.T
            per_sample = GramTiles(job.rows, job.m, F64, torch.device("cpu"))
            for block in layer.rule.grads(layer, layer.cotangents, per_sample=True):
                if block is not None:
                    per_sample.add_products(block.reshape(job.rows, -1), block.reshape(job.rows, -1))
            torch.testing.assert_close(per_sample.finish(), expected, rtol=0, atol=ATOL)
            if isinstance(layer.rule, BatchNormRule):
                continue
            positions = GramTiles(job.rows, job.m, F64, torch.device("cpu"))
            layer.rule.add_positions_gram(layer, positions)
            torch.testing.assert_close(positions.finish(), expected, rtol=0, atol=ATOL)


def test_batch_norm_and_convolutions_are_covered_by_the_structured_path():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(4)
    with Measurement(model, x, strategy="structured") as job:
        layers = StructuredLayers(job, job.fm.names)
        assert layers.covered == set(job.fm.names)


class _MixesSamples(nn.Module):
    """Samples interact in eval mode (a batch mean): per-sample structure does not apply."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.head(h - h.mean(0, keepdim=True))


def test_guard_rejects_a_layer_whose_samples_interact():
    # the whole-batch strategy's measurement, so that the forward checks let the model through
    model, x = _MixesSamples().double(), torch.randn(6, 4, dtype=F64)
    with Measurement(model, x, strategy="vjp") as job:
        layers = StructuredLayers(job, job.fm.names)
        assert "inp.weight" not in layers.covered


def test_batch_norm_with_batch_statistics_in_eval_mode_is_left_to_jacrev():
    batch_stats = nn.BatchNorm1d(4, track_running_stats=False)
    model = nn.Sequential(nn.Linear(3, 4), batch_stats, nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=F64)
    with Measurement(model, x, strategy="vjp") as job:
        assert "1.weight" not in StructuredLayers(job, job.fm.names).covered


def test_forced_positions_form_when_per_sample_gradients_exceed_the_budget():
    case = CASES["cnn"]
    model, x = case.model(), case.data(5)
    J_ref = reference_jacobian(model, x)
    # 4000 bytes hold the Gram (2·15² doubles) but not conv2's per-sample block (15·112 doubles),
    # which its FLOP count would otherwise choose
    K = ntk_gram(model, x, strategy="structured", memory_budget=4000)
    torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=ATOL)


# -- the matrix-free operator ------------------------------------------------------------------


@pytest.mark.parametrize(("cid", "mode"), list(_modes()))
def test_operator_products_match_reference(cid, mode):
    case = CASES[cid]
    model, x = case.model(), case.data(7)
    J = reference_jacobian(model, x, mode=mode)
    op = JacobianOperator(model, x, mode=mode, chunk_size=None if mode == "batch" else 3)
    assert op.shape == tuple(J.shape)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(J.shape[1], generator=gen, dtype=F64)
    u = torch.randn(J.shape[0], generator=gen, dtype=F64)
    torch.testing.assert_close(op.matvec(v), J @ v, rtol=0, atol=ATOL)
    torch.testing.assert_close(op.rmatvec(u), J.T @ u, rtol=0, atol=ATOL)
    torch.testing.assert_close(op.gram_matvec(u), J @ (J.T @ u), rtol=0, atol=ATOL)
    A, G = op.to_scipy(), op.to_scipy(gram=True)
    np.testing.assert_allclose(A.matvec(v.numpy()), (J @ v).numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(A.rmatvec(u.numpy()), (J.T @ u).numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(G.matvec(u.numpy()), (J @ (J.T @ u)).numpy(), rtol=0, atol=ATOL)


def test_operator_refuses_chunks_in_batch_mode_and_leaves_the_model_alone():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(6)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DiagnosticsError, match="one chunk"):
        JacobianOperator(model, x, mode="batch", chunk_size=2)
    op = JacobianOperator(model, x, mode="batch")
    op.gram_matvec(torch.ones(op.shape[0], dtype=F64))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# -- matrix-free alignment against the dense path ------------------------------------------------

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


def test_lsqr_that_stops_at_its_iteration_limit_says_so():
    case = CASES["mlp"]
    op = JacobianOperator(case.model(), case.data(6))
    spectrum = OperatorSpectrum(op, top_k=2, max_iter=2)
    with pytest.warns(RuntimeWarning, match="iteration limit"):
        spectrum.pinv_quadratic(torch.ones(op.shape[0], dtype=F64))
    assert "stopped at the iteration limit" in spectrum.solver_summary


# -- the benchmark runs ---------------------------------------------------------------------------


def test_benchmark_quick_smoke_run(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ntk", "--quick", "--output", str(out)],
        cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    for name in ("ours: auto", "ours: structured", "torch.func", "nngeometry", "curvlinops", "BackPACK"):
        assert name in table
    assert "% of peak" in table
