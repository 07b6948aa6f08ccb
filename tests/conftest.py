import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Fixed seeds for every test; the global RNG state is restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        yield
