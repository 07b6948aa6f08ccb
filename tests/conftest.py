import sys
from pathlib import Path

import pytest
import torch

# ``from cases import ...`` and ``from helpers import ...`` work from every folder of tests/. Appended, not
# prepended: a test folder named like a top-level package (tests/theory) must not shadow that package.
TESTS = str(Path(__file__).parent)
if TESTS not in sys.path:
    sys.path.append(TESTS)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Fixed seeds for every test; the global RNG state is restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        yield


@pytest.fixture(autouse=True)
def _auto_cache(tmp_path_factory, monkeypatch):
    """strategy="auto"'s on-disk cache in a fresh temporary folder for every test (never the user's; inherited by
    the processes a test starts)."""
    from diagnostics.engine.choice_store import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("auto-cache")))


@pytest.fixture
def one_thread():
    """One intra-op thread for tiny matrices: on an oversubscribed machine MKL's threads spin 10-100× slower
    (threaded ``eigh`` in particular). Used as ``pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Whether this machine has a CUDA device; the ``cuda`` cases of the ``device`` fixture are skipped otherwise.
HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param(
    "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")]
)


@pytest.fixture(params=["cpu", CUDA])
def device(request) -> torch.device:
    """Each device a user may measure on: the CPU, and the GPU when there is one (``-m cuda`` selects its cases).

    Tests place the model there as a user would (``model.to(device)``) and pass data on the device or on the
    CPU; on a machine without CUDA the ``cuda`` cases are reported as skipped, with the reason.
    """
    return torch.device(request.param)
