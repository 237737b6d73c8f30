"""Benchmarks that a reader can re-run: ``python -m benchmarks.<name> --help``."""
