"""D1 on a whole data set over torch.distributed: two gloo processes give the report of one (float64).

Starting processes is the slow part (each imports torch), so one two-process session runs every
scenario, and the tests read its results.
"""

import math

import numpy as np
import pytest
import torch

import theory
from diagnostics import check_alignment
from diagnostics.check_command import job
from diagnostics.cli import build_parser, main
from diagnostics.data import load_dataset
from diagnostics.distributed import check_alignment_distributed, launch, launch_ray
from diagnostics.errors import DiagnosticsError
from diagnostics.models import build_model

TOL = 1e-10
CASES = {
    "digits": ["--data", "digits", "--n-train", "6", "--model", "mlp", "--width", "24", "--loss", "ce"],
    "teacher-student": ["--data", "teacher-student", "--n-train", "10", "--model", "mlp", "--width", "16"],
}


#: Tall whole-set problems (n·m = 1,500 > d = 310): the exact-Gram and the sketch-preconditioned solvers.
TALL = {
    "tall-gram": ["--data", "digits", "--n-train", "150", "--model", "mlp", "--width", "4"],
    "tall-sketch": ["--data", "digits", "--n-train", "150", "--model", "mlp", "--width", "4", "--solver", "sketch"],
}


def _settings(case, **changes):
    argv = ["check", *{**CASES, **TALL}[case], "--quiet", "--batch-size", "4", "--top-k", "2"]
    settings = vars(build_parser().parse_args(argv))
    settings.pop("command")
    return {**settings, **changes}


def _session(folder):
    """Every scenario, on each process of a group: the reports (or the refusal) by name."""
    results = {case: job(_settings(case)) for case in (*CASES, *TALL)}
    results["stopped"] = job(_settings("teacher-student", checkpoint_dir=folder, time_budget=0.0))
    results["resumed"] = job(_settings("teacher-student", checkpoint_dir=folder))
    try:
        job(_settings("teacher-student", n_train=1))  # one sample for two processes: the second has no shard
    except DiagnosticsError as exc:
        results["refused"] = str(exc)
    return results


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return launch(_session, 2, str(tmp_path_factory.mktemp("checkpoints")))


@pytest.fixture(scope="module")
def one():
    return {case: job(_settings(case)) for case in (*CASES, *TALL)}


def _numbers(report):
    """The report as a dict, without the timing, the manifest and the solver's iteration counts."""
    out = report.to_dict()
    for key in ("elapsed_s", "manifest"):
        out.pop(key, None)
    out["rank_rule"] = out["rank_rule"].split("stopped:")[-1]  # why LSQR stopped; counts may differ by one
    return out


def _assert_same(a, b, tol, where="report"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], tol, f"{where}.{k}")
    elif isinstance(a, (list, tuple, np.ndarray)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, tol, f"{where}[{i}]")
    elif isinstance(a, float | int) and not isinstance(a, bool):
        both_nan = isinstance(a, float) and math.isnan(a) and math.isnan(b)
        assert both_nan or abs(a - b) <= tol * max(1.0, abs(a)), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_report_of_one(one, two, case):
    # every process returns the same report: the solvers see the same bits everywhere; the report's own arithmetic
    # (MKL, whose sums depend on memory alignment) may differ in the last bits
    _assert_same(_numbers(two[0][case]), _numbers(two[1][case]), 1e-13)
    _assert_same(_numbers(one[case]), _numbers(two[0][case]), TOL)
    assert "over 2 process(es)" in two[0][case].manifest.inputs
    assert one[case].manifest.n_samples == two[0][case].manifest.n_samples
    assert one[case].verdict.status == theory.HOLDS  # float64, converged, d > nm: decided


@pytest.mark.parametrize(("case", "tol"), [("tall-gram", TOL), ("tall-sketch", 1e-6)])
def test_a_tall_whole_set_is_decided_alike_on_two_processes(one, two, case, tol):
    # the sketch hashes global rows, so it is the same on one process and on two, and every process solves with
    # the same bits; one process and two sum Jᵀu in different orders, which LSQR carries to its tolerance (the
    # sketch's, about 1e-8). The head's eigenvalues come in tens (JᵀJ of a linear layer is HᵀH ⊗ I_m), so the
    # captured fraction within a cluster depends on the basis (theory/alignment.md#spectral-alignment-curve).
    one_numbers, two_numbers = _numbers(one[case]), _numbers(two[0][case])
    for numbers in (one_numbers, two_numbers):
        for key in ("alignment_curve", "top_k_capture"):
            numbers.pop(key)
    _assert_same(_numbers(two[0][case]), _numbers(two[1][case]), 1e-13)
    _assert_same(one_numbers, two_numbers, tol)
    # a ReLU MLP on the digits: J is rank-deficient by construction (rescalable units, border pixels that are 0 in
    # every image), so no measurement refutes D1 (theory/alignment.md#resolution); the report gives the bounds
    report = one[case]
    assert report.solver == case.split("-")[1] and report.verdict.status == theory.NOT_ESTABLISHED
    assert report.residual > 0.1 and report.verdict.details["upper"] == pytest.approx(report.residual)
    assert "min(nm, d)" in report.verdict.details["reason"] or "certifies" in report.verdict.details["reason"]


def test_an_interrupted_two_process_run_resumes_from_its_checkpoint(one, two):
    stopped, resumed = two[0]["stopped"], two[0]["resumed"]
    assert stopped.verdict.status == theory.NOT_ESTABLISHED and "time budget" in stopped.rank_rule
    assert "LSQR stopped before its tolerance" in stopped.verdict.details["reason"]
    _assert_same(_numbers(resumed), _numbers(one["teacher-student"]), TOL)


