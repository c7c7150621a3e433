"""Measured comparisons against peers; run each as ``python -m benchmarks.<name>`` from the repository root."""
