"""Throughput benchmarks: ``python -m bench.throughput`` (see bench/README.md)."""