def test_a_shard_refused_on_one_process_stops_every_process_with_a_clear_error(two):
    assert "at least one" in two[0]["refused"] and "at least one" in two[1]["refused"]


def test_the_streamed_report_is_the_in_memory_matrix_free_report(tmp_path):
    split = load_dataset("teacher-student", n_train=12, n_test=1, dtype=torch.float64)
    model = build_model("mlp", 12, input_shape=split.input_shape, n_out=3, seed=1)
    data = torch.utils.data.TensorDataset(split.X_train, split.y_train)
    streamed = check_alignment_distributed(model, data, batch_size=5, top_k=2)
    on_disk = check_alignment_distributed(model, data, batch_size=5, top_k=2, vector_budget=0, work_dir=tmp_path)
    _assert_same(_numbers(on_disk), _numbers(streamed), 1e-13)  # memory-mapped n·m-vectors: the same numbers
    memory = check_alignment(model, (split.X_train, split.y_train), probe_size=None, path="matrix-free",
                             dtype=torch.float64)
    streamed_numbers, memory_numbers = _numbers(streamed), _numbers(memory)
    for key in ("eigenvalues", "alignment_curve", "top_k_capture"):  # Lanczos computed 2 eigenpairs, not 10
        streamed_numbers.pop(key), memory_numbers.pop(key)
    _assert_same(streamed_numbers, memory_numbers, TOL)
    assert streamed.verdict.status == theory.HOLDS


def test_the_check_command_writes_its_report_and_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["check", *CASES["teacher-student"], "--quiet", "--top-k", "2", "--out", str(out)]) == 0
    assert out.exists() and "Alignment condition D1" in capsys.readouterr().out
    assert main(["check", "--data", "teacher-student", "--n-train", "1", "--nproc", "2", "--quiet"]) == 2
    assert "process 0 of 2" in capsys.readouterr().out  # a shard refused: one line, no traceback
    with pytest.raises(DiagnosticsError, match="nproc must be a positive integer"):
        launch(job, 0, {})


def test_check_alignment_streams_a_data_set_on_the_matrix_free_path():
    split = load_dataset("teacher-student", n_train=12, n_test=1, dtype=torch.float64)
    model = build_model("mlp", 12, input_shape=split.input_shape, n_out=3, seed=1)
    reads = []

    class Counted(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            reads.append(i)
            return split.X_train[i], split.y_train[i]

    streamed = check_alignment(model, Counted(), probe_size=None, path="matrix-free",
                               solver={"batch_size": 5, "top_k": 2})
    data = torch.utils.data.TensorDataset(split.X_train, split.y_train)
    _assert_same(_numbers(streamed), _numbers(check_alignment_distributed(model, data, batch_size=5, top_k=2)), 1e-13)
    assert "Counted of 12 samples streamed in batches of 5" in streamed.manifest.inputs
    assert len(reads) > 12  # read again for every product, never kept


def test_check_alignment_in_memory_takes_the_solver_options(tmp_path):
    split = load_dataset("teacher-student", n_train=8, n_test=1, dtype=torch.float64)
    model = build_model("mlp", 12, input_shape=split.input_shape, n_out=3, seed=1)
    data = (split.X_train, split.y_train)
    stopped = check_alignment(model, data, path="matrix-free", solver={"time_budget": 0.0, "top_k": 2,
                                                                       "checkpoint_dir": tmp_path})
    assert stopped.verdict.status == theory.NOT_ESTABLISHED and "time budget" in stopped.rank_rule
    assert (tmp_path / "runs").is_dir()  # the solver state was kept: a rerun resumes from it
    resumed = check_alignment(model, data, path="matrix-free", solver={"top_k": 2, "checkpoint_dir": tmp_path})
    assert resumed.verdict.status == theory.HOLDS


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"path": "matrix-free", "probe_size": None, "mode": "batch"}, "mode='eval'"),
    ({"path": "matrix-free", "solver": {"tolerance": 1}}, "unknown solver options"),
    ({"path": "dense", "solver": {"top_k": 2}}, "path='dense' uses none"),
    ({"path": "matrix-free", "solver": {"batch_size": 4}}, "streamed data set only"),
    ({"path": "matrix-free", "solver": {"method": "cholesky"}}, "solver method must be one of"),
    ({"path": "matrix-free", "solver": {"method": "sketch"}}, "needs a tall J"),
])
def test_check_alignment_refuses_solver_options_it_cannot_use(kwargs, message):
    split = load_dataset("teacher-student", n_train=6, n_test=1, dtype=torch.float64)
    model = build_model("mlp", 8, input_shape=split.input_shape, n_out=3, seed=1)
    data = torch.utils.data.TensorDataset(split.X_train, split.y_train)
    with pytest.raises(DiagnosticsError, match=message):
        check_alignment(model, data, **kwargs)


def test_ray_train_workers_give_the_report_of_one_process(one):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    ray.init(num_cpus=4, include_dashboard=False)  # logical CPUs: two workers and Ray Train's own actors
    try:
        report = launch_ray(job, 2, _settings("teacher-student"))
        with pytest.raises(DiagnosticsError, match="process 0 of 2 .Ray Train.: .*at least one"):
            launch_ray(job, 2, _settings("teacher-student", n_train=1))
    finally:
        ray.shutdown()
    _assert_same(_numbers(report), _numbers(one["teacher-student"]), TOL)
    assert "over 2 process(es)" in report.manifest.inputs
