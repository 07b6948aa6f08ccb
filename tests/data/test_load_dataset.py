"""load_dataset (``diagnostics/data/__init__.py``): argument validation."""

import pytest
import torch

from diagnostics.data import DATASETS, DataSplit, load_dataset


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="known: digits, mnist") as err:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="n_train=2000 but digits has only 1297"):
        load_dataset("digits", n_train=2000)
    with pytest.raises(ValueError, match="n_test"):
        load_dataset("digits", n_test=0)
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("digits", n_train=10.0)
    with pytest.raises(ValueError, match="dtype"):
        load_dataset("digits", dtype=torch.int64)
    with pytest.raises(ValueError, match="only to 'teacher-student'"):
        load_dataset("digits", d_in=3)
    with pytest.raises(ValueError, match="input_shape"):
        DataSplit(
            "x",
            torch.zeros(3, 2),
            torch.zeros(3),
            torch.zeros(1, 2),
            torch.zeros(1),
            2,
            (3,),
            "classification",
        )
