"""Data sets as tensors: the paper's image benchmarks, scikit-learn's digits and a synthetic task.

:func:`load_dataset` returns a :class:`DataSplit` of standardised inputs and labels. The image
sets of theory/application.md#in-the-paper (MNIST, KMNIST, CIFAR-10, CIFAR-100, SVHN, Semeion) are read from the files
their publishers distribute, which must already be on disk: nothing is ever downloaded. The
digits (8×8, 1,797 images) ship with scikit-learn, and ``"teacher-student"`` is a synthetic
regression task whose targets a random teacher network produces, so both work anywhere.

Conventions
-----------
- Images are ``(C, H, W)`` (``flatten=True`` gives ``(C·H·W,)``), standardised per channel with the
  mean and (population) standard deviation of the *whole* training split, so the test inputs do not
  depend on ``n_train``.
- Labels are ``int64`` class indices; regression targets are float ``(n, m)``.
- Data sets without an official test set (digits, Semeion) get a fixed stratified split holding out
  ``min(500, n // 3)`` samples; it does not depend on ``seed``.
- ``n_train``/``n_test`` take seeded, stratified random subsets (see :func:`probe_subset`); full
  splits keep the order of the files.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .sources import FILES, digits, read_files
from .split import DataSplit, probe_subset, standardised_split
from .teacher_student import teacher_student

__all__ = ["DATASETS", "DataSplit", "load_dataset", "probe_subset"]

#: Names :func:`load_dataset` accepts.
DATASETS: tuple[str, ...] = ("digits", *FILES, "teacher-student")


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> DataSplit:
    """Load a data set as standardised tensors, from local files only.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``"digits"``, ``"mnist"``, ``"kmnist"``, ``"cifar10"``,
        ``"cifar100"``, ``"svhn"``, ``"semeion"``, ``"teacher-student"`` (case-insensitive,
        ``_`` accepted for ``-``).
    data_dir : str or path-like, optional
        Root folder of the data files; each data set is looked for in ``data_dir/<name>/``, in
        ``data_dir/`` itself and in torchvision's layout (``MNIST/raw``, ``KMNIST/raw``). Defaults to
        the environment variable ``DIAGNOSTICS_DATA``, else ``./data``. Unused by digits and
        teacher-student.
    n_train, n_test : int, optional
        Sizes of seeded, stratified random subsets of the splits (default: the whole split). For
        teacher-student they are the generated sizes (default 256 each).
    seed : int
        Seed of the subsets and of the teacher-student task.
    flatten : bool
        Return images as vectors of length ``C·H·W``.
    dtype : torch.dtype
        Floating dtype of the inputs (and of regression targets).
    **options
        Teacher-student only: ``d_in`` (8), ``m`` (3), ``teacher_width`` (16), ``teacher_depth``
        (1 hidden layer), ``activation`` (``"tanh"``), ``noise`` (0.0, standard deviation of
        Gaussian noise added to the targets).

    Returns
    -------
    DataSplit

    Raises
    ------
    FileNotFoundError
        When the files of a file-based data set are missing; the message lists the expected file
        names, the directories searched and where the files are published.
    ValueError
        For an unknown name, options that do not apply, a non-floating ``dtype`` or subset sizes
        that are not positive or exceed the split.

    Notes
    -----
    The CIFAR files are Python pickles; only load files you trust.
    """
    key = _canonical(name)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    for arg, value in (("n_train", n_train), ("n_test", n_test)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{arg} must be a positive integer or None, got {value!r}")
    if key == "teacher-student":
        return teacher_student(n_train or 256, n_test or 256, seed, dtype, options)
    if options:
        raise ValueError(f"options {sorted(options)} apply only to 'teacher-student', not to {key!r}")
    raw = digits() if key == "digits" else read_files(key, data_dir)
    return standardised_split(key, raw, n_train, n_test, seed, flatten, dtype)


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key
