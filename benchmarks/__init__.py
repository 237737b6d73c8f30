"""Benchmarks a reader can re-run.

The library (datasets, evaluation, the ``twostage bench`` runner and its report, score caches, click models,
graded sets, the service process) lives here; each study is a module of :mod:`.studies`, run as
``python -m twostage_search.benchmarks.studies.<name> --help``.
"""
