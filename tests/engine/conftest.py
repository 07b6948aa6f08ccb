"""Fixtures of the engine tests."""

import pytest

from diagnostics.engine.gram import GramTiles


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of a few samples, so that small Grams are accumulated over several tiles and mirrored."""
    monkeypatch.setattr(GramTiles, "MIN_TILE", 1)
    monkeypatch.setattr(GramTiles, "MAX_TILE", 8)
