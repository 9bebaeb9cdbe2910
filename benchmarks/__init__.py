"""Measurements that are not tests (python -m benchmarks.<name>)."""
