"""make bench: the benchmark suite that writes BENCHMARKS.md (see bench/__main__.py)."""
