"""Benchmark scripts; run them from a checkout (`python benchmarks/<script>.py`)."""
