"""Benchmarks: per-call overhead of resilient against a bare await and against peers."""
