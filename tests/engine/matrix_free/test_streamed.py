"""The streamed Jacobian equals the in-memory one in float64 (theory/alignment.md#data-parallel)."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from diagnostics import DiagnosticsError
from diagnostics.data import load_dataset
from diagnostics.engine import JacobianOperator
from diagnostics.engine.matrix_free.streamed import StreamedJacobianOperator, VectorStore, shard_range

F64 = torch.float64
ATOL = 1e-10


def _digits(n=60):
    split = load_dataset("digits", n_train=n, flatten=True, dtype=F64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)).double()
    return model, split.X_train, split.y_train


@pytest.mark.parametrize("vector_budget", [None, 0])  # 0: every n·m-vector a memory-mapped file
def test_streamed_products_equal_the_in_memory_operator(tmp_path, vector_budget):
    model, X, y = _digits()
    dense = JacobianOperator(model, X)
    loader = DataLoader(TensorDataset(X, y), batch_size=7, shuffle=True)  # the sampler is not used
    op = StreamedJacobianOperator(model, loader, work_dir=tmp_path, vector_budget=vector_budget)
    assert op.shape == dense.shape and op.chunk_size == 7
    torch.testing.assert_close(op.outputs, dense.outputs, rtol=0, atol=ATOL)
    torch.testing.assert_close(op.targets, y, rtol=0, atol=0)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(op.shape[1], generator=gen, dtype=F64)
    u = torch.randn(op.shape[0], generator=gen, dtype=F64)
    Jv = op.matvec(v)
    torch.testing.assert_close(Jv, dense.matvec(v), rtol=0, atol=ATOL)
    torch.testing.assert_close(op.rmatvec(u), dense.rmatvec(u), rtol=0, atol=ATOL)
    torch.testing.assert_close(op.rmatvec(u.numpy()), dense.rmatvec(u), rtol=0, atol=ATOL)
    mapped = isinstance(Jv.numpy().base, np.memmap) or op.vectors.files > 0
    assert mapped == (vector_budget == 0)
    if vector_budget == 0:
        assert sorted(p.name for p in op.vectors.folder.iterdir())[:1] == ["vector-1.bin"]


def test_a_data_set_with_getitems_is_read_a_batch_at_a_time():
    model, X, y = _digits(20)

    class Batched(TensorDataset):
        calls: list[int] = []

        def __getitem__(self, i):
            raise AssertionError("read one sample at a time")

        def __getitems__(self, indices):
            self.calls.append(len(indices))
            return [(X[i], y[i]) for i in indices]

    op = StreamedJacobianOperator(model, Batched(X, y), batch_size=8)
    v = torch.randn(op.shape[1], generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(op.matvec(v), JacobianOperator(model, X).matvec(v), rtol=0, atol=ATOL)
    assert Batched.calls.count(8) >= 2 and max(Batched.calls) == 8  # whole batches, one read each


def test_a_shard_is_a_block_of_rows():
    model, X, y = _digits(30)
    dense = JacobianOperator(model, X)
    parts = [StreamedJacobianOperator(model, TensorDataset(X, y), shard=shard_range(30, r, 4), batch_size=4)
             for r in range(4)]
    assert [p.n for p in parts] == [8, 8, 7, 7]
    v = torch.randn(dense.shape[1], dtype=F64)
    u = torch.randn(dense.shape[0], dtype=F64)
    torch.testing.assert_close(torch.cat([p.matvec(v) for p in parts]), dense.matvec(v), rtol=0, atol=ATOL)
    pieces = torch.split(u, [p.shape[0] for p in parts])
    total = sum(p.rmatvec(piece) for p, piece in zip(parts, pieces, strict=True))
    torch.testing.assert_close(total, dense.rmatvec(u), rtol=0, atol=ATOL)


def test_shard_ranges_cover_the_data_and_refuse_too_many_processes():
    ranges = [shard_range(10, r, 3) for r in range(3)]
    assert ranges == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(DiagnosticsError, match="at least one"):
        shard_range(2, 0, 3)
    with pytest.raises(DiagnosticsError, match="rank must be"):
        shard_range(10, 3, 3)


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(3), 0


def test_bad_input_gets_a_clear_error_and_leaves_the_model_alone():
    model, X, y = _digits(20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = X.clone()
    bad[13, 0] = float("nan")
    cases = [
        ((TensorDataset(bad, y),), {"batch_size": 5}, "NaN or inf"),
        ((_Stream(),), {}, "map-style"),
        ((TensorDataset(X[:0], y[:0]),), {}, "empty"),
        ((TensorDataset(X, y),), {"shard": (5, 3)}, "shard must be a range"),
        ((TensorDataset(X, y),), {"mode": "batch"}, "independent samples"),
        ((TensorDataset(X, y),), {"batch_size": 0}, "positive"),
        ((TensorDataset(X),), {}, r"\(x, y\) pair"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(DiagnosticsError, match=message):
            StreamedJacobianOperator(model, *args, **kwargs)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_the_vector_store_maps_only_what_exceeds_its_budget(tmp_path):
    store = VectorStore(80, tmp_path)
    small, large = store.zeros((10,)), store.zeros((11,))
    assert not isinstance(small, np.memmap) and isinstance(large, np.memmap) and store.files == 1
    assert store.folder.parent == tmp_path
    with pytest.raises(DiagnosticsError, match="non-negative"):
        VectorStore(-1)
