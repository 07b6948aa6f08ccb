"""The zoo (tests/zoo/registry.py): third-party models measured exactly, judged, and left unchanged.

For every model, without a ``strategy=`` argument: the Gram equals the per-output autograd loop in
float64, ``check_alignment`` and ``check_cms`` give their verdicts, the manifest says what ``auto`` did,
and nothing about the model changes. The models from torchvision and timm carry the ``zoo`` marker and
are skipped where those libraries do not import (they need a CUDA build of torch; docs/benchmarks.md).
"""

import pytest
import torch
from helpers import NO_VMAP_FALLBACK_WARNING, assert_unchanged
from zoo.registry import CPU_TORCH, REGISTRY

from diagnostics import check_alignment, check_cms, ntk_gram, reference_gram
from diagnostics.engine import Measurement

F64 = torch.float64
N = 6

pytestmark = [NO_VMAP_FALLBACK_WARNING, pytest.mark.filterwarnings("ignore::UserWarning:transformers.*")]


def _entries():
    for key in REGISTRY:
        marks = [] if key in CPU_TORCH else [pytest.mark.zoo]
        yield pytest.param(key, marks=marks, id=key)


def _built(key, n=N, dtype=F64):
    entry = REGISTRY[key]
    missing = entry.available()
    if missing:
        pytest.skip(missing)
    return entry, entry.model(dtype), entry.data(n if key in CPU_TORCH else 4, dtype)


@pytest.mark.parametrize("key", list(_entries()))
def test_gram_is_exact_without_a_strategy_and_the_model_is_unchanged(key):
    entry, model, x = _built(key)
    K = assert_unchanged(model, lambda: ntk_gram(model, x, output=entry.output, mode=entry.mode))
    K_ref = reference_gram(model, x, output=entry.output, mode=entry.mode)
    assert K.shape == K_ref.shape
    assert (K - K_ref).abs().max() <= 1e-10 * K_ref.abs().max()


@pytest.mark.parametrize("key", list(_entries()))
def test_checks_give_their_verdicts_and_the_manifest_says_what_auto_did(key):
    entry, model, x = _built(key)
    n = x["input_ids"].shape[0] if isinstance(x, dict) else x.shape[0]
    y = torch.arange(n) % 3
    kwargs = {"output": entry.output, "mode": entry.mode}
    report = assert_unchanged(model, lambda: check_alignment(model, (x, y), loss="ce", probe_size=None, **kwargs))
    assert report.verdict.status == entry.d1
    cms = assert_unchanged(model, lambda: check_cms(model, x, **kwargs))
    assert cms.status == entry.cms
    manifest = report.manifest
    if entry.mode == "batch":
        assert manifest.strategy == "vjp" and "mode='batch'" in manifest.choice
    elif not entry.vmap:
        assert "vmap cannot run the model over samples" in manifest.choice
        assert "jacrev" not in manifest.strategy
    else:
        assert manifest.strategy == "structured"
    assert "floating-point error of this measurement" in str(manifest)


@pytest.mark.parametrize("key", list(_entries()))
def test_float32_as_users_have_it_and_the_error_estimate_is_honest(key):
    """In float32 the estimate comes from entries recomputed in float64, and it is the error of the whole Gram."""
    entry, model, x = _built(key, dtype=torch.float32)
    with Measurement(model, x, output=entry.output, mode=entry.mode) as job:
        K = job.gram()
        error = job.error(K)
    assert K.dtype == torch.float32
    assert "recomputed in float64 against float32" in error.method and 0 < error.relative < 1e-3
    K64 = reference_gram(model, x, output=entry.output, mode=entry.mode, dtype=F64)
    actual = float((K.double() - K64).abs().max() / K64.abs().max())
    assert error.relative <= actual * (1 + 1e-3) and actual <= 100 * error.relative  # a sample: the same order
