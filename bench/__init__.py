"""The otel-jobs benchmark suite: ``python -m bench`` (see :mod:`bench.run` and docs/performance.md)."""
