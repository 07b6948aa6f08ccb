"""Spectrum: a Gram that is not positive semi-definite warns, round-off does not (theory/alignment.md#setup)."""

import contextlib
import warnings

import pytest
import torch
from cases import CASES, IO_CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD

from diagnostics import Spectrum, check_alignment

F64 = torch.float64

pytestmark = [ONE_THREAD, NO_VMAP_FALLBACK_WARNING]


def test_non_psd_gram_warns_and_round_off_does_not():
    with pytest.warns(RuntimeWarning, match="not positive semi-definite.*-1.000e-01"):
        s = Spectrum.of(torch.diag(torch.tensor([1.0, -0.1], dtype=F64)))
    assert s.min_eigenvalue == pytest.approx(-0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = Spectrum.of(torch.diag(torch.tensor([1.0, -1e-17], dtype=F64)))
    assert s.min_eigenvalue == pytest.approx(-1e-17) and s.rank == 1


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def test_float64_measurements_of_real_models_raise_no_psd_warning():
    with _no_warnings():
        case = IO_CASES["transformer-dict"]
        check_alignment(case.model(), (case.data(5), torch.randn(5, 3, dtype=F64)), output="logits")
        case = CASES["groupnorm-cnn"]
        check_alignment(case.model(), (case.data(6), torch.randint(0, 3, (6,))), loss="ce")
