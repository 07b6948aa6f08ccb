"""Memory budgets: estimate before allocating, refuse with a clear message."""

from __future__ import annotations

import os

import torch

from ..errors import InsufficientMemoryError, format_bytes

#: Fraction of the currently available memory that one measurement may use by default.
DEFAULT_FRACTION = 0.5


def available_bytes(device: torch.device) -> int:
    """Return the memory currently available on ``device``, in bytes.

    On a GPU: the driver's free memory plus what PyTorch's caching allocator holds for this process but no
    tensor uses (``torch.cuda.mem_get_info`` counts it as used). On the CPU: the host's ``MemAvailable``.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 8 * 1024**3


def resolve_budget(memory_budget: int | None, device: torch.device) -> int:
    """Return the budget in bytes: the user's, or :data:`DEFAULT_FRACTION` of what is available."""
    if memory_budget is None:
        return int(DEFAULT_FRACTION * available_bytes(device))
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    return int(memory_budget)


def require(n_bytes: int, budget: int, what: str, advice: str) -> None:
    """Raise :class:`InsufficientMemoryError` when ``n_bytes`` exceed ``budget``."""
    if n_bytes > budget:
        raise InsufficientMemoryError(
            f"{what} would need {format_bytes(n_bytes)}, more than the memory budget of "
            f"{format_bytes(budget)}. {advice}"
        )
