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


@pytest.fixture
def one_thread():
    """One intra-op thread for tiny matrices: on an oversubscribed machine MKL's threads spin 10-100× slower
    (threaded ``eigh`` in particular). Used as ``pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
