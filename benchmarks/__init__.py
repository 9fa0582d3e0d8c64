"""The performance harness: ``python -m benchmarks.run`` (see docs/performance.md)."""
