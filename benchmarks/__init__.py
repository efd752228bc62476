"""The performance suite: ``python -m benchmarks`` (``make bench``) runs every workload.

One table: each figure beside the seed system's published target, a baseline measured
in the same run and their ratio; the same rows as JSON. Machines are noisy: the ratios
are what count. Nothing here asserts anything about timing. See ``benchmarks/README.md``.
"""
