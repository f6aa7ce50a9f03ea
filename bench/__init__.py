"""Benchmarks: each prints its figures and writes them into docs/BENCHMARKS.md."""
