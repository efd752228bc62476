"""The performance suite: ``python -m benchmarks`` runs every ``bench_*.py`` module.

Benchmarks print figures and ratios against a baseline measured in the same run; they
assert nothing about timing (that is what makes them useful on any machine).
"""
