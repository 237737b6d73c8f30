"""Benchmarks that a reader can re-run: ``python -m twostage_search.benchmarks.<name> --help``."""
