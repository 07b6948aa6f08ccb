"""Benchmarks of the empirical-NTK engine against peers (docs/benchmarks.md)."""
