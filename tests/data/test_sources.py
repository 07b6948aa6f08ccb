"""The data sources: digits, and the file-based loaders on tiny fake files in the real formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch

from diagnostics.data import DataSplit, load_dataset

F64 = torch.float64


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _standardised(X: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per-channel standardisation with population statistics of ``train`` (N, C, H, W)."""
    X, train = X.astype(np.float64), train.astype(np.float64)
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True)
    return (X - mean) / std


# -- digits ------------------------------------------------------------------------------------------


def test_digits_shapes_classes_and_standardisation(digits):
    assert isinstance(digits, DataSplit)
    assert (digits.name, digits.task, digits.n_classes, digits.input_shape) == (
        "digits",
        "classification",
        10,
        (1, 8, 8),
    )
    assert digits.X_train.shape == (1297, 1, 8, 8) and digits.X_test.shape == (500, 1, 8, 8)
    assert digits.X_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert set(digits.y_train.tolist()) == set(range(10)) == set(digits.y_test.tolist())
    counts = torch.bincount(digits.y_test, minlength=10)
    share = 500 * (counts + torch.bincount(digits.y_train, minlength=10)) / 1797
    assert counts.sum() == 500 and ((counts - share).abs() < 1).all()  # stratified
    assert abs(digits.X_train.mean().item()) < 1e-5
    assert abs(digits.X_train.std(unbiased=False).item() - 1) < 1e-5
    assert digits.n_outputs == 10 and digits.n_train == 1297 and digits.n_test == 500


def test_digits_are_sklearn_images_standardised_with_training_statistics():
    from sklearn.datasets import load_digits

    raw = load_digits()
    d = load_dataset("digits", dtype=F64)
    x_tr, x_te = d.X_train[:, 0].numpy(), d.X_test[:, 0].numpy()
    lo, hi = x_tr.min(), x_tr.max()  # the standardised values of pixel values 0 and 16
    train, test = (np.rint((x - lo) / (hi - lo) * 16) for x in (x_tr, x_te))
    images = sorted(img.tobytes() for img in raw.images)
    assert sorted(img.tobytes() for img in np.concatenate([train, test])) == images
    labels = {img.tobytes(): int(c) for img, c in zip(raw.images, raw.target, strict=True)}
    assert [labels[img.tobytes()] for img in train] == d.y_train.tolist()
    assert [labels[img.tobytes()] for img in test] == d.y_test.tolist()
    mean, std = train.mean(), train.std()
    np.testing.assert_allclose(x_tr, (train - mean) / std, rtol=0, atol=1e-12)
    np.testing.assert_allclose(x_te, (test - mean) / std, rtol=0, atol=1e-12)


def test_digits_deterministic_and_seed_independent_split(digits):
    again = load_dataset("digits", seed=7)
    for a, b in (
        (digits.X_train, again.X_train),
        (digits.y_train, again.y_train),
        (digits.X_test, again.X_test),
    ):
        assert torch.equal(a, b)


def test_digits_flatten_and_dtype():
    d = load_dataset("digits", flatten=True, dtype=F64, n_train=30, n_test=20)
    assert d.input_shape == (64,) and d.X_train.shape == (30, 64) and d.X_test.shape == (20, 64)
    assert d.X_train.dtype == F64
    assert "digits" in str(d) and "30 train / 20 test" in str(d)
    assert d.to_dict() == {
        "name": "digits",
        "task": "classification",
        "n_classes": 10,
        "n_outputs": 10,
        "input_shape": [64],
        "n_train": 30,
        "n_test": 20,
        "dtype": "float64",
    }


def test_digits_subsets_are_stratified_seeded_and_leave_the_test_set(digits):
    a = load_dataset("digits", n_train=100, seed=3)
    b = load_dataset("digits", n_train=100, seed=3)
    c = load_dataset("digits", n_train=100, seed=4)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.X_train, c.X_train)
    counts = torch.bincount(a.y_train, minlength=10)
    assert counts.sum() == 100 and counts.max() - counts.min() <= 1
    assert torch.equal(a.X_test, digits.X_test)  # test set and its statistics do not depend on n_train
    # the subset consists of training rows (same standardisation)
    full = digits.X_train.flatten(1)
    for x, y in zip(a.X_train.flatten(1)[:10], a.y_train[:10], strict=True):
        hit = (full == x).all(1).nonzero().flatten()
        assert len(hit) >= 1 and digits.y_train[hit[0]] == y


