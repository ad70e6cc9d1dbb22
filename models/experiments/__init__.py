"""End-to-end experiments: the whole-system evaluation and the benchmarks behind scripts/bench_*.py."""
