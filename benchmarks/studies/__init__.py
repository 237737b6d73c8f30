"""The studies: one module per question, each re-runnable as ``python -m twostage_search.benchmarks.studies.<name>``.

They use the library one level up (datasets, evaluation, runner, report, score cache, click models, graded
sets) and write their results under ``benchmarks/results/``.
"""