# -- IDX (MNIST, KMNIST) -----------------------------------------------------------------------------


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    payload = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_idx(folder, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train": (rng.integers(0, 256, (12, 4, 5), dtype=np.uint8), rng.integers(0, 10, 12).astype(np.uint8)),
        "t10k": (rng.integers(0, 256, (6, 4, 5), dtype=np.uint8), rng.integers(0, 10, 6).astype(np.uint8)),
    }
    for split, (X, y) in data.items():
        _write_idx(folder / f"{split}-images-idx3-ubyte", X, gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", y, gz)
    return data


@pytest.mark.parametrize(
    "name, sub, gz",
    [
        ("mnist", "mnist", False),
        ("mnist", "", True),
        ("kmnist", "kmnist", True),
        ("kmnist", "KMNIST/raw", False),
    ],
)
def test_idx_loaders_read_exact_values(tmp_path, name, sub, gz):
    data = _fake_idx(tmp_path / sub if sub else tmp_path, gz)
    d = load_dataset(name, data_dir=tmp_path, dtype=F64)
    (Xtr, ytr), (Xte, yte) = data["train"], data["t10k"]
    assert d.input_shape == (1, 4, 5) and d.n_classes == 10 and d.name == name
    np.testing.assert_allclose(
        d.X_train.numpy(), _standardised(Xtr[:, None], Xtr[:, None]), rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        d.X_test.numpy(), _standardised(Xte[:, None], Xtr[:, None]), rtol=0, atol=1e-12
    )
    assert d.y_train.tolist() == ytr.tolist() and d.y_test.tolist() == yte.tolist()
    assert d.y_train.dtype == torch.int64


def test_idx_flatten_and_subsets(tmp_path):
    data = _fake_idx(tmp_path / "mnist", gz=False)
    d = load_dataset("mnist", data_dir=str(tmp_path), flatten=True, n_train=5, n_test=3, seed=1)
    assert d.X_train.shape == (5, 20) and d.X_test.shape == (3, 20) and d.input_shape == (20,)
    full = load_dataset("mnist", data_dir=tmp_path, flatten=True)
    assert full.X_train.shape == (12, 20)
    with pytest.raises(ValueError, match="only 12"):
        load_dataset("mnist", data_dir=tmp_path, n_train=13)
    assert data["train"][0].shape == (12, 4, 5)


def test_idx_rejects_a_bad_magic_number(tmp_path):
    _fake_idx(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 12)
    with pytest.raises(ValueError, match="IDX"):
        load_dataset("mnist", data_dir=tmp_path)


# -- CIFAR -------------------------------------------------------------------------------------------


def _pickle(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_reads_all_batches_in_order(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    parts = []
    for i in range(1, 6):
        X, y = rng.integers(0, 256, (2, 3072), dtype=np.uint8), rng.integers(0, 10, 2).tolist()
        _pickle(folder / f"data_batch_{i}", {b"batch_label": b"x", b"data": X, b"labels": y})
        parts.append((X, y))
    Xte, yte = rng.integers(0, 256, (3, 3072), dtype=np.uint8), [9, 0, 4]
    _pickle(folder / "test_batch", {b"data": Xte, b"labels": yte})
    d = load_dataset("cifar10", data_dir=tmp_path, dtype=F64)
    Xtr = np.concatenate([X for X, _ in parts]).reshape(-1, 3, 32, 32)
    assert d.X_train.shape == (10, 3, 32, 32) and d.X_test.shape == (3, 3, 32, 32) and d.n_classes == 10
    np.testing.assert_allclose(d.X_train.numpy(), _standardised(Xtr, Xtr), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        d.X_test.numpy(), _standardised(Xte.reshape(-1, 3, 32, 32), Xtr), rtol=0, atol=1e-12
    )
    assert d.y_train.tolist() == sum((y for _, y in parts), []) and d.y_test.tolist() == yte


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar100" / "cifar-100-python"
    Xtr, Xte = (
        rng.integers(0, 256, (4, 3072), dtype=np.uint8),
        rng.integers(0, 256, (2, 3072), dtype=np.uint8),
    )
    _pickle(folder / "train", {b"data": Xtr, b"fine_labels": [99, 5, 0, 42], b"coarse_labels": [1, 2, 3, 4]})
    _pickle(folder / "test", {b"data": Xte, b"fine_labels": [7, 63], b"coarse_labels": [0, 0]})
    d = load_dataset("cifar100", data_dir=tmp_path, dtype=F64)
    assert d.n_classes == 100 and d.y_train.tolist() == [99, 5, 0, 42] and d.y_test.tolist() == [7, 63]
    np.testing.assert_allclose(
        d.X_test.numpy(),
        _standardised(Xte.reshape(-1, 3, 32, 32), Xtr.reshape(-1, 3, 32, 32)),
        rtol=0,
        atol=1e-12,
    )


# -- SVHN --------------------------------------------------------------------------------------------


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    rng = np.random.default_rng(3)
    images = {}
    for split, labels in (("train", [1, 10, 3, 10, 9]), ("test", [10, 2])):
        X = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)  # (H, W, C, N), as published
        scipy.io.savemat(
            tmp_path / f"{split}_32x32.mat", {"X": X, "y": np.array(labels, dtype=np.uint8)[:, None]}
        )
        images[split] = X.transpose(3, 2, 0, 1)
    d = load_dataset("svhn", data_dir=tmp_path, dtype=F64)
    assert d.y_train.tolist() == [1, 0, 3, 0, 9] and d.y_test.tolist() == [0, 2]
    assert d.input_shape == (3, 32, 32)
    np.testing.assert_allclose(
        d.X_train.numpy(), _standardised(images["train"], images["train"]), rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        d.X_test.numpy(), _standardised(images["test"], images["train"]), rtol=0, atol=1e-12
    )
    # pixel (row 0, column 1, channel 2) of training image 4 lands at [4, 2, 0, 1]
    raw = scipy.io.loadmat(tmp_path / "train_32x32.mat")["X"]
    assert images["train"][4, 2, 0, 1] == raw[0, 1, 2, 4]


# -- Semeion -----------------------------------------------------------------------------------------


def test_semeion_text_and_fixed_stratified_split(tmp_path):
    rng = np.random.default_rng(4)
    n = 30
    bits = rng.integers(0, 2, (n, 256))
    labels = np.arange(n) % 10
    lines = [
        " ".join(f"{b:.4f}" for b in row) + " " + " ".join(str(int(k == c)) for k in range(10)) + " "
        for row, c in zip(bits, labels, strict=True)
    ]
    (tmp_path / "semeion").mkdir()
    (tmp_path / "semeion" / "semeion.data").write_text("\n".join(lines) + "\n")
    d = load_dataset("semeion", data_dir=tmp_path, dtype=F64)
    assert d.input_shape == (1, 16, 16) and d.n_train == 20 and d.n_test == 10  # holds out n // 3
    assert torch.bincount(d.y_test, minlength=10).tolist() == [1] * 10
    rows = {row.tobytes(): i for i, row in enumerate(bits.astype(np.uint8))}
    train_idx = [rows[r.tobytes()] for r in (d.X_train.flatten(1).numpy() > 0).astype(np.uint8)]
    test_idx = [rows[r.tobytes()] for r in (d.X_test.flatten(1).numpy() > 0).astype(np.uint8)]
    assert sorted(train_idx + test_idx) == list(range(n)) and train_idx == sorted(train_idx)
    assert d.y_train.tolist() == labels[train_idx].tolist() and d.y_test.tolist() == labels[test_idx].tolist()
    train_bits = bits[train_idx].reshape(-1, 1, 16, 16)
    np.testing.assert_allclose(d.X_train.numpy(), _standardised(train_bits, train_bits), rtol=0, atol=1e-12)
    again = load_dataset("semeion", data_dir=tmp_path, dtype=F64, seed=5)
    assert torch.equal(again.X_test, d.X_test)


# -- missing files -----------------------------------------------------------------------------------


EXPECTED = {
    "mnist": [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ],
    "kmnist": ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    "cifar10": [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "cifar-10-batches-py"],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test"],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
    "semeion": ["semeion.data"],
}


SOURCES = {
    "mnist": "MNIST",
    "kmnist": "Kuzushiji",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "svhn": "SVHN",
    "semeion": "UCI",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_missing_files_raise_with_names_dirs_and_source(tmp_path, name):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(name, data_dir=tmp_path)
    message = str(err.value)
    assert repr(name) in message and SOURCES[name] in message
    for file in EXPECTED[name]:
        assert file in message
    assert str(tmp_path) in message and str(tmp_path / name) in message


def test_partial_files_are_missing_files(tmp_path):
    _fake_idx(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_data_dir_defaults_to_environment(tmp_path, monkeypatch):
    _fake_idx(tmp_path / "mnist", gz=True)
    monkeypatch.setenv("DIAGNOSTICS_DATA", str(tmp_path))
    assert load_dataset("mnist").n_train == 12
