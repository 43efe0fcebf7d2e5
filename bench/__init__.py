"""Nebula's benchmark: `python -m bench` (see docs/BENCHMARKS.md)."""
