"""Benchmarks for nnx_bridge: run each one with ``python -m benchmarks.<name>``."""
