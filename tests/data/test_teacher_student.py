"""The synthetic teacher-student regression task."""

import pytest
import torch

from diagnostics.data import load_dataset

F64 = torch.float64


def test_teacher_student_is_deterministic_regression():
    a = load_dataset("teacher-student")
    b = load_dataset("teacher-student")
    assert a.task == "regression" and a.n_classes is None and a.n_outputs == 3
    assert a.X_train.shape == (256, 8) and a.y_train.shape == (256, 3) and a.X_test.shape == (256, 8)
    assert a.y_train.dtype == torch.float32
    for x, y in ((a.X_train, b.X_train), (a.y_train, b.y_train), (a.y_test, b.y_test)):
        assert torch.equal(x, y)
    assert a.y_train.std() > 0.1  # the teacher's outputs are of order one
    c = load_dataset("teacher-student", seed=1)
    assert not torch.equal(a.y_train, c.y_train)


def test_teacher_student_options():
    d = load_dataset("teacher_student", n_train=10, n_test=4, d_in=5, m=2, teacher_width=7, dtype=F64)
    assert d.X_train.shape == (10, 5) and d.y_train.shape == (10, 2) and d.y_test.shape == (4, 2)
    assert d.input_shape == (5,) and d.y_train.dtype == F64
    noisy = load_dataset(
        "teacher-student", n_train=10, n_test=4, d_in=5, m=2, teacher_width=7, dtype=F64, noise=0.1
    )
    assert torch.equal(noisy.X_train, d.X_train)
    residual = (noisy.y_train - d.y_train).std().item()
    assert 0.03 < residual < 0.3
    with pytest.raises(ValueError, match="teacher_width"):
        load_dataset("teacher-student", widht=3)
    with pytest.raises(ValueError, match="d_in"):
        load_dataset("teacher-student", d_in=0)
