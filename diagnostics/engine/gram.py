"""The empirical NTK Gram ``K = J Jᵀ`` accumulated in tiles (theory/alignment.md#setup).

:class:`GramTiles` forms products only on the tiles on and above the diagonal (about half the FLOPs)
and mirrors them, so ``K`` is exactly symmetric. :func:`groups` splits parameters into consecutive
groups whose Jacobian columns fit a memory budget, so ``J`` is never materialised whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from . import memory

__all__ = ["GramTiles", "columns", "groups"]


class GramTiles:
    """A symmetric ``(N, N)`` Gram accumulated only on the tiles on and above the diagonal.

    Products ``L Rᵀ`` are formed tile by tile for tiles ``(I, J)`` with ``I ≤ J`` (about half the
    FLOPs of the full product); :meth:`finish` symmetrises the diagonal tiles and mirrors the
    others, so the result is exactly symmetric. Tiles hold whole samples (``m`` rows each), so a
    sample-level weight ``coef (n, n)`` applies to a tile as the block ``coef[I/m, J/m] ⊗ 1_{m×m}``.
    """

    #: Tile sides lie between these (rounded down to whole samples): large enough for efficient
    #: matrix products, small enough that about four tiles span ``N`` and half the FLOPs are saved.
    MIN_TILE, MAX_TILE = 256, 1024

    def __init__(self, N: int, m: int, dtype: torch.dtype, device: torch.device) -> None:
        self.K = torch.zeros(N, N, dtype=dtype, device=device)
        self.m = m
        self.bounds = self.tile_bounds(N, m)
        size = self.bounds[0][1] - self.bounds[0][0]
        self._scratch = torch.empty(size * size, dtype=dtype, device=device)

    @classmethod
    def tile_bounds(cls, N: int, m: int) -> list[tuple[int, int]]:
        """``[(start, stop)]`` of the tiles along one side of an ``N × N`` Gram of ``m`` outputs per sample."""
        size = max(m, min(cls.MAX_TILE, max(cls.MIN_TILE, -(-N // 4))) // m * m)
        return [(a, min(N, a + size)) for a in range(0, N, size)]

    @classmethod
    def upper_fraction(cls, N: int, m: int) -> float:
        """Fraction of the ``N²`` entries that the tiles on and above the diagonal hold (the products' share)."""
        sides = [b - a for a, b in cls.tile_bounds(N, m)]
        return sum(x * y for i, x in enumerate(sides) for y in sides[i:]) / N**2

    def _tiles(self) -> Iterator[tuple[slice, slice]]:
        for i, (a0, a1) in enumerate(self.bounds):
            for b0, b1 in self.bounds[i:]:
                yield slice(a0, a1), slice(b0, b1)

    def add_products(self, L: torch.Tensor, R: torch.Tensor) -> None:
        """``K += L Rᵀ`` (``L``, ``R`` of shape ``(N, w)``) on the upper tiles."""
        for a, b in self._tiles():
            self.K[a, b].addmm_(L[a], R[b].T)

    def add_weighted_products(self, L: torch.Tensor, R: torch.Tensor, coef: torch.Tensor) -> None:
        """``K += (coef ⊗ 1_{m×m}) ⊙ (L Rᵀ)`` on the upper tiles; ``coef`` is ``(n, n)``."""
        m = self.m
        for a, b in self._tiles():
            rows, cols = a.stop - a.start, b.stop - b.start
            S = self._scratch[: rows * cols].view(rows, cols)
            torch.mm(L[a], R[b].T, out=S)
            c = coef[a.start // m : a.stop // m, b.start // m : b.stop // m]
            self.K[a, b].view(rows // m, m, cols // m, m).addcmul_(
                S.view(rows // m, m, cols // m, m), c[:, None, :, None]
            )

    def finish(self) -> torch.Tensor:
        """Symmetrise the diagonal tiles, mirror the others; return the full Gram."""
        for a, b in self._tiles():
            if a == b:
                block = self.K[a, a]
                block.copy_((block + block.T) * 0.5)
            else:
                self.K[b, a].copy_(self.K[a, b].T)
        return self.K


def columns(blocks: dict[str, torch.Tensor], names: tuple[str, ...], rows: int) -> torch.Tensor:
    """Concatenate per-parameter ``(nm, *shape)`` blocks into the ``(nm, d_names)`` columns of ``J``."""
    return torch.cat([blocks[k].reshape(rows, -1) for k in names], dim=1)


def groups(names, params, bytes_per_column: int, budget: int) -> Iterator[tuple[str, ...]]:
    """Consecutive parameter groups whose Jacobian columns fit in ``budget`` bytes."""
    group, used = [], 0
    for k in names:
        cost = params[k].numel() * bytes_per_column
        if group and used + cost > budget:
            yield tuple(group)
            group, used = [], 0
        memory.require(
            cost,
            budget,
            f"the Jacobian block of parameter {k!r}",
            "Use fewer samples (probe_size=), a parameter subset (params=) or the matrix-free path.",
        )
        group.append(k)
        used += cost
    if group:
        yield tuple(group)
